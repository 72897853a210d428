"""A deterministic, realistic demo org for the sandbox CRM.

Same (seed, deals, today) and options give the same rows, Ids included, so demos
and tests are reproducible; nothing reads the wall clock. Contacts live where clients
do (mostly the United States, then Europe, Canada, Australia, Japan), about half with
a time zone and, outside English-speaking countries, about half with a language.
Besides ordinary pipeline the org always holds named edge-case deals (missing contact,
bad email, opted out, HTML, a Chinese name in Salesforce's field order, header
injection, no owner, no amount, inactive CSM, an existing-customer upgrade, a renewal,
clients in Tokyo and Los Angeles, a German client known only by country with a formal
greeting) and a group of recent wins sharing one SystemModstamp, so every branch of the
handoff flow and the connector's tie handling show up in a demo.

Clients have histories too (histories.py, the scenario every sandbox CRM shares): the named
clients of ``HISTORY_CASES``, each built to trip one red-flag rule or to look like trouble and
not be, and an ordinary rhythm of emails, calls, meetings, notes and tasks for every other
deal won in the last 95 days, as EmailMessage, Task and Event records. They come after every
other record, from random streams of their own, so each record a seed made before histories
existed is still the same, Id for Id.
"""

from __future__ import annotations

import logging
import random
import re
import unicodedata
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from itertools import accumulate
from typing import Any

from handoff.crm.salesforce import description_with_key
from handoff.models import dedupe_key
from handoff.sandbox.histories import HISTORY_CASES, HistoryCase, SeedActivity, healthy_history
from handoff.sandbox.store import (
    EVENT_OUTCOME_FIELD,
    HANDOFF_FIELDS,
    HANDOFF_KEY_FIELD,
    SCOPE_CHANGE_FIELD,
    BulkInserter,
    SandboxStore,
)

__all__ = ["EDGE_CASE_DEALS", "HISTORY_DAYS", "history_case_doc", "seed_org"]

log = logging.getLogger(__name__)

_FIRST_NAMES = (
    "Maya", "Jonas", "Lucia", "Tomas", "Aisha", "Kenji", "Sofia", "Liam", "Amara", "Mateo",
    "Ingrid", "Ravi", "Chloe", "Noah", "Fatima", "Elena", "Marcus", "Yuki", "Olivia", "Kwame",
    "Hannah", "Diego", "Leila", "Samuel", "Anika", "Pierre", "Grace", "Omar", "Freya", "Victor",
)  # fmt: skip
_LAST_NAMES = (
    "Patel", "Becker", "Fernandez", "Novak", "Okafor", "Tanaka", "Rossi", "Murphy", "Mensah",
    "Garcia", "Lindqvist", "Sharma", "Dubois", "Schmidt", "Haddad", "Petrova", "Johnson", "Sato",
    "Bennett", "Asante", "Keller", "Morales", "Nasser", "Clarke", "Jansen", "Moreau", "Walsh",
    "Farouk", "Nilsen", "Costa",
)  # fmt: skip
_COMPANY_STEMS = (
    "Blue Harbor", "Northstar", "Crescent", "Ironwood", "Summit", "Evergreen", "Silverline",
    "Brightwater", "Redwood", "Granite", "Harborview", "Lakeside", "Meridian", "Oakridge",
    "Pinecrest", "Riverbend", "Stonebridge", "Westfield", "Clearpath", "Bluefin", "Copperleaf",
    "Keystone", "Lighthouse", "Orion", "Sterling", "Trident", "Vertex", "Willow", "Beacon",
    "Halcyon",
)  # fmt: skip
_COMPANY_KINDS = (
    ("Logistics", "Transportation"), ("Analytics", "Technology"), ("Health", "Healthcare"),
    ("Manufacturing", "Manufacturing"), ("Foods", "Food & Beverage"), ("Energy", "Energy"),
    ("Software", "Technology"), ("Capital", "Finance"), ("Robotics", "Electronics"),
    ("Retail Group", "Retail"), ("Telecom", "Telecommunications"), ("Biotech", "Biotechnology"),
    ("Insurance", "Insurance"), ("Consulting", "Consulting"), ("Media", "Media"),
    ("Hotels", "Hospitality"), ("Freight", "Shipping"), ("Utilities", "Utilities"),
)  # fmt: skip
_LEGAL_SUFFIXES = ("Inc.", "GmbH", "Ltd", "LLC", "AG", "B.V.", "", "", "")
# Once every stem/kind/suffix combination is taken (about 3,800 accounts), further
# companies carry one of these words, then the words again with a number.
_COMPANY_QUALIFIERS = (
    "Nordic", "Pacific", "Atlantic", "Alpine", "Baltic", "Iberia", "Midwest", "Coastal",
    "Central", "Highland", "Continental", "Metro", "Southern", "Northern", "Eastern",
    "Western", "Digital", "International", "Partners", "Holdings",
)  # fmt: skip
_COMPANY_COMBINATIONS = (
    len(_COMPANY_STEMS) * len(_COMPANY_KINDS) * len(dict.fromkeys(_LEGAL_SUFFIXES))
)
# Drawn but no longer used: the draw keeps the random stream as it was (see _seed).
_COUNTRIES = (
    "United States", "Germany", "United Kingdom", "France", "Netherlands", "Canada",
    "Australia", "Sweden", "Spain", "Japan",
)  # fmt: skip
# Where clients are, by weight: (country, weight, the zones its clients live in).
_CLIENT_COUNTRIES = (
    ("United States", 52, ("America/New_York",) * 4 + ("America/Chicago",) * 3
     + ("America/Denver",) + ("America/Los_Angeles",) * 2),
    ("United Kingdom", 12, ("Europe/London",)),
    ("Germany", 9, ("Europe/Berlin",)),
    ("France", 7, ("Europe/Paris",)),
    ("Canada", 7, ("America/Toronto",) * 3 + ("America/Vancouver",) + ("America/Edmonton",)),
    ("Australia", 5, ("Australia/Sydney",) * 2 + ("Australia/Melbourne",) * 2
     + ("Australia/Brisbane",) + ("Australia/Perth",)),
    ("Netherlands", 4, ("Europe/Amsterdam",)),
    ("Japan", 4, ("Asia/Tokyo",)),
)  # fmt: skip
_COUNTRY_NAMES = tuple(country for country, _, _ in _CLIENT_COUNTRIES)
_COUNTRY_CUM_WEIGHTS = tuple(accumulate(weight for _, weight, _ in _CLIENT_COUNTRIES))
_COUNTRY_ZONES = {country: zones for country, _, zones in _CLIENT_COUNTRIES}
# The locale a client outside the English-speaking countries may have set.
_COUNTRY_LANGUAGES = {
    "Germany": "de_DE",
    "France": "fr_FR",
    "Netherlands": "nl_NL",
    "Japan": "ja_JP",
}
_CONTACT_TITLES = (
    "VP Operations", "Head of IT", "Chief Financial Officer", "Director of Customer Experience",
    "Procurement Manager", "Chief Technology Officer", "Operations Manager", "Head of Data",
    "IT Director", "COO",
)  # fmt: skip
_PRODUCTS = (
    "Annual subscription", "Platform expansion", "Analytics add-on", "Enterprise rollout",
    "Pilot to production", "Multi-year renewal", "Support upgrade", "New business unit",
)  # fmt: skip
# The executive the welcome email comes from: the project config names her as [sender].
_CUSTOMER_EXECUTIVE = ("Dana", "Whitfield", "dana.whitfield@handoff-demo.example")
_OPEN_STAGES = ("Prospecting", "Qualification", "Proposal/Price Quote", "Negotiation/Review")
_TYPES = (
    ("New Business",) * 5
    + ("Existing Customer - Upgrade",) * 2
    + ("Existing Customer - Replacement",)
)
_SITUATIONS = (
    "{account} runs {n} regional teams on spreadsheets and a legacy ticketing tool; their "
    "current vendor contract lapses at the end of the quarter.",
    "{account} grew by acquisition and now has {n} disconnected systems for the same process. "
    "Leadership wants one source of truth before the next audit.",
    "{account} piloted us with {n} users in one business unit and is rolling out company-wide.",
)
_GOALS = (
    "Cut onboarding time for new sites from six weeks to two.\nOne dashboard for leadership.",
    "Retire the legacy tool by year end.\nReduce manual reporting effort by half.",
    "Self-service for regional managers.\nAuditable approvals for finance.",
)
_PROMISES = (
    "Dedicated onboarding engineer for the first 60 days; SSO configured before go-live.",
    "Price locked for 24 months; quarterly business reviews with our product team.",
    "Data migration of the last three years included; training for {n} super-users.",
)
_OBJECTIONS = (
    "Worried about the data migration effort and downtime.",
    "Asked for two references in {industry} before signing.",
    "Security review took four weeks; they want the SOC 2 report every year.",
)
_STAKEHOLDERS = (
    "{contact} ({title}) is the champion; the CFO signs off on any expansion.",
    "{contact} ({title}) owns the rollout; IT security must approve integrations.",
)
_RISKS = (
    "Go-live overlaps their peak season.",
    "Their IT team is two people; integration work may slip.",
    "Champion mentioned a possible re-organisation next quarter.",
)


