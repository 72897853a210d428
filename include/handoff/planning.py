"""What one playbook step becomes for one deal, resolved when it is dispatched.

The planner only records *which* step is due *when*; this module decides *who* and *what* from
the latest snapshot of the deal (plan early, resolve late): a contact who opted out since gets
no mail, a CSM replaced since signs the next check-in. The guards (a primary contact, a valid
address, consent, an active owner) are shared by every step. A step that cannot happen is
*skipped* (the client cannot be written to) or *failed* (no one can own the task), with a
reason naming the deal and the field; the other steps and deals go on.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Collection
from dataclasses import dataclass, replace
from datetime import date, datetime, timedelta
from functools import lru_cache
from typing import Any
from zoneinfo import ZoneInfo

from babel import Locale
from email_validator import EmailNotValidError, validate_email

from handoff.client_locale import (
    BusinessCalendar,
    SendingWindow,
    clean_display_name,
    country_code,
    deadline_date,
    deadline_text,
    display_name,
    email_locale,
    greeting,
    injection_reason,
    name_language,
    window_opening,
    zone_for,
)
from handoff.config import Settings
from handoff.email_context import ClientEmailContext, Milestone
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
    # Outside the client's business hours: the row waits (same key, same place) until then.
    defer_until: datetime | None = None

    @property
    def ready(self) -> bool:
        return self.status == ActionStatus.PENDING and self.defer_until is None


@dataclass(frozen=True)
class People:
    """CRM users a step may need besides the deal's own: the configured executive."""

    executive: Person | None = None


def deal_issues(deal: Deal, settings: Settings) -> list[DealIssue]:
    """Data problems of a deal, recorded once so RevOps can fix them (the steps go on)."""
    issues: list[DealIssue] = []
    fields = _FieldNames(settings, deal.source)
    if deal.owner is None:
        issues.append(
            _issue(
                deal,
                fields.of["owner"],
                "missing_owner",
                "the deal has no owner, so no rep is Cc'd",
            )
        )
    _active_people(deal, fields, issues)
    if deal.amount is not None and deal.amount < 0:
        issues.append(
            _issue(
                deal,
                fields.of["amount"],
                "negative_amount",
                f"the amount is negative ({deal.amount:,.2f}); it is treated as not set",
            )
        )
    elif deal.amount is None:
        issues.append(
            _issue(
                deal,
                fields.of["amount"],
                "missing_amount",
                "the deal has no amount, so steps that depend on the amount (the internal "
                "handoff meeting, the executive sponsor check-in) cannot be applied",
            )
        )
    issues += display_issues(deal, settings)
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


def display_issues(deal: Deal, settings: Settings) -> list[DealIssue]:
    """Names shown to the client that carried markup or control marks (shown cleaned)."""
    contact = deal.primary_contact
    of = _FieldNames(settings, deal.source).of
    issues = []
    for field, value in (
        (of["contact_first_name"], contact.first_name if contact else None),
        (of["contact_last_name"], contact.last_name if contact else None),
        (of["account_name"], deal.account_name),
    ):
        if value and _CONTROL.search(value):
            issues.append(
                _issue(
                    deal,
                    field,
                    "control_characters",
                    "contains line breaks, control characters or bidirectional marks; they "
                    "are never shown to the client",
                )
            )
        elif value and clean_display_name(value) != _clean(value):
            issues.append(
                _issue(
                    deal,
                    field,
                    "markup_in_name",
                    f"contains markup; the client sees {clean_display_name(value)!r}",
                )
            )
    return issues


def resolve(
    deal: Deal,
    step: Step,
    settings: Settings,
    people: People,
    planned_at: datetime,
    now: datetime,
    *,
    unsubscribed: Collection[str] = frozenset(),
) -> Resolution:
    """What ``step`` is for ``deal`` now: an email or a task payload, or why it cannot be.

    ``unsubscribed``: contact ids that used the one-click unsubscribe (promotional steps stop).
    """
    if step.kind == "email":
        return _email(deal, step, settings, people, now, unsubscribed)
    return _task(deal, step, settings, people, planned_at, now)


class _FieldNames:
    """How reasons name the deal's fields in its own CRM (the CRM's field map)."""

    def __init__(self, settings: Settings, source: str) -> None:
        self.of = settings.crm(source).labels()
        self.csm = self.of["csm"]
        self.csm_email = self.of["csm_email"]
        self.doc = {key: self.of[f"doc_{key}"] for key in HANDOFF_DOC_LABELS}


