"""exactly once under faults: attempt marks, every data issue, store facts, step outcomes

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("handoff_outbox", schema=None) as batch_op:
        batch_op.add_column(sa.Column("attempted_at", sa.DateTime(timezone=True), nullable=True))
    # Rows a crashed version left in flight may have had their effect: mark them attempted so
    # they are settled (looked up, or held for a person), never simply redone.
    op.execute("UPDATE handoff_outbox SET attempted_at = claimed_at WHERE status = 'in_flight'")
    with op.batch_alter_table("handoff_deal_issues", schema=None) as batch_op:
        batch_op.drop_constraint("uq_handoff_deal_issues_deal_code", type_="unique")
        batch_op.create_unique_constraint(
            "uq_handoff_deal_issues_deal_code_field", ["source", "deal_id", "code", "field"]
        )
    op.create_table(
        "handoff_meta",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("value", sa.Text(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_handoff_meta")),
    )
    op.create_table(
        "handoff_run_steps",
        sa.Column("run_id", sa.String(length=250), nullable=False),
        sa.Column("step", sa.String(length=64), nullable=False),
        sa.Column("source", sa.String(length=32), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("message", sa.Text(), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("run_id", "step", name=op.f("pk_handoff_run_steps")),
    )


def downgrade() -> None:
    op.drop_table("handoff_run_steps")
    op.drop_table("handoff_meta")
    with op.batch_alter_table("handoff_deal_issues", schema=None) as batch_op:
        batch_op.drop_constraint("uq_handoff_deal_issues_deal_code_field", type_="unique")
        batch_op.create_unique_constraint(
            "uq_handoff_deal_issues_deal_code", ["source", "deal_id", "code"]
        )
    with op.batch_alter_table("handoff_outbox", schema=None) as batch_op:
        batch_op.drop_column("attempted_at")
