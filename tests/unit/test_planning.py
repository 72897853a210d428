"""The day-0 plan for a won deal, and what bad input turns into."""

from __future__ import annotations

from dataclasses import replace
from datetime import date

import pytest

from handoff.models import ActionKind, ActionStatus
from handoff.planning import (
    FIRST_CS_CONTACT,
    HANDOFF_MEETING,
    WELCOME_EMAIL,
    plan_deal,
    task_from_payload,
)
from tests.builders import CONTACT, CSM, REP, make_deal


def by_step(actions):
    return {action.step: action for action in actions}


def test_a_clean_large_deal_gets_a_welcome_and_two_tasks(settings):
    actions, issues = plan_deal(make_deal(), settings)

    assert issues == []
    steps = by_step(actions)
    assert set(steps) == {WELCOME_EMAIL, FIRST_CS_CONTACT, HANDOFF_MEETING}
    assert all(a.status == ActionStatus.PENDING for a in actions)
    welcome = steps[WELCOME_EMAIL].payload
    assert welcome["to"] == {"name": "Ada Lovelace", "email": "ada@client.example"}
    assert welcome["from"]["email"] == str(settings.sender.email)
    assert [cc["email"] for cc in welcome["cc"]] == [
        "riley.rep@seller.example",
        "casey.csm@seller.example",
    ]
    first = task_from_payload(steps[FIRST_CS_CONTACT].payload)
    assert first.owner_id == CSM.id and first.contact_id == CONTACT.id
    assert first.priority == "High"
    assert first.remind_at.isoformat() == "2026-11-20T19:30:00+00:00"  # won 15:30 + 4 h
    assert first.due_date == date(2026, 11, 20)
    assert first.subject == "First CS contact (due within 4 h): Analytical Engines Ltd"
    assert first.dedupe_key == "salesforce:006000000000001AAA:first_cs_contact"
    meeting = task_from_payload(steps[HANDOFF_MEETING].payload)
    assert meeting.due_date == date(2026, 11, 22)
    assert meeting.dedupe_key == "salesforce:006000000000001AAA:internal_handoff_meeting"


def test_task_descriptions_carry_the_handoff_document_but_the_email_does_not(settings):
    actions, _ = plan_deal(make_deal(), settings)
    steps = by_step(actions)
    description = steps[FIRST_CS_CONTACT].payload["description"]
    assert "INTERNAL-PROMISE a free SSO add-on until March" in description
    assert "INTERNAL" not in repr(steps[WELCOME_EMAIL].payload)


def test_a_missing_handoff_field_is_named_in_the_task(settings):
    deal = make_deal(handoff_doc={"situation": "x", "goals": None})
    actions, _ = plan_deal(deal, settings)
    description = by_step(actions)[FIRST_CS_CONTACT].payload["description"]
    assert "Goals and success criteria: MISSING (Handoff_Goals__c)" in description


def test_small_deals_get_no_handoff_meeting(settings):
    threshold = settings.tasks.handoff_meeting_min_amount
    actions, _ = plan_deal(make_deal(amount=threshold - 1), settings)
    assert HANDOFF_MEETING not in by_step(actions)
    actions, _ = plan_deal(make_deal(amount=threshold), settings)
    assert HANDOFF_MEETING in by_step(actions)


BAD_INPUT = [
    # (changes, step, expected status, text the reason must hold)
    (
        {"primary_contact": None},
        WELCOME_EMAIL,
        "OpportunityContactRole.IsPrimary: no primary contact",
    ),
    (
        {"primary_contact": replace(CONTACT, email=None)},
        WELCOME_EMAIL,
        "Contact.Email: primary contact 003000000000001AAA has no email address",
    ),
    (
        {"primary_contact": replace(CONTACT, email="  ")},
        WELCOME_EMAIL,
        "Contact.Email: primary contact 003000000000001AAA has no email address",
    ),
    (
        {"primary_contact": replace(CONTACT, email="bill.lumbergh(at)initech")},
        WELCOME_EMAIL,
        "Contact.Email: primary contact 003000000000001AAA has an invalid address "
        "'bill.lumbergh(at)initech'",
    ),
    (
        {"primary_contact": replace(CONTACT, opted_out=True)},
        WELCOME_EMAIL,
        "Contact.HasOptedOutOfEmail: primary contact 003000000000001AAA opted out",
    ),
    (
        {"amount": None},
        HANDOFF_MEETING,
        "Amount: the deal has no amount",
    ),
    (
        {"owner": None, "csm": None},
        FIRST_CS_CONTACT,
        "Customer_Success_Manager__c: the deal has neither an active CSM nor an active owner",
    ),
]


@pytest.mark.parametrize(
    ("changes", "step", "reason"),
    BAD_INPUT,
    ids=[
        "no-primary-contact",
        "contact-without-email",
        "contact-with-blank-email",
        "invalid-email",
        "opted-out",
        "null-amount",
        "no-owner-no-csm",
    ],
)
def test_bad_input_is_skipped_with_a_reason_naming_deal_and_field(settings, changes, step, reason):
    actions, _ = plan_deal(make_deal(**changes), settings)
    action = by_step(actions)[step]
    assert action.status == ActionStatus.SKIPPED
    assert action.reason.startswith("deal 006000000000001AAA ('Analytical Engines - platform'): ")
    assert reason in action.reason
    # The deal's other steps still happen.
    assert any(a.status == ActionStatus.PENDING for a in actions if a.step != step)


