"""Plain data shared by the CRM connectors, the planner and the senders."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime
from enum import StrEnum
from typing import Any


class ActionKind(StrEnum):
    EMAIL = "email"
    TASK = "task"


class ActionStatus(StrEnum):
    PENDING = "pending"
    # A client-facing step waiting for the rep's handoff document; released when it is complete.
    HELD = "held"
    IN_FLIGHT = "in_flight"
    DONE = "done"
    SKIPPED = "skipped"
    FAILED = "failed"
    # A hard crash happened between handing a message to SMTP and recording it: the message
    # may have gone out, so it is never re-sent automatically (a person checks the Message-ID).
    UNCONFIRMED = "unconfirmed"
    CANCELLED = "cancelled"


@dataclass(frozen=True)
class Person:
    """A CRM user: the rep (deal owner), the CSM, or an executive."""

    id: str
    name: str
    email: str | None = None
    is_active: bool = True


@dataclass(frozen=True)
class Contact:
    """The client's primary contact on the deal."""

    id: str
    first_name: str | None
    last_name: str | None
    email: str | None
    opted_out: bool = False
    # Where the client is and how they like to be addressed (field map: [<crm>.client_fields]).
    time_zone: str | None = None
    country: str | None = None
    locale: str | None = None
    salutation: str | None = None

    @property
    def name(self) -> str:
        return " ".join(part for part in (self.first_name, self.last_name) if part)


@dataclass(frozen=True)
class Deal:
    """One deal as the planner sees it, independent of the CRM it came from."""

    source: str
    deal_id: str
    name: str
    account_name: str | None
    stage: str
    is_won: bool
    is_deleted: bool
    amount: float | None
    close_date: date | None
    won_at: datetime | None
    owner: Person | None
    csm: Person | None
    primary_contact: Contact | None = None
    account_owner: Person | None = None
    # The rep's handoff document: internal notes, never rendered into a client email.
    handoff_doc: dict[str, str | None] = field(default_factory=dict)
    deal_type: str | None = None  # the CRM's own value; the segment is read from it by config
    account_time_zone: str | None = None
    account_country: str | None = None
    # The CRM's own "the client asked for more than was sold" flag (field map), if the org has one.
    scope_change: bool | None = None

    def to_record(self) -> dict[str, Any]:
        record = asdict(self)
        record["close_date"] = self.close_date.isoformat() if self.close_date else None
        record["won_at"] = self.won_at.isoformat() if self.won_at else None
        return record

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> Deal:
        def person(value: dict | None) -> Person | None:
            return Person(**value) if value else None

        contact = record.get("primary_contact")
        return cls(
            source=record["source"],
            deal_id=record["deal_id"],
            name=record["name"],
            account_name=record.get("account_name"),
            stage=record["stage"],
            is_won=bool(record["is_won"]),
            is_deleted=bool(record["is_deleted"]),
            amount=record.get("amount"),
            close_date=date.fromisoformat(record["close_date"])
            if record.get("close_date")
            else None,
            won_at=datetime.fromisoformat(record["won_at"]) if record.get("won_at") else None,
            owner=person(record.get("owner")),
            csm=person(record.get("csm")),
            account_owner=person(record.get("account_owner")),
            primary_contact=Contact(**contact) if contact else None,
            handoff_doc=dict(record.get("handoff_doc") or {}),
            deal_type=record.get("deal_type"),
            account_time_zone=record.get("account_time_zone"),
            account_country=record.get("account_country"),
            scope_change=record.get("scope_change"),
        )

    def missing_handoff_fields(self) -> list[str]:
        """Keys of the handoff document that are empty (the gate of client-facing steps)."""
        return [key for key, value in self.handoff_doc.items() if not (value or "").strip()]

    def label(self) -> str:
        """How messages name the deal: the CRM id a RevOps engineer can search for, and its name."""
        return f"deal {self.deal_id} ({self.name!r})"


@dataclass(frozen=True)
class DealIssue:
    """Something wrong with a deal's data: recorded with the field so RevOps can fix it."""

    source: str
    deal_id: str
    field: str
    code: str
    reason: str


@dataclass(frozen=True)
class PlannedAction:
    """One step for one deal, as an outbox row: the dedupe key makes it happen at most once.

    ``due_at`` is when the step may go out (None: at once); ``not_after`` the latest moment it
    is still sensible (None: no limit). The payload is small: who and what are resolved when
    the row is dispatched, from the latest snapshot of the deal.
    """

    source: str
    deal_id: str
    step: str
    kind: ActionKind
    payload: dict[str, Any]
    status: ActionStatus = ActionStatus.PENDING
    reason: str | None = None
    due_at: datetime | None = None
    not_after: datetime | None = None

    @property
    def dedupe_key(self) -> str:
        return dedupe_key(self.source, self.deal_id, self.step)


@dataclass(frozen=True)
class OutboxRow:
    """An outbox row as dispatch sees it: one step of one deal, and where it stands."""

    id: int
    dedupe_key: str
    source: str
    deal_id: str
    step: str
    kind: ActionKind
    status: ActionStatus
    payload: dict[str, Any]
    due_at: datetime
    not_after: datetime | None = None
    attempts: int = 0
    claimed_by: str | None = None
    claimed_at: datetime | None = None
    attempted_at: datetime | None = None
    external_id: str | None = None
    reason: str | None = None
    planned_run: str = ""
    finished_run: str | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None

    @classmethod
    def from_mapping(cls, row: Any) -> OutboxRow:
        values = dict(row)
        values["kind"] = ActionKind(values["kind"])
        values["status"] = ActionStatus(values["status"])
        return cls(**values)

    @classmethod
    def planned(cls, action: PlannedAction) -> OutboxRow:
        """A row a dry run would insert (never stored)."""
        return cls(
            id=0,
            dedupe_key=action.dedupe_key,
            source=action.source,
            deal_id=action.deal_id,
            step=action.step,
            kind=action.kind,
            status=action.status,
            payload=action.payload,
            due_at=action.due_at or datetime.now(UTC),  # as the store would record it
            not_after=action.not_after,
            reason=action.reason,
        )

    @property
    def label(self) -> str:
        """How reasons name the deal: id and name, as the planner wrote it."""
        return self.payload.get("deal_label") or f"deal {self.deal_id}"


def dedupe_key(source: str, deal_id: str, step: str) -> str:
    return f"{source}:{deal_id}:{step}"


@dataclass(frozen=True)
class CrmTask:
    """A task to write into the CRM, in CRM-neutral terms."""

    dedupe_key: str
    deal_id: str
    contact_id: str | None
    owner_id: str
    subject: str
    due_date: date
    priority: str
    description: str
    remind_at: datetime | None = None


@dataclass(frozen=True)
class WriteResult:
    """The CRM's answer for one record of a batch write."""

    dedupe_key: str
    ok: bool
    external_id: str | None = None
    error: str | None = None
