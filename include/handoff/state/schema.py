"""Tables of the state store. Any change here needs a new Alembic revision in migrations/."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    Date,
    DateTime,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    TypeDecorator,
    UniqueConstraint,
)


class UtcDateTime(TypeDecorator):
    """Timezone-aware UTC in and out, also on SQLite, which keeps no offset."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect):  # noqa: ARG002
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r} given to the state store; pass UTC")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect):  # noqa: ARG002
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


metadata = MetaData(
    naming_convention={
        "pk": "pk_%(table_name)s",
        "uq": "uq_%(table_name)s_%(column_0_name)s",
        "ix": "ix_%(table_name)s_%(column_0_name)s",
    }
)

watermarks = Table(
    "handoff_watermarks",
    metadata,
    Column("source", String(32), primary_key=True),
    Column("stream", String(64), primary_key=True),
    Column("cursor_value", UtcDateTime, nullable=False),
    Column("updated_at", UtcDateTime, nullable=False),
)

deals = Table(
    "handoff_deals",
    metadata,
    Column("source", String(32), primary_key=True),
    Column("deal_id", String(64), primary_key=True),
    Column("is_won", Boolean, nullable=False),
    Column("is_deleted", Boolean, nullable=False),
    Column("stage", String(120), nullable=False),
    Column("amount", Float, nullable=True),
    Column("close_date", Date, nullable=True),
    Column("won_at", UtcDateTime, nullable=True, index=True),
    Column("modstamp", UtcDateTime, nullable=False),
    Column("record", JSON, nullable=False),
    Column("updated_at", UtcDateTime, nullable=False, index=True),
    # Bumped by every save of the snapshot; never reset (so a stale reader can't match it).
    Column("change_generation", Integer, nullable=False, server_default="0"),
    # The generation detection has yet to look at; NULL once it did. Set in the saving
    # transaction, cleared only if unchanged: no clock decides what detection sees.
    Column("detect_due", Integer, nullable=True),
    Index("ix_handoff_deals_detect_due", "source", "detect_due"),
)

onboarding = Table(
    "handoff_onboarding",
    metadata,
    Column("source", String(32), primary_key=True),
    Column("deal_id", String(64), primary_key=True),
    # active (its steps are planned as they fall due), stopped (left Closed Won) or completed
    Column("status", String(16), nullable=False),
    # Day 0 of the playbook: the win as first detected (a later edit of the date moves nothing).
    Column("won_at", UtcDateTime, nullable=False),
    Column("detected_at", UtcDateTime, nullable=False),
    Column("detected_run", String(250), nullable=False, index=True),
    Column("planned_run", String(250), nullable=True),
    Column("stopped_at", UtcDateTime, nullable=True),
    Column("stop_reason", Text, nullable=True),
    # When the planner must look at this deal again (its next step falls due); NULL: now.
    Column("next_step_at", UtcDateTime, nullable=True, index=True),
    # The deal snapshot the last plan was made from: a newer one is planned again.
    Column("planned_modstamp", UtcDateTime, nullable=True),
    # A client taken on while already inside its 90 days: steps due before this are not sent.
    Column("adopted_at", UtcDateTime, nullable=True),
    Index("ix_handoff_onboarding_status", "source", "status"),
)

outbox = Table(
    "handoff_outbox",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("dedupe_key", String(250), nullable=False, unique=True),
    Column("source", String(32), nullable=False),
    Column("deal_id", String(64), nullable=False),
    Column("step", String(64), nullable=False),
    Column("kind", String(16), nullable=False),
    Column("status", String(16), nullable=False, index=True),
    Column("payload", JSON, nullable=False),
    # When the step may go out, and the latest moment it is still sensible (then: skipped).
    Column("due_at", UtcDateTime, nullable=False),
    Column("not_after", UtcDateTime, nullable=True),
    Column("attempts", Integer, nullable=False, default=0),
    Column("claimed_by", String(250), nullable=True),
    Column("claimed_at", UtcDateTime, nullable=True),
    # Set, in its own commit, right before the effect is handed over (SMTP DATA, the CRM write):
    # a row in flight without it provably had no effect and may simply be done again.
    Column("attempted_at", UtcDateTime, nullable=True),
    Column("external_id", String(250), nullable=True),
    Column("reason", Text, nullable=True),
    Column("planned_run", String(250), nullable=False),
    Column("finished_run", String(250), nullable=True, index=True),
    Column("created_at", UtcDateTime, nullable=False),
    Column("updated_at", UtcDateTime, nullable=False),
    Index("ix_handoff_outbox_claim", "source", "kind", "status", "due_at"),
    Index("ix_handoff_outbox_deal", "source", "deal_id"),
)

