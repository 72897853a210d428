"""How handoffs are going: per deal, per rep and per signature week, from the state store.

Per deal (every onboarding of the last ``COHORT_WEEKS`` weeks): signature to first CS contact
(in the client's business hours, the red-flag rules' clock), to kickoff (days), kickoff to first
value (days), the playbook's due steps and how many are done, flags raised and open, and how
complete the rep's handoff document is. The same activity classification as the rules (a CS
touch, a held kickoff, a logged first win), so a metric and a flag never disagree.

Per rep: handoff-document completeness. Per cohort (the Monday of the signature week): the
share of deals on target for each time-to metric, milestone completion, flags, and the deals
that left Closed Won during onboarding (churn). Stored in ``handoff_deal_metrics`` and written
as CSV and Parquet.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import pandas as pd
from sqlalchemy import delete, select

from handoff.config import Settings
from handoff.planning import HANDOFF_DOC_LABELS
from handoff.redflags.clock import business_hours_between
from handoff.redflags.escalation import is_escalation
from handoff.redflags.rules import classify_activities
from handoff.redflags.steps import load_rule_input
from handoff.state.redflag_store import RedFlagStore
from handoff.state.schema import deal_metrics, flags, outbox
from handoff.state.store import StateStore

COHORT_WEEKS = 13  # the 90-day picture: every signature week still inside or just past it
DEAL_METRIC_COLUMNS = [c.name for c in deal_metrics.columns]


@dataclass(frozen=True)
class Metrics:
    deals: pd.DataFrame  # one row per onboarding (DEAL_METRIC_COLUMNS)
    reps: pd.DataFrame
    cohorts: pd.DataFrame


def compute_metrics(
    store: StateStore, settings: Settings, source: str, as_of: datetime
) -> pd.DataFrame:
    """Per-deal metrics of one source as of ``as_of`` (the onboardings of the last 13 weeks)."""
    since = as_of - timedelta(weeks=COHORT_WEEKS)
    rows = RedFlagStore(store).onboarding_deals(source, since, active_only=False)
    rows = rows[["deal_id", "status", "won_at", "record"]]
    if rows.empty:
        return pd.DataFrame(columns=DEAL_METRIC_COLUMNS)
    # No rule here reads a body: leave the snippets in the store.
    data = load_rule_input(store, settings, source, rows, as_of, snippets_from=as_of)
    frame = data.deals.merge(rows[["deal_id", "status"]], on="deal_id")
    frame["rep"], frame["csm"] = frame["owner_name"], frame["csm_name"]
    frame["doc_fields"] = len(HANDOFF_DOC_LABELS)
    frame["doc_fields_filled"] = len(HANDOFF_DOC_LABELS) - frame["missing_doc"].map(len)
    window = data.window
    acts = classify_activities(data)
    first = {
        name: acts[acts[flag]].groupby("deal_id")["occurred_at"].min()
        for name, flag in (
            ("first_contact_at", "cs_touch"),
            ("kickoff_at", "kickoff"),
            ("first_value_at", "milestone"),
        )
    }
    for name, values in first.items():
        frame[name] = pd.Series(
            values.reindex(frame["deal_id"].to_numpy()).array, index=frame.index
        )
    frame["first_contact_hours"] = business_hours_between(
        frame["won_at"], frame["first_contact_at"], frame["zone"], frame["country"], window
    ).round(2)
    day = pd.Timedelta(days=1)
    frame["kickoff_days"] = ((frame["kickoff_at"] - frame["won_at"]) / day).round(2)
    frame["kickoff_to_value_days"] = ((frame["first_value_at"] - frame["kickoff_at"]) / day).round(
        2
    )
    _on_target(frame, settings, as_of, window)
    steps = _step_counts(store, source, frame["deal_id"].tolist(), as_of)
    frame = frame.merge(steps, on="deal_id", how="left")
    counts = _flag_counts(store, source, frame["deal_id"].tolist())
    frame = frame.merge(counts, on="deal_id", how="left")
    for column in ("steps_due", "steps_done", "flags_raised", "flags_open"):
        frame[column] = frame[column].fillna(0).astype(int)
    frame["source"] = source
    frame["computed_at"] = pd.Timestamp(as_of)
    local_day = frame["won_at"].dt.tz_convert("UTC").dt.normalize()
    frame["cohort_week"] = (local_day - pd.to_timedelta(local_day.dt.day_of_week, unit="D")).dt.date
    return frame[DEAL_METRIC_COLUMNS].sort_values(["won_at", "deal_id"], ignore_index=True)


def _step_counts(store: StateStore, source: str, deal_ids: list[str], as_of: datetime):
    """Playbook steps due by ``as_of`` (not cancelled) and done, per deal."""
    query = select(outbox.c.deal_id, outbox.c.step, outbox.c.status).where(
        outbox.c.source == source, outbox.c.due_at <= as_of, outbox.c.status != "cancelled"
    )
    with store.engine.connect() as conn:
        rows = pd.DataFrame(conn.execute(query).all(), columns=["deal_id", "step", "status"])
    rows = rows[rows["deal_id"].isin(deal_ids) & ~rows["step"].map(is_escalation).astype(bool)]
    return (
        rows.assign(done=rows["status"] == "done")
        .groupby("deal_id")
        .agg(steps_due=("step", "size"), steps_done=("done", "sum"))
        .reset_index()
    )


def _flag_counts(store: StateStore, source: str, deal_ids: list[str]) -> pd.DataFrame:
    query = select(flags.c.deal_id, flags.c.status).where(flags.c.source == source)
    with store.engine.connect() as conn:
        rows = pd.DataFrame(conn.execute(query).all(), columns=["deal_id", "status"])
    rows = rows[rows["deal_id"].isin(deal_ids)]
    return (
        rows.assign(open=rows["status"] == "open")
        .groupby("deal_id")
        .agg(flags_raised=("status", "size"), flags_open=("open", "sum"))
        .reset_index()
    )


def save_metrics(store: StateStore, source: str, frame: pd.DataFrame) -> None:
    """Replace the source's stored per-deal metrics with ``frame``, in one transaction."""
    values = frame.astype(object).where(frame.notna(), None).to_dict("records")
    for row in values:
        for key, value in row.items():
            if isinstance(value, pd.Timestamp):
                row[key] = value.to_pydatetime()
    with store.engine.begin() as conn:
        conn.execute(delete(deal_metrics).where(deal_metrics.c.source == source))
        if values:
            conn.execute(deal_metrics.insert(), values)


