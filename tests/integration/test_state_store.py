"""The state store on SQLite and on the machine's PostgreSQL (each test runs on both)."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import pytest
from alembic import command
from alembic.config import Config

from handoff.models import ActionKind, ActionStatus, DealIssue, PlannedAction
from handoff.state import StateStore
from handoff.state.store import MIGRATIONS, Since

T0 = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)
TASK = ActionKind.TASK

# Claims take rows due by the end of the run's window: here, any row planned so far.
DUE = datetime(2100, 1, 1, tzinfo=UTC)


def action(deal_id: str, step: str = "welcome_email", kind=ActionKind.EMAIL) -> PlannedAction:
    return PlannedAction("salesforce", deal_id, step, kind, payload={"n": deal_id})


def deal_row(deal_id: str, *, won_at=T0, is_won=True, modstamp=T0) -> dict:
    return {
        "deal_id": deal_id,
        "is_won": is_won,
        "is_deleted": False,
        "stage": "Closed Won" if is_won else "Negotiation/Review",
        "amount": 1000.0,
        "close_date": won_at.date() if won_at else None,
        "won_at": won_at if is_won else None,
        "modstamp": modstamp,
        "record": {"deal_id": deal_id},
    }


def test_migrate_is_idempotent_and_matches_the_models(store):
    store.migrate()
    assert store.current_revision() == "0007"
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    with store.engine.begin() as conn:
        config.attributes["connection"] = conn
        command.check(config)  # raises if schema.py has changes without a migration


def test_an_upgrade_keeps_existing_rows(store_url):
    first = StateStore(store_url)
    first.migrate()
    first.save_deals("salesforce", "deals", [deal_row("006A")], T0)
    first.record_plan("salesforce", "run-1", [action("006A")], issues=[])
    first.dispose()

    again = StateStore(store_url)
    again.migrate()
    assert again.get_watermark("salesforce", "deals") == T0
    assert [a["dedupe_key"] for a in again.actions()] == ["salesforce:006A:welcome_email"]
    again.dispose()


def test_watermark_moves_with_the_deals_in_one_transaction(store):
    assert store.get_watermark("salesforce", "deals") is None
    store.save_deals("salesforce", "deals", [deal_row("006A")], T0)
    store.save_deals("salesforce", "deals", [deal_row("006B")], T0 + timedelta(seconds=1))
    assert store.get_watermark("salesforce", "deals") == T0 + timedelta(seconds=1)
    assert store.stored_modstamps("salesforce", ["006A", "006B", "006C"]) == {
        "006A": T0,
        "006B": T0,
    }


def test_detection_is_bounded_by_the_window_and_happens_once(store):
    store.save_deals(
        "salesforce",
        "deals",
        [
            deal_row("006NEW", won_at=T0),
            deal_row("006OLD", won_at=T0 - timedelta(days=30)),
            deal_row("006OPEN", is_won=False),
            deal_row("006LATE", won_at=T0 + timedelta(days=2)),
        ],
        T0,
    )
    window = (T0 - timedelta(days=7), T0 + timedelta(days=1))
    assert store.start_onboarding("salesforce", *window, "run-1") == ["006NEW"]
    assert store.start_onboarding("salesforce", *window, "run-2") == []
    assert store.count_won_before("salesforce", window[0]) == 1


def test_an_action_is_recorded_once_whatever_the_replans(store):
    issue = DealIssue("salesforce", "006A", "OwnerId", "missing_owner", "deal 006A: OwnerId")
    assert store.record_plan("salesforce", "run-1", [action("006A")], issues=[issue]) == 1
    assert store.record_plan("salesforce", "run-2", [action("006A")], issues=[issue]) == 0
    assert len(store.actions()) == 1
    assert len(store.issues()) == 1


def test_every_data_problem_of_a_deal_is_recorded_not_only_the_first_of_its_kind(store):
    issues = [
        DealIssue("salesforce", "006A", field, "control_characters", f"deal 006A: {field}")
        for field in ("Contact.FirstName", "Contact.Name", "Account.Name")
    ]
    store.record_plan("salesforce", "run-1", [action("006A")], issues=issues)
    store.record_plan("salesforce", "run-2", [action("006A")], issues=issues)
    assert sorted(i["field"] for i in store.issues()) == [
        "Account.Name",
        "Contact.FirstName",
        "Contact.Name",
    ]


def test_claims_by_concurrent_workers_never_overlap(store_url):
    setup = StateStore(store_url)
    setup.migrate()
    deal_ids = [f"006{n:04d}" for n in range(60)]
    for deal_id in deal_ids:
        setup.record_plan("salesforce", "run-1", [action(deal_id)], issues=[])
    setup.dispose()

    results: dict[str, list[str]] = {}
    barrier = threading.Barrier(4)

    def worker(name: str) -> None:
        own = StateStore(store_url)
        barrier.wait()
        keys = results.setdefault(name, [])
        while batch := own.claim("salesforce", ActionKind.EMAIL, name, limit=7, due_by=DUE):
            keys += [row.dedupe_key for row in batch]
        own.dispose()

    threads = [threading.Thread(target=worker, args=(f"w{i}",)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    everything = [key for keys in results.values() for key in keys]
    assert sorted(everything) == sorted(f"salesforce:{d}:welcome_email" for d in deal_ids)
    assert len(everything) == len(set(everything))


def test_claims_are_scoped_by_source_and_kind_and_taken_oldest_first(store):
    store.record_plan("salesforce", "r", [action("006A"), action("006A", "t", TASK)], issues=[])
    other = PlannedAction("hubspot", "9001", "welcome_email", ActionKind.EMAIL, payload={})
    store.record_plan("hubspot", "r", [other], issues=[])
    store.record_plan("salesforce", "r", [action("006B")], issues=[])
    claimed = store.claim("salesforce", ActionKind.EMAIL, "w", limit=10, due_by=DUE)
    assert [r.dedupe_key for r in claimed] == [
        "salesforce:006A:welcome_email",
        "salesforce:006B:welcome_email",
    ]
    assert store.has_rows("hubspot", ActionKind.EMAIL, ActionStatus.PENDING)
    assert not store.has_rows("hubspot", TASK, ActionStatus.PENDING)
    assert [r.dedupe_key for r in store.claim("salesforce", TASK, "w", limit=10, due_by=DUE)] == [
        "salesforce:006A:t"
    ]


def test_a_dead_attempt_gives_back_what_it_never_attempted_and_hands_over_the_rest(store):
    for deal_id in ("006A", "006B", "006C"):
        store.record_plan("salesforce", "run-1", [action(deal_id)], issues=[])
    worker = "dag/run-1/send"
    claimed = store.claim("salesforce", ActionKind.EMAIL, worker, limit=10, due_by=DUE)
    assert len(claimed) == 3
    store.finish("salesforce:006A:welcome_email", worker, ActionStatus.DONE, "run-1")
    assert store.mark_attempted(["salesforce:006B:welcome_email"], worker) == {
        "salesforce:006B:welcome_email"
    }
    # The attempt dies here: B was handed over, C never was.
    lease = timedelta(minutes=10)
    # Another worker leaves a live lease alone...
    assert store.take_over_stale("salesforce", ActionKind.EMAIL, "dag/run-2/send", lease) == []
    assert store.claim("salesforce", ActionKind.EMAIL, "dag/run-2/send", limit=10, due_by=DUE) == []
    # ...but the retry of the same task instance knows the previous try is dead.
    orphans = store.take_over_stale("salesforce", ActionKind.EMAIL, worker, lease)
    assert [row.dedupe_key for row in orphans] == ["salesforce:006B:welcome_email"]
    again = store.claim("salesforce", ActionKind.EMAIL, worker, limit=10, due_by=DUE)
    assert [row.dedupe_key for row in again] == ["salesforce:006C:welcome_email"]
    assert again[0].attempts == 2


def test_the_next_try_takes_over_at_once_and_a_zombie_try_can_no_longer_act(store):
    store.record_plan("salesforce", "run-1", [action("006A")], issues=[])
    store.record_plan("salesforce", "run-1", [action("006B")], issues=[])
    first, second = "dag/run_1/send#1", "dag/run_1/send#2"
    a, b = "salesforce:006A:welcome_email", "salesforce:006B:welcome_email"
    store.claim("salesforce", ActionKind.EMAIL, first, limit=10, due_by=DUE)
    store.mark_attempted([a], first)
    # Another task instance whose name merely starts alike is not an earlier try.
    lease = timedelta(minutes=10)
    assert store.take_over_stale("salesforce", ActionKind.EMAIL, "dag/run_1/sen#2", lease) == []

    orphans = store.take_over_stale("salesforce", ActionKind.EMAIL, second, lease)
    assert [(r.dedupe_key, r.claimed_by) for r in orphans] == [(a, second)]
    # The first try, still running somewhere, can neither send B nor record A any more.
    assert store.mark_attempted([b], first) == set()
    assert not store.finish(a, first, ActionStatus.DONE, "run-1")
    assert [
        r.dedupe_key
        for r in store.claim("salesforce", ActionKind.EMAIL, second, limit=9, due_by=DUE)
    ] == [b]


def test_an_expired_lease_lets_another_worker_take_over(store):
    store.record_plan("salesforce", "run-1", [action("006A")], issues=[])
    store.record_plan("salesforce", "run-1", [action("006B")], issues=[])
    store.claim("salesforce", ActionKind.EMAIL, "dead-worker", limit=10, due_by=DUE)
    store.mark_attempted(["salesforce:006A:welcome_email"], "dead-worker")
    expired = timedelta(seconds=-1)
    orphans = store.take_over_stale("salesforce", ActionKind.EMAIL, "new-worker", expired)
    assert [(r.dedupe_key, r.claimed_by) for r in orphans] == [
        ("salesforce:006A:welcome_email", "new-worker")
    ]
    [fresh] = store.claim("salesforce", ActionKind.EMAIL, "new-worker", limit=10, due_by=DUE)
    assert fresh.dedupe_key == "salesforce:006B:welcome_email"
    # The stalled worker wakes up: it can neither attempt nor record what it no longer holds.
    assert store.mark_attempted(["salesforce:006B:welcome_email"], "dead-worker") == set()
    assert not store.finish(
        "salesforce:006A:welcome_email", "dead-worker", ActionStatus.DONE, "run-1"
    )


def test_only_the_claiming_worker_may_record_or_release(store):
    store.record_plan("salesforce", "run-1", [action("006A")], issues=[])
    store.claim("salesforce", ActionKind.EMAIL, "w1", limit=10, due_by=DUE)
    assert not store.finish("salesforce:006A:welcome_email", "w2", ActionStatus.DONE, "run-1")
    store.release(["salesforce:006A:welcome_email"], "w2")
    assert store.actions()[0]["status"] == ActionStatus.IN_FLIGHT
    store.release(["salesforce:006A:welcome_email"], "w1", reason="SMTP 421")
    [row] = store.actions()
    assert (row["status"], row["claimed_by"], row["reason"]) == ("pending", None, "SMTP 421")


def test_an_attempted_row_is_released_only_on_an_answer_that_proves_nothing_happened(store):
    for deal_id in ("006A", "006B"):
        store.record_plan("salesforce", "run-1", [action(deal_id)], issues=[])
    a, b = "salesforce:006A:welcome_email", "salesforce:006B:welcome_email"
    store.claim("salesforce", ActionKind.EMAIL, "w", limit=10, due_by=DUE)
    store.mark_attempted([a], "w")
    # A failure that is not an answer (our own record failing after the send, say): the
    # attempted row stays in flight to be settled; the one never attempted goes back.
    store.release([a, b], "w", "OperationalError")
    assert {r["dedupe_key"]: r["status"] for r in store.actions()} == {
        a: ActionStatus.IN_FLIGHT,
        b: ActionStatus.PENDING,
    }
    # The server answered that it took nothing (a 4xx): then it goes back too.
    store.release([a], "w", "SMTP 451", refused=True)
    [row] = store.actions(dedupe_key=a)
    assert (row["status"], row["attempted_at"]) == (ActionStatus.PENDING, None)


def test_upgrading_an_old_store_treats_rows_it_left_in_flight_as_attempted(store_url):
    from sqlalchemy import text

    old = StateStore(store_url)
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    with old.engine.begin() as conn:
        config.attributes["connection"] = conn
        command.upgrade(config, "0001")
        conn.execute(
            text(
                "INSERT INTO handoff_outbox (dedupe_key, source, deal_id, step, kind, status, "
                "payload, attempts, claimed_by, claimed_at, planned_run, created_at, updated_at) "
                "VALUES ('k', 'salesforce', '006A', 's', 'email', 'in_flight', '{}', 1, 'old', "
                ":at, 'r', :at, :at)"
            ),
            {"at": T0},
        )
    old.migrate()
    [row] = old.actions()
    assert row["attempted_at"] == T0, "an old in-flight row may have had its effect"
    old.dispose()


def test_deals_that_leave_closed_won_stop_and_their_pending_steps_cancel(store):
    store.save_deals("salesforce", "deals", [deal_row("006A")], T0)
    store.start_onboarding("salesforce", T0 - timedelta(days=1), T0 + timedelta(days=1), "r1")
    store.record_plan("salesforce", "r1", [action("006A")], issues=[])
    store.save_deals("salesforce", "deals", [deal_row("006A", is_won=False)], T0)
    assert store.stop_onboarding_of_lost_deals("salesforce", "r2") == ["006A"]
    [row] = store.actions()
    assert row["status"] == ActionStatus.CANCELLED
    assert "left Closed Won" in row["reason"]
    assert store.stop_onboarding_of_lost_deals("salesforce", "r3") == []


def test_timestamps_come_back_timezone_aware(store):
    store.save_deals("salesforce", "deals", [deal_row("006A")], T0)
    assert store.get_watermark("salesforce", "deals").tzinfo is not None
    with pytest.raises(Exception, match="naive datetime"):
        store.save_deals("salesforce", "deals", [], datetime(2026, 1, 1))


def test_claims_take_only_due_rows_in_due_order_and_never_another_sources(store):
    at = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)

    def due(deal_id: str, hours: int, source: str = "salesforce") -> PlannedAction:
        return PlannedAction(
            source,
            deal_id,
            "weekly_checkin_day_7",
            ActionKind.EMAIL,
            payload={},
            due_at=at + timedelta(hours=hours),
        )

    store.record_plan("salesforce", "r", [due("006LATE", 5), due("006SOON", 1), due("006NOW", 0)])
    store.record_plan("hubspot", "r", [due("9001", -1, "hubspot")])
    claimed = store.claim(
        "salesforce", ActionKind.EMAIL, "w", limit=10, due_by=at + timedelta(hours=2)
    )
    assert [r.deal_id for r in claimed] == ["006NOW", "006SOON"], "due order, due only"
    assert store.claim("salesforce", ActionKind.EMAIL, "w", limit=10, due_by=at) == []
    # A HubSpot worker gets the HubSpot row, never Salesforce's.
    [other] = store.claim("hubspot", ActionKind.EMAIL, "h", limit=10, due_by=at + timedelta(days=9))
    assert other.deal_id == "9001"


def test_a_run_summary_lists_only_its_own_sources_rows(store, settings):
    """Two sources' runs can share a run id (same schedule): each summary keeps to its CRM."""
    from handoff.pipeline import RunContext, summarise

    run = RunContext("scheduled__2026-11-20T12:00:00+00:00", DUE, "dag/r/summarise")
    for source, deal_id in (("salesforce", "006A"), ("hubspot", "9001")):
        row = PlannedAction(source, deal_id, "first_cs_contact", TASK, payload={})
        store.record_plan(source, run.run_id, [row])
        [claimed] = store.claim(source, TASK, "w", limit=1, due_by=DUE)
        store.finish(claimed.dedupe_key, "w", ActionStatus.DONE, run.run_id, external_id="x")
    summary = summarise(store, settings, "salesforce", run, api_calls=0)
    assert [t["deal_id"] for t in summary["tasks"]] == ["006A"]


