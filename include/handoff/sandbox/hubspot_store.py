"""SQLite-backed store of the sandbox HubSpot portal.

HubSpot keeps every CRM record as a bag of string properties under a numeric id,
links records by typed associations and lists owners and pipelines beside them. The
store keeps exactly that shape (one JSON column of properties per record) so the API
layer can answer in HubSpot's shapes without translating a relational schema, and the
property definitions below are the contract the connector relies on: names, types and
value formats match a real portal's.

Activities are records too (HubSpot's engagements: meetings, emails, calls, notes and
tasks), with HubSpot's property names and its default association types to deals,
contacts and companies (meeting to deal 212, deal to meeting 211, ...).

Value formats, as HubSpot's v3 API returns them (every value is a string or null):
datetimes ``2026-11-22T14:03:07.120Z``, numbers ``"25000"``, booleans ``"true"``,
``hs_timezone`` an IANA zone in HubSpot's slug form (``asia_slash_tokyo``, see
``to_hubspot_timezone``), ``hs_language`` a lower-case tag (``ja``, ``zh-cn``).
"""

from __future__ import annotations

import json
import re
import sqlite3
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import Any
from zoneinfo import available_timezones

__all__ = [
    "ENGAGEMENT_TYPES",
    "HUBSPOT_DEFINED_ASSOCIATIONS",
    "OBJECT_TYPES",
    "HubSpotObject",
    "HubSpotStore",
    "PropertyDef",
    "format_ms",
    "from_hubspot_timezone",
    "parse_hs_datetime",
    "resolve_object_type",
    "to_hubspot_timezone",
]

# Object type names and their HubSpot object type ids; the API accepts either.
OBJECT_TYPES: dict[str, str] = {
    "contacts": "0-1",
    "companies": "0-2",
    "deals": "0-3",
    "tasks": "0-27",
    "notes": "0-46",
    "meetings": "0-47",
    "calls": "0-48",
    "emails": "0-49",
}
# The activities (engagements) a portal logs on its records; tasks double as write-back.
ENGAGEMENT_TYPES = ("meetings", "emails", "calls", "notes", "tasks")
_ALIASES = {
    **{name: name for name in OBJECT_TYPES},
    **{name[:-1]: name for name in OBJECT_TYPES},
    "company": "companies",
    **{type_id: name for name, type_id in OBJECT_TYPES.items()},
}
# Singular upper-case names, as HubSpot's batch error messages spell them.
OBJECT_NOUNS = {
    "contacts": "CONTACT",
    "companies": "COMPANY",
    "deals": "DEAL",
    "tasks": "TASK",
    "notes": "NOTE",
    "meetings": "MEETING",
    "calls": "CALL",
    "emails": "EMAIL",
}
# The property a type keeps its last-modified moment in: contacts are the odd one out.
MODIFIED_PROPERTY = {"contacts": "lastmodifieddate"}
CREATED_PROPERTY = {name: "hs_createdate" for name in ENGAGEMENT_TYPES}
# Ids start high and step unevenly, like a portal's, so code cannot assume dense ids.
_ID_BASES = {
    "deals": (31_200_000_000, 17),
    "contacts": (95_100_000_000, 13),
    "companies": (27_400_000_000, 11),
    "tasks": (66_800_000_000, 7),
    "notes": (67_300_000_000, 7),
    "meetings": (67_900_000_000, 7),
    "calls": (68_400_000_000, 7),
    "emails": (69_100_000_000, 7),
    "owners": (41_000_000, 23),
    "users": (7_100_000, 19),
}

# HubSpot-defined association types: (from, to) -> (typeId, label, inverse typeId).
HUBSPOT_DEFINED_ASSOCIATIONS: dict[tuple[str, str], tuple[tuple[int, str | None, int], ...]] = {
    ("deals", "contacts"): ((3, None, 4),),
    ("contacts", "deals"): ((4, None, 3),),
    ("deals", "companies"): ((341, None, 342), (5, "Primary", 6)),
    ("companies", "deals"): ((342, None, 341), (6, "Primary", 5)),
    ("contacts", "companies"): ((279, None, 280), (1, "Primary", 2)),
    ("companies", "contacts"): ((280, None, 279), (2, "Primary", 1)),
    ("tasks", "deals"): ((216, None, 215),),
    ("deals", "tasks"): ((215, None, 216),),
    ("tasks", "contacts"): ((204, None, 203),),
    ("contacts", "tasks"): ((203, None, 204),),
    ("tasks", "companies"): ((192, None, 191),),
    ("companies", "tasks"): ((191, None, 192),),
    # The other engagements, as HubSpot defines them: (to deal, to contact, to company) and
    # back, each the id one below its inverse (deal to meeting 211, meeting to deal 212).
    **{
        pair: ((type_id, None, inverse),)
        for engagement, (deal, contact, company) in {
            "calls": (206, 194, 182),
            "emails": (210, 198, 186),
            "meetings": (212, 200, 188),
            "notes": (214, 202, 190),
        }.items()
        for other, to_other in (("deals", deal), ("contacts", contact), ("companies", company))
        for pair, type_id, inverse in (
            ((engagement, other), to_other, to_other - 1),
            ((other, engagement), to_other - 1, to_other),
        )
    },
}
HUBSPOT_DEFINED = "HUBSPOT_DEFINED"
USER_DEFINED = "USER_DEFINED"


def resolve_object_type(name: str) -> str | None:
    """The canonical plural name of an object type ("deal", "0-3" -> "deals"), or None."""
    return _ALIASES.get(name.lower())


# ---------------------------------------------------------------- time zones and dates


