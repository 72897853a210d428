"""Building client emails (MIME) and handing them to an SMTP connection.

The transport is injected: the Airflow plugin opens one SMTP connection per batch from the
``smtp_default`` connection; tests and the CLI open one with :func:`smtp_transport`.

Every failure of a send is classified by what it proves:

- refused or deferred before the message content was handed over (MAIL, RCPT, the ``DATA``
  command's own answer, a connection that failed earlier): nothing was sent, so a 4xx or a
  lost connection is retried as is (:class:`TransientMailError`) and a 5xx is final
  (:class:`PermanentMailError`);
- anything that breaks after the content was handed over without the server's final answer (a
  dropped connection, a timeout) is an *unknown outcome* (:class:`MailOutcomeUnknown`): the
  server may have queued the message, so it is never sent again automatically.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import smtplib
import ssl
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import datetime
from email import policy
from email.generator import BytesGenerator
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime
from html import escape
from io import BytesIO
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import quote

from handoff.emails import RenderedEmail
from handoff.errors import ConfigError

HEADER_POLICY = policy.default.clone(max_line_length=998)


class TransientMailError(RuntimeError):
    """The server or network failed for now; the message was not accepted. Try again later."""


class PermanentMailError(RuntimeError):
    """The server refused this message for good (5xx); retrying will not help."""


class MailOutcomeUnknown(RuntimeError):
    """The content was handed to the server and no final answer came: it may be delivered."""


class LostClaim(RuntimeError):
    """The outbox row was taken over by another worker before DATA: this one must not send."""


class MailTransport(Protocol):
    def send(
        self,
        content: bytes,
        *,
        sender: str,
        recipients: Sequence[str],
        smtputf8: bool,
        before_data: Callable[[], bool],
    ) -> dict[str, tuple[int, bytes]]:
        """Send one message's exact bytes; return the recipients the server refused.

        ``before_data`` runs once the server has accepted the envelope, right before the
        content is handed over; when it returns False the message is not sent
        (:class:`LostClaim`). Failures are raised as the classes above.
        """


class SmtplibTransport:
    """Sends over a connected ``smtplib.SMTP``, phase by phase so failures can be classified.

    ``smtplib.SMTP.sendmail`` raises the same exception for a connection lost before the
    envelope and after the content; the steps below (its public pieces: MAIL, RCPT, DATA) tell
    them apart.
    """

    def __init__(self, client: smtplib.SMTP) -> None:
        self.client = client

    def send(
        self,
        content: bytes,
        *,
        sender: str,
        recipients: Sequence[str],
        smtputf8: bool,
        before_data: Callable[[], bool],
    ) -> dict[str, tuple[int, bytes]]:
        client = self.client
        try:
            options = self._options(smtputf8)
            code, answer = client.mail(sender, options)
            if code != 250:
                self._reset()
                raise smtplib.SMTPSenderRefused(code, answer, sender)
            refused: dict[str, tuple[int, bytes]] = {}
            for recipient in recipients:
                code, answer = client.rcpt(recipient)
                if code not in (250, 251):
                    refused[recipient] = (code, answer)
            if len(refused) == len(recipients):
                self._reset()
                raise smtplib.SMTPRecipientsRefused(refused)
        except (smtplib.SMTPException, OSError) as exc:
            raise classify(exc) from exc
        if not before_data():
            self._reset()
            raise LostClaim("the outbox row was taken over by another worker")
        try:
            code, answer = client.data(content)
        except smtplib.SMTPDataError as exc:  # a real answer: the server did not take it
            raise classify(exc) from exc
        except (smtplib.SMTPException, OSError) as exc:
            raise MailOutcomeUnknown(
                f"the connection failed after the message was handed over "
                f"({type(exc).__name__}: {exc}); the server may have accepted it"
            ) from exc
        if code != 250:
            self._reset()
            raise classify(smtplib.SMTPDataError(code, answer))
        return refused

    def _options(self, smtputf8: bool) -> list[str]:
        """MAIL options: SMTPUTF8 only when an address needs it (and the server offers it)."""
        self.client.ehlo_or_helo_if_needed()
        if smtputf8 and not self.client.has_extn("smtputf8"):
            raise PermanentMailError(
                "an address is not ASCII and the SMTP server does not offer SMTPUTF8"
            )
        return ["SMTPUTF8", "BODY=8BITMIME"] if smtputf8 else []

    def _reset(self) -> None:
        with suppress(smtplib.SMTPException, OSError):
            self.client.rset()


@contextmanager
def smtp_transport(
    host: str,
    port: int,
    *,
    timeout: float = 30,
    use_ssl: bool = False,
    starttls: bool = False,
    user: str | None = None,
    password: str | None = None,
    verify_certificate: bool = True,
) -> Iterator[SmtplibTransport]:
    """One SMTP connection for a batch, logged in when credentials are given."""
    context = ssl.create_default_context()
    if not verify_certificate:  # a lab relay with a self-signed certificate, by explicit choice
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    try:
        if use_ssl:
            client: smtplib.SMTP = smtplib.SMTP_SSL(host, port, timeout=timeout, context=context)
        else:
            client = smtplib.SMTP(host, port, timeout=timeout)
            if starttls:
                client.starttls(context=context)
                client.ehlo()
        if user and password:
            client.login(user, password)
    except smtplib.SMTPAuthenticationError as exc:
        raise ConfigError(
            f"the SMTP server {host}:{port} refused the login of the SMTP connection: "
            f"{exc.smtp_code} {exc.smtp_error!r}"
        ) from exc
    except (smtplib.SMTPException, OSError) as exc:
        raise classify(exc) from exc
    try:
        yield SmtplibTransport(client)
    finally:
        try:
            client.quit()
        except (smtplib.SMTPException, OSError):
            client.close()


def classify(exc: Exception) -> Exception:
    """Map smtplib/socket errors raised before the content went out to transient or permanent."""
    if isinstance(exc, TransientMailError | PermanentMailError | MailOutcomeUnknown | ConfigError):
        return exc
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        codes = [code for code, _ in exc.recipients.values()]
        detail = "; ".join(
            f"{rcpt}: {code} {msg!r}" for rcpt, (code, msg) in exc.recipients.items()
        )
        if codes and all(400 <= code < 500 for code in codes):
            return TransientMailError(f"recipients deferred: {detail}")
        return PermanentMailError(f"recipients refused: {detail}")
    if isinstance(exc, smtplib.SMTPResponseException):
        text = f"SMTP {exc.smtp_code} {exc.smtp_error!r}"
        return (PermanentMailError if exc.smtp_code >= 500 else TransientMailError)(text)
    if isinstance(exc, smtplib.SMTPServerDisconnected | OSError | smtplib.SMTPException):
        return TransientMailError(f"{type(exc).__name__}: {exc}")
    return exc


@dataclass(frozen=True)
class OutgoingMail:
    """One message as it goes out: the exact bytes handed to SMTP are the bytes archived."""

    message: EmailMessage
    content: bytes
    envelope_from: str
    recipients: tuple[str, ...]
    smtputf8: bool

    @property
    def message_id(self) -> str:
        return str(self.message["Message-ID"])


def keyed_digest(secret: str, text: str, length: int = 32) -> str:
    """An HMAC-SHA256 of ``text``: stable for one secret, unguessable without it."""
    digest = hmac.new(secret.encode(), text.encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")[:length]


def message_id(dedupe_key: str, sender_email: str, installation: str) -> str:
    """A stable Message-ID: the same action always yields the same id (a duplicate is visible
    downstream, a person can find it in the SMTP log), and two installations never share one."""
    domain = sender_email.rsplit("@", 1)[-1]
    token = keyed_digest(installation, dedupe_key, 24).replace("-", "x").replace("_", "y")
    return f"<handoff.{token}@{domain}>"


def unsubscribe_token(secret: str, dedupe_key: str) -> str:
    """The token a promotional email's unsubscribe link carries (no CRM id in it)."""
    return keyed_digest(secret, f"unsubscribe:{dedupe_key}")


