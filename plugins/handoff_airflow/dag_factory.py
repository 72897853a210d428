"""One DAG definition for every CRM source: the same tasks, in the same order, whatever the CRM.

``dags/handoff.py`` builds one DAG per source enabled in the settings (``handoff_salesforce``,
``handoff_hubspot``). Tasks import what they need when they run, so parsing stays cheap, and
the only thing that knows which CRM a task talks to is :func:`crm_client`.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from typing import TYPE_CHECKING

import pendulum
from airflow.sdk import CronTriggerTimetable, Param, dag, task

from handoff.pools import CRM_POOLS, SMTP_POOL

if TYPE_CHECKING:
    from handoff.config import Settings
    from handoff.crm.base import CrmClient

CRM_CONNECTIONS = {"salesforce": "salesforce_default", "hubspot": "hubspot_default"}
CRM_NAMES = {"salesforce": "Salesforce", "hubspot": "HubSpot"}
# A task that overruns these is stopped and retried: reads and writes are resumable.
READ_TIMEOUT = timedelta(minutes=30)
DISPATCH_TIMEOUT = timedelta(minutes=20)
QUICK_TIMEOUT = timedelta(minutes=5)


DOC = """
### {crm} handoff: the 90-day onboarding playbook for every Closed Won deal

Every hour (setting `[schedule].cron`) this DAG reads the deals that changed in {crm} since
its last run and:

- starts onboarding the deals that became **Closed Won** (the look-back window keeps a first
  install from mailing a backlog; after that, a win found late still gets the steps that are
  still sensible), and stops deals that left Closed Won;
- plans every step of the **playbook** (`include/config/playbook.toml`) that falls due: the
  welcome sequence, weekly check-ins, reviews and the referral ask for the client; CRM tasks
  for the CSM, the rep, the executive and the account owner;
- reads what happened on every client in their 90 days (emails, calls, meetings, notes) and
  raises **red flags** (no first contact within 4 h, no kickoff by day 5, a client slow to
  answer or gone quiet, missed meetings, scope creep, no first win by day 30, an incomplete
  handoff document): each new flag gives the account owner one high-priority task and the
  leaders in `[red_flags].notify` one internal note, once; a flag that clears is resolved;
- holds client emails while the rep's **handoff document** is incomplete (the rep gets a task
  listing what is missing) and releases them once it is complete;
- re-reads the primary contacts of the deals with a step due (consent is checked when a mail
  goes out), then sends the emails and writes the tasks in parallel **shards** (mapped tasks,
  one per `[dispatch].rows_per_shard` deals due, at most `[dispatch].shards`), which the
  workers share: each claims rows no other shard holds.

Client email arrives in the client's business hours (their time zone and public holidays);
outside them an email waits for the next run inside them. Promotional steps carry a one-click
unsubscribe served by this project's Airflow plugin on the API server.

Each step happens once per deal, whatever the re-runs, retries and crashes; a step found later
than its lateness limit is skipped with its reason, never sent weeks late. Deals with bad data
are reported by deal and field; the others go on. A problem no retry can fix (a setting, an
invalid playbook, an expired token, a state store that is behind or does not match the CRM)
fails the run at once with its cause.

**Dry run**: trigger with the param `dry_run` = true to see every email (recipient, subject),
task (owner, due date), skip and hold this run would make, changing nothing.

