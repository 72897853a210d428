"""What a DAG task needs at run time, built from Airflow's context and connections.

Every task runs inside :func:`step`: it loads the validated settings, opens the state store
(whose location it logs, password hidden), and records how the step ended, so the summary of a
failed run still says which step failed and why. Errors that no retry can fix (a setting, a
credential, a daily API limit, a store that does not match the CRM) fail the task at once
instead of being retried for a quarter of an hour.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from handoff.config import Settings
    from handoff.pipeline import RunContext
    from handoff.state import StateStore

log = logging.getLogger(__name__)


def run_context(context: dict[str, Any]) -> RunContext:
    """The run's identity and window: the data interval, never the wall clock."""
    from handoff.pipeline import RunContext

    ti = context["ti"]
    return RunContext(
        run_id=context["run_id"],
        window_end=context["data_interval_end"],
        worker=f"{ti.dag_id}/{context['run_id']}/{task_name(context)}#{ti.try_number}",
        dag_id=ti.dag_id,
    )


def task_name(context: dict[str, Any]) -> str:
    """The task's id, with its shard for a mapped task (``send_emails[1]``)."""
    ti = context["ti"]
    map_index = getattr(ti, "map_index", -1)
    return ti.task_id if map_index is None or map_index < 0 else f"{ti.task_id}[{map_index}]"


@contextmanager
def step(context: dict[str, Any], source: str) -> Iterator[tuple[Settings, StateStore, RunContext]]:
    """Settings, the state store and the run for one task; the outcome is recorded."""
    from airflow.sdk.exceptions import AirflowFailException

    from handoff.config import load_settings
    from handoff.errors import FatalError
    from handoff.state import StateStore

    try:
        settings = load_settings()
    except FatalError as exc:
        raise AirflowFailException(str(exc)) from exc
    store = StateStore(settings.state.url)
    run = run_context(context)
    name = task_name(context)
    log.info("State store: %s", store.location)

    def record(status: str, message: str | None = None) -> None:
        try:
            store.record_step(run.run_id, source, name, status, message)
        except Exception:  # the store itself failing must not hide the step's own error
            log.exception("Could not record that step %s ended %s", name, status)

    try:
        yield settings, store, run
    except FatalError as exc:
        record("failed", str(exc))
        raise AirflowFailException(str(exc)) from exc
    except Exception as exc:
        record("failed", f"{type(exc).__name__}: {exc}")
        raise
    else:
        record("success")
    finally:
        store.dispose()


def is_dry_run(context: dict[str, Any]) -> bool:
    """The run's ``dry_run`` param: show what would happen, change nothing."""
    return bool((context.get("params") or {}).get("dry_run"))


def check_connections(*conn_ids: str) -> None:
    """Connections the run needs exist (no network): a missing one fails the run at once."""
    from airflow.sdk import BaseHook
    from airflow.sdk.exceptions import AirflowNotFoundException

    from handoff.errors import ConfigError

    missing = []
    for conn_id in conn_ids:
        try:
            BaseHook.get_connection(conn_id)
        except AirflowNotFoundException:
            missing.append(conn_id)
    if missing:
        raise ConfigError(
            f"Airflow connection(s) {', '.join(missing)} are not defined: add them in the UI "
            "(Admin > Connections), as AIRFLOW_CONN_* variables, or in a secrets backend"
        )


def fail_if_a_step_failed(summary: dict[str, Any]) -> None:
    """The summary was written; the run still ends failed, with the first cause."""
    from airflow.sdk.exceptions import AirflowFailException

    if summary["failed_steps"]:
        failed = summary["failed_steps"][0]
        raise AirflowFailException(f"step {failed['step']} failed: {failed['message']}")


def worker_hostname() -> str:
    """The host name a task instance records (Airflow's ``[core] hostname_callable``).

    Where several Celery workers share one machine (the local stack), ``HANDOFF_WORKER_NAME``
    tells them apart in the UI; elsewhere it is the machine's name, as Airflow's default.
    """
    import os
    import socket

    return os.environ.get("HANDOFF_WORKER_NAME") or socket.getfqdn()
