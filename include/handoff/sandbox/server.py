"""Run the sandbox CRM over HTTP: in a background thread (tests) or blocking (CLI).

uvicorn serves the Starlette app on 127.0.0.1 so the real client libraries talk
to it over a socket exactly as they would to Salesforce; the store is a local
SQLite file, so a run can be inspected or resumed after the server stops. The same
port also serves the HubSpot API subset (``/crm/...``, ``/oauth/...``) over the
portal's tables in the same file, so one sandbox stands in for either CRM.
"""

from __future__ import annotations

import json
import logging
import signal
import socket
import sys
import threading
import time
from datetime import UTC, date, datetime
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any

import uvicorn
from starlette.types import ASGIApp, Receive, Scope, Send

from handoff.sandbox.faults import FaultPlan
from handoff.sandbox.hubspot_api import HUBSPOT_PATH_PREFIXES, HubSpotLimits, create_hubspot_app
from handoff.sandbox.hubspot_seed import seed_portal
from handoff.sandbox.hubspot_store import HubSpotStore
from handoff.sandbox.salesforce_api import create_app
from handoff.sandbox.seed import seed_org
from handoff.sandbox.store import SandboxStore

__all__ = ["SandboxServer", "serve"]

log = logging.getLogger(__name__)

_START_TIMEOUT = 5.0


class _CrmRouter:
    """One port for both CRMs: HubSpot's paths go to its app, all else to Salesforce's."""

    def __init__(self, salesforce: ASGIApp, hubspot: ASGIApp) -> None:
        self.salesforce = salesforce
        self.hubspot = hubspot

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "") if scope["type"] == "http" else ""
        app = self.hubspot if path.startswith(HUBSPOT_PATH_PREFIXES) else self.salesforce
        await app(scope, receive, send)


class SandboxServer:
    """The sandbox CRM served by uvicorn in a background thread; use as a context manager.

    ``port=0`` binds a free port first, so ``.url`` is known before the server
    starts and parallel test runs never collide. The HubSpot API is served at the same
    ``.url`` with the same token, over ``hubspot_store`` (by default a HubSpotStore on
    the same file); ``hubspot_limits`` sets its rate limits (see HubSpotLimits).
    """

    def __init__(
        self,
        db_path: str | Path,
        *,
        token: str = "sandbox-token",
        host: str = "127.0.0.1",
        port: int = 0,
        store: SandboxStore | None = None,
        hubspot_store: HubSpotStore | None = None,
        hubspot_limits: HubSpotLimits | None = None,
    ) -> None:
        self.db_path = Path(db_path)
        self.token = token
        self.host = host
        self.store = store or SandboxStore(self.db_path)
        self._owns_store = store is None
        self.faults = FaultPlan()
        self.app = create_app(self.store, token=token, faults=self.faults)
        self.hubspot_store = hubspot_store or HubSpotStore(self.db_path)
        self._owns_hubspot_store = hubspot_store is None
        self.hubspot_app = create_hubspot_app(
            self.hubspot_store, token=token, faults=self.faults, limits=hubspot_limits
        )
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._socket.bind((host, port))
        self.port: int = self._socket.getsockname()[1]
        self.url = f"http://{host}:{self.port}"
        config = uvicorn.Config(
            _CrmRouter(self.app, self.hubspot_app),
            log_level="warning",
            lifespan="off",
            access_log=False,
            timeout_keep_alive=5,
        )
        self._server = uvicorn.Server(config)
        self._thread: threading.Thread | None = None

    @property
    def api(self) -> Any:
        """The request handler object (API call counters live here)."""
        return self.app.state.sandbox_api

    def stats(self) -> dict[str, Any]:
        """API call counts so far, as ``GET /__sandbox__/stats`` reports them."""
        return self.api.stats()

    @property
    def hubspot_api(self) -> Any:
        """The HubSpot request handler (its counters, and ``.limits`` to change on the fly)."""
        return self.hubspot_app.state.hubspot_api

    def hubspot_stats(self) -> dict[str, Any]:
        """HubSpot API call counts, as ``GET /__sandbox__/hubspot/stats`` reports them."""
        return self.hubspot_api.stats()

    def start(self) -> SandboxServer:
        """Start serving and wait until the socket accepts requests."""
        if self._thread is not None:
            return self
        self._thread = threading.Thread(
            target=self._server.run,
            kwargs={"sockets": [self._socket]},
            name=f"sandbox-crm-{self.port}",
            daemon=True,
        )
        self._thread.start()
        deadline = time.monotonic() + _START_TIMEOUT
        while not self._server.started:
            if not self._thread.is_alive():
                raise RuntimeError("sandbox CRM server thread died during start-up")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"sandbox CRM did not start within {_START_TIMEOUT} s")
            time.sleep(0.01)
        log.info("Sandbox CRM listening on %s", self.url)
        return self

    def stop(self) -> None:
        """Stop serving, join the thread and close the store (idempotent)."""
        if self._thread is not None:
            self._server.should_exit = True
            self._thread.join(timeout=10)
            if self._thread.is_alive():
                self._server.force_exit = True
                self._thread.join(timeout=5)
            self._thread = None
        self._socket.close()
        if self._owns_store:
            self.store.close()
            self._owns_store = False
        if self._owns_hubspot_store:
            self.hubspot_store.close()
            self._owns_hubspot_store = False

    def __enter__(self) -> SandboxServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


def serve(
    db_path: str | Path,
    *,
    seed: int = 7,
    deals: int = 60,
    today: date | None = None,
    host: str = "127.0.0.1",
    port: int = 0,
    token: str = "sandbox-token",
    reset: bool = False,
) -> None:
    """Serve the sandbox CRM until SIGTERM/SIGINT (the ``handoff sandbox`` command).

    Seeds the org (and the HubSpot portal) when ``reset`` is asked or the database is
    empty, prints one JSON line ``{"salesforce_url", "token", "db"}`` on stdout once
    listening (the HubSpot API answers at the same URL), then blocks.
    """
    path = Path(db_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    store = SandboxStore(path)
    hubspot_store = HubSpotStore(path)
    try:
        if reset or store.is_empty():
            store.reset()
            summary = seed_org(
                store, seed=seed, deals=deals, today=today or datetime.now(UTC).date()
            )
            log.info("Seeded %s: %s", path, summary)
        if reset or hubspot_store.is_empty():
            hubspot_store.reset()
            summary = seed_portal(
                hubspot_store, seed=seed, deals=deals, today=today or datetime.now(UTC).date()
            )
            log.info("Seeded the HubSpot portal in %s: %s", path, summary)
        stop = threading.Event()

        def on_signal(signum: int, frame: FrameType | None) -> None:
            stop.set()

        previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            with SandboxServer(
                path, token=token, host=host, port=port, store=store, hubspot_store=hubspot_store
            ) as server:
                line = {"salesforce_url": server.url, "token": token, "db": str(path)}
                sys.stdout.write(json.dumps(line) + "\n")
                sys.stdout.flush()
                while not stop.wait(0.5):
                    pass
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
    finally:
        store.close()
        hubspot_store.close()
