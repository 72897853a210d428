"""Every step of one client's 90 days on one page, with each email as the client will read it.

``handoff preview --deal ID`` writes a folder: ``index.html`` (the timeline: day, date, step,
status and reason) and, for each email step, ``<step>.html`` and ``<step>.txt``. A step already
sent is shown from what was recorded when it went out; a step still ahead is resolved from the
deal's latest snapshot at its planned moment, moved into the client's business hours, as
dispatch would. Without a deal id it previews a built-in sample client, so RevOps can read the
whole sequence before the first real deal closes. Nothing is sent or written anywhere else.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from html import escape
from pathlib import Path
from typing import Any

from handoff.config import Settings
from handoff.email_context import ClientEmailContext
from handoff.emails import EmailRenderer, RenderedEmail
from handoff.models import ActionStatus, Contact, Deal, Person
from handoff.planning import (
    HANDOFF_DOC_LABELS,
    People,
    client_place,
    is_existing_customer,
    resolve,
)
from handoff.playbook import ROLE_NAMES, Step
from handoff.state.store import StateStore

STATUS_WORDS = {
    ActionStatus.DONE: "sent",
    ActionStatus.PENDING: "due",
    ActionStatus.IN_FLIGHT: "going out",
    ActionStatus.HELD: "held",
    ActionStatus.SKIPPED: "skipped",
    ActionStatus.FAILED: "failed",
    ActionStatus.UNCONFIRMED: "unconfirmed",
    ActionStatus.CANCELLED: "cancelled",
}


@dataclass(frozen=True)
class PreviewStep:
    step: Step
    planned_at: datetime
    status: str
    reason: str | None = None
    email: RenderedEmail | None = None
    sent_from: str | None = None


def sample_deal(settings: Settings, at: datetime, source: str = "salesforce") -> Deal:
    """A made-up new client, won at the start of ``at``'s day, to read the sequence with (its
    field names in reasons are those of ``source``)."""
    won = at.replace(hour=9, minute=30, second=0, microsecond=0)
    csm = Person("sample-csm", "Maria Lopez", "maria.lopez@handoff-demo.example")
    return Deal(
        source=source,
        deal_id="SAMPLE",
        name="Sample deal",
        account_name="Analytical Engines Ltd",
        stage="Closed Won",
        is_won=True,
        is_deleted=False,
        amount=120000.0,
        close_date=won.date(),
        won_at=won,
        owner=Person("sample-rep", "Riley Chen", "riley.chen@handoff-demo.example"),
        csm=csm,
        primary_contact=Contact(
            "sample-contact",
            "Ada",
            "Lovelace",
            "ada.lovelace@analytical-engines.example",
            country="GB",
            time_zone="Europe/London",
        ),
        handoff_doc={key: "(filled in)" for key in HANDOFF_DOC_LABELS},
        deal_type="New Business",
    )


def preview_deal(
    settings: Settings,
    store: StateStore | None,
    deal: Deal,
    out: Path,
    *,
    at: datetime | None = None,
) -> Path:
    """Write the preview folder for ``deal``; returns the path of its ``index.html``."""
    at = at or datetime.now(UTC)
    renderer = EmailRenderer(settings.output.templates_dir)
    rows = {}
    if store is not None:
        rows = {r["step"]: r for r in store.actions(source=deal.source, deal_id=deal.deal_id)}
    unsubscribed = (
        store.unsubscribed(deal.source, [deal.primary_contact.id])
        if store is not None and deal.primary_contact
        else set()
    )
    out.mkdir(parents=True, exist_ok=True)
    items = [
        _preview_step(settings, renderer, deal, step, rows.get(step.id), unsubscribed, at)
        for step in settings.plan.steps
        if _segment(deal, settings) in step.segments
    ]
    items.sort(key=lambda item: item.planned_at)
    for item in items:
        if item.email is not None:
            (out / f"{item.step.id}.html").write_text(item.email.html, encoding="utf-8")
            (out / f"{item.step.id}.txt").write_text(
                f"Subject: {item.email.subject}\nFrom: {item.sent_from}\n\n{item.email.text}",
                encoding="utf-8",
            )
    index = out / "index.html"
    index.write_text(_index(settings, deal, items), encoding="utf-8")
    return index


def _segment(deal: Deal, settings: Settings) -> str:
    return "existing_customer" if is_existing_customer(deal, settings) else "new_business"


def _preview_step(
    settings: Settings,
    renderer: EmailRenderer,
    deal: Deal,
    step: Step,
    row: dict[str, Any] | None,
    unsubscribed: set[str],
    at: datetime,
) -> PreviewStep:
    assert deal.won_at is not None
    planned_at = deal.won_at + step.offset
    if row is not None:
        planned_at = row["due_at"]
        status = STATUS_WORDS.get(ActionStatus(row["status"]), row["status"])
        payload = row["payload"] or {}
        if step.kind == "email" and "context" in payload:  # what went out, as recorded
            context = ClientEmailContext.from_dict(payload["context"])
            email = renderer.render(payload["template"], context)
            return PreviewStep(step, planned_at, status, row["reason"], email, _from(payload))
        if step.kind != "email" or row["status"] not in (ActionStatus.PENDING, "pending"):
            return PreviewStep(step, planned_at, status, row["reason"])
    else:
        why_not = _why_not(deal, step, settings)
        if why_not:
            return PreviewStep(step, planned_at, "not for this client", why_not)
        status = "planned" if planned_at > at else "due"
    if step.kind != "email":
        owner = ROLE_NAMES.get(step.owner or "", step.owner or "")
        return PreviewStep(step, planned_at, status, f"task for {owner}: {step.subject}")
    # Resolved as dispatch would at its moment, inside the client's business hours.
    moment = planned_at
    if settings.email.business_hours_only:
        from handoff.client_locale import SendingWindow, window_opening

        place = client_place(deal, settings)
        window = SendingWindow(settings.email.window_start, settings.email.window_end)
        moment = window_opening(planned_at, place.zone, place.calendar, window)
    relaxed = settings.model_copy(
        update={"email": settings.email.model_copy(update={"business_hours_only": False})}
    )
    resolved = resolve(deal, step, relaxed, People(), planned_at, moment, unsubscribed=unsubscribed)
    if not resolved.ready:
        return PreviewStep(step, moment, str(resolved.status), resolved.reason)
    payload = resolved.payload
    context = ClientEmailContext.from_dict(payload["context"])
    if step.promotional:
        url = settings.unsubscribe.url
        context = replace(
            context,
            unsubscribe_url=f"{url}?t=(a token for this email)" if url else None,
            unsubscribe_mailto=str(settings.unsubscribe.mailto),
        )
    email = renderer.render(payload["template"], context)
    return PreviewStep(step, moment, status, None, email, _from(payload))


def _from(payload: dict[str, Any]) -> str:
    sender = payload.get("from") or {}
    return f"{sender.get('name', '')} <{sender.get('email', '')}>"


def _why_not(deal: Deal, step: Step, settings: Settings) -> str | None:
    """Why a step does not apply to this deal (conditions), or None."""
    c = step.conditions
    amount = deal.amount
    if c.amount_at_least is not None and (amount is None or amount < c.amount_at_least):
        return f"only for deals of at least {c.amount_at_least:,.0f}"
    if c.amount_below is not None and (amount is None or amount >= c.amount_below):
        return f"only for deals below {c.amount_below:,.0f}"
    enterprise = amount is not None and amount >= settings.plan.enterprise_min_amount
    if c.enterprise is not None and enterprise != c.enterprise:
        return "only for enterprise deals" if c.enterprise else "not for enterprise deals"
    missing = deal.missing_handoff_fields()
    if c.handoff_doc == "incomplete" and not missing:
        return "only while the handoff document is incomplete"
    if c.handoff_doc == "complete" and missing:
        return "only once the handoff document is complete"
    return None


def _index(settings: Settings, deal: Deal, items: list[PreviewStep]) -> str:
    assert deal.won_at is not None
    place = client_place(deal, settings)
    contact = deal.primary_contact
    rows = []
    for item in items:
        day = (item.planned_at - deal.won_at) // timedelta(days=1)
        local = item.planned_at.astimezone(place.zone)
        links = ""
        if item.email is not None:
            links = (
                f'<a href="{item.step.id}.html">email</a> · <a href="{item.step.id}.txt">text</a>'
                f'<div class="subject">{escape(item.email.subject)}</div>'
            )
        rows.append(
            "<tr>"
            f"<td>{day}</td>"
            f"<td>{local:%a %d %b %Y %H:%M}</td>"
            f'<td><b>{escape(item.step.id)}</b><div class="muted">{item.step.kind}</div></td>'
            f'<td><span class="status s-{escape(item.status.replace(" ", "-"))}">'
            f"{escape(item.status)}</span></td>"
            f'<td>{links}<div class="muted">{escape(item.reason or "")}</div></td>'
            "</tr>"
        )
    who = escape(contact.name if contact else "(no primary contact)")
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Preview: {escape(deal.account_name or deal.name)}</title>
<style>
body{{font-family:Helvetica,Arial,sans-serif;color:#1f2933;margin:24px;}}
table{{border-collapse:collapse;width:100%;max-width:1100px;}}
td,th{{text-align:left;vertical-align:top;padding:8px;border-bottom:1px solid #e5e7eb;
font-size:14px;}}
.muted{{color:#6b7280;font-size:12px;}} .subject{{font-size:13px;}}
.status{{padding:2px 8px;border-radius:10px;background:#eef2ff;font-size:12px;}}
.s-sent{{background:#dcfce7;}} .s-held,.s-failed,.s-unconfirmed{{background:#fee2e2;}}
.s-skipped,.s-not-for-this-client{{background:#f3f4f6;}}
</style></head><body>
<h1>{escape(deal.account_name or deal.name)}: the 90-day playbook</h1>
<p>Deal {escape(deal.deal_id)} ({escape(deal.name)}), won {deal.won_at:%Y-%m-%d %H:%M} UTC.
Primary contact: {who}. Client time zone {escape(place.zone.key)} ({escape(place.note)}), calendar
of {escape(place.country or "no country")}. Times below are the client's.</p>
<table><thead><tr><th>Day</th><th>When (client's time)</th><th>Step</th><th>Status</th>
<th>Email / reason</th></tr></thead><tbody>
{"".join(rows)}
</tbody></table></body></html>
"""


def load_deal(store: StateStore, source: str, deal_id: str) -> Deal | None:
    records = store.deal_records(source, [deal_id])
    return Deal.from_record(records[deal_id]) if deal_id in records else None