def to_hubspot_timezone(zone: str) -> str:
    """An IANA zone in the slug form HubSpot stores in ``hs_timezone``.

    Lower case, ``/`` as ``_slash_`` and ``-`` as ``_hyphen_``:
    ``America/Port-au-Prince`` -> ``america_slash_port_hyphen_au_hyphen_prince``.
    """
    return zone.lower().replace("/", "_slash_").replace("-", "_hyphen_")


@cache
def _zones_by_slug() -> dict[str, str]:
    return {to_hubspot_timezone(zone): zone for zone in available_timezones()}


def from_hubspot_timezone(value: str) -> str | None:
    """The IANA zone behind an ``hs_timezone`` value, or None if it names none.

    Looked up rather than rebuilt: case is lost in the slug (``Port-au-Prince``).
    """
    return _zones_by_slug().get(value.strip().lower())


def format_ms(ms: int) -> str:
    """HubSpot's datetime form: ISO 8601 UTC with milliseconds and ``Z``."""
    moment = datetime.fromtimestamp(ms / 1000, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def to_ms(moment: datetime) -> int:
    """Epoch milliseconds of an aware (or naive = UTC) datetime."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(round(moment.timestamp() * 1000))


_EPOCH_MS = re.compile(r"^-?\d{1,15}$")


def parse_hs_datetime(value: Any) -> int:
    """Epoch ms from what HubSpot accepts for a datetime: epoch ms (int or string) or ISO.

    ValueError when the value is neither.
    """
    if isinstance(value, bool):
        raise ValueError(f"not a datetime: {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, datetime):
        return to_ms(value)
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"not a datetime: {value!r}")
    text = value.strip()
    if _EPOCH_MS.match(text):
        return int(text)
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    moment = datetime.fromisoformat(text)
    return to_ms(moment)


# ---------------------------------------------------------------- property definitions


@dataclass(frozen=True)
class PropertyDef:
    """One CRM property as the properties API describes it.

    ``type`` is HubSpot's data type (string, number, datetime, date, enumeration,
    bool); ``references`` names where an enumeration's options live when they are not
    fixed ("owners", "pipelines", "stages", "timezones").
    """

    name: str
    type: str
    field_type: str
    label: str
    options: tuple[tuple[str, str], ...] = ()
    references: str | None = None
    read_only: bool = False
    custom: bool = False
    group: str = ""
    description: str = ""

    def to_api(self, object_type: str, created: str) -> dict[str, Any]:
        """The property's definition in the properties API's shape."""
        options = [
            {"label": label, "value": value, "displayOrder": index, "hidden": False}
            for index, (value, label) in enumerate(self.options)
        ]
        body: dict[str, Any] = {
            "name": self.name,
            "label": self.label,
            "type": self.type,
            "fieldType": self.field_type,
            "description": self.description,
            "groupName": self.group or _GROUPS[object_type],
            "options": options,
            "displayOrder": -1,
            "calculated": self.read_only and not self.custom,
            "externalOptions": self.references is not None,
            "hasUniqueValue": self.name == "hs_object_id",
            "hidden": False,
            "hubspotDefined": not self.custom,
            "modificationMetadata": {
                "archivable": self.custom,
                "readOnlyDefinition": not self.custom,
                "readOnlyValue": self.read_only,
            },
            "formField": not self.read_only,
            "createdAt": created,
            "updatedAt": created,
            "archived": False,
        }
        if self.references == "owners":
            body["referencedObjectType"] = "OWNER"
        return body

    def to_row(self) -> str:
        """The definition as stored for custom properties."""
        return json.dumps(
            {
                "type": self.type,
                "field_type": self.field_type,
                "label": self.label,
                "options": [list(option) for option in self.options],
                "references": self.references,
                "group": self.group,
                "description": self.description,
            }
        )

    @classmethod
    def from_row(cls, name: str, row: str) -> PropertyDef:
        data = json.loads(row)
        return cls(
            name=name,
            type=data["type"],
            field_type=data["field_type"],
            label=data["label"],
            options=tuple((value, label) for value, label in data["options"]),
            references=data["references"],
            custom=True,
            group=data["group"],
            description=data["description"],
        )


_GROUPS = {
    "contacts": "contactinformation",
    "companies": "companyinformation",
    "deals": "dealinformation",
    "tasks": "task",
    "notes": "engagement",
    "meetings": "meeting",
    "calls": "call",
    "emails": "email",
}


def _p(name: str, type_: str, label: str, **kwargs: Any) -> PropertyDef:
    field_types = {
        "string": "text",
        "number": "number",
        "datetime": "date",
        "date": "date",
        "enumeration": "select",
        "bool": "booleancheckbox",
    }
    kwargs.setdefault("field_type", field_types[type_])
    if type_ == "bool":
        kwargs.setdefault("options", (("true", "Yes"), ("false", "No")))
    return PropertyDef(name=name, type=type_, label=label, **kwargs)


def _system(object_type: str) -> tuple[PropertyDef, ...]:
    return (
        _p("hs_object_id", "number", "Record ID", read_only=True),
        _p(CREATED_PROPERTY.get(object_type, "createdate"), "datetime", "Create Date",
           read_only=True),
        _p(MODIFIED_PROPERTY.get(object_type, "hs_lastmodifieddate"), "datetime",
           "Last Modified Date", read_only=True),
        _p("hubspot_owner_id", "enumeration", f"{_OWNER_LABELS[object_type]} owner",
           references="owners"),
    )  # fmt: skip


_OWNER_LABELS = {
    "contacts": "Contact",
    "companies": "Company",
    "deals": "Deal",
    **{name: "Activity" for name in ENGAGEMENT_TYPES},
}
_LANGUAGES = (
    ("en", "English"), ("de", "German"), ("fr", "French"), ("nl", "Dutch"), ("es", "Spanish"),
    ("it", "Italian"), ("pt-br", "Portuguese - Brazil"), ("sv", "Swedish"), ("da", "Danish"),
    ("fi", "Finnish"), ("no", "Norwegian"), ("pl", "Polish"), ("ja", "Japanese"),
    ("zh-cn", "Chinese - China"), ("zh-tw", "Chinese - Taiwan"), ("ko", "Korean"),
)  # fmt: skip

STANDARD_PROPERTIES: dict[str, tuple[PropertyDef, ...]] = {
    "contacts": (
        *_system("contacts"),
        _p("firstname", "string", "First Name"),
        _p("lastname", "string", "Last Name"),
        _p("email", "string", "Email"),
        _p("jobtitle", "string", "Job Title"),
        _p("company", "string", "Company Name"),
        _p("country", "string", "Country/Region"),
        _p("hs_timezone", "enumeration", "Time Zone", references="timezones"),
        _p("hs_language", "enumeration", "Preferred language", options=_LANGUAGES),
        _p("hs_email_optout", "bool", "Unsubscribed from all email"),
        _p("associatedcompanyid", "number", "Primary Associated Company ID", read_only=True),
    ),
    "companies": (
        *_system("companies"),
        _p("name", "string", "Company name"),
        _p("domain", "string", "Company Domain Name"),
        _p("country", "string", "Country/Region"),
        _p("industry", "string", "Industry"),
    ),
    "deals": (
        *_system("deals"),
        _p("dealname", "string", "Deal Name"),
        _p("amount", "number", "Amount"),
        _p("pipeline", "enumeration", "Pipeline", references="pipelines"),
        _p("dealstage", "enumeration", "Deal Stage", references="stages"),
        _p("closedate", "datetime", "Close Date"),
        _p("dealtype", "enumeration", "Deal Type",
           options=(("newbusiness", "New Business"), ("existingbusiness", "Existing Business"))),
        _p("description", "string", "Deal Description", field_type="textarea"),
        _p("hs_is_closed", "bool", "Is Deal Closed?", read_only=True),
        _p("hs_is_closed_won", "bool", "Is Closed Won", read_only=True),
    ),
    "tasks": (
        *_system("tasks"),
        _p("hs_task_subject", "string", "Task Title"),
        _p("hs_task_body", "string", "Task notes", field_type="html"),
        _p("hs_timestamp", "datetime", "Due date"),
        _p("hs_task_priority", "enumeration", "Priority",
           options=(("NONE", "None"), ("LOW", "Low"), ("MEDIUM", "Medium"), ("HIGH", "High"))),
        _p("hs_task_status", "enumeration", "Task Status",
           options=(("NOT_STARTED", "Not started"), ("IN_PROGRESS", "In progress"),
                    ("WAITING", "Waiting"), ("COMPLETED", "Completed"),
                    ("DEFERRED", "Deferred"))),
        _p("hs_task_type", "enumeration", "Task Type",
           options=(("TODO", "To-do"), ("CALL", "Call"), ("EMAIL", "Email"),
                    ("LINKED_IN", "LinkedIn"), ("MEETING", "Meeting"))),
    ),
    # Engagements: bodies are HTML (emails keep a plain-text copy too), hs_timestamp is when
    # the activity happened (a meeting's start is its own property), outcomes are enumerations.
    "meetings": (
        *_system("meetings"),
        _p("hs_timestamp", "datetime", "Activity date"),
        _p("hs_meeting_title", "string", "Meeting name"),
        _p("hs_meeting_body", "string", "Meeting description", field_type="html"),
        _p("hs_meeting_start_time", "datetime", "Start Time"),
        _p("hs_meeting_end_time", "datetime", "End Time"),
        _p("hs_meeting_location", "string", "Location"),
        _p("hs_meeting_outcome", "enumeration", "Meeting outcome",
           options=(("SCHEDULED", "Scheduled"), ("COMPLETED", "Completed"),
                    ("RESCHEDULED", "Rescheduled"), ("NO_SHOW", "No Show"),
                    ("CANCELED", "Canceled"))),
    ),
    "emails": (
        *_system("emails"),
        _p("hs_timestamp", "datetime", "Activity date"),
        _p("hs_email_subject", "string", "Email subject"),
        _p("hs_email_text", "string", "Email body", field_type="textarea"),
        _p("hs_email_html", "string", "Email HTML body", field_type="html"),
        _p("hs_email_direction", "enumeration", "Email direction",
           options=(("EMAIL", "Sent by owner"), ("INCOMING_EMAIL", "Reply from contact"),
                    ("FORWARDED_EMAIL", "Forwarded"))),
        _p("hs_email_status", "enumeration", "Email send status",
           options=(("BOUNCED", "Bounced"), ("FAILED", "Failed"), ("SCHEDULED", "Scheduled"),
                    ("SENDING", "Sending"), ("SENT", "Sent"))),
    ),
    "calls": (
        *_system("calls"),
        _p("hs_timestamp", "datetime", "Activity date"),
        _p("hs_call_title", "string", "Call Title"),
        _p("hs_call_body", "string", "Call notes", field_type="html"),
        _p("hs_call_direction", "enumeration", "Call direction",
           options=(("INBOUND", "Inbound"), ("OUTBOUND", "Outbound"))),
        _p("hs_call_status", "enumeration", "Call status",
           options=(("BUSY", "Busy"), ("CALLING_CRM_USER", "Calling CRM user"),
                    ("CANCELED", "Canceled"), ("COMPLETED", "Completed"),
                    ("CONNECTING", "Connecting"), ("FAILED", "Failed"),
                    ("IN_PROGRESS", "In progress"), ("NO_ANSWER", "No answer"),
                    ("QUEUED", "Queued"), ("RINGING", "Ringing"))),
        _p("hs_call_duration", "number", "Call duration (ms)"),
    ),
    "notes": (
        *_system("notes"),
        _p("hs_timestamp", "datetime", "Activity date"),
        _p("hs_note_body", "string", "Note body", field_type="html"),
    ),
}  # fmt: skip
# When a deal entered a stage, one read-only datetime per stage id, as HubSpot's
# "Date entered <stage> (<pipeline>)" properties: hs_v2_date_entered_closedwon,
# hs_v2_date_entered_12345678.
DATE_ENTERED_PREFIX = "hs_v2_date_entered_"
_PROPERTY_NAME = re.compile(r"^[a-z][a-z0-9_]{0,99}$")


# ---------------------------------------------------------------- records


@dataclass
class HubSpotObject:
    """One CRM record: its numeric id, property bag and lifecycle stamps (epoch ms)."""

    object_type: str
    id: int
    properties: dict[str, str]
    created_ms: int
    updated_ms: int
    archived: bool = False
    archived_ms: int | None = None

    def to_api(
        self, names: Sequence[str] | None, defs: Mapping[str, PropertyDef]
    ) -> dict[str, Any]:
        """The record as the v3 API returns it, with the properties asked for.

        ``names`` None gives the type's default set. Names the portal does not define
        are left out and defined ones without a value read null, as in HubSpot.
        """
        wanted = list(DEFAULT_PROPERTIES[self.object_type]) if names is None else list(names)
        wanted += [name for name in _ALWAYS[self.object_type] if name not in wanted]
        props = {
            name: self.properties.get(name)
            for name in wanted
            if name in defs or name.startswith(DATE_ENTERED_PREFIX)
        }
        body: dict[str, Any] = {
            "id": str(self.id),
            "properties": props,
            "createdAt": format_ms(self.created_ms),
            "updatedAt": format_ms(self.updated_ms),
            "archived": self.archived,
        }
        if self.archived and self.archived_ms is not None:
            body["archivedAt"] = format_ms(self.archived_ms)
        return body


# What a read returns without a ``properties`` list, and what it always adds to one.
DEFAULT_PROPERTIES: dict[str, tuple[str, ...]] = {
    "contacts": ("createdate", "email", "firstname", "hs_object_id", "lastmodifieddate",
                 "lastname"),
    "companies": ("createdate", "domain", "hs_lastmodifieddate", "hs_object_id", "name"),
    "deals": ("amount", "closedate", "createdate", "dealname", "dealstage",
              "hs_lastmodifieddate", "hs_object_id", "pipeline"),
    **{name: ("hs_createdate", "hs_lastmodifieddate", "hs_object_id") for name in ENGAGEMENT_TYPES},
}  # fmt: skip
_ALWAYS = {
    name: (
        CREATED_PROPERTY.get(name, "createdate"),
        "hs_object_id",
        MODIFIED_PROPERTY.get(name, "hs_lastmodifieddate"),
    )
    for name in OBJECT_TYPES
}


def _json_path(name: str) -> str:
    return f'$."{name}"'


def _token_match(text: Any, token: Any) -> int:
    """HubSpot's CONTAINS_TOKEN: a whole word of the value, or a ``*`` wildcard pattern."""
    if text is None or token is None:
        return 0
    value, wanted = str(text).lower(), str(token).lower().strip()
    if "*" in wanted:
        pattern = ".*".join(re.escape(part) for part in wanted.split("*"))
        words = [value, *re.split(r"\s+", value)]
        return int(any(re.fullmatch(pattern, word, re.DOTALL) for word in words))
    words = re.findall(r"[^\W_]+", value)
    needle = re.findall(r"[^\W_]+", wanted)
    if not needle:
        return 0
    size = len(needle)
    return int(any(words[i : i + size] == needle for i in range(len(words) - size + 1)))


