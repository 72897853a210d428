"""Activities from Salesforce: the seeded client histories come back through the connector.

Every read goes through the real simple-salesforce client over HTTP against the sandbox, as a
run does: Task, Event and EmailMessage, in batches of deals, incrementally, deleted ones too.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from typing import Any
from urllib.parse import quote_plus

import pandas as pd
import pytest
from simple_salesforce import Salesforce
from simple_salesforce.exceptions import SalesforceError

from handoff.config import load_settings
from handoff.crm import salesforce as connector
from handoff.crm.base import (
    ACTIVITY_COLUMNS,
    ACTIVITY_DIRECTIONS,
    ACTIVITY_KINDS,
    ACTIVITY_OUTCOMES,
    SNIPPET_CHARS,
)
from handoff.crm.http import build_session
from handoff.crm.salesforce import SalesforceCRM
from handoff.models import dedupe_key
from handoff.redflags.steps import LoadedOnUse
from handoff.sandbox import SandboxServer, SandboxStore, seed_org
from handoff.sandbox.histories import HISTORY_CASES, SeedActivity, healthy_history
from handoff.sandbox.soql import MAX_SOQL_LENGTH

TODAY = date(2026, 11, 23)
UNTIL = datetime.combine(TODAY, datetime.min.time(), UTC)  # the seed's history ends here
STREAMS = ("Task", "Event", "EmailMessage")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SandboxServer]:
    """A seeded org, read and never changed by the tests that share it."""
    with SandboxServer(tmp_path_factory.mktemp("activities") / "org.db") as running:
        seed_org(running.store, seed=7, deals=60, today=TODAY)
        yield running


def connect(server: SandboxServer, **settings_changes: Any) -> SalesforceCRM:
    settings = load_settings()
    if settings_changes:
        org = settings.salesforce.model_copy(update=settings_changes)
        settings = settings.model_copy(update={"salesforce": org})
    client = Salesforce(
        instance_url=server.url, session_id=server.token, session=build_session(server.url)
    )
    return SalesforceCRM.from_settings(client, settings)


def activities(**changes: Any) -> Any:
    """The [salesforce.activities] settings with these changes."""
    return load_settings().salesforce.activities.model_copy(update=changes)


@pytest.fixture(scope="module")
def seeded_crm(server: SandboxServer) -> SalesforceCRM:
    return connect(server)


def won_deals(store: SandboxStore) -> dict[str, str | None]:
    """Every Closed Won deal and its primary contact, as the pipeline passes them."""
    primary = {
        role["OpportunityId"]: role["ContactId"]
        for role in store.rows("OpportunityContactRole")
        if role["IsPrimary"]
    }
    return {
        deal["Id"]: primary.get(deal["Id"]) for deal in store.rows("Opportunity") if deal["IsWon"]
    }


def read(
    crm: SalesforceCRM, stream: str, deals: dict[str, str | None], since, until
) -> pd.DataFrame:
    frames = list(crm.iter_activities(stream, deals, since, until))
    return (
        pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=ACTIVITY_COLUMNS)
    )


def read_all(crm: SalesforceCRM, deals, since=None, until=UNTIL) -> pd.DataFrame:
    return pd.concat([read(crm, stream, deals, since, until) for stream in STREAMS])


def deal_ids(store: SandboxStore) -> dict[str, str]:
    return {deal["Name"]: deal["Id"] for deal in store.rows("Opportunity")}


def expected_outcome(item: SeedActivity) -> str | None:
    """What the frame says of a seeded activity: a scheduled meeting has no outcome in the
    CRM (the rules decide by its time), emails and notes never have one."""
    if item.kind in ("email", "note") or item.outcome == "scheduled":
        return None
    return item.outcome


def as_logged(item: SeedActivity) -> tuple[Any, ...]:
    # Salesforce keeps milliseconds: a seeded time is stored cut to them.
    at = pd.Timestamp(item.at).floor("ms")
    return (item.kind, item.direction, expected_outcome(item), at, item.subject)


def logged(frame: pd.DataFrame) -> Counter:
    columns = ["kind", "direction", "outcome", "occurred_at", "subject"]
    return Counter(tuple(row) for row in frame[columns].itertuples(index=False))


# -- the frame ---------------------------------------------------------------------------------


@pytest.mark.parametrize("stream", STREAMS)
def test_each_stream_yields_the_activity_frame(seeded_crm, server, stream) -> None:
    frames = list(seeded_crm.iter_activities(stream, won_deals(server.store), None, UNTIL))
    assert frames
    for frame in frames:
        assert list(frame.columns) == ACTIVITY_COLUMNS
        assert str(frame["occurred_at"].dtype) == "datetime64[ns, UTC]"
        assert str(frame["modstamp"].dtype) == "datetime64[ns, UTC]"
        assert frame["is_deleted"].dtype == bool and not frame["is_deleted"].any()
        assert set(frame["kind"]) <= set(ACTIVITY_KINDS)
        assert set(frame["direction"]) <= set(ACTIVITY_DIRECTIONS)
        assert set(frame["outcome"]) <= {*ACTIVITY_OUTCOMES, None}
        assert frame["occurred_at"].notna().all() and (frame["modstamp"] < UNTIL).all()
        assert frame["snippet"].map(lambda s: s is None or len(s) <= SNIPPET_CHARS).all()
        text = frame[["subject", "snippet", "owner_id", "handoff_key", "outcome"]]
        assert not text.map(lambda v: isinstance(v, float)).any().any(), "None, never NaN"
        ordered = list(zip(frame["modstamp"], frame["activity_id"], strict=True))
        assert ordered == sorted(ordered), "in SystemModstamp, Id order"
    frame = pd.concat(frames)
    kinds = {"Task": {"call", "note", "task"}, "Event": {"meeting"}, "EmailMessage": {"email"}}
    assert set(frame["kind"]) == kinds[stream]
    if stream == "EmailMessage":
        inbound = frame[frame["direction"] == "inbound"]
        assert inbound["owner_id"].isna().all() and frame["owner_id"].notna().sum() > 0
    else:
        assert frame["owner_id"].str.startswith("005").all()


def test_every_named_client_history_comes_back_as_it_happened(seeded_crm, server) -> None:
    ids = deal_ids(server.store)
    every = won_deals(server.store)
    frame = read_all(seeded_crm, {ids[case.deal]: every[ids[case.deal]] for case in HISTORY_CASES})
    for case in HISTORY_CASES:
        won_at = case.won_at(TODAY)
        deal_id = ids[case.deal]
        stored = server.store.get("Opportunity", deal_id)
        assert datetime.fromisoformat(stored["LastStageChangeDate"]) == won_at
        assert every[deal_id] is not None, "each named client has a primary contact"
        history = case.history(won_at)
        mine = frame[frame["deal_id"] == deal_id]
        assert logged(mine) == Counter(as_logged(item) for item in history), case.deal
        assert set(mine["handoff_key"].dropna()) == {
            dedupe_key("salesforce", deal_id, item.step) for item in history if item.step
        }
    assert len(frame) == sum(len(case.history(case.won_at(TODAY))) for case in HISTORY_CASES)


def test_an_ordinary_deal_has_its_healthy_history(seeded_crm, server) -> None:
    cases = {case.deal for case in HISTORY_CASES}
    since = (UNTIL - timedelta(days=95)).isoformat()
    ordinary = [
        d for d in server.store.rows("Opportunity")
        if d["IsWon"] and d["Name"] not in cases and d["LastStageChangeDate"] >= since
    ]  # fmt: skip
    deal = min(ordinary, key=lambda d: d["LastStageChangeDate"])  # the longest history
    won_at = datetime.fromisoformat(deal["LastStageChangeDate"])
    frame = read_all(seeded_crm, {deal["Id"]: None})
    expected = healthy_history(deal["Name"], won_at, UNTIL)
    assert len(expected) >= 10 and logged(frame) == Counter(as_logged(i) for i in expected)
    assert (frame["deal_id"] == deal["Id"]).all()
    [win] = frame[frame["kind"] == "task"].itertuples()
    assert (win.outcome, win.handoff_key) == (
        "completed", dedupe_key("salesforce", deal["Id"], "first_visible_win")
    )  # fmt: skip


def test_the_scope_change_checkbox_is_read_into_the_deal_frame(seeded_crm, server) -> None:
    frame = pd.concat(seeded_crm.iter_changed_deals(None, UNTIL)).set_index("name")
    for case in HISTORY_CASES:
        assert frame.loc[case.deal, "scope_change"] is case.scope_change
    assert set(frame["scope_change"]) == {True, False}
    unread = connect(server, activities=activities(scope_change_field=""))
    frame = pd.concat(unread.iter_changed_deals(None, UNTIL))
    assert frame["scope_change"].isna().all()
    assert "Scope_Change" not in unread.deals_soql(None, UNTIL)


def test_without_an_outcome_field_meetings_have_no_outcome(server) -> None:
    crm = connect(server, activities=activities(event_outcome_field=""))
    assert "Outcome__c" not in crm.activities_soql("Event", ["006000000000001AAA"], [], None, UNTIL)
    frame = read(crm, "Event", won_deals(server.store), None, UNTIL)
    assert len(frame) > 0 and frame["outcome"].isna().all()


def test_without_a_key_field_the_key_is_read_from_the_description(server) -> None:
    crm = connect(server, task_key_field="")
    frame = read(crm, "Task", won_deals(server.store), None, UNTIL)
    keyed = frame.dropna(subset=["handoff_key"])
    assert len(keyed) > 0
    assert all(
        key == dedupe_key("salesforce", deal_id, "first_visible_win")
        for key, deal_id in zip(keyed["handoff_key"], keyed["deal_id"], strict=True)
    )


# -- incremental reads -------------------------------------------------------------------------


@pytest.fixture
def seeded(sandbox) -> SandboxServer:
    """A seeded org of the test's own, to change."""
    seed_org(sandbox.store, seed=7, deals=60, today=TODAY)
    return sandbox


