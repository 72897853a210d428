"""The step scheduler: which playbook steps fall due for which deals, all deals at once.

Every run looks only at the onboardings that need it (a step fell due since the last plan, or
the deal changed) and plans them together: deals x steps in one frame, anti-joined with the
outbox, conditions evaluated as columns. A due step becomes one outbox row keyed
``source:deal:step`` (unique), so a re-run, retry, backfill or concurrent run adds nothing.

What a due step becomes:
- *pending*: it goes out in this run's dispatch (who and what are resolved then);
- *held*: a client-facing step while the rep's handoff document is incomplete (if the playbook
  says so); released by the first run that sees the document complete;
- *skipped*: found later than its ``late_after`` (a paused DAG, a late discovery), or its
  conditions cannot be checked (no amount), with the reason;
- nothing yet: its conditions do not hold (checked again if the deal changes while the step is
  still sensible), or it waits for the step it comes after.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd
from more_itertools import chunked

from handoff.config import Settings
from handoff.models import ActionKind, ActionStatus, Deal, DealIssue, PlannedAction
from handoff.planning import HANDOFF_DOC_LABELS, deal_issues, is_existing_customer
from handoff.playbook import Playbook, describe
from handoff.state.store import StateStore

log = logging.getLogger(__name__)

DEAL_FRAME = [
    "deal_id",
    "won_at",
    "adopted_at",
    "modstamp",
    "amount",
    "complete",
    "existing",
    "missing",
    "label",
    "hold_reason",
]
PLAN_BATCH = 2000  # deals recorded per transaction
FINISHED = {
    ActionStatus.SKIPPED,
    ActionStatus.FAILED,
    ActionStatus.CANCELLED,
    ActionStatus.UNCONFIRMED,
}


@dataclass
class Plan:
    """What one planning pass decided (recorded, or only shown by a dry run)."""

    actions: list[PlannedAction] = field(default_factory=list)
    next_steps: list[dict[str, Any]] = field(default_factory=list)
    issues: list[DealIssue] = field(default_factory=list)
    hold: list[tuple[str, str]] = field(default_factory=list)
    release: list[str] = field(default_factory=list)
    unplannable: list[DealIssue] = field(default_factory=list)
    deals: int = 0

    def counts(self) -> dict[str, int]:
        by_status = Counter(action.status for action in self.actions)
        return {
            "deals_planned": self.deals,
            "steps_due": len(self.actions),
            "steps_pending": by_status[ActionStatus.PENDING],
            "steps_held": by_status[ActionStatus.HELD],
            "steps_skipped": by_status[ActionStatus.SKIPPED],
            "deals_released": len(self.release),
            "deals_completed": sum(1 for n in self.next_steps if n["status"] == "completed"),
            "deals_unplannable": len(self.unplannable),
        }


def steps_frame(playbook: Playbook) -> pd.DataFrame:
    """The playbook as columns: one row a step."""
    rows = []
    for step in playbook.steps:
        c = step.conditions
        rows.append(
            {
                "step": step.id,
                "kind": step.kind,
                "offset": step.offset,
                "late_after": step.late_after,
                "client": step.is_client_facing,
                "amount_at_least": c.amount_at_least,
                "amount_below": c.amount_below,
                "enterprise": c.enterprise,
                "doc": c.handoff_doc,
                "after": c.after,
                "for_new": "new_business" in step.segments,
                "for_existing": "existing_customer" in step.segments,
            }
        )
    frame = pd.DataFrame(rows)
    for column in ("amount_at_least", "amount_below"):
        frame[column] = pd.to_numeric(frame[column], errors="coerce")
    return frame


def plan_due_steps(
    store: StateStore,
    settings: Settings,
    source: str,
    at: datetime,
    picked: list[dict[str, Any]] | None = None,
) -> Plan:
    """Decide every step due by ``at`` for the onboardings that need a look (records nothing).

    ``picked``: the onboardings to plan (default: those the store says need a look).
    """
    playbook = settings.plan
    if picked is None:
        picked = store.deals_to_plan(source, at)
    plan = Plan()
    deals = _deals_frame(source, picked, settings, plan)
    plan.deals = len(deals)
    if deals.empty:
        return plan
    existing = pd.DataFrame(
        store.step_statuses(source, deals["deal_id"].tolist()),
        columns=["deal_id", "step", "status"],
    )
    grid = deals.merge(steps_frame(playbook), how="cross")
    grid["fire_at"] = grid["won_at"] + grid["offset"]
    grid = grid.merge(existing, on=["deal_id", "step"], how="left")
    open_steps = grid[grid["status"].isna()].drop(columns="status")
    # Steps that belong to the time before an adopted client was taken on are not ours.
    open_steps = open_steps[
        open_steps["adopted_at"].isna() | (open_steps["fire_at"] >= open_steps["adopted_at"])
    ]
    due = open_steps[open_steps["fire_at"] <= at]
    future = open_steps[open_steps["fire_at"] > at]

    applies, unknown_amount = _conditions(due, playbook)
    applies &= due["for_existing"].where(due["existing"], due["for_new"]).astype(bool)
    late = at > due["fire_at"] + due["late_after"]
    # A step skipped in this same pass counts as ended for the steps that come after it.
    ending_now = due.loc[applies & late, ["deal_id", "step"]].assign(status=ActionStatus.SKIPPED)
    waits, blocked = _after(due, pd.concat([existing, ending_now], ignore_index=True))
    held = due["client"] & ~due["complete"] & playbook.hold_client_steps
    due = due.assign(
        applies=applies,
        unknown_amount=unknown_amount,
        waits=waits,
        blocked=blocked,
        late=late,
        held=held,
    )
    waiting_deals = set(due.loc[due["applies"] & due["waits"], "deal_id"])
    due = due[due["applies"] & ~due["waits"]]
    plan.actions = [_action(row, source, at) for row in due.to_dict("records")]

    # When to look again: the next step's time; a step waiting for another one: next run.
    next_at = future.groupby("deal_id")["fire_at"].min()
    finished_by = deals.set_index("deal_id")["won_at"] + playbook.last_moment
    for deal in deals.to_dict("records"):
        deal_id = deal["deal_id"]
        upcoming = next_at.get(deal_id)
        if deal_id in waiting_deals:
            upcoming = at
        status = "active"
        if upcoming is None or pd.isna(upcoming):
            # No step ahead: look again when the last one's lateness limit has passed (a
            # changed deal is looked at sooner), then the onboarding is complete.
            upcoming = finished_by[deal_id]
            if at > upcoming:
                status, upcoming = "completed", None
        plan.next_steps.append(
            {
                "deal_id": deal_id,
                "next_step_at": _py(upcoming),
                "planned_modstamp": deal["modstamp"],
                "status": status,
            }
        )
        if playbook.hold_client_steps and not deal["complete"]:
            plan.hold.append((deal_id, deal["hold_reason"]))
        else:
            plan.release.append(deal_id)
    return plan


def record(store: StateStore, source: str, run_id: str, plan: Plan) -> int:
    """Write a plan, one transaction per batch of deals; returns outbox rows inserted."""
    inserted = 0
    by_deal: dict[str, list[PlannedAction]] = {}
    for action in plan.actions:
        by_deal.setdefault(action.deal_id, []).append(action)
    issues_by_deal: dict[str, list[DealIssue]] = {}
    for issue in plan.issues:
        issues_by_deal.setdefault(issue.deal_id, []).append(issue)
    hold = dict(plan.hold)
    release = set(plan.release)
    if plan.unplannable:  # recorded once (deal, code, field); planned again next run
        store.record_plan(source, run_id, [], issues=plan.unplannable)
    for batch in chunked(plan.next_steps, PLAN_BATCH):
        ids = [n["deal_id"] for n in batch]
        inserted += store.record_plan(
            source,
            run_id,
            [a for deal_id in ids for a in by_deal.get(deal_id, [])],
            next_steps=batch,
            issues=[i for deal_id in ids for i in issues_by_deal.get(deal_id, [])],
            hold=[(deal_id, hold[deal_id]) for deal_id in ids if deal_id in hold],
            release=[deal_id for deal_id in ids if deal_id in release],
        )
    return inserted


def _deals_frame(
    source: str, picked: list[dict[str, Any]], settings: Settings, plan: Plan
) -> pd.DataFrame:
    rows = []
    for item in picked:
        try:
            deal = Deal.from_record(item["record"])
        except Exception as exc:  # one deal's bad snapshot must not hold up the others
            plan.unplannable.append(
                DealIssue(
                    source,
                    item["deal_id"],
                    "record",
                    "plan_error",
                    f"deal {item['deal_id']}: could not be planned ({type(exc).__name__}: "
                    f"{exc}); it is tried again on the next run",
                )
            )
            continue
        missing = deal.missing_handoff_fields()
        amount = deal.amount if deal.amount is not None and deal.amount >= 0 else np.nan
        rows.append(
            {
                "deal_id": item["deal_id"],
                "won_at": item["won_at"],
                "adopted_at": item["adopted_at"],
                "modstamp": item["modstamp"],
                "amount": amount,
                "complete": not missing,
                "existing": is_existing_customer(deal, settings),
                "missing": missing,
                "label": deal.label(),
                "hold_reason": _hold_reason(deal.label(), missing, settings, source)
                if missing
                else None,
            }
        )
        if item.get("planned_modstamp") != item["modstamp"]:
            plan.issues.extend(deal_issues(deal, settings))
            if deal.won_at is not None and deal.won_at != item["won_at"]:
                won_field = settings.crm(source).labels()["won_at"]
                plan.issues.append(
                    DealIssue(
                        deal.source,
                        deal.deal_id,
                        won_field,
                        "win_date_moved",
                        f"{deal.label()}: {won_field}: the win date is now "
                        f"{deal.won_at:%Y-%m-%d %H:%M} UTC; the playbook keeps counting from the "
                        f"win first seen, {item['won_at']:%Y-%m-%d %H:%M} UTC, so no step is "
                        "repeated or moved",
                    )
                )
    frame = pd.DataFrame(rows, columns=DEAL_FRAME)
    for column in ("won_at", "adopted_at", "modstamp"):
        frame[column] = pd.to_datetime(frame[column], utc=True)
    return frame


def _conditions(due: pd.DataFrame, playbook: Playbook) -> tuple[pd.Series, pd.Series]:
    """Whether each due step's conditions hold, and where an amount condition has no amount."""
    amount = due["amount"]
    needs_amount = (
        due["amount_at_least"].notna() | due["amount_below"].notna() | due["enterprise"].notna()
    )
    unknown_amount = needs_amount & amount.isna()
    enterprise = amount >= playbook.enterprise_min_amount
    applies = (
        (due["amount_at_least"].isna() | (amount >= due["amount_at_least"]))
        & (due["amount_below"].isna() | (amount < due["amount_below"]))
        & (due["enterprise"].isna() | (enterprise == due["enterprise"].fillna(False)))
        & (due["doc"].isna() | ((due["doc"] == "complete") == due["complete"]))
    )
    # Without an amount an amount condition cannot be checked: the step is skipped, with why.
    return applies | unknown_amount, unknown_amount


