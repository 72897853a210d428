"""Red flags end to end through each CRM's real client library, against the sandbox.

Every named client of the seed trips exactly the rules it was built to trip (each rule has one
client that must trip it and clients that must not), through the Salesforce and the HubSpot
connector alike. A new flag escalates once (one task in the CRM for the account owner, one note
to the leaders through the SMTP sink), never again while it stays open; when the client shows
up the flag is resolved, and when it returns it escalates again. Clients adopted at install are
taken as found: their flags are recorded, not escalated; what goes wrong later escalates.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from functools import partial

import pytest

from handoff.benchmark import _crm
from handoff.mail import smtp_transport
from handoff.pipeline import steps_in_order
from handoff.sandbox.histories import HISTORY_CASES, SeedActivity
from handoff.sandbox.hubspot_seed import _Client, _engagement, seed_portal
from handoff.sandbox.seed import seed_org
from handoff.state.redflag_store import RedFlagStore

TODAY = date(2026, 12, 4)
NOON = datetime.combine(TODAY, time(12), tzinfo=UTC)
ORBIT = "Orbit Fitness — two no-shows"


@pytest.fixture(params=["salesforce", "hubspot"])
def world(request, full_playbook, sandbox, smtp_sink, state, settings):
    source = request.param
    if source == "salesforce":
        seed_org(sandbox.store, seed=3, deals=0, today=TODAY)
    else:
        seed_portal(sandbox.hubspot_store, seed=3, deals=0, today=TODAY)
    watched = settings.model_copy(
        update={
            "red_flags": settings.red_flags.model_copy(update={"enabled": True}),
            "detection": settings.detection.model_copy(update={"adopt_clients_in_progress": True}),
        }
    )
    crm = _crm(sandbox, watched, source)
    transport = partial(smtp_transport, smtp_sink.host, smtp_sink.port, timeout=10)

    def run(at: datetime) -> dict:
        steps = steps_in_order(crm, state, watched, transport, f"run-{at:%d%H%M}", at)
        return {name: step() for name, step in steps.items()}

    return source, run


def deal_ids(state, source: str) -> dict[str, str]:
    onboarding = {row["deal_id"] for row in state.onboarding_rows(source=source)}
    records = state.deal_records(source, onboarding)
    return {record["name"]: deal_id for deal_id, record in records.items()}


def red_flag_tasks(sandbox, source: str) -> list[str]:
    if source == "salesforce":
        return [
            t["Subject"] for t in sandbox.store.rows("Task") if t["Subject"].startswith("Red flag")
        ]
    tasks = sandbox.hubspot_store.page("tasks", archived=False, after_id=0, limit=100_000)
    return [
        t.properties["hs_task_subject"]
        for t in tasks
        if (t.properties.get("hs_task_subject") or "").startswith("Red flag")
    ]


def notices(sink) -> list[str]:
    return [
        m.message["Subject"] for m in sink.messages if m.message["Subject"].startswith("Red flag")
    ]


def log_meeting(sandbox, source: str, deal_id: str, at: datetime, outcome: str) -> None:
    """A meeting the CSM logs in the CRM (logged half an hour after it started)."""
    logged = at + timedelta(minutes=30)
    if source == "salesforce":
        values = {"Completed": "completed", "No Show": "no_show"}
        sandbox.store.insert(
            "Event",
            {
                "WhatId": deal_id,
                "Subject": "Training",
                "StartDateTime": at,
                "EndDateTime": at + timedelta(hours=1),
                "Outcome__c": next(k for k, v in values.items() if v == outcome),
            },
            modstamp=logged,
        )
        return
    item = SeedActivity("x", "meeting", "outbound", at, outcome, "Training")
    object_type, props = _engagement(item, _Client(int(deal_id), "", at, None, None))
    record = sandbox.hubspot_store.insert(object_type, props, created=logged, updated=logged)
    sandbox.hubspot_store.associate(
        object_type, record.id, "deals", int(deal_id), [("HUBSPOT_DEFINED", 212)]
    )


def test_each_named_client_trips_exactly_its_rules_and_escalates_once(
    world, sandbox, smtp_sink, state
):
    source, run = world
    run(NOON)
    ids = deal_ids(state, source)
    flags = RedFlagStore(state).flag_rows(source=source, status="open")
    by_deal: dict[str, set[str]] = {}
    for flag in flags:
        by_deal.setdefault(flag["deal_id"], set()).add(flag["code"])
    for case in HISTORY_CASES:
        assert by_deal.get(ids[case.deal], set()) == set(case.trips), case.deal
    named = {ids[case.deal] for case in HISTORY_CASES}
    assert {f["deal_id"] for f in flags if f["code"] != "handoff_doc_incomplete"} <= named
    # Clients adopted at install (won before the look-back) are taken as found: listed, not
    # escalated; the recent wins' flags escalate.
    adopted = {r["deal_id"] for r in state.onboarding_rows(source=source) if r["adopted_at"]}
    escalated = [f for f in flags if f["escalated"]]
    assert {f["deal_id"] for f in escalated}.isdisjoint(adopted)
    assert {f["deal_id"] for f in flags if not f["escalated"]} <= adopted
    assert len(escalated) == 3  # Harbor Dental, Cedar Foods, Maple Software
    expected = len(escalated)
    assert len(red_flag_tasks(sandbox, source)) == expected
    assert len(notices(smtp_sink)) == expected

    for hour in (1, 2):  # the same flags stay open: nothing more is written or sent
        run(NOON + timedelta(hours=hour))
    assert len(red_flag_tasks(sandbox, source)) == expected
    assert len(notices(smtp_sink)) == expected
    assert len(RedFlagStore(state).flag_rows(source=source)) == len(flags)


def test_a_flag_resolves_when_the_client_shows_up_and_escalates_again_when_it_returns(
    world, sandbox, smtp_sink, state
):
    source, run = world
    run(NOON)
    orbit = deal_ids(state, source)[ORBIT]
    before = len(red_flag_tasks(sandbox, source))
    log_meeting(sandbox, source, orbit, NOON + timedelta(minutes=30), "completed")
    run(NOON + timedelta(hours=2))
    (episode,) = RedFlagStore(state).flag_rows(deal_id=orbit, code="missed_meetings")
    assert episode["status"] == "resolved" and episode["resolved_at"] is not None

    log_meeting(sandbox, source, orbit, NOON + timedelta(hours=3), "no_show")
    log_meeting(sandbox, source, orbit, NOON + timedelta(hours=4), "no_show")
    run(NOON + timedelta(hours=6))
    episodes = RedFlagStore(state).flag_rows(deal_id=orbit, code="missed_meetings")
    assert [(e["episode"], e["status"]) for e in episodes] == [(1, "resolved"), (2, "open")]
    assert len(red_flag_tasks(sandbox, source)) == before + 1
    # Episode 1 was found at install (not escalated); episode 2 is new: escalated once.
    subjects = notices(smtp_sink)
    assert sum("Missed meetings at Orbit Fitness" in s for s in subjects) == 1
    assert [e["escalated"] for e in episodes] == [False, True]