def test_a_second_read_gets_only_what_changed_since_deleted_records_included(crm, seeded) -> None:
    store = seeded.store
    deals = won_deals(store)
    first = read_all(crm, deals, None, UNTIL)
    assert len(first) == store.count("Task") + store.count("Event") + store.count("EmailMessage")
    later = UNTIL + timedelta(hours=2)
    assert read_all(crm, deals, UNTIL, later).empty, "nothing changed since"

    changed = first[first["kind"] == "call"].iloc[0]
    gone = first[first["kind"] == "email"].iloc[-1]
    renamed_at = UNTIL + timedelta(hours=1)
    store.update("Task", changed["activity_id"], {"Subject": "Renamed call"}, modstamp=renamed_at)
    store.delete("EmailMessage", gone["activity_id"], modstamp=UNTIL + timedelta(minutes=90))
    calls = crm.api_calls
    again = read_all(crm, deals, UNTIL, later)
    assert crm.api_calls - calls == len(STREAMS), "one query a stream for a few dozen deals"
    assert list(again["activity_id"]) == [changed["activity_id"], gone["activity_id"]]
    renamed, deleted = again.iloc[0], again.iloc[1]
    assert (renamed["subject"], renamed["kind"], bool(renamed["is_deleted"])) == (
        "Renamed call", "call", False,
    )  # fmt: skip
    assert renamed["modstamp"] == renamed_at
    assert renamed["occurred_at"] == changed["occurred_at"], "still when the call was made"
    assert bool(deleted["is_deleted"]) and deleted["deal_id"] == gone["deal_id"]
    assert read_all(crm, deals, later, later + timedelta(hours=1)).empty


