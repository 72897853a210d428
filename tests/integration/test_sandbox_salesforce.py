"""The sandbox CRM speaks enough Salesforce for the real simple-salesforce client.

Every test goes over HTTP through ``simple_salesforce.Salesforce`` (with a transport
adapter that turns its https:// URLs into plain http:// for the local server), so a
behaviour that passes here is one the connector can rely on.
"""

from __future__ import annotations

import json
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import requests
from requests.adapters import HTTPAdapter
from simple_salesforce import Salesforce
from simple_salesforce.exceptions import (
    SalesforceExpiredSession,
    SalesforceGeneralError,
    SalesforceMalformedRequest,
    SalesforceResourceNotFound,
)

from handoff.sandbox import (
    EDGE_CASE_DEALS,
    FaultRule,
    SandboxServer,
    SandboxStore,
    SoqlError,
    compile_soql,
    seed_org,
)
from handoff.sandbox.histories import HISTORY_CASES
from handoff.sandbox.ids import checksum, make_id

TODAY = date(2026, 11, 23)
TOKEN = "test-token"
ID_RE = re.compile(r"^[0-9A-Za-z]{18}$")
DATETIME_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}\+0000$")


class PlainHttpAdapter(HTTPAdapter):
    """simple-salesforce always builds https:// URLs; the sandbox serves plain http."""

    def send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:
        assert request.url is not None
        request.url = "http://" + request.url.removeprefix("https://")
        return super().send(request, **kwargs)


def client(server: SandboxServer, token: str = TOKEN) -> Salesforce:
    session = requests.Session()
    session.mount(f"https://127.0.0.1:{server.port}", PlainHttpAdapter())
    return Salesforce(instance_url=server.url, session_id=token, session=session)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SandboxServer]:
    db = tmp_path_factory.mktemp("sandbox") / "org.db"
    with SandboxServer(db, token=TOKEN) as running:
        seed_org(running.store, seed=7, deals=60, today=TODAY)
        yield running


@pytest.fixture(scope="module")
def sf(server: SandboxServer) -> Salesforce:
    return client(server)


