"""``handoff benchmark``: the pipeline's cost at scale, against the sandbox CRM and SMTP sink.

Two scenarios. ``first-run``: an org of N deals (a fifth of them recent wins), every step of
the pipeline run twice for the same hour: the first run does the work, the re-run must find
nothing. ``steady-state``: clients spread over their 90 days, taken on at install, then one
hourly run, the same hour again (nothing changed, nothing due), and the run a day after the
install (a day's changes and due steps at once). It reports wall time per step and CRM API
calls, so batching (2,000-record query pages, 200-record sObject Collections, one SMTP
connection per batch) and planning cost show up as numbers.

Each step's calls are set against its *batch minimum*: the fewest calls the batch APIs allow
for the records the step actually moved, ``max(1, ceil(records / 2,000))`` for every query
stream it read (a query that finds nothing still costs a call) and ``ceil(records / 200)``
for every kind of record it wrote; describing an object moves no record and counts for none.

``naive=True`` (Salesforce) runs the naive peer (``benchmark_naive``) after ours, on a copy of
the same seeded org taken before our first run, with its own state store and SMTP sink: the
same steps for the same hours, one API call per record and one SMTP connection per email.
The figures are recorded in the README; re-run after changing a hot path.
"""

from __future__ import annotations

import json
import math
import sqlite3
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, ExitStack, closing, contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

import pandas as pd

from handoff.config import Settings, StateSettings, load_settings
from handoff.crm.base import CrmClient
from handoff.crm.http import build_session
from handoff.crm.salesforce import SalesforceCRM
from handoff.mail import MailTransport, smtp_transport
from handoff.models import Contact, CrmTask, Person, WriteResult
from handoff.pipeline import steps_in_order
from handoff.sandbox.hubspot_seed import seed_portal
from handoff.sandbox.seed import seed_org
from handoff.sandbox.server import SandboxServer
from handoff.smtp_sink import SmtpSink
from handoff.state import StateStore

QUERY_PAGE = 2000  # records a query page holds (Salesforce; the sandbox enforces it)
WRITE_BATCH = 200  # records an sObject Collections write takes


def run_benchmark(
    deals: int,
    *,
    seed: int = 7,
    today: date | None = None,
    source: str = "salesforce",
    naive: bool = False,
) -> dict[str, Any]:
    """First run on a fresh org (a fifth of its deals recent wins), then the same run again."""
    today = today or datetime.now(UTC).date()
    window_end = datetime.combine(today, datetime.min.time(), tzinfo=UTC) + timedelta(days=1)
    schedule = [("1", window_end, "bench-1"), ("2", window_end, "bench-2")]
    result = _measure(deals, seed, today, schedule, source=source, naive=naive)
    # A list of runs, in order (the scenario's shape before runs were named).
    result["runs"] = list(result["runs"].values())
    if naive:
        result["naive"]["runs"] = list(result["naive"]["runs"].values())
    return {"scenario": "first-run", **result}


def run_steady_state(
    deals: int,
    onboarding: int,
    *,
    seed: int = 7,
    today: date | None = None,
    source: str = "salesforce",
    activities: int | None = None,
    naive: bool = False,
) -> dict[str, Any]:
    """An org with ``onboarding`` clients spread over their 90 days, adopted at first install;
    then one hourly run, the same hour again with nothing left to do, and the run a day after
    the install.

    The figures to watch: the hourly run's planning time and its API calls, which must not
    grow with the number of clients in onboarding when nothing changed. With ``activities``,
    every client has that many activities in the CRM and the red-flag steps run: the install
    reads every client's history once, the later runs only what changed.
    """
    today = today or datetime.now(UTC).date()
    install = datetime.combine(today, datetime.min.time(), tzinfo=UTC) + timedelta(hours=10)
    schedule = [
        ("install", install, "install"),
        ("hourly", install + timedelta(hours=1), "h1"),
        ("quiet", install + timedelta(hours=1), "h1b"),
        ("day", install + timedelta(days=1), "d1"),
    ]
    share = min(1.0, onboarding / max(deals, 1))
    result = _measure(
        deals,
        seed,
        today,
        schedule,
        source=source,
        naive=naive,
        onboarding_days=90,
        recent_share=share,
        adopt=True,
        activities=activities,
    )
    return {"scenario": "steady-state", "activities_per_deal": activities, **result}


