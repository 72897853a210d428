"""SQLite-backed record store for the sandbox CRM.

The sandbox keeps its org in its own SQLite file so a demo or a test can start,
stop and inspect it without any external service. The schema below is the
contract the connector relies on: API names, types and relationships match the
Salesforce objects the handoff pipeline reads and writes.
"""

from __future__ import annotations

import re
import sqlite3
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from handoff.sandbox.ids import make_id, normalize_id

TEXT_TYPES = frozenset({"string", "textarea", "picklist"})
ID_TYPES = frozenset({"id", "reference"})
NUMBER_TYPES = frozenset({"double", "currency"})
CLOSED_STAGES = {"Closed Won": True, "Closed Lost": False}


@dataclass(frozen=True)
class FieldDef:
    """One sObject field as the API describes it."""

    name: str
    type: str
    label: str
    length: int = 0
    reference_to: tuple[str, ...] = ()
    relationship_name: str | None = None
    picklist_values: tuple[str, ...] = ()
    restricted: bool = False
    required: bool = False
    nillable: bool = True
    writable: bool = True
    default: Any = None

    @property
    def filterable(self) -> bool:
        """Long text areas cannot be filtered or sorted in SOQL, as in Salesforce."""
        return not (self.type == "textarea" and self.length > 255)


@dataclass(frozen=True)
class SObjectDef:
    """One sObject: its name, key prefix and fields in describe order."""

    name: str
    label: str
    label_plural: str
    key_prefix: str
    fields: tuple[FieldDef, ...]
    by_lower: dict[str, FieldDef] = field(init=False, repr=False, compare=False)
    by_relationship: dict[str, FieldDef] = field(init=False, repr=False, compare=False)
    names: tuple[str, ...] = field(init=False, repr=False, compare=False)
    defaults: tuple[FieldDef, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "by_lower", {f.name.lower(): f for f in self.fields})
        relationships = {f.relationship_name.lower(): f for f in self.fields if f.relationship_name}
        object.__setattr__(self, "by_relationship", relationships)
        # Looked up once here: seeding a large org builds a million rows from them.
        object.__setattr__(self, "names", tuple(f.name for f in self.fields))
        object.__setattr__(self, "defaults", tuple(f for f in self.fields if f.default is not None))

    def field(self, name: str) -> FieldDef | None:
        """Look a field up case-insensitively, as Salesforce does."""
        return self.by_lower.get(name.lower())


def _label(name: str) -> str:
    base = name.removesuffix("__c").replace("_", " ")
    if base.endswith("Id") and len(base) > 2:
        base = base[:-2] + " ID"
    return re.sub(r"(?<=[a-z])(?=[A-Z])", " ", base).strip()


def _f(name: str, type_: str, **kwargs: Any) -> FieldDef:
    kwargs.setdefault("label", _label(name))
    if type_ == "boolean":
        kwargs.setdefault("nillable", False)
        kwargs.setdefault("default", False)
    if type_ in ID_TYPES:
        kwargs.setdefault("length", 18)
    if kwargs.get("required"):
        kwargs.setdefault("nillable", False)
    return FieldDef(name=name, type=type_, **kwargs)


def _ref(name: str, to: str | tuple[str, ...], relationship: str, **kwargs: Any) -> FieldDef:
    targets = (to,) if isinstance(to, str) else to
    return _f(name, "reference", reference_to=targets, relationship_name=relationship, **kwargs)


def _system_fields() -> tuple[FieldDef, ...]:
    return (
        _f("CreatedDate", "datetime", nillable=False, writable=False),
        _f("LastModifiedDate", "datetime", nillable=False, writable=False),
        _f("SystemModstamp", "datetime", nillable=False, writable=False),
        _f("IsDeleted", "boolean", writable=False),
    )


def _id_field(label: str) -> FieldDef:
    return _f("Id", "id", label=f"{label} ID", nillable=False, writable=False)


