"""One-click unsubscribe (RFC 8058) on promotional steps only, served over real HTTP, taking
effect at once for the contact's next promotional step and written back to the CRM."""

from __future__ import annotations

import re
import socket
import threading
from dataclasses import replace
from datetime import timedelta
from functools import partial
from urllib.parse import parse_qs, urlparse

import httpx
import pytest
import uvicorn

from handoff.mail import smtp_transport
from handoff.models import ActionStatus
from handoff.pipeline import RunContext, send_emails, write_opt_outs
from handoff.state import StateStore
from handoff.unsubscribe import create_app
from tests.builders import CONTACT, make_deal, plan_steps

SECRET = "a-secret-from-the-airflow-connection"


@pytest.fixture
def unsubscribe_server(settings):
    """The plugin's FastAPI app under uvicorn on a free port, as the API server mounts it."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    app = create_app(lambda: StateStore(settings.state.url), lambda: "Handoff Demo Inc.")
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        threading.Event().wait(0.02)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(5)


def send(state, settings, sink, deal, **kwargs):
    moment = deal.won_at + timedelta(days=91)
    run = RunContext(run_id="run-1", window_end=moment, worker="dag/run-1/send_emails")
    transport = partial(smtp_transport, sink.host, sink.port, timeout=10)
    return send_emails(state, settings, transport, run, source="salesforce", **kwargs)


def test_the_referral_ask_carries_a_keyed_one_click_link_that_works_over_http(
    state, settings, smtp_sink, full_playbook, unsubscribe_server
):
    from handoff.config import load_settings

    settings = load_settings()
    first = make_deal(deal_id="006REFERRAL0000001")
    plan_steps(state, first, "referral_ask_email")
    assert send(state, settings, smtp_sink, first, unsubscribe_secret=SECRET)["emails_sent"] == 1
    [mail] = smtp_sink.messages
    header = mail.message["List-Unsubscribe"]
    assert mail.message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    url = re.search(r"<(https://[^>]+)>", header).group(1)
    assert url.startswith("https://handoff-demo.example/handoff/unsubscribe?t=")
    token = parse_qs(urlparse(url).query)["t"][0]
    assert len(token) >= 32 and first.deal_id not in header and CONTACT.id not in header
    # The link in the footer is the same keyed link.
    html = mail.message.get_body(("html",)).get_content()
    assert f"t={token}" in html

    with httpx.Client(base_url=unsubscribe_server) as http:
        page = http.get("/unsubscribe", params={"t": token})
        assert page.status_code == 200 and "<form" in page.text
        assert state.opt_out_rows() == []  # a GET (a link scanner) changes nothing
        assert http.get("/unsubscribe", params={"t": "guessed" * 5}).status_code == 404
        answer = http.post(
            "/unsubscribe",
            params={"t": token},
            content="List-Unsubscribe=One-Click",
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
        assert answer.status_code == 200 and "unsubscribed" in answer.text
        again = http.post("/unsubscribe", params={"t": token})  # idempotent
        assert again.status_code == 200
    [opt_out] = state.opt_out_rows()
    assert (opt_out["contact_id"], opt_out["crm_written_at"]) == (CONTACT.id, None)

    # At once: the same contact's next promotional email is not sent...
    second = make_deal(deal_id="006REFERRAL0000002")
    plan_steps(state, second, "referral_ask_email")
    counts = send(state, settings, smtp_sink, second, unsubscribe_secret=SECRET)
    rows = {r["deal_id"]: r for r in state.actions(step="referral_ask_email")}
    assert rows[second.deal_id]["status"] == ActionStatus.SKIPPED
    assert "unsubscribed" in rows[second.deal_id]["reason"]
    assert counts["emails_skipped"] == 1


def test_the_token_depends_on_the_secret(state, settings, smtp_sink, full_playbook):
    from handoff.config import load_settings

    settings = load_settings()
    tokens = []
    for n, secret in enumerate(("one secret", "another secret")):
        deal = make_deal(
            deal_id=f"006SECRET00000000{n}",
            primary_contact=replace(CONTACT, id=f"003SECRET{n}"),
        )
        plan_steps(state, deal, "referral_ask_email")
        send(state, settings, smtp_sink, deal, unsubscribe_secret=secret)
        header = smtp_sink.messages[-1].message["List-Unsubscribe"]
        tokens.append(re.search(r"t=([A-Za-z0-9_-]+)", header).group(1))
    from handoff.mail import unsubscribe_token

    assert tokens[0] == unsubscribe_token(
        "one secret", "salesforce:006SECRET000000000:referral_ask_email"
    )
    assert tokens[0] != unsubscribe_token(
        "another secret", "salesforce:006SECRET000000000:referral_ask_email"
    )


def test_the_next_run_writes_the_opt_out_to_the_crm(state, sandbox, crm):
    from handoff.sandbox.seed import seed_org

    seed_org(sandbox.store, seed=3, deals=5, today=make_deal().won_at.date())
    contact_id = crm.client.query("SELECT Id FROM Contact LIMIT 1")["records"][0]["Id"]
    state.remember_token("tok", "salesforce", "006X", contact_id, "x@client.example", "referral")
    state.opt_out("tok", make_deal().won_at)
    assert write_opt_outs(crm, state) == 1
    record = crm.client.query(f"SELECT HasOptedOutOfEmail FROM Contact WHERE Id = '{contact_id}'")
    assert record["records"][0]["HasOptedOutOfEmail"] is True
    assert state.opt_out_rows()[0]["crm_written_at"] is not None
    assert write_opt_outs(crm, state) == 0  # written once


def test_airflows_api_server_serves_the_endpoint_from_the_plugin(state, settings):
    """The plugin is found in the plugins folder and mounted by Airflow's own API server."""
    from airflow.api_fastapi.app import create_app as create_api_server
    from airflow.plugins_manager import get_fastapi_plugins
    from fastapi.testclient import TestClient

    assert "/handoff" in [app["url_prefix"] for app in get_fastapi_plugins()[0]]
    state.remember_token("t" * 40, "salesforce", "006X", "003PLUGIN", "p@client.example", "ask")
    with TestClient(create_api_server(apps="core")) as http:
        assert http.get("/handoff/unsubscribe", params={"t": "t" * 40}).status_code == 200
        assert http.post("/handoff/unsubscribe", params={"t": "t" * 40}).status_code == 200
    assert [row["contact_id"] for row in state.opt_out_rows()] == ["003PLUGIN"]
