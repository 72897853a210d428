"""The Salesforce connector against the sandbox, through the real simple-salesforce client."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest

from handoff.crm.base import CrmFatalError, CrmUnavailable, WriteOutcomeUnknown
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


def test_tasks_are_written_in_one_collection_call_with_per_record_results(crm, org, sandbox):
    deal_id = org.won_deal("Big customer")
    tasks = [task(deal_id, org.csm, n) for n in range(200)]
    tasks[7] = task(deal_id, org.inactive_csm, 7)
    calls = crm.api_calls
    results = crm.create_tasks(tasks)
    assert crm.api_calls - calls == 1
    assert [r.ok for r in results].count(False) == 1
    failed = results[7]
    assert failed.dedupe_key == f"salesforce:{deal_id}:step7"
    assert "INACTIVE_OWNER_OR_USER" in failed.error and "OwnerId" in failed.error
    assert sandbox.store.count("Task") == 199
    created = sandbox.store.get("Task", results[0].external_id)
    assert created["WhatId"] == deal_id and created["Priority"] == "High"
    assert created["ActivityDate"] == "2026-11-21"
    assert created["IsReminderSet"] is True
    assert created["Handoff_Key__c"] == f"salesforce:{deal_id}:step0"
    assert created["Description"].endswith(f"Handoff key: salesforce:{deal_id}:step0")
    with pytest.raises(ValueError, match="limit is 200"):
        crm.create_tasks([task(deal_id, org.csm, n) for n in range(201)])


def test_find_tasks_returns_the_keys_on_these_deals(crm, org):
    deal_id = org.won_deal("Reconcile me")
    other = org.won_deal("Someone else")
    written = crm.create_tasks([task(deal_id, org.csm, 1), task(other, org.csm, 2)])
    assert crm.find_tasks([deal_id]) == {f"salesforce:{deal_id}:step1": written[0].external_id}


def test_a_forged_key_line_in_crm_text_cannot_fool_the_lookup(crm, org, sandbox):
    deal_id = org.won_deal("Forged")
    real = f"salesforce:{deal_id}:step1"
    note = f"Rep notes\nHandoff key: salesforce:{deal_id}:bogus\nmore notes"
    forged = CrmTask(**{**task(deal_id, org.csm, 1).__dict__, "description": note})
    [result] = crm.create_tasks([forged])
    # A person's task on the deal whose text ends like ours is not ours.
    sandbox.store.insert(
        "Task",
        {
            "WhatId": deal_id,
            "OwnerId": org.csm,
            "Subject": "Call",
            "Description": f"copied from elsewhere\nHandoff key: salesforce:{deal_id}:step2",
        },
    )
    assert crm.find_tasks([deal_id]) == {real: result.external_id}
    description = sandbox.store.get("Task", result.external_id)["Description"]
    assert description.count("\nHandoff key: ") == 1 and description.endswith(real)


def test_without_a_key_field_the_key_is_read_from_the_last_description_line(
    salesforce_client, settings, org, sandbox
):
    from handoff.crm.salesforce import SalesforceCRM

    settings = settings.model_copy(
        update={"salesforce": settings.salesforce.model_copy(update={"task_key_field": ""})}
    )
    crm = SalesforceCRM.from_settings(salesforce_client, settings)
    deal_id = org.won_deal("No key field")
    note = f"notes\nHandoff key: salesforce:{deal_id}:bogus\nend"
    [result] = crm.create_tasks(
        [CrmTask(**{**task(deal_id, org.csm, 1).__dict__, "description": note})]
    )
    assert sandbox.store.get("Task", result.external_id)["Handoff_Key__c"] is None
    assert crm.find_tasks([deal_id]) == {f"salesforce:{deal_id}:step1": result.external_id}


def test_a_key_field_missing_from_the_org_is_a_configuration_error(salesforce_client, settings):
    from handoff.crm.salesforce import SalesforceCRM

    settings = settings.model_copy(
        update={
            "salesforce": settings.salesforce.model_copy(update={"task_key_field": "Dedupe_Key__c"})
        }
    )
    crm = SalesforceCRM.from_settings(salesforce_client, settings)
    with pytest.raises(CrmFatalError, match=r"Task\.Dedupe_Key__c.*task_key_field"):
        crm.check_task_setup()


def test_a_description_over_the_limit_is_shortened_and_accepted(crm, org, sandbox):
    deal_id = org.won_deal("Long notes")
    long = CrmTask(**{**task(deal_id, org.csm, 1).__dict__, "description": "n" * 40000})
    [result] = crm.create_tasks([long])
    assert result.ok, result.error
    description = sandbox.store.get("Task", result.external_id)["Description"]
    assert len(description) <= 32000 and description.endswith(f"salesforce:{deal_id}:step1")


def test_reads_are_retried_after_503_and_every_request_is_counted(crm, org, sandbox):
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
    served, calls = sandbox.stats()["api_calls"], crm.api_calls
    frames = list(crm.iter_changed_deals(WON_AT - timedelta(days=1), WINDOW_END))
    assert sum(len(f) for f in frames) == 1
    assert sandbox.stats()["api_calls"] - served == 3  # two refusals, then the answer
    assert crm.api_calls - calls == 3, "transport retries are API calls too"


@pytest.mark.parametrize("status", [500, 502, 503, 504])
def test_a_write_answered_5xx_after_the_commit_is_never_resent(crm, org, sandbox, status):
    deal_id = org.won_deal("Ambiguous")
    sandbox.faults.add(
        method="POST",
        path_contains="composite/sobjects",
        status=status,
        times=1,
        after_commit=True,
        retry_after=0,
    )
    calls = crm.api_calls
    with pytest.raises(WriteOutcomeUnknown, match=str(status)):
        crm.create_tasks([task(deal_id, org.csm, n) for n in range(3)])
    assert sandbox.store.count("Task") == 3, "the server wrote them once; nothing re-sent"
    assert crm.api_calls - calls == 1


def test_a_write_answered_429_did_nothing_and_is_retried_as_is(crm, org, sandbox):
    deal_id = org.won_deal("Throttled")
    sandbox.faults.add(
        method="POST", path_contains="composite/sobjects", status=429, times=1, retry_after=0
    )
    calls = crm.api_calls
    results = crm.create_tasks([task(deal_id, org.csm, 1)])
    assert [r.ok for r in results] == [True]
    assert sandbox.store.count("Task") == 1
    assert crm.api_calls - calls == 2


def test_a_write_whose_answer_times_out_after_the_commit_is_an_unknown_outcome(org, sandbox):
    from simple_salesforce import Salesforce

    from handoff.crm.http import build_session
    from handoff.crm.salesforce import SalesforceCRM

    client = Salesforce(
        instance_url=sandbox.url,
        session_id=sandbox.token,
        session=build_session(sandbox.url, timeout=(2, 0.5)),
    )
    crm = SalesforceCRM(client, csm_field="Customer_Success_Manager__c", handoff_fields={})
    deal_id = org.won_deal("Slow answer")
    sandbox.faults.add(
        method="POST", path_contains="composite/sobjects", after_commit=True, delay_seconds=3
    )
    with pytest.raises(WriteOutcomeUnknown, match="went out"):
        crm.create_tasks([task(deal_id, org.csm, 1)])
    assert sandbox.store.count("Task") == 1


def test_a_write_to_a_closed_port_is_known_not_to_have_happened(settings):
    import socket

    from simple_salesforce import Salesforce

    from handoff.crm.http import build_session
    from handoff.crm.salesforce import SalesforceCRM

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{probe.getsockname()[1]}"
    client = Salesforce(
        instance_url=url,
        session_id="t",
        session=build_session(url, total_retries=1, backoff_factor=0),
    )
    crm = SalesforceCRM.from_settings(client, settings)
    with pytest.raises(CrmUnavailable):
        crm.create_tasks([task("006000000000001AAA", "005000000000001AAA", 1)])


@pytest.mark.parametrize(
    ("fault", "words"),
    [
        ({"status": 401, "error_code": "INVALID_SESSION_ID"}, "session is expired"),
        ({"status": 403, "error_code": "REQUEST_LIMIT_EXCEEDED"}, "daily API limit"),
    ],
    ids=["expired-session", "daily-limit"],
)
def test_answers_no_retry_can_fix_are_fatal_and_carry_the_crm_message(crm, sandbox, fault, words):
    sandbox.faults.add(method="GET", path_contains="/queryAll", times=-1, **fault)
    with pytest.raises(CrmFatalError) as raised:
        list(crm.iter_changed_deals(WON_AT - timedelta(days=1), WINDOW_END))
    message = str(raised.value)
    assert fault["error_code"] in message and words in message
    assert sandbox.token not in message
    assert sandbox.stats()["api_calls"] == 1, "not retried"