@dataclass(frozen=True)
class _EdgePerson:
    first: str | None
    last: str
    email: str | None
    opted_out: bool = False
    title: str = "Head of Operations"
    time_zone: str | None = None
    language: str | None = None
    greeting: str | None = None


@dataclass(frozen=True)
class _EdgeDeal:
    deal: str
    account: str
    people: tuple[_EdgePerson, ...]
    country: str = "United States"
    industry: str = "Technology"
    primary: bool = True
    has_owner: bool = True
    amount: float | None = None
    random_amount: bool = True
    inactive_csm: bool = False
    deal_type: str = "New Business"


EDGE_CASES: tuple[_EdgeDeal, ...] = (
    _EdgeDeal(
        "Northwind Traders — no primary contact",
        "Northwind Traders",
        (_EdgePerson("Nancy", "Davolio", "nancy.davolio@northwind.example", title="Buyer"),),
        industry="Food & Beverage",
        primary=False,
    ),
    _EdgeDeal(
        "Globex — contact without email",
        "Globex Corporation",
        (
            _EdgePerson("Hank", "Scorpio", None, title="CEO"),
            _EdgePerson("Frank", "Grimes", "frank.grimes@globex.example", title="Engineer"),
        ),
        industry="Energy",
    ),
    _EdgeDeal(
        "Initech — invalid email",
        "Initech",
        (_EdgePerson("Bill", "Lumbergh", "bill.lumbergh(at)initech", title="Division VP"),),
    ),
    _EdgeDeal(
        "Umbrella Health — opted out",
        "Umbrella Health",
        (
            _EdgePerson(
                "Alice", "Abernathy", "alice.abernathy@umbrella-health.example", opted_out=True
            ),
        ),
        industry="Healthcare",
    ),
    _EdgeDeal(
        '<b>Stark</b> & "Sons" Ltd — HTML in names',
        '<b>Stark</b> & "Sons" Ltd',
        (_EdgePerson("Zoë <script>alert(1)</script>", "O'Brien", "zoe.obrien@stark-sons.example"),),
        country="United Kingdom",
        industry="Manufacturing",
    ),
    _EdgeDeal(
        "北京数据科技有限公司 — Unicode names",
        "北京数据科技有限公司",
        # Li Wei as Salesforce stores him: the given name in FirstName, the family name in
        # LastName, whatever order his name is written in.
        (
            _EdgePerson(
                "伟", "李", "li.wei@beijing-data.example", title="技术总监", language="zh_CN"
            ),
        ),
        country="China",
    ),
    _EdgeDeal(
        "Hooli — header injection",
        "Hooli",
        (
            _EdgePerson(
                "Gavin\r\nBcc: attacker@evil.example", "Belson", "gavin.belson@hooli.example"
            ),
        ),
    ),
    _EdgeDeal(
        "Pied Piper — no owner",
        "Pied Piper",
        (_EdgePerson("Richard", "Hendricks", "richard.hendricks@piedpiper.example", title="CEO"),),
        has_owner=False,
    ),
    _EdgeDeal(
        "Vandelay Industries — no amount",
        "Vandelay Industries",
        (_EdgePerson("Art", "Vandelay", "art.vandelay@vandelay.example", title="Importer"),),
        industry="Manufacturing",
        random_amount=False,
    ),
    _EdgeDeal(
        "Soylent — inactive CSM",
        "Soylent",
        (_EdgePerson("Sol", "Roth", "sol.roth@soylent.example", title="Head of Research"),),
        industry="Food & Beverage",
        inactive_csm=True,
    ),
    _EdgeDeal(
        "Acme Corp — enterprise",
        "Acme Corp",
        (
            _EdgePerson("Wile E.", "Coyote", "wile.coyote@acme.example", title="VP Engineering"),
            _EdgePerson("Road", "Runner", "road.runner@acme.example", title="CFO"),
            _EdgePerson("Marvin", "Martian", "marvin.martian@acme.example", title="IT Director"),
        ),
        amount=250000.0,
        random_amount=False,
    ),
    _EdgeDeal(
        "Initrode — existing customer upgrade",
        "Initrode",
        (_EdgePerson("Peter", "Gibbons", "peter.gibbons@initrode.example", title="IT Director"),),
        deal_type="Existing Customer - Upgrade",
    ),
    _EdgeDeal(
        "Cyberdyne Systems — renewal",
        "Cyberdyne Systems",
        (_EdgePerson("Miles", "Dyson", "miles.dyson@cyberdyne.example", title="VP Engineering"),),
        deal_type="Renewal",
    ),
    _EdgeDeal(
        "Tanaka Robotics — client in Tokyo",
        "Tanaka Robotics",
        (
            _EdgePerson(
                "陽翔",
                "田中",
                "haruto.tanaka@tanaka-robotics.example",
                title="製造部長",
                time_zone="Asia/Tokyo",
                language="ja_JP",
            ),
        ),
        country="Japan",
        industry="Electronics",
    ),
    _EdgeDeal(
        "Sunset Pictures — client in Los Angeles",
        "Sunset Pictures",
        (
            _EdgePerson(
                "Jessica",
                "Miller",
                "jessica.miller@sunset-pictures.example",
                title="VP Production",
                time_zone="America/Los_Angeles",
            ),
        ),
        industry="Entertainment",
    ),
    _EdgeDeal(
        "Weber Maschinenbau — country only, formal greeting",
        "Weber Maschinenbau GmbH",
        (
            _EdgePerson(
                "Katrin",
                "Weber",
                "katrin.weber@weber-maschinenbau.example",
                title="Geschäftsführerin",
                greeting="Frau Dr. Weber",
            ),
        ),
        country="Germany",
        industry="Manufacturing",
    ),
)
EDGE_CASE_DEALS: tuple[str, ...] = tuple(edge.deal for edge in EDGE_CASES)