# ---------------------------------------------------------------- the store


_SCHEMA = """
    CREATE TABLE IF NOT EXISTS hubspot_object (
        object_type TEXT NOT NULL, id INTEGER NOT NULL,
        created_ms INTEGER NOT NULL, updated_ms INTEGER NOT NULL,
        archived INTEGER NOT NULL DEFAULT 0, archived_ms INTEGER,
        properties TEXT NOT NULL, PRIMARY KEY (object_type, id));
    CREATE INDEX IF NOT EXISTS ix_hubspot_object_modified
        ON hubspot_object (object_type, archived, updated_ms, id);
    CREATE TABLE IF NOT EXISTS hubspot_association (
        from_type TEXT NOT NULL, from_id INTEGER NOT NULL,
        to_type TEXT NOT NULL, to_id INTEGER NOT NULL,
        category TEXT NOT NULL, type_id INTEGER NOT NULL,
        PRIMARY KEY (from_type, from_id, to_type, to_id, category, type_id));
    CREATE TABLE IF NOT EXISTS hubspot_association_label (
        from_type TEXT NOT NULL, to_type TEXT NOT NULL, type_id INTEGER NOT NULL,
        label TEXT NOT NULL, inverse_type_id INTEGER NOT NULL,
        PRIMARY KEY (from_type, to_type, type_id));
    CREATE TABLE IF NOT EXISTS hubspot_owner (
        id INTEGER PRIMARY KEY, user_id INTEGER NOT NULL, email TEXT NOT NULL,
        first_name TEXT, last_name TEXT, archived INTEGER NOT NULL DEFAULT 0,
        created_ms INTEGER NOT NULL, updated_ms INTEGER NOT NULL);
    CREATE TABLE IF NOT EXISTS hubspot_pipeline (
        object_type TEXT NOT NULL, id TEXT NOT NULL, display_order INTEGER NOT NULL,
        body TEXT NOT NULL, PRIMARY KEY (object_type, id));
    CREATE TABLE IF NOT EXISTS hubspot_property (
        object_type TEXT NOT NULL, name TEXT NOT NULL, body TEXT NOT NULL,
        PRIMARY KEY (object_type, name));
    CREATE TABLE IF NOT EXISTS hubspot_counter (
        name TEXT PRIMARY KEY, value INTEGER NOT NULL);

"""


