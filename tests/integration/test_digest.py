"""The daily RevOps digest as RevOps reads it: numbers, charts, the message, the page.

Every figure of the sample report must reach both the HTML and the written text part, in the
row or line of the thing it describes; the charts are PNGs of the agreed width, each named by
exactly one inline part; the message has the same bytes for the same input; data is escaped;
a missing template variable fails; and the standalone page lays out in headless Chromium at a
phone's and the layout's width (skipped without ``chromium`` unless ``HANDOFF_REQUIRE_TOOLS=1``).

Set ``HANDOFF_KEEP_SCREENSHOTS=<dir>`` to keep the screenshots for a person to look at.
"""

from __future__ import annotations

import base64
import os
import re
import shutil
import subprocess
import sys
from dataclasses import replace
from datetime import UTC, datetime
from email import message_from_bytes, policy
from html import unescape
from html.parser import HTMLParser
from io import BytesIO
from pathlib import Path

import pytest
from jinja2 import UndefinedError
from PIL import Image

from handoff.reporting.digest import (
    CHART_WIDTH,
    CHARTS,
    charts,
    content_id,
    digest_message,
    moment_text,
    percent,
    quantity,
    render_digest,
    target_text,
    week_text,
    write_digest_file,
)
from handoff.reporting.report import OpenFlag, RepCompleteness, TimeToMetric
from tests.browser import Chromium, is_blank, require_chromium
from tests.digest_samples import (
    MESSAGE_ID,
    PERIOD_END,
    RECIPIENTS,
    REPORT,
    SENDER,
    TEMPLATES_DIR,
    empty_report,
    sample_report,
)

ROOT = Path(__file__).resolve().parents[2]
MAX_CHART_BYTES = 60_000


@pytest.fixture(scope="module")
def rendered():
    return render_digest(sample_report(), TEMPLATES_DIR)


@pytest.fixture(scope="module")
def empty():
    return render_digest(empty_report(), TEMPLATES_DIR)


class Images(HTMLParser):
    """The <img> tags of a page, with their attributes."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.images: list[dict[str, str | None]] = []
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.images.append(dict(attrs))


def words(html: str) -> str:
    """What a reader sees of some HTML: its text, unescaped, in single spaces."""
    return " ".join(unescape(re.sub(r"<[^>]+>", " ", html)).split())


def table_rows(html: str) -> list[str]:
    return [words(row) for row in re.findall(r"<tr\b.*?</tr>", html, flags=re.S)]


def row_with(html: str, needle: str) -> str:
    """The one table row that shows ``needle``."""
    found = [row for row in table_rows(html) if needle in row]
    assert len(found) == 1, f"{needle!r} is in {len(found)} table rows"
    return found[0]


def line_with(text: str, needle: str) -> str:
    found = [line for line in text.splitlines() if needle in line]
    assert len(found) == 1, f"{needle!r} is on {len(found)} lines of the text part"
    return found[0]


def block_with(text: str, needle: str) -> str:
    """A text part's list item that starts with ``needle``, with its indented lines."""
    lines = text.splitlines()
    starts = [i for i, line in enumerate(lines) if line.startswith("- ") and needle in line]
    assert len(starts) == 1, f"{needle!r} starts {len(starts)} items of the text part"
    end = starts[0] + 1
    while end < len(lines) and lines[end].startswith("  "):
        end += 1
    return " ".join(lines[starts[0] : end])


def between(document: str, start: str, end: str) -> str:
    """The part of an HTML or text document from ``start`` up to ``end``."""
    begin = document.index(start)
    return document[begin : document.index(end, begin)]


def alts(html: str) -> dict[str, str]:
    """Alt text of each chart, by content id."""
    return {
        str(img["src"]).removeprefix("cid:"): unescape(str(img["alt"]))
        for img in Images(html).images
    }


# -- the numbers -----------------------------------------------------------------------------


def test_the_header_and_summary_are_in_both_parts(rendered):
    page = words(rendered.html)
    for part in (page, rendered.text):
        assert "8 new clients, 3 red flags raised, 2 resolved, 5 open" in part
        assert "31 clients in onboarding" in part
        assert "Handoff Demo Inc." in part
        assert (
            "the 24 hours from Tuesday 1 December, 07:00 to Wednesday 2 December 2026, "
            "07:00 UTC, from Salesforce and HubSpot" in " ".join(part.split())
        )
    assert rendered.subject == (
        "RevOps digest for Wed 2 Dec 2026: 8 new clients, 3 red flags raised, 2 resolved, 5 open"
    )


