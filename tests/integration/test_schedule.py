"""The step scheduler over the state store: which playbook steps fall due, once, and when not.

Deal snapshots are stored as extraction would store them; detection and planning are the
pipeline's own steps (detection asks the sandbox CRM once, on a fresh store). Dispatch is not
run here: the outbox rows and their statuses are what is asserted.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta

import pytest

from handoff.config import load_settings
from handoff.models import ActionStatus
from handoff.pipeline import RunContext, detect_new_wins, plan_steps
from tests.builders import HANDOFF_DOC, WON_AT, make_deal, save_snapshot

SF = "salesforce"
DAY0 = ["internal_handoff_meeting", "first_cs_contact", "leader_personal_note", "welcome_email"]


@pytest.fixture
def settings(full_playbook, tmp_path, monkeypatch):
    monkeypatch.setenv("HANDOFF_STATE_URL", f"sqlite:///{tmp_path / 'state.db'}")
    monkeypatch.setenv("HANDOFF_RUN_DIR", str(tmp_path / "runs"))
    return load_settings()


class Timeline:
    """Runs detection and planning at chosen moments, as the hourly DAG would."""

    def __init__(self, store, settings, crm) -> None:
        self.store, self.settings, self.crm = store, settings, crm
        self.runs = 0

    def save(self, deal, at: datetime) -> None:
        save_snapshot(self.store, deal, modstamp=at)

    def run(self, at: datetime) -> dict:
        self.runs += 1
        run = RunContext(f"run-{self.runs}", at, f"dag/run-{self.runs}/plan")
        detect_new_wins(self.store, self.settings, self.crm, run)
        return plan_steps(self.store, self.settings, SF, run)

    def steps(self, deal_id=None) -> dict[str, str]:
        rows = self.store.actions(source=SF)
        return {r["step"]: r["status"] for r in rows if deal_id in (None, r["deal_id"])}

    def row(self, step: str, deal_id=None) -> dict:
        return next(
            r for r in self.store.actions(source=SF, step=step) if deal_id in (None, r["deal_id"])
        )


@pytest.fixture
def timeline(state, settings, crm):
    return Timeline(state, settings, crm)


def hours(n: float) -> timedelta:
    return timedelta(hours=n)


def mark_done(timeline) -> None:
    """What dispatch does to the waiting rows (tested on its own elsewhere)."""
    from sqlalchemy import text

    with timeline.store.engine.begin() as conn:
        conn.execute(text("UPDATE handoff_outbox SET status = 'done' WHERE status = 'pending'"))


def test_day_zero_plans_the_first_steps_once_and_nothing_early(timeline):
    timeline.save(make_deal(), WON_AT)
    counts = timeline.run(WON_AT + hours(1))
    assert sorted(timeline.steps()) == sorted(DAY0)
    assert set(timeline.steps().values()) == {ActionStatus.PENDING}
    assert counts["steps_recorded"] == 4
    welcome = timeline.row("welcome_email")
    assert welcome["due_at"] == WON_AT and welcome["not_after"] == WON_AT + timedelta(days=2)
    # The same hour again, and the next one: nothing new until day 1.
    assert timeline.run(WON_AT + hours(1))["steps_recorded"] == 0
    assert timeline.run(WON_AT + hours(2))["deals_planned"] == 0, "nothing due: not even looked at"
    timeline.run(WON_AT + timedelta(days=1))
    assert {"congratulations_call", "timeline_email"} <= set(timeline.steps())


def test_conditions_follow_the_amount_at_the_time_the_step_falls_due(timeline):
    small = make_deal(deal_id="006000000000009AAA", amount=8000.0)
    timeline.save(small, WON_AT)
    timeline.run(WON_AT + hours(1))
    assert "internal_handoff_meeting" not in timeline.steps()
    # The amount crosses the enterprise threshold on day 10: day 0 stays as it was, day 30
    # follows the new amount.
    timeline.save(replace(small, amount=150000.0), WON_AT + timedelta(days=10))
    timeline.run(WON_AT + timedelta(days=10))
    meeting = timeline.row("internal_handoff_meeting")
    assert meeting["status"] == ActionStatus.SKIPPED, "applies now, but its time has passed"
    assert "past its lateness limit" in meeting["reason"]
    timeline.run(WON_AT + timedelta(days=30, hours=1))
    assert timeline.steps()["executive_sponsor_checkin"] == ActionStatus.PENDING


def test_an_amount_that_drops_below_the_threshold_stops_later_conditional_steps(timeline):
    big = make_deal(amount=250000.0)
    timeline.save(big, WON_AT)
    timeline.run(WON_AT + hours(1))
    assert timeline.steps()["internal_handoff_meeting"] == ActionStatus.PENDING
    mark_done(timeline)  # day 0 went out
    timeline.save(replace(big, amount=20000.0), WON_AT + timedelta(days=5))
    timeline.run(WON_AT + timedelta(days=30, hours=1))
    steps = timeline.steps()
    assert steps["internal_handoff_meeting"] == ActionStatus.DONE, "what went out stays"
    assert "executive_sponsor_checkin" not in steps


def test_without_an_amount_amount_conditions_are_skipped_with_the_reason(timeline):
    timeline.save(make_deal(amount=None), WON_AT)
    timeline.run(WON_AT + hours(1))
    meeting = timeline.row("internal_handoff_meeting")
    assert meeting["status"] == ActionStatus.SKIPPED
    assert "Amount: the deal has no amount" in meeting["reason"]
    assert [i["code"] for i in timeline.store.issues()] == ["missing_amount"]


def test_an_incomplete_handoff_document_holds_client_mail_until_it_is_complete(timeline):
    doc = {**HANDOFF_DOC, "promises": None, "risks": "  "}
    deal = make_deal(handoff_doc=doc)
    timeline.save(deal, WON_AT)
    timeline.run(WON_AT + hours(1))
    steps = timeline.steps()
    assert steps["welcome_email"] == ActionStatus.HELD
    held = timeline.row("welcome_email")["reason"]
    assert "Promises and commitments (Handoff_Promises__c)" in held
    assert "Red flags and risks (Handoff_Risks__c)" in held
    assert steps["complete_handoff_document"] == ActionStatus.PENDING, "the rep's task"
    assert steps["first_cs_contact"] == ActionStatus.PENDING, "internal tasks still go out"
    # Day 1: the timeline email is held too; the rep completes the document that afternoon.
    timeline.run(WON_AT + timedelta(days=1))
    assert timeline.steps()["timeline_email"] == ActionStatus.HELD
    timeline.save(replace(deal, handoff_doc=dict(HANDOFF_DOC)), WON_AT + timedelta(days=1, hours=2))
    counts = timeline.run(WON_AT + timedelta(days=1, hours=3))
    assert counts["deals_released"] == 1
    steps = timeline.steps()
    assert steps["welcome_email"] == steps["timeline_email"] == ActionStatus.PENDING
    assert len(timeline.store.actions(step="complete_handoff_document")) == 1, "never twice"


def test_a_step_held_past_its_lateness_limit_is_skipped_not_sent_late(timeline):
    timeline.save(make_deal(handoff_doc={**HANDOFF_DOC, "goals": None}), WON_AT)
    timeline.run(WON_AT + hours(1))
    timeline.run(WON_AT + timedelta(days=2, hours=1))  # the welcome's limit is 2 days
    welcome = timeline.row("welcome_email")
    assert welcome["status"] == ActionStatus.SKIPPED
    assert "held: the handoff document was incomplete" in welcome["reason"]
    assert "not sent late" in welcome["reason"]


def test_a_win_found_late_gets_only_the_steps_still_sensible(timeline):
    """A paused DAG: the first run after the install sees a win, then nothing for 20 days."""
    timeline.run(WON_AT - hours(1))  # the install's first run (before the win)
    timeline.save(make_deal(), WON_AT)
    counts = timeline.run(WON_AT + timedelta(days=13))
    steps = timeline.steps()
    pending = sorted(s for s, status in steps.items() if status == ActionStatus.PENDING)
    assert pending == ["first_visible_win"], "due on day 12, still within its 3 days"
    assert steps["welcome_email"] == steps["weekly_checkin_day_7"] == ActionStatus.SKIPPED
    assert counts["steps_skipped"] == len(steps) - 1
    assert "found 13d later" in timeline.row("welcome_email")["reason"]
    timeline.run(WON_AT + timedelta(days=14, hours=1))
    assert timeline.steps()["weekly_checkin_day_14"] == ActionStatus.PENDING


def test_a_deal_reopened_and_won_twice_continues_without_repeating(timeline):
    deal = make_deal()
    reopened = replace(deal, stage="Negotiation", is_won=False)
    timeline.save(deal, WON_AT)
    timeline.run(WON_AT + hours(1))
    mark_done(timeline)  # day 0 went out
    day0 = {r["step"]: r["id"] for r in timeline.store.actions()}
    timeline.run(WON_AT + timedelta(days=1, hours=1))  # day 1 is planned, not sent yet
    # Re-opened that afternoon: the waiting steps are cancelled, with the reason.
    timeline.save(reopened, WON_AT + timedelta(days=1, hours=2))
    timeline.run(WON_AT + timedelta(days=1, hours=3))
    assert timeline.steps()["timeline_email"] == ActionStatus.CANCELLED
    assert "stopped: the deal left Closed Won" in timeline.row("timeline_email")["reason"]
    timeline.run(WON_AT + timedelta(days=2, hours=1))
    assert "kickoff_prep_email" not in timeline.steps(), "a stopped deal plans nothing"
    # Won again the next morning: the cancelled steps still within their limits come back.
    timeline.save(deal, WON_AT + timedelta(days=2, hours=3))
    timeline.run(WON_AT + timedelta(days=2, hours=4))
    steps = timeline.steps()
    assert steps["timeline_email"] == steps["kickoff_prep_email"] == ActionStatus.PENDING
    # Re-opened and won again a second time, days later: too late for the day-2 email.
    timeline.save(reopened, WON_AT + timedelta(days=2, hours=5))
    timeline.run(WON_AT + timedelta(days=2, hours=6))
    timeline.save(deal, WON_AT + timedelta(days=6))
    timeline.run(WON_AT + timedelta(days=7, hours=1))
    steps = timeline.steps()
    assert all(steps[s] == ActionStatus.DONE for s in DAY0), "nothing sent twice"
    assert {r["step"]: r["id"] for r in timeline.store.actions() if r["step"] in DAY0} == day0
    assert steps["kickoff_prep_email"] == ActionStatus.SKIPPED, "cancelled, then too late"
    assert steps["weekly_checkin_day_7"] == ActionStatus.PENDING, "continues after re-win"
    assert timeline.store.onboarding_rows()[0]["status"] == "active"


def test_a_win_date_moved_backwards_changes_no_step_and_is_reported(timeline):
    deal = make_deal()
    timeline.save(deal, WON_AT)
    timeline.run(WON_AT + hours(1))
    timeline.save(replace(deal, won_at=WON_AT - timedelta(days=10)), WON_AT + hours(2))
    counts = timeline.run(WON_AT + hours(3))
    assert counts["steps_recorded"] == 0, "no step of 'day 10' suddenly due"
    [moved] = [i for i in timeline.store.issues() if i["code"] == "win_date_moved"]
    assert "keeps counting from the win first seen" in moved["reason"]


def test_a_deal_won_in_the_future_waits_for_its_time(timeline):
    future = make_deal(won_at=WON_AT + timedelta(days=3))
    timeline.save(future, WON_AT)
    timeline.run(WON_AT + hours(1))
    assert timeline.steps() == {}
    timeline.run(WON_AT + timedelta(days=3, hours=1))
    assert "welcome_email" in timeline.steps()


def test_after_the_last_step_an_onboarding_is_completed(timeline):
    timeline.save(make_deal(), WON_AT)
    timeline.run(WON_AT + hours(1))
    timeline.run(WON_AT + timedelta(days=100))
    assert timeline.store.onboarding_rows()[0]["status"] == "completed"
    assert timeline.run(WON_AT + timedelta(days=101))["deals_planned"] == 0


def test_a_step_that_comes_after_another_goes_only_once_that_one_is_done(timeline):
    timeline.save(make_deal(), WON_AT)
    timeline.run(WON_AT + hours(1))
    timeline.run(WON_AT + timedelta(days=87, hours=1))
    assert timeline.steps()["formal_review_email"] == ActionStatus.PENDING
    mark_done(timeline)
    timeline.run(WON_AT + timedelta(days=90, hours=1))
    assert timeline.steps()["referral_ask_email"] == ActionStatus.PENDING


def test_a_step_after_one_that_was_skipped_is_skipped_with_the_reason(timeline):
    timeline.save(make_deal(), WON_AT)
    timeline.run(WON_AT + hours(1))
    timeline.run(WON_AT + timedelta(days=87, hours=1))
    timeline.run(WON_AT + timedelta(days=90, hours=1))  # the review email was never sent
    assert timeline.steps()["formal_review_email"] == ActionStatus.SKIPPED
    referral = timeline.row("referral_ask_email")
    assert referral["status"] == ActionStatus.SKIPPED
    assert "comes after formal_review_email, which ended skipped" in referral["reason"]


def test_a_deal_whose_snapshot_cannot_be_read_is_reported_and_the_others_go_on(timeline):
    good = make_deal(deal_id="006000000000001AAA")
    broken = make_deal(deal_id="006000000000002AAA")
    timeline.save(good, WON_AT)
    timeline.save(broken, WON_AT)
    with timeline.store.engine.begin() as conn:  # a snapshot written by an older version, say
        from sqlalchemy import text

        conn.execute(
            text(
                "UPDATE handoff_deals SET record = json_remove(record, '$.stage') "
                "WHERE deal_id = '006000000000002AAA'"
            )
        )
    counts = timeline.run(WON_AT + hours(1))
    assert counts["deals_planned"] == 1 and counts["deals_unplannable"] == 1
    [issue] = timeline.store.issues(code="plan_error")
    assert issue["deal_id"] == "006000000000002AAA" and "'stage'" in issue["reason"]
    assert set(timeline.steps("006000000000001AAA")) == set(DAY0)
    counts = timeline.run(WON_AT + hours(2))
    assert counts["deals_unplannable"] == 1, "tried again"
    assert len(timeline.store.issues(code="plan_error")) == 1, "reported once"


def test_wins_before_the_first_installs_look_back_stay_out(timeline):
    timeline.save(make_deal(won_at=WON_AT - timedelta(days=20)), WON_AT - timedelta(days=20))
    timeline.run(WON_AT)
    assert timeline.store.onboarding_rows() == [] and timeline.steps() == {}


def test_adopting_clients_in_progress_gives_them_only_their_future_steps(
    timeline, settings, monkeypatch
):
    adopting = settings.model_copy(
        update={
            "detection": settings.detection.model_copy(update={"adopt_clients_in_progress": True})
        }
    )
    timeline.settings = adopting
    timeline.save(make_deal(won_at=WON_AT - timedelta(days=20)), WON_AT - timedelta(days=20))
    timeline.run(WON_AT)
    [onboarding] = timeline.store.onboarding_rows()
    assert onboarding["adopted_at"] == WON_AT
    assert timeline.steps() == {}, "nothing from before the install, not even as skipped"
    timeline.run(WON_AT + timedelta(days=1, hours=1))  # day 21 of the client's 90
    assert timeline.steps() == {"weekly_checkin_day_21": ActionStatus.PENDING}


def test_a_snapshot_whose_save_started_before_the_last_detection_is_still_detected(timeline):
    """A slow writer stamps its snapshot before a detection runs and commits after it. No
    clock decides what detection looks at: the save's own mark does, so it is found next run."""
    from sqlalchemy import text

    timeline.save(make_deal(deal_id="006000000000002AAA"), WON_AT)
    timeline.run(WON_AT + hours(1))
    timeline.save(make_deal(deal_id="006000000000003AAA"), WON_AT)
    with timeline.store.engine.begin() as conn:  # its clock was read a day ago
        conn.execute(text("UPDATE handoff_deals SET updated_at = '2000-01-01 00:00:00.000000'"))
    timeline.run(WON_AT + hours(2))
    assert "welcome_email" in timeline.steps("006000000000003AAA")
    assert timeline.store.detection_due(SF) == {}, "every mark it looked at is cleared"


def test_a_save_between_reading_the_marks_and_clearing_them_stays_due(state):
    deal = make_deal()
    save_snapshot(state, deal, modstamp=WON_AT)
    seen = state.detection_due(SF)
    save_snapshot(state, replace(deal, stage="Negotiation", is_won=False), modstamp=WON_AT)
    state.clear_detection_due(SF, seen)
    assert list(state.detection_due(SF)) == [deal.deal_id], "the newer save is still to look at"
    state.clear_detection_due(SF, state.detection_due(SF))
    assert state.detection_due(SF) == {}
