"""A realistic daily digest report, for the digest's tests and previews.

One day of a seller with both CRMs: eight new clients, five open red flags of four rules, the
framework's four time-to metrics (two on target, two not), five reps and six weekly cohorts,
the latest of which has not reached kickoff or first value yet. Counts agree with each other
(the open flags by rule add up to the open flags), as the metrics would make them.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from handoff.reporting.report import (
    Cohort,
    DigestReport,
    NewClient,
    OpenFlag,
    RepCompleteness,
    TimeToMetric,
)

ROOT = Path(__file__).resolve().parents[1]
TEMPLATES_DIR = ROOT / "templates" / "emails"
PERIOD_START = datetime(2026, 12, 1, 7, 0, tzinfo=UTC)
PERIOD_END = datetime(2026, 12, 2, 7, 0, tzinfo=UTC)
SENDER = {"name": "Handoff Autopilot", "email": "handoff@handoff-demo.example"}
RECIPIENTS = ["revops@handoff-demo.example", "cs-leads@handoff-demo.example"]
MESSAGE_ID = "<handoff.digest20261202@handoff-demo.example>"


def _at(day: int, hour: int, minute: int = 0, month: int = 12) -> datetime:
    return datetime(2026, month, day, hour, minute, tzinfo=UTC)


NEW_CLIENTS = (
    NewClient("salesforce", "006Hs00001AbCdE", "Analytical Engines Ltd", "Platform annual 2027",
              "Riley Chen", "Maria Lopez", _at(1, 9, 12)),
    NewClient("salesforce", "006Hs00001AbCdF", "Babbage & Sons", "Analytics add-on",
              "Riley Chen", "Maria Lopez", _at(1, 10, 40)),
    NewClient("hubspot", "18234567001", "Hopper Logistics", "Fleet tracking, 3 years",
              "Sam Okafor", "Jun Park", _at(1, 11, 5)),
    NewClient("salesforce", "006Hs00001AbCdG", "Noether Labs", "Research seats (40)",
              "Priya Natarajan", "Jun Park", _at(1, 13, 30)),
    NewClient("hubspot", "18234567002", "Curie Health", "Clinic rollout phase 1",
              "Sam Okafor", "Maria Lopez", _at(1, 14, 55)),
    NewClient("salesforce", "006Hs00001AbCdH", "Turing Freight", "Enterprise platform",
              "Alex Morgan", "Chris Dube", _at(1, 16, 20)),
    NewClient("hubspot", "18234567003", "Lamarr Wireless", "Starter plan upgrade",
              "Jordan Blake", "Chris Dube", _at(1, 18, 45)),
    NewClient("salesforce", "006Hs00001AbCdJ", "Franklin Bio", "Lab data platform",
              "Priya Natarajan", "Maria Lopez", _at(2, 6, 10)),
)  # fmt: skip

OPEN_FLAGS = (
    OpenFlag("salesforce", "006Hs00001XyZ01", "Kepler Optics", "no_kickoff", "No kickoff",
             "high", "no completed kickoff meeting by day 5", "Alex Morgan",
             _at(27, 7, month=11), 6),
    OpenFlag("hubspot", "18234560420", "Meitner Energy", "no_first_contact",
             "No first contact from customer success", "high",
             "no outbound touch from customer success within 4 business hours of close",
             "Sam Okafor", _at(1, 15, 0), 0),
    OpenFlag("salesforce", "006Hs00001XyZ02", "Lovelace Systems", "gone_quiet",
             "Client gone quiet", "high", "no client activity for 15 days", "Riley Chen",
             _at(30, 7, month=11), 41),
    OpenFlag("hubspot", "18234560377", "Hypatia Books", "handoff_doc_incomplete",
             "Handoff document incomplete", "medium",
             "the handoff document is missing: objections raised, key stakeholders",
             "Jordan Blake", _at(24, 7, month=11), 1),
    OpenFlag("salesforce", "006Hs00001AbCdH", "Turing Freight", "handoff_doc_incomplete",
             "Handoff document incomplete", "medium",
             "the handoff document is missing: promises and commitments made", "Alex Morgan",
             _at(1, 16, 25), 0),
)  # fmt: skip

TIME_TO = (
    TimeToMetric("first_contact", "Signature to first CS contact", 2.6, "business hours", 4,
                 "<", 0.8333, 24, 2),
    TimeToMetric("kickoff", "Signature to kickoff", 4.2, "days", 5, "<", 0.7, 20, 6),
    TimeToMetric("first_value", "Kickoff to first value", 15.5, "days", 14, "<", 0.4545, 11,
                 9),
    TimeToMetric("milestones", "Playbook milestones completed", 91.3, "%", 95, ">", 0.3846,
                 26, 0),
)  # fmt: skip

REPS = (
    RepCompleteness("Jordan Blake", 4, 0.5, 0.8333),
    RepCompleteness("Alex Morgan", 6, 0.6667, 0.8611),
    RepCompleteness("Sam Okafor", 4, 0.75, 0.9167),
    RepCompleteness("Priya Natarajan", 5, 0.8, 0.9667),
    RepCompleteness("Riley Chen", 7, 1.0, 1.0),
)

COHORTS = (
    Cohort(date(2026, 10, 26), 4, 0.75, 0.75, 0.5, 0.9412, 2, 1, 0),
    Cohort(date(2026, 11, 2), 5, 1.0, 0.8, 0.6, 0.9231, 1, 0, 1),
    Cohort(date(2026, 11, 9), 6, 0.8333, 0.6667, 0.25, 0.8889, 3, 1, 0),
    Cohort(date(2026, 11, 16), 3, 0.6667, 0.6667, None, 0.8571, 2, 1, 0),
    Cohort(date(2026, 11, 23), 5, 0.8, 0.6, None, 0.9, 2, 2, 0),
    Cohort(date(2026, 11, 30), 8, 0.8571, None, None, 1.0, 1, 0, 0),
)

FLAG_COUNTS = {"handoff_doc_incomplete": 2, "no_kickoff": 1, "no_first_contact": 1,
               "gone_quiet": 1}  # fmt: skip

REPORT = DigestReport(
    company="Handoff Demo Inc.",
    period_start=PERIOD_START,
    period_end=PERIOD_END,
    sources=("salesforce", "hubspot"),
    new_clients=NEW_CLIENTS,
    open_flags=OPEN_FLAGS,
    flags_raised_in_period=3,
    flags_resolved_in_period=2,
    time_to=TIME_TO,
    reps=REPS,
    cohorts=COHORTS,
    clients_in_onboarding=31,
    flag_counts=FLAG_COUNTS,
)


def sample_report(**overrides: Any) -> DigestReport:
    """The sample report, with any field replaced."""
    return replace(REPORT, **overrides)


def empty_report() -> DigestReport:
    """A first day: nothing won, nothing measured, nothing flagged."""
    return DigestReport(
        company=REPORT.company,
        period_start=PERIOD_START,
        period_end=PERIOD_END,
        sources=REPORT.sources,
    )
