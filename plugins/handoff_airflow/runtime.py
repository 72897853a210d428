"""What a DAG task needs at run time, built from Airflow's context and connections."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from handoff.config import Settings
    from handoff.pipeline import RunContext
    from handoff.state import StateStore


def run_context(context: dict[str, Any]) -> RunContext:
    """The run's identity and window: the data interval, never the wall clock."""
    from handoff.pipeline import RunContext

    ti = context["ti"]
    return RunContext(
        run_id=context["run_id"],
        window_end=context["data_interval_end"],
        worker=f"{ti.dag_id}/{context['run_id']}/{ti.task_id}",
    )


def settings() -> Settings:
    from handoff.config import load_settings

    return load_settings()


def state_store(config: Settings) -> StateStore:
    """The store, migrated to the newest schema (a no-op when it already is)."""
    from handoff.state import StateStore

    store = StateStore(config.state.url)
    store.migrate()
    return store
