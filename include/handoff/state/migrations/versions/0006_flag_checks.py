"""red flags evaluated incrementally: each deal's next check

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "handoff_flag_checks",
        sa.Column("source", sa.String(length=32), nullable=False),
        sa.Column("deal_id", sa.String(length=64), nullable=False),
        sa.Column("check_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("generation", sa.Integer(), nullable=False),
        sa.Column("evaluated_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("source", "deal_id", name=op.f("pk_handoff_flag_checks")),
    )
    op.create_index("ix_handoff_flag_checks_due", "handoff_flag_checks", ["source", "check_at"])


def downgrade() -> None:
    op.drop_index("ix_handoff_flag_checks_due", table_name="handoff_flag_checks")
    op.drop_table("handoff_flag_checks")
