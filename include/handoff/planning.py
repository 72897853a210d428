"""What one playbook step becomes for one deal, resolved when it is dispatched.

The planner only records *which* step is due *when*; this module decides *who* and *what* from
the latest snapshot of the deal (plan early, resolve late): a contact who opted out since gets
no mail, a CSM replaced since signs the next check-in. The guards (a primary contact, a valid
address, consent, an active owner) are shared by every step. A step that cannot happen is
*skipped* (the client cannot be written to) or *failed* (no one can own the task), with a
reason naming the deal and the field; the other steps and deals go on.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, replace
from datetime import date, datetime, timedelta
from functools import lru_cache
from typing import Any

from email_validator import EmailNotValidError, validate_email

from handoff.config import Settings
from handoff.models import (
    ActionStatus,
    CrmTask,
    Deal,
    DealIssue,
    Person,
    dedupe_key,
)
from handoff.playbook import ROLE_NAMES, Step, describe

HANDOFF_DOC_LABELS = {
    "situation": "Situation (client's words)",
    "goals": "Goals and success criteria",
    "promises": "Promises and commitments",
    "objections": "Objections and how they were resolved",
    "stakeholders": "Key stakeholders",
    "risks": "Red flags and risks",
}

# Line breaks and control characters (header injection), and the bidirectional embedding,
# override and isolate marks that can make a name or subject read differently than it is.
_CONTROL = re.compile(r"[\x00-\x1f\x7f\u2028\u2029\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]+")


@dataclass(frozen=True)
class Resolution:
    """A step resolved for a deal: ready (pending) with its payload, or skipped/failed."""

    status: ActionStatus
    payload: dict[str, Any]
    reason: str | None = None
    # Data problems noticed while resolving (the contact is only read at dispatch time).
    issues: tuple[DealIssue, ...] = ()

    @property
    def ready(self) -> bool:
        return self.status == ActionStatus.PENDING


@dataclass(frozen=True)
class People:
    """CRM users a step may need besides the deal's own: the configured executive."""

    executive: Person | None = None


def deal_issues(deal: Deal, settings: Settings) -> list[DealIssue]:
    """Data problems of a deal, recorded once so RevOps can fix them (the steps go on)."""
    issues: list[DealIssue] = []
    fields = _FieldNames(settings)
    if deal.owner is None:
        issues.append(
            _issue(deal, "OwnerId", "missing_owner", "the deal has no owner, so no rep is Cc'd")
        )
    _active_people(deal, fields, issues)
    if deal.amount is not None and deal.amount < 0:
        issues.append(
            _issue(
                deal,
                "Amount",
                "negative_amount",
                f"the amount is negative ({deal.amount:,.2f}); it is treated as not set",
            )
        )
    elif deal.amount is None:
        issues.append(
            _issue(
                deal,
                "Amount",
                "missing_amount",
                "the deal has no amount, so steps that depend on the amount (the internal "
                "handoff meeting, the executive sponsor check-in) cannot be applied",
            )
        )
    issues += display_issues(deal)
    missing = deal.missing_handoff_fields()
    if missing:
        names = ", ".join(f"{HANDOFF_DOC_LABELS[k]} ({fields.doc[k]})" for k in missing)
        issues.append(
            _issue(
                deal,
                "handoff document",
                "handoff_doc_incomplete",
                f"the handoff document is incomplete; missing: {names}",
            )
        )
    return issues


def display_issues(deal: Deal) -> list[DealIssue]:
    """Names shown to the client that carried line breaks or control marks (cleaned first)."""
    contact = deal.primary_contact
    issues = []
    for field, value in (
        ("Contact.FirstName", contact.first_name if contact else None),
        ("Contact.Name", contact.name if contact else None),
        ("Account.Name", deal.account_name),
    ):
        if value and _CONTROL.search(value):
            issues.append(
                _issue(
                    deal,
                    field,
                    "control_characters",
                    "contains line breaks, control characters or bidirectional marks; they "
                    "were replaced by spaces",
                )
            )
    return issues


