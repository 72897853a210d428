"""The red-flag rules, evaluated for every onboarding deal at once.

Input: one frame of deals (one row each, with the client's zone and country and the people's
names) and one frame of their activities (``crm.base.ACTIVITY_COLUMNS``). Output: one row per
rule that holds for a deal, with a severity and a reason a person understands. Every threshold
is a setting (``[red_flags]``). The rules read only what the CRM logged; what counts as what:

- a *CS touch*: an outbound email or call, a meeting that was held, a completed task of ours;
- a *client touch*: anything inbound from the client, a held meeting, a completed call;
- *outreach*: an outbound email, answered by the client's next touch;
- a *held meeting*: outcome completed, or (setting) a past meeting nobody logged an outcome for;
- the *kickoff*: a held meeting whose subject names it, or our kickoff task completed;
- a *first win*: a completed task or a note whose subject names a milestone, or our
  first-visible-win task completed.

False positives the rules avoid, each with a seeded case in the sandbox: phrases in our own
mail or in the quoted part of a client's reply are not the client's request; a Friday
question answered on Monday is not slow (the business clock); a deal won on a Friday evening
is contacted in time on Monday morning; a client with a meeting booked is not quiet; a
cancelled meeting is not a no-show, and no-shows before a meeting the client attended are
forgiven; an inbound "go-live" is not a milestone we logged.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime

import pandas as pd

from handoff.client_locale import SendingWindow
from handoff.config import RedFlagSettings
from handoff.errors import ConfigError
from handoff.planning import HANDOFF_DOC_LABELS
from handoff.redflags.clock import business_hours_between

FLAG_COLUMNS = ["deal_id", "code", "severity", "reason"]

SEVERITY = {
    "handoff_doc_incomplete": "medium",
    "no_first_contact": "high",
    "no_kickoff": "high",
    "slow_client_response": "medium",
    "missed_meetings": "high",
    "scope_creep": "medium",
    "no_first_win": "medium",
    "gone_quiet": "high",
}
TITLES = {
    "handoff_doc_incomplete": "Handoff document incomplete",
    "no_first_contact": "No first contact from customer success",
    "no_kickoff": "No kickoff",
    "slow_client_response": "Client slow to answer",
    "missed_meetings": "Missed meetings",
    "scope_creep": "Scope creep",
    "no_first_win": "No first win",
    "gone_quiet": "Client gone quiet",
}

# Deals frame columns the rules read.
DEAL_FIELDS = [
    "deal_id",
    "won_at",
    "zone",
    "country",
    "owner_id",
    "owner_name",
    "csm_id",
    "csm_name",
    "missing_doc",
    "scope_change",
]

# A reply's quoted part: lines starting with ">" and everything from an "On ... wrote:" line.
_QUOTED = re.compile(r"(?ms)^On [^\n]*wrote:\s*$.*|^>[^\n]*$")


@dataclass(frozen=True)
class RuleInput:
    deals: pd.DataFrame
    activities: pd.DataFrame
    as_of: datetime
    settings: RedFlagSettings
    window: SendingWindow
    # The playbook's own emails as sent (deal_id, subject): an org that logs them in the CRM
    # (a BCC address, an email integration) must not see them as a person's outreach.
    sent: pd.DataFrame | None = None


def evaluate(data: RuleInput) -> pd.DataFrame:
    """Every rule over every deal: one row per flag that holds as of ``data.as_of``."""
    return evaluate_with_checks(data)[0]


def evaluate_with_checks(data: RuleInput) -> tuple[pd.DataFrame, pd.Series]:
    """The flags that hold, and each deal's next check (see :func:`next_checks`)."""
    if data.deals.empty:
        return pd.DataFrame(columns=FLAG_COLUMNS), pd.Series(dtype="datetime64[ns, UTC]")
    acts = classify_activities(data)
    found = [
        rule(data, acts)
        for rule in (
            _handoff_doc_incomplete,
            _no_first_contact,
            _no_kickoff,
            _slow_client_response,
            _missed_meetings,
            _scope_creep,
            _no_first_win,
            _gone_quiet,
        )
    ]
    flags = (
        pd.concat([f for f in found if not f.empty], ignore_index=True)
        if any(not f.empty for f in found)
        else pd.DataFrame(columns=["deal_id", "code", "reason"])
    )
    unknown = set(data.settings.severity) - set(SEVERITY)
    if unknown:
        raise ConfigError(
            f"[red_flags].severity names rules that do not exist: {sorted(unknown)} "
            f"(known: {', '.join(SEVERITY)})"
        )
    flags["severity"] = flags["code"].map({**SEVERITY, **data.settings.severity})
    flags = flags[FLAG_COLUMNS].sort_values(["deal_id", "code"], ignore_index=True)
    return flags, next_checks(data, acts, flags)


