"""The SMTP sink, driven by stdlib smtplib: the same client the SMTP provider uses."""

from __future__ import annotations

import gc
import json
import logging
import re
import select
import signal
import smtplib
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from email.message import EmailMessage
from email.parser import BytesParser
from email.policy import default as default_policy
from pathlib import Path

import pytest

from handoff.smtp_sink import HeldReply, SmtpSink, load_maildir

# Warnings from aiosmtpd (deprecated loop APIs, missing settings) must fail these tests.
pytestmark = pytest.mark.filterwarnings("error")

SENDER = "handoff@example.com"


def _message(subject: str = "Welcome aboard", to: str = "ada@example.com") -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = f"Handoff Autopilot <{SENDER}>"
    msg["To"] = to
    msg["Subject"] = subject
    msg.set_content("Hello Ada,\nwelcome.\n")
    msg.add_alternative("<p>Hello Ada,<br>welcome.</p>", subtype="html")
    msg.add_attachment(b"%PDF-1.4 fake", maintype="application", subtype="pdf", filename="a.pdf")
    return msg


@pytest.fixture
def sink() -> Iterator[SmtpSink]:
    with SmtpSink() as running:
        yield running


def _client(sink: SmtpSink) -> smtplib.SMTP:
    return smtplib.SMTP(sink.host, sink.port, timeout=5)


def _wire(msg: EmailMessage) -> bytes:
    """The message as DATA payload (CRLF), the way ``send_message`` puts it on the wire."""
    return msg.as_bytes(policy=default_policy.clone(linesep="\r\n"))


def _data_reply(sink: SmtpSink, subject: str) -> tuple[int, bytes]:
    """Send one message on a fresh connection; return the reply to DATA itself."""
    with _client(sink) as smtp:
        smtp.ehlo()
        smtp.mail(SENDER)
        smtp.rcpt("ada@example.com")
        return smtp.data(_wire(_message(subject)))


def _start_data_then_wait(smtp: smtplib.SMTP, held: HeldReply, subject: str) -> None:
    """Send a whole DATA without reading the reply, and wait until the sink stored it."""
    smtp.ehlo()
    smtp.mail(SENDER)
    smtp.rcpt("ada@example.com")
    smtp.putcmd("data")
    assert smtp.getreply()[0] == 354
    payload = re.sub(rb"(?m)^\.", b"..", _wire(_message(subject)))  # dot-stuffing
    smtp.send(payload + b".\r\n")
    assert held.wait_arrived(timeout=2)


def _assert_nothing_logged_above_info(caplog: pytest.LogCaptureFixture) -> None:
    gc.collect()  # asyncio logs "Task exception was never retrieved" only when collected
    loud = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert loud == []


def test_port_zero_binds_a_real_port(sink: SmtpSink) -> None:
    assert sink.host == "127.0.0.1"
    assert sink.port > 0
    assert sink.sessions == 0, "aiosmtpd's start-up probe must not count as a session"
    assert sink.messages == []


def test_stores_multipart_message_with_envelope(sink: SmtpSink) -> None:
    with _client(sink) as smtp:
        smtp.send_message(_message(), to_addrs=["ada@example.com", "csm@example.com"])

    [mail] = sink.messages
    assert mail.mail_from == SENDER
    assert mail.rcpt_tos == ["ada@example.com", "csm@example.com"]
    assert mail["Subject"] == "Welcome aboard"
    assert b"Subject: Welcome aboard" in mail.raw
    msg = mail.message
    assert isinstance(msg, EmailMessage)
    assert msg.is_multipart()
    assert msg.get_body(preferencelist=("plain",)).get_content() == "Hello Ada,\nwelcome.\n"
    assert "<br>welcome." in msg.get_body(preferencelist=("html",)).get_content()
    [attachment] = list(msg.iter_attachments())
    assert attachment.get_filename() == "a.pdf"
    assert attachment.get_content() == b"%PDF-1.4 fake"


def test_writes_maildir_readable_by_another_process(tmp_path: Path) -> None:
    maildir = tmp_path / "mail"
    with SmtpSink(maildir) as sink, _client(sink) as smtp:
        smtp.send_message(_message("first"))
        smtp.send_message(_message("second"), to_addrs=["bob@example.com"])

    assert sorted(p.name for p in maildir.iterdir()) == ["1.eml", "1.json", "2.eml", "2.json"]
    parsed = BytesParser(policy=default_policy).parsebytes((maildir / "2.eml").read_bytes())
    assert parsed["Subject"] == "second"
    loaded = load_maildir(maildir)
    assert [m["Subject"] for m in loaded] == ["first", "second"]
    assert loaded[1].mail_from == SENDER
    assert loaded[1].rcpt_tos == ["bob@example.com"]