def _measure(
    deals: int,
    seed: int,
    today: date,
    schedule: Sequence[tuple[str, datetime, str]],
    *,
    source: str,
    naive: bool,
    **world: Any,
) -> dict[str, Any]:
    """Our runs on a seeded org; with ``naive``, then the naive peer's on a copy of it."""
    if naive and source != "salesforce":
        raise ValueError("the naive peer is written for Salesforce only")
    with tempfile.TemporaryDirectory(prefix="handoff-bench-") as folder:
        work = Path(folder)
        with _world(work, deals, seed, today, source=source, snapshot=naive, **world) as ours:
            result: dict[str, Any] = {
                "source": source,
                "deals": deals,
                **ours.seeding,
                **_runs(ours, schedule),
            }
            if "onboarding_days" in world:
                result["onboarding"] = ours.store.count_onboarding(source)
        if naive:
            with _naive_world(work, ours.settings) as peer:
                result["naive"] = _runs(peer, schedule)
        return result


@dataclass
class _World:
    """One side of the benchmark: a sandbox org, an SMTP sink, a state store, a connector."""

    settings: Settings
    store: StateStore
    crm: _Counted
    sink: SmtpSink
    sandbox: SandboxServer
    open_transport: Callable[[], AbstractContextManager[MailTransport]]
    seeding: dict[str, Any]

    def sandbox_stats(self) -> dict[str, Any]:
        """API calls as the sandbox counted them (transport retries included), per route."""
        source = self.crm.source
        return self.sandbox.hubspot_stats() if source == "hubspot" else self.sandbox.stats()

    def sandbox_calls(self) -> int:
        return int(self.sandbox_stats()["api_calls"])


def _runs(world: _World, schedule: Sequence[tuple[str, datetime, str]]) -> dict[str, Any]:
    runs = {name: _one_run(world, at, run_id) for name, at, run_id in schedule}
    return {
        "runs": runs,
        "smtp_sessions": world.sink.sessions,
        "messages_received": len(world.sink.messages),
        "sandbox_api_calls": world.sandbox_calls(),
    }


@contextmanager
def _world(
    work: Path,
    deals: int,
    seed: int,
    today: date,
    *,
    onboarding_days: int = 3,
    recent_share: float = 0.2,
    adopt: bool = False,
    source: str = "salesforce",
    activities: int | None = None,
    snapshot: bool = False,
) -> Iterator[_World]:
    """A seeded sandbox org, an SMTP sink and an empty state store, in ``work``; with
    ``snapshot``, a copy of the seeded org (``naive-sandbox.db``) for the naive peer."""
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
        if snapshot:
            with (
                closing(sqlite3.connect(work / "sandbox.db")) as original,
                closing(sqlite3.connect(work / "naive-sandbox.db")) as copy,
            ):
                original.backup(copy)
        store = StateStore(settings.state.url)
        store.migrate()
        crm = _Counted(_crm(sandbox, settings, source))
        transport = partial(smtp_transport, sink.host, sink.port)
        try:
            yield _World(settings, store, crm, sink, sandbox, transport, seeding)
        finally:
            store.dispose()


@contextmanager
def _naive_world(work: Path, ours: Settings) -> Iterator[_World]:
    """The naive peer's side: the copy of the seeded org, its own sink and state store."""
    from simple_salesforce import Salesforce

    from handoff.benchmark_naive import NaiveSalesforceCRM, connection_per_email

    settings = ours.model_copy(
        update={
            "state": StateSettings(url=f"sqlite:///{work / 'naive-state.db'}"),
            "output": ours.output.model_copy(update={"run_dir": work / "naive-runs"}),
        }
    )
    with ExitStack() as stack:
        sandbox = stack.enter_context(SandboxServer(work / "naive-sandbox.db"))
        sink = stack.enter_context(SmtpSink())
        store = StateStore(settings.state.url)
        store.migrate()
        stack.callback(store.dispose)
        client = Salesforce(
            instance_url=sandbox.url, session_id=sandbox.token, session=build_session(sandbox.url)
        )
        crm = _Counted(NaiveSalesforceCRM.from_settings(client, settings))
        transport = partial(connection_per_email, sink.host, sink.port)
        yield _World(settings, store, crm, sink, sandbox, transport, {})


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


