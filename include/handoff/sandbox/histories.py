"""Client histories for the sandbox CRMs: what the CSM and the client did after the win.

One scenario for every sandbox CRM, in CRM-neutral terms (a seed maps each activity onto its
CRM's own objects), so the same seed trips the same red flags through each connector:

- ``healthy_history`` gives an ordinary client a believable rhythm (first contact within a few
  hours, a reply, the kickoff, weekly check-ins answered, a first win logged around day 10),
  so ordinary deals raise no flag; the benchmark asks it for a fixed number of activities;
- ``HISTORY_CASES`` are named clients, each built to trip one rule (or, for the false-positive
  cases, built to look like trouble to a naive rule and not to ours). ``trips`` says which.

Every time is derived from ``today`` (UTC midnight of the seed day) and the case's name, never
the wall clock; the cases hold whatever hour of ``today`` a run happens at and whatever the
weekday. Clients of the named cases are in New York (their business clock is predictable).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta

__all__ = [
    "HISTORY_CASES",
    "HistoryCase",
    "SeedActivity",
    "healthy_history",
]


@dataclass(frozen=True)
class SeedActivity:
    """One thing that happened on a deal, as any CRM would log it."""

    key: str  # unique within the deal: seeds derive record ids or names from it
    kind: str  # email | call | meeting | note | task
    direction: str  # outbound | inbound | internal
    at: datetime  # sent, logged, or the meeting's start (may be in the future: scheduled)
    outcome: str | None = None  # completed | no_show | cancelled | scheduled
    subject: str = ""
    body: str = ""
    # A task the playbook wrote (its step id): the seed gives it the playbook's dedupe key.
    step: str | None = None
    logged_at: datetime | None = None  # when the CRM record last changed (default: ``at``)

    @property
    def modstamp(self) -> datetime:
        return self.logged_at or self.at


@dataclass(frozen=True)
class HistoryCase:
    """A named client whose history is built to trip (or not trip) the red-flag rules."""

    deal: str
    account: str
    first: str
    last: str
    email: str
    won_at: Callable[[date], datetime]
    history: Callable[[datetime], list[SeedActivity]]  # given the win, what happened
    trips: frozenset[str] = frozenset()
    # Handoff-document fields the rep left empty (keys of the handoff document).
    missing_doc: tuple[str, ...] = ()
    scope_change: bool = False  # the CRM's own "scope change requested" flag on the deal
    time_zone: str = "America/New_York"
    country: str = "United States"
    amount: float = 42_000.0
    notes: str = field(default="")  # why the case exists, for the reader of a test


def _midnight(today: date) -> datetime:
    return datetime.combine(today, time(0), tzinfo=UTC)


def _days_ago(days: int, hour: int = 14, minute: int = 0) -> Callable[[date], datetime]:
    """A win ``days`` days before ``today`` at ``hour`` UTC (10:00 or 09:00 in New York)."""
    return lambda today: (
        _midnight(today) - timedelta(days=days) + timedelta(hours=hour, minutes=minute)
    )


def _last_friday(today: date, at_least_days: int = 7) -> date:
    """The latest Friday at least ``at_least_days`` before ``today``."""
    day = today - timedelta(days=at_least_days)
    return day - timedelta(days=(day.weekday() - 4) % 7)


def _friday_evening_win(today: date) -> datetime:
    # 22:30 UTC: after 17:00 in New York whatever daylight saving says.
    return datetime.combine(_last_friday(today), time(22, 30), tzinfo=UTC)


def _eight_days_before_friday(today: date) -> datetime:
    return datetime.combine(_last_friday(today) - timedelta(days=8), time(14), tzinfo=UTC)


def _h(hours: float) -> timedelta:
    return timedelta(hours=hours)


def _d(days: float, hours: float = 0) -> timedelta:
    return timedelta(days=days, hours=hours)


class _Log:
    """Builds one deal's history with stable keys, in the order things happened."""

    def __init__(self, won: datetime) -> None:
        self.won = won
        self.items: list[SeedActivity] = []

    def add(self, kind: str, direction: str, after: timedelta, subject: str, body: str = "",
            outcome: str | None = None, step: str | None = None,
            logged_after: timedelta | None = None) -> _Log:  # fmt: skip
        at = self.won + after
        logged = self.won + logged_after if logged_after is not None else None
        key = f"a{len(self.items) + 1:02d}"
        self.items.append(
            SeedActivity(key, kind, direction, at, outcome, subject, body, step, logged)
        )
        return self

    def out_email(self, after: timedelta, subject: str, body: str = "") -> _Log:
        return self.add("email", "outbound", after, subject, body or f"{subject}.")

    def in_email(self, after: timedelta, subject: str, body: str = "") -> _Log:
        return self.add("email", "inbound", after, subject, body or "Thanks, that works for us.")

    def meeting(self, after: timedelta, subject: str, outcome: str = "completed", **kw) -> _Log:
        return self.add("meeting", "outbound", after, subject, outcome=outcome, **kw)

    def note(self, after: timedelta, text: str) -> _Log:
        return self.add("note", "internal", after, text[:60], text)

    def done_task(self, after: timedelta, subject: str, step: str | None = None) -> _Log:
        return self.add("task", "internal", after, subject, outcome="completed", step=step)

    def start(self) -> _Log:
        """A first contact within the hour and the client's reply: how a good handoff starts."""
        return self.out_email(_h(1), "Welcome aboard: your onboarding team").in_email(
            _h(3), "Re: Welcome aboard: your onboarding team", "Great to meet you. Talk soon."
        )


