"""The two red-flag steps of a run: read the activities, then evaluate the rules.

``extract_activities`` reads, for every deal in its 90 days, what the CRM logged since each
activity stream's watermark (a deal seen for the first time: its whole history), in batches of
deals. ``evaluate_red_flags`` runs every rule at once over the deals whose data changed or whose
next check fell due, raises new flag episodes with their escalation (outbox rows, in the same
transaction), resolves the ones that stopped holding, and leaves open ones alone: a flag
escalates once per episode.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Iterator, Mapping
from datetime import datetime, timedelta
from functools import partial
from typing import Any

import pandas as pd

from handoff.client_locale import SendingWindow
from handoff.config import Settings
from handoff.crm.base import ACTIVITY_COLUMNS, CrmClient
from handoff.models import Deal
from handoff.planning import client_place
from handoff.redflags.escalation import escalation_actions
from handoff.redflags.rules import DEAL_FIELDS, RuleInput, evaluate_with_checks
from handoff.state.redflag_store import NewFlag, RedFlagStore
from handoff.state.store import StateStore

log = logging.getLogger(__name__)

EVALUATED_META = "flags_evaluated:"
RULES_META = "flags_rules:"  # fingerprint of the settings the last evaluation ran with


def window_start(settings: Settings, as_of: datetime) -> datetime:
    """Deals won after this are in their 90 days (the playbook's horizon)."""
    return as_of - timedelta(days=settings.plan.horizon_days)


def extract_activities(
    crm: CrmClient, store: StateStore, settings: Settings, window_end: datetime
) -> dict[str, Any]:
    """Read the activities of every onboarding deal in its 90 days, incrementally.

    Each stream has its own watermark (``activities:<stream>``); reads are ``>= watermark -
    overlap`` and ``< window end``, and an activity read twice is simply stored again (upsert
    by id). Deals never read before get their whole history once. Watermarks and coverage move
    only after every stream was read, so a crash re-reads the same window.
    """
    if not settings.red_flags.enabled:
        return {"activities_read": 0, "api_calls": 0}
    flags = RedFlagStore(store)
    won_after = window_start(settings, window_end)
    new = flags.watched_deals(crm.source, won_after, covered=False)
    # Needed only to attribute what changed: a quiet hour never loads it.
    known = LoadedOnUse(
        partial(flags.watched_deals, crm.source, won_after, covered=True),
        size=flags.count_watched(crm.source, won_after, covered=True),
    )
    overlap = timedelta(seconds=settings.detection.extract_overlap_seconds)
    calls_before = crm.api_calls
    read = 0
    marks: dict[str, datetime] = {}
    for stream in crm.activity_streams:
        mark = flags.watermark(crm.source, stream)
        batches = [(new, None)]
        if known:
            # A stream never read (added later) reads the known deals' whole history too.
            batches.append((known, mark - overlap if mark else None))
        for deals, since in batches:
            if not deals:
                continue
            for page in crm.iter_activities(stream, deals, since, window_end):
                read += flags.save_activities(crm.source, page[ACTIVITY_COLUMNS])
        marks[stream] = max(mark, window_end) if mark else window_end
    flags.mark_covered(crm.source, list(new), window_end, marks)
    calls = crm.api_calls - calls_before
    log.info(
        "Read %s activities of %s onboarding deals (%s for the first time), %s API calls",
        read,
        len(new) + len(known),
        len(new),
        calls,
    )
    return {
        "activities_read": read,
        "deals_watched": len(new) + len(known),
        "deals_backfilled": len(new),
        "api_calls": calls,
    }


class LoadedOnUse(Mapping[str, Any]):
    """A mapping whose size is known up front and whose items are loaded on first use."""

    def __init__(self, load: Callable[[], Mapping[str, Any]], *, size: int) -> None:
        self._load, self._size = load, size
        self._items: Mapping[str, Any] | None = None

    def _loaded(self) -> Mapping[str, Any]:
        if self._items is None:
            self._items = self._load()
        return self._items

    def __len__(self) -> int:
        return self._size if self._items is None else len(self._items)

    def __getitem__(self, key: str) -> Any:
        return self._loaded()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._loaded())