_INDUSTRIES = (
    "Agriculture", "Apparel", "Banking", "Biotechnology", "Chemicals", "Communications",
    "Construction", "Consulting", "Education", "Electronics", "Energy", "Engineering",
    "Entertainment", "Finance", "Food & Beverage", "Government", "Healthcare",
    "Hospitality", "Insurance", "Manufacturing", "Media", "Not For Profit", "Retail",
    "Shipping", "Technology", "Telecommunications", "Transportation", "Utilities", "Other",
)  # fmt: skip
STAGES = (
    "Prospecting", "Qualification", "Needs Analysis", "Value Proposition",
    "Id. Decision Makers", "Perception Analysis", "Proposal/Price Quote",
    "Negotiation/Review", "Closed Won", "Closed Lost",
)  # fmt: skip
_OPPORTUNITY_TYPES = (
    "New Business", "Existing Customer - Upgrade", "Existing Customer - Replacement",
    "Existing Customer - Downgrade", "Renewal",
)  # fmt: skip
_CONTACT_ROLES = (
    "Business User", "Decision Maker", "Economic Buyer", "Economic Decision Maker",
    "Evaluator", "Executive Sponsor", "Influencer", "Technical Buyer", "Other",
)  # fmt: skip
HANDOFF_FIELDS = (
    "Handoff_Situation__c", "Handoff_Goals__c", "Handoff_Promises__c",
    "Handoff_Objections__c", "Handoff_Stakeholders__c", "Handoff_Risks__c",
)  # fmt: skip
# The custom text field an org installs on Task for Handoff Autopilot: a task's dedupe
# key lives here rather than in Subject or Description, where any free text (a pasted
# note, a rep's edit) could forge or break it. Filterable, so a retry can ask "which
# of these keys already exist?" in one query.
HANDOFF_KEY_FIELD = "Handoff_Key__c"
SCOPE_CHANGE_FIELD = "Scope_Change_Requested__c"
EVENT_OUTCOME_FIELD = "Outcome__c"
_TASK_SUBTYPES = ("Task", "Email", "ListEmail", "Cadence", "Call", "LinkedIn")
_TASK_TYPES = ("Call", "Email", "Meeting", "Note", "Other")
_EMAIL_STATUSES = ("0", "1", "2", "3", "4", "5")


def _sobject(name: str, prefix: str, plural: str, *fields: FieldDef) -> SObjectDef:
    label = _label(name)
    all_fields = (_id_field(label), *fields, *_system_fields())
    return SObjectDef(name, label, plural, prefix, all_fields)


