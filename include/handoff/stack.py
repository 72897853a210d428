"""``handoff stack up|down``: the production topology as real processes on this machine.

Airflow's API server, scheduler, DAG processor and triggerer, and Celery workers (Airflow's
Celery executor), with PostgreSQL as the metadata database and the state store and Redis as the
Celery broker, pointed at the sandbox CRM and the local SMTP sink. It is what the compose file
deploys, without Docker: the same init step (``airflow db migrate``, ``handoff db upgrade``,
connections, pools), the same services, one shared folder for the files runs produce.

Everything the stack keeps lives in its home folder (``var/stack``): the Airflow home, the logs
of every process, the sandbox's database, the SMTP sink's mailbox, the shared run folder,
``stack.env`` (``source`` it to point the ``airflow`` CLI at the stack) and ``stack.json`` (the
processes, for ``down``). PostgreSQL and Redis are the machine's own services at their standard
ports; the stack starts them when they are down and gives each stack its own databases and its
own Celery queue, so two stacks (a developer's and a test's) never take each other's work.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from handoff.pools import pools_file_content

POSTGRES_SERVER = "postgresql+psycopg2://postgres@127.0.0.1:5432"
REDIS_HOST, REDIS_PORT = "127.0.0.1", 6379
STATE_FILE = "stack.json"
ADMIN = "admin"
# Airflow's own services, in start order; workers follow, one per ``workers``.
SERVICES = ("api-server", "scheduler", "dag-processor", "triggerer")


# The processes this Python process started, by pid: ``down`` reaps them (no zombies, and no
# "still running" warning when a handle goes away).
_STARTED: dict[int, subprocess.Popen] = {}


class StackError(RuntimeError):
    """The stack could not start; the message says which step and where its log is."""


@dataclass(frozen=True)
class StackOptions:
    home: Path
    api_port: int = 8080
    workers: int = 2
    concurrency: int = 4
    # The prefix of this stack's databases and its Celery queue.
    name: str = "handoff"
    deals: int = 60
    seed: int = 7
    # Settings the processes get on top of the stack's own (a test's configuration file).
    extra_env: Mapping[str, str] = field(default_factory=dict)
    # Extra options of the SMTP sink (a chaos run: ``--drop-every``, ``--delay-ms``).
    sink_options: tuple[str, ...] = ()
    start_timeout: float = 180.0


@dataclass(frozen=True)
class Stack:
    """A running stack: where to reach it and how to log in."""

    home: Path
    api_url: str
    username: str
    password: str
    sandbox_url: str
    sandbox_db: Path
    mailbox: Path
    worker_names: tuple[str, ...]
    pids: dict[str, int]

    def api(self) -> AirflowApi:
        return AirflowApi(self.api_url, self.username, self.password)


# -- the machine's services -----------------------------------------------------------------------


def _port_open(host: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1.0)
        return sock.connect_ex((host, port)) == 0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait(check, what: str, timeout: float, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.5)
    where = f"; its log: {log}" if log else ""
    raise StackError(f"{what} did not come up within {timeout:.0f} s{where}")


def ensure_postgres() -> None:
    """PostgreSQL at 127.0.0.1:5432, started with Debian's cluster tools if it is down."""
    if _port_open("127.0.0.1", 5432):
        return
    clusters = (
        sorted(Path("/etc/postgresql").glob("*/main")) if shutil.which("pg_ctlcluster") else []
    )
    if not clusters:
        raise StackError("PostgreSQL is not running at 127.0.0.1:5432 and cannot be started here")
    version = clusters[-1].parent.name
    print(f"Starting PostgreSQL {version}")
    subprocess.run(
        ["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", "start"], check=True
    )
    _wait(lambda: _port_open("127.0.0.1", 5432), "PostgreSQL", 30)


def ensure_redis() -> None:
    """Redis at 127.0.0.1:6379 (the Celery broker), started if it is down; it keeps nothing on
    disk: a queued task lost with the broker is re-queued by the scheduler."""
    if _port_open(REDIS_HOST, REDIS_PORT):
        return
    server = shutil.which("redis-server")
    if not server:
        raise StackError("Redis is not running at 127.0.0.1:6379 and redis-server is missing")
    print("Starting Redis")
    subprocess.run(
        [server, "--daemonize", "yes", "--bind", REDIS_HOST, "--port", str(REDIS_PORT)]
        + ["--save", "", "--appendonly", "no"],
        check=True,
    )
    _wait(lambda: _port_open(REDIS_HOST, REDIS_PORT), "Redis", 30)


