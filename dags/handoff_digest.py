"""
### Handoff Autopilot: the daily RevOps digest

Once a day (setting `[digest].cron`, 07:00 UTC by default) this DAG measures how the handoffs
of every enabled CRM are going and tells RevOps:

- **metrics** per deal (signature to first CS contact, to kickoff, kickoff to first value,
  playbook steps done, red flags), per rep (handoff-document completeness) and per signature
  week, stored in the state store and written as CSV and Parquet;
- the **digest**: the day's new clients, the open red flags with their reasons and owners, the
  time-to metrics against the framework's targets (< 4 h, < 5 days, < 14 days) and charts,
  as an HTML file and one email to `[digest].recipients` (once a day, whatever the re-runs).

Files: `[digest].output_dir/<date>/` (`digest.html`, `deal_metrics.csv`/`.parquet`,
`rep_metrics`, `cohort_metrics`). Connection: `smtp_default`.
"""

from __future__ import annotations

from handoff.config import load_settings
from handoff_airflow.dag_factory import digest_dag

_settings = load_settings()
if _settings.digest.enabled:
    handoff_digest = digest_dag(_settings.digest.cron, __doc__)