# Deals won this many days before the seed day get an ordinary client's history: the 90 days
# of the playbook, and a few more.
HISTORY_DAYS = 95
_HANDOFF_KEYS = ("situation", "goals", "promises", "objections", "stakeholders", "risks")
_MEETING_OUTCOMES = {"completed": "Completed", "no_show": "No Show", "cancelled": "Canceled"}
_CALL_TYPES = {"inbound": "Inbound", "outbound": "Outbound", "internal": "Internal"}
_CASE_TITLE = "Head of Operations"


@dataclass(frozen=True)
class DealPlan:
    """What kind each seeded deal is, and the group that shares one modification stamp; one
    plan for every sandbox CRM, so the same seed gives the same scenario in each."""

    kinds: list[str]
    shared_group: set[int]
    shared_stamp: datetime
    shared_day: int
    shared_from: int
    shared_to: int
    oldest_win: int


def deal_plan(
    rng: random.Random,
    deals: int,
    midnight: datetime,
    onboarding_days: int,
    recent_share: float,
) -> DealPlan:
    n_recent = min(deals, max(4, round(deals * recent_share)))
    n_old = min(deals - n_recent, round(deals * 0.2))
    n_lost = min(deals - n_recent - n_old, round(deals * 0.15))
    kinds = ["recent"] * n_recent + ["old"] * n_old + ["lost"] * n_lost
    kinds += ["open"] * (deals - len(kinds))
    rng.shuffle(kinds)
    recent_positions = [i for i, kind in enumerate(kinds) if kind == "recent"]
    shared_group = set(rng.sample(recent_positions, min(4, len(recent_positions))))
    # Won the day before the bulk update at 02:00 yesterday; or, when the window is
    # one day, yesterday before it.
    shared_day, shared_from, shared_to = (2, 8, 18) if onboarding_days > 1 else (1, 0, 2)
    return DealPlan(
        kinds,
        shared_group,
        midnight - timedelta(days=1) + timedelta(hours=2),
        shared_day,
        shared_from,
        shared_to,
        max(30, onboarding_days + 1),
    )