def test_an_activity_on_the_primary_contact_counts_for_its_deals(crm, seeded) -> None:
    store = seeded.store
    ids = deal_ids(store)
    deals = won_deals(store)
    first, second = ids["Harbor Dental — no first contact"], ids["Cedar Foods — asks for more"]
    contact = deals[first]
    owner = store.get("Opportunity", first)["Customer_Success_Manager__c"]
    stamp = UNTIL + timedelta(minutes=5)
    call = {"OwnerId": owner, "TaskSubtype": "Call", "CallType": "Inbound", "Status": "Completed"}
    on_contact = store.insert(
        "Task", {**call, "WhoId": contact, "Subject": "Called from her mobile"}, modstamp=stamp
    )
    both = store.insert(
        "Task", {**call, "WhatId": first, "WhoId": contact, "Subject": "Logged on the deal"},
        modstamp=stamp,
    )  # fmt: skip
    account = store.get("Opportunity", first)["AccountId"]
    stranger = store.insert("Contact", {"LastName": "Nobody", "AccountId": account})
    store.insert(
        "Task", {**call, "WhatId": account, "WhoId": stranger, "Subject": "Not ours"},
        modstamp=stamp,
    )  # fmt: skip
    store.insert(
        "Event",
        {"OwnerId": owner, "WhoId": contact, "Subject": "Lunch", "StartDateTime": stamp,
         "EndDateTime": stamp + timedelta(hours=1)},
        modstamp=stamp,
    )  # fmt: skip

    later = UNTIL + timedelta(hours=1)
    tasks = read(crm, "Task", deals, UNTIL, later)
    assert sorted(zip(tasks["activity_id"], tasks["deal_id"], strict=True)) == sorted(
        [(on_contact, first), (both, first)]
    )
    row = tasks.set_index("activity_id").loc[on_contact]
    assert (row["kind"], row["direction"], row["outcome"]) == ("call", "inbound", "completed")
    [meeting] = read(crm, "Event", deals, UNTIL, later).itertuples()
    assert (meeting.deal_id, meeting.kind, meeting.outcome) == (first, "meeting", None)

    # A contact who is primary on two of the deals: the record counts for each of them once.
    shared = {**deals, second: contact}
    tasks = read(crm, "Task", shared, UNTIL, later)
    assert Counter(zip(tasks["activity_id"], tasks["deal_id"], strict=True)) == {
        (on_contact, first): 1, (on_contact, second): 1, (both, first): 1,
    }  # fmt: skip


