"""The interface every CRM connector implements, so the pipeline never names a CRM."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import datetime
from typing import Protocol

import pandas as pd

from handoff.models import Contact, CrmTask, WriteResult

# Columns of the normalised deal frame every connector yields (one row a deal).
DEAL_COLUMNS = [
    "deal_id",
    "name",
    "account_name",
    "stage",
    "is_won",
    "is_deleted",
    "amount",
    "close_date",
    "won_at",
    "modstamp",
    "owner_id",
    "owner_name",
    "owner_email",
    "owner_active",
    "csm_id",
    "csm_name",
    "csm_email",
    "csm_active",
]


class CrmError(RuntimeError):
    """A CRM call failed in a way the caller cannot fix by retrying the same request."""


class CrmClient(Protocol):
    """What the pipeline needs from a CRM."""

    source: str
    handoff_fields: dict[str, str]

    @property
    def api_calls(self) -> int:
        """HTTP requests made so far (for the run summary and the API budget)."""

    def iter_changed_deals(self, since: datetime | None, until: datetime) -> Iterator[pd.DataFrame]:
        """Deals modified in ``[since, until)`` (deleted ones included), one frame a page.

        Frames have the columns of ``DEAL_COLUMNS`` plus one ``doc_<key>`` column per handoff
        field; timestamps are UTC.
        """

    def primary_contacts(self, deal_ids: Sequence[str]) -> dict[str, Contact]:
        """The primary contact of each deal that has one."""

    def create_tasks(self, tasks: Sequence[CrmTask]) -> list[WriteResult]:
        """Create tasks in batches; one result per task, in order; per-record failures kept."""

    def find_tasks(self, tasks: Sequence[CrmTask]) -> dict[str, str]:
        """Tasks already in the CRM for these dedupe keys: ``{dedupe_key: crm_task_id}``."""
