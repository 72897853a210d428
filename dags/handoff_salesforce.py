"""
### Salesforce handoff: Closed Won deals become a welcome email and CRM tasks

Every day this DAG reads the opportunities that changed in Salesforce since its last run, finds
the deals that became **Closed Won** (within a look-back window, so a first install never mails a
backlog), and for each new deal:

- sends the client's primary contact a **welcome email** from the configured executive, Cc the
  rep and the CSM (contacts who opted out get nothing; the reason is recorded);
- creates a **"First CS contact"** task for the CSM, due within 4 hours of the close;
- creates an **"Internal handoff meeting"** task for deals at or above the configured amount.

Each step happens once per deal, whatever the re-runs, retries and crashes. Deals with bad data
(no primary contact, invalid email, no owner...) are reported by deal and field; the others go
on. A problem no retry can fix (a setting, an expired token, the org's daily API limit, a state
store that does not match the CRM) fails the run at once with its cause.

Connections: `salesforce_default` (Salesforce), `smtp_default` (SMTP). Playbook settings:
`include/config/handoff.toml`. What each run did, failed runs included: the `summarise` task's
log and `var/runs/<run id>/summary.json` (with the `.eml` and HTML preview of every email sent,
and every email or task still waiting, with when it is tried again).
"""

from __future__ import annotations

from datetime import timedelta

import pendulum
from airflow.sdk import CronTriggerTimetable, dag, task

SOURCE = "salesforce"


@dag(
    schedule=CronTriggerTimetable("0 6 * * *", timezone="UTC", interval=timedelta(days=1)),
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    doc_md=__doc__,
    tags=["handoff", "salesforce"],
    default_args={
        "owner": "revops",
        "retries": 3,
        "retry_delay": timedelta(minutes=1),
        "retry_exponential_backoff": True,
        "max_retry_delay": timedelta(minutes=15),
    },
)
def handoff_salesforce():
    @task
    def preflight(**context) -> dict:
        from handoff.pipeline import check_templates
        from handoff_airflow.runtime import check_connections, step

        with step(context, SOURCE) as (settings, store, _):
            store.migrate()
            check_connections("salesforce_default", "smtp_default")
            check_templates(settings)
            return {"state_store": store.location}

    @task
    def extract(checked: dict, **context) -> dict:
        from handoff.pipeline import extract_changes
        from handoff_airflow.hooks import HandoffSalesforceHook
        from handoff_airflow.runtime import step

        with step(context, SOURCE) as (settings, store, run):
            crm = HandoffSalesforceHook().get_crm(settings)
            return extract_changes(crm, store, settings, run.window_end)

    @task
    def detect(extracted: dict, **context) -> dict:
        from handoff.pipeline import detect_new_wins
        from handoff_airflow.hooks import HandoffSalesforceHook
        from handoff_airflow.runtime import step

        with step(context, SOURCE) as (settings, store, run):
            crm = HandoffSalesforceHook().get_crm(settings)
            return detect_new_wins(store, settings, crm, run)

    @task
    def plan(detected: dict, **context) -> dict:
        from handoff.pipeline import plan_actions
        from handoff_airflow.runtime import step

        with step(context, SOURCE) as (settings, store, run):
            return plan_actions(store, settings, SOURCE, run)

    @task
    def send_emails(planned: dict, **context) -> dict:
        from handoff.pipeline import send_emails as send
        from handoff_airflow.hooks import HandoffSmtpHook
        from handoff_airflow.runtime import step

        with step(context, SOURCE) as (settings, store, run):
            return send(store, settings, HandoffSmtpHook().transport, run, source=SOURCE)

    @task
    def write_tasks(planned: dict, **context) -> dict:
        from handoff.pipeline import write_tasks as write
        from handoff_airflow.hooks import HandoffSalesforceHook
        from handoff_airflow.runtime import step

        with step(context, SOURCE) as (settings, store, run):
            return write(HandoffSalesforceHook().get_crm(settings), store, settings, run)

    @task(trigger_rule="all_done")
    def summarise(
        extracted: dict | None,
        detected: dict | None,
        emails: dict | None,
        tasks: dict | None,
        **context,
    ) -> dict:
        """Runs whatever happened upstream, so a failed run gets its summary too."""
        from handoff.pipeline import format_summary, summarise, summary_line
        from handoff_airflow.runtime import fail_if_a_step_failed, step

        counts = (extracted, detected, emails, tasks)  # None for a step that failed
        api_calls = sum(c.get("api_calls", 0) for c in counts if c)
        with step(context, SOURCE) as (settings, store, run):
            summary = summarise(store, settings, SOURCE, run, api_calls)
        print(format_summary(summary))
        print(summary_line(summary))
        fail_if_a_step_failed(summary)
        return {key: summary[key] for key in ("emails_sent", "tasks_created", "skipped", "failed")}

    extracted = extract(preflight())
    detected = detect(extracted)
    planned = plan(detected)
    summarise(extracted, detected, send_emails(planned), write_tasks(planned))


handoff_salesforce_dag = handoff_salesforce()

if __name__ == "__main__":
    handoff_salesforce_dag.test()
