"""A local, Salesforce-compatible sandbox CRM for demos and integration tests.

It speaks the REST API subset the connector uses, over a SQLite file, so the
real ``simple_salesforce`` client runs against it unchanged. The same server also
speaks the HubSpot CRM v3/v4 subset, for the real ``hubspot-api-client``.
"""

from __future__ import annotations

from handoff.sandbox.faults import FaultPlan, FaultRule
from handoff.sandbox.hubspot_api import HubSpotLimits, create_hubspot_app
from handoff.sandbox.hubspot_seed import seed_portal
from handoff.sandbox.hubspot_store import HubSpotStore
from handoff.sandbox.salesforce_api import create_app
from handoff.sandbox.seed import EDGE_CASE_DEALS, seed_org
from handoff.sandbox.server import SandboxServer, serve
from handoff.sandbox.soql import SoqlError, compile_soql, run_query
from handoff.sandbox.store import SOBJECTS, SandboxStore

__all__ = [
    "EDGE_CASE_DEALS",
    "SOBJECTS",
    "FaultPlan",
    "FaultRule",
    "HubSpotLimits",
    "HubSpotStore",
    "SandboxServer",
    "SandboxStore",
    "SoqlError",
    "compile_soql",
    "create_app",
    "create_hubspot_app",
    "run_query",
    "seed_org",
    "seed_portal",
    "serve",
]
