"""Salesforce connector on simple-salesforce: incremental deal extraction and batched task writes.

Incremental rule: opportunities are read with ``SystemModstamp >= since AND SystemModstamp <
until`` ordered by ``SystemModstamp, Id`` in one query stream (``queryAll``, so deleted deals
are seen). ``since`` is the stored watermark minus an overlap; rows whose (Id, SystemModstamp)
the store already holds are dropped by the caller, so records sharing a timestamp are neither
missed nor processed twice.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from typing import Any

import pandas as pd
from more_itertools import chunked
from simple_salesforce import Salesforce

from handoff.crm.base import DEAL_COLUMNS, CrmError
from handoff.models import Contact, CrmTask, WriteResult

log = logging.getLogger(__name__)

COLLECTION_LIMIT = 200  # sObject Collections take at most 200 records a call
IN_CLAUSE_CHUNK = 200  # ids per IN (...) list: keeps the query URL well under 16 KB
SALESFORCE_ID = re.compile(r"^[a-zA-Z0-9]{15}(?:[a-zA-Z0-9]{3})?$")
DEDUPE_LINE = "Handoff key: "


class SalesforceCRM:
    """Implements :class:`handoff.crm.base.CrmClient` for Salesforce."""

    source = "salesforce"

    def __init__(
        self, client: Salesforce, *, csm_field: str, handoff_fields: dict[str, str]
    ) -> None:
        self.client = client
        self.csm_field = csm_field
        self.csm_relationship = csm_field.removesuffix("__c") + "__r"
        self.handoff_fields = dict(handoff_fields)

    @property
    def api_calls(self) -> int:
        return int(getattr(self.client.session, "requests_made", 0))

    # -- extraction ----------------------------------------------------------------------------

    def deals_soql(self, since: datetime | None, until: datetime) -> str:
        csm = self.csm_relationship
        fields = [
            "Id",
            "Name",
            "Account.Name",
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
        ]
        where = f"SystemModstamp < {soql_datetime(until)}"
        if since is not None:
            where = f"SystemModstamp >= {soql_datetime(since)} AND {where}"
        return (
            f"SELECT {', '.join(fields)} FROM Opportunity WHERE {where} "
            "ORDER BY SystemModstamp ASC, Id ASC"
        )

    def iter_changed_deals(self, since: datetime | None, until: datetime) -> Iterator[pd.DataFrame]:
        soql = self.deals_soql(since, until)
        log.info("Reading opportunities changed in [%s, %s)", since, until)
        for records in self._pages(soql, include_deleted=True):
            yield self._deal_frame(records)

    def _pages(self, soql: str, *, include_deleted: bool) -> Iterator[list[dict[str, Any]]]:
        """Follow ``nextRecordsUrl`` until ``done``: one query stream, page by page."""
        result = self.client.query(soql, include_deleted=include_deleted)
        while True:
            if result.get("records"):
                yield result["records"]
            if result.get("done", True):
                return
            result = self.client.query_more(
                result["nextRecordsUrl"], identifier_is_url=True, include_deleted=include_deleted
            )

    def _deal_frame(self, records: list[dict[str, Any]]) -> pd.DataFrame:
        csm = self.csm_relationship
        flat = pd.json_normalize(records)
        rename = {
            "Id": "deal_id",
            "Name": "name",
            "Account.Name": "account_name",
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
        doc_columns = [f"doc_{key}" for key in self.handoff_fields]
        return frame[DEAL_COLUMNS + doc_columns]

    def primary_contacts(self, deal_ids: Sequence[str]) -> dict[str, Contact]:
        contacts: dict[str, Contact] = {}
        for chunk in chunked([_checked_id(i) for i in deal_ids], IN_CLAUSE_CHUNK):
            ids = ", ".join(f"'{deal_id}'" for deal_id in chunk)
            soql = (
                "SELECT OpportunityId, ContactId, Contact.FirstName, Contact.LastName, "
                "Contact.Email, Contact.HasOptedOutOfEmail FROM OpportunityContactRole "
                f"WHERE IsPrimary = true AND OpportunityId IN ({ids})"
            )
            for records in self._pages(soql, include_deleted=False):
                for record in records:
                    person = record.get("Contact") or {}
                    contacts[record["OpportunityId"]] = Contact(
                        id=record["ContactId"],
                        first_name=person.get("FirstName"),
                        last_name=person.get("LastName"),
                        email=person.get("Email"),
                        opted_out=bool(person.get("HasOptedOutOfEmail")),
                    )
        return contacts

    # -- write-back ----------------------------------------------------------------------------

    def create_tasks(self, tasks: Sequence[CrmTask]) -> list[WriteResult]:
        results: list[WriteResult] = []
        for batch in chunked(list(tasks), COLLECTION_LIMIT):
            body = {"allOrNone": False, "records": [self._task_record(t) for t in batch]}
            answers = self.client.restful("composite/sobjects", method="POST", json=body)
            if not isinstance(answers, list) or len(answers) != len(batch):
                raise CrmError(
                    f"Salesforce answered {len(batch)} task records with {answers!r}; "
                    "expected one result per record"
                )
            for task, answer in zip(batch, answers, strict=True):
                results.append(_write_result(task, answer))
        return results

    def find_tasks(self, tasks: Sequence[CrmTask]) -> dict[str, str]:
        wanted = {t.dedupe_key for t in tasks}
        found: dict[str, str] = {}
        deal_ids = sorted({_checked_id(t.deal_id) for t in tasks})
        for chunk in chunked(deal_ids, IN_CLAUSE_CHUNK):
            ids = ", ".join(f"'{deal_id}'" for deal_id in chunk)
            soql = f"SELECT Id, WhatId, Description FROM Task WHERE WhatId IN ({ids})"
            for records in self._pages(soql, include_deleted=False):
                for record in records:
                    key = dedupe_key_in(record.get("Description") or "")
                    if key in wanted:
                        found[key] = record["Id"]
        return found

    @staticmethod
    def _task_record(task: CrmTask) -> dict[str, Any]:
        record: dict[str, Any] = {
            "attributes": {"type": "Task"},
            "WhatId": task.deal_id,
            "OwnerId": task.owner_id,
            "Subject": task.subject,
            "ActivityDate": task.due_date.isoformat(),
            "Priority": task.priority,
            "Status": "Not Started",
            "Description": task.description,
        }
        if task.contact_id:
            record["WhoId"] = task.contact_id
        if task.remind_at:
            record["IsReminderSet"] = True
            record["ReminderDateTime"] = soql_datetime(task.remind_at)
        return record


def dedupe_key_in(description: str) -> str | None:
    """The dedupe key a task description carries on its ``Handoff key:`` line."""
    for line in description.splitlines():
        if line.startswith(DEDUPE_LINE):
            return line[len(DEDUPE_LINE) :].strip()
    return None


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


def _checked_id(value: str) -> str:
    """Ids are interpolated into SOQL: accept only the Salesforce id alphabet."""
    if not SALESFORCE_ID.match(value or ""):
        raise CrmError(f"{value!r} is not a Salesforce record id")
    return value