deal_issues = Table(
    "handoff_deal_issues",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("source", String(32), nullable=False),
    Column("deal_id", String(64), nullable=False),
    Column("code", String(64), nullable=False),
    Column("field", String(120), nullable=False),
    Column("reason", Text, nullable=False),
    Column("run_id", String(250), nullable=False, index=True),
    Column("created_at", UtcDateTime, nullable=False),
    UniqueConstraint(
        "source", "deal_id", "code", "field", name="uq_handoff_deal_issues_deal_code_field"
    ),
)

# Facts about the store itself, e.g. when ``handoff init`` made it the deliberate start of
# a CRM's history (wins before that moment belong to an earlier installation).
store_meta = Table(
    "handoff_meta",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("value", Text, nullable=False),
    Column("updated_at", UtcDateTime, nullable=False),
)

# How each step of each run ended, so a failed run still gets a summary that says why.
run_steps = Table(
    "handoff_run_steps",
    metadata,
    Column("run_id", String(250), primary_key=True),
    Column("step", String(64), primary_key=True),
    Column("source", String(32), nullable=False),
    Column("status", String(16), nullable=False),
    Column("message", Text, nullable=True),
    Column("attempts", Integer, nullable=False),
    Column("updated_at", UtcDateTime, nullable=False),
)

# The keyed token each promotional email carries, and whom it stands for: the unsubscribe
# endpoint looks the token up, so no CRM id or address ever appears in a link.
unsubscribe_tokens = Table(
    "handoff_unsubscribe_tokens",
    metadata,
    Column("token", String(64), primary_key=True),
    Column("source", String(32), nullable=False),
    Column("deal_id", String(64), nullable=False),
    Column("contact_id", String(64), nullable=False),
    Column("email", String(320), nullable=False),
    Column("step", String(64), nullable=False),
    Column("created_at", UtcDateTime, nullable=False),
)

# Contacts who unsubscribed: their promotional steps stop at once; the CRM's opt-out field is
# written on the next run (crm_written_at), retried until it is.
opt_outs = Table(
    "handoff_opt_outs",
    metadata,
    Column("source", String(32), primary_key=True),
    Column("contact_id", String(64), primary_key=True),
    Column("email", String(320), nullable=False),
    Column("opted_out_at", UtcDateTime, nullable=False),
    Column("crm_written_at", UtcDateTime, nullable=True),
    Column("crm_error", Text, nullable=True),
    Index("ix_handoff_opt_outs_unwritten", "source", "crm_written_at"),
)

# What happened on each onboarding deal (emails, calls, meetings, notes, tasks), as the CRM
# logged it: what the red-flag rules and the metrics read. One row per activity and deal (an
# activity on a contact counts for each deal it is the primary contact of).
activities = Table(
    "handoff_activities",
    metadata,
    Column("source", String(32), primary_key=True),
    Column("activity_id", String(96), primary_key=True),
    Column("deal_id", String(64), primary_key=True),
    Column("kind", String(16), nullable=False),
    Column("direction", String(16), nullable=False),
    Column("occurred_at", UtcDateTime, nullable=True),
    Column("outcome", String(16), nullable=True),
    Column("subject", Text, nullable=True),
    Column("snippet", Text, nullable=True),
    Column("owner_id", String(64), nullable=True),
    Column("handoff_key", String(250), nullable=True),
    Column("is_deleted", Boolean, nullable=False),
    Column("modstamp", UtcDateTime, nullable=False),
    Column("updated_at", UtcDateTime, nullable=False),
    Index("ix_handoff_activities_deal", "source", "deal_id"),
)

