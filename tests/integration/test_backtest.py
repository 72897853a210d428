"""``handoff backtest``: rules and playbook replayed over stored history; nothing is written."""

from __future__ import annotations

import json
from datetime import date, timedelta

import pandas as pd

from handoff.cli import main
from handoff.reporting.backtest import run_backtest
from handoff.sandbox.histories import HISTORY_CASES
from tests.redflag_scenario import load_cases, noon

TODAY = date(2026, 12, 4)


def test_each_named_client_fires_its_flags_on_the_day_it_would_have(state, settings):
    ids = load_cases(state, TODAY)
    outbox_before = state.actions()
    result = run_backtest(state, settings, "salesforce", noon(TODAY), days=10)
    fired = result.flags.groupby("deal_id")["code"].agg(set).to_dict()
    for case in HISTORY_CASES:
        assert fired.get(ids[case.deal], set()) == set(case.trips), case.deal
    # No kickoff fires the first daily evaluation after day 5 of Quarry Analytics' onboarding.
    quarry = result.flags[result.flags["deal_id"] == ids["Quarry Analytics — kickoff cancelled"]]
    won = next(c for c in HISTORY_CASES if c.deal.startswith("Quarry")).won_at(TODAY)
    fired_at = quarry["fired_at"].iloc[0]
    assert won + timedelta(days=5) < fired_at <= won + timedelta(days=6)
    # Nothing was written: no flag, no outbox row.
    assert state.actions() == outbox_before
    from handoff.state.redflag_store import RedFlagStore

    assert RedFlagStore(state).flag_rows() == []


def test_a_threshold_changed_in_the_settings_changes_the_replay(state, settings):
    load_cases(state, TODAY)
    strict = settings.model_copy(
        update={"red_flags": settings.red_flags.model_copy(update={"quiet_days": 7})}
    )
    base = run_backtest(state, settings, "salesforce", noon(TODAY), days=3)
    tuned = run_backtest(state, strict, "salesforce", noon(TODAY), days=3)
    quiet = lambda r: (r.flags["code"] == "gone_quiet").sum()  # noqa: E731
    assert quiet(tuned) > quiet(base)


def test_the_playbook_steps_that_would_have_fallen_due(state, settings):
    load_cases(state, TODAY)
    every = timedelta(days=41)  # the steps do not depend on how often the rules are replayed
    result = run_backtest(state, settings, "salesforce", noon(TODAY), days=41, every=every)
    steps = result.steps
    assert set(steps["kind"]) == {"email", "task"}
    assert (steps["due_at"] <= pd.Timestamp(noon(TODAY))).all()
    welcome = steps[steps["step"] == "welcome_email"]
    assert len(welcome) == len(HISTORY_CASES) and set(welcome["to"]) == {"client"}


def test_the_cli_reports_and_writes_files(state, settings, tmp_path, capsys):
    load_cases(state, TODAY)
    out = tmp_path / "bt"
    code = main(["backtest", "--days", "10", "--at", noon(TODAY).isoformat(), "--out", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    summary = json.loads(printed.strip().splitlines()[-1])
    assert summary["flags_fired"] == sum(len(c.trips) for c in HISTORY_CASES)
    assert "No kickoff: 1 times, 1 deals" in printed
    assert (out / "flags.csv").exists() and (out / "steps.csv").exists()