def test_every_new_client_is_in_both_parts(rendered):
    html = between(rendered.html, ">New clients (8)<", ">Open red flags (5)<")
    text = between(rendered.text, "NEW CLIENTS (8)", "OPEN RED FLAGS")
    assert "Tue 1 Dec, 09:12" in row_with(html, "Analytical Engines Ltd")
    for client in REPORT.new_clients:
        row = row_with(html, client.account)
        item = block_with(text, client.account)
        for fact in (client.deal, client.rep, client.csm, moment_text(client.won_at)):
            assert fact in row, (fact, row)
            assert fact in item, (fact, item)


def test_open_flags_show_every_fact_high_severity_first_then_oldest(rendered):
    expected_order = [
        "Kepler Optics",  # high, 27 Nov
        "Lovelace Systems",  # high, 30 Nov
        "Meitner Energy",  # high, 1 Dec
        "Hypatia Books",  # medium, 24 Nov: older, but medium
        "Turing Freight",  # medium, 1 Dec
    ]
    html = between(rendered.html, ">Open red flags (5)<", ">Time to value")
    text = between(rendered.text, "OPEN RED FLAGS (5)", "TIME TO VALUE")
    for section in (words(html), text):
        positions = [section.index(account) for account in expected_order]
        assert positions == sorted(positions), section
    rows = table_rows(html)
    assert rows[1] == (
        "Kepler Optics Salesforce No kickoff high Alex Morgan Fri 27 Nov, 07:00 day 6 of onboarding"
    )
    assert rows[2] == "Why: no completed kickoff meeting by day 5"
    for flag in REPORT.open_flags:
        row = row_with(html, flag.account)
        reason = rows[rows.index(row) + 1]  # each flag's reason is the row below it
        item = block_with(text, flag.account)
        for fact in (flag.title, flag.severity, flag.owner, moment_text(flag.raised_at)):
            assert fact in row, (fact, row)
            assert fact in item, (fact, item)
        assert f"day {flag.day} of onboarding" in row
        assert f"day {flag.day}" in item
        assert reason == f"Why: {flag.reason}"
        assert f"Why: {flag.reason}" in item


def test_every_metric_shows_median_target_share_and_status_in_both_parts(rendered):
    first = row_with(rendered.html, "Signature to first CS contact")
    assert "2.6 business hours" in first and "< 4 business hours" in first
    assert "83%" in first and "✓ on target" in first
    assert "✗ off target" in row_with(rendered.html, "Kickoff to first value")
    milestones = line_with(rendered.text, "Playbook milestones completed")
    assert "median 91.3%, target > 95%: ✗ off target" in milestones
    statuses = {"first_contact": "✓", "kickoff": "✓", "first_value": "✗", "milestones": "✗"}
    for metric in REPORT.time_to:
        row = row_with(rendered.html, metric.label)
        item = block_with(rendered.text, metric.label)
        for fact in (
            quantity(metric.median, metric.unit),
            target_text(metric),
            percent(metric.on_target_share),
            f"{metric.measured} measured",
            f"{metric.waiting} waiting",
            statuses[metric.key],
        ):
            assert fact in row, (fact, row)
            assert fact in item, (fact, item)