@pytest.fixture(autouse=True)
def _no_faults_left(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    if "server" in request.fixturenames:
        request.getfixturevalue("server").faults.clear()


@pytest.fixture(scope="module")
def org(server: SandboxServer) -> dict[str, Any]:
    """Handy Ids from the seeded org."""
    users = server.store.rows("User")
    deals = {d["Name"]: d for d in server.store.rows("Opportunity")}
    return {
        "ae": next(u["Id"] for u in users if u["Title"] == "Account Executive"),
        "inactive": next(u["Id"] for u in users if not u["IsActive"]),
        "deal": deals["Acme Corp — enterprise"]["Id"],
        "users": {u["Id"]: u for u in users},
    }


def task(org: dict[str, Any], subject: str, **changes: Any) -> dict[str, Any]:
    record = {
        "attributes": {"type": "Task"},
        "Subject": subject,
        "OwnerId": org["ae"],
        "WhatId": org["deal"],
        "ActivityDate": "2026-11-30",
        "Priority": "High",
        "Status": "Not Started",
        "Description": "Kick-off call",
        "IsReminderSet": True,
        "ReminderDateTime": "2026-11-29T09:00:00Z",
    }
    record.update(changes)
    return record


def count_tasks(sf: Salesforce, subject_prefix: str) -> int:
    escaped = subject_prefix.replace("\\", "\\\\").replace("'", "\\'")
    soql = f"SELECT COUNT() FROM Task WHERE Subject LIKE '{escaped}%'"
    return int(sf.query(soql)["totalSize"])


def add_fault(server: SandboxServer, **rule: Any) -> None:
    added = requests.post(f"{server.url}/__sandbox__/faults", json=rule, timeout=5)
    assert added.status_code == 201, added.text


def keyed_tasks(server: SandboxServer, *keys: str) -> list[dict[str, Any]]:
    """Tasks stored under these dedupe keys, read from the store, not over the API."""
    return [r for r in server.store.rows("Task") if r["Handoff_Key__c"] in keys]


# -- queries -------------------------------------------------------------------------------------


def test_ids_are_real_18_char_salesforce_ids(org: dict[str, Any]) -> None:
    deal = org["deal"]
    assert ID_RE.match(deal) and deal.startswith("006")
    assert deal[15:] == checksum(deal[:15])
    assert org["ae"].startswith("005")


def test_query_returns_salesforce_shaped_records_with_nested_lookups(sf: Salesforce) -> None:
    soql = (
        "SELECT Id, Name, Owner.Name, Account.Name, IsWon, Amount, CloseDate, SystemModstamp, "
        "Customer_Success_Manager__r.Email, Customer_Success_Manager__r.IsActive "
        "FROM Opportunity WHERE Name IN ('Pied Piper — no owner', 'Acme Corp — enterprise') "
        "ORDER BY Name"
    )
    result = sf.query(soql)
    assert result["totalSize"] == 2 and result["done"] is True
    acme, pied_piper = result["records"]
    assert list(acme) == [
        "attributes", "Id", "Name", "Owner", "Account", "IsWon", "Amount", "CloseDate",
        "SystemModstamp", "Customer_Success_Manager__r",
    ]  # fmt: skip
    assert acme["attributes"] == {
        "type": "Opportunity",
        "url": f"/services/data/v59.0/sobjects/Opportunity/{acme['Id']}",
    }
    assert acme["Owner"]["attributes"]["type"] == "User"
    assert acme["Owner"]["attributes"]["url"].startswith("/services/data/v59.0/sobjects/User/005")
    assert acme["Account"]["Name"] == "Acme Corp"
    assert acme["IsWon"] is True and acme["Amount"] == 250000.0
    assert acme["CloseDate"] == "2026-11-22" and DATETIME_RE.match(acme["SystemModstamp"])
    csm = acme["Customer_Success_Manager__r"]
    assert list(csm) == ["attributes", "Email", "IsActive"] and csm["IsActive"] is True
    assert pied_piper["Owner"] is None, "an empty lookup is a null relationship, not a dict"


def test_open_deals_have_a_null_csm_relationship(sf: Salesforce) -> None:
    soql = (
        "SELECT Id, Customer_Success_Manager__r.Name FROM Opportunity "
        "WHERE IsClosed = false LIMIT 5"
    )
    records = sf.query(soql)["records"]
    assert records and all(r["Customer_Success_Manager__r"] is None for r in records)


def test_relationship_paths_two_levels_deep_nest_like_salesforce(
    sf: Salesforce, org: dict[str, Any]
) -> None:
    ownerless = sf.Account.create({"Name": "Ownerless Ltd"})["id"]
    for name, extra in (
        ("Two levels — account without owner", {"AccountId": ownerless}),
        ("Two levels — no account", {}),
    ):
        sf.Opportunity.create(
            {"Name": name, "StageName": "Prospecting", "CloseDate": "2026-12-31", **extra}
        )
    soql = (
        "SELECT Id, Account.Owner.Name, Account.Owner.Email, Account.Owner.IsActive, "
        "Account.OwnerId FROM Opportunity WHERE Name IN ('Acme Corp — enterprise', "
        "'Two levels — account without owner', 'Two levels — no account') ORDER BY Name"
    )
    acme, no_owner, no_account = sf.query(soql)["records"]
    assert list(acme) == ["attributes", "Id", "Account"]
    account = acme["Account"]
    assert list(account) == ["attributes", "Owner", "OwnerId"]
    assert account["attributes"]["type"] == "Account"
    owner = account["Owner"]
    assert owner["attributes"] == {
        "type": "User",
        "url": f"/services/data/v59.0/sobjects/User/{account['OwnerId']}",
    }
    user = org["users"][account["OwnerId"]]
    assert owner == {
        "attributes": owner["attributes"],
        "Name": user["Name"],
        "Email": user["Email"],
        "IsActive": True,
    }
    assert no_owner["Account"]["attributes"]["url"].endswith(f"/Account/{ownerless}")
    assert no_owner["Account"]["Owner"] is None and no_owner["Account"]["OwnerId"] is None
    assert no_account["Account"] is None, "a missing parent is null at the first level too"


def test_where_and_order_by_follow_two_level_paths(
    sf: Salesforce, server: SandboxServer, org: dict[str, Any]
) -> None:
    account_owners = {a["Id"]: org["users"].get(a["OwnerId"]) for a in server.store.rows("Account")}
    wins = [
        (d["Id"], account_owners[d["AccountId"]]["Name"])
        for d in server.store.rows("Opportunity")
        if d["IsWon"] and account_owners.get(d["AccountId"])
    ]
    wins.sort()
    wins.sort(key=lambda win: win[1].lower(), reverse=True)
    soql = (
        "SELECT Id, Account.Owner.Name FROM Opportunity "
        "WHERE IsWon = true AND Account.Owner.IsActive = true "
        "ORDER BY Account.Owner.Name DESC, Id"
    )
    records = sf.query_all(soql)["records"]
    assert [(r["Id"], r["Account"]["Owner"]["Name"]) for r in records] == wins
    assert len({name for _, name in wins}) > 1


def test_relationship_paths_go_deeper_but_not_beyond_five_levels(sf: Salesforce) -> None:
    soql = (
        "SELECT Contact.Account.Owner.Name, Opportunity.Account.Owner.Email "
        "FROM OpportunityContactRole WHERE Contact.Account.Owner.IsActive = true LIMIT 1"
    )
    [role] = sf.query(soql)["records"]
    assert role["Contact"]["Account"]["Owner"]["Name"]
    assert "@" in role["Opportunity"]["Account"]["Owner"]["Email"]
    with pytest.raises(SalesforceMalformedRequest) as refused:
        sf.query(
            "SELECT Opportunity.Account.Owner.Owner.Owner.Owner.Name FROM OpportunityContactRole"
        )
    assert "at most 5 relationships" in refused.value.content[0]["message"]


def _csm_active(ctx: dict[str, Any], row: dict[str, Any]) -> bool | None:
    user = ctx["users"].get(row["Customer_Success_Manager__c"])
    return None if user is None else user["IsActive"]


WHERE_CASES: list[tuple[str, str, Callable[[dict[str, Any], dict[str, Any]], bool]]] = [
    (
        "Opportunity",
        "SystemModstamp >= 2026-11-20T00:00:00Z AND SystemModstamp < 2026-11-22T02:00:00Z",
        lambda r, c: "2026-11-20T00" <= r["SystemModstamp"] < "2026-11-22T02:00:00.000",
    ),
    (
        "Opportunity",
        "SystemModstamp >= 2026-11-22T03:00:00.000+01:00",
        lambda r, c: r["SystemModstamp"] >= "2026-11-22T02:00:00.000+0000",
    ),
    (
        "Opportunity",
        "SystemModstamp = 2026-11-22T02:00:00.000+0000",
        lambda r, c: r["SystemModstamp"] == "2026-11-22T02:00:00.000+0000",
    ),
    ("Opportunity", "CloseDate < 2026-06-01", lambda r, c: r["CloseDate"] < "2026-06-01"),
    (
        "Opportunity",
        "StageName IN ('Prospecting', 'qualification')",
        lambda r, c: r["StageName"] in ("Prospecting", "Qualification"),
    ),
    (
        "Opportunity",
        "StageName NOT IN ('Closed Won', 'Closed Lost')",
        lambda r, c: not r["IsClosed"],
    ),
    (
        "Opportunity",
        "(StageName = 'Closed Lost' OR IsWon = true) AND Amount > 50000",
        lambda r, c: r["IsClosed"] and (r["Amount"] or 0) > 50000,
    ),
    (
        "Opportunity",
        "StageName = 'Closed Lost' OR IsWon = true AND Amount > 50000",
        lambda r, c: r["StageName"] == "Closed Lost" or (r["IsWon"] and (r["Amount"] or 0) > 50000),
    ),
    ("Opportunity", "NOT (IsClosed = true)", lambda r, c: not r["IsClosed"]),
    ("Opportunity", "Amount = null", lambda r, c: r["Amount"] is None),
    ("Opportunity", "Amount != null AND Amount <= 10000", lambda r, c: (r["Amount"] or 1e9) <= 1e4),
    ("Opportunity", "Name LIKE 'acme%'", lambda r, c: r["Name"].lower().startswith("acme")),
    (
        "Opportunity",
        "Customer_Success_Manager__r.IsActive = false",
        lambda r, c: _csm_active(c, r) is False,
    ),
    ("Contact", "LastName = 'O\\'Brien'", lambda r, c: r["LastName"] == "O'Brien"),
    ("Contact", "LastName = '李'", lambda r, c: r["LastName"] == "李"),
    ("Contact", "Email = null", lambda r, c: r["Email"] is None),
]
WHERE_IDS = [
    "datetime_window", "datetime_offset_normalised", "datetime_equal_bulk_update", "date",
    "in_case_insensitive", "not_in", "and_or_parentheses", "and_binds_tighter_than_or", "not",
    "is_null", "null_and_range", "like", "relationship_field", "escaped_quote", "unicode",
    "null_email",
]  # fmt: skip


@pytest.mark.parametrize(("sobject", "where", "expected"), WHERE_CASES, ids=WHERE_IDS)
def test_where_clauses_match_the_same_rows_as_python(
    sf: Salesforce,
    server: SandboxServer,
    org: dict[str, Any],
    sobject: str,
    where: str,
    expected: Callable[[dict[str, Any], dict[str, Any]], bool],
) -> None:
    rows = [r for r in server.store.rows(sobject) if not r["IsDeleted"]]
    wanted = {r["Id"] for r in rows if expected(r, org)}
    assert wanted and len(wanted) < len(rows), "the case must separate rows to prove anything"
    got = [r["Id"] for r in sf.query_all(f"SELECT Id FROM {sobject} WHERE {where}")["records"]]
    assert len(got) == len(set(got))
    assert set(got) == wanted


def test_order_by_and_limit(sf: Salesforce, server: SandboxServer) -> None:
    rows = [r for r in server.store.rows("Opportunity") if r["Amount"] is not None]
    rows.sort(key=lambda r: r["Name"].lower())
    rows.sort(key=lambda r: r["Amount"], reverse=True)
    soql = (
        "SELECT Name, Amount FROM Opportunity WHERE Amount != null "
        "ORDER BY Amount DESC, Name ASC LIMIT 7"
    )
    result = sf.query(soql)
    assert result["totalSize"] == 7
    assert [r["Name"] for r in result["records"]] == [r["Name"] for r in rows[:7]]
    first = sf.query("SELECT Amount FROM Opportunity ORDER BY Amount ASC LIMIT 1")["records"]
    assert first[0]["Amount"] is None, "ascending order puts nulls first, as Salesforce does"


def test_query_all_walks_every_page(sf: Salesforce, server: SandboxServer, org: dict) -> None:
    with server.store.transaction():
        for n in range(4100):
            server.store.insert("Task", {"Subject": f"bulk-{n:05d}", "OwnerId": org["ae"]})
    soql = "SELECT Id, Subject FROM Task WHERE Subject LIKE 'bulk-%' ORDER BY Subject DESC"
    first = sf.query(soql)
    assert first["totalSize"] == 4100 and first["done"] is False
    assert len(first["records"]) == 2000
    assert re.match(
        r"^/services/data/v59\.0/query/01g[0-9A-Za-z]{15}-2000$", first["nextRecordsUrl"]
    )

    before = server.stats()["by_route"].get("query_more", 0)
    everything = sf.query_all(soql)["records"]
    assert server.stats()["by_route"]["query_more"] - before == 2
    subjects = [r["Subject"] for r in everything]
    assert subjects == [f"bulk-{n:05d}" for n in reversed(range(4100))]


def test_query_all_sees_soft_deleted_records_query_does_not(sf: Salesforce) -> None:
    created = sf.Account.create({"Name": "Doomed Ltd"})
    assert created["success"] is True and created["id"].startswith("001")
    assert sf.Account.delete(created["id"]) == 204
    soql = f"SELECT Id, IsDeleted FROM Account WHERE Id = '{created['id']}'"
    assert sf.query(soql)["totalSize"] == 0
    deleted = sf.query_all(soql, include_deleted=True)["records"]
    assert [(r["Id"], r["IsDeleted"]) for r in deleted] == [(created["id"], True)]
    with pytest.raises(SalesforceResourceNotFound):
        sf.Account.get(created["id"])


def test_stage_updates_keep_the_derived_fields_consistent(sf: Salesforce, org: dict) -> None:
    created = sf.Opportunity.create(
        {"Name": "Stage walk", "StageName": "Prospecting", "CloseDate": "2026-12-15"}
    )
    before = sf.Opportunity.get(created["id"])
    assert before["IsClosed"] is False and before["IsWon"] is False
    assert sf.Opportunity.update(created["id"], {"StageName": "Closed Won"}) == 204
    after = sf.Opportunity.get(created["id"])
    assert after["IsClosed"] is True and after["IsWon"] is True
    assert after["LastStageChangeDate"] >= before["LastStageChangeDate"]
    assert after["SystemModstamp"] >= before["SystemModstamp"]
    with pytest.raises(SalesforceMalformedRequest) as refused:
        sf.Opportunity.update(created["id"], {"IsWon": False})
    assert refused.value.content[0]["errorCode"] == "INVALID_FIELD_FOR_INSERT_UPDATE"


# -- the Handoff_Key__c dedupe field --------------------------------------------------------------


def test_the_handoff_key_is_a_filterable_custom_text_field(
    sf: Salesforce, server: SandboxServer, org: dict
) -> None:
    fields = {f["name"]: f for f in sf.Task.describe()["fields"]}
    key = fields["Handoff_Key__c"]
    assert (key["label"], key["type"], key["length"]) == ("Handoff Key", "string", 255)
    assert key["custom"] is True and key["nillable"] is True and key["externalId"] is False
    assert key["createable"] and key["updateable"] and key["filterable"] and key["sortable"]

    single = task(org, "keyed-1", Handoff_Key__c="hk-1")
    single.pop("attributes")
    first = sf.Task.create(single)["id"]
    body = {
        "records": [
            task(org, "keyed-2", Handoff_Key__c="hk-2"),
            task(org, "keyed-3", Handoff_Key__c="hk-3"),
            task(org, "keyed-none"),
        ]
    }
    results = sf.restful("composite/sobjects", method="POST", json=body)
    assert all(r["success"] for r in results)
    assert sf.Task.get(first)["Handoff_Key__c"] == "hk-1"

    soql = (
        "SELECT Subject, Handoff_Key__c FROM Task "
        "WHERE Handoff_Key__c IN ('hk-1', 'hk-3', 'hk-absent') ORDER BY Handoff_Key__c"
    )
    found = [(r["Subject"], r["Handoff_Key__c"]) for r in sf.query(soql)["records"]]
    assert found == [("keyed-1", "hk-1"), ("keyed-3", "hk-3")]
    keyed = sf.query_all("SELECT Id FROM Task WHERE Handoff_Key__c != null")["records"]
    stored = {r["Id"] for r in server.store.rows("Task") if r["Handoff_Key__c"] is not None}
    assert {r["Id"] for r in keyed} == stored and results[2]["id"] not in stored
    assert count_tasks(sf, "keyed-") == 4

    assert sf.Task.update(first, {"Handoff_Key__c": "hk-1b"}) == 204
    assert [r["Subject"] for r in keyed_tasks(server, "hk-1", "hk-1b")] == ["keyed-1"]
    with pytest.raises(SalesforceMalformedRequest) as refused:
        sf.Task.update(first, {"Handoff_Key__c": "k" * 256})
    [error] = refused.value.content
    assert (error["errorCode"], error["fields"]) == ("STRING_TOO_LONG", ["Handoff_Key__c"])


def test_an_org_file_from_before_the_key_field_gains_its_column(tmp_path: Path) -> None:
    db = tmp_path / "old.db"
    store = SandboxStore(db)
    owner = store.insert("User", {"LastName": "Old"})
    old_task = store.insert("Task", {"Subject": "from before", "OwnerId": owner})
    store.close()
    with sqlite3.connect(db) as conn:  # the file as an older sandbox left it
        conn.execute('ALTER TABLE "Task" DROP COLUMN "Handoff_Key__c"')
    conn.close()

    store = SandboxStore(db)
    try:
        assert store.get("Task", old_task)["Handoff_Key__c"] is None
        new_task = store.insert(
            "Task", {"Subject": "after", "OwnerId": owner, "Handoff_Key__c": "hk-new"}
        )
        assert store.get("Task", new_task)["Handoff_Key__c"] == "hk-new"
    finally:
        store.close()


# -- activities: Task, Event, EmailMessage -------------------------------------------------------


def test_activity_objects_are_described_like_salesforce(sf: Salesforce) -> None:
    event = sf.Event.describe()
    email = sf.EmailMessage.describe()
    assert (event["keyPrefix"], email["keyPrefix"], sf.Task.describe()["keyPrefix"]) == (
        "00U", "02s", "00T",
    )  # fmt: skip
    task = {f["name"]: f for f in sf.Task.describe()["fields"]}
    assert [p["value"] for p in task["CallType"]["picklistValues"]] == [
        "Internal", "Inbound", "Outbound",
    ]  # fmt: skip
    assert task["TaskSubtype"]["restrictedPicklist"] and task["TaskSubtype"]["defaultedOnCreate"]
    assert not task["CompletedDateTime"]["createable"] and task["CompletedDateTime"]["nillable"]
    events = {f["name"]: f for f in event["fields"]}
    assert events["Outcome__c"]["custom"] and events["Outcome__c"]["type"] == "picklist"
    assert events["WhoId"]["referenceTo"] == ["Contact"]
    emails = {f["name"]: f for f in email["fields"]}
    assert emails["RelatedToId"]["referenceTo"] == ["Opportunity", "Account"]
    assert emails["Incoming"]["type"] == "boolean" and "OwnerId" not in emails
    assert not emails["TextBody"]["filterable"], "a long text area, as in Salesforce"
    for fields in (task, events, emails):
        assert {"SystemModstamp", "CreatedDate", "LastModifiedDate", "IsDeleted"} <= set(fields)
    opportunity = {f["name"]: f for f in sf.Opportunity.describe()["fields"]}
    box = opportunity["Scope_Change_Requested__c"]
    assert (box["type"], box["defaultValue"], box["custom"]) == ("boolean", False, True)


def test_activities_are_queried_like_the_connector_does_deleted_ones_through_query_all(
    sf: Salesforce, org: dict[str, Any], server: SandboxServer
) -> None:
    contact = sf.query("SELECT Id FROM Contact LIMIT 1")["records"][0]["Id"]
    event = sf.Event.create(
        {"WhoId": contact, "OwnerId": org["ae"], "Subject": "Onsite visit",
         "StartDateTime": "2026-12-01T15:00:00Z", "EndDateTime": "2026-12-01T16:00:00Z",
         "Outcome__c": "No Show"}
    )["id"]  # fmt: skip
    email = sf.EmailMessage.create(
        {"RelatedToId": org["deal"], "Subject": "Hello", "TextBody": "Hi there", "Incoming": True,
         "MessageDate": "2026-12-01T09:00:00Z", "Status": "1"}
    )["id"]  # fmt: skip
    assert event.startswith("00U") and email.startswith("02s")
    now = datetime.now(UTC)
    window = (
        f"SystemModstamp >= {(now - timedelta(hours=1)).strftime('%Y-%m-%dT%H:%M:%SZ')} AND "
        f"SystemModstamp < {(now + timedelta(hours=1)).strftime('%Y-%m-%dT%H:%M:%SZ')}"
    )
    found = sf.query(
        f"SELECT Id, WhoId, Outcome__c, StartDateTime FROM Event WHERE {window} AND "
        f"(WhatId IN ('{org['deal']}') OR WhoId IN ('{contact}')) ORDER BY SystemModstamp, Id"
    )["records"]
    assert [(r["Id"], r["Outcome__c"], r["StartDateTime"]) for r in found] == [
        (event, "No Show", "2026-12-01T15:00:00.000+0000"),
    ]
    assert sf.EmailMessage.delete(email) == 204
    soql = (
        f"SELECT Id, IsDeleted, Incoming FROM EmailMessage WHERE {window} "
        f"AND RelatedToId IN ('{org['deal']}') ORDER BY SystemModstamp, Id"
    )
    assert sf.query(soql)["records"] == []
    deleted = sf.query_all(soql, include_deleted=True)["records"]
    assert [(r["Id"], r["IsDeleted"], r["Incoming"]) for r in deleted] == [(email, True, True)]
    assert server.store.get("EmailMessage", email)["CreatedById"] is None, "not writable"


def test_a_task_is_completed_when_closed_and_no_longer_when_reopened(
    sf: Salesforce, org: dict[str, Any]
) -> None:
    call = sf.Task.create(
        {"Subject": "call-1", "OwnerId": org["ae"], "WhatId": org["deal"], "TaskSubtype": "Call",
         "CallType": "Outbound"}
    )["id"]  # fmt: skip
    created = sf.Task.get(call)
    assert (created["Status"], created["CompletedDateTime"]) == ("Not Started", None)
    assert sf.Task.update(call, {"Status": "Completed"}) == 204
    closed = sf.Task.get(call)
    assert closed["CompletedDateTime"] is not None
    assert closed["CompletedDateTime"] == closed["SystemModstamp"]
    assert sf.Task.update(call, {"Subject": "call-1 (notes)"}) == 204
    assert sf.Task.get(call)["CompletedDateTime"] == closed["CompletedDateTime"], "still closed"
    assert sf.Task.update(call, {"Status": "In Progress"}) == 204
    assert sf.Task.get(call)["CompletedDateTime"] is None
    plain = sf.Task.get(sf.Task.create({"Subject": "todo-1", "OwnerId": org["ae"]})["id"])
    assert (plain["TaskSubtype"], plain["CallType"]) == ("Task", None)
    for bad, field in (
        ({"CompletedDateTime": "2026-01-01T00:00:00Z"}, "CompletedDateTime"),
        ({"CallType": "Sideways"}, "CallType"),
        ({"Priority": None}, "Priority"),
    ):
        with pytest.raises(SalesforceMalformedRequest) as refused:
            sf.Task.update(call, bad)
        assert refused.value.content[0]["fields"] == [field]


def test_a_soql_statement_over_100000_characters_is_malformed() -> None:
    head, tail = "SELECT Id FROM Task WHERE WhatId IN (", ")"
    ids = ", ".join(f"'{make_id('006', n)}'" for n in range(1, 5000))
    longest = head + ids[: 100_000 - len(head) - len(tail)].rsplit(", ", 1)[0] + tail
    assert len(longest) <= 100_000
    compile_soql(longest + " " * (100_000 - len(longest)))  # exactly at the limit: fine
    with pytest.raises(SoqlError) as refused:
        compile_soql(longest + " " * (100_001 - len(longest)))
    assert refused.value.error_code == "MALFORMED_QUERY"
    assert "cannot be longer than 100,000 characters" in refused.value.message


def test_a_request_uri_over_16384_bytes_is_refused_before_the_api(
    sf: Salesforce, server: SandboxServer
) -> None:
    def ids(count: int) -> str:  # 30 bytes each once URL-encoded
        return ", ".join(f"'{make_id('006', n)}'" for n in range(1, count + 1))

    calls = server.stats()["api_calls"]
    with pytest.raises(SalesforceGeneralError) as refused:
        sf.query(f"SELECT Id FROM Task WHERE WhatId IN ({ids(600)})")
    assert refused.value.status == 414
    assert server.stats()["api_calls"] == calls, "the front end refused it: no API call"
    assert sf.query(f"SELECT Id FROM Task WHERE WhatId IN ({ids(500)})")["done"] is True
    assert server.stats()["api_calls"] == calls + 1


# -- where the client is and how to greet them -----------------------------------------------------

CONTACT_PLACE = ("MailingCountry", "Time_Zone__c", "Language__c", "Greeting_Name__c")


def test_client_place_fields_are_described_text_fields(sf: Salesforce) -> None:
    contact = {f["name"]: f for f in sf.Contact.describe()["fields"]}
    account = {f["name"]: f for f in sf.Account.describe()["fields"]}
    described = [contact[name] for name in CONTACT_PLACE]
    described += [account["BillingCountry"], account["Time_Zone__c"]]
    assert all(f["type"] == "string" and f["nillable"] for f in described)
    assert all(f["createable"] and f["updateable"] and f["filterable"] for f in described)
    assert [f["custom"] for f in described] == [False, True, True, True, False, True]
    assert (contact["Time_Zone__c"]["label"], contact["Greeting_Name__c"]["label"]) == (
        "Time Zone",
        "Greeting Name",
    )
    kind = {f["name"]: f for f in sf.Opportunity.describe()["fields"]}["Type"]
    assert kind["type"] == "picklist" and not kind["restrictedPicklist"]
    assert {"New Business", "Existing Customer - Upgrade", "Renewal"} <= {
        p["value"] for p in kind["picklistValues"]
    }


def test_client_place_fields_are_inserted_and_unset_ones_read_null(sf: Salesforce) -> None:
    place = {
        "MailingCountry": "Japan",
        "Time_Zone__c": "Asia/Tokyo",
        "Language__c": "ja_JP",
        "Greeting_Name__c": "田中様",
    }
    account = sf.Account.create({"Name": "Place Ltd", "Time_Zone__c": "Asia/Tokyo"})["id"]
    placed = sf.Contact.create({"LastName": "Placed", "AccountId": account, **place})["id"]
    bare = sf.Contact.create({"LastName": "Bare", "AccountId": account})["id"]
    assert {name: sf.Contact.get(placed)[name] for name in CONTACT_PLACE} == place
    assert {name: sf.Contact.get(bare)[name] for name in CONTACT_PLACE} == dict.fromkeys(
        CONTACT_PLACE
    )
    soql = (
        "SELECT LastName, Account.Time_Zone__c, Account.BillingCountry FROM Contact "
        f"WHERE AccountId = '{account}' AND Time_Zone__c = null"
    )
    [record] = sf.query(soql)["records"]
    assert record["LastName"] == "Bare"
    assert (record["Account"]["Time_Zone__c"], record["Account"]["BillingCountry"]) == (
        "Asia/Tokyo",
        None,
    )


def test_client_place_fields_are_selected_through_relationship_paths(
    sf: Salesforce, server: SandboxServer
) -> None:
    contacts = {c["Id"]: c for c in server.store.rows("Contact")}
    fields = ", ".join(f"Contact.{name}" for name in CONTACT_PLACE)
    soql = f"SELECT ContactId, {fields} FROM OpportunityContactRole WHERE IsPrimary = true"
    roles = sf.query_all(soql)["records"]
    assert roles
    for role in roles:
        assert list(role["Contact"]) == ["attributes", *CONTACT_PLACE]
        stored = contacts[role["ContactId"]]
        assert {name: role["Contact"][name] for name in CONTACT_PLACE} == {
            name: stored[name] for name in CONTACT_PLACE
        }
    zones = {role["Contact"]["Time_Zone__c"] for role in roles}
    assert None in zones and "Asia/Tokyo" in zones, "set and unset values both come through"

    accounts = {a["Id"]: a for a in server.store.rows("Account")}
    soql = "SELECT Type, AccountId, Account.BillingCountry, Account.Time_Zone__c FROM Opportunity"
    deals = [d for d in sf.query_all(soql)["records"] if d["AccountId"]]
    assert deals
    for deal in deals:
        account = accounts[deal["AccountId"]]
        assert deal["Account"]["BillingCountry"] == account["BillingCountry"]
        assert deal["Account"]["Time_Zone__c"] == account["Time_Zone__c"]
    assert {"New Business", "Renewal"} <= {deal["Type"] for deal in deals}


# -- writes: sObject Collections -----------------------------------------------------------------


def test_composite_reports_per_record_results_in_order(sf: Salesforce, org: dict) -> None:
    body = {
        "allOrNone": False,
        "records": [
            task(org, "mixed-ok-1"),
            task(org, "mixed-inactive", OwnerId=org["inactive"]),
            task(org, "mixed-ok-2", Priority="Low"),
        ],
    }
    results = sf.restful("composite/sobjects", method="POST", json=body)
    assert [r["success"] for r in results] == [True, False, True]
    assert results[0]["errors"] == [] and results[0]["id"].startswith("00T")
    assert results[1]["errors"] == [
        {
            "statusCode": "INACTIVE_OWNER_OR_USER",
            "message": f"operation performed with inactive user [{org['inactive']}] as owner "
            "of task",
            "fields": ["OwnerId"],
        }
    ]
    assert count_tasks(sf, "mixed-") == 2
    stored = sf.Task.get(results[0]["id"])
    assert stored["WhatId"] == org["deal"] and stored["ActivityDate"] == "2026-11-30"
    assert stored["ReminderDateTime"] == "2026-11-29T09:00:00.000+0000"


def test_composite_all_or_none_rolls_everything_back(sf: Salesforce, org: dict) -> None:
    body = {
        "allOrNone": True,
        "records": [
            task(org, "aon-ok-1"),
            task(org, "aon-bad", OwnerId=org["inactive"]),
            task(org, "aon-ok-2"),
        ],
    }
    results = sf.restful("composite/sobjects", method="POST", json=body)
    assert [r["success"] for r in results] == [False, False, False]
    codes = [r["errors"][0]["statusCode"] for r in results]
    assert codes == [
        "ALL_OR_NONE_OPERATION_ROLLED_BACK",
        "INACTIVE_OWNER_OR_USER",
        "ALL_OR_NONE_OPERATION_ROLLED_BACK",
    ]
    assert count_tasks(sf, "aon-") == 0


def test_composite_refuses_more_than_200_records(sf: Salesforce, org: dict) -> None:
    body = {"allOrNone": False, "records": [task(org, f"too-many-{n}") for n in range(201)]}
    with pytest.raises(SalesforceMalformedRequest) as refused:
        sf.restful("composite/sobjects", method="POST", json=body)
    assert refused.value.status == 400
    assert refused.value.content == [
        {
            "message": "record limit reached. cannot submit more than 200 records into this call",
            "errorCode": "EXCEEDED_ID_LIMIT",
            "fields": [],
        }
    ]
    assert count_tasks(sf, "too-many-") == 0


def _opt_out(*record_ids: str, **changes: Any) -> dict[str, Any]:
    """The body the connector sends to opt contacts out of email."""
    records = [
        {"attributes": {"type": "Contact"}, "id": record_id, "HasOptedOutOfEmail": True, **changes}
        for record_id in record_ids
    ]
    return {"allOrNone": False, "records": records}


def _new_contacts(sf: Salesforce, prefix: str, count: int) -> list[str]:
    """Fresh contacts, so opting them out leaves the seeded ones as other tests expect them."""
    names = [f"{prefix}-{n}" for n in range(count)]
    created = [sf.Contact.create({"LastName": n, "Email": f"{n}@client.example"}) for n in names]
    return [c["id"] for c in created]


def test_collection_update_opts_contacts_out_and_reports_each_record(
    sf: Salesforce, server: SandboxServer
) -> None:
    first, second, deleted = _new_contacts(sf, "opt-out", 3)
    sf.Contact.delete(deleted)
    unknown = make_id("003", 10**6)  # well formed, never minted
    before = {c: sf.Contact.get(c) for c in (first, second)}
    routed = server.stats()["by_route"].get("composite_sobjects_update", 0)

    results = sf.restful(
        "composite/sobjects", method="PATCH", json=_opt_out(first, unknown, second, deleted)
    )
    assert results == [
        {"id": first, "success": True, "errors": []},
        {
            "success": False,
            "errors": [
                {
                    "statusCode": "INVALID_CROSS_REFERENCE_KEY",
                    "message": "invalid cross reference id",
                    "fields": [],
                }
            ],
        },
        {"id": second, "success": True, "errors": []},
        {
            "success": False,
            "errors": [
                {"statusCode": "ENTITY_IS_DELETED", "message": "entity is deleted", "fields": []}
            ],
        },
    ]
    soql = f"SELECT Id, HasOptedOutOfEmail FROM Contact WHERE Id IN ('{first}', '{second}')"
    assert all(r["HasOptedOutOfEmail"] for r in sf.query(soql)["records"])
    for contact_id, old in before.items():
        new = sf.Contact.get(contact_id)
        assert old["HasOptedOutOfEmail"] is False and new["HasOptedOutOfEmail"] is True
        assert new["SystemModstamp"] == new["LastModifiedDate"] > old["SystemModstamp"]
        stamped = datetime.strptime(new["SystemModstamp"], "%Y-%m-%dT%H:%M:%S.%f%z")
        assert abs(stamped - datetime.now(UTC)) < timedelta(minutes=1)
        assert (new["LastName"], new["Email"]) == (old["LastName"], old["Email"])
    assert server.store.get("Contact", deleted)["HasOptedOutOfEmail"] is False
    assert server.stats()["by_route"]["composite_sobjects_update"] == routed + 1


def test_collection_update_fails_bad_records_alone(sf: Salesforce, org: dict) -> None:
    good, unknown_field, read_only, no_id = _new_contacts(sf, "bad-update", 4)
    body = _opt_out(good)
    body["records"] += [
        *_opt_out(unknown_field, Bogus__c="x")["records"],
        *_opt_out(read_only, Name="Renamed")["records"],
        {"attributes": {"type": "Contact"}, "HasOptedOutOfEmail": True},
        *_opt_out(org["deal"])["records"],  # an Opportunity's Id as a Contact
        {"id": no_id, "HasOptedOutOfEmail": True},
    ]
    results = sf.restful("composite/sobjects", method="PATCH", json=body)
    assert [r["success"] for r in results] == [True, False, False, False, False, False]
    errors = [(r["errors"][0]["statusCode"], r["errors"][0]["fields"]) for r in results[1:]]
    assert errors == [
        ("INVALID_FIELD", []),
        ("INVALID_FIELD_FOR_INSERT_UPDATE", ["Name"]),
        ("MISSING_ARGUMENT", []),
        ("MALFORMED_ID", ["Id"]),
        ("INVALID_TYPE", []),
    ]
    assert results[1]["errors"][0]["message"] == (
        "No such column 'Bogus__c' on sobject of type Contact"
    )
    assert results[4]["errors"][0]["message"] == (
        f"Contact ID: id value of incorrect type: {org['deal']}"
    )
    opted = {c: sf.Contact.get(c)["HasOptedOutOfEmail"] for c in (good, unknown_field, read_only)}
    assert opted == {good: True, unknown_field: False, read_only: False}
    assert sf.Contact.get(no_id)["HasOptedOutOfEmail"] is False


def test_collection_update_all_or_none_rolls_everything_back(sf: Salesforce) -> None:
    first, second = _new_contacts(sf, "aon-update", 2)
    body = {**_opt_out(first, make_id("003", 10**6), second), "allOrNone": True}
    results = sf.restful("composite/sobjects", method="PATCH", json=body)
    assert [r["errors"][0]["statusCode"] for r in results] == [
        "ALL_OR_NONE_OPERATION_ROLLED_BACK",
        "INVALID_CROSS_REFERENCE_KEY",
        "ALL_OR_NONE_OPERATION_ROLLED_BACK",
    ]
    assert not any(sf.Contact.get(c)["HasOptedOutOfEmail"] for c in (first, second))


def test_collection_update_refuses_more_than_200_records(
    sf: Salesforce, server: SandboxServer
) -> None:
    contacts = [
        server.store.insert("Contact", {"LastName": f"too-many-updates-{n}"}) for n in range(201)
    ]
    with pytest.raises(SalesforceMalformedRequest) as refused:
        sf.restful("composite/sobjects", method="PATCH", json=_opt_out(*contacts))
    assert refused.value.status == 400
    assert refused.value.content == [
        {
            "message": "record limit reached. cannot submit more than 200 records into this call",
            "errorCode": "EXCEEDED_ID_LIMIT",
            "fields": [],
        }
    ]
    assert not any(server.store.get("Contact", c)["HasOptedOutOfEmail"] for c in contacts)
    results = sf.restful("composite/sobjects", method="PATCH", json=_opt_out(*contacts[:200]))
    assert [r["id"] for r in results] == contacts[:200] and all(r["success"] for r in results)


VALIDATION_CASES = [
    ({"Bogus__c": "x"}, "INVALID_FIELD", []),
    ({"Subject": None}, "REQUIRED_FIELD_MISSING", ["Subject"]),
    ({"Subject": "x" * 256}, "STRING_TOO_LONG", ["Subject"]),
    ({"WhatId": "not-an-id"}, "MALFORMED_ID", ["WhatId"]),
    ({"WhatId": "006000000000000AAA"}, "INVALID_CROSS_REFERENCE_KEY", ["WhatId"]),
    ({"Priority": "Urgent"}, "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST", ["Priority"]),
    ({"Status": "Done"}, "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST", ["Status"]),
    ({"ActivityDate": "next tuesday"}, "JSON_PARSER_ERROR", ["ActivityDate"]),
]
VALIDATION_IDS = [
    "unknown_field", "required_missing", "string_too_long", "malformed_id",
    "reference_does_not_exist", "restricted_priority", "restricted_status", "bad_date",
]  # fmt: skip


@pytest.mark.parametrize(("changes", "code", "fields"), VALIDATION_CASES, ids=VALIDATION_IDS)
def test_insert_validation(
    sf: Salesforce, org: dict, changes: dict[str, Any], code: str, fields: list[str]
) -> None:
    subject = f"invalid-{code}-{sorted(changes)[0]}"
    record = task(org, subject, **changes)
    record.pop("attributes")
    with pytest.raises(SalesforceMalformedRequest) as refused:
        sf.Task.create(record)
    [error] = refused.value.content
    assert (error["errorCode"], error["fields"]) == (code, fields)
    composite = sf.restful(
        "composite/sobjects", method="POST", json={"records": [task(org, subject, **changes)]}
    )
    assert composite[0]["success"] is False
    assert composite[0]["errors"][0]["statusCode"] == code
    assert count_tasks(sf, "invalid-") == 0


# -- protocol: auth, errors, limits, describe, faults ------------------------------------------


@pytest.mark.parametrize("token", [None, "wrong-token"], ids=["no_token", "wrong_token"])
def test_requests_without_the_session_token_get_401(server: SandboxServer, token: str | None):
    calls = server.stats()["api_calls"]
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    url = f"{server.url}/services/data/v59.0/query/"
    answer = requests.get(url, params={"q": "SELECT Id FROM User"}, headers=headers, timeout=5)
    assert answer.status_code == 401
    assert answer.json() == [
        {"message": "Session expired or invalid", "errorCode": "INVALID_SESSION_ID"}
    ]
    if token:
        with pytest.raises(SalesforceExpiredSession):
            client(server, token).query("SELECT Id FROM User")
    assert server.stats()["api_calls"] == calls, "refused requests are not API calls"


QUERY_ERRORS = [
    ("SELECT Id, Foo FROM Opportunity", "INVALID_FIELD",
     "No such column 'Foo' on entity 'Opportunity'"),
    ("SELECT Id, Bogus__r.Name FROM Opportunity", "INVALID_FIELD",
     "Didn't understand relationship 'Bogus__r'"),
    ("SELECT Id FROM Foo", "INVALID_TYPE", "sObject type 'Foo' is not supported."),
    ("SELECT Id FROM Opportunity WHERE", "MALFORMED_QUERY", "unexpected token"),
    ("SELECT Id Opportunity", "MALFORMED_QUERY", "unexpected token"),
    ("SELECT Id FROM Opportunity WHERE CloseDate = '2026-01-01'", "INVALID_FIELD",
     "must be of type date"),
    ("SELECT Id FROM Opportunity GROUP BY Name", "MALFORMED_QUERY", "GROUP BY is not supported"),
    ("SELECT Id, Account.Boss.Name FROM Opportunity", "INVALID_FIELD",
     "Didn't understand relationship 'Boss'"),
    ("SELECT Id, Account.Owner.Foo FROM Opportunity", "INVALID_FIELD",
     "No such column 'Foo' on entity 'User'"),
    ("SELECT Id, What.Owner.Name FROM Task", "MALFORMED_QUERY",
     "beyond the polymorphic 'What'"),
]  # fmt: skip
QUERY_ERROR_IDS = [
    "unknown_field", "unknown_relationship", "unknown_object", "dangling_where",
    "missing_from", "quoted_date", "unsupported_group_by", "unknown_second_relationship",
    "unknown_field_two_levels_up", "through_a_polymorphic_lookup",
]  # fmt: skip


@pytest.mark.parametrize(("soql", "code", "text"), QUERY_ERRORS, ids=QUERY_ERROR_IDS)
def test_query_errors_use_salesforce_codes(sf: Salesforce, soql: str, code: str, text: str):
    with pytest.raises(SalesforceMalformedRequest) as refused:
        sf.query(soql)
    [error] = refused.value.content
    assert error["errorCode"] == code
    assert text in error["message"]


LOOKUPS = [
    ("SELECT Id FROM OpportunityContactRole WHERE IsPrimary = true "
     "AND OpportunityId IN ('0068d0000Ab0001AQA', '0068d0000Ab0002AQA')",
     "ix_OpportunityContactRole_OpportunityId"),
    ("SELECT Id FROM Contact WHERE AccountId = '0018d0000Ab0001AQA'", "ix_Contact_AccountId"),
    ("SELECT Id FROM Task WHERE WhatId IN ('0068d0000Ab0001AQA') AND Handoff_Key__c != null",
     "ix_Task_WhatId"),
    ("SELECT Id FROM Opportunity WHERE SystemModstamp >= 2026-11-20T00:00:00Z "
     "AND SystemModstamp < 2026-11-23T00:00:00Z ORDER BY SystemModstamp ASC, Id ASC",
     "ix_Opportunity_mod"),
    ("SELECT Id FROM Account WHERE Id = '0018d0000Ab0001AQA'", "sqlite_autoindex_Account_1"),
    ("SELECT Id FROM EmailMessage WHERE SystemModstamp < 2026-11-23T00:00:00Z "
     "AND RelatedToId IN ('0068d0000Ab0001AQA', '0068d0000Ab0002AQA') "
     "ORDER BY SystemModstamp ASC, Id ASC", "ix_EmailMessage_RelatedToId"),
]  # fmt: skip
LOOKUP_IDS = ["contact_roles", "contacts", "tasks", "modstamp", "id", "emails"]


@pytest.mark.parametrize(("soql", "index"), LOOKUPS, ids=LOOKUP_IDS)
def test_lookups_search_an_index_instead_of_scanning(
    server: SandboxServer, soql: str, index: str
) -> None:
    plan = compile_soql(soql).query_plan(server.store)
    assert f"SEARCH t0 USING INDEX {index}" in plan[0] or (
        f"SEARCH t0 USING COVERING INDEX {index}" in plan[0]
    ), plan
    if "ORDER BY SystemModstamp" in soql and "SystemModstamp >=" in soql:
        assert len(plan) == 1, f"the index gives the order, no sort step: {plan}"


def test_activities_of_deals_or_their_contacts_search_both_lookups(server: SandboxServer):
    soql = (
        "SELECT Id FROM Task WHERE SystemModstamp >= 2026-11-20T00:00:00Z "
        "AND SystemModstamp < 2026-11-23T00:00:00Z AND (WhatId IN ('0068d0000Ab0001AQA') "
        "OR WhoId IN ('0038d0000Ab0001AQA')) ORDER BY SystemModstamp ASC, Id ASC"
    )
    plan = " | ".join(compile_soql(soql).query_plan(server.store))
    assert "USING INDEX ix_Task_WhatId" in plan and "USING INDEX ix_Task_WhoId" in plan, plan


def test_every_answer_reports_api_usage(sf: Salesforce, server: SandboxServer) -> None:
    sf.query("SELECT Id FROM User LIMIT 1")
    first = sf.api_usage["api-usage"]
    requests.get(f"{server.url}/__sandbox__/stats", timeout=5)  # control calls are not counted
    sf.query("SELECT Id FROM User LIMIT 1")
    second = sf.api_usage["api-usage"]
    assert first.total == second.total == 15000
    assert second.used == first.used + 1
    assert server.stats()["api_calls"] == second.used


def test_describe_is_generated_from_the_schema(sf: Salesforce) -> None:
    described = sf.Task.describe()
    assert described["name"] == "Task" and described["keyPrefix"] == "00T"
    fields = {f["name"]: f for f in described["fields"]}
    assert fields["OwnerId"]["referenceTo"] == ["User"]
    assert fields["OwnerId"]["relationshipName"] == "Owner"
    assert fields["WhatId"]["referenceTo"] == ["Opportunity", "Account"]
    assert fields["Subject"]["type"] == "string" and fields["Subject"]["length"] == 255
    priority = fields["Priority"]
    assert [p["value"] for p in priority["picklistValues"]] == ["High", "Normal", "Low"]
    assert priority["restrictedPicklist"] is True
    assert all(f["externalId"] is False for f in described["fields"])
    opportunity = {f["name"]: f for f in sf.Opportunity.describe()["fields"]}
    csm = opportunity["Customer_Success_Manager__c"]
    assert csm["relationshipName"] == "Customer_Success_Manager__r"
    assert opportunity["Amount"]["type"] == "currency" and opportunity["Amount"]["nillable"]
    assert opportunity["Handoff_Risks__c"]["length"] == 32000


@pytest.mark.parametrize(
    ("after_commit", "written"), [(True, 1), (False, 0)], ids=["after_commit", "before_commit"]
)
def test_injected_503_with_and_without_the_write(
    sf: Salesforce, server: SandboxServer, org: dict, after_commit: bool, written: int
) -> None:
    rule = {
        "method": "POST",
        "path_contains": "/composite/sobjects",
        "status": 503,
        "times": 1,
        "after_commit": after_commit,
        "retry_after": 1,
    }
    added = requests.post(f"{server.url}/__sandbox__/faults", json=rule, timeout=5)
    assert added.status_code == 201
    prefix = f"fault-{after_commit}-"
    body = {"allOrNone": False, "records": [task(org, prefix + "1")]}
    with pytest.raises(SalesforceGeneralError) as failed:
        sf.restful("composite/sobjects", method="POST", json=body)
    assert failed.value.status == 503
    assert failed.value.content[0]["errorCode"] == "SERVER_UNAVAILABLE"
    assert count_tasks(sf, prefix) == written
    results = sf.restful("composite/sobjects", method="POST", json=body)  # the rule is used up
    assert results[0]["success"] is True
    assert count_tasks(sf, prefix) == written + 1


@pytest.mark.parametrize(
    ("after_commit", "written"), [(True, True), (False, False)], ids=["after_commit", "before"]
)
def test_injected_503_on_a_collection_update_with_and_without_the_write(
    sf: Salesforce, server: SandboxServer, after_commit: bool, written: bool
) -> None:
    [contact] = _new_contacts(sf, f"update-fault-{after_commit}", 1)
    add_fault(
        server,
        method="PATCH",
        path_contains="/composite/sobjects",
        status=503,
        after_commit=after_commit,
    )
    injected = server.stats()["faults_injected"]
    with pytest.raises(SalesforceGeneralError) as failed:
        sf.restful("composite/sobjects", method="PATCH", json=_opt_out(contact))
    assert failed.value.status == 503
    assert failed.value.content[0]["errorCode"] == "SERVER_UNAVAILABLE"
    assert server.stats()["faults_injected"] == injected + 1
    assert sf.Contact.get(contact)["HasOptedOutOfEmail"] is written
    results = sf.restful("composite/sobjects", method="PATCH", json=_opt_out(contact))
    assert results == [{"id": contact, "success": True, "errors": []}], "the rule is used up"
    assert sf.Contact.get(contact)["HasOptedOutOfEmail"] is True


def test_503_after_commit_on_a_collection_creates_the_records_and_answers_503(
    server: SandboxServer, org: dict
) -> None:
    add_fault(
        server,
        method="POST",
        path_contains="/composite/sobjects",
        status=503,
        after_commit=True,
        retry_after=2,
    )
    before = server.stats()
    body = {
        "allOrNone": True,
        "records": [
            task(org, "c503-1", Handoff_Key__c="c503-1"),
            task(org, "c503-2", Handoff_Key__c="c503-2"),
        ],
    }
    answer = requests.post(
        f"{server.url}/services/data/v59.0/composite/sobjects",
        json=body,
        headers={"Authorization": f"Bearer {TOKEN}"},
        timeout=5,
    )
    assert answer.status_code == 503
    assert answer.headers["Retry-After"] == "2"
    assert answer.headers["Sforce-Limit-Info"] == f"api-usage={before['api_calls'] + 1}/15000"
    assert answer.json() == [
        {
            "message": "Server temporarily unavailable. Please try again later.",
            "errorCode": "SERVER_UNAVAILABLE",
        }
    ]
    created = keyed_tasks(server, "c503-1", "c503-2")
    assert [r["Subject"] for r in created] == ["c503-1", "c503-2"]
    assert all(r["OwnerId"] == org["ae"] and not r["IsDeleted"] for r in created)
    after = server.stats()
    assert after["api_calls"] == before["api_calls"] + 1
    assert after["by_route"]["composite_sobjects"] == before["by_route"]["composite_sobjects"] + 1
    assert after["faults_injected"] == before["faults_injected"] + 1


def test_an_after_commit_hold_delays_the_real_answer_of_a_committed_write(
    sf: Salesforce, server: SandboxServer, org: dict
) -> None:
    hold = 0.5
    add_fault(
        server, method="POST", path_contains="/sobjects/Task", after_commit=True, delay_seconds=hold
    )
    before = server.stats()
    record = task(org, "held-1", Handoff_Key__c="held-1")
    record.pop("attributes")
    observer = client(server)  # a second API client, as another process would be
    soql = "SELECT Id FROM Task WHERE Handoff_Key__c = 'held-1'"
    polls = 0
    with ThreadPoolExecutor(max_workers=1) as pool:
        started = time.monotonic()
        pending = pool.submit(sf.Task.create, record)
        seen: list[dict[str, Any]] = []
        while not seen and time.monotonic() - started < hold:
            seen = observer.query(soql)["records"]
            polls += 1
        assert seen, "the write must be committed while its answer is held"
        assert not pending.done(), "the answer must still be held once the write is visible"
        created = pending.result(timeout=5)
        elapsed = time.monotonic() - started
    assert created == {"id": seen[0]["Id"], "success": True, "errors": []}
    assert elapsed >= hold
    after = server.stats()
    assert after["api_calls"] == before["api_calls"] + 1 + polls
    assert after["faults_injected"] == before["faults_injected"] + 1
    assert sf.Task.create(record)["success"] is True  # the rule is used up: no hold
    assert len(keyed_tasks(server, "held-1")) == 2


def test_a_delay_without_after_commit_still_comes_before_the_write(
    sf: Salesforce, server: SandboxServer, org: dict
) -> None:
    add_fault(server, method="POST", path_contains="/sobjects/Task", delay_seconds=1.5)
    record = task(org, "slow-1", Handoff_Key__c="slow-1")
    record.pop("attributes")
    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(sf.Task.create, record)
        time.sleep(0.15)
        assert keyed_tasks(server, "slow-1") == [] and not pending.done()
        created = pending.result(timeout=5)
    assert [r["Id"] for r in keyed_tasks(server, "slow-1")] == [created["id"]]


def test_a_held_answer_ends_when_the_client_gives_up(tmp_path: Path) -> None:
    with SandboxServer(tmp_path / "held.db", token=TOKEN) as running:
        add_fault(running, method="POST", after_commit=True, delay_seconds=30)
        with pytest.raises(requests.ReadTimeout):
            requests.post(
                f"{running.url}/services/data/v59.0/sobjects/Account",
                json={"Name": "Committed, never answered"},
                headers={"Authorization": f"Bearer {TOKEN}"},
                timeout=0.2,
            )
        assert [a["Name"] for a in running.store.rows("Account")] == ["Committed, never answered"]
        stopping = time.monotonic()
    assert time.monotonic() - stopping < 3, "stopping must not wait out the 30 s hold"


def test_after_commit_needs_an_error_or_a_hold(server: SandboxServer) -> None:
    with pytest.raises(ValueError, match="after_commit needs"):
        FaultRule(after_commit=True)
    control = f"{server.url}/__sandbox__/faults"
    refused = requests.post(control, json={"after_commit": True}, timeout=5)
    assert refused.status_code == 400 and "after_commit needs" in refused.json()["error"]
    hold = {"after_commit": True, "delay_seconds": 1, "path_contains": "/never-matches"}
    [rule] = requests.post(control, json=hold, timeout=5).json()["rules"]
    assert (rule["status"], rule["error_code"], rule["after_commit"]) == (None, None, True)


def test_fault_rules_can_be_listed_and_cleared(server: SandboxServer) -> None:
    control = f"{server.url}/__sandbox__/faults"
    requests.post(control, json={"error_code": "REQUEST_LIMIT_EXCEEDED", "times": 3}, timeout=5)
    [rule] = requests.get(control, timeout=5).json()["rules"]
    assert (rule["status"], rule["times"]) == (403, 3)
    assert requests.post(control, json={"stauts": 503}, timeout=5).status_code == 400
    assert requests.delete(control, timeout=5).json() == {"cleared": 1}


# -- the seeded org ------------------------------------------------------------------------------


def test_seeding_is_deterministic(tmp_path: Path) -> None:
    def snapshot(name: str, seed: int) -> dict[str, list[dict[str, Any]]]:
        store = SandboxStore(tmp_path / name)
        try:
            seed_org(store, seed=seed, deals=30, today=TODAY)
            return {s: store.rows(s) for s in ("User", "Account", "Contact", "Opportunity",
                                              "OpportunityContactRole", "Task", "Event",
                                              "EmailMessage")}  # fmt: skip
        finally:
            store.close()

    first, again, other = snapshot("a.db", 11), snapshot("b.db", 11), snapshot("c.db", 12)
    assert first == again
    assert first["Opportunity"] and first["EmailMessage"] and first != other


def test_the_org_has_the_expected_people(sf: Salesforce) -> None:
    users = sf.query("SELECT Title, IsActive FROM User")["records"]
    titles = Counter((u["Title"], u["IsActive"]) for u in users)
    assert titles == {
        ("Account Executive", True): 4,
        ("Customer Success Manager", True): 2,
        ("Customer Success Manager", False): 1,
        ("Chief Customer Officer", True): 1,
    }
    soql = "SELECT Name, Email, IsActive FROM User WHERE Title = 'Chief Customer Officer'"
    [executive] = sf.query(soql)["records"]
    assert (executive["Name"], executive["Email"], executive["IsActive"]) == (
        "Dana Whitfield",
        "dana.whitfield@handoff-demo.example",  # the sender the project config names
        True,
    )


ZONES_OF = {
    "United States": {
        "America/New_York", "America/Chicago", "America/Denver", "America/Los_Angeles",
    },
    "United Kingdom": {"Europe/London"}, "Germany": {"Europe/Berlin"},
    "France": {"Europe/Paris"}, "Netherlands": {"Europe/Amsterdam"}, "Japan": {"Asia/Tokyo"},
    "Canada": {"America/Toronto", "America/Vancouver", "America/Edmonton"},
    "Australia": {
        "Australia/Sydney", "Australia/Melbourne", "Australia/Brisbane", "Australia/Perth",
    },
}  # fmt: skip
LANGUAGE_OF = {"Germany": "de_DE", "France": "fr_FR", "Netherlands": "nl_NL", "Japan": "ja_JP"}


def test_contacts_live_where_clients_do() -> None:
    store = SandboxStore(":memory:")
    seed_org(store, deals=1000, today=TODAY)
    edge_accounts = {
        d["AccountId"] for d in store.rows("Opportunity") if d["Name"] in EDGE_CASE_DEALS
    }
    accounts = {a["Id"]: a for a in store.rows("Account") if a["Id"] not in edge_accounts}
    contacts = [c for c in store.rows("Contact") if c["AccountId"] in accounts]
    assert all(c["MailingCountry"] == accounts[c["AccountId"]]["BillingCountry"] for c in contacts)
    countries = Counter(c["MailingCountry"] for c in contacts)
    assert set(countries) == set(ZONES_OF)
    ranked = [country for country, _ in countries.most_common()]
    assert ranked[0] == "United States" and countries["United States"] > len(contacts) * 0.4
    assert "United Kingdom" in ranked[1:3]

    zoned = [c for c in contacts if c["Time_Zone__c"]]
    assert 0.4 < len(zoned) / len(contacts) < 0.6
    assert all(c["Time_Zone__c"] in ZONES_OF[c["MailingCountry"]] for c in zoned)
    us_zones = {c["Time_Zone__c"] for c in zoned if c["MailingCountry"] == "United States"}
    assert us_zones == ZONES_OF["United States"]

    for country, language in LANGUAGE_OF.items():
        local = [c["Language__c"] for c in contacts if c["MailingCountry"] == country]
        assert set(local) == {language, None}
        assert 0.3 < local.count(language) / len(local) < 0.7
    english = [c for c in contacts if c["MailingCountry"] not in LANGUAGE_OF]
    assert all(c["Language__c"] is None and c["Greeting_Name__c"] is None for c in english)

    types = Counter(d["Type"] for d in store.rows("Opportunity"))
    assert types.most_common(1)[0][0] == "New Business"
    assert types["New Business"] > sum(types.values()) / 2


def test_one_account_in_four_is_owned_by_another_ae_than_its_deals() -> None:
    store = SandboxStore(":memory:")
    seed_org(store, deals=400, today=TODAY)
    account_owners = {a["Id"]: a["OwnerId"] for a in store.rows("Account")}
    deal_owners: dict[str, set[str]] = {}
    for deal in store.rows("Opportunity"):
        if deal["OwnerId"] is not None:
            deal_owners.setdefault(deal["AccountId"], set()).add(deal["OwnerId"])
    assert all(len(owners) == 1 for owners in deal_owners.values()), "one AE sells to an account"
    others = [a for a, owners in deal_owners.items() if owners != {account_owners[a]}]
    assert 0.15 < len(others) / len(deal_owners) < 0.35


def _primary(sf: Salesforce, deal_id: str) -> list[dict[str, Any]]:
    soql = (
        "SELECT Contact.FirstName, Contact.LastName, Contact.Email, Contact.HasOptedOutOfEmail, "
        "Contact.MailingCountry, Contact.Time_Zone__c, Contact.Language__c, "
        "Contact.Greeting_Name__c "
        f"FROM OpportunityContactRole WHERE OpportunityId = '{deal_id}' AND IsPrimary = true"
    )
    return [r["Contact"] for r in sf.query(soql)["records"]]


EDGE_CHECKS: list[tuple[str, Callable[[dict[str, Any], list[dict[str, Any]]], bool]]] = [
    ("Northwind Traders — no primary contact", lambda d, p: p == []),
    ("Globex — contact without email", lambda d, p: p[0]["Email"] is None),
    ("Initech — invalid email", lambda d, p: p[0]["Email"] == "bill.lumbergh(at)initech"),
    ("Umbrella Health — opted out", lambda d, p: p[0]["HasOptedOutOfEmail"] is True),
    (
        '<b>Stark</b> & "Sons" Ltd — HTML in names',
        lambda d, p: d["Account"]["Name"] == '<b>Stark</b> & "Sons" Ltd'
        and (p[0]["FirstName"], p[0]["LastName"]) == ("Zoë <script>alert(1)</script>", "O'Brien"),
    ),
    (
        "北京数据科技有限公司 — Unicode names",
        lambda d, p: d["Account"]["Name"] == "北京数据科技有限公司"
        and (p[0]["FirstName"], p[0]["LastName"]) == ("伟", "李")
        and (p[0]["Language__c"], p[0]["MailingCountry"]) == ("zh_CN", "China"),
    ),
    (
        "Hooli — header injection",
        lambda d, p: p[0]["FirstName"] == "Gavin\r\nBcc: attacker@evil.example",
    ),
    ("Pied Piper — no owner", lambda d, p: d["Owner"] is None and len(p) == 1),
    ("Vandelay Industries — no amount", lambda d, p: d["Amount"] is None),
    ("Soylent — inactive CSM", lambda d, p: d["Customer_Success_Manager__r"]["IsActive"] is False),
    (
        "Acme Corp — enterprise",
        lambda d, p: d["Amount"] == 250000.0
        and all(d[f"Handoff_{k}__c"] for k in ("Situation", "Goals", "Promises", "Objections",
                                                "Stakeholders", "Risks")),
    ),
    (
        "Initrode — existing customer upgrade",
        lambda d, p: d["Type"] == "Existing Customer - Upgrade"
        and d["Account"]["Name"] == "Initrode"
        and (p[0]["FirstName"], p[0]["LastName"], p[0]["Email"])
        == ("Peter", "Gibbons", "peter.gibbons@initrode.example"),
    ),
    (
        "Cyberdyne Systems — renewal",
        lambda d, p: d["Type"] == "Renewal"
        and d["Account"]["Name"] == "Cyberdyne Systems"
        and p[0]["Email"] == "miles.dyson@cyberdyne.example",
    ),
    (
        "Tanaka Robotics — client in Tokyo",
        lambda d, p: d["Type"] == "New Business"
        and (d["Account"]["Name"], d["Account"]["BillingCountry"]) == ("Tanaka Robotics", "Japan")
        and (p[0]["FirstName"], p[0]["LastName"], p[0]["Email"])
        == ("陽翔", "田中", "haruto.tanaka@tanaka-robotics.example")
        and (p[0]["Time_Zone__c"], p[0]["Language__c"], p[0]["MailingCountry"])
        == ("Asia/Tokyo", "ja_JP", "Japan"),
    ),
    (
        "Sunset Pictures — client in Los Angeles",
        lambda d, p: d["Account"]["Name"] == "Sunset Pictures"
        and p[0]["Email"] == "jessica.miller@sunset-pictures.example"
        and (p[0]["Time_Zone__c"], p[0]["Language__c"], p[0]["MailingCountry"])
        == ("America/Los_Angeles", None, "United States"),
    ),
    (
        "Weber Maschinenbau — country only, formal greeting",
        lambda d, p: (d["Account"]["Name"], d["Account"]["BillingCountry"])
        == ("Weber Maschinenbau GmbH", "Germany")
        and d["Account"]["Time_Zone__c"] is None
        and (p[0]["FirstName"], p[0]["LastName"], p[0]["Greeting_Name__c"])
        == ("Katrin", "Weber", "Frau Dr. Weber")
        and (p[0]["Time_Zone__c"], p[0]["Language__c"], p[0]["MailingCountry"])
        == (None, None, "Germany"),
    ),
]  # fmt: skip


@pytest.mark.parametrize(("name", "check"), EDGE_CHECKS, ids=[n for n, _ in EDGE_CHECKS])
def test_named_edge_case_deals(
    sf: Salesforce, name: str, check: Callable[[dict[str, Any], list[dict[str, Any]]], bool]
) -> None:
    escaped = name.replace("\\", "\\\\").replace("'", "\\'")
    soql = (
        "SELECT Id, Name, Type, Amount, IsWon, LastStageChangeDate, Account.Name, "
        "Account.BillingCountry, Account.Time_Zone__c, Owner.Name, "
        "Customer_Success_Manager__r.IsActive, Handoff_Situation__c, Handoff_Goals__c, "
        "Handoff_Promises__c, Handoff_Objections__c, Handoff_Stakeholders__c, Handoff_Risks__c "
        f"FROM Opportunity WHERE Name = '{escaped}'"
    )
    [deal] = sf.query(soql)["records"]
    assert deal["IsWon"] is True
    assert deal["LastStageChangeDate"].startswith((TODAY - timedelta(days=1)).isoformat())
    primary = _primary(sf, deal["Id"])
    assert check(deal, primary)
    assert all(c["MailingCountry"] == deal["Account"]["BillingCountry"] for c in primary)


def test_edge_case_names_are_exported() -> None:
    assert len(EDGE_CASE_DEALS) == len(EDGE_CHECKS)
    assert set(EDGE_CASE_DEALS) == {name for name, _ in EDGE_CHECKS}


def test_recent_wins_fall_in_the_window_and_some_share_a_modstamp(sf: Salesforce) -> None:
    start = datetime.combine(TODAY - timedelta(days=3), datetime.min.time(), tzinfo=UTC)
    soql = (
        "SELECT Id, SystemModstamp, LastStageChangeDate FROM Opportunity WHERE IsWon = true "
        f"AND LastStageChangeDate >= {start.strftime('%Y-%m-%dT%H:%M:%SZ')} "
        "AND Name != 'Stage walk' "  # won through the API by another test, at wall-clock time
        "ORDER BY SystemModstamp, Id"
    )
    recent = sf.query(soql)["records"]
    assert len(recent) >= len(EDGE_CASE_DEALS) + 4
    end_of_today = f"{TODAY.isoformat()}T23:59:59.999+0000"
    for deal in recent:
        assert deal["LastStageChangeDate"] < f"{TODAY.isoformat()}T00:00:00.000+0000"
        assert deal["LastStageChangeDate"] <= deal["SystemModstamp"] <= end_of_today
    shared = Counter(d["SystemModstamp"] for d in recent).most_common(1)[0]
    assert shared[1] >= 3, "a bulk update leaves several wins with one SystemModstamp"


@pytest.mark.parametrize(("onboarding_days", "recent_share"), [(90, 0.1), (1, 0.25), (3, 0.5)])
def test_recent_wins_spread_over_the_onboarding_window(
    onboarding_days: int, recent_share: float
) -> None:
    store = SandboxStore(":memory:")
    summary = seed_org(
        store, deals=1000, today=TODAY, onboarding_days=onboarding_days, recent_share=recent_share
    )
    midnight = f"{TODAY.isoformat()}T00:00:00.000+0000"
    start = f"{(TODAY - timedelta(days=onboarding_days)).isoformat()}T00:00:00.000+0000"
    wins = [
        d for d in store.rows("Opportunity") if d["IsWon"] and d["LastStageChangeDate"] >= start
    ]
    # The named clients of the red-flag scenario count too when won inside the window.
    window = datetime.combine(TODAY - timedelta(days=onboarding_days), datetime.min.time(), UTC)
    named = sum(1 for case in HISTORY_CASES if case.won_at(TODAY) >= window)
    expected = round(1000 * recent_share) + len(EDGE_CASE_DEALS) + named
    assert len(wins) == summary["recent_won"] == expected
    days_ago = Counter(
        (TODAY - date.fromisoformat(d["LastStageChangeDate"][:10])).days for d in wins
    )
    assert min(days_ago) == 1 and max(days_ago) == onboarding_days
    assert len(days_ago) > onboarding_days * 0.6, "spread over the window, not bunched up"
    for deal in wins:
        changed = datetime.fromisoformat(deal["LastStageChangeDate"])
        assert (
            changed <= datetime.fromisoformat(deal["SystemModstamp"]) < changed + timedelta(days=1)
        ), "stamped shortly after the stage change"
        assert deal["SystemModstamp"] < midnight
    assert summary["shared_modstamp_deals"] == 4


@pytest.mark.parametrize(
    "options", [{"onboarding_days": 0}, {"recent_share": -0.1}, {"recent_share": 1.5}]
)
def test_seed_options_are_checked(options: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        seed_org(SandboxStore(":memory:"), deals=10, today=TODAY, **options)


def test_company_names_stay_unique_beyond_every_combination() -> None:
    """About 3,800 stem/kind/suffix combinations; a larger org qualifies the names.

    The named clients of the red-flag scenario keep their own names (the same in every CRM),
    so "Willow Health" may also be a generated company, as two accounts of a real org may be.
    """
    store = SandboxStore(":memory:")
    summary = seed_org(store, deals=6600, today=TODAY)
    cases = {case.deal for case in HISTORY_CASES}
    named = {d["AccountId"] for d in store.rows("Opportunity") if d["Name"] in cases}
    names = [a["Name"] for a in store.rows("Account") if a["Id"] not in named]
    assert len(names) == len(set(names)) == summary["accounts"] - len(HISTORY_CASES) > 3900
    assert any(" Nordic" in name for name in names)


def test_bulk_inserts_store_what_single_inserts_would(tmp_path: Path) -> None:
    stamp = datetime(2026, 1, 1, tzinfo=UTC)

    def fill(insert: Callable[..., str]) -> list[str]:
        user = insert("User", {"LastName": "Rep"}, modstamp=stamp)
        accounts = [
            insert("Account", {"Name": f"Account {n}", "OwnerId": user}, modstamp=stamp)
            for n in range(5)
        ]
        return [user, *accounts]

    single, bulk = SandboxStore(tmp_path / "single.db"), SandboxStore(tmp_path / "bulk.db")
    single_ids = fill(single.insert)
    with bulk.bulk_insert(batch_size=2) as inserter:
        bulk_ids = fill(inserter.insert)
    assert bulk_ids == single_ids
    for name in ("User", "Account"):
        assert bulk.rows(name) == single.rows(name)
    after = {"Name": "After"}
    assert bulk.insert("Account", after) == single.insert("Account", after), "counters kept"


# -- running the server --------------------------------------------------------------------------


def test_the_server_thread_stops_cleanly(tmp_path: Path) -> None:
    with SandboxServer(tmp_path / "quick.db") as running:
        name = f"sandbox-crm-{running.port}"
        assert any(t.name == name for t in threading.enumerate())
        assert requests.get(f"{running.url}/__sandbox__/health", timeout=5).json() == {"ok": True}
    assert not any(t.name == name for t in threading.enumerate())
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{running.url}/__sandbox__/health", timeout=2)


def test_serve_seeds_announces_itself_and_stops_on_sigterm(tmp_path: Path) -> None:
    db = tmp_path / "cli.db"
    code = (
        "import datetime, handoff.sandbox.server as s; "
        f"s.serve({str(db)!r}, deals=5, today=datetime.date(2026, 11, 23), token='cli-token')"
    )
    with subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as process:
        try:
            assert process.stdout is not None
            announced = json.loads(process.stdout.readline())
            assert set(announced) == {"salesforce_url", "token", "db"}
            assert announced["token"] == "cli-token" and announced["db"] == str(db)
            answer = requests.get(
                f"{announced['salesforce_url']}/services/data/v59.0/query/",
                params={"q": "SELECT COUNT() FROM Opportunity"},
                headers={"Authorization": "Bearer cli-token"},
                timeout=5,
            )
            assert answer.json()["totalSize"] == 5 + len(EDGE_CASE_DEALS) + len(HISTORY_CASES)
            process.send_signal(signal.SIGTERM)
            _, errors = process.communicate(timeout=10)
            assert process.returncode == 0, errors
        finally:
            if process.poll() is None:
                process.kill()
                process.communicate()


def test_a_fault_rule_with_every_fails_one_call_in_n(sf: Salesforce, server: SandboxServer) -> None:
    add_fault(server, path_contains="/sobjects/Account/describe", status=503, every=3, times=-1)
    outcomes = []
    for _ in range(6):
        try:
            sf.Account.describe()
            outcomes.append("ok")
        except SalesforceGeneralError as exc:
            outcomes.append(exc.status)
    assert outcomes == ["ok", "ok", 503] * 2