def test_kinds_directions_outcomes_and_times_follow_the_record_fields(crm, seeded) -> None:
    store = seeded.store
    deal = deal_ids(store)["Brightline Logistics — healthy client"]
    owner = store.get("Opportunity", deal)["Customer_Success_Manager__c"]
    stamp = UNTIL + timedelta(minutes=10)
    tasks = {
        "logged email": ({"TaskSubtype": "Email", "Status": "Completed"}, "email", "outbound",
                         None, stamp),
        "internal call": ({"TaskSubtype": "Call", "CallType": "Internal", "Status": "Completed"},
                          "call", "internal", "completed", stamp),
        "call to make": ({"TaskSubtype": "Call", "CallType": "Outbound",
                          "ActivityDate": "2026-11-25"}, "call", "outbound", None,
                         datetime(2026, 11, 25, tzinfo=UTC)),
        "a note": ({"Type": "note ", "Status": "Completed"}, "note", "internal", None, stamp),
        "open to-do": ({"ActivityDate": "2026-11-30"}, "task", "internal", None,
                       datetime(2026, 11, 30, tzinfo=UTC)),
        "undated to-do": ({}, "task", "internal", None, stamp),
    }  # fmt: skip
    for subject, (fields, *_) in tasks.items():
        base = {"WhatId": deal, "OwnerId": owner, "Subject": subject}
        store.insert("Task", {**base, **fields}, modstamp=stamp)
    meetings = {"Held": "completed", "Rescheduled": "cancelled", "No Show": "no_show",
                "Maybe": None, None: None}  # fmt: skip
    for value in meetings:
        store.insert(
            "Event",
            {"WhatId": deal, "OwnerId": owner, "Subject": f"Meeting {value}",
             "StartDateTime": stamp + timedelta(days=2), "EndDateTime": stamp + timedelta(days=3),
             "Outcome__c": value},
            modstamp=stamp,
        )  # fmt: skip
    later = stamp + timedelta(minutes=1)
    found = read(crm, "Task", {deal: None}, UNTIL, later).set_index("subject")
    for subject, (_, kind, direction, outcome, occurred_at) in tasks.items():
        row = found.loc[subject]
        assert (row["kind"], row["direction"], row["outcome"]) == (kind, direction, outcome)
        assert row["occurred_at"] == occurred_at, subject
    found = read(crm, "Event", {deal: None}, UNTIL, later).set_index("subject")
    for value, outcome in meetings.items():
        row = found.loc[f"Meeting {value}"]
        assert (row["kind"], row["direction"], row["outcome"]) == ("meeting", "outbound", outcome)
        assert row["occurred_at"] == stamp + timedelta(days=2)


