"""Replay the red-flag rules and the playbook over the history already in the state store.

``handoff backtest --days 90`` answers "what would these settings have done?" without sending
or writing anything: for every moment of the replay (daily by default) it evaluates the rules
as of that moment, over the deals then in their 90 days and the activities the CRM held by
then, and records when each flag would have fired and cleared, and for whom; and it lists the
playbook steps that would have fallen due, with their kind and owner role. RevOps changes a
threshold in the settings, runs it again, and compares.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd

from handoff.config import Settings
from handoff.redflags.rules import TITLES, evaluate
from handoff.redflags.steps import load_rule_input
from handoff.schedule import Plan, _conditions, _deals_frame, steps_frame
from handoff.state.redflag_store import RedFlagStore
from handoff.state.store import StateStore


@dataclass(frozen=True)
class Backtest:
    source: str
    start: datetime
    end: datetime
    every: timedelta
    moments: int
    deals: int
    flags: pd.DataFrame  # one row per episode: deal, label, code, fired_at, cleared_at, reason
    steps: pd.DataFrame  # one row per step due: deal, label, step, kind, due_at, to

    def summary(self) -> dict[str, Any]:
        by_rule = self.flags.groupby("code").agg(
            fired=("deal_id", "size"), deals=("deal_id", "nunique")
        )
        return {
            "source": self.source,
            "from": self.start.isoformat(),
            "to": self.end.isoformat(),
            "moments": self.moments,
            "deals": self.deals,
            "flags_fired": len(self.flags),
            "flags_by_rule": {code: int(row.fired) for code, row in by_rule.iterrows()},
            "deals_by_rule": {code: int(row.deals) for code, row in by_rule.iterrows()},
            "emails_due": int((self.steps["kind"] == "email").sum()),
            "tasks_due": int((self.steps["kind"] == "task").sum()),
        }


def run_backtest(
    store: StateStore,
    settings: Settings,
    source: str,
    end: datetime,
    days: int = 90,
    every: timedelta = timedelta(days=1),
) -> Backtest:
    """Replay ``days`` before ``end``, one evaluation every ``every``; nothing is written."""
    start = end - timedelta(days=days)
    horizon = timedelta(days=settings.plan.horizon_days)
    history = RedFlagStore(store).onboarding_deals(source, start - horizon, active_only=False)
    history = history.drop(columns=["status"])
    data = load_rule_input(store, settings, source, history, end, snippets_from=None)
    facts = data.deals.merge(history[["deal_id", "stopped_at"]], on="deal_id")
    activities = data.activities
    labels = dict(zip(facts["deal_id"], facts["label"], strict=True))

    holding: dict[tuple[str, str], dict[str, Any]] = {}
    episodes: list[dict[str, Any]] = []
    moments = 0
    moment = start
    while moment <= end:
        moments += 1
        stamp = pd.Timestamp(moment)
        live = facts[
            (facts["won_at"] <= stamp)
            & (facts["won_at"] >= stamp - horizon)
            & (facts["stopped_at"].isna() | (facts["stopped_at"] > stamp))
        ]
        known = activities[activities["modstamp"] <= stamp]
        found = evaluate(replace(data, deals=live, activities=known, as_of=moment))
        now = {(r.deal_id, r.code): r.reason for r in found.itertuples()}
        for key, reason in now.items():
            if key not in holding:
                holding[key] = {
                    "deal_id": key[0],
                    "label": labels[key[0]],
                    "code": key[1],
                    "title": TITLES.get(key[1], key[1]),
                    "fired_at": moment,
                    "cleared_at": None,
                    "reason": reason,
                }
                episodes.append(holding[key])
        for key in [k for k in holding if k not in now]:
            holding.pop(key)["cleared_at"] = moment
        moment += every
    flags = pd.DataFrame(
        episodes,
        columns=["deal_id", "label", "code", "title", "fired_at", "cleared_at", "reason"],
    )
    steps = _due_steps(history, settings, source, start, end)
    return Backtest(source, start, end, every, moments, len(facts), flags, steps)


def _due_steps(
    history: pd.DataFrame, settings: Settings, source: str, start: datetime, end: datetime
) -> pd.DataFrame:
    """The playbook steps that fall due in ``[start, end]`` for these deals, conditions and
    segments applied (the order between steps and the handoff gate are left to the real run)."""
    columns = ["deal_id", "label", "step", "kind", "due_at", "to"]
    if history.empty:
        return pd.DataFrame(columns=columns)
    picked = [
        {**row, "planned_modstamp": None}
        for row in history.drop(columns=["stopped_at"]).to_dict("records")
    ]
    deal_frame = _deals_frame(source, picked, settings, Plan())
    grid = deal_frame.merge(steps_frame(settings.plan), how="cross")
    grid["due_at"] = grid["won_at"] + grid["offset"]
    grid = grid[(grid["due_at"] >= pd.Timestamp(start)) & (grid["due_at"] <= pd.Timestamp(end))]
    applies, _ = _conditions(grid, settings.plan)
    applies &= grid["for_existing"].where(grid["existing"], grid["for_new"]).astype(bool)
    grid = grid[applies]
    roles = {s.id: (s.to if s.kind == "email" else s.owner) for s in settings.plan.steps}
    out = grid.assign(to=grid["step"].map(roles))[columns]
    return out.sort_values(["due_at", "deal_id", "step"], ignore_index=True)


def write_backtest(result: Backtest, folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    flags, steps = folder / "flags.csv", folder / "steps.csv"
    result.flags.to_csv(flags, index=False)
    result.steps.to_csv(steps, index=False)
    return [flags, steps]


def format_backtest(result: Backtest, limit: int = 40) -> str:
    summary = result.summary()
    lines = [
        f"Backtest of {result.source}: {summary['from']} to {summary['to']}, "
        f"{result.moments} evaluations, {result.deals} deals; nothing was sent or written.",
        f"Flags that would have fired: {summary['flags_fired']}",
    ]
    for code, count in summary["flags_by_rule"].items():
        lines.append(
            f"  - {TITLES.get(code, code)}: {count} times, {summary['deals_by_rule'][code]} deals"
        )
    lines.append(
        f"Playbook: {summary['emails_due']} client emails and {summary['tasks_due']} tasks "
        "would have fallen due"
    )
    if len(result.flags):
        lines.append("When and for whom (first ones):")
        for row in result.flags.sort_values("fired_at").head(limit).itertuples():
            cleared = f", cleared {row.cleared_at:%Y-%m-%d}" if row.cleared_at else ""
            lines.append(
                f"  {row.fired_at:%Y-%m-%d %H:%M} {row.title} - {row.label}: {row.reason}{cleared}"
            )
    return "\n".join(lines)
