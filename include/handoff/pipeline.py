"""The handoff run, step by step: extract -> detect -> plan -> send emails -> write tasks ->
summarise. Each step is a transaction over the state store, safe to re-run for the same window:
the DAG calls these functions and nothing else.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Callable, Collection
from contextlib import AbstractContextManager, ExitStack, suppress
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

import pandas as pd
from jinja2 import TemplateError
from more_itertools import chunked

from handoff.config import Settings
from handoff.crm.base import CrmClient, CrmFatalError, CrmUnavailable, WriteOutcomeUnknown
from handoff.email_context import ClientEmailContext
from handoff.emails import EmailRenderer
from handoff.errors import ConfigError, StoreMismatchError
from handoff.mail import (
    LostClaim,
    MailOutcomeUnknown,
    MailTransport,
    PermanentMailError,
    TransientMailError,
    build_message,
    classify,
    message_id,
    unsubscribe_headers,
    unsubscribe_token,
    write_copy,
)
from handoff.models import (
    ActionKind,
    ActionStatus,
    Deal,
    OutboxRow,
    Person,
    WriteResult,
)
from handoff.planning import People, Resolution, resolve, task_from_payload
from handoff.redflags.escalation import TEMPLATE as ESCALATION_TEMPLATE
from handoff.redflags.escalation import (
    InternalAlertContext,
    is_escalation,
    resolve_escalation,
)
from handoff.redflags.steps import evaluate_red_flags, extract_activities
from handoff.schedule import plan_due_steps
from handoff.schedule import record as record_plan
from handoff.state.redflag_store import RedFlagStore
from handoff.state.store import Since, StateStore

log = logging.getLogger(__name__)

DEALS_STREAM = "deals"


@dataclass(frozen=True)
class RunContext:
    """Who is running and for which window: everything a step needs besides its clients."""

    run_id: str
    window_end: datetime
    worker: str  # "<dag>/<run>/<task>#<try>": one claimer per try of a task instance
    # Each DAG's runs get a folder of their own: two CRMs' scheduled runs share run ids.
    dag_id: str | None = None

    def run_folder(self, settings: Settings) -> Path:
        return run_folder(settings, self.dag_id, self.run_id)


def run_folder(settings: Settings, dag_id: str | None, run_id: str) -> Path:
    """Where a run's files go: ``<run_dir>/<dag id>/<run id>`` in the shared storage."""
    base = settings.output.run_dir / safe_name(dag_id) if dag_id else settings.output.run_dir
    return base / safe_name(run_id)


def safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "run"


# -- extract -----------------------------------------------------------------------------------


def extract_changes(
    crm: CrmClient, store: StateStore, settings: Settings, window_end: datetime
) -> dict[str, int]:
    """Pull deals changed since the watermark into the store, page by page.

    Contacts are not read here: the primary contact of a deal is re-read right before one of
    its steps goes out (``refresh_contacts``), the only moment it matters.

    The boundary rule: read ``>= watermark - overlap``; a row whose (id, SystemModstamp) is
    already stored is dropped. The watermark moves with each committed page, so a crash resumes
    where it stopped.
    """
    detection = settings.detection
    # A first extraction reads the look-back window (the whole playbook when adopting clients
    # in progress).
    window_start = window_end - timedelta(days=detection.lookback_days)
    if detection.adopt_clients_in_progress:
        window_start = min(window_start, window_end - settings.plan.last_moment)
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
        rows = [_deal_row(crm, record) for record in fresh.to_dict("records")]
        newest = page["modstamp"].max().to_pydatetime()
        if watermark is not None:
            newest = max(newest, watermark)
        store.save_deals(crm.source, DEALS_STREAM, rows, newest)
        watermark = newest
        changed += len(rows)
    calls = crm.api_calls - calls_before
    log.info("Read %s deals since %s, %s new or changed, %s API calls", read, since, changed, calls)
    return {"deals_read": read, "deals_changed": changed, "api_calls": calls}


def _deal_row(crm: CrmClient, record: dict[str, Any]) -> dict[str, Any]:
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
        account_owner=person("account_owner"),
        handoff_doc={key: record.get(f"doc_{key}") for key in crm.handoff_fields},
        deal_type=record.get("deal_type"),
        account_time_zone=record.get("account_time_zone"),
        account_country=record.get("account_country"),
        scope_change=_flag(record.get("scope_change")),
    )
    return snapshot_row(deal, record["modstamp"].to_pydatetime())


def _flag(value: Any) -> bool | None:
    """A CRM checkbox as read: True, False, or None when the org has no such field."""
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return None
    if isinstance(value, str):
        return value.strip().lower() in {"true", "yes", "1"}
    return bool(value)


def snapshot_row(deal: Deal, modstamp: datetime) -> dict[str, Any]:
    """A deal as the store keeps it: the columns queries filter on, and the whole record."""
    return {
        "deal_id": deal.deal_id,
        "is_won": deal.is_won,
        "is_deleted": deal.is_deleted,
        "stage": deal.stage,
        "amount": deal.amount,
        "close_date": deal.close_date,
        "won_at": deal.won_at,
        "modstamp": modstamp,
        "record": deal.to_record(),
    }


# -- detect ------------------------------------------------------------------------------------


