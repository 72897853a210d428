"""Headless Chromium for tests: how an HTML page lays out at a phone's or a desktop's width.

One browser process serves many pages over the DevTools protocol (a websocket): each page opens
in a fresh tab at the exact viewport, its console errors come from the protocol's events, and
the layout is measured in the page itself. Starting Chromium takes about a second; a page in a
running browser takes a small fraction of that.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import struct
import subprocess
import tempfile
import time
import zlib
from contextlib import ExitStack, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

# The flags every launch uses: no sandbox (containers), no GPU, and nothing that reaches out to
# the network or depends on a user profile.
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)
PHONE_MAX_WIDTH = 480  # up to this width a page is emulated as a phone (touch, meta viewport)
MEASURE = """JSON.stringify({
  scrollWidth: Math.max(document.documentElement.scrollWidth,
                        document.body ? document.body.scrollWidth : 0),
  scrollHeight: document.documentElement.scrollHeight,
})"""


def chromium_path() -> str | None:
    """Debian's ``chromium`` (or another Chromium build on PATH), or None."""
    for name in ("chromium", "chromium-browser"):
        if path := shutil.which(name):
            return path
    return None


def require_tool(name: str, path: str | None) -> str:
    """The tool's path; a skip when it is missing, a failure where tools are required (CI)."""
    if path:
        return path
    message = f"{name} is not installed"
    if os.environ.get("HANDOFF_REQUIRE_TOOLS") == "1":
        pytest.fail(f"{message}, and HANDOFF_REQUIRE_TOOLS=1 requires it")
    pytest.skip(message)


def require_chromium() -> str:
    return require_tool("chromium", chromium_path())


class ChromiumError(RuntimeError):
    pass


@dataclass(frozen=True)
class Layout:
    """What a page did at one viewport width."""

    width: int
    scroll_width: int
    console_errors: tuple[str, ...]

    @property
    def scrolls_sideways(self) -> bool:
        return self.scroll_width > self.width


