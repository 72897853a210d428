"""``handoff benchmark``: the pipeline's cost at scale, against the sandbox CRM and SMTP sink.

Two scenarios. ``first-run``: an org of N deals (a fifth of them recent wins), every step of
the pipeline run twice for the same hour: the first run does the work, the re-run must find
nothing. ``steady-state``: clients spread over their 90 days, taken on at install, then one
hourly run and the same hour again. It reports wall time per step and CRM API calls, so
batching (2,000-record query pages, 200-record sObject Collections, one SMTP connection per
batch) and planning cost show up as numbers. The figures are recorded in the README; re-run
after changing a hot path.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

from handoff.config import Settings, StateSettings, load_settings
from handoff.crm.base import CrmClient
from handoff.crm.http import build_session
from handoff.crm.salesforce import SalesforceCRM
from handoff.mail import smtp_transport
from handoff.pipeline import steps_in_order
from handoff.sandbox.hubspot_seed import seed_portal
from handoff.sandbox.seed import seed_org
from handoff.sandbox.server import SandboxServer
from handoff.smtp_sink import SmtpSink
from handoff.state import StateStore


def run_benchmark(
    deals: int, *, seed: int = 7, today: date | None = None, source: str = "salesforce"
) -> dict[str, Any]:
    """First run on a fresh org (a fifth of its deals recent wins), then the same run again."""
    today = today or datetime.now(UTC).date()
    window_end = datetime.combine(today, datetime.min.time(), tzinfo=UTC) + timedelta(days=1)
    with _world(deals, seed, today, source=source) as (
        settings,
        store,
        crm,
        sink,
        sandbox,
        seeding,
    ):
        runs = [_one_run(crm, store, settings, sink, window_end, f"bench-{n}") for n in (1, 2)]
        return {
            "scenario": "first-run",
            "source": source,
            "deals": deals,
            **seeding,
            "runs": runs,
            "smtp_sessions": sink.sessions,
            "messages_received": len(sink.messages),
            "sandbox_api_calls": _sandbox_calls(sandbox, source),
        }


def run_steady_state(
    deals: int,
    onboarding: int,
    *,
    seed: int = 7,
    today: date | None = None,
    source: str = "salesforce",
    activities: int | None = None,
) -> dict[str, Any]:
    """An org with ``onboarding`` clients spread over their 90 days, adopted at first install;
    then one hourly run, and the same hour again with nothing left to do.

    The figures to watch: the hourly run's planning time and its API calls, which must not
    grow with the number of clients in onboarding when nothing changed. With ``activities``,
    every client has that many activities in the CRM and the red-flag steps run: the install
    reads every client's history once, the hourly run only what changed.
    """
    today = today or datetime.now(UTC).date()
    install = datetime.combine(today, datetime.min.time(), tzinfo=UTC) + timedelta(hours=10)
    share = min(1.0, onboarding / max(deals, 1))
    with _world(
        deals,
        seed,
        today,
        onboarding_days=90,
        recent_share=share,
        adopt=True,
        source=source,
        activities=activities,
    ) as (
        settings,
        store,
        crm,
        sink,
        sandbox,
        seeding,
    ):
        runs = {
            "install": _one_run(crm, store, settings, sink, install, "install"),
            "hourly": _one_run(crm, store, settings, sink, install + timedelta(hours=1), "h1"),
            "quiet": _one_run(crm, store, settings, sink, install + timedelta(hours=1), "h1b"),
        }
        return {
            "scenario": "steady-state",
            "source": source,
            "activities_per_deal": activities,
            "deals": deals,
            "onboarding": store.count_onboarding(source),
            **seeding,
            "runs": runs,
            "smtp_sessions": sink.sessions,
            "messages_received": len(sink.messages),
            "sandbox_api_calls": _sandbox_calls(sandbox, source),
        }


def _sandbox_calls(sandbox: SandboxServer, source: str) -> int:
    """API calls as the sandbox counted them (transport retries included)."""
    stats = sandbox.hubspot_stats() if source == "hubspot" else sandbox.stats()
    return int(stats["api_calls"])


@contextmanager
def _world(
    deals: int,
    seed: int,
    today: date,
    *,
    onboarding_days: int = 3,
    recent_share: float = 0.2,
    adopt: bool = False,
    source: str = "salesforce",
    activities: int | None = None,
) -> Iterator[tuple]:
    """A seeded sandbox org, an SMTP sink and an empty state store, in a temp folder."""
    with tempfile.TemporaryDirectory(prefix="handoff-bench-") as folder:
        work = Path(folder)
        base = load_settings()
        settings = base.model_copy(
            update={
                "state": StateSettings(url=f"sqlite:///{work / 'state.db'}"),
                "output": base.output.model_copy(update={"run_dir": work / "runs"}),
                "detection": base.detection.model_copy(update={"adopt_clients_in_progress": adopt}),
                # Every due email goes out in the measured run, whatever the hour of the day
                # the benchmark is run at (the sending window would hold most of them).
                "email": base.email.model_copy(update={"business_hours_only": False}),
                "red_flags": base.red_flags.model_copy(
                    update={"enabled": activities is not None or base.red_flags.enabled}
                ),
            }
        )
        with SandboxServer(work / "sandbox.db") as sandbox, SmtpSink() as sink:
            started = time.perf_counter()
            seed_crm = seed_portal if source == "hubspot" else seed_org
            seeded = seed_crm(
                sandbox.hubspot_store if source == "hubspot" else sandbox.store,
                seed=seed,
                deals=deals,
                today=today,
                onboarding_days=onboarding_days,
                recent_share=recent_share,
                **({"activities_per_deal": activities} if activities else {}),
            )
            seeding = {"seeded": seeded, "seed_seconds": round(time.perf_counter() - started, 2)}
            store = StateStore(settings.state.url)
            store.migrate()
            crm = _crm(sandbox, settings, source)
            try:
                yield settings, store, crm, sink, sandbox, seeding
            finally:
                store.dispose()


def _crm(sandbox: SandboxServer, settings: Settings, source: str) -> CrmClient:
    """The source's connector, through its real client library, pointed at the sandbox."""
    if source == "hubspot":
        import hubspot

        from handoff.crm.hubspot import HubSpotCRM

        client = hubspot.Client.create(access_token=sandbox.token, host=sandbox.url)
        return HubSpotCRM.from_settings(client, settings)
    from simple_salesforce import Salesforce

    client = Salesforce(
        instance_url=sandbox.url, session_id=sandbox.token, session=build_session(sandbox.url)
    )
    return SalesforceCRM.from_settings(client, settings)


