"""detection by change marks: each saved deal carries the generation detection has yet to see

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("handoff_deals", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("change_generation", sa.Integer(), nullable=False, server_default="0")
        )
        batch_op.add_column(sa.Column("detect_due", sa.Integer(), nullable=True))
        batch_op.create_index("ix_handoff_deals_detect_due", ["source", "detect_due"])
    # The wall-clock mark the last detection left is not read any more: the next detection
    # looks at every stored deal once, as a first run does.
    op.execute("UPDATE handoff_deals SET change_generation = 1, detect_due = 1")


def downgrade() -> None:
    with op.batch_alter_table("handoff_deals", schema=None) as batch_op:
        batch_op.drop_index("ix_handoff_deals_detect_due")
        batch_op.drop_column("detect_due")
        batch_op.drop_column("change_generation")
    # The older detection starts from its own mark; without it, it looks at everything once.
    op.execute("DELETE FROM handoff_meta WHERE name LIKE 'detected_saved:%'")
