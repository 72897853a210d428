"""Airflow plugin: serves the unsubscribe endpoint of promotional emails on the API server.

Airflow 3 mounts the FastAPI app under ``/handoff`` (``https://<airflow>/handoff/unsubscribe``,
the ``[unsubscribe].url`` setting). Nothing touches the database or the settings at import:
the app opens the state store on its first request.
"""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin

from handoff.unsubscribe import create_app


def _open_store():
    from handoff.config import load_settings
    from handoff.state import StateStore

    return StateStore(load_settings().state.url)


def _company() -> str:
    from handoff.config import load_settings

    return load_settings().sender.company


unsubscribe_app = create_app(_open_store, _company)


class HandoffPlugin(AirflowPlugin):
    name = "handoff"
    fastapi_apps = [
        {
            "app": unsubscribe_app,
            "url_prefix": "/handoff",
            "name": "Handoff Autopilot unsubscribe",
        }
    ]