def edge_amount(edge: _EdgeDeal) -> float | None:
    """The edge deal's amount, the same in every sandbox CRM (so one scenario plays out the
    same through each connector): its own, or one derived from its name."""
    if not edge.random_amount:
        return edge.amount
    return float(5_000 + zlib.crc32(edge.deal.encode()) % 80 * 1_000)


def edge_won_at(edge: _EdgeDeal, today: date) -> datetime:
    """When the edge deal became Closed Won: yesterday in working hours, from its name."""
    minutes = zlib.crc32(edge.deal.encode()[::-1]) % (8 * 60)
    return datetime.combine(today - timedelta(days=1), time(9), tzinfo=UTC) + timedelta(
        minutes=minutes, milliseconds=zlib.crc32(edge.deal.encode()) % 1000
    )


def _ascii_slug(text: str, separator: str = "-") -> str:
    folded = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    return re.sub(r"[^a-z0-9]+", separator, folded.lower()).strip(separator)


def _company_qualifier(round_number: int) -> str:
    """The word that tells round 1, 2, ... of reused company names apart."""
    cycle, position = divmod(round_number - 1, len(_COMPANY_QUALIFIERS))
    word = _COMPANY_QUALIFIERS[position]
    return f"{word} {cycle + 1}" if cycle else word


