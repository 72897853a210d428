"""Every DAG file parses with no connection, variable or secret set, and follows the house rules."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

DAGS = Path(__file__).resolve().parents[2] / "dags"


@pytest.fixture(scope="module")
def dag_bag():
    from airflow.dag_processing.dagbag import DagBag

    assert not [n for n in os.environ if n.startswith(("AIRFLOW_CONN_", "AIRFLOW_VAR_"))]
    return DagBag(dag_folder=str(DAGS))


def test_no_import_errors(dag_bag):
    assert dag_bag.import_errors == {}, "\n".join(
        f"{path}: {error}" for path, error in dag_bag.import_errors.items()
    )


def test_every_dag_file_defines_a_dag(dag_bag):
    files = {str(path) for path in DAGS.glob("*.py") if not path.name.startswith("_")}
    defined = {dag.fileloc for dag in dag_bag.dags.values()}
    assert files <= defined, f"DAG files without a DAG: {sorted(files - defined)}"


def test_house_rules(dag_bag):
    problems = []
    for dag_id, dag in dag_bag.dags.items():
        where = f"{dag_id} ({Path(dag.fileloc).name})"
        if not dag.tags:
            problems.append(f"{where}: no tags")
        if not dag.doc_md:
            problems.append(f"{where}: no doc_md (the module docstring)")
        if dag.catchup:
            problems.append(f"{where}: catchup must be False")
        if dag.max_active_runs != 1:
            problems.append(f"{where}: max_active_runs must be 1")
        for task in dag.tasks:
            if task.retries < 2:
                problems.append(f"{where}: task {task.task_id} has retries={task.retries} (< 2)")
    assert not problems, "\n".join(problems)


def test_the_salesforce_dag_runs_the_handoff_steps_in_order(dag_bag):
    dag = dag_bag.get_dag("handoff_salesforce")
    assert dag is not None
    assert set(dag.task_ids) == {
        "preflight",
        "extract",
        "detect",
        "read_activities",
        "red_flags",
        "plan",
        "resolve",
        "shards",
        "send_emails",
        "write_tasks",
        "summarise",
    }
    assert dag.get_task("extract").upstream_task_ids == {"preflight"}
    assert dag.get_task("detect").upstream_task_ids == {"extract"}
    assert dag.get_task("read_activities").upstream_task_ids == {"detect"}
    assert dag.get_task("red_flags").upstream_task_ids == {"read_activities"}
    assert dag.get_task("plan").upstream_task_ids == {"detect"}
    assert dag.get_task("resolve").upstream_task_ids == {"plan", "red_flags"}
    # A failed red-flag branch never holds up the playbook's dispatch.
    assert dag.get_task("resolve").trigger_rule == "all_done_min_one_success"
    assert dag.get_task("shards").upstream_task_ids == {"resolve"}
    # Dispatch runs as mapped tasks over the shards resolve chose, shared by the workers.
    for name in ("send_emails", "write_tasks"):
        dispatch = dag.get_task(name)
        assert dispatch.upstream_task_ids == {"shards"}
        assert type(dispatch).__name__.endswith("MappedOperator"), f"{name} is not mapped"
    summarise = dag.get_task("summarise")
    assert summarise.upstream_task_ids == {
        "extract",
        "detect",
        "read_activities",
        "resolve",
        "send_emails",
        "write_tasks",
    }
    assert summarise.trigger_rule == "all_done", "a failed run still gets its summary"
    assert dag.params["dry_run"] is False


def test_crm_calls_take_a_slot_of_their_crm_pool_and_every_task_has_a_timeout(dag_bag):
    from handoff.pools import CRM_POOLS, SMTP_POOL

    checked = 0
    for source, (pool, slots, _) in CRM_POOLS.items():
        dag = dag_bag.get_dag(f"handoff_{source}")
        if dag is None:  # not enabled in the tests' settings
            continue
        checked += 1
        for name in ("extract", "detect", "read_activities", "resolve", "write_tasks"):
            assert dag.get_task(name).pool == pool, (source, name)
        assert dag.get_task("send_emails").pool == SMTP_POOL[0]
        assert slots >= 1
        untimed = [t.task_id for t in dag.tasks if not t.execution_timeout]
        assert not untimed, f"tasks without execution_timeout: {untimed}"
    assert checked


def test_the_schedule_is_the_configured_one_hourly_by_default(dag_bag):
    dag = dag_bag.get_dag("handoff_salesforce")
    assert getattr(dag.timetable, "expression", None) == "0 * * * *"


def test_a_broken_playbook_never_reaches_the_scheduler(tmp_path, monkeypatch):
    """The DAG file validates the configuration and playbook at parse time: an import error."""
    from airflow.dag_processing.dagbag import DagBag

    playbook = tmp_path / "playbook.toml"
    shipped = (DAGS.parent / "include" / "config" / "playbook.toml").read_text()
    playbook.write_text(shipped.replace('template = "timeline"', 'template = "no_such_one"'))
    monkeypatch.setenv("HANDOFF_PLAYBOOK", str(playbook))
    bag = DagBag(dag_folder=str(DAGS))
    assert not {"handoff_salesforce", "handoff_digest"} & set(bag.dags)
    errors = list(bag.import_errors.values())
    assert len(errors) == 2  # both DAG files validate the settings
    for error in errors:
        assert "step 'timeline_email'" in error and "'no_such_one'" in error
        assert str(playbook) in error


def test_the_shipped_playbook_is_valid():
    """Only validity: editing the shipped playbook's steps breaks no other test."""
    from handoff.config import PACKAGE_ROOT
    from handoff.playbook import load_playbook

    root = PACKAGE_ROOT
    playbook = load_playbook(root / "include/config/playbook.toml", root / "templates/emails")
    assert playbook.steps


def test_the_business_logic_package_never_imports_airflow():
    import ast

    package = Path(__file__).resolve().parents[2] / "include" / "handoff"
    offenders = []
    for path in package.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            offenders += [f"{path.name}: {n}" for n in names if n.split(".")[0] == "airflow"]
    assert offenders == []


def test_dag_files_import_airflow_only_through_the_sdk():
    import ast

    offenders = []
    for path in DAGS.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            module = node.module or "" if isinstance(node, ast.ImportFrom) else ""
            if module.startswith("airflow") and module != "airflow.sdk":
                offenders.append(f"{path.name}: from {module} import ...")
    assert offenders == []