def _phrases(words: list[str]) -> re.Pattern[str] | None:
    if not words:
        return None
    return re.compile(
        r"(?<!\w)(?:" + "|".join(re.escape(w.strip()) for w in words if w.strip()) + r")(?!\w)",
        re.IGNORECASE,
    )


def _matches(text: pd.Series, words: list[str]) -> pd.Series:
    pattern = _phrases(words)
    if pattern is None:
        return pd.Series(False, index=text.index)
    return text.astype(object).fillna("").str.contains(pattern, regex=True)


def classify_activities(data: RuleInput) -> pd.DataFrame:
    """Activities after the win, with what each one counts as (boolean columns)."""
    s = data.settings
    acts = data.activities.merge(data.deals[["deal_id", "won_at"]], on="deal_id", how="inner")
    acts = acts[acts["occurred_at"].notna() & (acts["occurred_at"] >= acts["won_at"])].copy()
    as_of = pd.Timestamp(data.as_of)
    past = acts["occurred_at"] <= as_of
    kind, direction, outcome = acts["kind"], acts["direction"], acts["outcome"]
    # Text work only where it can matter (a few rows of the hundreds of thousands).
    keyed = acts["handoff_key"].notna()
    step = pd.Series("", index=acts.index, dtype=object)
    step[keyed] = acts.loc[keyed, "handoff_key"].astype(str).str.rsplit(":", n=1).str[-1]
    meeting = kind == "meeting"
    unlogged = outcome.isna() & s.unlogged_past_meetings_held
    acts["held"] = meeting & past & ((outcome == "completed") | unlogged)
    acts["no_show"] = meeting & past & (outcome == "no_show")
    acts["booked"] = meeting & ~past & ~outcome.isin(["cancelled", "no_show"])
    completed_task = (kind == "task") & (outcome == "completed") & past
    call_done = (kind == "call") & (outcome == "completed") & past
    ours = _sent_by_us(acts, data.sent)
    acts["cs_touch"] = past & (
        ((direction == "outbound") & kind.isin(["email", "call"]) & ~ours)
        | acts["held"]
        | (completed_task & (step == "first_cs_contact"))
    )
    acts["client_touch"] = past & ((direction == "inbound") | acts["held"] | call_done)
    acts["outreach"] = past & (direction == "outbound") & (kind == "email") & ~ours

    def phrase_in_subject(rows: pd.Series, phrases: list[str]) -> pd.Series:
        found = pd.Series(False, index=acts.index)
        found[rows] = _matches(acts.loc[rows, "subject"], phrases)
        return found

    acts["kickoff"] = phrase_in_subject(acts["held"], s.kickoff_phrases) | (
        completed_task & step.isin(s.kickoff_steps)
    )
    logged = completed_task | ((kind == "note") & past)
    acts["milestone"] = phrase_in_subject(logged, s.milestone_phrases) | (
        completed_task & step.isin(s.milestone_steps)
    )
    client_words = past & (((direction == "inbound") & (kind == "email")) | (kind == "note"))
    words = acts.loc[client_words]
    text = (
        words["subject"].astype(object).fillna("")
        + "\n"
        + words["snippet"].astype(object).fillna("")
    ).str.replace(_QUOTED, "", regex=True)
    acts["scope_text"] = ""
    acts.loc[client_words, "scope_text"] = text
    return acts


def _sent_by_us(acts: pd.DataFrame, sent: pd.DataFrame | None) -> pd.Series:
    """Outbound emails that are the CRM's copy of one of our playbook emails to that deal."""
    found = pd.Series(False, index=acts.index)
    if sent is None or sent.empty or acts.empty:
        return found

    def key(deal: pd.Series, subject: pd.Series) -> pd.Series:
        return deal.astype(str) + "\x1f" + subject.astype(object).fillna("").str.strip().str.lower()

    ours = set(key(sent["deal_id"], sent["subject"]))
    emails = acts[(acts["kind"] == "email") & (acts["direction"] == "outbound")]
    found[emails.index] = key(emails["deal_id"], emails["subject"]).isin(ours).to_numpy(bool)
    return found