SOBJECTS: dict[str, SObjectDef] = {
    s.name: s
    for s in (
        _sobject(
            "User", "005", "Users",
            _f("Name", "string", label="Full Name", length=121, writable=False),
            _f("FirstName", "string", length=40),
            _f("LastName", "string", length=80, required=True),
            _f("Email", "string", length=128),
            _f("Title", "string", length=80),
            _f("IsActive", "boolean", label="Active", default=True),
        ),
        _sobject(
            "Account", "001", "Accounts",
            _f("Name", "string", label="Account Name", length=255, required=True),
            _f("Industry", "picklist", length=255, picklist_values=_INDUSTRIES),
            _f("BillingCountry", "string", length=80),
            _f("Time_Zone__c", "string", label="Time Zone", length=40),
            _ref("OwnerId", "User", "Owner"),
        ),
        _sobject(
            "Contact", "003", "Contacts",
            _ref("AccountId", "Account", "Account"),
            _f("FirstName", "string", length=40),
            _f("LastName", "string", length=80, required=True),
            _f("Name", "string", label="Full Name", length=121, writable=False),
            _f("Email", "string", length=80),
            _f("Title", "string", length=128),
            _f("HasOptedOutOfEmail", "boolean", label="Email Opt Out"),
            # Where the client is and how to greet them, as orgs commonly add it: an IANA
            # zone ("Asia/Tokyo"), a locale ("ja_JP") and the greeting they asked for.
            _f("MailingCountry", "string", length=80),
            _f("Time_Zone__c", "string", label="Time Zone", length=40),
            _f("Language__c", "string", label="Language", length=20),
            _f("Greeting_Name__c", "string", label="Greeting Name", length=80),
            _ref("OwnerId", "User", "Owner"),
        ),
        _sobject(
            "Opportunity", "006", "Opportunities",
            _f("Name", "string", label="Opportunity Name", length=120, required=True),
            _ref("AccountId", "Account", "Account"),
            _ref("OwnerId", "User", "Owner"),
            _f("StageName", "picklist", label="Stage", length=255, required=True,
               picklist_values=STAGES),
            _f("IsClosed", "boolean", label="Closed", writable=False),
            _f("IsWon", "boolean", label="Won", writable=False),
            _f("Amount", "currency"),
            _f("CloseDate", "date", required=True),
            _f("LastStageChangeDate", "datetime", writable=False),
            _f("Type", "picklist", label="Opportunity Type", length=255,
               picklist_values=_OPPORTUNITY_TYPES),
            _ref("Customer_Success_Manager__c", "User", "Customer_Success_Manager__r"),
            *(_f(name, "textarea", length=32000) for name in HANDOFF_FIELDS),
            # A checkbox a CSM ticks when the client asks for more than was sold.
            _f(SCOPE_CHANGE_FIELD, "boolean", label="Scope Change Requested"),
        ),
        _sobject(
            "OpportunityContactRole", "00k", "Opportunity Contact Roles",
            _ref("OpportunityId", "Opportunity", "Opportunity", required=True),
            _ref("ContactId", "Contact", "Contact", required=True),
            _f("Role", "picklist", length=40, picklist_values=_CONTACT_ROLES),
            _f("IsPrimary", "boolean", label="Primary"),
        ),
        _sobject(
            "Task", "00T", "Tasks",
            _ref("WhatId", ("Opportunity", "Account"), "What", label="Related To ID"),
            _ref("WhoId", "Contact", "Who", label="Name ID"),
            _ref("OwnerId", "User", "Owner", label="Assigned To ID", required=True),
            _f("Subject", "string", length=255, required=True),
            _f("ActivityDate", "date", label="Due Date Only"),
            _f("Priority", "picklist", length=40, picklist_values=("High", "Normal", "Low"),
               restricted=True, nillable=False, default="Normal"),
            _f("Status", "picklist", length=40,
               picklist_values=("Not Started", "In Progress", "Completed"),
               restricted=True, nillable=False, default="Not Started"),
            _f("Description", "textarea", length=32000),
            _f("IsReminderSet", "boolean", label="Reminder Set"),
            _f("ReminderDateTime", "datetime", label="Reminder Date/Time"),
            _f(HANDOFF_KEY_FIELD, "string", label="Handoff Key", length=255),
            # What kind of activity the task logs: Salesforce sets it on create, "Task" unless
            # the task is a logged call or email.
            _f("TaskSubtype", "picklist", label="Task Subtype", length=40,
               picklist_values=_TASK_SUBTYPES, restricted=True, default="Task"),
            _f("Type", "picklist", length=40, picklist_values=_TASK_TYPES),
            _f("CallType", "picklist", label="Call Type", length=40,
               picklist_values=("Internal", "Inbound", "Outbound"), restricted=True),
            # Set by Salesforce when the task is closed (Status Completed), cleared if reopened.
            _f("CompletedDateTime", "datetime", label="Completed Date/Time", writable=False),
        ),
        _sobject(
            "Event", "00U", "Events",
            _ref("WhatId", ("Opportunity", "Account"), "What", label="Related To ID"),
            _ref("WhoId", "Contact", "Who", label="Name ID"),
            _ref("OwnerId", "User", "Owner", label="Assigned To ID", required=True),
            _f("Subject", "string", length=255),
            _f("Description", "textarea", length=32000),
            _f("StartDateTime", "datetime", label="Start Date Time", required=True),
            _f("EndDateTime", "datetime", label="End Date Time", required=True),
            # Salesforce has no standard outcome on Event: orgs add a picklist like this one.
            _f(EVENT_OUTCOME_FIELD, "picklist", label="Outcome", length=255,
               picklist_values=("Completed", "No Show", "Canceled", "Rescheduled")),
        ),
        _sobject(
            "EmailMessage", "02s", "Email Messages",
            _ref("RelatedToId", ("Opportunity", "Account"), "RelatedTo", label="Related To ID"),
            _f("Subject", "string", length=3000),
            _f("TextBody", "textarea", label="Text Body", length=32000),
            _f("Incoming", "boolean", label="Is Incoming"),
            _f("MessageDate", "datetime", label="Message Date"),
            _f("FromAddress", "string", label="From Address", length=1000),
            _f("ToAddress", "string", label="To Address", length=4000),
            # 0 New, 1 Read, 2 Replied, 3 Sent, 4 Forwarded, 5 Draft.
            _f("Status", "picklist", length=40, picklist_values=_EMAIL_STATUSES,
               restricted=True, required=True),
            # An email has no owner: who logged or sent it is its creator.
            _ref("CreatedById", "User", "CreatedBy", label="Created By ID", writable=False),
        ),
    )
}  # fmt: skip

