"""The interface every CRM connector implements, so the pipeline never names a CRM.

Connectors also translate their library's failures into the outcome classes below, because
what the dispatcher may do next depends only on that: retry as is, settle by lookup, or stop.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime
from typing import Protocol

import pandas as pd

from handoff.errors import FatalError, HandoffError
from handoff.models import Contact, CrmTask, Person, WriteResult

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
    "account_owner_id",
    "account_owner_name",
    "account_owner_email",
    "account_owner_active",
]
# Org-specific columns the field map may leave unread (then None): the deal's type and where
# the client's company is.
OPTIONAL_DEAL_COLUMNS = ["deal_type", "account_time_zone", "account_country", "scope_change"]

# Columns of the normalised activity frame (one row an activity, linked to one deal).
ACTIVITY_COLUMNS = [
    "activity_id",  # unique within the source (HubSpot: "<object type>:<id>")
    "deal_id",
    "kind",  # email | call | meeting | note | task
    "direction",  # outbound (we reach the client) | inbound (the client reaches us) | internal
    "occurred_at",  # UTC: sent, logged, or the meeting's start
    "outcome",  # completed | no_show | cancelled | scheduled | None (meetings, calls, tasks)
    "subject",
    "snippet",  # the body's first 500 characters, for phrases and reasons
    "owner_id",  # the CRM user who did it (None for the client's own mail)
    "handoff_key",  # a task Handoff Autopilot wrote: its dedupe key
    "is_deleted",
    "modstamp",  # UTC: the record's last change, the incremental cursor
]
ACTIVITY_KINDS = ("email", "call", "meeting", "note", "task")
ACTIVITY_DIRECTIONS = ("outbound", "inbound", "internal")
ACTIVITY_OUTCOMES = ("completed", "no_show", "cancelled", "scheduled")
SNIPPET_CHARS = 500


class CrmError(HandoffError):
    """A CRM call failed."""


class CrmUnavailable(CrmError):
    """The CRM did not do it, provably (throttled, unreachable): the same call may be retried."""


class CrmFatalError(CrmError, FatalError):
    """Retrying cannot help (expired session, daily API limit, missing field or permission)."""


class WriteOutcomeUnknown(CrmError):
    """A write went out and no answer says whether it happened (5xx, dropped, timed out).

    Never re-send it as is: look the records up by their dedupe key and write only the missing.
    """


class CrmClient(Protocol):
    """What the pipeline needs from a CRM."""

    source: str
    handoff_fields: dict[str, str]
    write_batch_size: int  # the most records one batch write call accepts

    @property
    def api_calls(self) -> int:
        """HTTP requests that reached the CRM so far, transport retries included."""

    def iter_changed_deals(self, since: datetime | None, until: datetime) -> Iterator[pd.DataFrame]:
        """Deals modified in ``[since, until)`` (deleted ones included), one frame a page.

        Frames have the columns of ``DEAL_COLUMNS`` plus one ``doc_<key>`` column per handoff
        field; timestamps are UTC.
        """

    @property
    def activity_streams(self) -> tuple[str, ...]:
        """The connector's activity streams, each with its own watermark (e.g. "Task")."""

    def iter_activities(
        self,
        stream: str,
        deals: Mapping[str, str | None],
        since: datetime | None,
        until: datetime,
    ) -> Iterator[pd.DataFrame]:
        """Activities of one stream on these deals, modified in ``[since, until)`` (``since``
        None: all of them), deleted ones included, one frame a page.

        ``deals`` maps each deal id to its primary contact id (or None): an activity logged on
        the contact counts for the deal. Reads go in batches of deals, never a call per deal.
        Frames have the columns of ``ACTIVITY_COLUMNS``; timestamps are UTC.
        """

    def primary_contacts(self, deal_ids: Sequence[str]) -> dict[str, Contact]:
        """The primary contact of each deal that has one."""

    def set_email_opt_out(self, contact_ids: Sequence[str]) -> list[WriteResult]:
        """Record in the CRM that these contacts unsubscribed; one result per contact, in order
        (``dedupe_key`` holds the contact id)."""

    def users_by_email(self, emails: Sequence[str]) -> dict[str, Person]:
        """CRM users with these addresses, keyed by lower-cased email (active ones first)."""

    def check_task_setup(self) -> None:
        """Raise :class:`CrmFatalError` if tasks cannot be written and found as configured."""

    def create_tasks(self, tasks: Sequence[CrmTask]) -> list[WriteResult]:
        """Create at most ``write_batch_size`` tasks in one call; one result per task, in order.

        Raises :class:`CrmUnavailable` when nothing was written, :class:`WriteOutcomeUnknown`
        when the answer was lost.
        """

    def find_tasks(self, deal_ids: Sequence[str]) -> dict[str, str]:
        """Tasks on these deals that carry a Handoff Autopilot key: ``{dedupe_key: task_id}``."""