# -- the rules --------------------------------------------------------------------------------


def _no_flags() -> pd.DataFrame:
    return pd.DataFrame(columns=["deal_id", "code", "reason"])


def _holding(deals: pd.DataFrame, mask: pd.Series) -> pd.DataFrame:
    """The deals a rule holds for: their reasons are worded for them only (a few of many)."""
    return deals[mask.reindex(deals.index, fill_value=False)]


def _flags(hit: pd.DataFrame, code: str, reasons: pd.Series) -> pd.DataFrame:
    """One flag per deal of ``hit``, with its reason (``reasons`` shares the deals' index)."""
    return pd.DataFrame(
        {"deal_id": hit["deal_id"], "code": code, "reason": reasons.reindex(hit.index)}
    )


def _lookup(keys: pd.Series, values: pd.Series) -> pd.Series:
    """``values`` (indexed by deal id) for each key, keeping their dtype (time zones included,
    even when ``values`` is empty, where ``Series.map`` would give up)."""
    return pd.Series(values.reindex(keys.to_numpy()).array, index=keys.index)


def _per_deal(deals: pd.DataFrame, values: pd.Series) -> pd.Series:
    """A per-deal aggregate (indexed by deal id) aligned to the deals frame."""
    return _lookup(deals["deal_id"], values)


def _any_per_deal(deals: pd.DataFrame, acts: pd.DataFrame, column: str) -> pd.Series:
    """Whether each deal has an activity that counts as ``column`` (aligned to the deals)."""
    return _per_deal(deals, acts[acts[column]].groupby("deal_id").size()).fillna(0) > 0


def _day(moments: pd.Series, zones: pd.Series) -> pd.Series:
    """'Tue 3 Mar' in each client's zone ("" where there is no moment)."""
    out = pd.Series("", index=moments.index, dtype=object)
    moments = pd.to_datetime(moments, utc=True)
    for zone, index in zones.groupby(zones).groups.items():
        local = moments.loc[index].dt.tz_convert(zone)
        out.loc[index] = local.map(lambda t: f"{t:%a} {t.day} {t:%b}" if pd.notna(t) else "")
    return out


def _handoff_doc_incomplete(data: RuleInput, acts: pd.DataFrame) -> pd.DataFrame:
    deals = data.deals
    missing = deals["missing_doc"].map(
        lambda keys: [HANDOFF_DOC_LABELS.get(k, k).split(" (")[0].lower() for k in keys or []]
    )
    hit = _holding(deals, missing.map(bool))
    if hit.empty:
        return _no_flags()
    rep = hit["owner_name"].astype(object).fillna("the rep")
    reasons = (
        rep
        + " has not filled in these parts of the handoff document: "
        + missing[hit.index].map(lambda fields: "; ".join(fields))
    )
    return _flags(hit, "handoff_doc_incomplete", reasons)


def _no_first_contact(data: RuleInput, acts: pd.DataFrame) -> pd.DataFrame:
    deals = data.deals
    touched = _any_per_deal(deals, acts, "cs_touch")
    as_of = pd.Series(pd.Timestamp(data.as_of), index=deals.index)
    waited = business_hours_between(
        deals["won_at"], as_of, deals["zone"], deals["country"], data.window
    )
    limit = data.settings.first_contact_hours
    late = _holding(deals, ~touched & (waited > limit))
    if late.empty:
        return _no_flags()
    waited = waited[late.index]
    reasons = (
        "no one from customer success has contacted the client since the win on "
        + _day(late["won_at"], late["zone"])
        + " ("
        + waited.round().astype("Int64").astype(str)
        + f" of their business hours; the target is {limit:g} h)"
    )
    return _flags(late, "no_first_contact", reasons)


