"""The sandbox's named client histories loaded straight into a state store (no CRM): what the
metrics, the digest and the backtest tests start from."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, date, datetime, time, timedelta

import pandas as pd

from handoff.crm.base import ACTIVITY_COLUMNS
from handoff.models import Contact, Person
from handoff.sandbox.histories import HISTORY_CASES, SeedActivity
from handoff.state.redflag_store import RedFlagStore
from tests.builders import CSM, HANDOFF_DOC, REP, make_deal, save_snapshot

ACCOUNT_OWNER = Person(
    id="005000000000009AAA", name="Morgan Accounts", email="morgan@seller.example"
)


def activity_frame(
    deal_id: str, items: list[SeedActivity], source: str = "salesforce"
) -> pd.DataFrame:
    """A deal's history as a connector yields it (the CSM owns what is ours)."""
    rows = [
        {
            "activity_id": f"{deal_id}-{a.key}", "deal_id": deal_id, "kind": a.kind,
            "direction": a.direction, "occurred_at": a.at, "outcome": a.outcome,
            "subject": a.subject, "snippet": a.body[:500],
            "owner_id": None if a.direction == "inbound" else CSM.id,
            "handoff_key": f"{source}:{deal_id}:{a.step}" if a.step else None,
            "is_deleted": False, "modstamp": a.modstamp,
        }
        for a in items
    ]  # fmt: skip
    frame = pd.DataFrame(rows, columns=ACTIVITY_COLUMNS)
    for column in ("occurred_at", "modstamp"):
        frame[column] = pd.to_datetime(frame[column], utc=True)
    return frame


def case_deal_id(index: int) -> str:
    return f"006{index:015d}"


def load_cases(store, today: date, source: str = "salesforce") -> dict[str, str]:
    """Every named case as an onboarding deal with its activities; returns {deal name: id}."""
    ids = {}
    frames = []
    for index, case in enumerate(HISTORY_CASES):
        won = case.won_at(today)
        deal_id = case_deal_id(index)
        doc = {k: ("" if k in case.missing_doc else v) for k, v in HANDOFF_DOC.items()}
        deal = make_deal(
            source=source,
            deal_id=deal_id,
            name=case.deal,
            account_name=case.account,
            won_at=won,
            close_date=won.date(),
            owner=REP,
            csm=CSM,
            account_owner=ACCOUNT_OWNER,
            handoff_doc=doc,
            scope_change=case.scope_change,
            primary_contact=Contact(
                id=f"003{index:015d}",
                first_name=case.first,
                last_name=case.last,
                email=case.email,
                time_zone=case.time_zone,
                country=case.country,
            ),
        )
        save_snapshot(store, deal, won)
        store.start_onboarding(
            source, won - timedelta(minutes=1), won + timedelta(minutes=1), "run-0"
        )
        ids[case.deal] = deal_id
        frames.append(activity_frame(deal_id, case.history(won), source))
    frame = pd.concat(frames, ignore_index=True)
    RedFlagStore(store).save_activities(source, frame)
    return ids


def noon(today: date) -> datetime:
    return datetime.combine(today, time(12), tzinfo=UTC)


__all__ = ["ACCOUNT_OWNER", "REP", "load_cases", "noon", "replace"]
