"""Salesforce connector on simple-salesforce: incremental deal extraction and batched task writes.

Incremental rule: opportunities are read with ``SystemModstamp >= since AND SystemModstamp <
until`` ordered by ``SystemModstamp, Id`` in one query stream (``queryAll``, so deleted deals
are seen). ``since`` is the stored watermark minus an overlap; rows whose (Id, SystemModstamp)
the store already holds are dropped by the caller, so records sharing a timestamp are neither
missed nor processed twice.

Activities: Task, Event and EmailMessage are three streams, each read like the deals (one
``queryAll`` stream ordered by ``SystemModstamp, Id``, deleted rows included) for a batch of
deals at a time: what is logged on the opportunities, and for Task and Event also on their
primary contacts (``WhoId``).

Long id lists: a statement that fits the request URI (Salesforce reads at most 16,384 bytes of
URI and headers) goes as a plain query; a longer one goes in the body of a Composite request
with one query subrequest, as Salesforce advises, so a batch of ids is bounded by the
statement's 100,000 characters instead. Either way a page holds 2,000 records and the next
pages are read with ``nextRecordsUrl``: ids per statement change the number of queries, never
the number of pages.

Dedupe keys: Salesforce allows no external-id field on Task, so a task's key goes into a custom
text field named in config (free text cannot forge it), or, where the org has none, onto the
last line of the Description, a position only this connector writes. Lines of CRM-supplied text
that look like a key line are neutralised before anything is written back.
"""

from __future__ import annotations

import logging
import re
import time
import unicodedata
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from functools import cached_property, partial
from typing import Any, TypeVar
from urllib.parse import urlencode, urlsplit

import pandas as pd
import requests
from more_itertools import chunked, constrained_batches
from simple_salesforce import Salesforce
from simple_salesforce.exceptions import SalesforceError, SalesforceGeneralError

from handoff.config import ActivityOutcomes, Settings
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
from handoff.crm.http import sent_nothing
from handoff.models import Contact, CrmTask, Person, WriteResult

log = logging.getLogger(__name__)

T = TypeVar("T")

COLLECTION_LIMIT = 200  # sObject Collections take at most 200 records a call
# A query whose URI would be longer goes through the Composite resource (the URI and the
# headers share 16,384 bytes; a session token and the usual headers take well under 2,000).
QUERY_URI_BUDGET = 14_000
# Characters of id lists in one statement (Salesforce's limit is 100,000 for the whole
# statement; the fields and the other conditions fit in the rest).
ID_LIST_BUDGET = 90_000
COMPOSITE_READ_ATTEMPTS = 4  # a Composite query is a read: a 5xx or a dropped line is retried
ORG_CHANGES_FROM = 200  # deals: an incremental read for more reads the org's changes at once
DESCRIPTION_LIMIT = 32000  # Task.Description is a long text area of 32,000 characters
SALESFORCE_ID = re.compile(r"^[a-zA-Z0-9]{15}(?:[a-zA-Z0-9]{3})?$")
KEY_LINE = "Handoff key: "
TRUNCATED = "[... shortened to fit Salesforce's 32,000-character limit; the rest is on the deal]"
# A 403 REQUEST_LIMIT_EXCEEDED naming this limit is about concurrent calls: it passes, retry.
_CONCURRENCY_LIMIT = "ConcurrentPerOrg"