class _Counted:
    """A connector that tallies the records each kind of call moved, for the batch minimum.

    Reads are tallied per query stream (deals; each activity stream, first reads and changes
    apart; contact roles; task keys; users), writes per kind of record. It delegates
    everything else, and counts no call: the connector's session and the sandbox do.
    """

    def __init__(self, crm: CrmClient) -> None:
        self._crm = crm
        self.reads: Counter[str] = Counter()
        self.writes: Counter[str] = Counter()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._crm, name)

    def take_minimum(self) -> int:
        """The batch minimum of what was moved since the last call (then the tally restarts)."""
        reads = sum(max(1, math.ceil(n / QUERY_PAGE)) for n in self.reads.values())
        writes = sum(math.ceil(n / WRITE_BATCH) for n in self.writes.values())
        self.reads.clear()
        self.writes.clear()
        return reads + writes

    def iter_changed_deals(self, since: datetime | None, until: datetime) -> Iterator[pd.DataFrame]:
        self.reads["Opportunity"] += 0
        for page in self._crm.iter_changed_deals(since, until):
            self.reads["Opportunity"] += len(page)
            yield page

    def iter_activities(
        self,
        stream: str,
        deals: Mapping[str, str | None],
        since: datetime | None,
        until: datetime,
    ) -> Iterator[pd.DataFrame]:
        key = f"{stream} ({'first read' if since is None else 'changes'})"
        self.reads[key] += 0
        for page in self._crm.iter_activities(stream, deals, since, until):
            # A record on a contact who is primary on several deals is one row per deal.
            self.reads[key] += int(page["activity_id"].nunique())
            yield page

    def primary_contacts(self, deal_ids: Sequence[str]) -> dict[str, Contact]:
        found = self._crm.primary_contacts(deal_ids)
        if deal_ids:
            self.reads["OpportunityContactRole"] += len(found)
        return found

    def users_by_email(self, emails: Sequence[str]) -> dict[str, Person]:
        found = self._crm.users_by_email(emails)
        if emails:
            self.reads["User"] += len(found)
        return found

    def find_tasks(self, deal_ids: Sequence[str]) -> dict[str, str]:
        found = self._crm.find_tasks(deal_ids)
        if deal_ids:
            self.reads["Task (keys)"] += len(found)
        return found

    def create_tasks(self, tasks: Sequence[CrmTask]) -> list[WriteResult]:
        self.writes["Task"] += len(tasks)
        return self._crm.create_tasks(tasks)

    def set_email_opt_out(self, contact_ids: Sequence[str]) -> list[WriteResult]:
        self.writes["Contact"] += len(contact_ids)
        return self._crm.set_email_opt_out(contact_ids)


def _one_run(world: _World, window_end: datetime, run_id: str) -> dict[str, Any]:
    crm, sink = world.crm, world.sink
    steps = steps_in_order(
        crm, world.store, world.settings, world.open_transport, run_id, window_end
    )
    sessions, messages = sink.sessions, len(sink.messages)
    seen, routes = world.sandbox_calls(), Counter(world.sandbox_stats()["by_route"])
    crm.take_minimum()
    figures: dict[str, Any] = {}
    for name, step in steps.items():
        calls = crm.api_calls
        started = time.perf_counter()
        result = step()
        figures[name] = {
            "seconds": round(time.perf_counter() - started, 3),
            "api_calls": crm.api_calls - calls,
            "batch_minimum": crm.take_minimum(),
            **{k: v for k, v in result.items() if k != "api_calls"},
            # The process's peak so far (benchmark, sandbox and sink share the process).
            "peak_rss_mb": _peak_rss_mb(),
        }
    step_figures = list(figures.values())
    figures["total_seconds"] = round(sum(f["seconds"] for f in step_figures), 3)
    figures["total_api_calls"] = sum(f["api_calls"] for f in step_figures)
    figures["total_batch_minimum"] = sum(f["batch_minimum"] for f in step_figures)
    figures["sandbox_api_calls"] = world.sandbox_calls() - seen
    # What the sandbox served this run, by route (query, query_more, retrieve, create, ...).
    figures["sandbox_routes"] = dict(Counter(world.sandbox_stats()["by_route"]) - routes)
    figures["smtp_sessions"] = sink.sessions - sessions
    figures["messages_received"] = len(sink.messages) - messages
    figures["peak_rss_mb"] = _peak_rss_mb()
    return figures


