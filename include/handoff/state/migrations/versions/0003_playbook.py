"""the 90-day playbook: due times on the outbox, a next-step time on each onboarding

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("handoff_outbox", schema=None) as batch_op:
        batch_op.add_column(sa.Column("due_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("not_after", sa.DateTime(timezone=True), nullable=True))
    # Rows planned before due times existed were due when they were planned.
    op.execute("UPDATE handoff_outbox SET due_at = created_at WHERE due_at IS NULL")
    with op.batch_alter_table("handoff_outbox", schema=None) as batch_op:
        batch_op.alter_column("due_at", existing_type=sa.DateTime(timezone=True), nullable=False)
        batch_op.create_index(
            "ix_handoff_outbox_claim", ["source", "kind", "status", "due_at"], unique=False
        )
        batch_op.create_index("ix_handoff_outbox_deal", ["source", "deal_id"], unique=False)
    with op.batch_alter_table("handoff_onboarding", schema=None) as batch_op:
        batch_op.add_column(sa.Column("next_step_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(
            sa.Column("planned_modstamp", sa.DateTime(timezone=True), nullable=True)
        )
        batch_op.add_column(sa.Column("adopted_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.create_index("ix_handoff_onboarding_next_step_at", ["next_step_at"], unique=False)
        batch_op.create_index("ix_handoff_onboarding_status", ["source", "status"], unique=False)
    with op.batch_alter_table("handoff_deals", schema=None) as batch_op:
        batch_op.create_index("ix_handoff_deals_updated_at", ["updated_at"], unique=False)
    # Deals detected or planned by the day-0 version continue with the rest of the playbook.
    op.execute(
        "UPDATE handoff_onboarding SET status = 'active' WHERE status IN ('detected', 'planned')"
    )


def downgrade() -> None:
    op.execute("UPDATE handoff_onboarding SET status = 'planned' WHERE status = 'active'")
    with op.batch_alter_table("handoff_deals", schema=None) as batch_op:
        batch_op.drop_index("ix_handoff_deals_updated_at")
    with op.batch_alter_table("handoff_onboarding", schema=None) as batch_op:
        batch_op.drop_index("ix_handoff_onboarding_status")
        batch_op.drop_index("ix_handoff_onboarding_next_step_at")
        batch_op.drop_column("adopted_at")
        batch_op.drop_column("planned_modstamp")
        batch_op.drop_column("next_step_at")
    with op.batch_alter_table("handoff_outbox", schema=None) as batch_op:
        batch_op.drop_index("ix_handoff_outbox_deal")
        batch_op.drop_index("ix_handoff_outbox_claim")
        batch_op.drop_column("not_after")
        batch_op.drop_column("due_at")