def test_every_rep_and_week_is_in_both_parts(rendered):
    jordan = row_with(rendered.html, "Jordan Blake 4")
    assert jordan == "Jordan Blake 4 50% 83%"
    for rep in REPORT.reps:
        row = row_with(rendered.html, f"{rep.rep} {rep.deals}")
        assert row.endswith(f"{percent(rep.complete_share)} {percent(rep.fields_share)}"), row
        assert (
            f"- {rep.rep}: {percent(rep.complete_share)} of {rep.deals} deals complete, "
            f"{percent(rep.fields_share)} of fields filled" in rendered.text
        )
    assert row_with(rendered.html, "16 Nov 2026") == "16 Nov 2026 3 67% 67% – 86% 2 (1) 0"
    for cohort in REPORT.cohorts:
        shares = [
            percent(s)
            for s in (
                cohort.first_contact_on_time,
                cohort.kickoff_on_time,
                cohort.first_value_on_time,
                cohort.milestone_completion,
            )
        ]
        row = row_with(rendered.html, week_text(cohort.week))
        assert row == (
            f"{week_text(cohort.week)} {cohort.deals} {' '.join(shares)} "
            f"{cohort.flags_raised} ({cohort.flags_open}) {cohort.left}"
        )
        line = line_with(rendered.text, f"Week of {week_text(cohort.week)}:")
        assert f"{cohort.deals} deals; on target {' / '.join(shares[:3])}" in line
        assert f"steps done {shares[3]}" in line
        assert f"flags {cohort.flags_raised} raised, {cohort.flags_open} open" in line
        assert f"{cohort.left} left" in line


def test_the_charts_alt_text_and_the_text_part_carry_the_chart_numbers(rendered):
    alt = alts(rendered.html)
    assert set(alt) == {content_id(name) for name in CHARTS}
    flags = alt[content_id("flags")]
    rules = line_with(rendered.text, "Open by rule:")
    for code, count in REPORT.flag_counts.items():
        title = next(f.title for f in REPORT.open_flags if f.code == code)
        assert f"{title} {count}" in flags
        assert f"{title} {count}" in rules
    assert flags.startswith("Open red flags by rule: Handoff document incomplete 2, ")
    completeness = alt[content_id("completeness")]
    assert "Jordan Blake 50% of 4 deals, Alex Morgan 67% of 6 deals" in completeness
    cohorts = alt[content_id("cohorts")]
    assert "week of 16 Nov 2026: first contact 67%, kickoff 67%, first value –" in cohorts
    assert cohorts.count("week of") == len(REPORT.cohorts)


# -- formatting edges ------------------------------------------------------------------------


def test_shares_round_to_whole_percent_but_never_to_all_or_none():
    assert [percent(s) for s in (0, 0.004, 0.5, 0.8333, 0.996, 1)] == [
        "0%", "1%", "50%", "83%", "99%", "100%",
    ]  # fmt: skip
    assert percent(None) == "–"
    assert quantity(4.0, "business hours") == "4 business hours"
    assert quantity(1, "days") == "1 day"
    assert quantity(91.25, "%") == "91.2%"


def test_a_metric_without_a_value_says_so():
    waiting = TimeToMetric("first_value", "Kickoff to first value", None, "days", 14, "<", None,
                           0, 7)  # fmt: skip
    digest = render_digest(sample_report(time_to=(waiting,)), TEMPLATES_DIR)
    assert row_with(digest.html, "Kickoff to first value") == (
        "Kickoff to first value – < 14 days – 0 measured, 7 waiting no data yet"
    )
    assert "median –, target < 14 days: no data yet" in digest.text


# -- charts ----------------------------------------------------------------------------------


def test_charts_are_small_sharp_pngs_named_in_the_html(rendered):
    images = Images(rendered.html).images
    assert len(images) == len(CHARTS)
    for image in images:
        cid = str(image["src"]).removeprefix("cid:")
        png = rendered.images[cid]
        picture = Image.open(BytesIO(png))
        assert picture.format == "PNG"
        picture.load()  # decodes every row: a truncated or corrupt file fails here
        width, height = picture.size
        assert width == 2 * CHART_WIDTH
        assert image["width"] == str(CHART_WIDTH)
        assert image["height"] == str(round(CHART_WIDTH * height / width))
        assert len(png) < MAX_CHART_BYTES, f"{cid} is {len(png)} bytes"
        assert len(picture.convert("RGB").getcolors(2**16) or ()) > 8, f"{cid} is nearly blank"


def test_the_same_report_draws_the_same_bytes_without_touching_global_state():
    import matplotlib

    backend, size = matplotlib.get_backend(), matplotlib.rcParams["font.size"]
    first, second = charts(sample_report()), charts(sample_report())
    assert first == second
    assert list(first) == list(CHARTS)
    assert matplotlib.get_backend() == backend
    assert matplotlib.rcParams["font.size"] == size
    other = charts(sample_report(flag_counts={"no_kickoff": 4}))
    assert other["flags"] != first["flags"] and other["cohorts"] == first["cohorts"]


