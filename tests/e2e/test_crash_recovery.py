"""A worker killed with SIGKILL at every step boundary and in the middle of a batch.

The worker is a real child process (``tests/crash_driver.py``) running the pipeline's steps
against the sandbox CRM over HTTP and the SMTP sink; the test kills it, re-runs at once (a new
run, as the scheduler's next run would be) and again after the lease, and counts what the
clients' inboxes and the CRM really hold: every email and every task exactly once.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import partial

import pytest

from handoff.config import load_settings
from handoff.mail import smtp_transport
from handoff.models import ActionStatus
from handoff.pipeline import RunContext, steps_in_order, summarise
from handoff.state import StateStore
from tests.builders import WON_AT, SandboxOrg
from tests.conftest import ROOT, TEST_CONFIG

WINDOW_END = datetime.combine(WON_AT.date() + timedelta(days=1), datetime.min.time(), WON_AT.tzinfo)
ALL_STEPS = ("extract", "detect", "plan", "resolve", "send_emails", "write_tasks")
LEASE = 5  # seconds: long enough for an immediate re-run, short enough to wait out


@dataclass
class World:
    sandbox: object
    sink: object
    env: dict[str, str]

    def settings(self):
        return load_settings()

    def worker(self, run_id: str, steps=ALL_STEPS, kill_after: str | None = None):
        command = [
            sys.executable,
            "-m",
            "tests.crash_driver",
            f"--run-id={run_id}",
            f"--window-end={WINDOW_END.isoformat()}",
            f"--steps={','.join(steps)}",
            f"--salesforce-url={self.sandbox.url}",
            f"--token={self.sandbox.token}",
            f"--smtp-host={self.sink.host}",
            f"--smtp-port={self.sink.port}",
        ]
        if kill_after:
            command.append(f"--kill-after={kill_after}")
        return subprocess.Popen(
            command, cwd=ROOT, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )

    def run(self, run_id: str, steps=ALL_STEPS) -> dict:
        """A run in this process: the scheduler's next run, or a task's retry (same run id)."""
        from simple_salesforce import Salesforce

        from handoff.crm.http import build_session
        from handoff.crm.salesforce import SalesforceCRM

        settings = self.settings()
        store = StateStore(settings.state.url)
        client = Salesforce(
            instance_url=self.sandbox.url,
            session_id=self.sandbox.token,
            session=build_session(self.sandbox.url),
        )
        crm = SalesforceCRM.from_settings(client, settings)
        transport = partial(smtp_transport, self.sink.host, self.sink.port, timeout=10)
        plan = steps_in_order(crm, store, settings, transport, run_id, WINDOW_END)
        results = {name: plan[name]() for name in steps}
        context = RunContext(run_id=run_id, window_end=WINDOW_END, worker=f"{run_id}/summary")
        results["summary"] = summarise(store, settings, "salesforce", context, 0)
        store.dispose()
        return results

    def outbox(self) -> list[dict]:
        store = StateStore(self.settings().state.url)
        try:
            return store.actions()
        finally:
            store.dispose()

    def assert_exactly_once(self, *, emails: int, tasks: int) -> None:
        received = self.sink.messages
        recipients = Counter(m.message["To"].addresses[0].addr_spec for m in received)
        assert len(received) == emails, f"{len(received)} messages in the sink, not {emails}"
        assert set(recipients.values()) <= {1}, f"a client got two copies: {recipients}"
        keys = Counter(
            r["Handoff_Key__c"] for r in self.sandbox.store.rows("Task") if not r["IsDeleted"]
        )
        assert sum(keys.values()) == tasks, f"{sum(keys.values())} tasks in the CRM, not {tasks}"
        assert set(keys.values()) <= {1}, f"a task was written twice: {keys.most_common(3)}"


@pytest.fixture
def world(sandbox, smtp_sink, tmp_path, monkeypatch):
    config = tmp_path / "handoff.toml"
    text = TEST_CONFIG.read_text()
    config.write_text(text.replace("lease_seconds = 30", f"lease_seconds = {LEASE}"))
    env = {
        "HANDOFF_CONFIG": str(config),
        "HANDOFF_STATE_URL": f"sqlite:///{tmp_path / 'state.db'}",
        "HANDOFF_RUN_DIR": str(tmp_path / "runs"),
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    StateStore(env["HANDOFF_STATE_URL"]).migrate()  # once, as a deployment's init step does
    return World(sandbox, smtp_sink, {**os.environ, **env})


def killed(process) -> None:
    out, err = process.communicate(timeout=120)
    assert process.returncode == -signal.SIGKILL, (process.returncode, out, err.decode()[-2000:])


@pytest.mark.parametrize("boundary", ALL_STEPS)
def test_a_kill_at_a_step_boundary_then_a_rerun_does_everything_exactly_once(world, boundary):
    org = SandboxOrg(world.sandbox.store)
    for n in range(3):
        org.won_deal(f"Boundary {n}", contact={"Email": f"c{n}@client.example"})

    killed(world.worker("run-1", kill_after=boundary))
    world.run("run-2")
    world.assert_exactly_once(emails=3, tasks=6)
    assert {row["status"] for row in world.outbox()} == {ActionStatus.DONE}

    again = world.run("run-3")
    assert (again["send_emails"]["emails_sent"], again["write_tasks"]["tasks_created"]) == (0, 0)
    world.assert_exactly_once(emails=3, tasks=6)


@pytest.mark.parametrize("rerun", ["next-run", "task-retry"])
def test_a_kill_in_the_middle_of_a_send_batch(world, rerun):
    org = SandboxOrg(world.sandbox.store)
    for n in range(6):
        org.won_deal(f"Mid send {n}", amount=8000, contact={"Email": f"c{n}@client.example"})
    held = world.sink.hold_next(after=2)  # the 3rd message reaches the server, its answer never

    worker = world.worker("run-1")
    assert held.wait_arrived(timeout=60), "the worker never reached the third message"
    worker.send_signal(signal.SIGKILL)
    killed(worker)
    held.release()
    world.assert_exactly_once(emails=3, tasks=0)

    if rerun == "task-retry":
        # Airflow's retry of the same task instance knows the previous try is dead.
        retried = world.run("run-1", steps=["send_emails"])["send_emails"]
        assert retried == {
            "emails_sent": 3,
            "emails_skipped": 0,
            "emails_failed": 0,
            "emails_unconfirmed": 1,
            "emails_held": 0,
            "emails_waiting": 0,
        }
        world.assert_exactly_once(emails=6, tasks=0)
        return

    # The next run, at once: the dead worker's claims are within their lease; they wait and
    # the summary says so, with when they are tried again. The CRM tasks go out meanwhile.
    immediate = world.run("run-2")
    assert immediate["send_emails"]["emails_sent"] == 0
    waiting = immediate["summary"]["waiting"]
    assert len(waiting) == 3 + 1
    assert all("claimed by run-1/send_emails" in w["reason"] for w in waiting)
    assert all(w["retry_at"] != "next run" for w in waiting)
    world.assert_exactly_once(emails=3, tasks=6)

    time.sleep(LEASE + 0.5)
    after_lease = world.run("run-3")
    assert after_lease["send_emails"] == {
        "emails_sent": 3,
        "emails_skipped": 0,
        "emails_failed": 0,
        "emails_unconfirmed": 1,
        "emails_held": 0,
        "emails_waiting": 0,
    }
    world.assert_exactly_once(emails=6, tasks=6)
    [held_row] = [r for r in world.outbox() if r["status"] == ActionStatus.UNCONFIRMED]
    delivered = {m.message["Message-ID"] for m in world.sink.messages}
    assert held_row["external_id"] in delivered, "it was right not to send it again"
    assert after_lease["summary"]["waiting"] == []
    assert after_lease["summary"]["unconfirmed"] == 1


def test_a_kill_in_the_middle_of_a_task_batch(world):
    org = SandboxOrg(world.sandbox.store)
    for n in range(110):
        org.won_deal(f"Mid write {n:03d}", contact={"Email": f"c{n}@client.example"})
    # The first collection of 200 commits, then its answer is held: the worker dies waiting.
    world.sandbox.faults.add(
        method="POST", path_contains="composite/sobjects", after_commit=True, delay_seconds=60
    )
    steps = ("extract", "detect", "plan", "resolve", "write_tasks")
    worker = world.worker("run-1", steps=steps)
    deadline = time.monotonic() + 60
    while world.sandbox.store.count("Task") < 200:
        assert time.monotonic() < deadline and worker.poll() is None, "no batch was committed"
        time.sleep(0.05)
    worker.send_signal(signal.SIGKILL)
    killed(worker)

    immediate = world.run("run-2", steps=steps)
    assert immediate["write_tasks"]["tasks_created"] == 20, "the batch never sent goes now"
    assert len(immediate["summary"]["waiting"]) == 200 + 110  # the held batch; unsent emails
    world.assert_exactly_once(emails=0, tasks=220)

    time.sleep(LEASE + 0.5)
    after_lease = world.run("run-3", steps=steps)["write_tasks"]
    assert (after_lease["tasks_created"], after_lease["tasks_reconciled"]) == (0, 200)
    assert after_lease["api_calls"] == 1 + 1, "one describe, one lookup; nothing re-written"
    world.assert_exactly_once(emails=0, tasks=220)
    tasks = [r for r in world.outbox() if r["kind"] == "task"]
    assert Counter(r["status"] for r in tasks) == {ActionStatus.DONE: 220}
    assert sum("found in the CRM" in (r["reason"] or "") for r in tasks) == 200