class _Seeder:
    def __init__(
        self, inserter: BulkInserter, rng: random.Random, place_rng: random.Random, today: date
    ) -> None:
        self.inserter = inserter
        self.rng = rng
        self.place_rng = place_rng
        self.today = today
        self.midnight = datetime.combine(today, time(0), tzinfo=UTC)
        self.counts: dict[str, int] = {}
        self.people: set[str] = set()
        self.companies: set[str] = set()
        self.company_round = 0
        self.qualified_companies: list[tuple[str, str]] = []
        # What client histories need later, noted on the way (no random draw): addresses,
        # and every Closed Won deal.
        self.emails: dict[str, str | None] = {}
        self.won: list[_WonDeal] = []

    def insert(self, sobject: str, fields: dict[str, Any], modstamp: datetime) -> str:
        self.counts[sobject] = self.counts.get(sobject, 0) + 1
        return self.inserter.insert(sobject, fields, modstamp=modstamp)

    def days_ago(self, days: int, *, hour_from: int = 8, hour_to: int = 18) -> datetime:
        """A working-hours moment `days` days before today, to the millisecond."""
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
        """A fresh name while the 900 combinations last; then repeats, as large orgs have.

        Once all are taken one draw is enough: fifty doomed retries per contact made
        seeding a large org slow.
        """
        if len(self.people) >= len(_FIRST_NAMES) * len(_LAST_NAMES):
            return self.rng.choice(_FIRST_NAMES), self.rng.choice(_LAST_NAMES)
        for _ in range(50):
            first, last = self.rng.choice(_FIRST_NAMES), self.rng.choice(_LAST_NAMES)
            if f"{first} {last}" not in self.people:
                break
        self.people.add(f"{first} {last}")
        return first, last

    # -- users --------------------------------------------------------------------------------

    def users(self) -> tuple[list[str], list[str], str]:
        """Return (account executives, active CSMs, inactive CSM)."""
        created = self.midnight - timedelta(days=900)
        titles = ["Account Executive"] * 4 + ["Customer Success Manager"] * 3
        titles.append("Chief Customer Officer")
        aes: list[str] = []
        csms: list[str] = []
        inactive = ""
        for index, title in enumerate(titles):
            first, last = self.person_name()
            email = f"{_ascii_slug(first, '.')}.{_ascii_slug(last, '.')}@example.com"
            if title == "Chief Customer Officer":
                # A fixed person, though a name was drawn above: the draw keeps the random
                # stream, and with it every other record of a seed, as it was.
                first, last, email = _CUSTOMER_EXECUTIVE
            is_inactive = title == "Customer Success Manager" and index == 6
            modstamp = created + timedelta(days=index)
            if is_inactive:
                modstamp = self.days_ago(20)
            user_id = self.insert(
                "User",
                {
                    "FirstName": first,
                    "LastName": last,
                    "Email": email,
                    "Title": title,
                    "IsActive": not is_inactive,
                    "CreatedDate": created + timedelta(days=index),
                },
                modstamp,
            )
            self.emails[user_id] = email
            if title == "Account Executive":
                aes.append(user_id)
            elif is_inactive:
                inactive = user_id
            elif title == "Customer Success Manager":
                csms.append(user_id)
        return aes, csms, inactive

    # -- accounts and contacts ----------------------------------------------------------------

    def company(self) -> tuple[str, str]:
        """A company name not used before, and its industry, for any number of accounts.

        Random combinations while they last; after that, every combination again with
        a qualifier ("Summit Capital Nordic LLC"), round after round, in shuffled order.
        """
        if len(self.companies) < _COMPANY_COMBINATIONS:
            while True:
                kind, industry = self.rng.choice(_COMPANY_KINDS)
                suffix = self.rng.choice(_LEGAL_SUFFIXES)
                name = f"{self.rng.choice(_COMPANY_STEMS)} {kind} {suffix}".strip()
                if name not in self.companies:
                    self.companies.add(name)
                    return name, industry
        if not self.qualified_companies:
            self.company_round += 1
            qualifier = _company_qualifier(self.company_round)
            self.qualified_companies = [
                (f"{stem} {kind} {qualifier} {suffix}".strip(), industry)
                for stem in _COMPANY_STEMS
                for kind, industry in _COMPANY_KINDS
                for suffix in dict.fromkeys(_LEGAL_SUFFIXES)
            ]
            self.rng.shuffle(self.qualified_companies)
        return self.qualified_companies.pop()

    def client_country(self) -> str:
        """A client's country, in the mix a company selling from the US has."""
        return self.place_rng.choices(_COUNTRY_NAMES, cum_weights=_COUNTRY_CUM_WEIGHTS)[0]

    def client_place(self, country: str) -> dict[str, str]:
        """A contact's country; about half have a zone, and a language where it isn't English.

        Half, as in real orgs: a client's zone or language is often never filled in.
        """
        rng = self.place_rng
        place = {"MailingCountry": country}
        if rng.random() < 0.5:
            place["Time_Zone__c"] = rng.choice(_COUNTRY_ZONES[country])
        if rng.random() < 0.5 and country in _COUNTRY_LANGUAGES:
            place["Language__c"] = _COUNTRY_LANGUAGES[country]
        return place

    def account(
        self, name: str, industry: str, country: str, owner: str | None
    ) -> tuple[str, datetime]:
        created = self.days_ago(self.rng.randint(200, 800))
        account_id = self.insert(
            "Account",
            {"Name": name, "Industry": industry, "BillingCountry": country, "OwnerId": owner},
            created,
        )
        return account_id, created

    def contact(
        self,
        account_id: str,
        owner: str | None,
        created: datetime,
        *,
        first: str | None,
        last: str,
        email: str | None,
        title: str,
        opted_out: bool,
        place: Mapping[str, str | None],
    ) -> str:
        contact_id = self.insert(
            "Contact",
            {
                "AccountId": account_id,
                "FirstName": first,
                "LastName": last,
                "Email": email,
                "Title": title,
                "HasOptedOutOfEmail": opted_out,
                "OwnerId": owner,
                **place,
            },
            created + timedelta(hours=self.rng.randint(1, 72)),
        )
        self.emails[contact_id] = email
        return contact_id

    # -- opportunities ------------------------------------------------------------------------

    def handoff_doc(
        self, account: str, industry: str, contact: str, title: str, completeness: str
    ) -> dict[str, str | None]:
        n = self.rng.randint(3, 40)
        texts = {
            "Handoff_Situation__c": self.rng.choice(_SITUATIONS).format(account=account, n=n),
            "Handoff_Goals__c": self.rng.choice(_GOALS),
            "Handoff_Promises__c": self.rng.choice(_PROMISES).format(n=n),
            "Handoff_Objections__c": self.rng.choice(_OBJECTIONS).format(industry=industry),
            "Handoff_Stakeholders__c": self.rng.choice(_STAKEHOLDERS).format(
                contact=contact, title=title
            ),
            "Handoff_Risks__c": self.rng.choice(_RISKS),
        }
        doc: dict[str, str | None] = dict.fromkeys(HANDOFF_FIELDS)
        if completeness == "full":
            doc.update(texts)
        elif completeness == "partial":
            kept = self.rng.sample(list(HANDOFF_FIELDS), self.rng.randint(2, 4))
            doc.update({name: texts[name] for name in HANDOFF_FIELDS if name in kept})
        return doc

    def amount(self) -> float:
        value = self.rng.lognormvariate(10.4, 0.7)
        return float(min(400000, max(3000, round(value / 500) * 500)))

    def contact_roles(
        self,
        deal_id: str,
        contacts: Sequence[str],
        primary: str | None,
        created: datetime,
        *,
        extra_roles: bool = True,
    ) -> None:
        stamp = created + timedelta(hours=self.rng.randint(1, 48))
        if primary is not None:
            self.insert(
                "OpportunityContactRole",
                {
                    "OpportunityId": deal_id,
                    "ContactId": primary,
                    "Role": self.rng.choice(("Decision Maker", "Economic Buyer")),
                    "IsPrimary": True,
                },
                stamp,
            )
        if not extra_roles:
            return
        for contact_id in contacts:
            if contact_id != primary and self.rng.random() < 0.6:
                self.insert(
                    "OpportunityContactRole",
                    {
                        "OpportunityId": deal_id,
                        "ContactId": contact_id,
                        "Role": self.rng.choice(
                            ("Business User", "Decision Maker", "Economic Buyer")
                        ),
                        "IsPrimary": False,
                    },
                    stamp,
                )


@dataclass(frozen=True)
class _WonDeal:
    """A Closed Won deal, as its client history needs it."""

    id: str
    name: str
    won_at: datetime
    csm: str | None
    owner: str | None
    contact: str | None  # the primary contact


@dataclass
class _AccountInfo:
    id: str
    name: str
    industry: str
    owner: str | None
    seller: str | None  # the AE who owns the account's deals
    created: datetime
    country: str
    contacts: list[tuple[str, str, str, bool]]  # (id, full name, title, usable for mail)