def _no_kickoff(data: RuleInput, acts: pd.DataFrame) -> pd.DataFrame:
    deals = data.deals
    s = data.settings
    kicked_off = _any_per_deal(deals, acts, "kickoff")
    deadline = deals["won_at"] + pd.Timedelta(days=s.kickoff_by_day)
    late = _holding(deals, ~kicked_off & (deadline < pd.Timestamp(data.as_of)))
    if late.empty:
        return _no_flags()
    meetings = acts[acts["kind"] == "meeting"]
    meetings = meetings[_matches(meetings["subject"], s.kickoff_phrases)]
    last = meetings.sort_values("occurred_at").drop_duplicates("deal_id", keep="last")
    last = last.set_index("deal_id")
    status = _per_deal(late, last["outcome"].astype(object).fillna("scheduled"))
    when = _day(_per_deal(late, last["occurred_at"]), late["zone"])
    detail = pd.Series(" and none is booked", index=late.index)
    detail = detail.mask(status == "cancelled", "; the last one, on " + when + ", was cancelled")
    detail = detail.mask(status == "no_show", "; the client missed the one on " + when)
    detail = detail.mask(status == "scheduled", "; one is booked for " + when)
    reasons = f"no kickoff meeting held by day {s.kickoff_by_day}" + detail
    return _flags(late, "no_kickoff", reasons)


def _latest_waits(
    data: RuleInput, acts: pd.DataFrame, *, with_hours: bool = True
) -> pd.DataFrame | None:
    """Each deal's latest wait for the client (indexed by deal id): the first outreach after
    their last answer, when it was answered (or NaT), and (``with_hours``) its business hours
    until then or until now."""
    deals = data.deals
    outreach = acts[acts["outreach"]].sort_values("occurred_at")
    answers = acts[acts["client_touch"]].sort_values("occurred_at")
    if outreach.empty:
        return None
    keys = ["deal_id", "occurred_at"]
    before = pd.merge_asof(
        outreach[["deal_id", "occurred_at", "owner_id", "subject"]],
        answers[keys].rename(columns={"occurred_at": "answered_before"}),
        left_on="occurred_at",
        right_on="answered_before",
        by="deal_id",
        direction="backward",
        allow_exact_matches=False,
    )
    after = pd.merge_asof(
        outreach[keys],
        answers[keys].rename(columns={"occurred_at": "answered_at"}),
        left_on="occurred_at",
        right_on="answered_at",
        by="deal_id",
        direction="forward",
        allow_exact_matches=False,
    )
    before["answered_at"] = after["answered_at"].array
    before["since"] = before["answered_before"].fillna(pd.Timestamp(0, tz="UTC"))
    # Each wait opens with the first outreach after the client's previous answer.
    # (drop_duplicates, not groupby().first(): that would take each column's first non-null.)
    waits = before.drop_duplicates(["deal_id", "since"], keep="first")
    latest = waits.sort_values("occurred_at").drop_duplicates("deal_id", keep="last")
    latest = latest.set_index("deal_id")
    place = deals.set_index("deal_id")[["zone", "country", "csm_id", "csm_name"]].assign(
        rep_id=deals.set_index("deal_id")["owner_id"],
        rep_name=deals.set_index("deal_id")["owner_name"],
    )
    latest = latest.join(place, how="inner")
    if not with_hours:
        return latest
    ended = latest["answered_at"].fillna(pd.Timestamp(data.as_of))
    latest["hours"] = business_hours_between(
        latest["occurred_at"], ended, latest["zone"], latest["country"], data.window
    )
    return latest


def _slow_client_response(data: RuleInput, acts: pd.DataFrame) -> pd.DataFrame:
    """The latest wait for the client. Slow when it is still unanswered after the limit, or
    when its answer took longer than the limit."""
    limit = data.settings.client_response_hours
    latest = _latest_waits(data, acts)
    if latest is None:
        return _no_flags()
    hours = latest["hours"]
    slow = hours > limit
    if not slow.any():
        return _no_flags()
    latest, hours = latest[slow], hours[slow]
    sender = pd.Series("our", index=latest.index, dtype=object)
    sender = sender.mask(latest["owner_id"] == latest["rep_id"], latest["rep_name"] + "'s")
    sender = sender.mask(latest["owner_id"] == latest["csm_id"], latest["csm_name"] + "'s")
    sent = _day(latest["occurred_at"], latest["zone"])
    days = (hours / 24).round(1).map(lambda d: f"{d:g}")
    open_reason = (
        "the client has not answered "
        + sender
        + " email of "
        + sent
        + " ('"
        + latest["subject"].astype(object).fillna("")
        + "') for "
        + days
        + " business days"
    )
    late_reason = (
        "the client took "
        + days
        + " business days to answer "
        + sender
        + " email of "
        + sent
        + " ('"
        + latest["subject"].astype(object).fillna("")
        + "')"
    )
    reasons = open_reason.where(latest["answered_at"].isna(), late_reason)
    return pd.DataFrame(
        {"deal_id": latest.index, "code": "slow_client_response", "reason": reasons.to_numpy()}
    )


