"""One client's whole 90 days, through the real DAG (``dag.test()``) over a moving clock.

The clock moves the way the hourly schedule does: each run's data interval ends on the hour.
The test runs the hours at which something falls due (the first hourly run after each step's
time), an hour in between with nothing due, and replays of earlier hours, and asserts the exact
emails and tasks, with their dates and owners, against the framework's table (the tests' copy of
the 90-day playbook). Every hour in between would be the same kind of quiet run, so they are
left out to keep the suite fast.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta

import pytest

from handoff.cli import connection_env, load_dag
from handoff.config import load_settings
from handoff.pipeline import run_folder
from handoff.state import StateStore
from tests.builders import WON_AT, SandboxOrg

# The hour after the win, and the first hourly run after each later step's time.
FIRST_RUN = WON_AT.replace(minute=0) + timedelta(hours=1)


def hourly_run_after(days: float) -> datetime:
    moment = WON_AT + timedelta(days=days)
    return moment.replace(minute=0, second=0) + timedelta(hours=1)


# (day of the step, step, kind, owner role or "client"): the framework's table.
EXPECTED = [
    (0, "welcome_email", "email", "client"),
    (0, "first_cs_contact", "task", "csm"),
    (0, "internal_handoff_meeting", "task", "csm"),
    (0, "leader_personal_note", "task", "executive"),
    (1, "congratulations_call", "task", "ae"),
    (1, "timeline_email", "email", "client"),
    (2, "kickoff_prep_email", "email", "client"),
    (2, "kickoff_call", "task", "csm"),
    *[(d, f"weekly_checkin_day_{d}", "email", "client") for d in range(7, 57, 7)],
    (12, "first_visible_win", "task", "csm"),
    (27, "success_review", "task", "csm"),
    (27, "success_review_email", "email", "client"),
    (30, "executive_sponsor_checkin", "task", "executive"),
    (60, "expansion_review", "task", "account_owner"),
    (87, "formal_review", "task", "csm"),
    (87, "formal_review_email", "email", "client"),
    (90, "referral_ask_email", "email", "client"),
]
TASK_DUE_DAYS = {
    "first_cs_contact": 0,  # within 4 h of 15:30: the same day
    "internal_handoff_meeting": 2,
    "leader_personal_note": 2,
    "congratulations_call": 2,
    "kickoff_call": 5,
    "first_visible_win": 14,
    "success_review": 30,
    "executive_sponsor_checkin": 33,
    "expansion_review": 65,
    "formal_review": 90,
}


@pytest.fixture
def dag(sandbox, smtp_sink, tmp_path, monkeypatch, full_playbook):
    for name, value in connection_env(
        sandbox.url, sandbox.token, smtp_sink.host, smtp_sink.port
    ).items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("HANDOFF_STATE_URL", f"sqlite:///{tmp_path / 'state.db'}")
    monkeypatch.setenv("HANDOFF_RUN_DIR", str(tmp_path / "runs"))
    StateStore(f"sqlite:///{tmp_path / 'state.db'}").migrate()
    dag = load_dag("salesforce")
    for task in dag.tasks:
        task.retry_delay = timedelta(0)
    return dag


def run_at(dag, at: datetime) -> dict:
    dag_run = dag.test(logical_date=at)
    path = run_folder(load_settings(), dag_run.dag_id, dag_run.run_id) / "summary.json"
    summary = json.loads(path.read_text())
    assert summary["failed_steps"] == [], summary["failed_steps"]
    return summary


def test_one_client_through_days_0_to_90(dag, sandbox, smtp_sink):
    org = SandboxOrg(sandbox.store)
    deal_id = org.won_deal(
        "Acme platform", amount=250000, account="Acme Corp", account_owner=org.account_manager
    )
    owners = {
        "csm": org.csm,
        "ae": org.rep,
        "executive": org.executive,
        "account_owner": org.account_manager,
    }

    moments = sorted({FIRST_RUN, *(hourly_run_after(day) for day, *_ in EXPECTED)})
    sent_by_run: dict[str, datetime] = {}
    for at in moments:
        summary = run_at(dag, at)
        for item in summary["emails"] + summary["tasks"]:
            sent_by_run[item["step"]] = at
        assert summary["problems"] == [], summary["problems"]
        if at == FIRST_RUN:
            # An hour later nothing is due: one query to the CRM, nothing planned or sent.
            quiet = run_at(dag, at + timedelta(hours=1))
            assert (quiet["emails_sent"], quiet["tasks_created"], quiet["api_calls"]) == (0, 0, 1)

    # Each step went out in the first hourly run after its time, none earlier, none twice.
    expected_runs = {step: hourly_run_after(day) for day, step, *_ in EXPECTED}
    expected_runs["referral_ask_email"] = hourly_run_after(90)
    assert sent_by_run == expected_runs

    store = StateStore(load_settings().state.url)
    rows = {r["step"]: r for r in store.actions(source="salesforce")}
    store.dispose()
    assert sorted(rows) == sorted(step for _, step, *_ in EXPECTED)
    assert {r["status"] for r in rows.values()} == {"done"}

    emails = [m.message for m in smtp_sink.messages]
    assert [m["To"].addresses[0].addr_spec for m in emails] == ["ada@client.example"] * 14
    assert len({m["Message-ID"] for m in emails}) == 14
    assert "INTERNAL" not in "".join(m.as_string() for m in emails)

    tasks = {
        t["Handoff_Key__c"].rsplit(":", 1)[-1]: t
        for t in sandbox.store.rows("Task")
        if not t["IsDeleted"]
    }
    assert len(tasks) == 10
    for _day, step, kind, role in EXPECTED:
        if kind != "task":
            continue
        task = tasks[step]
        assert task["WhatId"] == deal_id
        assert task["OwnerId"] == owners[role], step
        due = (WON_AT + timedelta(days=TASK_DUE_DAYS[step])).date().isoformat()
        assert task["ActivityDate"] == due, step
    note = tasks["leader_personal_note"]["Description"]
    assert "INTERNAL-GOALS" in note and "INTERNAL-PROMISE" in note, "the client's context"

    # Replaying any earlier hour adds nothing.
    before = (len(smtp_sink.messages), len(tasks))
    for at in (FIRST_RUN, hourly_run_after(2), hourly_run_after(30)):
        replay = run_at(dag, at)
        assert (replay["emails_sent"], replay["tasks_created"]) == (0, 0)
    after = [t for t in sandbox.store.rows("Task") if not t["IsDeleted"]]
    assert (len(smtp_sink.messages), len(after)) == before
