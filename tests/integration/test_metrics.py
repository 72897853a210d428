"""Metrics per deal, rep and cohort from the named client histories, stored and exported."""

from __future__ import annotations

from datetime import date

import pandas as pd
import pytest

from handoff.redflags.steps import evaluate_red_flags
from handoff.reporting.metrics import (
    DEAL_METRIC_COLUMNS,
    all_metrics,
    compute_metrics,
    export_metrics,
    stored_metrics,
)
from handoff.sandbox.histories import HISTORY_CASES
from tests.redflag_scenario import load_cases, noon

TODAY = date(2026, 12, 4)


@pytest.fixture
def measured(store, flagged):
    ids = load_cases(store, TODAY)
    evaluate_red_flags(store, flagged, "salesforce", "run-1", noon(TODAY))
    frame = compute_metrics(store, flagged, "salesforce", noon(TODAY))
    by_name = {name: frame.set_index("deal_id").loc[deal_id] for name, deal_id in ids.items()}
    return frame, by_name


def test_one_row_per_onboarding_with_every_column(measured):
    frame, _ = measured
    assert list(frame.columns) == DEAL_METRIC_COLUMNS
    assert len(frame) == len(HISTORY_CASES)


def test_time_to_metrics_follow_what_the_crm_logged(measured):
    _, deal = measured
    healthy = deal["Brightline Logistics — healthy client"]
    assert (healthy.kickoff_days, healthy.kickoff_to_value_days) == (2.0, 7.0)
    assert healthy.kickoff_on_time and healthy.first_value_on_time
    assert healthy.first_contact_on_time
    silent = deal["Harbor Dental — no first contact"]
    assert pd.isna(silent.first_contact_at) and silent.first_contact_on_time is False
    no_kickoff = deal["Quarry Analytics — kickoff cancelled"]
    assert pd.isna(no_kickoff.kickoff_at) and no_kickoff.kickoff_on_time is False
    # Won on a Friday evening, contacted Monday 09:00 in New York as the day opens: 0 hours.
    friday = deal["Fjord Outdoor — won on a Friday evening"]
    assert friday.first_contact_hours == 0.0 and friday.first_contact_on_time
    no_win = deal["Pinecrest Bank — no first win"]
    assert pd.isna(no_win.first_value_at) and no_win.first_value_on_time is False
    recent = deal["Cedar Foods — asks for more"]  # kickoff on day 2, 4 days ago: still waiting
    assert recent.first_value_on_time is None


def test_flags_and_the_handoff_document_per_deal(measured):
    _, deal = measured
    for case in HISTORY_CASES:
        row = deal[case.deal]
        assert (row.flags_raised, row.flags_open) == (len(case.trips), len(case.trips))
        assert row.doc_fields_filled == 6 - len(case.missing_doc)
        assert row.doc_fields == 6


def test_reps_and_cohorts(store, flagged):
    load_cases(store, TODAY)
    metrics = all_metrics(store, flagged, ["salesforce"], noon(TODAY))
    (rep,) = metrics.reps.itertuples()
    cases = len(HISTORY_CASES)
    assert (rep.rep, rep.deals) == ("Riley Rep", cases)
    assert rep.complete_share == round((cases - 1) / cases, 4)  # Maple Software
    assert rep.fields_share == round((cases * 6 - 2) / (cases * 6), 4)
    assert metrics.cohorts["deals"].sum() == cases
    assert all(week.weekday() == 0 for week in metrics.cohorts["week"])  # Mondays
    assert len(stored_metrics(store, "salesforce")) == cases
    # A second run replaces the stored rows.
    all_metrics(store, flagged, ["salesforce"], noon(TODAY))
    assert len(stored_metrics(store, "salesforce")) == cases


def test_exported_as_csv_and_parquet(store, flagged, tmp_path):
    load_cases(store, TODAY)
    metrics = all_metrics(store, flagged, ["salesforce"], noon(TODAY))
    files = export_metrics(metrics, tmp_path / "out")
    assert sorted(p.name for p in files) == sorted(
        f"{name}.{ext}"
        for name in ("deal_metrics", "rep_metrics", "cohort_metrics")
        for ext in ("csv", "parquet")
    )
    deals = pd.read_parquet(tmp_path / "out" / "deal_metrics.parquet")
    assert len(deals) == len(HISTORY_CASES)
    csv = pd.read_csv(tmp_path / "out" / "deal_metrics.csv", dtype={"deal_id": str})
    assert set(deals["deal_id"]) == set(csv["deal_id"])
    assert "UTC" in str(deals["won_at"].dtype)
