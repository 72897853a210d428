"""The Airflow pools the DAGs use, as plain data: the DAG factory assigns them to tasks and a
deployment's init step creates them (``handoff stack``, or ``airflow pools import``).

Every task that calls a CRM takes a slot of that CRM's pool, so however many runs and shards the
workers take on, the org sees at most this many clients at once. HubSpot's limit is per 10 s
(100 requests for a private app): two clients with batches of 100 stay inside it, the client's
own back-off on 429 does the rest.
"""

from __future__ import annotations

CRM_POOLS = {
    "salesforce": ("handoff_salesforce", 4, "Salesforce: concurrent API clients"),
    "hubspot": ("handoff_hubspot", 2, "HubSpot: concurrent API clients (100 requests / 10 s)"),
}
SMTP_POOL = ("handoff_smtp", 4, "SMTP: concurrent connections to the mail relay")


def pools() -> list[tuple[str, int, str]]:
    """The pools the DAGs use: (name, slots, description)."""
    return [*CRM_POOLS.values(), SMTP_POOL]


def pools_file_content() -> dict[str, dict[str, object]]:
    """The pools as ``airflow pools import`` reads them."""
    return {
        name: {"slots": slots, "description": description, "include_deferred": False}
        for name, slots, description in pools()
    }
