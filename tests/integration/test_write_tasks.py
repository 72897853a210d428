"""Writing the planned CRM tasks through the real client: unknown outcomes are settled by lookup."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace
from datetime import UTC, datetime

import pytest

from handoff.crm.base import WriteOutcomeUnknown
from handoff.models import ActionKind, ActionStatus, Deal
from handoff.pipeline import RunContext, write_tasks
from handoff.planning import task_from_payload
from tests.builders import CONTACT, SandboxOrg, day_zero, make_deal, plan_steps

RUN = RunContext("run-1", datetime(2026, 11, 21, tzinfo=UTC), "dag/run-1/write_tasks")

# Claims take rows due by the end of the run's window: here, any row planned so far.
DUE = datetime(2100, 1, 1, tzinfo=UTC)


@pytest.fixture
def planned(state, settings, sandbox):
    """Three real deals in the sandbox, their tasks planned in the store (6 tasks)."""
    org = SandboxOrg(sandbox.store)
    for n in range(3):
        deal_id = org.won_deal(f"Deal {n}")
        deal = make_deal(
            deal_id=deal_id,
            owner=replace(make_deal().owner, id=org.rep),
            csm=replace(make_deal().csm, id=org.csm),
            primary_contact=replace(CONTACT, id=None),
        )
        plan_steps(state, deal, "first_cs_contact", "internal_handoff_meeting")
    return [r for r in state.actions() if r["kind"] == ActionKind.TASK]


def keys_in_crm(sandbox) -> Counter:
    return Counter(r["Handoff_Key__c"] for r in sandbox.store.rows("Task") if not r["IsDeleted"])


def test_a_503_before_the_commit_is_looked_up_then_written_once(
    crm, state, settings, sandbox, planned
):
    sandbox.faults.add(method="POST", path_contains="composite/sobjects", status=503, times=1)
    counts = write_tasks(crm, state, settings, RUN)
    assert (counts["tasks_created"], counts["tasks_reconciled"]) == (6, 0)
    assert counts["api_calls"] == 4  # describe, the 503, the lookup, the write of the missing
    assert sorted(keys_in_crm(sandbox).values()) == [1] * 6


def test_answers_lost_again_and_again_stay_in_flight_for_the_retry(
    crm, state, settings, sandbox, planned
):
    rule = sandbox.faults.add(
        method="POST", path_contains="composite/sobjects", status=503, times=-1
    )
    with pytest.raises(WriteOutcomeUnknown, match="after 3 lookups"):
        write_tasks(crm, state, settings, RUN)
    assert {(r["status"], r["attempted_at"] is not None) for r in state.actions()} == {
        ("in_flight", True)
    }
    assert rule.hits == 4 and keys_in_crm(sandbox) == Counter()

    sandbox.faults.clear()
    counts = write_tasks(crm, state, settings, RUN)  # Airflow's retry of the same task
    assert counts["tasks_created"] == 6
    assert sorted(keys_in_crm(sandbox).values()) == [1] * 6
    assert {r["status"] for r in state.actions()} == {ActionStatus.DONE}


def test_a_dead_attempt_that_wrote_half_a_batch_gets_only_the_other_half(
    crm, state, settings, sandbox, planned
):
    dead = "dag/run-0/write_tasks"
    rows = state.claim("salesforce", ActionKind.TASK, dead, limit=200, due_by=DUE)
    state.mark_attempted([r.dedupe_key for r in rows], dead)
    records = state.deal_records("salesforce", [r.deal_id for r in rows])
    deals = {deal_id: Deal.from_record(record) for deal_id, record in records.items()}
    written = [day_zero(deals[r.deal_id], settings)[0][r.step] for r in rows[:3]]
    crm.create_tasks([task_from_payload(w.payload) for w in written])  # then it died

    expired = settings.model_copy(
        update={"dispatch": settings.dispatch.model_copy(update={"lease_seconds": 1})}
    )
    with state.engine.begin() as conn:  # the dead attempt's lease is long over
        from sqlalchemy import text

        conn.execute(text("UPDATE handoff_outbox SET claimed_at = '2026-01-01 00:00:00'"))
    counts = write_tasks(crm, state, expired, RUN)

    assert (counts["tasks_reconciled"], counts["tasks_created"]) == (3, 3)
    assert sorted(keys_in_crm(sandbox).values()) == [1] * 6


def test_a_step_whose_owner_is_nobody_fails_with_its_reason_and_the_others_go_on(
    crm, state, settings, sandbox, full_playbook
):
    from handoff.config import load_settings

    settings = load_settings()  # the whole playbook: the leader's note is a step
    nobody = settings.model_copy(
        update={"sender": settings.sender.model_copy(update={"email": "cco@nowhere.example"})}
    )
    org = SandboxOrg(sandbox.store)
    deal = make_deal(
        deal_id=org.won_deal("Leaderless"),
        owner=replace(make_deal().owner, id=org.rep),
        csm=replace(make_deal().csm, id=org.csm),
        primary_contact=replace(CONTACT, id=None),
    )
    plan_steps(state, deal, "leader_personal_note", "first_cs_contact")
    counts = write_tasks(crm, state, nobody, RUN)
    assert (counts["tasks_created"], counts["tasks_failed"]) == (1, 1)
    [note] = state.actions(step="leader_personal_note")
    assert note["status"] == ActionStatus.FAILED
    assert note["reason"].startswith(f"deal {deal.deal_id} (")
    assert "[sender].email: no active user is the configured executive" in note["reason"]
    assert state.actions(step="first_cs_contact")[0]["status"] == ActionStatus.DONE