def unsubscribe_headers(url: str | None, mailto: str | None, token: str) -> dict[str, str]:
    """RFC 2369 and RFC 8058 headers: the one-click HTTPS link with the token.

    The mailto form is only offered where no endpoint is configured: mail to that address
    reaches a person, not the store, so it is never the link a mail client uses silently.
    """
    if url:
        headers = {"List-Unsubscribe": f"<{url}{'&' if '?' in url else '?'}t={token}>"}
        if url.startswith("https://"):
            headers["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
        return headers
    if mailto:
        return {"List-Unsubscribe": f"<mailto:{mailto}?subject={quote(f'unsubscribe {token}')}>"}
    return {}


def build_message(
    payload: dict[str, Any],
    rendered: RenderedEmail,
    *,
    message_id: str,
    sent_at: datetime,
    extra_headers: dict[str, str] | None = None,
) -> OutgoingMail:
    """A multipart/alternative message (the written text part first, then the HTML part) and
    its wire form, made once: the same bytes go to the SMTP server and to the archive."""
    sender = _address(payload["from"])
    message = EmailMessage()
    message["Subject"] = rendered.subject
    message["From"] = sender
    message["To"] = _address(payload["to"])
    if payload.get("cc"):
        message["Cc"] = [_address(person) for person in payload["cc"]]
    if payload.get("reply_to"):
        message["Reply-To"] = [_address(box) for box in payload["reply_to"]]
    message["Date"] = format_datetime(sent_at)
    message["Message-ID"] = message_id
    for name, value in (extra_headers or {}).items():
        message[name] = value
    message["Auto-Submitted"] = "auto-generated"
    message.set_content(rendered.text)
    message.add_alternative(rendered.html, subtype="html")
    # A boundary derived from the Message-ID: the same message always has the same bytes.
    message.set_boundary("=_" + hashlib.sha256(message_id.encode()).hexdigest()[:32])
    # Bodies are already encoded in 76-column lines; headers are now generated unfolded up to
    # RFC 5322's 998 limit, so the List-Unsubscribe URIs are not turned into encoded words.
    message.policy = HEADER_POLICY
    recipients = (payload["to"]["email"], *(person["email"] for person in payload.get("cc", [])))
    envelope_from = payload.get("envelope_from") or payload["from"]["email"]
    international = not all(a.isascii() for a in (envelope_from, *recipients))
    buffer = BytesIO()
    generator_policy = message.policy.clone(linesep="\r\n", utf8=international)
    BytesGenerator(buffer, policy=generator_policy).flatten(message)
    return OutgoingMail(message, buffer.getvalue(), envelope_from, recipients, international)


def _address(mailbox: dict[str, str]) -> Address:
    username, _, domain = mailbox["email"].rpartition("@")
    return Address(display_name=mailbox.get("name") or "", username=username, domain=domain)


def write_copy(mail: OutgoingMail, folder: Path, stem: str) -> tuple[Path, Path]:
    """Keep what was sent: the exact ``.eml`` bytes and an HTML preview with the headers on top."""
    folder.mkdir(parents=True, exist_ok=True)
    eml = folder / f"{stem}.eml"
    eml.write_bytes(mail.content)
    message = mail.message
    html_part = message.get_body(preferencelist=("html",))
    html = html_part.get_content() if html_part is not None else ""
    banner = "".join(
        f"<div><b>{name}:</b> {escape(str(message[name]))}</div>"
        for name in ("From", "Reply-To", "To", "Cc", "Subject", "Message-ID")
        if message[name]
    )
    preview = folder / f"{stem}.html"
    preview.write_text(
        '<div style="font:13px monospace;background:#fffbe6;padding:8px;border-bottom:1px solid '
        f'#e5e7eb">{banner}</div>\n{html}',
        encoding="utf-8",
    )
    return eml, preview