def seed_org(
    store: SandboxStore,
    *,
    seed: int = 7,
    deals: int = 60,
    today: date,
    onboarding_days: int = 3,
    recent_share: float = 0.2,
    activities_per_deal: int | None = None,
    _histories: bool = True,
) -> dict[str, Any]:
    """Fill an (empty) store with a realistic org and return summary counts.

    Deterministic for the same (seed, deals, today) and options: ``random.Random(seed)``
    drives every choice and every timestamp is derived from ``today``.

    ``recent_share`` of the deals (at least 4) are recent wins: Closed Won 1 to
    ``onboarding_days`` days ago, spread uniformly, so a long onboarding playbook finds
    clients at every stage of it; older wins lie before that window. The named edge
    cases are always won yesterday.

    Then the client histories: the deals of ``HISTORY_CASES`` with theirs, and every other
    deal won in the last ``HISTORY_DAYS`` days with an ordinary one: with
    ``activities_per_deal`` (the benchmark's fixed load), that many each, fewer only for a
    deal won so lately that some would fall after the seed day.
    ``_histories=False`` leaves them out (the org as it was before histories, for tests).
    """
    if deals < 0:
        raise ValueError("deals must not be negative")
    if onboarding_days < 1:
        raise ValueError("onboarding_days must be at least 1")
    if not 0 <= recent_share <= 1:
        raise ValueError("recent_share must be between 0 and 1")
    if activities_per_deal is not None and activities_per_deal < 0:
        raise ValueError("activities_per_deal must not be negative")
    rng = random.Random(seed)
    # Where clients are comes from a stream of its own, so adding it left every other
    # record of a seed as it was.
    place_rng = random.Random(f"client-place-{seed}")
    with store.bulk_insert() as inserter:
        seeder = _Seeder(inserter, rng, place_rng, today)
        histories = _Histories(activities_per_deal) if _histories else None
        summary = _seed(seeder, deals, onboarding_days, recent_share, histories)
    log.info("Seeded sandbox org: %s", summary)
    return summary


def _seed(
    s: _Seeder,
    deals: int,
    onboarding_days: int,
    recent_share: float,
    histories: _Histories | None,
) -> dict[str, Any]:
    rng = s.rng
    aes, csms, inactive_csm = s.users()

    accounts: list[_AccountInfo] = []
    for index in range(max(8, round(deals * 0.6))):
        name, industry = s.company()
        owner = rng.choice(aes)
        # Every fourth account is owned by another AE than the one who sells to it, so
        # the account owner and the deal owner are not always the same person.
        seller = aes[(aes.index(owner) + 1) % len(aes)] if index % 4 == 3 else owner
        rng.choice(_COUNTRIES)  # the country's former draw, kept so the rest of a seed is as it was
        country = s.client_country()
        account_id, created = s.account(name, industry, country, owner)
        info = _AccountInfo(account_id, name, industry, owner, seller, created, country, [])
        domain = _ascii_slug(name.removesuffix(" Inc.").removesuffix(" GmbH")) + ".example"
        for _ in range(rng.randint(1, 3)):
            first, last = s.person_name()
            title = rng.choice(_CONTACT_TITLES)
            opted_out = rng.random() < 0.05
            email = f"{_ascii_slug(first, '.')}.{_ascii_slug(last, '.')}@{domain}"
            contact_id = s.contact(
                account_id, owner, created,
                first=first, last=last, email=email, title=title, opted_out=opted_out,
                place=s.client_place(country),
            )  # fmt: skip
            info.contacts.append((contact_id, f"{first} {last}", title, not opted_out))
        accounts.append(info)

    plan = deal_plan(rng, deals, s.midnight, onboarding_days, recent_share)
    kinds, shared_group, shared_stamp = plan.kinds, plan.shared_group, plan.shared_stamp
    shared_day, shared_from, shared_to = plan.shared_day, plan.shared_from, plan.shared_to
    oldest_win = plan.oldest_win

    for position, kind in enumerate(kinds):
        account = rng.choice(accounts)
        product = rng.choice(_PRODUCTS)
        rng.choice(aes)  # the deal owner's former draw, kept so the rest of a seed is as it was
        fields: dict[str, Any] = {
            "Name": f"{account.name} — {product}",
            "AccountId": account.id,
            "OwnerId": account.seller,
            "Type": rng.choice(_TYPES),
            "Amount": s.amount(),
        }
        primary_needed = kind == "recent"
        if kind == "recent":
            if position in shared_group:
                changed = s.days_ago(shared_day, hour_from=shared_from, hour_to=shared_to)
            else:
                changed = s.days_ago(rng.randint(1, onboarding_days), hour_from=8, hour_to=18)
            modstamp = changed + timedelta(minutes=rng.randint(0, 90), seconds=rng.randint(0, 59))
            if position in shared_group:
                modstamp = shared_stamp
            fields.update(StageName="Closed Won", CloseDate=changed.date())
            fields["Customer_Success_Manager__c"] = rng.choice(csms)
        elif kind == "old":
            changed = s.days_ago(rng.randint(oldest_win, oldest_win + 370))
            modstamp = changed + timedelta(days=rng.randint(0, 10), minutes=rng.randint(1, 600))
            fields.update(StageName="Closed Won", CloseDate=changed.date())
            fields["Customer_Success_Manager__c"] = rng.choice([*csms, inactive_csm])
        elif kind == "lost":
            changed = s.days_ago(rng.randint(10, 300))
            modstamp = changed + timedelta(days=rng.randint(0, 5), minutes=rng.randint(1, 600))
            fields.update(StageName="Closed Lost", CloseDate=changed.date())
        else:
            changed = s.days_ago(rng.randint(2, 90))
            latest = s.midnight - timedelta(minutes=rng.randint(5, 600))
            modstamp = max(changed, min(changed + timedelta(hours=rng.randint(0, 40)), latest))
            fields.update(
                StageName=rng.choice(_OPEN_STAGES),
                CloseDate=s.today + timedelta(days=rng.randint(7, 150)),
            )
            if rng.random() < 0.05:
                fields["Amount"] = None
        created = changed - timedelta(days=rng.randint(14, 150), hours=rng.randint(0, 12))
        fields["CreatedDate"] = created
        fields["LastStageChangeDate"] = changed

        usable = [c for c in account.contacts if c[3]]
        if primary_needed and not usable:
            first, last = s.person_name()
            contact_id = s.contact(
                account.id, account.owner, account.created,
                first=first, last=last, title="Operations Manager", opted_out=False,
                email=f"{_ascii_slug(first, '.')}.{_ascii_slug(last, '.')}@example.org",
                place=s.client_place(account.country),
            )  # fmt: skip
            account.contacts.append((contact_id, f"{first} {last}", "Operations Manager", True))
            usable = [account.contacts[-1]]
        champion = rng.choice(usable or account.contacts)
        if fields["StageName"] == "Closed Won":
            roll = rng.random()
            completeness = "full" if roll < 0.55 else "partial" if roll < 0.85 else "empty"
            fields.update(
                s.handoff_doc(
                    account.name, account.industry, champion[1], champion[2], completeness
                )
            )
        deal_id = s.insert("Opportunity", fields, modstamp)

        contact_ids = [c[0] for c in account.contacts]
        roll = rng.random()
        has_primary = primary_needed or roll >= 0.10
        if has_primary:
            s.contact_roles(deal_id, contact_ids, champion[0], created)
        elif roll >= 0.05:
            s.contact_roles(deal_id, contact_ids, None, created)
        if fields["StageName"] == "Closed Won":
            csm = fields["Customer_Success_Manager__c"]
            contact = champion[0] if has_primary else None
            s.won.append(_WonDeal(deal_id, fields["Name"], changed, csm, account.seller, contact))

    for edge in EDGE_CASES:
        _seed_edge_case(s, edge, aes, csms, inactive_csm)

    recent_cases = 0
    if histories is not None:
        recent_cases = _seed_histories(s, aes, csms, onboarding_days, histories)

    counts = s.counts
    return {
        "users": counts.get("User", 0),
        "accounts": counts.get("Account", 0),
        "contacts": counts.get("Contact", 0),
        "opportunities": counts.get("Opportunity", 0),
        "opportunity_contact_roles": counts.get("OpportunityContactRole", 0),
        "tasks": counts.get("Task", 0),
        "events": counts.get("Event", 0),
        "email_messages": counts.get("EmailMessage", 0),
        "history_cases": len(HISTORY_CASES) if histories is not None else 0,
        "recent_won": kinds.count("recent") + len(EDGE_CASES) + recent_cases,
        "edge_cases": len(EDGE_CASES),
        "shared_modstamp": shared_stamp.isoformat().replace("+00:00", "Z"),
        "shared_modstamp_deals": len(shared_group),
    }


