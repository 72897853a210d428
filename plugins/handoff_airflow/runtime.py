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


def prepare(context: dict[str, Any]) -> tuple[Settings, StateStore, RunContext]:
    """Settings (validated), the state store (migrated: a no-op when current) and the run."""
    from handoff.config import load_settings
    from handoff.state import StateStore

    settings = load_settings()
    store = StateStore(settings.state.url)
    store.migrate()
    return settings, store, run_context(context)