def rule_deals(onboarding: pd.DataFrame, settings: Settings) -> pd.DataFrame:
    """One row per onboarding deal with what the rules read (zone, people, the document)."""
    places: dict[tuple[str | None, ...], tuple[str, str]] = {}
    rows = []
    for won_at, record in zip(onboarding["won_at"], onboarding["record"], strict=True):
        deal = Deal.from_record(record)
        where = _place_key(deal)
        if where not in places:
            place = client_place(deal, settings)
            places[where] = (place.zone.key, place.country or "")
        zone, country = places[where]
        owner, csm = deal.owner, deal.csm
        rows.append(
            (
                deal.deal_id,
                won_at,
                zone,
                country,
                owner.id if owner else None,
                owner.name if owner else None,
                csm.id if csm else None,
                csm.name if csm else None,
                deal.missing_handoff_fields(),
                deal.scope_change,
                deal.label(),
                deal.account_name or deal.name,
            )
        )
    frame = pd.DataFrame.from_records(rows, columns=[*DEAL_FIELDS, "label", "account"])
    frame["won_at"] = pd.to_datetime(frame["won_at"], utc=True)
    return frame


def _place_key(deal: Deal) -> tuple[str | None, ...]:
    """What ``client_place`` reads of a deal: deals alike in these share one place (clients of
    one org sit in a few dozen zones and countries), so it is worked out once for them."""
    contact = deal.primary_contact
    return (
        contact.time_zone if contact else None,
        contact.country if contact else None,
        deal.account_time_zone,
        deal.account_country,
    )


def load_rule_input(
    store: StateStore,
    settings: Settings,
    source: str,
    onboarding: pd.DataFrame,
    as_of: datetime,
    *,
    snippets_from: datetime | None,
) -> RuleInput:
    """What the rules read for these onboardings, from the store: the live step, the metrics
    and the backtest judge from the same input, so a metric and a flag never disagree."""
    flags_store = RedFlagStore(store)
    deals = rule_deals(onboarding, settings)
    ids = deals["deal_id"].tolist()
    activities = flags_store.activities_of(source, ids, snippets_from=snippets_from)
    window = SendingWindow(settings.email.window_start, settings.email.window_end)
    sent = flags_store.sent_subjects(source, ids)
    return RuleInput(deals, activities, as_of, settings.red_flags, window, sent)


def _rules_fingerprint(settings: Settings) -> str:
    """What the rules' outcomes depend on besides the data: a change re-evaluates every deal."""
    window = (settings.email.window_start.isoformat(), settings.email.window_end.isoformat())
    text = "\x1f".join((settings.red_flags.model_dump_json(), *window))
    return hashlib.sha256(text.encode()).hexdigest()


