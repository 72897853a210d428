"""HubSpot connector on hubspot-api-client: incremental deal and activity extraction, batched
task writes.

Incremental rule: deals are searched with ``hs_lastmodifieddate`` in ``[since, until)``, sorted
ascending, 200 a page. Every page after the first is a new search that starts after the last
record seen, ``(ts > last_ts) OR (ts == last_ts AND hs_object_id > last_id)`` (two filter
groups), instead of the ``paging.next.after`` offset: HubSpot answers each page as a fresh query,
so a deal modified while we page moves to the end and shifts every later record one place up,
and an offset would then skip one that never changed. Starting from the last key cannot skip,
and it never reaches the 10,000 results one search can page through. Records sharing a
timestamp are told apart by id, so none is missed or read twice: HubSpot takes one sort only,
and the rule relies on its ties coming back in id order (a page that shows otherwise is
logged; the caller's overlap re-reads the boundary next run). The caller drops rows it already
holds, as for Salesforce.

Deletions: search never returns archived (deleted) deals, so each extraction also lists the
archived deals and keeps those archived inside the window, merged into the pages in
modification order so the watermark never passes an unread deletion.

Activities (HubSpot's engagements: meetings, emails, calls, notes, tasks), one stream a type.
Incremental: the type is searched on ``hs_lastmodifieddate`` by the same keyset rule, archived
ones are listed and merged in as for deals, and each page costs one v4 association read
(activity -> deals) and, for the activities on none of the given deals, one more (activity ->
contacts): an activity on a given deal counts for that deal, one only on a deal's primary
contact counts for every given deal that contact is primary on. A deal seen for the first
time (``since`` None) is read whole: one association read deals -> type (and one primary
contacts -> type) per 1,000 ids, then a batch read per 100 activities; live ones only (there is
nothing to delete yet). Each association read follows every record's own ``after`` when one
record has more associations than an answer holds. HubSpot does not say whether it answers the
associations of an archived record; the sandbox does (HubSpot keeps them to restore it with
the record), and a deletion whose links are gone cannot be placed on a deal and is logged.

Dedupe keys: a task's key goes into a custom task property named in config (free text cannot
forge it), or, where the portal has none, onto the last line of the task body, a position only
this connector writes; CRM text that looks like a key line is neutralised first.

Transport: every API object shares one connection pool whose policy is set here (see
:class:`HubSpotTransport`), whatever retry the client was created with.
"""

from __future__ import annotations

import calendar
import html
import importlib
import json
import logging
import math
import re
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from functools import cache, cached_property
from typing import Any, TypeVar
from urllib.parse import urlsplit
from zoneinfo import available_timezones

import hubspot
import pandas as pd
import urllib3
from more_itertools import chunked
from urllib3.exceptions import ConnectTimeoutError, HTTPError, MaxRetryError, ResponseError

from handoff.config import HubSpotSettings, Settings
from handoff.crm.base import (
    ACTIVITY_COLUMNS,
    DEAL_COLUMNS,
    OPTIONAL_DEAL_COLUMNS,
    SNIPPET_CHARS,
    CrmError,
    CrmFatalError,
    CrmUnavailable,
    WriteOutcomeUnknown,
)
from handoff.crm.http import DEFAULT_TIMEOUT, READ_METHODS, READ_RETRY_STATUSES, CrmRetry
from handoff.crm.salesforce import KEY_LINE, key_in_description, neutralise_key_lines
from handoff.models import Contact, CrmTask, Person, WriteResult

log = logging.getLogger(__name__)

T = TypeVar("T")

SEARCH_PAGE = 200  # the most records one search answer holds
BATCH_LIMIT = 100  # inputs per batch read, create or update
ASSOCIATION_BATCH_LIMIT = 1000  # inputs per v4 association batch read
LIST_PAGE = 100  # records per page of a list (archived deals)
OWNERS_PAGE = 500
BODY_LIMIT = 65536  # characters in a text property, the task body included
RETRY_AFTER_MAX = 30.0  # a longer wait (the daily limit's) is not waited out
MODIFIED = "hs_lastmodifieddate"
# When a deal entered a stage: one read-only property per stage id.
DATE_ENTERED_PREFIX = "hs_v2_date_entered_"
PRIMARY_COMPANY_LABEL = "Primary"
TASK_TO_DEAL = 216  # HubSpot-defined association types
TASK_TO_CONTACT = 204
# The activity streams: HubSpot's engagement object types, and what each one is.
ENGAGEMENT_KINDS = {
    "meetings": "meeting",
    "emails": "email",
    "calls": "call",
    "notes": "note",
    "tasks": "task",
}
# What each engagement type is read with (besides hs_timestamp, the owner and the key).
ENGAGEMENT_PROPERTIES = {
    "meetings": ("hs_meeting_title", "hs_meeting_body", "hs_meeting_start_time",
                 "hs_meeting_outcome"),
    "emails": ("hs_email_subject", "hs_email_text", "hs_email_html", "hs_email_direction"),
    "calls": ("hs_call_title", "hs_call_body", "hs_call_direction", "hs_call_status"),
    "notes": ("hs_note_body",),
    "tasks": ("hs_task_subject", "hs_task_body", "hs_task_status"),
}  # fmt: skip
EMAIL_DIRECTIONS = {"EMAIL": "outbound", "INCOMING_EMAIL": "inbound", "FORWARDED_EMAIL": "internal"}
PRIORITIES = {"high": "HIGH", "normal": "MEDIUM", "medium": "MEDIUM", "low": "LOW"}
HUBSPOT_ID = re.compile(r"^\d{1,20}$")
TRUNCATED = "[... shortened to fit HubSpot's 65,536-character limit; the rest is on the deal]"
DEAL_PROPERTIES = (
    "dealname",
    "dealstage",
    "pipeline",
    "amount",
    "closedate",
    MODIFIED,
    "hubspot_owner_id",
)
# Every package whose API objects this connector uses raises its own ApiException class.
_PACKAGES = (
    "deals",
    "companies",
    "contacts",
    "objects.tasks",
    "objects.meetings",
    "objects.emails",
    "objects.calls",
    "objects.notes",
    "associations.v4",
    "owners",
    "pipelines",
    "properties",
)
API_ERRORS: tuple[type[Exception], ...] = tuple(
    importlib.import_module(f"hubspot.crm.{name}.exceptions").ApiException for name in _PACKAGES
)