def resolve(
    deal: Deal, step: Step, settings: Settings, people: People, planned_at: datetime, now: datetime
) -> Resolution:
    """What ``step`` is for ``deal`` now: an email or a task payload, or why it cannot be."""
    if step.kind == "email":
        return _email(deal, step, settings, now)
    return _task(deal, step, settings, people, planned_at, now)


class _FieldNames:
    """CRM field names for messages (Salesforce names today; the field map grows with HubSpot)."""

    def __init__(self, settings: Settings) -> None:
        self.csm = settings.salesforce.csm_field
        self.csm_email = settings.salesforce.csm_field.removesuffix("__c") + "__r.Email"
        self.doc = settings.salesforce.handoff_fields.model_dump()


def _active_people(deal: Deal, fields: _FieldNames, issues: list[DealIssue]) -> Deal:
    """The deal as clients and tasks may see it: inactive users count as missing, and users
    whose address is unusable are kept as task owners but never written to or introduced."""
    people: dict[str, Person | None] = {}
    for role, person, field, email_field in (
        ("owner", deal.owner, "OwnerId", "Owner.Email"),
        ("csm", deal.csm, fields.csm, fields.csm_email),
    ):
        if person is not None and not person.is_active:
            what = "rep" if role == "owner" else "CSM"
            issues.append(
                _issue(
                    deal,
                    field,
                    f"inactive_{role}",
                    f"the {what} {_clean(person.name)} ({person.id}) is an inactive user: "
                    f"treated as no {what} (not introduced to the client, owns no task)",
                )
            )
            person = None
        if person is not None and person.email:
            try:
                address = _normalized_address(person.email)
            except EmailNotValidError as exc:
                issues.append(
                    _issue(
                        deal,
                        email_field,
                        "invalid_email",
                        f"{_clean(person.name)} has an unusable address {person.email!r} ({exc}); "
                        "they are not copied on client email",
                    )
                )
                address = None
            person = replace(person, email=address)
        people[role] = person
    return replace(deal, owner=people["owner"], csm=people["csm"])


@lru_cache(maxsize=4096)
def _normalized_address(email: str) -> str:
    """A CRM user's address, checked once a process (the same reps and CSMs own many deals)."""
    return validate_email(email, check_deliverability=False).normalized


def _skip(deal: Deal, field: str, what: str) -> Resolution:
    return Resolution(ActionStatus.SKIPPED, {}, f"{deal.label()}: {field}: {what}")


def _issue(deal: Deal, field: str, code: str, what: str) -> DealIssue:
    return DealIssue(deal.source, deal.deal_id, field, code, f"{deal.label()}: {field}: {what}")


# -- emails --------------------------------------------------------------------------------------