class Chromium:
    """A running headless Chromium; use as a context manager, one per test session."""

    def __init__(self, path: str | None = None, *, timeout: float = 20.0) -> None:
        self.path = path or chromium_path()
        if not self.path:
            raise ChromiumError("chromium is not installed")
        self.timeout = timeout
        self._profile = Path(tempfile.mkdtemp(prefix="handoff-chromium-"))
        self._log = (self._profile / "chromium.log").open("wb")
        self._process = subprocess.Popen(
            [
                self.path,
                *FLAGS,
                f"--user-data-dir={self._profile}",
                "--remote-debugging-port=0",
                "about:blank",
            ],
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=self._log,
        )
        self._next_id = 0
        self._events: list[dict[str, Any]] = []
        self._connection = ExitStack()
        try:
            self._socket = self._connection.enter_context(
                connect(self._websocket_url(), max_size=None, open_timeout=timeout)
            )
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> Chromium:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        socket = getattr(self, "_socket", None)
        if socket is not None:
            with suppress(ChromiumError, OSError):  # it is going away either way
                self._call("Browser.close")
            self._connection.close()
            self._socket = None
        try:
            self._process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        self._log.close()
        shutil.rmtree(self._profile, ignore_errors=True)

    def layout(
        self,
        html_file: Path,
        width: int,
        height: int = 900,
        *,
        png: Path | None = None,
        full_page: bool = False,
    ) -> Layout:
        """Open ``html_file`` at ``width`` x ``height``: its layout and console errors, and a
        screenshot written to ``png`` when given (of the viewport, or of the whole page)."""
        target = self._call("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self._call("Target.attachToTarget", {"targetId": target, "flatten": True})[
            "sessionId"
        ]
        try:
            for domain in ("Page", "Runtime", "Log"):
                self._call(f"{domain}.enable", session=session)
            self._call(
                "Emulation.setDeviceMetricsOverride",
                {
                    "width": width,
                    "height": height,
                    "deviceScaleFactor": 1,
                    "mobile": width <= PHONE_MAX_WIDTH,
                },
                session=session,
            )
            self._call("Page.navigate", {"url": Path(html_file).resolve().as_uri()}, session)
            self._wait_for("Page.loadEventFired", session)
            measured = json.loads(
                self._call(
                    "Runtime.evaluate", {"expression": MEASURE, "returnByValue": True}, session
                )["result"]["value"]
            )
            if png is not None:
                options: dict[str, Any] = {"format": "png"}
                if full_page:
                    options["captureBeyondViewport"] = True
                    options["clip"] = {
                        "x": 0,
                        "y": 0,
                        "width": width,
                        "height": max(height, int(measured["scrollHeight"])),
                        "scale": 1,
                    }
                shot = self._call("Page.captureScreenshot", options, session)
                png.parent.mkdir(parents=True, exist_ok=True)
                png.write_bytes(base64.b64decode(shot["data"]))
            errors = tuple(self._console_errors(session))
        finally:
            self._call("Target.closeTarget", {"targetId": target})
            self._events = [e for e in self._events if e.get("sessionId") != session]
        return Layout(width, int(measured["scrollWidth"]), errors)

    def screenshot(
        self, html_file: Path, width: int, height: int, out_png: Path, *, full_page: bool = False
    ) -> Path:
        self.layout(html_file, width, height, png=out_png, full_page=full_page)
        return out_png

    def capture_app(
        self,
        url: str,
        out_png: Path,
        *,
        wait_for_text: str,
        cookies: tuple[dict[str, Any], ...] = (),
        width: int = 1440,
        height: int = 900,
    ) -> str:
        """A screenshot of a web app served over HTTP once its page shows ``wait_for_text``
        (an app renders after load); returns the page's text."""
        target = self._call("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self._call("Target.attachToTarget", {"targetId": target, "flatten": True})[
            "sessionId"
        ]
        read_text = {"expression": "document.body ? document.body.innerText : ''"}
        try:
            for domain in ("Page", "Runtime", "Network"):
                self._call(f"{domain}.enable", session=session)
            self._call(
                "Emulation.setDeviceMetricsOverride",
                {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False},
                session=session,
            )
            for cookie in cookies:
                self._call("Network.setCookie", {"url": url, **cookie}, session)
            self._call("Page.navigate", {"url": url}, session)
            deadline = time.monotonic() + self.timeout
            text = ""
            while wait_for_text not in text:
                if time.monotonic() > deadline:
                    raise ChromiumError(f"{url} never showed {wait_for_text!r}: {text[:500]!r}")
                time.sleep(0.25)
                text = self._call("Runtime.evaluate", read_text, session)["result"]["value"]
            time.sleep(1.0)  # the last requests of the page settle (counts, icons)
            shot = self._call("Page.captureScreenshot", {"format": "png"}, session)
            out_png.parent.mkdir(parents=True, exist_ok=True)
            out_png.write_bytes(base64.b64decode(shot["data"]))
            return self._call("Runtime.evaluate", read_text, session)["result"]["value"]
        finally:
            self._call("Target.closeTarget", {"targetId": target})
            self._events = [e for e in self._events if e.get("sessionId") != session]

    # -- the DevTools protocol -------------------------------------------------------------------

    def _websocket_url(self) -> str:
        """Chromium writes its chosen port and browser path to DevToolsActivePort once up."""
        marker = self._profile / "DevToolsActivePort"
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise ChromiumError(f"chromium exited at start: {self._log_tail()}")
            lines = marker.read_text().split() if marker.exists() else []
            if len(lines) == 2:
                return f"ws://127.0.0.1:{lines[0]}{lines[1]}"
            time.sleep(0.02)
        raise ChromiumError(f"chromium did not open its DevTools port: {self._log_tail()}")

    def _call(self, method: str, params: dict | None = None, session: str | None = None) -> dict:
        self._next_id += 1
        request: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            request["sessionId"] = session
        self._socket.send(json.dumps(request))
        while True:
            message = self._receive()
            if message.get("id") == self._next_id:
                if "error" in message:
                    raise ChromiumError(f"{method}: {message['error']}")
                return message.get("result", {})
            if "method" in message:
                self._events.append(message)

    def _wait_for(self, event: str, session: str) -> None:
        while True:
            for message in self._events:
                if message["method"] == event and message.get("sessionId") == session:
                    return
            message = self._receive()
            if "method" in message:
                self._events.append(message)

    def _receive(self) -> dict[str, Any]:
        try:
            return json.loads(self._socket.recv(timeout=self.timeout))
        except TimeoutError as exc:
            raise ChromiumError(f"no answer from chromium in {self.timeout} s") from exc
        except ConnectionClosed as exc:
            raise ChromiumError(f"chromium closed the connection: {self._log_tail()}") from exc

    def _console_errors(self, session: str) -> list[str]:
        errors = []
        for message in self._events:
            if message.get("sessionId") != session:
                continue
            params = message["params"]
            if message["method"] == "Runtime.exceptionThrown":
                details = params["exceptionDetails"]
                errors.append(details.get("exception", {}).get("description") or details["text"])
            elif message["method"] == "Runtime.consoleAPICalled" and params["type"] in (
                "error",
                "assert",
            ):
                errors.append(
                    " ".join(str(a.get("value", a.get("description"))) for a in params["args"])
                )
            elif message["method"] == "Log.entryAdded" and params["entry"]["level"] == "error":
                errors.append(params["entry"]["text"])
        return errors

    def _log_tail(self) -> str:
        self._log.flush()
        return (self._profile / "chromium.log").read_text(errors="replace")[-2000:]