# -- transport ---------------------------------------------------------------------------------


class HubSpotRetry(CrmRetry):
    """The project's retry rule (429 for every method, a write never re-sent after it may have
    reached the server), and no waiting out a Retry-After longer than ``RETRY_AFTER_MAX``:
    HubSpot's daily limit answers 429 with an hour to wait, which only the caller can judge."""

    def increment(self, method=None, url=None, response=None, error=None, *args, **kwargs):
        if response is not None and response.status == 429:
            wait = self.get_retry_after(response)
            if wait is not None and wait > RETRY_AFTER_MAX:
                pool = kwargs.get("_pool", args[0] if args else None)
                raise MaxRetryError(pool, url, ResponseError(f"429, retry after {wait:g} s"))
        return super().increment(method, url, response, error, *args, **kwargs)


def is_read(method: str, url: str) -> bool:
    """Searches and batch reads are POSTs that change nothing: retried like a GET."""
    if method.upper() in READ_METHODS:
        return True
    path = urlsplit(url).path.rstrip("/")
    return method.upper() == "POST" and path.endswith(("/search", "/batch/read"))


class HubSpotTransport(urllib3.PoolManager):
    """One connection pool for every API object: timeouts, retries and the request count.

    - every request gets ``timeout`` unless the call passes its own;
    - a 429 is retried for every method, honouring ``Retry-After``: it proves nothing was done;
    - a 5xx, a dropped connection or a read timeout is retried only for reads (GETs, searches,
      batch reads); a write (batch create or update) that may have reached HubSpot is never
      re-sent, the caller settles it by looking the records up;
    - a connection that could not be opened is retried for everything: nothing was sent.

    ``requests_made`` counts every request that reached HubSpot, transport retries included:
    urllib3 calls the retry's ``increment`` for each attempt it re-sends, and ``urlopen`` here
    sees the final one.
    """

    def __init__(
        self,
        *,
        timeout: float | tuple[float, float] = DEFAULT_TIMEOUT,
        total_retries: int = 5,
        backoff_factor: float = 0.5,
        **pool_kw: Any,
    ) -> None:
        super().__init__(num_pools=4, **pool_kw)
        self.requests_made = 0
        connect, read = timeout if isinstance(timeout, tuple) else (timeout, timeout)
        self.timeout = urllib3.Timeout(connect=connect, read=read)
        self.read_retry = HubSpotRetry(
            total=total_retries,
            connect=total_retries,
            read=2,
            status=total_retries,
            backoff_factor=backoff_factor,
            backoff_max=RETRY_AFTER_MAX,
            status_forcelist=READ_RETRY_STATUSES,
            allowed_methods=READ_METHODS | {"POST"},
            respect_retry_after_header=True,
            raise_on_status=False,  # hand the last answer to the client: it reads the body
            on_retry=self.count_request,
        )
        self.write_retry = self.read_retry.new(allowed_methods=READ_METHODS)

    def count_request(self) -> None:
        self.requests_made += 1

    def urlopen(self, method, url, redirect=True, **kw):
        if kw.get("timeout") is None:
            kw["timeout"] = self.timeout
        kw.setdefault("retries", self.read_retry if is_read(method, url) else self.write_retry)
        try:
            response = super().urlopen(method, url, redirect=redirect, **kw)
        except HTTPError as exc:
            if not sent_nothing(exc):
                self.count_request()
            raise
        self.count_request()
        return response


def sent_nothing(exc: BaseException) -> bool:
    """Whether a failed request provably never reached HubSpot (no connection was opened)."""
    reason = exc.reason if isinstance(exc, MaxRetryError) else exc
    return isinstance(reason, ConnectTimeoutError)  # NewConnectionError is one too


# -- the connector -----------------------------------------------------------------------------


@dataclass(frozen=True)
class _Stage:
    label: str
    won: bool


@dataclass(frozen=True)
class _Record:
    """A deal or an activity as read: its properties, its last change, whether archived."""

    id: str
    properties: dict[str, Any]
    modstamp: pd.Timestamp
    deleted: bool = False

    @property
    def key(self) -> tuple[pd.Timestamp, int]:
        return self.modstamp, int(self.id)


