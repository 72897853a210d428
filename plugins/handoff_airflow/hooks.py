"""Hooks that turn Airflow connections into ``handoff`` clients; no business rule lives here."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import cached_property
from typing import TYPE_CHECKING

from airflow.providers.salesforce.hooks.salesforce import SalesforceHook
from airflow.providers.smtp.hooks.smtp import SmtpHook

if TYPE_CHECKING:
    from simple_salesforce import Salesforce

    from handoff.config import Settings
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

        return SalesforceCRM(
            self.conn,
            csm_field=settings.salesforce.csm_field,
            handoff_fields=settings.salesforce.handoff_fields.model_dump(),
        )


class HandoffSmtpHook(SmtpHook):
    """The provider's SMTP hook, lending its connected client for one batch of messages."""

    hook_name = "SMTP (Handoff Autopilot)"

    @contextmanager
    def transport(self) -> Iterator[MailTransport]:
        """One SMTP connection, logged in as the connection says, for a whole batch."""
        from handoff.mail import SmtplibTransport

        with self as hook:
            self.log.info("SMTP connection open to %s:%s", hook.host, hook.port)
            yield SmtplibTransport(hook._smtp_client)
