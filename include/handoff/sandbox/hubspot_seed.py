"""A deterministic, realistic demo portal for the sandbox HubSpot CRM.

The portal tells the same story as the Salesforce org (seed.py), with that seed's
vocabulary, deal mix and named edge-case deals, people and emails, written the way a
HubSpot portal keeps them: numeric ids, string property values, owners instead of
users (the inactive CSM is an archived owner), two deal pipelines (HubSpot's default
one and a custom "Enterprise" one with numeric stage ids), a "Primary" association
label on each deal's main contact, ``hs_timezone`` in HubSpot's slug form
(``asia_slash_tokyo``) and ``hs_language`` as HubSpot's lower-case tags (``zh-cn``).

Clients have histories (``histories.py``, the scenario every sandbox CRM shares): every
deal won in the last ``HISTORY_DAYS`` days gets an ordinary client's meetings, emails,
calls, notes and tasks, and the named ``HISTORY_CASES`` clients are added with the
histories built to trip (or not trip) each red-flag rule. They come after every other
record and draw nothing from the seed's random sequence, so the rest of the portal is
the same with or without them.

Same (seed, deals, today) and options give the same portal, ids included; nothing
reads the wall clock.
"""

from __future__ import annotations

import html
import logging
import random
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from itertools import accumulate
from typing import Any

from handoff.crm.hubspot import body_with_key
from handoff.models import dedupe_key
from handoff.sandbox import seed as org_seed
from handoff.sandbox.histories import HISTORY_CASES, HistoryCase, SeedActivity, healthy_history
from handoff.sandbox.hubspot_store import (
    DATE_ENTERED_PREFIX,
    HUBSPOT_DEFINED,
    USER_DEFINED,
    BulkWriter,
    HubSpotStore,
    PropertyDef,
    format_ms,
    to_hubspot_timezone,
    to_ms,
)
from handoff.sandbox.store import HANDOFF_FIELDS

__all__ = [
    "DEFAULT_PIPELINE_ID",
    "EDGE_CASE_DEALS",
    "ENTERPRISE_PIPELINE_ID",
    "ENTERPRISE_WON_STAGE_ID",
    "HANDOFF_PROPERTIES",
    "HISTORY_DAYS",
    "PRIMARY_CONTACT_LABEL_TYPE_ID",
    "SCOPE_CHANGE_PROPERTY",
    "seed_portal",
]

log = logging.getLogger(__name__)

# The named edge-case deals: the Salesforce org's, by the same names.
EDGE_CASE_DEALS: tuple[str, ...] = tuple(edge.deal for edge in org_seed.EDGE_CASES)
# The six handoff notes as a portal admin would name the custom deal properties.
HANDOFF_PROPERTIES: tuple[str, ...] = tuple(
    name.removesuffix("__c").lower() for name in HANDOFF_FIELDS
)
_HANDOFF_NAMES = dict(zip(HANDOFF_FIELDS, HANDOFF_PROPERTIES, strict=True))

DEFAULT_PIPELINE_ID = "default"
ENTERPRISE_PIPELINE_ID = "75839201"
ENTERPRISE_WON_STAGE_ID = "160293851"
# The user-defined "Primary" label between deals and contacts (a paired label: one
# type id each way); discover it with GET /crm/v4/associations/deals/contacts/labels.
PRIMARY_CONTACT_LABEL_TYPE_ID = 37
_PRIMARY_CONTACT_LABEL_INVERSE = 38
_DEAL_CONTACT_PRIMARY = [(USER_DEFINED, PRIMARY_CONTACT_LABEL_TYPE_ID)]
_DEAL_COMPANY_PRIMARY = [(HUBSPOT_DEFINED, 5)]
_CONTACT_COMPANY_PRIMARY = [(HUBSPOT_DEFINED, 1)]

