"""What a new red flag sets off, once: a CRM task for the account owner and a note to leaders.

Both are outbox rows keyed by the flag's episode (``<source>:<deal>:redflag_<code>_<n>`` and
``..._notice``), written in the transaction that raises the flag, so every re-run, retry or
concurrent run finds them there and adds nothing. Who owns the task and who reads the note
are resolved when they go out, like every step: from the deal's latest snapshot.

The note is internal mail: it may quote the handoff document and the activity that tripped the
rule, so it only ever goes to addresses on our own domains, never to a client (a recipient on
the client's domain, or outside our domains, is refused and named in the reason).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from datetime import datetime, timedelta
from typing import Any

from email_validator import EmailNotValidError, validate_email

from handoff.config import Settings
from handoff.models import ActionKind, ActionStatus, CrmTask, Deal, PlannedAction, dedupe_key
from handoff.planning import (
    HANDOFF_DOC_LABELS,
    People,
    Resolution,
    _description,
    _FieldNames,
    _task_payload,
)
from handoff.redflags.rules import TITLES

STEP_PREFIX = "redflag_"
NOTICE_SUFFIX = "_notice"
TEMPLATE = "red_flag_alert"
# An escalation found this much later than its flag (a long outage) is not sent any more.
ESCALATION_LATE_AFTER = timedelta(days=3)


def escalation_step(code: str, episode: int, *, notice: bool = False) -> str:
    return f"{STEP_PREFIX}{code}_{episode}{NOTICE_SUFFIX if notice else ''}"


def is_escalation(step: str) -> bool:
    return step.startswith(STEP_PREFIX)


def escalation_actions(
    source: str, deal_id: str, label: str, flag: dict[str, Any], episode: int, at: datetime
) -> list[PlannedAction]:
    """The task and the leaders' note for a new flag episode (``flag``: code, severity, reason)."""
    payload = {
        "deal_label": label,
        "redflag": {**flag, "episode": episode, "raised_at": at.isoformat()},
    }
    return [
        PlannedAction(
            source,
            deal_id,
            escalation_step(flag["code"], episode, notice=notice),
            kind,
            payload,
            due_at=at,
            not_after=at + ESCALATION_LATE_AFTER,
        )
        for kind, notice in ((ActionKind.TASK, False), (ActionKind.EMAIL, True))
    ]


