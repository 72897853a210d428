"""Rendering of the cadence emails after the welcome (timeline, kickoff preparation, weekly
check-ins, the 30- and 90-day reviews and the referral ask).

Each template is rendered twice: with every optional value present, and with no CSM, no rep and
no timeline, which is what a deal still waiting for its CSM looks like.
"""

from __future__ import annotations

import re

import pytest

from handoff.emails import long_date

TEMPLATES = [
    "timeline",
    "kickoff_prep",
    "weekly_checkin",
    "success_review",
    "formal_review",
    "referral_ask",
]
TIMELINE = [
    {"label": "Kickoff call", "date": "2026-11-25"},
    {"label": "First visible win", "date": "2026-12-04"},
    {"label": "30-day success review", "date": "2026-12-20"},
    {"label": "90-day review", "date": "2027-02-18"},
]
ACCOUNT = '<b>Stark</b> & "Sons" Ltd'
ACCOUNT_ESCAPED = "&lt;b&gt;Stark&lt;/b&gt; &amp; &#34;Sons&#34; Ltd"
FULL = {
    "contact_first_name": "Ada",
    "contact_name": "Ada Lovelace",
    "account_name": ACCOUNT,
    "company": "Handoff Demo Inc.",
    "sender_name": "Dana Whitfield",
    "sender_title": "Chief Customer Officer",
    "signer_name": "Casey Csm",
    "signer_title": "Customer Success Manager",
    "csm_name": "Casey Csm",
    "csm_email": "casey.csm@seller.example",
    "rep_name": "Riley Rep",
    "timeline": TIMELINE,
    "day": 14,
    "week": 2,
}
BARE = {
    **FULL,
    "sender_title": "",
    "signer_name": "Dana Whitfield",
    "signer_title": "",
    "csm_name": None,
    "csm_email": None,
    "rep_name": None,
    "timeline": [],
    "unsubscribe_url": None,
}
CONTEXTS = {"full": FULL, "no_csm_no_timeline": BARE}
CASES = [(t, c) for t in TEMPLATES for c in CONTEXTS]
CASE_IDS = [f"{t}-{c}" for t, c in CASES]
ISO_DATE = re.compile(r"\b\d{4}-\d{2}-\d{2}\b")


def render(renderer, template, context):
    return renderer.render(template, dict(context))


@pytest.mark.parametrize("template", TEMPLATES)
def test_every_part_loads(renderer, template):
    renderer.check(template)


@pytest.mark.parametrize(("template", "case"), CASES, ids=CASE_IDS)
def test_subject_is_one_non_empty_line(renderer, template, case):
    values = {**renderer.common, **CONTEXTS[case]}
    raw = renderer.env.get_template(f"{template}/subject.txt.j2").render(values)
    assert raw.strip(), f"{template}: empty subject"
    assert "\n" not in raw.strip(), f"{template}: subject spans several lines: {raw!r}"
    assert render(renderer, template, CONTEXTS[case]).subject == raw.strip()


@pytest.mark.parametrize(("template", "case"), CASES, ids=CASE_IDS)
def test_greeting_and_signature(renderer, template, case):
    context = CONTEXTS[case]
    rendered = render(renderer, template, context)
    assert rendered.text.startswith("Hi Ada,\n")
    assert "Hi Ada,</p>" in rendered.html
    for body in (rendered.text, rendered.html):
        assert context["signer_name"] in body
        assert f"{context['company']}" in body
    if context["signer_title"]:
        assert f"{context['signer_title']}, {context['company']}" in rendered.text
    else:
        assert f"\n{context['signer_name']}\n{context['company']}\n" in rendered.text


@pytest.mark.parametrize(("template", "case"), CASES, ids=CASE_IDS)
def test_markup_in_names_is_escaped_in_html_only(renderer, template, case):
    rendered = render(renderer, template, CONTEXTS[case])
    assert "<b>Stark</b>" not in rendered.html
    assert ACCOUNT_ESCAPED in rendered.html
    assert ACCOUNT in rendered.text


@pytest.mark.parametrize(("template", "case"), CASES, ids=CASE_IDS)
def test_no_none_and_no_raw_dates_leak(renderer, template, case):
    rendered = render(renderer, template, CONTEXTS[case])
    for part in (rendered.subject, rendered.text, rendered.html):
        assert "None" not in part
        assert not ISO_DATE.search(part), f"{template}: a date was not formatted"


