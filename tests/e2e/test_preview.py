"""``handoff preview``: every step of one deal's 90 days, with each email, for a person to read
before a client does; rendered in headless Chromium to prove it is a real page."""

from __future__ import annotations

from datetime import timedelta

from handoff.cli import main
from tests.browser import Chromium, is_blank, require_chromium
from tests.builders import make_deal, plan_steps


def test_a_deal_preview_lists_every_step_with_status_and_renders_in_chromium(
    state, settings, full_playbook, smtp_sink, tmp_path, capsys
):
    from handoff.config import load_settings

    settings = load_settings()
    deal = make_deal()
    plan_steps(state, deal, "welcome_email")
    from functools import partial

    from handoff.mail import smtp_transport
    from handoff.pipeline import RunContext, send_emails

    run = RunContext("run-1", deal.won_at + timedelta(hours=1), "dag/run-1/send_emails")
    transport = partial(smtp_transport, smtp_sink.host, smtp_sink.port, timeout=10)
    assert send_emails(state, settings, transport, run, source="salesforce")["emails_sent"] == 1

    out = tmp_path / "preview"
    assert main(["preview", "--deal", deal.deal_id, "--out", str(out)]) == 0
    assert str(out / "index.html") in capsys.readouterr().out
    index = (out / "index.html").read_text()
    email_steps = [s.id for s in settings.plan.steps if s.kind == "email"]
    task_steps = [s.id for s in settings.plan.steps if s.kind == "task"]
    for step_id in email_steps[:1] + task_steps:
        assert step_id in index
    assert "expansion_welcome_email" not in index  # not this client's segment
    assert ">sent<" in index and ">planned<" in index
    assert "only for enterprise deals" not in index  # 120,000 is an enterprise deal
    # Every email of this client's sequence is written, as HTML and as text.
    for step_id in [s for s in email_steps if s != "expansion_welcome_email"]:
        assert (out / f"{step_id}.html").is_file(), step_id
        assert "Subject: " in (out / f"{step_id}.txt").read_text()
    # The sent welcome is shown as it was sent.
    sent = smtp_sink.messages[0].message.get_body(("plain",)).get_content()
    assert sent.strip() in (out / "welcome_email.txt").read_text()

    require_chromium()
    with Chromium() as browser:
        for page in (out / "index.html", out / "weekly_checkin_day_7.html"):
            png = browser.screenshot(page, 900, 900, tmp_path / f"{page.stem}.png")
            assert not is_blank(png), page
            assert browser.layout(page, 900, 900).console_errors == (), page


def test_without_a_deal_it_previews_a_sample_client(settings, full_playbook, tmp_path, capsys):
    out = tmp_path / "sample"
    assert main(["preview", "--out", str(out)]) == 0
    assert (out / "index.html").is_file() and (out / "welcome_email.html").is_file()
    assert "Analytical Engines Ltd" in (out / "index.html").read_text()