def _seed_edge_case(
    s: _Seeder, edge: _EdgeDeal, aes: list[str], csms: list[str], inactive_csm: str
) -> None:
    rng = s.rng
    owner = rng.choice(aes)
    account_id, account_created = s.account(edge.account, edge.industry, edge.country, owner)
    contact_ids = [
        s.contact(
            account_id,
            owner,
            account_created,
            first=person.first,
            last=person.last,
            email=person.email,
            title=person.title,
            opted_out=person.opted_out,
            place={
                "MailingCountry": edge.country,
                "Time_Zone__c": person.time_zone,
                "Language__c": person.language,
                "Greeting_Name__c": person.greeting,
            },
        )  # fmt: skip
        for person in edge.people
    ]
    s.days_ago(1, hour_from=9, hour_to=17)  # drawn as before, so later records stay the same
    changed = edge_won_at(edge, s.today)
    created = changed - timedelta(days=rng.randint(20, 120))
    champion = edge.people[0]
    champion_name = f"{champion.first or ''} {champion.last}".strip()
    if edge.random_amount:
        s.amount()
    amount = edge_amount(edge)
    fields: dict[str, Any] = {
        "Name": edge.deal,
        "AccountId": account_id,
        "OwnerId": owner if edge.has_owner else None,
        "Type": edge.deal_type,
        "Amount": amount,
        "StageName": "Closed Won",
        "CloseDate": changed.date(),
        "LastStageChangeDate": changed,
        "CreatedDate": created,
        "Customer_Success_Manager__c": inactive_csm if edge.inactive_csm else rng.choice(csms),
        **s.handoff_doc(edge.account, edge.industry, champion_name, champion.title, "full"),
    }
    modstamp = changed + timedelta(minutes=rng.randint(1, 45), milliseconds=rng.randint(0, 999))
    deal_id = s.insert("Opportunity", fields, modstamp)
    if edge.primary:
        s.contact_roles(deal_id, contact_ids, contact_ids[0], created)
    contact = contact_ids[0] if edge.primary else None
    csm = fields["Customer_Success_Manager__c"]
    s.won.append(_WonDeal(deal_id, edge.deal, changed, csm, fields["OwnerId"], contact))


# -- client histories ------------------------------------------------------------------------


def history_case_doc(case: HistoryCase) -> dict[str, str | None]:
    """The named client's handoff document by key (situation, goals, ...), None where the rep
    left it empty; drawn from the case's name, so every sandbox CRM writes the same one."""
    rng = random.Random(f"history-doc:{case.deal}")
    n = rng.randint(3, 40)
    texts = {
        "situation": rng.choice(_SITUATIONS).format(account=case.account, n=n),
        "goals": rng.choice(_GOALS),
        "promises": rng.choice(_PROMISES).format(n=n),
        "objections": rng.choice(_OBJECTIONS).format(industry="their industry"),
        "stakeholders": rng.choice(_STAKEHOLDERS).format(
            contact=f"{case.first} {case.last}", title=_CASE_TITLE
        ),
        "risks": rng.choice(_RISKS),
    }
    return {key: None if key in case.missing_doc else texts[key] for key in _HANDOFF_KEYS}


@dataclass(frozen=True)
class _Histories:
    """Client histories are seeded (and how many activities an ordinary deal gets)."""

    activities_per_deal: int | None = None


