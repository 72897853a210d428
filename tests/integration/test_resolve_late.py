"""Plan early, resolve late: who gets a step and who signs it are read when it goes out.

Real pipeline steps against the sandbox CRM (simple-salesforce over HTTP) and the SMTP sink,
on the tests' copy of the 90-day playbook. The CRM changes between runs the way a person
changes it: a contact opts out, a CSM is replaced.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from functools import partial

import pytest

from handoff.config import load_settings
from handoff.mail import smtp_transport
from handoff.models import ActionStatus
from handoff.pipeline import steps_in_order
from tests.builders import WON_AT, SandboxOrg

SF = "salesforce"


@pytest.fixture
def settings(full_playbook, tmp_path, monkeypatch):
    monkeypatch.setenv("HANDOFF_STATE_URL", f"sqlite:///{tmp_path / 'state.db'}")
    monkeypatch.setenv("HANDOFF_RUN_DIR", str(tmp_path / "runs"))
    return load_settings()


def run_at(crm, state, settings, sink, at: datetime) -> None:
    transport = partial(smtp_transport, sink.host, sink.port, timeout=10)
    run_id = f"run-{at:%Y%m%dT%H}"
    for step in steps_in_order(crm, state, settings, transport, run_id, at).values():
        step()


def hour_after(days: int) -> datetime:
    return WON_AT.replace(minute=0) + timedelta(days=days, hours=1)


def test_a_contact_who_opts_out_on_day_10_gets_no_later_mail(
    crm, state, settings, sandbox, smtp_sink
):
    org = SandboxOrg(sandbox.store)
    deal_id = org.won_deal("Opts out later", amount=75000)
    [role] = [
        r for r in sandbox.store.rows("OpportunityContactRole") if r["OpportunityId"] == deal_id
    ]
    run_at(crm, state, settings, smtp_sink, hour_after(0))
    run_at(crm, state, settings, smtp_sink, hour_after(7))
    before = len(smtp_sink.messages)
    # The welcome, then the day-7 check-in (the day-1 and day-2 mails are past their limit).
    assert before == 2

    # Day 10: the contact opts out. The deal itself does not change in the CRM.
    sandbox.store.update(
        "Contact", role["ContactId"], {"HasOptedOutOfEmail": True}, modstamp=WON_AT + timedelta(10)
    )
    run_at(crm, state, settings, smtp_sink, hour_after(14))

    assert len(smtp_sink.messages) == before, "no day-14 mail to a contact who opted out"
    [checkin] = state.actions(step="weekly_checkin_day_14")
    assert checkin["status"] == ActionStatus.SKIPPED
    assert f"deal {deal_id} (" in checkin["reason"]
    assert "Contact.HasOptedOutOfEmail" in checkin["reason"]


def test_a_csm_replaced_on_day_20_signs_the_day_21_check_in(
    crm, state, settings, sandbox, smtp_sink
):
    org = SandboxOrg(sandbox.store)
    deal_id = org.won_deal("New CSM", amount=75000)
    robin = sandbox.store.insert(
        "User",
        {
            "FirstName": "Robin",
            "LastName": "Newcsm",
            "Email": "robin.newcsm@seller.example",
            "Title": "Customer Success Manager",
            "IsActive": True,
        },
    )
    run_at(crm, state, settings, smtp_sink, hour_after(0))
    sandbox.store.update(
        "Opportunity",
        deal_id,
        {"Customer_Success_Manager__c": robin},
        modstamp=WON_AT + timedelta(days=20),
    )
    run_at(crm, state, settings, smtp_sink, hour_after(21))

    [mail] = [m for m in smtp_sink.messages if "Week 3" in str(m.message["Subject"])]
    text = mail.message.get_body(("plain",)).get_content()
    assert "Robin Newcsm" in text and "Casey Csm" not in text
    # The check-in comes from the new CSM (not copied to themself); the old one is out of it.
    assert mail.message["From"].addresses[0].addr_spec == "robin.newcsm@seller.example"
    assert "casey.csm@seller.example" not in mail.rcpt_tos
