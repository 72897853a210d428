"""``handoff benchmark``: the pipeline's cost at scale, against the sandbox CRM and SMTP sink.

Seeds an org of N deals (a fifth of them recent wins), then runs every step of the pipeline
twice, as the DAG would on two consecutive days: the first run does the work, the second must
find nothing. It reports wall time per step and CRM API calls, so batching (2,000-record query
pages, 200-record sObject Collections, one SMTP connection per batch) shows up as numbers.
The figures are recorded in the README; re-run after changing a hot path.
"""

from __future__ import annotations

import json
import tempfile
import time
from datetime import UTC, date, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

from handoff.config import Settings, StateSettings, load_settings
from handoff.crm.http import build_session
from handoff.crm.salesforce import SalesforceCRM
from handoff.mail import smtp_transport
from handoff.pipeline import steps_in_order
from handoff.sandbox.seed import seed_org
from handoff.sandbox.server import SandboxServer
from handoff.smtp_sink import SmtpSink
from handoff.state import StateStore


def run_benchmark(deals: int, *, seed: int = 7, today: date | None = None) -> dict[str, Any]:
    today = today or datetime.now(UTC).date()
    window_end = datetime.combine(today, datetime.min.time(), tzinfo=UTC) + timedelta(days=1)
    with tempfile.TemporaryDirectory(prefix="handoff-bench-") as folder:
        work = Path(folder)
        base = load_settings()
        settings = base.model_copy(
            update={
                "state": StateSettings(url=f"sqlite:///{work / 'state.db'}"),
                "output": base.output.model_copy(update={"run_dir": work / "runs"}),
            }
        )
        with SandboxServer(work / "sandbox.db") as sandbox, SmtpSink() as sink:
            started = time.perf_counter()
            seeded = seed_org(sandbox.store, seed=seed, deals=deals, today=today)
            seed_seconds = time.perf_counter() - started
            store = StateStore(settings.state.url)
            store.migrate()
            crm = SalesforceCRM.from_settings(_client(sandbox), settings)
            runs = [_one_run(crm, store, settings, sink, window_end, f"bench-{n}") for n in (1, 2)]
            store.dispose()
            return {
                "deals": deals,
                "seeded": seeded,
                "seed_seconds": round(seed_seconds, 2),
                "runs": runs,
                "smtp_sessions": sink.sessions,
                "messages_received": len(sink.messages),
                "sandbox_api_calls": sandbox.stats()["api_calls"],
            }


def _client(sandbox: SandboxServer):
    from simple_salesforce import Salesforce

    return Salesforce(
        instance_url=sandbox.url, session_id=sandbox.token, session=build_session(sandbox.url)
    )


def _one_run(
    crm: SalesforceCRM,
    store: StateStore,
    settings: Settings,
    sink: SmtpSink,
    window_end: datetime,
    run_id: str,
) -> dict[str, Any]:
    transport = partial(smtp_transport, sink.host, sink.port)
    steps = steps_in_order(crm, store, settings, transport, run_id, window_end)
    figures: dict[str, Any] = {}
    for name, step in steps.items():
        calls = crm.api_calls
        started = time.perf_counter()
        result = step()
        figures[name] = {
            "seconds": round(time.perf_counter() - started, 3),
            "api_calls": crm.api_calls - calls,
            **{k: v for k, v in result.items() if k != "api_calls"},
        }
    step_figures = list(figures.values())
    figures["total_seconds"] = round(sum(f["seconds"] for f in step_figures), 3)
    figures["total_api_calls"] = sum(f["api_calls"] for f in step_figures)
    return figures


def format_report(result: dict[str, Any]) -> str:
    lines = [
        f"Benchmark: {result['deals']} deals seeded in {result['seed_seconds']} s "
        f"({result['seeded'].get('recent_won')} recent wins)",
        f"{'run':<5}{'step':<13}{'seconds':>9}{'API calls':>11}  result",
    ]
    for number, run in enumerate(result["runs"], start=1):
        for step, figures in run.items():
            if not isinstance(figures, dict):
                continue
            rest = {k: v for k, v in figures.items() if k not in ("seconds", "api_calls")}
            lines.append(
                f"{number:<5}{step:<13}{figures['seconds']:>9.3f}{figures['api_calls']:>11}  "
                f"{json.dumps(rest)}"
            )
        lines.append(
            f"{number:<5}{'total':<13}{run['total_seconds']:>9.3f}{run['total_api_calls']:>11}"
        )
    lines.append(
        f"SMTP sessions: {result['smtp_sessions']}, messages: {result['messages_received']}, "
        f"API calls seen by the sandbox: {result['sandbox_api_calls']}"
    )
    return "\n".join(lines)
