"""``handoff``: run the handoff DAG, the sandbox CRM, the SMTP sink, or the whole demo.

``handoff run`` makes one run of the same DAG the scheduler runs (``handoff_<source>``, defined
in ``dags/handoff.py``, through Airflow's ``dag.test``), against whatever the Airflow
connections point at, and prints the run's summary and one JSON line. ``handoff demo`` does
the same against the built-in sandbox CRM and a local SMTP sink.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import sys
from contextlib import contextmanager
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any

from handoff.config import project_root

SOURCES = ("salesforce", "hubspot")


def airflow_environment(root: Path) -> dict[str, str]:
    """Airflow settings for a project-local home; values already set in the shell win."""
    home = root / ".airflow"
    return {
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(root / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(root / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
    }


def _prepare_airflow() -> Path:
    root = project_root()
    for key, value in airflow_environment(root).items():
        os.environ.setdefault(key, value)
    plugins = os.environ["AIRFLOW__CORE__PLUGINS_FOLDER"]
    if plugins not in sys.path:
        sys.path.insert(0, plugins)
    return root


# -- run ---------------------------------------------------------------------------------------


def logical_date_for(
    day: date | None, now: datetime | None = None, at: datetime | None = None
) -> datetime:
    """The run's data interval ends at its logical date: ``--at T`` ends at T, ``--date D``
    at the end of day D; without either the window ends now."""
    if at is not None:
        return at.astimezone(UTC)
    if day is None:
        return (now or datetime.now(UTC)).replace(microsecond=0)
    return datetime.combine(day + timedelta(days=1), time(0), tzinfo=UTC)


def load_dag(source: str, file: str = "handoff.py", dag_id: str | None = None):
    """The DAG ``handoff_<source>`` of ``dags/handoff.py`` (the one the scheduler runs), or
    ``dag_id`` of another DAG file."""
    import importlib.util

    dag_id = dag_id or f"handoff_{source}"
    path = Path(os.environ["AIRFLOW__CORE__DAGS_FOLDER"]) / file
    spec = importlib.util.spec_from_file_location(f"dag_{dag_id}", path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"no DAG file {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    # The DAG file imports Airflow; this package never does (it finds the DAG by its id).
    for value in vars(module).values():
        if getattr(value, "dag_id", None) == dag_id and hasattr(value, "test"):
            return value
    hint = f"is {source!r} in [sources].enabled?" if file == "handoff.py" else "is it enabled?"
    raise SystemExit(f"{path} defines no DAG named {dag_id}: {hint}")


def run_digest_dag(day: date | None, *, verbose: bool = False) -> tuple[int, Path | None]:
    """One run of ``handoff_digest``; returns (exit code, the digest file when written)."""
    _prepare_airflow()
    from handoff.config import ConfigError, load_settings

    try:
        settings = load_settings()
    except ConfigError as exc:
        print(f"Configuration error: {exc}", file=sys.stderr)
        return 2, None
    end = logical_date_for(day)
    log_path = settings.output.run_dir / "airflow.log"
    with _one_run_at_a_time("digest", str(end)), _output_to(log_path, enabled=not verbose):
        dag_run = load_dag("digest", "handoff_digest.py", "handoff_digest").test(logical_date=end)
    page = settings.digest.output_dir / (end - timedelta(seconds=1)).date().isoformat()
    page = page / "digest.html"
    state = str(getattr(dag_run.state, "value", dag_run.state))
    if state != "success":
        print(
            f"Digest run {dag_run.run_id} ended {state}; Airflow's log: {log_path}", file=sys.stderr
        )
        return 1, page if page.exists() else None
    return 0, page


@contextmanager
def _output_to(log_path: Path, enabled: bool):
    """Send Airflow's own output to a log file so the terminal shows the summary."""
    if not enabled:
        yield
        return
    log_path.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(log_path, "ab") as handle:
        os.dup2(handle.fileno(), 1)
        os.dup2(handle.fileno(), 2)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


@contextmanager
def _one_run_at_a_time(source: str, when: date | str | None):
    """Two runs of one source at once would trip over each other inside Airflow: refuse."""
    import fcntl

    home = Path(os.environ["AIRFLOW_HOME"])
    home.mkdir(parents=True, exist_ok=True)
    label = str(when) if when else "now"
    with open(home / f"handoff-run-{source}.lock", "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise RunInProgress(
                f"a {source} run is already in progress ({holder}); wait for it to finish "
                f"before starting the run for {label}"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"the run for {label}, process {os.getpid()}")
        handle.flush()
        yield