def _missed_meetings(data: RuleInput, acts: pd.DataFrame) -> pd.DataFrame:
    """No-shows since the last meeting the client attended."""
    deals = data.deals
    last_held = acts[acts["held"]].groupby("deal_id")["occurred_at"].max()
    shows = acts[acts["no_show"]].copy()
    shows["after_held"] = _lookup(shows["deal_id"], last_held)
    shows = shows[shows["after_held"].isna() | (shows["occurred_at"] > shows["after_held"])]
    shows = shows.merge(deals[["deal_id", "zone"]], on="deal_id")
    counts = _per_deal(deals, shows.groupby("deal_id").size()).fillna(0)
    hit = _holding(deals, counts >= data.settings.missed_meetings)
    if hit.empty:
        return _no_flags()
    shows = shows.sort_values("occurred_at")
    shows = shows[shows["deal_id"].isin(hit["deal_id"])]
    labels = (
        "'"
        + shows["subject"].astype(object).fillna("a meeting")
        + "' on "
        + _day(shows["occurred_at"], shows["zone"])
    )
    grouped = labels.groupby(shows["deal_id"]).agg(list)
    listed = _per_deal(hit, grouped.map(", ".join)).astype(object).fillna("")
    reasons = (
        "the client missed "
        + counts[hit.index].astype(int).astype(str)
        + " meetings since the last one they attended: "
        + listed
    )
    return _flags(hit, "missed_meetings", reasons)


def _scope_creep(data: RuleInput, acts: pd.DataFrame) -> pd.DataFrame:
    """The client's own words (recent inbound mail and notes, quotes removed), or the CRM's flag."""
    deals = data.deals
    s = data.settings
    since = pd.Timestamp(data.as_of) - pd.Timedelta(days=s.scope_creep_days)
    recent = acts[acts["occurred_at"] >= since]
    asked = recent[_matches(recent["scope_text"], s.scope_creep_phrases)]
    said = pd.Series(dtype=object)
    pattern = _phrases(s.scope_creep_phrases)
    if pattern is not None and not asked.empty:
        asked = asked.sort_values("occurred_at").drop_duplicates("deal_id", keep="last")
        asked = asked.merge(deals[["deal_id", "zone"]], on="deal_id")
        phrase = asked["scope_text"].map(lambda text: pattern.search(text).group(0))
        subject = asked["subject"].astype(object).fillna("")
        when = _day(asked["occurred_at"], asked["zone"])
        text = 'the client wrote "' + phrase + "\" in '" + subject + "' on " + when
        said = pd.Series(text.to_numpy(), index=asked["deal_id"])
    phrase_reason = _per_deal(deals, said).astype(object)
    ticked = deals["scope_change"].astype(object).fillna(False).astype(bool)
    reasons = phrase_reason.fillna("the deal is marked in the CRM as asking for a change of scope")
    return _flags(_holding(deals, phrase_reason.notna() | ticked), "scope_creep", reasons)


def _no_first_win(data: RuleInput, acts: pd.DataFrame) -> pd.DataFrame:
    deals = data.deals
    by_day = data.settings.first_win_by_day
    won = _any_per_deal(deals, acts, "milestone")
    mask = ~won & (deals["won_at"] + pd.Timedelta(days=by_day) < pd.Timestamp(data.as_of))
    reasons = pd.Series(f"no first win (milestone) logged by day {by_day}", index=deals.index)
    return _flags(_holding(deals, mask), "no_first_win", reasons)


def _gone_quiet(data: RuleInput, acts: pd.DataFrame) -> pd.DataFrame:
    deals = data.deals
    quiet_days = data.settings.quiet_days
    as_of = pd.Timestamp(data.as_of)
    last = _per_deal(deals, acts[acts["client_touch"]].groupby("deal_id")["occurred_at"].max())
    # (one unit on both sides: the store and the deals frame may parse to different ones)
    last = pd.to_datetime(last, utc=True).dt.as_unit("ns")
    since = last.fillna(deals["won_at"].dt.as_unit("ns"))
    booked = _any_per_deal(deals, acts, "booked")
    silent = (as_of - since) / pd.Timedelta(days=1)
    hit = _holding(deals, (silent > quiet_days) & ~booked)
    if hit.empty:
        return _no_flags()
    reasons = (
        "nothing from the client for "
        + silent[hit.index].astype(int).astype(str)
        + " days (last: "
        + _day(since[hit.index], hit["zone"])
        + "), and no meeting is booked"
    )
    return _flags(hit, "gone_quiet", reasons)


