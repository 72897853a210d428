"""Client email a client is glad to read: the right segment, the right people, real dates, the
client's own business hours, exact archived bytes, and a per-installation Message-ID.

The problem deals of the demo are the fixtures: an existing customer, an inactive CSM, a late
discovery on a Friday before a public holiday, markup and injected names, a Chinese name, and a
client in Tokyo and one in Los Angeles served by hourly runs.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from functools import partial
from zoneinfo import ZoneInfo

import pytest

from handoff.client_locale import BusinessCalendar
from handoff.email_context import ClientEmailContext
from handoff.mail import message_id, smtp_transport
from handoff.models import ActionStatus
from handoff.pipeline import RunContext, send_emails
from handoff.planning import People, resolve
from handoff.schedule import plan_due_steps
from handoff.state import StateStore
from tests.builders import CONTACT, CSM, make_deal, plan_steps, save_snapshot

WORKER = "handoff_salesforce/run/send_emails"


def with_email(settings, **changes):
    return settings.model_copy(update={"email": settings.email.model_copy(update=changes)})


def resolve_step(settings, deal, step_id, now=None, **kwargs):
    step = settings.plan.step(step_id)
    now = now or deal.won_at
    return resolve(deal, step, settings, People(), deal.won_at + step.offset, now, **kwargs)


def context_of(resolution) -> ClientEmailContext:
    assert resolution.ready, resolution.reason
    return ClientEmailContext.from_dict(resolution.payload["context"])


def run_at(moment: datetime) -> RunContext:
    return RunContext(run_id=f"run-{moment:%Y%m%dT%H}", window_end=moment, worker=WORKER)


def send(store, settings, sink, moment, **kwargs):
    transport = partial(smtp_transport, sink.host, sink.port, timeout=10)
    return send_emails(store, settings, transport, run_at(moment), source="salesforce", **kwargs)


# -- segments ------------------------------------------------------------------------------------


def test_an_existing_customer_gets_the_expansion_note_and_never_the_new_customer_welcome(
    state, settings, renderer
):
    upgrade = make_deal(deal_id="006UPGRADE00000001", deal_type="Existing Customer - Upgrade")
    new = make_deal(deal_id="006NEWBUSINESS0001", deal_type="New Business")
    picked = []
    for deal in (upgrade, new):
        save_snapshot(state, deal)
        picked.append(
            {
                "deal_id": deal.deal_id,
                "won_at": deal.won_at,
                "adopted_at": None,
                "modstamp": deal.won_at,
                "planned_modstamp": None,
                "record": deal.to_record(),
            }
        )
    plan = plan_due_steps(
        state, settings, "salesforce", upgrade.won_at + timedelta(hours=1), picked
    )
    steps = {(a.deal_id, a.step) for a in plan.actions}
    assert (upgrade.deal_id, "expansion_welcome_email") in steps
    assert (upgrade.deal_id, "welcome_email") not in steps
    assert (new.deal_id, "welcome_email") in steps
    assert (new.deal_id, "expansion_welcome_email") not in steps
    # Internal tasks that name both segments are planned for both.
    assert (upgrade.deal_id, "first_cs_contact") in steps and (
        new.deal_id,
        "first_cs_contact",
    ) in steps

    email = renderer.render(
        "expansion_welcome", context_of(resolve_step(settings, upgrade, "expansion_welcome_email"))
    )
    for text in (email.subject, email.text, email.html):
        assert "first 90 days" not in text
        assert "first message you receive from us as a customer" not in text


# -- the right people ------------------------------------------------------------------------


def test_an_inactive_csm_is_never_introduced_the_team_is_and_the_reason_is_recorded(
    settings, renderer
):
    deal = make_deal(csm=replace(CSM, is_active=False))
    resolution = resolve_step(settings, deal, "welcome_email")
    context = context_of(resolution)
    assert context.csm_is_team and context.csm_email == "success@handoff-demo.example"
    assert [i.code for i in resolution.issues] == ["csm_replaced_by_team"]
    assert deal.deal_id in resolution.issues[0].reason
    email = renderer.render("welcome", context)
    assert CSM.name not in email.text + email.html
    assert "within the next few hours" not in email.text + email.html
    assert all(p["email"] != CSM.email for p in resolution.payload["cc"])


def test_the_welcome_comes_from_the_executive_and_check_ins_from_the_csm(settings, full_playbook):
    from handoff.config import load_settings

    settings = load_settings()
    deal = make_deal()
    welcome = resolve_step(settings, deal, "welcome_email").payload
    assert welcome["from"]["email"] == "dana.whitfield@handoff-demo.example"
    assert welcome["envelope_from"] == "bounces@handoff-demo.example"
    checkin = resolve_step(settings, deal, "weekly_checkin_day_7").payload
    assert checkin["from"] == {"name": CSM.name, "email": CSM.email}
    assert all(p["email"] != CSM.email for p in checkin["cc"])  # the sender is not copied

    via = with_email(settings, sender_mode="via_company")
    relayed = resolve_step(via, deal, "weekly_checkin_day_7").payload
    assert relayed["from"] == {
        "name": f"{CSM.name} via Handoff Demo Inc.",
        "email": "success@handoff-demo.example",
    }
    assert relayed["reply_to"] == [{"name": CSM.name, "email": CSM.email}]
    # The executive's welcome: replies reach the executive and the CSM who acts on them.
    assert [box["email"] for box in welcome["reply_to"]] == [
        "dana.whitfield@handoff-demo.example",
        CSM.email,
    ]


def test_an_inactive_executive_never_signs_the_welcome(settings):
    from handoff.models import Person

    inactive = Person("005EXEC", "Dana Whitfield", "dana.whitfield@handoff-demo.example", False)
    deal = make_deal()
    step = settings.plan.step("welcome_email")
    resolution = resolve(deal, step, settings, People(executive=inactive), deal.won_at, deal.won_at)
    context = context_of(resolution)
    assert context.signer_name == CSM.name
    assert resolution.payload["from"]["email"] == CSM.email
    assert "inactive_executive" in [issue.code for issue in resolution.issues]


@pytest.mark.parametrize(
    ("first", "last", "locale", "greeting", "display"),
    [
        ("Zoë <script>alert(1)</script>", "O'Brien", None, "Hi Zoë", "Zoë O'Brien"),
        ("伟", "李", "zh_CN", "Dear 李伟", "李伟"),
        ("陽翔", "田中", "ja_JP", "田中様", "田中陽翔"),
    ],
)
def test_names_are_cleaned_and_follow_the_contacts_locale(
    settings, first, last, locale, greeting, display
):
    contact = replace(CONTACT, first_name=first, last_name=last, locale=locale)
    resolution = resolve_step(settings, make_deal(primary_contact=contact), "welcome_email")
    context = context_of(resolution)
    assert context.greeting == greeting
    assert context.contact_name == display
    assert resolution.payload["to"]["name"] == display


def test_a_salutation_field_wins_over_the_name(settings):
    contact = replace(CONTACT, first_name="Anna", last_name="Weber", salutation="Frau Dr. Weber")
    context = context_of(
        resolve_step(settings, make_deal(primary_contact=contact), "welcome_email")
    )
    assert context.greeting == "Dear Frau Dr. Weber"


def test_a_name_with_injected_header_text_holds_that_deals_client_mail_with_a_reason(
    state, settings, smtp_sink
):
    injected = make_deal(
        deal_id="006INJECTED0000001",
        primary_contact=replace(
            CONTACT, id="003INJ", first_name="Gavin\r\nBcc: attacker@evil.example"
        ),
    )
    fine = make_deal(deal_id="006FINE00000000001")
    for deal in (injected, fine):
        plan_steps(state, deal, "welcome_email")
    counts = send(state, settings, smtp_sink, injected.won_at + timedelta(hours=1))
    assert counts["emails_sent"] == 1 and counts["emails_held"] == 1
    rows = {r["deal_id"]: r for r in state.actions()}
    held = rows[injected.deal_id]
    assert held["status"] == ActionStatus.HELD
    assert injected.deal_id in held["reason"] and "Contact.FirstName" in held["reason"]
    assert "Bcc" in held["reason"]
    assert [i["code"] for i in state.issues(deal_id=injected.deal_id)] == ["injected_name"]
    assert [m.message["To"].addresses[0].addr_spec for m in smtp_sink.messages] == [CONTACT.email]
    assert all("attacker" not in str(m.raw) for m in smtp_sink.messages)


# -- real dates ------------------------------------------------------------------------------


def test_a_late_discovery_on_a_friday_before_a_holiday_promises_only_business_days_ahead(
    settings, renderer, full_playbook
):
    from handoff.config import load_settings

    settings = load_settings()
    # Won Tuesday 12 January 2027 in New York; found and sent on Friday 15 January, the day
    # before a weekend followed by Martin Luther King Jr. Day (Monday 18 January).
    contact = replace(CONTACT, time_zone="America/New_York", country="United States")
    won = datetime(2027, 1, 12, 15, 0, tzinfo=UTC)
    deal = make_deal(won_at=won, close_date=won.date(), primary_contact=contact)
    sent_at = datetime(2027, 1, 15, 15, 0, tzinfo=UTC)
    context = context_of(resolve_step(settings, deal, "welcome_email", now=sent_at))
    kickoff = context.timeline[0]
    assert kickoff.label == "Kickoff call"
    # Day 5 is Sunday 17th; three days from the send are needed (the 18th is a holiday).
    assert kickoff.deadline == "Tuesday, January 19"
    email = renderer.render("welcome", context)
    assert "by Tuesday, January 19" in email.text
    assert "by Tuesday, January 19" in email.html


def test_every_date_a_client_reads_is_a_future_business_day_of_their_country(
    settings, full_playbook
):
    from handoff.config import load_settings

    settings = load_settings()
    calendar = BusinessCalendar("GB")
    contact = replace(CONTACT, time_zone="Europe/London", country="GB")
    for won_day in range(14):  # two weeks of win days, so every weekday and a weekend occur
        won = datetime(2026, 12, 14, 16, 0, tzinfo=UTC) + timedelta(days=won_day)
        deal = make_deal(won_at=won, primary_contact=contact)
        for step_id in ("welcome_email", "timeline_email", "weekly_checkin_day_21"):
            now = won + settings.plan.step(step_id).offset
            context = context_of(resolve_step(settings, deal, step_id, now=now))
            for milestone in context.timeline:
                # "Friday 27 November" (en_GB) or with the year when it is next year.
                parts = milestone.deadline.replace(",", "").split()
                year = int(parts[3]) if len(parts) == 4 else now.year
                day = datetime.strptime(f"{parts[1]} {parts[2]} {year}", "%d %B %Y").date()
                if day < now.date():  # "27 December" read in December of the year before
                    day = day.replace(year=day.year + 1)
                assert day >= now.date(), (step_id, won, milestone)
                assert calendar.is_business_day(day), (step_id, won, milestone)
                assert parts[0] == f"{day:%A}", milestone


# -- sending windows -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("zone", "country", "expected_local"),
    [
        # Won Friday 15:30 UTC = Saturday 00:30 in Tokyo; Monday 23 November is a holiday there.
        ("Asia/Tokyo", "JP", datetime(2026, 11, 24, 9, 0)),
        # = Friday 07:30 in Los Angeles: the same day at 09:00.
        ("America/Los_Angeles", "US", datetime(2026, 11, 20, 9, 0)),
    ],
)
def test_hourly_runs_deliver_the_welcome_inside_the_clients_business_hours(
    state, settings, smtp_sink, zone, country, expected_local
):
    settings = with_email(settings, business_hours_only=True)
    contact = replace(CONTACT, time_zone=zone, country=country)
    deal = make_deal(primary_contact=contact)  # won Friday 2026-11-20 15:30 UTC
    [key] = plan_steps(state, deal, "welcome_email")
    row_id = state.actions()[0]["id"]
    moment = deal.won_at.replace(minute=0) + timedelta(hours=1)
    sent_at = None
    for _ in range(24 * 5):
        counts = send(state, settings, smtp_sink, moment)
        if counts["emails_sent"]:
            sent_at = moment
            break
        moment += timedelta(hours=1)
    assert sent_at is not None
    local = sent_at.astimezone(ZoneInfo(zone))
    assert local.replace(tzinfo=None) == expected_local
    assert len(smtp_sink.messages) == 1
    [row] = state.actions()
    assert (row["id"], row["dedupe_key"], row["status"]) == (row_id, key, ActionStatus.DONE)
    # Later runs never send it again.
    for hours in range(1, 4):
        send(state, settings, smtp_sink, sent_at + timedelta(hours=hours))
    assert len(smtp_sink.messages) == 1


def test_waiting_for_business_hours_never_makes_a_step_late(state, settings, smtp_sink):
    settings = with_email(settings, business_hours_only=True)
    contact = replace(CONTACT, time_zone="Asia/Tokyo", country="JP")
    deal = make_deal(primary_contact=contact)
    plan_steps(state, deal, "welcome_email")
    send(state, settings, smtp_sink, deal.won_at + timedelta(hours=1))
    [row] = state.actions()
    assert row["status"] == ActionStatus.PENDING
    assert row["due_at"] == datetime(2026, 11, 24, 0, 0, tzinfo=UTC)
    assert "business hours" in row["reason"]
    assert not state.late_rows("salesforce", row["due_at"] + timedelta(minutes=30))


# -- the exact message -----------------------------------------------------------------------


def test_the_archived_eml_is_byte_for_byte_what_the_smtp_server_received(
    state, settings, smtp_sink
):
    contact = replace(CONTACT, first_name="Zoë", last_name="Ñúñez")  # non-ASCII headers
    deal = make_deal(primary_contact=contact)
    plan_steps(state, deal, "welcome_email")
    moment = deal.won_at + timedelta(hours=1)
    send(state, settings, smtp_sink, moment)
    [eml] = (run_at(moment).run_folder(settings) / "emails").glob("*.eml")
    [received] = smtp_sink.messages
    assert eml.read_bytes() == received.raw
    assert b"boundary=" in received.raw


def test_message_ids_are_stable_in_one_installation_and_differ_between_two(
    tmp_path, settings, smtp_sink
):
    """The same step sent from production twice (a re-run) and from staging."""
    ids = []
    for name in ("production", "staging", "production"):
        store = StateStore(f"sqlite:///{tmp_path / name}.db")
        store.migrate()
        try:
            deal = make_deal()
            plan_steps(store, deal, "welcome_email")
            sink_before = len(smtp_sink.messages)
            send(store, settings, smtp_sink, deal.won_at + timedelta(hours=1))
            ids += [m.message["Message-ID"] for m in smtp_sink.messages[sink_before:]]
        finally:
            store.dispose()
    # Production's re-run found its row done: one message from each installation.
    assert len(ids) == 2 and ids[0] != ids[1]
    store = StateStore(f"sqlite:///{tmp_path / 'production'}.db")
    key = store.actions()[0]["dedupe_key"]
    assert message_id(key, "dana.whitfield@handoff-demo.example", store.installation_id()) == ids[0]
    store.dispose()


def test_relationship_mail_carries_no_bulk_unsubscribe(state, settings, smtp_sink):
    plan_steps(state, make_deal(), "welcome_email")
    send(state, settings, smtp_sink, make_deal().won_at + timedelta(hours=1))
    [mail] = smtp_sink.messages
    assert mail.message["List-Unsubscribe"] is None
    assert mail.message["List-Unsubscribe-Post"] is None
    assert mail.mail_from == "bounces@handoff-demo.example"
    body = mail.message.get_body(("plain",)).get_content()
    assert "unsubscribe" not in body.lower() and "stop these emails" not in body.lower()


def test_business_days_skip_the_clients_public_holidays():
    assert not BusinessCalendar("JP").is_business_day(date(2026, 11, 23))
    assert BusinessCalendar("US").is_business_day(date(2026, 11, 23))


# -- client-safe fields only -------------------------------------------------------------------

CANARY = "CANARY7Q"


def test_no_internal_field_reaches_any_email_of_any_step(state, settings, smtp_sink, full_playbook):
    """Canaries in every internal field of a deal, searched for in every email of the playbook
    as the SMTP server received it: headers, text part and HTML part."""
    from handoff.config import load_settings

    settings = load_settings()
    internal = {key: f"{CANARY}-{key} internal note" for key in make_deal().handoff_doc}
    deal = make_deal(
        deal_id=f"006{CANARY}000001",
        name=f"{CANARY}-deal-name Analytical Engines - platform",
        amount=987654.32,
        handoff_doc=internal,
        deal_type="New Business",
        owner=replace(make_deal().owner, id=f"005{CANARY}REP"),
        csm=replace(CSM, id=f"005{CANARY}CSM"),
        primary_contact=replace(CONTACT, id=f"003{CANARY}CONTACT"),
    )
    email_steps = [s.id for s in settings.plan.steps if s.kind == "email"]
    keys = plan_steps(state, deal, *email_steps)
    counts = send(state, settings, smtp_sink, deal.won_at + timedelta(days=90))
    assert counts["emails_sent"] == len(keys) == len(smtp_sink.messages)
    for mail in smtp_sink.messages:
        headers = "\n".join(f"{k}: {v}" for k, v in mail.message.items())
        text = mail.message.get_body(("plain",)).get_content()
        html = mail.message.get_body(("html",)).get_content()
        for part in (headers, text, html, mail.raw.decode("utf-8", "replace")):
            assert CANARY not in part, mail.message["Subject"]
            assert "987,654" not in part and "987654" not in part
            assert "internal note" not in part