def _one_run(
    crm: CrmClient,
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
            # The process's peak so far (benchmark, sandbox and sink share the process).
            "peak_rss_mb": _peak_rss_mb(),
        }
    step_figures = list(figures.values())
    figures["total_seconds"] = round(sum(f["seconds"] for f in step_figures), 3)
    figures["total_api_calls"] = sum(f["api_calls"] for f in step_figures)
    return figures


def _peak_rss_mb() -> int:
    import resource

    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def format_report(result: dict[str, Any]) -> str:
    lines = [
        f"Benchmark ({result['scenario']}, {result['source']}): {result['deals']} deals seeded in "
        f"{result['seed_seconds']} s ({result['seeded'].get('recent_won')} recent wins"
        + (f", {result['onboarding']} clients in onboarding)" if "onboarding" in result else ")"),
        f"{'run':<9}{'step':<13}{'seconds':>9}{'API calls':>11}  result",
    ]
    runs = result["runs"]
    named = runs.items() if isinstance(runs, dict) else enumerate(runs, start=1)
    for number, run in named:
        for step, figures in run.items():
            if not isinstance(figures, dict):
                continue
            rest = {
                k: v
                for k, v in figures.items()
                if k not in ("seconds", "api_calls", "metrics_files")
            }
            lines.append(
                f"{number!s:<9}{step:<13}{figures['seconds']:>9.3f}{figures['api_calls']:>11}  "
                f"{json.dumps(rest)}"
            )
        lines.append(
            f"{number!s:<9}{'total':<13}{run['total_seconds']:>9.3f}{run['total_api_calls']:>11}"
        )
    lines.append(
        f"SMTP sessions: {result['smtp_sessions']}, messages: {result['messages_received']}, "
        f"API calls seen by the sandbox: {result['sandbox_api_calls']}"
    )
    return "\n".join(lines)
