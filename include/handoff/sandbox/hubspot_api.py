"""The HubSpot CRM v3/v4 API subset a connector needs, served over a HubSpotStore.

The real ``hubspot-api-client`` must work against it unchanged, so paths, methods,
status codes (201 for creates, 207 for partial batches: the client only deserialises
the codes it expects) and body shapes follow HubSpot. What HubSpot does not promise is
not given either: batch results come back in an order that is not the input order,
search pages are fresh queries (a record changed between pages can move), and an
error is always ``{"status": "error", "message", "correlationId", "category"}``.

Limits are HubSpot's and can be changed on a live server (``HubSpotLimits``): 200 per
search page and 10,000 results per query, 100 inputs per batch (1,000 for association
reads, each input's associations paged by its own ``after``), 5 searches a second per token
and 190 requests per 10 s (429 with ``Retry-After``), with the ``X-HubSpot-RateLimit-*``
headers on every answer. The sandbox's fault plan applies here as on the Salesforce side.

Objects: contacts, companies, deals, and the activities (engagements) meetings, emails,
calls, notes and tasks, each searchable, batch-readable, listable (archived ones with
``archived=true``) and associated with deals, contacts and companies by HubSpot's own
association type ids.

Point the client at the sandbox with the ``host`` option, which the client copies onto
the configuration of every API it builds::

    client = hubspot.Client.create(access_token=token, host=server.url)

Mind that the client's HTTP layer (urllib3, default ``Retry(3)``) silently retries a GET
answered 429 or 503 with ``Retry-After`` after sleeping that long, but never a POST;
pass ``retry=Retry(total=0)`` to ``Client.create`` to see every refusal yourself.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import random
import re
import threading
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any
from urllib.parse import unquote_plus

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from handoff.sandbox.faults import FaultPlan, FaultRule
from handoff.sandbox.hubspot_store import (
    CREATED_PROPERTY,
    DATE_ENTERED_PREFIX,
    HUBSPOT_DEFINED,
    HUBSPOT_DEFINED_ASSOCIATIONS,
    MODIFIED_PROPERTY,
    OBJECT_NOUNS,
    HubSpotObject,
    HubSpotStore,
    PropertyDef,
    format_ms,
    from_hubspot_timezone,
    parse_hs_datetime,
    resolve_object_type,
)
from handoff.sandbox.salesforce_api import _hold as hold_answer

__all__ = ["HUBSPOT_PATH_PREFIXES", "HubSpotApi", "HubSpotLimits", "create_hubspot_app"]

log = logging.getLogger(__name__)

# Paths the HubSpot app answers; everything else on the shared port is Salesforce's.
HUBSPOT_PATH_PREFIXES = ("/crm/", "/oauth/", "/__sandbox__/hubspot/")
SEARCH_PAGE_MAX = 200
SEARCH_RESULT_CAP = 10_000
SEARCH_MAX_GROUPS = 5
SEARCH_MAX_FILTERS_PER_GROUP = 10
SEARCH_MAX_FILTERS = 25
BATCH_LIMIT = 100
ASSOCIATION_BATCH_LIMIT = 1000
# Associations of one record in one batch-read answer; the rest follow with that input's
# ``after`` (HubSpot pages each input separately and does not document the size).
ASSOCIATION_PAGE = 500
LIST_PAGE_MAX = 100
OWNERS_PAGE_MAX = 500
_MAX_TEXT = 65_536
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
_AUTH_MESSAGE = (
    "Authentication credentials not found. This API supports OAuth 2.0 authentication and you "
    "can find more details at https://developers.hubspot.com/docs/methods/auth/oauth-overview"
)
_NOT_FOUND_MESSAGE = "Object not found.  objectId are usually numeric."
# The token's portal, as the access-token endpoint describes it.
HUB_ID = 24_681_357
HUB_DOMAIN = "handoff-demo.example"
_SCOPES = (
    "crm.objects.contacts.read", "crm.objects.contacts.write", "crm.objects.companies.read",
    "crm.objects.deals.read", "crm.objects.deals.write", "crm.objects.owners.read",
    "crm.schemas.deals.read", "sales-email-read", "oauth",
)  # fmt: skip
# Required on create, by type: HubSpot requires a task's due moment; the subject is the
# handoff flow's own rule, enforced here so a write that omits it fails the same way.
_REQUIRED = {
    "tasks": ("hs_timestamp", "hs_task_subject"),
    **{name: ("hs_timestamp",) for name in ("meetings", "emails", "calls", "notes")},
}
_CREATE_DEFAULTS = {
    "tasks": {"hs_task_status": "NOT_STARTED", "hs_task_priority": "NONE", "hs_task_type": "TODO"},
}
# Properties the free-text ``query`` of a search looks in.
_QUERY_PROPERTIES = {
    "contacts": ("firstname", "lastname", "email", "company"),
    "companies": ("name", "domain"),
    "deals": ("dealname",),
    "tasks": ("hs_task_subject", "hs_task_body"),
    "meetings": ("hs_meeting_title", "hs_meeting_body"),
    "emails": ("hs_email_subject", "hs_email_text"),
    "calls": ("hs_call_title", "hs_call_body"),
    "notes": ("hs_note_body",),
}


@dataclass
class HubSpotLimits:
    """HubSpot's rate limits as the sandbox applies them, per access token.

    Change the fields on a live server (``server.hubspot_api.limits``) to turn a limit
    off or tighten it: ``search_per_second`` None lets searches through unthrottled,
    ``enforce_interval`` False stops refusing bursts (the headers still count them).
    ``search_index_delay`` hides records written through the API from search for that
    many seconds, as HubSpot's index lags behind writes.
    """

    search_per_second: int | None = 5
    interval_max: int = 190
    interval_ms: int = 10_000
    enforce_interval: bool = True
    daily: int = 1_000_000
    search_index_delay: float = 0.0

    def update(self, changes: Mapping[str, Any]) -> None:
        """Apply a JSON mapping of changes, rejecting unknown keys."""
        known = {f.name for f in fields(self)}
        unknown = set(changes) - known
        if unknown:
            raise ValueError(f"unknown limit keys: {sorted(unknown)}")
        for key, value in changes.items():
            setattr(self, key, value)


@dataclass
class _Answer:
    status: int
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)


class _Invalid(Exception):
    """A request HubSpot refuses as a whole (answered 400 unless said otherwise)."""

    def __init__(
        self,
        message: str,
        *,
        category: str = "VALIDATION_ERROR",
        status: int = 400,
        errors: list[dict[str, Any]] | None = None,
        context: dict[str, list[str]] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.category = category
        self.status = status
        self.errors = errors
        self.context = context


def _correlation_id() -> str:
    return str(uuid.uuid4())


def _error(
    status: int,
    category: str,
    message: str,
    *,
    errors: list[dict[str, Any]] | None = None,
    context: dict[str, list[str]] | None = None,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> _Answer:
    body: dict[str, Any] = {
        "status": "error",
        "message": message,
        "correlationId": _correlation_id(),
        **extra,
        "category": category,
    }
    if context:
        body["context"] = context
    if errors:
        body["errors"] = errors
    return _Answer(status, body, dict(headers or {}))


def _batch_error(
    category: str,
    message: str,
    context: dict[str, list[str]],
    *,
    sub_category: str | None = None,
    errors: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """One entry of a 207 answer's ``errors``."""
    entry: dict[str, Any] = {"status": "error", "category": category}
    if sub_category:
        entry["subCategory"] = sub_category
    entry["message"] = message
    entry["context"] = context
    if errors:
        entry["errors"] = errors
    return entry


def _now_ms() -> int:
    return int(time.time() * 1000)


def _unordered(items: list[Any], key: Callable[[Any], str]) -> list[Any]:
    """The items in an order that is deterministic but never the input order (n >= 2).

    HubSpot does not return batch results in input order; a connector that maps
    answers by position must fail here every time, not one run in a hundred.
    """
    shuffled = list(items)
    random.Random("|".join(sorted(key(item) for item in items))).shuffle(shuffled)
    if len(items) > 1 and [key(i) for i in shuffled] == [key(i) for i in items]:
        shuffled = shuffled[1:] + shuffled[:1]
    return shuffled


