"""The state store: watermarks, deal snapshots, onboarding state, the outbox and deal issues.

SQLite by default, any SQLAlchemy URL by configuration (PostgreSQL in production). The schema is
versioned with Alembic (``migrations/``); :meth:`StateStore.migrate` brings any older database up
to date without losing rows.

Exactly-once rests on two rules kept here:
- an action is inserted once: ``dedupe_key`` is unique and inserts ignore conflicts;
- an action is performed by one worker: a worker *claims* pending rows with a conditional
  ``UPDATE ... WHERE status = 'pending'``, which two concurrent workers cannot both win.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from more_itertools import chunked
from sqlalchemy import Connection, Engine, and_, create_engine, event, func, or_, select, update
from sqlalchemy.engine import make_url

from handoff.models import ActionKind, ActionStatus, DealIssue, PlannedAction
from handoff.state.schema import deal_issues, deals, onboarding, outbox, watermarks

log = logging.getLogger(__name__)

MIGRATIONS = Path(__file__).with_name("migrations")


def utcnow() -> datetime:
    return datetime.now(UTC)


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
        with self.engine.begin() as conn:
            for row in rows:
                values = {**row, "source": source, "updated_at": now}
                stmt = self._insert(deals).values(**values)
                conn.execute(
                    stmt.on_conflict_do_update(
                        index_elements=[deals.c.source, deals.c.deal_id],
                        set_={k: v for k, v in values.items() if k not in ("source", "deal_id")},
                    )
                )
            if watermark is not None:
                self._set_watermark(conn, source, stream, watermark)

    def deal_records(self, source: str, deal_ids: Iterable[str]) -> dict[str, dict[str, Any]]:
        return self._deal_column(source, deal_ids, deals.c.record)

    # -- onboarding ----------------------------------------------------------------------------

    def start_onboarding(
        self, source: str, window_start: datetime, window_end: datetime, run_id: str
    ) -> list[str]:
        """Mark won deals of the window that have no onboarding yet as detected; return ids."""
        now = utcnow()
        with self.engine.begin() as conn:
            candidates = conn.execute(
                select(deals.c.deal_id, deals.c.won_at)
                .outerjoin(
                    onboarding,
                    and_(
                        onboarding.c.source == deals.c.source,
                        onboarding.c.deal_id == deals.c.deal_id,
                    ),
                )
                .where(
                    deals.c.source == source,
                    deals.c.is_won.is_(True),
                    deals.c.is_deleted.is_(False),
                    deals.c.won_at >= window_start,
                    deals.c.won_at < window_end,
                    onboarding.c.deal_id.is_(None),
                )
                .order_by(deals.c.won_at, deals.c.deal_id)
            ).all()
            detected = []
            for row in candidates:
                inserted = conn.execute(
                    self._insert(onboarding)
                    .values(
                        source=source,
                        deal_id=row.deal_id,
                        status="detected",
                        won_at=row.won_at,
                        detected_at=now,
                        detected_run=run_id,
                    )
                    .on_conflict_do_nothing()
                )
                if inserted.rowcount:
                    detected.append(row.deal_id)
            return detected

    def count_won_before(self, source: str, window_start: datetime) -> int:
        """Won deals older than the look-back window that were never onboarded (not mailed)."""
        with self.engine.connect() as conn:
            return conn.execute(
                select(func.count())
                .select_from(deals)
                .outerjoin(
                    onboarding,
                    and_(
                        onboarding.c.source == deals.c.source,
                        onboarding.c.deal_id == deals.c.deal_id,
                    ),
                )
                .where(
                    deals.c.source == source,
                    deals.c.is_won.is_(True),
                    deals.c.won_at < window_start,
                    onboarding.c.deal_id.is_(None),
                )
            ).scalar_one()

    def stop_onboarding_of_lost_deals(self, source: str, run_id: str) -> list[str]:
        """Deals that left Closed Won (re-opened, lost, deleted) stop; pending steps cancel."""
        now = utcnow()
        with self.engine.begin() as conn:
            rows = conn.execute(
                select(onboarding.c.deal_id, deals.c.stage, deals.c.is_deleted)
                .join(
                    deals,
                    and_(
                        deals.c.source == onboarding.c.source,
                        deals.c.deal_id == onboarding.c.deal_id,
                    ),
                )
                .where(
                    onboarding.c.source == source,
                    onboarding.c.status != "stopped",
                    or_(deals.c.is_won.is_(False), deals.c.is_deleted.is_(True)),
                )
            ).all()
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
                        outbox.c.status == ActionStatus.PENDING,
                    )
                    .values(
                        status=ActionStatus.CANCELLED,
                        reason=reason,
                        finished_run=run_id,
                        updated_at=now,
                    )
                )
            return [row.deal_id for row in rows]

    def deals_to_plan(self, source: str) -> list[str]:
        with self.engine.connect() as conn:
            return list(
                conn.execute(
                    select(onboarding.c.deal_id)
                    .where(onboarding.c.source == source, onboarding.c.status == "detected")
                    .order_by(onboarding.c.won_at, onboarding.c.deal_id)
                ).scalars()
            )

    def record_plan(
        self,
        source: str,
        deal_id: str,
        actions: Sequence[PlannedAction],
        issues: Sequence[DealIssue],
        run_id: str,
    ) -> int:
        """Insert a deal's actions and issues and mark it planned, atomically; return new rows."""
        now = utcnow()
        inserted = 0
        with self.engine.begin() as conn:
            for action in actions:
                finished = action.status != ActionStatus.PENDING
                result = conn.execute(
                    self._insert(outbox)
                    .values(
                        dedupe_key=action.dedupe_key,
                        source=action.source,
                        deal_id=action.deal_id,
                        step=action.step,
                        kind=action.kind,
                        status=action.status,
                        payload=action.payload,
                        attempts=0,
                        reason=action.reason,
                        planned_run=run_id,
                        finished_run=run_id if finished else None,
                        created_at=now,
                        updated_at=now,
                    )
                    .on_conflict_do_nothing(index_elements=[outbox.c.dedupe_key])
                )
                inserted += result.rowcount
            for issue in issues:
                self._insert_issue(conn, issue, run_id)
            conn.execute(
                update(onboarding)
                .where(
                    onboarding.c.source == source,
                    onboarding.c.deal_id == deal_id,
                    onboarding.c.status == "detected",
                )
                .values(status="planned", planned_run=run_id)
            )
        return inserted

    def record_issue(self, issue: DealIssue, run_id: str) -> None:
        """Record a data issue once per deal and code (re-runs do not repeat it)."""
        with self.engine.begin() as conn:
            self._insert_issue(conn, issue, run_id)

    def _insert_issue(self, conn: Connection, issue: DealIssue, run_id: str) -> None:
        conn.execute(
            self._insert(deal_issues)
            .values(
                source=issue.source,
                deal_id=issue.deal_id,
                code=issue.code,
                field=issue.field,
                reason=issue.reason,
                run_id=run_id,
                created_at=utcnow(),
            )
            .on_conflict_do_nothing()
        )

    # -- outbox --------------------------------------------------------------------------------

    def claim(
        self,
        kind: ActionKind,
        worker: str,
        *,
        lease: timedelta = timedelta(minutes=30),
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """Claim pending actions of one kind for ``worker``.

        Returns ``(claimed, orphaned)``. Orphaned rows were in flight in an attempt that died:
        claimed earlier by this same worker id (a retry of the same Airflow task instance; only
        one try runs at a time) or by another worker whose lease has expired. Whether their
        effect happened is unknown; the caller decides (reconcile a CRM task, hold an email).
        """
        now = utcnow()
        with self.engine.begin() as conn:
            orphaned = (
                conn.execute(
                    update(outbox)
                    .where(
                        outbox.c.kind == kind,
                        outbox.c.status == ActionStatus.IN_FLIGHT,
                        or_(outbox.c.claimed_by == worker, outbox.c.claimed_at < now - lease),
                    )
                    .values(claimed_by=worker, claimed_at=now, attempts=outbox.c.attempts + 1)
                    .returning(*outbox.c)
                )
                .mappings()
                .all()
            )
            claimed = (
                conn.execute(
                    update(outbox)
                    .where(outbox.c.kind == kind, outbox.c.status == ActionStatus.PENDING)
                    .values(
                        status=ActionStatus.IN_FLIGHT,
                        claimed_by=worker,
                        claimed_at=now,
                        attempts=outbox.c.attempts + 1,
                    )
                    .returning(*outbox.c)
                )
                .mappings()
                .all()
            )
        order = lambda row: row["id"]  # noqa: E731
        return sorted(map(dict, claimed), key=order), sorted(map(dict, orphaned), key=order)

    def finish(
        self,
        dedupe_key: str,
        worker: str,
        status: ActionStatus,
        run_id: str,
        *,
        external_id: str | None = None,
        reason: str | None = None,
    ) -> None:
        """Record the outcome of a claimed action (only the claiming worker may)."""
        with self.engine.begin() as conn:
            self._finish(conn, dedupe_key, worker, status, run_id, external_id, reason)

    def finish_many(self, outcomes: Sequence[dict[str, Any]], worker: str, run_id: str) -> None:
        with self.engine.begin() as conn:
            for outcome in outcomes:
                self._finish(
                    conn,
                    outcome["dedupe_key"],
                    worker,
                    outcome["status"],
                    run_id,
                    outcome.get("external_id"),
                    outcome.get("reason"),
                )

    def _finish(self, conn, dedupe_key, worker, status, run_id, external_id, reason) -> None:
        values: dict[str, Any] = {"status": status, "updated_at": utcnow(), "reason": reason}
        if status == ActionStatus.PENDING:
            values.update(claimed_by=None, claimed_at=None)
        else:
            values.update(finished_run=run_id, external_id=external_id)
        result = conn.execute(
            update(outbox)
            .where(
                outbox.c.dedupe_key == dedupe_key,
                outbox.c.claimed_by == worker,
                outbox.c.status == ActionStatus.IN_FLIGHT,
            )
            .values(**values)
        )
        if result.rowcount != 1:
            raise RuntimeError(
                f"outbox action {dedupe_key} is no longer claimed by {worker}; not recorded"
            )

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