class RunInProgress(RuntimeError):
    """Another ``handoff run`` of the same source holds the lock."""


def run_dag(
    source: str,
    day: date | None,
    *,
    verbose: bool = False,
    at: datetime | None = None,
    dry_run: bool = False,
) -> tuple[int, dict | None]:
    """One DAG run; returns (exit code, summary). A failed run still returns its summary.

    The state store is upgraded first (the local equivalent of a deployment's init step). A
    dry run returns its report instead of a summary.
    """
    _prepare_airflow()
    from handoff.config import ConfigError, load_settings
    from handoff.pipeline import run_folder
    from handoff.state import StateStore

    try:
        settings = load_settings()
    except ConfigError as exc:
        print(f"Configuration error: {exc}", file=sys.stderr)
        return 2, None
    store = StateStore(settings.state.url)
    print(f"State store: {store.location}")
    try:
        store.migrate()
    finally:
        store.dispose()
    log_path = settings.output.run_dir / "airflow.log"
    label = at.isoformat() if at else day
    try:
        with _one_run_at_a_time(source, label), _output_to(log_path, enabled=not verbose):
            dag = load_dag(source)
            dag_run = dag.test(
                logical_date=logical_date_for(day, at=at), run_conf={"dry_run": dry_run}
            )
    except RunInProgress as exc:
        print(f"Not started: {exc}", file=sys.stderr)
        return 1, None
    report = "dry_run.json" if dry_run else "summary.json"
    summary_path = run_folder(settings, dag_run.dag_id, dag_run.run_id) / report
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else None
    state = str(getattr(dag_run.state, "value", dag_run.state))
    if state == "success" and summary is not None:
        return 0, summary
    if summary is None or dry_run:
        failed = [ti.task_id for ti in dag_run.get_task_instances() if ti.state != "success"]
        print(
            f"DAG run {dag_run.run_id} ended {state} before it could write its summary; "
            f"unfinished tasks: {', '.join(failed)}. Airflow's log: {log_path}",
            file=sys.stderr,
        )
    else:
        causes = "; ".join(f"{f['step']}: {f['message']}" for f in summary["failed_steps"])
        print(f"DAG run {dag_run.run_id} ended {state}. {causes}", file=sys.stderr)
    return 1, summary


# -- demo --------------------------------------------------------------------------------------


def sandbox_connections(
    salesforce_url: str,
    token: str,
    smtp_host: str,
    smtp_port: int,
    unsubscribe_key: str | None = None,
) -> dict[str, dict[str, Any]]:
    """The Airflow connections (by id) of the sandbox CRM and the SMTP sink."""
    salesforce = {
        "conn_type": "salesforce",
        "password": token,
        "extra": {"instance_url": salesforce_url, "version": "59.0"},
    }
    smtp = {
        "conn_type": "smtp",
        "host": smtp_host,
        "port": smtp_port,
        "extra": {"disable_ssl": True, "disable_tls": True, "timeout": 10, "retry_limit": 2},
    }
    # The sandbox serves HubSpot's API on the same address, with the same token.
    hubspot = {"conn_type": "hubspot", "host": salesforce_url, "password": token}
    # The key of unsubscribe tokens: a fresh random one per sandbox session unless given.
    key = unsubscribe_key or secrets.token_urlsafe(32)
    return {
        "salesforce_default": salesforce,
        "smtp_default": smtp,
        "hubspot_default": hubspot,
        "handoff_unsubscribe": {"conn_type": "generic", "password": key},
    }


def connection_env(salesforce_url: str, token: str, smtp_host: str, smtp_port: int) -> dict:
    """The sandbox's connections as ``AIRFLOW_CONN_*`` JSON (for ``dag.test`` runs)."""
    return {
        f"AIRFLOW_CONN_{conn_id.upper()}": json.dumps(fields)
        for conn_id, fields in sandbox_connections(
            salesforce_url, token, smtp_host, smtp_port
        ).items()
    }