def _email(deal: Deal, step: Step, settings: Settings, now: datetime) -> Resolution:
    fields = _FieldNames(settings)
    deal = _active_people(deal, fields, [])
    contact = deal.primary_contact
    if contact is None:
        return _skip(
            deal,
            "OpportunityContactRole.IsPrimary",
            "no primary contact on the deal; add one and the email can be sent by hand",
        )
    if contact.opted_out:
        return _skip(
            deal,
            "Contact.HasOptedOutOfEmail",
            f"primary contact {contact.id} opted out of email; no {step.id} is sent",
        )
    if not (contact.email or "").strip():
        return _skip(deal, "Contact.Email", f"primary contact {contact.id} has no email address")
    try:
        to_address = validate_email(contact.email.strip(), check_deliverability=False).normalized
    except EmailNotValidError as exc:
        return _skip(
            deal,
            "Contact.Email",
            f"primary contact {contact.id} has an invalid address {contact.email!r}: {exc}",
        )
    first_name = _clean(contact.first_name)
    contact_name = _clean(contact.name)
    account = _clean(deal.account_name)
    sender = settings.sender
    # Only active people with a usable address are copied, and only they are named as copied.
    copied = {role: p for role, p in (("rep", deal.owner), ("csm", deal.csm)) if p and p.email}
    cc = [_mailbox(person) for person in copied.values()]
    csm = deal.csm
    won_at = _won_at(deal)
    day = max(0, (now - won_at).days)
    # Only client-safe fields go into the email context; the handoff document never does.
    context = {
        "contact_first_name": first_name or contact_name or "there",
        "contact_name": contact_name or first_name or "there",
        "account_name": account or "your team",
        "sender_name": sender.name,
        "sender_title": sender.title,
        "signer_name": _clean(csm.name) if csm else sender.name,
        "signer_title": "Customer Success Manager" if csm else sender.title,
        "company": sender.company,
        "csm_name": _clean(csm.name) if csm else None,
        "csm_email": csm.email if csm else None,
        "rep_name": _clean(copied["rep"].name) if "rep" in copied else None,
        "timeline": _timeline(won_at, settings),
        "day": day,
        "week": day // 7,
    }
    payload = {
        "deal_label": deal.label(),
        "template": step.template,
        "from": {"name": sender.name, "email": str(sender.email)},
        "to": {"name": contact_name, "email": to_address},
        "cc": cc,
        "context": context,
    }
    return Resolution(ActionStatus.PENDING, payload, issues=tuple(display_issues(deal)))


def _timeline(won_at: datetime, settings: Settings) -> list[dict[str, str]]:
    """The milestones the playbook labels for clients, dated from the win."""
    return [
        {"label": label, "date": (won_at + offset).date().isoformat()}
        for label, offset in settings.plan.timeline_milestones()
    ]


def _clean(text: str | None) -> str:
    """One line of display text: no control or bidirectional marks, single spaces."""
    return " ".join(_CONTROL.sub(" ", unicodedata.normalize("NFC", text or "")).split())


def _mailbox(person: Person) -> dict[str, str]:
    return {"name": _clean(person.name), "email": person.email or ""}


# -- CRM tasks -----------------------------------------------------------------------------------


def _task(
    deal: Deal, step: Step, settings: Settings, people: People, planned_at: datetime, now: datetime
) -> Resolution:
    fields = _FieldNames(settings)
    deal = _active_people(deal, fields, [])
    owner, note = _owner(deal, step, people, fields)
    if owner is None:
        tried = " or ".join(ROLE_NAMES[r] for r in (step.owner, step.fallback_owner) if r)
        return Resolution(
            ActionStatus.FAILED,
            {},
            f"{deal.label()}: {_role_field(step.owner, fields)}: no active user is "
            f"{tried}, so nobody can own the {step.id} task; set one and create it by hand",
        )
    due = max(planned_at + step.due, now)
    ask = step.ask or ""
    missing = deal.missing_handoff_fields()
    if step.conditions.handoff_doc == "incomplete" and missing:
        ask += "\nMissing: " + "; ".join(
            f"{HANDOFF_DOC_LABELS[k]} ({fields.doc[k]})" for k in missing
        )
    if step.due:
        ask += f"\nDue {describe(step.due)} after {planned_at:%Y-%m-%d %H:%M} UTC: "
        ask += f"by {due:%Y-%m-%d %H:%M} UTC."
    task = CrmTask(
        dedupe_key=dedupe_key(deal.source, deal.deal_id, step.id),
        deal_id=deal.deal_id,
        contact_id=deal.primary_contact.id if deal.primary_contact else None,
        owner_id=owner.id,
        subject=_subject(step.subject or step.id, deal),
        due_date=due.date(),
        priority=step.priority,
        description=_description(deal, fields, ask, note),
        remind_at=due if step.due < timedelta(days=1) else None,
    )
    return Resolution(ActionStatus.PENDING, _task_payload(task, deal))


