"""The renderer's contract, every step's golden files, and the message a client receives.

Golden files in tests/golden/ hold the expected subject, preheader, text and HTML of each step
for a sample client (``<step>.<sample>.<part>``); after an intended template change, regenerate
them with ``UPDATE_GOLDEN=1 pytest tests/unit/test_emails.py`` and read the diff.
"""

from __future__ import annotations

import email
import os
import re
from dataclasses import replace
from email import policy
from pathlib import Path

import pytest
from jinja2 import UndefinedError

from handoff.email_context import ClientEmailContext
from handoff.emails import EmailRenderer, RenderedEmail
from handoff.errors import ConfigError
from tests.builders import HANDOFF_DOC, day_zero, make_deal
from tests.email_samples import (
    CONTACT,
    CSM,
    EXECUTIVE,
    FULL,
    REP,
    SAMPLES,
    STEPS,
    sample_context,
    sample_message,
    sample_renderer,
)

GOLDEN = Path(__file__).resolve().parents[1] / "golden"
GOLDEN_CASES = [
    *[(template, "full") for template in STEPS],
    ("welcome", "team_fallback"),
    ("expansion_welcome", "existing_customer"),
    ("referral_ask", "promotional"),
]
PARTS = ("subject", "preheader", "text", "html")


@pytest.fixture(scope="module")
def renderer():
    return sample_renderer()


@pytest.mark.parametrize("part", PARTS)
@pytest.mark.parametrize(
    ("template", "sample"), GOLDEN_CASES, ids=[f"{t}-{s}" for t, s in GOLDEN_CASES]
)
def test_matches_the_golden_file(renderer, template, sample, part):
    actual = getattr(renderer.render(template, sample_context(sample, template)), part)
    golden = GOLDEN / f"{template}.{sample}.{part}"
    if os.environ.get("UPDATE_GOLDEN"):
        golden.write_text(actual, encoding="utf-8")
    assert actual == golden.read_text(encoding="utf-8"), f"{golden} differs"


def test_every_golden_file_belongs_to_a_case():
    expected = {f"{t}.{s}.{p}" for t, s in GOLDEN_CASES for p in PARTS}
    assert {path.name for path in GOLDEN.iterdir()} == expected


# -- the renderer ------------------------------------------------------------------------------


def test_render_refuses_anything_but_a_client_email_context(renderer):
    with pytest.raises(TypeError, match="ClientEmailContext"):
        renderer.render("welcome", FULL.to_dict())


def test_rendered_email_holds_every_part(renderer):
    rendered = renderer.render("timeline", FULL)
    assert isinstance(rendered, RenderedEmail)
    assert rendered.subject and rendered.preheader and rendered.text and rendered.html


def step_folder(root: Path, **parts: str) -> Path:
    folder = root / "step"
    folder.mkdir(parents=True)
    for name, text in parts.items():
        (folder / name).write_text(text, encoding="utf-8")
    return root


def test_a_template_reaching_for_a_field_the_context_lacks_fails(tmp_path):
    """StrictUndefined: an internal field a template asks for is an error, never a blank."""
    root = step_folder(
        tmp_path,
        **{"subject.txt.j2": "Hi", "body.txt.j2": "{{ deal_name }}", "body.html.j2": "x"},
    )
    with pytest.raises(UndefinedError, match="deal_name"):
        EmailRenderer(root).render("step", FULL)


def test_check_reports_a_missing_part(tmp_path):
    root = step_folder(tmp_path, **{"subject.txt.j2": "Hi", "body.txt.j2": "x"})
    with pytest.raises(ConfigError, match="body.html.j2"):
        EmailRenderer(root).check("step")