# (id, label, probability, closed); HubSpot's default deal pipeline, then a custom one.
_Stage = tuple[str, str, str, bool]
_DEFAULT_STAGES: tuple[_Stage, ...] = (
    ("appointmentscheduled", "Appointment Scheduled", "0.2", False),
    ("qualifiedtobuy", "Qualified To Buy", "0.4", False),
    ("presentationscheduled", "Presentation Scheduled", "0.6", False),
    ("decisionmakerboughtin", "Decision Maker Bought-In", "0.8", False),
    ("contractsent", "Contract Sent", "0.9", False),
    ("closedwon", "Closed Won", "1.0", True),
    ("closedlost", "Closed Lost", "0.0", True),
)
_ENTERPRISE_STAGES: tuple[_Stage, ...] = (
    ("160293847", "Discovery", "0.1", False),
    ("160293848", "Solution Design", "0.3", False),
    ("160293849", "Security Review", "0.5", False),
    ("160293850", "Legal & Procurement", "0.8", False),
    (ENTERPRISE_WON_STAGE_ID, "Closed Won", "1.0", True),
    ("160293852", "Closed Lost", "0.0", True),
)
_PIPELINES = (
    (DEFAULT_PIPELINE_ID, "Sales Pipeline", _DEFAULT_STAGES, 900),
    (ENTERPRISE_PIPELINE_ID, "Enterprise", _ENTERPRISE_STAGES, 400),
)
_ENTERPRISE_SHARE = 0.25
# Salesforce's opportunity types in HubSpot's two deal types.
_DEAL_TYPES = {"New Business": "newbusiness"}
# A won deal this recent has a client history (its 90 days, and a margin).
HISTORY_DAYS = 95
# The deal checkbox a CSM ticks when the client asks for more than was sold.
SCOPE_CHANGE_PROPERTY = "scope_change_requested"

_CUSTOM_PROPERTIES: tuple[tuple[str, PropertyDef], ...] = (
    ("deals", PropertyDef(
        "customer_success_manager", "enumeration", "select", "Customer Success Manager",
        references="owners", custom=True, group="handoff_autopilot",
        description="The CSM who takes the client over after the deal is won.",
    )),
    *(
        ("deals", PropertyDef(
            name, "string", "textarea", "Handoff: " + name.removeprefix("handoff_").title(),
            custom=True, group="handoff_autopilot",
        ))
        for name in HANDOFF_PROPERTIES
    ),
    ("contacts", PropertyDef(
        "greeting_name", "string", "text", "Greeting name", custom=True,
        description="How the client asked to be addressed, e.g. Frau Dr. Weber.",
    )),
    ("companies", PropertyDef(
        "time_zone", "string", "text", "Time zone", custom=True,
        description="The company's main IANA time zone, e.g. Europe/Berlin.",
    )),
    ("tasks", PropertyDef(
        "handoff_key", "string", "text", "Handoff key", custom=True, group="handoff_autopilot",
        description="Dedupe key Handoff Autopilot writes on its tasks; search it with EQ or IN.",
    )),
    ("deals", PropertyDef(
        SCOPE_CHANGE_PROPERTY, "bool", "booleancheckbox", "Scope change requested",
        options=(("true", "Yes"), ("false", "No")), custom=True, group="handoff_autopilot",
        description="Ticked when the client asks for more than was sold.",
    )),
)  # fmt: skip

_COUNTRY_NAMES = tuple(country for country, _, _ in org_seed._CLIENT_COUNTRIES)
_COUNTRY_CUM_WEIGHTS = tuple(accumulate(weight for _, weight, _ in org_seed._CLIENT_COUNTRIES))
_COUNTRY_ZONES = {country: zones for country, _, zones in org_seed._CLIENT_COUNTRIES}


def hubspot_language(locale: str) -> str:
    """A locale as ``hs_language`` holds it: ``ja_JP`` -> ``ja``, ``zh_CN`` -> ``zh-cn``."""
    language, _, region = locale.replace("-", "_").lower().partition("_")
    return f"{language}-{region}" if language in ("zh", "pt") and region else language


def _pipeline_body(
    pipeline_id: str, label: str, stages: tuple[_Stage, ...], order: int, created: str
) -> dict[str, Any]:
    return {
        "id": pipeline_id,
        "label": label,
        "displayOrder": order,
        "stages": [
            {
                "id": stage_id,
                "label": stage_label,
                "displayOrder": index,
                "metadata": {"isClosed": "true" if closed else "false", "probability": chance},
                "createdAt": created,
                "updatedAt": created,
                "archived": False,
                "writePermissions": "CRM_PERMISSIONS_ENFORCEMENT",
            }
            for index, (stage_id, stage_label, chance, closed) in enumerate(stages)
        ],
        "createdAt": created,
        "updatedAt": created,
        "archived": False,
    }


@dataclass(frozen=True)
class _Client:
    """A won deal that gets a client history, and who is on it."""

    deal_id: int
    name: str
    won_at: datetime
    csm: int | None
    contact: int | None  # the primary contact, when the deal has one


@dataclass
class _Company:
    id: int
    name: str
    industry: str
    owner: int | None
    seller: int | None
    created: datetime
    country: str
    contacts: list[tuple[int, str, str, bool]] = field(default_factory=list)


