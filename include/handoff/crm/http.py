"""Transport policy for every CRM call, in one place: timeouts, retries, plain-HTTP instances.

The CRM client libraries take a ``requests.Session``; the session built here gives every request
a timeout and retries, with exponential back-off and ``Retry-After`` honoured, only what cannot
duplicate an effect:

- a read (GET, HEAD, OPTIONS) on 429, any 5xx, a dropped connection or a read timeout;
- a write (POST, PATCH, PUT, DELETE) only on 429, the one answer that proves the server did
  nothing, and on a connection that could not be opened (the request never left);
- never a write after a 5xx, a dropped connection or a read timeout: the server may have
  committed it (a gateway or an overloaded app server answers 503 after the commit). Those are
  *unknown outcomes*, for the caller to settle by looking the records up.

The session counts every request that reached the wire, transport retries included, so run
summaries report the calls the CRM really served.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from urllib.parse import urlsplit

import requests
from requests.adapters import HTTPAdapter
from urllib3.exceptions import ConnectTimeoutError
from urllib3.util.retry import Retry

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT = (5.0, 60.0)  # (connect, read) seconds
NOTHING_DONE = 429  # the only status that proves a write was not processed
READ_RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


class CrmRetry(Retry):
    """urllib3's retry with the write rule above and a callback for every retried request."""

    def __init__(self, *args, on_retry: Callable[[], None] | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.on_retry = on_retry

    def new(self, **kwargs) -> CrmRetry:
        retry = super().new(**kwargs)
        retry.on_retry = self.on_retry
        return retry

    def is_retry(self, method: str, status_code: int, has_retry_after: bool = False) -> bool:
        if status_code == NOTHING_DONE and (self.total is None or self.total > 0):
            return True
        return super().is_retry(method, status_code, has_retry_after)

    def increment(self, method=None, url=None, response=None, error=None, *args, **kwargs):
        opened = error is not None and not isinstance(error, ConnectTimeoutError)
        if opened and (method or "").upper() not in (self.allowed_methods or ()):
            raise error  # a write that may have reached the server: never re-sent as is
        retry = super().increment(method, url, response, error, *args, **kwargs)
        # A connection that never opened sent nothing; anything else reached the CRM.
        if self.on_retry is not None and (response is not None or opened):
            self.on_retry()
        return retry


def default_retry(
    total: int = 5, backoff_factor: float = 0.5, on_retry: Callable[[], None] | None = None
) -> CrmRetry:
    return CrmRetry(
        total=total,
        connect=total,
        read=2,
        status=total,
        backoff_factor=backoff_factor,
        backoff_max=30,
        status_forcelist=READ_RETRY_STATUSES,
        allowed_methods=READ_METHODS,
        respect_retry_after_header=True,
        raise_on_status=False,  # hand the last answer to the client library: it reads the body
        on_retry=on_retry,
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
        retry: Retry,
        timeout: float | tuple[float, float] = DEFAULT_TIMEOUT,
        plain_http: bool = False,
    ) -> None:
        self.timeout = timeout
        self.plain_http = plain_http
        super().__init__(max_retries=retry)

    def send(self, request, **kwargs):
        if kwargs.get("timeout") is None:
            kwargs["timeout"] = self.timeout
        if self.plain_http and request.url.startswith("https://"):
            request.url = "http://" + request.url[len("https://") :]
        return super().send(request, **kwargs)


class CrmSession(requests.Session):
    """A requests session that counts what it sends, transport retries included."""

    def __init__(self) -> None:
        super().__init__()
        self.requests_made = 0

    def count_request(self) -> None:
        self.requests_made += 1

    def send(self, request, **kwargs):
        self.count_request()
        return super().send(request, **kwargs)


def build_session(
    instance_url: str | None = None,
    *,
    timeout: float | tuple[float, float] = DEFAULT_TIMEOUT,
    total_retries: int = 5,
    backoff_factor: float = 0.5,
) -> CrmSession:
    """A session with the transport policy; plain HTTP only for an ``http://`` instance URL."""
    session = CrmSession()
    retry = default_retry(total_retries, backoff_factor, on_retry=session.count_request)
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


def sent_nothing(exc: requests.RequestException) -> bool:
    """Whether a failed request provably never reached the server (the connection never opened).

    Everything else (a read timeout, a connection dropped after sending) may have been processed.
    """
    if isinstance(exc, requests.ConnectTimeout):
        return True
    if not isinstance(exc, requests.ConnectionError) or isinstance(exc, requests.ReadTimeout):
        return False
    reason = getattr(exc.args[0], "reason", None) if exc.args else None
    return isinstance(reason, ConnectTimeoutError)