def _healthy_named(won: datetime) -> list[SeedActivity]:
    log = _Log(won).start()
    log.out_email(
        _d(1, 2),
        "Kickoff agenda",
        "Here is the agenda for Thursday. If you need additional users later, just tell us.",
    )
    # The reply quotes our mail: a phrase in the quote is ours, not the client's request.
    log.in_email(
        _d(1, 5),
        "Re: Kickoff agenda",
        "Thanks, see you Thursday.\n\nOn Tue, Maria Lopez wrote:\n"
        "> Here is the agenda for Thursday. If you need additional users later, just tell us.",
    )
    log.meeting(_d(2), "Kickoff call")
    log.note(_d(5), "Client keen; admin training booked for next week.")
    log.out_email(_d(7), "Week 1 check-in").in_email(_d(7, 3), "Re: Week 1 check-in")
    log.done_task(_d(9), "First visible win: first report shared", step="first_visible_win")
    log.add("call", "outbound", _d(11), "Check-in call", "Talked through the roll-out plan.",
            outcome="completed")  # fmt: skip
    log.in_email(_d(11, 2), "Follow-up from our call", "Sending the user list as promised.")
    return log.items


def _no_first_contact(won: datetime) -> list[SeedActivity]:
    return []


def _no_kickoff(won: datetime) -> list[SeedActivity]:
    log = _Log(won).start()
    log.meeting(_d(3), "Kickoff call", outcome="cancelled")
    log.out_email(_d(3, 1), "A new date for our kickoff")
    log.in_email(_d(3, 3), "Re: A new date for our kickoff", "Next week is better for us.")
    log.in_email(_d(6), "Still busy", "Sorry, month end here. We will come back to you.")
    return log.items


def _slow_to_answer(won: datetime) -> list[SeedActivity]:
    log = _Log(won).start()
    log.meeting(_d(2), "Kickoff call")
    log.out_email(_d(9), "Checking in").in_email(_d(9, 4), "Re: Checking in")
    log.out_email(_d(13), "Training dates", "Which of these dates suit your team for training?")
    return log.items


def _two_no_shows(won: datetime) -> list[SeedActivity]:
    log = _Log(won).start()
    log.meeting(_d(2), "Kickoff call")
    log.meeting(_d(5), "Training session 1", outcome="no_show")
    log.out_email(_d(6), "We missed you today")
    log.in_email(_d(6, 2), "Re: We missed you today", "Sorry! Can we rebook?")
    log.meeting(_d(7), "Training session 1 (rebooked)", outcome="no_show")
    log.in_email(_d(8), "Apologies again", "Things are hectic here.")
    return log.items


def _scope_creep(won: datetime) -> list[SeedActivity]:
    log = _Log(won).start()
    log.meeting(_d(2), "Kickoff call")
    log.in_email(
        _d(4),
        "SAP integration",
        "Could you also add an SAP integration? It was not in the quote, but we need it "
        "before go-live.",
    )
    return log.items


def _no_first_win(won: datetime) -> list[SeedActivity]:
    log = _Log(won).start()
    log.meeting(_d(2), "Kickoff call")
    for week in (7, 14, 21, 28):
        log.out_email(_d(week), f"Week {week // 7} check-in")
        log.in_email(_d(week, 2), f"Re: Week {week // 7} check-in")
    log.out_email(_d(33), "Planning the next steps").in_email(_d(33, 2), "Re: Planning")
    return log.items


