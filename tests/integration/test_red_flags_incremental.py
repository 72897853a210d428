"""Red flags evaluated incrementally: only the deals whose data changed or whose next check
fell due are evaluated, and the flags are the same as a full evaluation's at every moment.

The histories are random (seeded): emails both ways, calls, meetings booked ahead and logged
after they happen (held, missed, cancelled), notes with scope-creep words, milestones; they
reach the store as the CRM would log them, between irregularly spaced runs.
"""

from __future__ import annotations

import random
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pandas as pd
import pytest

from handoff.crm.base import ACTIVITY_COLUMNS
from handoff.redflags.rules import TIME_WORDED, evaluate
from handoff.redflags.steps import evaluate_red_flags, load_rule_input, window_start
from handoff.state.redflag_store import RedFlagStore
from tests.builders import make_deal, save_snapshot

SOURCE = "salesforce"
FIRST_WIN = datetime(2026, 10, 5, 14, tzinfo=UTC)  # a Monday
SUBJECTS = [
    "Welcome",
    "Kickoff call",
    "Training",
    "Go-live milestone",
    "Question on reports",
    "Re: plans",
]
SNIPPETS = ["", "Thanks!", "We need additional users next month", "> additional users\nok"]


def _activity(deal_id: str, n: int, at: datetime, logged: datetime, **fields) -> dict:
    return {
        "activity_id": f"{deal_id[-6:]}-{n:04d}",
        "deal_id": deal_id,
        "kind": "email",
        "direction": "outbound",
        "occurred_at": at,
        "outcome": None,
        "subject": "",
        "snippet": "",
        "owner_id": None,
        "handoff_key": None,
        "is_deleted": False,
        "modstamp": logged,
        **fields,
    }


def _history(rng: random.Random, deal_id: str, won: datetime) -> list[dict]:
    """Versions of activities, each with the moment the CRM logs it (``modstamp``)."""
    rows = []
    for n in range(rng.randint(0, 14)):
        at = won + timedelta(hours=rng.uniform(0.5, 24 * 40))
        kind = rng.choice(["email", "email", "call", "meeting", "meeting", "note", "task"])
        direction = rng.choice(["outbound", "inbound"]) if kind == "email" else "outbound"
        subject = rng.choice(SUBJECTS)
        common = {"kind": kind, "direction": direction, "subject": subject}
        if kind == "meeting":
            booked = at - timedelta(hours=rng.uniform(1, 72))
            rows.append(_activity(deal_id, n, at, max(booked, won), **common))
            outcome = rng.choice(["completed", "no_show", "cancelled", None])
            if outcome:
                later = at + timedelta(hours=rng.uniform(0.5, 30))
                rows.append(_activity(deal_id, n, at, later, **common, outcome=outcome))
        else:
            outcome = "completed" if kind in ("call", "task") and rng.random() < 0.7 else None
            snippet = rng.choice(SNIPPETS) if kind in ("email", "note") else ""
            rows.append(_activity(deal_id, n, at, at, **common, outcome=outcome, snippet=snippet))
    return rows


def _save(store, rows: list[dict]) -> None:
    if rows:
        frame = pd.DataFrame(rows, columns=ACTIVITY_COLUMNS)
        for column in ("occurred_at", "modstamp"):
            frame[column] = pd.to_datetime(frame[column], utc=True)
        RedFlagStore(store).save_activities(SOURCE, frame)


def _full_evaluation(store, settings, as_of: datetime) -> pd.DataFrame:
    onboarding = RedFlagStore(store).onboarding_deals(SOURCE, window_start(settings, as_of))
    recent = as_of - timedelta(days=settings.red_flags.scope_creep_days)
    return evaluate(
        load_rule_input(store, settings, SOURCE, onboarding, as_of, snippets_from=recent)
    )


def _open(store) -> pd.DataFrame:
    rows = RedFlagStore(store).flag_rows(source=SOURCE, status="open")
    return (
        pd.DataFrame(rows, columns=["deal_id", "code", "reason"])
        if rows
        else pd.DataFrame(columns=["deal_id", "code", "reason"])
    )


def _keyed(frame: pd.DataFrame, *, reasons: bool) -> set[tuple]:
    if reasons:
        frame = frame[~frame["code"].isin(TIME_WORDED)]
        return set(zip(frame["deal_id"], frame["code"], frame["reason"], strict=True))
    return set(zip(frame["deal_id"], frame["code"], strict=True))


