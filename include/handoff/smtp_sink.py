"""A local SMTP sink: catches mail for tests and local runs, and injects SMTP faults.

The welcome-mail step has to be exercised end to end without a real relay, including
the failures a real relay produces (4xx deferrals, dropped connections, unknown
recipients). The sink also records how many connections it saw, so tests can prove
that a batch went out over one connection.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session

log = logging.getLogger(__name__)

# Set explicitly: the defaults cost a reverse-DNS lookup (socket.getfqdn) per connection,
# which can stall for seconds on machines with poor DNS.
_SERVER_HOSTNAME = "handoff-smtp-sink"
_IDENT = "Handoff SMTP sink"
_PARSER = BytesParser(policy=policy.default)


@dataclass(frozen=True)
class ReceivedMail:
    """One accepted message plus its SMTP envelope, which the headers alone don't show (Bcc).

    ``raw`` is the DATA payload exactly as received (CRLF line endings); ``message`` is
    parsed from it with ``email.policy.default``.
    """

    mail_from: str
    rcpt_tos: list[str]
    message: EmailMessage
    raw: bytes

    def __getitem__(self, header: str) -> Any:
        """Header lookup, so ``mail["Subject"]`` reads like the message itself."""
        return self.message[header]


@dataclass(frozen=True)
class _Fault:
    code: int
    message: str
    disconnect: bool


@dataclass
class _State:
    """Everything the SMTP thread and the test thread share; guarded by ``lock``."""

    lock: threading.Condition = field(default_factory=threading.Condition)
    messages: list[ReceivedMail] = field(default_factory=list)
    sessions: int = 0
    faults: deque[_Fault | None] = field(default_factory=deque)  # None: let one through
    rejected: dict[str, str] = field(default_factory=dict)


def _parse(raw: bytes) -> EmailMessage:
    """Parse wire data; CRLF becomes ``\\n`` so decoded text bodies read like Python strings."""
    message = _PARSER.parsebytes(raw.replace(b"\r\n", b"\n"))
    assert isinstance(message, EmailMessage)  # guaranteed by policy.default
    return message


class _Handler:
    """aiosmtpd hooks; they run on the sink's event-loop thread."""

    def __init__(self, sink: SmtpSink) -> None:
        self._sink = sink

    async def handle_RCPT(  # hook name fixed by aiosmtpd
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        rejection = self._sink._rejection_for(address)
        if rejection is not None:
            log.info("SMTP sink rejects recipient %s: %s", address, rejection)
            return rejection
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(  # hook name fixed by aiosmtpd
        self, server: SMTP, session: Session, envelope: Envelope
    ) -> str:
        fault = self._sink._take_fault()
        if fault is not None:
            log.info("SMTP sink injects fault %s %s", fault.code, fault.message)
            if fault.disconnect and server.transport is not None:
                # Runs after aiosmtpd has written the reply; close() flushes it first.
                server.loop.call_soon(server.transport.close)
            return f"{fault.code} {fault.message}"
        raw = envelope.original_content or b""
        self._sink._store(envelope.mail_from or "", list(envelope.rcpt_tos), raw)
        return "250 OK"


class _Controller(Controller):
    """aiosmtpd's threaded controller, taught to count connections and to bind port 0."""

    def __init__(self, sink: SmtpSink, hostname: str, port: int) -> None:
        super().__init__(
            _Handler(sink),
            hostname=hostname,
            port=port,
            server_hostname=_SERVER_HOSTNAME,
            ident=_IDENT,
        )
        self._sink = sink

    def factory(self) -> SMTP:
        # asyncio calls the protocol factory once per accepted connection, so this is
        # where sessions are counted. Passing the loop avoids aiosmtpd's fallback to
        # asyncio.get_event_loop(), which is deprecated outside a running loop.
        self._sink._count_session()
        return SMTP(self.handler, loop=self.loop, **self.SMTP_kwargs)

    def _trigger_server(self) -> None:
        # aiosmtpd probes host:port right after binding; with port 0 that must be the
        # port the OS actually picked, or the probe dials port 0 and start() fails.
        if self.port == 0 and self.server is not None:
            self.port = self.server.sockets[0].getsockname()[1]
        super()._trigger_server()


class SmtpSink:
    """An in-process SMTP server that keeps every accepted message; use as a context manager.

    ``port=0`` lets the OS pick a free port (read it from ``.port`` after start). Use a
    numeric ``host``: a name such as ``localhost`` may bind IPv4 and IPv6 on different
    ports. With ``maildir`` each message is also written there as ``<n>.eml`` (plus its
    envelope as ``<n>.json``), so another process can read what a long-running sink got;
    see ``load_maildir``.
    """

    def __init__(
        self, maildir: Path | None = None, *, host: str = "127.0.0.1", port: int = 0
    ) -> None:
        self._maildir = Path(maildir) if maildir is not None else None
        self._host = host
        self._requested_port = port
        self._state = _State()
        self._controller: _Controller | None = None
        self._next_file = 1

    # -- lifecycle -------------------------------------------------------------------

    def start(self) -> SmtpSink:
        """Bind and start serving on a background thread."""
        if self._controller is not None:
            raise RuntimeError("SMTP sink already running")
        if self._maildir is not None:
            self._maildir.mkdir(parents=True, exist_ok=True)
            self._next_file = _last_maildir_number(self._maildir) + 1
        controller = _Controller(self, self._host, self._requested_port)
        controller.start()
        with self._state.lock:
            # aiosmtpd's own readiness probe connected once; it is not a client session.
            self._state.sessions = 0
        self._controller = controller
        log.debug("SMTP sink listening on %s:%s", self.host, self.port)
        return self

    def stop(self) -> None:
        """Stop serving; received messages stay readable."""
        if self._controller is None:
            return
        port = self._controller.port
        self._controller.stop()
        self._controller = None
        self._requested_port = port  # keep .port meaningful after stop
        log.debug("SMTP sink on %s:%s stopped", self._host, port)

    def __enter__(self) -> SmtpSink:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- what was received -----------------------------------------------------------

    @property
    def host(self) -> str:
        return self._host

    @property
    def port(self) -> int:
        """The bound port once started (the OS's pick when created with ``port=0``)."""
        if self._controller is not None:
            return int(self._controller.port)
        return self._requested_port

    @property
    def maildir(self) -> Path | None:
        return self._maildir

    @property
    def messages(self) -> list[ReceivedMail]:
        """A snapshot of every accepted message, oldest first."""
        with self._state.lock:
            return list(self._state.messages)

    @property
    def sessions(self) -> int:
        """SMTP connections accepted since start (proves connection reuse per batch)."""
        with self._state.lock:
            return self._state.sessions

    def wait_for_messages(self, count: int, timeout: float = 5.0) -> list[ReceivedMail]:
        """Block until at least ``count`` messages arrived; for senders that don't block."""
        with self._state.lock:
            if not self._state.lock.wait_for(
                lambda: len(self._state.messages) >= count, timeout=timeout
            ):
                raise TimeoutError(
                    f"SMTP sink got {len(self._state.messages)} messages, "
                    f"expected {count} within {timeout}s"
                )
            return list(self._state.messages)

    # -- fault injection -------------------------------------------------------------

    def fail_next(
        self,
        n: int = 1,
        code: int = 421,
        message: str = "4.3.0 Try again later",
        disconnect: bool = False,
        *,
        after: int = 0,
    ) -> None:
        """Answer ``n`` DATA commands with ``code`` and drop the message.

        ``after`` lets that many messages through first (a failure half-way through a batch).
        With ``disconnect`` the sink also closes the connection after replying, the way a
        relay that is shutting down behaves.
        """
        if after < 0:
            raise ValueError(f"after must be >= 0, got {after}")
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        if not 400 <= code <= 599:
            raise ValueError(f"fault code must be a 4xx or 5xx reply, got {code}")
        with self._state.lock:
            self._state.faults.extend([None] * after)
            self._state.faults.extend(_Fault(code, message, disconnect) for _ in range(n))

    def reject_recipient(
        self, address: str, code: int = 550, message: str = "5.1.1 User unknown"
    ) -> None:
        """Make RCPT TO for ``address`` (case-insensitive) fail with ``code``."""
        if not 400 <= code <= 599:
            raise ValueError(f"rejection code must be a 4xx or 5xx reply, got {code}")
        with self._state.lock:
            self._state.rejected[address.casefold()] = f"{code} {message}"

    # -- called from the SMTP thread -------------------------------------------------

    def _count_session(self) -> None:
        with self._state.lock:
            self._state.sessions += 1

    def _rejection_for(self, address: str) -> str | None:
        with self._state.lock:
            return self._state.rejected.get(address.casefold())

    def _take_fault(self) -> _Fault | None:
        with self._state.lock:
            return self._state.faults.popleft() if self._state.faults else None

    def _store(self, mail_from: str, rcpt_tos: list[str], raw: bytes) -> None:
        received = ReceivedMail(mail_from, rcpt_tos, _parse(raw), raw)
        with self._state.lock:
            if self._maildir is not None:
                _write_maildir_entry(self._maildir, self._next_file, received)
                self._next_file += 1
            self._state.messages.append(received)
            self._state.lock.notify_all()


def _write_maildir_entry(maildir: Path, number: int, mail: ReceivedMail) -> None:
    """Write the envelope, then the message; the ``.eml`` rename marks the entry complete."""
    envelope = {"mail_from": mail.mail_from, "rcpt_tos": mail.rcpt_tos}
    for suffix, payload in (
        ("json", json.dumps(envelope, ensure_ascii=False).encode("utf-8")),
        ("eml", mail.raw),
    ):
        tmp = maildir / f".{number}.{suffix}.tmp"
        tmp.write_bytes(payload)
        os.replace(tmp, maildir / f"{number}.{suffix}")


def _last_maildir_number(maildir: Path) -> int:
    numbers = [int(p.stem) for p in maildir.glob("*.eml") if p.stem.isdigit()]
    return max(numbers, default=0)


def load_maildir(maildir: Path) -> list[ReceivedMail]:
    """Read back what a sink wrote to ``maildir``, oldest first."""
    entries = sorted((int(p.stem), p) for p in Path(maildir).glob("*.eml") if p.stem.isdigit())
    mails = []
    for _, eml in entries:
        raw = eml.read_bytes()
        sidecar = eml.with_suffix(".json")
        envelope = json.loads(sidecar.read_text("utf-8")) if sidecar.exists() else {}
        mails.append(
            ReceivedMail(
                envelope.get("mail_from", ""), list(envelope.get("rcpt_tos", [])), _parse(raw), raw
            )
        )
    return mails


def serve(host: str = "127.0.0.1", port: int = 1025, maildir: Path | None = None) -> None:
    """Run a sink until SIGTERM/SIGINT; announce where it listens as one JSON line on stdout.

    The JSON line lets whoever started the process (a test, a CLI wrapper) learn the
    port actually bound, which matters with ``port=0``.
    """
    stop = threading.Event()

    def _on_signal(signum: int, frame: FrameType | None) -> None:
        log.info("SMTP sink got signal %s, stopping", signum)
        stop.set()

    previous = {sig: signal.signal(sig, _on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        with SmtpSink(maildir, host=host, port=port) as sink:
            announcement = {
                "smtp_host": sink.host,
                "smtp_port": sink.port,
                "maildir": str(maildir.resolve()) if maildir is not None else None,
            }
            print(json.dumps(announcement), flush=True)
            while not stop.wait(0.5):
                pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m handoff.smtp_sink``: the same as ``serve`` with command-line options."""
    parser = argparse.ArgumentParser(prog="python -m handoff.smtp_sink", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=1025, help="0 picks a free port")
    parser.add_argument("--maildir", type=Path, default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    serve(args.host, args.port, args.maildir)


if __name__ == "__main__":
    main()
