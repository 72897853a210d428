"""The production topology as real processes: Airflow's API server, scheduler, DAG processor and
triggerer, two Celery workers, PostgreSQL and Redis, against the sandbox CRM and the SMTP sink.

Marked ``stack`` (``make test-stack``, run by CI after the suite): it brings a stack of its own
up (own databases, own Celery queue, free ports, the tests' configuration), triggers every DAG
through Airflow's REST API, waits for the runs, and checks what reached the sandbox CRM and the
SMTP sink, which workers ran the dispatch shards, and what the UI shows. It tears the stack down.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections import Counter
from email import message_from_bytes
from pathlib import Path

import pytest

from handoff.stack import (
    Stack,
    StackOptions,
    crm_task_keys,
    down,
    drop_databases,
    free_port,
    up,
)
from tests.browser import Chromium, is_blank, require_chromium

pytestmark = pytest.mark.stack

ROOT = Path(__file__).resolve().parents[1]
SOURCE_DAGS = ("handoff_salesforce", "handoff_hubspot")
MAPPED_TASKS = ("send_emails", "write_tasks")
RUN_TIMEOUT = 600


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> Stack:
    home = tmp_path_factory.mktemp("stack")
    options = StackOptions(
        home,
        api_port=free_port(),
        workers=2,
        # Two slots each: the three shards of each dispatch task cannot all fit one worker.
        concurrency=2,
        name=f"handoff_t{uuid.uuid4().hex[:10]}",
        extra_env={"HANDOFF_CONFIG": str(ROOT / "tests" / "config" / "handoff.toml")},
    )
    started = up(options)
    yield started
    down(home)  # the logs stay in the test's folder
    drop_databases(options.name)


@pytest.fixture(scope="module")
def runs(stack: Stack) -> dict[str, list[dict]]:
    """Every DAG unpaused and triggered once through the REST API; all its runs once done."""
    api = stack.api()
    dag_ids = api.dag_ids()
    assert set(SOURCE_DAGS) <= set(dag_ids), dag_ids
    for dag_id in dag_ids:
        api.unpause(dag_id)
        api.trigger(dag_id)
    return api.wait_for_runs(dag_ids, timeout=RUN_TIMEOUT)


def test_every_dag_run_succeeds_on_the_celery_workers(stack: Stack, runs) -> None:
    failed = {
        dag_id: [run["dag_run_id"] for run in dag_runs if run["state"] != "success"]
        for dag_id, dag_runs in runs.items()
    }
    assert not any(failed.values()), f"failed runs: {failed}; logs in {stack.home / 'logs'}"
    manual = [r for dag_runs in runs.values() for r in dag_runs if r["run_type"] == "manual"]
    assert len(manual) == len(runs), "one triggered run per DAG"


def test_both_workers_run_dispatch_shards(stack: Stack, runs) -> None:
    api = stack.api()
    shard_hosts: Counter[str] = Counter()
    for dag_id in SOURCE_DAGS:
        for run in runs[dag_id]:
            for ti in api.task_instances(dag_id, run["dag_run_id"]):
                if ti["task_id"] in MAPPED_TASKS:
                    assert ti["map_index"] >= 0, ti
                    shard_hosts[ti["hostname"]] += 1
    assert set(shard_hosts) == set(stack.worker_names), shard_hosts
    assert sum(shard_hosts.values()) >= 2 * len(MAPPED_TASKS) * len(SOURCE_DAGS)


def test_clients_and_crms_get_each_email_and_task_once(stack: Stack, runs) -> None:  # noqa: ARG001
    messages = [
        message_from_bytes(path.read_bytes()) for path in sorted(stack.mailbox.glob("*.eml"))
    ]
    client_mail = [m for m in messages if "digest" not in str(m["Subject"]).lower()]
    assert client_mail, "the SMTP sink received no client email"
    ids = Counter(str(m["Message-ID"]) for m in messages)
    assert not [i for i, n in ids.items() if n > 1], "an email went out twice"

    keys = crm_task_keys(stack.sandbox_db)
    salesforce_keys, hubspot_keys = keys["salesforce"], keys["hubspot"]
    for crm_name, keys in (("Salesforce", salesforce_keys), ("HubSpot", hubspot_keys)):
        twice = [key for key, n in keys.items() if n > 1]
        assert not twice, f"{crm_name} got the same task twice: {twice[:5]}"


def test_the_ui_lists_the_dags(stack: Stack, runs, tmp_path) -> None:  # noqa: ARG001
    path = require_chromium()
    token = stack.api().token()
    png = tmp_path / "stack-dag-list.png"
    with Chromium(path, timeout=60) as browser:
        text = browser.capture_app(
            f"{stack.api_url}/dags",
            png,
            wait_for_text=SOURCE_DAGS[0],
            cookies=({"name": "_token", "value": token},),
        )
    for dag_id in SOURCE_DAGS:
        assert dag_id in text
    assert not is_blank(png)
    # HANDOFF_SCREENSHOTS=<folder> keeps the picture (the README's is made this way).
    if keep := os.environ.get("HANDOFF_SCREENSHOTS"):
        shutil.copy(png, Path(keep) / png.name)