@pytest.mark.parametrize(("template", "case"), CASES, ids=CASE_IDS)
def test_unsubscribe_follows_the_layout(renderer, template, case):
    rendered = render(renderer, template, CONTEXTS[case])
    if case == "full":
        assert "To stop these emails: https://handoff-demo.example/unsubscribe" in rendered.text
        assert 'href="https://handoff-demo.example/unsubscribe"' in rendered.html
    else:
        assert "To stop these emails: write to unsubscribe@handoff-demo.example" in rendered.text
        assert 'href="mailto:unsubscribe@handoff-demo.example"' in rendered.html


def test_timeline_lists_every_milestone_as_a_deadline(renderer):
    rendered = render(renderer, "timeline", FULL)
    assert "- Kickoff call: by Wednesday 25 November 2026\n" in rendered.text
    for milestone in TIMELINE:
        date = long_date(milestone["date"])
        assert f"- {milestone['label']}: by {date}\n" in rendered.text
        assert f"{milestone['label']}</td>" in rendered.html
        assert f"by <strong>{date}</strong>" in rendered.html


def test_timeline_names_the_csm(renderer):
    signed_by_csm = render(renderer, "timeline", FULL)
    for body in (signed_by_csm.text, signed_by_csm.html):
        assert "As your customer success manager, I am your first point of contact" in body
        assert "casey.csm@seller.example" in body
    signed_by_sender = render(renderer, "timeline", {**FULL, "signer_name": "Dana Whitfield"})
    assert "Casey Csm, your customer success manager" in signed_by_sender.text
    assert "<strong>Casey Csm</strong>, your customer success manager" in signed_by_sender.html


def test_timeline_without_dates_says_so(renderer):
    rendered = render(renderer, "timeline", BARE)
    for body in (rendered.text, rendered.html):
        assert "We have not fixed the dates yet." in body
        assert "customer success manager" not in body
        assert " by " not in body


def test_kickoff_prep_gives_the_kickoff_deadline(renderer):
    rendered = render(renderer, "kickoff_prep", FULL)
    assert "kickoff call by Wednesday 25 November 2026." in rendered.text
    assert "kickoff call by <strong>Wednesday 25 November 2026</strong>." in rendered.html
    for other in TIMELINE[1:]:
        assert long_date(other["date"]) not in rendered.text
    for topic in ("Goals:", "People:", "Access and data:"):
        assert topic in rendered.text and f"<strong>{topic}</strong>" in rendered.html


@pytest.mark.parametrize(
    "timeline", [[], TIMELINE[1:]], ids=["no_timeline", "no_kickoff_milestone"]
)
def test_kickoff_prep_without_a_kickoff_date(renderer, timeline):
    rendered = render(renderer, "kickoff_prep", {**FULL, "timeline": timeline})
    assert "Your kickoff call is the next step." in rendered.text
    assert "Reply to this email with a few times" in rendered.text
    for milestone in TIMELINE:
        assert long_date(milestone["date"]) not in rendered.text + rendered.html


@pytest.mark.parametrize("day", range(7, 57, 7))
def test_weekly_checkin_names_the_week_and_asks_one_question(renderer, day):
    week = day // 7
    rendered = render(renderer, "weekly_checkin", {**FULL, "day": day, "week": week})
    assert rendered.subject.startswith(f"Week {week} of your onboarding")
    assert f"week {week} of your onboarding" in rendered.text
    assert f"week {week} of your onboarding" in rendered.html
    body = rendered.text.split("\n--\n")[0]
    assert body.count("?") == 1
    assert "reply" in body.lower()


def test_weekly_checkin_questions_vary_across_weeks(renderer):
    questions = {
        next(
            line
            for line in render(renderer, "weekly_checkin", {**FULL, "week": week}).text.splitlines()
            if line.endswith("?")
        )
        for week in range(1, 9)
    }
    assert len(questions) > 1


@pytest.mark.parametrize(
    ("template", "phrase"),
    [
        ("success_review", "30-day success review"),
        ("formal_review", "90-day review"),
    ],
    ids=["success_review", "formal_review"],
)
def test_reviews_invite_and_ask_for_times(renderer, template, phrase):
    rendered = render(renderer, template, FULL)
    assert phrase in rendered.subject
    for body in (rendered.text, rendered.html):
        assert phrase in body
        assert "reply with a few times" in body


def test_referral_ask_is_easy_to_ignore(renderer):
    rendered = render(renderer, "referral_ask", FULL)
    for body in (rendered.text, rendered.html):
        assert "one person, or two" in body
        assert "no need to reply" in body
