"""A local SMTP sink: catches mail for tests and local runs, and injects SMTP faults.

The welcome-mail step has to be exercised end to end without a real relay, including
the failures a real relay produces (4xx deferrals, dropped connections, unknown
recipients, and the nasty one for exactly-once sending: a message the relay accepted
whose reply never reached the sender). The sink also records how many connections it
saw, so tests can prove that a batch went out over one connection.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
import threading
from collections import deque
from collections.abc import Callable, Sequence
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
    """Reply to DATA with an error and drop the message (``fail_next``)."""

    code: int
    message: str
    disconnect: bool


@dataclass(frozen=True)
class _DropAfterAccept:
    """Store the message, then cut the connection before replying (``drop_after_accept``)."""


class HeldReply:
    """Handle on a DATA reply that ``SmtpSink.hold_next`` keeps back.

    The message is stored as soon as it arrives, but the ``250`` stays unsent until
    ``release()``. Meanwhile the sender sits blocked in ``DATA``, which is the window in
    which a test can kill it (or close its socket) to reproduce "the relay has the mail,
    the sender never heard so".

    ``arrived`` is set once the held message has been stored (it is in
    ``sink.messages`` and the maildir). ``finished`` is set once the sink stops holding:
    after ``release()`` (the sink then answers ``250 OK`` if the connection is still
    open), when the client disconnected first, or when the sink stopped.
    """

    def __init__(self) -> None:
        self.arrived = threading.Event()
        self.finished = threading.Event()
        self._released = threading.Event()

    @property
    def released(self) -> bool:
        return self._released.is_set()

    def release(self) -> None:
        """Let the held ``250 OK`` go out; safe to call more than once, from any thread."""
        self._released.set()

    def wait_arrived(self, timeout: float | None = 5.0) -> bool:
        """Block until the held message was stored; ``False`` if ``timeout`` passed first."""
        return self.arrived.wait(timeout)

    def __repr__(self) -> str:
        if self.finished.is_set():
            state = "finished"
        elif self.arrived.is_set():
            state = "holding"
        else:
            state = "waiting"
        return f"<HeldReply {state}, released={self.released}>"


# What the next DATA gets; None lets one message through normally.
_Action = _Fault | _DropAfterAccept | HeldReply | None

# How often a held DATA checks for release(). Polling on the event loop (rather than
# blocking a thread on the Event) keeps other connections served while a reply is held,
# and lets a client disconnect cancel the wait like any other await.
_HOLD_POLL_SECONDS = 0.005


@dataclass
class _State:
    """Everything the SMTP thread and the test thread share; guarded by ``lock``."""

    lock: threading.Condition = field(default_factory=threading.Condition)
    messages: list[ReceivedMail] = field(default_factory=list)
    sessions: int = 0
    # One queue for every DATA fault, consumed in order, so mixed faults stay predictable.
    faults: deque[_Action] = field(default_factory=deque)
    # Every hold handed out, so stop() can release them all and never hang.
    holds: list[HeldReply] = field(default_factory=list)
    rejected: dict[str, str] = field(default_factory=dict)
    # A steady fault rate for chaos runs: every Nth DATA is stored, then the connection drops.
    drop_every: int = 0
    data_count: int = 0
    # A slow relay: each DATA waits this long before it is answered.
    data_delay: float = 0.0


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
        if delay := self._sink._state.data_delay:
            await asyncio.sleep(delay)
        if isinstance(fault, _Fault):
            log.info("SMTP sink injects fault %s %s", fault.code, fault.message)
            if fault.disconnect and server.transport is not None:
                # Runs after aiosmtpd has written the reply; close() flushes it first.
                server.loop.call_soon(server.transport.close)
            return f"{fault.code} {fault.message}"
        raw = envelope.original_content or b""
        self._sink._store(envelope.mail_from or "", list(envelope.rcpt_tos), raw)
        if isinstance(fault, _DropAfterAccept):
            await self._drop_connection(server)
        elif isinstance(fault, HeldReply):
            await self._hold(fault)
        return "250 OK"

    @staticmethod
    async def _drop_connection(server: SMTP) -> None:
        """Cut the connection with the message stored and no reply sent; never returns.

        ``abort()`` discards anything unsent and makes asyncio call aiosmtpd's
        ``connection_lost``, which cancels this session's task. Waiting for that
        cancellation (instead of returning) means aiosmtpd never tries to write the reply,
        and it unwinds the way it does for any client that hangs up: one INFO log line,
        no error, no warning. The listener keeps accepting new connections.
        """
        log.info("SMTP sink stored the message and drops the connection without a reply")
        if server.transport is not None:
            server.transport.abort()
        await server.loop.create_future()  # cancelled by connection_lost

    @staticmethod
    async def _hold(held: HeldReply) -> None:
        """Keep the DATA reply back until ``held.release()``; see ``HeldReply``.

        A client that disconnects meanwhile cancels this task (aiosmtpd's
        ``connection_lost``/``eof_received``), which ends the wait without a reply.
        """
        log.info("SMTP sink stored the message and holds the reply")
        held.arrived.set()
        try:
            while not held.released:
                await asyncio.sleep(_HOLD_POLL_SECONDS)
        finally:
            held.finished.set()


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
        """Stop serving; received messages stay readable.

        Every ``HeldReply`` is released first (including holds not reached yet), so a
        forgotten ``release()`` can never make shutdown wait.
        """
        with self._state.lock:
            holds = list(self._state.holds)
        for held in holds:
            held.release()
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
        _check_counts(n, after)
        if not 400 <= code <= 599:
            raise ValueError(f"fault code must be a 4xx or 5xx reply, got {code}")
        self._enqueue(n, after, lambda: _Fault(code, message, disconnect))

    def drop_after_accept(self, n: int = 1, *, after: int = 0) -> None:
        """Store the next ``n`` messages, then drop each connection before replying to DATA.

        This is the relay that accepted a message but whose ``250`` was lost with the
        connection: the mail is delivered (``messages``, the maildir), yet the sender sees
        ``SMTPServerDisconnected`` instead of a reply, and a sender that retries blindly
        sends it twice. ``after`` lets that many messages through first. Queued behind
        earlier ``fail_next``/``hold_next`` faults, in call order.
        """
        self._enqueue(n, after, _DropAfterAccept)

    def hold_next(self, *, after: int = 0) -> HeldReply:
        """Store the next message at once but hold the reply to its DATA until released.

        Returns the ``HeldReply`` to wait on (``arrived``) and to ``release()``. While
        held, the sender is blocked waiting for the ``250``, so a test can kill it at the
        worst moment for exactly-once sending. Other connections keep being served.
        ``after`` lets that many messages through first; ``stop()`` releases every hold.
        A hold released before its message arrives lets that message through unheld.
        """
        held = HeldReply()
        with self._state.lock:  # re-entrant: _enqueue takes it too
            self._enqueue(1, after, lambda: held)
            self._state.holds.append(held)
        return held

    def _enqueue(self, n: int, after: int, make: Callable[[], _Action]) -> None:
        """Queue ``after`` pass-throughs, then ``n`` faults, behind what is queued already."""
        _check_counts(n, after)
        with self._state.lock:
            self._state.faults.extend([None] * after)
            self._state.faults.extend(make() for _ in range(n))

    def reject_recipient(
        self, address: str, code: int = 550, message: str = "5.1.1 User unknown"
    ) -> None:
        """Make RCPT TO for ``address`` (case-insensitive) fail with ``code``."""
        if not 400 <= code <= 599:
            raise ValueError(f"rejection code must be a 4xx or 5xx reply, got {code}")
        with self._state.lock:
            self._state.rejected[address.casefold()] = f"{code} {message}"

    def drop_every(self, n: int) -> None:
        """From now on, store every ``n``th message and drop the connection before the reply
        (0 stops it): a relay that loses answers at a steady rate, for chaos runs."""
        if n < 0:
            raise ValueError("n must be 0 or more")
        with self._state.lock:
            self._state.drop_every = n
            self._state.data_count = 0

    def slow_down(self, seconds: float) -> None:
        """Answer every DATA ``seconds`` late (0 = at once): a slow relay."""
        with self._state.lock:
            self._state.data_delay = max(0.0, seconds)

    def accept_recipient(self, address: str) -> None:
        """Undo :meth:`reject_recipient` (the address was fixed)."""
        with self._state.lock:
            self._state.rejected.pop(address.casefold(), None)

    # -- called from the SMTP thread -------------------------------------------------

    def _count_session(self) -> None:
        with self._state.lock:
            self._state.sessions += 1

    def _rejection_for(self, address: str) -> str | None:
        with self._state.lock:
            return self._state.rejected.get(address.casefold())

    def _take_fault(self) -> _Action:
        with self._state.lock:
            self._state.data_count += 1
            if self._state.faults:
                return self._state.faults.popleft()
            every = self._state.drop_every
            if every and self._state.data_count % every == 0:
                return _DropAfterAccept()
            return None

    def _store(self, mail_from: str, rcpt_tos: list[str], raw: bytes) -> None:
        received = ReceivedMail(mail_from, rcpt_tos, _parse(raw), raw)
        with self._state.lock:
            if self._maildir is not None:
                _write_maildir_entry(self._maildir, self._next_file, received)
                self._next_file += 1
            self._state.messages.append(received)
            self._state.lock.notify_all()


def _check_counts(n: int, after: int) -> None:
    if after < 0:
        raise ValueError(f"after must be >= 0, got {after}")
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")


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


def serve(
    host: str = "127.0.0.1",
    port: int = 1025,
    maildir: Path | None = None,
    *,
    drop_every: int = 0,
    data_delay: float = 0.0,
) -> None:
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
            sink.drop_every(drop_every)
            sink.slow_down(data_delay)
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