# -- batches of deals --------------------------------------------------------------------------


def bulk_org(store: SandboxStore, deals: int) -> dict[str, str]:
    """``deals`` won deals, each with its own primary contact: ``{deal id: contact id}``."""
    owned = {}
    with store.bulk_insert() as inserter:
        for n in range(deals):
            deal = inserter.insert(
                "Opportunity",
                {"Name": f"Deal {n}", "StageName": "Closed Won", "CloseDate": "2026-11-02"},
                modstamp=UNTIL - timedelta(days=20),
            )
            owned[deal] = inserter.insert("Contact", {"LastName": f"Client {n}"})
    return owned


def test_deals_are_read_in_as_few_statements_as_salesforce_limits_allow(crm, sandbox) -> None:
    """2,100 deals: Task and Event name each deal and its contact, 92,400 characters of ids,
    more than one statement holds (100,000 characters in all), so two statements; EmailMessage
    names the deals only, so one. Statements too long for a URI go in a Composite body."""
    deals = bulk_org(sandbox.store, 2100)
    owner = sandbox.store.insert("User", {"LastName": "Csm", "IsActive": True})
    first, last = sorted(deals)[0], sorted(deals)[-1]
    on_first = sandbox.store.insert(
        "Task", {"WhatId": first, "OwnerId": owner, "Subject": "On the first deal"},
        modstamp=UNTIL - timedelta(days=1),
    )  # fmt: skip
    # The last deal's contact is primary on the first deal too: a batch apart.
    both = {**deals, first: deals[last]}
    on_contact = sandbox.store.insert(
        "Task", {"WhoId": deals[last], "OwnerId": owner, "Subject": "Call"},
        modstamp=UNTIL - timedelta(hours=3),
    )  # fmt: skip
    on_deal = sandbox.store.insert(
        "Task", {"WhatId": first, "WhoId": deals[last], "OwnerId": owner, "Subject": "Deal"},
        modstamp=UNTIL - timedelta(hours=2),
    )  # fmt: skip
    for stream, statements in {"Task": 2, "Event": 2, "EmailMessage": 1}.items():
        calls, composite = crm.api_calls, sandbox.stats()["by_route"].get("composite", 0)
        read(crm, stream, both, None, UNTIL)
        assert crm.api_calls - calls == statements, stream
        # The full statement goes in a Composite body; the last few deals' fits a URI.
        assert sandbox.stats()["by_route"]["composite"] - composite == 1, stream
    tasks = read(crm, "Task", both, None, UNTIL)
    assert Counter(zip(tasks["activity_id"], tasks["deal_id"], strict=True)) == {
        (on_first, first): 1,
        (on_contact, first): 1,
        (on_contact, last): 1,
        (on_deal, first): 1,  # its deal's batch reads it, not the contact's other deal's
    }

    for stream in ("Task", "Event"):  # the longest statements: a full first batch
        chunk = next(connector._in_lists(sorted(deals), ids_per_value=2))
        soql = crm.activities_soql(stream, chunk, [deals[d] for d in chunk], UNTIL, UNTIL)
        assert MAX_SOQL_LENGTH * 0.8 < len(soql) < MAX_SOQL_LENGTH, stream