def _flag(value: str | None, default: bool = False) -> bool:
    if value is None:
        return default
    return value.strip().lower() == "true"


def _int_param(value: str | None, default: int, name: str) -> int:
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise _Invalid(f"Unable to parse {name}: {value!r} is not an integer") from None


def _object_id(value: Any) -> int | None:
    text = str(value).strip() if isinstance(value, str | int) else ""
    return int(text) if text.isdigit() and len(text) <= 18 else None


# ---------------------------------------------------------------- rate limits


class _RateLimiter:
    """Sliding windows per token: the 10-second burst window and the search second."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._interval: dict[str, deque[float]] = {}
        self._search: dict[str, deque[float]] = {}

    def admit(
        self, token: str, *, search: bool, limits: HubSpotLimits, calls_today: int
    ) -> tuple[str | None, float, int]:
        """(policy refused or None, seconds to wait, interval requests remaining)."""
        now = time.monotonic()
        window = limits.interval_ms / 1000
        with self._lock:
            interval = self._interval.setdefault(token, deque())
            while interval and now - interval[0] >= window:
                interval.popleft()
            searches = self._search.setdefault(token, deque())
            while searches and now - searches[0] >= 1.0:
                searches.popleft()
            remaining = max(0, limits.interval_max - len(interval))
            if calls_today > limits.daily:
                return "DAILY", 3600.0, remaining
            if limits.enforce_interval and len(interval) >= limits.interval_max:
                return "TEN_SECONDLY_ROLLING", window - (now - interval[0]), 0
            if search and limits.search_per_second is not None:
                if len(searches) >= limits.search_per_second:
                    return "SECONDLY", 1.0 - (now - searches[0]), remaining
                searches.append(now)
            interval.append(now)
            return None, 0.0, max(0, remaining - 1)

    def clear(self) -> None:
        """Forget every request seen, as if the portal had been quiet for a while."""
        with self._lock:
            self._interval.clear()
            self._search.clear()


_RATE_MESSAGES = {
    "SECONDLY": "You have reached your secondly limit.",
    "TEN_SECONDLY_ROLLING": "You have reached your ten_secondly_rolling limit.",
    "DAILY": "You have reached your daily limit.",
}


def _rate_limited(policy: str, wait: float) -> _Answer:
    return _error(
        429,
        "RATE_LIMITS",
        _RATE_MESSAGES[policy],
        headers={"Retry-After": str(max(1, math.ceil(wait)))},
        errorType="RATE_LIMIT",
        policyName=policy,
    )


# ---------------------------------------------------------------- faults

_FAULT_CATEGORIES = {
    400: ("VALIDATION_ERROR", "There was a problem with the request."),
    401: ("INVALID_AUTHENTICATION", _AUTH_MESSAGE),
    403: (
        "MISSING_SCOPES",
        "This app hasn't been granted all required scopes to make this call.",
    ),
    404: ("OBJECT_NOT_FOUND", "resource not found"),
    409: ("CONFLICT", "Conflict"),
    429: ("RATE_LIMITS", _RATE_MESSAGES["TEN_SECONDLY_ROLLING"]),
    500: ("INTERNAL_ERROR", "internal error"),
    502: ("INTERNAL_ERROR", "Bad Gateway"),
    503: ("INTERNAL_ERROR", "Service Unavailable"),
    504: ("INTERNAL_ERROR", "Gateway Timeout"),
}


def _fault_answer(rule: FaultRule) -> _Answer:
    """A fault rule's error in HubSpot's shape (the rule's own body is Salesforce's)."""
    status = rule.status or 500
    category, message = _FAULT_CATEGORIES.get(status, ("INTERNAL_ERROR", "internal error"))
    default = FaultRule(status=rule.status, error_code=rule.error_code).message
    if rule.message and rule.message != default:
        message = rule.message
    extra: dict[str, Any] = {}
    headers = rule.headers()
    if status == 429:
        extra = {"errorType": "RATE_LIMIT", "policyName": "TEN_SECONDLY_ROLLING"}
        headers.setdefault("Retry-After", "1")
    return _error(status, category, message, headers=headers, **extra)


# ---------------------------------------------------------------- property values


@dataclass
class _Written:
    """A write's checked values and what is wrong with them."""

    values: dict[str, str | None]
    invalid: list[dict[str, Any]] = field(default_factory=list)  # refuse the request
    owner_errors: list[dict[str, Any]] = field(default_factory=list)  # fail this record


def _property_error(name: str, code: str, message: str) -> dict[str, Any]:
    return {"isValid": False, "message": message, "error": code, "name": name}


def _invalid_properties(problems: list[dict[str, Any]]) -> _Invalid:
    return _Invalid(
        "Property values were not valid: " + json.dumps(problems, separators=(",", ":")),
        errors=[
            {
                "message": p["message"],
                "code": p["error"],
                "context": {"propertyName": [p["name"]]},
            }
            for p in problems
        ],
    )


# ---------------------------------------------------------------- the API