def rep_metrics(frame: pd.DataFrame) -> pd.DataFrame:
    """Handoff-document completeness by rep (deals with every field, and fields filled)."""
    if frame.empty:
        return pd.DataFrame(columns=["rep", "deals", "complete_share", "fields_share"])
    data = frame.assign(
        rep=frame["rep"].astype(object).fillna("(no owner)"),
        complete=frame["doc_fields_filled"] == frame["doc_fields"],
    )
    grouped = data.groupby("rep").agg(
        deals=("deal_id", "size"),
        complete=("complete", "sum"),
        filled=("doc_fields_filled", "sum"),
        fields=("doc_fields", "sum"),
    )
    grouped["complete_share"] = (grouped["complete"] / grouped["deals"]).round(4)
    grouped["fields_share"] = (grouped["filled"] / grouped["fields"]).round(4)
    result = grouped.reset_index()[["rep", "deals", "complete_share", "fields_share"]]
    return result.sort_values(["complete_share", "rep"], ignore_index=True)


def _judged(value: pd.Series, limit: float, elapsed: pd.Series) -> pd.Series:
    """On target (value below the limit), missed (no value and the limit has passed), or None
    while the deal is still inside the limit without the event."""
    result = pd.Series((value < limit).to_numpy(), index=value.index, dtype=object)
    missed = value.isna() & (elapsed >= limit)
    result[missed] = False
    result[value.isna() & ~missed] = None
    return result