class SalesforceCRM:
    """Implements :class:`handoff.crm.base.CrmClient` for Salesforce."""

    source = "salesforce"
    write_batch_size = COLLECTION_LIMIT
    activity_streams: tuple[str, ...] = ("Task", "Event", "EmailMessage")

    def __init__(
        self,
        client: Salesforce,
        *,
        csm_field: str,
        handoff_fields: dict[str, str],
        task_key_field: str | None = None,
        deal_type_field: str = "",
        client_fields: dict[str, str] | None = None,
        scope_change_field: str = "",
        event_outcome_field: str = "",
        activity_outcomes: ActivityOutcomes | None = None,
        note_types: Sequence[str] = ("Note",),
    ) -> None:
        self.client = client
        self.scope_change_field = scope_change_field
        self.event_outcome_field = event_outcome_field
        self.activity_outcomes = activity_outcomes or ActivityOutcomes()
        self.note_types = {value.strip().casefold() for value in note_types}
        self.deal_type_field = deal_type_field
        self.client_fields = {k: v for k, v in (client_fields or {}).items() if v}
        self.csm_field = csm_field
        self.csm_relationship = csm_field.removesuffix("__c") + "__r"
        self.handoff_fields = dict(handoff_fields)
        self.task_key_field = task_key_field or None

    @classmethod
    def from_settings(cls, client: Salesforce, settings: Settings) -> SalesforceCRM:
        """The connector with the org's field names from the validated configuration."""
        org = settings.salesforce
        return cls(
            client,
            csm_field=org.csm_field,
            handoff_fields=org.handoff_fields.model_dump(),
            task_key_field=org.task_key_field,
            deal_type_field=org.deal_type_field,
            client_fields=org.client_fields.model_dump(),
            scope_change_field=org.activities.scope_change_field,
            event_outcome_field=org.activities.event_outcome_field,
            activity_outcomes=org.activities.outcomes,
            note_types=org.activities.note_types,
        )

    @property
    def api_calls(self) -> int:
        return int(getattr(self.client.session, "requests_made", 0))

    def _call(self, what: str, call: Callable[[], T], *, write: bool = False) -> T:
        """Run one API call, turning the library's failures into the pipeline's outcomes."""
        try:
            return call()
        except SalesforceError as exc:
            raise _outcome(exc, what, write=write) from exc
        except requests.RequestException as exc:
            detail = f"Salesforce did not answer {what}: {type(exc).__name__}"
            if write and not sent_nothing(exc):
                raise WriteOutcomeUnknown(f"{detail}; the request went out") from exc
            raise CrmUnavailable(detail) from exc

    # -- extraction ----------------------------------------------------------------------------

    def deals_soql(self, since: datetime | None, until: datetime) -> str:
        csm = self.csm_relationship
        fields = [
            "Id",
            "Name",
            "Account.Name",
            "Account.OwnerId",
            "Account.Owner.Name",
            "Account.Owner.Email",
            "Account.Owner.IsActive",
            "StageName",
            "IsWon",
            "IsDeleted",
            "Amount",
            "CloseDate",
            "LastStageChangeDate",
            "SystemModstamp",
            "OwnerId",
            "Owner.Name",
            "Owner.Email",
            "Owner.IsActive",
            self.csm_field,
            f"{csm}.Name",
            f"{csm}.Email",
            f"{csm}.IsActive",
            *self.handoff_fields.values(),
            *self._optional_deal_fields(),
        ]
        where = f"SystemModstamp < {soql_datetime(until)}"
        if since is not None:
            where = f"SystemModstamp >= {soql_datetime(since)} AND {where}"
        return (
            f"SELECT {', '.join(fields)} FROM Opportunity WHERE {where} "
            "ORDER BY SystemModstamp ASC, Id ASC"
        )

    def _optional_deal_fields(self) -> dict[str, str]:
        """Org-specific deal fields that the field map names: ``{soql path: column}``."""
        paths = {
            self.deal_type_field: "deal_type",
            f"Account.{self.client_fields.get('account_time_zone', '')}": "account_time_zone",
            f"Account.{self.client_fields.get('account_country', '')}": "account_country",
            self.scope_change_field: "scope_change",
        }
        return {path: column for path, column in paths.items() if path and path != "Account."}

    def iter_changed_deals(self, since: datetime | None, until: datetime) -> Iterator[pd.DataFrame]:
        soql = self.deals_soql(since, until)
        log.info("Reading opportunities changed in [%s, %s)", since, until)
        for records in self._pages(soql, include_deleted=True):
            yield self._deal_frame(records)

    def _pages(self, soql: str, *, include_deleted: bool) -> Iterator[list[dict[str, Any]]]:
        """Follow ``nextRecordsUrl`` until ``done``: one query stream, page by page."""
        what = "a query on " + soql.split(" FROM ", 1)[-1].split(" ", 1)[0]
        result = self._first_page(soql, what, include_deleted=include_deleted)
        while True:
            if result.get("records"):
                yield result["records"]
            if result.get("done", True):
                return
            result = self._call(
                what,
                partial(
                    self.client.query_more,
                    result["nextRecordsUrl"],
                    identifier_is_url=True,
                    include_deleted=include_deleted,
                ),
            )

    def _first_page(self, soql: str, what: str, *, include_deleted: bool) -> dict[str, Any]:
        """A query's first page: in the URI when it fits, else in a Composite request's body."""
        resource = "queryAll/" if include_deleted else "query/"
        target = f"{urlsplit(self.client.base_url).path}{resource}?{urlencode({'q': soql})}"
        if len(target) <= QUERY_URI_BUDGET:
            return self._call(
                what, lambda: self.client.query(soql, include_deleted=include_deleted)
            )
        body = {
            "allOrNone": False,
            "compositeRequest": [{"method": "GET", "url": target, "referenceId": "page"}],
        }
        for attempt in range(COMPOSITE_READ_ATTEMPTS):
            try:
                answer = self._call(
                    what, lambda: self.client.restful("composite", method="POST", json=body)
                )
                page = answer["compositeResponse"][0]
                status = int(page.get("httpStatusCode") or 0)
                if status >= 300:
                    error = SalesforceGeneralError(target, status, "composite", page.get("body"))
                    raise _outcome(error, what, write=False)
                return page["body"]
            except CrmUnavailable:
                # A POST is never retried by the transport; this one only reads, so it may be.
                if attempt == COMPOSITE_READ_ATTEMPTS - 1:
                    raise
                log.info("Retrying %s through Composite (attempt %s)", what, attempt + 2)
                time.sleep(min(0.5 * 2**attempt, 8.0))
        raise AssertionError("unreachable")

    def _deal_frame(self, records: list[dict[str, Any]]) -> pd.DataFrame:
        csm = self.csm_relationship
        flat = pd.json_normalize(records)
        rename = {
            "Id": "deal_id",
            "Name": "name",
            "Account.Name": "account_name",
            "Account.OwnerId": "account_owner_id",
            "Account.Owner.Name": "account_owner_name",
            "Account.Owner.Email": "account_owner_email",
            "Account.Owner.IsActive": "account_owner_active",
            "StageName": "stage",
            "IsWon": "is_won",
            "IsDeleted": "is_deleted",
            "Amount": "amount",
            "CloseDate": "close_date",
            "LastStageChangeDate": "stage_changed_at",
            "SystemModstamp": "modstamp",
            "OwnerId": "owner_id",
            "Owner.Name": "owner_name",
            "Owner.Email": "owner_email",
            "Owner.IsActive": "owner_active",
            self.csm_field: "csm_id",
            f"{csm}.Name": "csm_name",
            f"{csm}.Email": "csm_email",
            f"{csm}.IsActive": "csm_active",
        }
        rename.update(self._optional_deal_fields())
        rename.update({field: f"doc_{key}" for key, field in self.handoff_fields.items()})
        frame = flat.reindex(columns=list(rename)).rename(columns=rename)
        frame = frame.astype(object).where(frame.notna(), None)
        frame["is_won"] = frame["is_won"].fillna(False).astype(bool)
        frame["is_deleted"] = frame["is_deleted"].fillna(False).astype(bool)
        frame["amount"] = pd.to_numeric(frame["amount"], errors="coerce")
        frame["modstamp"] = pd.to_datetime(frame["modstamp"], utc=True, format="ISO8601")
        stage_changed = pd.to_datetime(frame["stage_changed_at"], utc=True, format="ISO8601")
        close_day = pd.to_datetime(frame["close_date"], utc=True, format="ISO8601")
        # The moment the deal became Closed Won: the last stage change, else its close date.
        frame["won_at"] = stage_changed.fillna(close_day).where(frame["is_won"])
        frame["close_date"] = close_day.dt.date
        frame = frame.drop(columns=["stage_changed_at"])
        if "scope_change" in frame:  # a checkbox: True or False once read, None if unread
            checked = [None if value is None else bool(value) for value in frame["scope_change"]]
            frame["scope_change"] = pd.Series(checked, index=frame.index, dtype=object)
        doc_columns = [f"doc_{key}" for key in self.handoff_fields]
        for column in OPTIONAL_DEAL_COLUMNS:
            if column not in frame:
                frame[column] = None
        return frame[DEAL_COLUMNS + OPTIONAL_DEAL_COLUMNS + doc_columns]

    # -- activities ----------------------------------------------------------------------------

    def activities_soql(
        self,
        stream: str,
        deal_ids: Sequence[str],
        contact_ids: Sequence[str],
        since: datetime | None,
        until: datetime,
    ) -> str:
        """One batch's query: the stream's records on these deals (Task and Event: or on these
        contacts) modified in ``[since, until)``, in ``SystemModstamp, Id`` order."""
        if stream not in _ACTIVITY_FIELDS:
            raise ValueError(f"{stream!r} is not an activity stream of Salesforce")
        custom = {"Task": self.task_key_field, "Event": self.event_outcome_field}.get(stream)
        fields = [*_ACTIVITY_FIELDS[stream], *([custom] if custom else [])]
        deals = ", ".join(f"'{deal_id}'" for deal_id in deal_ids)
        if not deal_ids:  # the whole org's changes in the window (the caller filters)
            linked = ""
        elif stream == "EmailMessage":
            linked = f" AND RelatedToId IN ({deals})"
        elif contact_ids:
            contacts = ", ".join(f"'{contact_id}'" for contact_id in contact_ids)
            linked = f" AND (WhatId IN ({deals}) OR WhoId IN ({contacts}))"
        else:
            linked = f" AND WhatId IN ({deals})"
        where = f"SystemModstamp < {soql_datetime(until)}{linked}"
        if since is not None:
            where = f"SystemModstamp >= {soql_datetime(since)} AND {where}"
        return (
            f"SELECT {', '.join(fields)} FROM {stream} WHERE {where} "
            "ORDER BY SystemModstamp ASC, Id ASC"
        )

    def iter_activities(
        self,
        stream: str,
        deals: Mapping[str, str | None],
        since: datetime | None,
        until: datetime,
    ) -> Iterator[pd.DataFrame]:
        """Activities of one stream on these deals, modified in ``[since, until)``, one frame a
        page of one batch's query (as many deals a statement as its id lists allow).

        A record on one of the deals belongs to it; a record on none of them but on a deal's
        primary contact belongs to each deal that contact is primary on (a record on another
        opportunity or an account counts for the contact's deals too). Others are dropped.
        """
        if stream not in self.activity_streams:
            raise ValueError(f"{stream!r} is not an activity stream of Salesforce")
        log.info("Reading %s of %s deals changed in [%s, %s)", stream, len(deals), since, until)
        if since is not None and len(deals) > ORG_CHANGES_FROM:
            # An hour's changes: one query over the whole org (a page per 2,000 records)
            # costs less than reading them deal by deal; what is on none of them is dropped.
            yield from self._org_changes(stream, deals, since, until)
            return
        given = {_checked_id(deal_id): contact for deal_id, contact in deals.items()}
        ids_per_deal = 1 if stream == "EmailMessage" else 2  # the deal, and its contact
        for chunk in _in_lists(sorted(given), ids_per_value=ids_per_deal):
            deals_of: dict[str, list[str]] = {}
            for deal_id in chunk:
                contact = given[deal_id]
                if contact and stream != "EmailMessage":
                    deals_of.setdefault(_checked_id(contact), []).append(deal_id)
            soql = self.activities_soql(stream, chunk, sorted(deals_of), since, until)
            in_chunk = set(chunk)
            for records in self._pages(soql, include_deleted=True):
                rows = []
                for record in records:
                    related = record.get("RelatedToId" if stream == "EmailMessage" else "WhatId")
                    if related in given:
                        # Read by the batch that holds its deal, whichever batch finds it.
                        owners = [related] if related in in_chunk else []
                    else:
                        owners = deals_of.get(record.get("WhoId") or "", [])
                    row = self._activity_row(stream, record) if owners else None
                    rows += [{**row, "deal_id": deal_id} for deal_id in owners]
                if rows:
                    yield _activity_frame(rows)

    def _org_changes(
        self, stream: str, deals: Mapping[str, str | None], since: datetime, until: datetime
    ) -> Iterator[pd.DataFrame]:
        soql = self.activities_soql(stream, [], [], since, until)
        given: dict[str, str | None] | None = None
        deals_of: dict[str, list[str]] = {}
        for records in self._pages(soql, include_deleted=True):
            if not records:
                continue
            if given is None:  # the deals are looked at only once something changed
                given = dict(deals)
                if stream != "EmailMessage":
                    for deal_id, contact in given.items():
                        if contact:
                            deals_of.setdefault(contact, []).append(deal_id)
            rows = []
            for record in records:
                related = record.get("RelatedToId" if stream == "EmailMessage" else "WhatId")
                owners = (
                    [related] if related in given else deals_of.get(record.get("WhoId") or "", [])
                )
                if owners:
                    row = self._activity_row(stream, record)
                    rows += [{**row, "deal_id": deal_id} for deal_id in owners]
            if rows:
                yield _activity_frame(rows)

    def _activity_row(self, stream: str, record: dict[str, Any]) -> dict[str, Any]:
        """One record in the activity frame's terms (without its deal)."""
        row: dict[str, Any] = {
            "activity_id": record["Id"],
            "subject": _text(record.get("Subject")),
            "is_deleted": bool(record.get("IsDeleted")),
            "modstamp": record.get("SystemModstamp"),
            "handoff_key": None,
            "outcome": None,
        }
        if stream == "EmailMessage":
            incoming = bool(record.get("Incoming"))
            return row | {
                "kind": "email",
                "direction": "inbound" if incoming else "outbound",
                "occurred_at": record.get("MessageDate") or record.get("CreatedDate"),
                "snippet": _snippet(record.get("TextBody")),
                "owner_id": None if incoming else record.get("CreatedById"),
            }
        row |= {"snippet": _snippet(record.get("Description")), "owner_id": record.get("OwnerId")}
        if stream == "Event":
            outcome = record.get(self.event_outcome_field) if self.event_outcome_field else None
            return row | {
                "kind": "meeting",
                "direction": "outbound",
                "occurred_at": record.get("StartDateTime") or record.get("CreatedDate"),
                "outcome": self.activity_outcomes.outcome_of(outcome),
            }
        subtype = (record.get("TaskSubtype") or "").strip().casefold()
        task_type = (record.get("Type") or "").strip().casefold()
        if subtype == "call":
            call_type = (record.get("CallType") or "").strip().casefold()
            kind, direction = "call", _CALL_DIRECTIONS.get(call_type, "internal")
        elif task_type and task_type in self.note_types:
            kind, direction = "note", "internal"
        elif subtype == "email":
            kind, direction = "email", "outbound"
        else:
            kind, direction = "task", "internal"
        due = record.get("ActivityDate")
        completed = (record.get("Status") or "").strip().casefold() == "completed"
        if self.task_key_field:
            key = _text(record.get(self.task_key_field))
        else:
            key = key_in_description(record.get("Description") or "")
        return row | {
            "kind": kind,
            "direction": direction,
            "occurred_at": record.get("CompletedDateTime")
            or (f"{due}T00:00:00Z" if due else None)
            or record.get("CreatedDate"),
            # Notes and logged emails have no outcome; a call or a to-do is done or not (yet).
            "outcome": "completed" if completed and kind in ("call", "task") else None,
            "handoff_key": key,
        }

    def primary_contacts(self, deal_ids: Sequence[str]) -> dict[str, Contact]:
        contacts: dict[str, Contact] = {}
        for chunk in _in_lists([_checked_id(i) for i in deal_ids]):
            ids = ", ".join(f"'{deal_id}'" for deal_id in chunk)
            extra = "".join(f", Contact.{field}" for field in self._contact_fields().values())
            soql = (
                "SELECT OpportunityId, ContactId, Contact.FirstName, Contact.LastName, "
                f"Contact.Email, Contact.HasOptedOutOfEmail{extra} FROM OpportunityContactRole "
                f"WHERE IsPrimary = true AND OpportunityId IN ({ids})"
            )
            for records in self._pages(soql, include_deleted=False):
                for record in records:
                    person = record.get("Contact") or {}
                    located = {
                        key: _text(person.get(field))
                        for key, field in self._contact_fields().items()
                    }
                    contacts[record["OpportunityId"]] = Contact(
                        id=record["ContactId"],
                        first_name=person.get("FirstName"),
                        last_name=person.get("LastName"),
                        email=person.get("Email"),
                        opted_out=bool(person.get("HasOptedOutOfEmail")),
                        **located,
                    )
        return contacts

    def _contact_fields(self) -> dict[str, str]:
        """``{Contact attribute: field}`` for the contact fields the field map names."""
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

    def set_email_opt_out(self, contact_ids: Sequence[str]) -> list[WriteResult]:
        """Mark contacts as opted out of email (``HasOptedOutOfEmail``), 200 a call.

        Setting a flag to true twice is harmless, so a lost answer is simply tried again.
        """
        results: list[WriteResult] = []
        for chunk in chunked([_checked_id(i) for i in contact_ids], COLLECTION_LIMIT):
            body = {
                "allOrNone": False,
                "records": [
                    {"attributes": {"type": "Contact"}, "id": cid, "HasOptedOutOfEmail": True}
                    for cid in chunk
                ],
            }
            answers = self._call(
                "an update of contacts' email opt-out",
                lambda body=body: self.client.restful(
                    "composite/sobjects", method="PATCH", json=body
                ),
            )
            for cid, answer in zip(chunk, answers, strict=True):
                errors = "; ".join(
                    f"{e.get('statusCode')}: {e.get('message')}" for e in answer.get("errors") or []
                )
                results.append(WriteResult(cid, bool(answer.get("success")), cid, errors or None))
        return results

    def users_by_email(self, emails: Sequence[str]) -> dict[str, Person]:
        """CRM users by email (lower-cased), e.g. the configured executive who owns tasks."""
        wanted = sorted({e.strip().lower() for e in emails if e and "'" not in e})
        users: dict[str, Person] = {}
        for chunk in _in_lists(wanted):
            listed = ", ".join(f"'{email}'" for email in chunk)
            soql = f"SELECT Id, Name, Email, IsActive FROM User WHERE Email IN ({listed})"
            for records in self._pages(soql, include_deleted=False):
                for record in records:
                    person = Person(
                        id=record["Id"],
                        name=record.get("Name") or "",
                        email=record.get("Email"),
                        is_active=bool(record.get("IsActive")),
                    )
                    key = (person.email or "").lower()
                    # Several users may share an address; an active one wins.
                    if key not in users or (person.is_active and not users[key].is_active):
                        users[key] = person
        return users

    # -- write-back ----------------------------------------------------------------------------

    @cached_property
    def _task_fields(self) -> dict[str, dict[str, Any]]:
        described = self._call("describing Task", lambda: self.client.Task.describe())
        return {field["name"].lower(): field for field in described.get("fields", [])}

    def check_task_setup(self) -> None:
        """The key field named in config exists on Task and can be written and filtered."""
        if self.task_key_field is None:
            return
        field = self._task_fields.get(self.task_key_field.lower())
        if field is None or not field.get("createable") or not field.get("filterable"):
            state = "does not exist" if field is None else "is not writable and filterable"
            raise CrmFatalError(
                f"the Salesforce field Task.{self.task_key_field} (setting "
                f"[salesforce].task_key_field) {state} for this user: create it as a Text(255) "
                "custom activity field visible to the integration user, or set task_key_field "
                '= "" to keep dedupe keys on the last line of the Description'
            )

    def create_tasks(self, tasks: Sequence[CrmTask]) -> list[WriteResult]:
        if len(tasks) > COLLECTION_LIMIT:
            raise ValueError(f"{len(tasks)} tasks in one call; the limit is {COLLECTION_LIMIT}")
        if not tasks:
            return []
        body = {"allOrNone": False, "records": [self._task_record(t) for t in tasks]}
        answers = self._call(
            f"writing {len(tasks)} tasks",
            lambda: self.client.restful("composite/sobjects", method="POST", json=body),
            write=True,
        )
        if not isinstance(answers, list) or len(answers) != len(tasks):
            raise WriteOutcomeUnknown(
                f"Salesforce answered {len(tasks)} task records with {str(answers)[:200]}; "
                "expected one result per record"
            )
        return [_write_result(task, answer) for task, answer in zip(tasks, answers, strict=True)]

    def find_tasks(self, deal_ids: Sequence[str]) -> dict[str, str]:
        found: dict[str, str] = {}
        key_field = self.task_key_field
        columns = f"Id, {key_field}" if key_field else "Id, Description"
        for chunk in _in_lists(sorted({_checked_id(i) for i in deal_ids})):
            ids = ", ".join(f"'{deal_id}'" for deal_id in chunk)
            where = f"WhatId IN ({ids})" + (f" AND {key_field} != null" if key_field else "")
            soql = f"SELECT {columns} FROM Task WHERE {where}"
            for records in self._pages(soql, include_deleted=False):
                for record in records:
                    if key := task_key(record, key_field):
                        found[key] = record["Id"]
        return found

    def _task_record(self, task: CrmTask) -> dict[str, Any]:
        record: dict[str, Any] = {
            "attributes": {"type": "Task"},
            "WhatId": task.deal_id,
            "OwnerId": task.owner_id,
            "Subject": task.subject,
            "ActivityDate": task.due_date.isoformat(),
            "Priority": task.priority,
            "Status": "Not Started",
            "Description": description_with_key(task.description, task.dedupe_key),
        }
        if self.task_key_field:
            record[self.task_key_field] = task.dedupe_key
        if task.contact_id:
            record["WhoId"] = task.contact_id
        if task.remind_at:
            record["IsReminderSet"] = True
            record["ReminderDateTime"] = soql_datetime(task.remind_at)
        return record