class HubSpotStore:
    """The sandbox portal's records in SQLite, safe to share between threads.

    It may share its file with the Salesforce ``SandboxStore`` (its tables are
    prefixed ``hubspot_``); each keeps its own connection, and a busy timeout lets
    their writes take turns.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        self._lock = threading.RLock()
        self._depth = 0
        self._conn = sqlite3.connect(
            self.path, check_same_thread=False, isolation_level=None, timeout=10
        )
        if self.path != ":memory:":
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=NORMAL")
        self._conn.create_function("hs_token", 2, _token_match, deterministic=True)
        self._custom: dict[str, dict[str, PropertyDef]] | None = None
        self._pipelines: dict[str, list[dict[str, Any]]] | None = None
        self._create_schema()

    # ------------------------------------------------------------ lifecycle

    def _create_schema(self) -> None:
        with self.transaction():
            # One statement at a time: executescript would commit the open savepoint.
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    self._conn.execute(statement)

    _TABLES = (
        "hubspot_object",
        "hubspot_association",
        "hubspot_association_label",
        "hubspot_owner",
        "hubspot_pipeline",
        "hubspot_property",
        "hubspot_counter",
    )

    def close(self) -> None:
        """Close the SQLite connection."""
        with self._lock:
            self._conn.close()

    def reset(self) -> None:
        """Delete the whole portal (records, owners, pipelines, custom properties)."""
        with self.transaction():
            for table in self._TABLES:
                self._conn.execute(f"DELETE FROM {table}")
        self._custom = None
        self._pipelines = None

    def is_empty(self) -> bool:
        """Tell whether the portal holds nothing at all (then it needs seeding)."""
        with self._lock:
            return all(
                self._conn.execute(f"SELECT 1 FROM {table} LIMIT 1").fetchone() is None
                for table in ("hubspot_object", "hubspot_owner", "hubspot_pipeline")
            )

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """Run a block atomically; nests via savepoints, rolls back on any exception."""
        with self._lock:
            savepoint = f"hs{self._depth}"
            self._conn.execute(f"SAVEPOINT {savepoint}")
            self._depth += 1
            try:
                yield
            except BaseException:
                self._conn.execute(f"ROLLBACK TO {savepoint}")
                self._conn.execute(f"RELEASE {savepoint}")
                self._custom = None
                self._pipelines = None
                raise
            else:
                self._conn.execute(f"RELEASE {savepoint}")
            finally:
                self._depth -= 1

    def _next_ids(self, name: str, count: int = 1) -> list[int]:
        """Mint ``count`` ids of a kind; the counter lives in the file so a resumed portal
        goes on where it stopped."""
        with self.transaction():
            row = self._conn.execute(
                "SELECT value FROM hubspot_counter WHERE name = ?", (name,)
            ).fetchone()
            start = row[0] if row else 0
            self._conn.execute(
                "INSERT INTO hubspot_counter (name, value) VALUES (?, ?) "
                "ON CONFLICT(name) DO UPDATE SET value = excluded.value",
                (name, start + count),
            )
        base, step = _ID_BASES[name]
        return [base + (start + i + 1) * step for i in range(count)]

    # ------------------------------------------------------------ property definitions

    def define_property(self, object_type: str, pdef: PropertyDef) -> None:
        """Create (or replace) a custom property, as a portal admin does."""
        if not _PROPERTY_NAME.match(pdef.name):
            raise ValueError(f"invalid property name {pdef.name!r}")
        with self.transaction():
            self._conn.execute(
                "INSERT OR REPLACE INTO hubspot_property (object_type, name, body) "
                "VALUES (?, ?, ?)",
                (object_type, pdef.name, pdef.to_row()),
            )
        self._custom = None

    def properties(self, object_type: str) -> dict[str, PropertyDef]:
        """Every property defined on a type: HubSpot's standard ones, then custom ones."""
        with self._lock:
            if self._custom is None:
                custom: dict[str, dict[str, PropertyDef]] = {name: {} for name in OBJECT_TYPES}
                for kind, name, body in self._conn.execute(
                    "SELECT object_type, name, body FROM hubspot_property ORDER BY name"
                ):
                    custom[kind][name] = PropertyDef.from_row(name, body)
                self._custom = custom
            custom_defs = self._custom[object_type]
        standard = {pdef.name: pdef for pdef in STANDARD_PROPERTIES[object_type]}
        return {**standard, **custom_defs}

    def property(self, object_type: str, name: str) -> PropertyDef | None:
        """One property's definition, including the per-stage date-entered ones."""
        pdef = self.properties(object_type).get(name)
        if pdef is None and object_type == "deals" and name.startswith(DATE_ENTERED_PREFIX):
            stage_id = name.removeprefix(DATE_ENTERED_PREFIX)
            found = self.stage("deals", stage_id)
            if found is not None:
                pipeline, stage = found
                label = f'Date entered "{stage["label"]} ({pipeline["label"]})"'
                return _p(name, "datetime", label, read_only=True)
        return pdef

    # ------------------------------------------------------------ pipelines

    def put_pipeline(self, object_type: str, pipeline: Mapping[str, Any]) -> None:
        """Create or replace a pipeline (a dict in the pipelines API's shape)."""
        with self.transaction():
            self._conn.execute(
                "INSERT OR REPLACE INTO hubspot_pipeline (object_type, id, display_order, body) "
                "VALUES (?, ?, ?, ?)",
                (object_type, pipeline["id"], pipeline["displayOrder"], json.dumps(pipeline)),
            )
        self._pipelines = None

    def pipelines(self, object_type: str) -> list[dict[str, Any]]:
        """A type's pipelines in display order (copies; change them with put_pipeline)."""
        with self._lock:
            if self._pipelines is None:
                loaded: dict[str, list[dict[str, Any]]] = {}
                for kind, body in self._conn.execute(
                    "SELECT object_type, body FROM hubspot_pipeline ORDER BY display_order, id"
                ):
                    loaded.setdefault(kind, []).append(json.loads(body))
                self._pipelines = loaded
            return json.loads(json.dumps(self._pipelines.get(object_type, [])))

    def stage(
        self, object_type: str, stage_id: str
    ) -> tuple[dict[str, Any], dict[str, Any]] | None:
        """The (pipeline, stage) a stage id belongs to, or None."""
        for pipeline in self.pipelines(object_type):
            for stage in pipeline["stages"]:
                if stage["id"] == stage_id:
                    return pipeline, stage
        return None

    # ------------------------------------------------------------ owners

    def insert_owner(
        self,
        *,
        email: str,
        first_name: str | None,
        last_name: str | None,
        created: datetime,
        archived: bool = False,
        updated: datetime | None = None,
    ) -> int:
        """Add an owner (a HubSpot user who can own records) and return its owner id."""
        (owner_id,) = self._next_ids("owners")
        (user_id,) = self._next_ids("users")
        with self.transaction():
            self._conn.execute(
                "INSERT INTO hubspot_owner (id, user_id, email, first_name, last_name, archived, "
                "created_ms, updated_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (owner_id, user_id, email, first_name, last_name, int(archived),
                 to_ms(created), to_ms(updated or created)),
            )  # fmt: skip
        return owner_id

    def owners(self, *, archived: bool | None = None) -> list[dict[str, Any]]:
        """Owners by id in the owners API's shape; ``archived`` None gives both kinds."""
        statement = (
            "SELECT id, user_id, email, first_name, last_name, archived, created_ms, updated_ms "
            "FROM hubspot_owner"
        )
        params: tuple[Any, ...] = ()
        if archived is not None:
            statement += " WHERE archived = ?"
            params = (int(archived),)
        with self._lock:
            rows = self._conn.execute(statement + " ORDER BY id", params).fetchall()
        return [_owner_body(row) for row in rows]

    def active_owner_ids(self) -> set[int]:
        """Ids of the owners records can be assigned to (archived ones cannot)."""
        with self._lock:
            rows = self._conn.execute("SELECT id FROM hubspot_owner WHERE archived = 0")
            return {row[0] for row in rows}

    # ------------------------------------------------------------ records

    def insert(
        self,
        object_type: str,
        properties: Mapping[str, str | None],
        *,
        created: datetime | int,
        updated: datetime | int | None = None,
    ) -> HubSpotObject:
        """Insert a record (trusted path: values are stored as given) and return it."""
        (object_id,) = self._next_ids(object_type)
        record = _new_object(object_type, object_id, properties, created, updated)
        with self.transaction():
            self._conn.execute(_INSERT_OBJECT, _object_row(record))
        return record

    def get(self, object_type: str, object_id: int) -> HubSpotObject | None:
        """A record by id, archived or not."""
        found = self.get_many(object_type, [object_id])
        return found.get(object_id)

    def get_many(self, object_type: str, ids: Iterable[int]) -> dict[int, HubSpotObject]:
        """Records by id (archived too); ids with no record are simply absent."""
        wanted = sorted(set(ids))
        found: dict[int, HubSpotObject] = {}
        for start in range(0, len(wanted), 500):
            chunk = wanted[start : start + 500]
            marks = ", ".join("?" for _ in chunk)
            with self._lock:
                rows = self._conn.execute(
                    f"{_SELECT_OBJECT} WHERE object_type = ? AND id IN ({marks})",
                    (object_type, *chunk),
                ).fetchall()
            found.update((row[1], _object_from_row(row)) for row in rows)
        return found

    def find_by_property(
        self, object_type: str, name: str, values: Iterable[str]
    ) -> dict[str, HubSpotObject]:
        """Live records whose property equals one of the values (case-insensitive), by value."""
        wanted = {value.lower(): value for value in values}
        found: dict[str, HubSpotObject] = {}
        keys = sorted(wanted)
        for start in range(0, len(keys), 500):
            chunk = keys[start : start + 500]
            marks = ", ".join("?" for _ in chunk)
            with self._lock:
                rows = self._conn.execute(
                    f"{_SELECT_OBJECT} WHERE object_type = ? AND archived = 0 AND "
                    f"lower(json_extract(properties, ?)) IN ({marks}) ORDER BY id",
                    (object_type, _json_path(name), *chunk),
                ).fetchall()
            for row in rows:
                record = _object_from_row(row)
                key = str(record.properties.get(name, "")).lower()
                found.setdefault(wanted[key], record)
        return found

    def update(
        self, object_type: str, object_id: int, changes: Mapping[str, str | None], *, when: int
    ) -> HubSpotObject:
        """Set (or, with None, clear) properties and stamp the record; KeyError if absent."""
        with self.transaction():
            record = self.get(object_type, object_id)
            if record is None:
                raise KeyError(f"no {object_type} with id {object_id}")
            for name, value in changes.items():
                if value is None:
                    record.properties.pop(name, None)
                else:
                    record.properties[name] = value
            record.updated_ms = when
            record.properties[MODIFIED_PROPERTY.get(object_type, "hs_lastmodifieddate")] = (
                format_ms(when)
            )
            self._conn.execute(
                "UPDATE hubspot_object SET properties = ?, updated_ms = ? "
                "WHERE object_type = ? AND id = ?",
                (json.dumps(record.properties), when, object_type, object_id),
            )
        return record

    def archive(self, object_type: str, object_id: int, *, when: int) -> None:
        """Archive a record (HubSpot's delete: kept 90 days, listed with archived=true)."""
        with self.transaction():
            self._conn.execute(
                "UPDATE hubspot_object SET archived = 1, archived_ms = ?, updated_ms = ? "
                "WHERE object_type = ? AND id = ? AND archived = 0",
                (when, when, object_type, object_id),
            )

    def search(
        self,
        object_type: str,
        where: str,
        params: Sequence[Any],
        order_by: str,
        *,
        limit: int,
        offset: int,
    ) -> tuple[int, list[HubSpotObject]]:
        """Live records matching a compiled filter: (total, one page in the given order).

        ``where`` and ``order_by`` are SQL over this table's columns built by the API
        layer from a search request (names never come from users unchecked).
        """
        clause = "object_type = ? AND archived = 0" + (f" AND ({where})" if where else "")
        with self._lock:
            total = self._conn.execute(
                f"SELECT COUNT(*) FROM hubspot_object WHERE {clause}", (object_type, *params)
            ).fetchone()[0]
            rows = self._conn.execute(
                f"{_SELECT_OBJECT} WHERE {clause} ORDER BY {order_by} LIMIT ? OFFSET ?",
                (object_type, *params, limit, offset),
            ).fetchall()
        return int(total), [_object_from_row(row) for row in rows]

    def page(
        self, object_type: str, *, archived: bool, after_id: int, limit: int
    ) -> list[HubSpotObject]:
        """Records in id order after ``after_id``: live ones, or only archived ones."""
        with self._lock:
            rows = self._conn.execute(
                f"{_SELECT_OBJECT} WHERE object_type = ? AND archived = ? AND id > ? "
                "ORDER BY id LIMIT ?",
                (object_type, int(archived), after_id, limit),
            ).fetchall()
        return [_object_from_row(row) for row in rows]

    def count(self, object_type: str, *, archived: bool | None = False) -> int:
        """How many records of a type there are (live ones by default)."""
        statement = "SELECT COUNT(*) FROM hubspot_object WHERE object_type = ?"
        params: tuple[Any, ...] = (object_type,)
        if archived is not None:
            statement += " AND archived = ?"
            params += (int(archived),)
        with self._lock:
            return int(self._conn.execute(statement, params).fetchone()[0])

    # ------------------------------------------------------------ associations

    def define_association_label(
        self, from_type: str, to_type: str, type_id: int, label: str, inverse_type_id: int
    ) -> None:
        """Create a paired user-defined association label (one type id each way)."""
        with self.transaction():
            self._conn.executemany(
                "INSERT OR REPLACE INTO hubspot_association_label "
                "(from_type, to_type, type_id, label, inverse_type_id) VALUES (?, ?, ?, ?, ?)",
                [
                    (from_type, to_type, type_id, label, inverse_type_id),
                    (to_type, from_type, inverse_type_id, label, type_id),
                ],
            )

    def association_types(self, from_type: str, to_type: str) -> list[tuple[str, int, str | None]]:
        """Every (category, typeId, label) defined from one type to another."""
        types: list[tuple[str, int, str | None]] = [
            (HUBSPOT_DEFINED, type_id, label)
            for type_id, label, _ in HUBSPOT_DEFINED_ASSOCIATIONS.get((from_type, to_type), ())
        ]
        with self._lock:
            rows = self._conn.execute(
                "SELECT type_id, label FROM hubspot_association_label "
                "WHERE from_type = ? AND to_type = ? ORDER BY type_id",
                (from_type, to_type),
            ).fetchall()
        types += [(USER_DEFINED, type_id, label) for type_id, label in rows]
        return types

    def _inverse(self, from_type: str, to_type: str, category: str, type_id: int) -> int | None:
        if category == HUBSPOT_DEFINED:
            for known, _, inverse in HUBSPOT_DEFINED_ASSOCIATIONS.get((from_type, to_type), ()):
                if known == type_id:
                    return inverse
            return None
        with self._lock:
            row = self._conn.execute(
                "SELECT inverse_type_id FROM hubspot_association_label "
                "WHERE from_type = ? AND to_type = ? AND type_id = ?",
                (from_type, to_type, type_id),
            ).fetchone()
        return row[0] if row else None

    def association_rows(
        self,
        from_type: str,
        from_id: int,
        to_type: str,
        to_id: int,
        types: Iterable[tuple[str, int]],
    ) -> list[tuple[str, int, str, int, str, int]]:
        """The rows (both directions) that associate two records with the given types.

        A labelled association always carries the default unlabelled type too, as in
        HubSpot. ValueError for a type not defined between the two object types.
        """
        wanted = list(dict.fromkeys(types))
        default = HUBSPOT_DEFINED_ASSOCIATIONS.get((from_type, to_type), ((None, None, None),))[0]
        if default[0] is not None and (HUBSPOT_DEFINED, default[0]) not in wanted:
            wanted.insert(0, (HUBSPOT_DEFINED, default[0]))
        rows = []
        for category, type_id in wanted:
            inverse = self._inverse(from_type, to_type, category, type_id)
            if inverse is None:
                raise ValueError(
                    f"association type {category}/{type_id} is not defined from {from_type} "
                    f"to {to_type}"
                )
            rows.append((from_type, from_id, to_type, to_id, category, type_id))
            rows.append((to_type, to_id, from_type, from_id, category, inverse))
        return rows

    def associate(
        self,
        from_type: str,
        from_id: int,
        to_type: str,
        to_id: int,
        types: Iterable[tuple[str, int]] = (),
    ) -> None:
        """Associate two records (both directions) with the given (category, typeId)s."""
        rows = self.association_rows(from_type, from_id, to_type, to_id, types)
        with self.transaction():
            self._conn.executemany(_INSERT_ASSOCIATION, rows)

    def associations(
        self, from_type: str, from_ids: Iterable[int], to_type: str
    ) -> dict[int, dict[int, list[tuple[str, int]]]]:
        """from id -> to id -> [(category, typeId)], for the records asked about."""
        wanted = sorted(set(from_ids))
        found: dict[int, dict[int, list[tuple[str, int]]]] = {}
        for start in range(0, len(wanted), 500):
            chunk = wanted[start : start + 500]
            marks = ", ".join("?" for _ in chunk)
            with self._lock:
                rows = self._conn.execute(
                    "SELECT from_id, to_id, category, type_id FROM hubspot_association "
                    f"WHERE from_type = ? AND to_type = ? AND from_id IN ({marks}) "
                    "ORDER BY from_id, to_id, category, type_id",
                    (from_type, to_type, *chunk),
                ).fetchall()
            for from_id, to_id, category, type_id in rows:
                found.setdefault(from_id, {}).setdefault(to_id, []).append((category, type_id))
        return found

    # ------------------------------------------------------------ bulk writes

    @contextmanager
    def bulk(self) -> Iterator[BulkWriter]:
        """Write many records and associations in one transaction, batched per statement.

        Seeding a portal of thousands of deals is dominated by per-row statements;
        rows are queued and written with executemany, ids are minted up front.
        """
        with self.transaction():
            writer = BulkWriter(self)
            yield writer
            writer.flush()