def detect_new_wins(
    store: StateStore, settings: Settings, crm: CrmClient, run: RunContext
) -> dict[str, int]:
    """Start onboarding the deals that became Closed Won and were never onboarded.

    The look-back window protects the first install only: wins before it are left alone (or,
    with ``adopt_clients_in_progress``, taken on for their remaining steps). After that, every
    new win is onboarded, however late it is found, and gets the steps still sensible. Deals
    that left Closed Won stop (their waiting steps are cancelled); deals won again continue.
    A store that has never planned anything first checks that the CRM holds none of our tasks
    for these deals: if it does, this store is not the one that onboarded them.
    """
    source = crm.source
    since = _last_detection(store, source)
    # Read before anything is looked at: a mark is cleared at the end only if no save moved it.
    seen = store.detection_due(source)
    stopped = store.stop_onboarding_of_lost_deals(source, run.run_id, since)
    resumed = store.resume_rewon_deals(source, run.run_id, run.window_end)
    calls_before = crm.api_calls
    start = onboarding_start(store, settings, source, run.window_end)
    if store.is_fresh():
        # Only the wins this run would welcome: clients adopted in progress get no day-0 step
        # (and in an org with our tasks on them, adopting is what taking over means).
        welcomed_from = max(start.won_from, start.adopt_before or start.won_from)
        _refuse_a_store_that_missed_our_history(store, crm, welcomed_from, run.window_end)
    start.remember(store)
    detected = store.start_onboarding(
        source,
        start.won_from,
        run.window_end,
        run.run_id,
        adopt_before=start.adopt_before,
        adopted_at=start.adopted_at,
        since=since,
    )
    _remember_detection(store, source, run.window_end, since)
    store.clear_detection_due(source, seen)
    # Counted on the first run only: the backlog a first install leaves alone, by design.
    older = store.count_won_before(source, start.won_from) if start.is_new else None
    log.info(
        "%s new Closed Won deals, %s stopped, %s won again, %s won before %s ignored",
        len(detected),
        len(stopped),
        len(resumed),
        older,
        start.won_from,
    )
    return {
        "new_deals": len(detected),
        "stopped_deals": len(stopped),
        "resumed_deals": len(resumed),
        "older_wins": older,
        "api_calls": crm.api_calls - calls_before,
    }


START_MARK = "onboard_won_after"


def _last_detection(store: StateStore, source: str) -> Since | None:
    """Where the last detection stopped: an hourly run looks only at what changed since."""
    window_end = store.get_meta(f"detected_window:{source}")
    return Since(datetime.fromisoformat(window_end)) if window_end else None


def _remember_detection(
    store: StateStore, source: str, window_end: datetime, since: Since | None
) -> None:
    # A replay of an earlier hour leaves the window mark where the latest run put it.
    latest_window = max(since.window_end, window_end) if since else window_end
    store.set_meta(f"detected_window:{source}", latest_window.isoformat())


@dataclass(frozen=True)
class OnboardingStart:
    """From which win on a source's deals are onboarded, fixed by its first run."""

    source: str
    first_run: datetime
    won_from: datetime
    adopt_before: datetime | None
    adopted_at: datetime | None
    is_new: bool

    def remember(self, store: StateStore) -> None:
        if self.is_new:
            store.set_meta(f"first_run:{self.source}", self.first_run.isoformat())


def onboarding_start(
    store: StateStore, settings: Settings, source: str, window_end: datetime
) -> OnboardingStart:
    """The first run's window end minus the look-back (or minus the whole playbook when
    adopting clients in progress), never before a start declared by ``handoff init``."""
    recorded = store.get_meta(f"first_run:{source}")
    first_run = datetime.fromisoformat(recorded) if recorded else window_end
    lookback_from = first_run - timedelta(days=settings.detection.lookback_days)
    won_from, adopt_before, adopted_at = lookback_from, None, None
    if settings.detection.adopt_clients_in_progress:
        won_from = first_run - settings.plan.last_moment
        adopt_before, adopted_at = lookback_from, first_run
    declared = store.get_meta(START_MARK)
    if declared:
        won_from = max(won_from, datetime.fromisoformat(declared))
    return OnboardingStart(source, first_run, won_from, adopt_before, adopted_at, not recorded)


def _refuse_a_store_that_missed_our_history(
    store: StateStore, crm: CrmClient, window_start: datetime, window_end: datetime
) -> None:
    candidates = store.onboarding_candidates(crm.source, window_start, window_end)
    if not candidates:
        return
    found = crm.find_tasks(candidates)
    if not found:
        return
    key, task_id = next(iter(sorted(found.items())))
    raise StoreMismatchError(
        f"the state store {store.location} has never planned anything, but the CRM already "
        f"holds {len(found)} tasks written by Handoff Autopilot for deals this run would "
        f"onboard (for example task {task_id}, key {key}). This store is not the one that "
        "onboarded them (a moved configuration file or a changed HANDOFF_STATE_URL?), and "
        "using it would mail and task those clients again, so nothing was recorded or sent. "
        "Point [state].url or HANDOFF_STATE_URL back at the store used before; or, if this "
        "store is meant to take over from now on, run `handoff init`: wins before that moment "
        "are then left to the earlier installation."
    )


def declare_fresh_start(store: StateStore, at: datetime) -> str | None:
    """``handoff init``: migrate; a store without history starts the CRM's history at ``at``.

    Returns the declared start (wins before it are not this store's), or None for a store that
    already holds history and needs no declaration.
    """
    store.migrate()
    existing = store.get_meta(START_MARK)
    if existing or not store.is_fresh():
        return existing
    store.set_meta(START_MARK, at.isoformat())
    return at.isoformat()


# -- plan --------------------------------------------------------------------------------------


def plan_steps(
    store: StateStore, settings: Settings, source: str, run: RunContext
) -> dict[str, Any]:
    """Put every playbook step due by the end of the window into the outbox, once.

    Waiting steps past their lateness limit are skipped first; then the onboardings that need
    a look (a step fell due, or the deal changed) are planned together (``handoff.schedule``).
    """
    started = time.perf_counter()
    late = store.skip_late(source, run.window_end, run.run_id)
    plan = plan_due_steps(store, settings, source, run.window_end)
    planning = time.perf_counter() - started
    inserted = record_plan(store, source, run.run_id, plan)
    for issue in plan.issues:
        log.warning("%s", issue.reason)
    counts = {**plan.counts(), "steps_recorded": inserted, "late_skipped": len(late)}
    counts["planning_ms"] = round(planning * 1000, 1)
    log.info("Planning: %s", counts)
    return counts


