"""The handoff run, step by step: extract -> detect -> plan -> send emails -> write tasks ->
summarise. Each step is a transaction over the state store, safe to re-run for the same window:
the DAG calls these functions and nothing else.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable
from contextlib import AbstractContextManager, ExitStack
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
from more_itertools import chunked

from handoff.config import Settings
from handoff.crm.base import CrmClient
from handoff.emails import EmailRenderer
from handoff.mail import (
    MailTransport,
    PermanentMailError,
    Unsubscribe,
    build_message,
    classify,
    message_id,
    write_copy,
)
from handoff.models import ActionKind, ActionStatus, Contact, Deal, DealIssue, Person
from handoff.planning import plan_deal, task_from_payload
from handoff.state.store import StateStore

log = logging.getLogger(__name__)

DEALS_STREAM = "deals"
TASK_BATCH = 200


@dataclass(frozen=True)
class RunContext:
    """Who is running and for which window: everything a step needs besides its clients."""

    run_id: str
    window_end: datetime
    worker: str  # stable across retries of one task instance: "<dag>/<run>/<task>"

    def run_folder(self, settings: Settings) -> Path:
        return settings.output.run_dir / safe_name(self.run_id)


def safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "run"


# -- extract -----------------------------------------------------------------------------------


def extract_changes(
    crm: CrmClient, store: StateStore, settings: Settings, window_end: datetime
) -> dict[str, int]:
    """Pull deals changed since the watermark into the store, page by page.

    The boundary rule: read ``>= watermark - overlap``; a row whose (id, SystemModstamp) is
    already stored is dropped. The watermark moves with each committed page, so a crash resumes
    where it stopped.
    """
    detection = settings.detection
    window_start = window_end - timedelta(days=detection.lookback_days)
    watermark = store.get_watermark(crm.source, DEALS_STREAM)
    since = (
        watermark - timedelta(seconds=detection.extract_overlap_seconds)
        if watermark
        else window_start
    )
    calls_before = crm.api_calls
    read = changed = 0
    for page in crm.iter_changed_deals(since, window_end):
        read += len(page)
        stored = store.stored_modstamps(crm.source, page["deal_id"].tolist())
        known = page["deal_id"].map(stored)
        fresh = page[known.isna() | (pd.to_datetime(known, utc=True) != page["modstamp"])]
        needs_contact = fresh[
            fresh["is_won"] & ~fresh["is_deleted"] & (fresh["won_at"] >= window_start)
        ]
        contacts = crm.primary_contacts(needs_contact["deal_id"].tolist())
        rows = [
            _deal_row(crm, record, contacts.get(record["deal_id"]))
            for record in fresh.to_dict("records")
        ]
        newest = page["modstamp"].max().to_pydatetime()
        if watermark is not None:
            newest = max(newest, watermark)
        store.save_deals(crm.source, DEALS_STREAM, rows, newest)
        watermark = newest
        changed += len(rows)
    calls = crm.api_calls - calls_before
    log.info("Read %s deals since %s, %s new or changed, %s API calls", read, since, changed, calls)
    return {"deals_read": read, "deals_changed": changed, "api_calls": calls}


def _deal_row(crm: CrmClient, record: dict[str, Any], contact: Contact | None) -> dict[str, Any]:
    def person(prefix: str) -> Person | None:
        if not record.get(f"{prefix}_id"):
            return None
        return Person(
            id=record[f"{prefix}_id"],
            name=record.get(f"{prefix}_name") or "",
            email=record.get(f"{prefix}_email"),
            is_active=record.get(f"{prefix}_active") is not False,
        )

    won_at = record["won_at"]
    won_at = None if pd.isna(won_at) else won_at.to_pydatetime()
    amount = record["amount"]
    deal = Deal(
        source=crm.source,
        deal_id=record["deal_id"],
        name=record["name"] or "",
        account_name=record.get("account_name"),
        stage=record["stage"] or "",
        is_won=bool(record["is_won"]),
        is_deleted=bool(record["is_deleted"]),
        amount=None if pd.isna(amount) else float(amount),
        close_date=None if pd.isna(record["close_date"]) else record["close_date"],
        won_at=won_at,
        owner=person("owner"),
        csm=person("csm"),
        primary_contact=contact,
        handoff_doc={key: record.get(f"doc_{key}") for key in crm.handoff_fields},
    )
    return {
        "deal_id": deal.deal_id,
        "is_won": deal.is_won,
        "is_deleted": deal.is_deleted,
        "stage": deal.stage,
        "amount": deal.amount,
        "close_date": deal.close_date,
        "won_at": won_at,
        "modstamp": record["modstamp"].to_pydatetime(),
        "record": deal.to_record(),
    }


# -- detect ------------------------------------------------------------------------------------


def detect_new_wins(
    store: StateStore, settings: Settings, source: str, run: RunContext
) -> dict[str, int]:
    """Deals that became Closed Won inside the look-back window and were never onboarded.

    Deals that left Closed Won (re-opened, lost, deleted) stop: their pending steps are
    cancelled. Wins older than the window are counted, never mailed.
    """
    window_start = run.window_end - timedelta(days=settings.detection.lookback_days)
    stopped = store.stop_onboarding_of_lost_deals(source, run.run_id)
    store.start_onboarding(source, window_start, run.window_end, run.run_id)
    detected = store.onboarding_rows(source=source, detected_run=run.run_id)
    older = store.count_won_before(source, window_start)
    log.info(
        "%s new Closed Won deals, %s stopped, %s won before %s ignored",
        len(detected),
        len(stopped),
        older,
        window_start,
    )
    return {"new_deals": len(detected), "stopped_deals": len(stopped), "older_wins": older}


# -- plan --------------------------------------------------------------------------------------


def plan_actions(
    store: StateStore, settings: Settings, source: str, run: RunContext
) -> dict[str, int]:
    """Turn each detected deal into outbox actions (once: dedupe keys are unique)."""
    deal_ids = store.deals_to_plan(source)
    records = store.deal_records(source, deal_ids)
    planned = unplannable = 0
    for deal_id in deal_ids:
        try:
            deal = Deal.from_record(records[deal_id])
            actions, issues = plan_deal(deal, settings)
        except Exception as exc:  # one deal's bad data must not hold up the others
            unplannable += 1
            reason = f"deal {deal_id}: could not be planned ({type(exc).__name__}: {exc}); "
            reason += "it stays detected and is tried again on the next run"
            log.error("%s", reason)
            store.record_issue(
                DealIssue(source, deal_id, "record", "plan_error", reason), run.run_id
            )
            continue
        planned += store.record_plan(source, deal_id, actions, issues, run.run_id)
        for issue in issues:
            log.warning("%s", issue.reason)
    log.info("Planned %s actions for %s deals", planned, len(deal_ids) - unplannable)
    return {
        "deals_planned": len(deal_ids) - unplannable,
        "deals_unplannable": unplannable,
        "actions_planned": planned,
    }


# -- send emails -------------------------------------------------------------------------------


def send_emails(
    store: StateStore,
    settings: Settings,
    open_transport: Callable[[], AbstractContextManager[MailTransport]],
    run: RunContext,
    *,
    sent_at: datetime | None = None,
) -> dict[str, int]:
    """Send every pending email once, over one SMTP connection.

    Each message is recorded right after the server accepts it. A transient failure puts the
    unsent messages back to pending and raises, so the task's retry continues where it stopped.
    A message left in flight by a crashed attempt may have gone out: it is marked
    ``unconfirmed``, never re-sent.
    """
    claimed, orphaned = store.claim(ActionKind.EMAIL, run.worker)
    for row in orphaned:
        reason = (
            f"{deal_label(row)}: the attempt sending {row['step']} stopped before recording "
            "the result, so it may have been delivered and is not re-sent; look for Message-ID "
            f"{message_id(row['dedupe_key'], row['payload']['from']['email'])} in the SMTP "
            "server's log and send it by hand if it is absent"
        )
        log.warning("%s", reason)
        store.finish(
            row["dedupe_key"], run.worker, ActionStatus.UNCONFIRMED, run.run_id, reason=reason
        )
    counts = {"emails_sent": 0, "emails_failed": 0, "emails_unconfirmed": len(orphaned)}
    if not claimed:
        return counts
    renderer = EmailRenderer(
        settings.output.templates_dir,
        common={
            "unsubscribe_url": settings.unsubscribe.url,
            "unsubscribe_mailto": str(settings.unsubscribe.mailto),
        },
    )
    unsubscribe = Unsubscribe(str(settings.unsubscribe.mailto), settings.unsubscribe.url)
    folder = run.run_folder(settings) / "emails"
    sent_at = sent_at or datetime.now(UTC)

    def fail(row: dict[str, Any], reason: str, external_id: str | None = None) -> None:
        store.finish(
            row["dedupe_key"],
            run.worker,
            ActionStatus.FAILED,
            run.run_id,
            external_id=external_id,
            reason=reason,
        )
        counts["emails_failed"] += 1
        log.error("%s", reason)

    with ExitStack() as stack:
        try:
            transport = stack.enter_context(open_transport())
        except Exception as exc:
            _release(store, claimed, run)
            raise classify(exc) from exc
        for index, row in enumerate(claimed):
            key, payload = row["dedupe_key"], row["payload"]
            try:
                rendered = renderer.render(payload["template"], payload["context"])
                message = build_message(
                    payload, rendered, dedupe_key=key, unsubscribe=unsubscribe, sent_at=sent_at
                )
            except Exception as exc:  # a template or data defect: record it, go on
                fail(row, f"{deal_label(row)}: {row['step']} could not be rendered: {exc}")
                continue
            try:
                refused = transport.send(message)
            except Exception as exc:
                error = classify(exc)
                if isinstance(error, PermanentMailError):
                    fail(
                        row,
                        f"{deal_label(row)}: the SMTP server refused {row['step']}: {error}",
                        message["Message-ID"],
                    )
                    continue
                _release(store, claimed[index:], run)
                raise error from exc
            # The server accepted the message: this row is never released again.
            try:
                _record_sent(store, run, row, message, refused, counts)
            except Exception:
                _release(store, claimed[index + 1 :], run)
                raise
            try:
                write_copy(message, folder, f"{safe_name(row['deal_id'])}-{row['step']}")
            except OSError as exc:
                log.warning("Could not keep a copy of %s: %s", message["Message-ID"], exc)
    return counts


def _record_sent(store, run, row, message, refused, counts) -> None:
    client = row["payload"]["to"]["email"]
    if any(address.lower() == client.lower() for address in refused):
        reason = f"{deal_label(row)}: the client address {client} was refused: {refused}"
        status = ActionStatus.FAILED
        counts["emails_failed"] += 1
    else:
        reason = f"some Cc recipients were refused: {refused}" if refused else None
        status = ActionStatus.DONE
        counts["emails_sent"] += 1
        log.info("Sent %s to %s as %s", row["step"], client, message["Message-ID"])
    store.finish(
        row["dedupe_key"],
        run.worker,
        status,
        run.run_id,
        external_id=message["Message-ID"],
        reason=reason,
    )


def deal_label(row: dict[str, Any]) -> str:
    """How an outbox row names its deal in a reason: id and name, as the planner wrote it."""
    return row["payload"].get("deal_label") or f"deal {row['deal_id']}"


def _release(store: StateStore, rows: list[dict[str, Any]], run: RunContext) -> None:
    if rows:
        store.finish_many(
            [{"dedupe_key": r["dedupe_key"], "status": ActionStatus.PENDING} for r in rows],
            run.worker,
            run.run_id,
        )


# -- write tasks -------------------------------------------------------------------------------


def write_tasks(crm: CrmClient, store: StateStore, run: RunContext) -> dict[str, int]:
    """Create every pending CRM task once, in batches of 200.

    Before writing, tasks left in flight by an attempt that died are looked up in the CRM by
    their dedupe key; found ones are recorded, the rest are written now. A batch that fails as a
    whole stays in flight and the error propagates: the retry reconciles it the same way.
    """
    calls_before = crm.api_calls
    claimed, orphaned = store.claim(ActionKind.TASK, run.worker)
    counts = {"tasks_created": 0, "tasks_failed": 0, "tasks_reconciled": 0}
    if orphaned:
        found = crm.find_tasks([task_from_payload(r["payload"]) for r in orphaned])
        store.finish_many(
            [
                {
                    "dedupe_key": key,
                    "status": ActionStatus.DONE,
                    "external_id": task_id,
                    "reason": "found in the CRM after an interrupted attempt",
                }
                for key, task_id in found.items()
            ],
            run.worker,
            run.run_id,
        )
        counts["tasks_reconciled"] = len(found)
        claimed = [r for r in orphaned if r["dedupe_key"] not in found] + claimed
    batches = [list(batch) for batch in chunked(claimed, TASK_BATCH)]
    for index, batch in enumerate(batches):
        try:
            results = crm.create_tasks([task_from_payload(r["payload"]) for r in batch])
        except Exception:
            # This batch's outcome is unknown (left in flight for reconciliation); later
            # batches were never sent.
            _release(store, [r for later in batches[index + 1 :] for r in later], run)
            raise
        outcomes = []
        for row, result in zip(batch, results, strict=True):
            if result.ok:
                counts["tasks_created"] += 1
                outcomes.append(
                    {
                        "dedupe_key": result.dedupe_key,
                        "status": ActionStatus.DONE,
                        "external_id": result.external_id,
                    }
                )
            else:
                counts["tasks_failed"] += 1
                reason = f"{deal_label(row)}: {row['step']}: the CRM refused it: {result.error}"
                log.error("%s", reason)
                outcomes.append(
                    {
                        "dedupe_key": result.dedupe_key,
                        "status": ActionStatus.FAILED,
                        "reason": reason,
                    }
                )
        store.finish_many(outcomes, run.worker, run.run_id)
    counts["api_calls"] = crm.api_calls - calls_before
    return counts


# -- summarise ---------------------------------------------------------------------------------


def summarise(
    store: StateStore, settings: Settings, source: str, run: RunContext, api_calls: int
) -> dict[str, Any]:
    """What this run did, from the store (so a re-run reports only its own effects)."""
    detected = store.onboarding_rows(source=source, detected_run=run.run_id)
    records = store.deal_records(source, [row["deal_id"] for row in detected])
    finished = store.actions(finished_run=run.run_id)
    folder = run.run_folder(settings)
    emails_dir = folder / "emails"

    def describe(row: dict[str, Any]) -> dict[str, Any]:
        item = {"deal_id": row["deal_id"], "step": row["step"], "status": row["status"]}
        if row["reason"]:
            item["reason"] = row["reason"]
        if row["external_id"]:
            item["external_id"] = row["external_id"]
        if row["kind"] == ActionKind.EMAIL and row["status"] == ActionStatus.DONE:
            item["to"] = row["payload"]["to"]["email"]
            item["preview"] = str(emails_dir / f"{safe_name(row['deal_id'])}-{row['step']}.html")
        return item

    def of(kind: ActionKind, status: ActionStatus) -> list[dict[str, Any]]:
        return [describe(r) for r in finished if r["kind"] == kind and r["status"] == status]

    problems = [
        describe(r)
        for r in finished
        if r["status"]
        in (
            ActionStatus.SKIPPED,
            ActionStatus.FAILED,
            ActionStatus.UNCONFIRMED,
            ActionStatus.CANCELLED,
        )
    ]
    summary = {
        "run_id": run.run_id,
        "source": source,
        "window_end": run.window_end.isoformat(),
        "new_deals": [
            {
                "deal_id": row["deal_id"],
                "name": records.get(row["deal_id"], {}).get("name"),
                "account": records.get(row["deal_id"], {}).get("account_name"),
                "won_at": row["won_at"].isoformat(),
            }
            for row in detected
        ],
        "emails": of(ActionKind.EMAIL, ActionStatus.DONE),
        "tasks": of(ActionKind.TASK, ActionStatus.DONE),
        "problems": problems,
        "issues": [
            {"deal_id": i["deal_id"], "field": i["field"], "reason": i["reason"]}
            for i in store.issues(run_id=run.run_id)
        ],
        "emails_sent": len(of(ActionKind.EMAIL, ActionStatus.DONE)),
        "tasks_created": len(of(ActionKind.TASK, ActionStatus.DONE)),
        "skipped": sum(1 for r in finished if r["status"] == ActionStatus.SKIPPED),
        "failed": sum(1 for r in finished if r["status"] == ActionStatus.FAILED),
        "api_calls": api_calls,
        "run_folder": str(folder),
    }
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    return summary


def format_summary(summary: dict[str, Any]) -> str:
    """The readable report the demo and ``handoff run`` print (the JSON line comes after)."""
    lines = [f"Handoff run {summary['run_id']} ({summary['source']})", ""]
    lines.append(f"New Closed Won deals: {len(summary['new_deals'])}")
    lines += [f"  - {d['name']} [{d['deal_id']}], won {d['won_at']}" for d in summary["new_deals"]]
    lines.append(f"Emails sent: {summary['emails_sent']}")
    lines += [f"  - {e['step']} to {e['to']}  preview: {e['preview']}" for e in summary["emails"]]
    lines.append(f"CRM tasks created: {summary['tasks_created']}")
    lines += [f"  - {t['step']} for {t['deal_id']} -> {t['external_id']}" for t in summary["tasks"]]
    lines.append(f"Skipped / failed / held: {len(summary['problems'])}")
    lines += [f"  - [{p['status']}] {p['reason']}" for p in summary["problems"]]
    if summary["issues"]:
        lines.append(f"Data issues: {len(summary['issues'])}")
        lines += [f"  - {i['reason']}" for i in summary["issues"]]
    lines.append(f"CRM API calls: {summary['api_calls']}   Run folder: {summary['run_folder']}")
    return "\n".join(lines)


def summary_line(summary: dict[str, Any]) -> str:
    keys = ("emails_sent", "tasks_created", "skipped", "failed", "api_calls")
    return json.dumps(
        {
            "run_id": summary["run_id"],
            **{k: summary[k] for k in keys},
            "new_deals": len(summary["new_deals"]),
        }
    )
