"""initial state store schema

Revision ID: 0001
Revises: (none)
Create Date: 2026-11-23
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:

    op.create_table(
        "handoff_deal_issues",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("source", sa.String(length=32), nullable=False),
        sa.Column("deal_id", sa.String(length=64), nullable=False),
        sa.Column("code", sa.String(length=64), nullable=False),
        sa.Column("field", sa.String(length=120), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("run_id", sa.String(length=250), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_handoff_deal_issues")),
        sa.UniqueConstraint("source", "deal_id", "code", name="uq_handoff_deal_issues_deal_code"),
    )
    with op.batch_alter_table("handoff_deal_issues", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_handoff_deal_issues_run_id"), ["run_id"], unique=False)

    op.create_table(
        "handoff_deals",
        sa.Column("source", sa.String(length=32), nullable=False),
        sa.Column("deal_id", sa.String(length=64), nullable=False),
        sa.Column("is_won", sa.Boolean(), nullable=False),
        sa.Column("is_deleted", sa.Boolean(), nullable=False),
        sa.Column("stage", sa.String(length=120), nullable=False),
        sa.Column("amount", sa.Float(), nullable=True),
        sa.Column("close_date", sa.Date(), nullable=True),
        sa.Column("won_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("modstamp", sa.DateTime(timezone=True), nullable=False),
        sa.Column("record", sa.JSON(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("source", "deal_id", name=op.f("pk_handoff_deals")),
    )
    with op.batch_alter_table("handoff_deals", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_handoff_deals_won_at"), ["won_at"], unique=False)

    op.create_table(
        "handoff_onboarding",
        sa.Column("source", sa.String(length=32), nullable=False),
        sa.Column("deal_id", sa.String(length=64), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("won_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("detected_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("detected_run", sa.String(length=250), nullable=False),
        sa.Column("planned_run", sa.String(length=250), nullable=True),
        sa.Column("stopped_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("stop_reason", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("source", "deal_id", name=op.f("pk_handoff_onboarding")),
    )
    with op.batch_alter_table("handoff_onboarding", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_handoff_onboarding_detected_run"), ["detected_run"], unique=False
        )

    op.create_table(
        "handoff_outbox",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("dedupe_key", sa.String(length=250), nullable=False),
        sa.Column("source", sa.String(length=32), nullable=False),
        sa.Column("deal_id", sa.String(length=64), nullable=False),
        sa.Column("step", sa.String(length=64), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("claimed_by", sa.String(length=250), nullable=True),
        sa.Column("claimed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("external_id", sa.String(length=250), nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("planned_run", sa.String(length=250), nullable=False),
        sa.Column("finished_run", sa.String(length=250), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_handoff_outbox")),
        sa.UniqueConstraint("dedupe_key", name=op.f("uq_handoff_outbox_dedupe_key")),
    )
    with op.batch_alter_table("handoff_outbox", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_handoff_outbox_finished_run"), ["finished_run"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_handoff_outbox_status"), ["status"], unique=False)

    op.create_table(
        "handoff_watermarks",
        sa.Column("source", sa.String(length=32), nullable=False),
        sa.Column("stream", sa.String(length=64), nullable=False),
        sa.Column("cursor_value", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("source", "stream", name=op.f("pk_handoff_watermarks")),
    )


def downgrade() -> None:

    op.drop_table("handoff_watermarks")
    with op.batch_alter_table("handoff_outbox", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_handoff_outbox_status"))
        batch_op.drop_index(batch_op.f("ix_handoff_outbox_finished_run"))

    op.drop_table("handoff_outbox")
    with op.batch_alter_table("handoff_onboarding", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_handoff_onboarding_detected_run"))

    op.drop_table("handoff_onboarding")
    with op.batch_alter_table("handoff_deals", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_handoff_deals_won_at"))

    op.drop_table("handoff_deals")
    with op.batch_alter_table("handoff_deal_issues", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_handoff_deal_issues_run_id"))

    op.drop_table("handoff_deal_issues")
