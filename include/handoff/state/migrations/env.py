"""Alembic environment: runs on the connection the state store hands in."""

from __future__ import annotations

from alembic import context

from handoff.state.schema import metadata

VERSION_TABLE = "handoff_alembic_version"

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=metadata,
    version_table=VERSION_TABLE,
    render_as_batch=True,
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