def test_importing_the_digest_does_not_load_matplotlib():
    code = "import sys, handoff.reporting.digest; print('matplotlib' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    )
    assert result.stdout.strip() == "False"


def test_names_that_look_like_tex_or_html_are_drawn_and_escaped_as_text():
    hostile = '"><img src=x onerror=alert(1)>'
    flag = OpenFlag("hubspot", "1", "<b>Stark</b> & Sons", "scope_creep", f"Scope {hostile}",
                    "medium", "<script>alert('x')</script> asked for SSO", "Pat $\\frac{$ Lee",
                    datetime(2026, 12, 1, 9, tzinfo=UTC), 3)  # fmt: skip
    report = sample_report(
        open_flags=(flag,),
        flag_counts={"scope_creep": 1},
        reps=(RepCompleteness("Pat $\\frac{$ Lee", 2, 0.5, 0.75),),
    )
    digest = render_digest(report, TEMPLATES_DIR)
    assert "<script" not in digest.html.lower()
    assert "&lt;script&gt;alert('x')&lt;/script&gt; asked for SSO" in digest.html
    assert "&lt;b&gt;Stark&lt;/b&gt; &amp; Sons" in digest.html
    images = Images(digest.html).images
    # The title, in the table and in an alt attribute, opened no tag and no attribute.
    assert len(images) == len(CHARTS) and not any("onerror" in image for image in images)
    assert f"Scope {hostile} 1" in alts(digest.html)[content_id("flags")]
    assert "Why: <script>alert('x')</script> asked for SSO" in digest.text
    assert "- Pat $\\frac{$ Lee: 50% of 2 deals complete" in digest.text


# -- an empty day ----------------------------------------------------------------------------


def test_an_empty_report_renders_and_its_charts_say_no_data(empty, rendered):
    page = words(empty.html)
    for part in (page, empty.text):
        assert "0 new clients, 0 red flags raised, 0 resolved, 0 open" in part
        assert "No new clients in this period." in part
        assert "No open red flags." in part
        assert "No deal has been measured yet." in part
        assert "No rep has a deal in onboarding yet." in part
    assert alts(empty.html) == {
        content_id("cohorts"): "Share of deals on target by signature week: no data yet.",
        content_id("flags"): "Open red flags by rule: none.",
        content_id("completeness"): "Complete handoff documents by rep, lowest first: no data yet.",
    }
    for cid, png in empty.images.items():
        picture = Image.open(BytesIO(png))
        assert picture.size[0] == 2 * CHART_WIDTH
        assert png != rendered.images[cid]
        assert len(picture.convert("RGB").getcolors(2**16) or ()) > 2, f"{cid} draws nothing"


# -- templates -------------------------------------------------------------------------------


@pytest.mark.parametrize("part", ["subject.txt.j2", "body.txt.j2", "body.html.j2"])
def test_a_template_naming_a_missing_value_fails(tmp_path, part):
    folder = tmp_path / "emails"
    shutil.copytree(TEMPLATES_DIR / "revops_digest", folder / "revops_digest")
    template = folder / "revops_digest" / part
    template.write_text(template.read_text() + "{{ churn_rate }}\n")
    with pytest.raises(UndefinedError, match="churn_rate"):
        render_digest(sample_report(), folder)


# -- the message -----------------------------------------------------------------------------


def build(rendered, message_id: str = MESSAGE_ID):
    return digest_message(
        rendered, sender=SENDER, recipients=RECIPIENTS, message_id=message_id, sent_at=PERIOD_END
    )


