"""Small builders for test data: one place that knows what a valid deal looks like."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, date, datetime
from typing import Any

from handoff.models import Contact, Deal, Person

WON_AT = datetime(2026, 11, 20, 15, 30, tzinfo=UTC)

REP = Person(id="005000000000001AAA", name="Riley Rep", email="riley.rep@seller.example")
CSM = Person(id="005000000000002AAA", name="Casey Csm", email="casey.csm@seller.example")
CONTACT = Contact(
    id="003000000000001AAA",
    first_name="Ada",
    last_name="Lovelace",
    email="ada@client.example",
)
HANDOFF_DOC = {
    "situation": "INTERNAL-SITUATION their CFO wants a cost cut",
    "goals": "INTERNAL-GOALS cut reporting time in half",
    "promises": "INTERNAL-PROMISE a free SSO add-on until March",
    "objections": "INTERNAL-OBJECTION price; solved with a 2-year term",
    "stakeholders": "INTERNAL-STAKEHOLDERS Ada (champion), Grace (CFO)",
    "risks": "INTERNAL-RISK a competitor is still in the building",
}


def make_deal(**changes: Any) -> Deal:
    deal = Deal(
        source="salesforce",
        deal_id="006000000000001AAA",
        name="Analytical Engines - platform",
        account_name="Analytical Engines Ltd",
        stage="Closed Won",
        is_won=True,
        is_deleted=False,
        amount=120000.0,
        close_date=date(2026, 11, 20),
        won_at=WON_AT,
        owner=REP,
        csm=CSM,
        primary_contact=CONTACT,
        handoff_doc=dict(HANDOFF_DOC),
    )
    return replace(deal, **changes)
