"""The benchmark's call counts: batching is a property of the code, checked without timing."""

from __future__ import annotations

import math
from datetime import date

from handoff.benchmark import format_report, run_benchmark


def test_api_calls_scale_with_batches_not_with_deals():
    result = run_benchmark(1100, today=date(2026, 11, 23))
    first, second = result["runs"]
    wins = first["detect"]["new_deals"]
    assert wins > 200, "enough recent wins to need two batches of contacts"
    # One page of opportunities; the primary contacts of the deals with a step due are read
    # right before dispatch, 200 deals per IN list.
    assert first["extract"]["api_calls"] == 1
    # (only wins still within their day-0 steps' lateness limits have a step due)
    refreshed = first["resolve"]["deals_refreshed"]
    assert 0 < refreshed <= wins
    # Contacts 200 deals a query, and one look-up of the executive who signs the welcome.
    assert first["resolve"]["api_calls"] == math.ceil(refreshed / 200) + 1
    # A store that never planned anything checks the CRM holds none of our tasks for the wins.
    assert first["detect"]["api_calls"] == math.ceil(wins / 200)
    written = first["write_tasks"]["tasks_created"] + first["write_tasks"]["tasks_failed"]
    # One describe of Task (the key field exists), then 200-record collections.
    assert first["write_tasks"]["api_calls"] == 1 + math.ceil(written / 200)
    assert result["sandbox_api_calls"] == first["total_api_calls"] + second["total_api_calls"]
    assert result["smtp_sessions"] == 1
    assert result["messages_received"] == first["send_emails"]["emails_sent"]
    # The next day finds nothing: one query, no writes, no mail.
    assert second["total_api_calls"] == 1
    assert second["send_emails"]["emails_sent"] == 0 and second["write_tasks"]["tasks_created"] == 0
    assert "total" in format_report(result)


def test_hubspot_calls_scale_with_batches_not_with_deals():
    """HubSpot's batches: 200-deal search pages, 100-record batch reads and task creates."""
    result = run_benchmark(1100, today=date(2026, 11, 23), source="hubspot")
    first, second = result["runs"]
    read = first["extract"]["deals_read"]
    written = first["write_tasks"]["tasks_created"] + first["write_tasks"]["tasks_failed"]
    refreshed = first["resolve"]["deals_refreshed"]
    assert written > 0 and refreshed > 0
    # Per 200-deal search page: the page, the deals' companies (one association read, then
    # 100-record batch reads); once per run: pipelines, owners (live, archived), archived deals.
    assert first["extract"]["api_calls"] <= 4 + 4 * math.ceil(read / 200)
    # Contacts: associations (1,000 a call) and 100-record reads; the executive is a cached owner.
    assert first["resolve"]["api_calls"] <= 3 + math.ceil(refreshed / 1000) + math.ceil(
        refreshed / 100
    )
    # One check of the task key property, then 100-task batches.
    assert first["write_tasks"]["api_calls"] == 1 + math.ceil(written / 100)
    assert first["total_api_calls"] < (read + refreshed + written) / 10
    # The next day finds nothing: a few reads, no writes, no mail.
    assert second["total_api_calls"] <= 4
    assert second["send_emails"]["emails_sent"] == 0 and second["write_tasks"]["tasks_created"] == 0
