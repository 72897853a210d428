"""The playbook file: validated once, every error naming the file, the step and the value."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from handoff.errors import ConfigError
from handoff.playbook import load_playbook, parse_duration

ROOT = Path(__file__).resolve().parents[2]
TEMPLATES = ROOT / "templates" / "emails"
FULL = ROOT / "tests" / "config" / "playbook_90_days.toml"


def write(tmp_path, text: str) -> Path:
    path = tmp_path / "playbook.toml"
    path.write_text(text, encoding="utf-8")
    return path


def edited(tmp_path, old: str, new: str) -> Path:
    text = FULL.read_text(encoding="utf-8")
    assert old in text, old
    return write(tmp_path, text.replace(old, new, 1))


def test_the_full_playbook_is_the_framework_table():
    playbook = load_playbook(FULL, TEMPLATES)
    by_id = {step.id: step for step in playbook.steps}
    checkins = [s for s in playbook.steps if s.id.startswith("weekly_checkin_day_")]
    assert [s.offset.days for s in checkins] == [7, 14, 21, 28, 35, 42, 49, 56]
    assert by_id["first_cs_contact"].due == timedelta(hours=4)
    assert by_id["leader_personal_note"].owner == "executive"
    assert by_id["leader_personal_note"].due == timedelta(hours=48)
    assert by_id["executive_sponsor_checkin"].conditions.enterprise is True
    assert by_id["internal_handoff_meeting"].conditions.amount_at_least == 50000
    assert by_id["referral_ask_email"].conditions.after == "formal_review_email"
    assert [(step.timeline, d.days) for step, d in playbook.timeline_milestones()] == [
        ("Kickoff call", 5),
        ("First visible win", 14),
        ("30-day success review", 30),
        ("90-day review", 90),
    ]


def test_the_personal_note_from_a_leader_is_never_an_automated_email():
    for path in (FULL, ROOT / "include" / "config" / "playbook.toml"):
        playbook = load_playbook(path, TEMPLATES)
        notes = [s for s in playbook.steps if "personal_note" in s.id or "leader" in s.id]
        assert notes and all(s.kind == "task" and s.owner == "executive" for s in notes)
        assert not [s for s in playbook.steps if s.kind == "email" and s.to != "client"]


@pytest.mark.parametrize(
    ("old", "new", "words"),
    [
        (
            'id = "timeline_email"\nkind = "email"\nday = 1',
            'id = "timeline_email"\nkind = "email"\nday = 1\ncolour = "blue"',
            ["step 'timeline_email'", "colour", "unknown key"],
        ),
        (
            'template = "timeline"',
            'template = "no_such_template"',
            ["step 'timeline_email'", "'no_such_template'", "subject.txt.j2"],
        ),
        (
            'id = "congratulations_call"\nkind = "task"\nday = 1',
            'id = "congratulations_call"\nkind = "task"\nday = -1',
            ["step 'congratulations_call'", "day", "-1"],
        ),
        (
            'id = "congratulations_call"\nkind = "task"\nday = 1',
            'id = "congratulations_call"\nkind = "task"\nday = 400',
            ["step 'congratulations_call'", "day 400", "horizon"],
        ),
        (
            'owner = "ae"\nsubject = "Congratulations',
            'owner = "vp_sales"\nsubject = "Congratulations',
            ["step 'congratulations_call'", "owner", "'vp_sales'"],
        ),
        (
            'id = "kickoff_prep_email"',
            'id = "timeline_email"',
            ["step 'timeline_email'", "used twice"],
        ),
        (
            "conditions = { amount_at_least = 50000 }",
            "conditions = { revenue_at_least = 50000 }",
            ["step 'internal_handoff_meeting'", "revenue_at_least", "unknown key"],
        ),
        (
            'conditions = { after = "formal_review_email" }',
            'conditions = { after = "the_review" }',
            ["step 'referral_ask_email'", "'the_review'"],
        ),
        ('due = "4h"', 'due = "soon"', ["step 'first_cs_contact'", "due", "'soon'"]),
        ('late_after = "7d"', 'late_after = "-7d"', ["step 'referral_ask_email'", "late_after"]),
        (
            'id = "timeline_email"\nkind = "email"',
            'id = "timeline_email"\nkind = "letter"',
            ["step 'timeline_email'", "kind", "'letter'"],
        ),
    ],
    ids=[
        "wrong-key",
        "unknown-template",
        "negative-offset",
        "impossible-offset",
        "unknown-role",
        "duplicate-id",
        "condition-on-unknown-field",
        "after-unknown-step",
        "bad-duration",
        "negative-lateness",
        "unknown-kind",
    ],
)
def test_an_invalid_playbook_is_a_clear_error(tmp_path, old, new, words):
    path = edited(tmp_path, old, new)
    with pytest.raises(ConfigError) as error:
        load_playbook(path, TEMPLATES)
    message = str(error.value)
    assert str(path) in message
    for word in words:
        assert word in message, message


def test_a_task_without_an_owner_and_an_email_to_someone_else_are_refused(tmp_path):
    path = edited(
        tmp_path, 'to = "client"\ntemplate = "timeline"', 'to = "csm"\ntemplate = "timeline"'
    )
    with pytest.raises(ConfigError, match="an email step needs to = 'client'"):
        load_playbook(path, TEMPLATES)


def test_settings_load_the_playbook_and_refuse_a_broken_one(tmp_path, monkeypatch):
    from handoff.config import load_settings

    monkeypatch.setenv("HANDOFF_PLAYBOOK", str(edited(tmp_path, "day = 87", 'day = "soon"')))
    with pytest.raises(ConfigError, match="playbook .* is invalid: step 'formal_review'"):
        load_settings()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("4h", timedelta(hours=4)),
        ("2d", timedelta(days=2)),
        ("1d12h", timedelta(hours=36)),
        ("30m", timedelta(minutes=30)),
        (3, timedelta(days=3)),
    ],
)
def test_durations_read_the_way_people_write_them(text, expected):
    assert parse_duration(text) == expected