def dry_run(
    store: StateStore, settings: Settings, crm: CrmClient, run: RunContext
) -> dict[str, Any]:
    """Everything this run would do, changing nothing: no mail, no CRM write, no outbox row.

    New wins are planned in memory as detection would start them; every step that would go
    out is resolved as dispatch would (recipient and subject, owner and due date), and every
    skip and hold is listed with its reason. RevOps runs it before turning the playbook on.
    """
    at, source = run.window_end, crm.source
    start = onboarding_start(store, settings, source, at)
    new = store.candidate_snapshots(source, start.won_from, at)
    for item in new:
        adopted = start.adopt_before is not None and item["won_at"] < start.adopt_before
        item.update(adopted_at=start.adopted_at if adopted else None, planned_modstamp=None)
    plan = plan_due_steps(store, settings, source, at, store.deals_to_plan(source, at) + new)
    renderer = check_templates(settings)
    sender = settings.sender
    people = People(executive=Person(id=f"(the CRM user {sender.email})", name=sender.name))
    waiting = [r for r in store.unfinished(source) if r.status == ActionStatus.PENDING]
    rows = [r for r in waiting if r.due_at <= at] + [OutboxRow.planned(a) for a in plan.actions]
    deals = _deals_of(store, source, rows)
    contacts = crm.primary_contacts(sorted(deals))  # read, as dispatch would; not stored
    deals = {d: replace(deal, primary_contact=contacts.get(d)) for d, deal in deals.items()}
    items = [_preview(row, deals, settings, run, people, renderer) for row in rows]
    for row in store.late_rows(source, at):
        items.append(
            {
                "deal_id": row.deal_id,
                "step": row.step,
                "kind": row.kind,
                "would": "skip",
                "reason": f"{row.label}: {row.step} is past its lateness limit",
            }
        )
    report = {
        "run_id": run.run_id,
        "source": source,
        "window_end": at.isoformat(),
        "dry_run": True,
        "new_deals": [item["deal_id"] for item in new],
        "actions": items,
        "planning": plan.counts(),
    }
    folder = run.run_folder(settings)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "dry_run.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    return report


def _preview(row, deals, settings, run, people, renderer) -> dict[str, Any]:
    item = {"deal_id": row.deal_id, "step": row.step, "kind": row.kind}
    if row.status != ActionStatus.PENDING:
        would = "hold" if row.status == ActionStatus.HELD else "skip"
        return {**item, "would": would, "reason": row.reason}
    resolved = _resolve_row(row, deals, settings, run, people)
    if resolved.defer_until is not None:
        return {**item, "would": "wait", "reason": resolved.reason}
    if not resolved.ready:
        would = {ActionStatus.SKIPPED: "skip", ActionStatus.HELD: "hold"}.get(resolved.status)
        return {**item, "would": would or "fail", "reason": resolved.reason}
    payload = resolved.payload
    if row.kind == ActionKind.EMAIL:
        context = ClientEmailContext.from_dict(payload["context"])
        subject = renderer.render(payload["template"], context).subject
        return {**item, "would": "send", "to": payload["to"]["email"], "subject": subject}
    return {
        **item,
        "would": "create",
        "owner_id": payload["owner_id"],
        "subject": payload["subject"],
        "due_date": payload["due_date"],
    }


def format_dry_run(report: dict[str, Any]) -> str:
    """The dry run as a person reads it: one line per email, task, skip or hold."""
    lines = [
        f"DRY RUN {report['run_id']} ({report['source']}), as of {report['window_end']}: "
        "nothing was sent, written or recorded",
        f"New Closed Won deals it would start: {len(report['new_deals'])}",
    ]
    for item in report["actions"]:
        head = f"  - [{item['would']}] {item['kind']} {item['step']} for {item['deal_id']}"
        if item["would"] == "send":
            lines.append(f"{head} to {item['to']}: {item['subject']!r}")
        elif item["would"] == "create":
            lines.append(
                f"{head} owner {item['owner_id']}, due {item['due_date']}: {item['subject']!r}"
            )
        else:
            lines.append(f"{head}: {item['reason']}")
    return "\n".join(lines)


# -- resolve -----------------------------------------------------------------------------------


def refresh_contacts(
    crm: CrmClient, store: StateStore, run: RunContext, settings: Settings | None = None
) -> dict[str, int]:
    """Re-read the primary contact of every deal with a step going out now, and whether the
    executive who signs the welcome is still an active CRM user.

    A contact's opt-out or new address does not change the deal in the CRM, so the deal
    snapshot cannot know it: consent is checked against what the CRM says at dispatch time.
    Nothing due: no call.
    """
    calls_before = crm.api_calls
    deal_ids = store.due_deals(crm.source, run.window_end)
    if deal_ids:
        found = crm.primary_contacts(deal_ids)
        store.update_contacts(
            crm.source,
            {d: (asdict(found[d]) if d in found else None) for d in deal_ids},
        )
        if settings is not None:
            email = str(settings.sender.email)
            executive = crm.users_by_email([email]).get(email.lower())
            store.set_meta(
                EXECUTIVE_META + crm.source, json.dumps(asdict(executive) if executive else None)
            )
    opt_outs = write_opt_outs(crm, store)
    return {
        "deals_refreshed": len(deal_ids),
        "opt_outs_written": opt_outs,
        "api_calls": crm.api_calls - calls_before,
        "shards": dispatch_shards(len(deal_ids), settings),
    }