def test_missing_owner_is_recorded_and_the_email_goes_without_the_rep(settings):
    actions, issues = plan_deal(make_deal(owner=None), settings)
    assert [(i.field, i.code) for i in issues] == [("OwnerId", "missing_owner")]
    assert "deal 006000000000001AAA" in issues[0].reason
    welcome = by_step(actions)[WELCOME_EMAIL]
    assert welcome.status == ActionStatus.PENDING
    assert [cc["email"] for cc in welcome.payload["cc"]] == ["casey.csm@seller.example"]


def test_missing_csm_assigns_the_first_contact_to_the_rep_and_says_so(settings):
    actions, _ = plan_deal(make_deal(csm=None), settings)
    first = by_step(actions)[FIRST_CS_CONTACT]
    assert first.payload["owner_id"] == "005000000000001AAA"
    assert "No active CSM on the deal (Customer_Success_Manager__c)" in first.payload["description"]


def test_null_amount_is_recorded_as_an_issue(settings):
    _, issues = plan_deal(make_deal(amount=None), settings)
    assert [(i.field, i.code) for i in issues] == [("Amount", "missing_amount")]


def test_a_line_break_in_a_name_never_reaches_a_header(settings):
    contact = replace(CONTACT, first_name="Gavin\r\nBcc: attacker@evil.example")
    actions, issues = plan_deal(make_deal(primary_contact=contact), settings)
    welcome = by_step(actions)[WELCOME_EMAIL].payload
    assert welcome["to"]["name"] == "Gavin Bcc: attacker@evil.example Lovelace"
    assert welcome["context"]["contact_first_name"] == "Gavin Bcc: attacker@evil.example"
    # Every field that carried the problem is recorded, not only the first of its kind.
    assert {(i.field, i.code) for i in issues} == {
        ("Contact.FirstName", "control_characters"),
        ("Contact.Name", "control_characters"),
    }
    assert all("\n" not in i.reason for i in issues)


def test_inactive_rep_is_not_copied(settings):
    actions, _ = plan_deal(make_deal(owner=replace(make_deal().owner, is_active=False)), settings)
    assert [cc["email"] for cc in by_step(actions)[WELCOME_EMAIL].payload["cc"]] == [
        "casey.csm@seller.example"
    ]


def test_every_action_has_a_stable_dedupe_key(settings):
    first, _ = plan_deal(make_deal(), settings)
    again, _ = plan_deal(make_deal(), settings)
    assert [a.dedupe_key for a in first] == [a.dedupe_key for a in again]
    assert {a.kind for a in first} == {ActionKind.EMAIL, ActionKind.TASK}


def test_an_inactive_csm_counts_as_missing_for_the_client_and_the_tasks(settings):
    inactive = replace(CSM, is_active=False)
    actions, issues = plan_deal(make_deal(csm=inactive), settings)
    steps = by_step(actions)
    assert steps[FIRST_CS_CONTACT].payload["owner_id"] == REP.id
    assert steps[HANDOFF_MEETING].payload["owner_id"] == REP.id
    welcome = steps[WELCOME_EMAIL].payload
    assert welcome["context"]["csm_name"] is None, "never introduced to the client"
    assert [cc["email"] for cc in welcome["cc"]] == [REP.email]
    [issue] = issues
    assert (issue.field, issue.code) == ("Customer_Success_Manager__c", "inactive_csm")
    assert CSM.id in issue.reason and "inactive user" in issue.reason


def test_the_email_names_as_copied_only_the_people_who_are(settings):
    actions, issues = plan_deal(
        make_deal(owner=replace(REP, email="riley\r\nBcc: x@evil.example")), settings
    )
    welcome = by_step(actions)[WELCOME_EMAIL].payload
    assert welcome["context"]["rep_name"] is None
    assert [cc["email"] for cc in welcome["cc"]] == [CSM.email]
    assert [(i.field, i.code) for i in issues] == [("Owner.Email", "invalid_email")]


def test_a_csm_address_with_a_line_break_is_reported_by_field(settings):
    csm = replace(CSM, email="casey.csm@seller.example\r\nBcc: attacker@evil.example")
    actions, issues = plan_deal(make_deal(csm=csm), settings)
    [issue] = issues
    assert issue.field == "Customer_Success_Manager__r.Email"
    assert issue.reason.startswith("deal 006000000000001AAA (")
    welcome = by_step(actions)[WELCOME_EMAIL].payload
    assert [cc["email"] for cc in welcome["cc"]] == [REP.email]
    assert welcome["context"]["csm_email"] is None
    assert by_step(actions)[FIRST_CS_CONTACT].payload["owner_id"] == CSM.id, "still owns tasks"


def test_bidirectional_marks_never_reach_the_client_or_a_task_subject(settings):
    account = "Acme \u202egnp.exe\u202c Corp"
    contact = replace(CONTACT, first_name="Zo\u00eb\u2066")
    actions, issues = plan_deal(make_deal(account_name=account, primary_contact=contact), settings)
    steps = by_step(actions)
    text = repr(steps[WELCOME_EMAIL].payload) + steps[FIRST_CS_CONTACT].payload["subject"]
    assert not any(mark in text for mark in ("\u202e", "\u202c", "\u2066"))
    assert steps[WELCOME_EMAIL].payload["context"]["account_name"] == "Acme gnp.exe Corp"
    assert {i.field for i in issues} == {"Account.Name", "Contact.FirstName", "Contact.Name"}


def test_a_negative_amount_is_reported_and_treated_as_not_set(settings):
    actions, issues = plan_deal(make_deal(amount=-5000.0), settings)
    assert [(i.field, i.code) for i in issues] == [("Amount", "negative_amount")]
    assert "-5,000.00" in issues[0].reason
    meeting = by_step(actions)[HANDOFF_MEETING]
    assert meeting.status == ActionStatus.SKIPPED and "Amount" in meeting.reason
