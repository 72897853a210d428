"""The state store: watermarks, deal snapshots, onboarding state, the outbox and deal issues.

SQLite by default, any SQLAlchemy URL by configuration (PostgreSQL in production). The schema is
versioned with Alembic (``migrations/``); :meth:`StateStore.migrate` brings any older database up
to date without losing rows.

Exactly-once rests on three rules kept here:
- an action is inserted once: ``dedupe_key`` is unique and inserts ignore conflicts;
- an action is performed by one worker: a worker *claims* a few pending rows at a time with a
  conditional ``UPDATE ... WHERE status = 'pending'`` (``FOR UPDATE SKIP LOCKED`` on
  PostgreSQL), which two concurrent workers cannot both win;
- right before an effect is handed over (SMTP DATA, the CRM write) the row is marked
  *attempted* in its own commit, by its claimer only. A row in flight that was never attempted
  provably had no effect: whoever takes it over simply does it. An attempted row whose worker is
  gone has an unknown outcome and is settled, never redone as is.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from more_itertools import chunked
from sqlalchemy import (
    JSON,
    Connection,
    Engine,
    and_,
    bindparam,
    create_engine,
    event,
    func,
    literal,
    or_,
    select,
    union,
    update,
)
from sqlalchemy.engine import make_url

from handoff.errors import ConfigError
from handoff.models import ActionKind, ActionStatus, DealIssue, OutboxRow, PlannedAction
from handoff.state.schema import (
    deal_issues,
    deals,
    flag_checks,
    onboarding,
    opt_outs,
    outbox,
    run_steps,
    store_meta,
    unsubscribe_tokens,
    watermarks,
)

log = logging.getLogger(__name__)

MIGRATIONS = Path(__file__).with_name("migrations")
# A red-flag check that is due at any evaluation: the deal's data changed.
FLAGS_DUE_NOW = datetime(1970, 1, 1, tzinfo=UTC)
INSTALLATION = "installation_id"
TRY_MARK = "#"  # worker ids are "<task instance>#<try>": tries of one instance replace each other


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class Since:
    """Where the last detection of a source stopped: what it looks at now is every snapshot
    saved since (marked ``detect_due`` by its save) and every win from ``window_end`` on (a
    win dated beyond the last window)."""

    window_end: datetime


class StateStore:
    """Owns the engine; every public method is one transaction."""

    def __init__(self, url: str) -> None:
        self.url = url
        parsed = make_url(url)
        if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        connect_args = {"timeout": 30} if parsed.get_backend_name() == "sqlite" else {}
        self.engine: Engine = create_engine(url, connect_args=connect_args, pool_pre_ping=True)
        if parsed.get_backend_name() == "sqlite":
            event.listen(self.engine, "connect", _sqlite_pragmas)

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    @property
    def location(self) -> str:
        """The store's URL as a person may read it (password hidden): printed by every run."""
        return self.engine.url.render_as_string(hide_password=True)

    def dispose(self) -> None:
        self.engine.dispose()

    # -- schema -------------------------------------------------------------------------------

    def migrate(self) -> None:
        """Upgrade the schema to the newest revision (idempotent)."""
        from alembic import command
        from alembic.config import Config

        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS))
        with self.engine.begin() as conn:
            config.attributes["connection"] = conn
            command.upgrade(config, "head")

    @staticmethod
    def head_revision() -> str:
        from alembic.config import Config
        from alembic.script import ScriptDirectory

        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS))
        return ScriptDirectory.from_config(config).get_current_head()

    def check_schema(self) -> None:
        """Migrations run once per deployment (``handoff db upgrade``), never inside a run: a
        store that is behind stops the run before anything is read or sent."""
        current, head = self.current_revision(), self.head_revision()
        if current != head:
            state = "has no schema yet" if current is None else f"is at revision {current}"
            raise ConfigError(
                f"the state store {self.location} {state}; this version needs revision {head}. "
                "Run `handoff db upgrade` (or the deployment's init step) once, then re-run"
            )

    def current_revision(self) -> str | None:
        from alembic.runtime.migration import MigrationContext

        with self.engine.connect() as conn:
            context = MigrationContext.configure(
                conn, opts={"version_table": "handoff_alembic_version"}
            )
            return context.get_current_revision()

    def _insert(self, table):
        if self.dialect == "postgresql":
            from sqlalchemy.dialects.postgresql import insert
        else:
            from sqlalchemy.dialects.sqlite import insert
        return insert(table)

    # -- watermarks ----------------------------------------------------------------------------

    def get_watermark(self, source: str, stream: str) -> datetime | None:
        with self.engine.connect() as conn:
            return conn.execute(
                select(watermarks.c.cursor_value).where(
                    watermarks.c.source == source, watermarks.c.stream == stream
                )
            ).scalar_one_or_none()

    def _set_watermark(self, conn: Connection, source: str, stream: str, value: datetime) -> None:
        stmt = self._insert(watermarks).values(
            source=source, stream=stream, cursor_value=value, updated_at=utcnow()
        )
        conn.execute(
            stmt.on_conflict_do_update(
                index_elements=[watermarks.c.source, watermarks.c.stream],
                set_={"cursor_value": value, "updated_at": utcnow()},
            )
        )

    # -- deal snapshots ------------------------------------------------------------------------

    def stored_modstamps(self, source: str, deal_ids: Sequence[str]) -> dict[str, datetime]:
        """The SystemModstamp of each deal already stored: how extraction drops repeats."""
        return self._deal_column(source, deal_ids, deals.c.modstamp)

    def _deal_column(self, source: str, deal_ids: Iterable[str], column) -> dict[str, Any]:
        result: dict[str, Any] = {}
        with self.engine.connect() as conn:
            for chunk in chunked(list(deal_ids), 500):
                rows = conn.execute(
                    select(deals.c.deal_id, column).where(
                        deals.c.source == source, deals.c.deal_id.in_(chunk)
                    )
                )
                result.update({row[0]: row[1] for row in rows})
        return result

    def save_deals(
        self,
        source: str,
        stream: str,
        rows: Sequence[dict[str, Any]],
        watermark: datetime | None,
    ) -> None:
        """Upsert snapshots and move the watermark in the same transaction."""
        now = utcnow()
        marks = {"change_generation": 1, "detect_due": 1}
        values = [{**row, "source": source, "updated_at": now, **marks} for row in rows]
        with self.engine.begin() as conn:
            if values:
                stmt = self._insert(deals)
                columns = [k for k in values[0] if k not in ("source", "deal_id", *marks)]
                bumped = deals.c.change_generation + 1
                conn.execute(
                    stmt.on_conflict_do_update(
                        index_elements=[deals.c.source, deals.c.deal_id],
                        set_={
                            **{k: stmt.excluded[k] for k in columns},
                            "change_generation": bumped,
                            "detect_due": bumped,  # detection looks at this snapshot
                        },
                    ),
                    values,
                )
                # A changed deal is planned again by the next run (its conditions, its gate).
                for chunk in chunked([v["deal_id"] for v in values], 500):
                    conn.execute(
                        update(onboarding)
                        .where(
                            onboarding.c.source == source,
                            onboarding.c.deal_id.in_(chunk),
                            onboarding.c.status == "active",
                        )
                        .values(next_step_at=None)
                    )
                self.mark_flags_due(conn, source, [v["deal_id"] for v in values])
            if watermark is not None:
                self._set_watermark(conn, source, stream, watermark)

    def update_contacts(self, source: str, contacts: dict[str, dict[str, Any] | None]) -> None:
        """Replace the primary contact in deal snapshots (re-read right before dispatch)."""
        records = self.deal_records(source, contacts)
        with self.engine.begin() as conn:
            changed = [
                {"b_deal_id": deal_id, "b_record": {**record, "primary_contact": contacts[deal_id]}}
                for deal_id, record in records.items()
                if record.get("primary_contact") != contacts[deal_id]
            ]
            if changed:
                conn.execute(
                    update(deals)
                    .where(deals.c.source == source, deals.c.deal_id == bindparam("b_deal_id"))
                    .values(record=bindparam("b_record")),
                    changed,
                )
                # The client's zone and country may have moved: evaluate their flags again.
                self.mark_flags_due(conn, source, [row["b_deal_id"] for row in changed])

    def mark_flags_due(self, conn: Connection, source: str, deal_ids: Sequence[str]) -> None:
        """Make the red flags of these deals (those onboarding) due at the next evaluation and
        bump their generation, in the writer's transaction: their data changed."""
        due_now = {"check_at": FLAGS_DUE_NOW, "generation": 1, "evaluated_at": None}
        for chunk in chunked(sorted(set(deal_ids)), 500):
            rows = select(
                onboarding.c.source,
                onboarding.c.deal_id,
                *(
                    literal(value, flag_checks.c[name].type).label(name)
                    for name, value in due_now.items()
                ),
            ).where(onboarding.c.source == source, onboarding.c.deal_id.in_(chunk))
            stmt = self._insert(flag_checks).from_select(["source", "deal_id", *due_now], rows)
            conn.execute(
                stmt.on_conflict_do_update(
                    index_elements=[flag_checks.c.source, flag_checks.c.deal_id],
                    set_={
                        "check_at": FLAGS_DUE_NOW,
                        "generation": flag_checks.c.generation + 1,
                    },
                )
            )

    def deal_records(self, source: str, deal_ids: Iterable[str]) -> dict[str, dict[str, Any]]:
        return self._deal_column(source, deal_ids, deals.c.record)

    # -- onboarding ----------------------------------------------------------------------------

    @staticmethod
    def _won_never_onboarded(*columns):
        """Won deals with no onboarding row: what detection may still start (or must ignore)."""
        return (
            select(*columns)
            .select_from(deals)
            .outerjoin(
                onboarding,
                and_(
                    onboarding.c.source == deals.c.source,
                    onboarding.c.deal_id == deals.c.deal_id,
                ),
            )
            .where(deals.c.is_won.is_(True), onboarding.c.deal_id.is_(None))
        )

    def _candidates(
        self, source: str, won_from: datetime, window_end: datetime, since: Since | None = None
    ):
        query = self._won_never_onboarded(deals.c.deal_id, deals.c.won_at).where(
            deals.c.source == source,
            deals.c.is_deleted.is_(False),
            deals.c.won_at >= won_from,
            deals.c.won_at < window_end,
        )
        if since is not None:  # only what can have changed since the last detection
            # A union, not an OR: each side is then a range on its own index, so an hour's
            # candidates cost the same in a store of 5,000 deals as in one of 200,000.
            changed = union(
                select(deals.c.deal_id).where(deals.c.source == source, deals.c.detect_due > 0),
                select(deals.c.deal_id).where(deals.c.won_at >= since.window_end),
            )
            query = query.where(deals.c.deal_id.in_(changed.scalar_subquery()))
        return query.order_by(deals.c.won_at, deals.c.deal_id)

    def onboarding_candidates(
        self, source: str, won_from: datetime, window_end: datetime
    ) -> list[str]:
        """Won deals of the window that have no onboarding yet (what detection would start)."""
        with self.engine.connect() as conn:
            return list(conn.execute(self._candidates(source, won_from, window_end)).scalars())

    def candidate_snapshots(
        self, source: str, won_from: datetime, window_end: datetime
    ) -> list[dict[str, Any]]:
        """The candidates with their snapshots, shaped like :meth:`deals_to_plan` rows."""
        query = self._candidates(source, won_from, window_end).add_columns(
            deals.c.modstamp, deals.c.record
        )
        with self.engine.connect() as conn:
            return [dict(row) for row in conn.execute(query).mappings()]

    def start_onboarding(
        self,
        source: str,
        won_from: datetime,
        window_end: datetime,
        run_id: str,
        *,
        adopt_before: datetime | None = None,
        adopted_at: datetime | None = None,
        since: Since | None = None,
    ) -> list[str]:
        """Start onboarding every won deal of ``[won_from, window_end)`` not yet onboarded.

        Wins before ``adopt_before`` are clients taken on while already in their 90 days: their
        onboarding records ``adopted_at``, and steps due before it are never sent.
        """
        now = utcnow()
        with self.engine.begin() as conn:
            candidates = conn.execute(self._candidates(source, won_from, window_end, since)).all()
            values = [
                {
                    "source": source,
                    "deal_id": row.deal_id,
                    "status": "active",
                    "won_at": row.won_at,
                    "detected_at": now,
                    "detected_run": run_id,
                    "adopted_at": adopted_at
                    if adopt_before is not None and row.won_at < adopt_before
                    else None,
                }
                for row in candidates
            ]
            for chunk in chunked(values, 1000):
                conn.execute(self._insert(onboarding).on_conflict_do_nothing(), chunk)
        return [row.deal_id for row in candidates]

    def count_onboarding(self, source: str, status: str = "active") -> int:
        with self.engine.connect() as conn:
            return conn.execute(
                select(func.count())
                .select_from(onboarding)
                .where(onboarding.c.source == source, onboarding.c.status == status)
            ).scalar_one()

    def count_won_before(self, source: str, won_from: datetime) -> int:
        """Won deals older than the onboarding start that were never onboarded (not mailed)."""
        with self.engine.connect() as conn:
            return conn.execute(
                self._won_never_onboarded(func.count()).where(
                    deals.c.source == source, deals.c.won_at < won_from
                )
            ).scalar_one()

    def _onboarding_with_deal(self, *columns):
        return select(*columns).join(
            deals,
            and_(deals.c.source == onboarding.c.source, deals.c.deal_id == onboarding.c.deal_id),
        )

    def stop_onboarding_of_lost_deals(
        self, source: str, run_id: str, since: Since | None = None
    ) -> list[str]:
        """Deals that left Closed Won (re-opened, lost, deleted) stop; waiting steps cancel."""
        now = utcnow()
        query = self._onboarding_with_deal(
            onboarding.c.deal_id, deals.c.stage, deals.c.is_deleted
        ).where(
            onboarding.c.source == source,
            onboarding.c.status == "active",
            or_(deals.c.is_won.is_(False), deals.c.is_deleted.is_(True)),
        )
        if since is not None:  # only a deal saved since the last detection can have left
            query = query.where(deals.c.detect_due > 0)
        with self.engine.begin() as conn:
            rows = conn.execute(query).all()
            for row in rows:
                reason = (
                    "the deal was deleted in the CRM"
                    if row.is_deleted
                    else f"the deal left Closed Won (stage is now {row.stage!r})"
                )
                conn.execute(
                    update(onboarding)
                    .where(onboarding.c.source == source, onboarding.c.deal_id == row.deal_id)
                    .values(status="stopped", stopped_at=now, stop_reason=reason)
                )
                conn.execute(
                    update(outbox)
                    .where(
                        outbox.c.source == source,
                        outbox.c.deal_id == row.deal_id,
                        outbox.c.status.in_([ActionStatus.PENDING, ActionStatus.HELD]),
                    )
                    .values(
                        status=ActionStatus.CANCELLED,
                        reason=f"stopped: {reason}",
                        finished_run=run_id,
                        updated_at=now,
                    )
                )
            return [row.deal_id for row in rows]

    def detection_due(self, source: str) -> dict[str, int]:
        """The deals saved since detection last looked at them, with their generation."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(deals.c.deal_id, deals.c.detect_due).where(
                    deals.c.source == source, deals.c.detect_due > 0
                )
            )
            return {row.deal_id: row.detect_due for row in rows}

    def clear_detection_due(self, source: str, seen: dict[str, int]) -> None:
        """Detection looked at these generations: clear each mark a later save did not move."""
        stmt = (
            update(deals)
            .where(
                deals.c.source == source,
                deals.c.deal_id == bindparam("b_deal_id"),
                deals.c.detect_due == bindparam("b_generation"),
            )
            .values(detect_due=None)
        )
        rows = [{"b_deal_id": deal_id, "b_generation": gen} for deal_id, gen in seen.items()]
        with self.engine.begin() as conn:
            for chunk in chunked(rows, 5000):
                conn.execute(stmt, chunk)

    def resume_rewon_deals(self, source: str, run_id: str, at: datetime) -> list[str]:
        """Stopped deals that are Closed Won again continue where they stopped.

        Steps cancelled by the stop come back if they are still sensible at ``at``; steps done
        before stay done, so nothing is sent twice.
        """
        now = utcnow()
        with self.engine.begin() as conn:
            ids = list(
                conn.execute(
                    self._onboarding_with_deal(onboarding.c.deal_id).where(
                        onboarding.c.source == source,
                        onboarding.c.status == "stopped",
                        deals.c.is_won.is_(True),
                        deals.c.is_deleted.is_(False),
                    )
                ).scalars()
            )
            for chunk in chunked(ids, 500):
                conn.execute(
                    update(onboarding)
                    .where(onboarding.c.source == source, onboarding.c.deal_id.in_(chunk))
                    .values(
                        status="active",
                        stopped_at=None,
                        stop_reason=None,
                        next_step_at=None,
                        planned_modstamp=None,
                    )
                )
                cancelled = and_(
                    outbox.c.source == source,
                    outbox.c.deal_id.in_(chunk),
                    outbox.c.status == ActionStatus.CANCELLED,
                    outbox.c.reason.startswith("stopped: "),
                )
                still_sensible = or_(outbox.c.not_after.is_(None), outbox.c.not_after >= at)
                conn.execute(
                    update(outbox)
                    .where(cancelled, still_sensible)
                    .values(
                        status=ActionStatus.PENDING,
                        reason="the deal is Closed Won again",
                        finished_run=None,
                        updated_at=now,
                    )
                )
                conn.execute(
                    update(outbox)
                    .where(cancelled)
                    .values(
                        status=ActionStatus.SKIPPED,
                        reason="the deal is Closed Won again, but after this step's lateness "
                        "limit: it is not sent late",
                        finished_run=run_id,
                        updated_at=now,
                    )
                )
        return ids

    def deals_to_plan(self, source: str, at: datetime) -> list[dict[str, Any]]:
        """Active onboardings the planner must look at: a step fell due or the deal changed."""
        query = self._onboarding_with_deal(
            onboarding.c.deal_id,
            onboarding.c.won_at,
            onboarding.c.adopted_at,
            onboarding.c.planned_modstamp,
            deals.c.modstamp,
            deals.c.record,
        ).where(
            onboarding.c.source == source,
            onboarding.c.status == "active",
            # A saved change clears next_step_at (see save_deals): one indexed condition.
            or_(onboarding.c.next_step_at.is_(None), onboarding.c.next_step_at <= at),
        )
        with self.engine.connect() as conn:
            rows = conn.execute(query.order_by(onboarding.c.won_at)).mappings()
            return [dict(row) for row in rows]

    def step_statuses(self, source: str, deal_ids: Sequence[str]) -> list[tuple[str, str, str]]:
        """(deal, step, status) of every outbox row of these deals."""
        result: list[tuple[str, str, str]] = []
        with self.engine.connect() as conn:
            for chunk in chunked(list(deal_ids), 500):
                rows = conn.execute(
                    select(outbox.c.deal_id, outbox.c.step, outbox.c.status).where(
                        outbox.c.source == source, outbox.c.deal_id.in_(chunk)
                    )
                )
                result.extend((r.deal_id, r.step, r.status) for r in rows)
        return result

    def record_plan(
        self,
        source: str,
        run_id: str,
        actions: Sequence[PlannedAction],
        *,
        next_steps: Sequence[dict[str, Any]] = (),
        issues: Sequence[DealIssue] = (),
        hold: Sequence[tuple[str, str]] = (),
        release: Sequence[str] = (),
    ) -> int:
        """Record one batch of planning in one transaction; return the outbox rows inserted.

        ``next_steps``: per deal, ``next_step_at``, ``planned_modstamp`` and ``status``.
        ``hold``: (deal, reason) whose pending client steps wait for the handoff document;
        ``release``: deals whose held steps may now go out.
        """
        now = utcnow()
        rows = self.outbox_values(actions, run_id, now)
        inserted = 0
        with self.engine.begin() as conn:
            if rows:
                inserted = self.insert_outbox(conn, rows)
            self._insert_issues(conn, issues, run_id)
            if next_steps:
                conn.execute(
                    update(onboarding)
                    .where(
                        onboarding.c.source == source,
                        onboarding.c.deal_id == bindparam("b_deal_id"),
                    )
                    .values(
                        next_step_at=bindparam("b_next_step_at"),
                        planned_modstamp=bindparam("b_planned_modstamp"),
                        status=bindparam("b_status"),
                        planned_run=run_id,
                    ),
                    [{f"b_{k}": v for k, v in item.items()} for item in next_steps],
                )
            if hold:
                conn.execute(
                    update(outbox)
                    .where(
                        outbox.c.source == source,
                        outbox.c.deal_id == bindparam("b_deal_id"),
                        outbox.c.status == ActionStatus.PENDING,
                        outbox.c.payload["client"].as_boolean(),
                    )
                    .values(status=ActionStatus.HELD, reason=bindparam("b_reason"), updated_at=now),
                    [{"b_deal_id": deal_id, "b_reason": reason} for deal_id, reason in hold],
                )
            for chunk in chunked(list(release), 500):
                conn.execute(
                    update(outbox)
                    .where(
                        outbox.c.source == source,
                        outbox.c.deal_id.in_(chunk),
                        outbox.c.status == ActionStatus.HELD,
                    )
                    .values(
                        status=ActionStatus.PENDING,
                        reason="released: the handoff document is complete",
                        updated_at=now,
                    )
                )
        return inserted

    @staticmethod
    def outbox_values(
        actions: Sequence[PlannedAction], run_id: str, now: datetime
    ) -> list[dict[str, Any]]:
        """Outbox rows for planned actions, as ``insert_outbox`` takes them."""
        return [
            {
                "dedupe_key": action.dedupe_key,
                "source": action.source,
                "deal_id": action.deal_id,
                "step": action.step,
                "kind": action.kind,
                "status": action.status,
                "payload": action.payload,
                "due_at": action.due_at or now,
                "not_after": action.not_after,
                "attempts": 0,
                "reason": action.reason,
                "planned_run": run_id,
                "finished_run": run_id
                if action.status not in (ActionStatus.PENDING, ActionStatus.HELD)
                else None,
                "created_at": now,
                "updated_at": now,
            }
            for action in actions
        ]

    def insert_outbox(self, conn: Connection, rows: Sequence[dict[str, Any]]) -> int:
        """Insert outbox rows whose key is new, in the caller's transaction; return how many."""
        stmt = self._insert(outbox).on_conflict_do_nothing(index_elements=[outbox.c.dedupe_key])
        # RETURNING yields only the rows inserted: a key already there adds nothing.
        return len(conn.execute(stmt.returning(outbox.c.id), rows).all())

    @staticmethod
    def _late(source: str, at: datetime):
        return and_(
            outbox.c.source == source,
            outbox.c.status.in_([ActionStatus.PENDING, ActionStatus.HELD]),
            outbox.c.not_after < at,
        )

    def late_rows(self, source: str, at: datetime) -> list[OutboxRow]:
        """Waiting steps past their lateness limit at ``at`` (what :meth:`skip_late` skips)."""
        with self.engine.connect() as conn:
            query = select(outbox).where(self._late(source, at)).order_by(outbox.c.due_at)
            return [OutboxRow.from_mapping(r) for r in conn.execute(query).mappings()]

    def skip_late(self, source: str, at: datetime, run_id: str) -> list[OutboxRow]:
        """Waiting steps whose lateness limit passed are skipped, never sent late."""
        now = utcnow()
        late = self._late(source, at)
        with self.engine.begin() as conn:
            query = select(outbox).where(late)
            rows = [OutboxRow.from_mapping(r) for r in conn.execute(query).mappings()]
            for row in rows:
                held = " (held: the handoff document was incomplete)" * (
                    row.status == ActionStatus.HELD
                )
                conn.execute(
                    update(outbox)
                    .where(outbox.c.id == row.id, late)
                    .values(
                        status=ActionStatus.SKIPPED,
                        finished_run=run_id,
                        updated_at=now,
                        reason=f"{row.label}: {row.step} was due {row.due_at:%Y-%m-%d %H:%M} "
                        f"UTC and was still waiting{held} at its lateness limit "
                        f"{row.not_after:%Y-%m-%d %H:%M} UTC; it is not sent late",
                    )
                )
        return rows

    def record_issue(self, issue: DealIssue, run_id: str) -> None:
        """Record a data issue once per deal and code (re-runs do not repeat it)."""
        with self.engine.begin() as conn:
            self._insert_issue(conn, issue, run_id)

    def _insert_issue(self, conn: Connection, issue: DealIssue, run_id: str) -> None:
        self._insert_issues(conn, [issue], run_id)

    def _insert_issues(self, conn: Connection, issues: Sequence[DealIssue], run_id: str) -> None:
        now = utcnow()
        rows = [
            {
                "source": issue.source,
                "deal_id": issue.deal_id,
                "code": issue.code,
                "field": issue.field,
                "reason": issue.reason,
                "run_id": run_id,
                "created_at": now,
            }
            for issue in issues
        ]
        if rows:
            conn.execute(self._insert(deal_issues).on_conflict_do_nothing(), rows)

    # -- outbox --------------------------------------------------------------------------------

    def _of(self, source: str, kind: ActionKind):
        return and_(outbox.c.source == source, outbox.c.kind == kind)

    @staticmethod
    def _held_by(worker: str):
        """Rows ``worker`` still holds: only their holder may attempt, record or release them."""
        return and_(outbox.c.claimed_by == worker, outbox.c.status == ActionStatus.IN_FLIGHT)

    def has_rows(
        self,
        source: str,
        kind: ActionKind,
        *statuses: ActionStatus,
        due_by: datetime | None = None,
    ) -> bool:
        """Whether any row of this source and kind is in one of ``statuses`` (cheap check)."""
        query = select(outbox.c.id).where(self._of(source, kind), outbox.c.status.in_(statuses))
        if due_by is not None:
            query = query.where(outbox.c.due_at <= due_by)
        with self.engine.connect() as conn:
            first = conn.execute(query.limit(1)).first()
        return first is not None

    def due_deals(self, source: str, due_by: datetime) -> list[str]:
        """Deals with a step waiting to go out by ``due_by``: whose contacts to re-read."""
        with self.engine.connect() as conn:
            return list(
                conn.execute(
                    select(outbox.c.deal_id)
                    .where(
                        outbox.c.source == source,
                        outbox.c.status.in_([ActionStatus.PENDING, ActionStatus.IN_FLIGHT]),
                        outbox.c.due_at <= due_by,
                    )
                    .distinct()
                    .order_by(outbox.c.deal_id)
                ).scalars()
            )

    def take_over_stale(
        self, source: str, kind: ActionKind, worker: str, lease: timedelta
    ) -> list[OutboxRow]:
        """Free the claims of attempts that are gone; return the rows whose outcome is unknown.

        An attempt is gone when its lease expired, or when it was an earlier try of the same
        task instance: worker ids are ``<task instance>#<try>``, and Airflow starts a try only
        once the previous one has ended. Taking its rows over changes their claimer, so even a
        try that is still running (a zombie) can no longer attempt or record them.
        Its never-attempted rows go back to pending; its attempted rows are claimed by
        ``worker`` and returned, for the caller to settle (look a CRM task up, hold an email).
        """
        now = utcnow()
        instance = worker.split(TRY_MARK, 1)[0]
        stale = and_(
            self._of(source, kind),
            outbox.c.status == ActionStatus.IN_FLIGHT,
            or_(
                outbox.c.claimed_by == instance,
                outbox.c.claimed_by.startswith(instance + TRY_MARK, autoescape=True),
                outbox.c.claimed_at < now - lease,
            ),
        )
        with self.engine.begin() as conn:
            conn.execute(
                update(outbox)
                .where(stale, outbox.c.attempted_at.is_(None))
                .values(status=ActionStatus.PENDING, claimed_by=None, claimed_at=None)
            )
            orphans = (
                conn.execute(
                    update(outbox)
                    .where(stale, outbox.c.attempted_at.is_not(None))
                    .values(claimed_by=worker, claimed_at=now)
                    .returning(*outbox.c)
                )
                .mappings()
                .all()
            )
        return sorted(map(OutboxRow.from_mapping, orphans), key=lambda row: row.id)

    def claim(
        self, source: str, kind: ActionKind, worker: str, *, limit: int, due_by: datetime
    ) -> list[OutboxRow]:
        """Claim up to ``limit`` pending rows of one source and kind due by ``due_by``, in due
        order (several workers share the work: on PostgreSQL each skips the others' rows)."""
        now = utcnow()
        pick = (
            select(outbox.c.id)
            .where(
                self._of(source, kind),
                outbox.c.status == ActionStatus.PENDING,
                outbox.c.due_at <= due_by,
            )
            .order_by(outbox.c.due_at, outbox.c.id)
            .limit(limit)
        )
        if self.dialect == "postgresql":
            pick = pick.with_for_update(skip_locked=True)
        with self.engine.begin() as conn:
            claimed = (
                conn.execute(
                    update(outbox)
                    .where(
                        outbox.c.id.in_(pick.scalar_subquery()),
                        outbox.c.status == ActionStatus.PENDING,
                    )
                    .values(
                        status=ActionStatus.IN_FLIGHT,
                        claimed_by=worker,
                        claimed_at=now,
                        attempted_at=None,
                        attempts=outbox.c.attempts + 1,
                    )
                    .returning(*outbox.c)
                )
                .mappings()
                .all()
            )
        return sorted(map(OutboxRow.from_mapping, claimed), key=lambda row: (row.due_at, row.id))

    def mark_attempted(self, dedupe_keys: Sequence[str], worker: str) -> set[str]:
        """Record, before handing effects over, that they are about to be attempted.

        Returns the keys still claimed by ``worker``; a row another worker took over (this one
        stalled past its lease) is not attempted here, so the two can never both act.
        """
        now = utcnow()
        held: set[str] = set()
        with self.engine.begin() as conn:
            for chunk in chunked(list(dedupe_keys), 500):
                rows = conn.execute(
                    update(outbox)
                    .where(
                        outbox.c.dedupe_key.in_(chunk),
                        self._held_by(worker),
                    )
                    .values(attempted_at=now, claimed_at=now)
                    .returning(outbox.c.dedupe_key)
                )
                held.update(rows.scalars())
        return held

    def release(
        self,
        dedupe_keys: Sequence[str],
        worker: str,
        reason: str | None = None,
        *,
        refused: bool = False,
    ) -> None:
        """Put claimed rows back to pending.

        Rows never attempted go back whatever happened. An attempted row goes back only when
        ``refused`` says the other side answered that it did nothing; otherwise its effect may
        have happened and it stays in flight, to be settled by whoever takes it over.
        """
        releasable = self._held_by(worker)
        if not refused:
            releasable = and_(releasable, outbox.c.attempted_at.is_(None))
        with self.engine.begin() as conn:
            for chunk in chunked(list(dedupe_keys), 500):
                conn.execute(
                    update(outbox)
                    .where(outbox.c.dedupe_key.in_(chunk), releasable)
                    .values(
                        status=ActionStatus.PENDING,
                        claimed_by=None,
                        claimed_at=None,
                        attempted_at=None,
                        reason=reason,
                        updated_at=utcnow(),
                    )
                )

    def finish(
        self,
        dedupe_key: str,
        worker: str,
        status: ActionStatus,
        run_id: str,
        *,
        external_id: str | None = None,
        reason: str | None = None,
        payload: dict[str, Any] | None = None,
    ) -> bool:
        """Record the outcome of a claimed action (only the claiming worker may)."""
        outcome = {"dedupe_key": dedupe_key, "status": status, "payload": payload}
        outcome |= {"external_id": external_id, "reason": reason}
        return self.finish_many([outcome], worker, run_id) == 1

    def finish_many(self, outcomes: Sequence[dict[str, Any]], worker: str, run_id: str) -> int:
        """Record outcomes; returns how many were still this worker's to record."""
        if not outcomes:
            return 0
        params = [
            {
                "b_key": o["dedupe_key"],
                "b_status": o["status"],
                "b_external_id": o.get("external_id"),
                "b_reason": o.get("reason"),
                "b_payload": o.get("payload"),
            }
            for o in outcomes
        ]
        keys = [o["dedupe_key"] for o in outcomes]
        mine = and_(outbox.c.dedupe_key.in_(keys), self._held_by(worker))
        now = utcnow()
        with self.engine.begin() as conn:
            recorded = conn.execute(select(func.count()).select_from(outbox).where(mine)).scalar()
            conn.execute(
                update(outbox)
                .where(outbox.c.dedupe_key == bindparam("b_key"), self._held_by(worker))
                .values(
                    status=bindparam("b_status"),
                    finished_run=run_id,
                    external_id=bindparam("b_external_id"),
                    reason=bindparam("b_reason"),
                    # None keeps the planned payload; a resolved one records what went out.
                    payload=func.coalesce(
                        bindparam("b_payload", type_=JSON(none_as_null=True)), outbox.c.payload
                    ),
                    updated_at=now,
                ),
                params,
            )
        if recorded != len(outcomes):
            log.warning(
                "%s of %s outcomes were not recorded by %s: another worker took those rows over "
                "after this one stalled past its lease, and settles them",
                len(outcomes) - recorded,
                len(outcomes),
                worker,
            )
        return recorded

    def requeue(
        self,
        source: str,
        deal_id: str,
        at: datetime,
        *,
        step: str | None = None,
        checked_not_delivered: bool = False,
    ) -> tuple[list[OutboxRow], list[tuple[OutboxRow, str]]]:
        """A person's re-send at ``at``: the deal's failed steps go back to pending.

        An unconfirmed step (its answer never came) goes back only when the person checked the
        mailbox or the CRM and it is not there (``checked_not_delivered``): re-sending it blindly
        could repeat it. Returns the rows put back, and the rows refused with why.
        """
        retryable = {ActionStatus.FAILED}
        if checked_not_delivered:
            retryable.add(ActionStatus.UNCONFIRMED)
        query = select(outbox).where(outbox.c.source == source, outbox.c.deal_id == deal_id)
        if step is not None:
            query = query.where(outbox.c.step == step)
        requeued: list[OutboxRow] = []
        refused: list[tuple[OutboxRow, str]] = []
        with self.engine.begin() as conn:
            for row in map(OutboxRow.from_mapping, conn.execute(query).mappings()):
                if row.status not in retryable:
                    refused.append((row, _not_requeued(row)))
                    continue
                changed = conn.execute(
                    update(outbox)
                    .where(outbox.c.id == row.id, outbox.c.status == row.status)
                    .values(
                        # Still due (since its first time): the next run, or one triggered now.
                        status=ActionStatus.PENDING,
                        # The person decided it is still worth sending: no lateness limit.
                        not_after=None,
                        claimed_by=None,
                        claimed_at=None,
                        attempted_at=None,
                        external_id=None,
                        finished_run=None,
                        reason=f"re-sent by hand at {at:%Y-%m-%d %H:%M} UTC after: {row.reason}",
                        updated_at=utcnow(),
                    )
                ).rowcount
                if changed:
                    requeued.append(row)
        return requeued, refused

    def unfinished(self, source: str) -> list[OutboxRow]:
        """Rows of a source still waiting (pending, held or in flight): what a run leaves."""
        waiting = [ActionStatus.PENDING, ActionStatus.HELD, ActionStatus.IN_FLIGHT]
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(outbox)
                .where(
                    outbox.c.source == source,
                    outbox.c.status.in_(waiting),
                )
                .order_by(outbox.c.due_at, outbox.c.id)
            ).mappings()
            return [OutboxRow.from_mapping(row) for row in rows]

    def is_fresh(self) -> bool:
        """No action was ever planned here and no one declared this store a new start."""
        with self.engine.connect() as conn:
            planned = conn.execute(select(outbox.c.id).limit(1)).first()
            declared = conn.execute(
                select(store_meta.c.name).where(store_meta.c.name != INSTALLATION).limit(1)
            ).first()
        return planned is None and declared is None

    def installation_id(self) -> str:
        """A random id made once per state store: it keeps Message-IDs and tokens of two
        installations (production, staging, a laptop) apart while staying stable in each."""
        stmt = self._insert(store_meta).values(
            name=INSTALLATION, value=secrets.token_hex(16), updated_at=utcnow()
        )
        with self.engine.begin() as conn:
            conn.execute(stmt.on_conflict_do_nothing(index_elements=[store_meta.c.name]))
        value = self.get_meta(INSTALLATION)
        assert value is not None
        return value

    # -- waiting for the client's business hours -----------------------------------------------

    def defer(
        self,
        dedupe_key: str,
        worker: str,
        due_at: datetime,
        not_after: datetime | None,
        reason: str,
    ) -> bool:
        """Put a claimed row back to wait until ``due_at``: same key, same row, nothing lost.

        The lateness limit moves with it, so a wait the sending window imposes never makes a
        step count as late.
        """
        with self.engine.begin() as conn:
            result = conn.execute(
                update(outbox)
                .where(outbox.c.dedupe_key == dedupe_key, self._held_by(worker))
                .values(
                    status=ActionStatus.PENDING,
                    claimed_by=None,
                    claimed_at=None,
                    attempted_at=None,
                    due_at=due_at,
                    not_after=not_after,
                    reason=reason,
                    updated_at=utcnow(),
                )
            )
        return result.rowcount == 1

    # -- unsubscribes --------------------------------------------------------------------------

    def remember_token(
        self, token: str, source: str, deal_id: str, contact_id: str, email: str, step: str
    ) -> None:
        """Keep whom a promotional email's unsubscribe token stands for (before it is sent)."""
        stmt = self._insert(unsubscribe_tokens).values(
            token=token,
            source=source,
            deal_id=deal_id,
            contact_id=contact_id,
            email=email,
            step=step,
            created_at=utcnow(),
        )
        with self.engine.begin() as conn:
            conn.execute(stmt.on_conflict_do_nothing(index_elements=[unsubscribe_tokens.c.token]))

    def token_owner(self, token: str) -> dict[str, Any] | None:
        """Whom an unsubscribe token stands for, or None."""
        with self.engine.connect() as conn:
            found = (
                conn.execute(select(unsubscribe_tokens).where(unsubscribe_tokens.c.token == token))
                .mappings()
                .first()
            )
        return dict(found) if found else None

    def opt_out(self, token: str, at: datetime) -> dict[str, Any] | None:
        """Record the unsubscribe a token stands for (idempotent); None for an unknown token."""
        with self.engine.begin() as conn:
            found = (
                conn.execute(select(unsubscribe_tokens).where(unsubscribe_tokens.c.token == token))
                .mappings()
                .first()
            )
            if found is None:
                return None
            stmt = self._insert(opt_outs).values(
                source=found["source"],
                contact_id=found["contact_id"],
                email=found["email"],
                opted_out_at=at,
            )
            conn.execute(
                stmt.on_conflict_do_nothing(
                    index_elements=[opt_outs.c.source, opt_outs.c.contact_id]
                )
            )
        return dict(found)

    def unsubscribed(self, source: str, contact_ids: Iterable[str]) -> set[str]:
        """Of these contacts, those who unsubscribed here."""
        found: set[str] = set()
        with self.engine.connect() as conn:
            for chunk in chunked(sorted(set(contact_ids)), 500):
                query = select(opt_outs.c.contact_id).where(
                    opt_outs.c.source == source, opt_outs.c.contact_id.in_(chunk)
                )
                found.update(conn.execute(query).scalars())
        return found

    def opt_outs_to_write(self, source: str, limit: int = 10_000) -> list[str]:
        """Contacts whose unsubscribe the CRM does not know yet."""
        with self.engine.connect() as conn:
            query = (
                select(opt_outs.c.contact_id)
                .where(opt_outs.c.source == source, opt_outs.c.crm_written_at.is_(None))
                .order_by(opt_outs.c.opted_out_at)
                .limit(limit)
            )
            return list(conn.execute(query).scalars())

    def mark_opt_outs(self, source: str, results: Sequence[tuple[str, str | None]]) -> None:
        """``(contact_id, error)``: written (error None) or why the CRM refused it."""
        now = utcnow()
        with self.engine.begin() as conn:
            for contact_id, error in results:
                conn.execute(
                    update(opt_outs)
                    .where(opt_outs.c.source == source, opt_outs.c.contact_id == contact_id)
                    .values(crm_written_at=None if error else now, crm_error=error)
                )

    def opt_out_rows(self, **filters: Any) -> list[dict[str, Any]]:
        return self._rows(opt_outs, [opt_outs.c.opted_out_at], filters)

    # -- store facts and step outcomes ---------------------------------------------------------

    def get_meta(self, name: str) -> str | None:
        with self.engine.connect() as conn:
            return conn.execute(
                select(store_meta.c.value).where(store_meta.c.name == name)
            ).scalar_one_or_none()

    def set_meta(self, name: str, value: str) -> None:
        stmt = self._insert(store_meta).values(name=name, value=value, updated_at=utcnow())
        with self.engine.begin() as conn:
            conn.execute(
                stmt.on_conflict_do_update(
                    index_elements=[store_meta.c.name],
                    set_={"value": value, "updated_at": utcnow()},
                )
            )

    def record_step(
        self, run_id: str, source: str, step: str, status: str, message: str | None = None
    ) -> None:
        """How a step's latest try ended (a retry that succeeds replaces a failure)."""
        now = utcnow()
        stmt = self._insert(run_steps).values(
            run_id=run_id,
            step=step,
            source=source,
            status=status,
            message=message,
            attempts=1,
            updated_at=now,
        )
        with self.engine.begin() as conn:
            conn.execute(
                stmt.on_conflict_do_update(
                    index_elements=[run_steps.c.run_id, run_steps.c.step],
                    set_={
                        "status": status,
                        "message": message,
                        "attempts": run_steps.c.attempts + 1,
                        "updated_at": now,
                    },
                )
            )

    def steps(self, run_id: str) -> list[dict[str, Any]]:
        return self._rows(run_steps, [run_steps.c.updated_at], {"run_id": run_id})

    def actions(self, **filters: Any) -> list[dict[str, Any]]:
        """Outbox rows matching column filters (for summaries and tests)."""
        return self._rows(outbox, [outbox.c.id], filters)

    def issues(self, **filters: Any) -> list[dict[str, Any]]:
        return self._rows(deal_issues, [deal_issues.c.id], filters)

    def onboarding_rows(self, **filters: Any) -> list[dict[str, Any]]:
        return self._rows(onboarding, [onboarding.c.won_at, onboarding.c.deal_id], filters)

    def _rows(self, table, order, filters: dict[str, Any]) -> list[dict[str, Any]]:
        query = select(table).order_by(*order)
        for column, value in filters.items():
            query = query.where(table.c[column] == value)
        with self.engine.connect() as conn:
            return [dict(row) for row in conn.execute(query).mappings()]


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    """WAL lets a reader and a writer work at once; FULL sync keeps commits across crashes."""
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.close()


def _not_requeued(row: OutboxRow) -> str:
    if row.status == ActionStatus.UNCONFIRMED:
        return (
            "its outcome is unknown: check that it did not arrive (the email's Message-ID, or "
            "the CRM task's Handoff key), then re-send with --checked-not-delivered"
        )
    if row.status == ActionStatus.DONE:
        return f"it was done ({row.external_id or 'no id recorded'}): re-sending would repeat it"
    return f"it is {row.status.value}, not failed"