def description_with_key(text: str, key: str) -> str:
    """The description as written: CRM text made harmless, cut to fit, the key line last."""
    tail = f"\n\n{KEY_LINE}{key}"
    body = neutralise_key_lines(text).rstrip()
    room = DESCRIPTION_LIMIT - len(tail)
    if len(body) > room:
        body = body[: room - len(TRUNCATED) - 1].rstrip() + "\n" + TRUNCATED
    return body + tail


def _looks_like_key_line(line: str) -> bool:
    folded = unicodedata.normalize("NFKC", line).casefold()
    letters = "".join(ch for ch in folded if ch.isalnum() or ch == ":")
    return letters.startswith("handoffkey:")


def neutralise_key_lines(text: str) -> str:
    """Text from the CRM (a rep's note, a name) must never pass for a key line: mark such lines."""
    return "\n".join(
        f"(quoted) {line.strip()}" if _looks_like_key_line(line) else line
        for line in text.splitlines()
    )


def task_key(record: Mapping[str, Any], key_field: str | None) -> str | None:
    """The dedupe key of a Task record: its key field, or the last line of its description."""
    if key_field:
        return record.get(key_field)
    return key_in_description(record.get("Description") or "")


def key_in_description(description: str) -> str | None:
    """The dedupe key on the description's last line, the one position only we write."""
    lines = [line for line in description.splitlines() if line.strip()]
    if lines and lines[-1].startswith(KEY_LINE):
        return lines[-1][len(KEY_LINE) :].strip() or None
    return None


