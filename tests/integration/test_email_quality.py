"""Every client email as a mail client and a spam filter would see it.

Each step of the 90-day playbook (and the expansion welcome) is rendered for every sample
client: in headless Chromium at a phone's width (375 px) and the layout's full width (600 px)
it must not scroll sideways, log no console error and show something; SpamAssassin, with its
local rules only, must score it below 1.0. The tools are Debian's ``chromium`` and
``spamassassin``; without them these tests skip, unless ``HANDOFF_REQUIRE_TOOLS=1`` (CI).

Set ``HANDOFF_KEEP_SCREENSHOTS=<dir>`` to keep the screenshots for a person to look at.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tomllib
from concurrent.futures import ThreadPoolExecutor
from email.message import EmailMessage
from pathlib import Path

import pytest

from tests.browser import Chromium, Layout, is_blank, require_chromium, require_tool
from tests.email_samples import SAMPLES, sample_context, sample_message, sample_renderer

ROOT = Path(__file__).resolve().parents[2]
PLAYBOOK = ROOT / "tests" / "config" / "playbook_90_days.toml"
WIDTHS = (375, 600)
HEIGHT = 900
SPAM_LIMIT = 1.0
SPAM_STATUS = re.compile(
    r"^X-Spam-Status: \w+, score=(-?[\d.]+) .*?tests=(.*?)\s+autolearn", re.M | re.S
)


def email_steps() -> list[str]:
    """The templates the playbook sends, and the expansion welcome that existing clients get."""
    steps = tomllib.loads(PLAYBOOK.read_text(encoding="utf-8"))["steps"]
    templates = [s["template"] for s in steps if s.get("kind") == "email"]
    return list(dict.fromkeys([*templates, "expansion_welcome"]))


CASES = [(template, sample) for template in email_steps() for sample in SAMPLES]
IDS = [f"{template}-{sample}" for template, sample in CASES]


@pytest.fixture(scope="module")
def browser():
    require_chromium()
    with Chromium() as chromium:
        yield chromium


@pytest.fixture(scope="module")
def pages(browser, tmp_path_factory) -> dict[tuple[str, str, int], tuple[Layout, Path]]:
    """Every case at every width: its layout and a screenshot of the whole page."""
    folder = tmp_path_factory.mktemp("email-pages")
    renderer = sample_renderer()
    results = {}
    for template, sample in CASES:
        html = folder / f"{template}-{sample}.html"
        html.write_text(renderer.render(template, sample_context(sample, template)).html)
        for width in WIDTHS:
            png = folder / f"{template}-{sample}-{width}.png"
            layout = browser.layout(html, width, HEIGHT, png=png, full_page=True)
            results[template, sample, width] = (layout, png)
    if keep := os.environ.get("HANDOFF_KEEP_SCREENSHOTS"):
        Path(keep).mkdir(parents=True, exist_ok=True)
        for _, png in results.values():
            shutil.copy(png, Path(keep) / png.name)
    return results


def test_the_browser_check_sees_a_page_that_breaks(browser, tmp_path):
    """The harness itself: a too-wide page with a script error must not pass."""
    page = tmp_path / "broken.html"
    page.write_text(
        '<!doctype html><meta name="viewport" content="width=device-width">'
        '<div style="width:700px">wide</div><script>undefined_function()</script>'
    )
    layout = browser.layout(page, 375, HEIGHT, png=tmp_path / "broken.png")
    assert layout.scrolls_sideways and layout.scroll_width >= 700
    assert any("undefined_function" in error for error in layout.console_errors)
    blank = tmp_path / "blank.html"
    blank.write_text('<!doctype html><meta name="viewport" content="width=device-width">')
    browser.layout(blank, 375, HEIGHT, png=tmp_path / "blank.png")
    assert is_blank(tmp_path / "blank.png") and not is_blank(tmp_path / "broken.png")


@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize(("template", "sample"), CASES, ids=IDS)
def test_renders_without_sideways_scrolling_or_errors(pages, template, sample, width):
    layout, png = pages[template, sample, width]
    assert not layout.scrolls_sideways, (
        f"{template} ({sample}) is {layout.scroll_width} px wide in a {width} px viewport"
    )
    assert layout.console_errors == ()
    assert not is_blank(png), f"{png} is one colour: the page shows nothing"


def spammy_message() -> EmailMessage:
    """What the spam check must catch, to show it runs with its rules."""
    message = EmailMessage()
    message["Subject"] = "FREE MONEY!!! ACT NOW"
    message["From"] = "Prize <prize@handoff-demo.example>"
    message["To"] = "ada@client.example"
    message.set_content("CLICK HERE for your FREE prize!!! 100% FREE, no risk, act now!!!\n")
    return message


@pytest.fixture(scope="module")
def spam_reports(tmp_path_factory) -> dict[tuple[str, str], tuple[float, str]]:
    """SpamAssassin's score and rules hit for every case, local rules only.

    Each run takes about a second to load its rules, so two run at a time. HOME points at an
    empty folder so no one's own preferences (allow lists, scores) change the result.
    """
    spamassassin = require_tool("spamassassin", shutil.which("spamassassin"))
    home = tmp_path_factory.mktemp("spamassassin-home")
    messages = {
        case: bytes(sample_message(case[0], sample_context(case[1], case[0]))) for case in CASES
    }
    messages["control", "spammy"] = bytes(spammy_message())

    def report(raw: bytes) -> tuple[float, str]:
        result = subprocess.run(
            [spamassassin, "--local", "--test-mode", "--nocreate-prefs"],
            input=raw,
            capture_output=True,
            env={**os.environ, "HOME": str(home)},
            timeout=120,
            check=True,
        )
        status = SPAM_STATUS.search(result.stdout.decode("utf-8", "replace"))
        assert status, f"no X-Spam-Status in SpamAssassin's output: {result.stderr!r}"
        return float(status.group(1)), " ".join(status.group(2).split())

    with ThreadPoolExecutor(max_workers=2) as pool:
        return dict(zip(messages, pool.map(report, messages.values()), strict=True))


def test_the_spam_check_catches_spam(spam_reports):
    score, rules = spam_reports["control", "spammy"]
    assert score >= SPAM_LIMIT, f"an obvious spam scored {score} ({rules}): are the rules loaded?"


@pytest.mark.parametrize(("template", "sample"), CASES, ids=IDS)
def test_spamassassin_scores_below_one(spam_reports, template, sample):
    score, rules = spam_reports[template, sample]
    assert score < SPAM_LIMIT, f"{template} ({sample}) scored {score}: {rules}"
