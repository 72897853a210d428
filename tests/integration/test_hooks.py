"""The Airflow hooks turn connections into the package's clients, over real HTTP and SMTP."""

from __future__ import annotations

import pytest

from handoff.cli import connection_env
from handoff_airflow.hooks import HandoffSalesforceHook, HandoffSmtpHook, HubSpotHook


@pytest.fixture
def connections(sandbox, smtp_sink, monkeypatch):
    for name, value in connection_env(
        sandbox.url, sandbox.token, smtp_sink.host, smtp_sink.port
    ).items():
        monkeypatch.setenv(name, value)


def test_salesforce_connection_test_passes_through_the_sandbox(connections):
    ok, message = HandoffSalesforceHook().test_connection()
    assert ok, message


def test_a_wrong_token_fails_the_connection_test_without_echoing_it(
    sandbox, smtp_sink, monkeypatch
):
    env = connection_env(sandbox.url, "wrong-token-123", smtp_sink.host, smtp_sink.port)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    ok, message = HandoffSalesforceHook().test_connection()
    assert not ok
    assert "INVALID_SESSION_ID" in message
    assert "wrong-token-123" not in message


def test_the_hook_session_carries_the_transport_policy(connections, settings):
    crm = HandoffSalesforceHook().get_crm(settings)
    assert crm.client.session.requests_made == 0
    crm.primary_contacts(["006000000000001AAA"])
    assert crm.api_calls == 1


def test_smtp_hook_lends_one_connection_for_a_batch(connections, smtp_sink):
    from email.message import EmailMessage

    attempts = []
    with HandoffSmtpHook().transport() as transport:
        for n in range(3):
            message = EmailMessage()
            message["From"] = "a@seller.example"
            message["To"] = f"c{n}@client.example"
            message["Subject"] = "hi"
            message.set_content("hello")
            refused = transport.send(
                message.as_bytes(),
                sender="a@seller.example",
                recipients=[f"c{n}@client.example"],
                smtputf8=False,
                before_data=lambda n=n: attempts.append(n) or True,
            )
            assert refused == {}
    assert attempts == [0, 1, 2], "each message was marked attempted before its content went"
    assert smtp_sink.sessions == 1 and len(smtp_sink.messages) == 3
    assert [m.rcpt_tos for m in smtp_sink.messages] == [[f"c{n}@client.example"] for n in range(3)]


def test_an_oauth2_smtp_connection_is_refused_with_a_clear_message(sandbox, smtp_sink, monkeypatch):
    import json

    from handoff.errors import ConfigError

    env = connection_env(sandbox.url, sandbox.token, smtp_sink.host, smtp_sink.port)
    smtp = json.loads(env["AIRFLOW_CONN_SMTP_DEFAULT"])
    smtp["extra"]["auth_type"] = "oauth2"
    monkeypatch.setenv("AIRFLOW_CONN_SMTP_DEFAULT", json.dumps(smtp))
    with pytest.raises(ConfigError, match="OAuth2"), HandoffSmtpHook().transport():
        pass
    assert smtp_sink.sessions == 0


def test_hubspot_connection_test_passes_through_the_sandbox(connections, sandbox):
    ok, message = HubSpotHook().test_connection()
    assert ok, message
    assert sandbox.hubspot_stats()["api_calls"] == 1


def test_a_wrong_hubspot_token_fails_the_connection_test_without_echoing_it(
    sandbox, smtp_sink, monkeypatch
):
    env = connection_env(sandbox.url, "wrong-token-456", smtp_sink.host, smtp_sink.port)
    monkeypatch.setenv("AIRFLOW_CONN_HUBSPOT_DEFAULT", env["AIRFLOW_CONN_HUBSPOT_DEFAULT"])
    ok, message = HubSpotHook().test_connection()
    assert not ok
    assert "401" in message and "wrong-token-456" not in message


def test_the_hubspot_connection_form_shows_in_airflows_ui():
    """Airflow's own UI service lists the connection type with its relabelled fields."""
    from airflow.api_fastapi.core_api.services.ui.connections import HookMetaService

    [meta] = [m for m in HookMetaService.hook_meta_data() if m.connection_type == "hubspot"]
    assert meta.hook_name == "HubSpot"
    assert meta.standard_fields.host.title == "API base URL"
    assert meta.standard_fields.password.title == "Private app access token"
    assert meta.standard_fields.login.hidden
