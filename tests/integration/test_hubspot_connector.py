"""The HubSpot connector against the sandbox, through the real hubspot-api-client over HTTP."""

from __future__ import annotations

import logging
import time
from datetime import UTC, date, datetime, timedelta
from typing import Any

import hubspot
import pandas as pd
import pytest

from handoff.crm.base import (
    DEAL_COLUMNS,
    OPTIONAL_DEAL_COLUMNS,
    CrmFatalError,
    CrmUnavailable,
    WriteOutcomeUnknown,
)
from handoff.crm.hubspot import HubSpotCRM
from handoff.models import CrmTask
from handoff.pipeline import extract_changes
from handoff.sandbox import hubspot_api
from handoff.sandbox.hubspot_seed import (
    ENTERPRISE_PIPELINE_ID,
    ENTERPRISE_WON_STAGE_ID,
    PRIMARY_CONTACT_LABEL_TYPE_ID,
    seed_portal,
)
from handoff.sandbox.hubspot_store import HUBSPOT_DEFINED, USER_DEFINED, format_ms, to_ms
from tests.builders import HANDOFF_DOC, WON_AT

WINDOW_START = WON_AT - timedelta(days=1)
WINDOW_END = WON_AT + timedelta(days=1)
# The seed's own deals (edge cases) lie months before every window these tests read.
SEEDED_ON = date(2026, 3, 2)
ENTERPRISE_LOST_STAGE_ID = "160293852"


def iso(moment: datetime) -> str:
    return format_ms(to_ms(moment))


class Portal:
    """The seeded portal's schema (pipelines, custom properties, the Primary label) and a few
    explicit owners and records that each test names."""

    def __init__(self, store) -> None:
        self.store = store
        seed_portal(store, deals=0, today=SEEDED_ON)
        hired = datetime(2025, 1, 6, tzinfo=UTC)
        self.rep = self.owner("Riley", "Rep", hired)
        self.csm = self.owner("Casey", "Csm", hired)
        self.gone_csm = self.owner("Gone", "Away", hired, archived=True)
        self.account = self.company("Analytical Engines Ltd", country="United Kingdom")

    def owner(self, first: str, last: str, hired: datetime, *, archived: bool = False) -> str:
        email = f"{first}.{last}@seller.example".lower()
        return str(
            self.store.insert_owner(
                email=email, first_name=first, last_name=last, created=hired, archived=archived
            )
        )

    def company(self, name: str, **props: Any) -> int:
        values = {"name": name, "hubspot_owner_id": self.rep, **props}
        return self.store.insert("companies", values, created=WON_AT - timedelta(days=400)).id

    def contact(self, first: str = "Ada", last: str = "Lovelace", **props: Any) -> str:
        values = {"firstname": first, "lastname": last, "email": f"{first}@client.example"}
        values = {**values, **props}
        return str(self.store.insert("contacts", values, created=WON_AT - timedelta(days=90)).id)

    def deal(
        self,
        name: str,
        *,
        stage: str = "closedwon",
        pipeline: str = "default",
        won_at: datetime | None = WON_AT,
        modstamp: datetime | None = None,
        company: int | None = None,
        contacts: tuple[str, ...] = (),
        primary: int | None = 0,
        **props: Any,
    ) -> str:
        """A deal (won by default) with its company, its contacts and the handoff notes."""
        values: dict[str, Any] = {
            "dealname": name,
            "pipeline": pipeline,
            "dealstage": stage,
            "amount": "120000",
            "closedate": iso(datetime.combine((won_at or WON_AT).date(), datetime.min.time(), UTC)),
            "dealtype": "newbusiness",
            "hubspot_owner_id": self.rep,
            "customer_success_manager": self.csm,
            **{f"handoff_{key}": text for key, text in HANDOFF_DOC.items()},
        }
        if won_at is not None:
            values[f"hs_v2_date_entered_{stage}"] = iso(won_at)
        values.update(props)
        changed = modstamp or (won_at or WON_AT) + timedelta(minutes=10)
        record = self.store.insert(
            "deals", values, created=changed - timedelta(days=30), updated=changed
        )
        self.store.associate(
            "deals", record.id, "companies", company or self.account, [(HUBSPOT_DEFINED, 5)]
        )
        for index, contact_id in enumerate(contacts):
            label = [(USER_DEFINED, PRIMARY_CONTACT_LABEL_TYPE_ID)] if index == primary else []
            self.store.associate("deals", record.id, "contacts", int(contact_id), label)
        return str(record.id)

    def bulk_deals(self, stamps: list[datetime]) -> list[str]:
        """Open deals without company, one per stamp, written in one transaction."""
        ids = []
        with self.store.bulk() as writer:
            for n, stamp in enumerate(stamps):
                values = {
                    "dealname": f"Bulk {n}",
                    "pipeline": "default",
                    "dealstage": "qualifiedtobuy",
                }
                record = writer.insert("deals", values, created=stamp, updated=stamp)
                ids.append(str(record.id))
        return ids

    def tasks(self, deal_id: str) -> list[Any]:
        linked = self.store.associations("deals", [int(deal_id)], "tasks").get(int(deal_id), {})
        return [self.store.get("tasks", task_id) for task_id in linked]


