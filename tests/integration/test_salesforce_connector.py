"""The Salesforce connector against the sandbox, through the real simple-salesforce client."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest
from simple_salesforce.exceptions import SalesforceGeneralError

from handoff.models import CrmTask
from handoff.pipeline import extract_changes
from tests.builders import WON_AT, SandboxOrg

WINDOW_END = WON_AT + timedelta(days=1)


@pytest.fixture
def org(sandbox):
    return SandboxOrg(sandbox.store)


def task(deal_id: str, owner: str, n: int = 0) -> CrmTask:
    return CrmTask(
        dedupe_key=f"salesforce:{deal_id}:step{n}",
        deal_id=deal_id,
        contact_id=None,
        owner_id=owner,
        subject=f"Step {n}",
        due_date=date(2026, 11, 21),
        priority="High",
        description=f"Context\n\nHandoff key: salesforce:{deal_id}:step{n}",
        remind_at=datetime(2026, 11, 20, 19, 30, tzinfo=UTC),
    )


def test_changed_deals_come_back_normalised(crm, org):
    deal_id = org.won_deal("Analytical Engines", amount=None, csm=None)
    [frame] = list(crm.iter_changed_deals(WON_AT - timedelta(days=1), WINDOW_END))
    row = frame.set_index("deal_id").loc[deal_id]
    assert row["name"] == "Analytical Engines"
    assert row["account_name"] == "Analytical Engines Ltd"
    assert bool(row["is_won"]) and not bool(row["is_deleted"])
    assert row["won_at"] == WON_AT
    assert row["owner_name"] == "Riley Rep" and row["owner_email"] == "riley.rep@seller.example"
    assert row["csm_id"] is None and row["csm_name"] is None
    assert row["amount"] != row["amount"]  # NaN: no amount
    assert row["doc_promises"].startswith("INTERNAL-PROMISE")


def test_the_window_bounds_the_query(crm, org):
    org.won_deal("Before", modstamp=WON_AT - timedelta(days=3))
    inside = org.won_deal("Inside", modstamp=WON_AT)
    org.won_deal("After", modstamp=WINDOW_END + timedelta(seconds=1))
    frames = list(crm.iter_changed_deals(WON_AT - timedelta(days=1), WINDOW_END))
    assert [d for f in frames for d in f["deal_id"]] == [inside]


def test_deleted_deals_are_read_through_query_all(crm, org, sandbox):
    deal_id = org.won_deal("Deleted later")
    sandbox.store.delete("Opportunity", deal_id, modstamp=WON_AT + timedelta(hours=1))
    [frame] = list(crm.iter_changed_deals(WON_AT - timedelta(days=1), WINDOW_END))
    assert bool(frame.set_index("deal_id").loc[deal_id, "is_deleted"])


def test_primary_contacts_in_one_query(crm, org):
    with_contact = org.won_deal("Has contact", contact={"FirstName": "李", "LastName": "伟"})
    not_primary = org.won_deal("Only a secondary contact", primary=False)
    calls = crm.api_calls
    contacts = crm.primary_contacts([with_contact, not_primary])
    assert crm.api_calls - calls == 1
    assert set(contacts) == {with_contact}
    assert contacts[with_contact].name == "李 伟"
    assert contacts[with_contact].email == "ada@client.example"


def test_incremental_extraction_with_shared_system_modstamps(crm, org, store, settings, sandbox):
    """Records that share a SystemModstamp are neither missed nor processed twice."""
    stamp = WON_AT + timedelta(hours=2)
    first = [org.won_deal(f"Tie {n}", modstamp=stamp) for n in range(3)]
    result = extract_changes(crm, store, settings, WINDOW_END)
    assert result["deals_changed"] == 3
    assert store.get_watermark("salesforce", "deals") == stamp

    # A record committed late with the very same SystemModstamp as the watermark.
    late = org.won_deal("Tie late", modstamp=stamp)
    result = extract_changes(crm, store, settings, WINDOW_END)
    assert result["deals_changed"] == 1, "only the late record is new"
    assert set(store.stored_modstamps("salesforce", [*first, late])) == {*first, late}

    # Nothing changed: nothing is processed again.
    assert extract_changes(crm, store, settings, WINDOW_END)["deals_changed"] == 0

    # A real change to one of them is picked up once.
    sandbox.store.update("Opportunity", first[0], {"Amount": 1}, modstamp=stamp + timedelta(1))
    result = extract_changes(crm, store, settings, WINDOW_END + timedelta(days=1))
    assert result["deals_changed"] == 1


def test_a_first_install_reads_only_the_look_back_window(crm, org, store, settings):
    org.won_deal("Ancient win", won_at=WON_AT - timedelta(days=200))
    org.won_deal("Recent win")
    result = extract_changes(crm, store, settings, WINDOW_END)
    assert result["deals_read"] == 1


def test_pagination_walks_every_page_of_one_query(crm, org, sandbox):
    for n in range(2105):
        org.store.insert(
            "Opportunity",
            {"Name": f"Bulk {n}", "StageName": "Prospecting", "CloseDate": "2026-12-31"},
            modstamp=WON_AT,
        )
    calls = crm.api_calls
    frames = list(crm.iter_changed_deals(WON_AT - timedelta(days=1), WINDOW_END))
    assert [len(f) for f in frames] == [2000, 105]
    assert crm.api_calls - calls == 2


def test_tasks_are_written_in_collections_of_200_with_per_record_results(crm, org, sandbox):
    deal_id = org.won_deal("Big customer")
    tasks = [task(deal_id, org.csm, n) for n in range(250)]
    tasks[7] = task(deal_id, org.inactive_csm, 7)
    calls = crm.api_calls
    results = crm.create_tasks(tasks)
    assert crm.api_calls - calls == 2
    assert [r.ok for r in results].count(False) == 1
    failed = results[7]
    assert failed.dedupe_key == f"salesforce:{deal_id}:step7"
    assert "INACTIVE_OWNER_OR_USER" in failed.error and "OwnerId" in failed.error
    assert sandbox.store.count("Task") == 249
    created = sandbox.store.get("Task", results[0].external_id)
    assert created["WhatId"] == deal_id and created["Priority"] == "High"
    assert created["ActivityDate"] == "2026-11-21"
    assert created["IsReminderSet"] is True


def test_find_tasks_recognises_the_dedupe_key_in_descriptions(crm, org):
    deal_id = org.won_deal("Reconcile me")
    written = crm.create_tasks([task(deal_id, org.csm, 1)])
    found = crm.find_tasks([task(deal_id, org.csm, 1), task(deal_id, org.csm, 2)])
    assert found == {f"salesforce:{deal_id}:step1": written[0].external_id}


def test_reads_are_retried_after_503_with_retry_after(crm, org, sandbox):
    org.won_deal("Retry me")
    sandbox.faults.add(
        method="GET",
        path_contains="/queryAll",
        status=503,
        error_code="SERVER_UNAVAILABLE",
        message="try later",
        times=2,
        retry_after=0,
    )
    frames = list(crm.iter_changed_deals(WON_AT - timedelta(days=1), WINDOW_END))
    assert sum(len(f) for f in frames) == 1
    assert sandbox.stats()["api_calls"] >= 3  # two refusals, then the answer


def test_a_write_that_failed_on_the_server_is_not_blindly_resent(crm, org, sandbox):
    deal_id = org.won_deal("Ambiguous")
    sandbox.faults.add(
        method="POST",
        path_contains="composite/sobjects",
        status=500,
        error_code="UNKNOWN_EXCEPTION",
        message="boom",
        times=1,
        after_commit=True,
    )
    with pytest.raises(SalesforceGeneralError):
        crm.create_tasks([task(deal_id, org.csm, 1)])
    assert sandbox.store.count("Task") == 1, "the server wrote it once; the client did not retry"