_KEY_PREFIXES = {s.key_prefix: s.name for s in SOBJECTS.values()}


def sobject_for_id(record_id: str) -> str | None:
    """Name the sObject an Id belongs to, from its 3-char key prefix."""
    return _KEY_PREFIXES.get(record_id[:3])


def resolve_sobject(name: str) -> SObjectDef | None:
    """Find an sObject case-insensitively, as Salesforce does."""
    for sobject in SOBJECTS.values():
        if sobject.name.lower() == name.lower():
            return sobject
    return None


# ---------------------------------------------------------------- value codecs


def format_datetime(moment: datetime) -> str:
    """Storage form of a datetime: ISO UTC with milliseconds, sortable as text."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).isoformat(timespec="milliseconds")[:23] + "Z"


def parse_datetime(text: str) -> datetime:
    """Parse the datetime forms Salesforce accepts (Z, +0000, +01:00 or naive = UTC)."""
    value = text.strip()
    if value.endswith(("Z", "z")):
        value = value[:-1] + "+00:00"
    value = re.sub(r"([+-]\d{2})(\d{2})$", r"\1:\2", value)
    moment = datetime.fromisoformat(value)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


def to_storage(fdef: FieldDef, value: Any) -> Any:
    """Convert a Python/JSON value to the SQLite column form; ValueError if it does not fit."""
    if value is None:
        return None
    kind = fdef.type
    if kind == "boolean":
        if not isinstance(value, bool):
            raise ValueError(f"{fdef.name}: expected a boolean, got {value!r}")
        return int(value)
    if kind in NUMBER_TYPES:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"{fdef.name}: expected a number, got {value!r}")
        return float(value)
    if kind == "date":
        if isinstance(value, datetime):
            return value.date().isoformat()
        if isinstance(value, date):
            return value.isoformat()
        if isinstance(value, str) and re.fullmatch(r"\d{4}-\d{2}-\d{2}", value):
            return date.fromisoformat(value).isoformat()
        raise ValueError(f"{fdef.name}: expected a date, got {value!r}")
    if kind == "datetime":
        if isinstance(value, datetime):
            return format_datetime(value)
        if isinstance(value, str):
            return format_datetime(parse_datetime(value))
        raise ValueError(f"{fdef.name}: expected a datetime, got {value!r}")
    if kind in ID_TYPES:
        normalized = normalize_id(value) if isinstance(value, str) else None
        if normalized is None:
            raise ValueError(f"{fdef.name}: malformed id {value!r}")
        return normalized
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    if not isinstance(value, str):
        raise ValueError(f"{fdef.name}: expected a string, got {value!r}")
    return value


def from_storage(fdef: FieldDef, raw: Any) -> Any:
    """Convert a column value to its Salesforce JSON form."""
    if raw is None:
        return False if fdef.type == "boolean" else None
    if fdef.type == "boolean":
        return bool(raw)
    if fdef.type in NUMBER_TYPES:
        return float(raw)
    if fdef.type == "datetime":
        return raw[:-1] + "+0000" if raw.endswith("Z") else raw
    return raw


def _sql_type(fdef: FieldDef) -> str:
    if fdef.type == "boolean":
        return "INTEGER"
    if fdef.type in NUMBER_TYPES:
        return "REAL"
    return "TEXT"


def quote_ident(name: str) -> str:
    """Quote an identifier for SQLite (names come from the schema, never from users)."""
    return '"' + name.replace('"', '""') + '"'


class SandboxStore:
    """The sandbox org's records, in one SQLite file, safe to share between threads.

    One connection guarded by a re-entrant lock keeps it simple and correct for the
    threaded server; savepoints give nested transactions (all-or-none batches).
    """

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        self._lock = threading.RLock()
        self._depth = 0
        self._conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        if self.path != ":memory:":
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=NORMAL")
        self._create_schema()

    # ------------------------------------------------------------ lifecycle

    def _create_schema(self) -> None:
        with self.transaction():
            for sobject in SOBJECTS.values():
                columns = ", ".join(
                    f"{quote_ident(f.name)} {_sql_type(f)}"
                    + (" PRIMARY KEY" if f.type == "id" else "")
                    for f in sobject.fields
                )
                self._conn.execute(
                    f"CREATE TABLE IF NOT EXISTS {quote_ident(sobject.name)} ({columns})"
                )
                self._add_missing_columns(sobject)
                self._create_indexes(sobject)
            self._conn.execute(
                "CREATE TABLE IF NOT EXISTS _sandbox_counter "
                "(name TEXT PRIMARY KEY, value INTEGER NOT NULL)"
            )

    def _create_indexes(self, sobject: SObjectDef) -> None:
        """Index what queries filter and sort on, as Salesforce indexes its standard fields.

        Id is the primary key; (SystemModstamp, Id) serves incremental extraction in
        modstamp order; every lookup column (OpportunityContactRole.OpportunityId,
        Contact.AccountId, Task.WhatId, ...) gets its own index, so a lookup of a few
        hundred parents stays fast in an org of millions of rows. IF NOT EXISTS also
        adds them to an org file from before they were introduced.
        """
        table = quote_ident(sobject.name)
        self._conn.execute(
            f"CREATE INDEX IF NOT EXISTS {quote_ident('ix_' + sobject.name + '_mod')} "
            f"ON {table} (SystemModstamp, Id)"
        )
        for fdef in sobject.fields:
            if fdef.type == "reference":
                index = quote_ident(f"ix_{sobject.name}_{fdef.name}")
                self._conn.execute(
                    f"CREATE INDEX IF NOT EXISTS {index} ON {table} ({quote_ident(fdef.name)})"
                )

    def _add_missing_columns(self, sobject: SObjectDef) -> None:
        """Add the columns of fields newer than the org file (e.g. Handoff_Key__c).

        ``serve`` resumes an existing file without re-seeding, and every read selects
        all schema fields, so a file from before a field was added would fail on
        "no such column". Adding the column is what installing a field does in a real
        org: the existing records simply read null.
        """
        table = quote_ident(sobject.name)
        present = {row[1] for row in self._conn.execute(f"PRAGMA table_info({table})")}
        for fdef in sobject.fields:
            if fdef.name not in present:
                self._conn.execute(
                    f"ALTER TABLE {table} ADD COLUMN {quote_ident(fdef.name)} {_sql_type(fdef)}"
                )

    def close(self) -> None:
        """Close the SQLite connection."""
        with self._lock:
            self._conn.close()

    def reset(self) -> None:
        """Delete every record and restart the Id counters (used before re-seeding)."""
        with self.transaction():
            for sobject in SOBJECTS:
                self._conn.execute(f"DELETE FROM {quote_ident(sobject)}")
            self._conn.execute("DELETE FROM _sandbox_counter")

    def is_empty(self) -> bool:
        """Tell whether the org holds no records at all (then it needs seeding)."""
        return all(self.count(name) == 0 for name in SOBJECTS)

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """Run a block atomically; nests via savepoints, rolls back on any exception."""
        with self._lock:
            savepoint = f"sp{self._depth}"
            self._conn.execute(f"SAVEPOINT {savepoint}")
            self._depth += 1
            try:
                yield
            except BaseException:
                self._conn.execute(f"ROLLBACK TO {savepoint}")
                self._conn.execute(f"RELEASE {savepoint}")
                raise
            else:
                self._conn.execute(f"RELEASE {savepoint}")
            finally:
                self._depth -= 1

    def sql(self, statement: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Run one read statement and return all rows (used by the SOQL engine)."""
        with self._lock:
            return self._conn.execute(statement, tuple(params)).fetchall()

    # ------------------------------------------------------------ writes

    def _sobject(self, name: str) -> SObjectDef:
        sobject = SOBJECTS.get(name) or resolve_sobject(name)
        if sobject is None:
            raise KeyError(f"unknown sObject {name!r}")
        return sobject

    def _next_counter(self, name: str) -> int:
        self._conn.execute(
            "INSERT INTO _sandbox_counter (name, value) VALUES (?, 1) "
            "ON CONFLICT(name) DO UPDATE SET value = value + 1",
            (name,),
        )
        return self._conn.execute(
            "SELECT value FROM _sandbox_counter WHERE name = ?", (name,)
        ).fetchone()[0]

    def _columns(self, sobject: SObjectDef, fields: Mapping[str, Any]) -> dict[str, Any]:
        columns: dict[str, Any] = {}
        for name, value in fields.items():
            fdef = sobject.field(name)
            if fdef is None:
                raise KeyError(f"No such column '{name}' on sobject of type {sobject.name}")
            columns[fdef.name] = to_storage(fdef, value)
        return columns

    @staticmethod
    def _derive(
        sobject: SObjectDef, columns: dict[str, Any], before: Mapping[str, Any], stamp: str
    ) -> None:
        """Keep computed fields consistent: Name, and the stage flags on Opportunity."""
        if sobject.name in ("User", "Contact") and (
            "FirstName" in columns or "LastName" in columns or not before
        ):
            first = columns.get("FirstName", before.get("FirstName")) or ""
            last = columns.get("LastName", before.get("LastName")) or ""
            columns["Name"] = f"{first} {last}".strip() or None
        if sobject.name == "Opportunity" and "StageName" in columns:
            stage = columns["StageName"]
            columns["IsClosed"] = int(stage in CLOSED_STAGES)
            columns["IsWon"] = int(CLOSED_STAGES.get(stage, False))
            changed = not before or before.get("StageName") != stage
            if changed and "LastStageChangeDate" not in columns:
                columns["LastStageChangeDate"] = stamp
        if sobject.name == "Task" and "Status" in columns and "CompletedDateTime" not in columns:
            closed = columns["Status"] == "Completed"
            if not closed:
                columns["CompletedDateTime"] = None
            elif not before or before.get("Status") != "Completed":
                columns["CompletedDateTime"] = stamp

    def _new_row(
        self, sdef: SObjectDef, fields: Mapping[str, Any], modstamp: datetime | None
    ) -> dict[str, Any]:
        """The storage columns of a record to insert: defaults, derived and system fields."""
        stamp = format_datetime(modstamp or datetime.now(UTC))
        columns = self._columns(sdef, fields)
        for fdef in sdef.defaults:
            if fdef.name not in columns:
                columns[fdef.name] = to_storage(fdef, fdef.default)
        self._derive(sdef, columns, {}, stamp)
        columns.setdefault("CreatedDate", stamp)
        columns["LastModifiedDate"] = stamp
        columns["SystemModstamp"] = stamp
        columns["IsDeleted"] = 0
        return columns

    def insert(
        self, sobject: str, fields: Mapping[str, Any], *, modstamp: datetime | None = None
    ) -> str:
        """Insert a record and return its new 18-char Id.

        This is the trusted path (seeding, tests): system fields such as CreatedDate
        or LastStageChangeDate may be given; the API layer validates before calling.
        """
        sdef = self._sobject(sobject)
        columns = self._new_row(sdef, fields, modstamp)
        with self.transaction():
            record_id = make_id(sdef.key_prefix, self._next_counter(sdef.name))
            columns["Id"] = record_id
            names = ", ".join(quote_ident(name) for name in columns)
            marks = ", ".join("?" for _ in columns)
            self._conn.execute(
                f"INSERT INTO {quote_ident(sdef.name)} ({names}) VALUES ({marks})",
                tuple(columns.values()),
            )
        return record_id

    @contextmanager
    def bulk_insert(self, batch_size: int = 2000) -> Iterator[BulkInserter]:
        """Insert many records in one transaction, a batch of rows per statement.

        Seeding an org of 200,000 deals inserts nearly a million rows, and an INSERT
        plus two counter statements for each was nearly half the time. Ids are minted
        at once (the Ids single inserts would give) and rows are written with
        executemany per sObject when a batch fills and at the end. Rows still in a
        batch are not visible to reads, so this is for writers that only need the Ids
        back. Any exception rolls everything back.
        """
        with self.transaction():
            inserter = BulkInserter(self, batch_size)
            yield inserter
            inserter.flush()

    def _raw(self, sdef: SObjectDef, record_id: str) -> dict[str, Any] | None:
        normalized = normalize_id(record_id)
        if normalized is None:
            return None
        names = [f.name for f in sdef.fields]
        row = self._conn.execute(
            f"SELECT {', '.join(quote_ident(n) for n in names)} FROM {quote_ident(sdef.name)} "
            "WHERE Id = ?",
            (normalized,),
        ).fetchone()
        return dict(zip(names, row, strict=True)) if row else None

    def update(
        self,
        sobject: str,
        record_id: str,
        fields: Mapping[str, Any],
        *,
        modstamp: datetime | None = None,
    ) -> None:
        """Update a record's fields and stamp it; KeyError if there is no such record."""
        sdef = self._sobject(sobject)
        stamp = format_datetime(modstamp or datetime.now(UTC))
        columns = self._columns(sdef, fields)
        with self.transaction():
            before = self._raw(sdef, record_id)
            if before is None:
                raise KeyError(f"no {sdef.name} with Id {record_id}")
            self._derive(sdef, columns, before, stamp)
            columns["LastModifiedDate"] = stamp
            columns["SystemModstamp"] = stamp
            assignments = ", ".join(f"{quote_ident(name)} = ?" for name in columns)
            self._conn.execute(
                f"UPDATE {quote_ident(sdef.name)} SET {assignments} WHERE Id = ?",
                (*columns.values(), before["Id"]),
            )

    def delete(self, sobject: str, record_id: str, *, modstamp: datetime | None = None) -> None:
        """Soft-delete a record (IsDeleted = true), as the recycle bin does."""
        sdef = self._sobject(sobject)
        stamp = format_datetime(modstamp or datetime.now(UTC))
        with self.transaction():
            before = self._raw(sdef, record_id)
            if before is None:
                raise KeyError(f"no {sdef.name} with Id {record_id}")
            self._conn.execute(
                f"UPDATE {quote_ident(sdef.name)} SET IsDeleted = 1, SystemModstamp = ?, "
                "LastModifiedDate = ? WHERE Id = ?",
                (stamp, stamp, before["Id"]),
            )

    # ------------------------------------------------------------ reads

    def get(self, sobject: str, record_id: str) -> dict[str, Any] | None:
        """Return a record (deleted ones too) with values in Salesforce JSON form."""
        sdef = self._sobject(sobject)
        with self._lock:
            raw = self._raw(sdef, record_id)
        if raw is None:
            return None
        return {f.name: from_storage(f, raw[f.name]) for f in sdef.fields}

    def count(self, sobject: str, where_sql: str = "", params: Sequence[Any] = ()) -> int:
        """Count rows; where_sql is raw SQL over storage columns (booleans are 0/1)."""
        sdef = self._sobject(sobject)
        statement = f"SELECT COUNT(*) FROM {quote_ident(sdef.name)}"
        if where_sql:
            statement += f" WHERE {where_sql}"
        return int(self.sql(statement, params)[0][0])

    def rows(self, sobject: str) -> list[dict[str, Any]]:
        """Every row of an sObject (deleted included), by Id, in Salesforce JSON form."""
        sdef = self._sobject(sobject)
        names = [f.name for f in sdef.fields]
        raw_rows = self.sql(
            f"SELECT {', '.join(quote_ident(n) for n in names)} FROM {quote_ident(sdef.name)} "
            "ORDER BY Id"
        )
        return [
            {f.name: from_storage(f, value) for f, value in zip(sdef.fields, row, strict=True)}
            for row in raw_rows
        ]


