"""The configuration: one documented way to resolve paths, and values that cannot blow up later."""

from __future__ import annotations

import shutil

import pytest

from handoff.config import ConfigError, load_settings, project_root
from tests.conftest import ROOT, TEST_CONFIG


def test_relative_paths_resolve_against_the_project_root_wherever_the_file_is(
    tmp_path, monkeypatch
):
    monkeypatch.delenv("HANDOFF_HOME")  # the checkout's own root, as on a developer's machine
    here = load_settings(TEST_CONFIG)
    moved = tmp_path / "a" / "b" / "c" / "handoff.toml"
    moved.parent.mkdir(parents=True)
    shutil.copy(TEST_CONFIG, moved)
    there = load_settings(moved)
    assert project_root() == ROOT
    assert there.state.url == here.state.url == f"sqlite:///{ROOT}/var/test-state-never-used.db"
    assert there.output.templates_dir == here.output.templates_dir == ROOT / "templates/emails"


def test_handoff_home_moves_the_root(tmp_path, monkeypatch):
    monkeypatch.setenv("HANDOFF_HOME", str(tmp_path))
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "config").symlink_to(TEST_CONFIG.parent)
    (tmp_path / "templates").symlink_to(TEST_CONFIG.parents[2] / "templates")
    settings = load_settings(TEST_CONFIG)
    assert settings.playbook.file == tmp_path / "tests/config/playbook.toml"
    assert settings.state.url == f"sqlite:///{tmp_path}/var/test-state-never-used.db"
    assert settings.output.run_dir == tmp_path / "var/test-runs-never-used"


@pytest.mark.parametrize(
    ("setting", "value", "words"),
    [
        ("lookback_days = 7", "lookback_days = 10000000000", "detection.lookback_days"),
        ("lookback_days = 7", "lookback_days = 0", "detection.lookback_days"),
        ("lease_seconds = 30", "lease_seconds = 0", "dispatch.lease_seconds"),
        (
            'task_key_field = "Handoff_Key__c"',
            'task_key_field = "Handoff Key"',
            "salesforce.task_key_field",
        ),
    ],
    ids=["huge-lookback", "zero-lookback", "zero-lease", "bad-field-name"],
)
def test_values_that_would_fail_at_run_time_are_refused_when_loaded(
    tmp_path, setting, value, words
):
    config = tmp_path / "handoff.toml"
    config.write_text(TEST_CONFIG.read_text().replace(setting, value))
    with pytest.raises(ConfigError) as raised:
        load_settings(config)
    message = str(raised.value)
    assert str(config) in message and words in message
    assert value.split(" = ")[1].strip('"') in message


def test_every_crm_names_every_field_the_planner_reports(settings):
    """Reasons name fields through the deal's own CRM map: both maps cover the same fields."""
    salesforce = settings.crm("salesforce").labels()
    hubspot = settings.crm("hubspot").labels()
    assert set(salesforce) == set(hubspot)
    assert salesforce["contact_email"] == "Contact.Email"
    assert hubspot["doc_goals"] == "deal.handoff_goals"
    with pytest.raises(ConfigError, match="no settings for the CRM 'pipedrive'"):
        settings.crm("pipedrive")


def test_dispatch_runs_one_shard_per_rows_per_shard_deals_due_within_the_cap():
    from handoff.pipeline import dispatch_shards

    settings = load_settings(TEST_CONFIG)  # shards = 3, rows_per_shard = 2
    assert dispatch_shards(0, settings) == [0], "a quiet run still settles what was in flight"
    assert dispatch_shards(2, settings) == [0]
    assert dispatch_shards(3, settings) == [0, 1]
    assert dispatch_shards(5, settings) == [0, 1, 2]
    assert dispatch_shards(5000, settings) == [0, 1, 2]