def test_incremental_flags_match_a_full_evaluation_at_every_run(store, flagged):
    rng = random.Random(3)
    deals = []
    for n in range(16):
        won = FIRST_WIN + timedelta(hours=rng.uniform(0, 24 * 12))
        deal = make_deal(deal_id=f"006{n:015d}", won_at=won, scope_change=False)
        if n % 5 == 0:
            deal = replace(deal, handoff_doc={**deal.handoff_doc, "goals": ""})
        save_snapshot(store, deal)
        deals.append(deal)
    pending = sorted(
        (row for deal in deals for row in _history(rng, deal.deal_id, deal.won_at)),
        key=lambda row: row["modstamp"],
    )
    at, last, evaluated, runs, seen = FIRST_WIN + timedelta(hours=1), None, [], 0, set()
    end = FIRST_WIN + timedelta(days=44)
    while at < end:
        store.start_onboarding(SOURCE, at - timedelta(days=90), at, f"run-{runs}")
        arrived = [row for row in pending if (last is None or row["modstamp"] > last)]
        _save(store, [row for row in arrived if row["modstamp"] <= at])
        result = evaluate_red_flags(store, flagged, SOURCE, f"run-{runs}", at)
        full = _full_evaluation(store, flagged, at)
        opened = _open(store)
        assert _keyed(opened, reasons=False) == _keyed(full, reasons=False), at
        assert _keyed(opened, reasons=True) == _keyed(full, reasons=True), at
        evaluated.append(result["deals_evaluated"])
        seen |= set(opened["code"])
        last, runs = at, runs + 1
        at += timedelta(hours=rng.choice([1, 3, 7, 13, 26, 31]))
    assert len(seen) >= 6, seen  # the histories trip most rules at some point
    watched = len(deals)
    # The incremental runs evaluated a fraction of the clients, not every one every time.
    assert sum(evaluated[1:]) < 0.5 * watched * (runs - 1), evaluated


@pytest.fixture
def kicked_off_deal(store):
    """A client contacted and answering, with no kickoff yet: nothing due until day 5."""
    won = FIRST_WIN
    deal = make_deal(deal_id="006000000000000777", won_at=won)
    save_snapshot(store, deal)
    store.start_onboarding(SOURCE, won - timedelta(days=1), won + timedelta(minutes=1), "r0")
    _save(
        store,
        [
            _activity(deal.deal_id, 1, won + timedelta(hours=1), won + timedelta(hours=1)),
            _activity(
                deal.deal_id,
                2,
                won + timedelta(hours=3),
                won + timedelta(hours=3),
                direction="inbound",
                subject="Re: Welcome",
            ),
        ],
    )
    return deal


def test_a_quiet_run_evaluates_no_deal_and_a_new_activity_only_its_own(
    store, flagged, kicked_off_deal
):
    won = kicked_off_deal.won_at
    other = make_deal(deal_id="006000000000000888", won_at=won)
    save_snapshot(store, other)
    store.start_onboarding(SOURCE, won - timedelta(days=1), won + timedelta(minutes=1), "r1")
    first = evaluate_red_flags(store, flagged, SOURCE, "h1", won + timedelta(days=1))
    assert (first["evaluation"], first["deals_evaluated"]) == ("full", 2)

    quiet = evaluate_red_flags(store, flagged, SOURCE, "h2", won + timedelta(days=1))
    assert (quiet["evaluation"], quiet["deals_evaluated"]) == ("incremental", 0)

    reply = won + timedelta(days=1, hours=1)
    _save(store, [_activity(other.deal_id, 9, reply, reply, direction="inbound")])
    after = evaluate_red_flags(store, flagged, SOURCE, "h3", reply)
    assert after["deals_evaluated"] == 1


def test_a_deadline_passing_with_nothing_logged_raises_its_flag(store, flagged, kicked_off_deal):
    won = kicked_off_deal.won_at
    evaluate_red_flags(store, flagged, SOURCE, "d1", won + timedelta(days=1))
    day4 = evaluate_red_flags(store, flagged, SOURCE, "d4", won + timedelta(days=4))
    assert day4["deals_evaluated"] == 0  # the kickoff deadline is day 5
    day6 = evaluate_red_flags(store, flagged, SOURCE, "d6", won + timedelta(days=6))
    assert day6["deals_evaluated"] == 1
    assert {row["code"] for row in RedFlagStore(store).flag_rows(status="open")} == {"no_kickoff"}


