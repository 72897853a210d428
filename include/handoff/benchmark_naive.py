"""The benchmark's naive peer: the same pipeline work, one API call per record, one SMTP
connection per email, the way a hand-written script or a per-record CRM flow does it.

The peer runs the pipeline's own steps (planning, rendering, the state store) so that the
work is the same and only the way it talks to the CRM and the mail server differs:

- deals: one query lists the ids changed in the window (pages of 2,000 ids, the one listing a
  script cannot do without), then one ``GET /sobjects/Opportunity/<id>`` per deal and one
  ``GET /sobjects/Account/<id>`` per account; the users a deal names (owner, CSM, account
  owner) are read once each per extraction (``GET /sobjects/User/<id>``), a script's cache;
- activities: per client and per stream (Task, Event, EmailMessage), one query for the ids of
  its records changed since the last run, then one ``GET`` per record: a script has no
  org-wide view of what changed, so it asks every client, every run;
- contacts: per deal one query for its primary contact role, then ``GET /sobjects/Contact``;
  tasks already written: one query per deal; the executive: one query per address;
- writes: one ``POST /sobjects/Task`` per task, one ``PATCH /sobjects/Contact/<id>`` per
  opt-out;
- emails: one SMTP connection (connect, EHLO, MAIL, RCPT, DATA, QUIT) per message.

Every call is a real HTTP request through simple-salesforce and the project's session (so the
sandbox counts it), every connection a real one to the SMTP sink. Development only: it is not
in the production wheel.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Any

import pandas as pd
import requests
from simple_salesforce.exceptions import (
    SalesforceError,
    SalesforceMalformedRequest,
    SalesforceResourceNotFound,
)

from handoff.crm.base import CrmUnavailable, WriteOutcomeUnknown
from handoff.crm.salesforce import (
    SalesforceCRM,
    _activity_frame,
    _checked_id,
    _outcome,
    _text,
    soql_datetime,
    task_key,
)
from handoff.mail import smtp_transport
from handoff.models import Contact, CrmTask, Person, WriteResult

FRAME_ROWS = 2000  # rows handed to the pipeline at a time (its store commits per frame)


class NaiveSalesforceCRM(SalesforceCRM):
    """:class:`SalesforceCRM` with every batch read and write replaced by one call per record."""

    # -- deals ---------------------------------------------------------------------------------

    def iter_changed_deals(self, since: datetime | None, until: datetime) -> Iterator[pd.DataFrame]:
        where = f"SystemModstamp < {soql_datetime(until)}"
        if since is not None:
            where = f"SystemModstamp >= {soql_datetime(since)} AND {where}"
        listing = (
            f"SELECT Id, IsDeleted, SystemModstamp FROM Opportunity WHERE {where} "
            "ORDER BY SystemModstamp ASC, Id ASC"
        )
        accounts: dict[str, dict[str, Any] | None] = {}
        users: dict[str, dict[str, Any] | None] = {}
        for page in self._pages(listing, include_deleted=True):
            records = [self._deal_record(item, accounts, users) for item in page]
            yield self._deal_frame(records)

    def _deal_record(
        self,
        item: dict[str, Any],
        accounts: dict[str, dict[str, Any] | None],
        users: dict[str, dict[str, Any] | None],
    ) -> dict[str, Any]:
        if item.get("IsDeleted"):  # a deleted record cannot be read by id: the listing is all
            return {key: value for key, value in item.items() if key != "attributes"}
        deal = self._get("Opportunity", item["Id"])
        if deal is None:
            return {"Id": item["Id"], "IsDeleted": True, "SystemModstamp": item["SystemModstamp"]}
        account_id = deal.get("AccountId")
        if account_id and account_id not in accounts:
            account = self._get("Account", account_id)
            if account is not None:
                account["Owner"] = self._user(account.get("OwnerId"), users)
            accounts[account_id] = account
        deal["Account"] = accounts.get(account_id) if account_id else None
        deal["Owner"] = self._user(deal.get("OwnerId"), users)
        deal[self.csm_relationship] = self._user(deal.get(self.csm_field), users)
        return deal

    def _user(
        self, user_id: str | None, users: dict[str, dict[str, Any] | None]
    ) -> dict[str, Any] | None:
        if not user_id:
            return None
        if user_id not in users:
            users[user_id] = self._get("User", user_id)
        return users[user_id]

    def _get(self, sobject: str, record_id: str) -> dict[str, Any] | None:
        """``GET /sobjects/<sobject>/<id>``: the record, or None when it is gone."""
        record_id = _checked_id(record_id)
        what = f"reading {sobject} {record_id}"
        try:
            return dict(getattr(self.client, sobject).get(record_id))
        except SalesforceResourceNotFound:  # deleted since it was listed
            return None
        except SalesforceError as exc:
            raise _outcome(exc, what, write=False) from exc
        except requests.RequestException as exc:
            raise CrmUnavailable(f"Salesforce did not answer {what}") from exc

    # -- activities ----------------------------------------------------------------------------

    def iter_activities(
        self,
        stream: str,
        deals: Mapping[str, str | None],
        since: datetime | None,
        until: datetime,
    ) -> Iterator[pd.DataFrame]:
        if stream not in self.activity_streams:
            raise ValueError(f"{stream!r} is not an activity stream of Salesforce")
        given = {_checked_id(deal_id): contact for deal_id, contact in deals.items()}
        deals_of: dict[str, list[str]] = {}
        if stream != "EmailMessage":
            for deal_id, contact in given.items():
                if contact:
                    deals_of.setdefault(_checked_id(contact), []).append(deal_id)
        window = f"SystemModstamp < {soql_datetime(until)}"
        if since is not None:
            window = f"SystemModstamp >= {soql_datetime(since)} AND {window}"
        seen: set[str] = set()
        rows: list[dict[str, Any]] = []
        for deal_id in sorted(given):
            contact = given[deal_id]
            if stream == "EmailMessage":
                columns, linked = "RelatedToId", f"RelatedToId = '{deal_id}'"
            elif contact:
                columns = "WhatId, WhoId"
                linked = f"(WhatId = '{deal_id}' OR WhoId = '{_checked_id(contact)}')"
            else:
                columns, linked = "WhatId, WhoId", f"WhatId = '{deal_id}'"
            listing = (
                f"SELECT Id, IsDeleted, SystemModstamp, {columns} FROM {stream} "
                f"WHERE {window} AND {linked} ORDER BY SystemModstamp ASC, Id ASC"
            )
            for page in self._pages(listing, include_deleted=True):
                for item in page:
                    if item["Id"] in seen:
                        continue
                    seen.add(item["Id"])
                    related = item.get("RelatedToId" if stream == "EmailMessage" else "WhatId")
                    owners = (
                        [related] if related in given else deals_of.get(item.get("WhoId") or "", [])
                    )
                    if not owners:
                        continue
                    record = None if item.get("IsDeleted") else self._get(stream, item["Id"])
                    row = self._activity_row(stream, record or item)
                    rows += [{**row, "deal_id": owner} for owner in owners]
            if len(rows) >= FRAME_ROWS:
                yield _activity_frame(rows)
                rows = []
        if rows:
            yield _activity_frame(rows)

    # -- contacts and users --------------------------------------------------------------------

    def primary_contacts(self, deal_ids: Sequence[str]) -> dict[str, Contact]:
        contacts: dict[str, Contact] = {}
        for deal_id in [_checked_id(i) for i in deal_ids]:
            soql = (
                "SELECT ContactId FROM OpportunityContactRole "
                f"WHERE IsPrimary = true AND OpportunityId = '{deal_id}'"
            )
            for page in self._pages(soql, include_deleted=False):
                for role in page[:1]:
                    person = self._get("Contact", role["ContactId"])
                    if person is None:
                        continue
                    located = {
                        key: _text(person.get(field))
                        for key, field in self._contact_fields().items()
                    }
                    contacts[deal_id] = Contact(
                        id=role["ContactId"],
                        first_name=person.get("FirstName"),
                        last_name=person.get("LastName"),
                        email=person.get("Email"),
                        opted_out=bool(person.get("HasOptedOutOfEmail")),
                        **located,
                    )
        return contacts

    def users_by_email(self, emails: Sequence[str]) -> dict[str, Person]:
        users: dict[str, Person] = {}
        for email in sorted({e.strip().lower() for e in emails if e and "'" not in e}):
            soql = f"SELECT Id, Name, Email, IsActive FROM User WHERE Email = '{email}'"
            for page in self._pages(soql, include_deleted=False):
                for record in page:
                    person = Person(
                        id=record["Id"],
                        name=record.get("Name") or "",
                        email=record.get("Email"),
                        is_active=bool(record.get("IsActive")),
                    )
                    if email not in users or (person.is_active and not users[email].is_active):
                        users[email] = person
        return users

    def find_tasks(self, deal_ids: Sequence[str]) -> dict[str, str]:
        found: dict[str, str] = {}
        key_field = self.task_key_field
        for deal_id in sorted({_checked_id(i) for i in deal_ids}):
            if key_field:
                soql = f"SELECT Id, {key_field} FROM Task WHERE WhatId = '{deal_id}'"
                soql += f" AND {key_field} != null"
            else:
                soql = f"SELECT Id, Description FROM Task WHERE WhatId = '{deal_id}'"
            for page in self._pages(soql, include_deleted=False):
                for record in page:
                    if key := task_key(record, key_field):
                        found[key] = record["Id"]
        return found

    # -- writes --------------------------------------------------------------------------------

    def create_tasks(self, tasks: Sequence[CrmTask]) -> list[WriteResult]:
        results: list[WriteResult] = []
        for task in tasks:
            record = {k: v for k, v in self._task_record(task).items() if k != "attributes"}
            try:
                answer = self._write(
                    f"writing task {task.dedupe_key}",
                    lambda record=record: self.client.Task.create(record),
                )
            except SalesforceMalformedRequest as exc:  # this record refused (400)
                errors = exc.content if isinstance(exc.content, list) else [exc.content]
                said = "; ".join(
                    f"{e.get('errorCode')}: {e.get('message')}" if isinstance(e, dict) else str(e)
                    for e in errors
                )
                results.append(WriteResult(task.dedupe_key, ok=False, error=said))
                continue
            except Exception as exc:
                if results:  # some went out: the caller looks the batch up by key
                    raise WriteOutcomeUnknown(str(exc)) from exc
                raise
            results.append(WriteResult(task.dedupe_key, ok=True, external_id=answer.get("id")))
        return results

    def set_email_opt_out(self, contact_ids: Sequence[str]) -> list[WriteResult]:
        results: list[WriteResult] = []
        for contact_id in [_checked_id(i) for i in contact_ids]:
            try:
                self._write(
                    f"updating contact {contact_id}",
                    lambda cid=contact_id: self.client.Contact.update(
                        cid, {"HasOptedOutOfEmail": True}
                    ),
                )
            except SalesforceMalformedRequest as exc:
                results.append(WriteResult(contact_id, False, contact_id, str(exc.content)[:300]))
                continue
            results.append(WriteResult(contact_id, True, contact_id, None))
        return results

    def _write(self, what: str, call: Callable[[], Any]) -> Any:
        """One write; a 400 is left to the caller (that record is refused), the rest mapped."""
        try:
            return call()
        except SalesforceMalformedRequest:
            raise
        except SalesforceError as exc:
            raise _outcome(exc, what, write=True) from exc
        except requests.RequestException as exc:
            raise WriteOutcomeUnknown(f"Salesforce did not answer {what}") from exc


class ConnectionPerEmail:
    """A :class:`handoff.mail.MailTransport` that opens a new SMTP connection for every message
    (and closes it after), as a script calling ``smtplib.SMTP(...).send_message`` in a loop."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port

    def send(
        self,
        content: bytes,
        *,
        sender: str,
        recipients: Sequence[str],
        smtputf8: bool,
        before_data: Callable[[], bool],
    ) -> dict[str, tuple[int, bytes]]:
        with smtp_transport(self.host, self.port) as transport:
            return transport.send(
                content,
                sender=sender,
                recipients=recipients,
                smtputf8=smtputf8,
                before_data=before_data,
            )


@contextmanager
def connection_per_email(host: str, port: int) -> Iterator[ConnectionPerEmail]:
    """The naive peer's ``open_transport``: nothing is opened until a message goes out."""
    yield ConnectionPerEmail(host, port)