def _seed_histories(
    s: _Seeder, aes: list[str], csms: list[str], onboarding_days: int, options: _Histories
) -> int:
    """The named clients with their histories, then an ordinary history for every other deal
    won in the last ``HISTORY_DAYS`` days; returns how many named clients were won inside the
    onboarding window. No draw from the seed's random stream: histories.py derives every time
    and choice from the day and the deal's name."""
    until = s.midnight
    cases = [
        _seed_history_case(s, index, case, aes, csms) for index, case in enumerate(HISTORY_CASES)
    ]
    for deal, case in zip(cases, HISTORY_CASES, strict=True):
        _seed_activities(s, deal, case.history(deal.won_at), aes[0])
    since = until - timedelta(days=HISTORY_DAYS)
    for deal in s.won:
        if since <= deal.won_at < until:
            items = healthy_history(deal.name, deal.won_at, until, options.activities_per_deal)
            _seed_activities(s, deal, items, aes[0])
    onboarding_start = until - timedelta(days=onboarding_days)
    return sum(1 for deal in cases if onboarding_start <= deal.won_at < until)


def _seed_history_case(
    s: _Seeder, index: int, case: HistoryCase, aes: list[str], csms: list[str]
) -> _WonDeal:
    """A named client: its account, its primary contact where it lives, the Closed Won deal."""
    won = case.won_at(s.today)
    owner, csm = aes[index % len(aes)], csms[index % len(csms)]
    account_id = s.insert(
        "Account",
        {"Name": case.account, "BillingCountry": case.country, "OwnerId": owner},
        won - timedelta(days=120),
    )
    contact_id = s.insert(
        "Contact",
        {
            "AccountId": account_id,
            "FirstName": case.first,
            "LastName": case.last,
            "Email": case.email,
            "Title": _CASE_TITLE,
            "HasOptedOutOfEmail": False,
            "OwnerId": owner,
            "MailingCountry": case.country,
            "Time_Zone__c": case.time_zone,
        },
        won - timedelta(days=100),
    )
    s.emails[contact_id] = case.email
    created = won - timedelta(days=45)
    doc = history_case_doc(case)
    fields: dict[str, Any] = {
        "Name": case.deal,
        "AccountId": account_id,
        "OwnerId": owner,
        "Type": "New Business",
        "Amount": case.amount,
        "StageName": "Closed Won",
        "CloseDate": won.date(),
        "LastStageChangeDate": won,
        "CreatedDate": created,
        "Customer_Success_Manager__c": csm,
        SCOPE_CHANGE_FIELD: case.scope_change,
        **{f"Handoff_{key.capitalize()}__c": text for key, text in doc.items()},
    }
    minutes = 5 + zlib.crc32(case.deal.encode()) % 40
    deal_id = s.insert("Opportunity", fields, won + timedelta(minutes=minutes))
    s.insert(
        "OpportunityContactRole",
        {
            "OpportunityId": deal_id,
            "ContactId": contact_id,
            "Role": "Decision Maker",
            "IsPrimary": True,
        },
        created + timedelta(days=1),
    )
    return _WonDeal(deal_id, case.deal, won, csm, owner, contact_id)


def _seed_activities(
    s: _Seeder, deal: _WonDeal, items: Sequence[SeedActivity], fallback_owner: str
) -> None:
    """One deal's history as Salesforce logs it: EmailMessage, Task (calls, notes, to-dos) and
    Event records on the opportunity (and its primary contact), owned by the deal's CSM."""
    owner = deal.csm or deal.owner or fallback_owner
    ours, client = s.emails.get(owner), s.emails.get(deal.contact) if deal.contact else None
    for item in items:
        if item.kind == "email":
            incoming = item.direction == "inbound"
            s.insert(
                "EmailMessage",
                {
                    "RelatedToId": deal.id,
                    "Subject": item.subject,
                    "TextBody": item.body,
                    "Incoming": incoming,
                    "MessageDate": item.at,
                    "FromAddress": client if incoming else ours,
                    "ToAddress": ours if incoming else client,
                    "Status": "1" if incoming else "3",  # Read, Sent
                    "CreatedById": owner,
                },
                item.modstamp,
            )
        elif item.kind == "meeting":
            s.insert(
                "Event",
                {
                    "WhatId": deal.id,
                    "WhoId": deal.contact,
                    "OwnerId": owner,
                    "Subject": item.subject,
                    "Description": item.body or None,
                    "StartDateTime": item.at,
                    "EndDateTime": item.at + timedelta(hours=1),
                    EVENT_OUTCOME_FIELD: _MEETING_OUTCOMES.get(item.outcome or ""),
                },
                item.modstamp,
            )
        else:
            s.insert("Task", _task_fields(deal, item, owner), item.modstamp)


def _task_fields(deal: _WonDeal, item: SeedActivity, owner: str) -> dict[str, Any]:
    """A call, note or to-do as a Task: its subtype and type say which."""
    completed = item.kind == "note" or item.outcome == "completed"
    fields: dict[str, Any] = {
        "WhatId": deal.id,
        "WhoId": deal.contact,
        "OwnerId": owner,
        "Subject": item.subject,
        "Description": item.body or None,
        "ActivityDate": item.at.date(),
        "Status": "Completed" if completed else "Not Started",
        "CompletedDateTime": item.at if completed else None,
        "TaskSubtype": "Call" if item.kind == "call" else "Task",
    }
    if item.kind == "call":
        fields.update(Type="Call", CallType=_CALL_TYPES[item.direction])
    elif item.kind == "note":
        fields["Type"] = "Note"
    if item.kind == "task" and item.step:
        key = dedupe_key("salesforce", deal.id, item.step)
        fields[HANDOFF_KEY_FIELD] = key
        fields["Description"] = description_with_key(item.body or item.subject, key)
    return fields
