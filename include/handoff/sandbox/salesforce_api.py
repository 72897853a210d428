"""The Salesforce REST API subset the connector uses, served over a SandboxStore.

The real ``simple_salesforce`` client must work against it unchanged, so paths,
status codes, body shapes and error codes follow Salesforce (API v59.0, any
``vNN.N`` accepted), and so do its limits: a URI of at most 16,384 bytes, a SOQL
statement of at most 100,000 characters, 2,000 records a page, 200 records a
collection write. The Composite resource runs queries only (a statement too long for a URI
travels in its body, as Salesforce advises), at most 25 a request. Control endpoints under
``/__sandbox__/`` sit outside the API: they need no session and are not counted as API calls.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import threading
from collections import Counter, OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, unquote_plus, urlsplit

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from handoff.sandbox.faults import FaultPlan, FaultRule
from handoff.sandbox.ids import make_id, normalize_id
from handoff.sandbox.soql import CompiledQuery, SoqlError, compile_soql
from handoff.sandbox.store import (
    SOBJECTS,
    FieldDef,
    SandboxStore,
    SObjectDef,
    resolve_sobject,
    sobject_for_id,
    to_storage,
)

__all__ = ["FaultPlan", "FaultRule", "create_app", "validate_record"]

log = logging.getLogger(__name__)

API_LIMIT = 15000
# The request line's URI, and the URI with every header, may hold at most this many bytes:
# Salesforce answers 414 URI Too Long, or 431 Request Header Fields Too Large, before any API
# logic runs (so a long SOQL statement in a GET fails here first).
MAX_URI_BYTES = 16_384
PAGE_SIZE = 2000
COLLECTION_LIMIT = 200
COMPOSITE_LIMIT = 25  # subrequests in one Composite request
_MAX_CURSORS = 200
_VERSION = re.compile(r"^v(\d{2,3}\.\d)(?:/(.*))?$")
_LOCATOR = re.compile(r"^(01g[0-9A-Za-z]{15})-(\d+)$")
_BATCH_SIZE = re.compile(r"batchSize\s*=\s*(\d+)", re.IGNORECASE)
_NOT_FOUND = "The requested resource does not exist"
_ROLLED_BACK = {
    "statusCode": "ALL_OR_NONE_OPERATION_ROLLED_BACK",
    "message": "Record rolled back because not all records were valid and the request was "
    "using AllOrNone header",
    "fields": [],
}


@dataclass
class _Answer:
    status: int
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)


def _error(status: int, code: str, message: str, fields: list[str] | None = None) -> _Answer:
    return _Answer(status, [{"message": message, "errorCode": code, "fields": fields or []}])


def _as_api_errors(errors: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per-record errors (statusCode) to the REST error body shape (errorCode)."""
    return [
        {"message": e["message"], "errorCode": e["statusCode"], "fields": e["fields"]}
        for e in errors
    ]


# ---------------------------------------------------------------- record validation


def _record_error(code: str, message: str, fields: list[str] | None = None) -> dict[str, Any]:
    return {"statusCode": code, "message": message, "fields": fields or []}


def _coerce(fdef: FieldDef, value: Any) -> Any:
    """Accept the JSON forms Salesforce accepts (numeric strings for numbers, too)."""
    if fdef.type in ("double", "currency") and isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    if fdef.type == "boolean" and value is None:
        return False
    if fdef.type == "boolean" and isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    return value