class BulkWriter:
    """Queued inserts for ``HubSpotStore.bulk`` (see there for why)."""

    def __init__(self, store: HubSpotStore) -> None:
        self._store = store
        self._objects: list[tuple[Any, ...]] = []
        self._associations: list[tuple[Any, ...]] = []
        self._counters: dict[str, int] = {}

    def _mint(self, name: str) -> int:
        if name not in self._counters:
            row = self._store._conn.execute(
                "SELECT value FROM hubspot_counter WHERE name = ?", (name,)
            ).fetchone()
            self._counters[name] = row[0] if row else 0
        self._counters[name] += 1
        base, step = _ID_BASES[name]
        return base + self._counters[name] * step

    def insert(
        self,
        object_type: str,
        properties: Mapping[str, str | None],
        *,
        created: datetime | int,
        updated: datetime | int | None = None,
    ) -> HubSpotObject:
        """Queue a record like ``HubSpotStore.insert``; its id is known at once."""
        record = _new_object(object_type, self._mint(object_type), properties, created, updated)
        self._objects.append(_object_row(record))
        if len(self._objects) >= 2000:
            self._flush_objects()
        return record

    def associate(
        self,
        from_type: str,
        from_id: int,
        to_type: str,
        to_id: int,
        types: Iterable[tuple[str, int]] = (),
    ) -> None:
        """Queue an association like ``HubSpotStore.associate``."""
        self._associations.extend(
            self._store.association_rows(from_type, from_id, to_type, to_id, types)
        )

    def _flush_objects(self) -> None:
        self._store._conn.executemany(_INSERT_OBJECT, self._objects)
        self._objects = []

    def flush(self) -> None:
        """Write everything queued."""
        self._flush_objects()
        self._store._conn.executemany(_INSERT_ASSOCIATION, self._associations)
        self._associations = []
        self._store._conn.executemany(
            "INSERT INTO hubspot_counter (name, value) VALUES (?, ?) "
            "ON CONFLICT(name) DO UPDATE SET value = excluded.value",
            sorted(self._counters.items()),
        )


