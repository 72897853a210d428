"""The ``handoff`` command: one subprocess smoke test (the demo, twice), the rest in-process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import date
from pathlib import Path

import pytest

from handoff.cli import _one_run_at_a_time, connection_env, main
from tests.builders import WON_AT, SandboxOrg

HANDOFF = str(Path(sys.executable).with_name("handoff"))
DAY = WON_AT.date().isoformat()


def last_json_line(output: str) -> dict:
    return json.loads(output.strip().splitlines()[-1])


def test_the_demo_runs_then_finds_nothing_new(tmp_path):
    """The one subprocess test: the installed command, as a new user runs it."""

    def demo(*args: str) -> str:
        result = subprocess.run(
            [HANDOFF, "demo", "--workdir", str(tmp_path / "demo"), *args],
            capture_output=True,
            text=True,
            timeout=300,
            env=os.environ,
        )
        assert result.returncode == 0, f"handoff demo failed:\n{result.stdout}\n{result.stderr}"
        return result.stdout

    first = demo("--reset")
    summary = last_json_line(first)
    assert summary["emails_sent"] > 0 and summary["tasks_created"] > 0
    assert summary["failed_steps"] == []
    assert summary["waiting"] == summary["held"], "only mail held for an incomplete document"
    assert "New Closed Won deals:" in first
    assert "State store: sqlite:///" in first
    assert "no primary contact" in first  # the seeded bad-input deals are reported
    assert list((tmp_path / "demo" / "runs").glob("*/*/emails/*.html"))

    again = last_json_line(demo())
    assert (again["emails_sent"], again["tasks_created"]) == (0, 0)


@pytest.fixture
def connections(sandbox, smtp_sink, tmp_path, monkeypatch):
    env = connection_env(sandbox.url, sandbox.token, smtp_sink.host, smtp_sink.port)
    env |= {
        "HANDOFF_STATE_URL": f"sqlite:///{tmp_path / 'state.db'}",
        "HANDOFF_RUN_DIR": str(tmp_path / "runs"),
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env


def handoff(capfd, *args: str) -> tuple[int, str]:
    code = main(list(args))
    out, err = capfd.readouterr()
    return code, out + err


def test_handoff_run_processes_one_day_and_says_which_state_store(
    connections, sandbox, smtp_sink, tmp_path, capfd
):
    SandboxOrg(sandbox.store).won_deal("Run for a day", amount=75000)
    code, output = handoff(capfd, "run", "--source", "salesforce", "--date", DAY)
    assert code == 0, output
    assert output.splitlines()[0] == f"State store: sqlite:///{tmp_path / 'state.db'}"
    summary = last_json_line(output)
    assert (summary["emails_sent"], summary["tasks_created"]) == (1, 2)
    assert len(smtp_sink.messages) == 1
    # deals, the new store's check for earlier tasks, the primary contacts read right before
    # dispatch, describe Task, one write
    assert summary["api_calls"] == 6 == sandbox.stats()["api_calls"]


def test_a_crm_answer_no_retry_can_fix_fails_the_run_at_once_with_its_cause(
    connections, sandbox, smtp_sink, tmp_path, capfd
):
    SandboxOrg(sandbox.store).won_deal("Over the limit")
    sandbox.faults.add(
        method="GET",
        path_contains="/queryAll",
        status=403,
        error_code="REQUEST_LIMIT_EXCEEDED",
        message="TotalRequests Limit exceeded.",
        times=-1,
    )
    code, output = handoff(capfd, "run", "--date", DAY)
    assert code == 1
    assert "extract" in output and "REQUEST_LIMIT_EXCEEDED: TotalRequests Limit exceeded" in output
    assert sandbox.stats()["api_calls"] == 1, "no retry: the limit holds until tomorrow"
    [summary_file] = (tmp_path / "runs").glob("*/*/summary.json")
    summary = json.loads(summary_file.read_text())
    assert [f["step"] for f in summary["failed_steps"]] == ["extract"]
    assert smtp_sink.messages == []


def test_a_missing_templates_folder_fails_the_run_before_anything_is_claimed(
    connections, sandbox, smtp_sink, tmp_path, monkeypatch, capfd
):
    from tests.conftest import TEST_CONFIG

    config = tmp_path / "handoff.toml"
    config.write_text(
        TEST_CONFIG.read_text().replace('"templates/emails"', '"templates/no-such-folder"')
    )
    monkeypatch.setenv("HANDOFF_CONFIG", str(config))
    SandboxOrg(sandbox.store).won_deal("Templates gone")
    code, output = handoff(capfd, "run", "--date", DAY)
    assert code == 2, "a configuration error: the run does not start"
    assert "templates/no-such-folder does not exist" in output
    assert sandbox.stats()["api_calls"] == 0 and smtp_sink.sessions == 0
    assert not (tmp_path / "state.db").exists(), "nothing planned, claimed or failed"


def test_a_new_empty_state_store_refuses_to_onboard_clients_the_crm_shows_we_did(
    connections, sandbox, smtp_sink, tmp_path, monkeypatch, capfd
):
    SandboxOrg(sandbox.store).won_deal("Onboarded once", amount=75000)
    assert handoff(capfd, "run", "--date", DAY)[0] == 0
    assert (len(smtp_sink.messages), sandbox.store.count("Task")) == (1, 2)

    # The configuration now points at another, empty store (a moved file, a changed URL).
    monkeypatch.setenv("HANDOFF_STATE_URL", f"sqlite:///{tmp_path / 'other.db'}")
    code, output = handoff(capfd, "run", "--date", DAY)
    assert code == 1
    assert f"the state store sqlite:///{tmp_path / 'other.db'} has never planned" in output
    assert "handoff init" in output
    assert (len(smtp_sink.messages), sandbox.store.count("Task")) == (1, 2)

    # Declared on purpose: this store starts now, earlier wins belong to the other one.
    code, output = handoff(capfd, "init")
    assert code == 0 and "onboards deals won from" in output
    code, output = handoff(capfd, "run", "--date", DAY)
    assert code == 0, output
    assert (len(smtp_sink.messages), sandbox.store.count("Task")) == (1, 2)


def test_clients_adopted_in_progress_may_carry_our_tasks_recent_wins_may_not(
    connections, sandbox, smtp_sink, monkeypatch, capfd
):
    """Taking over clients in progress (adopting them) is the one case where a new store finds
    our tasks on them: it sends them no day-0 step, so only the wins it would welcome count."""
    from datetime import timedelta

    monkeypatch.setenv("HANDOFF_ADOPT_CLIENTS_IN_PROGRESS", "on")
    org = SandboxOrg(sandbox.store)
    adopted = org.won_deal("In progress", won_at=WON_AT - timedelta(days=20))
    key = f"salesforce:{adopted}:first_visible_win"
    sandbox.store.insert(
        "Task", {"WhatId": adopted, "Subject": "First visible win", "Handoff_Key__c": key,
                 "Status": "Completed", "OwnerId": org.csm},
    )  # fmt: skip
    code, output = handoff(capfd, "run", "--date", DAY)
    assert code == 0, output

    recent = org.won_deal("Welcomed elsewhere")
    sandbox.store.insert(
        "Task", {"WhatId": recent, "Subject": "First CS contact", "OwnerId": org.csm,
                 "Handoff_Key__c": f"salesforce:{recent}:first_cs_contact"},
    )  # fmt: skip
    fresh = sandbox.db_path.parent / "fresh.db"
    monkeypatch.setenv("HANDOFF_STATE_URL", f"sqlite:///{fresh}")
    code, output = handoff(capfd, "run", "--date", DAY)
    assert code == 1 and "has never planned" in output


def test_a_second_run_of_the_same_source_at_once_is_refused_in_plain_words(
    connections, smtp_sink, capfd
):
    from datetime import date

    with _one_run_at_a_time("salesforce", date.fromisoformat(DAY)):
        code, output = handoff(capfd, "run", "--date", DAY)
    assert code == 1, "refused with a message, not a crash inside Airflow"
    assert f"Not started: a salesforce run is already in progress (the run for {DAY}" in output
    assert smtp_sink.sessions == 0


def test_a_dry_run_shows_everything_and_changes_nothing(
    connections, sandbox, smtp_sink, tmp_path, capfd
):
    org = SandboxOrg(sandbox.store)
    big = org.won_deal("Dry run", amount=75000)
    no_contact = org.won_deal("Nobody to write to", contact=False)
    code, output = handoff(capfd, "run", "--date", DAY, "--dry-run")
    assert code == 0, output
    assert "DRY RUN" in output and "nothing was sent, written or recorded" in output
    assert f"[send] email welcome_email for {big} to ada@client.example:" in output
    # Found by the run at the end of the day: due at once (its 4 hours are over).
    assert f"[create] task first_cs_contact for {big} owner {org.csm}, due 2026-11-21" in output
    assert f"[create] task internal_handoff_meeting for {big} owner {org.csm}" in output
    assert f"[skip] email welcome_email for {no_contact}: deal {no_contact}" in output
    assert "no primary contact" in output
    # Nothing happened: no mail, no CRM write, no outbox row, no onboarding started.
    assert smtp_sink.sessions == 0 and sandbox.store.count("Task") == 0
    from handoff.state import StateStore

    store = StateStore(connections["HANDOFF_STATE_URL"])
    assert store.actions() == [] and store.onboarding_rows() == []
    store.dispose()
    # The real run then does exactly what the dry run showed.
    code, output = handoff(capfd, "run", "--date", DAY)
    assert code == 0, output
    assert (len(smtp_sink.messages), sandbox.store.count("Task")) == (1, 4)


def test_handoff_run_at_replays_any_hour(connections, sandbox, smtp_sink, capfd):
    SandboxOrg(sandbox.store).won_deal("Hour by hour", amount=75000)  # won at 15:30
    code, output = handoff(capfd, "run", "--at", WON_AT.replace(hour=15, minute=0).isoformat())
    assert code == 0, output
    assert last_json_line(output)["new_deals"] == 0, "not won yet at 15:00"
    code, output = handoff(capfd, "run", "--at", "2026-11-20T16:00:00+00:00")
    assert code == 0, output
    summary = last_json_line(output)
    assert (summary["new_deals"], summary["emails_sent"], summary["tasks_created"]) == (1, 1, 2)
    with pytest.raises(SystemExit) as refused:
        handoff(capfd, "run", "--at", "2026-11-20T16:00")
    assert refused.value.code == 2 and "has no time zone" in capfd.readouterr().err


def test_handoff_run_source_hubspot_works_like_salesforce(
    connections, sandbox, smtp_sink, capfd, monkeypatch
):
    from handoff.sandbox.hubspot_seed import seed_portal

    seed_portal(sandbox.hubspot_store, seed=7, deals=20, today=date.fromisoformat(DAY))
    with pytest.raises(SystemExit, match=r"is 'hubspot' in \[sources\].enabled\?"):
        main(["run", "--source", "hubspot", "--date", DAY])

    monkeypatch.setenv("HANDOFF_SOURCES", "hubspot")
    code, output = handoff(capfd, "run", "--source", "hubspot", "--date", DAY)
    assert code == 0, output
    summary = last_json_line(output)
    assert summary["emails_sent"] > 0 and summary["tasks_created"] > 0
    assert summary["api_calls"] == sandbox.hubspot_stats()["api_calls"]
    assert sandbox.stats()["api_calls"] == 0, "nothing asked of Salesforce"


def test_handoff_resend_puts_a_failed_email_back_for_the_next_run(
    connections, sandbox, smtp_sink, capfd
):
    deal = SandboxOrg(sandbox.store).won_deal("Bounced at first", amount=75000)
    smtp_sink.reject_recipient("ada@client.example")
    code, output = handoff(capfd, "run", "--date", DAY)
    assert last_json_line(output)["failed"] == 1, output
    code, output = handoff(capfd, "resend", "--source", "salesforce", "--deal", "006nope")
    assert code == 1 and "Nothing to re-send for deal 006nope" in output

    smtp_sink.accept_recipient("ada@client.example")  # the address was fixed
    code, output = handoff(capfd, "resend", "--source", "salesforce", "--deal", deal)
    assert code == 0 and f"Re-send {deal} welcome_email (email)" in output, output
    code, output = handoff(capfd, "run")  # the next run
    assert code == 0, output

    from handoff.state import StateStore

    store = StateStore(connections["HANDOFF_STATE_URL"])
    [welcome] = store.actions(deal_id=deal, step="welcome_email")
    store.dispose()
    assert welcome["status"] == "done", welcome
    # The client got it once (the refused first try still reached the rep's and CSM's copies).
    to_client = [
        m
        for m in smtp_sink.messages
        if m.message["Message-ID"] == welcome["external_id"] and "ada@client.example" in m.rcpt_tos
    ]
    assert len(to_client) == 1
    code, output = handoff(capfd, "resend", "--source", "salesforce", "--deal", deal)
    assert code == 1 and "re-sending would repeat it" in output


def test_handoff_pools_prints_what_airflow_pools_import_reads(capfd):
    code, output = handoff(capfd, "pools")
    pools = json.loads(output)
    assert code == 0
    assert set(pools) == {"handoff_salesforce", "handoff_hubspot", "handoff_smtp"}
    assert all(pool["slots"] >= 1 and pool["description"] for pool in pools.values())