def validate_record(
    store: SandboxStore,
    sdef: SObjectDef,
    payload: Mapping[str, Any],
    *,
    existing: Mapping[str, Any] | None = None,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Check an insert (existing None) or update payload the way Salesforce does.

    Returns the cleaned field values keyed by canonical API name and the list of
    per-record errors (``{"statusCode", "message", "fields"}``); only write when the
    list is empty.
    """
    values: dict[str, Any] = {}
    errors: list[dict[str, Any]] = []
    for key, raw in payload.items():
        if key == "attributes":
            continue
        fdef = sdef.field(key)
        if fdef is None:
            errors.append(
                _record_error(
                    "INVALID_FIELD", f"No such column '{key}' on sobject of type {sdef.name}"
                )
            )
            continue
        if fdef.name == "Id" and existing is None:
            errors.append(_record_error("INVALID_FIELD", "cannot specify Id in an insert call"))
            continue
        if fdef.name == "Id" and existing is not None and normalize_id(str(raw)) == existing["Id"]:
            continue
        if not fdef.writable:
            errors.append(
                _record_error(
                    "INVALID_FIELD_FOR_INSERT_UPDATE",
                    f"Unable to create/update fields: {fdef.name}. Please check the security "
                    "settings of this field and verify that it is read/write for your profile "
                    "or permission set.",
                    [fdef.name],
                )
            )
            continue
        value = _coerce(fdef, raw)
        try:
            to_storage(fdef, value)
        except ValueError:
            if fdef.type == "reference":
                errors.append(
                    _record_error(
                        "MALFORMED_ID",
                        f"{fdef.label}: id value of incorrect type: {raw}",
                        [fdef.name],
                    )
                )
            else:
                errors.append(
                    _record_error(
                        "JSON_PARSER_ERROR",
                        f"Cannot deserialize instance of {fdef.type} from value {raw!r} or "
                        "request may be missing a required field",
                        [fdef.name],
                    )
                )
            continue
        values[fdef.name] = value

    missing = [
        f.name
        for f in sdef.fields
        if f.required
        and f.writable
        and (f.name in values or existing is None)
        and values.get(f.name) in (None, "")
        and f.default is None
    ]
    if missing:
        errors.append(
            _record_error(
                "REQUIRED_FIELD_MISSING",
                f"Required fields are missing: [{', '.join(missing)}]",
                missing,
            )
        )

    for name, value in values.items():
        fdef = sdef.by_lower[name.lower()]
        error = _check_value(store, sdef, fdef, value)
        if error is not None:
            errors.append(error)
    return values, errors


def _check_value(
    store: SandboxStore, sdef: SObjectDef, fdef: FieldDef, value: Any
) -> dict[str, Any] | None:
    # A restricted picklist takes only its values; null only where the field may be empty.
    if fdef.restricted and (
        value not in fdef.picklist_values if value is not None else not fdef.nillable
    ):
        return _record_error(
            "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST",
            f"{fdef.label}: bad value for restricted picklist field: {value}",
            [fdef.name],
        )
    if value is None:
        return None
    if fdef.type in ("string", "textarea", "picklist"):
        text = str(value)
        if fdef.length and len(text) > fdef.length:
            shown = text if len(text) <= 255 else text[:255] + "..."
            return _record_error(
                "STRING_TOO_LONG",
                f"{fdef.label}: data value too large: {shown} (max length={fdef.length})",
                [fdef.name],
            )
    if fdef.type != "reference":
        return None
    record_id = normalize_id(value)
    assert record_id is not None  # checked by to_storage
    target = sobject_for_id(record_id)
    if target not in fdef.reference_to:
        return _record_error(
            "FIELD_INTEGRITY_EXCEPTION",
            f"{fdef.label}: id value of incorrect type: {value}",
            [fdef.name],
        )
    related = store.get(target, record_id)
    if related is None or related["IsDeleted"]:
        return _record_error(
            "INVALID_CROSS_REFERENCE_KEY", "invalid cross reference id", [fdef.name]
        )
    if fdef.name == "OwnerId" and target == "User" and not related["IsActive"]:
        return _record_error(
            "INACTIVE_OWNER_OR_USER",
            f"operation performed with inactive user [{record_id}] as owner of "
            f"{sdef.label.lower()}",
            [fdef.name],
        )
    return None


# ---------------------------------------------------------------- query cursors


@dataclass
class _Cursor:
    compiled: CompiledQuery
    ids: list[str]
    batch: int
    endpoint: str


class _Cursors:
    """Server-side query locators: the Id list of a result, paged on request."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._cursors: OrderedDict[str, _Cursor] = OrderedDict()
        self._counter = 0

    def open(self, cursor: _Cursor) -> str:
        with self._lock:
            self._counter += 1
            locator = make_id("01g", self._counter)
            self._cursors[locator] = cursor
            while len(self._cursors) > _MAX_CURSORS:
                self._cursors.popitem(last=False)
            return locator

    def get(self, locator: str) -> _Cursor | None:
        with self._lock:
            cursor = self._cursors.get(locator)
            if cursor is not None:
                self._cursors.move_to_end(locator)
            return cursor


# ---------------------------------------------------------------- the API


class SalesforceApi:
    """Request handling behind create_app: auth, counting, faults, routing."""

    def __init__(self, store: SandboxStore, *, token: str, faults: FaultPlan) -> None:
        self.store = store
        self.token = token
        self.faults = faults
        self.cursors = _Cursors()
        self._lock = threading.Lock()
        self.api_calls = 0
        self.by_route: Counter[str] = Counter()

    # -- plumbing -----------------------------------------------------------------------------

    def _limit_header(self, count: int) -> dict[str, str]:
        return {"Sforce-Limit-Info": f"api-usage={count}/{API_LIMIT}"}

    def _respond(self, answer: _Answer, count: int) -> Response:
        headers = {**self._limit_header(count), **answer.headers}
        if answer.status == 204 or answer.body is None:
            return Response(status_code=answer.status, headers=headers)
        return JSONResponse(answer.body, status_code=answer.status, headers=headers)

    def stats(self) -> dict[str, Any]:
        """API call counts, as the control endpoint reports them."""
        with self._lock:
            return {
                "api_calls": self.api_calls,
                "by_route": dict(self.by_route),
                "faults_injected": self.faults.injected,
            }

    async def handle(self, request: Request) -> Response:
        """Entry point for every /services/data/ request."""
        refused = _oversized(request)
        if refused is not None:
            return refused
        authorization = request.headers.get("authorization", "")
        if authorization != f"Bearer {self.token}":
            with self._lock:
                count = self.api_calls
            body = [{"message": "Session expired or invalid", "errorCode": "INVALID_SESSION_ID"}]
            return JSONResponse(body, status_code=401, headers=self._limit_header(count))
        rest = request.path_params.get("rest", "")
        route_name, handler = self._route(request.method, rest)
        with self._lock:
            self.api_calls += 1
            self.by_route[route_name] += 1
            count = self.api_calls
        query = unquote_plus(request.url.query)
        target = request.url.path + (f"?{query}" if query else "")
        rule = self.faults.match(request.method, target)
        if rule is not None and not rule.after_commit:
            if rule.delay_seconds:
                await asyncio.sleep(rule.delay_seconds)
            if rule.is_error:
                log.info("Injected fault %s for %s %s", rule.error_code, request.method, target)
                return self._respond(_fault_answer(rule), count)
        body = await request.body()
        answer = await run_in_threadpool(self._safe_call, handler, request, body)
        if rule is not None and rule.after_commit:
            if rule.delay_seconds:
                log.info("Holding the committed answer %gs for %s", rule.delay_seconds, target)
                await _hold(request, rule.delay_seconds)
            if rule.is_error:
                log.info("Injected after-commit fault %s for %s", rule.error_code, target)
                answer = _fault_answer(rule)
        return self._respond(answer, count)

    def _safe_call(self, handler: Any, request: Request, body: bytes) -> _Answer:
        try:
            return handler(request, body)
        except _BadJson as exc:
            return _error(400, "JSON_PARSER_ERROR", str(exc))
        except SoqlError as exc:
            return _error(400, exc.error_code, exc.message)
        except Exception:  # the sandbox must answer like Salesforce, never hang up
            log.exception("Sandbox handler failed for %s %s", request.method, request.url.path)
            return _error(500, "UNKNOWN_EXCEPTION", "An unexpected error occurred (sandbox)")

    def _route(self, method: str, rest: str) -> tuple[str, Any]:
        if rest.strip("/") == "":
            return "versions", self._versions if method == "GET" else self._not_allowed("GET")
        match = _VERSION.match(rest)
        if match is None:
            return "not_found", self._not_found
        parts = [p for p in (match.group(2) or "").split("/") if p]
        table: list[tuple[str, str, Any]] = []
        if len(parts) == 1 and parts[0] in ("query", "queryAll"):
            table = [("GET", parts[0], self._query)]
        elif len(parts) == 2 and parts[0] in ("query", "queryAll"):
            table = [("GET", "query_more", self._query_more)]
        elif parts == ["sobjects"]:
            table = [("GET", "describe_global", self._describe_global)]
        elif len(parts) == 2 and parts[0] == "sobjects":
            table = [("GET", "sobject_info", self._sobject_info), ("POST", "create", self._create)]
        elif len(parts) == 3 and parts[0] == "sobjects" and parts[2] == "describe":
            table = [("GET", "describe", self._describe)]
        elif len(parts) == 3 and parts[0] == "sobjects":
            table = [
                ("GET", "retrieve", self._retrieve),
                ("PATCH", "update", self._update),
                ("DELETE", "delete", self._delete),
            ]
        elif parts == ["composite"]:
            table = [("POST", "composite", self._composite)]
        elif parts == ["composite", "sobjects"]:
            table = [
                ("POST", "composite_sobjects", self._composite_create),
                ("PATCH", "composite_sobjects_update", self._composite_update),
            ]
        elif parts == ["limits"]:
            table = [("GET", "limits", self._limits)]
        if not table:
            return "not_found", self._not_found
        for allowed, name, handler in table:
            if allowed == method:
                return name, handler
        return "method_not_allowed", self._not_allowed(",".join(t[0] for t in table))

    @staticmethod
    def _parts(request: Request) -> tuple[str, list[str]]:
        match = _VERSION.match(request.path_params.get("rest", ""))
        assert match is not None
        return match.group(1), [p for p in (match.group(2) or "").split("/") if p]

    @staticmethod
    def _json(body: bytes) -> Any:
        try:
            return json.loads(body or b"null")
        except ValueError as exc:
            raise _BadJson(str(exc)) from exc

    def _not_found(self, request: Request, body: bytes) -> _Answer:
        return _error(404, "NOT_FOUND", _NOT_FOUND)

    def _not_allowed(self, allowed: str) -> Any:
        def handler(request: Request, body: bytes) -> _Answer:
            message = f"HTTP Method '{request.method}' not allowed. Allowed are {allowed}"
            return _error(405, "METHOD_NOT_ALLOWED", message)

        return handler

    # -- resources ----------------------------------------------------------------------------

    def _versions(self, request: Request, body: bytes) -> _Answer:
        return _Answer(
            200, [{"label": "Winter '24", "url": "/services/data/v59.0", "version": "59.0"}]
        )

    def _limits(self, request: Request, body: bytes) -> _Answer:
        with self._lock:
            used = self.api_calls
        return _Answer(200, {"DailyApiRequests": {"Max": API_LIMIT, "Remaining": API_LIMIT - used}})

    def _query(self, request: Request, body: bytes) -> _Answer:
        version, parts = self._parts(request)
        options = _BATCH_SIZE.search(request.headers.get("sforce-query-options", ""))
        batch = min(PAGE_SIZE, max(200, int(options.group(1)))) if options else PAGE_SIZE
        return self._run_query(version, parts[0], request.query_params.get("q"), batch)

    def _run_query(self, version: str, endpoint: str, soql: str | None, batch: int) -> _Answer:
        """A query's first page (``endpoint``: query or queryAll), from a URI or a subrequest."""
        if soql is None:
            return _error(400, "MALFORMED_QUERY", "A query string has to be specified")
        compiled = compile_soql(soql, include_deleted=endpoint == "queryAll")
        if compiled.count_only:
            return _Answer(
                200, {"totalSize": compiled.count(self.store), "done": True, "records": []}
            )
        ids = compiled.ids(self.store)
        cursor = _Cursor(compiled, ids, batch, endpoint)
        locator = self.cursors.open(cursor) if len(ids) > batch else ""
        return self._page(cursor, locator, 0, version)

    def _composite(self, request: Request, body: bytes) -> _Answer:
        """The Composite resource, for queries only: each subrequest answered on its own
        (``allOrNone`` changes nothing for reads), in order, under its ``referenceId``."""
        payload = self._json(body)
        subrequests = payload.get("compositeRequest") if isinstance(payload, dict) else None
        if not isinstance(subrequests, list) or not subrequests:
            return _error(400, "JSON_PARSER_ERROR", 'Expected {"compositeRequest": [...]}')
        if len(subrequests) > COMPOSITE_LIMIT:
            message = f"Composite requests are limited to {COMPOSITE_LIMIT} subrequests"
            return _error(400, "INVALID_INPUT", message)
        answers = []
        for sub in subrequests:
            answer = self._composite_query(sub)
            reference = sub.get("referenceId") if isinstance(sub, dict) else None
            answers.append(
                {
                    "body": answer.body,
                    "httpHeaders": {},
                    "httpStatusCode": answer.status,
                    "referenceId": reference,
                }
            )
        return _Answer(200, {"compositeResponse": answers})

    def _composite_query(self, sub: Any) -> _Answer:
        if not isinstance(sub, dict) or sub.get("method") != "GET":
            return _error(400, "INVALID_INPUT", "The sandbox's Composite resource runs queries")
        url = urlsplit(str(sub.get("url", "")))
        match = _VERSION.match(url.path.removeprefix("/services/data/"))
        endpoint = (match.group(2) or "").strip("/") if match else ""
        if match is None or endpoint not in ("query", "queryAll"):
            return _error(400, "INVALID_INPUT", "The sandbox's Composite resource runs queries")
        soql = parse_qs(url.query).get("q", [None])[0]
        try:
            return self._run_query(match.group(1), endpoint, soql, PAGE_SIZE)
        except SoqlError as exc:
            return _error(400, exc.error_code, exc.message)

    def _query_more(self, request: Request, body: bytes) -> _Answer:
        version, parts = self._parts(request)
        match = _LOCATOR.match(parts[1])
        cursor = self.cursors.get(match.group(1)) if match else None
        if cursor is None or match is None:
            return _error(400, "INVALID_QUERY_LOCATOR", "invalid query locator")
        return self._page(cursor, match.group(1), int(match.group(2)), version)

    def _page(self, cursor: _Cursor, locator: str, offset: int, version: str) -> _Answer:
        page_ids = cursor.ids[offset : offset + cursor.batch]
        records = cursor.compiled.records(self.store, page_ids, api_version=version)
        done = offset + cursor.batch >= len(cursor.ids)
        result: dict[str, Any] = {"totalSize": len(cursor.ids), "done": done}
        if not done:
            next_offset = offset + cursor.batch
            result["nextRecordsUrl"] = (
                f"/services/data/v{version}/{cursor.endpoint}/{locator}-{next_offset}"
            )
        result["records"] = records
        return _Answer(200, result)

    def _sobject_def(self, name: str) -> SObjectDef | None:
        return resolve_sobject(name)

    def _describe_global(self, request: Request, body: bytes) -> _Answer:
        version, _ = self._parts(request)
        sobjects = [_object_summary(sdef, version) for sdef in SOBJECTS.values()]
        return _Answer(200, {"encoding": "UTF-8", "maxBatchSize": 200, "sobjects": sobjects})

    def _sobject_info(self, request: Request, body: bytes) -> _Answer:
        version, parts = self._parts(request)
        sdef = self._sobject_def(parts[1])
        if sdef is None:
            return _error(404, "NOT_FOUND", _NOT_FOUND)
        return _Answer(200, {"objectDescribe": _object_summary(sdef, version), "recentItems": []})

    def _describe(self, request: Request, body: bytes) -> _Answer:
        version, parts = self._parts(request)
        sdef = self._sobject_def(parts[1])
        if sdef is None:
            return _error(404, "NOT_FOUND", _NOT_FOUND)
        return _Answer(200, describe(sdef, version))

    def _record_target(
        self, request: Request
    ) -> tuple[str, SObjectDef | None, str | None, dict[str, Any] | None]:
        version, parts = self._parts(request)
        sdef = self._sobject_def(parts[1])
        record_id = normalize_id(parts[2])
        if sdef is None or record_id is None or record_id[:3] != sdef.key_prefix:
            return version, sdef, None, None
        return version, sdef, record_id, self.store.get(sdef.name, record_id)

    def _retrieve(self, request: Request, body: bytes) -> _Answer:
        version, sdef, record_id, record = self._record_target(request)
        if sdef is None or record_id is None:
            _, parts = self._parts(request)
            message = f"Provided external ID field does not exist or is not accessible: {parts[2]}"
            return _error(404, "NOT_FOUND", message)
        if record is None or record["IsDeleted"]:
            return _error(404, "NOT_FOUND", _NOT_FOUND)
        wanted = request.query_params.get("fields")
        if wanted:
            names = []
            for name in wanted.split(","):
                fdef = sdef.field(name.strip())
                if fdef is None:
                    message = f"No such column '{name.strip()}' on sobject of type {sdef.name}"
                    return _error(400, "INVALID_FIELD", message)
                names.append(fdef.name)
            record = {name: record[name] for name in names}
        url = f"/services/data/v{version}/sobjects/{sdef.name}/{record_id}"
        return _Answer(200, {"attributes": {"type": sdef.name, "url": url}, **record})

    def _create(self, request: Request, body: bytes) -> _Answer:
        _, parts = self._parts(request)
        sdef = self._sobject_def(parts[1])
        if sdef is None:
            return _error(404, "NOT_FOUND", _NOT_FOUND)
        payload = self._json(body)
        if not isinstance(payload, dict):
            return _error(400, "JSON_PARSER_ERROR", "Expected a JSON object for the record")
        with self.store.transaction():
            values, errors = validate_record(self.store, sdef, payload)
            if errors:
                return _Answer(400, _as_api_errors(errors))
            record_id = self.store.insert(sdef.name, values)
        return _Answer(201, {"id": record_id, "success": True, "errors": []})

    def _live_record(self, request: Request) -> tuple[SObjectDef, str, dict[str, Any]] | _Answer:
        """The record a PATCH or DELETE targets, or the 404 Salesforce gives."""
        _, sdef, record_id, record = self._record_target(request)
        if sdef is None or record_id is None or record is None:
            return _error(404, "NOT_FOUND", _NOT_FOUND)
        if record["IsDeleted"]:
            return _error(404, "ENTITY_IS_DELETED", "entity is deleted")
        return sdef, record_id, record

    def _update(self, request: Request, body: bytes) -> _Answer:
        target = self._live_record(request)
        if isinstance(target, _Answer):
            return target
        sdef, record_id, record = target
        payload = self._json(body)
        if not isinstance(payload, dict):
            return _error(400, "JSON_PARSER_ERROR", "Expected a JSON object for the record")
        with self.store.transaction():
            values, errors = validate_record(self.store, sdef, payload, existing=record)
            if errors:
                return _Answer(400, _as_api_errors(errors))
            self.store.update(sdef.name, record_id, values)
        return _Answer(204)

    def _delete(self, request: Request, body: bytes) -> _Answer:
        target = self._live_record(request)
        if isinstance(target, _Answer):
            return target
        sdef, record_id, _ = target
        self.store.delete(sdef.name, record_id)
        return _Answer(204)

    def _composite_create(self, request: Request, body: bytes) -> _Answer:
        return self._collection(body, self._create_one)

    def _composite_update(self, request: Request, body: bytes) -> _Answer:
        return self._collection(body, self._update_one)

    def _collection(self, body: bytes, write_one: Callable[[Any], dict[str, Any]]) -> _Answer:
        """An sObject Collections write: up to 200 records, one result each, in input order.

        Creates and updates share the envelope, the limit and the all-or-none rollback,
        as they do in Salesforce; only the per-record write differs.
        """
        payload = self._json(body)
        if not isinstance(payload, dict) or not isinstance(payload.get("records"), list):
            return _error(400, "JSON_PARSER_ERROR", 'Expected {"allOrNone": ..., "records": [...]}')
        records = payload["records"]
        if len(records) > COLLECTION_LIMIT:
            message = "record limit reached. cannot submit more than 200 records into this call"
            return _error(400, "EXCEEDED_ID_LIMIT", message)
        all_or_none = bool(payload.get("allOrNone", False))
        results: list[dict[str, Any]] = []
        try:
            with self.store.transaction():
                for record in records:
                    results.append(write_one(record))
                if all_or_none and not all(r["success"] for r in results):
                    raise _Rollback
        except _Rollback:
            results = [
                r if not r["success"] else {"success": False, "errors": [dict(_ROLLED_BACK)]}
                for r in results
            ]
        return _Answer(200, results)

    def _record_type(self, record: Any) -> SObjectDef | dict[str, Any]:
        """The sObject a collection record names in ``attributes.type``, or its failed result."""
        if not isinstance(record, dict):
            errors = [_record_error("JSON_PARSER_ERROR", "Each record must be a JSON object")]
            return {"success": False, "errors": errors}
        attributes = record.get("attributes")
        type_name = attributes.get("type") if isinstance(attributes, dict) else None
        sdef = self._sobject_def(type_name) if isinstance(type_name, str) else None
        if sdef is None:
            message = (
                f"sObject type '{type_name}' is not supported."
                if type_name
                else "Must send a concrete entity type."
            )
            return {"success": False, "errors": [_record_error("INVALID_TYPE", message)]}
        return sdef

    def _create_one(self, record: Any) -> dict[str, Any]:
        sdef = self._record_type(record)
        if isinstance(sdef, dict):
            return sdef
        with self.store.transaction():
            values, errors = validate_record(self.store, sdef, record)
            if errors:
                return {"success": False, "errors": errors}
            record_id = self.store.insert(sdef.name, values)
        return {"id": record_id, "success": True, "errors": []}

    def _update_one(self, record: Any) -> dict[str, Any]:
        """Update one collection record by its ``id``, failing it the way Salesforce does."""
        sdef = self._record_type(record)
        if isinstance(sdef, dict):
            return sdef
        raw_id = next((value for key, value in record.items() if key.lower() == "id"), None)
        if raw_id in (None, ""):
            error = _record_error("MISSING_ARGUMENT", "Id not specified in an update call")
            return {"success": False, "errors": [error]}
        record_id = normalize_id(raw_id) if isinstance(raw_id, str) else None
        if record_id is None or record_id[:3] != sdef.key_prefix:
            message = f"{sdef.label} ID: id value of incorrect type: {raw_id}"
            return {"success": False, "errors": [_record_error("MALFORMED_ID", message, ["Id"])]}
        with self.store.transaction():
            existing = self.store.get(sdef.name, record_id)
            if existing is None:
                error = _record_error("INVALID_CROSS_REFERENCE_KEY", "invalid cross reference id")
                return {"success": False, "errors": [error]}
            if existing["IsDeleted"]:
                error = _record_error("ENTITY_IS_DELETED", "entity is deleted")
                return {"success": False, "errors": [error]}
            values, errors = validate_record(self.store, sdef, record, existing=existing)
            if errors:
                return {"success": False, "errors": errors}
            self.store.update(sdef.name, record_id, values)
        return {"id": record_id, "success": True, "errors": []}


def _oversized(request: Request) -> Response | None:
    """The answer Salesforce's front end gives a request too long to read, else None."""
    scope = request.scope
    path = scope.get("raw_path") or scope["path"].encode()
    query = scope.get("query_string") or b""
    uri = len(path) + (len(query) + 1 if query else 0)
    if uri > MAX_URI_BYTES:
        return PlainTextResponse("URI Too Long", status_code=414)
    headers = sum(len(name) + len(value) + 4 for name, value in scope.get("headers", ()))
    if uri + headers > MAX_URI_BYTES:
        return PlainTextResponse("Request Header Fields Too Large", status_code=431)
    return None


def _fault_answer(rule: FaultRule) -> _Answer:
    return _Answer(rule.status or 500, rule.body(), rule.headers())


async def _hold(request: Request, seconds: float) -> None:
    """Hold a committed answer for ``seconds``, or until the client hangs up.

    The body is already read, so the only message left on the channel is the
    disconnect. Once the client is gone (killed, or gave up on a read timeout) no
    one waits for the answer, and ending the hold then keeps a stopping server from
    waiting out the rest of it.
    """

    async def hung_up() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    watcher = asyncio.ensure_future(hung_up())
    try:
        await asyncio.wait({watcher}, timeout=seconds)
    finally:
        watcher.cancel()


class _Rollback(Exception):
    """Raised inside a transaction to undo an all-or-none batch."""


class _BadJson(Exception):
    """The request body is not JSON."""


# ---------------------------------------------------------------- describe


def _object_summary(sdef: SObjectDef, version: str) -> dict[str, Any]:
    base = f"/services/data/v{version}/sobjects/{sdef.name}"
    return {
        "name": sdef.name,
        "label": sdef.label,
        "labelPlural": sdef.label_plural,
        "keyPrefix": sdef.key_prefix,
        "custom": False,
        "createable": True,
        "updateable": True,
        "deletable": True,
        "queryable": True,
        "urls": {"sobject": base, "describe": f"{base}/describe", "rowTemplate": f"{base}/{{ID}}"},
    }


def describe(sdef: SObjectDef, version: str = "59.0") -> dict[str, Any]:
    """The describe document of an sObject, generated from the schema."""
    return {
        **_object_summary(sdef, version),
        "fields": [_describe_field(fdef) for fdef in sdef.fields],
    }


_LENGTH_TYPES = frozenset({"string", "textarea", "picklist", "id", "reference"})


def _describe_field(fdef: FieldDef) -> dict[str, Any]:
    return {
        "name": fdef.name,
        "label": fdef.label,
        "type": fdef.type,
        "length": fdef.length if fdef.type in _LENGTH_TYPES else 0,
        "nillable": fdef.nillable,
        "createable": fdef.writable,
        "updateable": fdef.writable,
        "filterable": fdef.filterable,
        "sortable": fdef.filterable,
        "calculated": fdef.name == "Name" and not fdef.writable,
        "custom": fdef.name.endswith("__c"),
        "externalId": False,
        "idLookup": fdef.name == "Id",
        "defaultedOnCreate": fdef.default is not None or not fdef.writable,
        "defaultValue": fdef.default if fdef.type == "boolean" else None,
        "referenceTo": list(fdef.reference_to),
        "relationshipName": fdef.relationship_name,
        "restrictedPicklist": fdef.restricted,
        "picklistValues": [
            {
                "active": True,
                "defaultValue": value == fdef.default,
                "label": value,
                "value": value,
                "validFor": None,
            }
            for value in fdef.picklist_values
        ],
        "precision": 18 if fdef.type == "currency" else 0,
        "scale": 2 if fdef.type == "currency" else 0,
    }


# ---------------------------------------------------------------- the app


def create_app(store: SandboxStore, *, token: str, faults: FaultPlan | None = None) -> Starlette:
    """Build the ASGI app: the Salesforce API subset plus the /__sandbox__/ controls."""
    api = SalesforceApi(store, token=token, faults=faults or FaultPlan())

    async def control_faults(request: Request) -> Response:
        if request.method == "DELETE":
            return JSONResponse({"cleared": api.faults.clear()})
        if request.method == "GET":
            return JSONResponse({"rules": api.faults.rules()})
        try:
            data = json.loads(await request.body() or b"{}")
            if not isinstance(data, dict):
                raise ValueError("expected a JSON object")
            rule = api.faults.add(FaultRule.from_mapping(data))
        except ValueError as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        return JSONResponse({"id": rule.id, "rules": api.faults.rules()}, status_code=201)

    async def control_stats(request: Request) -> Response:
        return JSONResponse(api.stats())

    async def control_health(request: Request) -> Response:
        return JSONResponse({"ok": True})

    async def fallback(request: Request) -> Response:
        return JSONResponse([{"message": _NOT_FOUND, "errorCode": "NOT_FOUND"}], status_code=404)

    methods = ["GET", "POST", "PATCH", "DELETE", "PUT"]
    app = Starlette(
        routes=[
            Route("/__sandbox__/faults", control_faults, methods=["GET", "POST", "DELETE"]),
            Route("/__sandbox__/stats", control_stats, methods=["GET"]),
            Route("/__sandbox__/health", control_health, methods=["GET"]),
            Route("/services/data", api.handle, methods=methods),
            Route("/services/data/{rest:path}", api.handle, methods=methods),
            Route("/{rest:path}", fallback, methods=methods),
        ],
    )
    app.state.sandbox_api = api
    return app