# Deals whose whole activity history has been read once: after that, the streams' watermarks
# bring only what changed.
activity_coverage = Table(
    "handoff_activity_coverage",
    metadata,
    Column("source", String(32), primary_key=True),
    Column("deal_id", String(64), primary_key=True),
    Column("read_at", UtcDateTime, nullable=False),
)

# Red flags: one row per episode of a rule holding for a deal. A new episode escalates once (its
# outbox rows carry the episode in their key); it is resolved when the rule stops holding, and a
# later return is a new episode.
flags = Table(
    "handoff_flags",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("source", String(32), nullable=False),
    Column("deal_id", String(64), nullable=False),
    Column("code", String(64), nullable=False),
    Column("episode", Integer, nullable=False),
    Column("status", String(16), nullable=False),  # open | resolved
    Column("severity", String(16), nullable=False),
    Column("reason", Text, nullable=False),
    # False: found on a client adopted at install and taken as found (listed, not escalated).
    Column("escalated", Boolean, nullable=False, default=True),
    Column("raised_at", UtcDateTime, nullable=False),
    Column("raised_run", String(250), nullable=False),
    Column("resolved_at", UtcDateTime, nullable=True),
    Column("resolved_reason", Text, nullable=True),
    Column("resolved_run", String(250), nullable=True),
    Column("updated_at", UtcDateTime, nullable=False),
    UniqueConstraint("source", "deal_id", "code", "episode", name="uq_handoff_flags_episode"),
    Index("ix_handoff_flags_open", "source", "status"),
)

# When each onboarding deal's red flags must be evaluated again if nothing about it changes
# (a rule could start or stop holding then); NULL: only when its data changes. Whatever writes
# a deal's activities or snapshot makes it due at once and bumps ``generation``; an evaluation
# records its next check only if the generation is still the one it read, so a write that
# lands during an evaluation is never lost. A deal with no row here is evaluated at the next run.
flag_checks = Table(
    "handoff_flag_checks",
    metadata,
    Column("source", String(32), primary_key=True),
    Column("deal_id", String(64), primary_key=True),
    Column("check_at", UtcDateTime, nullable=True),
    Column("generation", Integer, nullable=False),
    Column("evaluated_at", UtcDateTime, nullable=True),
    Index("ix_handoff_flag_checks_due", "source", "check_at"),
)

# How each onboarding went, per deal, as the last metrics run computed it (exported as CSV and
# Parquet with the per-rep and per-cohort views built from it).
deal_metrics = Table(
    "handoff_deal_metrics",
    metadata,
    Column("source", String(32), primary_key=True),
    Column("deal_id", String(64), primary_key=True),
    Column("computed_at", UtcDateTime, nullable=False),
    Column("account", Text, nullable=True),
    Column("rep", Text, nullable=True),
    Column("csm", Text, nullable=True),
    Column("status", String(16), nullable=False),
    Column("won_at", UtcDateTime, nullable=False),
    Column("cohort_week", Date, nullable=False),
    Column("first_contact_at", UtcDateTime, nullable=True),
    Column("first_contact_hours", Float, nullable=True),
    Column("kickoff_at", UtcDateTime, nullable=True),
    Column("kickoff_days", Float, nullable=True),
    Column("first_value_at", UtcDateTime, nullable=True),
    Column("kickoff_to_value_days", Float, nullable=True),
    # On target (the framework's < 4 h, < 5 days, < 14 days); NULL while still inside it.
    Column("first_contact_on_time", Boolean, nullable=True),
    Column("kickoff_on_time", Boolean, nullable=True),
    Column("first_value_on_time", Boolean, nullable=True),
    Column("steps_due", Integer, nullable=False),
    Column("steps_done", Integer, nullable=False),
    Column("flags_raised", Integer, nullable=False),
    Column("flags_open", Integer, nullable=False),
    Column("doc_fields_filled", Integer, nullable=False),
    Column("doc_fields", Integer, nullable=False),
)