def test_an_hours_detection_reads_two_index_ranges_not_every_stored_deal(tmp_path):
    """What was saved or won since the last detection, found through the indexes on the
    detection marks and on won_at: the cost of a quiet hour does not grow with the deals stored."""
    store = StateStore(f"sqlite:///{tmp_path / 'plan.db'}")
    store.migrate()
    store.save_deals("salesforce", "deals", [deal_row("006OLD", won_at=T0)], T0)
    store.clear_detection_due("salesforce", store.detection_due("salesforce"))
    since = Since(window_end=T0 + timedelta(hours=1))
    store.save_deals(
        "salesforce",
        "deals",
        [deal_row("006NOW", won_at=T0), deal_row("006WON", won_at=T0 + timedelta(hours=2))],
        T0 + timedelta(seconds=1),
    )
    window = (T0 - timedelta(days=90), T0 + timedelta(days=1))
    query = store._candidates("salesforce", *window, since)
    with store.engine.connect() as conn:
        assert conn.execute(query).scalars().all() == ["006NOW", "006WON"]
        compiled = query.compile(store.engine)
        params = tuple(compiled.params[name] for name in compiled.positiontup)
        plan = [row[3] for row in conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {compiled}", params)]
    assert any("ix_handoff_deals_detect_due (source=? AND detect_due>?)" in s for s in plan), plan
    assert any("ix_handoff_deals_won_at (won_at>?)" in step for step in plan), plan
    assert not any(step.endswith("(source=?)") for step in plan), plan
    store.dispose()