_INSERT_OBJECT = (
    "INSERT INTO hubspot_object (object_type, id, created_ms, updated_ms, archived, archived_ms, "
    "properties) VALUES (?, ?, ?, ?, ?, ?, ?)"
)
_SELECT_OBJECT = (
    "SELECT object_type, id, created_ms, updated_ms, archived, archived_ms, properties "
    "FROM hubspot_object"
)
_INSERT_ASSOCIATION = (
    "INSERT OR IGNORE INTO hubspot_association (from_type, from_id, to_type, to_id, category, "
    "type_id) VALUES (?, ?, ?, ?, ?, ?)"
)


def _as_ms(value: datetime | int) -> int:
    return value if isinstance(value, int) else to_ms(value)


def _new_object(
    object_type: str,
    object_id: int,
    properties: Mapping[str, str | None],
    created: datetime | int,
    updated: datetime | int | None,
) -> HubSpotObject:
    created_ms = _as_ms(created)
    updated_ms = _as_ms(updated) if updated is not None else created_ms
    props = {name: value for name, value in properties.items() if value is not None}
    props["hs_object_id"] = str(object_id)
    props[CREATED_PROPERTY.get(object_type, "createdate")] = format_ms(created_ms)
    props[MODIFIED_PROPERTY.get(object_type, "hs_lastmodifieddate")] = format_ms(updated_ms)
    return HubSpotObject(object_type, object_id, props, created_ms, updated_ms)


def _object_row(record: HubSpotObject) -> tuple[Any, ...]:
    return (
        record.object_type,
        record.id,
        record.created_ms,
        record.updated_ms,
        int(record.archived),
        record.archived_ms,
        json.dumps(record.properties, ensure_ascii=False),
    )


def _object_from_row(row: Sequence[Any]) -> HubSpotObject:
    object_type, object_id, created_ms, updated_ms, archived, archived_ms, properties = row
    return HubSpotObject(
        object_type, object_id, json.loads(properties), created_ms, updated_ms,
        bool(archived), archived_ms,
    )  # fmt: skip


def _owner_body(row: Sequence[Any]) -> dict[str, Any]:
    owner_id, user_id, email, first, last, archived, created_ms, updated_ms = row
    return {
        "id": str(owner_id),
        "email": email,
        "type": "PERSON",
        "firstName": first or "",
        "lastName": last or "",
        "userId": None if archived else user_id,
        "userIdIncludingInactive": user_id,
        "createdAt": format_ms(created_ms),
        "updatedAt": format_ms(updated_ms),
        "archived": bool(archived),
        "teams": [],
    }