@pytest.fixture
def portal(sandbox):
    return Portal(sandbox.hubspot_store)


@pytest.fixture
def client(sandbox):
    return hubspot.Client.create(access_token=sandbox.token, host=sandbox.url)


@pytest.fixture
def crm(client, settings):
    return HubSpotCRM.from_settings(client, settings)


def connector(client, settings, **changes: Any) -> HubSpotCRM:
    """A connector for the tests' portal with some [hubspot] settings changed."""
    fields = changes.pop("client_fields", None)
    if fields:
        changes["client_fields"] = settings.hubspot.client_fields.model_copy(update=fields)
    options = {
        k: changes.pop(k) for k in ("timeout", "total_retries", "backoff_factor") if k in changes
    }
    return HubSpotCRM(client, settings=settings.hubspot.model_copy(update=changes), **options)


def task(deal_id: str, owner: str, n: int = 0, **changes: Any) -> CrmTask:
    values: dict[str, Any] = {
        "dedupe_key": f"hubspot:{deal_id}:step{n}",
        "deal_id": deal_id,
        "contact_id": None,
        "owner_id": owner,
        "subject": f"Step {n}",
        "due_date": date(2026, 11, 21),
        "priority": "High",
        "description": f"Context for step {n}\n\nAsk about <b>SSO</b> & billing",
    }
    return CrmTask(**{**values, **changes})


def deal_ids(frames) -> list[str]:
    return [deal_id for frame in frames for deal_id in frame["deal_id"]]


def served(sandbox, route: str | None = None) -> int:
    stats = sandbox.hubspot_stats()
    return stats["api_calls"] if route is None else stats["by_route"].get(route, 0)


# -- extraction --------------------------------------------------------------------------------


def test_changed_deals_come_back_normalised(client, settings, portal, sandbox):
    crm = connector(client, settings, client_fields={"account_time_zone": "time_zone"})
    berlin = portal.company("Berlin Widgets GmbH", country="Germany", time_zone="Europe/Berlin")
    deal_id = portal.deal(
        "Berlin rollout", company=berlin, customer_success_manager=portal.gone_csm
    )
    [frame] = list(crm.iter_changed_deals(WINDOW_START, WINDOW_END))
    doc_columns = [f"doc_{key}" for key in HANDOFF_DOC]
    assert list(frame.columns) == DEAL_COLUMNS + OPTIONAL_DEAL_COLUMNS + doc_columns
    row = frame.set_index("deal_id").loc[deal_id]
    assert row["name"] == "Berlin rollout" and row["account_name"] == "Berlin Widgets GmbH"
    assert row["stage"] == "Closed Won" and bool(row["is_won"]) and not bool(row["is_deleted"])
    assert row["won_at"] == WON_AT and row["modstamp"] == WON_AT + timedelta(minutes=10)
    assert row["close_date"] == WON_AT.date() and row["amount"] == 120000
    assert (row["owner_id"], row["owner_name"]) == (portal.rep, "Riley Rep")
    assert row["owner_email"] == "riley.rep@seller.example" and row["owner_active"] is True
    assert row["csm_name"] == "Gone Away" and row["csm_active"] is False, "archived owner"
    assert row["account_owner_id"] == portal.rep and row["account_owner_active"] is True
    assert row["deal_type"] == "newbusiness"
    assert (row["account_time_zone"], row["account_country"]) == ("Europe/Berlin", "Germany")
    assert row["doc_promises"].startswith("INTERNAL-PROMISE")

    # Owners and pipelines are read once a connector: a later window costs the archived list,
    # one search page, and the deals' companies (association read, company read).
    calls, before = crm.api_calls, served(sandbox)
    list(crm.iter_changed_deals(WINDOW_START, WINDOW_END))
    assert crm.api_calls - calls == 4 == served(sandbox) - before