def _after(due: pd.DataFrame, existing: pd.DataFrame) -> tuple[pd.Series, pd.Series]:
    """Steps that come after another: wait until it is done; skip if it ended otherwise."""
    has_after = due["after"].notna()
    if not has_after.any():
        empty = pd.Series(False, index=due.index)
        return empty, empty
    previous = due[["deal_id", "after"]].merge(
        existing.rename(columns={"step": "after", "status": "after_status"}),
        on=["deal_id", "after"],
        how="left",
    )
    previous.index = due.index
    status = previous["after_status"]
    blocked = has_after & status.isin(list(FINISHED))
    waits = has_after & ~blocked & (status != ActionStatus.DONE)
    return waits, pd.Series(np.where(blocked, status, None), index=due.index)


def _action(row: dict[str, Any], source: str, at: datetime) -> PlannedAction:
    fire_at = row["fire_at"].to_pydatetime()
    not_after = fire_at + row["late_after"]
    status, reason = ActionStatus.PENDING, None
    label = row["label"]
    if row["unknown_amount"]:
        status = ActionStatus.SKIPPED
        reason = f"{label}: Amount: the deal has no amount, so the conditions of {row['step']} "
        reason += "cannot be checked"
    elif row["blocked"]:
        status = ActionStatus.SKIPPED
        reason = f"{label}: {row['step']} comes after {row['after']}, which ended {row['blocked']}"
    elif row["late"]:
        status = ActionStatus.SKIPPED
        reason = (
            f"{label}: {row['step']} was due {fire_at:%Y-%m-%d %H:%M} UTC and is found "
            f"{describe(at - fire_at)} later, past its lateness limit of "
            f"{describe(row['late_after'])}: it is not sent late"
        )
    elif row["held"]:
        status = ActionStatus.HELD
        reason = row["hold_reason"]
    return PlannedAction(
        source=source,
        deal_id=row["deal_id"],
        step=row["step"],
        kind=ActionKind(row["kind"]),
        payload={"deal_label": label, "client": bool(row["client"])},
        status=status,
        reason=reason,
        due_at=fire_at,
        not_after=not_after,
    )


def _hold_reason(label: str, missing: list[str], settings: Settings, source: str) -> str:
    fields = settings.crm(source).labels()
    names = ", ".join(f"{HANDOFF_DOC_LABELS[k]} ({fields[f'doc_{k}']})" for k in missing)
    return (
        f"{label}: held until the handoff document is complete; missing: {names}. "
        "The rep has a task; the next run after it is filled in sends what is still sensible"
    )


def _py(value: Any) -> datetime | None:
    if value is None or (not isinstance(value, datetime) and pd.isna(value)):
        return None
    return value.to_pydatetime() if isinstance(value, pd.Timestamp) else value
