"""The real DAG, run with Airflow's ``dag.test()`` against the sandbox CRM and the SMTP sink."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest

from handoff.cli import connection_env, load_dag, logical_date_for
from handoff.config import load_settings
from handoff.pipeline import run_folder
from handoff.state import StateStore
from tests.builders import WON_AT, SandboxOrg

DAY = WON_AT.date()


@pytest.fixture
def airflow_connections(sandbox, smtp_sink, tmp_path, monkeypatch):
    env = connection_env(sandbox.url, sandbox.token, smtp_sink.host, smtp_sink.port)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("HANDOFF_STATE_URL", f"sqlite:///{tmp_path / 'state.db'}")
    monkeypatch.setenv("HANDOFF_RUN_DIR", str(tmp_path / "runs"))
    store = StateStore(f"sqlite:///{tmp_path / 'state.db'}")
    store.migrate()  # once per deployment (`handoff db upgrade`), never inside a run
    store.dispose()


@pytest.fixture
def dag(airflow_connections):
    dag = load_dag("salesforce")
    # Airflow's retry, without waiting minutes for it.
    for task in dag.tasks:
        task.retry_delay = timedelta(0)
        task.retry_exponential_backoff = False
    return dag


@pytest.fixture
def org(sandbox):
    return SandboxOrg(sandbox.store)


def run(dag, day=DAY):
    dag_run = dag.test(logical_date=logical_date_for(day))
    settings = load_settings()
    path = run_folder(settings, dag_run.dag_id, dag_run.run_id) / "summary.json"
    summary = json.loads(path.read_text()) if path.exists() else None
    return dag_run, summary


def tasks_in_crm(sandbox, deal_id=None) -> list[dict]:
    rows = [r for r in sandbox.store.rows("Task") if not r["IsDeleted"]]
    return [r for r in rows if deal_id is None or r["WhatId"] == deal_id]


def test_a_closed_won_deal_becomes_a_welcome_email_and_crm_tasks(dag, org, sandbox, smtp_sink):
    big = org.won_deal("Acme platform", amount=250000, account="Acme Corp")
    small = org.won_deal("Small shop", amount=8000, contact={"Email": "owner@small.example"})
    org.won_deal("Ancient win", won_at=WON_AT - timedelta(days=90))
    org.open_deal("Still negotiating", modstamp=WON_AT)

    dag_run, summary = run(dag)

    assert str(dag_run.state) in ("success", "DagRunState.SUCCESS")
    assert {d["deal_id"] for d in summary["new_deals"]} == {big, small}
    assert summary["emails_sent"] == 2 and summary["tasks_created"] == 3
    assert sorted(m.message["To"].addresses[0].addr_spec for m in smtp_sink.messages) == [
        "ada@client.example",
        "owner@small.example",
    ]
    welcome = next(m for m in smtp_sink.messages if "Acme Corp" in m.message["Subject"])
    assert welcome.message["From"].addresses[0].addr_spec == "dana.whitfield@handoff-demo.example"
    assert "INTERNAL" not in welcome.raw.decode("utf-8", "replace")
    subjects = sorted(t["Subject"] for t in tasks_in_crm(sandbox, big))
    assert subjects == [
        "First CS contact (due within 4 h): Acme Corp",
        "Internal handoff meeting (AE + CSM): Acme Corp",
    ]
    [first] = [t for t in tasks_in_crm(sandbox, big) if t["Subject"].startswith("First")]
    assert first["OwnerId"] == org.csm and first["Priority"] == "High"
    assert f"Handoff key: salesforce:{big}:first_cs_contact" in first["Description"]
    assert "INTERNAL-PROMISE" in first["Description"]
    assert [t["Subject"] for t in tasks_in_crm(sandbox, small)] == [
        "First CS contact (due within 4 h): Small shop Ltd"
    ]
    for email in summary["emails"]:
        assert email["preview"].endswith(".html")

    # The same day again: nothing new for the client or the CRM.
    dag_run, again = run(dag)
    assert again["emails_sent"] == 0 and again["tasks_created"] == 0
    assert len(smtp_sink.messages) == 2
    assert len(tasks_in_crm(sandbox)) == 3


def test_bad_input_is_reported_by_deal_and_field_and_the_run_goes_on(dag, org, sandbox, smtp_sink):
    good = org.won_deal("Good deal")
    no_contact = org.won_deal("No contact", contact=False)
    no_email = org.won_deal("No email", contact={"Email": None})
    invalid = org.won_deal("Invalid email", contact={"Email": "bill.lumbergh(at)initech"})
    opted_out = org.won_deal("Opted out", contact={"HasOptedOutOfEmail": True})
    no_owner = org.won_deal("No owner", owner=None)
    no_amount = org.won_deal("No amount", amount=None)
    inactive = org.won_deal("Inactive CSM", csm=org.inactive_csm, amount=1000)
    injected = org.won_deal(
        "Header injection", contact={"FirstName": "Gavin\r\nBcc: attacker@evil.example"}
    )

    dag_run, summary = run(dag)

    assert summary is not None, f"the run ended {dag_run.state}"
    reasons = {(p["deal_id"], p["step"]): p for p in summary["problems"]}

    def reason(deal_id, step):
        problem = reasons[(deal_id, step)]
        assert problem["reason"].startswith(f"deal {deal_id} (")
        return problem

    assert "OpportunityContactRole.IsPrimary" in reason(no_contact, "welcome_email")["reason"]
    assert "Contact.Email" in reason(no_email, "welcome_email")["reason"]
    assert "bill.lumbergh(at)initech" in reason(invalid, "welcome_email")["reason"]
    assert reason(opted_out, "welcome_email")["status"] == "skipped"
    assert "Contact.HasOptedOutOfEmail" in reason(opted_out, "welcome_email")["reason"]
    assert "Amount" in reason(no_amount, "internal_handoff_meeting")["reason"]
    # An inactive CSM counts as missing: the rep gets the task, the client never hears the name.
    [first] = [t for t in tasks_in_crm(sandbox, inactive) if t["Subject"].startswith("First")]
    assert first["OwnerId"] == org.rep
    issues = {(i["deal_id"], i["field"]) for i in summary["issues"]}
    assert (inactive, "Customer_Success_Manager__c") in issues
    assert (no_owner, "OwnerId") in issues and (no_amount, "Amount") in issues
    assert (injected, "Contact.FirstName") in issues
    # Injected header text holds that client's mail for a person to look at.
    [held] = [w for w in summary["waiting"] if w["deal_id"] == injected]
    assert (held["step"], held["status"]) == ("welcome_email", "held")
    assert "Contact.FirstName" in held["reason"] and "corrected" in held["retry_at"]
    reasons_of = {(i["deal_id"], i["field"]): i["reason"] for i in summary["issues"]}
    assert "held until the name is corrected" in reasons_of[(injected, "Contact.FirstName")]
    assert summary["failed"] == 0
    assert not [m for m in smtp_sink.messages if "Gone Away" in m.raw.decode("utf-8", "replace")]

    recipients = sorted(a for m in smtp_sink.messages for a in m.rcpt_tos)
    assert "attacker@evil.example" not in recipients
    to = sorted(m.message["To"].addresses[0].addr_spec for m in smtp_sink.messages)
    # good, no owner, no amount and inactive CSM get their welcome; the injection attempt waits.
    assert len(to) == 4
    assert summary["emails_sent"] == 4
    assert {d["deal_id"] for d in summary["new_deals"]} >= {good, no_owner, injected}


def test_a_smtp_failure_half_way_is_retried_without_a_duplicate(dag, org, smtp_sink):
    deals = [org.won_deal(f"Deal {n}", contact={"Email": f"c{n}@client.example"}) for n in range(3)]
    smtp_sink.fail_next(1, code=421, message="4.3.0 Try again later", after=1)

    dag_run, summary = run(dag)

    assert summary["emails_sent"] == 3, "the retry finished the batch"
    to = sorted(m.message["To"].addresses[0].addr_spec for m in smtp_sink.messages)
    assert to == ["c0@client.example", "c1@client.example", "c2@client.example"]
    # Whichever shard met the 421 went up for retry (dag.test runs mapped shards in no set
    # order); the other shard finished on its first try.
    tries = [ti.try_number for ti in dag_run.get_task_instances() if ti.task_id == "send_emails"]
    assert sorted(tries) == [1, 2]
    assert len(deals) == 3


@pytest.mark.parametrize("status", [500, 503])
def test_a_crm_write_answered_5xx_after_the_commit_is_looked_up_not_resent(
    dag, org, sandbox, status
):
    deal_ids = [org.won_deal(f"Enterprise {n}", amount=500000) for n in range(2)]
    sandbox.faults.add(
        method="POST",
        path_contains="composite/sobjects",
        status=status,
        message="the gateway lost the answer",
        times=2,  # the lookup's re-write would meet it too, if anything were missing
        after_commit=True,
        retry_after=0,
    )

    dag_run, summary = run(dag)

    assert summary["tasks_created"] == 4 and summary["failed_steps"] == []
    for deal_id in deal_ids:
        assert len(tasks_in_crm(sandbox, deal_id)) == 2, "each task exists exactly once"
    state = StateStore(load_settings().state.url)
    reconciled = [r for r in state.actions(kind="task") if r["reason"]]
    assert len(reconciled) == 4
    assert all(
        f"found in the CRM by its key after: Salesforce answered {status}" in r["reason"]
        for r in reconciled
    )
    state.dispose()
    tries = [ti.try_number for ti in dag_run.get_task_instances() if ti.task_id == "write_tasks"]
    assert tries and set(tries) == {1}, "settled inside the attempt, not by Airflow's retry"


def test_a_key_line_pasted_into_the_handoff_document_cannot_cause_a_duplicate(dag, org, sandbox):
    deal_id = org.won_deal("Pasted notes", amount=8000)
    forged = f"Copied from the old task:\nHandoff key: salesforce:{deal_id}:something_else"
    sandbox.store.update("Opportunity", deal_id, {"Handoff_Risks__c": forged}, modstamp=WON_AT)
    sandbox.faults.add(
        method="POST", path_contains="composite/sobjects", status=500, after_commit=True
    )

    dag_run, summary = run(dag)

    [task] = tasks_in_crm(sandbox, deal_id)
    assert summary["tasks_created"] == 1
    assert task["Handoff_Key__c"] == f"salesforce:{deal_id}:first_cs_contact"
    assert "(quoted) Handoff key: salesforce:" in task["Description"]
    assert task["Description"].endswith(f"\nHandoff key: salesforce:{deal_id}:first_cs_contact")


def test_rerunning_a_day_after_a_failed_run_creates_nothing_twice(dag, org, sandbox, smtp_sink):
    org.won_deal("Rerun me", amount=300000)
    for task in dag.tasks:
        task.retries = 0
    smtp_sink.fail_next(1, code=421)

    first, summary = run(dag)
    assert str(first.state) in ("failed", "DagRunState.FAILED")
    # The failed run still has its summary: which step failed, why, and what waits.
    assert [f["step"] for f in summary["failed_steps"]] == ["send_emails[0]"]  # shard 0
    assert "421" in summary["failed_steps"][0]["message"]
    [waiting] = summary["waiting"]
    assert waiting["step"] == "welcome_email" and waiting["retry_at"] == "next run"
    assert "421" in waiting["reason"]
    assert len(tasks_in_crm(sandbox)) == 2  # write_tasks ran beside it

    second, summary = run(dag)
    assert summary["emails_sent"] == 1
    assert len(smtp_sink.messages) == 1
    assert len(tasks_in_crm(sandbox)) == 2


def test_the_crm_token_never_reaches_a_log(tmp_path, smtp_sink, monkeypatch, capfd, caplog):
    from handoff.sandbox.server import SandboxServer

    token = "tok-9f8e7d6c5b4a-never-log-me"
    with SandboxServer(tmp_path / "secret.db", token=token) as server:
        SandboxOrg(server.store).won_deal("Secret keeper")
        env = connection_env(server.url, token, smtp_sink.host, smtp_sink.port)
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        monkeypatch.setenv("HANDOFF_STATE_URL", f"sqlite:///{tmp_path / 'state.db'}")
        monkeypatch.setenv("HANDOFF_RUN_DIR", str(tmp_path / "runs"))
        StateStore(f"sqlite:///{tmp_path / 'state.db'}").migrate()
        caplog.set_level("DEBUG")
        dag_run, summary = run(load_dag("salesforce"))

    assert summary["emails_sent"] == 1, "the run used the token successfully"
    captured = capfd.readouterr()
    assert token not in captured.out and token not in captured.err
    assert token not in caplog.text
    run_files = [p for p in (tmp_path / "runs").rglob("*") if p.is_file()]
    assert run_files and not [p for p in run_files if token in p.read_text(errors="replace")]


def test_an_executive_who_left_never_signs_a_welcome(dag, org, sandbox, smtp_sink):
    deal = org.won_deal("Executive left", amount=20000)
    sandbox.store.update("User", org.executive, {"IsActive": False})
    dag_run, summary = run(dag)
    assert summary is not None, f"the run ended {dag_run.state}"
    [welcome] = smtp_sink.messages
    assert welcome.message["From"].addresses[0].addr_spec != "dana.whitfield@handoff-demo.example"
    assert "Dana Whitfield" not in welcome.message.get_body(("plain",)).get_content()
    codes = {(i["deal_id"], i["field"]) for i in summary["issues"]}
    assert (deal, "[sender].email") in codes


def test_a_failing_red_flag_branch_never_holds_up_the_clients_emails(
    dag, org, sandbox, smtp_sink, monkeypatch
):
    """The org lacks a field the activity query names (Salesforce answers INVALID_FIELD): the
    red-flag steps fail with that cause, the welcome and the tasks still go out."""
    monkeypatch.setenv("HANDOFF_RED_FLAGS", "on")
    org.won_deal("Acme platform", amount=250000, account="Acme Corp")
    sandbox.faults.add(
        method="GET", path_contains="FROM Event", status=400, error_code="INVALID_FIELD",
        message="No such column 'Outcome__c' on entity 'Event'", times=-1,
    )  # fmt: skip
    dag_run, summary = run(dag)
    assert str(dag_run.state) in ("failed", "DagRunState.FAILED"), "the failure is visible"
    assert [f["step"] for f in summary["failed_steps"]] == ["read_activities"]
    assert "Outcome__c" in summary["failed_steps"][0]["message"]
    assert summary["emails_sent"] == 1 and summary["tasks_created"] == 2
    assert len(smtp_sink.messages) == 1
