"""The digest's content as plain data: what ``metrics`` computes and ``digest`` renders.

Numbers are already computed (shares as fractions 0..1, durations in the unit named); the
renderer formats and charts them and computes nothing, so a test can check the rendered
figures against the data the report was built from.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime


@dataclass(frozen=True)
class NewClient:
    source: str  # "salesforce" | "hubspot"
    deal_id: str
    account: str
    deal: str
    rep: str
    csm: str
    won_at: datetime


@dataclass(frozen=True)
class OpenFlag:
    source: str
    deal_id: str
    account: str
    code: str
    title: str  # "No kickoff"
    severity: str  # "high" | "medium"
    reason: str
    owner: str  # who owns the escalation task (account owner, else rep)
    raised_at: datetime
    day: int  # day of onboarding when raised


@dataclass(frozen=True)
class TimeToMetric:
    """A framework target against what happened: e.g. signature to first CS contact."""

    key: str  # "first_contact" | "kickoff" | "first_value" | "milestones"
    label: str  # "Signature to first CS contact"
    median: float | None  # in ``unit``; None when no deal has reached it yet
    unit: str  # "business hours" | "days" | "%"
    target: float  # in ``unit``: "< 4", "< 5", "< 14", "> 95"
    comparison: str  # "<" or ">"
    on_target_share: float | None  # deals meeting the target, among ``measured``
    measured: int  # deals with a value
    waiting: int  # deals that have not reached it yet (still inside their target)


@dataclass(frozen=True)
class RepCompleteness:
    rep: str
    deals: int
    complete_share: float  # deals whose handoff document is complete
    fields_share: float  # filled fields over all fields of the rep's deals


@dataclass(frozen=True)
class Cohort:
    week: date  # Monday of the signature week
    deals: int
    first_contact_on_time: float | None  # shares 0..1 among deals measured
    kickoff_on_time: float | None
    first_value_on_time: float | None
    milestone_completion: float | None
    flags_raised: int
    flags_open: int
    left: int  # deals that left Closed Won during onboarding (churn)


@dataclass(frozen=True)
class DigestReport:
    company: str
    period_start: datetime
    period_end: datetime
    sources: tuple[str, ...]
    new_clients: tuple[NewClient, ...] = ()
    open_flags: tuple[OpenFlag, ...] = ()
    flags_raised_in_period: int = 0
    flags_resolved_in_period: int = 0
    time_to: tuple[TimeToMetric, ...] = ()
    reps: tuple[RepCompleteness, ...] = ()
    cohorts: tuple[Cohort, ...] = ()
    clients_in_onboarding: int = 0
    flag_counts: dict[str, int] = field(default_factory=dict)  # open flags by code
