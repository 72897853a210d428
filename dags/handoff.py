"""
### Handoff Autopilot: one DAG per CRM source

The 90-day onboarding playbook for every Closed Won deal, one DAG per CRM the settings enable
(`[sources].enabled` in `include/config/handoff.toml`: `handoff_salesforce`,
`handoff_hubspot`), all built from one definition (`plugins/handoff_airflow/dag_factory.py`),
so every CRM gets the same tasks in the same order. Each DAG's own documentation says what a
run does.
"""

from __future__ import annotations

from handoff.config import load_settings
from handoff_airflow.dag_factory import handoff_dag

# Reading the validated settings here (a small local file, no network) means a broken
# configuration or playbook is an import error the scheduler shows, never a run.
_settings = load_settings()
for _source in _settings.sources.enabled:
    globals()[f"handoff_{_source}"] = handoff_dag(_source, _settings.schedule.cron)