def _gone_quiet(won: datetime) -> list[SeedActivity]:
    log = _Log(won).start()
    log.meeting(_d(2), "Kickoff call")
    log.done_task(_d(9), "First visible win: dashboards live", step="first_visible_win")
    log.in_email(_d(12), "Question about exports", "How do we export to CSV?")
    log.out_email(_d(12, 2), "Re: Question about exports")
    log.in_email(_d(12, 5), "Re: Question about exports", "Found it, thanks.")
    log.meeting(_d(20), "Progress review")
    log.note(_d(30), "No word from the client since the review.")
    return log.items


def _doc_incomplete(won: datetime) -> list[SeedActivity]:
    return _Log(won).start().items


def _quiet_but_booked(won: datetime) -> list[SeedActivity]:
    log = _Log(won).start()
    log.meeting(_d(2), "Kickoff call")
    log.out_email(_d(8), "Next steps").in_email(_d(9), "Re: Next steps", "Let's meet in May.")
    # Booked on day 10 for three days from the seed day: a client with a meeting in the
    # diary is not quiet, however long since they last wrote.
    log.meeting(_d(28), "Quarterly planning", outcome="scheduled", logged_after=_d(10))
    return log.items


def _weekend_reply(won: datetime) -> list[SeedActivity]:
    # Won on a Thursday; the Friday-afternoon question is answered on Monday morning: 66
    # hours by the calendar, under 20 of the client's business hours.
    log = _Log(won).start()
    log.meeting(_d(1), "Kickoff call")
    log.out_email(_d(8, 6.5), "Data import questions", "Could you send the export by Monday?")
    log.in_email(_d(11, 1), "Re: Data import questions", "Attached, sorry for the wait.")
    return log.items


def _contacted_on_monday(won: datetime) -> list[SeedActivity]:
    # Won after hours on a Friday: the first contact on Monday morning is on time.
    monday = won + _d(2, 15.5)  # Friday 22:30 UTC + 2 d 15.5 h: Monday 14:00 UTC, 09:00 or 10:00
    after = monday - won  # in New York (winter or summer time)
    log = _Log(won)
    log.out_email(after, "Welcome aboard: your onboarding team")
    log.in_email(after + _h(2), "Re: Welcome aboard: your onboarding team", "Hello Maria!")
    log.meeting(after + _d(1), "Kickoff call")
    return log.items


HISTORY_CASES: tuple[HistoryCase, ...] = (
    HistoryCase(
        "Brightline Logistics — healthy client", "Brightline Logistics",
        "Grace", "Hopper", "grace.hopper@brightline.example",
        _days_ago(12), _healthy_named,
        notes="every rule quiet: quoted and outbound scope phrases, a milestone task, calls",
    ),
    HistoryCase(
        "Harbor Dental — no first contact", "Harbor Dental",
        "Irene", "Adler", "irene.adler@harbor-dental.example",
        _days_ago(4), _no_first_contact, frozenset({"no_first_contact"}),
    ),
    HistoryCase(
        "Quarry Analytics — kickoff cancelled", "Quarry Analytics",
        "Ravi", "Shankar", "ravi.shankar@quarry-analytics.example",
        _days_ago(8), _no_kickoff, frozenset({"no_kickoff"}),
    ),
    HistoryCase(
        "Lumen Retail — slow to answer", "Lumen Retail",
        "Olga", "Petrova", "olga.petrova@lumen-retail.example",
        _days_ago(20), _slow_to_answer, frozenset({"slow_client_response"}),
    ),
    HistoryCase(
        "Orbit Fitness — two no-shows", "Orbit Fitness",
        "Tom", "Baker", "tom.baker@orbit-fitness.example",
        _days_ago(10), _two_no_shows, frozenset({"missed_meetings"}),
    ),
    HistoryCase(
        "Cedar Foods — asks for more", "Cedar Foods",
        "Lena", "Fischer", "lena.fischer@cedar-foods.example",
        _days_ago(6), _scope_creep, frozenset({"scope_creep"}),
    ),
    HistoryCase(
        "Pinecrest Bank — no first win", "Pinecrest Bank",
        "Omar", "Haddad", "omar.haddad@pinecrest-bank.example",
        _days_ago(35), _no_first_win, frozenset({"no_first_win"}), amount=120_000.0,
    ),
    HistoryCase(
        "Silverline Media — gone quiet", "Silverline Media",
        "Nina", "Kowalski", "nina.kowalski@silverline-media.example",
        _days_ago(40), _gone_quiet, frozenset({"gone_quiet"}),
    ),
    HistoryCase(
        "Maple Software — handoff document incomplete", "Maple Software",
        "Jon", "Reyes", "jon.reyes@maple-software.example",
        _days_ago(3), _doc_incomplete, frozenset({"handoff_doc_incomplete"}),
        missing_doc=("goals", "promises"),
    ),
    HistoryCase(
        "Willow Health — quiet, meeting booked", "Willow Health",
        "Priya", "Nair", "priya.nair@willow-health.example",
        _days_ago(25), _quiet_but_booked,
        notes="16 days without a word, but a meeting is in the diary: not gone quiet",
    ),
    HistoryCase(
        "Birch Architects — answers after the weekend", "Birch Architects",
        "Sven", "Lund", "sven.lund@birch-architects.example",
        _eight_days_before_friday, _weekend_reply,
        notes="a Friday question answered on Monday: 66 calendar hours, not slow",
    ),
    HistoryCase(
        "Fjord Outdoor — won on a Friday evening", "Fjord Outdoor",
        "Ingrid", "Dahl", "ingrid.dahl@fjord-outdoor.example",
        _friday_evening_win, _contacted_on_monday,
        notes="won after hours on a Friday, contacted on Monday morning: on time",
    ),
    HistoryCase(
        "Redwood Supply — scope change ticked in the CRM", "Redwood Supply",
        "Carla", "Mendes", "carla.mendes@redwood-supply.example",
        _days_ago(9), lambda won: _Log(won).start().meeting(_d(2), "Kickoff call").items,
        frozenset({"scope_creep"}), scope_change=True,
    ),
)  # fmt: skip