Pools: `{pool}` caps the concurrent {crm} clients, `handoff_smtp` the SMTP connections.
Connections: `{connection}` ({crm}), `smtp_default` (SMTP), and optionally
`handoff_unsubscribe` (its password keys the unsubscribe links). Settings:
`include/config/handoff.toml`. The state store is migrated once per deployment with
`handoff db upgrade`. What each run did, failed runs included: the `summarise` task's log and
`var/runs/<dag id>/<run id>/summary.json` (with the `.eml` and HTML preview of every email sent).
"""


def crm_client(source: str, settings: Settings) -> CrmClient:
    """The CRM client of ``source`` from its Airflow connection (the one CRM-aware place)."""
    if source == "salesforce":
        from handoff_airflow.hooks import HandoffSalesforceHook

        return HandoffSalesforceHook().get_crm(settings)
    if source == "hubspot":
        from handoff_airflow.hooks import HubSpotHook

        return HubSpotHook().get_crm(settings)
    raise ValueError(f"no CRM connector for source {source!r}")


def handoff_dag(source: str, cron: str):
    """The handoff DAG for one CRM source (``handoff_<source>``), scheduled by ``cron``."""
    SOURCE = source  # read by the tasks below, as a module constant would be
    crm = CRM_NAMES[source]
    crm_pool = CRM_POOLS[source][0]

    @dag(
        dag_id=f"handoff_{source}",
        schedule=CronTriggerTimetable(cron, timezone="UTC", interval=timedelta(hours=1)),
        start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
        catchup=False,
        max_active_runs=1,
        doc_md=DOC.format(crm=crm, connection=CRM_CONNECTIONS[source], pool=crm_pool),
        tags=["handoff", source],
        params={
            "dry_run": Param(
                False,
                type="boolean",
                description="Show what this run would send, write, skip and hold; change nothing.",
            )
        },
        default_args={
            "owner": "revops",
            "retries": 3,
            "retry_delay": timedelta(minutes=1),
            "retry_exponential_backoff": True,
            "max_retry_delay": timedelta(minutes=15),
            "execution_timeout": READ_TIMEOUT,
        },
    )
    def handoff():
        @task(execution_timeout=QUICK_TIMEOUT)
        def preflight(**context) -> dict:
            from handoff.pipeline import check_templates
            from handoff_airflow.runtime import check_connections, step

            with step(context, SOURCE) as (settings, store, _):
                store.check_schema()
                check_connections(CRM_CONNECTIONS[SOURCE], "smtp_default")
                check_templates(settings)
                return {"state_store": store.location}

        @task(pool=crm_pool)
        def extract(checked: dict, **context) -> dict:
            from handoff.pipeline import extract_changes
            from handoff_airflow.runtime import step

            with step(context, SOURCE) as (settings, store, run):
                crm = crm_client(SOURCE, settings)
                return extract_changes(crm, store, settings, run.window_end)

        @task(pool=crm_pool)
        def detect(extracted: dict, **context) -> dict:
            from handoff.pipeline import detect_new_wins
            from handoff_airflow.runtime import is_dry_run, step

            if is_dry_run(context):
                return {"dry_run": True}
            with step(context, SOURCE) as (settings, store, run):
                crm = crm_client(SOURCE, settings)
                return detect_new_wins(store, settings, crm, run)

        @task(pool=crm_pool)
        def read_activities(detected: dict, **context) -> dict:
            from handoff.redflags.steps import extract_activities
            from handoff_airflow.runtime import is_dry_run, step

            if is_dry_run(context):
                return {"dry_run": True}
            with step(context, SOURCE) as (settings, store, run):
                crm = crm_client(SOURCE, settings)
                return extract_activities(crm, store, settings, run.window_end)

        @task
        def red_flags(activities: dict, **context) -> dict:
            from handoff.redflags.steps import evaluate_red_flags
            from handoff_airflow.runtime import is_dry_run, step

            if is_dry_run(context):
                return {"dry_run": True}
            with step(context, SOURCE) as (settings, store, run):
                return evaluate_red_flags(store, settings, SOURCE, run.run_id, run.window_end)

        @task(pool=crm_pool)
        def plan(detected: dict, **context) -> dict:
            from handoff.pipeline import dry_run, format_dry_run, plan_steps
            from handoff_airflow.runtime import is_dry_run, step

            with step(context, SOURCE) as (settings, store, run):
                if is_dry_run(context):
                    crm = crm_client(SOURCE, settings)
                    report = dry_run(store, settings, crm, run)
                    print(format_dry_run(report))
                    return {"dry_run": True, **report["planning"]}
                return plan_steps(store, settings, SOURCE, run)

        @task(trigger_rule="all_done_min_one_success", pool=crm_pool)
        def resolve(planned: dict | None, flagged: dict | None, **context) -> dict:
            from handoff.pipeline import refresh_contacts
            from handoff_airflow.runtime import is_dry_run, step

            if is_dry_run(context):
                return {"dry_run": True, "shards": [0]}
            with step(context, SOURCE) as (settings, store, run):
                crm = crm_client(SOURCE, settings)
                return refresh_contacts(crm, store, run, settings)

        @task(execution_timeout=QUICK_TIMEOUT)
        def shards(resolved: dict) -> list[int]:
            """The dispatch shards resolve chose (how much is due), for the mapped tasks."""
            return list(resolved.get("shards") or [0])

        @task(pool=SMTP_POOL[0], execution_timeout=DISPATCH_TIMEOUT)
        def send_emails(shard: int, **context) -> dict:
            from handoff.pipeline import send_emails as send
            from handoff_airflow.hooks import HandoffSmtpHook, unsubscribe_secret
            from handoff_airflow.runtime import is_dry_run, step

            if is_dry_run(context):
                return {"dry_run": True}
            with step(context, SOURCE) as (settings, store, run):
                transport = HandoffSmtpHook().transport
                secret = unsubscribe_secret()
                counts = send(
                    store, settings, transport, run, source=SOURCE, unsubscribe_secret=secret
                )
            return {**counts, "shard": shard}

        @task(pool=crm_pool, execution_timeout=DISPATCH_TIMEOUT)
        def write_tasks(shard: int, **context) -> dict:
            from handoff.pipeline import write_tasks as write
            from handoff_airflow.runtime import is_dry_run, step

            if is_dry_run(context):
                return {"dry_run": True}
            with step(context, SOURCE) as (settings, store, run):
                counts = write(crm_client(SOURCE, settings), store, settings, run)
            return {**counts, "shard": shard}

        @task(trigger_rule="all_done", execution_timeout=QUICK_TIMEOUT)
        def summarise(
            extracted: dict | None,
            detected: dict | None,
            activities: dict | None,
            resolved: dict | None,
            emails: Sequence[dict | None] | None,
            tasks: Sequence[dict | None] | None,
            **context,
        ) -> dict:
            """Runs whatever happened upstream, so a failed run gets its summary too."""
            from handoff.pipeline import format_summary, summarise, summary_line
            from handoff_airflow.runtime import fail_if_a_step_failed, is_dry_run, step

            if is_dry_run(context):
                return {"dry_run": True}
            # None for a step that failed; one entry per shard for the dispatch steps
            counts = [extracted, detected, activities, resolved, *(emails or ()), *(tasks or ())]
            api_calls = sum(c.get("api_calls", 0) for c in counts if c)
            with step(context, SOURCE) as (settings, store, run):
                summary = summarise(store, settings, SOURCE, run, api_calls)
            print(format_summary(summary))
            print(summary_line(summary))
            fail_if_a_step_failed(summary)
            return {
                key: summary[key] for key in ("emails_sent", "tasks_created", "skipped", "failed")
            }

        extracted = extract(preflight())
        detected = detect(extracted)
        activities = read_activities(detected)
        # The red flags are a branch beside the playbook: their escalations go out in this
        # run's dispatch, but a failure there (say, a field the org lacks) never holds up a
        # client's emails and tasks, and a failed plan still sends what was due before.
        resolved = resolve(plan(detected), red_flags(activities))
        # One mapped task per shard: the Celery workers share the run's dispatch.
        dispatch = shards(resolved)
        emails = send_emails.expand(shard=dispatch)
        tasks = write_tasks.expand(shard=dispatch)
        summarise(extracted, detected, activities, resolved, emails, tasks)

    return handoff()


def digest_dag(cron: str, doc: str):
    """The daily RevOps digest over every enabled source (``handoff_digest``)."""

    @dag(
        dag_id="handoff_digest",
        schedule=CronTriggerTimetable(cron, timezone="UTC", interval=timedelta(days=1)),
        start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
        catchup=False,
        max_active_runs=1,
        doc_md=doc,
        tags=["handoff", "digest"],
        default_args={
            "owner": "revops",
            "retries": 3,
            "retry_delay": timedelta(minutes=2),
            "retry_exponential_backoff": True,
        },
    )
    def handoff_digest():
        @task
        def digest(**context) -> dict:
            from handoff.reporting.daily import run_digest
            from handoff_airflow.hooks import HandoffSmtpHook
            from handoff_airflow.runtime import step

            with step(context, "digest") as (settings, store, run):
                transport = HandoffSmtpHook().transport
                result = run_digest(
                    store, settings, transport, run.run_id, run.window_end, run.worker
                )
            print(f"RevOps digest: {result['digest_file']}")
            return {k: v for k, v in result.items() if k != "metrics_files"}

        digest()

    return handoff_digest()
