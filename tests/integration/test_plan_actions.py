"""Planning over the state store: one deal's broken record never holds up the others."""

from __future__ import annotations

from datetime import timedelta

from handoff.pipeline import RunContext, plan_actions
from handoff.state import StateStore
from tests.builders import WON_AT, make_deal


def test_a_deal_that_cannot_be_planned_is_reported_and_the_others_go_on(settings):
    store = StateStore(settings.state.url)
    store.migrate()
    good = make_deal(deal_id="006000000000001AAA")
    broken = make_deal(deal_id="006000000000002AAA").to_record()
    del broken["stage"]  # a snapshot written by an older version, say
    rows = []
    for record in (good.to_record(), broken):
        rows.append(
            {
                "deal_id": record["deal_id"],
                "is_won": True,
                "is_deleted": False,
                "stage": "Closed Won",
                "amount": 1.0,
                "close_date": WON_AT.date(),
                "won_at": WON_AT,
                "modstamp": WON_AT,
                "record": record,
            }
        )
    store.save_deals("salesforce", "deals", rows, WON_AT)
    store.start_onboarding("salesforce", WON_AT - timedelta(days=1), WON_AT + timedelta(1), "r1")
    run = RunContext("r1", WON_AT + timedelta(days=1), "dag/r1/plan")

    result = plan_actions(store, settings, "salesforce", run)

    assert result == {"deals_planned": 1, "deals_unplannable": 1, "actions_planned": 3}
    [issue] = store.issues()
    assert issue["deal_id"] == "006000000000002AAA" and issue["code"] == "plan_error"
    assert "'stage'" in issue["reason"] and "tried again on the next run" in issue["reason"]
    assert store.deals_to_plan("salesforce") == ["006000000000002AAA"], "kept, not lost"
    # The next run tries again and does not repeat the issue.
    plan_actions(store, settings, "salesforce", run)
    assert len(store.issues()) == 1
    store.dispose()