def test_changed_thresholds_evaluate_every_deal_again(store, flagged, kicked_off_deal):
    won = kicked_off_deal.won_at
    evaluate_red_flags(store, flagged, SOURCE, "a", won + timedelta(days=2))
    assert not RedFlagStore(store).flag_rows(status="open")
    stricter = flagged.model_copy(
        update={"red_flags": flagged.red_flags.model_copy(update={"kickoff_by_day": 1})}
    )
    again = evaluate_red_flags(store, stricter, SOURCE, "b", won + timedelta(days=2))
    assert (again["evaluation"], again["deals_evaluated"]) == ("full", 1)
    assert {row["code"] for row in RedFlagStore(store).flag_rows(status="open")} == {"no_kickoff"}


def test_a_scope_request_ageing_out_of_its_window_resolves_with_nothing_logged(
    store, flagged, kicked_off_deal
):
    won, deal_id = kicked_off_deal.won_at, kicked_off_deal.deal_id
    asked, kickoff = won + timedelta(days=1), won + timedelta(days=4)
    _save(
        store,
        [
            _activity(
                deal_id,
                3,
                asked,
                asked,
                kind="note",
                subject="Call notes",
                snippet="They want additional users",
            ),
            _activity(
                deal_id,
                4,
                kickoff,
                kickoff,
                kind="meeting",
                subject="Kickoff call",
                outcome="completed",
            ),
        ],
    )
    evaluate_red_flags(store, flagged, SOURCE, "d10", won + timedelta(days=10))
    assert {row["code"] for row in RedFlagStore(store).flag_rows(status="open")} == {"scope_creep"}
    # The next check is the request leaving the 14 days (day 15), before the client would
    # count as quiet (day 18) or the first win as late (day 30).
    day16 = evaluate_red_flags(store, flagged, SOURCE, "d16", won + timedelta(days=16))
    assert day16["deals_evaluated"] == 1
    assert not RedFlagStore(store).flag_rows(status="open")


def test_an_activity_written_during_an_evaluation_keeps_its_deal_due(
    store, flagged, kicked_off_deal
):
    won, deal_id = kicked_off_deal.won_at, kicked_off_deal.deal_id
    flags_store = RedFlagStore(store)
    evaluate_red_flags(store, flagged, SOURCE, "a", won + timedelta(days=1))
    assert deal_id not in flags_store.flag_generations(SOURCE, won - timedelta(days=1), won)
    _save(store, [_activity(deal_id, 5, won + timedelta(days=1), won + timedelta(days=1))])
    read = flags_store.flag_generations(SOURCE, won - timedelta(days=1), won)
    assert set(read) == {deal_id}
    # An evaluation read the deal; before it records the next check, another write lands.
    late = won + timedelta(days=1, hours=1)
    _save(store, [_activity(deal_id, 6, late, late, direction="inbound")])
    flags_store.apply(
        SOURCE, "b", late, [], [], [], checks={deal_id: (won + timedelta(days=5), read[deal_id])}
    )
    assert deal_id in flags_store.flag_generations(SOURCE, won - timedelta(days=1), won)


def test_the_watched_deals_come_with_their_contact_split_by_coverage(store):
    """What read_activities needs of every onboarding deal, read from the snapshot in SQL."""
    with_contact = make_deal(deal_id="006000000000011AAA")
    without = replace(make_deal(deal_id="006000000000012AAA"), primary_contact=None)
    for deal in (with_contact, without):
        save_snapshot(store, deal)
    won = with_contact.won_at
    store.start_onboarding("salesforce", won - timedelta(days=1), won + timedelta(days=1), "r1")
    flags = RedFlagStore(store)
    flags.mark_covered("salesforce", [without.deal_id], won, {})
    since = won - timedelta(days=1)
    new = flags.watched_deals("salesforce", since, covered=False)
    assert new == {with_contact.deal_id: with_contact.primary_contact.id}
    assert flags.watched_deals("salesforce", since, covered=True) == {without.deal_id: None}
    assert flags.count_watched("salesforce", since, covered=True) == 1
    assert flags.count_watched("salesforce", since, covered=False) == 1
    assert flags.watched_deals("salesforce", won + timedelta(seconds=1), covered=False) == {}
