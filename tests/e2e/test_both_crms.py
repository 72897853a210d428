"""The same scenario through both CRMs: the same emails and the same tasks.

The Salesforce org and the HubSpot portal are seeded with the same named edge-case clients
(no primary contact, opted out, invalid email, markup and injected names, an inactive CSM, an
existing customer, clients in Tokyo and Los Angeles...). One run of each source's DAG, from the
one DAG definition, must send the same client emails and create the same tasks for them:
nothing in the pipeline may depend on which CRM it reads.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest

from handoff.cli import connection_env, load_dag
from handoff.sandbox.hubspot_seed import EDGE_CASE_DEALS as HUBSPOT_EDGE_DEALS
from handoff.sandbox.hubspot_seed import seed_portal
from handoff.sandbox.seed import EDGE_CASE_DEALS, seed_org
from handoff.state import StateStore

FRIDAY = date(2026, 11, 20)  # the edge deals were won the day before
RUN_AT = datetime(2026, 11, 20, 15, 0, tzinfo=UTC)


@pytest.fixture
def both(sandbox, smtp_sink, tmp_path, monkeypatch):
    monkeypatch.setenv("HANDOFF_SOURCES", "salesforce,hubspot")
    for name, value in connection_env(
        sandbox.url, sandbox.token, smtp_sink.host, smtp_sink.port
    ).items():
        monkeypatch.setenv(name, value)
    url = f"sqlite:///{tmp_path / 'state.db'}"
    monkeypatch.setenv("HANDOFF_STATE_URL", url)
    monkeypatch.setenv("HANDOFF_RUN_DIR", str(tmp_path / "runs"))
    store = StateStore(url)
    store.migrate()
    seed_org(sandbox.store, seed=7, deals=60, today=FRIDAY)
    seed_portal(sandbox.hubspot_store, seed=7, deals=60, today=FRIDAY)
    yield store
    store.dispose()


def edge_addresses(sandbox) -> set[str]:
    """The contacts' addresses of the edge-case deals (the same people in both seeds)."""
    edge = {
        row["Id"] for row in sandbox.store.rows("Opportunity") if row["Name"] in EDGE_CASE_DEALS
    }
    contacts = {
        row["ContactId"]
        for row in sandbox.store.rows("OpportunityContactRole")
        if row["OpportunityId"] in edge
    }
    return {
        row["Email"].lower()
        for row in sandbox.store.rows("Contact")
        if row["Id"] in contacts and row.get("Email") and "@" in row["Email"]
    }


def client_mail(smtp_sink, addresses: set[str], start: int) -> set[tuple[str, str, str]]:
    """(recipient, subject, greeting line) of what the sink received since message ``start``."""
    mails = smtp_sink.messages[start:]
    return {
        (
            m.message["To"].addresses[0].addr_spec.lower(),
            str(m.message["Subject"]),
            m.message.get_body(("plain",)).get_content().splitlines()[0],
        )
        for m in mails
        if m.message["To"].addresses[0].addr_spec.lower() in addresses
    }


# Hours across the 90 days: day 0, the first weekly check-in, the 30-day review, the end.
MOMENTS = [RUN_AT + timedelta(days=days) for days in (0, 7, 28, 91)]


def test_the_same_clients_get_the_same_emails_and_tasks_from_salesforce_and_hubspot(
    both, sandbox, smtp_sink, full_playbook
):
    assert set(HUBSPOT_EDGE_DEALS) == set(EDGE_CASE_DEALS)
    store = both
    edge_accounts = {name.split(" — ")[0] for name in EDGE_CASE_DEALS}
    addresses = edge_addresses(sandbox)
    mail: dict[str, set] = {"salesforce": set(), "hubspot": set()}
    dags = {source: load_dag(source) for source in mail}
    for moment in MOMENTS:
        for source, dag in dags.items():
            start = len(smtp_sink.messages)
            assert dag.test(logical_date=moment).state == "success", (source, moment)
            mail[source] |= client_mail(smtp_sink, addresses, start)
    steps = {}
    for source in mail:
        rows = store.actions(source=source)
        labels = {r["deal_id"]: (r["payload"] or {}).get("deal_label", "") for r in rows}
        steps[source] = {
            (labels[r["deal_id"]].split("'")[1].split(" — ")[0], r["step"], r["status"])
            for r in rows
            if " — " in labels[r["deal_id"]]
        }
        steps[source] = {item for item in steps[source] if item[0] in edge_accounts}
    assert mail["salesforce"], "the edge clients got their emails"
    greetings = {greeting for _, _, greeting in mail["salesforce"]}
    assert {"Dear Frau Dr. Weber,", "Dear 李伟,", "田中様,", "Hi Zoë,"} <= greetings
    assert mail["hubspot"] == mail["salesforce"]
    # Every step of every edge deal over the 90 days ended the same way in both CRMs.
    assert steps["hubspot"] == steps["salesforce"]
    statuses = {status for _, _, status in steps["salesforce"]}
    assert {"done", "skipped"} <= statuses  # held steps were skipped at their limit
    reached = {step for _, step, _ in steps["salesforce"]}
    assert {"welcome_email", "weekly_checkin_day_7", "success_review", "referral_ask_email"} <= (
        reached
    )


def test_a_hubspot_rerun_creates_no_duplicate_task_or_email(both, sandbox, smtp_sink):
    dag = load_dag("hubspot")
    assert dag.test(logical_date=RUN_AT).state == "success"
    sent, tasks = len(smtp_sink.messages), sandbox.hubspot_store.count("tasks")
    assert sent > 0 and tasks > 0
    assert dag.test(logical_date=RUN_AT).state == "success"  # the same hour again
    assert (len(smtp_sink.messages), sandbox.hubspot_store.count("tasks")) == (sent, tasks)
