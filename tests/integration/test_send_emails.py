"""Sending the planned emails through a real SMTP server (the sink), exactly once."""

from __future__ import annotations

import threading
from contextlib import contextmanager
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from functools import partial

import pytest

from handoff.mail import TransientMailError, smtp_transport
from handoff.models import ActionKind, ActionStatus
from handoff.pipeline import RunContext, send_emails
from handoff.planning import WELCOME_EMAIL, plan_deal
from handoff.state import StateStore
from tests.builders import CONTACT, make_deal

WORKER = "handoff_salesforce/run-1/send_emails"
RUN = RunContext(run_id="run-1", window_end=datetime(2026, 11, 21, tzinfo=UTC), worker=WORKER)


def plan_welcomes(store, settings, count: int) -> list[str]:
    addresses = []
    for n in range(count):
        address = f"client{n}@client.example"
        deal = make_deal(
            deal_id=f"006{n:015d}",
            primary_contact=replace(CONTACT, id=f"003{n:015d}", email=address),
        )
        actions, issues = plan_deal(deal, settings)
        welcome = [a for a in actions if a.step == WELCOME_EMAIL]
        store.record_plan("salesforce", deal.deal_id, welcome, issues, "run-1")
        addresses.append(address)
    return addresses


def transport_to(sink):
    return partial(smtp_transport, sink.host, sink.port, timeout=10)


def delivered_to(sink) -> list[str]:
    return sorted(mail.message["To"].addresses[0].addr_spec for mail in sink.messages)


@pytest.fixture
def state(settings):
    store = StateStore(settings.state.url)
    store.migrate()
    yield store
    store.dispose()


def test_a_batch_goes_out_over_one_connection_and_is_kept_on_disk(state, settings, smtp_sink):
    addresses = plan_welcomes(state, settings, 3)
    counts = send_emails(state, settings, transport_to(smtp_sink), RUN)
    assert counts["emails_sent"] == 3
    assert smtp_sink.sessions == 1
    assert delivered_to(smtp_sink) == sorted(addresses)
    mail = smtp_sink.messages[0]
    assert sorted(mail.rcpt_tos) == sorted(
        [
            mail.message["To"].addresses[0].addr_spec,
            "riley.rep@seller.example",
            "casey.csm@seller.example",
        ]
    )
    folder = RUN.run_folder(settings) / "emails"
    assert len(list(folder.glob("*.eml"))) == 3 and len(list(folder.glob("*.html"))) == 3
    assert all(row["status"] == ActionStatus.DONE for row in state.actions())
    # Again: nothing left to send.
    assert send_emails(state, settings, transport_to(smtp_sink), RUN)["emails_sent"] == 0
    assert len(smtp_sink.messages) == 3


def test_a_transient_failure_half_way_then_a_retry_sends_each_message_once(
    state, settings, smtp_sink
):
    addresses = plan_welcomes(state, settings, 4)
    smtp_sink.fail_next(1, code=421, message="4.3.0 Try again later", after=2)
    with pytest.raises(TransientMailError):
        send_emails(state, settings, transport_to(smtp_sink), RUN)
    assert len(smtp_sink.messages) == 2
    statuses = [row["status"] for row in state.actions()]
    assert statuses == ["done", "done", "pending", "pending"]

    counts = send_emails(state, settings, transport_to(smtp_sink), RUN)  # Airflow's retry
    assert counts["emails_sent"] == 2
    assert delivered_to(smtp_sink) == sorted(addresses)


def test_an_unreachable_server_leaves_everything_pending(state, settings, smtp_sink):
    plan_welcomes(state, settings, 2)

    @contextmanager
    def refused():
        raise ConnectionRefusedError("connection refused")
        yield  # pragma: no cover

    with pytest.raises(TransientMailError, match="ConnectionRefusedError"):
        send_emails(state, settings, refused, RUN)
    assert [row["status"] for row in state.actions()] == ["pending", "pending"]


def test_a_permanently_refused_client_is_failed_and_the_batch_goes_on(state, settings, smtp_sink):
    addresses = plan_welcomes(state, settings, 3)
    smtp_sink.reject_recipient(addresses[1])
    counts = send_emails(state, settings, transport_to(smtp_sink), RUN)
    assert counts == {"emails_sent": 2, "emails_failed": 1, "emails_unconfirmed": 0}
    failed = [row for row in state.actions() if row["status"] == ActionStatus.FAILED]
    assert len(failed) == 1
    assert failed[0]["reason"].startswith(f"deal {failed[0]['deal_id']} ('")
    assert "the client address" in failed[0]["reason"]
    assert addresses[1] in failed[0]["reason"] and "550" in failed[0]["reason"]


def test_an_email_in_flight_when_an_attempt_died_is_never_resent(state, settings, smtp_sink):
    plan_welcomes(state, settings, 2)
    # The previous try of this task instance claimed the batch and died before recording.
    state.claim(ActionKind.EMAIL, WORKER)
    counts = send_emails(state, settings, transport_to(smtp_sink), RUN)
    assert counts["emails_unconfirmed"] == 2 and counts["emails_sent"] == 0
    assert smtp_sink.messages == []
    row = state.actions()[0]
    assert row["status"] == ActionStatus.UNCONFIRMED
    assert "Message-ID <handoff." in row["reason"] and row["deal_id"] in row["reason"]


def test_concurrent_runs_send_each_email_once(settings, smtp_sink):
    setup = StateStore(settings.state.url)
    setup.migrate()
    addresses = plan_welcomes(setup, settings, 12)
    setup.dispose()
    barrier = threading.Barrier(3)
    errors = []

    def run(n: int) -> None:
        store = StateStore(settings.state.url)
        barrier.wait()
        try:
            context = replace(RUN, run_id=f"run-{n}", worker=f"dag/run-{n}/send_emails")
            send_emails(store, settings, transport_to(smtp_sink), context)
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)
        finally:
            store.dispose()

    threads = [threading.Thread(target=run, args=(n,)) for n in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == []
    assert delivered_to(smtp_sink) == sorted(addresses)


def test_a_stale_claim_from_another_worker_is_held_not_resent(state, settings, smtp_sink):
    plan_welcomes(state, settings, 1)
    state.claim(ActionKind.EMAIL, "dag/old-run/send_emails")
    assert send_emails(state, settings, transport_to(smtp_sink), RUN)["emails_unconfirmed"] == 0
    # Once the other worker's lease has expired, the row is held for a person to check.
    with state.engine.begin() as conn:
        from sqlalchemy import update

        from handoff.state.schema import outbox

        conn.execute(update(outbox).values(claimed_at=datetime.now(UTC) - timedelta(hours=2)))
    counts = send_emails(state, settings, transport_to(smtp_sink), RUN)
    assert counts["emails_unconfirmed"] == 1
    assert smtp_sink.messages == []