def _active_people(deal: Deal, fields: _FieldNames, issues: list[DealIssue]) -> Deal:
    """The deal as clients and tasks may see it: inactive users count as missing, and users
    whose address is unusable are kept as task owners but never written to or introduced."""
    people: dict[str, Person | None] = {}
    for role, person, field, email_field in (
        ("owner", deal.owner, fields.of["owner"], fields.of["owner_email"]),
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


def is_existing_customer(deal: Deal, settings: Settings) -> bool:
    """A deal for a client we already have (upgrade, renewal): by the CRM's deal type."""
    kinds = {kind.strip().lower() for kind in settings.crm(deal.source).existing_customer_types}
    return (deal.deal_type or "").strip().lower() in kinds


@dataclass(frozen=True)
class ClientPlace:
    """Where the client is: the zone their mail arrives in and the calendar of their days."""

    zone: ZoneInfo
    country: str | None
    calendar: BusinessCalendar
    note: str  # where the zone came from, for RevOps


def client_place(deal: Deal, settings: Settings) -> ClientPlace:
    """The contact's zone, else the account's, else their country's, else the default."""
    email = settings.email
    contact = deal.primary_contact
    country = (
        country_code(contact.country if contact else None)
        or country_code(deal.account_country)
        or country_code(email.default_country)
    )
    zone, note = zone_for(contact.time_zone if contact else None, None)
    if zone is None:
        zone, note = zone_for(deal.account_time_zone, country, overrides=email.country_time_zones)
    if zone is None:
        zone, note = ZoneInfo(email.default_time_zone), "the configured default time zone"
    return ClientPlace(zone, country, _calendar(country), note)


@lru_cache(maxsize=256)
def _calendar(country: str | None) -> BusinessCalendar:
    """One calendar per country a process: its holidays are loaded once, not per email."""
    return BusinessCalendar(country)


def _email(
    deal: Deal,
    step: Step,
    settings: Settings,
    people: People,
    now: datetime,
    unsubscribed: Collection[str],
) -> Resolution:
    fields = _FieldNames(settings, deal.source)
    issues: list[DealIssue] = []
    deal = _active_people(deal, fields, [])
    contact = deal.primary_contact
    if contact is None:
        return _skip(
            deal,
            fields.of["primary_contact"],
            "no primary contact on the deal; add one and the email can be sent by hand",
        )
    if contact.opted_out:
        return _skip(
            deal,
            fields.of["contact_opt_out"],
            f"primary contact {contact.id} opted out of email; no {step.id} is sent",
        )
    if step.promotional and contact.id in unsubscribed:
        return _skip(
            deal,
            "unsubscribe",
            f"primary contact {contact.id} unsubscribed from promotional email; no {step.id} "
            "is sent",
        )
    if not (contact.email or "").strip():
        return _skip(
            deal, fields.of["contact_email"], f"primary contact {contact.id} has no email address"
        )
    try:
        to_address = validate_email(contact.email.strip(), check_deliverability=False).normalized
    except EmailNotValidError as exc:
        return _skip(
            deal,
            fields.of["contact_email"],
            f"primary contact {contact.id} has an invalid address {contact.email!r}: {exc}",
        )
    injected = _injected_names(deal, fields)
    if injected:
        return Resolution(ActionStatus.HELD, {}, injected[0].reason, issues=tuple(injected))

    place = client_place(deal, settings)
    if settings.email.business_hours_only:
        window = SendingWindow(settings.email.window_start, settings.email.window_end)
        opening = window_opening(now, place.zone, place.calendar, window)
        if opening > now:
            return Resolution(
                ActionStatus.PENDING,
                {},
                f"{deal.label()}: {step.id} waits for the client's business hours "
                f"({opening.astimezone(place.zone):%a %d %b %H:%M} {place.zone.key}, "
                f"{place.note})",
                defer_until=opening,
            )

    existing = is_existing_customer(deal, settings)
    language = name_language(contact.first_name, contact.last_name, contact.locale)
    greeting_line = greeting(
        contact.first_name,
        contact.last_name,
        locale=contact.locale or language,
        salutation=contact.salutation,
        greetings=settings.email.greetings,
    )
    contact_name = display_name(contact.first_name, contact.last_name, language)
    sender = settings.sender
    team = settings.email.team
    csm = deal.csm if deal.csm and deal.csm.email else None
    if csm is None:
        issues.append(_team_instead_of_csm(deal, fields, step))
    executive = people.executive
    executive_ok = executive is None or executive.is_active
    if step.sender == "executive" and not executive_ok:
        issues.append(
            _issue(
                deal,
                "[sender].email",
                "inactive_executive",
                f"the configured executive {sender.name} ({sender.email}) is an inactive CRM "
                f"user, so {step.id} is signed by the CSM (or the team) instead",
            )
        )
    if step.sender == "executive" and executive_ok:
        signer = (sender.name, sender.title, str(sender.email))
    elif csm is not None:
        signer = (_clean(csm.name), "Customer Success Manager", csm.email or "")
    else:
        signer = (_team_name(team.name), "", str(team.email))
    copied = {
        role: person
        for role, person in (("rep", deal.owner), ("csm", csm))
        if person and person.email and person.email.lower() != signer[2].lower()
    }
    send_day = now.astimezone(place.zone).date()
    locale = email_locale(contact.locale, place.country)
    context = ClientEmailContext(
        greeting=greeting_line,
        contact_name=contact_name or "there",
        account_name=_clean_name(deal.account_name) or "your team",
        company=sender.company,
        signer_name=signer[0],
        signer_title=signer[1],
        csm_name=_clean(csm.name) if csm else _team_name(team.name),
        csm_email=(csm.email or "") if csm else str(team.email),
        csm_is_team=csm is None,
        csm_booking_url=settings.email.booking_links.get((csm.email or "").lower())
        if csm
        else None,
        rep_name=_clean(copied["rep"].name) if "rep" in copied else None,
        executive_name=sender.name,
        executive_title=sender.title,
        existing_customer=existing,
        timeline=_timeline(deal, settings, place, send_day, locale, existing),
        day=max(0, (now - _won_at(deal)).days),
        week=max(0, (now - _won_at(deal)).days) // 7,
    )
    from_box = {"name": signer[0], "email": signer[2]}
    # Replies reach whoever signed and, when an executive signed, the people who act on them.
    reply_to = []
    if settings.email.sender_mode == "via_company":
        from_box = {
            "name": f"{signer[0]} via {sender.company}",
            "email": str(settings.email.from_address),
        }
        reply_to.append({"name": signer[0], "email": signer[2]})
    if signer[2] == str(sender.email):
        if not reply_to:
            reply_to.append(dict(from_box))
        reply_to.append(
            {"name": context.csm_name, "email": context.csm_email}
            if csm
            else {"name": _team_name(team.name), "email": str(team.email)}
        )
    payload = {
        "deal_label": deal.label(),
        "template": step.template,
        "from": from_box,
        "reply_to": reply_to,
        "envelope_from": str(settings.email.envelope_sender or from_box["email"]),
        "to": {"name": contact_name, "email": to_address},
        "cc": [_mailbox(person) for person in copied.values()],
        "contact_id": contact.id,
        "promotional": step.promotional,
        "client_zone": place.zone.key,
        "context": context.to_dict(),
    }
    issues += display_issues(deal, settings)
    return Resolution(ActionStatus.PENDING, payload, issues=tuple(issues))


def _team_name(name: str) -> str:
    """The team as a sender's display name: "The Handoff Demo customer success team"."""
    return name[:1].upper() + name[1:]


def _team_instead_of_csm(deal: Deal, fields: _FieldNames, step: Step) -> DealIssue:
    return _issue(
        deal,
        fields.csm,
        "csm_replaced_by_team",
        f"no active CSM with an email address on the deal, so {step.id} introduces the "
        "customer success team instead of a person",
    )


def _injected_names(deal: Deal, fields: _FieldNames) -> list[DealIssue]:
    """Names that look like injected header text: the deal's client mail waits for a person."""
    contact = deal.primary_contact
    of = fields.of
    issues = []
    for field, value in (
        (of["contact_first_name"], contact.first_name if contact else None),
        (of["contact_last_name"], contact.last_name if contact else None),
        (of["contact_salutation"], contact.salutation if contact else None),
        (of["account_name"], deal.account_name),
    ):
        why = injection_reason(value)
        if why:
            issues.append(
                _issue(
                    deal,
                    field,
                    "injected_name",
                    f"{why}; the client's email is held until the name is corrected in the CRM",
                )
            )
    return issues


def _timeline(
    deal: Deal,
    settings: Settings,
    place: ClientPlace,
    send_day: date,
    locale: Locale,
    existing: bool,
) -> tuple[Milestone, ...]:
    """The milestones still ahead, as deadlines the team can keep from the day the mail goes
    out, on the client's business days (a late discovery never promises a date in the past)."""
    won_at = _won_at(deal)
    segment = "existing_customer" if existing else "new_business"
    milestones = []
    for step, offset in settings.plan.timeline_milestones(segment):
        target = (won_at + offset).astimezone(place.zone).date()
        if target < send_day:
            continue  # its moment has passed: the client is not promised it again
        floor = send_day + timedelta(days=math.ceil(step.due / timedelta(days=1)))
        day = deadline_date(target, floor, place.calendar)
        milestones.append(
            Milestone(step.timeline or step.id, deadline_text(day, locale, reference=send_day))
        )
    return tuple(milestones)


def _clean(text: str | None) -> str:
    """One line of display text: no control or bidirectional marks, single spaces."""
    return " ".join(_CONTROL.sub(" ", unicodedata.normalize("NFC", text or "")).split())


def _clean_name(text: str | None) -> str:
    """A name a client reads: markup stripped as well."""
    return clean_display_name(text)


def _mailbox(person: Person) -> dict[str, str]:
    return {"name": _clean(person.name), "email": person.email or ""}


# -- CRM tasks -----------------------------------------------------------------------------------


def _task(
    deal: Deal, step: Step, settings: Settings, people: People, planned_at: datetime, now: datetime
) -> Resolution:
    fields = _FieldNames(settings, deal.source)
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
        "ae": fields.of["owner"],
        "csm": fields.csm,
        "executive": "[sender].email",
        "account_owner": fields.of["account_owner"],
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
