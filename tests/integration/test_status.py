"""``handoff status``: what is due, held, failed and flagged, read from the store, per source."""

from __future__ import annotations

import json
from datetime import timedelta

from handoff.cli import main
from handoff.models import ActionStatus
from tests.builders import make_deal, plan_steps


def test_status_counts_what_is_due_held_and_failed_and_changes_nothing(state, settings, capsys):
    deal = make_deal()
    plan_steps(state, deal, "welcome_email", "first_cs_contact")
    later = make_deal(deal_id="006000000000002AAA", won_at=deal.won_at + timedelta(days=3650))
    plan_steps(state, later, "welcome_email")
    held = make_deal(deal_id="006000000000003AAA")
    (key,) = plan_steps(state, held, "timeline_email")
    state.record_plan(
        "salesforce", "run-1", [], hold=[(held.deal_id, "waits for the handoff document")]
    )
    failed = make_deal(deal_id="006000000000004AAA")
    (failed_key,) = plan_steps(state, failed, "first_cs_contact")
    [row] = state.claim("salesforce", "task", "w", limit=1, due_by=failed.won_at)
    state.finish(row.dedupe_key, "w", ActionStatus.FAILED, "run-1", reason="no owner")
    before = state.actions()

    assert main(["status", "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    s = status["sources"]["salesforce"]
    assert s["due_now"] == {"email": 1, "task": 1}
    assert s["scheduled_later"] == 1
    assert s["held"] == {"handoff document incomplete": 1}
    assert [p["reason"] for p in s["failed_or_unconfirmed_last_7_days"]] == ["no owner"]
    assert state.actions() == before  # read-only

    assert main(["status"]) == 0
    text = capsys.readouterr().out
    assert "due now: 1 emails, 1 tasks" in text and "held: 1 (handoff document incomplete)" in text