class _PortalSeeder:
    def __init__(
        self, writer: BulkWriter, rng: random.Random, place_rng: random.Random, today: date
    ) -> None:
        self.writer = writer
        self.rng = rng
        self.place_rng = place_rng
        self.today = today
        self.midnight = datetime.combine(today, time(0), tzinfo=UTC)
        self.counts: dict[str, int] = {}
        self.people: set[str] = set()
        self.companies: set[str] = set()
        self.company_round = 0
        self.qualified: list[tuple[str, str]] = []

    def insert(
        self, object_type: str, props: dict[str, Any], created: datetime, updated: datetime
    ) -> int:
        self.counts[object_type] = self.counts.get(object_type, 0) + 1
        return self.writer.insert(object_type, props, created=created, updated=updated).id

    def associate(
        self,
        kind: str,
        from_type: str,
        from_id: int,
        to_type: str,
        to_id: int,
        types: list[tuple[str, int]] | None = None,
    ) -> None:
        self.counts[kind] = self.counts.get(kind, 0) + 1
        self.writer.associate(from_type, from_id, to_type, to_id, types or [])

    def days_ago(self, days: int, *, hour_from: int = 8, hour_to: int = 18) -> datetime:
        """A working-hours moment ``days`` days before today, to the millisecond."""
        return (
            self.midnight
            - timedelta(days=days)
            + timedelta(
                hours=self.rng.randint(hour_from, hour_to - 1),
                minutes=self.rng.randint(0, 59),
                seconds=self.rng.randint(0, 59),
                milliseconds=self.rng.randint(0, 999),
            )
        )

    def person_name(self) -> tuple[str, str]:
        """A fresh name while the combinations last, then repeats, as large portals have."""
        first_names, last_names = org_seed._FIRST_NAMES, org_seed._LAST_NAMES
        if len(self.people) >= len(first_names) * len(last_names):
            return self.rng.choice(first_names), self.rng.choice(last_names)
        for _ in range(50):
            first, last = self.rng.choice(first_names), self.rng.choice(last_names)
            if f"{first} {last}" not in self.people:
                break
        self.people.add(f"{first} {last}")
        return first, last

    def company_name(self) -> tuple[str, str]:
        """A company name not used before and its industry, however many are asked for."""
        if len(self.companies) < org_seed._COMPANY_COMBINATIONS:
            while True:
                kind, industry = self.rng.choice(org_seed._COMPANY_KINDS)
                suffix = self.rng.choice(org_seed._LEGAL_SUFFIXES)
                name = f"{self.rng.choice(org_seed._COMPANY_STEMS)} {kind} {suffix}".strip()
                if name not in self.companies:
                    self.companies.add(name)
                    return name, industry
        if not self.qualified:
            self.company_round += 1
            qualifier = org_seed._company_qualifier(self.company_round)
            self.qualified = [
                (f"{stem} {kind} {qualifier} {suffix}".strip(), industry)
                for stem in org_seed._COMPANY_STEMS
                for kind, industry in org_seed._COMPANY_KINDS
                for suffix in dict.fromkeys(org_seed._LEGAL_SUFFIXES)
            ]
            self.rng.shuffle(self.qualified)
        return self.qualified.pop()

    def client_place(self, country: str) -> dict[str, str]:
        """A contact's country; about half have a time zone, and a language where it isn't
        English (real portals leave both empty as often as not)."""
        rng = self.place_rng
        place = {"country": country}
        if rng.random() < 0.5:
            place["hs_timezone"] = to_hubspot_timezone(rng.choice(_COUNTRY_ZONES[country]))
        if rng.random() < 0.5 and country in org_seed._COUNTRY_LANGUAGES:
            place["hs_language"] = hubspot_language(org_seed._COUNTRY_LANGUAGES[country])
        return place

    def amount(self) -> str:
        value = self.rng.lognormvariate(10.4, 0.7)
        return str(int(min(400000, max(3000, round(value / 500) * 500))))

    def handoff_doc(
        self, account: str, industry: str, contact: str, title: str, completeness: str
    ) -> dict[str, str]:
        n = self.rng.randint(3, 40)
        rng = self.rng
        texts = {
            "handoff_situation": rng.choice(org_seed._SITUATIONS).format(account=account, n=n),
            "handoff_goals": rng.choice(org_seed._GOALS),
            "handoff_promises": rng.choice(org_seed._PROMISES).format(n=n),
            "handoff_objections": rng.choice(org_seed._OBJECTIONS).format(industry=industry),
            "handoff_stakeholders": rng.choice(org_seed._STAKEHOLDERS).format(
                contact=contact, title=title
            ),
            "handoff_risks": rng.choice(org_seed._RISKS),
        }
        if completeness == "full":
            return texts
        if completeness == "partial":
            kept = rng.sample(list(HANDOFF_PROPERTIES), rng.randint(2, 4))
            return {name: texts[name] for name in HANDOFF_PROPERTIES if name in kept}
        return {}

    # -- owners and companies ------------------------------------------------------------------

    def owners(self) -> tuple[list[int], list[int], int, int]:
        """(account executives, active CSMs, the archived CSM, the executive)."""
        created = self.midnight - timedelta(days=900)
        titles = ["Account Executive"] * 4 + ["Customer Success Manager"] * 3
        titles.append("Chief Customer Officer")
        aes: list[int] = []
        csms: list[int] = []
        archived_csm = executive = 0
        store = self.writer._store
        for index, title in enumerate(titles):
            first, last = self.person_name()
            email = f"{org_seed._ascii_slug(first, '.')}.{org_seed._ascii_slug(last, '.')}"
            email += "@example.com"
            if title == "Chief Customer Officer":
                first, last, email = org_seed._CUSTOMER_EXECUTIVE
            is_archived = title == "Customer Success Manager" and index == 6
            owner_id = store.insert_owner(
                email=email,
                first_name=first,
                last_name=last,
                created=created + timedelta(days=index),
                archived=is_archived,
                updated=self.days_ago(20) if is_archived else None,
            )
            self.counts["owners"] = self.counts.get("owners", 0) + 1
            if title == "Account Executive":
                aes.append(owner_id)
            elif is_archived:
                archived_csm = owner_id
            elif title == "Customer Success Manager":
                csms.append(owner_id)
            else:
                executive = owner_id
        return aes, csms, archived_csm, executive

    def company(self, name: str, industry: str, country: str, owner: int | None) -> _Company:
        created = self.days_ago(self.rng.randint(200, 800))
        props: dict[str, Any] = {
            "name": name,
            "domain": self.domain(name),
            "country": country,
            "industry": industry,
            "hubspot_owner_id": str(owner) if owner else None,
        }
        if self.place_rng.random() < 0.3:
            props["time_zone"] = self.place_rng.choice(_COUNTRY_ZONES.get(country, ("UTC",)))
        company_id = self.insert("companies", props, created, created + timedelta(days=3))
        return _Company(company_id, name, industry, owner, owner, created, country)

    @staticmethod
    def domain(name: str) -> str:
        return org_seed._ascii_slug(name.removesuffix(" Inc.").removesuffix(" GmbH")) + ".example"

    def contact(
        self,
        company: _Company,
        *,
        first: str | None,
        last: str,
        email: str | None,
        title: str,
        opted_out: bool,
        place: dict[str, str | None],
    ) -> int:
        created = company.created + timedelta(hours=self.rng.randint(1, 72))
        props: dict[str, Any] = {
            "firstname": first,
            "lastname": last,
            "email": email,
            "jobtitle": title,
            "company": company.name,
            "hs_email_optout": "true" if opted_out else None,
            "hubspot_owner_id": str(company.owner) if company.owner else None,
            "associatedcompanyid": str(company.id),
            **place,
        }
        contact_id = self.insert("contacts", props, created, created + timedelta(days=2))
        self.associate(
            "contact_company_associations",
            "contacts",
            contact_id,
            "companies",
            company.id,
            _CONTACT_COMPANY_PRIMARY,
        )
        return contact_id

    # -- deals --------------------------------------------------------------------------------

    def deal_contacts(
        self, deal_id: int, contacts: list[int], primary: int | None, *, extra: bool = True
    ) -> None:
        """Associate a deal's contacts: the main one labelled Primary, others at random."""
        if primary is not None:
            self.associate(
                "deal_contact_associations",
                "deals",
                deal_id,
                "contacts",
                primary,
                _DEAL_CONTACT_PRIMARY,
            )
        if not extra:
            return
        for contact_id in contacts:
            if contact_id != primary and self.rng.random() < 0.6:
                self.associate(
                    "deal_contact_associations", "deals", deal_id, "contacts", contact_id
                )

    # -- client histories (no draw from ``rng``: every record above stays as it was) ----------

    def history_case(
        self, index: int, case: HistoryCase, aes: list[int], csms: list[int]
    ) -> _Client:
        """A named client of ``HISTORY_CASES``: company, primary contact and won deal."""
        won_at = case.won_at(self.today)
        seller, csm = aes[index % len(aes)], csms[index % len(csms)]
        created = won_at - timedelta(days=400)
        company_props = {
            "name": case.account,
            "domain": self.domain(case.account),
            "country": case.country,
            "industry": "Professional Services",
            "hubspot_owner_id": str(seller),
        }
        company_id = self.insert("companies", company_props, created, created + timedelta(days=3))
        contact_props = {
            "firstname": case.first,
            "lastname": case.last,
            "email": case.email,
            "jobtitle": "Head of Operations",
            "company": case.account,
            "country": case.country,
            "hs_timezone": to_hubspot_timezone(case.time_zone),
            "hubspot_owner_id": str(seller),
            "associatedcompanyid": str(company_id),
        }
        met = created + timedelta(days=1)
        contact_id = self.insert("contacts", contact_props, met, met + timedelta(days=2))
        self.associate(
            "contact_company_associations", "contacts", contact_id, "companies", company_id,
            _CONTACT_COMPANY_PRIMARY,
        )  # fmt: skip
        # The same document as in the Salesforce org, empty where the case says.
        doc = {
            f"handoff_{key}": text
            for key, text in org_seed.history_case_doc(case).items()
            if text is not None
        }
        opened = won_at - timedelta(days=45)
        props: dict[str, Any] = {
            "dealname": case.deal,
            "hubspot_owner_id": str(seller),
            "dealtype": "newbusiness",
            "amount": str(int(case.amount)),
            "closedate": format_ms(to_ms(won_at)),
            "customer_success_manager": str(csm),
            SCOPE_CHANGE_PROPERTY: "true" if case.scope_change else "false",
            **_stage_props(DEFAULT_PIPELINE_ID, "closedwon", opened, won_at),
            **doc,
        }
        modified = won_at + timedelta(minutes=5 + zlib.crc32(case.deal.encode()) % 40)
        deal_id = self.insert("deals", props, opened, modified)
        self.associate(
            "deal_company_associations", "deals", deal_id, "companies", company_id,
            _DEAL_COMPANY_PRIMARY,
        )  # fmt: skip
        self.deal_contacts(deal_id, [contact_id], contact_id, extra=False)
        return _Client(deal_id, case.deal, won_at, csm, contact_id)

    def activities(self, client: _Client, items: Sequence[SeedActivity]) -> None:
        """Log a deal's history: one engagement an activity, on the deal and its contact."""
        for item in items:
            object_type, props = _engagement(item, client)
            record_id = self.insert(object_type, props, item.modstamp, item.modstamp)
            self.associate("activity_associations", object_type, record_id, "deals", client.deal_id)
            if client.contact is not None:
                self.associate(
                    "activity_associations", object_type, record_id, "contacts", client.contact
                )


