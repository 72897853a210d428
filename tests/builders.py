"""Small builders for test data: one place that knows what a valid deal looks like."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, date, datetime
from typing import Any, Literal

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


class SandboxOrg:
    """Writes a small, explicit org into a sandbox store (tests say exactly what they need)."""

    def __init__(self, store) -> None:
        self.store = store
        self.rep = store.insert(
            "User",
            {
                "FirstName": "Riley",
                "LastName": "Rep",
                "Email": "riley.rep@seller.example",
                "Title": "Account Executive",
                "IsActive": True,
            },
        )
        self.csm = store.insert(
            "User",
            {
                "FirstName": "Casey",
                "LastName": "Csm",
                "Email": "casey.csm@seller.example",
                "Title": "Customer Success Manager",
                "IsActive": True,
            },
        )
        self.inactive_csm = store.insert(
            "User",
            {
                "FirstName": "Gone",
                "LastName": "Away",
                "Email": "gone@seller.example",
                "Title": "Customer Success Manager",
                "IsActive": False,
            },
        )

        # The configured executive ([sender].email): owns the leader's tasks.
        self.executive = store.insert(
            "User",
            {
                "FirstName": "Dana",
                "LastName": "Whitfield",
                "Email": "dana.whitfield@handoff-demo.example",
                "Title": "Chief Customer Officer",
                "IsActive": True,
            },
        )

        self.account_manager = store.insert(
            "User",
            {
                "FirstName": "Morgan",
                "LastName": "Accounts",
                "Email": "morgan.accounts@seller.example",
                "Title": "Account Manager",
                "IsActive": True,
            },
        )

    def won_deal(
        self,
        name: str,
        *,
        won_at: datetime = WON_AT,
        modstamp: datetime | None = None,
        amount: float | None = 120000.0,
        contact: dict[str, Any] | Literal[False] | None = None,
        primary: bool = True,
        owner: str | None | bool = True,
        csm: str | None | bool = True,
        account: str | None = None,
        doc: dict[str, str] | None = None,
        account_owner: str | None = None,
    ) -> str:
        """A Closed Won opportunity with an account and (by default) a primary contact."""
        account_id = self.store.insert(
            "Account", {"Name": account or f"{name} Ltd", "OwnerId": account_owner}
        )
        fields: dict[str, Any] = {
            "Name": name,
            "AccountId": account_id,
            "StageName": "Closed Won",
            "CloseDate": won_at.date().isoformat(),
            "LastStageChangeDate": won_at,
            "Amount": amount,
            "OwnerId": self.rep if owner is True else owner,
            "Customer_Success_Manager__c": self.csm if csm is True else csm,
        }
        for key, value in (doc if doc is not None else HANDOFF_DOC).items():
            fields[f"Handoff_{key.capitalize()}__c"] = value
        deal_id = self.store.insert("Opportunity", fields, modstamp=modstamp or won_at)
        if contact is not False:
            person = {
                "FirstName": "Ada",
                "LastName": "Lovelace",
                "Email": "ada@client.example",
                "HasOptedOutOfEmail": False,
                **(contact or {}),
            }
            contact_id = self.store.insert("Contact", {"AccountId": account_id, **person})
            self.store.insert(
                "OpportunityContactRole",
                {
                    "OpportunityId": deal_id,
                    "ContactId": contact_id,
                    "Role": "Decision Maker",
                    "IsPrimary": primary,
                },
            )
        return deal_id

    def open_deal(self, name: str, *, modstamp: datetime | None = None) -> str:
        account_id = self.store.insert("Account", {"Name": f"{name} Ltd"})
        return self.store.insert(
            "Opportunity",
            {
                "Name": name,
                "AccountId": account_id,
                "StageName": "Negotiation/Review",
                "CloseDate": "2026-12-31",
                "Amount": 5000,
                "OwnerId": self.rep,
            },
            modstamp=modstamp,
        )


def day_zero(deal: Deal, settings, people=None):
    """The day-0 steps of the tests' playbook, each resolved for ``deal`` at its win, and the
    deal's data issues. Which steps apply (conditions) is the scheduler's business, tested
    with the store."""
    from datetime import timedelta

    from handoff.planning import People, deal_issues, is_existing_customer, resolve

    at = deal.won_at
    segment = "existing_customer" if is_existing_customer(deal, settings) else "new_business"
    steps = {
        step.id: resolve(deal, step, settings, people or People(), at, at)
        for step in settings.plan.steps
        if step.offset == timedelta(0) and segment in step.segments
    }
    return steps, deal_issues(deal, settings)


def save_snapshot(store, deal: Deal, modstamp: datetime | None = None) -> None:
    """Store the deal as extraction would (dispatch resolves steps from this snapshot)."""
    from handoff.pipeline import snapshot_row

    store.save_deals(deal.source, "deals", [snapshot_row(deal, modstamp or deal.won_at)], None)


def plan_steps(store, deal: Deal, *steps: str, run_id: str = "run-1") -> list[str]:
    """Save the deal's snapshot and put these steps in the outbox, due at the win."""
    from handoff.config import load_settings
    from handoff.models import ActionKind, PlannedAction

    kinds = {s.id: s.kind for s in load_settings().plan.steps}  # the playbook in use
    save_snapshot(store, deal)
    actions = []
    for step in steps:
        email = kinds.get(step, "email" if step.endswith("email") else "task") == "email"
        actions.append(
            PlannedAction(
                deal.source,
                deal.deal_id,
                step,
                ActionKind.EMAIL if email else ActionKind.TASK,
                payload={"deal_label": deal.label(), "client": email},
                due_at=deal.won_at,
            )
        )
    store.record_plan(deal.source, run_id, actions)
    return [a.dedupe_key for a in actions]
