"""The daily RevOps run: metrics stored and exported, the digest built, written and sent once.

The digest goes out through the outbox like every other email (key ``digest:<day>:revops_digest``),
so a re-run or retry of the same day rewrites the files and sends nothing more; a send whose
answer was lost is held as unconfirmed, never re-sent.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextlib import AbstractContextManager
from datetime import datetime, timedelta
from typing import Any

import pandas as pd
from sqlalchemy import and_, select

from handoff.config import Settings
from handoff.mail import (
    LostClaim,
    MailOutcomeUnknown,
    MailTransport,
    PermanentMailError,
    TransientMailError,
    classify,
    message_id,
)
from handoff.models import ActionKind, ActionStatus, Deal, PlannedAction
from handoff.redflags.rules import TITLES
from handoff.reporting.metrics import Metrics, all_metrics, export_metrics
from handoff.reporting.report import (
    Cohort,
    DigestReport,
    NewClient,
    OpenFlag,
    RepCompleteness,
    TimeToMetric,
)
from handoff.state.schema import deals, flags, onboarding
from handoff.state.store import StateStore

log = logging.getLogger(__name__)

DIGEST_SOURCE = "digest"
DIGEST_STEP = "revops_digest"


def _none(value: Any) -> Any:
    return None if value is None or (isinstance(value, float) and pd.isna(value)) else value


def _median(values: pd.Series) -> float | None:
    known = values.dropna()
    return round(float(known.median()), 1) if len(known) else None


def _share(values: pd.Series) -> tuple[float | None, int, int]:
    known = values.dropna()
    share = round(float(known.astype(bool).mean()), 4) if len(known) else None
    return share, len(known), int(values.isna().sum())


def time_to_metrics(metrics: Metrics, settings: Settings) -> tuple[TimeToMetric, ...]:
    frame = metrics.deals
    rules, digest = settings.red_flags, settings.digest
    rows = []
    for key, label, column, on_time, unit, target in (
        (
            "first_contact",
            "Signature to first CS contact",
            "first_contact_hours",
            "first_contact_on_time",
            "business hours",
            rules.first_contact_hours,
        ),
        (
            "kickoff",
            "Signature to kickoff",
            "kickoff_days",
            "kickoff_on_time",
            "days",
            float(rules.kickoff_by_day),
        ),
        (
            "first_value",
            "Kickoff to first value",
            "kickoff_to_value_days",
            "first_value_on_time",
            "days",
            digest.first_value_days,
        ),
    ):
        share, measured, waiting = _share(frame[on_time]) if len(frame) else (None, 0, 0)
        rows.append(
            TimeToMetric(
                key,
                label,
                _median(frame[column]) if len(frame) else None,
                unit,
                target,
                "<",
                share,
                measured,
                waiting,
            )
        )
    due, done = int(frame["steps_due"].sum()), int(frame["steps_done"].sum())
    completion = round(100 * done / due, 1) if due else None
    # Share of deals (with steps due) whose own completion meets the target.
    with_steps = frame[frame["steps_due"] > 0] if len(frame) else frame
    per_deal = with_steps["steps_done"] / with_steps["steps_due"] if len(with_steps) else None
    share = (
        round(float((per_deal >= digest.milestone_completion).mean()), 4)
        if per_deal is not None
        else None
    )
    rows.append(
        TimeToMetric(
            "milestones",
            "Playbook steps done when due",
            completion,
            "%",
            round(100 * digest.milestone_completion, 1),
            ">",
            share,
            len(with_steps),
            0,
        )
    )
    return tuple(rows)


def build_report(
    store: StateStore,
    settings: Settings,
    sources: list[str],
    metrics: Metrics,
    period_start: datetime,
    period_end: datetime,
) -> DigestReport:
    """Everything the digest shows, from the store and the metrics just computed."""
    new_clients, open_flags = [], []
    raised = resolved = 0
    counts: dict[str, int] = {}
    with store.engine.connect() as conn:
        for source in sources:
            joined = and_(
                deals.c.source == onboarding.c.source, deals.c.deal_id == onboarding.c.deal_id
            )
            started = conn.execute(
                select(onboarding.c.deal_id, onboarding.c.won_at, deals.c.record)
                .select_from(onboarding.join(deals, joined))
                .where(
                    onboarding.c.source == source,
                    onboarding.c.detected_at >= period_start,
                    onboarding.c.detected_at < period_end,
                )
                .order_by(onboarding.c.won_at)
            ).all()
            for deal_id, won_at, record in started:
                deal = Deal.from_record(record)
                new_clients.append(
                    NewClient(
                        source,
                        deal_id,
                        deal.account_name or deal.name,
                        deal.name,
                        deal.owner.name if deal.owner else "(no owner)",
                        deal.csm.name if deal.csm else "(no CSM)",
                        won_at,
                    )
                )
            flagged = (
                conn.execute(
                    select(flags, deals.c.record)
                    .select_from(
                        flags.join(
                            deals,
                            and_(
                                deals.c.source == flags.c.source, deals.c.deal_id == flags.c.deal_id
                            ),
                        )
                    )
                    .where(flags.c.source == source)
                )
                .mappings()
                .all()
            )
            for row in flagged:
                raised += period_start <= row["raised_at"] < period_end
                resolved += (
                    bool(row["resolved_at"]) and period_start <= row["resolved_at"] < period_end
                )
                if row["status"] != "open":
                    continue
                deal = Deal.from_record(row["record"])
                owner = next(
                    (p for p in (deal.account_owner, deal.owner) if p and p.is_active), None
                )
                won = deal.won_at or row["raised_at"]
                counts[row["code"]] = counts.get(row["code"], 0) + 1
                open_flags.append(
                    OpenFlag(
                        source,
                        row["deal_id"],
                        deal.account_name or deal.name,
                        row["code"],
                        TITLES.get(row["code"], row["code"]),
                        row["severity"],
                        row["reason"],
                        owner.name if owner else "(nobody)",
                        row["raised_at"],
                        max(0, (row["raised_at"] - won).days),
                    )
                )
    order = {"high": 0, "medium": 1, "low": 2}
    open_flags.sort(key=lambda f: (order.get(f.severity, 3), f.raised_at, f.account))
    reps = tuple(
        RepCompleteness(r.rep, int(r.deals), float(r.complete_share), float(r.fields_share))
        for r in metrics.reps.itertuples()
    )
    cohorts = tuple(
        Cohort(
            c.week,
            int(c.deals),
            _none(c.first_contact_on_time),
            _none(c.kickoff_on_time),
            _none(c.first_value_on_time),
            _none(c.milestone_completion),
            int(c.flags_raised),
            int(c.flags_open),
            int(c.left),
        )
        for c in metrics.cohorts.itertuples()
    )
    in_onboarding = int((metrics.deals["status"] == "active").sum()) if len(metrics.deals) else 0
    return DigestReport(
        company=settings.sender.company,
        period_start=period_start,
        period_end=period_end,
        sources=tuple(sources),
        new_clients=tuple(new_clients),
        open_flags=tuple(open_flags),
        flags_raised_in_period=int(raised),
        flags_resolved_in_period=int(resolved),
        time_to=time_to_metrics(metrics, settings),
        reps=reps,
        cohorts=cohorts,
        clients_in_onboarding=in_onboarding,
        flag_counts=dict(sorted(counts.items())),
    )


def run_digest(
    store: StateStore,
    settings: Settings,
    open_transport: Callable[[], AbstractContextManager[MailTransport]] | None,
    run_id: str,
    window_end: datetime,
    worker: str,
) -> dict[str, Any]:
    """Metrics, exports, the digest file and (with a transport) the digest email, once a day."""
    from handoff.reporting.digest import render_digest, write_digest_file

    sources = list(settings.sources.enabled)
    period_start = window_end - timedelta(days=1)
    metrics = all_metrics(store, settings, sources, window_end)
    day = (window_end - timedelta(seconds=1)).date().isoformat()
    folder = settings.digest.output_dir / day
    files = export_metrics(metrics, folder)
    report = build_report(store, settings, sources, metrics, period_start, window_end)
    rendered = render_digest(report, settings.output.templates_dir)
    page = write_digest_file(rendered, folder, "digest")
    result: dict[str, Any] = {
        "deals_measured": len(metrics.deals),
        "new_clients": len(report.new_clients),
        "open_flags": len(report.open_flags),
        "digest_file": str(page),
        "metrics_files": [str(path) for path in files],
        "digest_sent": 0,
    }
    if open_transport is not None and settings.digest.recipients:
        result["digest_sent"] = _send_once(
            store, settings, open_transport, run_id, day, worker, rendered, window_end
        )
    log.info("Digest for %s: %s", day, result)
    return result


def _send_once(store, settings, open_transport, run_id, day, worker, rendered, window_end) -> int:
    from handoff.reporting.digest import digest_message

    recipients = [str(a) for a in settings.digest.recipients]
    action = PlannedAction(
        DIGEST_SOURCE,
        day,
        DIGEST_STEP,
        ActionKind.EMAIL,
        {"deal_label": f"the RevOps digest of {day}", "recipients": recipients},
        due_at=window_end - timedelta(days=1),
    )
    store.record_plan(DIGEST_SOURCE, run_id, [action])
    sender_address = str(settings.email.from_address)
    mid = message_id(action.dedupe_key, sender_address, store.installation_id())
    lease = timedelta(seconds=settings.dispatch.lease_seconds)
    for row in store.take_over_stale(DIGEST_SOURCE, ActionKind.EMAIL, worker, lease):
        reason = f"{row.label}: an earlier attempt handed it to the SMTP server without an answer"
        store.finish(
            row.dedupe_key, worker, ActionStatus.UNCONFIRMED, run_id, external_id=mid, reason=reason
        )
    claimed = store.claim(DIGEST_SOURCE, ActionKind.EMAIL, worker, limit=1, due_by=window_end)
    if not claimed:
        return 0
    (row,) = claimed
    sender = {"name": f"Handoff Autopilot ({settings.sender.company})", "email": sender_address}
    mail = digest_message(
        rendered, sender=sender, recipients=recipients, message_id=mid, sent_at=window_end
    )
    key = row.dedupe_key
    try:
        with open_transport() as transport:
            transport.send(
                mail.content,
                sender=str(settings.email.envelope_sender or sender_address),
                recipients=mail.recipients,
                smtputf8=mail.smtputf8,
                before_data=lambda: key in store.mark_attempted([key], worker),
            )
    except LostClaim:
        return 0
    except PermanentMailError as exc:
        store.finish(
            key,
            worker,
            ActionStatus.FAILED,
            run_id,
            external_id=mid,
            reason=f"the SMTP server refused the digest: {exc}",
        )
        return 0
    except MailOutcomeUnknown as exc:
        store.finish(
            key,
            worker,
            ActionStatus.UNCONFIRMED,
            run_id,
            external_id=mid,
            reason=f"the digest may have been delivered ({exc}); not sent again",
        )
        return 0
    except Exception as exc:  # refused or unreachable: nothing was sent, the retry sends it
        error = classify(exc) if not isinstance(exc, TransientMailError) else exc
        store.release([key], worker, str(error), refused=True)
        raise error from exc
    store.finish(key, worker, ActionStatus.DONE, run_id, external_id=mid)
    return 1