# -- when to look again -----------------------------------------------------------------------

# Reasons that count time ("for 9 days", "12 of their business hours") are re-worded this often
# while their flag holds.
REWORD_EVERY = pd.Timedelta(days=1)
TIME_WORDED = ("no_first_contact", "slow_client_response", "gone_quiet")
NEXT_RUN = pd.Timedelta(seconds=1)  # a check this close to now falls due at the next run


def next_checks(data: RuleInput, acts: pd.DataFrame, flags: pd.DataFrame) -> pd.Series:
    """When each deal must be evaluated again if nothing about it changes (indexed by deal id;
    NaT: not before its data changes): the earliest moment a rule could start or stop holding,
    or a reason that counts time is due to be re-worded.

    Each moment is a lower bound. A business-hours limit is not reached before as many hours
    of wall clock, and a scheduled activity changes what it counts as when its time comes; a
    check that comes early finds nothing and sets the next one. A quiet hour then evaluates
    only the deals whose check fell due, not every client.
    """
    deals, s = data.deals, data.settings
    as_of = pd.Timestamp(data.as_of)
    flagged = flags.groupby("code")["deal_id"].agg(set) if not flags.empty else pd.Series()

    def holds(code: str) -> pd.Series:
        return deals["deal_id"].isin(flagged.get(code, set()))

    def hours(value: float) -> pd.Timedelta:
        return pd.Timedelta(hours=value)

    future = acts[acts["occurred_at"] > as_of].groupby("deal_id")["occurred_at"].min()
    moments = {"scheduled": _per_deal(deals, future)}
    time_worded = pd.Series(False, index=deals.index)
    for code in TIME_WORDED:
        time_worded |= holds(code)
    moments["reword"] = pd.Series(as_of + REWORD_EVERY, index=deals.index).where(time_worded)
    waiting = ~_any_per_deal(deals, acts, "cs_touch") & ~holds("no_first_contact")
    moments["first_contact"] = (deals["won_at"] + hours(s.first_contact_hours)).where(waiting)
    waiting = ~_any_per_deal(deals, acts, "kickoff") & ~holds("no_kickoff")
    moments["kickoff"] = (deals["won_at"] + pd.Timedelta(days=s.kickoff_by_day)).where(waiting)
    waiting = ~_any_per_deal(deals, acts, "milestone") & ~holds("no_first_win")
    moments["first_win"] = (deals["won_at"] + pd.Timedelta(days=s.first_win_by_day)).where(waiting)
    waits = _latest_waits(data, acts, with_hours=False)
    if waits is not None:
        open_waits = waits[waits["answered_at"].isna()]
        due = _per_deal(deals, open_waits["occurred_at"] + hours(s.client_response_hours))
        moments["answer"] = due.where(~holds("slow_client_response"))
    recent = acts[acts["occurred_at"] >= as_of - pd.Timedelta(days=s.scope_creep_days)]
    asked = recent[_matches(recent["scope_text"], s.scope_creep_phrases)]
    last_asked = asked.groupby("deal_id")["occurred_at"].max()
    moments["scope"] = _per_deal(deals, last_asked + pd.Timedelta(days=s.scope_creep_days))
    last_heard = _per_deal(
        deals, acts[acts["client_touch"]].groupby("deal_id")["occurred_at"].max()
    )
    quiet_from = pd.to_datetime(last_heard, utc=True).dt.as_unit("ns")
    quiet_from = quiet_from.fillna(deals["won_at"].dt.as_unit("ns"))
    # (a booked meeting keeps the client from being quiet until its time, a moment above)
    quiet = ~holds("gone_quiet") & ~_any_per_deal(deals, acts, "booked")
    moments["quiet"] = (quiet_from + pd.Timedelta(days=s.quiet_days)).where(quiet)
    frame = pd.DataFrame({name: pd.to_datetime(m, utc=True) for name, m in moments.items()})
    check = frame.min(axis=1)
    check = check.where(check.isna() | (check > as_of), as_of + NEXT_RUN)
    return pd.Series(check.to_numpy(), index=deals["deal_id"].to_numpy())
