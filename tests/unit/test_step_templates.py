"""What every client email step says, for every sample client.

Each step is rendered for each sample of ``tests/email_samples.py``: a named CSM with a booking
link, the customer success team when no CSM is set, an existing customer, and the promotional
referral ask's unsubscribe links. The rules checked here are the ones a client would notice:
escaped names, deadlines worded as deadlines, no unsubscribe talk in relationship mail, no
person promised when there is none, and no "first 90 days" for a client we already have.
"""

from __future__ import annotations

import html
import re
from dataclasses import replace

import pytest

from handoff.email_context import Milestone
from tests.email_samples import (
    ACCOUNT,
    BOOKING_URL,
    CSM,
    EXECUTIVE,
    FULL,
    REP,
    SAMPLES,
    STEPS,
    TEAM,
    TIMELINE,
    UNSUBSCRIBE_MAILTO,
    UNSUBSCRIBE_URL,
    sample_context,
    sample_renderer,
)

TEMPLATES = list(STEPS)
# Steps that list the client's whole timeline.
TIMELINE_STEPS = ["welcome", "expansion_welcome", "timeline"]
CASES = [(t, s) for t in TEMPLATES for s in SAMPLES]
CASE_IDS = [f"{t}-{s}" for t, s in CASES]
ISO_DATE = re.compile(r"\b\d{4}-\d{2}-\d{2}\b")
# How css-inline serializes the autoescaped name: quotes in text need no entity.
ACCOUNT_IN_HTML = '&lt;b&gt;Stark&lt;/b&gt; &amp; "Sons" Ltd'


@pytest.fixture(scope="module")
def renderer():
    return sample_renderer()


def render(renderer, template, sample):
    return renderer.render(template, sample_context(sample, template))


def parts(rendered):
    return (rendered.subject, rendered.preheader, rendered.text, rendered.html)


@pytest.mark.parametrize("template", TEMPLATES)
def test_every_part_loads(renderer, template):
    renderer.check(template)


@pytest.mark.parametrize(("template", "sample"), CASES, ids=CASE_IDS)
def test_subject_is_one_non_empty_line(renderer, template, sample):
    values = sample_context(sample, template).for_template()
    raw = renderer.env.get_template(f"{template}/subject.txt.j2").render(values)
    assert raw.strip(), f"{template}: empty subject"
    assert "\n" not in raw.strip(), f"{template}: subject spans several lines: {raw!r}"
    assert render(renderer, template, sample).subject == raw.strip()


@pytest.mark.parametrize(("template", "sample"), CASES, ids=CASE_IDS)
def test_greeting_and_signature(renderer, template, sample):
    context = sample_context(sample, template)
    rendered = render(renderer, template, sample)
    assert rendered.text.startswith("Hi Ada,\n\n")
    assert ">Hi Ada,</p>" in rendered.html
    if context.signer_title:
        signature = f"{context.signer_name}\n{context.signer_title}, {context.company}\n"
    else:
        signature = f"{context.signer_name}\n{context.company}\n"
    assert signature in rendered.text
    assert f"{context.signer_name}<br>" in rendered.html


@pytest.mark.parametrize(("template", "sample"), CASES, ids=CASE_IDS)
def test_markup_in_names_is_escaped_in_html_only(renderer, template, sample):
    rendered = render(renderer, template, sample)
    assert "<b>Stark</b>" not in rendered.html
    assert ACCOUNT_IN_HTML in rendered.html
    assert ACCOUNT in rendered.text


@pytest.mark.parametrize(("template", "sample"), CASES, ids=CASE_IDS)
def test_no_none_and_no_raw_dates_leak(renderer, template, sample):
    for part in parts(render(renderer, template, sample)):
        assert "None" not in part
        assert not ISO_DATE.search(part)


@pytest.mark.parametrize(("template", "sample"), CASES, ids=CASE_IDS)
def test_preheader_is_in_the_html_and_hidden(renderer, template, sample):
    rendered = render(renderer, template, sample)
    assert rendered.preheader.strip() == rendered.preheader
    assert 20 <= len(rendered.preheader) <= 140, rendered.preheader
    hidden = re.search(r'<div class="preheader" style="([^"]*)">([^<]*)</div>', rendered.html)
    assert hidden, "no preheader div"
    style, content = hidden.groups()
    assert "display: none" in style and "mso-hide: all" in style
    assert content.startswith(html.escape(rendered.preheader, quote=False))
    assert hidden.start() < rendered.html.index("<table"), "the preheader must come first"