# What each activity query selects (the org's key and outcome fields come on top).
_ACTIVITY_FIELDS = {
    "Task": (
        "Id", "IsDeleted", "SystemModstamp", "CreatedDate", "WhatId", "WhoId", "OwnerId",
        "Subject", "Description", "Status", "TaskSubtype", "Type", "CallType", "ActivityDate",
        "CompletedDateTime",
    ),
    "Event": (
        "Id", "IsDeleted", "SystemModstamp", "CreatedDate", "WhatId", "WhoId", "OwnerId",
        "Subject", "Description", "StartDateTime",
    ),
    "EmailMessage": (
        "Id", "IsDeleted", "SystemModstamp", "CreatedDate", "RelatedToId", "CreatedById",
        "Subject", "TextBody", "Incoming", "MessageDate",
    ),
}  # fmt: skip
_CALL_DIRECTIONS = {"inbound": "inbound", "outbound": "outbound"}


def _snippet(value: Any) -> str | None:
    """The start of a body, for the phrases and reasons the rules read."""
    return str(value)[:SNIPPET_CHARS] if value else None


def _activity_frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """Rows as the activity frame: text stays text or None (never NaN), timestamps UTC."""
    frame = pd.DataFrame(rows, columns=ACTIVITY_COLUMNS, dtype=object)
    for column in ("occurred_at", "modstamp"):
        stamps = pd.to_datetime(frame[column], utc=True, format="ISO8601")
        frame[column] = stamps.dt.as_unit("ns")
    frame["is_deleted"] = frame["is_deleted"].astype(bool)
    return frame


