"""Sending the planned emails through a real SMTP server (the sink), exactly once."""

from __future__ import annotations

import shutil
import threading
from collections import Counter
from contextlib import contextmanager
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path

import pytest

from handoff.errors import ConfigError
from handoff.mail import TransientMailError, smtp_transport
from handoff.models import ActionKind, ActionStatus
from handoff.pipeline import SMTP_RECONNECTS, RunContext, send_emails
from handoff.state import StateStore
from tests.builders import CONTACT, make_deal, plan_steps

WORKER = "handoff_salesforce/run-1/send_emails"
RUN = RunContext(run_id="run-1", window_end=datetime(2026, 11, 21, tzinfo=UTC), worker=WORKER)

# Claims take rows due by the end of the run's window: here, any row planned so far.
DUE = datetime(2100, 1, 1, tzinfo=UTC)


def plan_welcomes(store, settings, count: int) -> list[str]:
    addresses = []
    for n in range(count):
        address = f"client{n}@client.example"
        deal = make_deal(
            deal_id=f"006{n:015d}",
            primary_contact=replace(CONTACT, id=f"003{n:015d}", email=address),
        )
        plan_steps(store, deal, "welcome_email")
        addresses.append(address)
    return addresses


def transport_to(sink):
    return partial(smtp_transport, sink.host, sink.port, timeout=10)


def send(store, settings, transport, run=RUN):
    return send_emails(store, settings, transport, run, source="salesforce")


def delivered_to(sink) -> list[str]:
    return sorted(mail.message["To"].addresses[0].addr_spec for mail in sink.messages)


def test_a_batch_goes_out_over_one_connection_and_is_kept_on_disk(state, settings, smtp_sink):
    addresses = plan_welcomes(state, settings, 3)
    counts = send(state, settings, transport_to(smtp_sink))
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
    assert send(state, settings, transport_to(smtp_sink))["emails_sent"] == 0
    assert len(smtp_sink.messages) == 3


def test_a_transient_failure_half_way_then_a_retry_sends_each_message_once(
    state, settings, smtp_sink
):
    addresses = plan_welcomes(state, settings, 4)
    smtp_sink.fail_next(1, code=421, message="4.3.0 Try again later", after=2)
    with pytest.raises(TransientMailError):
        send(state, settings, transport_to(smtp_sink))
    assert len(smtp_sink.messages) == 2
    statuses = [row["status"] for row in state.actions()]
    assert statuses == ["done", "done", "pending", "pending"]

    counts = send(state, settings, transport_to(smtp_sink))  # Airflow's retry
    assert counts["emails_sent"] == 2
    assert delivered_to(smtp_sink) == sorted(addresses)


def test_an_unreachable_server_leaves_everything_pending(state, settings, smtp_sink):
    plan_welcomes(state, settings, 2)

    @contextmanager
    def refused():
        raise ConnectionRefusedError("connection refused")
        yield  # pragma: no cover

    with pytest.raises(TransientMailError, match="ConnectionRefusedError"):
        send(state, settings, refused)
    assert [row["status"] for row in state.actions()] == ["pending", "pending"]


def test_a_permanently_refused_client_is_failed_and_the_batch_goes_on(state, settings, smtp_sink):
    addresses = plan_welcomes(state, settings, 3)
    smtp_sink.reject_recipient(addresses[1])
    counts = send(state, settings, transport_to(smtp_sink))
    assert counts == {
        "emails_sent": 2,
        "emails_skipped": 0,
        "emails_failed": 1,
        "emails_unconfirmed": 0,
        "emails_held": 0,
        "emails_waiting": 0,
    }
    failed = [row for row in state.actions() if row["status"] == ActionStatus.FAILED]
    assert len(failed) == 1
    assert failed[0]["reason"].startswith(f"deal {failed[0]['deal_id']} ('")
    assert "the client address" in failed[0]["reason"]
    assert addresses[1] in failed[0]["reason"] and "550" in failed[0]["reason"]


