"""Alembic environment: migrations run on the connection `serving.store.Store.upgrade` hands in.

There is no alembic.ini: the store builds the config in code, so `dealrisk import`, `serve` and tests
all migrate the same way. On PostgreSQL the store sets `search_path` to its schema for the transaction,
so migrations name tables without a schema.
"""

from __future__ import annotations

from alembic import context

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=None,
    version_table_schema=context.config.attributes.get("schema"),
    transactional_ddl=True,
)
with context.begin_transaction():
    context.run_migrations()