def _on_target(frame: pd.DataFrame, settings: Settings, as_of: datetime, window) -> None:
    """Add the three on-target columns, each judged on the clock its rule uses."""
    rules, digest = settings.red_flags, settings.digest
    as_of_ts = pd.Series(pd.Timestamp(as_of), index=frame.index)
    waited = business_hours_between(
        frame["won_at"], as_of_ts, frame["zone"], frame["country"], window
    )
    frame["first_contact_on_time"] = _judged(
        frame["first_contact_hours"], rules.first_contact_hours, waited
    )
    age = (as_of_ts - frame["won_at"]) / pd.Timedelta(days=1)
    frame["kickoff_on_time"] = _judged(frame["kickoff_days"], rules.kickoff_by_day + 1e-9, age)
    since_kickoff = ((as_of_ts - frame["kickoff_at"]) / pd.Timedelta(days=1)).fillna(0)
    value = _judged(frame["kickoff_to_value_days"], digest.first_value_days, since_kickoff)
    frame["first_value_on_time"] = value.where(frame["kickoff_at"].notna(), None)


def cohort_metrics(frame: pd.DataFrame) -> pd.DataFrame:
    """The 90-day picture per signature week."""
    columns = [
        "week",
        "deals",
        "first_contact_on_time",
        "kickoff_on_time",
        "first_value_on_time",
        "milestone_completion",
        "flags_raised",
        "flags_open",
        "left",
    ]
    if frame.empty:
        return pd.DataFrame(columns=columns)
    data = frame.copy()
    data["left"] = data["status"] == "stopped"
    rows = []
    for week, group in data.groupby("cohort_week"):

        def share(column: str, group=group) -> float | None:
            known = group[column].dropna()
            return round(float(known.astype(bool).mean()), 4) if len(known) else None

        due = group["steps_due"].sum()
        rows.append(
            {
                "week": week,
                "deals": len(group),
                "first_contact_on_time": share("first_contact_on_time"),
                "kickoff_on_time": share("kickoff_on_time"),
                "first_value_on_time": share("first_value_on_time"),
                "milestone_completion": round(float(group["steps_done"].sum() / due), 4)
                if due
                else None,
                "flags_raised": int(group["flags_raised"].sum()),
                "flags_open": int(group["flags_open"].sum()),
                "left": int(group["left"].sum()),
            }
        )
    return pd.DataFrame(rows, columns=columns)


def all_metrics(
    store: StateStore, settings: Settings, sources: list[str], as_of: datetime
) -> Metrics:
    """Compute, store and combine the metrics of every source."""
    frames = []
    for source in sources:
        frame = compute_metrics(store, settings, source, as_of)
        save_metrics(store, source, frame)
        frames.append(frame)
    combined = (
        pd.concat(frames, ignore_index=True)
        if frames
        else pd.DataFrame(columns=DEAL_METRIC_COLUMNS)
    )
    return Metrics(combined, rep_metrics(combined), cohort_metrics(combined))


def export_metrics(metrics: Metrics, folder: Path) -> list[Path]:
    """Each view as CSV and Parquet in ``folder`` (rewritten by a re-run of the same day)."""
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, frame in (
        ("deal_metrics", metrics.deals),
        ("rep_metrics", metrics.reps),
        ("cohort_metrics", metrics.cohorts),
    ):
        csv, parquet = folder / f"{name}.csv", folder / f"{name}.parquet"
        frame.to_csv(csv, index=False)
        frame.astype({c: "string" for c in frame.columns if frame[c].dtype == object}).to_parquet(
            parquet, index=False
        )
        written += [csv, parquet]
    return written


def stored_metrics(store: StateStore, source: str) -> pd.DataFrame:
    with store.engine.connect() as conn:
        rows = conn.execute(select(deal_metrics).where(deal_metrics.c.source == source)).all()
    return pd.DataFrame(rows, columns=DEAL_METRIC_COLUMNS)