class HubSpotCRM:
    """Implements :class:`handoff.crm.base.CrmClient` for HubSpot."""

    source = "hubspot"
    write_batch_size = BATCH_LIMIT
    activity_streams = tuple(ENGAGEMENT_KINDS)

    def __init__(
        self,
        client: hubspot.Client,
        *,
        settings: HubSpotSettings,
        search_pause: float = 0.2,
        timeout: float | tuple[float, float] = DEFAULT_TIMEOUT,
        total_retries: int = 5,
        backoff_factor: float = 0.5,
    ) -> None:
        self.client = client
        self.settings = settings
        # HubSpot allows 5 searches a second per token: the next one starts this long after the
        # previous answer, so a burst never reaches the limit.
        self.search_pause = search_pause
        self.handoff_fields = settings.handoff_fields.model_dump()
        self.client_fields = {k: v for k, v in settings.client_fields.model_dump().items() if v}
        self.csm_property = settings.csm_property
        self.task_key_property = settings.task_key_property or None
        self.deal_type_property = settings.deal_type_property
        self.primary_contact_label = settings.primary_contact_label
        self.opt_out_property = settings.opt_out_property
        self.outcomes = settings.activities.outcomes
        self.scope_change_property = settings.activities.scope_change_property or None
        self._transport_options = {
            "timeout": timeout,
            "total_retries": total_retries,
            "backoff_factor": backoff_factor,
        }
        self._transport: HubSpotTransport | None = None
        self._object_apis: dict[tuple[str, str], Any] = {}
        self._last_search = -math.inf
        self._task_setup_checked = False

    @classmethod
    def from_settings(
        cls, client: hubspot.Client, settings: Settings, **options: Any
    ) -> HubSpotCRM:
        """The connector with the portal's property names from the validated configuration."""
        return cls(client, settings=settings.hubspot, **options)

    @property
    def api_calls(self) -> int:
        return self._transport.requests_made if self._transport is not None else 0

    # -- API objects: each discovery access builds a new client and pool, so build them once --

    def _wired(self, api: T) -> T:
        """Route an API object through the shared transport (one pool, one policy, one count)."""
        rest = api.api_client.rest_client
        if self._transport is None:
            # Keep the client's TLS settings; the retry and the timeout are ours.
            pool_kw = {
                key: value
                for key, value in rest.pool_manager.connection_pool_kw.items()
                if key not in ("retries", "timeout")
            }
            self._transport = HubSpotTransport(**self._transport_options, **pool_kw)
        rest.pool_manager.clear()
        rest.pool_manager = self._transport
        return api

    @cached_property
    def _deals_search(self):
        return self._wired(self.client.crm.deals.search_api)

    @cached_property
    def _deals_basic(self):
        return self._wired(self.client.crm.deals.basic_api)

    @cached_property
    def _companies_batch(self):
        return self._wired(self.client.crm.companies.batch_api)

    @cached_property
    def _contacts_batch(self):
        return self._wired(self.client.crm.contacts.batch_api)

    @cached_property
    def _tasks_batch(self):
        return self._object_api("tasks", "batch_api")

    def _object_api(self, object_type: str, which: str) -> Any:
        """An engagement type's ``search_api``, ``batch_api`` or ``basic_api``, built once."""
        key = (object_type, which)
        if key not in self._object_apis:
            api = getattr(getattr(self.client.crm.objects, object_type), which)
            self._object_apis[key] = self._wired(api)
        return self._object_apis[key]

    @cached_property
    def _associations(self):
        return self._wired(self.client.crm.associations.v4.batch_api)

    @cached_property
    def _owners_api(self):
        return self._wired(self.client.crm.owners.owners_api)

    @cached_property
    def _pipelines_api(self):
        return self._wired(self.client.crm.pipelines.pipelines_api)

    @cached_property
    def _properties_api(self):
        return self._wired(self.client.crm.properties.core_api)

    def _call(self, what: str, call: Callable[[], T], *, write: bool = False) -> T:
        """Run one API call, turning the library's failures into the pipeline's outcomes."""
        try:
            return call()
        except API_ERRORS as exc:
            raise self._outcome(exc, what, write=write) from exc
        except HTTPError as exc:
            detail = f"HubSpot did not answer {what}: {type(exc).__name__}"
            if write and not sent_nothing(exc):
                raise WriteOutcomeUnknown(f"{detail}; the request went out") from exc
            raise CrmUnavailable(detail) from exc

    def _outcome(self, exc: Any, what: str, *, write: bool) -> CrmError:
        """What a HubSpot error answer means for the caller, with HubSpot's own words."""
        status = int(getattr(exc, "status", 0) or 0)
        body = _json(getattr(exc, "body", None))
        said = body.get("message") or getattr(exc, "reason", None) or "no message"
        category = body.get("category") or "UNKNOWN"
        correlation = (
            f" (correlation id {body['correlationId']})" if "correlationId" in body else ""
        )
        detail = self._redacted(
            f"HubSpot answered {status} to {what}: {category}: {said}{correlation}"
        )
        if status == 429:
            if body.get("policyName") == "DAILY":
                return CrmFatalError(
                    f"{detail}. The portal's daily API limit is reached: retrying today cannot help"
                )
            return CrmUnavailable(f"{detail} (throttled; nothing was done)")
        if status >= 500 or status == 0:
            if write:
                return WriteOutcomeUnknown(f"{detail}; the write may have been committed")
            return CrmUnavailable(detail)
        hint = {
            401: "the access token is expired or invalid: renew the private app's access token "
            "(or the OAuth token) of the HubSpot connection",
            403: "the token lacks a scope this call needs: grant it to the private app",
        }.get(status, "the request does not fit this portal (check the names in [hubspot])")
        return CrmFatalError(f"{detail}. {hint}")

    def _redacted(self, text: str) -> str:
        token = self.client.config.get("access_token") or ""
        return text.replace(token, "[token]") if len(token) >= 4 else text

    def _search(self, api: Any, body: dict[str, Any], what: str) -> Any:
        """One search request, at most 5 a second: wait out the pause since the last answer."""
        wait = self._last_search + self.search_pause - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        try:
            return self._call(what, lambda: api.do_search(public_object_search_request=body))
        finally:
            self._last_search = time.monotonic()

    # -- portal metadata, read once per connector --------------------------------------------

    @cached_property
    def _stages(self) -> dict[str, _Stage]:
        """Deal stages by id, across pipelines: won is closed with probability 1."""
        answer = self._call(
            "reading the deal pipelines", lambda: self._pipelines_api.get_all("deals")
        )
        stages: dict[str, _Stage] = {}
        for pipeline in answer.results or []:
            for stage in pipeline.stages or []:
                meta = stage.metadata or {}
                closed = str(meta.get("isClosed", "")).lower() == "true"
                stages[stage.id] = _Stage(
                    stage.label, closed and _number(meta.get("probability")) >= 1.0
                )
        return stages

    @cached_property
    def _owners(self) -> dict[str, Person]:
        """Every owner, archived ones too (archived = inactive): two lists of 500 a page."""
        owners: dict[str, Person] = {}
        for archived in (False, True):
            after: str | None = None
            while True:
                page = self._call(
                    "listing owners",
                    lambda after=after, archived=archived: self._owners_api.get_page(
                        limit=OWNERS_PAGE, after=after, archived=archived
                    ),
                )
                for owner in page.results or []:
                    name = " ".join(p for p in (owner.first_name, owner.last_name) if p)
                    owners[str(owner.id)] = Person(
                        id=str(owner.id), name=name, email=owner.email, is_active=not archived
                    )
                after = _next_after(page)
                if after is None:
                    break
        return owners

    # -- extraction ----------------------------------------------------------------------------

    def _deal_properties(self) -> list[str]:
        won_stages = [stage_id for stage_id, stage in self._stages.items() if stage.won]
        names = [
            *DEAL_PROPERTIES,
            self.csm_property,
            self.deal_type_property,
            self.scope_change_property,
            *self.handoff_fields.values(),
            *(f"{DATE_ENTERED_PREFIX}{stage_id}" for stage_id in won_stages),
        ]
        return list(dict.fromkeys(name for name in names if name))

    def iter_changed_deals(self, since: datetime | None, until: datetime) -> Iterator[pd.DataFrame]:
        log.info("Reading deals changed in [%s, %s)", since, until)
        properties = self._deal_properties()
        deleted = self._archived(self._deals_basic, "deals", since, until, properties)
        pages = self._changed_pages(self._deals_search, "deals", since, until, properties)
        for records in _with_deletions(pages, deleted):
            yield self._deal_frame(records)

    def _changed_pages(
        self,
        api: Any,
        noun: str,
        since: datetime | None,
        until: datetime,
        properties: list[str],
    ) -> Iterator[list[_Record]]:
        """Search pages in (hs_lastmodifieddate, id) order, each starting after the last key."""
        before = _filter(MODIFIED, "LT", _ms_ceil(until))
        groups = [[before] + ([_filter(MODIFIED, "GTE", _ms_ceil(since))] if since else [])]
        while True:
            body = {
                "filterGroups": [{"filters": filters} for filters in groups],
                "sorts": [{"propertyName": MODIFIED, "direction": "ASCENDING"}],
                "properties": properties,
                "limit": SEARCH_PAGE,
            }
            answer = self._search(api, body, f"a search of changed {noun}")
            records = [
                _Record(str(r.id), dict(r.properties or {}), _moment(r.properties.get(MODIFIED)))
                for r in answer.results or []
            ]
            keys = [record.key for record in records]
            if keys != sorted(keys):
                log.warning(
                    "HubSpot returned %s out of (%s, id) order: records sharing a timestamp "
                    "at a page boundary may be read on the next run only",
                    noun,
                    MODIFIED,
                )
            if records:
                yield records
            if not records or _next_after(answer) is None:
                return
            last_ms, last_id = _ms(records[-1].modstamp), records[-1].id
            groups = [
                [_filter(MODIFIED, "GT", last_ms), before],
                [_filter(MODIFIED, "EQ", last_ms), _filter("hs_object_id", "GT", last_id)],
            ]

    def _archived(
        self, api: Any, noun: str, since: datetime | None, until: datetime, properties: list[str]
    ) -> list[_Record]:
        """Records archived (deleted) in ``[since, until)``, in (archive time, id) order.

        Search cannot see archived records and a batch read needs ids we do not have, so the
        archived ones are listed: one GET per 100 records in the recycle bin (HubSpot keeps
        them 90 days), each extraction. A portal that deletes a few a week pays one call.
        """
        found: list[_Record] = []
        after: str | None = None
        while True:
            page = self._call(
                f"listing archived {noun}",
                lambda after=after: api.get_page(
                    limit=LIST_PAGE, after=after, properties=properties, archived=True
                ),
            )
            for record in page.results or []:
                stamp = record.archived_at or record.updated_at
                moment = pd.Timestamp(stamp).tz_convert(UTC) if stamp else None
                if moment is None or moment >= until or (since and moment < since):
                    continue
                found.append(_Record(str(record.id), dict(record.properties or {}), moment, True))
            after = _next_after(page)
            if after is None:
                break
        return sorted(found, key=lambda record: record.key)

    def _deal_frame(self, records: list[_Record]) -> pd.DataFrame:
        companies = self._companies_of([record.id for record in records])
        rows = [self._deal_row(record, companies.get(record.id)) for record in records]
        doc_columns = [f"doc_{key}" for key in self.handoff_fields]
        frame = pd.DataFrame(rows, columns=DEAL_COLUMNS + OPTIONAL_DEAL_COLUMNS + doc_columns)
        frame = frame.astype(object).where(frame.notna(), None)
        frame["is_won"] = frame["is_won"].astype(bool)
        frame["is_deleted"] = frame["is_deleted"].astype(bool)
        frame["amount"] = pd.to_numeric(frame["amount"], errors="coerce")
        frame["modstamp"] = pd.to_datetime(frame["modstamp"], utc=True)
        frame["won_at"] = pd.to_datetime(frame["won_at"], utc=True)
        return frame

    def _deal_row(self, deal: _Record, company: dict[str, Any] | None) -> dict[str, Any]:
        props = deal.properties
        stage_id = props.get("dealstage") or ""
        stage = self._stages.get(stage_id)
        is_won = bool(stage and stage.won)
        closed = _moment(props.get("closedate"))
        won_at = None
        if is_won:
            # The moment it entered its won stage, else its close date.
            won_at = _moment(props.get(f"{DATE_ENTERED_PREFIX}{stage_id}")) or closed
        company = company or {}
        fields = self.client_fields
        row: dict[str, Any] = {
            "deal_id": deal.id,
            "name": props.get("dealname"),
            "account_name": company.get("name"),
            "stage": stage.label if stage else stage_id or None,
            "is_won": is_won,
            "is_deleted": deal.deleted,
            "amount": props.get("amount"),
            "close_date": closed.date() if closed is not None else None,
            "won_at": won_at,
            "modstamp": deal.modstamp,
            **self._person_columns("owner", props.get("hubspot_owner_id")),
            **self._person_columns("csm", props.get(self.csm_property)),
            **self._person_columns("account_owner", company.get("hubspot_owner_id")),
            "deal_type": _text(props.get(self.deal_type_property)),
            "scope_change": self._scope_change(props),
            "account_time_zone": iana_zone(company.get(fields.get("account_time_zone", ""))),
            "account_country": _text(company.get(fields.get("account_country", ""))),
        }
        row.update({f"doc_{key}": props.get(name) for key, name in self.handoff_fields.items()})
        return row

    def _scope_change(self, props: dict[str, Any]) -> bool | None:
        """The deal's checkbox: None when unread (not configured, or not in the portal)."""
        prop = self.scope_change_property
        if prop is None or prop not in props:
            return None
        return str(props.get(prop) or "").strip().lower() == "true"

    def _person_columns(self, prefix: str, owner_id: Any) -> dict[str, Any]:
        owner_id = _text(owner_id)
        person = self._owners.get(owner_id) if owner_id else None
        if owner_id and person is None:
            log.warning("Owner %s is not among the portal's owners: taken as inactive", owner_id)
        return {
            f"{prefix}_id": owner_id,
            f"{prefix}_name": person.name if person else None,
            f"{prefix}_email": person.email if person else None,
            # An owner HubSpot does not list can own nothing any more.
            f"{prefix}_active": person.is_active if person else (False if owner_id else None),
        }

    def _companies_of(self, deal_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        """Each deal's company (the one labelled Primary, else the first): two batch reads."""
        links = self._associated("deals", "companies", deal_ids)
        chosen = {
            deal_id: _pick(targets, PRIMARY_COMPANY_LABEL)[0]
            for deal_id, targets in links.items()
            if targets
        }
        fields = self.client_fields
        wanted = ["name", "hubspot_owner_id"] + [
            fields[key] for key in ("account_time_zone", "account_country") if key in fields
        ]
        companies = self._read(self._companies_batch, "companies", chosen.values(), wanted)
        return {deal_id: companies[cid] for deal_id, cid in chosen.items() if cid in companies}

    def _associated(
        self, from_type: str, to_type: str, ids: Iterable[str]
    ) -> dict[str, list[tuple[str, set[str]]]]:
        """``{from id: [(to id, labels)]}`` through the v4 batch read, 1,000 inputs a call.

        A record with more associations than one answer holds comes back with its own
        ``after``: it goes into a later call with that cursor until it is read whole.
        """
        found: dict[str, list[tuple[str, set[str]]]] = {}
        pending: list[dict[str, str]] = [{"id": object_id} for object_id in dict.fromkeys(ids)]
        while pending:
            chunk, pending = pending[:ASSOCIATION_BATCH_LIMIT], pending[ASSOCIATION_BATCH_LIMIT:]
            body = {"inputs": chunk}
            answer = self._call(
                f"reading {from_type}-{to_type} associations",
                lambda body=body: self._associations.get_page(
                    from_type, to_type, batch_input_public_fetch_associations_batch_request=body
                ),
            )
            # Records without any association come back as errors: nothing to read there.
            for result in answer.results or []:
                from_id = str(result._from.id)
                found.setdefault(from_id, []).extend(
                    (str(to.to_object_id), {t.label for t in to.association_types or [] if t.label})
                    for to in result.to or []
                )
                after = _next_after(result)
                if after is not None:
                    pending.append({"id": from_id, "after": after})
        return found

    def _read(
        self, api: Any, noun: str, ids: Any, properties: Sequence[str]
    ) -> dict[str, dict[str, Any]]:
        """Live records by id, 100 a call: ``{id: properties}``; missing ids are left out."""
        found: dict[str, dict[str, Any]] = {}
        for chunk in chunked(list(dict.fromkeys(ids)), BATCH_LIMIT):
            body = {
                "inputs": [{"id": object_id} for object_id in chunk],
                "properties": list(properties),
                "propertiesWithHistory": [],
            }
            answer = self._call(
                f"a batch read of {noun}",
                lambda body=body: api.read(batch_read_input_simple_public_object_id=body),
            )
            for record in answer.results or []:
                found[str(record.id)] = dict(record.properties or {})
        return found

    # -- activities ----------------------------------------------------------------------------

    def iter_activities(
        self,
        stream: str,
        deals: Mapping[str, str | None],
        since: datetime | None,
        until: datetime,
    ) -> Iterator[pd.DataFrame]:
        """One engagement type's activities on these deals (see the module's docstring)."""
        if stream not in ENGAGEMENT_KINDS:
            raise ValueError(
                f"{stream!r} is not an activity stream of HubSpot: {self.activity_streams}"
            )
        if not deals:
            return
        log.info("Reading %s of %d deals changed in [%s, %s)", stream, len(deals), since, until)
        if since is None:
            yield from self._activity_history(stream, *_attribution(deals), until)
            return
        properties = self._activity_properties(stream)
        deleted = self._archived(
            self._object_api(stream, "basic_api"), stream, since, until, properties
        )
        search = self._object_api(stream, "search_api")
        pages = self._changed_pages(search, stream, since, until, properties)
        attribution: tuple[dict[str, str | None], dict[str, list[str]]] | None = None
        for records in _with_deletions(pages, deleted):
            if not records:
                continue
            if attribution is None:  # the deals are looked at only once something changed
                attribution = _attribution(deals)
            given, primary_of = attribution
            ids = [record.id for record in records]
            on_deals = self._associated(stream, "deals", ids)
            owners = {
                record_id: [d for d, _ in on_deals.get(record_id, []) if d in given]
                for record_id in ids
            }
            unplaced = [record_id for record_id, found in owners.items() if not found]
            on_contacts = (
                self._associated(stream, "contacts", unplaced) if unplaced and primary_of else {}
            )
            for record_id in unplaced:
                owners[record_id] = list(
                    dict.fromkeys(
                        deal_id
                        for contact_id, _ in on_contacts.get(record_id, [])
                        for deal_id in primary_of.get(contact_id, [])
                    )
                )
            unlinked = [
                r.id
                for r in records
                if r.deleted and not on_deals.get(r.id) and not on_contacts.get(r.id)
            ]
            if unlinked:
                log.info(
                    "%d archived %s come without associations: not placed", len(unlinked), stream
                )
            frame = self._activity_frame(stream, records, owners)
            if len(frame):
                yield frame

    def _activity_history(
        self,
        stream: str,
        given: dict[str, str | None],
        primary_of: dict[str, list[str]],
        until: datetime,
    ) -> Iterator[pd.DataFrame]:
        """Every live activity of a type on deals seen for the first time, modified before
        ``until``: associations from the deals (and their primary contacts), then the records,
        100 a call, in (modified, id) order."""
        owners: dict[str, list[str]] = {}
        for deal_id, targets in self._associated("deals", stream, list(given)).items():
            for record_id, _ in targets:
                owners.setdefault(record_id, []).append(deal_id)
        if primary_of:
            through_contact: dict[str, list[str]] = {}
            for contact_id, targets in self._associated("contacts", stream, primary_of).items():
                for record_id, _ in targets:
                    if record_id not in owners:
                        through_contact.setdefault(record_id, []).extend(primary_of[contact_id])
            owners.update(through_contact)
        properties = self._activity_properties(stream)
        found = self._read(self._object_api(stream, "batch_api"), stream, owners, properties)
        cutoff = pd.Timestamp(until).tz_convert(UTC)
        records = [
            _Record(record_id, props, _moment(props.get(MODIFIED)))
            for record_id, props in found.items()
        ]
        records = sorted(
            (r for r in records if r.modstamp is not None and r.modstamp < cutoff),
            key=lambda record: record.key,
        )
        owners = {record_id: list(dict.fromkeys(deals)) for record_id, deals in owners.items()}
        for page in chunked(records, SEARCH_PAGE):
            yield self._activity_frame(stream, page, owners)

    def _activity_properties(self, stream: str) -> list[str]:
        names = [*ENGAGEMENT_PROPERTIES[stream], "hs_timestamp", "hubspot_owner_id", MODIFIED]
        if stream == "tasks" and self.task_key_property:
            names.append(self.task_key_property)
        return names

    def _activity_frame(
        self, stream: str, records: Sequence[_Record], owners: Mapping[str, Sequence[str]]
    ) -> pd.DataFrame:
        """``ACTIVITY_COLUMNS`` rows: one per activity and deal it counts for."""
        rows = [
            {**row, "deal_id": deal_id}
            for record in records
            if owners.get(record.id)
            for row in [self._activity_row(stream, record)]
            for deal_id in owners[record.id]
        ]
        frame = pd.DataFrame(rows, columns=ACTIVITY_COLUMNS)
        frame = frame.astype(object).where(frame.notna(), None)
        frame["is_deleted"] = frame["is_deleted"].astype(bool)
        for column in ("occurred_at", "modstamp"):
            frame[column] = pd.to_datetime(frame[column], utc=True).astype("datetime64[ns, UTC]")
        return frame

    def _activity_row(self, stream: str, record: _Record) -> dict[str, Any]:
        props = record.properties
        kind = ENGAGEMENT_KINDS[stream]
        direction, outcome, owner_id = "internal", None, _text(props.get("hubspot_owner_id"))
        occurred = _moment(props.get("hs_timestamp"))
        if stream == "meetings":
            subject, body = props.get("hs_meeting_title"), _plain(props.get("hs_meeting_body"))
            direction = "outbound"
            occurred = _moment(props.get("hs_meeting_start_time")) or occurred
            outcome = self.outcomes.outcome_of(props.get("hs_meeting_outcome"))
        elif stream == "emails":
            subject = props.get("hs_email_subject")
            body = _text(props.get("hs_email_text")) or _plain(props.get("hs_email_html"))
            sent = str(props.get("hs_email_direction") or "").strip().upper()
            direction = EMAIL_DIRECTIONS.get(sent, "outbound")
            if direction == "inbound":
                owner_id = None
        elif stream == "calls":
            subject, body = props.get("hs_call_title"), _plain(props.get("hs_call_body"))
            inbound = str(props.get("hs_call_direction") or "").strip().upper() == "INBOUND"
            direction = "inbound" if inbound else "outbound"
            outcome = self.outcomes.outcome_of(props.get("hs_call_status"))
        elif stream == "notes":
            body = _plain(props.get("hs_note_body"))
            first = next((line.strip() for line in (body or "").splitlines() if line.strip()), "")
            subject = first[:60]
        else:
            subject, body = props.get("hs_task_subject"), _plain(props.get("hs_task_body"))
            outcome = self.outcomes.outcome_of(props.get("hs_task_status"))
        return {
            "activity_id": f"{stream}:{record.id}",
            "kind": kind,
            "direction": direction,
            "occurred_at": occurred or _moment(props.get("hs_createdate")) or record.modstamp,
            "outcome": outcome,
            "subject": _text(subject),
            "snippet": body[:SNIPPET_CHARS] if body else None,
            "owner_id": owner_id,
            "handoff_key": self._task_key(props) if stream == "tasks" else None,
            "is_deleted": record.deleted,
            "modstamp": record.modstamp,
        }

    # -- contacts and users --------------------------------------------------------------------

    def primary_contacts(self, deal_ids: Sequence[str]) -> dict[str, Contact]:
        """The contact labelled as primary on each deal, else its first associated contact."""
        ids = [_checked_id(deal_id) for deal_id in deal_ids]
        links = self._associated("deals", "contacts", ids)
        chosen: dict[str, str] = {}
        for deal_id in ids:
            if not links.get(deal_id):
                continue
            contact_id, labelled = _pick(links[deal_id], self.primary_contact_label)
            if not labelled:
                log.warning(
                    "Deal %s has no contact labelled %r: using its first associated contact %s",
                    deal_id,
                    self.primary_contact_label,
                    contact_id,
                )
            chosen[deal_id] = contact_id
        wanted = ["firstname", "lastname", "email", self.opt_out_property]
        wanted += list(self._contact_fields().values())
        records = self._read(self._contacts_batch, "contacts", chosen.values(), wanted)
        return {
            deal_id: self._contact(contact_id, records[contact_id])
            for deal_id, contact_id in chosen.items()
            if contact_id in records
        }

    def _contact_fields(self) -> dict[str, str]:
        """``{Contact attribute: property}`` for the contact properties the field map names."""
        names = {
            "time_zone": "contact_time_zone",
            "country": "contact_country",
            "locale": "contact_locale",
            "salutation": "salutation",
        }
        return {
            attr: self.client_fields[key]
            for attr, key in names.items()
            if key in self.client_fields
        }

    def _contact(self, contact_id: str, props: dict[str, Any]) -> Contact:
        located = {attr: _text(props.get(name)) for attr, name in self._contact_fields().items()}
        if "time_zone" in located:
            located["time_zone"] = iana_zone(located["time_zone"])
        if "locale" in located:
            located["locale"] = locale_name(located["locale"])
        return Contact(
            id=contact_id,
            first_name=_text(props.get("firstname")),
            last_name=_text(props.get("lastname")),
            email=_text(props.get("email")),
            opted_out=str(props.get(self.opt_out_property) or "").lower() == "true",
            **located,
        )

    def set_email_opt_out(self, contact_ids: Sequence[str]) -> list[WriteResult]:
        """Set the opt-out property on contacts, 100 a call.

        Setting it twice is harmless, so an answer that was lost is simply tried again: a 5xx
        is a refusal to retry later, not an unknown outcome.
        """
        results: list[WriteResult] = []
        for chunk in chunked([_checked_id(i) for i in contact_ids], BATCH_LIMIT):
            body = {
                "inputs": [
                    {"id": cid, "properties": {self.opt_out_property: "true"}} for cid in chunk
                ]
            }
            answer = self._call(
                "an update of contacts' email opt-out",
                lambda body=body: self._contacts_batch.update(
                    batch_input_simple_public_object_batch_input=body
                ),
            )
            done = {str(record.id) for record in answer.results or []}
            refused: dict[str, str] = {}
            for error in getattr(answer, "errors", None) or []:
                for cid in (error.context or {}).get("ids") or []:
                    refused[str(cid)] = _error_text(error)
            for cid in chunk:
                error = None if cid in done else refused.get(cid, "HubSpot gave no result for it")
                results.append(WriteResult(cid, cid in done, cid, error))
        return results

    def users_by_email(self, emails: Sequence[str]) -> dict[str, Person]:
        """Owners by email (lower-cased) from the owners read once a connector; active first."""
        wanted = {email.strip().lower() for email in emails if email}
        users: dict[str, Person] = {}
        for person in self._owners.values():
            key = (person.email or "").lower()
            if key in wanted and (
                key not in users or (person.is_active and not users[key].is_active)
            ):
                users[key] = person
        return users

    # -- write-back ----------------------------------------------------------------------------

    def check_task_setup(self) -> None:
        """The key property named in config exists on tasks (one properties call, then cached)."""
        prop = self.task_key_property
        if prop is None or self._task_setup_checked:
            return
        try:
            described = self._call(
                f"reading the task property {prop}",
                lambda: self._properties_api.get_by_name("tasks", prop),
            )
        except CrmFatalError as exc:
            if getattr(exc.__cause__, "status", None) != 404:
                raise
            described = None
        meta = getattr(described, "modification_metadata", None)
        if described is None or getattr(meta, "read_only_value", False):
            state = "does not exist" if described is None else "is read-only"
            raise CrmFatalError(
                f"the HubSpot task property {prop!r} (setting [hubspot].task_key_property) "
                f"{state} in this portal: create it as a single-line text property on tasks, "
                'or set task_key_property = "" to keep dedupe keys on the last line of the '
                "task body"
            )
        self._task_setup_checked = True

    def create_tasks(self, tasks: Sequence[CrmTask]) -> list[WriteResult]:
        if len(tasks) > BATCH_LIMIT:
            raise ValueError(f"{len(tasks)} tasks in one call; the limit is {BATCH_LIMIT}")
        if not tasks:
            return []
        keys = [task.dedupe_key for task in tasks]
        if len(set(keys)) != len(keys):
            raise ValueError("two tasks share a dedupe key: answers are matched by key")
        body = {"inputs": [self._task_input(task) for task in tasks]}
        answer = self._call(
            f"writing {len(tasks)} tasks",
            lambda: self._tasks_batch.create(
                batch_input_simple_public_object_batch_input_for_create=body
            ),
            write=True,
        )
        return self._task_results(keys, answer)

    def _task_input(self, task: CrmTask) -> dict[str, Any]:
        properties = {
            "hs_task_subject": task.subject,
            "hs_task_body": body_with_key(task.description, task.dedupe_key),
            "hs_timestamp": due_timestamp(task.due_date),
            "hs_task_priority": PRIORITIES.get(task.priority.strip().lower(), "NONE"),
            "hs_task_status": "NOT_STARTED",
            "hs_task_type": "TODO",
            "hubspot_owner_id": task.owner_id,
        }
        if self.task_key_property:
            properties[self.task_key_property] = task.dedupe_key
        associations = [_association(task.deal_id, TASK_TO_DEAL)]
        if task.contact_id:
            associations.append(_association(task.contact_id, TASK_TO_CONTACT))
        # The trace id names the input in a 207's errors, which carry no properties.
        return {
            "properties": properties,
            "associations": associations,
            "objectWriteTraceId": task.dedupe_key,
        }

    def _task_results(self, keys: list[str], answer: Any) -> list[WriteResult]:
        """One result per input, matched by content: HubSpot answers in any order."""
        wanted = set(keys)
        created: dict[str, str] = {}
        for record in answer.results or []:
            key = self._task_key(record.properties or {}) or record.object_write_trace_id
            if key in wanted:
                created[key] = str(record.id)
        refused: dict[str, str] = {}
        unnamed: list[str] = []
        for error in getattr(answer, "errors", None) or []:
            traces = [t for t in (error.context or {}).get("objectWriteTraceId") or [] if t]
            named = [t for t in traces if t in wanted and t not in created]
            for key in named:
                refused[key] = _error_text(error)
            if not named:
                unnamed.append(_error_text(error))
        missing = [key for key in keys if key not in created and key not in refused]
        if missing and len(missing) == len(unnamed):
            # As many errors as unanswered inputs: each of them failed, which one why is unsaid.
            refused.update((key, "; ".join(unnamed)) for key in missing)
        elif missing:
            raise WriteOutcomeUnknown(
                f"HubSpot answered {len(keys)} task inputs without a result or an error for "
                f"{len(missing)} of them (e.g. {missing[0]})"
            )
        return [
            WriteResult(key, True, external_id=created[key])
            if key in created
            else WriteResult(key, False, error=refused[key])
            for key in keys
        ]

    def _task_key(self, props: dict[str, Any]) -> str | None:
        if self.task_key_property:
            return _text(props.get(self.task_key_property))
        return key_in_body(props.get("hs_task_body") or "")

    def find_tasks(self, deal_ids: Sequence[str]) -> dict[str, str]:
        """Tasks on these deals that carry a key, through associations and a batch read.

        Not a search: HubSpot's search index lags behind writes by seconds, and reconciling a
        write whose answer was lost must see a task created a moment ago, or it is written
        twice. Costs one association read per 1,000 deals and one read per 100 of their tasks.
        """
        ids = sorted({_checked_id(deal_id) for deal_id in deal_ids})
        links = self._associated("deals", "tasks", ids)
        task_ids = [task_id for targets in links.values() for task_id, _ in targets]
        wanted = [self.task_key_property] if self.task_key_property else ["hs_task_body"]
        found: dict[str, str] = {}
        for task_id, props in self._read(self._tasks_batch, "tasks", task_ids, wanted).items():
            if key := self._task_key(props):
                found[key] = task_id
        return found


# -- helpers -----------------------------------------------------------------------------------


def body_with_key(text: str, key: str) -> str:
    """The task body as written (HTML): CRM text made harmless, cut to fit, the key line last."""
    tail = "<br><br>" + html.escape(KEY_LINE + key)
    lines = neutralise_key_lines(text).rstrip().splitlines()
    body = "<br>".join(html.escape(line) for line in lines)
    room = BODY_LIMIT - len(tail)
    if len(body) > room:
        body = body[: room - len(TRUNCATED) - len("<br>")]
        body = re.sub(r"&[^;<>]*$|<[^>]*$", "", body).rstrip()  # no half entity or tag
        body = f"{body}<br>{TRUNCATED}"
    return body + tail


_BREAKS = re.compile(r"(?i)<br\s*/?>|</?(?:p|div)\b[^>]*>")
_TAGS = re.compile(r"<[^>]+>")


def key_in_body(body: str) -> str | None:
    """The dedupe key on the task body's last line (HTML or plain text)."""
    text = html.unescape(_TAGS.sub("", _BREAKS.sub("\n", body)))
    return key_in_description(text)


def due_timestamp(day: date) -> str:
    """A due date as ``hs_timestamp``: noon UTC, the same calendar day from UTC-11 to UTC+11."""
    moment = datetime(day.year, day.month, day.day, 12, tzinfo=UTC)
    return moment.isoformat().replace("+00:00", "Z")


def _plain(body: Any) -> str | None:
    """An HTML property (a note, a meeting's or call's body) as stripped plain text."""
    text = _text(body)
    if text is None:
        return None
    lines = html.unescape(_TAGS.sub("", _BREAKS.sub("\n", text))).splitlines()
    return _text("\n".join(line.rstrip() for line in lines))


def _with_deletions(
    pages: Iterable[list[_Record]], deleted: list[_Record]
) -> Iterator[list[_Record]]:
    """Search pages with the archived records merged in, in (modified, id) order: each
    archived record goes into the first page whose last key is at or after its own, those
    after every page into the last one (a page is held until the next search has answered)."""
    held: list[_Record] | None = None
    for records in pages:
        if held is not None:
            yield held
        last = records[-1].key
        while deleted and deleted[0].key <= last:
            records.append(deleted.pop(0))
        records.sort(key=lambda record: record.key)
        held = records
    if held is not None or deleted:
        yield [*(held or []), *deleted]


def _slug(zone: str) -> str:
    return zone.lower().replace("/", "_slash_").replace("-", "_hyphen_")


@cache
def _zones() -> dict[str, str]:
    zones = available_timezones()
    return {**{zone.lower(): zone for zone in zones}, **{_slug(zone): zone for zone in zones}}


def iana_zone(value: Any) -> str | None:
    """An IANA zone from HubSpot's ``hs_timezone`` form (``america_slash_port_hyphen_au_hyphen_
    prince``) or from an IANA name; None when it names no zone."""
    text = _text(value)
    if text is None:
        return None
    zone = _zones().get(text.lower())
    if zone is None:
        log.info("%r is not a time zone; ignored", text)
    return zone


def locale_name(value: str | None) -> str | None:
    """A locale from HubSpot's language tag: ``zh-cn`` -> ``zh_CN``, ``ja`` -> ``ja``."""
    if not value:
        return None
    parts = [part for part in re.split(r"[-_]", value.strip()) if part]
    if not parts:
        return None
    language = parts[0].lower()
    region = parts[-1] if len(parts) > 1 and len(parts[-1]) == 2 else None
    return f"{language}_{region.upper()}" if region else language


def _association(to_id: str, type_id: int) -> dict[str, Any]:
    return {
        "to": {"id": to_id},
        "types": [{"associationCategory": "HUBSPOT_DEFINED", "associationTypeId": type_id}],
    }


def _pick(targets: list[tuple[str, set[str]]], label: str) -> tuple[str, bool]:
    """(the target carrying ``label``, True), else (the first target, False)."""
    wanted = label.strip().lower()
    for target_id, labels in targets:
        if wanted and wanted in {name.lower() for name in labels}:
            return target_id, True
    return targets[0][0], False


def _filter(name: str, operator: str, value: Any) -> dict[str, str]:
    return {"propertyName": name, "operator": operator, "value": str(value)}


def _next_after(answer: Any) -> str | None:
    paging = getattr(answer, "paging", None)
    following = getattr(paging, "next", None)
    return getattr(following, "after", None) or None


def _ms(moment: pd.Timestamp) -> int:
    return int(moment.value // 1_000_000)


def _ms_ceil(moment: datetime) -> int:
    """Epoch ms at or after ``moment``: HubSpot's stamps are whole ms, so ``>=`` and ``<``
    bounds against it keep exactly the stamps inside ``[since, until)``."""
    if moment.tzinfo is None:
        raise ValueError(f"naive datetime {moment!r}: pass an aware UTC datetime")
    # Integer microseconds, so any datetime subclass (Airflow hands tasks pendulum's) works.
    utc = moment.astimezone(UTC)
    micros = calendar.timegm(utc.timetuple()) * 1_000_000 + utc.microsecond
    return -(-micros // 1000)


def _moment(value: Any) -> pd.Timestamp | None:
    """A HubSpot datetime value (ISO text or epoch ms) as a UTC timestamp, None when empty."""
    text = _text(value)
    if text is None:
        return None
    if text.isdigit():
        return pd.Timestamp(int(text), unit="ms", tz=UTC)
    moment = pd.Timestamp(text)
    return moment.tz_localize(UTC) if moment.tzinfo is None else moment.tz_convert(UTC)


def _number(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return 0.0


def _text(value: Any) -> str | None:
    """A property's value as stripped text, None when empty."""
    text = str(value).strip() if value is not None else ""
    return text or None


def _json(body: Any) -> dict[str, Any]:
    if isinstance(body, bytes):
        body = body.decode("utf-8", "replace")
    try:
        parsed = json.loads(body) if body else {}
    except ValueError:
        return {"message": str(body)[:300]}
    return parsed if isinstance(parsed, dict) else {}


def _error_text(error: Any) -> str:
    """One batch error in HubSpot's words: category, message, and what it names."""
    text = f"{error.category}: {error.message}"
    context = {k: v for k, v in (error.context or {}).items() if k != "objectWriteTraceId"}
    return text + (f" ({json.dumps(context, sort_keys=True)})" if context else "")


def _attribution(
    deals: Mapping[str, str | None],
) -> tuple[dict[str, str | None], dict[str, list[str]]]:
    """The deals' checked ids with their primary contacts, and the deals of each contact."""
    given = {
        _checked_id(deal_id): _checked_id(contact_id) if contact_id else None
        for deal_id, contact_id in deals.items()
    }
    primary_of: dict[str, list[str]] = {}
    for deal_id, contact_id in given.items():
        if contact_id is not None:
            primary_of.setdefault(contact_id, []).append(deal_id)
    return given, primary_of


def _checked_id(value: str) -> str:
    """HubSpot record ids are numbers; anything else is a caller's mistake."""
    text = str(value or "").strip()
    if not HUBSPOT_ID.match(text):
        raise CrmError(f"{value!r} is not a HubSpot record id")
    return text