def test_after_a_crash_only_the_email_handed_to_the_server_is_held(state, settings, smtp_sink):
    plan_welcomes(state, settings, 3)
    # The previous try of this task instance claimed three rows, handed the first one's content
    # to the server, and died before recording anything.
    claimed = state.claim("salesforce", ActionKind.EMAIL, WORKER, limit=10, due_by=DUE)
    state.mark_attempted([claimed[0].dedupe_key], WORKER)

    counts = send(state, settings, transport_to(smtp_sink))

    assert counts == {
        "emails_sent": 2,
        "emails_skipped": 0,
        "emails_failed": 0,
        "emails_unconfirmed": 1,
        "emails_held": 0,
        "emails_waiting": 0,
    }
    assert len(smtp_sink.messages) == 2, "the two never attempted went out"
    held = state.actions(dedupe_key=claimed[0].dedupe_key)[0]
    assert held["status"] == ActionStatus.UNCONFIRMED
    assert "Message-ID <handoff." in held["reason"] and held["deal_id"] in held["reason"]


def test_smtp_accepted_then_dropped_before_the_reply_is_never_sent_twice(
    state, settings, smtp_sink
):
    addresses = plan_welcomes(state, settings, 3)
    smtp_sink.drop_after_accept(1, after=1)

    counts = send(state, settings, transport_to(smtp_sink))

    # The dropped one is held; the one after it provably never went and takes a new connection.
    assert counts == {
        "emails_sent": 2,
        "emails_skipped": 0,
        "emails_failed": 0,
        "emails_unconfirmed": 1,
        "emails_held": 0,
        "emails_waiting": 0,
    }
    assert [row["status"] for row in state.actions()] == ["done", "unconfirmed", "done"]
    assert smtp_sink.sessions == 2
    assert delivered_to(smtp_sink) == sorted(addresses), "each client got exactly one copy"
    message_ids = [mail.message["Message-ID"] for mail in smtp_sink.messages]
    assert len(message_ids) == len(set(message_ids)) == 3

    assert send(state, settings, transport_to(smtp_sink))["emails_sent"] == 0  # a re-run


def test_a_connection_that_keeps_dropping_fails_the_task_for_airflow_to_retry(
    state, settings, smtp_sink
):
    addresses = plan_welcomes(state, settings, SMTP_RECONNECTS + 3)
    smtp_sink.drop_every(1)

    with pytest.raises(TransientMailError, match="dropped"):
        send(state, settings, transport_to(smtp_sink))
    statuses = Counter(row["status"] for row in state.actions())
    assert statuses == {"unconfirmed": SMTP_RECONNECTS + 1, "pending": 2}, statuses

    smtp_sink.drop_every(0)  # the relay recovers; Airflow's retry sends the rest, once
    assert send(state, settings, transport_to(smtp_sink))["emails_sent"] == 2
    assert len(smtp_sink.messages) == len(addresses)


def test_a_missing_templates_folder_fails_before_anything_is_claimed(state, settings, smtp_sink):
    plan_welcomes(state, settings, 2)
    broken = settings.model_copy(
        update={"output": settings.output.model_copy(update={"templates_dir": Path("/nowhere")})}
    )
    with pytest.raises(ConfigError, match="templates folder /nowhere does not exist"):
        send(state, broken, transport_to(smtp_sink))
    assert [(r["status"], r["attempts"]) for r in state.actions()] == [("pending", 0)] * 2
    assert smtp_sink.sessions == 0


def test_a_template_that_breaks_while_rendering_fails_nothing(state, settings, smtp_sink, tmp_path):
    plan_welcomes(state, settings, 2)
    templates = tmp_path / "templates"
    shutil.copytree(settings.output.templates_dir, templates)
    body = templates / "welcome" / "body.txt.j2"
    body.write_text(body.read_text().replace("{{ company }}", "{{ no_such_variable }}"))
    broken = settings.model_copy(
        update={"output": settings.output.model_copy(update={"templates_dir": templates})}
    )
    with pytest.raises(ConfigError, match="no_such_variable"):
        send(state, broken, transport_to(smtp_sink))
    assert [r["status"] for r in state.actions()] == ["pending", "pending"]
    assert smtp_sink.messages == []
    assert send(state, settings, transport_to(smtp_sink))["emails_sent"] == 2


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
            send(store, settings, transport_to(smtp_sink), context)
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


