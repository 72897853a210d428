"""The ``handoff`` command: the demo twice (the second run changes nothing) and ``handoff run``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from handoff.cli import connection_env
from tests.builders import WON_AT, SandboxOrg

HANDOFF = str(Path(sys.executable).with_name("handoff"))


def handoff(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [HANDOFF, *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **(env or {})},
    )
    assert result.returncode == 0, (
        f"handoff {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
    )
    return result


def last_json_line(output: str) -> dict:
    return json.loads(output.strip().splitlines()[-1])


def test_the_demo_runs_then_finds_nothing_new(tmp_path):
    first = handoff("demo", "--reset", "--workdir", str(tmp_path / "demo"))
    summary = last_json_line(first.stdout)
    assert summary["emails_sent"] > 0 and summary["tasks_created"] > 0
    assert "New Closed Won deals:" in first.stdout
    assert "no primary contact" in first.stdout  # the seeded bad-input deals are reported
    assert list((tmp_path / "demo" / "runs").glob("*/emails/*.html"))

    second = handoff("demo", "--workdir", str(tmp_path / "demo"))
    again = last_json_line(second.stdout)
    assert (again["emails_sent"], again["tasks_created"]) == (0, 0)


def test_handoff_run_processes_one_day_against_the_configured_connections(
    tmp_path, sandbox, smtp_sink
):
    org = SandboxOrg(sandbox.store)
    org.won_deal("Run for a day", amount=75000)
    env = {
        **connection_env(sandbox.url, sandbox.token, smtp_sink.host, smtp_sink.port),
        "HANDOFF_STATE_URL": f"sqlite:///{tmp_path / 'state.db'}",
        "HANDOFF_RUN_DIR": str(tmp_path / "runs"),
    }
    result = handoff("run", "--source", "salesforce", "--date", WON_AT.date().isoformat(), env=env)
    summary = last_json_line(result.stdout)
    assert (summary["emails_sent"], summary["tasks_created"]) == (1, 2)
    assert len(smtp_sink.messages) == 1
    assert summary["api_calls"] == 3  # deals, primary contacts, one task collection
