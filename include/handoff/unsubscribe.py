"""The one-click unsubscribe endpoint of promotional emails (RFC 8058).

Mail clients POST ``List-Unsubscribe=One-Click`` to the link in the ``List-Unsubscribe``
header; a person who clicks the footer link gets a page with one button (a GET never
unsubscribes, so link scanners in mail gateways cannot opt anyone out). The token is keyed
and stored when the email is sent, so it names no CRM id and cannot be guessed; recording it
stops the contact's promotional steps at once, and the next run writes the CRM's opt-out field.

The app is plain FastAPI: the Airflow plugin serves it on the API server under ``/handoff``.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from html import escape

from fastapi import FastAPI, Query
from fastapi.responses import HTMLResponse

from handoff.state.store import StateStore

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title></head>
<body style="margin:0;padding:32px 16px;background:#f4f5f7;font-family:Helvetica,Arial,sans-serif;
color:#1f2933;"><div style="max-width:480px;margin:0 auto;background:#fff;border-radius:8px;
padding:24px;"><h1 style="font-size:20px;margin:0 0 12px 0;">{title}</h1>{body}</div></body></html>
"""


def _page(title: str, body: str, status: int = 200) -> HTMLResponse:
    return HTMLResponse(PAGE.format(title=escape(title), body=body), status_code=status)


def _masked(email: str) -> str:
    """``ada@example.com`` -> ``a**@example.com``: enough to recognise, not to harvest."""
    name, _, domain = email.partition("@")
    return f"{name[:1]}{'*' * max(len(name) - 1, 2)}@{domain}"


def create_app(open_store: Callable[[], StateStore], company: Callable[[], str]) -> FastAPI:
    """The unsubscribe app; the store is opened on the first request, never at import."""
    app = FastAPI(title="Handoff Autopilot unsubscribe", docs_url=None, redoc_url=None)
    stores: list[StateStore] = []

    def store() -> StateStore:
        if not stores:
            stores.append(open_store())
        return stores[0]

    invalid = (
        "This unsubscribe link is not valid (it may be incomplete). Reply to any of our emails "
        "and we will take you off the list by hand."
    )

    @app.get("/unsubscribe", response_class=HTMLResponse)
    def confirm(t: str = Query("", max_length=64)) -> HTMLResponse:
        found = store().token_owner(t) if t else None
        if found is None:
            return _page("Link not valid", f"<p>{invalid}</p>", 404)
        body = (
            f"<p>Stop occasional emails from {escape(company())} such as invitations and "
            f"referral requests to {escape(_masked(found['email']))}? Your customer success "
            "manager can still write to you about your account.</p>"
            f'<form method="post" action="?t={escape(t)}">'
            '<button type="submit" name="List-Unsubscribe" value="One-Click" '
            'style="font-size:16px;padding:10px 18px;">Unsubscribe</button></form>'
        )
        return _page("Unsubscribe", body)

    @app.post("/unsubscribe", response_class=HTMLResponse)
    def unsubscribe(t: str = Query("", max_length=64)) -> HTMLResponse:
        found = store().opt_out(t, datetime.now(UTC)) if t else None
        if found is None:
            return _page("Link not valid", f"<p>{invalid}</p>", 404)
        return _page(
            "You are unsubscribed",
            f"<p>{escape(_masked(found['email']))} will not receive promotional emails from "
            f"{escape(company())} any more.</p>",
        )

    return app