def run_demo(args: argparse.Namespace) -> int:
    # The development modules first: without them (the production install) this fails at once.
    from handoff.sandbox.hubspot_seed import seed_portal
    from handoff.sandbox.seed import seed_org
    from handoff.sandbox.server import SandboxServer
    from handoff.smtp_sink import SmtpSink

    root = _prepare_airflow()
    from handoff.pipeline import format_summary, summary_line

    demo_dir = args.workdir or root / "var" / "demo"
    if args.reset and demo_dir.exists():
        import shutil

        shutil.rmtree(demo_dir)
    demo_dir.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("HANDOFF_STATE_URL", f"sqlite:///{demo_dir / 'state.db'}")
    os.environ.setdefault("HANDOFF_RUN_DIR", str(demo_dir / "runs"))
    # The sandbox is a Salesforce org and a HubSpot portal with the same clients: one DAG each.
    os.environ.setdefault("HANDOFF_SOURCES", ",".join(SOURCES))
    os.environ.setdefault("HANDOFF_DIGEST_DIR", str(demo_dir / "digest"))
    # A first install in an org with clients at every stage of their 90 days: they are taken
    # on for their future steps and watched for red flags from the first run.
    os.environ.setdefault("HANDOFF_ADOPT_CLIENTS_IN_PROGRESS", "on")
    sandbox_db = demo_dir / "sandbox.db"
    summaries: dict[str, dict[str, Any]] = {}
    code = 0
    with (
        SandboxServer(sandbox_db) as sandbox,
        SmtpSink(demo_dir / "mailbox") as sink,
    ):
        if sandbox.store.is_empty():
            seeded = seed_org(sandbox.store, seed=args.seed, deals=args.deals, today=args.today)
            print(f"Seeded the sandbox Salesforce org: {seeded}")
        if sandbox.hubspot_store.is_empty():
            seeded = seed_portal(
                sandbox.hubspot_store, seed=args.seed, deals=args.deals, today=args.today
            )
            print(f"Seeded the sandbox HubSpot portal: {seeded}")
        os.environ.update(connection_env(sandbox.url, sandbox.token, sink.host, sink.port))
        print(f"Sandbox CRM {sandbox.url} - SMTP sink {sink.host}:{sink.port}")
        for source in SOURCES:
            source_code, summary = run_dag(source, None, verbose=args.verbose)
            code = code or source_code
            if summary is not None:
                summaries[source] = summary
        digest_code, digest = run_digest_dag(None, verbose=args.verbose)
        code = code or digest_code
        received = len(sink.messages)
    if not summaries:
        return code
    for source, summary in summaries.items():
        print(f"\n=== {source} ===")
        print(format_summary(summary))
    print(f"The SMTP sink received {received} messages; copies in {demo_dir / 'mailbox'}")
    if digest is not None:
        print(f"The RevOps digest (metrics as CSV and Parquet beside it): {digest}")
    index = _preview_a_demo_client(demo_dir)
    if index is not None:
        print(f"Every step of one demo client's 90 days, each email as they will read it: {index}")
    lines = {source: json.loads(summary_line(summary)) for source, summary in summaries.items()}
    print(json.dumps(_combined(lines)))
    return code