def test_the_scope_change_checkbox_is_read_where_the_portal_has_one(crm, client, settings, portal):
    ticked = portal.deal("Asks for more", scope_change_requested="true")
    unticked = portal.deal("Never asked")
    [frame] = list(crm.iter_changed_deals(WINDOW_START, WINDOW_END))
    rows = frame.set_index("deal_id")
    assert rows.loc[ticked, "scope_change"] is True
    assert rows.loc[unticked, "scope_change"] is False, "an empty checkbox is not ticked"
    activities = settings.hubspot.activities
    for prop in ("", "no_such_property"):
        unread = connector(
            client,
            settings,
            activities=activities.model_copy(update={"scope_change_property": prop}),
        )
        [frame] = list(unread.iter_changed_deals(WINDOW_START, WINDOW_END))
        assert frame["scope_change"].isna().all(), f"not read: {prop!r}"


def test_the_window_is_half_open_to_the_millisecond(crm, portal):
    portal.deal("Before", modstamp=WINDOW_START - timedelta(milliseconds=1))
    first = portal.deal("At the start", modstamp=WINDOW_START)
    last = portal.deal("Just inside", modstamp=WINDOW_END - timedelta(milliseconds=1))
    portal.deal("At the end", modstamp=WINDOW_END)
    assert deal_ids(crm.iter_changed_deals(WINDOW_START, WINDOW_END)) == [first, last]


def test_pages_follow_one_another_across_shared_timestamps(crm, portal, sandbox):
    """150 distinct stamps, then 100 deals sharing one stamp across the first page boundary
    (deals 150 to 249), then 200 sharing another across the second (250 to 449)."""
    start = WON_AT - timedelta(hours=6)
    stamps = [start + timedelta(seconds=n) for n in range(150)]
    stamps += [WON_AT] * 100 + [WON_AT + timedelta(hours=1)] * 200
    ids = portal.bulk_deals(stamps)
    list(crm.iter_changed_deals(WINDOW_END, WINDOW_END + timedelta(seconds=1)))  # warm caches
    calls, searches = crm.api_calls, served(sandbox, "search:deals")
    before = served(sandbox)
    frames = list(crm.iter_changed_deals(WINDOW_START, WINDOW_END))
    assert [len(frame) for frame in frames] == [200, 200, 50]
    assert deal_ids(frames) == ids, "every deal once, in (modified, id) order"
    assert served(sandbox, "search:deals") - searches == 3, "one search call a page"
    assert crm.api_calls - calls == served(sandbox) - before, "every request counted"


def test_a_window_larger_than_the_search_cap_is_read_completely(
    client, settings, portal, sandbox, monkeypatch
):
    """HubSpot pages through 10,000 results of one search at most; the sandbox's cap is
    lowered to 1,000 to keep this fast. Five stamps of 460 deals each: ties straddle pages."""
    monkeypatch.setattr(hubspot_api, "SEARCH_RESULT_CAP", 1000)
    stamps = [WON_AT + timedelta(minutes=n) for n in range(5) for _ in range(460)]
    ids = portal.bulk_deals(stamps)
    crm = HubSpotCRM.from_settings(client, settings)
    frames = list(crm.iter_changed_deals(WINDOW_START, WINDOW_END))
    read = deal_ids(frames)
    assert len(read) == len(set(read)) == 2300 and read == ids
    assert sandbox.hubspot_stats()["rate_limited"] == 0, "searches stay under 5 a second"


