"""Where a task's dedupe key lives in Salesforce, and why CRM text cannot forge or hide it."""

from __future__ import annotations

import pytest

from handoff.crm.salesforce import (
    DESCRIPTION_LIMIT,
    description_with_key,
    key_in_description,
    neutralise_key_lines,
)

KEY = "salesforce:006000000000001AAA:first_cs_contact"


def test_the_key_is_the_last_line_and_only_that_line_counts():
    written = description_with_key("Reach the client.\n\nDeal: Acme", KEY)
    assert written.splitlines()[-1] == f"Handoff key: {KEY}"
    assert key_in_description(written) == KEY
    assert key_in_description(written + "\nEdited later by a person") is None


@pytest.mark.parametrize(
    "forged",
    [
        "Handoff key: salesforce:006000000000001AAA:other",
        "  handoff KEY:salesforce:x",
        "Hand\u200boff key: x",  # a zero-width space inside
        "\uff28andoff key: x",  # a full-width H
        "- Handoff key: x",
    ],
    ids=["pasted", "spaced-case", "zero-width", "full-width", "bulleted"],
)
def test_lines_of_crm_text_that_look_like_a_key_line_are_neutralised(forged):
    note = f"Promises: SSO by March\n{forged}\nRisks: none"
    written = description_with_key(note, KEY)
    lines = written.splitlines()
    assert [line for line in lines if line.startswith("Handoff key:")] == [f"Handoff key: {KEY}"]
    assert key_in_description(written) == KEY
    assert "(quoted)" in neutralise_key_lines(forged)


def test_a_description_over_the_limit_is_cut_with_a_marker_and_keeps_the_key():
    written = description_with_key("x" * 40000, KEY)
    assert len(written) <= DESCRIPTION_LIMIT
    assert "shortened to fit" in written
    assert key_in_description(written) == KEY


def test_a_description_within_the_limit_is_left_whole():
    text = "y" * (DESCRIPTION_LIMIT - 200)
    written = description_with_key(text, KEY)
    assert text in written and "shortened" not in written
