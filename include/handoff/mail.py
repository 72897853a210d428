"""Building client emails (MIME) and handing them to an SMTP connection.

The transport is injected: the Airflow plugin opens one SMTP connection per batch from the
``smtp_default`` connection; tests and the CLI can pass any ``smtplib.SMTP``.
"""

from __future__ import annotations

import hashlib
import smtplib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from email import policy
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime
from html import escape
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import quote

from handoff.emails import RenderedEmail

HEADER_POLICY = policy.default.clone(max_line_length=998)


class MailTransport(Protocol):
    def send(self, message: EmailMessage) -> dict[str, tuple[int, bytes]]:
        """Send one message; return the recipients the server refused (others got it)."""


class SmtplibTransport:
    """Adapts a connected ``smtplib.SMTP`` client."""

    def __init__(self, client: smtplib.SMTP) -> None:
        self.client = client

    def send(self, message: EmailMessage) -> dict[str, tuple[int, bytes]]:
        return self.client.send_message(message)


@contextmanager
def smtp_transport(host: str, port: int, *, timeout: float = 30) -> Iterator[SmtplibTransport]:
    """One plain SMTP connection for a batch, without Airflow (local relays, the sink)."""
    client = smtplib.SMTP(host, port, timeout=timeout)
    try:
        yield SmtplibTransport(client)
    finally:
        try:
            client.quit()
        except (smtplib.SMTPException, OSError):
            client.close()


class TransientMailError(RuntimeError):
    """The server or network failed for now; the message was not accepted. Try again later."""


class PermanentMailError(RuntimeError):
    """The server refused this message for good (5xx); retrying will not help."""


def classify(exc: Exception) -> Exception:
    """Map smtplib/socket errors to transient (retry the task) or permanent (record, move on)."""
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
class Unsubscribe:
    mailto: str
    url: str | None = None

    def header(self, key: str) -> str:
        """RFC 2369/8058 links carrying an opaque token that identifies this message."""
        token = key_token(key)
        links = [f"<mailto:{self.mailto}?subject={quote(f'unsubscribe {token}')}>"]
        if self.url:
            separator = "&" if "?" in self.url else "?"
            links.append(f"<{self.url}{separator}t={token}>")
        return ", ".join(links)


def key_token(dedupe_key: str) -> str:
    """An opaque token for a dedupe key: the client never sees CRM ids."""
    return hashlib.sha256(dedupe_key.encode()).hexdigest()[:24]


def message_id(dedupe_key: str, sender_email: str) -> str:
    """A stable Message-ID: the same action always yields the same id, which makes a duplicate
    detectable downstream and lets a person find a message in the SMTP log."""
    domain = sender_email.rsplit("@", 1)[-1]
    return f"<handoff.{key_token(dedupe_key)}@{domain}>"


def build_message(
    payload: dict[str, Any],
    rendered: RenderedEmail,
    *,
    dedupe_key: str,
    unsubscribe: Unsubscribe,
    sent_at: datetime,
) -> EmailMessage:
    """A multipart/alternative message: the written text part first, then the HTML part."""
    sender = _address(payload["from"])
    message = EmailMessage()
    message["Subject"] = rendered.subject
    message["From"] = sender
    message["To"] = _address(payload["to"])
    if payload.get("cc"):
        message["Cc"] = [_address(person) for person in payload["cc"]]
    message["Reply-To"] = sender
    message["Date"] = format_datetime(sent_at)
    message["Message-ID"] = message_id(dedupe_key, payload["from"]["email"])
    message["List-Unsubscribe"] = unsubscribe.header(dedupe_key)
    if unsubscribe.url and unsubscribe.url.startswith("https://"):
        message["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
    message["Auto-Submitted"] = "auto-generated"
    message.set_content(rendered.text)
    message.add_alternative(rendered.html, subtype="html")
    # Bodies are already encoded in 76-column lines; headers are now generated unfolded up to
    # RFC 5322's 998 limit, so the List-Unsubscribe URIs are not turned into encoded words.
    message.policy = HEADER_POLICY
    return message


def _address(mailbox: dict[str, str]) -> Address:
    username, _, domain = mailbox["email"].rpartition("@")
    return Address(display_name=mailbox.get("name") or "", username=username, domain=domain)


def write_copy(message: EmailMessage, folder: Path, stem: str) -> tuple[Path, Path]:
    """Keep what was sent: the exact ``.eml`` and an HTML preview with the headers on top."""
    folder.mkdir(parents=True, exist_ok=True)
    eml = folder / f"{stem}.eml"
    eml.write_bytes(bytes(message))
    html_part = message.get_body(preferencelist=("html",))
    html = html_part.get_content() if html_part is not None else ""
    banner = "".join(
        f"<div><b>{name}:</b> {escape(str(message[name]))}</div>"
        for name in ("From", "To", "Cc", "Subject", "Message-ID")
        if message[name]
    )
    preview = folder / f"{stem}.html"
    preview.write_text(
        '<div style="font:13px monospace;background:#fffbe6;padding:8px;border-bottom:1px solid '
        f'#e5e7eb">{banner}</div>\n{html}',
        encoding="utf-8",
    )
    return eml, preview