_EMAIL_DIRECTIONS = {
    "outbound": "EMAIL",
    "inbound": "INCOMING_EMAIL",
    "internal": "FORWARDED_EMAIL",
}
_MEETING_OUTCOMES = {
    "completed": "COMPLETED",
    "no_show": "NO_SHOW",
    "cancelled": "CANCELED",
    "scheduled": "SCHEDULED",
}
_CALL_STATUSES = {"completed": "COMPLETED", "no_show": "NO_ANSWER", "cancelled": "CANCELED"}


def _html(text: str) -> str | None:
    """Plain text as the HTML HubSpot keeps in engagement bodies."""
    if not text:
        return None
    return "<p>" + "<br>".join(html.escape(line) for line in text.splitlines()) + "</p>"


def _engagement(item: SeedActivity, client: _Client) -> tuple[str, dict[str, Any]]:
    """A history's activity as the HubSpot engagement that logs it: (object type, properties)."""
    at = format_ms(to_ms(item.at))
    owner = str(client.csm) if client.csm and item.direction != "inbound" else None
    common = {"hs_timestamp": at, "hubspot_owner_id": owner}
    if item.kind == "email":
        return "emails", {
            **common,
            "hs_email_subject": item.subject,
            "hs_email_text": item.body or None,
            "hs_email_direction": _EMAIL_DIRECTIONS[item.direction],
            "hs_email_status": "SENT" if item.direction != "inbound" else None,
        }
    if item.kind == "call":
        return "calls", {
            **common,
            "hs_call_title": item.subject,
            "hs_call_body": _html(item.body),
            "hs_call_direction": "INBOUND" if item.direction == "inbound" else "OUTBOUND",
            "hs_call_status": _CALL_STATUSES.get(item.outcome or ""),
        }
    if item.kind == "meeting":
        return "meetings", {
            **common,
            "hs_meeting_title": item.subject,
            "hs_meeting_body": _html(item.body),
            "hs_meeting_start_time": at,
            "hs_meeting_end_time": format_ms(to_ms(item.at + timedelta(hours=1))),
            "hs_meeting_outcome": _MEETING_OUTCOMES.get(item.outcome or ""),
        }
    if item.kind == "note":
        return "notes", {**common, "hs_note_body": _html(item.body)}
    if item.kind == "task":
        key = dedupe_key("hubspot", str(client.deal_id), item.step) if item.step else None
        return "tasks", {
            **common,
            "hs_task_subject": item.subject,
            "hs_task_body": body_with_key(item.body, key) if key else _html(item.body),
            "hs_task_status": "COMPLETED" if item.outcome == "completed" else "NOT_STARTED",
            "hs_task_priority": "NONE",
            "hs_task_type": "TODO",
            "handoff_key": key,
        }
    raise ValueError(f"unknown activity kind {item.kind!r}")