def test_a_deal_changed_while_paging_hides_no_other(crm, portal, sandbox):
    """Each page is a fresh query: a deal that moves to the end shifts the later ones."""
    ids = portal.bulk_deals([WON_AT + timedelta(seconds=n) for n in range(450)])
    pages = crm.iter_changed_deals(WINDOW_START, WINDOW_END)
    first = next(pages)
    moved = int(first["deal_id"].iloc[5])
    sandbox.hubspot_store.update(
        "deals", moved, {"amount": "1"}, when=to_ms(WON_AT + timedelta(hours=2))
    )
    read = list(first["deal_id"]) + deal_ids(pages)
    assert set(read) == set(ids), "nothing missed"
    assert read.count(str(moved)) == 2 and len(read) == 451, "the changed deal read again"


def test_won_comes_from_the_pipelines_custom_ones_included(crm, portal):
    entered = WON_AT - timedelta(hours=3)
    enterprise = portal.deal(
        "Enterprise win", pipeline=ENTERPRISE_PIPELINE_ID, stage=ENTERPRISE_WON_STAGE_ID,
        won_at=entered, modstamp=WON_AT,
    )  # fmt: skip
    lost = portal.deal(
        "Enterprise loss", pipeline=ENTERPRISE_PIPELINE_ID, stage=ENTERPRISE_LOST_STAGE_ID
    )
    no_entry = portal.deal("Won, no stage date", won_at=None, modstamp=WON_AT)
    [frame] = list(crm.iter_changed_deals(WINDOW_START, WINDOW_END))
    rows = frame.set_index("deal_id")
    assert bool(rows.loc[enterprise, "is_won"]) and rows.loc[enterprise, "won_at"] == entered
    assert rows.loc[enterprise, "stage"] == "Closed Won"
    assert not bool(rows.loc[lost, "is_won"]) and rows.loc[lost, "stage"] == "Closed Lost"
    assert pd.isna(rows.loc[lost, "won_at"])
    midnight = datetime.combine(WON_AT.date(), datetime.min.time(), UTC)
    assert rows.loc[no_entry, "won_at"] == midnight, "the close date stands in"


def test_archived_deals_are_seen_as_deleted(crm, portal, sandbox):
    kept = portal.deal("Kept", modstamp=WON_AT)
    deleted = portal.deal("Deleted in the window", modstamp=WON_AT - timedelta(days=3))
    long_gone = portal.deal("Deleted before", modstamp=WON_AT - timedelta(days=5))
    archived_at = WON_AT - timedelta(hours=1)
    store = sandbox.hubspot_store
    store.archive("deals", int(deleted), when=to_ms(archived_at))
    store.archive("deals", int(long_gone), when=to_ms(WON_AT - timedelta(days=4)))
    frames = list(crm.iter_changed_deals(WINDOW_START, WINDOW_END))
    assert deal_ids(frames) == [deleted, kept], "merged in modification order"
    rows = frames[0].set_index("deal_id")
    assert bool(rows.loc[deleted, "is_deleted"]) and not bool(rows.loc[kept, "is_deleted"])
    assert rows.loc[deleted, "modstamp"] == archived_at
    assert rows.loc[deleted, "name"] == "Deleted in the window"


def test_extraction_into_the_state_store_with_shared_timestamps(crm, portal, store, settings):
    stamp = WON_AT + timedelta(hours=2)
    first = [portal.deal(f"Tie {n}", modstamp=stamp) for n in range(3)]
    assert extract_changes(crm, store, settings, WINDOW_END)["deals_changed"] == 3
    assert store.get_watermark("hubspot", "deals") == stamp
    late = portal.deal("Tie late", modstamp=stamp)
    assert extract_changes(crm, store, settings, WINDOW_END)["deals_changed"] == 1
    assert set(store.stored_modstamps("hubspot", [*first, late])) == {*first, late}
    assert extract_changes(crm, store, settings, WINDOW_END)["deals_changed"] == 0


# -- contacts and users ------------------------------------------------------------------------