class HubSpotApi:
    """Request handling behind create_hubspot_app: auth, limits, counting, faults, routing."""

    def __init__(
        self,
        store: HubSpotStore,
        *,
        token: str,
        faults: FaultPlan,
        limits: HubSpotLimits | None = None,
    ) -> None:
        self.store = store
        self.token = token
        self.faults = faults
        self.limits = limits or HubSpotLimits()
        self._limiter = _RateLimiter()
        self._lock = threading.Lock()
        self.api_calls = 0
        self.rate_limited = 0
        self.by_route: Counter[str] = Counter()
        self._written: dict[tuple[str, int], float] = {}

    # -- plumbing -----------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """API call counts: total, per route, refused by rate limits, faults injected."""
        with self._lock:
            return {
                "api_calls": self.api_calls,
                "by_route": dict(self.by_route),
                "rate_limited": self.rate_limited,
                "faults_injected": self.faults.injected,
            }

    def reset_rate_windows(self) -> None:
        """Empty the rate-limit windows (tests: start a burst from a quiet portal)."""
        self._limiter.clear()

    def _limit_headers(self, remaining: int) -> dict[str, str]:
        limits = self.limits
        with self._lock:
            used = self.api_calls
        return {
            "X-HubSpot-RateLimit-Daily": str(limits.daily),
            "X-HubSpot-RateLimit-Daily-Remaining": str(max(0, limits.daily - used)),
            "X-HubSpot-RateLimit-Interval-Milliseconds": str(limits.interval_ms),
            "X-HubSpot-RateLimit-Max": str(limits.interval_max),
            "X-HubSpot-RateLimit-Remaining": str(remaining),
        }

    @staticmethod
    def _respond(answer: _Answer, headers: Mapping[str, str]) -> Response:
        correlation = (
            answer.body.get("correlationId") if isinstance(answer.body, dict) else None
        ) or _correlation_id()
        merged = {**headers, **answer.headers, "X-HubSpot-Correlation-Id": correlation}
        if answer.status == 204 or answer.body is None:
            return Response(status_code=answer.status, headers=merged)
        return JSONResponse(answer.body, status_code=answer.status, headers=merged)

    async def handle(self, request: Request) -> Response:
        """Entry point for every /crm/ and /oauth/ request."""
        path = request.url.path
        name, handler, is_search = self._route(request.method, path)
        authorized = request.headers.get("authorization", "") == f"Bearer {self.token}"
        if not authorized and not path.startswith("/oauth/"):
            return self._respond(_error(401, "INVALID_AUTHENTICATION", _AUTH_MESSAGE), {})
        with self._lock:
            self.api_calls += 1
            self.by_route[name] += 1
            calls = self.api_calls
        policy, wait, remaining = self._limiter.admit(
            self.token, search=is_search, limits=self.limits, calls_today=calls
        )
        headers = self._limit_headers(remaining)
        if policy is not None:
            with self._lock:
                self.rate_limited += 1
            log.info("Rate limit %s refused %s %s", policy, request.method, path)
            return self._respond(_rate_limited(policy, wait), headers)
        query = unquote_plus(request.url.query)
        target = path + (f"?{query}" if query else "")
        rule = self.faults.match(request.method, target)
        if rule is not None and not rule.after_commit:
            if rule.delay_seconds:
                await asyncio.sleep(rule.delay_seconds)
            if rule.is_error:
                log.info("Injected fault %s for %s %s", rule.status, request.method, target)
                return self._respond(_fault_answer(rule), headers)
        body = await request.body()
        answer = await run_in_threadpool(self._safe_call, handler, request, body)
        if rule is not None and rule.after_commit:
            if rule.delay_seconds:
                log.info("Holding the committed answer %gs for %s", rule.delay_seconds, target)
                await hold_answer(request, rule.delay_seconds)
            if rule.is_error:
                log.info("Injected after-commit fault %s for %s", rule.status, target)
                answer = _fault_answer(rule)
        return self._respond(answer, headers)

    def _safe_call(self, handler: Any, request: Request, body: bytes) -> _Answer:
        try:
            return handler(request, body)
        except _Invalid as exc:
            return _error(
                exc.status, exc.category, exc.message, errors=exc.errors, context=exc.context
            )
        except Exception:  # the sandbox must answer like HubSpot, never hang up
            log.exception("Sandbox handler failed for %s %s", request.method, request.url.path)
            return _error(500, "INTERNAL_ERROR", "internal error")

    def _route(self, method: str, path: str) -> tuple[str, Any, bool]:
        """(route name for the stats, handler, whether it is a search)."""
        parts = [p for p in path.split("/") if p]
        table: list[tuple[str, str, Any]] = []
        search = False
        if parts[:1] == ["oauth"]:
            if len(parts) == 4 and parts[1:3] == ["v1", "access-tokens"]:
                table = [("GET", "oauth_access_token", self._access_token)]
        elif parts[:3] == ["crm", "v3", "objects"] and len(parts) >= 4:
            kind = parts[3]
            rest = parts[4:]
            if rest == []:
                table = [
                    ("GET", f"list:{kind}", self._list),
                    ("POST", f"create:{kind}", self._create),
                ]
            elif rest == ["search"]:
                table = [("POST", f"search:{kind}", self._search)]
                search = True
            elif len(rest) == 2 and rest[0] == "batch" and rest[1] in ("read", "update", "create"):
                handlers = {
                    "read": self._batch_read,
                    "update": self._batch_update,
                    "create": self._batch_create,
                }
                table = [("POST", f"batch_{rest[1]}:{kind}", handlers[rest[1]])]
            elif len(rest) == 1:
                table = [
                    ("GET", f"get:{kind}", self._get),
                    ("PATCH", f"update:{kind}", self._update),
                    ("DELETE", f"archive:{kind}", self._archive),
                ]
        elif parts[:3] == ["crm", "v3", "owners"]:
            if len(parts) == 3:
                table = [("GET", "owners", self._owners)]
            elif len(parts) == 4:
                table = [("GET", "owner", self._owner)]
        elif parts[:3] == ["crm", "v3", "pipelines"] and 4 <= len(parts) <= 6:
            if len(parts) == 4:
                table = [("GET", f"pipelines:{parts[3]}", self._pipelines)]
            elif len(parts) == 5:
                table = [("GET", f"pipeline:{parts[3]}", self._pipeline)]
            elif parts[5] == "stages":
                table = [("GET", f"pipeline_stages:{parts[3]}", self._pipeline)]
        elif parts[:3] == ["crm", "v3", "properties"] and len(parts) in (4, 5):
            name = "properties" if len(parts) == 4 else "property"
            table = [("GET", f"{name}:{parts[3]}", self._properties)]
        elif parts[:3] == ["crm", "v4", "associations"] and len(parts) >= 6:
            pair = f"{parts[3]}/{parts[4]}"
            if parts[5:] == ["batch", "read"]:
                table = [("POST", f"associations_batch_read:{pair}", self._associations_read)]
            elif parts[5:] == ["labels"]:
                table = [("GET", f"association_labels:{pair}", self._association_labels)]
        if not table:
            return "not_found", self._not_found, False
        for allowed, name, handler in table:
            if allowed == method:
                return name, handler, search
        return "method_not_allowed", self._not_allowed, False

    @staticmethod
    def _json(body: bytes) -> Any:
        try:
            return json.loads(body or b"null")
        except ValueError as exc:
            raise _Invalid(f"Invalid input JSON: {exc}") from exc

    def _json_object(self, body: bytes) -> dict[str, Any]:
        payload = self._json(body)
        if not isinstance(payload, dict):
            raise _Invalid("Invalid input JSON: expected an object")
        return payload

    @staticmethod
    def _parts(request: Request) -> list[str]:
        return [p for p in request.url.path.split("/") if p]

    def _object_type(self, name: str) -> str:
        object_type = resolve_object_type(name)
        if object_type is None:
            raise _Invalid(f"Unable to infer object type from: {name}", category="OBJECT_NOT_FOUND")
        return object_type

    def _not_found(self, request: Request, body: bytes) -> _Answer:
        return _error(404, "OBJECT_NOT_FOUND", f"Resource not found: {request.url.path}")

    def _not_allowed(self, request: Request, body: bytes) -> _Answer:
        return _error(405, "VALIDATION_ERROR", f"HTTP {request.method} is not supported here")

    @staticmethod
    def _requested_properties(request: Request) -> list[str] | None:
        names = [
            name.strip()
            for value in request.query_params.getlist("properties")
            for name in value.split(",")
            if name.strip()
        ]
        return names or None

    def _mark_written(self, object_type: str, ids: Sequence[int]) -> None:
        """Remember when records were written, for the search index delay."""
        if self.limits.search_index_delay <= 0:
            return
        now = time.monotonic()
        with self._lock:
            for object_id in ids:
                self._written[(object_type, object_id)] = now

    def _unindexed(self, object_type: str) -> list[int]:
        delay = self.limits.search_index_delay
        if delay <= 0:
            return []
        now = time.monotonic()
        with self._lock:
            for key in [k for k, at in self._written.items() if now - at >= delay]:
                del self._written[key]
            return [object_id for kind, object_id in self._written if kind == object_type]

    # -- token info ---------------------------------------------------------------------------

    def _access_token(self, request: Request, body: bytes) -> _Answer:
        token = self._parts(request)[3]
        if token != self.token:
            return _error(404, "OBJECT_NOT_FOUND", "Token not found")
        # The token belongs to the user who installed the app: the portal's first owner.
        installer = next(iter(self.store.owners(archived=False)), None)
        return _Answer(
            200,
            {
                "token": token,
                "user": installer["email"] if installer else None,
                "hub_domain": HUB_DOMAIN,
                "scopes": list(_SCOPES),
                "hub_id": HUB_ID,
                "app_id": 1_234_567,
                "expires_in": 1800,
                "user_id": installer["userId"] if installer else None,
                "token_type": "access",
            },
        )

    # -- search -------------------------------------------------------------------------------

    def _search(self, request: Request, body: bytes) -> _Answer:
        object_type = self._object_type(self._parts(request)[3])
        payload = self._json_object(body)
        limit = payload.get("limit", 10)
        if not isinstance(limit, int) or isinstance(limit, bool) or limit < 0:
            raise _Invalid(f"Invalid limit: {limit!r}")
        if limit > SEARCH_PAGE_MAX:
            raise _Invalid(f"Limit must be less than or equal to {SEARCH_PAGE_MAX}, was {limit}")
        after = payload.get("after") or "0"
        if not str(after).isdigit():
            raise _Invalid(f"Invalid after: {after!r} is not a valid offset")
        offset = int(str(after))
        if offset + limit > SEARCH_RESULT_CAP:
            raise _Invalid(
                f"The search endpoints are limited to {SEARCH_RESULT_CAP} total results for any "
                f"given query; this request asked for results {offset + 1} to {offset + limit}. "
                "Narrow the query (for example with a filter on hs_lastmodifieddate or "
                "hs_object_id) instead of paging further.",
                context={"after": [str(after)], "limit": [str(limit)]},
            )
        where, params = self._compile_filters(object_type, payload)
        hidden = self._unindexed(object_type)
        if hidden:
            marks = ", ".join("?" for _ in hidden)
            where = f"({where}) AND id NOT IN ({marks})" if where else f"id NOT IN ({marks})"
            params += hidden
        order_by, order_params = self._compile_sorts(object_type, payload.get("sorts"))
        total, records = self.store.search(
            object_type, where, [*params, *order_params], order_by, limit=limit, offset=offset
        )
        names = self._wanted(payload.get("properties"))
        defs = self.store.properties(object_type)
        result: dict[str, Any] = {
            "total": total,
            "results": [record.to_api(names, defs) for record in records],
        }
        if limit and offset + limit < total:
            result["paging"] = {"next": {"after": str(offset + limit)}}
        return _Answer(200, result)

    @staticmethod
    def _wanted(value: Any) -> list[str] | None:
        if value is None or value == []:
            return None
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise _Invalid("properties must be a list of property names")
        return value

    def _column(self, object_type: str, name: str) -> tuple[str, list[Any], str]:
        """SQL for a property's value: (expression, its params, how values compare).

        Kinds: "id" and "ms" (integer columns), "number", "datetime" (ISO text, which
        sorts as time), "text" (lower-cased: HubSpot compares strings case-insensitively).
        """
        if name == "hs_object_id":
            return "id", [], "id"
        if name == MODIFIED_PROPERTY.get(object_type, "hs_lastmodifieddate"):
            return "updated_ms", [], "ms"
        if name == CREATED_PROPERTY.get(object_type, "createdate"):
            return "created_ms", [], "ms"
        pdef = self.store.property(object_type, name)
        if pdef is None:
            raise _Invalid(
                f'Property "{name}" does not exist on {object_type}',
                context={"propertyName": [name]},
            )
        path = [f'$."{name}"']
        if pdef.type == "number":
            return "CAST(json_extract(properties, ?) AS REAL)", path, "number"
        if pdef.type in ("datetime", "date"):
            return "json_extract(properties, ?)", path, "datetime"
        return "lower(json_extract(properties, ?))", path, "text"

    @staticmethod
    def _operand(kind: str, value: Any, name: str) -> Any:
        if value is None:
            raise _Invalid(f"A value is required to filter on {name}")
        try:
            if kind == "id":
                return int(str(value))
            if kind == "number":
                return float(str(value))
            if kind == "ms":
                return parse_hs_datetime(value)
            if kind == "datetime":
                return format_ms(parse_hs_datetime(value))
        except ValueError:
            raise _Invalid(
                f"{value!r} is not a valid value to filter on {name}",
                context={"propertyName": [name]},
            ) from None
        return str(value).lower()

    def _compile_filters(self, object_type: str, payload: Mapping[str, Any]) -> tuple[str, list]:
        groups = payload.get("filterGroups") or []
        if not isinstance(groups, list):
            raise _Invalid("filterGroups must be a list")
        if len(groups) > SEARCH_MAX_GROUPS:
            raise _Invalid(f"Too many filter groups: at most {SEARCH_MAX_GROUPS} are allowed")
        total = 0
        clauses: list[str] = []
        params: list[Any] = []
        for group in groups:
            filters = group.get("filters") if isinstance(group, dict) else None
            if not isinstance(filters, list):
                raise _Invalid("Each filter group needs a list of filters")
            if len(filters) > SEARCH_MAX_FILTERS_PER_GROUP:
                raise _Invalid(
                    f"Too many filters in a group: at most {SEARCH_MAX_FILTERS_PER_GROUP}"
                )
            total += len(filters)
            parts: list[str] = []
            for flt in filters:
                sql, flt_params = self._compile_filter(object_type, flt)
                parts.append(sql)
                params.extend(flt_params)
            if parts:
                clauses.append("(" + " AND ".join(parts) + ")")
        if total > SEARCH_MAX_FILTERS:
            raise _Invalid(f"Too many filters: at most {SEARCH_MAX_FILTERS} in total")
        where = " OR ".join(clauses)
        query = payload.get("query")
        if isinstance(query, str) and query.strip():
            names = _QUERY_PROPERTIES[object_type]
            text = " OR ".join("lower(json_extract(properties, ?)) LIKE ?" for _ in names)
            like = f"%{query.strip().lower()}%"
            where = f"({where}) AND ({text})" if where else f"({text})"
            for name in names:
                params += [f'$."{name}"', like]
        return where, params

    def _compile_filter(self, object_type: str, flt: Any) -> tuple[str, list[Any]]:
        if not isinstance(flt, dict):
            raise _Invalid("Each filter must be an object")
        name = flt.get("propertyName")
        operator = str(flt.get("operator") or "EQ").upper()
        if not isinstance(name, str) or not name:
            raise _Invalid("A filter needs a propertyName")
        if name.startswith("associations."):
            return self._association_filter(object_type, name, operator, flt)
        expr, expr_params, kind = self._column(object_type, name)
        raw = "json_extract(properties, ?)" if expr_params else expr
        if operator in ("EQ", "NEQ", "LT", "LTE", "GT", "GTE"):
            value = self._operand(kind, flt.get("value"), name)
            sign = {"EQ": "=", "NEQ": "!=", "LT": "<", "LTE": "<=", "GT": ">", "GTE": ">="}
            sql = f"{expr} {sign[operator]} ?"
            if operator == "NEQ":  # HubSpot's NEQ also matches records without a value
                return f"({raw} IS NULL OR {sql})", [*expr_params, *expr_params, value]
            return sql, [*expr_params, value]
        if operator == "BETWEEN":
            low = self._operand(kind, flt.get("value"), name)
            high = self._operand(kind, flt.get("highValue"), name)
            return f"{expr} BETWEEN ? AND ?", [*expr_params, low, high]
        if operator in ("IN", "NOT_IN"):
            values = flt.get("values")
            if not isinstance(values, list) or not values:
                raise _Invalid(f"{operator} needs a non-empty list of values for {name}")
            operands = [self._operand(kind, v, name) for v in values]
            marks = ", ".join("?" for _ in operands)
            if operator == "IN":
                return f"{expr} IN ({marks})", [*expr_params, *operands]
            sql = f"({raw} IS NULL OR {expr} NOT IN ({marks}))"
            return sql, [*expr_params, *expr_params, *operands]
        if operator in ("HAS_PROPERTY", "NOT_HAS_PROPERTY"):
            if not expr_params:
                return ("1" if operator == "HAS_PROPERTY" else "0"), []
            test = "IS NOT NULL" if operator == "HAS_PROPERTY" else "IS NULL"
            return f"json_extract(properties, ?) {test}", list(expr_params)
        if operator in ("CONTAINS_TOKEN", "NOT_CONTAINS_TOKEN"):
            token = flt.get("value")
            if token is None or not expr_params:
                raise _Invalid(f"{operator} needs a value and a text property, not {name}")
            sql = "hs_token(json_extract(properties, ?), ?)"
            if operator == "CONTAINS_TOKEN":
                return f"{sql} = 1", [*expr_params, str(token)]
            return f"COALESCE({sql}, 0) = 0", [*expr_params, str(token)]
        raise _Invalid(f"Unknown filter operator {operator!r}")

    def _association_filter(
        self, object_type: str, name: str, operator: str, flt: Mapping[str, Any]
    ) -> tuple[str, list[Any]]:
        """``associations.deal EQ <id>``: records associated with the given record(s)."""
        to_type = resolve_object_type(name.split(".", 1)[1])
        if to_type is None or (object_type, to_type) not in HUBSPOT_DEFINED_ASSOCIATIONS:
            raise _Invalid(f"Cannot filter {object_type} on {name}")
        if operator == "EQ":
            raw_values = [flt.get("value")]
        elif operator == "IN" and isinstance(flt.get("values"), list):
            raw_values = list(flt["values"])
        else:
            raise _Invalid(f"{name} can only be filtered with EQ or IN")
        ids = [_object_id(v) for v in raw_values]
        if any(i is None for i in ids):
            raise _Invalid(f"{name} needs record ids, got {raw_values!r}")
        marks = ", ".join("?" for _ in ids)
        sql = (
            "id IN (SELECT from_id FROM hubspot_association WHERE from_type = ? AND to_type = ? "
            f"AND to_id IN ({marks}))"
        )
        return sql, [object_type, to_type, *ids]

    def _compile_sorts(self, object_type: str, sorts: Any) -> tuple[str, list[Any]]:
        if not sorts:
            return "id ASC", []
        if not isinstance(sorts, list):
            raise _Invalid("sorts must be a list")
        if len(sorts) > 1:
            raise _Invalid("Only one sort is supported by the search endpoints")
        (sort,) = sorts
        if isinstance(sort, str):
            name, direction = sort.lstrip("-"), "DESCENDING" if sort.startswith("-") else "ASC"
        elif isinstance(sort, dict) and isinstance(sort.get("propertyName"), str):
            name, direction = sort["propertyName"], str(sort.get("direction", "ASCENDING"))
        else:
            raise _Invalid(f"Invalid sort: {sort!r}")
        order = "DESC" if direction.upper().startswith("DESC") else "ASC"
        expr, params, _ = self._column(object_type, name)
        if not params:
            return f"{expr} {order}, id {order}", []
        # Records without a value come last either way, ties by id in the sort's direction.
        return f"({expr}) IS NULL, {expr} {order}, id {order}", [*params, *params]

    # -- reads --------------------------------------------------------------------------------

    def _associations_block(
        self, object_type: str, record_ids: Sequence[int], to_types: Sequence[str]
    ) -> dict[int, dict[str, Any]]:
        """The v3 ``associations`` member of records read with ``associations=...``."""
        blocks: dict[int, dict[str, Any]] = {i: {} for i in record_ids}
        for name in to_types:
            to_type = resolve_object_type(name)
            if to_type is None:
                continue
            found = self.store.associations(object_type, record_ids, to_type)
            live = self.store.get_many(to_type, {t for m in found.values() for t in m})
            singular = {"companies": "company"}.get(to_type, to_type[:-1])
            own = {"companies": "company"}.get(object_type, object_type[:-1])
            for record_id, targets in found.items():
                results = []
                for to_id, types in targets.items():
                    if to_id not in live or live[to_id].archived:
                        continue
                    for category, type_id in types:
                        unlabeled = (
                            category == HUBSPOT_DEFINED
                            and type_id
                            == next(iter(HUBSPOT_DEFINED_ASSOCIATIONS[(object_type, to_type)]))[0]
                        )
                        kind = f"{own}_to_{singular}" if unlabeled else str(type_id)
                        results.append({"id": str(to_id), "type": kind})
                if results:
                    blocks[record_id][name] = {"results": results}
        return blocks

    def _list(self, request: Request, body: bytes) -> _Answer:
        object_type = self._object_type(self._parts(request)[3])
        params = request.query_params
        limit = _int_param(params.get("limit"), 10, "limit")
        if not 1 <= limit <= LIST_PAGE_MAX:
            raise _Invalid(f"limit must be between 1 and {LIST_PAGE_MAX}, was {limit}")
        after = _int_param(params.get("after"), 0, "after")
        archived = _flag(params.get("archived"))
        records = self.store.page(object_type, archived=archived, after_id=after, limit=limit + 1)
        page, more = records[:limit], len(records) > limit
        names = self._requested_properties(request)
        defs = self.store.properties(object_type)
        results = [record.to_api(names, defs) for record in page]
        to_types = [t for v in params.getlist("associations") for t in v.split(",") if t]
        if to_types:
            blocks = self._associations_block(object_type, [r.id for r in page], to_types)
            for result, record in zip(results, page, strict=True):
                if blocks[record.id]:
                    result["associations"] = blocks[record.id]
        answer: dict[str, Any] = {"results": results}
        if more:
            next_after = str(page[-1].id + 1)
            link = f"{request.url.path}?after={next_after}&limit={limit}"
            if archived:
                link += "&archived=true"
            answer["paging"] = {"next": {"after": next_after, "link": link}}
        return _Answer(200, answer)

    def _get(self, request: Request, body: bytes) -> _Answer:
        parts = self._parts(request)
        object_type = self._object_type(parts[3])
        params = request.query_params
        archived = _flag(params.get("archived"))
        id_property = params.get("idProperty")
        record: HubSpotObject | None
        if id_property and id_property != "hs_object_id":
            if self.store.property(object_type, id_property) is None:
                raise _Invalid(f'Property "{id_property}" does not exist on {object_type}')
            record = self.store.find_by_property(object_type, id_property, [parts[4]]).get(parts[4])
        else:
            object_id = _object_id(parts[4])
            record = self.store.get(object_type, object_id) if object_id is not None else None
        if record is None or record.archived != archived:
            return _error(404, "OBJECT_NOT_FOUND", _NOT_FOUND_MESSAGE, context={"id": [parts[4]]})
        result = record.to_api(
            self._requested_properties(request), self.store.properties(object_type)
        )
        to_types = [t for v in params.getlist("associations") for t in v.split(",") if t]
        if to_types:
            block = self._associations_block(object_type, [record.id], to_types)[record.id]
            if block:
                result["associations"] = block
        return _Answer(200, result)

    def _inputs(self, payload: Mapping[str, Any], limit: int = BATCH_LIMIT) -> list[Any]:
        inputs = payload.get("inputs")
        if not isinstance(inputs, list):
            raise _Invalid("Invalid input JSON: inputs must be a list")
        if len(inputs) > limit:
            raise _Invalid(
                f"Batch input has {len(inputs)} inputs; the maximum is {limit}",
                context={"inputs": [str(len(inputs))]},
            )
        return inputs

    def _batch_read(self, request: Request, body: bytes) -> _Answer:
        object_type = self._object_type(self._parts(request)[3])
        payload = self._json_object(body)
        inputs = self._inputs(payload)
        archived = _flag(request.query_params.get("archived"))
        raw_ids = [str(i.get("id", "")) if isinstance(i, dict) else "" for i in inputs]
        id_property = payload.get("idProperty")
        found: dict[str, HubSpotObject] = {}
        if id_property and id_property != "hs_object_id":
            if self.store.property(object_type, id_property) is None:
                raise _Invalid(f'Property "{id_property}" does not exist on {object_type}')
            found = self.store.find_by_property(object_type, id_property, raw_ids)
        else:
            numeric = {raw: _object_id(raw) for raw in raw_ids}
            records = self.store.get_many(object_type, [i for i in numeric.values() if i])
            found = {raw: records[i] for raw, i in numeric.items() if i in records}
        found = {raw: r for raw, r in found.items() if r.archived == archived}
        names = self._wanted(payload.get("properties"))
        defs = self.store.properties(object_type)
        unique = {record.id: record for record in found.values()}
        results = [record.to_api(names, defs) for record in unique.values()]
        missing = list(dict.fromkeys(raw for raw in raw_ids if raw not in found))
        errors = []
        if missing:
            noun = OBJECT_NOUNS[object_type]
            errors.append(
                _batch_error(
                    "OBJECT_NOT_FOUND",
                    f"Could not get some {noun} objects, they may be deleted or not exist. "
                    "Check that ids are valid.",
                    {"ids": missing},
                )
            )
        return self._batch_answer(results, errors, ok_status=200)

    @staticmethod
    def _batch_answer(
        results: list[dict[str, Any]], errors: list[dict[str, Any]], *, ok_status: int
    ) -> _Answer:
        started = format_ms(_now_ms())
        body: dict[str, Any] = {
            "status": "COMPLETE",
            "results": _unordered(results, key=lambda r: r["id"]),
        }
        if errors:
            body["numErrors"] = len(errors)
            body["errors"] = errors
        body["startedAt"] = started
        body["completedAt"] = format_ms(_now_ms())
        return _Answer(207 if errors else ok_status, body)

    # -- writes -------------------------------------------------------------------------------

    def _check(
        self,
        object_type: str,
        properties: Any,
        *,
        existing: HubSpotObject | None = None,
    ) -> _Written:
        """Check a write's property values the way HubSpot does and normalise them.

        Unknown or read-only properties and values of the wrong type make the whole
        request invalid; an owner that does not exist (or is archived) fails only the
        record it is on.
        """
        if not isinstance(properties, dict):
            raise _Invalid("Invalid input JSON: properties must be an object")
        written = _Written({})
        owners: set[int] | None = None
        for name, raw in properties.items():
            pdef = self.store.property(object_type, str(name))
            if pdef is None:
                written.invalid.append(
                    _property_error(
                        str(name), "PROPERTY_DOESNT_EXIST", f'Property "{name}" does not exist'
                    )
                )
                continue
            if pdef.read_only or name.startswith(DATE_ENTERED_PREFIX):
                written.invalid.append(
                    _property_error(
                        name, "READ_ONLY_VALUE", f'"{name}" is a read only property; its value '
                        "cannot be set."
                    )
                )  # fmt: skip
                continue
            if raw is None or raw == "":
                written.values[name] = None
                continue
            if pdef.references == "owners":
                if owners is None:
                    owners = self.store.active_owner_ids()
                if _object_id(raw) not in owners:
                    written.owner_errors.append(
                        _property_error(
                            name,
                            "INVALID_OWNER_ID",
                            f"{raw} is not a valid owner id (it does not exist or is deactivated)",
                        )
                    )
                    continue
                written.values[name] = str(_object_id(raw))
                continue
            value, problem = self._value(object_type, pdef, raw)
            if problem is not None:
                written.invalid.append(problem)
            else:
                written.values[name] = value
        if object_type == "deals":
            self._check_stage(written, existing)
        return written

    def _value(
        self, object_type: str, pdef: PropertyDef, raw: Any
    ) -> tuple[str | None, dict[str, Any] | None]:
        name = pdef.name
        if isinstance(raw, dict | list):
            return None, _property_error(name, "INVALID_TYPE", f"{raw!r} is not a valid value")
        text = ("true" if raw else "false") if isinstance(raw, bool) else str(raw)
        if pdef.type == "number":
            try:
                number = float(text)
            except ValueError:
                return None, _property_error(
                    name, "INVALID_FLOAT", f"{text} was not a valid number."
                )
            return (str(int(number)) if number.is_integer() else repr(number)), None
        if pdef.type in ("datetime", "date"):
            try:
                ms = parse_hs_datetime(raw)
            except ValueError:
                return None, _property_error(name, "INVALID_LONG", f"{text} was not a valid long.")
            if pdef.type == "date" and ms % 86_400_000:
                return None, _property_error(
                    name, "INVALID_DATE", f"{text} is not at midnight UTC, as a date must be"
                )
            return format_ms(ms), None
        if pdef.type == "bool":
            if text.lower() not in ("true", "false"):
                return None, _property_error(
                    name, "INVALID_BOOLEAN", f"{text} was not a valid boolean."
                )
            return text.lower(), None
        if pdef.type == "enumeration" and pdef.references in (None, "timezones"):
            allowed_ok = (
                from_hubspot_timezone(text) is not None
                if pdef.references == "timezones"
                else text in {value for value, _ in pdef.options}
            )
            if not allowed_ok:
                shown = ", ".join(value for value, _ in pdef.options) or "a time zone"
                return None, _property_error(
                    name,
                    "INVALID_OPTION",
                    f"{text} was not one of the allowed options: [{shown}]",
                )
            return text, None
        if len(text) > _MAX_TEXT:
            return None, _property_error(
                name, "MAX_LENGTH_EXCEEDED", f"{name} is longer than {_MAX_TEXT} characters"
            )
        if name == "email" and object_type == "contacts" and not _EMAIL.match(text):
            return None, _property_error(name, "INVALID_EMAIL", f"Email address {text} is invalid")
        return text, None

    def _check_stage(self, written: _Written, existing: HubSpotObject | None) -> None:
        """A deal's pipeline and stage must exist and belong together."""
        values = written.values
        current = existing.properties if existing else {}
        pipeline_id = values.get("pipeline", current.get("pipeline")) or "default"
        pipelines = {p["id"]: p for p in self.store.pipelines("deals")}
        if "pipeline" in values and pipeline_id not in pipelines:
            written.invalid.append(
                _property_error(
                    "pipeline",
                    "INVALID_OPTION",
                    f"{pipeline_id} was not one of the allowed options: [{', '.join(pipelines)}]",
                )
            )
            return
        if "dealstage" in values or ("pipeline" in values and existing is not None):
            stage_id = values.get("dealstage", current.get("dealstage"))
            stages = [s["id"] for s in pipelines.get(pipeline_id, {"stages": []})["stages"]]
            if stage_id not in stages:
                written.invalid.append(
                    _property_error(
                        "dealstage",
                        "INVALID_OPTION",
                        f"{stage_id} was not one of the allowed options: [{', '.join(stages)}]",
                    )
                )

    def _derive(
        self, object_type: str, values: dict[str, str | None], before: Mapping[str, str], now: int
    ) -> None:
        """What HubSpot computes on a write: a deal's closed flags and stage entry time."""
        if object_type != "deals":
            return
        if not before:
            values.setdefault("pipeline", "default")
        stage_id = values.get("dealstage")
        if stage_id is None or stage_id == before.get("dealstage"):
            return
        found = self.store.stage("deals", stage_id)
        if found is None:
            return
        metadata = found[1]["metadata"]
        closed = metadata.get("isClosed") == "true"
        won = closed and float(metadata.get("probability", "0")) >= 1.0
        values["hs_is_closed"] = "true" if closed else "false"
        values["hs_is_closed_won"] = "true" if won else "false"
        values[f"{DATE_ENTERED_PREFIX}{stage_id}"] = format_ms(now)
        if closed and not values.get("closedate") and not before.get("closedate"):
            values["closedate"] = format_ms(now)

    def _association_targets(
        self, object_type: str, associations: Any
    ) -> tuple[list[tuple[str, int, list[tuple[str, int]]]], list[str]]:
        """Resolve a create input's ``associations``: (to type, to id, types), problems."""
        if associations is None:
            return [], []
        if not isinstance(associations, list):
            raise _Invalid("Invalid input JSON: associations must be a list")
        targets: list[tuple[str, int, list[tuple[str, int]]]] = []
        problems: list[str] = []
        defined = {
            other: {(c, t) for c, t, _ in self.store.association_types(object_type, other)}
            for other in OBJECT_NOUNS
        }
        for association in associations:
            if not isinstance(association, dict):
                raise _Invalid("Invalid input JSON: each association must be an object")
            to = association.get("to")
            to_id = _object_id(to.get("id")) if isinstance(to, dict) else None
            specs = association.get("types")
            if to_id is None or not isinstance(specs, list) or not specs:
                raise _Invalid("Invalid input JSON: an association needs to.id and types")
            to_types: set[str] = set()
            types: list[tuple[str, int]] = []
            for spec in specs:
                category = spec.get("associationCategory") if isinstance(spec, dict) else None
                type_id = spec.get("associationTypeId") if isinstance(spec, dict) else None
                if not isinstance(type_id, int) or category is None:
                    raise _Invalid("Invalid input JSON: association types need a category and id")
                matches = [
                    other for other, kinds in defined.items() if (category, type_id) in kinds
                ]
                if not matches:
                    problems.append(
                        f"association type {category}/{type_id} is not valid from {object_type}"
                    )
                    continue
                to_types.add(matches[0])
                types.append((category, type_id))
            if len(to_types) > 1:
                problems.append(f"association types for {to_id} name different object types")
            elif to_types:
                to_type = to_types.pop()
                target = self.store.get(to_type, to_id)
                if target is None or target.archived:
                    problems.append(f"{OBJECT_NOUNS[to_type].lower()} {to_id} does not exist")
                else:
                    targets.append((to_type, to_id, types))
        return targets, problems

    def _create(self, request: Request, body: bytes) -> _Answer:
        object_type = self._object_type(self._parts(request)[3])
        return self._create_inputs(object_type, [self._json_object(body)], single=True)

    def _batch_create(self, request: Request, body: bytes) -> _Answer:
        object_type = self._object_type(self._parts(request)[3])
        inputs = self._inputs(self._json_object(body))
        return self._create_inputs(object_type, inputs, single=False)

    def _create_inputs(self, object_type: str, inputs: list[Any], *, single: bool) -> _Answer:
        """Create records: all-or-nothing for malformed values, per record for the rest.

        A batch answers 201 when every record was created, else 207 with the created
        ones in ``results`` and one error per failed input (``context.objectWriteTraceId``
        names it when the input carried one: HubSpot's way to tell inputs apart).
        """
        checked: list[tuple[dict[str, Any], _Written, list, list[str]]] = []
        invalid: list[dict[str, Any]] = []
        for item in inputs:
            if not isinstance(item, dict):
                raise _Invalid("Invalid input JSON: each input must be an object")
            written = self._check(object_type, item.get("properties", {}))
            targets, problems = self._association_targets(object_type, item.get("associations"))
            invalid += written.invalid
            checked.append((item, written, targets, problems))
        if invalid:
            raise _invalid_properties(invalid)
        now = _now_ms()
        created: list[dict[str, Any]] = []
        errors: list[dict[str, Any]] = []
        with self.store.transaction():
            for item, written, targets, problems in checked:
                trace = item.get("objectWriteTraceId")
                values = {**_CREATE_DEFAULTS.get(object_type, {}), **written.values}
                missing = [n for n in _REQUIRED.get(object_type, ()) if not values.get(n)]
                failure = self._input_failure(written, missing, problems)
                if failure is not None:
                    if single:
                        raise _Invalid(failure[1], category=failure[0])
                    context = {"objectWriteTraceId": [str(trace)]} if trace is not None else {}
                    errors.append(_batch_error(failure[0], failure[1], context))
                    continue
                self._derive(object_type, values, {}, now)
                record = self.store.insert(object_type, values, created=now)
                for to_type, to_id, types in targets:
                    self.store.associate(object_type, record.id, to_type, to_id, types)
                result = record.to_api(
                    sorted(record.properties), self.store.properties(object_type)
                )
                if trace is not None:
                    result["objectWriteTraceId"] = str(trace)
                created.append(result)
        self._mark_written(object_type, [int(r["id"]) for r in created])
        if single:
            return _Answer(201, created[0])
        return self._batch_answer(created, errors, ok_status=201)

    @staticmethod
    def _input_failure(
        written: _Written, missing: list[str], problems: list[str]
    ) -> tuple[str, str] | None:
        """(category, message) of why one input cannot be written, or None."""
        if missing:
            listed = ", ".join(missing)
            return "VALIDATION_ERROR", f"Missing required properties: [{listed}]"
        if written.owner_errors:
            detail = json.dumps(written.owner_errors, separators=(",", ":"))
            return "VALIDATION_ERROR", f"Property values were not valid: {detail}"
        if problems:
            return "VALIDATION_ERROR", "Invalid associations: " + "; ".join(problems)
        return None

    def _update(self, request: Request, body: bytes) -> _Answer:
        parts = self._parts(request)
        object_type = self._object_type(parts[3])
        payload = self._json_object(body)
        object_id = _object_id(parts[4])
        record = self.store.get(object_type, object_id) if object_id is not None else None
        if record is None or record.archived:
            return _error(404, "OBJECT_NOT_FOUND", _NOT_FOUND_MESSAGE, context={"id": [parts[4]]})
        written = self._check(object_type, payload.get("properties"), existing=record)
        if written.invalid or written.owner_errors:
            raise _invalid_properties(written.invalid + written.owner_errors)
        now = _now_ms()
        values = dict(written.values)
        self._derive(object_type, values, record.properties, now)
        updated = self.store.update(object_type, record.id, values, when=now)
        self._mark_written(object_type, [record.id])
        names = sorted({*written.values, *updated.properties})
        return _Answer(200, updated.to_api(names, self.store.properties(object_type)))

    def _batch_update(self, request: Request, body: bytes) -> _Answer:
        object_type = self._object_type(self._parts(request)[3])
        inputs = self._inputs(self._json_object(body))
        ids = [_object_id(i.get("id")) if isinstance(i, dict) else None for i in inputs]
        records = self.store.get_many(object_type, [i for i in ids if i is not None])
        checked: list[tuple[dict[str, Any], HubSpotObject | None, _Written]] = []
        invalid: list[dict[str, Any]] = []
        for item, object_id in zip(inputs, ids, strict=True):
            if not isinstance(item, dict):
                raise _Invalid("Invalid input JSON: each input must be an object")
            record = records.get(object_id) if object_id is not None else None
            if record is not None and record.archived:
                record = None
            written = self._check(object_type, item.get("properties"), existing=record)
            invalid += written.invalid
            checked.append((item, record, written))
        if invalid:
            raise _invalid_properties(invalid)
        now = _now_ms()
        results: list[dict[str, Any]] = []
        errors: list[dict[str, Any]] = []
        missing: list[str] = []
        with self.store.transaction():
            for item, record, written in checked:
                if record is None:
                    missing.append(str(item.get("id")))
                    continue
                failure = self._input_failure(written, [], [])
                if failure is not None:
                    errors.append(_batch_error(*failure, {"ids": [str(record.id)]}))
                    continue
                values = dict(written.values)
                self._derive(object_type, values, record.properties, now)
                updated = self.store.update(object_type, record.id, values, when=now)
                names = sorted({*written.values, *_always_names(object_type)})
                result = updated.to_api(names, self.store.properties(object_type))
                if item.get("objectWriteTraceId") is not None:
                    result["objectWriteTraceId"] = str(item["objectWriteTraceId"])
                results.append(result)
        if missing:
            noun = OBJECT_NOUNS[object_type]
            errors.append(
                _batch_error(
                    "OBJECT_NOT_FOUND",
                    f"Could not update some {noun} objects, they may be deleted or not exist. "
                    "Check that ids are valid.",
                    {"ids": missing},
                )
            )
        self._mark_written(object_type, [int(r["id"]) for r in results])
        return self._batch_answer(results, errors, ok_status=200)

    def _archive(self, request: Request, body: bytes) -> _Answer:
        parts = self._parts(request)
        object_type = self._object_type(parts[3])
        object_id = _object_id(parts[4])
        if object_id is not None:
            self.store.archive(object_type, object_id, when=_now_ms())
        return _Answer(204)

    # -- owners, pipelines, properties ----------------------------------------------------------

    def _owners(self, request: Request, body: bytes) -> _Answer:
        params = request.query_params
        limit = _int_param(params.get("limit"), 100, "limit")
        if not 1 <= limit <= OWNERS_PAGE_MAX:
            raise _Invalid(f"limit must be between 1 and {OWNERS_PAGE_MAX}, was {limit}")
        after = _int_param(params.get("after"), 0, "after")
        owners = self.store.owners(archived=_flag(params.get("archived")))
        email = params.get("email")
        if email:
            owners = [o for o in owners if o["email"].lower() == email.lower()]
        owners = [o for o in owners if int(o["id"]) > after]
        page = owners[:limit]
        answer: dict[str, Any] = {"results": page}
        if len(owners) > limit:
            next_after = str(int(page[-1]["id"]) + 1)
            link = f"/crm/v3/owners/?after={next_after}&limit={limit}"
            answer["paging"] = {"next": {"after": next_after, "link": link}}
        return _Answer(200, answer)

    def _owner(self, request: Request, body: bytes) -> _Answer:
        wanted = self._parts(request)[3]
        params = request.query_params
        key = "userIdIncludingInactive" if params.get("idProperty") == "userId" else "id"
        for owner in self.store.owners(archived=_flag(params.get("archived"))):
            if str(owner[key]) == wanted:
                return _Answer(200, owner)
        return _error(404, "OBJECT_NOT_FOUND", f"Owner {wanted} not found")

    def _pipelines(self, request: Request, body: bytes) -> _Answer:
        object_type = self._object_type(self._parts(request)[3])
        return _Answer(200, {"results": self.store.pipelines(object_type)})

    def _pipeline(self, request: Request, body: bytes) -> _Answer:
        parts = self._parts(request)
        object_type = self._object_type(parts[3])
        for pipeline in self.store.pipelines(object_type):
            if pipeline["id"] == parts[4]:
                if len(parts) == 6:
                    return _Answer(200, {"results": pipeline["stages"]})
                return _Answer(200, pipeline)
        return _error(
            404,
            "OBJECT_NOT_FOUND",
            f"Unable to find pipeline {parts[4]} for object type {object_type}",
        )

    def _properties(self, request: Request, body: bytes) -> _Answer:
        parts = self._parts(request)
        object_type = self._object_type(parts[3])
        created = format_ms(0)
        if len(parts) == 5:
            pdef = self.store.property(object_type, parts[4])
            if pdef is None:
                return _error(
                    404,
                    "OBJECT_NOT_FOUND",
                    f"Unable to find property {parts[4]} for object type {object_type}",
                )
            return _Answer(200, pdef.to_api(object_type, created))
        defs = list(self.store.properties(object_type).values())
        if object_type == "deals":
            for pipeline in self.store.pipelines("deals"):
                for stage in pipeline["stages"]:
                    found = self.store.property("deals", f"{DATE_ENTERED_PREFIX}{stage['id']}")
                    if found is not None:
                        defs.append(found)
        return _Answer(200, {"results": [pdef.to_api(object_type, created) for pdef in defs]})

    # -- associations v4 ------------------------------------------------------------------------

    def _pair(self, request: Request) -> tuple[str, str]:
        parts = self._parts(request)
        from_type, to_type = self._object_type(parts[3]), self._object_type(parts[4])
        if (from_type, to_type) not in HUBSPOT_DEFINED_ASSOCIATIONS:
            raise _Invalid(f"{from_type} and {to_type} cannot be associated")
        return from_type, to_type

    def _associations_read(self, request: Request, body: bytes) -> _Answer:
        """v4 batch read: each input's associated records, ``ASSOCIATION_PAGE`` at a time.

        An input may carry the ``after`` of its previous page. Associations of an archived
        record are kept (HubSpot restores them with it) and still answered; associations to
        an archived record are not.
        """
        from_type, to_type = self._pair(request)
        inputs = self._inputs(self._json_object(body), ASSOCIATION_BATCH_LIMIT)
        pages: dict[str, int] = {}
        for item in inputs:
            raw = str(item.get("id", "")) if isinstance(item, dict) else ""
            after = item.get("after") if isinstance(item, dict) else None
            if after is not None and not str(after).isdigit():
                raise _Invalid(f"Invalid after: {after!r}", context={"after": [str(after)]})
            pages.setdefault(raw, int(after or 0))
        numeric = {raw: _object_id(raw) for raw in pages}
        found = self.store.associations(from_type, [i for i in numeric.values() if i], to_type)
        live = self.store.get_many(to_type, {t for m in found.values() for t in m})
        labels = {
            (category, type_id): label
            for category, type_id, label in self.store.association_types(from_type, to_type)
        }
        from_noun = OBJECT_NOUNS[from_type].lower()
        to_noun = OBJECT_NOUNS[to_type].lower()
        results: list[dict[str, Any]] = []
        errors: list[dict[str, Any]] = []
        for raw, object_id in numeric.items():
            targets = found.get(object_id, {}) if object_id is not None else {}
            to = [
                {
                    "toObjectId": to_id,
                    "associationTypes": [
                        {"category": c, "typeId": t, "label": labels.get((c, t))} for c, t in types
                    ],
                }
                for to_id, types in targets.items()
                if to_id in live and not live[to_id].archived
            ]
            start = pages[raw]
            if to and start < len(to):
                result: dict[str, Any] = {
                    "from": {"id": raw},
                    "to": to[start : start + ASSOCIATION_PAGE],
                }
                if start + ASSOCIATION_PAGE < len(to):
                    result["paging"] = {"next": {"after": str(start + ASSOCIATION_PAGE)}}
                results.append(result)
                continue
            errors.append(
                _batch_error(
                    "OBJECT_NOT_FOUND",
                    f"No {to_noun} is associated with {from_noun} {raw}.",
                    {
                        "fromObjectId": [raw],
                        "fromObjectType": [from_noun],
                        "toObjectType": [to_noun],
                    },
                    sub_category="crm.associations.NO_ASSOCIATIONS_FOUND",
                )
            )
        started = format_ms(_now_ms())
        answer: dict[str, Any] = {
            "status": "COMPLETE",
            "results": _unordered(results, key=lambda r: r["from"]["id"]),
        }
        if errors:
            answer["numErrors"] = len(errors)
            answer["errors"] = errors
        answer["startedAt"] = started
        answer["completedAt"] = format_ms(_now_ms())
        return _Answer(207 if errors else 200, answer)

    def _association_labels(self, request: Request, body: bytes) -> _Answer:
        from_type, to_type = self._pair(request)
        results = [
            {"category": category, "typeId": type_id, "label": label}
            for category, type_id, label in self.store.association_types(from_type, to_type)
        ]
        return _Answer(200, {"results": results})