def _stages(pipeline: str) -> tuple[_Stage, ...]:
    return _ENTERPRISE_STAGES if pipeline == ENTERPRISE_PIPELINE_ID else _DEFAULT_STAGES


def _stage_props(pipeline: str, stage: str, created: datetime, entered: datetime) -> dict[str, str]:
    """Pipeline, stage and what HubSpot derives from them on a deal."""
    stages = _stages(pipeline)
    closed = next(s[3] for s in stages if s[0] == stage)
    won = closed and next(s[2] for s in stages if s[0] == stage) == "1.0"
    props = {
        "pipeline": pipeline,
        "dealstage": stage,
        "hs_is_closed": "true" if closed else "false",
        "hs_is_closed_won": "true" if won else "false",
        f"{DATE_ENTERED_PREFIX}{stages[0][0]}": format_ms(to_ms(created)),
        f"{DATE_ENTERED_PREFIX}{stage}": format_ms(to_ms(entered)),
    }
    return props


def seed_portal(
    store: HubSpotStore,
    *,
    seed: int = 7,
    deals: int = 60,
    today: date,
    onboarding_days: int = 3,
    recent_share: float = 0.2,
    activities_per_deal: int | None = None,
) -> dict[str, Any]:
    """Fill an (empty) store with a realistic portal and return summary counts.

    Deterministic for the same (seed, deals, today) and options. As in the Salesforce
    seed, ``recent_share`` of the deals (at least 4) were won 1 to ``onboarding_days``
    days ago, older wins lie before that window, four recent wins share one
    ``hs_lastmodifieddate`` (a bulk update at 02:00 yesterday), and the named edge
    cases (``EDGE_CASE_DEALS``) were won yesterday.

    Then come the client histories: the named ``HISTORY_CASES`` deals with theirs, and
    every deal won in the last ``HISTORY_DAYS`` days an ordinary client's history up to
    midnight of ``today`` (``healthy_history`` keyed by the deal's name, as in the
    Salesforce org), exactly ``activities_per_deal`` activities each when given (the
    benchmark's fixed load). The summary counts them by object type; ``recent_won`` counts
    the named clients won inside the onboarding window too.
    """
    if deals < 0:
        raise ValueError("deals must not be negative")
    if activities_per_deal is not None and activities_per_deal < 0:
        raise ValueError("activities_per_deal must not be negative")
    if onboarding_days < 1:
        raise ValueError("onboarding_days must be at least 1")
    if not 0 <= recent_share <= 1:
        raise ValueError("recent_share must be between 0 and 1")
    rng = random.Random(f"hubspot-{seed}")
    place_rng = random.Random(f"hubspot-client-place-{seed}")
    midnight = datetime.combine(today, time(0), tzinfo=UTC)
    for order, (pipeline_id, label, stages, days_before) in enumerate(_PIPELINES):
        created = format_ms(to_ms(midnight - timedelta(days=days_before)))
        store.put_pipeline("deals", _pipeline_body(pipeline_id, label, stages, order, created))
    for object_type, pdef in _CUSTOM_PROPERTIES:
        store.define_property(object_type, pdef)
    store.define_association_label(
        "deals",
        "contacts",
        PRIMARY_CONTACT_LABEL_TYPE_ID,
        "Primary",
        _PRIMARY_CONTACT_LABEL_INVERSE,
    )
    with store.bulk() as writer:
        seeder = _PortalSeeder(writer, rng, place_rng, today)
        summary = _seed(seeder, deals, onboarding_days, recent_share, activities_per_deal)
    log.info("Seeded sandbox portal: %s", summary)
    return summary


