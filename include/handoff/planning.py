"""What to do for a newly won deal: the day-0 steps, each checked against the deal's data.

A planned action that cannot happen (no primary contact, opted out, no owner for a task...) is
recorded as *skipped* with a reason naming the deal and the field, so RevOps can fix the data;
the other steps of the deal and the other deals go on.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import replace
from datetime import date, datetime, timedelta
from typing import Any

from email_validator import EmailNotValidError, validate_email

from handoff.config import Settings
from handoff.models import (
    ActionKind,
    ActionStatus,
    CrmTask,
    Deal,
    DealIssue,
    Person,
    PlannedAction,
    dedupe_key,
)

WELCOME_EMAIL = "welcome_email"
FIRST_CS_CONTACT = "first_cs_contact"
HANDOFF_MEETING = "internal_handoff_meeting"
EMAIL_TEMPLATES = ("welcome",)  # every template a planned email may name (checked before sending)

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


def plan_deal(deal: Deal, settings: Settings) -> tuple[list[PlannedAction], list[DealIssue]]:
    """The day-0 actions for one won deal, plus the data issues found on the way."""
    issues: list[DealIssue] = []
    fields = _FieldNames(settings)
    if deal.owner is None:
        issues.append(
            _issue(deal, "OwnerId", "missing_owner", "the deal has no owner, so no rep is Cc'd")
        )
    deal = _active_people(deal, fields, issues)
    if deal.amount is not None and deal.amount < 0:
        issues.append(
            _issue(
                deal,
                "Amount",
                "negative_amount",
                f"the amount is negative ({deal.amount:,.2f}); it is treated as not set",
            )
        )
        deal = replace(deal, amount=None)
    elif deal.amount is None:
        issues.append(
            _issue(
                deal,
                "Amount",
                "missing_amount",
                "the deal has no amount, so the internal handoff meeting rule "
                f"(amount >= {settings.tasks.handoff_meeting_min_amount:,.0f}) cannot be applied",
            )
        )
    actions = [
        _welcome_email(deal, settings, issues),
        _first_contact_task(deal, settings, fields),
    ]
    meeting = _handoff_meeting_task(deal, settings, fields)
    if meeting is not None:
        actions.append(meeting)
    return actions, issues


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
                address = validate_email(person.email, check_deliverability=False).normalized
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


def _issue(deal: Deal, field: str, code: str, what: str) -> DealIssue:
    return DealIssue(deal.source, deal.deal_id, field, code, f"{deal.label()}: {field}: {what}")


def _skipped(deal: Deal, step: str, kind: ActionKind, field: str, what: str) -> PlannedAction:
    return PlannedAction(
        deal.source,
        deal.deal_id,
        step,
        kind,
        payload={},
        status=ActionStatus.SKIPPED,
        reason=f"{deal.label()}: {field}: {what}",
    )


# -- the welcome email -------------------------------------------------------------------------


def _welcome_email(deal: Deal, settings: Settings, issues: list[DealIssue]) -> PlannedAction:
    step, kind = WELCOME_EMAIL, ActionKind.EMAIL
    contact = deal.primary_contact
    if contact is None:
        return _skipped(
            deal,
            step,
            kind,
            "OpportunityContactRole.IsPrimary",
            "no primary contact on the deal; add one and the welcome can be sent by hand",
        )
    if contact.opted_out:
        return _skipped(
            deal,
            step,
            kind,
            "Contact.HasOptedOutOfEmail",
            f"primary contact {contact.id} opted out of email; no welcome email is sent",
        )
    if not (contact.email or "").strip():
        return _skipped(
            deal, step, kind, "Contact.Email", f"primary contact {contact.id} has no email address"
        )
    try:
        to_address = validate_email(contact.email.strip(), check_deliverability=False).normalized
    except EmailNotValidError as exc:
        return _skipped(
            deal,
            step,
            kind,
            "Contact.Email",
            f"primary contact {contact.id} has an invalid address {contact.email!r}: {exc}",
        )
    first_name = _display_text(deal, "Contact.FirstName", contact.first_name, issues)
    contact_name = _display_text(deal, "Contact.Name", contact.name, issues)
    account = _display_text(deal, "Account.Name", deal.account_name, issues)
    won_day = _won_at(deal).date()
    sender = settings.sender
    # Only active people with a usable address are copied, and only they are named as copied.
    copied = {role: p for role, p in (("rep", deal.owner), ("csm", deal.csm)) if p and p.email}
    cc = [_mailbox(person) for person in copied.values()]
    # Only client-safe fields go into the email context; the handoff document never does.
    context = {
        "contact_first_name": first_name or contact_name or "there",
        "account_name": account or "your team",
        "sender_name": sender.name,
        "sender_title": sender.title,
        "company": sender.company,
        "csm_name": _clean(deal.csm.name) if deal.csm else None,
        "csm_email": deal.csm.email if deal.csm else None,
        "rep_name": _clean(copied["rep"].name) if "rep" in copied else None,
        "timeline": _timeline(won_day, settings),
    }
    payload = {
        "deal_label": deal.label(),
        "template": "welcome",
        "from": {"name": sender.name, "email": str(sender.email)},
        "to": {"name": contact_name, "email": to_address},
        "cc": cc,
        "context": context,
    }
    return PlannedAction(deal.source, deal.deal_id, step, kind, payload)


def _timeline(won_day: date, settings: Settings) -> list[dict[str, str]]:
    timeline = settings.timeline
    milestones = [
        ("Kickoff call", timeline.kickoff_by_day),
        ("First visible win", timeline.first_win_by_day),
        ("30-day success review", timeline.success_review_day),
        ("90-day review", timeline.formal_review_day),
    ]
    return [
        {"label": label, "date": (won_day + timedelta(days=days)).isoformat()}
        for label, days in milestones
    ]


def _display_text(deal: Deal, field: str, value: str | None, issues: list[DealIssue]) -> str:
    """Names go into headers and greetings: no line breaks or control characters survive."""
    if not value:
        return ""
    cleaned = _clean(value)
    if _CONTROL.search(value):
        issues.append(
            _issue(
                deal,
                field,
                "control_characters",
                "contains line breaks, control characters or bidirectional marks; they were "
                "replaced by spaces",
            )
        )
    return cleaned


def _clean(text: str | None) -> str:
    """One line of display text: no control or bidirectional marks, single spaces."""
    return " ".join(_CONTROL.sub(" ", unicodedata.normalize("NFC", text or "")).split())


def _mailbox(person: Person) -> dict[str, str]:
    return {"name": _clean(person.name), "email": person.email or ""}


# -- CRM tasks ---------------------------------------------------------------------------------


def _task_owner(deal: Deal, step: str, fields: _FieldNames) -> Person | PlannedAction:
    """CS tasks belong to the active CSM; without one, to the active rep; else the step skips."""
    owner = deal.csm if deal.csm is not None else deal.owner
    if owner is not None:
        return owner
    return _skipped(
        deal,
        step,
        ActionKind.TASK,
        fields.csm,
        f"the deal has neither an active CSM nor an active owner to own the {step} task",
    )


def _first_contact_task(deal: Deal, settings: Settings, fields: _FieldNames) -> PlannedAction:
    step = FIRST_CS_CONTACT
    owner = _task_owner(deal, step, fields)
    if isinstance(owner, PlannedAction):
        return owner
    won_at = _won_at(deal)
    due = won_at + timedelta(hours=settings.tasks.first_contact_due_hours)
    hours = settings.tasks.first_contact_due_hours
    note = None if deal.csm else f"No active CSM on the deal ({fields.csm}); assigned to the rep."
    task = CrmTask(
        dedupe_key=dedupe_key(deal.source, deal.deal_id, step),
        deal_id=deal.deal_id,
        contact_id=deal.primary_contact.id if deal.primary_contact else None,
        owner_id=owner.id,
        subject=_subject(f"First CS contact (due within {hours} h)", deal),
        due_date=due.date(),
        priority="High",
        description=_description(
            deal,
            fields,
            f"Reach the client within {hours} hours of the close: by {due:%Y-%m-%d %H:%M} UTC.",
            note,
        ),
        remind_at=due,
    )
    return PlannedAction(
        deal.source, deal.deal_id, step, ActionKind.TASK, _task_payload(task, deal)
    )


def _handoff_meeting_task(
    deal: Deal, settings: Settings, fields: _FieldNames
) -> PlannedAction | None:
    step = HANDOFF_MEETING
    threshold = settings.tasks.handoff_meeting_min_amount
    if deal.amount is None:
        return _skipped(
            deal,
            step,
            ActionKind.TASK,
            "Amount",
            f"the deal has no amount; the meeting is planned for deals >= {threshold:,.0f}",
        )
    if deal.amount < threshold:
        return None
    owner = _task_owner(deal, step, fields)
    if isinstance(owner, PlannedAction):
        return owner
    won_day = _won_at(deal).date()
    rep = deal.owner.name if deal.owner else "(no owner on the deal)"
    task = CrmTask(
        dedupe_key=dedupe_key(deal.source, deal.deal_id, step),
        deal_id=deal.deal_id,
        contact_id=deal.primary_contact.id if deal.primary_contact else None,
        owner_id=owner.id,
        subject=_subject("Internal handoff meeting (AE + CSM)", deal),
        due_date=won_day + timedelta(days=settings.tasks.handoff_meeting_due_days),
        priority="Normal",
        description=_description(
            deal,
            fields,
            f"Walk through the handoff document with the rep ({rep}) before the kickoff.",
            None,
        ),
    )
    return PlannedAction(
        deal.source, deal.deal_id, step, ActionKind.TASK, _task_payload(task, deal)
    )


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