def _peak_rss_mb() -> int:
    import resource

    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def _ratio(calls: int, minimum: int) -> str:
    if not minimum:
        return "-"
    ratio = calls / minimum
    return f"{ratio:.2f}" if ratio < 100 else f"{ratio:,.0f}"


def _named(runs: Any) -> list[tuple[str, dict[str, Any]]]:
    named = runs.items() if isinstance(runs, dict) else enumerate(runs, start=1)
    return [(str(name), run) for name, run in named]


def _step_lines(runs: Any) -> list[str]:
    lines = [f"{'run':<9}{'step':<16}{'seconds':>9}{'API calls':>11}{'minimum':>9}  result"]
    for number, run in _named(runs):
        for step, figures in run.items():
            if not isinstance(figures, dict) or "seconds" not in figures:
                continue  # the run's totals and the sandbox's routes
            rest = {
                k: v
                for k, v in figures.items()
                if k not in ("seconds", "api_calls", "batch_minimum", "metrics_files")
            }
            lines.append(
                f"{number:<9}{step:<16}{figures['seconds']:>9.3f}{figures['api_calls']:>11}"
                f"{figures['batch_minimum']:>9}  {json.dumps(rest)}"
            )
        lines.append(
            f"{number:<9}{'total':<16}{run['total_seconds']:>9.3f}{run['total_api_calls']:>11}"
            f"{run['total_batch_minimum']:>9}"
        )
    return lines


def format_report(result: dict[str, Any]) -> str:
    lines = [
        f"Benchmark ({result['scenario']}, {result['source']}): {result['deals']} deals seeded in "
        f"{result['seed_seconds']} s ({result['seeded'].get('recent_won')} recent wins"
        + (f", {result['onboarding']} clients in onboarding)" if "onboarding" in result else ")"),
        *_step_lines(result["runs"]),
        f"SMTP sessions: {result['smtp_sessions']}, messages: {result['messages_received']}, "
        f"API calls seen by the sandbox: {result['sandbox_api_calls']}",
    ]
    naive = result.get("naive")
    if naive:
        lines += [
            "",
            "Naive peer (the same steps on a copy of the same org: one API call per record, "
            "one SMTP connection per email; measured on every record, not sampled):",
            *_step_lines(naive["runs"]),
            f"SMTP sessions: {naive['smtp_sessions']}, messages: {naive['messages_received']}, "
            f"API calls seen by the sandbox: {naive['sandbox_api_calls']}",
        ]
    lines += ["", *_comparison(result)]
    return "\n".join(lines)


def _comparison(result: dict[str, Any]) -> list[str]:
    """One line a run: ours against the batch minimum (and the naive peer's, when it ran)."""
    naive = dict(_named(result["naive"]["runs"])) if result.get("naive") else {}
    head = (
        f"{'run':<9}{'seconds':>9}{'API calls':>11}{'minimum':>9}{'ratio':>7}{'peak RSS':>10}"
        f"{'SMTP':>6}"
    )
    if naive:
        head += f"  | naive:{'seconds':>9}{'API calls':>11}{'ratio':>9}{'SMTP':>7}"
    lines = ["Per run (ratio: API calls / our batch minimum; SMTP: connections opened)", head]
    for name, run in _named(result["runs"]):
        minimum = run["total_batch_minimum"]
        line = (
            f"{name:<9}{run['total_seconds']:>9.2f}{run['total_api_calls']:>11,}{minimum:>9,}"
            f"{_ratio(run['total_api_calls'], minimum):>7}{run['peak_rss_mb']:>7} MB"
            f"{run['smtp_sessions']:>6,}"
        )
        if name in naive:
            peer = naive[name]
            line += (
                f"  |       {peer['total_seconds']:>9.2f}{peer['total_api_calls']:>11,}"
                f"{_ratio(peer['total_api_calls'], minimum):>9}{peer['smtp_sessions']:>7,}"
            )
        lines.append(line)
    return lines
