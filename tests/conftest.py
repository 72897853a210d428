"""Test-wide setup.

Airflow reads its configuration when first imported, so the environment is fixed here, before
any test module imports it: an isolated Airflow home holding a copy of the metadata database
that ``make setup`` migrated, the project's DAG and plugin folders, and no connection or secret.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TEST_CONFIG = ROOT / "tests" / "config" / "handoff.toml"
AIRFLOW_HOME = Path(tempfile.mkdtemp(prefix="handoff-test-airflow-"))

for _name in [n for n in os.environ if n.startswith(("AIRFLOW_CONN_", "AIRFLOW_VAR_"))]:
    del os.environ[_name]
os.environ.update(
    {
        "AIRFLOW_HOME": str(AIRFLOW_HOME),
        "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(ROOT / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{AIRFLOW_HOME / 'airflow.db'}",
        "HANDOFF_HOME": str(ROOT),
        # The tests' own configuration, never the shipped one.
        "HANDOFF_CONFIG": str(TEST_CONFIG),
    }
)
for _name in (
    "HANDOFF_STATE_URL",
    "HANDOFF_RUN_DIR",
    "HANDOFF_DIGEST_DIR",
    "HANDOFF_RED_FLAGS",
    "HANDOFF_ADOPT_CLIENTS_IN_PROGRESS",
):
    os.environ.pop(_name, None)

_MIGRATED = ROOT / ".airflow" / "airflow.db"
if _MIGRATED.exists():
    shutil.copy(_MIGRATED, AIRFLOW_HOME / "airflow.db")
else:  # pytest run without `make setup`: migrate the isolated home directly
    subprocess.run(
        [str(Path(sys.executable).with_name("airflow")), "db", "migrate"],
        check=True,
        capture_output=True,
    )

PG_ADMIN_URL = os.environ.get(
    "HANDOFF_TEST_PG_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/test"
)


def pytest_sessionfinish(session, exitstatus):  # noqa: ARG001
    shutil.rmtree(AIRFLOW_HOME, ignore_errors=True)


@pytest.fixture(autouse=True)
def _root_logging_restored():
    """An in-process Airflow run adds a root handler on the test's captured stream; once that
    stream is closed, every later log line would print an error into the next test's output."""
    import logging

    root = logging.getLogger()
    before = list(root.handlers)
    yield
    for handler in [h for h in root.handlers if h not in before]:
        root.removeHandler(handler)


# -- state store -------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def postgres_url():
    """A throw-away database on the machine's PostgreSQL, dropped at the end of the session."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    name = f"handoff_test_{uuid.uuid4().hex[:10]}"
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:  # noqa: BLE001
        admin.dispose()
        message = f"PostgreSQL at {PG_ADMIN_URL} is not reachable: {exc}"
        if os.environ.get("HANDOFF_REQUIRE_POSTGRES") or os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    yield make_url(PG_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request, tmp_path):
    """The state store URL, once on SQLite and once on PostgreSQL (fresh schema each test)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'state.db'}"
        return
    from sqlalchemy import create_engine, text

    base = request.getfixturevalue("postgres_url")
    schema = f"t_{uuid.uuid4().hex[:10]}"
    engine = create_engine(base, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    yield f"{base}?options=-csearch_path%3D{schema}"
    with engine.connect() as conn:
        conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
    engine.dispose()


@pytest.fixture
def store(store_url):
    from handoff.state import StateStore

    state = StateStore(store_url)
    state.migrate()
    yield state
    state.dispose()


@pytest.fixture
def settings(tmp_path, monkeypatch):
    """The tests' configuration, with the state store and run folder in a temp dir."""
    from handoff.config import load_settings

    monkeypatch.setenv("HANDOFF_STATE_URL", f"sqlite:///{tmp_path / 'state.db'}")
    monkeypatch.setenv("HANDOFF_RUN_DIR", str(tmp_path / "runs"))
    monkeypatch.setenv("HANDOFF_DIGEST_DIR", str(tmp_path / "digest"))
    return load_settings()


@pytest.fixture
def flagged(settings):
    """The tests' settings with the red-flag steps on (off in the tests' configuration)."""
    return settings.model_copy(
        update={"red_flags": settings.red_flags.model_copy(update={"enabled": True})}
    )


FULL_PLAYBOOK = ROOT / "tests" / "config" / "playbook_90_days.toml"


@pytest.fixture
def full_playbook(monkeypatch):
    """Use the tests' copy of the whole 90-day playbook (the framework's table)."""
    monkeypatch.setenv("HANDOFF_PLAYBOOK", str(FULL_PLAYBOOK))
    return FULL_PLAYBOOK


@pytest.fixture
def renderer(settings):
    """The email renderer a run uses (every template of the playbook checked first)."""
    from handoff.pipeline import check_templates

    return check_templates(settings)


@pytest.fixture
def state(settings):
    """The migrated state store the ``settings`` fixture points at (SQLite in a temp dir)."""
    from handoff.state import StateStore

    store = StateStore(settings.state.url)
    store.migrate()
    yield store
    store.dispose()


# -- servers -----------------------------------------------------------------------------------


@pytest.fixture
def sandbox(tmp_path):
    """An empty Salesforce-compatible sandbox on a free local port."""
    from handoff.sandbox.server import SandboxServer

    with SandboxServer(tmp_path / "sandbox.db") as server:
        yield server


@pytest.fixture
def smtp_sink():
    from handoff.smtp_sink import SmtpSink

    with SmtpSink() as sink:
        yield sink


@pytest.fixture
def salesforce_client(sandbox):
    """The real simple-salesforce client, over HTTP, with the project's transport policy."""
    from simple_salesforce import Salesforce

    from handoff.crm.http import build_session

    return Salesforce(
        instance_url=sandbox.url,
        session_id=sandbox.token,
        session=build_session(sandbox.url),
    )


@pytest.fixture
def crm(salesforce_client, settings):
    from handoff.crm.salesforce import SalesforceCRM

    return SalesforceCRM.from_settings(salesforce_client, settings)