@pytest.mark.parametrize(("template", "sample"), CASES, ids=CASE_IDS)
def test_the_csm_or_team_can_be_reached(renderer, template, sample):
    context = sample_context(sample, template)
    rendered = render(renderer, template, sample)
    for body in (rendered.text, rendered.html):
        assert context.csm_email in body
        if context.csm_booking_url:
            assert context.csm_booking_url in body
    if not context.csm_is_team:
        assert context.csm_name in rendered.text


@pytest.mark.parametrize("template", TIMELINE_STEPS)
@pytest.mark.parametrize("sample", ["full", "existing_customer"])
def test_milestones_are_deadlines_in_both_parts(renderer, template, sample):
    rendered = render(renderer, template, sample)
    for milestone in sample_context(sample, template).timeline:
        assert f"- {milestone.label}: by {milestone.deadline}\n" in rendered.text
        assert f">{milestone.label}</td>" in rendered.html
        assert f">by {milestone.deadline}</td>" in rendered.html


@pytest.mark.parametrize(
    ("template", "sample"),
    [c for c in CASES if c != ("referral_ask", "promotional")],
    ids=[i for i in CASE_IDS if i != "referral_ask-promotional"],
)
def test_relationship_mail_never_offers_to_unsubscribe(renderer, template, sample):
    """Only the promotional referral ask may: a relationship note is not a mailing list."""
    for part in parts(render(renderer, template, sample)):
        assert "unsubscribe" not in part.lower()
        assert "stop these emails" not in part.lower()


def test_the_referral_ask_offers_to_unsubscribe_when_promotional(renderer):
    rendered = render(renderer, "referral_ask", "promotional")
    url = html.escape(UNSUBSCRIBE_URL)
    assert f'<a href="{url}"' in rendered.html
    assert re.search(rf'<a href="{re.escape(url)}"[^>]*>Unsubscribe</a>', rendered.html)
    assert f'href="mailto:{UNSUBSCRIBE_MAILTO}?subject=unsubscribe"' in rendered.html
    line = f"Unsubscribe from emails like this one: {UNSUBSCRIBE_URL}"
    assert f"{line} (or write to {UNSUBSCRIBE_MAILTO})\n" in rendered.text


def test_a_mailto_alone_still_offers_to_unsubscribe(renderer):
    context = replace(SAMPLES["promotional"], unsubscribe_url=None)
    rendered = renderer.render("referral_ask", context)
    assert f'href="mailto:{UNSUBSCRIBE_MAILTO}?subject=unsubscribe"' in rendered.html
    assert (
        f"To unsubscribe from emails like this one, write to {UNSUBSCRIBE_MAILTO}." in rendered.text
    )


@pytest.mark.parametrize("template", TEMPLATES)
def test_team_fallback_names_no_person_and_promises_no_hour(renderer, template):
    rendered = render(renderer, template, "team_fallback")
    for part in parts(rendered):
        for name in (CSM[0], REP[0], "Casey", "Riley"):
            assert name not in part
        assert "few hours" not in part
        assert "your customer success manager" not in part
    for body in (rendered.text, rendered.html):
        assert TEAM[1] in body
        if template in TIMELINE_STEPS:  # the steps that say who the client's contact is
            assert "our customer success team" in body.lower()


@pytest.mark.parametrize("template", TEMPLATES)
def test_an_existing_customer_never_reads_new_customer_words(renderer, template):
    for part in parts(render(renderer, template, "existing_customer")):
        assert "first 90 days" not in part
        assert "first message you receive from us as a customer" not in part


def test_welcome_comes_from_the_executive_and_introduces_the_csm(renderer):
    rendered = render(renderer, "welcome", "full")
    assert rendered.subject.startswith("Welcome to Handoff Demo Inc.")
    for body in (rendered.text, rendered.html):
        assert f"I'm {EXECUTIVE[0]}, {EXECUTIVE[1]}" in body
        assert "first message you receive from us as a customer" in body
        assert f"{CSM[0]} is your customer success manager from today" in body
        assert "within the next few hours" in body
        assert f"{REP[0]}, who worked with you during the evaluation, is copied" in body
    assert f"book a time that suits you: {BOOKING_URL}" in rendered.text


def test_welcome_signed_by_the_team_introduces_the_team(renderer):
    rendered = renderer.render("welcome", SAMPLES["team_fallback"])
    assert "This note comes from our customer success team" in rendered.text
    assert "few hours" not in rendered.text + rendered.html