def test_restarted_sink_appends_to_existing_maildir(tmp_path: Path) -> None:
    for subject in ("before restart", "after restart"):
        with SmtpSink(tmp_path) as sink, _client(sink) as smtp:
            smtp.send_message(_message(subject))
    assert [m["Subject"] for m in load_maildir(tmp_path)] == ["before restart", "after restart"]


def test_counts_one_session_per_connection(sink: SmtpSink) -> None:
    with _client(sink) as smtp:
        for n in range(3):
            smtp.send_message(_message(f"batch one #{n}"))
    assert sink.sessions == 1
    assert len(sink.messages) == 3

    with _client(sink) as smtp:
        smtp.send_message(_message("batch two"))
    assert sink.sessions == 2


def test_fail_next_defers_then_accepts_on_the_same_connection(sink: SmtpSink) -> None:
    sink.fail_next(code=451, message="4.3.0 Try again later")
    with _client(sink) as smtp:
        with pytest.raises(smtplib.SMTPDataError) as excinfo:
            smtp.send_message(_message("first try"))
        assert excinfo.value.smtp_code == 451
        assert excinfo.value.smtp_error == b"4.3.0 Try again later"
        assert sink.messages == [], "a failed DATA must not be stored"

        smtp.send_message(_message("second try"))

    assert [m["Subject"] for m in sink.messages] == ["second try"]
    assert sink.sessions == 1


def test_fail_next_default_is_421_and_counts_down(sink: SmtpSink) -> None:
    sink.fail_next(n=2)
    for _ in range(2):
        with _client(sink) as smtp, pytest.raises(smtplib.SMTPDataError) as excinfo:
            smtp.send_message(_message())
        assert excinfo.value.smtp_code == 421
    with _client(sink) as smtp:
        smtp.send_message(_message("third time lucky"))
    assert [m["Subject"] for m in sink.messages] == ["third time lucky"]
    assert sink.sessions == 3


def test_fail_next_can_drop_the_connection(sink: SmtpSink) -> None:
    # 451 rather than 421: smtplib hangs up by itself after a 421, which would hide
    # whether the server really closed the connection.
    sink.fail_next(code=451, disconnect=True)
    smtp = _client(sink)
    try:
        with pytest.raises(smtplib.SMTPDataError):
            smtp.send_message(_message())
        with pytest.raises(smtplib.SMTPServerDisconnected):
            smtp.noop()
    finally:
        smtp.close()

    with _client(sink) as smtp:
        smtp.send_message(_message("after reconnect"))
    assert [m["Subject"] for m in sink.messages] == ["after reconnect"]
    assert sink.sessions == 2


def test_reject_recipient_refuses_rcpt_to(sink: SmtpSink) -> None:
    sink.reject_recipient("gone@example.com")
    with _client(sink) as smtp:
        with pytest.raises(smtplib.SMTPRecipientsRefused) as excinfo:
            smtp.send_message(_message(to="gone@example.com"))
        assert excinfo.value.recipients == {"gone@example.com": (550, b"5.1.1 User unknown")}

        refused = smtp.send_message(
            _message("partly delivered"), to_addrs=["GONE@example.com", "ada@example.com"]
        )
    assert refused == {"GONE@example.com": (550, b"5.1.1 User unknown")}
    [mail] = sink.messages
    assert mail.rcpt_tos == ["ada@example.com"]


def test_non_ascii_headers_and_body_round_trip(sink: SmtpSink) -> None:
    subject = "Willkommen, Jürgen: Ihr Kundenerfolg-Team grüßt 🎉"
    msg = EmailMessage()
    msg["From"] = f"Zoë Ångström <{SENDER}>"
    msg["To"] = "Jürgen Müller <juergen@example.com>"
    msg["Subject"] = subject
    msg.set_content("Grüße aus Köln — bis bald!\n")
    with _client(sink) as smtp:
        smtp.send_message(msg)

    [mail] = sink.messages
    assert mail["Subject"] == subject
    assert mail["From"].addresses[0].display_name == "Zoë Ångström"
    assert mail["To"].addresses[0].display_name == "Jürgen Müller"
    assert mail.message.get_content() == "Grüße aus Köln — bis bald!\n"
    headers = mail.raw.split(b"\r\n\r\n", 1)[0]
    assert headers.isascii(), "smtplib should have encoded the headers (RFC 2047)"
    assert b"=?utf-8?" in headers


