"""What a step becomes for a deal when it is resolved, and what bad input turns into."""

from __future__ import annotations

from dataclasses import replace
from datetime import date

import pytest

from handoff.models import ActionStatus
from handoff.planning import task_from_payload
from tests.builders import CONTACT, CSM, REP, day_zero, make_deal

WELCOME_EMAIL = "welcome_email"
FIRST_CS_CONTACT = "first_cs_contact"
HANDOFF_MEETING = "internal_handoff_meeting"


def test_a_clean_large_deal_gets_a_welcome_and_two_tasks(settings):
    steps, issues = day_zero(make_deal(), settings)

    assert issues == []
    assert set(steps) == {WELCOME_EMAIL, FIRST_CS_CONTACT, HANDOFF_MEETING}
    assert all(r.status == ActionStatus.PENDING for r in steps.values())
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
    steps, _ = day_zero(make_deal(), settings)
    description = steps[FIRST_CS_CONTACT].payload["description"]
    assert "INTERNAL-PROMISE a free SSO add-on until March" in description
    assert "INTERNAL" not in repr(steps[WELCOME_EMAIL].payload)


def test_a_missing_handoff_field_is_named_in_the_task(settings):
    deal = make_deal(handoff_doc={"situation": "x", "goals": None})
    steps, _ = day_zero(deal, settings)
    description = steps[FIRST_CS_CONTACT].payload["description"]
    assert "Goals and success criteria: MISSING (Handoff_Goals__c)" in description


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
        {"owner": None, "csm": None},
        FIRST_CS_CONTACT,
        "Customer_Success_Manager__c: no active user is the CSM or the rep (deal owner)",
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
        "no-owner-no-csm",
    ],
)
def test_bad_input_is_skipped_with_a_reason_naming_deal_and_field(settings, changes, step, reason):
    steps, _ = day_zero(make_deal(**changes), settings)
    action = steps[step]
    # The client cannot be written to: skipped. Nobody can own a task: failed (a person acts).
    expected = ActionStatus.SKIPPED if step == WELCOME_EMAIL else ActionStatus.FAILED
    assert action.status == expected
    assert action.reason.startswith("deal 006000000000001AAA ('Analytical Engines - platform'): ")
    assert reason in action.reason
    # The deal's other steps still happen.
    assert any(r.status == ActionStatus.PENDING for s, r in steps.items() if s != step)


def test_missing_owner_is_recorded_and_the_email_goes_without_the_rep(settings):
    steps, issues = day_zero(make_deal(owner=None), settings)
    assert [(i.field, i.code) for i in issues] == [("OwnerId", "missing_owner")]
    assert "deal 006000000000001AAA" in issues[0].reason
    welcome = steps[WELCOME_EMAIL]
    assert welcome.status == ActionStatus.PENDING
    assert [cc["email"] for cc in welcome.payload["cc"]] == ["casey.csm@seller.example"]


def test_missing_csm_assigns_the_first_contact_to_the_rep_and_says_so(settings):
    steps, _ = day_zero(make_deal(csm=None), settings)
    first = steps[FIRST_CS_CONTACT]
    assert first.payload["owner_id"] == "005000000000001AAA"
    assert "No active CSM on the deal (Customer_Success_Manager__c)" in first.payload["description"]


def test_null_amount_is_recorded_as_an_issue(settings):
    _, issues = day_zero(make_deal(amount=None), settings)
    assert [(i.field, i.code) for i in issues] == [("Amount", "missing_amount")]


def test_a_line_break_in_a_name_holds_the_clients_mail_and_never_reaches_a_header(settings):
    contact = replace(CONTACT, first_name="Gavin\r\nBcc: attacker@evil.example")
    steps, issues = day_zero(make_deal(primary_contact=contact), settings)
    welcome = steps[WELCOME_EMAIL]
    assert welcome.status == ActionStatus.HELD and welcome.payload == {}
    assert "Contact.FirstName" in welcome.reason and "Bcc" in welcome.reason
    assert [(i.field, i.code) for i in welcome.issues] == [("Contact.FirstName", "injected_name")]
    assert {(i.field, i.code) for i in issues} == {("Contact.FirstName", "control_characters")}
    assert all("\n" not in i.reason for i in [*issues, *welcome.issues])


def test_inactive_rep_is_not_copied(settings):
    steps, _ = day_zero(make_deal(owner=replace(make_deal().owner, is_active=False)), settings)
    assert [cc["email"] for cc in steps[WELCOME_EMAIL].payload["cc"]] == [
        "casey.csm@seller.example"
    ]


def test_an_inactive_csm_counts_as_missing_for_the_client_and_the_tasks(settings):
    inactive = replace(CSM, is_active=False)
    steps, issues = day_zero(make_deal(csm=inactive), settings)
    assert steps[FIRST_CS_CONTACT].payload["owner_id"] == REP.id
    assert steps[HANDOFF_MEETING].payload["owner_id"] == REP.id
    welcome = steps[WELCOME_EMAIL].payload
    assert welcome["context"]["csm_is_team"], "never introduced to the client"
    assert CSM.name not in repr(welcome)
    assert [cc["email"] for cc in welcome["cc"]] == [REP.email]
    [issue] = issues
    assert (issue.field, issue.code) == ("Customer_Success_Manager__c", "inactive_csm")
    assert CSM.id in issue.reason and "inactive user" in issue.reason


def test_the_email_names_as_copied_only_the_people_who_are(settings):
    steps, issues = day_zero(
        make_deal(owner=replace(REP, email="riley\r\nBcc: x@evil.example")), settings
    )
    welcome = steps[WELCOME_EMAIL].payload
    assert welcome["context"]["rep_name"] is None
    assert [cc["email"] for cc in welcome["cc"]] == [CSM.email]
    assert [(i.field, i.code) for i in issues] == [("Owner.Email", "invalid_email")]


def test_a_csm_address_with_a_line_break_is_reported_by_field(settings):
    csm = replace(CSM, email="casey.csm@seller.example\r\nBcc: attacker@evil.example")
    steps, issues = day_zero(make_deal(csm=csm), settings)
    [issue] = issues
    assert issue.field == "Customer_Success_Manager__r.Email"
    assert issue.reason.startswith("deal 006000000000001AAA (")
    welcome = steps[WELCOME_EMAIL].payload
    assert [cc["email"] for cc in welcome["cc"]] == [REP.email]
    assert welcome["context"]["csm_email"] == "success@handoff-demo.example"  # the team
    assert steps[FIRST_CS_CONTACT].payload["owner_id"] == CSM.id, "still owns tasks"


def test_bidirectional_marks_never_reach_the_client_or_a_task_subject(settings):
    account = "Acme \u202egnp.exe\u202c Corp"
    contact = replace(CONTACT, first_name="Zo\u00eb\u2066")
    steps, issues = day_zero(make_deal(account_name=account, primary_contact=contact), settings)
    text = repr(steps[WELCOME_EMAIL].payload) + steps[FIRST_CS_CONTACT].payload["subject"]
    assert not any(mark in text for mark in ("\u202e", "\u202c", "\u2066"))
    assert steps[WELCOME_EMAIL].payload["context"]["account_name"] == "Acme gnp.exe Corp"
    assert {i.field for i in issues} == {"Account.Name", "Contact.FirstName"}


def test_a_negative_amount_is_reported_and_treated_as_not_set(settings):
    steps, issues = day_zero(make_deal(amount=-5000.0), settings)
    assert [(i.field, i.code) for i in issues] == [("Amount", "negative_amount")]
    assert "-5,000.00" in issues[0].reason
