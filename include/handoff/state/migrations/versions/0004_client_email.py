"""client email: unsubscribe tokens and opt-outs

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "handoff_unsubscribe_tokens",
        sa.Column("token", sa.String(length=64), nullable=False),
        sa.Column("source", sa.String(length=32), nullable=False),
        sa.Column("deal_id", sa.String(length=64), nullable=False),
        sa.Column("contact_id", sa.String(length=64), nullable=False),
        sa.Column("email", sa.String(length=320), nullable=False),
        sa.Column("step", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("token", name=op.f("pk_handoff_unsubscribe_tokens")),
    )
    op.create_table(
        "handoff_opt_outs",
        sa.Column("source", sa.String(length=32), nullable=False),
        sa.Column("contact_id", sa.String(length=64), nullable=False),
        sa.Column("email", sa.String(length=320), nullable=False),
        sa.Column("opted_out_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("crm_written_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("crm_error", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("source", "contact_id", name=op.f("pk_handoff_opt_outs")),
    )
    op.create_index(
        "ix_handoff_opt_outs_unwritten", "handoff_opt_outs", ["source", "crm_written_at"]
    )


def downgrade() -> None:
    op.drop_index("ix_handoff_opt_outs_unwritten", table_name="handoff_opt_outs")
    op.drop_table("handoff_opt_outs")
    op.drop_table("handoff_unsubscribe_tokens")