def test_rejects_meaningless_faults(sink: SmtpSink) -> None:
    with pytest.raises(ValueError, match="n must be"):
        sink.fail_next(n=0)
    with pytest.raises(ValueError, match="4xx or 5xx"):
        sink.fail_next(code=250)
    with pytest.raises(ValueError, match="4xx or 5xx"):
        sink.reject_recipient("x@example.com", code=250)
    with pytest.raises(ValueError, match="n must be"):
        sink.drop_after_accept(n=0)
    with pytest.raises(ValueError, match="after must be"):
        sink.drop_after_accept(after=-1)
    with pytest.raises(ValueError, match="after must be"):
        sink.hold_next(after=-1)


def test_drop_after_accept_stores_but_never_replies(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with SmtpSink(tmp_path) as sink:
        sink.drop_after_accept()
        with _client(sink) as smtp, pytest.raises(smtplib.SMTPServerDisconnected):
            smtp.send_message(_message("accepted, reply lost"))

        assert [m["Subject"] for m in sink.messages] == ["accepted, reply lost"]
        assert [m["Subject"] for m in load_maildir(tmp_path)] == ["accepted, reply lost"]

        with _client(sink) as smtp:
            assert smtp.send_message(_message("next connection")) == {}
        assert [m["Subject"] for m in sink.messages] == ["accepted, reply lost", "next connection"]
        assert sink.sessions == 2
    _assert_nothing_logged_above_info(caplog)


def test_drop_after_accept_lets_after_through_and_counts_down(sink: SmtpSink) -> None:
    sink.drop_after_accept(n=2, after=1)
    with _client(sink) as smtp:
        smtp.send_message(_message("one"))
        with pytest.raises(smtplib.SMTPServerDisconnected):
            smtp.send_message(_message("two"))
    with _client(sink) as smtp, pytest.raises(smtplib.SMTPServerDisconnected):
        smtp.send_message(_message("three"))
    with _client(sink) as smtp:
        smtp.send_message(_message("four"))
    assert [m["Subject"] for m in sink.messages] == ["one", "two", "three", "four"]
    assert sink.sessions == 3


def test_faults_share_one_queue_in_call_order(sink: SmtpSink) -> None:
    sink.fail_next(code=451)
    sink.drop_after_accept()
    held = sink.hold_next()
    with _client(sink) as smtp:
        with pytest.raises(smtplib.SMTPDataError):
            smtp.send_message(_message("deferred"))
        with pytest.raises(smtplib.SMTPServerDisconnected):
            smtp.send_message(_message("dropped"))
    held.release()  # released before it is reached: the third message just goes through
    assert _data_reply(sink, "held, already released") == (250, b"OK")
    assert held.arrived.is_set() and held.finished.is_set()
    assert [m["Subject"] for m in sink.messages] == ["dropped", "held, already released"]


def test_hold_next_holds_the_reply_until_release(sink: SmtpSink) -> None:
    held = sink.hold_next(after=1)
    with ThreadPoolExecutor(max_workers=1) as pool:
        first = pool.submit(_data_reply, sink, "goes through")
        assert first.result(timeout=2) == (250, b"OK")
        assert not held.arrived.is_set(), "after=1 must let the first message through"

        blocked = pool.submit(_data_reply, sink, "held")
        assert held.wait_arrived(timeout=2)
        assert [m["Subject"] for m in sink.messages] == ["goes through", "held"]
        time.sleep(0.1)
        assert not blocked.done(), "the client must still be waiting for its reply"
        assert not held.finished.is_set()

        # The held session must not stall the sink for anyone else.
        with _client(sink) as other:
            other.send_message(_message("meanwhile"))

        held.release()
        assert blocked.result(timeout=2) == (250, b"OK")
    assert held.finished.is_set()
    assert [m["Subject"] for m in sink.messages] == ["goes through", "held", "meanwhile"]


def test_stop_releases_a_held_reply_promptly() -> None:
    sink = SmtpSink().start()
    held = sink.hold_next()
    with ThreadPoolExecutor(max_workers=1) as pool:
        try:
            blocked = pool.submit(_data_reply, sink, "held at shutdown")
            assert held.wait_arrived(timeout=2)
            started = time.monotonic()
            sink.stop()
            assert time.monotonic() - started < 1
            assert held.released
        finally:
            sink.stop()
        # Released or cut off by the shutdown (a race), the client must not be left hanging.
        error = blocked.exception(timeout=1)
        if error is None:
            assert blocked.result() == (250, b"OK")
        else:
            assert isinstance(error, smtplib.SMTPServerDisconnected)
    assert [m["Subject"] for m in sink.messages] == ["held at shutdown"]


def test_client_gone_while_held_leaves_the_sink_healthy(
    sink: SmtpSink, caplog: pytest.LogCaptureFixture
) -> None:
    held = sink.hold_next()
    smtp = _client(sink)
    try:
        _start_data_then_wait(smtp, held, "sender died waiting")
    finally:
        smtp.close()  # the sender's process dies with the reply outstanding

    assert held.finished.wait(timeout=1), "the sink must notice the client is gone"
    assert not held.released
    with _client(sink) as smtp:
        smtp.send_message(_message("next sender"))
    assert [m["Subject"] for m in sink.messages] == ["sender died waiting", "next sender"]
    _assert_nothing_logged_above_info(caplog)


def test_wait_for_messages_times_out_clearly(sink: SmtpSink) -> None:
    with pytest.raises(TimeoutError, match="got 0 messages, expected 1"):
        sink.wait_for_messages(1, timeout=0.05)
    with _client(sink) as smtp:
        smtp.send_message(_message())
    assert len(sink.wait_for_messages(1)) == 1


def test_full_lifecycle_emits_no_warnings(tmp_path: Path) -> None:
    # Records warnings from every thread, including aiosmtpd's event-loop thread.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with SmtpSink(tmp_path) as sink:
            sink.fail_next(code=451, disconnect=True)
            sink.reject_recipient("gone@example.com")
            with _client(sink) as smtp, pytest.raises(smtplib.SMTPDataError):
                smtp.send_message(_message())
            with _client(sink) as smtp:
                smtp.send_message(_message(), to_addrs=["gone@example.com", "a@example.com"])
            sink.drop_after_accept()
            with _client(sink) as smtp, pytest.raises(smtplib.SMTPServerDisconnected):
                smtp.send_message(_message())
            # No QUIT on these two: it would only be read once the held reply is out.
            held = sink.hold_next()
            smtp = _client(sink)
            _start_data_then_wait(smtp, held, "held, then the client hangs up")
            smtp.close()
            assert held.finished.wait(timeout=1)
            held = sink.hold_next()
            smtp = _client(sink)
            _start_data_then_wait(smtp, held, "held while the sink stops")
        smtp.close()
        gc.collect()  # surface ResourceWarnings for unclosed transports or loops
    assert [str(w.message) for w in caught] == []


def test_serve_announces_itself_and_stops_on_sigterm(tmp_path: Path) -> None:
    maildir = tmp_path / "mail"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-W",
            "error",
            "-m",
            "handoff.smtp_sink",
            "--port",
            "0",
            "--maildir",
            str(maildir),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], 10)
        assert ready, "the sink printed no announcement within 10 s"
        announcement = json.loads(proc.stdout.readline())
        assert announcement["smtp_host"] == "127.0.0.1"
        assert announcement["maildir"] == str(maildir.resolve())
        with smtplib.SMTP(announcement["smtp_host"], announcement["smtp_port"], timeout=5) as smtp:
            smtp.send_message(_message("from another process"))
        assert [m["Subject"] for m in load_maildir(maildir)] == ["from another process"]
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=5)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, stderr
    assert "Warning" not in stderr and "Traceback" not in stderr, stderr


def test_drop_every_keeps_every_nth_message_and_cuts_its_answer(sink: SmtpSink) -> None:
    sink.drop_every(3)
    outcomes = []
    for n in range(6):
        try:
            with _client(sink) as smtp:
                smtp.send_message(_message(f"m{n}"))
            outcomes.append("answered")
        except smtplib.SMTPServerDisconnected:
            outcomes.append("dropped")
    assert outcomes == ["answered", "answered", "dropped"] * 2
    assert [m["Subject"] for m in sink.messages] == [f"m{n}" for n in range(6)], "all stored"


def test_slow_down_delays_each_answer_to_data(sink: SmtpSink) -> None:
    sink.slow_down(0.3)
    started = time.monotonic()
    code, _ = _data_reply(sink, "slow")
    assert code == 250 and time.monotonic() - started >= 0.3