def _seed(
    s: _PortalSeeder,
    deals: int,
    onboarding_days: int,
    recent_share: float,
    activities_per_deal: int | None,
) -> dict[str, Any]:
    rng = s.rng
    history_from = s.midnight - timedelta(days=HISTORY_DAYS)
    clients: list[_Client] = []
    aes, csms, archived_csm, _ = s.owners()

    companies: list[_Company] = []
    for index in range(max(8, round(deals * 0.6))):
        name, industry = s.company_name()
        owner = rng.choice(aes)
        country = s.place_rng.choices(_COUNTRY_NAMES, cum_weights=_COUNTRY_CUM_WEIGHTS)[0]
        company = s.company(name, industry, country, owner)
        # Every fourth company is owned by another AE than the one who sells to it.
        if index % 4 == 3:
            company.seller = aes[(aes.index(owner) + 1) % len(aes)]
        for _ in range(rng.randint(1, 3)):
            first, last = s.person_name()
            title = rng.choice(org_seed._CONTACT_TITLES)
            opted_out = rng.random() < 0.05
            email = (
                f"{org_seed._ascii_slug(first, '.')}.{org_seed._ascii_slug(last, '.')}"
                f"@{s.domain(name)}"
            )
            contact_id = s.contact(
                company,
                first=first,
                last=last,
                email=email,
                title=title,
                opted_out=opted_out,
                place=s.client_place(country),
            )
            company.contacts.append((contact_id, f"{first} {last}", title, not opted_out))
        companies.append(company)

    plan = org_seed.deal_plan(rng, deals, s.midnight, onboarding_days, recent_share)
    kinds, shared_group, shared_stamp = plan.kinds, plan.shared_group, plan.shared_stamp
    shared_day, shared_from, shared_to = plan.shared_day, plan.shared_from, plan.shared_to
    oldest_win = plan.oldest_win

    for position, kind in enumerate(kinds):
        company = rng.choice(companies)
        product = rng.choice(org_seed._PRODUCTS)
        pipeline = ENTERPRISE_PIPELINE_ID if rng.random() < _ENTERPRISE_SHARE else "default"
        stages = _stages(pipeline)
        won_stage, lost_stage = stages[-2][0], stages[-1][0]
        props: dict[str, Any] = {
            "dealname": f"{company.name} — {product}",
            "hubspot_owner_id": str(company.seller),
            "dealtype": _DEAL_TYPES.get(rng.choice(org_seed._TYPES), "existingbusiness"),
            "amount": s.amount(),
        }
        if kind == "recent":
            if position in shared_group:
                changed = s.days_ago(shared_day, hour_from=shared_from, hour_to=shared_to)
                modified = shared_stamp
            else:
                changed = s.days_ago(rng.randint(1, onboarding_days))
                modified = changed + timedelta(
                    minutes=rng.randint(0, 90), seconds=rng.randint(0, 59)
                )
            stage, closed = won_stage, changed
            props["customer_success_manager"] = str(rng.choice(csms))
        elif kind == "old":
            changed = s.days_ago(rng.randint(oldest_win, oldest_win + 370))
            modified = changed + timedelta(days=rng.randint(0, 10), minutes=rng.randint(1, 600))
            stage, closed = won_stage, changed
            props["customer_success_manager"] = str(rng.choice([*csms, archived_csm]))
        elif kind == "lost":
            changed = s.days_ago(rng.randint(10, 300))
            modified = changed + timedelta(days=rng.randint(0, 5), minutes=rng.randint(1, 600))
            stage, closed = lost_stage, changed
        else:
            changed = s.days_ago(rng.randint(2, 90))
            latest = s.midnight - timedelta(minutes=rng.randint(5, 600))
            modified = max(changed, min(changed + timedelta(hours=rng.randint(0, 40)), latest))
            stage = rng.choice([st[0] for st in stages if not st[3]])
            closed = s.midnight + timedelta(days=rng.randint(7, 150))
            if rng.random() < 0.05:
                props["amount"] = None
        created = changed - timedelta(days=rng.randint(14, 150), hours=rng.randint(0, 12))
        props["closedate"] = format_ms(to_ms(closed))
        props.update(_stage_props(pipeline, stage, created, changed))

        usable = [c for c in company.contacts if c[3]]
        if kind == "recent" and not usable:
            first, last = s.person_name()
            contact_id = s.contact(
                company,
                first=first,
                last=last,
                title="Operations Manager",
                opted_out=False,
                email=f"{org_seed._ascii_slug(first, '.')}.{org_seed._ascii_slug(last, '.')}"
                "@example.org",
                place=s.client_place(company.country),
            )
            company.contacts.append((contact_id, f"{first} {last}", "Operations Manager", True))
            usable = [company.contacts[-1]]
        champion = rng.choice(usable or company.contacts)
        if stage == won_stage:
            roll = rng.random()
            completeness = "full" if roll < 0.55 else "partial" if roll < 0.85 else "empty"
            props.update(
                s.handoff_doc(
                    company.name, company.industry, champion[1], champion[2], completeness
                )
            )
        deal_id = s.insert("deals", props, created, modified)
        s.associate(
            "deal_company_associations",
            "deals",
            deal_id,
            "companies",
            company.id,
            _DEAL_COMPANY_PRIMARY,
        )
        contact_ids = [c[0] for c in company.contacts]
        roll = rng.random()
        has_primary = kind == "recent" or roll >= 0.10
        if has_primary:
            s.deal_contacts(deal_id, contact_ids, champion[0])
        elif roll >= 0.05:
            s.deal_contacts(deal_id, contact_ids, None)
        if stage == won_stage and changed >= history_from:
            csm = int(props["customer_success_manager"])
            primary = champion[0] if has_primary else None
            clients.append(_Client(deal_id, props["dealname"], changed, csm, primary))

    for edge in org_seed.EDGE_CASES:
        clients.append(_seed_edge_case(s, edge, aes, csms, archived_csm))

    # Client histories, after every other record and without a draw from ``rng``.
    cases = [s.history_case(n, case, aes, csms) for n, case in enumerate(HISTORY_CASES)]
    for client in clients:
        s.activities(
            client, healthy_history(client.name, client.won_at, s.midnight, activities_per_deal)
        )
    for client, case in zip(cases, HISTORY_CASES, strict=True):
        s.activities(client, case.history(client.won_at))
    onboarding_start = s.midnight - timedelta(days=onboarding_days)
    recent_cases = sum(1 for client in cases if onboarding_start <= client.won_at < s.midnight)

    counts = s.counts
    return {
        "owners": counts.get("owners", 0),
        "companies": counts.get("companies", 0),
        "contacts": counts.get("contacts", 0),
        "deals": counts.get("deals", 0),
        "deal_contact_associations": counts.get("deal_contact_associations", 0),
        "pipelines": len(_PIPELINES),
        "recent_won": kinds.count("recent") + len(org_seed.EDGE_CASES) + recent_cases,
        "edge_cases": len(org_seed.EDGE_CASES),
        "shared_lastmodifieddate": format_ms(to_ms(shared_stamp)),
        "shared_lastmodifieddate_deals": len(shared_group),
        "history_cases": len(HISTORY_CASES),
        "deals_with_history": len(clients) + len(cases),
        **{name: counts.get(name, 0) for name in ("meetings", "emails", "calls", "notes", "tasks")},
        "activity_associations": counts.get("activity_associations", 0),
    }


