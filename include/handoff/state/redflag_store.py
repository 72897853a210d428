"""The red-flag side of the state store: activities read from the CRM and flag episodes.

Kept apart from the outbox and onboarding code; it shares the store's engine and writes the
escalation of a new flag into the outbox in the same transaction as the flag itself, so a flag
is never raised without its escalation, nor escalated twice.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import pandas as pd
from more_itertools import chunked
from sqlalchemy import and_, bindparam, case, exists, func, or_, select, type_coerce, update

from handoff.models import PlannedAction
from handoff.state.schema import (
    UtcDateTime,
    activities,
    activity_coverage,
    deals,
    flag_checks,
    flags,
    onboarding,
    outbox,
)
from handoff.state.store import StateStore, utcnow

ACTIVITY_FIELDS = [c.name for c in activities.columns if c.name not in ("source", "updated_at")]


@dataclass(frozen=True)
class NewFlag:
    """A rule that holds for a deal with no open episode: raised with its escalation."""

    deal_id: str
    code: str
    severity: str
    reason: str
    escalation: Sequence[PlannedAction]  # built for the episode this flag becomes


def _raw_moment(column: Any) -> Any:
    """A time column as the driver returns it, without the per-value UTC fix of
    ``UtcDateTime``: hundreds of thousands of rows are read at once, and ``pd.to_datetime(...,
    utc=True)`` gives the same UTC timestamps from naive (SQLite) or aware (PostgreSQL) values."""
    if isinstance(column.type, UtcDateTime):
        return type_coerce(column, column.type.impl).label(column.name)
    return column


class RedFlagStore:
    """Activities and flags of one state store."""

    def __init__(self, store: StateStore) -> None:
        self.store = store
        self.engine = store.engine

    def _rows_of(self, query: Any, deal_column: Any, deal_ids: Iterable[str] | None) -> list:
        """The query's rows, of these deals only if given (in chunks: bound-parameter limits)."""
        with self.engine.connect() as conn:
            if deal_ids is None:
                return conn.execute(query).all()
            rows: list = []
            for chunk in chunked(sorted(deal_ids), 1000):
                rows += conn.execute(query.where(deal_column.in_(chunk))).all()
            return rows

    # -- activities ----------------------------------------------------------------------------

    def save_activities(self, source: str, frame: pd.DataFrame) -> int:
        """Upsert one page of activities (a re-read of the same records changes nothing)."""
        if frame.empty:
            return 0
        now = utcnow()
        page = frame[ACTIVITY_FIELDS].astype(object).where(frame[ACTIVITY_FIELDS].notna(), None)
        values = [
            {**row, "source": source, "updated_at": now, "is_deleted": bool(row["is_deleted"])}
            for row in page.to_dict("records")
        ]
        for row in values:
            for column in ("occurred_at", "modstamp"):
                if isinstance(row[column], pd.Timestamp):
                    row[column] = row[column].to_pydatetime()
        stmt = self.store._insert(activities)
        keys = ("source", "activity_id", "deal_id")
        with self.engine.begin() as conn:
            for chunk in chunked(values, 1000):
                conn.execute(
                    stmt.on_conflict_do_update(
                        index_elements=[activities.c[k] for k in keys],
                        set_={
                            c: stmt.excluded[c]
                            for c in (*ACTIVITY_FIELDS, "updated_at")
                            if c not in keys
                        },
                    ),
                    chunk,
                )
            self.store.mark_flags_due(conn, source, [row["deal_id"] for row in values])
        return len(values)

    def _watched(self, source: str, won_after: datetime, covered: bool, *columns: Any) -> Any:
        """Active onboardings won after ``won_after`` whose whole history was read once
        (``covered``) or not yet. The coverage test is on the onboarding row alone, so a
        snapshot is looked up only for the rows that pass it."""
        read_once = exists().where(
            activity_coverage.c.source == onboarding.c.source,
            activity_coverage.c.deal_id == onboarding.c.deal_id,
        )
        return select(*columns).where(
            onboarding.c.source == source,
            onboarding.c.status == "active",
            onboarding.c.won_at >= won_after,
            read_once if covered else ~read_once,
        )

    def watched_deals(
        self, source: str, won_after: datetime, *, covered: bool
    ) -> dict[str, str | None]:
        """Those onboardings with their primary contact id, read in SQL from the snapshot (no
        snapshot is parsed): what an activity read attributes records with."""
        contact = deals.c.record[("primary_contact", "id")].as_string()
        query = self._watched(source, won_after, covered, onboarding.c.deal_id, contact).join_from(
            onboarding,
            deals,
            and_(deals.c.source == onboarding.c.source, deals.c.deal_id == onboarding.c.deal_id),
        )
        with self.engine.connect() as conn:
            return dict(conn.execute(query.order_by(onboarding.c.deal_id)).all())

    def count_watched(self, source: str, won_after: datetime, *, covered: bool) -> int:
        with self.engine.connect() as conn:
            query = self._watched(source, won_after, covered, func.count())
            return conn.execute(query.select_from(onboarding)).scalar_one()

    def mark_covered(
        self, source: str, deal_ids: Sequence[str], at: datetime, watermarks: dict[str, datetime]
    ) -> None:
        """Record the deals as read and move the streams' watermarks, in one transaction."""
        stmt = self.store._insert(activity_coverage).on_conflict_do_nothing()
        with self.engine.begin() as conn:
            for chunk in chunked(list(deal_ids), 1000):
                conn.execute(stmt, [{"source": source, "deal_id": d, "read_at": at} for d in chunk])
            for stream, value in watermarks.items():
                self.store._set_watermark(conn, source, f"activities:{stream}", value)

    def watermark(self, source: str, stream: str) -> datetime | None:
        return self.store.get_watermark(source, f"activities:{stream}")

    def onboarding_deals(
        self,
        source: str,
        won_after: datetime,
        *,
        active_only: bool = True,
        deal_ids: Iterable[str] | None = None,
    ) -> pd.DataFrame:
        """Onboardings won after ``won_after`` (active ones, or all; only ``deal_ids`` if given),
        with their latest deal snapshot: deal_id, status, won_at, stopped_at, adopted_at,
        modstamp, record."""
        columns = ["deal_id", "status", "won_at", "stopped_at", "adopted_at"]
        query = (
            select(*(onboarding.c[c] for c in columns), deals.c.modstamp, deals.c.record)
            .select_from(onboarding)
            .join(
                deals,
                and_(
                    deals.c.source == onboarding.c.source, deals.c.deal_id == onboarding.c.deal_id
                ),
            )
            .where(onboarding.c.source == source, onboarding.c.won_at >= won_after)
            .order_by(onboarding.c.deal_id)
        )
        if active_only:
            query = query.where(onboarding.c.status == "active")
        rows = self._rows_of(query, onboarding.c.deal_id, deal_ids)
        frame = pd.DataFrame(rows, columns=[*columns, "modstamp", "record"])
        for column in ("won_at", "stopped_at", "adopted_at", "modstamp"):
            frame[column] = pd.to_datetime(frame[column], utc=True)
        return frame

    def activities_of(
        self, source: str, deal_ids: Sequence[str], *, snippets_from: datetime | None = None
    ) -> pd.DataFrame:
        """The stored activities of these deals (deleted ones left out), one frame.

        Body snippets are what scope-creep phrases are searched in and the bulk of the memory:
        with ``snippets_from`` only those of the client's mail and of notes since then are read
        (the rule's window), the others come back empty.
        """
        columns = [
            _raw_moment(activities.c[name]) for name in ACTIVITY_FIELDS if name != "is_deleted"
        ]
        if snippets_from is not None:
            wanted = and_(
                activities.c.occurred_at >= snippets_from,
                or_(
                    and_(activities.c.direction == "inbound", activities.c.kind == "email"),
                    activities.c.kind == "note",
                ),
            )
            columns = [
                case((wanted, activities.c.snippet), else_=None).label("snippet")
                if c.name == "snippet"
                else c
                for c in columns
            ]
        names = [c.name for c in columns]
        frames = []
        with self.engine.connect() as conn:
            for chunk in chunked(list(deal_ids), 1000):
                query = select(*columns).where(
                    activities.c.source == source,
                    activities.c.deal_id.in_(chunk),
                    activities.c.is_deleted.is_(False),
                )
                rows = [tuple(row) for row in conn.execute(query)]
                frames.append(pd.DataFrame.from_records(rows, columns=names))
        frame = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=names)
        for column in ("occurred_at", "modstamp"):
            frame[column] = pd.to_datetime(frame[column], utc=True)
        return frame

    def sent_subjects(self, source: str, deal_ids: Sequence[str]) -> pd.DataFrame:
        """The subjects of the playbook emails sent to these deals: (deal_id, subject)."""
        subject = outbox.c.payload["subject"].as_string()
        rows: list[tuple[str, str]] = []
        with self.engine.connect() as conn:
            for chunk in chunked(list(deal_ids), 1000):
                rows += conn.execute(
                    select(outbox.c.deal_id, subject).where(
                        outbox.c.source == source,
                        outbox.c.deal_id.in_(chunk),
                        outbox.c.kind == "email",
                        outbox.c.status == "done",
                        subject.is_not(None),
                    )
                ).all()
        return pd.DataFrame(rows, columns=["deal_id", "subject"])

    # -- flags ---------------------------------------------------------------------------------

    def flag_generations(
        self, source: str, won_after: datetime, due_by: datetime | None
    ) -> dict[str, int | None]:
        """Onboarding deals whose flags are due by ``due_by`` (all of them if None): never
        evaluated, their data changed, or their next check came. Each with the generation of
        its check (None: no check yet), which the evaluation hands back to :meth:`apply`."""
        joined = onboarding.outerjoin(
            flag_checks,
            and_(
                flag_checks.c.source == onboarding.c.source,
                flag_checks.c.deal_id == onboarding.c.deal_id,
            ),
        )
        query = (
            select(onboarding.c.deal_id, flag_checks.c.generation)
            .select_from(joined)
            .where(
                onboarding.c.source == source,
                onboarding.c.status == "active",
                onboarding.c.won_at >= won_after,
            )
        )
        if due_by is not None:
            query = query.where(
                or_(flag_checks.c.deal_id.is_(None), flag_checks.c.check_at <= due_by)
            )
        with self.engine.connect() as conn:
            return {deal_id: generation for deal_id, generation in conn.execute(query)}

    def open_flags(self, source: str, deal_ids: Iterable[str] | None = None) -> pd.DataFrame:
        """The open flag episodes of a source (of ``deal_ids`` only, if given): id, deal,
        code, episode, reason, severity, raised_at."""
        query = select(
            flags.c.id,
            flags.c.deal_id,
            flags.c.code,
            flags.c.episode,
            flags.c.reason,
            flags.c.severity,
            flags.c.raised_at,
        ).where(flags.c.source == source, flags.c.status == "open")
        rows = self._rows_of(query, flags.c.deal_id, deal_ids)
        return pd.DataFrame(
            rows, columns=["id", "deal_id", "code", "episode", "reason", "severity", "raised_at"]
        )

    def open_flags_left(self, source: str, won_after: datetime) -> list[int]:
        """Open flag episodes of deals no longer onboarding in their 90 days."""
        onboard = and_(
            onboarding.c.source == source,
            onboarding.c.deal_id == flags.c.deal_id,
            onboarding.c.status == "active",
            onboarding.c.won_at >= won_after,
        )
        query = select(flags.c.id).where(
            flags.c.source == source, flags.c.status == "open", ~exists().where(onboard)
        )
        with self.engine.connect() as conn:
            return list(conn.execute(query).scalars())

    def count_open(self, source: str) -> int:
        query = select(func.count()).where(flags.c.source == source, flags.c.status == "open")
        with self.engine.connect() as conn:
            return int(conn.execute(query).scalar_one())

    def last_episodes(self, source: str, deal_ids: Sequence[str]) -> dict[tuple[str, str], int]:
        """The latest episode number of each (deal, code) that ever had one."""
        found: dict[tuple[str, str], int] = {}
        with self.engine.connect() as conn:
            for chunk in chunked(list(deal_ids), 1000):
                query = (
                    select(flags.c.deal_id, flags.c.code, func.max(flags.c.episode))
                    .where(flags.c.source == source, flags.c.deal_id.in_(chunk))
                    .group_by(flags.c.deal_id, flags.c.code)
                )
                found.update({(d, c): e for d, c, e in conn.execute(query).all()})
        return found

    def apply(
        self,
        source: str,
        run_id: str,
        at: datetime,
        raised: Sequence[tuple[NewFlag, int]],
        resolved: Sequence[tuple[int, str]],
        updated: Sequence[tuple[int, str]],
        checks: Mapping[str, tuple[datetime | None, int | None]] | None = None,
    ) -> tuple[int, int]:
        """Raise new episodes (with their escalation rows), resolve and re-word open ones, and
        record the evaluated deals' next checks, in one transaction. Returns (flags raised,
        escalation rows inserted).

        An episode someone else raised first (a concurrent run) is left alone, escalation and
        all: the unique episode key decides who raises it.
        """
        now = utcnow()
        new = inserted_rows = 0
        stmt = self.store._insert(flags).on_conflict_do_nothing(
            index_elements=[flags.c.source, flags.c.deal_id, flags.c.code, flags.c.episode]
        )
        with self.engine.begin() as conn:
            for flag, episode in raised:
                values = {
                    "source": source,
                    "deal_id": flag.deal_id,
                    "code": flag.code,
                    "episode": episode,
                    "status": "open",
                    "severity": flag.severity,
                    "reason": flag.reason,
                    "escalated": bool(flag.escalation),
                    "raised_at": at,
                    "raised_run": run_id,
                    "updated_at": now,
                }
                if not conn.execute(stmt.values(**values).returning(flags.c.id)).all():
                    continue
                new += 1
                rows = self.store.outbox_values(flag.escalation, run_id, now)
                if rows:
                    inserted_rows += self.store.insert_outbox(conn, rows)
            for flag_id, reason in resolved:
                conn.execute(
                    update(flags)
                    .where(flags.c.id == flag_id, flags.c.status == "open")
                    .values(
                        status="resolved",
                        resolved_at=at,
                        resolved_reason=reason,
                        resolved_run=run_id,
                        updated_at=now,
                    )
                )
            for flag_id, reason in updated:
                conn.execute(
                    update(flags).where(flags.c.id == flag_id).values(reason=reason, updated_at=now)
                )
            if checks:
                self._record_checks(conn, source, checks, now)
        return new, inserted_rows

    def _record_checks(
        self,
        conn: Any,
        source: str,
        checks: Mapping[str, tuple[datetime | None, int | None]],
        now: datetime,
    ) -> None:
        """Each evaluated deal's next check, unless its data changed since it was read (its
        generation moved, or a row appeared): then it stays due."""
        fresh = [
            {
                "source": source,
                "deal_id": deal,
                "check_at": at,
                "generation": 0,
                "evaluated_at": now,
            }
            for deal, (at, generation) in checks.items()
            if generation is None
        ]
        known = [
            {"b_deal_id": deal, "b_check_at": at, "b_generation": generation, "b_now": now}
            for deal, (at, generation) in checks.items()
            if generation is not None
        ]
        insert = self.store._insert(flag_checks).on_conflict_do_nothing()
        for chunk in chunked(fresh, 1000):
            conn.execute(insert, chunk)
        move = (
            update(flag_checks)
            .where(
                flag_checks.c.source == source,
                flag_checks.c.deal_id == bindparam("b_deal_id"),
                flag_checks.c.generation == bindparam("b_generation"),
            )
            .values(check_at=bindparam("b_check_at"), evaluated_at=bindparam("b_now"))
        )
        for chunk in chunked(known, 1000):
            conn.execute(move, chunk)

    def flag_rows(self, **filters: Any) -> list[dict[str, Any]]:
        return self.store._rows(flags, [flags.c.id], filters)

    def activity_rows(self, **filters: Any) -> list[dict[str, Any]]:
        return self.store._rows(activities, [activities.c.occurred_at], filters)