def test_the_primary_contact_by_label_else_the_first(crm, portal, caplog):
    ada, grace = portal.contact("Ada"), portal.contact("Grace", "Hopper")
    labelled = portal.deal("Labelled", contacts=(ada, grace), primary=1)
    unlabelled = portal.deal("Unlabelled", contacts=(ada, grace), primary=None)
    nobody = portal.deal("No contact")
    calls = crm.api_calls
    with caplog.at_level(logging.WARNING, logger="handoff.crm.hubspot"):
        found = crm.primary_contacts([labelled, unlabelled, nobody])
    assert crm.api_calls - calls == 2, "one association read, one contact read"
    assert set(found) == {labelled, unlabelled}
    assert found[labelled].id == grace and found[labelled].name == "Grace Hopper"
    assert found[unlabelled].id == ada
    assert f"Deal {unlabelled} has no contact labelled 'Primary'" in caplog.text
    assert f"Deal {labelled} " not in caplog.text


def test_where_the_contact_is_and_how_to_greet_them(client, settings, portal):
    crm = connector(client, settings, client_fields={"salutation": "greeting_name"})
    haiti = portal.contact(
        "Jean", "Baptiste", hs_timezone="america_slash_port_hyphen_au_hyphen_prince",
        country="Haiti", hs_language="fr", greeting_name="M. Baptiste",
    )  # fmt: skip
    china = portal.contact("李", "伟", hs_timezone="asia_slash_shanghai", hs_language="zh-cn")
    unknown = portal.contact("Nowhere", hs_timezone="mars_slash_olympus")
    deals = [portal.deal(f"Deal {n}", contacts=(c,)) for n, c in enumerate([haiti, china, unknown])]
    found = crm.primary_contacts(deals)
    assert found[deals[0]].time_zone == "America/Port-au-Prince"
    assert (found[deals[0]].country, found[deals[0]].locale) == ("Haiti", "fr")
    assert found[deals[0]].salutation == "M. Baptiste"
    assert (found[deals[1]].time_zone, found[deals[1]].locale) == ("Asia/Shanghai", "zh_CN")
    assert found[deals[2]].time_zone is None


def test_opt_out_is_written_back_and_read_back(crm, portal, sandbox):
    ada = portal.contact("Ada")
    deal_id = portal.deal("Unsubscribed", contacts=(ada,))
    assert not crm.primary_contacts([deal_id])[deal_id].opted_out
    missing = "95100999999"
    results = crm.set_email_opt_out([ada, missing])
    assert [(r.dedupe_key, r.ok) for r in results] == [(ada, True), (missing, False)]
    assert "OBJECT_NOT_FOUND" in results[1].error
    assert crm.primary_contacts([deal_id])[deal_id].opted_out
    assert sandbox.hubspot_store.get("contacts", int(ada)).properties["hs_email_optout"] == "true"
    assert [r.ok for r in crm.set_email_opt_out([ada])] == [True], "idempotent"


def test_users_by_email_prefer_active_owners(crm, portal):
    store = portal.store
    hired = datetime(2025, 1, 6, tzinfo=UTC)
    store.insert_owner(
        email="Pat.Shared@seller.example", first_name="Pat", last_name="Old",
        created=hired, archived=True,
    )  # fmt: skip
    current = store.insert_owner(
        email="pat.shared@seller.example", first_name="Pat", last_name="New", created=hired
    )
    found = crm.users_by_email(["PAT.shared@seller.example", "gone.away@seller.example"])
    assert found["pat.shared@seller.example"].id == str(current)
    assert found["pat.shared@seller.example"].is_active
    assert found["gone.away@seller.example"].is_active is False
    calls = crm.api_calls
    crm.users_by_email(["riley.rep@seller.example"])
    assert crm.api_calls == calls, "owners are read once a connector"


# -- task writes -------------------------------------------------------------------------------