def test_a_statement_too_long_for_the_uri_travels_in_a_composite_body(crm, sandbox) -> None:
    deals = bulk_org(sandbox.store, 300)
    soql = crm.activities_soql("Task", sorted(deals), sorted(deals.values()), None, UNTIL)
    assert len(f"/services/data/v59.0/queryAll/?q={quote_plus(soql)}") > 16_384
    with pytest.raises(SalesforceError, match="414"):  # what a plain query of it gets
        crm.client.query_all_iter(soql).__next__()
    owner = sandbox.store.insert("User", {"LastName": "Csm", "IsActive": True})
    logged = sandbox.store.insert(
        "Task", {"WhatId": sorted(deals)[-1], "OwnerId": owner, "Subject": "Call"},
        modstamp=UNTIL - timedelta(hours=1),
    )  # fmt: skip
    # A read, so a 5xx on the Composite request is retried (the transport retries no POST).
    sandbox.faults.add(method="POST", path_contains="/composite", status=503, times=2)
    calls = crm.api_calls
    tasks = read(crm, "Task", deals, None, UNTIL)
    assert tasks["activity_id"].tolist() == [logged]
    assert crm.api_calls - calls == 3


def test_an_hours_changes_for_many_deals_are_one_query_over_the_org(crm, sandbox) -> None:
    """Incremental reads for more deals than one batch: one window query per stream (a page
    per 2,000 records), filtered to the given deals and their contacts, not one per 200 deals."""
    deals = bulk_org(sandbox.store, 700)
    owner = sandbox.store.insert("User", {"LastName": "Csm", "IsActive": True})
    first, last = sorted(deals)[0], sorted(deals)[-1]
    since = UNTIL - timedelta(hours=1)
    on_deal = sandbox.store.insert(
        "Task", {"WhatId": first, "OwnerId": owner, "Subject": "Changed"},
        modstamp=UNTIL - timedelta(minutes=30),
    )  # fmt: skip
    on_contact = sandbox.store.insert(
        "Task", {"WhoId": deals[last], "OwnerId": owner, "Subject": "Call"},
        modstamp=UNTIL - timedelta(minutes=20),
    )  # fmt: skip
    other = sandbox.store.insert("Opportunity", {"Name": "Not ours", "StageName": "Prospecting",
                                                 "CloseDate": "2026-12-31"})  # fmt: skip
    sandbox.store.insert(
        "Task", {"WhatId": other, "OwnerId": owner, "Subject": "Someone else's"},
        modstamp=UNTIL - timedelta(minutes=10),
    )  # fmt: skip
    sandbox.store.insert(
        "Task", {"WhatId": first, "OwnerId": owner, "Subject": "Before the window"},
        modstamp=since - timedelta(minutes=1),
    )  # fmt: skip
    loads: list[int] = []
    watched = LoadedOnUse(lambda: loads.append(1) or deals, size=len(deals))
    for stream in STREAMS:
        calls = crm.api_calls
        assert read(crm, stream, watched, UNTIL, UNTIL + timedelta(hours=1)).empty
        assert crm.api_calls - calls == 1, stream
    assert loads == [], "a quiet hour never looks at the deals"
    for stream in STREAMS:
        calls = crm.api_calls
        read(crm, stream, watched, since, UNTIL)
        assert crm.api_calls - calls == 1, stream
    assert loads == [1], "loaded once something changed, then kept"
    tasks = read(crm, "Task", deals, since, UNTIL)
    assert Counter(zip(tasks["activity_id"], tasks["deal_id"], strict=True)) == {
        (on_deal, first): 1,
        (on_contact, last): 1,
    }


