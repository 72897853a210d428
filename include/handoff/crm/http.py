"""Transport policy for every CRM call, in one place: timeouts, retries, plain-HTTP instances.

The CRM client libraries take a ``requests.Session``; the session built here gives every request
a timeout, retries what the server says was not processed (429 and 503, honouring
``Retry-After``, plus connection errors and other 5xx on reads) with exponential back-off, and
counts the requests a run makes.
"""

from __future__ import annotations

import logging
from urllib.parse import urlsplit

import requests
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT = (5.0, 60.0)  # (connect, read) seconds
NOT_PROCESSED = frozenset({429, 503})  # the server refused before doing anything: safe to resend
READ_RETRY_STATUSES = frozenset({500, 502, 503, 504, 429})


class CrmRetry(Retry):
    """Retry reads on 5xx; retry writes only on statuses that mean the write did not happen."""

    def is_retry(self, method: str, status_code: int, has_retry_after: bool = False) -> bool:
        if self.total is not None and self.total <= 0:
            return False
        if status_code in NOT_PROCESSED:
            return True
        return super().is_retry(method, status_code, has_retry_after)


def default_retry(total: int = 5, backoff_factor: float = 0.5) -> CrmRetry:
    return CrmRetry(
        total=total,
        connect=total,
        read=2,
        status=total,
        backoff_factor=backoff_factor,
        backoff_max=30,
        status_forcelist=READ_RETRY_STATUSES,
        allowed_methods=frozenset({"GET", "HEAD", "OPTIONS"}),
        respect_retry_after_header=True,
        raise_on_status=False,  # hand the last answer to the client library: it reads the body
    )


class CrmHTTPAdapter(HTTPAdapter):
    """Default timeout on every request; optionally speak plain HTTP to an ``https://`` URL.

    Client libraries such as simple-salesforce always build ``https://`` URLs from the instance
    host. A local or staging instance served over plain HTTP is reached by rewriting the scheme
    here, for that one host only.
    """

    def __init__(
        self,
        *,
        timeout: float | tuple[float, float] = DEFAULT_TIMEOUT,
        retry: Retry | None = None,
        plain_http: bool = False,
    ) -> None:
        self.timeout = timeout
        self.plain_http = plain_http
        super().__init__(max_retries=retry or default_retry())

    def send(self, request, **kwargs):
        if kwargs.get("timeout") is None:
            kwargs["timeout"] = self.timeout
        if self.plain_http and request.url.startswith("https://"):
            request.url = "http://" + request.url[len("https://") :]
        return super().send(request, **kwargs)


class CrmSession(requests.Session):
    """A requests session that counts what it sends."""

    def __init__(self) -> None:
        super().__init__()
        self.requests_made = 0

    def send(self, request, **kwargs):
        self.requests_made += 1
        return super().send(request, **kwargs)


def build_session(
    instance_url: str | None = None,
    *,
    timeout: float | tuple[float, float] = DEFAULT_TIMEOUT,
    retry: Retry | None = None,
) -> CrmSession:
    """A session with the transport policy; plain HTTP only for an ``http://`` instance URL."""
    session = CrmSession()
    session.mount("https://", CrmHTTPAdapter(timeout=timeout, retry=retry))
    session.mount("http://", CrmHTTPAdapter(timeout=timeout, retry=retry))
    if instance_url and urlsplit(instance_url).scheme == "http":
        parts = urlsplit(instance_url)
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port and parts.port != 443 else ""
        log.info("CRM instance %s is plain HTTP: rewriting https://%s%s", instance_url, host, port)
        session.mount(
            f"https://{host}{port}",
            CrmHTTPAdapter(timeout=timeout, retry=retry, plain_http=True),
        )
    return session