def _always_names(object_type: str) -> tuple[str, ...]:
    return (
        CREATED_PROPERTY.get(object_type, "createdate"),
        "hs_object_id",
        MODIFIED_PROPERTY.get(object_type, "hs_lastmodifieddate"),
    )


# ---------------------------------------------------------------- the app


def create_hubspot_app(
    store: HubSpotStore,
    *,
    token: str,
    faults: FaultPlan | None = None,
    limits: HubSpotLimits | None = None,
) -> Starlette:
    """Build the ASGI app: the HubSpot API subset plus its /__sandbox__/hubspot/ controls."""
    api = HubSpotApi(store, token=token, faults=faults or FaultPlan(), limits=limits)

    async def control_stats(request: Request) -> Response:
        return JSONResponse(api.stats())

    async def control_limits(request: Request) -> Response:
        if request.method == "PATCH":
            try:
                changes = json.loads(await request.body() or b"{}")
                if not isinstance(changes, dict):
                    raise ValueError("expected a JSON object")
                api.limits.update(changes)
            except ValueError as exc:
                return JSONResponse({"error": str(exc)}, status_code=400)
        return JSONResponse(asdict(api.limits))

    async def fallback(request: Request) -> Response:
        body = {
            "status": "error",
            "message": f"Resource not found: {request.url.path}",
            "correlationId": _correlation_id(),
            "category": "OBJECT_NOT_FOUND",
        }
        return JSONResponse(body, status_code=404)

    methods = ["GET", "POST", "PATCH", "DELETE", "PUT"]
    app = Starlette(
        routes=[
            Route("/__sandbox__/hubspot/stats", control_stats, methods=["GET"]),
            Route("/__sandbox__/hubspot/limits", control_limits, methods=["GET", "PATCH"]),
            Route("/crm/{rest:path}", api.handle, methods=methods),
            Route("/oauth/{rest:path}", api.handle, methods=methods),
            Route("/{rest:path}", fallback, methods=methods),
        ],
    )
    app.state.hubspot_api = api
    return app