def _combined(lines: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """One JSON line for several sources: the totals, and each source's own line."""
    total: dict[str, Any] = {}
    for source, line in lines.items():
        for key, value in line.items():
            if isinstance(value, int):
                total[key] = total.get(key, 0) + value
            elif isinstance(value, list):
                total.setdefault(key, []).extend(f"{source}:{item}" for item in value)
    return {**total, "sources": lines}


def _preview_a_demo_client(demo_dir: Path) -> Path | None:
    """The preview of the first demo client whose welcome went out (None when none did)."""
    from handoff.config import load_settings
    from handoff.preview import load_deal, preview_deal
    from handoff.state import StateStore

    settings = load_settings()
    store = StateStore(settings.state.url)
    try:
        sent = store.actions(source="salesforce", step="welcome_email", status="done")
        deal = load_deal(store, "salesforce", sent[0]["deal_id"]) if sent else None
        if deal is None:
            return None
        return preview_deal(settings, store, deal, demo_dir / "preview" / deal.deal_id)
    finally:
        store.dispose()


def run_once(args: argparse.Namespace) -> int:
    from handoff.pipeline import format_dry_run, format_summary, summary_line

    code, summary = run_dag(
        args.source, args.date, verbose=args.verbose, at=args.at, dry_run=args.dry_run
    )
    if summary is not None and args.dry_run:
        print(format_dry_run(summary))
    elif summary is not None:
        print(format_summary(summary))
        print(summary_line(summary))
    return code


def _settings_or_none():
    """The validated settings, or None after printing the configuration error."""
    from handoff.config import ConfigError, load_settings

    try:
        return load_settings()
    except ConfigError as exc:
        print(f"Configuration error: {exc}", file=sys.stderr)
        return None


def upgrade_store(args: argparse.Namespace) -> int:  # noqa: ARG001
    """``handoff db upgrade``: bring the state store's schema to this version, once."""
    from handoff.state import StateStore

    if (settings := _settings_or_none()) is None:
        return 2
    store = StateStore(settings.state.url)
    try:
        before = store.current_revision()
        store.migrate()
        after = store.current_revision()
        print(f"State store {store.location}: schema {before or '(none)'} -> {after}")
    finally:
        store.dispose()
    return 0


def init_store(args: argparse.Namespace) -> int:
    """Create or upgrade the state store; declare it the start of this CRM's history."""
    from handoff.pipeline import declare_fresh_start
    from handoff.state import StateStore

    if (settings := _settings_or_none()) is None:
        return 2
    store = StateStore(settings.state.url)
    try:
        print(f"State store: {store.location}")
        start = declare_fresh_start(store, datetime.now(UTC))
    finally:
        store.dispose()
    if start is None:
        print("The store holds history already: its schema is up to date, nothing else changed.")
    else:
        print(
            f"The store is ready. It onboards deals won from {start} on; earlier wins are left "
            "to any earlier installation. Running `handoff init` again changes nothing."
        )
    return 0


def preview(args: argparse.Namespace) -> int:
    """``handoff preview``: every step of one deal's 90 days, each email as the client sees it."""
    from handoff.preview import load_deal, preview_deal, sample_deal
    from handoff.state import StateStore

    if (settings := _settings_or_none()) is None:
        return 2
    root = project_root()
    if args.deal is None:
        deal = sample_deal(settings, datetime.now(UTC), args.source)
        out = args.out or root / "var" / "previews" / "sample"
        index = preview_deal(settings, None, deal, out)
    else:
        store = StateStore(settings.state.url)
        try:
            store.migrate()
            deal = load_deal(store, args.source, args.deal)
            if deal is None or deal.won_at is None:
                print(
                    f"No won deal {args.deal} of {args.source} in the state store "
                    f"{store.location}; a deal appears there once a run has read it",
                    file=sys.stderr,
                )
                return 1
            out = args.out or root / "var" / "previews" / f"{args.source}-{args.deal}"
            index = preview_deal(settings, store, deal, out)
        finally:
            store.dispose()
    print(f"Preview of every step: {index}")
    return 0


def status(args: argparse.Namespace) -> int:
    """``handoff status``: what is due, held, failed and flagged, per source (read-only)."""
    from handoff.state import StateStore
    from handoff.status import format_status, store_status

    if (settings := _settings_or_none()) is None:
        return 2
    store = StateStore(settings.state.url)
    try:
        store.check_schema()
        result = store_status(store, settings, datetime.now(UTC))
    finally:
        store.dispose()
    print(json.dumps(result, default=str, indent=2) if args.json else format_status(result))
    return 0


def _print_pools() -> int:
    from handoff.pools import pools_file_content

    print(json.dumps(pools_file_content(), indent=2))
    return 0


def resend(args: argparse.Namespace) -> int:
    """``handoff resend``: put a deal's failed steps back in line for the next run."""
    from handoff.state import StateStore

    if (settings := _settings_or_none()) is None:
        return 2
    store = StateStore(settings.state.url)
    try:
        store.check_schema()
        requeued, refused = store.requeue(
            args.source,
            args.deal,
            datetime.now(UTC),
            step=args.step,
            checked_not_delivered=args.checked_not_delivered,
        )
    finally:
        store.dispose()
    for row in requeued:
        print(f"Re-send {row.deal_id} {row.step} ({row.kind.value}); it failed with: {row.reason}")
    for row, why in refused:
        print(f"Not re-sent: {row.deal_id} {row.step}: {why}")
    if not requeued:
        print(f"Nothing to re-send for deal {args.deal} of {args.source}.")
        return 1
    print(f"The next run of handoff_{args.source} sends them (or trigger one now).")
    return 0


def digest(args: argparse.Namespace) -> int:
    """``handoff digest``: the metrics and the digest of a day, sent once."""
    code, page = run_digest_dag(args.date, verbose=args.verbose)
    if page is not None:
        print(f"The RevOps digest: {page}")
    return code


def backtest(args: argparse.Namespace) -> int:
    """``handoff backtest``: what the rules and the playbook would have done over the history
    in the state store, with the current settings; nothing is sent or written to the CRM."""
    from handoff.playbook import parse_duration
    from handoff.reporting.backtest import format_backtest, run_backtest, write_backtest
    from handoff.state import StateStore

    if (settings := _settings_or_none()) is None:
        return 2
    end = args.at or datetime.now(UTC)
    store = StateStore(settings.state.url)
    try:
        store.check_schema()
        result = run_backtest(
            store, settings, args.source, end, args.days, parse_duration(args.every)
        )
    finally:
        store.dispose()
    folder = args.out or project_root() / "var" / "backtest" / f"{args.source}-{end:%Y%m%dT%H%M}"
    files = write_backtest(result, folder)
    print(format_backtest(result))
    print(f"Every flag and due step: {', '.join(str(f) for f in files)}")
    print(json.dumps(result.summary()))
    return 0


# -- entry point -------------------------------------------------------------------------------


def _date(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date like 2026-11-23") from exc


def _moment(text: str) -> datetime:
    try:
        value = datetime.fromisoformat(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an ISO 8601 time like 2026-11-23T14:00:00Z"
        ) from exc
    if value.tzinfo is None:
        raise argparse.ArgumentTypeError(f"{text!r} has no time zone; add Z or +01:00")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="handoff", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="one run of the handoff DAG for a source")
    run.add_argument("--source", choices=SOURCES, default="salesforce")
    when = run.add_mutually_exclusive_group()
    when.add_argument("--date", type=_date, help="the run as of the end of this day (UTC)")
    when.add_argument(
        "--at",
        type=_moment,
        help="the run whose data interval ends at this ISO 8601 time (replay any hour)",
    )
    run.add_argument(
        "--dry-run",
        action="store_true",
        help="show every email, task, skip and hold the run would make; change nothing",
    )
    run.add_argument("--verbose", action="store_true", help="show Airflow's output")

    show = commands.add_parser(
        "preview", help="every step of one deal's 90 days with each email, as HTML files"
    )
    show.add_argument("--deal", help="the CRM deal id (default: a built-in sample client)")
    show.add_argument("--source", choices=SOURCES, default="salesforce")
    show.add_argument("--out", type=Path, help="the folder to write (default var/previews/...)")

    replay = commands.add_parser(
        "backtest",
        help="replay the red-flag rules and the playbook over the stored history; change nothing",
    )
    replay.add_argument("--days", type=int, default=90, help="how far back to replay")
    replay.add_argument("--source", choices=SOURCES, default="salesforce")
    replay.add_argument("--every", default="1d", help="evaluate every ... (e.g. 1d, 6h)")
    replay.add_argument("--at", type=_moment, help="the end of the replay (default: now)")
    replay.add_argument("--out", type=Path, help="the folder for flags.csv and steps.csv")

    state = commands.add_parser(
        "status", help="what is due, held, failed and flagged, per source (changes nothing)"
    )
    state.add_argument("--json", action="store_true", help="print it as JSON")

    daily = commands.add_parser(
        "digest", help="metrics and the RevOps digest now (one run of the handoff_digest DAG)"
    )
    daily.add_argument("--date", type=_date, help="the digest of this day (UTC)")
    daily.add_argument("--verbose", action="store_true", help="show Airflow's output")

    again = commands.add_parser("resend", help="put a deal's failed steps back for the next run")
    again.add_argument("--source", choices=SOURCES, required=True)
    again.add_argument("--deal", required=True, help="the deal's CRM id")
    again.add_argument("--step", help="only this step (all the deal's failed steps without it)")
    again.add_argument(
        "--checked-not-delivered",
        action="store_true",
        help="also steps whose outcome is unknown, once you checked they did not arrive",
    )
    commands.add_parser(
        "pools", help="the Airflow pools the DAGs use, as JSON for `airflow pools import`"
    )
    db = commands.add_parser("db", help="state store schema")
    db.add_argument("action", choices=["upgrade"], help="upgrade: migrate to this version")

    commands.add_parser(
        "init",
        help="create or upgrade the state store and make it the start of the CRM's history",
    )

    demo = commands.add_parser("demo", help="run the DAG against the sandbox CRM and an SMTP sink")
    demo.add_argument("--reset", action="store_true", help="start from a freshly seeded CRM")
    demo.add_argument("--seed", type=int, default=7)
    demo.add_argument("--deals", type=int, default=60)
    demo.add_argument("--today", type=_date, default=datetime.now(UTC).date())
    demo.add_argument("--verbose", action="store_true")
    demo.add_argument("--workdir", type=Path, help="where the demo keeps its data (var/demo)")

    sandbox = commands.add_parser("sandbox", help="serve the Salesforce-compatible sandbox CRM")
    sandbox.add_argument("--db", type=Path, default=Path("var/sandbox/sandbox.db"))
    sandbox.add_argument("--seed", type=int, default=7)
    sandbox.add_argument("--deals", type=int, default=60)
    sandbox.add_argument("--today", type=_date, default=datetime.now(UTC).date())
    sandbox.add_argument("--host", default="127.0.0.1")
    sandbox.add_argument("--port", type=int, default=0)
    sandbox.add_argument("--token", default="sandbox-token")
    sandbox.add_argument("--reset", action="store_true")

    bench = commands.add_parser("benchmark", help="time the pipeline on a large sandbox org")
    bench.add_argument("--deals", type=int, default=5000)
    bench.add_argument("--source", choices=SOURCES, default="salesforce")
    bench.add_argument(
        "--scenario",
        choices=["first-run", "steady-state"],
        default="first-run",
        help="first-run: a fresh org, then the next day; steady-state: clients spread over "
        "their 90 days, adopted at install, then one hourly run",
    )
    bench.add_argument(
        "--onboarding", type=int, default=20000, help="steady-state: clients in onboarding"
    )
    bench.add_argument(
        "--activities",
        type=int,
        help="steady-state: activities per client in the CRM, and the red-flag steps run",
    )
    bench.add_argument(
        "--naive",
        action="store_true",
        help="then run the naive peer (one API call per record, one SMTP connection per email) "
        "on a copy of the same org, for the same runs (Salesforce only)",
    )
    bench.add_argument("--seed", type=int, default=7)
    bench.add_argument("--json", action="store_true", help="print the figures as JSON")

    stack = commands.add_parser(
        "stack", help="the production topology (Celery workers) as processes on this machine"
    )
    stack.add_argument("action", choices=["up", "down", "benchmark"])
    stack.add_argument("--home", type=Path, default=Path("var/stack"))
    stack.add_argument("--api-port", type=int, default=8080)
    stack.add_argument("--workers", type=int, default=2)
    stack.add_argument("--concurrency", type=int, default=4, help="task slots per worker")
    stack.add_argument(
        "--trigger", action="store_true", help="up: unpause every DAG and trigger one run"
    )
    stack.add_argument("--purge", action="store_true", help="down: drop its databases and files")
    stack.add_argument(
        "--worker-counts", default="1,2", help="benchmark: the stacks to compare (workers)"
    )
    stack.add_argument("--deals", type=int, default=3000, help="benchmark: the org's deals")
    stack.add_argument("--shards", type=int, default=4, help="benchmark: [dispatch].shards")
    stack.add_argument("--rows-per-shard", type=int, default=100)
    stack.add_argument(
        "--relay-delay-ms", type=int, default=50, help="benchmark: the SMTP relay's latency"
    )

    sink = commands.add_parser("smtp-sink", help="serve a local SMTP sink that keeps messages")
    sink.add_argument("--host", default="127.0.0.1")
    sink.add_argument("--port", type=int, default=0)
    sink.add_argument("--maildir", type=Path, default=Path("var/mailbox"))
    sink.add_argument(
        "--drop-every", type=int, default=0, help="chaos: drop the connection after every Nth"
    )
    sink.add_argument("--delay-ms", type=int, default=0, help="chaos: answer each DATA late")
    return parser


# Commands served by modules of the development install only (the sandbox dependency group);
# the production wheel and image leave these modules out.
DEVELOPMENT_COMMANDS = frozenset({"demo", "sandbox", "benchmark", "smtp-sink", "stack"})
DEVELOPMENT_MODULES = (
    "handoff.sandbox",
    "handoff.smtp_sink",
    "handoff.benchmark",
    "handoff.benchmark_naive",
    "handoff.stack",
    "aiosmtpd",
)


def _is_development_module(name: str | None) -> bool:
    return any(name == m or (name or "").startswith(m + ".") for m in DEVELOPMENT_MODULES)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return _dispatch(args)
    except ModuleNotFoundError as exc:
        if args.command not in DEVELOPMENT_COMMANDS or not _is_development_module(exc.name):
            raise
        print(
            f"handoff {args.command} is part of the development install (the sandbox group); "
            "it is not in the production image",
            file=sys.stderr,
        )
        return 2


def _dispatch(args: argparse.Namespace) -> int:
    handlers: dict[str, Any] = {
        "run": lambda: run_once(args),
        "init": lambda: init_store(args),
        "preview": lambda: preview(args),
        "backtest": lambda: backtest(args),
        "digest": lambda: digest(args),
        "status": lambda: status(args),
        "resend": lambda: resend(args),
        "pools": _print_pools,
        "db": lambda: upgrade_store(args),
        "demo": lambda: run_demo(args),
        "sandbox": lambda: _serve_sandbox(args),
        "smtp-sink": lambda: _serve_sink(args),
        "stack": lambda: _stack(args),
        "benchmark": lambda: _benchmark(args),
    }
    return handlers[args.command]() or 0


def _serve_sandbox(args: argparse.Namespace) -> int:
    from handoff.sandbox.server import serve

    serve(
        args.db,
        seed=args.seed,
        deals=args.deals,
        today=args.today,
        host=args.host,
        port=args.port,
        token=args.token,
        reset=args.reset,
    )
    return 0


def _benchmark(args: argparse.Namespace) -> int:
    import logging

    from handoff.benchmark import format_report, run_benchmark, run_steady_state

    if args.naive and args.source != "salesforce":
        print("handoff benchmark: the naive peer is written for Salesforce only", file=sys.stderr)
        return 2
    logging.disable(logging.ERROR)  # the seeded bad-input deals would flood the report
    if args.scenario == "steady-state":
        result = run_steady_state(
            args.deals,
            args.onboarding,
            seed=args.seed,
            source=args.source,
            activities=args.activities,
            naive=args.naive,
        )
    else:
        result = run_benchmark(args.deals, seed=args.seed, source=args.source, naive=args.naive)
    print(json.dumps(result, indent=2) if args.json else format_report(result))
    return 0


def _stack(args: argparse.Namespace) -> int:
    from handoff.stack import StackError, StackOptions, describe, down, up

    home = args.home if args.home.is_absolute() else project_root() / args.home
    if args.action == "benchmark":
        return _stack_benchmark(args, home)
    if args.action == "down":
        stopped = down(home, purge=args.purge)
        print(f"Stopped: {', '.join(stopped) or 'nothing was running'}")
        return 0
    options = StackOptions(
        home, api_port=args.api_port, workers=args.workers, concurrency=args.concurrency
    )
    try:
        stack = up(options)
    except StackError as exc:
        print(f"The stack did not start: {exc}", file=sys.stderr)
        return 1
    if args.trigger:
        api = stack.api()
        for dag_id in api.dag_ids():
            api.unpause(dag_id)
            print(f"Triggered {dag_id}: {api.trigger(dag_id)}")
    print(describe(stack))
    return 0


def _stack_benchmark(args: argparse.Namespace, home: Path) -> int:
    """The same first run on stacks of 1, 2, ... workers: Airflow's own timings."""
    from handoff.stack import measure_run

    results = []
    for workers in [int(n) for n in args.worker_counts.split(",")]:
        result = measure_run(
            home / f"bench-{workers}",
            workers=workers,
            concurrency=args.concurrency,
            deals=args.deals,
            shards=args.shards,
            rows_per_shard=args.rows_per_shard,
            relay_delay_ms=args.relay_delay_ms,
        )
        result["items_per_second"] = round(
            (result["emails"] + result["tasks"]) / max(result["dispatch_seconds"], 0.001), 1
        )
        print(json.dumps(result), flush=True)
        results.append(result)
    base = results[0]["items_per_second"]
    for result in results[1:]:
        ratio = result["items_per_second"] / base if base else float("nan")
        print(f"{result['workers']} workers vs {results[0]['workers']}: dispatch x{ratio:.2f}")
    return 0


def _serve_sink(args: argparse.Namespace) -> int:
    from handoff.smtp_sink import serve

    serve(
        args.host,
        args.port,
        args.maildir,
        drop_every=args.drop_every,
        data_delay=args.delay_ms / 1000,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