def test_check_reports_a_missing_folder(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        EmailRenderer(tmp_path / "nowhere").check("welcome")


def test_a_subject_is_always_one_line(renderer):
    rendered = renderer.render("timeline", replace(FULL, account_name="Stark\r\n  Sons"))
    assert rendered.subject == "Stark Sons: your onboarding timeline with Handoff Demo Inc."


# -- the HTML a mail client receives -----------------------------------------------------------


def without_comments(html: str) -> str:
    """The markup every client reads (Outlook's conditional tables are comments to others)."""
    return re.sub(r"<!--.*?-->", "", html, flags=re.DOTALL)


@pytest.mark.parametrize("template", STEPS)
def test_css_is_inlined_and_only_the_phone_layout_stays_in_the_head(renderer, template):
    html = renderer.render(template, FULL).html
    styles = re.findall(r"<style>(.*?)</style>", html, flags=re.DOTALL)
    assert len(styles) == 1 and styles[0].strip().startswith("@media")
    assert html.index("<style>") < html.index("</head>")
    for tag in re.findall(r"<(?:td|p|li)\b[^>]*>", without_comments(html)):
        for rule in ("font-family:", "font-size:", "color:"):
            assert rule in tag, f"{tag} has no {rule}"


@pytest.mark.parametrize("template", STEPS)
def test_the_layout_never_forces_a_width(renderer, template):
    html = renderer.render(template, FULL).html
    assert '<html lang="en"' in html
    tables = re.findall(r"<table\b[^>]*>", without_comments(html))
    assert tables and all('role="presentation"' in t for t in tables)
    assert all('width="100%"' in t for t in tables)
    assert "max-width: 600px" in html
    assert "<img" not in html


# -- the message ------------------------------------------------------------------------------


@pytest.fixture
def settings(full_playbook, tmp_path, monkeypatch):
    """The whole playbook: the welcome shows the timeline its labelled steps give."""
    from handoff.config import load_settings

    monkeypatch.setenv("HANDOFF_STATE_URL", f"sqlite:///{tmp_path / 'state.db'}")
    return load_settings()


def test_internal_notes_never_reach_the_client(settings, renderer):
    """The context planning builds for a real deal: no note, deal name or CRM id gets out."""
    deal = make_deal()
    steps, _ = day_zero(deal, settings)
    context = ClientEmailContext.from_dict(steps["welcome_email"].payload["context"])
    for template in STEPS:
        rendered = renderer.render(template, context)
        raw = bytes(sample_message(template, context)).decode("utf-8", "replace")
        visible = [rendered.subject, rendered.preheader, rendered.text, rendered.html, raw]
        secrets = [deal.name, deal.deal_id, deal.primary_contact.id, deal.owner.id, deal.csm.id]
        for note in HANDOFF_DOC.values():
            secrets += [note, note.split()[0]]
        for secret in secrets:
            assert not any(secret in part for part in visible), f"{template}: {secret!r}"


def test_message_is_multipart_alternative_text_first():
    message = sample_message("welcome", sample_context("full", "welcome"))
    assert message.get_content_type() == "multipart/alternative"
    assert [p.get_content_type() for p in message.iter_parts()] == ["text/plain", "text/html"]
    assert message["From"] == f"{EXECUTIVE[0]} <{EXECUTIVE[2]}>"
    assert message["To"] == f"{CONTACT[0]} <{CONTACT[1]}>"
    assert message["Cc"] == f"{REP[0]} <{REP[1]}>, {CSM[0]} <{CSM[1]}>"


def test_non_latin_names_round_trip_through_mime():
    context = replace(
        FULL, greeting="Dear 李伟", contact_name="李伟", account_name="北京数据科技有限公司"
    )
    parsed = email.message_from_bytes(
        bytes(sample_message("timeline", context)), policy=policy.default
    )
    assert parsed["To"].addresses[0].display_name == "李伟"
    assert "北京数据科技有限公司" in parsed["Subject"]
    assert parsed.get_body(("plain",)).get_content().startswith("Dear 李伟,\n")
    assert "北京数据科技有限公司" in parsed.get_body(("html",)).get_content()


def test_a_line_break_in_a_name_cannot_inject_a_header():
    context = replace(FULL, contact_name="Gavin\r\nBcc: attacker@evil.example")
    try:
        message = sample_message("timeline", context)
    except ValueError:
        return  # refused outright: nothing was injected
    parsed = email.message_from_bytes(bytes(message), policy=policy.default)
    assert parsed["Bcc"] is None
    assert [a.addr_spec for a in parsed["To"].addresses] == [CONTACT[1]]


@pytest.mark.parametrize("sample", [s for s in SAMPLES if s != "promotional"])
def test_relationship_mail_has_no_list_unsubscribe(sample):
    message = sample_message("weekly_checkin", sample_context(sample, "weekly_checkin"))
    assert message["List-Unsubscribe"] is None


def test_the_promotional_step_has_a_valid_unfolded_list_unsubscribe():
    message = sample_message("referral_ask", SAMPLES["promotional"])
    raw = bytes(message).decode()
    header = next(line for line in raw.splitlines() if line.startswith("List-Unsubscribe:"))
    assert "=?utf-8?" not in header
    assert "<https://handoff-demo.example/handoff/unsubscribe?t=" in header
    # Only the link that records the opt-out: a mailto would reach a person, not the store.
    assert "mailto:" not in header
    assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
