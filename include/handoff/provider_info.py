"""What Airflow's providers manager reads to show a HubSpot connection form in the UI.

Airflow learns connection types from installed distributions that declare an
``apache_airflow_provider`` entry point (``pyproject.toml``); this project declares one so a
RevOps engineer can create a ``hubspot`` connection from the UI like any provider's. The hook
itself lives in ``plugins/handoff_airflow/hooks.py``. No Airflow import here: it is plain data.
"""

from __future__ import annotations

from typing import Any


def get_provider_info() -> dict[str, Any]:
    return {
        "package-name": "handoff-autopilot",
        "name": "Handoff Autopilot",
        "description": "The sales-to-customer-success handoff: HubSpot connection type.",
        "versions": ["0.1.0"],
        "connection-types": [
            {
                "hook-class-name": "handoff_airflow.hooks.HubSpotHook",
                "connection-type": "hubspot",
                "hook-name": "HubSpot",
                # The form shows only what a HubSpot connection uses.
                "ui-field-behaviour": {
                    "hidden-fields": ["login", "schema", "port", "extra"],
                    "relabeling": {
                        "host": "API base URL",
                        "password": "Private app access token",
                    },
                    "placeholders": {
                        "host": "empty for https://api.hubapi.com; http://127.0.0.1:8080 for "
                        "a sandbox",
                        "password": "pat-na1-...",
                    },
                },
            }
        ],
    }