def _seed_edge_case(
    s: _PortalSeeder, edge: org_seed._EdgeDeal, aes: list[int], csms: list[int], archived_csm: int
) -> _Client:
    rng = s.rng
    owner = rng.choice(aes)
    company = s.company(edge.account, edge.industry, edge.country, owner)
    contact_ids = []
    for person in edge.people:
        place: dict[str, str | None] = {
            "country": edge.country,
            "hs_timezone": to_hubspot_timezone(person.time_zone) if person.time_zone else None,
            "hs_language": hubspot_language(person.language) if person.language else None,
            "greeting_name": person.greeting,
        }
        contact_ids.append(
            s.contact(
                company,
                first=person.first,
                last=person.last,
                email=person.email,
                title=person.title,
                opted_out=person.opted_out,
                place=place,
            )
        )
    s.days_ago(1, hour_from=9, hour_to=17)  # drawn as before, so later records stay the same
    changed = org_seed.edge_won_at(edge, s.today)
    created = changed - timedelta(days=rng.randint(20, 120))
    champion = edge.people[0]
    champion_name = f"{champion.first or ''} {champion.last}".strip()
    if edge.random_amount:
        s.amount()
    amount = org_seed.edge_amount(edge)
    enterprise = edge.amount is not None and edge.amount >= 100_000
    pipeline = ENTERPRISE_PIPELINE_ID if enterprise else DEFAULT_PIPELINE_ID
    props: dict[str, Any] = {
        "dealname": edge.deal,
        "hubspot_owner_id": str(owner) if edge.has_owner else None,
        "dealtype": _DEAL_TYPES.get(edge.deal_type, "existingbusiness"),
        "amount": None if amount is None else str(int(float(amount))),
        "closedate": format_ms(to_ms(changed)),
        "customer_success_manager": str(archived_csm if edge.inactive_csm else rng.choice(csms)),
        **_stage_props(pipeline, _stages(pipeline)[-2][0], created, changed),
        **s.handoff_doc(edge.account, edge.industry, champion_name, champion.title, "full"),
    }
    modified = changed + timedelta(minutes=rng.randint(1, 45), milliseconds=rng.randint(0, 999))
    deal_id = s.insert("deals", props, created, modified)
    s.associate(
        "deal_company_associations",
        "deals",
        deal_id,
        "companies",
        company.id,
        _DEAL_COMPANY_PRIMARY,
    )
    if edge.primary:
        s.deal_contacts(deal_id, contact_ids, contact_ids[0])
    csm = int(props["customer_success_manager"])
    return _Client(deal_id, edge.deal, changed, csm, contact_ids[0] if edge.primary else None)