def test_welcome_signed_by_the_csm_does_not_announce_a_call_from_themself(renderer):
    rendered = renderer.render("welcome", FULL)
    for body in (rendered.text, rendered.html):
        assert f"I'm {CSM[0]}, your customer success manager" in body
        assert "few hours" not in body
    assert f"Pick a time in my calendar ({BOOKING_URL})" in rendered.text


def test_expansion_welcome_thanks_for_extending_and_reintroduces_the_csm(renderer):
    rendered = render(renderer, "expansion_welcome", "existing_customer")
    assert "Thank you for extending" in rendered.subject
    for body in (rendered.text, rendered.html):
        assert "Thank you for extending your work with Handoff Demo Inc., and for" in body
        assert f"I'm {CSM[0]}, your customer success manager" in body
        assert "roll out what you have added" in body
        assert "welcome to" not in body.lower()


def test_timeline_without_dates_says_so(renderer):
    rendered = render(renderer, "timeline", "team_fallback")
    for body in (rendered.text, rendered.html):
        assert "We have not fixed the dates yet." in body
        assert "Our customer success team is your first point of contact." in body
        assert " by " not in body


@pytest.mark.parametrize(
    ("signer", "sentence"),
    [
        (CSM[0], "As your customer success manager, I am your first point of contact."),
        (EXECUTIVE[0], f"{CSM[0]}, your customer success manager, is your first point of contact."),
    ],
    ids=["signed_by_csm", "signed_by_executive"],
)
def test_timeline_names_the_first_point_of_contact(renderer, signer, sentence):
    rendered = renderer.render("timeline", replace(FULL, signer_name=signer))
    assert sentence in rendered.text and sentence in rendered.html


def test_kickoff_prep_gives_the_kickoff_deadline(renderer):
    rendered = render(renderer, "kickoff_prep", "full")
    assert "kickoff call by Wednesday, November 25." in rendered.text
    assert "kickoff call <strong>by Wednesday, November 25</strong>." in rendered.html
    assert "by Wednesday, November 25" in rendered.preheader
    for other in TIMELINE[1:]:
        assert other.deadline not in rendered.text + rendered.html
    for topic in ("Goals:", "People:", "Access and data:"):
        assert topic in rendered.text and f"<strong>{topic}</strong>" in rendered.html


@pytest.mark.parametrize("timeline", [(), TIMELINE[1:]], ids=["no_timeline", "no_kickoff"])
def test_kickoff_prep_without_a_kickoff_date(renderer, timeline):
    rendered = renderer.render("kickoff_prep", replace(FULL, timeline=timeline))
    assert "Your kickoff call is the next step." in rendered.text
    assert "Reply to this email with a few times" in rendered.text
    for milestone in TIMELINE:
        assert milestone.deadline not in rendered.text + rendered.html


def test_a_milestone_label_is_escaped(renderer):
    timeline = (Milestone("<i>Kickoff</i> call", "Wednesday, November 25"),)
    rendered = renderer.render("timeline", replace(FULL, timeline=timeline))
    assert "&lt;i&gt;Kickoff&lt;/i&gt; call</td>" in rendered.html
    assert "- <i>Kickoff</i> call: by Wednesday, November 25\n" in rendered.text


@pytest.mark.parametrize("week", range(1, 9))
def test_weekly_checkin_names_the_week_and_asks_one_question(renderer, week):
    rendered = renderer.render("weekly_checkin", replace(FULL, day=week * 7, week=week))
    assert rendered.subject.startswith(f"Week {week} of your onboarding")
    assert f"week {week} of your onboarding" in rendered.text
    assert f"week {week} of your onboarding" in rendered.html
    body = rendered.text.split("\n--\n")[0]
    assert body.count("?") == 1
    assert "reply" in body.lower()
    assert rendered.preheader in body, "the preview line is the week's question"


def test_weekly_checkin_questions_vary_across_weeks(renderer):
    questions = {
        renderer.render("weekly_checkin", replace(FULL, week=week)).preheader
        for week in range(1, 9)
    }
    assert len(questions) > 1


@pytest.mark.parametrize(
    ("template", "phrase"),
    [("success_review", "30-day success review"), ("formal_review", "90-day review")],
    ids=["success_review", "formal_review"],
)
def test_reviews_invite_and_ask_for_times(renderer, template, phrase):
    rendered = render(renderer, template, "full")
    assert phrase in rendered.subject
    for body in (rendered.text, rendered.html):
        assert phrase in body
        assert "reply with a few times" in body


def test_referral_ask_is_easy_to_ignore(renderer):
    rendered = render(renderer, "referral_ask", "promotional")
    for body in (rendered.text, rendered.html):
        assert "one person, or two" in body
        assert "no need to reply" in body