def dispatch_shards(due_deals: int, settings: Settings | None) -> list[int]:
    """The shard numbers dispatch runs as: one per ``rows_per_shard`` deals due, at most
    ``shards``, at least one (it also settles what an earlier run left in flight)."""
    if settings is None:
        return [0]
    dispatch = settings.dispatch
    wanted = -(-due_deals // dispatch.rows_per_shard)  # ceiling
    return list(range(max(1, min(dispatch.shards, wanted))))


EXECUTIVE_META = "executive:"


def email_people(store: StateStore, source: str) -> People:
    """The executive as the last resolve step found them in the CRM (unknown: not checked)."""
    stored = store.get_meta(EXECUTIVE_META + source)
    found = json.loads(stored) if stored else None
    return People(executive=Person(**found) if found else None)


def write_opt_outs(crm: CrmClient, store: StateStore) -> int:
    """Tell the CRM about contacts who unsubscribed here (its own opt-out field), in batches.

    Promotional steps already stopped when the unsubscribe was recorded; this makes the CRM,
    and every other tool that reads it, agree. Setting the flag twice is harmless, so a batch
    whose answer was lost is simply written again on the next run.
    """
    pending = store.opt_outs_to_write(crm.source)
    written = 0
    for chunk in chunked(pending, crm.write_batch_size):
        results = crm.set_email_opt_out(chunk)
        store.mark_opt_outs(
            crm.source, [(r.dedupe_key, None if r.ok else r.error) for r in results]
        )
        written += sum(r.ok for r in results)
        for result in results:
            if not result.ok:
                log.error(
                    "The CRM refused the opt-out of contact %s: %s", result.dedupe_key, result.error
                )
    return written


def _deals_of(store: StateStore, source: str, rows: list[OutboxRow]) -> dict[str, Deal]:
    records = store.deal_records(source, {row.deal_id for row in rows})
    return {deal_id: Deal.from_record(record) for deal_id, record in records.items()}


def _resolve_row(
    row: OutboxRow,
    deals: dict[str, Deal],
    settings: Settings,
    run: RunContext,
    people: People | None = None,
    unsubscribed: Collection[str] = frozenset(),
) -> Resolution:
    """The row's step for its deal, from the latest snapshot (who and what, decided now)."""
    step = settings.plan.step(row.step)
    label = row.label
    if step is None and is_escalation(row.step) and "redflag" in row.payload:
        deal = deals.get(row.deal_id)
        if deal is None:
            return Resolution(
                ActionStatus.FAILED, {}, f"{label}: no snapshot of the deal is stored"
            )
        try:
            return resolve_escalation(deal, row.step, row.payload, settings, run.window_end)
        except Exception as exc:  # one deal's bad data must not hold up the others
            return Resolution(
                ActionStatus.FAILED, {}, f"{label}: {row.step} could not be prepared: {exc}"
            )
    if step is None:
        return Resolution(
            ActionStatus.SKIPPED,
            {},
            f"{label}: {row.step} is no longer a step of the playbook "
            f"({settings.playbook.file}); it is not sent",
        )
    deal = deals.get(row.deal_id)
    if deal is None:
        return Resolution(ActionStatus.FAILED, {}, f"{label}: no snapshot of the deal is stored")
    try:
        return resolve(
            deal,
            step,
            settings,
            people or People(),
            row.due_at,
            run.window_end,
            unsubscribed=unsubscribed,
        )
    except Exception as exc:  # one deal's bad data must not hold up the others
        return Resolution(
            ActionStatus.FAILED, {}, f"{label}: {row.step} could not be prepared: {exc}"
        )


# -- send emails -------------------------------------------------------------------------------

EMAIL_CLAIM = 20  # rows claimed at a time: a crash leaves few rows waiting on a lease
# A connection that drops after a message was handed over: that message is held as unconfirmed
# and the rest provably did not go, so a new connection takes them, this many times per task
# before the task fails and Airflow's retry goes on.
SMTP_RECONNECTS = 3


class _ConnectionLost(TransientMailError):
    """The SMTP connection dropped; the message in flight is already held as unconfirmed."""


def check_templates(settings: Settings) -> EmailRenderer:
    """The renderer, once every template the planner uses loads: a config error otherwise."""
    renderer = EmailRenderer(settings.output.templates_dir)
    for template in (*settings.plan.templates, ESCALATION_TEMPLATE):
        renderer.check(template)
    return renderer


@dataclass(frozen=True)
class _Mailing:
    """What every email of one dispatch shares."""

    renderer: EmailRenderer
    transport: MailTransport | None  # None once its connection dropped
    folder: Path
    installation: str  # keeps this installation's Message-IDs apart from any other's
    unsubscribe_secret: str
    domain_sender: str  # Message-IDs are on our company's domain, whoever signs


def send_emails(
    store: StateStore,
    settings: Settings,
    open_transport: Callable[[], AbstractContextManager[MailTransport]],
    run: RunContext,
    *,
    source: str,
    unsubscribe_secret: str | None = None,
) -> dict[str, int]:
    """Send every email of ``source`` due by the end of the window once, over one SMTP
    connection, each resolved from the latest snapshot of its deal right before it goes out.

    Before anything is claimed the templates must load and the connection must open, so a
    configuration error never touches a row. Rows are claimed a few at a time and each is marked
    attempted right before its content goes to the server: a row an earlier attempt left in
    flight is sent if it was never attempted, and held as ``unconfirmed`` (never re-sent) if it
    was. A connection that drops is reopened (``SMTP_RECONNECTS`` times); any other temporary
    failure puts the unsent rows back and raises, so the retry continues. An
    email outside the client's business hours goes back to wait for them, keeping its key.

    ``unsubscribe_secret`` keys the tokens of promotional emails' unsubscribe links (from an
    Airflow connection); without one, the installation's own random id keys them.
    """
    counts = {
        "emails_sent": 0,
        "emails_skipped": 0,
        "emails_failed": 0,
        "emails_unconfirmed": 0,
        "emails_held": 0,
        "emails_waiting": 0,
    }
    renderer = check_templates(settings)
    installation = store.installation_id()
    domain_sender = str(settings.sender.email)
    lease = timedelta(seconds=settings.dispatch.lease_seconds)
    for row in store.take_over_stale(source, ActionKind.EMAIL, run.worker, lease):
        reason = (
            f"{row.label}: {row.step}: the attempt that was sending it stopped after "
            "handing the message to the SMTP server and before recording its answer"
        )
        _hold_unconfirmed(
            store, run, row, reason, message_id(row.dedupe_key, domain_sender, installation)
        )
        counts["emails_unconfirmed"] += 1
    due_by = run.window_end
    if not store.has_rows(source, ActionKind.EMAIL, ActionStatus.PENDING, due_by=due_by):
        return counts
    with ExitStack() as stack:
        connection = stack.enter_context(ExitStack())

        def connect() -> MailTransport:
            try:
                return connection.enter_context(open_transport())
            except Exception as exc:  # nothing of ours is claimed: the retry starts afresh
                raise classify(exc) from exc

        transport = connect()
        reconnects = 0
        mailing = _Mailing(
            renderer,
            transport,
            run.run_folder(settings) / "emails",
            installation,
            unsubscribe_secret or installation,
            domain_sender,
        )
        claim = partial(store.claim, source, ActionKind.EMAIL, run.worker, due_by=due_by)
        people = email_people(store, source)
        while batch := claim(limit=EMAIL_CLAIM):
            if mailing.transport is None:  # the connection dropped in the last batch
                with suppress(Exception):  # the old one is dead; closing it may complain
                    connection.close()
                mailing = replace(mailing, transport=connect())
            deals = _deals_of(store, source, batch)
            contacts = [d.primary_contact.id for d in deals.values() if d.primary_contact]
            unsubscribed = store.unsubscribed(source, contacts)
            for index, row in enumerate(batch):
                try:
                    resolved = _resolve_row(
                        row, deals, settings, run, people, unsubscribed=unsubscribed
                    )
                    for issue in resolved.issues:
                        store.record_issue(issue, run.run_id)
                    if resolved.defer_until is not None:
                        _wait_for_business_hours(store, run, row, resolved)
                        counts["emails_waiting"] += 1
                        continue
                    if not resolved.ready:
                        _close(store, run, row, resolved.status, resolved.reason, None)
                        counts[f"emails_{resolved.status}"] += 1
                        continue
                    row = replace(row, payload=resolved.payload)
                    _send_one(store, run, settings, mailing, row, counts)
                except BaseException as exc:
                    # A temporary SMTP error is an answer: the message was not taken. Any other
                    # failure leaves an attempted message in flight, to be held, never resent.
                    refused = isinstance(exc, TransientMailError)
                    why = f"{type(exc).__name__}: {exc}"
                    keys = [r.dedupe_key for r in batch[index:]]
                    store.release(keys, run.worker, why, refused=refused)
                    if not isinstance(exc, _ConnectionLost) or reconnects >= SMTP_RECONNECTS:
                        raise
                    reconnects += 1
                    log.warning(
                        "The SMTP connection dropped (%s); the rest goes over a new one (%s of %s)",
                        exc,
                        reconnects,
                        SMTP_RECONNECTS,
                    )
                    mailing = replace(mailing, transport=None)
                    break
    return counts


def _wait_for_business_hours(store, run, row: OutboxRow, resolved: Resolution) -> None:
    """Back to pending until the client's window opens; its lateness limit moves with it."""
    until = resolved.defer_until
    assert until is not None
    not_after = row.not_after + (until - row.due_at) if row.not_after else None
    store.defer(row.dedupe_key, run.worker, until, not_after, resolved.reason or "")
    log.info("%s", resolved.reason)


def _send_one(store, run, settings: Settings, mailing: _Mailing, row, counts) -> None:
    key, payload = row.dedupe_key, row.payload
    internal = payload.get("audience") == "internal"
    context: Any = (
        InternalAlertContext.from_dict(payload["context"])
        if internal
        else ClientEmailContext.from_dict(payload["context"])
    )
    headers: dict[str, str] = {}
    if payload.get("promotional") and not internal:
        token = unsubscribe_token(mailing.unsubscribe_secret, key)
        store.remember_token(
            token, row.source, row.deal_id, payload["contact_id"], payload["to"]["email"], row.step
        )
        url = settings.unsubscribe.url
        mailto = str(settings.unsubscribe.mailto)
        context = replace(
            context,
            unsubscribe_url=f"{url}{'&' if '?' in url else '?'}t={token}" if url else None,
            unsubscribe_mailto=mailto,
        )
        headers = unsubscribe_headers(url, mailto, token)
    try:
        if internal:
            rendered = mailing.renderer.render_internal(payload["template"], context)
        else:
            rendered = mailing.renderer.render(payload["template"], context)
    except TemplateError as exc:  # the templates, not the deal: stop the run, fail nothing
        raise ConfigError(f"the email template {payload['template']!r} failed: {exc}") from exc
    mid = message_id(key, mailing.domain_sender, mailing.installation)
    try:
        mail = build_message(
            payload, rendered, message_id=mid, sent_at=datetime.now(UTC), extra_headers=headers
        )
    except Exception as exc:  # a data defect of this one deal: record it, go on
        _fail_email(store, run, row, f"{row.label}: {row.step} could not be built: {exc}")
        counts["emails_failed"] += 1
        return
    try:
        refused = mailing.transport.send(
            mail.content,
            sender=mail.envelope_from,
            recipients=mail.recipients,
            smtputf8=mail.smtputf8,
            before_data=lambda: key in store.mark_attempted([key], run.worker),
        )
    except LostClaim:
        log.warning("%s was taken over by another worker; not sent here", key)
        return
    except PermanentMailError as exc:
        reason = f"{row.label}: the SMTP server refused {row.step}: {exc}"
        _fail_email(store, run, row, reason, mid)
        counts["emails_failed"] += 1
        return
    except MailOutcomeUnknown as exc:
        _hold_unconfirmed(store, run, row, f"{row.label}: {row.step}: {exc}", mid)
        counts["emails_unconfirmed"] += 1
        # The connection is gone: the rest of the batch goes back and the retry goes on.
        raise _ConnectionLost(f"the SMTP connection dropped while sending {key}") from exc
    # The server accepted the message: this row is never released again. Its subject is kept,
    # so a CRM's logged copy of it is not taken for a person's outreach (red flags).
    row = replace(row, payload={**row.payload, "subject": rendered.subject})
    _record_sent(store, run, row, mail.message, refused, counts)
    try:
        write_copy(mail, mailing.folder, f"{safe_name(row.deal_id)}-{row.step}")
    except OSError as exc:
        log.warning("Could not keep a copy of %s: %s", mid, exc)


def _hold_unconfirmed(
    store: StateStore, run: RunContext, row: OutboxRow, what: str, mid: str
) -> None:
    reason = (
        f"{what}; it may have been delivered, so it is not sent again. Look for Message-ID "
        f"{mid} in the SMTP server's log; only if it is absent, re-send it with "
        f"`handoff resend --source {row.source} --deal {row.deal_id} --step {row.step} "
        "--checked-not-delivered`"
    )
    log.warning("%s", reason)
    _close(store, run, row, ActionStatus.UNCONFIRMED, reason, mid)


def _fail_email(store, run, row, reason: str, external_id: str | None = None) -> None:
    log.error("%s", reason)
    _close(store, run, row, ActionStatus.FAILED, reason, external_id, row.payload)


def _close(store, run, row, status, reason, external_id, payload=None) -> None:
    """Record a row's outcome, with the resolved payload of what went out (for the summary)."""
    store.finish(
        row.dedupe_key,
        run.worker,
        status,
        run.run_id,
        external_id=external_id,
        reason=reason,
        payload=payload,
    )


def _record_sent(store, run, row, message, refused, counts) -> None:
    client = row.payload["to"]["email"]
    if any(address.lower() == client.lower() for address in refused):
        reason = f"{row.label}: the client address {client} was refused: {refused}"
        status = ActionStatus.FAILED
        counts["emails_failed"] += 1
    else:
        reason = f"some Cc recipients were refused: {refused}" if refused else None
        status = ActionStatus.DONE
        counts["emails_sent"] += 1
        log.info("Sent %s to %s as %s", row.step, client, message["Message-ID"])
    _close(store, run, row, status, reason, message["Message-ID"], row.payload)


# -- write tasks -------------------------------------------------------------------------------

SETTLE_ROUNDS = 3  # lookups (and re-writes of what is missing) before leaving it to the retry


def write_tasks(
    crm: CrmClient, store: StateStore, settings: Settings, run: RunContext
) -> dict[str, int]:
    """Create every pending CRM task of this CRM once, one batch call at a time.

    Each batch is marked attempted before it is sent. A batch the CRM provably did not do (429,
    no connection, a 4xx refusal) goes back to pending and the error propagates. A batch whose
    answer was lost (5xx, dropped, timed out), and any attempted batch an earlier attempt left
    in flight, is *settled*: its tasks are looked up by dedupe key, the found ones recorded, and
    only the missing ones written again.
    """
    calls_before = crm.api_calls
    counts = {"tasks_created": 0, "tasks_skipped": 0, "tasks_failed": 0, "tasks_reconciled": 0}
    source, due_by = crm.source, run.window_end
    if store.has_rows(source, ActionKind.TASK, ActionStatus.IN_FLIGHT) or store.has_rows(
        source, ActionKind.TASK, ActionStatus.PENDING, due_by=due_by
    ):
        crm.check_task_setup()  # a configuration error stops the run before any claim
        dispatch = _TaskDispatch(crm, store, settings, run, counts)
        lease = timedelta(seconds=settings.dispatch.lease_seconds)
        orphans = store.take_over_stale(crm.source, ActionKind.TASK, run.worker, lease)
        for batch in chunked(orphans, crm.write_batch_size):
            cause = "an earlier attempt stopped after sending them, before recording the answer"
            dispatch.settle(list(batch), cause)
        claim = partial(store.claim, source, ActionKind.TASK, run.worker, due_by=due_by)
        while batch := claim(limit=crm.write_batch_size):
            ready = dispatch.prepare(batch)
            held = store.mark_attempted([r.dedupe_key for r in ready], run.worker)
            dispatch.write([r for r in ready if r.dedupe_key in held])
    counts["api_calls"] = crm.api_calls - calls_before
    return counts


class _TaskDispatch:
    """One run's task writes: write a batch, settle what has an unknown outcome, record all."""

    def __init__(self, crm, store, settings, run, counts) -> None:
        self.crm, self.store, self.run, self.counts = crm, store, run, counts
        self.settings = settings
        self.delay = settings.dispatch.reconcile_delay_seconds
        self.tasks: dict[str, dict[str, Any]] = {}  # resolved task payloads, by dedupe key
        self._people: People | None = None

    @property
    def people(self) -> People:
        """The configured executive as a CRM user (looked up once a run, when a step needs it)."""
        if self._people is None:
            email = str(self.settings.sender.email)
            found = self.crm.users_by_email([email]).get(email.lower())
            self._people = People(executive=found)
        return self._people

    def prepare(self, rows: list[OutboxRow]) -> list[OutboxRow]:
        """Resolve each row from its deal's latest snapshot; record the ones that cannot be."""
        deals = _deals_of(self.store, self.crm.source, rows)
        ready, outcomes = [], []
        for row in rows:
            step = self.settings.plan.step(row.step)
            needs_people = step is not None and "executive" in (step.owner, step.fallback_owner)
            people = self.people if needs_people else None
            resolved = _resolve_row(row, deals, self.settings, self.run, people)
            if resolved.ready:
                self.tasks[row.dedupe_key] = resolved.payload
                ready.append(row)
                continue
            self.counts[f"tasks_{resolved.status}"] += 1
            log.warning("%s", resolved.reason)
            outcomes.append(
                {
                    "dedupe_key": row.dedupe_key,
                    "status": resolved.status,
                    "reason": resolved.reason,
                }
            )
        self.store.finish_many(outcomes, self.run.worker, self.run.run_id)
        return ready

    def write(self, rows: list[OutboxRow]) -> None:
        if rows and (cause := self._attempt(rows)):
            log.warning("%s tasks have an unknown outcome (%s); looking them up", len(rows), cause)
            self.settle(rows, cause)

    def _attempt(self, rows: list[OutboxRow]) -> str | None:
        """Write the rows once and record the answers; return why the outcome is unknown."""
        try:
            missing = [r for r in rows if r.dedupe_key not in self.tasks]
            if missing:  # rows an earlier attempt left in flight: resolve them now
                self.prepare(missing)
                rows = [r for r in rows if r.dedupe_key in self.tasks]
                if not rows:
                    return None
            tasks = [task_from_payload(self.tasks[r.dedupe_key]) for r in rows]
            results = self.crm.create_tasks(tasks)
        except (CrmUnavailable, CrmFatalError) as exc:  # refused: nothing was written
            keys = [r.dedupe_key for r in rows]
            self.store.release(keys, self.run.worker, str(exc), refused=True)
            raise
        except WriteOutcomeUnknown as exc:
            return str(exc)
        self._record(rows, results)
        return None

    def settle(self, rows: list[OutboxRow], cause: str) -> None:
        """Look the rows up by dedupe key; record the found, write only the missing."""
        for _ in range(SETTLE_ROUNDS):
            if self.delay:
                time.sleep(self.delay)
            found = self.crm.find_tasks(sorted({r.deal_id for r in rows}))
            present = [r for r in rows if r.dedupe_key in found]
            self.store.finish_many(
                [
                    {
                        "dedupe_key": r.dedupe_key,
                        "status": ActionStatus.DONE,
                        "external_id": found[r.dedupe_key],
                        "reason": f"found in the CRM by its key after: {cause}",
                    }
                    for r in present
                ],
                self.run.worker,
                self.run.run_id,
            )
            self.counts["tasks_reconciled"] += len(present)
            rows = [r for r in rows if r.dedupe_key not in found]
            if not rows or (cause := self._attempt(rows)) is None:
                return
        raise WriteOutcomeUnknown(
            f"{len(rows)} task writes still have no answer after {SETTLE_ROUNDS} lookups "
            f"({cause}); they stay in flight and the next attempt looks them up again"
        )

    def _record(self, rows: list[OutboxRow], results: list[WriteResult]) -> None:
        outcomes = []
        for row, result in zip(rows, results, strict=True):
            if result.ok:
                self.counts["tasks_created"] += 1
                outcomes.append(
                    {
                        "dedupe_key": row.dedupe_key,
                        "status": ActionStatus.DONE,
                        "external_id": result.external_id,
                        "payload": self.tasks.get(row.dedupe_key),
                    }
                )
                continue
            self.counts["tasks_failed"] += 1
            reason = f"{row.label}: {row.step}: the CRM refused it: {result.error}"
            log.error("%s", reason)
            outcomes.append(
                {"dedupe_key": row.dedupe_key, "status": ActionStatus.FAILED, "reason": reason}
            )
        self.store.finish_many(outcomes, self.run.worker, self.run.run_id)


# -- the steps in order, without Airflow ---------------------------------------------------------


def steps_in_order(
    crm: CrmClient,
    store: StateStore,
    settings: Settings,
    open_transport: Callable[[], AbstractContextManager[MailTransport]],
    run_id: str,
    window_end: datetime,
) -> dict[str, Callable[[], dict[str, Any]]]:
    """The DAG's steps, in its order, as plain calls (the benchmark and crash tests run them).

    Each worker id is ``<run>/<step>``, as the DAG's is ``<dag>/<run>/<task>``.
    """

    def run(step: str) -> RunContext:
        return RunContext(run_id=run_id, window_end=window_end, worker=f"{run_id}/{step}")

    return {
        "extract": lambda: extract_changes(crm, store, settings, window_end),
        "detect": lambda: detect_new_wins(store, settings, crm, run("detect")),
        "read_activities": lambda: extract_activities(crm, store, settings, window_end),
        "red_flags": lambda: evaluate_red_flags(store, settings, crm.source, run_id, window_end),
        "plan": lambda: plan_steps(store, settings, crm.source, run("plan")),
        "resolve": lambda: refresh_contacts(crm, store, run("resolve"), settings),
        "send_emails": lambda: send_emails(
            store, settings, open_transport, run("send_emails"), source=crm.source
        ),
        "write_tasks": lambda: write_tasks(crm, store, settings, run("write_tasks")),
    }


# -- summarise ---------------------------------------------------------------------------------


def summarise(
    store: StateStore, settings: Settings, source: str, run: RunContext, api_calls: int
) -> dict[str, Any]:
    """What this run did, from the store (so a re-run reports only its own effects).

    Written for failed runs too: the steps that failed say why, and every email or task still
    waiting says what it waits for and when it will be tried again.
    """
    detected = store.onboarding_rows(source=source, detected_run=run.run_id)
    records = store.deal_records(source, [row["deal_id"] for row in detected])
    finished = store.actions(finished_run=run.run_id, source=source)
    folder = run.run_folder(settings)
    emails_dir = folder / "emails"
    lease = timedelta(seconds=settings.dispatch.lease_seconds)

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

    problem_states = (
        ActionStatus.SKIPPED,
        ActionStatus.FAILED,
        ActionStatus.UNCONFIRMED,
        ActionStatus.CANCELLED,
    )
    failed_steps = [
        {"step": s["step"], "message": s["message"]}
        for s in store.steps(run.run_id)
        if s["status"] == "failed"
    ]
    flag_rows = RedFlagStore(store)
    summary = {
        "run_id": run.run_id,
        "source": source,
        "window_end": run.window_end.isoformat(),
        "state_store": store.location,
        "failed_steps": failed_steps,
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
        "problems": [describe(r) for r in finished if r["status"] in problem_states],
        "waiting": [_waiting(row, lease) for row in store.unfinished(source)],
        "issues": [
            {"deal_id": i["deal_id"], "field": i["field"], "reason": i["reason"]}
            for i in store.issues(run_id=run.run_id)
        ],
        "red_flags": [
            {k: f[k] for k in ("deal_id", "code", "severity", "episode", "reason")}
            for f in flag_rows.flag_rows(source=source, raised_run=run.run_id)
        ],
        "red_flags_resolved": [
            {k: f[k] for k in ("deal_id", "code", "episode", "resolved_reason")}
            for f in flag_rows.flag_rows(source=source, resolved_run=run.run_id)
        ],
        "flags_open": len(flag_rows.flag_rows(source=source, status="open")),
        "emails_sent": len(of(ActionKind.EMAIL, ActionStatus.DONE)),
        "tasks_created": len(of(ActionKind.TASK, ActionStatus.DONE)),
        "skipped": sum(1 for r in finished if r["status"] == ActionStatus.SKIPPED),
        "failed": sum(1 for r in finished if r["status"] == ActionStatus.FAILED),
        "unconfirmed": sum(1 for r in finished if r["status"] == ActionStatus.UNCONFIRMED),
        "api_calls": api_calls,
        "run_folder": str(folder),
    }
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    return summary


def _waiting(row: OutboxRow, lease: timedelta) -> dict[str, Any]:
    """Why an email or task is still not done, and when it is tried again."""
    item = {"deal_id": row.deal_id, "step": row.step, "status": row.status}
    label = row.label
    if row.status == ActionStatus.HELD:
        limit = f"{row.not_after:%Y-%m-%d %H:%M} UTC" if row.not_after else "no limit"
        item["reason"] = f"{row.reason} (at the latest by {limit}; after that it is skipped)"
        item["retry_at"] = (
            "the first run after the handoff document is complete"
            if "handoff document" in (row.reason or "")
            else "the first run after the deal is next planned, once the CRM data is corrected"
        )
        return item
    if row.status == ActionStatus.PENDING and "business hours" in (row.reason or ""):
        item["reason"] = row.reason
        item["retry_at"] = row.due_at.isoformat()
        return item
    if row.status == ActionStatus.PENDING:
        why = f" (last try: {row.reason})" if row.reason else ""
        item["reason"] = f"{label}: {row.step} is due and goes out on the next run{why}"
        item["retry_at"] = "next run"
        return item
    retry_at = row.claimed_at + lease
    then = (
        "settled (looked up in the CRM, or held for a person if it is an email)"
        if row.attempted_at
        else "done (it was never attempted)"
    )
    item["reason"] = (
        f"{label}: {row.step} is claimed by {row.claimed_by} since "
        f"{row.claimed_at:%Y-%m-%d %H:%M:%S} UTC; if that attempt is no longer running, "
        f"the first run from {retry_at:%Y-%m-%d %H:%M:%S} UTC takes it over and it is {then}"
    )
    item["retry_at"] = retry_at.isoformat()
    return item


def format_summary(summary: dict[str, Any]) -> str:
    """The readable report the demo and ``handoff run`` print (the JSON line comes after)."""
    lines = [f"Handoff run {summary['run_id']} ({summary['source']})"]
    lines.append(f"State store: {summary['state_store']}")
    lines.append("")
    for failure in summary["failed_steps"]:
        lines.append(f"FAILED step {failure['step']}: {failure['message']}")
    if summary["failed_steps"]:
        lines.append("")
    lines.append(f"New Closed Won deals: {len(summary['new_deals'])}")
    lines += [f"  - {d['name']} [{d['deal_id']}], won {d['won_at']}" for d in summary["new_deals"]]
    lines.append(f"Emails sent: {summary['emails_sent']}")
    lines += [f"  - {e['step']} to {e['to']}  preview: {e['preview']}" for e in summary["emails"]]
    lines.append(f"CRM tasks created: {summary['tasks_created']}")
    lines += [f"  - {t['step']} for {t['deal_id']} -> {t['external_id']}" for t in summary["tasks"]]
    lines.append(f"Skipped / failed / unconfirmed / cancelled: {len(summary['problems'])}")
    lines += [f"  - [{p['status']}] {p['step']}: {p['reason']}" for p in summary["problems"]]
    if summary["waiting"]:
        lines.append(f"Still to do (waiting): {len(summary['waiting'])}")
        lines += [f"  - [{w['status']}] {w['step']}: {w['reason']}" for w in summary["waiting"]]
    if summary.get("red_flags") or summary.get("red_flags_resolved"):
        lines.append(
            f"Red flags raised: {len(summary['red_flags'])}, resolved: "
            f"{len(summary['red_flags_resolved'])}, open: {summary['flags_open']}"
        )
        lines += [
            f"  - [{f['severity']}] {f['code']} on {f['deal_id']}: {f['reason']}"
            for f in summary["red_flags"]
        ]
        lines += [
            f"  - resolved {f['code']} on {f['deal_id']}: {f['resolved_reason']}"
            for f in summary["red_flags_resolved"]
        ]
    if summary["issues"]:
        lines.append(f"Data issues: {len(summary['issues'])}")
        lines += [f"  - {i['reason']}" for i in summary["issues"]]
    lines.append(f"CRM API calls: {summary['api_calls']}   Run folder: {summary['run_folder']}")
    return "\n".join(lines)


def summary_line(summary: dict[str, Any]) -> str:
    keys = ("emails_sent", "tasks_created", "skipped", "failed", "unconfirmed", "api_calls")
    return json.dumps(
        {
            "run_id": summary["run_id"],
            **{k: summary[k] for k in keys},
            "waiting": len(summary["waiting"]),
            "held": sum(1 for w in summary["waiting"] if w["status"] == ActionStatus.HELD),
            "new_deals": len(summary["new_deals"]),
            "flags_raised": len(summary.get("red_flags", [])),
            "flags_open": summary.get("flags_open", 0),
            "failed_steps": [f["step"] for f in summary["failed_steps"]],
        }
    )