def test_the_message_has_text_then_html_with_each_chart_inline_once(rendered):
    mail = build(rendered)
    message = message_from_bytes(mail.content, policy=policy.default)
    assert message.get_content_type() == "multipart/alternative"
    text, related = message.get_payload()
    assert text.get_content_type() == "text/plain"
    assert text.get_content().replace("\r\n", "\n") == rendered.text
    assert related.get_content_type() == "multipart/related"
    html, *pictures = related.get_payload()
    assert html.get_content_type() == "text/html"
    assert html.get_content().replace("\r\n", "\n").rstrip() == rendered.html.rstrip()
    referenced = re.findall(r'src="cid:([^"]+)"', rendered.html)
    ids = [str(part["Content-ID"]) for part in pictures]
    assert sorted(ids) == sorted(f"<{cid}>" for cid in referenced)
    assert len(set(ids)) == len(ids) == len(CHARTS)
    for part in pictures:
        cid = str(part["Content-ID"]).strip("<>")
        assert part.get_content_type() == "image/png"
        assert part.get_content_disposition() == "inline"
        assert part.get_content() == rendered.images[cid]
    assert message["Auto-Submitted"] == "auto-generated"
    assert message["From"] == "Handoff Autopilot <handoff@handoff-demo.example>"
    assert message["To"] == RECIPIENTS[0]
    assert message["Cc"] == ", ".join(RECIPIENTS[1:])
    assert message["Subject"] == rendered.subject
    assert mail.recipients == tuple(RECIPIENTS)
    assert mail.envelope_from == SENDER["email"] and not mail.smtputf8
    assert mail.message_id == MESSAGE_ID


def test_the_same_digest_has_the_same_bytes(rendered):
    again = render_digest(sample_report(), TEMPLATES_DIR)
    assert build(again).content == build(rendered).content
    other = build(rendered, "<handoff.digest20261203@handoff-demo.example>").content
    assert other != build(rendered).content  # the boundaries follow the Message-ID
    assert b"\r\n" in other and b"\n" not in other.replace(b"\r\n", b"")


def test_a_digest_needs_a_recipient(rendered):
    with pytest.raises(ValueError, match="recipient"):
        digest_message(
            rendered, sender=SENDER, recipients=[], message_id=MESSAGE_ID, sent_at=PERIOD_END
        )


# -- the standalone page ---------------------------------------------------------------------


def test_the_page_inlines_the_charts_and_keeps_the_pngs_beside_it(rendered, tmp_path):
    page = write_digest_file(rendered, tmp_path / "2026-12-02", "revops-digest")
    assert page == tmp_path / "2026-12-02" / "revops-digest.html"
    html = page.read_text(encoding="utf-8")
    assert "cid:" not in html
    sources = [str(img["src"]) for img in Images(html).images]
    assert len(sources) == len(CHARTS)
    inlined = [base64.b64decode(s.removeprefix("data:image/png;base64,")) for s in sources]
    assert sorted(inlined) == sorted(rendered.images.values())
    for name in CHARTS:
        png = tmp_path / "2026-12-02" / f"revops-digest-{name}.png"
        assert png.read_bytes() == rendered.images[content_id(name)]


@pytest.fixture(scope="module")
def browser():
    require_chromium()
    with Chromium() as chromium:
        yield chromium


@pytest.mark.parametrize("width", [375, 600])
@pytest.mark.parametrize("which", ["sample", "empty"])
def test_the_page_lays_out_at_phone_and_desktop_widths(browser, tmp_path, which, width):
    digest = render_digest(sample_report() if which == "sample" else empty_report(), TEMPLATES_DIR)
    page = write_digest_file(digest, tmp_path, f"digest-{which}")
    shot = tmp_path / f"digest-{which}-{width}.png"
    layout = browser.layout(page, width, 900, png=shot, full_page=True)
    assert not layout.scrolls_sideways, f"{layout.scroll_width} px wide at {width} px"
    assert layout.console_errors == ()
    assert not is_blank(shot), "the page shows nothing"
    with Image.open(shot) as picture:
        assert picture.size[0] == width and picture.size[1] > 900
    assert shot.stat().st_size > 20_000
    if keep := os.environ.get("HANDOFF_KEEP_SCREENSHOTS"):
        Path(keep).mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, Path(keep) / shot.name)


def test_the_browser_check_sees_a_digest_that_scrolls_sideways(browser, tmp_path, rendered):
    """The page check itself: the digest with a table forced wider than a phone must fail."""
    wide = replace(
        rendered, html=rendered.html.replace("<h1", '<div style="width:700px">x</div><h1', 1)
    )
    layout = browser.layout(write_digest_file(wide, tmp_path, "wide"), 375, 900)
    assert layout.scrolls_sideways
