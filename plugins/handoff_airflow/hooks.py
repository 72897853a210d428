"""Hooks that turn Airflow connections into ``handoff`` clients; no business rule lives here."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import cached_property
from typing import TYPE_CHECKING

from airflow.providers.salesforce.hooks.salesforce import SalesforceHook
from airflow.providers.smtp.hooks.smtp import SmtpHook
from airflow.sdk import BaseHook

if TYPE_CHECKING:
    import hubspot
    from simple_salesforce import Salesforce

    from handoff.config import Settings
    from handoff.crm.hubspot import HubSpotCRM
    from handoff.crm.salesforce import SalesforceCRM
    from handoff.mail import MailTransport


class HandoffSalesforceHook(SalesforceHook):
    """The provider's Salesforce hook with the project's transport policy on its session.

    Beside the provider's authentication options, a connection with an ``instance_url`` extra, a
    password and no login is a direct session: the password is the access token. That is how
    the built-in sandbox (and a token from an external OAuth flow) is configured.
    """

    hook_name = "Salesforce (Handoff Autopilot)"

    @cached_property
    def conn(self) -> Salesforce:
        from handoff.crm.http import build_session

        connection = self.get_connection(self.conn_id)
        extras = connection.extra_dejson
        instance_url = self._get_field(extras, "instance_url")
        self.session = self.session or build_session(instance_url)
        if self.session_id is None and not connection.login and connection.password:
            self.session_id = connection.password
        self.log.info("Connecting to Salesforce instance %s", instance_url or "(login)")
        return super().conn

    def get_crm(self, settings: Settings) -> SalesforceCRM:
        from handoff.crm.salesforce import SalesforceCRM

        return SalesforceCRM.from_settings(self.conn, settings)


class HubSpotHook(BaseHook):
    """A HubSpot portal from an Airflow connection, shaped like the Salesforce provider's hook.

    Connection type ``hubspot``: the private app's access token in the password; the API base
    URL (scheme, host and port) in the host, empty for HubSpot's own, so a sandbox or a staging
    server can stand in. The client is built once per hook; nothing is read before it is asked.
    The connection form (which fields show, their labels) is declared with the connection type
    in ``handoff/provider_info.py``, where Airflow reads it without importing this class.
    """

    conn_name_attr = "hubspot_conn_id"
    default_conn_name = "hubspot_default"
    conn_type = "hubspot"
    hook_name = "HubSpot"

    def __init__(self, hubspot_conn_id: str = default_conn_name, timeout: float = 30) -> None:
        super().__init__()
        if not hubspot_conn_id:
            raise ValueError("hubspot_conn_id must name an Airflow connection")
        self.hubspot_conn_id = hubspot_conn_id
        self.timeout = timeout

    @cached_property
    def conn(self) -> hubspot.Client:
        import hubspot

        from handoff.errors import ConfigError

        connection = self.get_connection(self.hubspot_conn_id)
        if not connection.password:
            raise ConfigError(
                f"the HubSpot connection {self.hubspot_conn_id} has no access token "
                "(the password field)"
            )
        options = {"access_token": connection.password}
        host = (connection.host or "").strip()
        if host:
            if "://" not in host:
                host = f"https://{host}"
            if connection.port and host.count(":") < 2:
                host = f"{host}:{connection.port}"
            options["host"] = host.rstrip("/")
        self.log.info("Connecting to HubSpot at %s", options.get("host", "api.hubapi.com"))
        return hubspot.Client.create(**options)

    def get_conn(self) -> hubspot.Client:
        return self.conn

    def get_crm(self, settings: Settings) -> HubSpotCRM:
        from handoff.crm.hubspot import HubSpotCRM

        return HubSpotCRM.from_settings(self.conn, settings)

    def test_connection(self) -> tuple[bool, str]:
        """One cheap read (an owner) proves the address and the token; the token never shows."""
        try:
            self.conn.crm.owners.owners_api.get_page(limit=1, _request_timeout=self.timeout)
        except Exception as exc:
            status = getattr(exc, "status", None)
            reason = getattr(exc, "reason", None) or type(exc).__name__
            return False, f"HubSpot did not accept the connection: {status or ''} {reason}".strip()
        return True, "Connection successfully tested"


class HandoffSmtpHook(SmtpHook):
    """The provider's SMTP connection settings, opened as the package's phase-aware transport.

    The provider's own client is not used: its ``send_email_smtp`` builds the message itself and,
    like ``smtplib.sendmail``, cannot tell a connection lost before the content from one lost
    after it. The connection's public settings (host, port, SSL, STARTTLS, login, timeout,
    certificate checking) are honoured; OAuth2 sending is not supported.
    """

    hook_name = "SMTP (Handoff Autopilot)"

    @contextmanager
    def transport(self) -> Iterator[MailTransport]:
        """One SMTP connection, logged in as the connection says, for a whole batch."""
        from handoff.errors import ConfigError
        from handoff.mail import smtp_transport

        self.smtp_connection = self.get_connection(self.smtp_conn_id)
        if self.auth_type == "oauth2":
            raise ConfigError(
                f"SMTP connection {self.smtp_conn_id} asks for OAuth2, which Handoff Autopilot "
                "does not support yet: use a login and password (an app password) instead"
            )
        self.log.info("Opening an SMTP connection to %s:%s", self.host, self.port)
        with smtp_transport(
            self.host,
            self.port,
            timeout=self.timeout,
            use_ssl=self.use_ssl,
            starttls=self.smtp_starttls and not self.use_ssl,
            user=self.smtp_user or None,
            password=self.smtp_password or None,
            verify_certificate=self.ssl_context != "none",
        ) as transport:
            yield transport


UNSUBSCRIBE_CONN_ID = "handoff_unsubscribe"


def unsubscribe_secret() -> str | None:
    """The key of promotional emails' unsubscribe tokens: the password of the
    ``handoff_unsubscribe`` connection (None when it is not set up: the installation's own
    random id keys them)."""
    from airflow.sdk import BaseHook
    from airflow.sdk.exceptions import AirflowNotFoundException

    try:
        return BaseHook.get_connection(UNSUBSCRIBE_CONN_ID).password or None
    except AirflowNotFoundException:
        return None