@dataclass(frozen=True)
class InternalAlertContext:
    """What the leaders' note shows: internal facts are allowed here, never in client mail."""

    title: str
    severity: str
    reason: str
    account_name: str
    deal_name: str
    deal_id: str
    source: str
    won_on: str
    day: int
    rep_name: str
    csm_name: str
    task_owner_name: str
    missing_doc: tuple[str, ...]
    handoff_doc: tuple[tuple[str, str], ...]
    company: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> InternalAlertContext:
        known = {f.name for f in fields(cls)}
        data = {k: v for k, v in values.items() if k in known}
        data["missing_doc"] = tuple(data.get("missing_doc", ()))
        data["handoff_doc"] = tuple(tuple(pair) for pair in data.get("handoff_doc", ()))
        return cls(**data)

    def for_template(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def _task_owner(deal: Deal):
    """The account owner, else the rep, else the CSM: whoever is active first."""
    for person in (deal.account_owner, deal.owner, deal.csm):
        if person is not None and person.is_active:
            return person
    return None


def resolve_escalation(
    deal: Deal,
    step: str,
    payload: dict[str, Any],
    settings: Settings,
    now: datetime,
    people: People | None = None,  # noqa: ARG001 - the same signature as playbook steps
) -> Resolution:
    """The escalation row ``step`` of a flag for ``deal``, resolved now."""
    flag = payload["redflag"]
    title = TITLES.get(flag["code"], flag["code"])
    fields_ = _FieldNames(settings, deal.source)
    owner = _task_owner(deal)
    if not step.endswith(NOTICE_SUFFIX):
        if owner is None:
            return Resolution(
                ActionStatus.FAILED,
                {},
                f"{deal.label()}: red flag {flag['code']}: no active account owner, rep or CSM "
                f"on the deal ({fields_.of['account_owner']}) to own the task",
            )
        due = now + timedelta(days=settings.red_flags.owner_task_due_days)
        ask = f"Red flag ({flag['severity']}): {flag['reason']}. Decide what to do and do it."
        task = CrmTask(
            dedupe_key=dedupe_key(deal.source, deal.deal_id, step),
            deal_id=deal.deal_id,
            contact_id=deal.primary_contact.id if deal.primary_contact else None,
            owner_id=owner.id,
            subject=f"Red flag: {title}: {deal.account_name or deal.name}"[:255],
            due_date=due.date(),
            priority="High",
            description=_description(deal, fields_, ask, None),
        )
        return Resolution(ActionStatus.PENDING, _task_payload(task, deal))
    return _notice(deal, flag, title, owner, settings, now)


def internal_domains(settings: Settings) -> set[str]:
    """Our own mail domains: the executive's, the From address's, the team's, and the extras."""
    addresses = (settings.sender.email, settings.email.from_address, settings.email.team.email)
    domains = {str(a).rpartition("@")[2].lower() for a in addresses if a}
    return domains | {d.strip().lower().lstrip("@") for d in settings.red_flags.internal_domains}


def _notice(deal: Deal, flag, title: str, owner, settings: Settings, now: datetime) -> Resolution:
    label = deal.label()
    ours = internal_domains(settings)
    client = (deal.primary_contact.email or "").strip().lower() if deal.primary_contact else ""
    client_domain = client.rpartition("@")[2]
    recipients, refused = [], []
    for address in settings.red_flags.notify:
        try:
            normal = validate_email(str(address), check_deliverability=False).normalized
        except EmailNotValidError as exc:
            refused.append(f"{address} ({exc})")
            continue
        domain = normal.rpartition("@")[2].lower()
        if normal.lower() == client or (client_domain and domain == client_domain):
            refused.append(f"{normal} (the client's own address or domain)")
        elif domain not in ours:
            refused.append(f"{normal} (not one of our domains: {', '.join(sorted(ours))})")
        else:
            recipients.append(normal)
    if not recipients:
        why = "; refused: " + "; ".join(refused) if refused else ""
        return Resolution(
            ActionStatus.SKIPPED,
            {},
            f"{label}: red flag {flag['code']}: no internal recipient for the leaders' note "
            f"([red_flags].notify){why}",
        )
    won = deal.won_at
    context = InternalAlertContext(
        title=title,
        severity=flag["severity"],
        reason=flag["reason"],
        account_name=deal.account_name or "",
        deal_name=deal.name,
        deal_id=deal.deal_id,
        source=deal.source,
        won_on=f"{won:%a %d %b %Y}" if won else "",
        day=max(0, (now - won).days) if won else 0,
        rep_name=deal.owner.name if deal.owner else "(no owner)",
        csm_name=deal.csm.name if deal.csm else "(no CSM)",
        task_owner_name=owner.name if owner else "(nobody: the task failed)",
        missing_doc=tuple(HANDOFF_DOC_LABELS[k] for k in deal.missing_handoff_fields()),
        handoff_doc=tuple(
            (HANDOFF_DOC_LABELS[k], (deal.handoff_doc.get(k) or "").strip())
            for k in HANDOFF_DOC_LABELS
            if k in deal.handoff_doc
        ),
        company=settings.sender.company,
    )
    sender = {"name": "Handoff Autopilot", "email": str(settings.email.from_address)}
    payload = {
        "deal_label": label,
        "template": TEMPLATE,
        "audience": "internal",
        "from": sender,
        "reply_to": [],
        "envelope_from": str(settings.email.envelope_sender or sender["email"]),
        "to": {"name": "", "email": recipients[0]},
        "cc": [{"name": "", "email": address} for address in recipients[1:]],
        "promotional": False,
        "context": context.to_dict(),
        **({"refused": refused} if refused else {}),
    }
    return Resolution(ActionStatus.PENDING, payload)
