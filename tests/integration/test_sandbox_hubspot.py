"""The sandbox CRM speaks enough HubSpot for the real hubspot-api-client.

Every test goes over HTTP through ``hubspot.Client``, pointed at the sandbox with the
client's ``host`` option (see ``client``), so a behaviour that passes here is one a
HubSpot connector can rely on: status codes the client deserialises (201, 207), shapes,
limits, rate limiting and the fault plan.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import re
import sqlite3
import time
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import hubspot
import pytest
import requests
from hubspot.crm.associations.v4 import (
    BatchResponsePublicAssociationMultiWithLabel,
    BatchResponsePublicAssociationMultiWithLabelWithErrors,
)
from hubspot.crm.contacts import BatchResponseSimplePublicObject as ContactsBatch
from hubspot.crm.contacts import BatchResponseSimplePublicObjectWithErrors as ContactsPartial
from hubspot.crm.deals import ApiException as DealsApiException
from hubspot.crm.objects.tasks import ApiException as TasksApiException
from hubspot.crm.objects.tasks import BatchResponseSimplePublicObject as TasksBatch
from hubspot.crm.objects.tasks import BatchResponseSimplePublicObjectWithErrors as TasksPartial
from urllib3.util.retry import Retry

from handoff.sandbox import EDGE_CASE_DEALS, HubSpotStore, SandboxServer, hubspot_api, seed_portal
from handoff.sandbox.histories import HISTORY_CASES, healthy_history
from handoff.sandbox.hubspot_api import HubSpotLimits
from handoff.sandbox.hubspot_seed import EDGE_CASE_DEALS as PORTAL_EDGE_CASE_DEALS
from handoff.sandbox.hubspot_seed import (
    ENTERPRISE_PIPELINE_ID,
    ENTERPRISE_WON_STAGE_ID,
    HANDOFF_PROPERTIES,
    HISTORY_DAYS,
    PRIMARY_CONTACT_LABEL_TYPE_ID,
)
from handoff.sandbox.hubspot_store import (
    ENGAGEMENT_TYPES,
    HubSpotObject,
    format_ms,
    from_hubspot_timezone,
    to_ms,
)

TODAY = date(2026, 11, 23)
TOKEN = "test-token"
# Four recent wins share this hs_lastmodifieddate (a bulk update at 02:00 yesterday).
SHARED_MS = int(datetime(2026, 11, 22, 2, tzinfo=UTC).timestamp() * 1000)
UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
HS_DATETIME_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")
DEFAULT_STAGES = [
    "appointmentscheduled", "qualifiedtobuy", "presentationscheduled", "decisionmakerboughtin",
    "contractsent", "closedwon", "closedlost",
]  # fmt: skip


def client(server: SandboxServer, token: str | None = TOKEN, **options: Any) -> hubspot.Client:
    """A hubspot-api-client talking to the sandbox.

    ``host`` is a Configuration attribute; ``Client.create`` copies every option it is
    given onto the Configuration of each API it builds (deals, contacts, owners, ...),
    so this one option points the whole client at ``server.url``.
    """
    return hubspot.Client.create(access_token=token, host=server.url, **options)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SandboxServer]:
    db = tmp_path_factory.mktemp("sandbox") / "portal.db"
    with SandboxServer(db, token=TOKEN) as running:
        seed_portal(running.hubspot_store, seed=7, deals=60, today=TODAY)
        yield running


@pytest.fixture(scope="module")
def hs(server: SandboxServer) -> hubspot.Client:
    return client(server)


@pytest.fixture(autouse=True)
def _relaxed_limits(request: pytest.FixtureRequest) -> Iterator[None]:
    """Tests page freely; the rate-limit tests switch the limits back on themselves."""
    if "server" not in request.fixturenames:
        yield
        return
    running: SandboxServer = request.getfixturevalue("server")
    limits = running.hubspot_api.limits
    limits.update({"search_per_second": None, "enforce_interval": False})
    yield
    running.faults.clear()
    limits.update(
        {"search_per_second": None, "enforce_interval": False, "interval_max": 190,
         "search_index_delay": 0.0}
    )  # fmt: skip


def live_deals(server: SandboxServer) -> list[HubSpotObject]:
    return server.hubspot_store.page("deals", archived=False, after_id=0, limit=1_000_000)


def search_deals(hs: hubspot.Client, **request: Any) -> Any:
    return hs.crm.deals.search_api.do_search(public_object_search_request=request)


def deals_by_name(hs: hubspot.Client, names: list[str], *properties: str) -> dict[str, Any]:
    page = search_deals(
        hs,
        filterGroups=[
            {"filters": [{"propertyName": "dealname", "operator": "IN", "values": names}]}
        ],
        properties=["dealname", *properties],
        limit=100,
    )
    return {deal.properties["dealname"]: deal for deal in page.results}


def error_body(exc: Any) -> dict[str, Any]:
    body = json.loads(exc.body)
    assert body["status"] == "error" and UUID_RE.match(body["correlationId"])
    assert body["message"] and body["category"]
    return body


def tasks_with_key(hs: hubspot.Client, keys: list[str]) -> list[Any]:
    flt = {"propertyName": "handoff_key", "operator": "IN", "values": keys}
    page = hs.crm.objects.tasks.search_api.do_search(
        public_object_search_request={
            "filterGroups": [{"filters": [flt]}],
            "properties": ["handoff_key", "hs_task_subject"],
            "limit": 100,
        }
    )
    return page.results


def task_input(deal_id: str, key: str, owner: str, **changes: Any) -> dict[str, Any]:
    properties = {
        "hs_task_subject": f"Kick-off call ({key})",
        "hs_task_body": f"Welcome call for the new client. Key {key}",
        "hs_timestamp": "2026-11-30T09:00:00.000Z",
        "hs_task_priority": "HIGH",
        "hs_task_status": "NOT_STARTED",
        "hs_task_type": "TODO",
        "hubspot_owner_id": owner,
        "handoff_key": key,
    }
    properties.update(changes)
    return {
        "objectWriteTraceId": key,
        "properties": {k: v for k, v in properties.items() if v is not None},
        "associations": [
            {
                "to": {"id": deal_id},
                "types": [{"associationCategory": "HUBSPOT_DEFINED", "associationTypeId": 216}],
            }
        ],
    }


@pytest.fixture(scope="module")
def portal(server: SandboxServer, hs: hubspot.Client) -> dict[str, Any]:
    """Handy ids from the seeded portal."""
    owners = hs.crm.owners.owners_api.get_page(limit=100).results
    archived = hs.crm.owners.owners_api.get_page(archived=True).results
    deals = deals_by_name(hs, ["Acme Corp — enterprise", "Soylent — inactive CSM"])
    return {
        "ae": next(o.id for o in owners if o.email.endswith("@example.com")),
        "archived_owner": archived[0].id,
        "acme": deals["Acme Corp — enterprise"].id,
        "soylent": deals["Soylent — inactive CSM"].id,
    }


# -- pointing the client at the sandbox --------------------------------------------------------


def test_every_api_of_the_client_uses_the_sandbox_host(hs: hubspot.Client, server: SandboxServer):
    apis = [
        hs.crm.deals.search_api, hs.crm.contacts.batch_api, hs.crm.owners.owners_api,
        hs.crm.pipelines.pipelines_api, hs.crm.objects.tasks.batch_api,
        hs.crm.associations.v4.batch_api,
    ]  # fmt: skip
    assert {api.api_client.configuration.host for api in apis} == {server.url}
    before = server.hubspot_stats()["by_route"].get("pipelines:deals", 0)
    hs.crm.pipelines.pipelines_api.get_all("deals")
    assert server.hubspot_stats()["by_route"]["pipelines:deals"] == before + 1


def test_salesforce_still_answers_on_the_same_port_with_its_own_counts(server: SandboxServer):
    salesforce_calls = server.stats()["api_calls"]
    answer = requests.get(
        f"{server.url}/services/data/v59.0/limits",
        headers={"Authorization": f"Bearer {TOKEN}"},
        timeout=5,
    )
    assert answer.status_code == 200 and "DailyApiRequests" in answer.json()
    assert server.stats()["api_calls"] == salesforce_calls + 1
    hubspot_calls = server.hubspot_stats()["api_calls"]
    answer = requests.get(
        f"{server.url}/crm/v3/owners/", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=5
    )
    assert answer.status_code == 200
    assert server.hubspot_stats()["api_calls"] == hubspot_calls + 1
    assert server.stats()["api_calls"] == salesforce_calls + 1


# -- search -------------------------------------------------------------------------------------


def test_search_pages_through_ties_on_last_modified_without_gaps_or_repeats(
    hs: hubspot.Client, server: SandboxServer
) -> None:
    live = sorted(
        (d for d in live_deals(server) if d.updated_ms >= SHARED_MS),
        key=lambda d: (d.updated_ms, d.id),
    )
    tied = [str(d.id) for d in live if d.updated_ms == SHARED_MS]
    assert len(tied) == 4 and len(live) > 10
    gte = {"propertyName": "hs_lastmodifieddate", "operator": "GTE", "value": str(SHARED_MS)}
    ascending = {"propertyName": "hs_lastmodifieddate", "direction": "ASCENDING"}
    before = server.hubspot_stats()["by_route"].get("search:deals", 0)
    seen: list[str] = []
    after, pages = None, 0
    while True:
        page = search_deals(
            hs, filterGroups=[{"filters": [gte]}], sorts=[ascending], limit=3, after=after
        )
        pages += 1
        assert page.total == len(live)
        seen += [deal.id for deal in page.results]
        if page.paging is None:
            break
        after = page.paging.next.after
        assert after == str(len(seen)), "the cursor is the offset of the next page"
    assert seen == [str(d.id) for d in live], "every deal once, ties in id order"
    assert server.hubspot_stats()["by_route"]["search:deals"] - before == pages

    # The tie-proof pattern: one timestamp, then hs_object_id GT the last id seen.
    keyset: list[str] = []
    last = "0"
    while True:
        filters = [
            {"propertyName": "hs_lastmodifieddate", "operator": "EQ", "value": str(SHARED_MS)},
            {"propertyName": "hs_object_id", "operator": "GT", "value": last},
        ]
        page = search_deals(
            hs,
            filterGroups=[{"filters": filters}],
            sorts=[{"propertyName": "hs_object_id", "direction": "ASCENDING"}],
            limit=1,
        )
        if not page.results:
            break
        last = page.results[0].id
        assert page.results[0].properties["hs_lastmodifieddate"] == "2026-11-22T02:00:00.000Z"
        keyset.append(last)
    assert keyset == sorted(tied, key=int)


@pytest.mark.parametrize(
    ("operator", "direction"),
    [("GTE", "ASCENDING"), ("GT", "DESCENDING"), ("LT", "DESCENDING"), ("LTE", "ASCENDING"),
     ("EQ", "DESCENDING")],
)  # fmt: skip
def test_search_compares_last_modified_as_epoch_milliseconds(
    hs: hubspot.Client, server: SandboxServer, operator: str, direction: str
) -> None:
    check = {
        "GTE": lambda ms: ms >= SHARED_MS,
        "GT": lambda ms: ms > SHARED_MS,
        "LT": lambda ms: ms < SHARED_MS,
        "LTE": lambda ms: ms <= SHARED_MS,
        "EQ": lambda ms: ms == SHARED_MS,
    }[operator]
    expected = sorted(
        (d for d in live_deals(server) if check(d.updated_ms)),
        key=lambda d: (d.updated_ms, d.id),
        reverse=direction == "DESCENDING",
    )
    page = search_deals(
        hs,
        filterGroups=[
            {"filters": [{"propertyName": "hs_lastmodifieddate", "operator": operator,
                          "value": str(SHARED_MS)}]}
        ],
        sorts=[{"propertyName": "hs_lastmodifieddate", "direction": direction}],
        properties=["dealname"],
        limit=200,
    )  # fmt: skip
    assert page.total == len(expected) > 0
    assert [deal.id for deal in page.results] == [str(d.id) for d in expected]
    first = page.results[0]
    assert set(first.properties) == {
        "dealname",
        "createdate",
        "hs_lastmodifieddate",
        "hs_object_id",
    }
    assert HS_DATETIME_RE.match(first.properties["hs_lastmodifieddate"])


def test_search_refuses_to_page_beyond_10000_results(hs: hubspot.Client) -> None:
    last_page = search_deals(hs, limit=200, after="9800")
    assert last_page.results == [] and last_page.total > 0, "up to result 10,000 is allowed"
    for after, limit in (("9801", 200), ("10000", 1)):
        with pytest.raises(DealsApiException) as caught:
            search_deals(hs, limit=limit, after=after)
        assert caught.value.status == 400
        body = error_body(caught.value)
        assert body["category"] == "VALIDATION_ERROR" and "10000" in body["message"]
    with pytest.raises(DealsApiException) as caught:
        search_deals(hs, limit=201)
    assert caught.value.status == 400 and error_body(caught.value)["category"] == "VALIDATION_ERROR"
    with pytest.raises(DealsApiException) as caught:
        search_deals(
            hs,
            sorts=[
                {"propertyName": "hs_lastmodifieddate", "direction": "ASCENDING"},
                {"propertyName": "hs_object_id", "direction": "ASCENDING"},
            ],
        )
    assert caught.value.status == 400, "HubSpot's search takes one sort"


def test_archived_deals_leave_search_and_are_listed_with_archived_true(
    hs: hubspot.Client,
) -> None:
    deals = hs.crm.deals.basic_api
    created = deals.create(
        {"properties": {"dealname": "Archive me", "dealstage": "appointmentscheduled"}}
    )
    by_id = {"propertyName": "hs_object_id", "operator": "EQ", "value": created.id}
    assert search_deals(hs, filterGroups=[{"filters": [by_id]}]).total == 1
    deals.archive(created.id)
    assert search_deals(hs, filterGroups=[{"filters": [by_id]}]).total == 0
    with pytest.raises(DealsApiException) as caught:
        deals.get_by_id(created.id)
    assert caught.value.status == 404 and error_body(caught.value)["category"] == "OBJECT_NOT_FOUND"
    again = deals.get_by_id(created.id, archived=True)
    assert again.archived is True and again.archived_at is not None

    archived, after = [], None
    while True:
        page = deals.get_page(archived=True, limit=1, after=after, properties=["dealname"])
        archived += page.results
        if page.paging is None:
            break
        after = page.paging.next.after
    assert created.id in {deal.id for deal in archived}
    assert all(deal.archived and deal.archived_at for deal in archived)
    live = deals.get_page(limit=100)
    assert created.id not in {deal.id for deal in live.results}
    with pytest.raises(DealsApiException) as caught:
        deals.get_page(limit=101)
    assert caught.value.status == 400


def test_a_deal_moved_to_won_gets_what_hubspot_derives(hs: hubspot.Client) -> None:
    deals = hs.crm.deals.basic_api
    created = deals.create(
        {"properties": {"dealname": "Derive me", "pipeline": ENTERPRISE_PIPELINE_ID,
                        "dealstage": "160293847", "amount": "120000"}}
    )  # fmt: skip
    assert created.properties["hs_is_closed_won"] == "false"
    time.sleep(0.01)
    won = deals.update(created.id, {"properties": {"dealstage": ENTERPRISE_WON_STAGE_ID}})
    assert won.properties["hs_is_closed_won"] == "true"
    entered = won.properties[f"hs_v2_date_entered_{ENTERPRISE_WON_STAGE_ID}"]
    assert entered == won.properties["hs_lastmodifieddate"] > created.properties["createdate"]
    with pytest.raises(DealsApiException) as caught:
        deals.update(created.id, {"properties": {"dealstage": "closedwon"}})
    assert caught.value.status == 400, "a stage of another pipeline"
    assert "INVALID_OPTION" in error_body(caught.value)["message"]


# -- pipelines and the seeded portal -------------------------------------------------------------


def test_pipelines_include_a_custom_one_with_numeric_stage_ids(hs: hubspot.Client) -> None:
    pipelines = {p.id: p for p in hs.crm.pipelines.pipelines_api.get_all("deals").results}
    assert list(pipelines) == ["default", ENTERPRISE_PIPELINE_ID]
    default = pipelines["default"]
    assert [s.id for s in default.stages] == DEFAULT_STAGES
    assert default.stages[0].metadata == {"isClosed": "false", "probability": "0.2"}
    assert default.stages[-1].metadata == {"isClosed": "true", "probability": "0.0"}
    enterprise = pipelines[ENTERPRISE_PIPELINE_ID]
    assert enterprise.label == "Enterprise"
    assert all(stage.id.isdigit() for stage in enterprise.stages)
    won = [s for s in enterprise.stages if s.metadata == {"isClosed": "true", "probability": "1.0"}]
    assert [s.id for s in won] == [ENTERPRISE_WON_STAGE_ID]

    acme = deals_by_name(
        hs, ["Acme Corp — enterprise"], "pipeline", "dealstage", "hs_is_closed_won", "amount",
        f"hs_v2_date_entered_{ENTERPRISE_WON_STAGE_ID}", "customer_success_manager",
        *HANDOFF_PROPERTIES,
    )["Acme Corp — enterprise"].properties  # fmt: skip
    assert acme["pipeline"] == ENTERPRISE_PIPELINE_ID
    assert acme["dealstage"] == ENTERPRISE_WON_STAGE_ID and acme["hs_is_closed_won"] == "true"
    assert acme["amount"] == "250000"
    assert acme[f"hs_v2_date_entered_{ENTERPRISE_WON_STAGE_ID}"] <= acme["hs_lastmodifieddate"]
    assert all(acme[name] for name in HANDOFF_PROPERTIES)


def test_owners_list_archived_ones_only_on_request(
    hs: hubspot.Client, portal: dict[str, Any]
) -> None:
    owners_api = hs.crm.owners.owners_api
    paged, after = [], None
    while True:
        page = owners_api.get_page(limit=3, after=after)
        paged += page.results
        if page.paging is None:
            break
        after = page.paging.next.after
    assert len(paged) == len({o.id for o in paged}) == 7
    assert all(not o.archived and o.user_id for o in paged)
    assert "dana.whitfield@handoff-demo.example" in {o.email for o in paged}
    (archived,) = owners_api.get_page(archived=True).results
    assert archived.archived is True and archived.user_id is None
    assert archived.user_id_including_inactive and archived.id not in {o.id for o in paged}
    soylent = hs.crm.deals.basic_api.get_by_id(
        portal["soylent"], properties=["customer_success_manager"]
    )
    assert soylent.properties["customer_success_manager"] == archived.id


EDGE_CHECKS: dict[str, Any] = {
    "Northwind Traders — no primary contact": lambda deal, contact: contact is None,
    "Globex — contact without email": lambda deal, contact: contact["email"] is None,
    "Initech — invalid email": lambda deal, contact: contact["email"] == "bill.lumbergh(at)initech",
    "Umbrella Health — opted out": lambda deal, contact: contact["hs_email_optout"] == "true",
    '<b>Stark</b> & "Sons" Ltd — HTML in names': lambda deal, contact: contact["firstname"]
    == "Zoë <script>alert(1)</script>",
    "北京数据科技有限公司 — Unicode names": lambda deal, contact: (
        contact["firstname"], contact["lastname"], contact["hs_language"]
    ) == ("伟", "李", "zh-cn"),
    "Hooli — header injection": lambda deal, contact: "\r\nBcc:" in contact["firstname"],
    "Pied Piper — no owner": lambda deal, contact: deal["hubspot_owner_id"] is None,
    "Vandelay Industries — no amount": lambda deal, contact: deal["amount"] is None,
    "Soylent — inactive CSM": lambda deal, contact: deal["customer_success_manager"] is not None,
    "Acme Corp — enterprise": lambda deal, contact: deal["pipeline"] == ENTERPRISE_PIPELINE_ID,
    "Initrode — existing customer upgrade": lambda deal, contact: deal["dealtype"]
    == "existingbusiness",
    "Cyberdyne Systems — renewal": lambda deal, contact: deal["dealtype"] == "existingbusiness",
    "Tanaka Robotics — client in Tokyo": lambda deal, contact: (
        contact["hs_timezone"], contact["country"], contact["hs_language"]
    ) == ("asia_slash_tokyo", "Japan", "ja"),
    "Sunset Pictures — client in Los Angeles": lambda deal, contact: from_hubspot_timezone(
        contact["hs_timezone"]
    ) == "America/Los_Angeles",
    "Weber Maschinenbau — country only, formal greeting": lambda deal, contact: (
        contact["country"], contact["hs_timezone"], contact["greeting_name"]
    ) == ("Germany", None, "Frau Dr. Weber"),
}  # fmt: skip


def test_the_named_edge_case_deals_are_the_salesforce_orgs(hs: hubspot.Client) -> None:
    assert PORTAL_EDGE_CASE_DEALS == EDGE_CASE_DEALS and set(EDGE_CHECKS) == set(EDGE_CASE_DEALS)
    deals = deals_by_name(
        hs, list(EDGE_CASE_DEALS), "pipeline", "dealstage", "hs_is_closed_won", "amount",
        "dealtype", "hubspot_owner_id", "customer_success_manager",
    )  # fmt: skip
    assert set(deals) == set(EDGE_CASE_DEALS)
    assert all(d.properties["hs_is_closed_won"] == "true" for d in deals.values())
    links = hs.crm.associations.v4.batch_api.get_page(
        "deals", "contacts", {"inputs": [{"id": d.id} for d in deals.values()]}
    )
    primary = {
        result._from.id: next(
            str(to.to_object_id)
            for to in result.to
            if any(t.label == "Primary" for t in to.association_types)
        )
        for result in links.results
    }
    contacts = hs.crm.contacts.batch_api.read(
        {
            "inputs": [{"id": i} for i in primary.values()],
            "properties": ["firstname", "lastname", "email", "hs_email_optout", "hs_timezone",
                           "country", "hs_language", "greeting_name"],
        }
    )  # fmt: skip
    by_id = {c.id: c.properties for c in contacts.results}
    for name, check in EDGE_CHECKS.items():
        deal = deals[name]
        contact = by_id.get(primary.get(deal.id, ""))
        assert check(deal.properties, contact), name


# -- associations ----------------------------------------------------------------------------


def test_deal_contacts_come_with_the_primary_label(
    hs: hubspot.Client, portal: dict[str, Any]
) -> None:
    northwind = deals_by_name(hs, ["Northwind Traders — no primary contact"])
    northwind_id = northwind["Northwind Traders — no primary contact"].id
    v4 = hs.crm.associations.v4
    answer = v4.batch_api.get_page(
        "deals", "contacts", {"inputs": [{"id": portal["acme"]}, {"id": northwind_id}, {"id": "1"}]}
    )
    assert isinstance(answer, BatchResponsePublicAssociationMultiWithLabelWithErrors)
    assert answer.num_errors == 2
    assert {e.context["fromObjectId"][0] for e in answer.errors} == {northwind_id, "1"}
    assert {e.sub_category for e in answer.errors} == {"crm.associations.NO_ASSOCIATIONS_FOUND"}
    (acme,) = answer.results
    assert acme._from.id == portal["acme"] and len(acme.to) >= 2
    kinds = {
        str(to.to_object_id): [(t.category, t.type_id, t.label) for t in to.association_types]
        for to in acme.to
    }
    primary = [i for i, types in kinds.items() if len(types) == 2]
    assert len(primary) == 1
    assert kinds[primary[0]] == [
        ("HUBSPOT_DEFINED", 3, None),
        ("USER_DEFINED", PRIMARY_CONTACT_LABEL_TYPE_ID, "Primary"),
    ]
    assert all(
        types == [("HUBSPOT_DEFINED", 3, None)] for i, types in kinds.items() if i != primary[0]
    )
    champion = hs.crm.contacts.basic_api.get_by_id(primary[0], properties=["email"])
    assert champion.properties["email"] == "wile.coyote@acme.example"

    only_acme = v4.batch_api.get_page("deals", "contacts", {"inputs": [{"id": portal["acme"]}]})
    assert isinstance(only_acme, BatchResponsePublicAssociationMultiWithLabel)
    labels = v4.schema.definitions_api.get_all("deals", "contacts").results
    assert ("USER_DEFINED", PRIMARY_CONTACT_LABEL_TYPE_ID, "Primary") in {
        (label.category, label.type_id, label.label) for label in labels
    }
    company = v4.batch_api.get_page("deals", "companies", {"inputs": [{"id": portal["acme"]}]})
    (to_company,) = company.results[0].to
    assert {(t.type_id, t.label) for t in to_company.association_types} == {
        (341, None),
        (5, "Primary"),
    }


# -- contacts and companies ------------------------------------------------------------------


def test_batch_reads_answer_207_for_unknown_ids_and_never_in_input_order(
    hs: hubspot.Client, server: SandboxServer
) -> None:
    contacts = server.hubspot_store.page("contacts", archived=False, after_id=0, limit=6)
    ids = [str(c.id) for c in contacts]
    properties = ["email", "hs_timezone", "country", "hs_language", "greeting_name"]
    full = hs.crm.contacts.batch_api.read({"inputs": [{"id": i} for i in ids],
                                           "properties": properties})  # fmt: skip
    assert isinstance(full, ContactsBatch) and full.status == "COMPLETE"
    assert sorted(c.id for c in full.results) == sorted(ids)
    assert [c.id for c in full.results] != ids, "HubSpot does not keep the input order"
    assert set(full.results[0].properties) == {*properties, "createdate", "hs_object_id",
                                               "lastmodifieddate"}  # fmt: skip

    partial = hs.crm.contacts.batch_api.read(
        {"inputs": [{"id": ids[0]}, {"id": "1"}, {"id": "banana"}], "properties": properties}
    )
    assert isinstance(partial, ContactsPartial) and partial.num_errors == 1
    (error,) = partial.errors
    assert error.category == "OBJECT_NOT_FOUND" and error.context == {"ids": ["1", "banana"]}
    assert [c.id for c in partial.results] == [ids[0]]
    with pytest.raises(hubspot.crm.contacts.ApiException) as caught:
        hs.crm.contacts.batch_api.read({"inputs": [{"id": str(i)} for i in range(101)]})
    assert caught.value.status == 400

    companies = hs.crm.companies.batch_api.read(
        {"inputs": [{"id": str(c.properties["associatedcompanyid"])} for c in contacts],
         "properties": ["name", "country", "hubspot_owner_id", "time_zone"]}
    )  # fmt: skip
    assert companies.results and all(c.properties["name"] for c in companies.results)
    assert all(c.properties["hubspot_owner_id"].isdigit() for c in companies.results)
    zones = [c.properties["time_zone"] for c in companies.results if c.properties["time_zone"]]
    assert all("/" in zone for zone in zones), "the custom time_zone holds IANA names"


def test_contacts_batch_update_writes_the_opt_out_back(
    hs: hubspot.Client, server: SandboxServer
) -> None:
    contact = server.hubspot_store.page("contacts", archived=False, after_id=0, limit=1)[0]
    batch = hs.crm.contacts.batch_api
    with pytest.raises(hubspot.crm.contacts.ApiException) as caught:
        batch.update(
            {"inputs": [{"id": str(contact.id), "properties": {"hs_email_optout": "true"}},
                        {"id": str(contact.id), "properties": {"hs_email_optout": "maybe"}}]}
        )  # fmt: skip
    assert caught.value.status == 400 and "INVALID_BOOLEAN" in error_body(caught.value)["message"]
    assert "hs_email_optout" not in server.hubspot_store.get("contacts", contact.id).properties

    answer = batch.update(
        {"inputs": [{"id": str(contact.id), "properties": {"hs_email_optout": "true"}},
                    {"id": "1", "properties": {"hs_email_optout": "true"}}]}
    )  # fmt: skip
    assert isinstance(answer, ContactsPartial) and answer.errors[0].context == {"ids": ["1"]}
    (updated,) = answer.results
    assert updated.properties["hs_email_optout"] == "true"
    assert updated.updated_at > contact_time(contact.updated_ms)
    read = hs.crm.contacts.basic_api.get_by_id(str(contact.id), properties=["hs_email_optout"])
    assert read.properties["hs_email_optout"] == "true"


def contact_time(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC)


# -- tasks ------------------------------------------------------------------------------------


def test_tasks_batch_create_answers_201_in_an_order_that_is_not_the_input_order(
    hs: hubspot.Client, portal: dict[str, Any]
) -> None:
    keys = [f"create-{n}" for n in range(5)]
    inputs = [task_input(portal["acme"], key, portal["ae"]) for key in keys]
    inputs[0]["associations"].append(
        {"to": {"id": str(_acme_contact(hs, portal))},
         "types": [{"associationCategory": "HUBSPOT_DEFINED", "associationTypeId": 204}]}
    )  # fmt: skip
    answer = hs.crm.objects.tasks.batch_api.create({"inputs": inputs})
    assert isinstance(answer, TasksBatch) and answer.status == "COMPLETE"
    traced = [task.object_write_trace_id for task in answer.results]
    assert sorted(traced) == keys and traced != keys
    for task in answer.results:
        key = task.object_write_trace_id
        assert task.properties["hs_task_subject"] == f"Kick-off call ({key})"
        assert task.properties["handoff_key"] == key
        assert task.properties["hs_task_priority"] == "HIGH"
        assert task.properties["hs_timestamp"] == "2026-11-30T09:00:00.000Z"

    found = tasks_with_key(hs, keys)
    assert sorted(t.properties["handoff_key"] for t in found) == keys
    on_deal = hs.crm.objects.tasks.search_api.do_search(
        public_object_search_request={
            "filterGroups": [
                {"filters": [
                    {"propertyName": "associations.deal", "operator": "EQ",
                     "value": portal["acme"]},
                    {"propertyName": "hs_task_body", "operator": "CONTAINS_TOKEN",
                     "value": "create-3"},
                ]}
            ]
        }
    )  # fmt: skip
    assert [t.id for t in on_deal.results] == [
        t.id for t in answer.results if t.object_write_trace_id == "create-3"
    ]
    links = hs.crm.associations.v4.batch_api.get_page(
        "tasks", "contacts", {"inputs": [{"id": t.id} for t in answer.results]}
    )
    assert [r._from.id for r in links.results] == [
        t.id for t in answer.results if t.object_write_trace_id == "create-0"
    ]


def _acme_contact(hs: hubspot.Client, portal: dict[str, Any]) -> int:
    links = hs.crm.associations.v4.batch_api.get_page(
        "deals", "contacts", {"inputs": [{"id": portal["acme"]}]}
    )
    return links.results[0].to[0].to_object_id


def test_tasks_batch_create_answers_207_when_some_inputs_fail(
    hs: hubspot.Client, portal: dict[str, Any]
) -> None:
    deal, owner = portal["acme"], portal["ae"]
    inputs = [
        task_input(deal, "partial-ok", owner),
        task_input(deal, "partial-unknown-owner", "12345"),
        task_input(deal, "partial-archived-owner", portal["archived_owner"]),
        task_input(deal, "partial-no-subject", owner, hs_task_subject=None),
        task_input("999", "partial-no-deal", owner),
    ]
    answer = hs.crm.objects.tasks.batch_api.create({"inputs": inputs})
    assert isinstance(answer, TasksPartial) and answer.num_errors == 4
    assert [t.object_write_trace_id for t in answer.results] == ["partial-ok"]
    failed = {e.context["objectWriteTraceId"][0]: e for e in answer.errors}
    assert set(failed) == {i["objectWriteTraceId"] for i in inputs[1:]}
    assert all(e.status == "error" and e.category and e.message for e in failed.values())
    assert "hs_task_subject" in failed["partial-no-subject"].message
    assert "hubspot_owner_id" in failed["partial-archived-owner"].message
    keys = [i["objectWriteTraceId"] for i in inputs]
    assert [t.properties["handoff_key"] for t in tasks_with_key(hs, keys)] == ["partial-ok"]


def test_malformed_task_batches_are_refused_whole(
    hs: hubspot.Client, portal: dict[str, Any]
) -> None:
    deal, owner = portal["acme"], portal["ae"]
    too_many = [task_input(deal, f"many-{n}", owner) for n in range(101)]
    bad_value = [
        task_input(deal, "whole-ok", owner),
        task_input(deal, "whole-bad", owner, hs_task_priority="URGENT"),
    ]
    for inputs in (too_many, bad_value):
        with pytest.raises(TasksApiException) as caught:
            hs.crm.objects.tasks.batch_api.create({"inputs": inputs})
        assert caught.value.status == 400
        assert error_body(caught.value)["category"] == "VALIDATION_ERROR"
    assert tasks_with_key(hs, ["many-0", "many-100", "whole-ok", "whole-bad"]) == []


def test_a_502_after_a_committed_batch_create_leaves_tasks_findable_by_key(
    hs: hubspot.Client, server: SandboxServer, portal: dict[str, Any]
) -> None:
    server.faults.add(
        method="POST", path_contains="/crm/v3/objects/tasks/batch/create", status=502,
        after_commit=True,
    )  # fmt: skip
    keys = ["lost-answer-1", "lost-answer-2"]
    with pytest.raises(TasksApiException) as caught:
        hs.crm.objects.tasks.batch_api.create(
            {"inputs": [task_input(portal["acme"], key, portal["ae"]) for key in keys]}
        )
    assert caught.value.status == 502
    assert error_body(caught.value)["category"] == "INTERNAL_ERROR"
    assert sorted(t.properties["handoff_key"] for t in tasks_with_key(hs, keys)) == keys


def test_a_429_on_a_post_carries_retry_after_and_writes_nothing(
    hs: hubspot.Client, server: SandboxServer, portal: dict[str, Any]
) -> None:
    server.faults.add(
        method="POST", path_contains="/crm/v3/objects/tasks/batch/create", status=429,
        retry_after=7,
    )  # fmt: skip
    injected = server.hubspot_stats()["faults_injected"]
    inputs = [task_input(portal["acme"], "throttled", portal["ae"])]
    with pytest.raises(TasksApiException) as caught:
        hs.crm.objects.tasks.batch_api.create({"inputs": inputs})
    assert caught.value.status == 429 and caught.value.headers["Retry-After"] == "7"
    body = error_body(caught.value)
    assert body["category"] == "RATE_LIMITS" and body["policyName"] == "TEN_SECONDLY_ROLLING"
    assert tasks_with_key(hs, ["throttled"]) == []
    assert server.hubspot_stats()["faults_injected"] == injected + 1
    answer = hs.crm.objects.tasks.batch_api.create({"inputs": inputs})
    assert [t.properties["handoff_key"] for t in answer.results] == ["throttled"]


def test_search_finds_new_records_only_after_the_index_delay(
    hs: hubspot.Client, server: SandboxServer, portal: dict[str, Any]
) -> None:
    server.hubspot_api.limits.search_index_delay = 0.4
    hs.crm.objects.tasks.batch_api.create(
        {"inputs": [task_input(portal["acme"], "indexed-later", portal["ae"])]}
    )
    assert tasks_with_key(hs, ["indexed-later"]) == []
    time.sleep(0.5)
    assert len(tasks_with_key(hs, ["indexed-later"])) == 1


# -- activities (engagements) ---------------------------------------------------------------

MIDNIGHT = datetime.combine(TODAY, datetime.min.time(), UTC)
ENGAGEMENT_PROPERTIES = {
    "meetings": ["hs_meeting_title", "hs_meeting_body", "hs_meeting_start_time",
                 "hs_meeting_end_time", "hs_meeting_outcome", "hs_timestamp", "hubspot_owner_id"],
    "emails": ["hs_email_subject", "hs_email_text", "hs_email_direction", "hs_timestamp",
               "hubspot_owner_id"],
    "calls": ["hs_call_title", "hs_call_body", "hs_call_direction", "hs_call_status",
              "hs_timestamp", "hubspot_owner_id"],
    "notes": ["hs_note_body", "hs_timestamp", "hubspot_owner_id"],
    "tasks": ["hs_task_subject", "hs_task_body", "hs_task_status", "hs_timestamp",
              "hubspot_owner_id", "handoff_key"],
}  # fmt: skip
# HubSpot's default association type ids: (to deal, deal to, to contact, contact to).
ENGAGEMENT_TYPE_IDS = {
    "meetings": (212, 211, 200, 199),
    "emails": (210, 209, 198, 197),
    "calls": (206, 205, 194, 193),
    "notes": (214, 213, 202, 201),
    "tasks": (216, 215, 204, 203),
}
KINDS = {
    "meeting": "meetings",
    "email": "emails",
    "call": "calls",
    "note": "notes",
    "task": "tasks",
}


def engagements_of(hs: hubspot.Client, from_type: str, ids: list[str], to_type: str) -> dict:
    """``{from id: {to id: [(category, typeId)]}}`` through the v4 batch read."""
    answer = hs.crm.associations.v4.batch_api.get_page(
        from_type, to_type, {"inputs": [{"id": i} for i in ids]}
    )
    return {
        r._from.id: {
            str(to.to_object_id): [(t.category, t.type_id) for t in to.association_types]
            for to in r.to
        }
        for r in answer.results
    }


def modified_between(server: SandboxServer, object_type: str, lo: int, hi: int) -> list[str]:
    records = server.hubspot_store.page(object_type, archived=False, after_id=0, limit=10**6)
    chosen = sorted(
        (r for r in records if lo <= r.updated_ms < hi), key=lambda r: (r.updated_ms, r.id)
    )
    return [str(r.id) for r in chosen]


@pytest.mark.parametrize("object_type", ENGAGEMENT_TYPES)
def test_engagements_are_searched_by_last_modified_and_batch_read(
    hs: hubspot.Client, server: SandboxServer, object_type: str
) -> None:
    api = getattr(hs.crm.objects, object_type)
    lo, hi = to_ms(MIDNIGHT - timedelta(days=60)), to_ms(MIDNIGHT)
    expected = modified_between(server, object_type, lo, hi)
    assert expected, "the seed logs every kind of activity"
    properties = ENGAGEMENT_PROPERTIES[object_type]
    window = [
        {"propertyName": "hs_lastmodifieddate", "operator": "GTE", "value": str(lo)},
        {"propertyName": "hs_lastmodifieddate", "operator": "LT", "value": str(hi)},
    ]
    seen, after = [], None
    while True:
        page = api.search_api.do_search(
            public_object_search_request={
                "filterGroups": [{"filters": window}],
                "sorts": [{"propertyName": "hs_lastmodifieddate", "direction": "ASCENDING"}],
                "properties": properties,
                "limit": 200,
                "after": after,
            }
        )
        assert page.total == len(expected)
        seen += page.results
        if page.paging is None:
            break
        after = page.paging.next.after
    assert [r.id for r in seen] == expected, "ascending, ties in id order, every record once"
    assert set(seen[0].properties) == {
        *properties, "hs_createdate", "hs_lastmodifieddate", "hs_object_id"
    }  # fmt: skip
    assert all(HS_DATETIME_RE.match(r.properties["hs_timestamp"]) for r in seen)

    ids = expected[:100]
    read = api.batch_api.read({"inputs": [{"id": i} for i in ids], "properties": properties})
    assert sorted(r.id for r in read.results) == sorted(ids)
    with pytest.raises(
        importlib.import_module(f"hubspot.crm.objects.{object_type}").ApiException
    ) as caught:
        api.batch_api.read({"inputs": [{"id": i} for i in expected[:1] * 101]})
    assert caught.value.status == 400
    assert error_body(caught.value)["category"] == "VALIDATION_ERROR"


@pytest.mark.parametrize(
    ("object_type", "name", "values"),
    [
        ("meetings", "hs_meeting_outcome",
         {"SCHEDULED", "COMPLETED", "RESCHEDULED", "NO_SHOW", "CANCELED"}),
        ("emails", "hs_email_direction", {"EMAIL", "INCOMING_EMAIL", "FORWARDED_EMAIL"}),
        ("calls", "hs_call_direction", {"INBOUND", "OUTBOUND"}),
        ("calls", "hs_call_status", {"COMPLETED", "NO_ANSWER", "BUSY", "FAILED", "CANCELED"}),
        ("tasks", "hs_task_status", {"COMPLETED", "NOT_STARTED"}),
    ],
)  # fmt: skip
def test_engagement_outcomes_and_directions_are_hubspots_enumerations(
    hs: hubspot.Client, object_type: str, name: str, values: set[str]
) -> None:
    described = hs.crm.properties.core_api.get_by_name(object_type, name)
    assert described.type == "enumeration"
    assert values <= {option.value for option in described.options}


def test_engagements_are_associated_both_ways_with_hubspots_type_ids(
    hs: hubspot.Client,
) -> None:
    name = HISTORY_CASES[0].deal  # the healthy client: every kind of activity
    deal_id = deals_by_name(hs, [name])[name].id
    [contact_id] = engagements_of(hs, "deals", [deal_id], "contacts")[deal_id]
    for object_type, (to_deal, deal_to, to_contact, contact_to) in ENGAGEMENT_TYPE_IDS.items():
        from_deal = engagements_of(hs, "deals", [deal_id], object_type)[deal_id]
        assert from_deal and all(
            types == [("HUBSPOT_DEFINED", deal_to)] for types in from_deal.values()
        ), object_type
        back = engagements_of(hs, object_type, list(from_deal), "deals")
        assert back == {i: {deal_id: [("HUBSPOT_DEFINED", to_deal)]} for i in from_deal}
        to_contacts = engagements_of(hs, object_type, list(from_deal), "contacts")
        assert to_contacts == {
            i: {contact_id: [("HUBSPOT_DEFINED", to_contact)]} for i in from_deal
        }
        from_contact = engagements_of(hs, "contacts", [contact_id], object_type)[contact_id]
        assert set(from_contact) == set(from_deal)
        assert {t for types in from_contact.values() for t in types} == {
            ("HUBSPOT_DEFINED", contact_to)
        }
        labels = hs.crm.associations.v4.schema.definitions_api.get_all(object_type, "deals")
        assert [(label.category, label.type_id) for label in labels.results] == [
            ("HUBSPOT_DEFINED", to_deal)
        ]


def test_association_reads_take_1000_inputs_and_page_each_input_on_its_own(
    hs: hubspot.Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    name = HISTORY_CASES[0].deal
    deal_id = deals_by_name(hs, [name])[name].id
    batch = hs.crm.associations.v4.batch_api
    unknown = [{"id": str(n)} for n in range(1, 1000)]
    answer = batch.get_page("deals", "emails", {"inputs": [{"id": deal_id}, *unknown]})
    assert answer.num_errors == 999 and [r._from.id for r in answer.results] == [deal_id]
    with pytest.raises(hubspot.crm.associations.v4.ApiException) as caught:
        batch.get_page("deals", "emails", {"inputs": [{"id": deal_id}, *unknown, {"id": "0"}]})
    assert caught.value.status == 400
    body = error_body(caught.value)
    assert body["category"] == "VALIDATION_ERROR" and "1000" in body["message"]

    everything = set(engagements_of(hs, "deals", [deal_id], "emails")[deal_id])
    monkeypatch.setattr(hubspot_api, "ASSOCIATION_PAGE", 3)
    read: list[str] = []
    inputs: list[dict[str, str]] = [{"id": deal_id}]
    while inputs:
        [result] = batch.get_page("deals", "emails", {"inputs": inputs}).results
        assert len(result.to) <= 3
        read += [str(to.to_object_id) for to in result.to]
        inputs = [{"id": deal_id, "after": result.paging.next.after}] if result.paging else []
    assert len(read) == len(everything) > 3 and set(read) == everything


def test_archived_engagements_leave_search_and_keep_their_associations(
    hs: hubspot.Client, portal: dict[str, Any]
) -> None:
    notes = hs.crm.objects.notes
    to_acme = {
        "to": {"id": portal["acme"]},
        "types": [{"associationCategory": "HUBSPOT_DEFINED", "associationTypeId": 214}],
    }
    with pytest.raises(hubspot.crm.objects.notes.ApiException) as caught:
        notes.basic_api.create({"properties": {"hs_note_body": "No date"}})
    assert caught.value.status == 400 and "hs_timestamp" in error_body(caught.value)["message"]
    created = notes.basic_api.create(
        {"properties": {"hs_note_body": "<p>Archive me</p>",
                        "hs_timestamp": "2026-11-20T10:00:00Z"},
         "associations": [to_acme]}
    )  # fmt: skip
    by_id = {"propertyName": "hs_object_id", "operator": "EQ", "value": created.id}
    search = {"filterGroups": [{"filters": [by_id]}]}
    assert notes.search_api.do_search(public_object_search_request=search).total == 1
    assert created.id in engagements_of(hs, "deals", [portal["acme"]], "notes")[portal["acme"]]
    notes.basic_api.archive(created.id)
    assert notes.search_api.do_search(public_object_search_request=search).total == 0
    archived = notes.basic_api.get_page(archived=True, limit=100, properties=["hs_note_body"])
    [gone] = [note for note in archived.results if note.id == created.id]
    assert gone.archived and gone.archived_at and gone.properties["hs_note_body"]
    assert created.id not in engagements_of(hs, "deals", [portal["acme"]], "notes").get(
        portal["acme"], {}
    ), "associations to an archived record are not answered"
    assert engagements_of(hs, "notes", [created.id], "deals") == {
        created.id: {portal["acme"]: [("HUBSPOT_DEFINED", 214)]}
    }, "an archived record's own associations are (the sandbox's choice, see hubspot_api)"


def test_history_cases_are_named_clients_with_their_histories(hs: hubspot.Client) -> None:
    names = [case.deal for case in HISTORY_CASES]
    deals = deals_by_name(
        hs, names, "dealstage", "amount", "hs_v2_date_entered_closedwon", "closedate",
        "customer_success_manager", "scope_change_requested", *HANDOFF_PROPERTIES,
    )  # fmt: skip
    assert set(deals) == set(names)
    ids = [deals[name].id for name in names]
    contacts = engagements_of(hs, "deals", ids, "contacts")
    people = hs.crm.contacts.batch_api.read(
        {"inputs": [{"id": next(iter(contacts[i]))} for i in ids],
         "properties": ["email", "country", "hs_timezone"]}
    )  # fmt: skip
    by_email = {c.properties["email"]: c.properties for c in people.results}
    linked = {kind: engagements_of(hs, "deals", ids, kind) for kind in ENGAGEMENT_TYPES}
    for case in HISTORY_CASES:
        deal = deals[case.deal]
        props, won = deal.properties, case.won_at(TODAY)
        assert props["dealstage"] == "closedwon"
        assert props["hs_v2_date_entered_closedwon"] == format_ms(to_ms(won)), case.deal
        assert props["amount"] == str(int(case.amount)) and props["customer_success_manager"]
        assert props["scope_change_requested"] == ("true" if case.scope_change else "false")
        missing = {f"handoff_{key}" for key in case.missing_doc}
        assert {n for n in HANDOFF_PROPERTIES if not props[n]} == missing, case.deal
        [(contact_id, types)] = contacts[deal.id].items()
        assert ("USER_DEFINED", PRIMARY_CONTACT_LABEL_TYPE_ID) in types
        person = by_email[case.email]
        assert from_hubspot_timezone(person["hs_timezone"]) == case.time_zone
        assert person["country"] == case.country
        history = case.history(won)
        for kind, object_type in KINDS.items():
            expected = sum(item.kind == kind for item in history)
            assert len(linked[object_type].get(deal.id, {})) == expected, (case.deal, kind)


def test_every_recent_win_has_the_healthy_history_the_salesforce_org_gets(
    server: SandboxServer,
) -> None:
    store = server.hubspot_store
    cases = {case.deal for case in HISTORY_CASES}
    won: dict[int, tuple[str, datetime]] = {}
    for deal in live_deals(server):
        props = deal.properties
        entered = props.get(f"hs_v2_date_entered_{props['dealstage']}")
        if props.get("hs_is_closed_won") == "true" and props["dealname"] not in cases and entered:
            moment = datetime.fromisoformat(entered.replace("Z", "+00:00"))
            won[deal.id] = (props["dealname"], moment)
    recent = {i for i, (_, at) in won.items() if at >= MIDNIGHT - timedelta(days=HISTORY_DAYS)}
    assert len(recent) >= len(EDGE_CASE_DEALS) + 4 and len(won) > len(recent)
    emails = store.associations("deals", list(won), "emails")
    for deal_id, (name, won_at) in won.items():
        expected = healthy_history(name, won_at, MIDNIGHT) if deal_id in recent else []
        sent = [e for e in expected if e.kind == "email"]
        stored = store.get_many("emails", emails.get(deal_id, {}))
        stamps = sorted(r.properties["hs_timestamp"] for r in stored.values())
        assert stamps == sorted(format_ms(to_ms(e.at)) for e in sent), name


def test_activities_per_deal_sets_the_load_and_leaves_every_other_record(tmp_path: Path) -> None:
    loads = {}
    for load in (None, 6):
        store = HubSpotStore(tmp_path / f"load-{load}.db")
        summary = seed_portal(store, seed=3, deals=40, today=TODAY, activities_per_deal=load)
        loads[load] = summary
        store.close()
    assert _dump(tmp_path / "load-None.db", skip_activities=True) == _dump(
        tmp_path / "load-6.db", skip_activities=True
    )
    assert loads[6]["emails"] > loads[None]["emails"]
    store = HubSpotStore(tmp_path / "load-6.db")
    deals = {d.properties["dealname"]: d for d in store.page("deals", archived=False, after_id=0,
                                                              limit=10**6)}  # fmt: skip
    name = EDGE_CASE_DEALS[0]
    won = datetime.fromisoformat(deals[name].properties["closedate"].replace("Z", "+00:00"))
    linked = sum(
        len(store.associations("deals", [deals[name].id], kind).get(deals[name].id, {}))
        for kind in ENGAGEMENT_TYPES
    )
    assert linked == len(healthy_history(name, won, MIDNIGHT, count=6))
    store.close()


# -- rate limits and authentication ----------------------------------------------------------


def test_search_is_limited_to_five_requests_a_second_per_token(
    hs: hubspot.Client, server: SandboxServer
) -> None:
    assert HubSpotLimits().search_per_second == 5, "on by default, as in HubSpot"
    server.hubspot_api.limits.search_per_second = 5
    refused = server.hubspot_stats()["rate_limited"]
    server.hubspot_api.reset_rate_windows()
    for _ in range(5):
        search_deals(hs, limit=1)
    with pytest.raises(DealsApiException) as caught:
        search_deals(hs, limit=1)
    assert caught.value.status == 429 and caught.value.headers["Retry-After"] == "1"
    body = error_body(caught.value)
    assert (body["category"], body["policyName"]) == ("RATE_LIMITS", "SECONDLY")
    assert server.hubspot_stats()["rate_limited"] == refused + 1
    hs.crm.owners.owners_api.get_page(limit=1)  # other endpoints are not held back
    time.sleep(1.0)
    search_deals(hs, limit=1)

    server.hubspot_api.limits.search_per_second = None
    for _ in range(8):
        search_deals(hs, limit=1)


def test_bursts_past_the_interval_limit_get_429_and_headers_count_down(
    server: SandboxServer,
) -> None:
    server.hubspot_api.reset_rate_windows()
    # A client that does not retry: urllib3 by default retries a GET answered 429 with
    # Retry-After by itself (POSTs never), which would hide the refusal.
    quiet = client(server, retry=Retry(total=0, respect_retry_after_header=False))
    limits = server.hubspot_api.limits
    limits.update({"enforce_interval": True, "interval_max": 3, "interval_ms": 10_000})
    try:
        _, status, headers = quiet.crm.owners.owners_api.get_page_with_http_info(limit=1)
        assert status == 200
        assert headers["X-HubSpot-RateLimit-Max"] == "3"
        assert headers["X-HubSpot-RateLimit-Interval-Milliseconds"] == "10000"
        assert int(headers["X-HubSpot-RateLimit-Daily"]) == 1_000_000
        assert int(headers["X-HubSpot-RateLimit-Daily-Remaining"]) < 1_000_000
        remaining = int(headers["X-HubSpot-RateLimit-Remaining"])
        while remaining:
            _, _, headers = quiet.crm.owners.owners_api.get_page_with_http_info(limit=1)
            assert int(headers["X-HubSpot-RateLimit-Remaining"]) == remaining - 1
            remaining -= 1
        with pytest.raises(hubspot.crm.owners.ApiException) as caught:
            quiet.crm.owners.owners_api.get_page(limit=1)
        assert caught.value.status == 429 and 1 <= int(caught.value.headers["Retry-After"]) <= 10
        assert error_body(caught.value)["policyName"] == "TEN_SECONDLY_ROLLING"
    finally:
        limits.update({"enforce_interval": False, "interval_max": 190})


@pytest.mark.parametrize("token", [None, "wrong-token"], ids=["no_token", "wrong_token"])
def test_requests_without_the_token_get_401(server: SandboxServer, token: str | None) -> None:
    calls = server.hubspot_stats()["api_calls"]
    stranger = client(server, token=token)
    with pytest.raises(hubspot.crm.deals.ApiException) as caught:
        stranger.crm.deals.search_api.do_search(public_object_search_request={"limit": 1})
    assert caught.value.status == 401
    assert error_body(caught.value)["category"] == "INVALID_AUTHENTICATION"
    assert server.hubspot_stats()["api_calls"] == calls, "refused requests are not API calls"


# -- seeding ---------------------------------------------------------------------------------


def _dump(path: Path, *, skip_activities: bool = False) -> list[tuple[Any, ...]]:
    with sqlite3.connect(path) as conn:
        rows = [
            row
            for table in ("hubspot_object", "hubspot_association", "hubspot_owner")
            for row in conn.execute(f"SELECT * FROM {table} ORDER BY 1, 2, 3")
        ]
    if skip_activities:  # hubspot_object rows start with the type, associations' too
        rows = [r for r in rows if r[0] not in ENGAGEMENT_TYPES and r[2] not in ENGAGEMENT_TYPES]
    return rows


# The seed=3, deals=40 portal of TODAY before clients had histories (records, associations,
# owners): the histories added since must leave every one of them as it was.
PORTAL_BEFORE_HISTORIES = "764176914681cc8714ceaf4dcf700fbbece6eb64ce02564702f45ed95d7d6ab3"


def _digest_without_histories(path: Path) -> str:
    """A digest of the portal's records, leaving out the history cases' and every activity."""
    cases = {
        *{("deals", "dealname", case.deal) for case in HISTORY_CASES},
        *{("companies", "name", case.account) for case in HISTORY_CASES},
        *{("contacts", "email", case.email) for case in HISTORY_CASES},
    }
    digest = hashlib.sha256()
    with sqlite3.connect(path) as conn:
        objects = conn.execute(
            "SELECT object_type, id, created_ms, updated_ms, archived, archived_ms, properties "
            "FROM hubspot_object ORDER BY object_type, id"
        ).fetchall()
        skip = {
            (row[0], row[1])
            for row in objects
            if row[0] in ENGAGEMENT_TYPES
            or any(
                (row[0], name, json.loads(row[6]).get(name)) in cases
                for name in ("dealname", "name", "email")
            )
        }
        for row in objects:
            if (row[0], row[1]) not in skip:
                record = [*row[:6], json.loads(row[6])]
                digest.update(json.dumps(record, sort_keys=True, ensure_ascii=False).encode())
        for row in conn.execute("SELECT * FROM hubspot_association ORDER BY 1, 2, 3, 4, 5, 6"):
            if (row[0], row[1]) not in skip and (row[2], row[3]) not in skip:
                digest.update(json.dumps(row).encode())
        for row in conn.execute("SELECT * FROM hubspot_owner ORDER BY id"):
            digest.update(json.dumps(row).encode())
    return digest.hexdigest()


def test_histories_leave_every_record_the_portal_had_before(tmp_path: Path) -> None:
    store = HubSpotStore(tmp_path / "portal.db")
    summary = seed_portal(store, seed=3, deals=40, today=TODAY)
    store.close()
    assert summary["history_cases"] == len(HISTORY_CASES) and summary["emails"] > 0
    assert _digest_without_histories(tmp_path / "portal.db") == PORTAL_BEFORE_HISTORIES


def test_seeding_is_deterministic_and_quick_for_5000_deals(tmp_path: Path) -> None:
    for name in ("a.db", "b.db"):
        store = HubSpotStore(tmp_path / name)
        seed_portal(store, seed=3, deals=40, today=TODAY)
        store.close()
    assert _dump(tmp_path / "a.db") == _dump(tmp_path / "b.db")

    store = HubSpotStore(tmp_path / "large.db")
    started = time.perf_counter()
    summary = seed_portal(store, seed=7, deals=5000, today=TODAY)
    elapsed = time.perf_counter() - started
    # The named history clients come on top of the random deals and the edge cases.
    expected = 5000 + len(EDGE_CASE_DEALS) + len(HISTORY_CASES)
    assert summary["deals"] == expected == store.count("deals")
    assert all(summary[name] == store.count(name) > 0 for name in ENGAGEMENT_TYPES)
    assert elapsed < 5, f"seeding 5,000 deals and their histories took {elapsed:.1f} s"
    store.close()
