"""``handoff status``: what the state store says is due, held, failed and flagged, per source.

For the person on call: one look tells whether the runs keep up (nothing overdue), what waits
for a person (held emails, unconfirmed sends, failed steps with their reasons) and how many
clients have open red flags. Read-only: it changes nothing.
"""

from __future__ import annotations

from collections import Counter
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, func, select

from handoff.config import Settings
from handoff.models import ActionStatus
from handoff.state.schema import flags, onboarding, outbox, run_steps
from handoff.state.store import StateStore

RECENT = timedelta(days=7)  # failures and unconfirmed sends of the last week are listed


def store_status(store: StateStore, settings: Settings, now: datetime) -> dict[str, Any]:
    """Per enabled source: onboarding, due, waiting, held, failed, unconfirmed and flags."""
    sources = {}
    with store.engine.connect() as conn:
        for source in settings.sources.enabled:
            # Counted in the database: a large org has hundreds of thousands of outbox rows.
            of_source = outbox.c.source == source
            pending = and_(of_source, outbox.c.status == ActionStatus.PENDING)
            due = conn.execute(
                select(outbox.c.kind, func.count(), func.min(outbox.c.due_at))
                .where(pending, outbox.c.due_at <= now)
                .group_by(outbox.c.kind)
            ).all()
            later = conn.execute(
                select(func.count()).where(pending, outbox.c.due_at > now)
            ).scalar_one()
            held: Counter[str] = Counter()
            for reason, count in conn.execute(
                select(outbox.c.reason, func.count())
                .where(of_source, outbox.c.status == ActionStatus.HELD)
                .group_by(outbox.c.reason)
            ).all():
                held[_why_held(reason)] += count
            problems = [
                dict(row)
                for row in conn.execute(
                    select(outbox.c.deal_id, outbox.c.step, outbox.c.status, outbox.c.reason)
                    .where(
                        of_source,
                        outbox.c.status.in_([ActionStatus.FAILED, ActionStatus.UNCONFIRMED]),
                        outbox.c.updated_at >= now - RECENT,
                    )
                    .order_by(outbox.c.updated_at)
                ).mappings()
            ]
            active = conn.execute(
                select(func.count())
                .select_from(onboarding)
                .where(onboarding.c.source == source, onboarding.c.status == "active")
            ).scalar_one()
            open_flags = conn.execute(
                select(flags.c.severity, func.count())
                .where(flags.c.source == source, flags.c.status == "open")
                .group_by(flags.c.severity)
            ).all()
            last = conn.execute(
                select(
                    run_steps.c.run_id, run_steps.c.step, run_steps.c.status, run_steps.c.updated_at
                )
                .where(run_steps.c.source == source)
                .order_by(run_steps.c.updated_at.desc())
                .limit(1)
            ).first()
            sources[source] = {
                "clients_in_onboarding": active,
                "due_now": {kind: count for kind, count, _ in due},
                "oldest_due": min((oldest for _, _, oldest in due), default=None),
                "scheduled_later": later,
                "held": dict(held),
                "failed_or_unconfirmed_last_7_days": problems,
                "red_flags_open": dict(open_flags),
                "last_step": {
                    "run_id": last.run_id,
                    "step": last.step,
                    "status": last.status,
                    "at": last.updated_at,
                }
                if last
                else None,
            }
    return {"state_store": store.location, "as_of": now, "sources": sources}


def _why_held(reason: str | None) -> str:
    text = reason or ""
    if "handoff document" in text:
        return "handoff document incomplete"
    if "header" in text or "injected" in text:
        return "a name that looks like injected header text"
    return "other"


def format_status(status: dict[str, Any]) -> str:
    lines = [f"State store: {status['state_store']} (as of {status['as_of']:%Y-%m-%d %H:%M} UTC)"]
    for source, s in status["sources"].items():
        due = ", ".join(f"{n} {kind}s" for kind, n in sorted(s["due_now"].items())) or "nothing"
        lines.append(f"\n{source}: {s['clients_in_onboarding']} clients in onboarding")
        oldest = f" (oldest due {s['oldest_due']:%Y-%m-%d %H:%M} UTC)" if s["oldest_due"] else ""
        lines.append(f"  due now: {due}{oldest}; {s['scheduled_later']} scheduled later")
        held = ", ".join(f"{n} ({why})" for why, n in s["held"].items()) or "none"
        lines.append(f"  held: {held}")
        flags_open = s["red_flags_open"]
        lines.append(
            "  red flags open: "
            + (", ".join(f"{n} {sev}" for sev, n in sorted(flags_open.items())) or "none")
        )
        problems = s["failed_or_unconfirmed_last_7_days"]
        lines.append(f"  failed or unconfirmed in the last 7 days: {len(problems)}")
        lines += [f"    - [{p['status']}] {p['step']}: {p['reason']}" for p in problems[:20]]
        if s["last_step"]:
            last = s["last_step"]
            lines.append(
                f"  last step: {last['step']} of {last['run_id']}, {last['status']}, "
                f"{last['at']:%Y-%m-%d %H:%M} UTC"
            )
    return "\n".join(lines)