def test_tasks_are_written_in_one_call_and_answers_matched_by_content(crm, portal, sandbox):
    ada = portal.contact("Ada")
    deal_id = portal.deal("Big customer", contacts=(ada,))
    tasks = [task(deal_id, portal.csm, n, contact_id=ada) for n in range(20)]
    tasks[7] = task(deal_id, portal.gone_csm, 7)  # an archived owner: HubSpot refuses it
    calls = crm.api_calls
    results = crm.create_tasks(tasks)
    assert crm.api_calls - calls == 1
    assert [r.dedupe_key for r in results] == [t.dedupe_key for t in tasks]
    assert [r.ok for r in results].count(False) == 1 and not results[7].ok
    assert "INVALID_OWNER_ID" in results[7].error and "hubspot_owner_id" in results[7].error
    store = sandbox.hubspot_store
    for result in results:  # the sandbox answers in another order than the input's
        if result.ok:
            written = store.get("tasks", int(result.external_id)).properties
            assert written["handoff_key"] == result.dedupe_key
    created = store.get("tasks", int(results[0].external_id)).properties
    assert created["hs_task_subject"] == "Step 0" and created["hs_task_priority"] == "HIGH"
    assert (created["hs_task_status"], created["hs_task_type"]) == ("NOT_STARTED", "TODO")
    assert created["hs_timestamp"].startswith("2026-11-21T")
    assert created["hubspot_owner_id"] == portal.csm
    assert "&lt;b&gt;SSO&lt;/b&gt; &amp; billing" in created["hs_task_body"]
    assert created["hs_task_body"].endswith(f"Handoff key: hubspot:{deal_id}:step0")
    linked = store.associations("tasks", [int(results[0].external_id)], "contacts")
    assert list(linked[int(results[0].external_id)]) == [int(ada)]
    assert len(portal.tasks(deal_id)) == 19
    with pytest.raises(ValueError, match="limit is 100"):
        crm.create_tasks([task(deal_id, portal.csm, n) for n in range(101)])


def test_without_a_key_property_the_key_is_the_body_last_line(client, settings, portal, sandbox):
    crm = connector(client, settings, task_key_property="")
    crm.check_task_setup()
    deal_id = portal.deal("No key property")
    forged = f"Rep notes\nHandoff key: hubspot:{deal_id}:bogus\nmore notes"
    tasks = [task(deal_id, portal.csm, 1, description=forged), task(deal_id, portal.csm, 2)]
    results = crm.create_tasks(tasks)
    assert all(r.ok for r in results)
    body = sandbox.hubspot_store.get("tasks", int(results[0].external_id)).properties
    assert "handoff_key" not in body and body["hs_task_body"].count("Handoff key: ") == 2
    assert crm.find_tasks([deal_id]) == {r.dedupe_key: r.external_id for r in results}


def test_check_task_setup_names_a_missing_key_property(client, settings, portal, sandbox):
    crm = HubSpotCRM.from_settings(client, settings)
    crm.check_task_setup()
    calls = crm.api_calls
    crm.check_task_setup()
    assert crm.api_calls == calls == 1, "checked once"
    missing = connector(client, settings, task_key_property="dedupe_key")
    with pytest.raises(CrmFatalError, match=r"'dedupe_key'.*task_key_property.*does not exist"):
        missing.check_task_setup()


@pytest.mark.parametrize("status", [500, 503])
def test_a_write_answered_5xx_after_the_commit_is_settled_by_find_tasks(
    crm, portal, sandbox, status
):
    deal_id = portal.deal("Ambiguous")
    other = portal.deal("Someone else")
    crm.create_tasks([task(other, portal.csm, 9)])
    sandbox.faults.add(
        method="POST", path_contains="/tasks/batch/create", status=status, after_commit=True
    )
    tasks = [task(deal_id, portal.csm, n) for n in range(3)]
    calls = crm.api_calls
    with pytest.raises(WriteOutcomeUnknown, match=str(status)):
        crm.create_tasks(tasks)
    assert crm.api_calls - calls == 1, "never re-sent"
    assert len(portal.tasks(deal_id)) == 3
    found = crm.find_tasks([deal_id])
    assert set(found) == {t.dedupe_key for t in tasks}
    for key, task_id in found.items():
        assert sandbox.hubspot_store.get("tasks", int(task_id)).properties["handoff_key"] == key


