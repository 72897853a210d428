"""Sample client email contexts, and the MIME message a step would send with each.

The samples cover what changes the wording: a named CSM with a booking link and a copied rep,
the customer success team when no CSM is set, an existing customer, and the one promotional
step's unsubscribe links. ``sample_message`` is the only place tests build a message, so a
change of the mail API is adapted here once.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from email.message import EmailMessage
from pathlib import Path

from handoff.email_context import ClientEmailContext, Milestone
from handoff.emails import EmailRenderer

ROOT = Path(__file__).resolve().parents[1]
TEMPLATES_DIR = ROOT / "templates" / "emails"
# Every client email step, in the order a client receives them.
STEPS = (
    "welcome",
    "expansion_welcome",
    "timeline",
    "kickoff_prep",
    "weekly_checkin",
    "success_review",
    "formal_review",
    "referral_ask",
)

ACCOUNT = '<b>Stark</b> & "Sons" Ltd'
ACCOUNT_ESCAPED = "&lt;b&gt;Stark&lt;/b&gt; &amp; &#34;Sons&#34; Ltd"
COMPANY = "Handoff Demo Inc."
EXECUTIVE = ("Dana Whitfield", "Chief Customer Officer", "dana.whitfield@handoff-demo.example")
CSM = ("Casey Csm", "casey.csm@seller.example")
REP = ("Riley Rep", "riley.rep@seller.example")
TEAM = ("The Handoff Demo customer success team", "success@handoff-demo.example")
BOOKING_URL = "https://meet.handoff-demo.example/casey-csm"
UNSUBSCRIBE_URL = "https://handoff-demo.example/handoff/unsubscribe?t=sampletoken"
UNSUBSCRIBE_MAILTO = "unsubscribe@handoff-demo.example"
CONTACT = ("Ada Lovelace", "ada@client.example")
TIMELINE = (
    Milestone("Kickoff call", "Wednesday, November 25"),
    Milestone("First visible win", "Friday, December 4"),
    Milestone("30-day success review", "Monday, December 21"),
    Milestone("90-day review", "Thursday, February 18, 2027"),
)
SENT_AT = datetime(2026, 11, 20, 16, 0, tzinfo=UTC)
# Who signs each step by default, as the playbook names it: the welcome comes from the
# executive, every other step from the CSM (or the team when there is none).
EXECUTIVE_STEPS = frozenset({"welcome"})

FULL = ClientEmailContext(
    greeting="Hi Ada",
    contact_name=CONTACT[0],
    account_name=ACCOUNT,
    company=COMPANY,
    signer_name=CSM[0],
    signer_title="Customer Success Manager",
    csm_name=CSM[0],
    csm_email=CSM[1],
    csm_is_team=False,
    csm_booking_url=BOOKING_URL,
    rep_name=REP[0],
    executive_name=EXECUTIVE[0],
    executive_title=EXECUTIVE[1],
    timeline=TIMELINE,
    day=14,
    week=2,
)
TEAM_FALLBACK = replace(
    FULL,
    signer_name=TEAM[0],
    signer_title="",
    csm_name=TEAM[0],
    csm_email=TEAM[1],
    csm_is_team=True,
    csm_booking_url=None,
    rep_name=None,
    timeline=(),
)
EXISTING = replace(
    FULL,
    csm_booking_url=None,
    existing_customer=True,
    timeline=(TIMELINE[0], TIMELINE[2]),
)
PROMOTIONAL = replace(
    FULL,
    day=90,
    week=12,
    timeline=(),
    unsubscribe_url=UNSUBSCRIBE_URL,
    unsubscribe_mailto=UNSUBSCRIBE_MAILTO,
)
SAMPLES = {
    "full": FULL,
    "team_fallback": TEAM_FALLBACK,
    "existing_customer": EXISTING,
    "promotional": PROMOTIONAL,
}


def sample_context(name: str, template: str) -> ClientEmailContext:
    """The sample as that step would carry it: the welcome is signed by the executive."""
    context = SAMPLES[name]
    if template in EXECUTIVE_STEPS:
        return replace(context, signer_name=EXECUTIVE[0], signer_title=EXECUTIVE[1])
    return context


def sample_renderer() -> EmailRenderer:
    return EmailRenderer(TEMPLATES_DIR)


def sample_message(template: str, context: ClientEmailContext) -> EmailMessage:
    """Render ``template`` and build the message exactly as a send would."""
    from handoff import mail

    rendered = sample_renderer().render(template, context)
    signed_by_csm = context.signer_name == context.csm_name  # the CSM, or the team
    sender = {
        "name": context.signer_name,
        "email": context.csm_email if signed_by_csm else EXECUTIVE[2],
    }
    copied = [{"name": REP[0], "email": REP[1]}] if context.rep_name else []
    if not context.csm_is_team and not signed_by_csm:
        copied.append({"name": context.csm_name, "email": context.csm_email})
    payload = {
        "from": sender,
        "to": {"name": context.contact_name, "email": CONTACT[1]},
        "cc": copied,
    }
    dedupe_key = f"sample:{template}"
    headers = {}
    if context.for_template()["promotional"]:
        token = mail.unsubscribe_token("sample-secret", dedupe_key)
        headers = mail.unsubscribe_headers(UNSUBSCRIBE_URL.split("?")[0], UNSUBSCRIBE_MAILTO, token)
    outgoing = mail.build_message(
        payload,
        rendered,
        message_id=mail.message_id(dedupe_key, sender["email"], "sample-installation"),
        sent_at=SENT_AT,
        extra_headers=headers,
    )
    return outgoing.message
