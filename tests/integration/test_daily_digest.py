"""The daily RevOps run on the named client histories: the digest's numbers come from the
seeded data, it is written as a file and sent once a day, and it renders in Chromium."""

from __future__ import annotations

from datetime import date, timedelta
from functools import partial
from pathlib import Path

import pytest

from handoff.mail import smtp_transport
from handoff.redflags.rules import TITLES
from handoff.redflags.steps import evaluate_red_flags
from handoff.reporting.daily import run_digest
from handoff.sandbox.histories import HISTORY_CASES
from tests.browser import Chromium, is_blank, require_chromium
from tests.redflag_scenario import load_cases, noon

TODAY = date(2026, 12, 4)


@pytest.fixture
def digest_day(state, flagged):
    """The cases onboarded the day before the digest, their flags raised at noon."""
    load_cases(state, TODAY)
    evaluate_red_flags(state, flagged, "salesforce", "run-1", noon(TODAY))
    return noon(TODAY) + timedelta(hours=19)  # the 07:00 digest of the next day


def test_the_digest_shows_the_seeded_clients_flags_and_reps(state, flagged, digest_day, smtp_sink):
    transport = partial(smtp_transport, smtp_sink.host, smtp_sink.port, timeout=10)
    result = run_digest(state, flagged, transport, "digest-1", digest_day, "digest/1")
    trips = [(case, code) for case in HISTORY_CASES for code in sorted(case.trips)]
    assert result["open_flags"] == len(trips)
    assert result["digest_sent"] == 1
    (mail,) = smtp_sink.messages
    assert [a.addr_spec for a in mail.message["To"].addresses] == ["revops@handoff-demo.example"]
    text = mail.message.get_body(("plain",)).get_content()
    for case, code in trips:
        assert case.account in text and TITLES[code] in text
    cases = len(HISTORY_CASES)
    assert f"{cases - 1} of {cases}" in text or "92%" in text  # one incomplete document
    page = result["digest_file"]
    assert page.endswith("digest.html")
    html = Path(page).read_text(encoding="utf-8")
    assert "data:image/png;base64," in html
    for case, _ in trips:
        assert case.account in html


def test_a_rerun_of_the_same_day_sends_nothing_more(state, flagged, digest_day, smtp_sink):
    transport = partial(smtp_transport, smtp_sink.host, smtp_sink.port, timeout=10)
    first = run_digest(state, flagged, transport, "digest-1", digest_day, "digest/1#1")
    again = run_digest(state, flagged, transport, "digest-1", digest_day, "digest/1#2")
    assert (first["digest_sent"], again["digest_sent"]) == (1, 0)
    assert len(smtp_sink.messages) == 1
    (row,) = [r for r in state.actions() if r["source"] == "digest"]
    assert row["status"] == "done" and row["dedupe_key"].endswith(":revops_digest")


def test_a_dropped_connection_after_the_content_is_never_resent(
    state, flagged, digest_day, smtp_sink
):
    smtp_sink.drop_after_accept(1)
    transport = partial(smtp_transport, smtp_sink.host, smtp_sink.port, timeout=10)
    first = run_digest(state, flagged, transport, "digest-1", digest_day, "digest/1#1")
    again = run_digest(state, flagged, transport, "digest-1", digest_day, "digest/1#2")
    assert (first["digest_sent"], again["digest_sent"]) == (0, 0)
    (row,) = [r for r in state.actions() if r["source"] == "digest"]
    assert row["status"] == "unconfirmed" and "not sent again" in row["reason"]


def test_the_seeded_digest_renders_in_chromium(state, flagged, digest_day, tmp_path):
    require_chromium()
    result = run_digest(state, flagged, None, "digest-1", digest_day, "digest/1")
    shot = tmp_path / "digest-375.png"
    with Chromium() as browser:
        layout = browser.layout(Path(result["digest_file"]), 375, 900, png=shot, full_page=True)
    assert not layout.scrolls_sideways and layout.console_errors == ()
    assert not is_blank(shot)
