"""Flag episodes in the state store and their escalation, through the real SMTP sink and CRM.

A new flag escalates once (a task for the account owner, a note to the leaders); a flag that
stays open does not escalate again; one that clears is resolved; one that returns is a new
episode and escalates again. The leaders' note is internal mail: never to a client address.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from functools import partial

import pandas as pd
import pytest

from handoff.crm.base import ACTIVITY_COLUMNS
from handoff.mail import smtp_transport
from handoff.models import ActionKind, ActionStatus
from handoff.pipeline import RunContext, send_emails, write_tasks
from handoff.redflags.steps import evaluate_red_flags
from handoff.state.redflag_store import RedFlagStore
from tests.builders import CONTACT, REP, SandboxOrg, make_deal, save_snapshot

WON = datetime(2026, 11, 2, 15, tzinfo=UTC)  # a Monday, 10:00 in New York


def onboard(store, deal) -> None:
    save_snapshot(store, deal)
    window_end = deal.won_at + timedelta(minutes=1)
    store.start_onboarding(deal.source, deal.won_at - timedelta(days=1), window_end, "run-0")


def meeting(deal_id: str, n: int, at: datetime, outcome: str, subject: str = "Training"):
    return {
        "activity_id": f"00U{n:015d}",
        "deal_id": deal_id,
        "kind": "meeting",
        "direction": "outbound",
        "occurred_at": at,
        "outcome": outcome,
        "subject": subject,
        "snippet": "",
        "owner_id": None,
        "handoff_key": None,
        "is_deleted": False,
        "modstamp": at,
    }


def first_contact(deal_id: str) -> dict:
    at = WON + timedelta(hours=1)
    return {
        **meeting(deal_id, 0, at, None),
        "activity_id": "00T000000000000001",
        "kind": "call",
        "subject": "Welcome call",
        "outcome": "completed",
    }


def save(store, *rows) -> None:
    frame = pd.DataFrame(list(rows), columns=ACTIVITY_COLUMNS)
    for column in ("occurred_at", "modstamp"):
        frame[column] = pd.to_datetime(frame[column], utc=True)
    RedFlagStore(store).save_activities("salesforce", frame)


def evaluate(store, settings, run_id: str, at: datetime) -> dict:
    return evaluate_red_flags(store, settings, "salesforce", run_id, at)


def test_a_flag_escalates_once_resolves_and_escalates_again_when_it_returns(store, flagged):
    deal = make_deal(won_at=WON)
    onboard(store, deal)
    d = deal.deal_id
    save(
        store,
        meeting(d, 1, WON + timedelta(hours=2), "completed", "Kickoff call"),
        meeting(d, 2, WON + timedelta(days=2), "no_show"),
        meeting(d, 3, WON + timedelta(days=3), "no_show"),
    )
    flags = RedFlagStore(store)
    first = evaluate(store, flagged, "run-1", WON + timedelta(days=4))
    assert (first["flags_raised"], first["escalations_planned"]) == (1, 2)
    (flag,) = flags.flag_rows(code="missed_meetings")
    assert (flag["status"], flag["episode"], flag["severity"]) == ("open", 1, "high")
    keys = sorted(r["dedupe_key"] for r in store.actions())
    assert keys == [
        f"salesforce:{d}:redflag_missed_meetings_1",
        f"salesforce:{d}:redflag_missed_meetings_1_notice",
    ]

    for hour in range(1, 4):  # the flag stays open: no new episode, no new escalation
        again = evaluate(store, flagged, f"run-2-{hour}", WON + timedelta(days=4, hours=hour))
        assert (again["flags_raised"], again["escalations_planned"]) == (0, 0)
    assert len(store.actions()) == 2

    save(store, meeting(d, 4, WON + timedelta(days=5), "completed"))  # the client shows up
    cleared = evaluate(store, flagged, "run-3", WON + timedelta(days=5, hours=2))
    assert cleared["flags_resolved"] == 1
    (flag,) = flags.flag_rows(code="missed_meetings")
    assert (flag["status"], flag["resolved_run"]) == ("resolved", "run-3")
    assert "no longer holds" in flag["resolved_reason"]

    save(
        store,
        meeting(d, 5, WON + timedelta(days=8), "no_show"),
        meeting(d, 6, WON + timedelta(days=9), "no_show"),
    )
    back = evaluate(store, flagged, "run-4", WON + timedelta(days=9, hours=3))
    assert back["flags_raised"] == 1
    episodes = [(f["episode"], f["status"]) for f in flags.flag_rows(code="missed_meetings")]
    assert episodes == [(1, "resolved"), (2, "open")]
    assert len(store.actions()) == 4
    assert f"salesforce:{d}:redflag_missed_meetings_2" in {r["dedupe_key"] for r in store.actions()}


def test_a_replayed_earlier_hour_changes_no_flag(store, flagged):
    deal = make_deal(won_at=WON)
    onboard(store, deal)
    d = deal.deal_id
    save(
        store,
        first_contact(d),
        meeting(d, 1, WON + timedelta(days=1), "no_show"),
        meeting(d, 2, WON + timedelta(days=2), "no_show"),
    )
    assert evaluate(store, flagged, "run-1", WON + timedelta(days=3))["flags_raised"] == 1
    # A backfill of the hour before the first no-show would resolve it and raise it again.
    replay = evaluate(store, flagged, "backfill", WON + timedelta(days=1, hours=-1))
    assert replay.get("replay") and replay["flags_resolved"] == 0
    assert [f["status"] for f in RedFlagStore(store).flag_rows()] == ["open"]
    assert len(store.actions()) == 2


def test_two_runs_raising_the_same_episode_escalate_once(store, flagged):
    deal = make_deal(won_at=WON)
    onboard(store, deal)
    at = WON + timedelta(days=3)
    from handoff.redflags.escalation import escalation_actions
    from handoff.state.redflag_store import NewFlag

    flag = {"code": "no_kickoff", "severity": "high", "reason": "no kickoff"}
    actions = escalation_actions("salesforce", deal.deal_id, deal.label(), flag, 1, at)
    raised = [(NewFlag(deal.deal_id, "no_kickoff", "high", "no kickoff", actions), 1)]
    flags = RedFlagStore(store)
    assert flags.apply("salesforce", "run-a", at, raised, [], []) == (1, 2)
    assert flags.apply("salesforce", "run-b", at, raised, [], []) == (0, 0)
    assert len(flags.flag_rows()) == 1 and len(store.actions()) == 2


def test_a_deal_that_leaves_onboarding_has_its_flags_resolved(store, flagged):
    deal = make_deal(won_at=WON)
    onboard(store, deal)
    evaluate(store, flagged, "run-1", WON + timedelta(days=6))
    assert {f["code"] for f in RedFlagStore(store).flag_rows(status="open")} == {
        "no_first_contact",
        "no_kickoff",
    }
    lost = replace(deal, stage="Closed Lost", is_won=False)
    save_snapshot(store, lost, WON + timedelta(days=6, hours=1))
    store.stop_onboarding_of_lost_deals("salesforce", "run-2", None)
    result = evaluate(store, flagged, "run-2", WON + timedelta(days=6, hours=2))
    assert result["flags_resolved"] == 2
    reasons = {f["resolved_reason"] for f in RedFlagStore(store).flag_rows()}
    assert reasons == {"the deal left onboarding or its 90 days ended"}


# -- escalation, through the sandbox CRM and the SMTP sink ---------------------------------------


@pytest.fixture
def escalated(state, flagged, sandbox):
    """A real deal in the sandbox whose client has not been contacted for 6 days."""
    org = SandboxOrg(sandbox.store)
    deal_id = org.won_deal("Harbor Dental", won_at=WON, account_owner=org.account_manager)
    deal = make_deal(
        deal_id=deal_id,
        won_at=WON,
        owner=replace(REP, id=org.rep),
        csm=replace(make_deal().csm, id=org.csm),
        account_owner=replace(REP, id=org.account_manager, name="Morgan Accounts"),
        primary_contact=replace(CONTACT, id=None, email="irene@harbor-dental.example"),
    )
    onboard(state, deal)
    at = WON + timedelta(days=6)
    evaluate(state, flagged, "run-1", at)
    return org, deal, RunContext("run-1", at, "dag/run-1/dispatch")


def test_the_account_owner_gets_one_high_priority_task_per_new_flag(
    crm, state, flagged, sandbox, escalated
):
    org, deal, run = escalated
    counts = write_tasks(crm, state, flagged, run)
    assert counts["tasks_created"] == 2  # no_first_contact and no_kickoff
    tasks = [t for t in sandbox.store.rows("Task") if t["WhatId"] == deal.deal_id]
    assert {t["OwnerId"] for t in tasks} == {org.account_manager}
    assert {t["Priority"] for t in tasks} == {"High"}
    subjects = sorted(t["Subject"] for t in tasks)
    assert subjects == [
        "Red flag: No first contact from customer success: Analytical Engines Ltd",
        "Red flag: No kickoff: Analytical Engines Ltd",
    ]
    assert all("INTERNAL-PROMISE" in t["Description"] for t in tasks)  # context for the owner
    # Later runs of the same open flags write nothing more.
    evaluate(state, flagged, "run-2", run.window_end + timedelta(hours=1))
    later = RunContext("run-2", run.window_end + timedelta(hours=1), "dag/run-2/dispatch")
    assert write_tasks(crm, state, flagged, later)["tasks_created"] == 0
    assert len([t for t in sandbox.store.rows("Task") if t["WhatId"] == deal.deal_id]) == 2


def test_the_leaders_note_is_internal_mail_to_our_own_domains(state, flagged, smtp_sink, escalated):
    _, deal, run = escalated
    transport = partial(smtp_transport, smtp_sink.host, smtp_sink.port, timeout=10)
    counts = send_emails(state, flagged, transport, run, source="salesforce")
    assert counts["emails_sent"] == 2
    for mail in smtp_sink.messages:
        recipients = {a.addr_spec for h in ("To", "Cc") for a in mail.message[h].addresses}
        assert recipients == {
            "cs-leaders@handoff-demo.example",
            "sales-leaders@handoff-demo.example",
        }
        assert set(mail.rcpt_tos) == recipients
        assert mail.message["Subject"].startswith("Red flag (high): ")
        text = mail.message.get_body(("plain",)).get_content()
        assert "INTERNAL-PROMISE" in text  # internal mail may quote the handoff document
        assert "harbor-dental.example" not in mail.raw.decode()


@pytest.mark.parametrize(
    "notify, refused",
    [
        (["irene@harbor-dental.example"], "the client's own address or domain"),
        (["boss@harbor-dental.example"], "the client's own address or domain"),
        (["friend@gmail.example"], "not one of our domains"),
    ],
    ids=["the client", "the client's domain", "outside our domains"],
)
def test_a_note_never_goes_to_a_client_or_outside_address(
    state, flagged, smtp_sink, escalated, notify, refused
):
    _, _, run = escalated
    risky = flagged.model_copy(
        update={"red_flags": flagged.red_flags.model_copy(update={"notify": notify})}
    )
    transport = partial(smtp_transport, smtp_sink.host, smtp_sink.port, timeout=10)
    counts = send_emails(state, risky, transport, run, source="salesforce")
    assert counts["emails_sent"] == 0 and smtp_sink.messages == []
    notices = [r for r in state.actions() if r["kind"] == ActionKind.EMAIL]
    assert {r["status"] for r in notices} == {ActionStatus.SKIPPED}
    assert all(refused in r["reason"] and notify[0] in r["reason"] for r in notices)


def test_the_subject_of_each_sent_email_is_kept_for_the_rules(store, settings, smtp_sink):
    """On SQLite and PostgreSQL alike: what the SMTP server accepted, by deal and subject."""
    from tests.builders import plan_steps

    deal = make_deal()
    plan_steps(store, deal, "welcome_email")
    transport = partial(smtp_transport, smtp_sink.host, smtp_sink.port, timeout=10)
    run = RunContext("run-1", datetime(2100, 1, 1, tzinfo=UTC), "dag/run-1/send_emails")
    assert send_emails(store, settings, transport, run, source="salesforce")["emails_sent"] == 1
    sent = RedFlagStore(store).sent_subjects("salesforce", [deal.deal_id])
    (mail,) = smtp_sink.messages
    assert sent.to_dict("records") == [
        {"deal_id": deal.deal_id, "subject": mail.message["Subject"]}
    ]