def _owner(
    deal: Deal, step: Step, people: People, fields: _FieldNames
) -> tuple[Person | None, str | None]:
    """The step's owner role, else its fallback role; the note says when the fallback was used."""
    people_by_role = {
        "ae": deal.owner,
        "csm": deal.csm,
        "executive": people.executive if people.executive and people.executive.is_active else None,
        "account_owner": deal.account_owner
        if deal.account_owner and deal.account_owner.is_active
        else None,
    }
    owner = people_by_role.get(step.owner or "")
    if owner is not None:
        return owner, None
    fallback = people_by_role.get(step.fallback_owner or "")
    if fallback is None:
        return None, None
    note = (
        f"No active {ROLE_NAMES[step.owner or '']} on the deal; assigned to "
        f"{ROLE_NAMES[step.fallback_owner or '']}."
    )
    if step.owner == "csm" and step.fallback_owner == "ae":
        note = f"No active CSM on the deal ({fields.csm}); assigned to the rep."
    return fallback, note


def _role_field(role: str | None, fields: _FieldNames) -> str:
    return {
        "ae": "OwnerId",
        "csm": fields.csm,
        "executive": "[sender].email",
        "account_owner": "Account.OwnerId",
    }.get(role or "", "owner")


def _won_at(deal: Deal) -> datetime:
    if deal.won_at is None:
        raise ValueError(f"{deal.label()}: no Closed Won time; only won deals are planned")
    return deal.won_at


def _subject(what: str, deal: Deal) -> str:
    return f"{what}: {_clean(deal.account_name or deal.name)}"[:255]


def _description(deal: Deal, fields: _FieldNames, ask: str, note: str | None) -> str:
    """The client's context for the person who acts (the connector adds the dedupe key)."""
    contact = deal.primary_contact
    amount = f"{deal.amount:,.2f}" if deal.amount is not None else "(not set)"
    lines = [
        ask,
        *([note] if note else []),
        "",
        f"Deal: {deal.name} ({deal.deal_id})",
        f"Account: {deal.account_name or '(not set)'}",
        f"Amount: {amount}",
        f"Closed won: {deal.won_at:%Y-%m-%d %H:%M} UTC" if deal.won_at else "Closed won: (unknown)",
        f"Rep: {deal.owner.name if deal.owner else '(no owner)'}",
        f"CSM: {deal.csm.name if deal.csm else '(not set)'}",
        "Primary contact: "
        + (f"{contact.name} <{contact.email or 'no email'}>" if contact else "(none)"),
        "",
        "Handoff document:",
    ]
    for key, label in HANDOFF_DOC_LABELS.items():
        value = (deal.handoff_doc.get(key) or "").strip()
        lines.append(f"- {label}: {value if value else f'MISSING ({fields.doc[key]})'}")
    return "\n".join(lines)


def _task_payload(task: CrmTask, deal: Deal) -> dict[str, Any]:
    return {
        "deal_label": deal.label(),
        "dedupe_key": task.dedupe_key,
        "deal_id": task.deal_id,
        "contact_id": task.contact_id,
        "owner_id": task.owner_id,
        "subject": task.subject,
        "due_date": task.due_date.isoformat(),
        "priority": task.priority,
        "description": task.description,
        "remind_at": task.remind_at.isoformat() if task.remind_at else None,
    }


def task_from_payload(payload: dict[str, Any]) -> CrmTask:
    return CrmTask(
        dedupe_key=payload["dedupe_key"],
        deal_id=payload["deal_id"],
        contact_id=payload.get("contact_id"),
        owner_id=payload["owner_id"],
        subject=payload["subject"],
        due_date=date.fromisoformat(payload["due_date"]),
        priority=payload["priority"],
        description=payload["description"],
        remind_at=datetime.fromisoformat(payload["remind_at"])
        if payload.get("remind_at")
        else None,
    )