# -- the seed ----------------------------------------------------------------------------------

ACTIVITY_OBJECTS = ("Task", "Event", "EmailMessage")
# Every record a seed made before client histories existed, as it was then (seed 7, 60 deals,
# today 2026-11-23): its count, and a digest of its rows in Id order without the fields added
# since (Opportunity.Scope_Change_Requested__c).
BEFORE_HISTORIES = {
    "User": (8, "c4a8e40c4d2202a2"),
    "Account": (52, "86a23964b4bdb3a3"),
    "Contact": (89, "b1108fb4baa432ae"),
    "Opportunity": (76, "d5f429437fde298a"),
    "OpportunityContactRole": (105, "ac584f21aaad2e7a"),
}
ADDED_FIELDS = {"Scope_Change_Requested__c"}


def digest(rows: list[dict[str, Any]]) -> str:
    kept = [{k: v for k, v in row.items() if k not in ADDED_FIELDS} for row in rows]
    text = json.dumps(kept, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def test_histories_leave_every_record_seeded_before_them_unchanged() -> None:
    with_histories, without = SandboxStore(":memory:"), SandboxStore(":memory:")
    summary = seed_org(with_histories, seed=7, deals=60, today=TODAY)
    seed_org(without, seed=7, deals=60, today=TODAY, _histories=False)
    for sobject, (count, fingerprint) in BEFORE_HISTORIES.items():
        rows = with_histories.rows(sobject)
        assert rows[:count] == without.rows(sobject), sobject
        assert digest(rows[:count]) == fingerprint, f"{sobject} changed since before histories"
    assert all(not d["Scope_Change_Requested__c"] for d in without.rows("Opportunity"))
    assert len(with_histories.rows("Opportunity")) == 76 + len(HISTORY_CASES)
    assert all(without.count(name) == 0 for name in ACTIVITY_OBJECTS)
    assert summary["history_cases"] == len(HISTORY_CASES)
    assert (summary["tasks"], summary["events"], summary["email_messages"]) == tuple(
        with_histories.count(name) for name in ACTIVITY_OBJECTS
    )


def test_the_same_seed_gives_the_same_histories() -> None:
    def activities(seed: int) -> dict[str, list[dict[str, Any]]]:
        store = SandboxStore(":memory:")
        seed_org(store, seed=seed, deals=30, today=TODAY)
        return {name: store.rows(name) for name in ACTIVITY_OBJECTS}

    first, again, other = activities(11), activities(11), activities(12)
    assert first == again and all(first[name] for name in ACTIVITY_OBJECTS)
    assert [r["Id"] for r in first["Task"]] == [r["Id"] for r in again["Task"]]
    assert first != other


def test_the_benchmark_load_gives_each_ordinary_deal_that_many_activities() -> None:
    store = SandboxStore(":memory:")
    summary = seed_org(store, seed=7, deals=60, today=TODAY, activities_per_deal=6)
    cases = {case.deal for case in HISTORY_CASES}
    names = {d["Id"]: d["Name"] for d in store.rows("Opportunity")}
    per_deal: Counter[str] = Counter()
    for name in ACTIVITY_OBJECTS:
        link = "RelatedToId" if name == "EmailMessage" else "WhatId"
        per_deal.update(row[link] for row in store.rows(name))
    ordinary = {d: n for d, n in per_deal.items() if names[d] not in cases}
    assert ordinary and max(ordinary.values()) == 6
    won = {d["Id"]: d["LastStageChangeDate"] for d in store.rows("Opportunity") if d["IsWon"]}
    settled = [d for d in ordinary if won[d] < (UNTIL - timedelta(days=7)).isoformat()]
    assert settled and all(ordinary[d] == 6 for d in settled)
    assert (
        sum(per_deal.values()) == summary["tasks"] + summary["events"] + summary["email_messages"]
    )