def evaluate_red_flags(
    store: StateStore, settings: Settings, source: str, run_id: str, window_end: datetime
) -> dict[str, Any]:
    """Evaluate the rules as of the window's end; raise new flag episodes (each escalated
    once), resolve the ones that cleared.

    Incremental: a deal is evaluated again when its activities or its snapshot were written
    since its last evaluation (the writer makes it due), or when its next check fell due (the
    earliest moment a rule could start or stop holding for it, see ``rules.next_checks``);
    every deal on the first evaluation and after a change of the rules' settings. A quiet hour
    thus costs what is due in it, not the number of clients.

    A replay of an earlier hour than the latest evaluation changes nothing: flags move forward
    in time only, so a backfill never resolves and re-raises (and re-escalates) a flag.
    """
    if not settings.red_flags.enabled:
        return {"flags_raised": 0, "flags_resolved": 0, "flags_open": 0}
    latest = store.get_meta(EVALUATED_META + source)
    if latest and datetime.fromisoformat(latest) > window_end:
        log.info("Flags were evaluated as of %s already; this earlier window changes none", latest)
        return {"flags_raised": 0, "flags_resolved": 0, "flags_open": 0, "replay": True}
    started = time.perf_counter()
    flags_store = RedFlagStore(store)
    won_after = window_start(settings, window_end)
    fingerprint = _rules_fingerprint(settings)
    full = not latest or store.get_meta(RULES_META + source) != fingerprint
    generations = flags_store.flag_generations(source, won_after, None if full else window_end)
    due = None if full else set(generations)
    onboarding = flags_store.onboarding_deals(source, won_after, deal_ids=due)
    recent = window_end - timedelta(days=settings.red_flags.scope_creep_days)
    data = load_rule_input(store, settings, source, onboarding, window_end, snippets_from=recent)
    deals, activities = data.deals, data.activities
    found, checks = evaluate_with_checks(data)
    rules_ms = (time.perf_counter() - started) * 1000

    evaluated = set(deals["deal_id"])
    open_now = flags_store.open_flags(source, deal_ids=evaluated)
    labels = dict(zip(deals["deal_id"], deals["label"], strict=True))
    holding = dict(
        zip(zip(found["deal_id"], found["code"], strict=True), found["reason"], strict=True)
    )
    open_keys = set(zip(open_now["deal_id"], open_now["code"], strict=True))
    resolved, updated = [], []
    for row in open_now.itertuples():
        key = (row.deal_id, row.code)
        if key in holding:
            if holding[key] != row.reason:
                updated.append((row.id, holding[key]))
        else:
            resolved.append((row.id, f"no longer holds as of {window_end:%Y-%m-%d %H:%M} UTC"))
    for flag_id in flags_store.open_flags_left(source, won_after):
        resolved.append((flag_id, "the deal left onboarding or its 90 days ended"))
    is_new = [key not in open_keys for key in zip(found["deal_id"], found["code"], strict=True)]
    fresh = found.loc[pd.Series(is_new, index=found.index, dtype=bool)]
    episodes = flags_store.last_episodes(source, fresh["deal_id"].unique().tolist())
    # Clients adopted at install are taken as found: what is wrong with them on the first look
    # is recorded and listed in the digest, not escalated one by one (an install in a large org
    # would otherwise send thousands of notes at once). Anything new after that escalates.
    previous = datetime.fromisoformat(latest) if latest else None
    adopted = onboarding.set_index("deal_id")["adopted_at"]
    first_look = {
        deal_id
        for deal_id, at in adopted.items()
        if pd.notna(at) and (previous is None or at > previous)
    }
    raised = []
    for row in fresh.itertuples():
        episode = episodes.get((row.deal_id, row.code), 0) + 1
        flag = {"code": row.code, "severity": row.severity, "reason": row.reason}
        actions = []
        if row.deal_id not in first_look:
            actions = escalation_actions(
                source, row.deal_id, labels[row.deal_id], flag, episode, window_end
            )
        raised.append((NewFlag(row.deal_id, row.code, row.severity, row.reason, actions), episode))
    next_at = {
        deal_id: (at.to_pydatetime() if pd.notna(at) else None, generations.get(deal_id))
        for deal_id, at in checks.items()
    }
    new, rows = flags_store.apply(
        source, run_id, window_end, raised, resolved, updated, checks=next_at
    )
    store.set_meta(EVALUATED_META + source, window_end.isoformat())
    store.set_meta(RULES_META + source, fingerprint)
    as_found = sum(1 for flag, _ in raised if not flag.escalation)
    if as_found:
        log.info("%s flags on clients adopted at install taken as found (not escalated)", as_found)
    for new_flag, episode in raised:
        log.warning(
            "Red flag %s (episode %s) on %s: %s",
            new_flag.code,
            episode,
            labels[new_flag.deal_id],
            new_flag.reason,
        )
    return {
        "flags_raised": new,
        "flags_resolved": len(resolved),
        "flags_open": flags_store.count_open(source),
        "escalations_planned": rows,
        "taken_as_found": as_found,
        "deals_evaluated": len(deals),
        "evaluation": "full" if full else "incremental",
        "activities_evaluated": len(activities),
        "rules_ms": round(rules_ms, 1),
    }