class BulkInserter:
    """Buffered inserts for ``SandboxStore.bulk_insert`` (see there for why)."""

    def __init__(self, store: SandboxStore, batch_size: int) -> None:
        self._store = store
        self._batch_size = batch_size
        self._counters: dict[str, int] = {}
        self._pending: dict[str, list[tuple[Any, ...]]] = {}

    def insert(
        self, sobject: str, fields: Mapping[str, Any], *, modstamp: datetime | None = None
    ) -> str:
        """Validate and queue a record like ``SandboxStore.insert``; return its Id now."""
        store = self._store
        sdef = store._sobject(sobject)
        columns = store._new_row(sdef, fields, modstamp)
        if sdef.name not in self._counters:
            rows = store.sql("SELECT value FROM _sandbox_counter WHERE name = ?", (sdef.name,))
            self._counters[sdef.name] = rows[0][0] if rows else 0
        self._counters[sdef.name] += 1
        record_id = make_id(sdef.key_prefix, self._counters[sdef.name])
        columns["Id"] = record_id
        pending = self._pending.setdefault(sdef.name, [])
        pending.append(tuple(map(columns.get, sdef.names)))
        if len(pending) >= self._batch_size:
            self._write(sdef.name)
        return record_id

    def flush(self) -> None:
        """Write every queued row and the advanced Id counters."""
        for name in list(self._pending):
            self._write(name)
        self._store._conn.executemany(
            "INSERT INTO _sandbox_counter (name, value) VALUES (?, ?) "
            "ON CONFLICT(name) DO UPDATE SET value = excluded.value",
            sorted(self._counters.items()),
        )

    def _write(self, sobject: str) -> None:
        rows = self._pending.pop(sobject, [])
        if not rows:
            return
        fields = SOBJECTS[sobject].fields
        names = ", ".join(quote_ident(f.name) for f in fields)
        marks = ", ".join("?" for _ in fields)
        self._store._conn.executemany(
            f"INSERT INTO {quote_ident(sobject)} ({names}) VALUES ({marks})", rows
        )