def _text(value: Any) -> str | None:
    """A field's value as stripped text, None when empty."""
    text = str(value).strip() if value is not None else ""
    return text or None


def soql_datetime(value: datetime) -> str:
    """A SOQL datetime literal in UTC, floored to the second (``>=`` bounds then read more)."""
    if value.tzinfo is None:
        raise ValueError(f"naive datetime {value!r}: pass an aware UTC datetime")
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _write_result(task: CrmTask, answer: dict[str, Any]) -> WriteResult:
    if answer.get("success"):
        return WriteResult(task.dedupe_key, ok=True, external_id=answer.get("id"))
    errors = answer.get("errors") or [{"statusCode": "UNKNOWN", "message": "no error given"}]
    text = "; ".join(
        f"{e.get('statusCode')}: {e.get('message')}"
        + (f" (fields: {', '.join(e['fields'])})" if e.get("fields") else "")
        for e in errors
    )
    return WriteResult(task.dedupe_key, ok=False, error=text)


def _outcome(exc: SalesforceError, what: str, *, write: bool) -> CrmError:
    """What a Salesforce error answer means for the caller, with the CRM's own words."""
    errors = exc.content if isinstance(exc.content, list) else [exc.content]
    said = "; ".join(
        f"{e.get('errorCode')}: {e.get('message')}" if isinstance(e, dict) else str(e)[:300]
        for e in errors
    )
    detail = f"Salesforce answered {exc.status} to {what}: {said}"
    status = exc.status or 0
    if status == 429 or (status == 403 and _CONCURRENCY_LIMIT in said):
        return CrmUnavailable(f"{detail} (throttled; nothing was done)")
    if status >= 500:
        if write:
            return WriteOutcomeUnknown(f"{detail}; the write may have been committed")
        return CrmUnavailable(detail)
    hint = {
        401: "the session is expired or invalid: renew the token or credentials of the "
        "Salesforce connection",
        403: "the org refuses this request (daily API limit reached, or a missing permission): "
        "retrying now cannot help",
    }.get(status, "the request does not fit this org (check the field names in the config)")
    return CrmFatalError(f"{detail}. {hint}")


def _in_lists(values: Sequence[str], *, ids_per_value: int = 1) -> Iterator[tuple[str, ...]]:
    """Values in batches whose ``IN ('a', 'b', ...)`` lists fit ``ID_LIST_BUDGET`` characters
    (``ids_per_value``: how many lists each value puts an id in)."""
    return constrained_batches(
        values, ID_LIST_BUDGET, get_len=lambda value: (len(value) + 4) * ids_per_value
    )


def _checked_id(value: str) -> str:
    """Ids are interpolated into SOQL: accept only the Salesforce id alphabet."""
    if not SALESFORCE_ID.match(value or ""):
        raise CrmError(f"{value!r} is not a Salesforce record id")
    return value