# -- ordinary clients --------------------------------------------------------------------------

_TOPICS = (
    "Admin training",
    "User import",
    "Reporting set-up",
    "Integration questions",
    "Roll-out plan",
    "Permissions review",
    "Dashboard walkthrough",
    "Data migration",
)


def healthy_history(
    key: str, won_at: datetime, until: datetime, count: int | None = None
) -> list[SeedActivity]:
    """An ordinary client's history from the win to ``until``: nothing a rule should flag.

    ``key`` (the deal's name or position) seeds the choices, so every CRM's seed gets the same
    history for the same deal. With ``count`` the history has exactly that many activities,
    spread from the win to ``until`` (the benchmark's fixed load); else it follows the calendar.
    """
    rng = random.Random(f"history:{key}")
    log = _Log(won_at)
    first = _h(rng.uniform(0.3, 3))
    log.out_email(first, "Welcome aboard: your onboarding team")
    log.in_email(first + _h(rng.uniform(0.5, 6)), "Re: Welcome aboard", "Looking forward to it.")
    log.meeting(_d(rng.randint(1, 3), rng.uniform(0, 4)), "Kickoff call")
    if count is None:
        week = 1
        while won_at + _d(7 * week) < until:
            topic = rng.choice(_TOPICS)
            sent = _d(7 * week, rng.uniform(0, 6))
            log.out_email(sent, f"Week {week} check-in: {topic.lower()}")
            log.in_email(sent + _h(rng.uniform(0.5, 20)), f"Re: Week {week} check-in")
            if week == 1:
                log.done_task(_d(rng.randint(8, 13)), "First visible win", "first_visible_win")
            if rng.random() < 0.4:
                log.add("call", "outbound", sent + _d(2), f"{topic} call", outcome="completed")
            if rng.random() < 0.3:
                log.note(sent + _d(3), f"{topic}: on track.")
            week += 1
    else:
        span = max(until - won_at, _d(1))
        if span > _d(8):  # a first win is logged in the second week, never in the first
            log.done_task(min(_d(10), span * 0.5 + _d(4)), "First visible win", "first_visible_win")
        pairs = max(0, (count - len(log.items) + 1) // 2)
        for pair in range(pairs):
            at = span * ((pair + 1) / (pairs + 1))
            topic = rng.choice(_TOPICS)
            log.out_email(at, topic).in_email(at + _h(rng.uniform(0.5, 4)), f"Re: {topic}")
        del log.items[count:]
    return [item for item in log.items if item.modstamp < until and item.at < until]