def test_a_stale_claim_from_another_worker_waits_for_its_lease(state, settings, smtp_sink):
    plan_welcomes(state, settings, 2)
    other = "dag/old-run/send_emails"
    claimed = state.claim("salesforce", ActionKind.EMAIL, other, limit=10, due_by=DUE)
    state.mark_attempted([claimed[0].dedupe_key], other)
    assert send(state, settings, transport_to(smtp_sink)) == {
        "emails_sent": 0,
        "emails_skipped": 0,
        "emails_failed": 0,
        "emails_unconfirmed": 0,
        "emails_held": 0,
        "emails_waiting": 0,
    }
    # Once the other worker's lease has expired: the attempted row is held for a person to
    # check, the one it never attempted goes out.
    with state.engine.begin() as conn:
        from sqlalchemy import update

        from handoff.state.schema import outbox

        conn.execute(update(outbox).values(claimed_at=datetime.now(UTC) - timedelta(hours=2)))
    counts = send(state, settings, transport_to(smtp_sink))
    assert (counts["emails_unconfirmed"], counts["emails_sent"]) == (1, 1)
    assert len(smtp_sink.messages) == 1


def clients_reached(sink) -> list[str]:
    """The client addresses the server accepted, one per copy received."""
    return sorted(a for mail in sink.messages for a in mail.rcpt_tos if a.startswith("client"))


def test_a_failed_email_re_sent_by_hand_goes_out_once_and_an_unknown_one_waits_for_a_check(
    state, settings, smtp_sink
):
    addresses = plan_welcomes(state, settings, 3)
    smtp_sink.reject_recipient(addresses[1])
    # A crash right after the first email was handed over: its outcome is unknown (here it
    # never arrived), the second is refused for good, the third goes out.
    claimed = state.claim("salesforce", ActionKind.EMAIL, WORKER, limit=10, due_by=DUE)
    state.mark_attempted([claimed[0].dedupe_key], WORKER)
    send(state, settings, transport_to(smtp_sink))
    by_status = {row["status"]: row for row in state.actions()}
    failed, unknown = by_status[ActionStatus.FAILED], by_status[ActionStatus.UNCONFIRMED]
    assert clients_reached(smtp_sink) == [addresses[2]]

    smtp_sink.accept_recipient(addresses[1])  # the address was fixed in the CRM
    later = RUN.window_end + timedelta(days=1)
    requeued, refused = state.requeue("salesforce", failed["deal_id"], later)
    assert [row.step for row in requeued] == ["welcome_email"] and not refused
    # A step that went out, or whose outcome is unknown, is not re-sent on a plain request.
    again, [(_, why_done)] = state.requeue("salesforce", failed["deal_id"], later)
    assert not again and "pending" in why_done
    again, [(row, why)] = state.requeue("salesforce", unknown["deal_id"], later)
    assert not again and "--checked-not-delivered" in why and row.status == "unconfirmed"

    counts = send(state, settings, transport_to(smtp_sink), RunContext("run-2", later, WORKER))
    assert counts["emails_sent"] == 1
    assert clients_reached(smtp_sink) == sorted(addresses[1:])
    assert state.actions(dedupe_key=failed["dedupe_key"])[0]["status"] == ActionStatus.DONE
    again, [(_, why_done)] = state.requeue("salesforce", failed["deal_id"], later)
    assert not again and "repeat" in why_done

    # Checked as never arrived, the unknown one goes out too, once.
    requeued, _ = state.requeue("salesforce", unknown["deal_id"], later, checked_not_delivered=True)
    assert len(requeued) == 1
    send(state, settings, transport_to(smtp_sink), RunContext("run-3", later, WORKER))
    assert clients_reached(smtp_sink) == sorted(addresses)
