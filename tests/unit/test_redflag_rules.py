"""The red-flag rules over the sandbox's named client histories, and the business clock.

The scenario (``handoff.sandbox.histories``) must trip exactly the rules each case names,
whatever the weekday of the seed day and whatever hour a run happens at on it; the connector
tests check the same cases come back through each CRM.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta

import pandas as pd
import pytest

from handoff.client_locale import SendingWindow
from handoff.config import RedFlagSettings
from handoff.crm.base import ACTIVITY_COLUMNS
from handoff.errors import ConfigError
from handoff.redflags.clock import business_hours_between
from handoff.redflags.rules import FLAG_COLUMNS, SEVERITY, RuleInput, evaluate
from handoff.sandbox.histories import HISTORY_CASES, SeedActivity, healthy_history
from tests.builders import CSM
from tests.redflag_scenario import activity_frame

WINDOW = SendingWindow()
NEW_YORK = "America/New_York"
# A week of seed days (every weekday), around a US holiday (Thanksgiving, 26 Nov 2026).
SEED_DAYS = [date(2026, 11, 30) + timedelta(days=n) for n in range(7)] + [date(2026, 11, 27)]
HOURS = [time(0, 30), time(12), time(23, 30)]


def deal_row(deal_id: str, won_at: datetime, missing=(), scope_change=False) -> dict:
    return {
        "deal_id": deal_id,
        "won_at": won_at,
        "zone": NEW_YORK,
        "country": "US",
        "owner_id": "rep-1",
        "owner_name": "Alex Kim",
        "csm_id": CSM.id,
        "csm_name": "Maria Lopez",
        "missing_doc": list(missing),
        "scope_change": scope_change,
    }


def scenario(today: date) -> tuple[pd.DataFrame, pd.DataFrame]:
    deals, frames = [], []
    for index, case in enumerate(HISTORY_CASES):
        won = case.won_at(today)
        deal_id = f"case-{index:02d}"
        deals.append(deal_row(deal_id, won, case.missing_doc, case.scope_change))
        frames.append(activity_frame(deal_id, case.history(won)))
    frame = pd.DataFrame(deals)
    frame["won_at"] = pd.to_datetime(frame["won_at"], utc=True)
    return frame, pd.concat(frames, ignore_index=True)


def flags_by_case(today: date, at: time, settings: RedFlagSettings | None = None) -> dict:
    deals, activities = scenario(today)
    as_of = datetime.combine(today, at, tzinfo=UTC)
    found = evaluate(RuleInput(deals, activities, as_of, settings or RedFlagSettings(), WINDOW))
    codes = found.groupby("deal_id")["code"].agg(set).to_dict()
    return {case.deal: codes.get(f"case-{i:02d}", set()) for i, case in enumerate(HISTORY_CASES)}


@pytest.mark.parametrize("today", SEED_DAYS, ids=lambda d: f"{d:%a-%d-%b}")
@pytest.mark.parametrize("at", HOURS, ids=lambda t: t.strftime("%H%M"))
def test_each_named_client_trips_exactly_its_rules(today: date, at: time) -> None:
    got = flags_by_case(today, at)
    expected = {case.deal: set(case.trips) for case in HISTORY_CASES}
    assert got == expected


def test_every_rule_has_a_client_that_trips_it_and_clients_that_do_not() -> None:
    tripped = {code for case in HISTORY_CASES for code in case.trips}
    assert tripped == set(SEVERITY)
    for code in SEVERITY:
        assert any(code not in case.trips for case in HISTORY_CASES)


def test_reasons_name_what_happened_in_the_clients_days() -> None:
    today = date(2026, 12, 4)
    deals, activities = scenario(today)
    as_of = datetime.combine(today, time(12), tzinfo=UTC)
    found = evaluate(RuleInput(deals, activities, as_of, RedFlagSettings(), WINDOW))
    assert list(found.columns) == FLAG_COLUMNS
    cedar = next(
        f"case-{i:02d}" for i, case in enumerate(HISTORY_CASES) if case.deal.startswith("Cedar")
    )
    reasons = {
        code: reason
        for deal, code, reason in zip(found["deal_id"], found["code"], found["reason"], strict=True)
        if code != "scope_creep" or deal == cedar
    }
    # Lumen Retail: Maria's email of Friday 27 Nov (the day after Thanksgiving) is unanswered.
    assert reasons["slow_client_response"].startswith(
        "the client has not answered Maria Lopez's email of Fri 27 Nov ('Training dates') for "
    )
    assert "business days" in reasons["slow_client_response"]
    assert reasons["missed_meetings"].startswith("the client missed 2 meetings since the last")
    assert "'Training session 1' on" in reasons["missed_meetings"]
    assert reasons["no_kickoff"] == (
        "no kickoff meeting held by day 5; the last one, on Sun 29 Nov, was cancelled"
    )
    assert "the client wrote \"Could you also add\" in 'SAP integration'" in reasons["scope_creep"]
    assert reasons["handoff_doc_incomplete"] == (
        "Alex Kim has not filled in these parts of the handoff document: goals and success "
        "criteria; promises and commitments"
    )
    assert set(found["severity"]) <= {"high", "medium"}


@pytest.mark.parametrize(
    "change, code",
    [
        ({"first_contact_hours": 200}, "no_first_contact"),
        ({"kickoff_by_day": 10}, "no_kickoff"),
        ({"client_response_hours": 200}, "slow_client_response"),
        ({"missed_meetings": 3}, "missed_meetings"),
        ({"scope_creep_phrases": []}, None),
        ({"first_win_by_day": 40}, "no_first_win"),
        ({"quiet_days": 30}, "gone_quiet"),
    ],
    ids=lambda v: str(v),
)
def test_every_threshold_is_a_setting(change: dict, code: str | None) -> None:
    today = date(2026, 12, 4)
    before = flags_by_case(today, time(12))
    after = flags_by_case(today, time(12), RedFlagSettings(**change))
    gone = {(deal, c) for deal, codes in before.items() for c in codes} - {
        (deal, c) for deal, codes in after.items() for c in codes
    }
    if code is None:  # no phrases: only the CRM's own flag still says scope creep
        assert gone == {("Cedar Foods — asks for more", "scope_creep")}
    else:
        assert gone and {c for _, c in gone} == {code}


def test_naive_clocks_would_flag_the_false_positive_cases() -> None:
    """The weekend reply and the Friday-evening win trip a calendar-hours rule: they are real
    false-positive traps, and only the business clock keeps them quiet."""
    today = date(2026, 12, 4)
    by_name = {case.deal: case for case in HISTORY_CASES}
    birch = by_name["Birch Architects — answers after the weekend"]
    sent, answered = [a.at for a in birch.history(birch.won_at(today)) if a.kind == "email"][2:4]
    assert (answered - sent) > timedelta(hours=48)
    fjord = by_name["Fjord Outdoor — won on a Friday evening"]
    won = fjord.won_at(today)
    first = fjord.history(won)[0].at
    assert (first - won) > timedelta(hours=4)


def test_healthy_histories_raise_nothing() -> None:
    today = datetime(2026, 12, 4, tzinfo=UTC)
    deals, frames = [], []
    for n in range(40):
        won = today - timedelta(days=1 + n * 2, hours=n % 9)
        deals.append(deal_row(f"d{n}", won))
        frames.append(activity_frame(f"d{n}", healthy_history(f"deal {n}", won, today)))
    frame = pd.DataFrame(deals)
    frame["won_at"] = pd.to_datetime(frame["won_at"], utc=True)
    for hours in (1, 12, 23):
        as_of = today + timedelta(hours=hours)
        found = evaluate(RuleInput(frame, pd.concat(frames), as_of, RedFlagSettings(), WINDOW))
        assert found.empty, found.to_dict("records")


def test_no_deals_no_flags() -> None:
    empty = pd.DataFrame(columns=["deal_id", "won_at"])
    found = evaluate(
        RuleInput(empty, pd.DataFrame(columns=ACTIVITY_COLUMNS), datetime.now(UTC),
                  RedFlagSettings(), WINDOW)
    )  # fmt: skip
    assert found.empty and list(found.columns) == FLAG_COLUMNS


@pytest.mark.parametrize(
    "start, end, hours",
    [
        ("2026-11-27 20:30Z", "2026-11-30 15:00Z", 18.5),  # Fri 15:30 -> Mon 10:00 New York
        ("2026-11-27 22:30Z", "2026-11-30 15:00Z", 1.0),  # after hours Friday: from Mon 09:00
        ("2026-11-25 14:00Z", "2026-11-27 14:00Z", 24.0),  # Thanksgiving Thursday does not count
        ("2026-12-01 12:00Z", "2026-12-01 13:00Z", 0.0),  # 07:00-08:00: before the day opens
        ("2026-12-05 15:00Z", "2026-12-06 15:00Z", 0.0),  # a weekend
    ],
)
def test_the_business_clock(start: str, end: str, hours: float) -> None:
    got = business_hours_between(
        pd.Series(pd.to_datetime([start], utc=True)),
        pd.Series(pd.to_datetime([end], utc=True)),
        pd.Series([NEW_YORK]),
        pd.Series(["US"]),
        WINDOW,
    )
    assert got.iloc[0] == pytest.approx(hours)


def test_severities_are_settings_and_a_misspelt_rule_is_refused() -> None:
    today = date(2026, 12, 4)
    deals, activities = scenario(today)
    as_of = datetime.combine(today, time(12), tzinfo=UTC)
    raised = RedFlagSettings(severity={"scope_creep": "high"})
    found = evaluate(RuleInput(deals, activities, as_of, raised, WINDOW))
    assert set(found.loc[found["code"] == "scope_creep", "severity"]) == {"high"}
    assert set(found.loc[found["code"] == "no_first_win", "severity"]) == {"medium"}
    with pytest.raises(ConfigError, match="scope_crep"):
        evaluate(
            RuleInput(
                deals, activities, as_of, RedFlagSettings(severity={"scope_crep": "high"}), WINDOW
            )
        )


def test_our_own_emails_logged_in_the_crm_are_not_a_persons_outreach() -> None:
    """An org that logs the playbook's emails in its CRM: a weekly check-in (which needs no
    answer) is not outreach the client failed to answer, and the executive's automated
    welcome is not customer success's first contact."""
    won = datetime(2026, 11, 2, 15, tzinfo=UTC)  # a Monday
    items = [
        SeedActivity("a1", "email", "outbound", won + timedelta(minutes=5), None,
                     "Welcome to Handoff Demo Inc."),
        SeedActivity("a2", "email", "outbound", won + timedelta(days=7), None,
                     "Week 1: one question"),
    ]  # fmt: skip
    deals = pd.DataFrame([deal_row("d1", won)])
    deals["won_at"] = pd.to_datetime(deals["won_at"], utc=True)
    activities = activity_frame("d1", items)
    as_of = won + timedelta(days=12)
    blind = evaluate(RuleInput(deals, activities, as_of, RedFlagSettings(), WINDOW))
    assert set(blind["code"]) >= {"slow_client_response"}
    sent = pd.DataFrame(
        {
            "deal_id": ["d1", "d1"],
            "subject": ["Welcome to Handoff Demo Inc.", "week 1: ONE question"],
        }
    )
    aware = evaluate(RuleInput(deals, activities, as_of, RedFlagSettings(), WINDOW, sent))
    assert "slow_client_response" not in set(aware["code"])
    assert "no_first_contact" in set(aware["code"])


