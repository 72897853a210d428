"""red flags: activities, their coverage per deal, flag episodes, and per-deal metrics

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "handoff_activities",
        sa.Column("source", sa.String(length=32), nullable=False),
        sa.Column("activity_id", sa.String(length=96), nullable=False),
        sa.Column("deal_id", sa.String(length=64), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("direction", sa.String(length=16), nullable=False),
        sa.Column("occurred_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("outcome", sa.String(length=16), nullable=True),
        sa.Column("subject", sa.Text(), nullable=True),
        sa.Column("snippet", sa.Text(), nullable=True),
        sa.Column("owner_id", sa.String(length=64), nullable=True),
        sa.Column("handoff_key", sa.String(length=250), nullable=True),
        sa.Column("is_deleted", sa.Boolean(), nullable=False),
        sa.Column("modstamp", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint(
            "source", "activity_id", "deal_id", name=op.f("pk_handoff_activities")
        ),
    )
    op.create_index("ix_handoff_activities_deal", "handoff_activities", ["source", "deal_id"])
    op.create_table(
        "handoff_activity_coverage",
        sa.Column("source", sa.String(length=32), nullable=False),
        sa.Column("deal_id", sa.String(length=64), nullable=False),
        sa.Column("read_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("source", "deal_id", name=op.f("pk_handoff_activity_coverage")),
    )
    op.create_table(
        "handoff_flags",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("source", sa.String(length=32), nullable=False),
        sa.Column("deal_id", sa.String(length=64), nullable=False),
        sa.Column("code", sa.String(length=64), nullable=False),
        sa.Column("episode", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("severity", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("escalated", sa.Boolean(), nullable=False),
        sa.Column("raised_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("raised_run", sa.String(length=250), nullable=False),
        sa.Column("resolved_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("resolved_reason", sa.Text(), nullable=True),
        sa.Column("resolved_run", sa.String(length=250), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_handoff_flags")),
        sa.UniqueConstraint(
            "source", "deal_id", "code", "episode", name="uq_handoff_flags_episode"
        ),
    )
    op.create_index("ix_handoff_flags_open", "handoff_flags", ["source", "status"])
    op.create_table(
        "handoff_deal_metrics",
        sa.Column("source", sa.String(length=32), nullable=False),
        sa.Column("deal_id", sa.String(length=64), nullable=False),
        sa.Column("computed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("account", sa.Text(), nullable=True),
        sa.Column("rep", sa.Text(), nullable=True),
        sa.Column("csm", sa.Text(), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("won_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("cohort_week", sa.Date(), nullable=False),
        sa.Column("first_contact_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("first_contact_hours", sa.Float(), nullable=True),
        sa.Column("kickoff_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("kickoff_days", sa.Float(), nullable=True),
        sa.Column("first_value_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("kickoff_to_value_days", sa.Float(), nullable=True),
        sa.Column("first_contact_on_time", sa.Boolean(), nullable=True),
        sa.Column("kickoff_on_time", sa.Boolean(), nullable=True),
        sa.Column("first_value_on_time", sa.Boolean(), nullable=True),
        sa.Column("steps_due", sa.Integer(), nullable=False),
        sa.Column("steps_done", sa.Integer(), nullable=False),
        sa.Column("flags_raised", sa.Integer(), nullable=False),
        sa.Column("flags_open", sa.Integer(), nullable=False),
        sa.Column("doc_fields_filled", sa.Integer(), nullable=False),
        sa.Column("doc_fields", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("source", "deal_id", name=op.f("pk_handoff_deal_metrics")),
    )


def downgrade() -> None:
    op.drop_table("handoff_deal_metrics")
    op.drop_index("ix_handoff_flags_open", table_name="handoff_flags")
    op.drop_table("handoff_flags")
    op.drop_table("handoff_activity_coverage")
    op.drop_index("ix_handoff_activities_deal", table_name="handoff_activities")
    op.drop_table("handoff_activities")