def measure(html_file: Path, width: int, height: int = 900) -> Layout:
    """One page's layout and console errors, in a browser started for it."""
    with Chromium() as browser:
        return browser.layout(html_file, width, height)


def screenshot(
    html_file: Path, width: int, height: int, out_png: Path, *, full_page: bool = False
) -> Path:
    """A PNG of the page at ``width`` (its first ``height`` pixels, or all of it), in a browser
    started for it."""
    with Chromium() as browser:
        return browser.screenshot(html_file, width, height, out_png, full_page=full_page)


# -- PNG ------------------------------------------------------------------------------------------

_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}  # PNG colour type -> bytes per pixel at 8 bits


def is_blank(png_path: Path) -> bool:
    """True when every pixel of the PNG has the same colour (a page that rendered nothing).

    PNG rows are stored filtered; instead of decoding every pixel in Python, each row is
    compared with what that row's filter makes of a row of the first pixel's colour. Decoding is
    a bijection, so the rows all match exactly when the image is that one colour.
    """
    data = Path(png_path).read_bytes()
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError(f"{png_path} is not a PNG")
    position, header, idat = 8, b"", []
    while position < len(data):
        (length,) = struct.unpack(">I", data[position : position + 4])
        kind = data[position + 4 : position + 8]
        body = data[position + 8 : position + 8 + length]
        if kind == b"IHDR":
            header = body
        elif kind == b"IDAT":
            idat.append(body)
        position += 12 + length
    width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", header)
    if depth != 8 or interlace or colour not in _CHANNELS:
        raise ValueError(f"{png_path}: only 8-bit, non-interlaced PNGs are read here")
    bpp = _CHANNELS[colour]
    raw = zlib.decompress(b"".join(idat))
    stride = 1 + width * bpp
    pixel = raw[1 : 1 + bpp]  # whatever the filter, the first pixel of the first row is raw
    half = bytes((b - b // 2) % 256 for b in pixel)
    rest = bpp * (width - 1)
    solid = pixel * width
    first = {  # row 0: the row above counts as zeros
        0: solid,
        1: pixel + bytes(rest),
        2: solid,
        3: pixel + half * (width - 1),
        4: pixel + bytes(rest),
    }
    later = {  # every other row: the row above is the same solid row
        0: solid,
        1: pixel + bytes(rest),
        2: bytes(width * bpp),
        3: half + bytes(rest),
        4: bytes(width * bpp),
    }
    for row in range(height):
        line = raw[row * stride : (row + 1) * stride]
        expected = (first if row == 0 else later).get(line[0])
        if expected is None or line[1:] != expected:
            return False
    return True