def test_a_deals_flags_do_not_depend_on_the_other_deals_evaluated_with_it() -> None:
    """Each deal's flags and reasons are its own: evaluating it alone gives the same rows as
    evaluating it among all the others (the reasons are worded per deal, not per batch)."""
    today = date(2026, 12, 4)
    deals, activities = scenario(today)
    as_of = datetime.combine(today, time(12), tzinfo=UTC)
    together = evaluate(RuleInput(deals, activities, as_of, RedFlagSettings(), WINDOW))
    alone = pd.concat(
        [
            evaluate(
                RuleInput(
                    deals[deals["deal_id"] == deal_id].reset_index(drop=True),
                    activities[activities["deal_id"] == deal_id],
                    as_of,
                    RedFlagSettings(),
                    WINDOW,
                )
            )
            for deal_id in deals["deal_id"]
        ],
        ignore_index=True,
    ).sort_values(["deal_id", "code"], ignore_index=True)
    assert together.to_dict("records") == alone.to_dict("records")


def test_no_first_contact_names_each_clients_own_business_hours() -> None:
    monday = datetime(2026, 11, 30, 14, tzinfo=UTC)  # 09:00 in New York
    deals = pd.DataFrame(
        [deal_row("early", monday), deal_row("later", monday + timedelta(hours=1))]
    )
    deals["won_at"] = pd.to_datetime(deals["won_at"], utc=True)
    as_of = monday + timedelta(hours=7)  # 16:00 in New York
    found = evaluate(
        RuleInput(deals, pd.DataFrame(columns=ACTIVITY_COLUMNS), as_of, RedFlagSettings(), WINDOW)
    )
    first_contact = found[found["code"] == "no_first_contact"]
    reasons = dict(zip(first_contact["deal_id"], first_contact["reason"], strict=True))
    since = "no one from customer success has contacted the client since the win on Mon 30 Nov"
    assert reasons == {
        "early": f"{since} (7 of their business hours; the target is 4 h)",
        "later": f"{since} (6 of their business hours; the target is 4 h)",
    }