def test_find_tasks_sees_tasks_the_search_index_has_not_caught_up_with(crm, portal, sandbox):
    sandbox.hubspot_api.limits.search_index_delay = 60
    deal_id = portal.deal("Just written")
    [result] = crm.create_tasks([task(deal_id, portal.csm, 1)])
    assert crm.find_tasks([deal_id]) == {result.dedupe_key: result.external_id}


def test_a_throttled_write_is_retried_after_retry_after(crm, portal, sandbox):
    deal_id = portal.deal("Throttled")
    sandbox.faults.add(
        method="POST", path_contains="/tasks/batch/create", status=429, retry_after=1
    )
    calls, started = crm.api_calls, time.monotonic()
    [result] = crm.create_tasks([task(deal_id, portal.csm, 1)])
    assert result.ok and len(portal.tasks(deal_id)) == 1
    assert time.monotonic() - started >= 1, "Retry-After honoured"
    assert crm.api_calls - calls == 2


def test_a_search_answered_503_is_retried_and_every_request_counted(crm, portal, sandbox):
    portal.deal("Retry me")
    sandbox.faults.add(
        method="POST", path_contains="/deals/search", status=503, times=2, retry_after=0
    )
    searches, before = served(sandbox, "search:deals"), served(sandbox)
    assert len(deal_ids(crm.iter_changed_deals(WINDOW_START, WINDOW_END))) == 1
    assert served(sandbox, "search:deals") - searches == 3, "two refusals, then the answer"
    assert crm.api_calls == served(sandbox) - before, "transport retries are API calls too"


def test_a_write_whose_answer_times_out_is_an_unknown_outcome(client, settings, portal, sandbox):
    crm = connector(client, settings, timeout=(2, 0.5))
    deal_id = portal.deal("Slow answer")
    sandbox.faults.add(
        method="POST", path_contains="/tasks/batch/create", after_commit=True, delay_seconds=3
    )
    calls = crm.api_calls
    with pytest.raises(WriteOutcomeUnknown, match="went out"):
        crm.create_tasks([task(deal_id, portal.csm, 1)])
    assert crm.api_calls - calls == 1 and len(portal.tasks(deal_id)) == 1


def test_a_write_to_a_closed_port_is_known_not_to_have_happened(settings):
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{probe.getsockname()[1]}"
    client = hubspot.Client.create(access_token="t", host=url)
    crm = connector(client, settings, total_retries=1, backoff_factor=0)
    with pytest.raises(CrmUnavailable):
        crm.create_tasks([task("31200000017", "41000023", 1)])
    assert crm.api_calls == 0, "nothing reached HubSpot"


def test_a_wrong_token_is_fatal_with_a_clear_message_and_nothing_is_lost(
    client, settings, portal, sandbox
):
    deal_id = portal.deal("Expired token")
    token = "pat-na1-expired-0000"
    expired = HubSpotCRM.from_settings(
        hubspot.Client.create(access_token=token, host=sandbox.url), settings
    )
    tasks = [task(deal_id, portal.csm, n) for n in range(2)]
    for attempt in (
        lambda: expired.create_tasks(tasks),
        lambda: list(expired.iter_changed_deals(WINDOW_START, WINDOW_END)),
    ):
        with pytest.raises(CrmFatalError) as raised:
            attempt()
        message = str(raised.value)
        assert "401" in message and "access token is expired or invalid" in message
        assert token not in message
    assert expired.api_calls == 2, "not retried"
    assert portal.tasks(deal_id) == []
    results = HubSpotCRM.from_settings(client, settings).create_tasks(tasks)
    assert all(r.ok for r in results) and len(portal.tasks(deal_id)) == 2


def test_the_daily_limit_is_fatal_without_waiting_out_its_retry_after(crm, portal, sandbox):
    portal.deal("Over the limit")
    crm.check_task_setup()
    sandbox.hubspot_api.limits.daily = served(sandbox)
    started = time.monotonic()
    with pytest.raises(CrmFatalError, match="daily API limit"):
        list(crm.iter_changed_deals(WINDOW_START, WINDOW_END))
    assert time.monotonic() - started < 5