def _databases(name: str) -> dict[str, str]:
    return {"metadata": f"{name}_airflow", "state": f"{name}_state"}


def create_databases(name: str) -> dict[str, str]:
    """This stack's metadata and state databases (created once), as SQLAlchemy URLs."""
    from sqlalchemy import create_engine, text

    admin = create_engine(f"{POSTGRES_SERVER}/postgres", isolation_level="AUTOCOMMIT")
    urls = {}
    try:
        with admin.connect() as conn:
            for role, database in _databases(name).items():
                exists = conn.execute(
                    text("SELECT 1 FROM pg_database WHERE datname = :name"), {"name": database}
                ).first()
                if not exists:
                    conn.execute(text(f'CREATE DATABASE "{database}"'))
                urls[role] = f"{POSTGRES_SERVER}/{database}"
    finally:
        admin.dispose()
    return urls


def drop_databases(name: str) -> None:
    from sqlalchemy import create_engine, text

    admin = create_engine(f"{POSTGRES_SERVER}/postgres", isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            for database in _databases(name).values():
                conn.execute(text(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)'))
    finally:
        admin.dispose()


# -- configuration ------------------------------------------------------------------------------


def _secrets(home: Path) -> dict[str, str]:
    """The stack's keys and passwords, made once and kept (mode 600) so a restart keeps the
    login, the sessions and the connections Airflow encrypted."""
    path = home / "secrets.json"
    if path.exists():
        return json.loads(path.read_text())
    from cryptography.fernet import Fernet

    values = {
        "fernet_key": Fernet.generate_key().decode(),
        "jwt_secret": secrets.token_urlsafe(32),
        "api_secret_key": secrets.token_urlsafe(32),
        "admin_password": secrets.token_urlsafe(12),
        "sandbox_token": secrets.token_urlsafe(24),
        "unsubscribe_key": secrets.token_urlsafe(32),
    }
    path.touch(mode=0o600)
    path.write_text(json.dumps(values, indent=2))
    return values


def stack_environment(
    options: StackOptions, root: Path, urls: Mapping[str, str], keys: Mapping[str, str]
) -> dict[str, str]:
    """The settings every process of the stack shares (what compose's ``x-airflow-common`` is)."""
    home = options.home
    api_url = f"http://127.0.0.1:{options.api_port}"
    shared = home / "shared"
    return {
        "AIRFLOW_HOME": str(home / "airflow"),
        "AIRFLOW__CORE__DAGS_FOLDER": str(root / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(root / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
        "AIRFLOW__CORE__FERNET_KEY": keys["fernet_key"],
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{api_url}/execution/",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{ADMIN}:admin",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(home / "passwords.json"),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": urls["metadata"],
        "AIRFLOW__CELERY__BROKER_URL": f"redis://{REDIS_HOST}:{REDIS_PORT}/0",
        "AIRFLOW__CELERY__RESULT_BACKEND": "db+" + urls["metadata"],
        # Longer than any task's execution_timeout: a task is redelivered only when its worker
        # is gone (Airflow's heartbeat check fails it first and its retry takes over).
        "AIRFLOW__CELERY_BROKER_TRANSPORT_OPTIONS__VISIBILITY_TIMEOUT": "3600",
        # Each stack's own queue on the shared broker: the DAGs' tasks go there by default.
        "AIRFLOW__OPERATORS__DEFAULT_QUEUE": options.name,
        "AIRFLOW__API__BASE_URL": api_url,
        "AIRFLOW__API__SECRET_KEY": keys["api_secret_key"],
        "AIRFLOW__API_AUTH__JWT_SECRET": keys["jwt_secret"],
        "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(home / "logs" / "tasks"),
        "AIRFLOW__CORE__HOSTNAME_CALLABLE": "handoff_airflow.runtime.worker_hostname",
        "PYTHONPATH": os.pathsep.join(
            filter(None, [str(root / "plugins"), os.environ.get("PYTHONPATH")])
        ),
        "HANDOFF_STATE_URL": urls["state"],
        "HANDOFF_RUN_DIR": str(shared / "runs"),
        "HANDOFF_DIGEST_DIR": str(shared / "digest"),
        "HANDOFF_SOURCES": "salesforce,hubspot",
        # A first install in an org with clients at every stage of their 90 days.
        "HANDOFF_ADOPT_CLIENTS_IN_PROGRESS": "on",
        **options.extra_env,
    }


def connections(sandbox_url: str, smtp_port: int, keys: Mapping[str, str]) -> dict[str, Any]:
    """The sandbox's connections as ``airflow connections import`` reads them: stored in the
    metadata database, so the UI lists them (the HubSpot one with its own form)."""
    from handoff.cli import sandbox_connections

    found = sandbox_connections(
        sandbox_url, keys["sandbox_token"], "127.0.0.1", smtp_port, keys["unsubscribe_key"]
    )
    return {
        conn_id: {k: json.dumps(v) if k == "extra" else v for k, v in fields.items()}
        for conn_id, fields in found.items()
    }


# -- processes -----------------------------------------------------------------------------------


def _bin(name: str) -> str:
    """A console script of this environment (``airflow``, ``handoff``)."""
    path = Path(sys.executable).with_name(name)
    return str(path) if path.exists() else name


def _start(name: str, argv: list[str], env: Mapping[str, str], logs: Path) -> subprocess.Popen:
    log = (logs / f"{name}.log").open("ab")
    try:
        # Its own process group, so ``down`` stops the children it forks (gunicorn, Celery).
        process = subprocess.Popen(
            argv,
            env={**os.environ, **env},
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    finally:
        log.close()
    _STARTED[process.pid] = process
    return process


def _run(what: str, argv: list[str], env: Mapping[str, str], logs: Path) -> None:
    log = logs / "init.log"
    with log.open("ab") as out:
        out.write(f"\n$ {' '.join(argv)}\n".encode())
        out.flush()
        done = subprocess.run(
            argv, env={**os.environ, **env}, stdout=out, stderr=subprocess.STDOUT, check=False
        )
    if done.returncode:
        raise StackError(f"{what} failed (exit {done.returncode}); its log: {log}")


def _alive(pid: int) -> bool:
    if (process := _STARTED.get(pid)) is not None:
        return process.poll() is None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def running_stack(home: Path) -> dict[str, Any] | None:
    """The stack recorded in ``home`` when any of its processes still runs."""
    path = home / STATE_FILE
    if not path.exists():
        return None
    state = json.loads(path.read_text())
    return state if any(_alive(pid) for pid in state.get("pids", {}).values()) else None


def up(options: StackOptions) -> Stack:
    """Start the stack and wait until its DAGs are parsed and its workers take tasks."""
    from handoff.config import project_root

    home = options.home.resolve()
    options = StackOptions(**{**options.__dict__, "home": home})
    if running_stack(home):
        raise StackError(f"a stack already runs from {home}; stop it first (make stack-down)")
    logs = home / "logs"
    for folder in (logs, home / "shared", home / "airflow"):
        folder.mkdir(parents=True, exist_ok=True)
    root = project_root()
    ensure_postgres()
    ensure_redis()
    urls = create_databases(options.name)
    keys = _secrets(home)
    (home / "passwords.json").write_text(json.dumps({ADMIN: keys["admin_password"]}))
    env = stack_environment(options, root, urls, keys)
    _write_env_file(home / "stack.env", env)

    pids: dict[str, int] = {}
    processes: dict[str, subprocess.Popen] = {}
    state = {"name": options.name, "pids": pids, "started": datetime.now(UTC).isoformat()}

    def record(name: str, process: subprocess.Popen) -> None:
        processes[name] = process
        pids[name] = process.pid
        (home / STATE_FILE).write_text(json.dumps(state, indent=2))

    try:
        sandbox_port, smtp_port = free_port(), free_port()
        sandbox_url = f"http://127.0.0.1:{sandbox_port}"
        record(
            "sandbox",
            _start(
                "sandbox",
                [_bin("handoff"), "sandbox", "--db", str(home / "sandbox.db")]
                + ["--port", str(sandbox_port), "--token", keys["sandbox_token"]]
                + ["--deals", str(options.deals), "--seed", str(options.seed)],
                env,
                logs,
            ),
        )
        record(
            "smtp-sink",
            _start(
                "smtp-sink",
                [_bin("handoff"), "smtp-sink", "--port", str(smtp_port)]
                + ["--maildir", str(home / "mailbox"), *options.sink_options],
                env,
                logs,
            ),
        )
        for name, port in (("sandbox", sandbox_port), ("smtp-sink", smtp_port)):
            _wait(lambda p=port: _port_open("127.0.0.1", p), name, 60, logs / f"{name}.log")
        # The init step, once per deployment (compose's airflow-init).
        airflow = _bin("airflow")
        _run("airflow db migrate", [airflow, "db", "migrate"], env, logs)
        _run("handoff db upgrade", [_bin("handoff"), "db", "upgrade"], env, logs)
        conn_file = home / "connections.json"
        conn_file.touch(mode=0o600)
        conn_file.write_text(json.dumps(connections(sandbox_url, smtp_port, keys), indent=2))
        _run(
            "airflow connections import",
            [airflow, "connections", "import", "--overwrite", str(conn_file)],
            env,
            logs,
        )
        pool_file = home / "pools.json"
        pool_file.write_text(json.dumps(pools_file_content(), indent=2))
        _run("airflow pools import", [airflow, "pools", "import", str(pool_file)], env, logs)

        service_argv = {
            "api-server": [airflow, "api-server", "--port", str(options.api_port)],
            "scheduler": [airflow, "scheduler"],
            "dag-processor": [airflow, "dag-processor"],
            "triggerer": [airflow, "triggerer"],
        }
        for service in SERVICES:
            record(service, _start(service, service_argv[service], env, logs))
        workers = tuple(f"worker-{n}" for n in range(1, options.workers + 1))
        for worker in workers:
            worker_env = {
                **env,
                "HANDOFF_WORKER_NAME": worker,
                # Each worker serves its task logs on a port of its own.
                "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port()),
            }
            argv = [airflow, "celery", "worker", "--celery-hostname", f"{worker}@%h"]
            argv += ["--concurrency", str(options.concurrency), "--queues", options.name]
            record(worker, _start(worker, argv, worker_env, logs))

        stack = Stack(
            home=home,
            api_url=f"http://127.0.0.1:{options.api_port}",
            username=ADMIN,
            password=keys["admin_password"],
            sandbox_url=sandbox_url,
            sandbox_db=home / "sandbox.db",
            mailbox=home / "mailbox",
            worker_names=workers,
            pids=dict(pids),
        )
        _wait_ready(stack, processes, options, logs, env)
    except BaseException:
        down(home)
        raise
    state.update(
        {
            "api_url": stack.api_url,
            "sandbox_url": sandbox_url,
            "smtp": f"127.0.0.1:{smtp_port}",
            "workers": list(workers),
        }
    )
    (home / STATE_FILE).write_text(json.dumps(state, indent=2))
    return stack


def _wait_ready(
    stack: Stack,
    processes: Mapping[str, subprocess.Popen],
    options: StackOptions,
    logs: Path,
    env: Mapping[str, str],
) -> None:
    deadline = time.monotonic() + options.start_timeout

    def left() -> float:
        return max(1.0, deadline - time.monotonic())

    def crashed() -> None:
        for name, process in processes.items():
            if process.poll() is not None:
                raise StackError(f"{name} exited at start; its log: {logs / (name + '.log')}")

    api = stack.api()

    def api_healthy() -> bool:
        crashed()
        try:
            health = api.get("/api/v2/monitor/health")
        except (OSError, AirflowApiError):
            return False
        return health.get("scheduler", {}).get("status") == "healthy"

    _wait(api_healthy, "the API server and the scheduler", left(), logs / "api-server.log")
    expected = set(expected_dag_ids(env))

    def dags_parsed() -> bool:
        crashed()
        return expected <= set(api.dag_ids())

    _wait(dags_parsed, f"the DAGs {sorted(expected)}", left(), logs / "dag-processor.log")

    def workers_ready() -> bool:
        crashed()
        return all(
            f"{worker}@" in text and " ready." in text
            for worker in stack.worker_names
            for text in [(logs / f"{worker}.log").read_text(errors="replace")]
        )

    _wait(workers_ready, "the Celery workers", left(), logs / f"{stack.worker_names[0]}.log")


def expected_dag_ids(env: Mapping[str, str]) -> list[str]:
    """The DAGs the stack's settings enable (the same reading the DAG files make)."""
    from handoff.config import load_settings

    saved = {key: os.environ.get(key) for key in env}
    os.environ.update({k: v for k, v in env.items() if k.startswith("HANDOFF_")})
    try:
        settings = load_settings()
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    ids = [f"handoff_{source}" for source in settings.sources.enabled]
    return ids + (["handoff_digest"] if settings.digest.enabled else [])


def _write_env_file(path: Path, env: Mapping[str, str]) -> None:
    path.touch(mode=0o600)
    lines = ["# source this file to point the airflow CLI at the stack"]
    lines += [f"export {key}={json.dumps(value)}" for key, value in sorted(env.items())]
    path.write_text("\n".join(lines) + "\n")


def down(home: Path, *, purge: bool = False, timeout: float = 30.0) -> list[str]:
    """Stop the stack's processes (SIGTERM, then SIGKILL after ``timeout``); with ``purge``,
    drop its databases and its folder too. PostgreSQL and Redis keep running."""
    home = home.resolve()
    path = home / STATE_FILE
    state = json.loads(path.read_text()) if path.exists() else {}
    pids: dict[str, int] = state.get("pids", {})
    stopped = [name for name, pid in pids.items() if _signal_group(pid, signal.SIGTERM)]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(_alive(pid) for pid in pids.values()):
        time.sleep(0.2)
    for pid in pids.values():
        _signal_group(pid, signal.SIGKILL)
        if (process := _STARTED.pop(pid, None)) is not None:
            process.wait()
    if path.exists():
        state["pids"] = {}
        path.write_text(json.dumps(state, indent=2))
    if purge:
        if state.get("name"):
            drop_databases(state["name"])
        shutil.rmtree(home, ignore_errors=True)
    return stopped


def _signal_group(pid: int, sig: int) -> bool:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        return False
    return True


# -- Airflow's REST API -----------------------------------------------------------------------


class AirflowApiError(RuntimeError):
    pass


class AirflowApi:
    """A small client of Airflow's public REST API (``/api/v2``), logged in with a JWT."""

    def __init__(self, url: str, username: str, password: str, timeout: float = 30.0) -> None:
        self.url = url.rstrip("/")
        self.username = username
        self._password = password
        self.timeout = timeout
        self._token: str | None = None

    def token(self) -> str:
        if self._token is None:
            answer = self._send(
                "POST",
                "/auth/token",
                {"username": self.username, "password": self._password},
                auth=False,
            )
            self._token = answer["access_token"]
        return self._token

    def get(self, path: str) -> Any:
        return self._send("GET", path, None, auth=not path.startswith("/api/v2/monitor"))

    def _send(self, method: str, path: str, body: Any, *, auth: bool = True) -> Any:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if auth:
            headers["Authorization"] = f"Bearer {self.token()}"
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.url + path, data, headers, method=method)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                payload = response.read()
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode(errors="replace")[:500]
            raise AirflowApiError(f"{method} {path}: HTTP {exc.code} {detail}") from exc
        return json.loads(payload) if payload else None

    def dag_ids(self) -> list[str]:
        return [dag["dag_id"] for dag in self.get("/api/v2/dags?limit=100")["dags"]]

    def unpause(self, dag_id: str) -> None:
        self._send("PATCH", f"/api/v2/dags/{dag_id}", {"is_paused": False})

    def trigger(self, dag_id: str, conf: Mapping[str, Any] | None = None) -> str:
        """A manual run whose data interval ends now; its run id."""
        now = datetime.now(UTC).replace(microsecond=0).isoformat()
        body = {"logical_date": now, "conf": dict(conf or {})}
        return self._send("POST", f"/api/v2/dags/{dag_id}/dagRuns", body)["dag_run_id"]

    def runs(self, dag_id: str) -> list[dict[str, Any]]:
        return self.get(f"/api/v2/dags/{dag_id}/dagRuns?limit=100")["dag_runs"]

    def task_instances(self, dag_id: str, run_id: str) -> list[dict[str, Any]]:
        from urllib.parse import quote

        path = f"/api/v2/dags/{dag_id}/dagRuns/{quote(run_id, safe='')}/taskInstances?limit=1000"
        return self.get(path)["task_instances"]

    def wait_for_runs(self, dag_ids: Iterable[str], timeout: float) -> dict[str, list[dict]]:
        """Every run of these DAGs once none is queued or running."""
        deadline = time.monotonic() + timeout
        while True:
            runs = {dag_id: self.runs(dag_id) for dag_id in dag_ids}
            pending = [
                (dag_id, run["dag_run_id"])
                for dag_id, dag_runs in runs.items()
                for run in dag_runs
                if run["state"] in ("queued", "running")
            ]
            if not pending and all(runs.values()):
                return runs
            if time.monotonic() > deadline:
                raise AirflowApiError(f"runs still pending after {timeout:.0f} s: {pending}")
            time.sleep(2)


# -- the command -----------------------------------------------------------------------------------


def describe(stack: Stack) -> str:
    return "\n".join(
        [
            f"Airflow UI: {stack.api_url}  (login: {stack.username} / {stack.password})",
            f"Workers: {', '.join(stack.worker_names)} (Celery, queue on Redis)",
            f"Sandbox CRM: {stack.sandbox_url}   SMTP sink mailbox: {stack.mailbox}",
            f"Logs: {stack.home / 'logs'}   airflow CLI: source {stack.home / 'stack.env'}",
            "Stop it with: make stack-down",
        ]
    )


# -- scale-out: the same run on one worker and on two ------------------------------------------


def _dispatch_config(home: Path, shards: int, rows_per_shard: int) -> Path:
    """The shipped settings with their ``[dispatch]`` section set: a run of a few thousand
    deals then has more shards than one worker has slots."""
    import re

    from handoff.config import default_config_path

    text = Path(default_config_path()).read_text()
    text = re.sub(r"(?m)^shards = \d+$", f"shards = {shards}", text)
    text = re.sub(r"(?m)^rows_per_shard = \d+$", f"rows_per_shard = {rows_per_shard}", text)
    path = home / "handoff.toml"
    path.write_text(text)
    return path


def _seconds(start: str, end: str) -> float:
    return (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds()


def measure_run(
    home: Path,
    *,
    workers: int,
    concurrency: int,
    deals: int,
    shards: int,
    rows_per_shard: int,
    relay_delay_ms: int,
    source: str = "salesforce",
    timeout: float = 1800.0,
) -> dict[str, Any]:
    """A fresh stack with ``workers`` Celery workers, one first run of ``handoff_<source>``
    on a freshly seeded org, timed from Airflow's own task records; then torn down."""
    home.mkdir(parents=True, exist_ok=True)
    options = StackOptions(
        home,
        api_port=free_port(),
        workers=workers,
        concurrency=concurrency,
        name=f"handoff_b{secrets.token_hex(5)}",
        deals=deals,
        sink_options=("--delay-ms", str(relay_delay_ms)),
        extra_env={
            "HANDOFF_CONFIG": str(_dispatch_config(home, shards, rows_per_shard)),
            "HANDOFF_SOURCES": source,
        },
        start_timeout=600.0,
    )
    stack = up(options)
    try:
        api = stack.api()
        dag_id = f"handoff_{source}"
        tasks_before = crm_task_keys(stack.sandbox_db)[source].total()
        api.unpause(dag_id)
        api.trigger(dag_id)
        runs = api.wait_for_runs([dag_id], timeout)[dag_id]
        # Unpausing also schedules the latest interval: the first run to start does the work.
        first = min(runs, key=lambda run: run["start_date"])
        tis = api.task_instances(dag_id, first["dag_run_id"])
        dispatch = [ti for ti in tis if ti["task_id"] in ("send_emails", "write_tasks")]
        emails = len(list(stack.mailbox.glob("*.eml")))
        return {
            "workers": workers,
            "slots_per_worker": concurrency,
            "deals": deals,
            "shards": len({ti["map_index"] for ti in dispatch}),
            "run_state": first["state"],
            "run_seconds": round(_seconds(first["start_date"], first["end_date"]), 1),
            "dispatch_seconds": round(
                _seconds(
                    min(ti["start_date"] for ti in dispatch),
                    max(ti["end_date"] for ti in dispatch),
                ),
                1,
            ),
            "emails": emails,
            "tasks": crm_task_keys(stack.sandbox_db)[source].total() - tasks_before,
            "hosts": sorted({ti["hostname"] for ti in dispatch}),
        }
    finally:
        down(home, purge=True)


def crm_task_keys(sandbox_db: Path) -> dict[str, Counter[str]]:
    """The Handoff keys of the live tasks each sandbox CRM holds, from its own database."""
    import sqlite3

    with sqlite3.connect(f"file:{sandbox_db}?mode=ro", uri=True) as crm:
        salesforce = Counter(
            key for (key,) in crm.execute('SELECT "Handoff_Key__c" FROM "Task"') if key
        )
        hubspot = Counter(
            key
            for (props,) in crm.execute(
                "SELECT properties FROM hubspot_object WHERE object_type = 'tasks' AND archived = 0"
            )
            if (key := json.loads(props).get("handoff_key"))
        )
    return {"salesforce": salesforce, "hubspot": hubspot}
