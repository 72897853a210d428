"""The demo org's problem clients through the real DAG, with business hours on.

The sandbox is seeded exactly as ``make demo`` seeds it, on a Friday: its edge deals were won the
day before. Hourly runs at chosen hours (the hour before and the hour at each client's window)
show an existing customer, an inactive CSM, markup and injected names, a Chinese and a German
contact, and clients in Tokyo and Los Angeles getting their day-0 welcome inside their own
business hours, once.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from handoff.cli import connection_env, load_dag
from handoff.sandbox.seed import seed_org
from handoff.state import StateStore

ROOT = Path(__file__).resolve().parents[2]
FRIDAY = date(2026, 11, 20)


@pytest.fixture
def demo(sandbox, smtp_sink, tmp_path, monkeypatch):
    """The demo's org in the sandbox and the tests' settings with business hours on."""
    config = (ROOT / "tests" / "config" / "handoff.toml").read_text()
    config = config.replace("business_hours_only = false", "business_hours_only = true")
    (tmp_path / "handoff.toml").write_text(config)
    monkeypatch.setenv("HANDOFF_CONFIG", str(tmp_path / "handoff.toml"))
    for name, value in connection_env(
        sandbox.url, sandbox.token, smtp_sink.host, smtp_sink.port
    ).items():
        monkeypatch.setenv(name, value)
    url = f"sqlite:///{tmp_path / 'state.db'}"
    monkeypatch.setenv("HANDOFF_STATE_URL", url)
    monkeypatch.setenv("HANDOFF_RUN_DIR", str(tmp_path / "runs"))
    store = StateStore(url)
    store.migrate()
    seed_org(sandbox.store, seed=7, deals=60, today=FRIDAY)
    deals = {row["Name"]: row["Id"] for row in sandbox.store.rows("Opportunity")}
    yield load_dag("salesforce"), store, deals
    store.dispose()


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def mail_to(smtp_sink, address: str):
    return [m for m in smtp_sink.messages if m.message["To"].addresses[0].addr_spec == address]


def text_of(mail) -> str:
    return mail.message.get_body(("plain",)).get_content()


def row(store, deal_id: str, step: str) -> dict:
    [found] = store.actions(deal_id=deal_id, step=step)
    return found


def test_the_demo_clients_are_written_to_the_right_way_at_the_right_hour(demo, smtp_sink):
    dag, store, deals = demo
    # Friday 15:00 UTC: 10:00 in New York, 16:00 in Berlin, 07:00 in Los Angeles, 23:00 in
    # Beijing, midnight in Tokyo.
    dag.test(logical_date=at("2026-11-20T15:00:00"))

    # An existing customer gets the CSM's expansion note, never the new-customer welcome.
    initrode = deals["Initrode — existing customer upgrade"]
    [note] = mail_to(smtp_sink, "peter.gibbons@initrode.example")
    assert row(store, initrode, "expansion_welcome_email")["status"] == "done"
    assert not store.actions(deal_id=initrode, step="welcome_email")
    assert "first 90 days" not in text_of(note) + str(note.message["Subject"])

    # An inactive CSM is never introduced: the team is.
    [soylent] = mail_to(smtp_sink, "sol.roth@soylent.example")
    assert "Victor Johnson" not in text_of(soylent)
    assert "customer success team" in text_of(soylent)

    # Markup is stripped from names; injected header text holds the client's mail.
    [stark] = mail_to(smtp_sink, "zoe.obrien@stark-sons.example")
    assert text_of(stark).startswith("Hi Zoë,") and "script" not in text_of(stark)
    hooli = deals["Hooli — header injection"]
    assert row(store, hooli, "welcome_email")["status"] == "held"
    assert not [m for m in smtp_sink.messages if "hooli" in m.message["To"].addresses[0].domain]

    # The salutation field wins.
    [weber] = mail_to(smtp_sink, "katrin.weber@weber-maschinenbau.example")
    assert text_of(weber).startswith("Dear Frau Dr. Weber,")

    # Los Angeles, Beijing and Tokyo wait for their own business hours.
    waiting = {
        "Sunset Pictures — client in Los Angeles": ("jessica.miller@sunset-pictures.example",),
        "北京数据科技有限公司 — Unicode names": ("li.wei@beijing-data.example",),
        "Tanaka Robotics — client in Tokyo": ("haruto.tanaka@tanaka-robotics.example",),
    }
    for name, (address,) in waiting.items():
        assert not mail_to(smtp_sink, address), name
        assert row(store, deals[name], "welcome_email")["status"] == "pending"

    sent_at = {}
    for hour in (
        "2026-11-20T16:00:00",  # 08:00 in Los Angeles: not yet
        "2026-11-20T17:00:00",  # 09:00 in Los Angeles
        "2026-11-23T00:00:00",  # Monday 08:00 in Beijing: not yet
        "2026-11-23T01:00:00",  # Monday 09:00 in Beijing
        "2026-11-23T23:00:00",  # Tuesday 08:00 in Tokyo (Monday was a holiday there)
        "2026-11-24T00:00:00",  # Tuesday 09:00 in Tokyo
    ):
        dag.test(logical_date=at(hour))
        for name, (address,) in waiting.items():
            if name not in sent_at and mail_to(smtp_sink, address):
                sent_at[name] = at(hour)

    zones = {
        "Sunset Pictures — client in Los Angeles": "America/Los_Angeles",
        "北京数据科技有限公司 — Unicode names": "Asia/Shanghai",
        "Tanaka Robotics — client in Tokyo": "Asia/Tokyo",
    }
    for name, zone in zones.items():
        local = sent_at[name].astimezone(ZoneInfo(zone))
        assert (local.hour, local.weekday() < 5) == (9, True), (name, local)
    assert sent_at["Tanaka Robotics — client in Tokyo"] == at("2026-11-24T00:00:00")

    [chinese] = mail_to(smtp_sink, "li.wei@beijing-data.example")
    assert text_of(chinese).startswith("Dear 李伟,")
    assert chinese.message["To"].addresses[0].display_name == "李伟"
    [tanaka] = mail_to(smtp_sink, "haruto.tanaka@tanaka-robotics.example")
    assert text_of(tanaka).startswith("田中様")
    # Seven runs, and no client got any email twice.
    sent = [
        (m.message["To"].addresses[0].addr_spec, m.message["Subject"]) for m in smtp_sink.messages
    ]
    assert len(sent) == len(set(sent))
    ids = [m.message["Message-ID"] for m in smtp_sink.messages]
    assert len(ids) == len(set(ids))
