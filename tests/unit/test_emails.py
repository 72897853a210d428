"""Rendering and MIME building of the welcome email.

Golden files in tests/golden/ hold the expected subject, text and HTML; after an intended
template change, regenerate them with ``UPDATE_GOLDEN=1 pytest tests/unit/test_emails.py``.
"""

from __future__ import annotations

import email
import os
from dataclasses import replace
from datetime import UTC, datetime
from email import policy
from pathlib import Path

import pytest
from jinja2 import UndefinedError

from handoff.mail import Unsubscribe, build_message, message_id
from tests.builders import CONTACT, HANDOFF_DOC, day_zero, make_deal

GOLDEN = Path(__file__).resolve().parents[1] / "golden"
SENT_AT = datetime(2026, 11, 20, 16, 0, tzinfo=UTC)


@pytest.fixture
def settings(full_playbook, tmp_path, monkeypatch):
    """The whole playbook: the welcome shows the timeline its labelled steps give."""
    from handoff.config import load_settings

    monkeypatch.setenv("HANDOFF_STATE_URL", f"sqlite:///{tmp_path / 'state.db'}")
    return load_settings()


def welcome(settings, **changes):
    steps, _ = day_zero(make_deal(**changes), settings)
    return steps["welcome_email"]


def message_for(settings, renderer, **changes):
    action = welcome(settings, **changes)
    rendered = renderer.render("welcome", action.payload["context"])
    return build_message(
        action.payload,
        rendered,
        dedupe_key="salesforce:006000000000001AAA:welcome_email",
        unsubscribe=Unsubscribe(str(settings.unsubscribe.mailto), settings.unsubscribe.url),
        sent_at=SENT_AT,
    )


@pytest.mark.parametrize("part", ["subject", "text", "html"])
def test_welcome_matches_the_golden_file(settings, renderer, part):
    rendered = renderer.render("welcome", welcome(settings).payload["context"])
    actual = getattr(rendered, part)
    golden = GOLDEN / f"welcome.{part}"
    if os.environ.get("UPDATE_GOLDEN"):
        golden.write_text(actual, encoding="utf-8")
    assert actual == golden.read_text(encoding="utf-8"), f"{golden} differs"


def test_internal_notes_never_reach_the_client(settings, renderer):
    message = message_for(settings, renderer)
    raw = bytes(message).decode("utf-8", "replace")
    text = message.get_body(("plain",)).get_content()
    html = message.get_body(("html",)).get_content()
    for note in HANDOFF_DOC.values():
        for fragment in (note, note.split()[0]):
            assert fragment not in text and fragment not in html and fragment not in raw


def test_html_in_names_is_escaped_in_html_and_kept_as_text(settings, renderer):
    message = message_for(
        settings,
        renderer,
        account_name='<b>Stark</b> & "Sons" Ltd',
        primary_contact=replace(CONTACT, first_name="Zoë <script>alert(1)</script>"),
    )
    html = message.get_body(("html",)).get_content()
    text = message.get_body(("plain",)).get_content()
    assert "<script>" not in html and "<b>Stark</b>" not in html
    assert "Zoë &lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "&lt;b&gt;Stark&lt;/b&gt; &amp; &#34;Sons&#34; Ltd" in html
    assert "Hi Zoë <script>alert(1)</script>," in text
    assert (
        message["Subject"]
        == 'Welcome to Handoff Demo Inc., <b>Stark</b> & "Sons" Ltd: your first 90 days'
    )


def test_non_latin_names_round_trip_through_mime(settings, renderer):
    message = message_for(
        settings,
        renderer,
        account_name="北京数据科技有限公司",
        primary_contact=replace(CONTACT, first_name="李", last_name="伟"),
    )
    parsed = email.message_from_bytes(bytes(message), policy=policy.default)
    assert parsed["To"].addresses[0].display_name == "李 伟"
    assert "北京数据科技有限公司" in parsed["Subject"]
    assert "Hi 李," in parsed.get_body(("plain",)).get_content()


def test_a_line_break_in_a_name_cannot_inject_a_header(settings, renderer):
    contact = replace(CONTACT, first_name="Gavin\r\nBcc: attacker@evil.example")
    message = message_for(settings, renderer, primary_contact=contact)
    parsed = email.message_from_bytes(bytes(message), policy=policy.default)
    assert parsed["Bcc"] is None
    assert [a.addr_spec for a in parsed["To"].addresses] == ["ada@client.example"]
    recipients = [a.addr_spec for h in ("To", "Cc") for a in parsed[h].addresses]
    assert "attacker@evil.example" not in recipients


def test_message_is_multipart_alternative_text_first(settings, renderer):
    message = message_for(settings, renderer)
    assert message.get_content_type() == "multipart/alternative"
    assert [p.get_content_type() for p in message.iter_parts()] == ["text/plain", "text/html"]
    assert message["From"] == "Dana Whitfield <dana.whitfield@handoff-demo.example>"
    assert message["Cc"] == (
        "Riley Rep <riley.rep@seller.example>, Casey Csm <casey.csm@seller.example>"
    )
    assert message["Message-ID"] == message_id(
        "salesforce:006000000000001AAA:welcome_email", "dana.whitfield@handoff-demo.example"
    )


def test_list_unsubscribe_is_a_valid_unfolded_header(settings, renderer):
    message = message_for(settings, renderer)
    raw = bytes(message).decode()
    header = next(line for line in raw.splitlines() if line.startswith("List-Unsubscribe:"))
    assert "=?utf-8?" not in header
    assert header.startswith("List-Unsubscribe: <mailto:unsubscribe@handoff-demo.example?subject=")
    assert "<https://handoff-demo.example/unsubscribe?t=" in header
    assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    # No CRM id leaks into the client-visible headers.
    assert "006000000000001AAA" not in raw


def test_strict_undefined_refuses_a_missing_variable(settings, renderer):
    context = dict(welcome(settings).payload["context"])
    del context["csm_name"]
    with pytest.raises(UndefinedError, match="csm_name"):
        renderer.render("welcome", context)
