"""The store as the system of record: pipelines as entities, deal state columns, events keyed per deal.

- `pipelines.inferred` (a spec inferred from the data, extended as stages arrive) and `updated_at`;
  specs stored before this revision came from an import and stay authoritative (inferred = false).
- `pipeline_attributes`: the distinct custom-attribute names of each pipeline (bounded per pipeline).
- `deals`: current-state columns (NULL `state_updated_at` = not computed yet; the store fills them in
  after upgrading, see `Store.upgrade`).
- event tables: `event_key` unique per deal (`deal_id, event_key`) instead of across the store. The tables
  are rebuilt (create, copy, drop, rename) because SQLite cannot drop a column's unnamed UNIQUE.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

STATE_COLUMNS = (
    ("current_stage", sa.String(200)),
    ("outcome", sa.String(10)),
    ("current_owner", sa.String(200)),
    ("current_amount", sa.Float),
    ("current_expected_close_date", sa.DateTime),
    ("stage_entered_at", sa.DateTime),
    ("closed_at", sa.DateTime),
    ("last_activity_at", sa.DateTime),
    ("first_event_at", sa.DateTime),
    ("last_event_at", sa.DateTime),
    ("n_events", sa.Integer),
    ("state_updated_at", sa.DateTime),
)
EVENTS = {
    "stage_changes": ([sa.Column("stage", sa.String(200), nullable=False)], "changed_at", ["stage"]),
    "activities": (
        [sa.Column("type", sa.String(20), nullable=False), sa.Column("direction", sa.String(20))],
        "occurred_at",
        ["type", "direction"],
    ),
    "field_changes": (
        [sa.Column("field", sa.String(50), nullable=False), sa.Column("value", sa.Text)],
        "changed_at",
        ["field", "value"],
    ),
}


def upgrade() -> None:
    op.add_column("pipelines", sa.Column("inferred", sa.Boolean, nullable=False, server_default=sa.false()))
    op.add_column("pipelines", sa.Column("updated_at", sa.DateTime))
    op.create_table(
        "pipeline_attributes",
        sa.Column("pipeline", sa.String(200), primary_key=True),
        sa.Column("name", sa.String(200), primary_key=True),
    )
    for name, type_ in STATE_COLUMNS:
        op.add_column("deals", sa.Column(name, type_))
    op.create_index("ix_deals_pipeline_outcome", "deals", ["pipeline", "outcome"])
    dialect = op.get_bind().dialect.name
    for table, (columns, time_col, content) in EVENTS.items():
        new = f"{table}_v2"
        op.create_table(
            new,
            sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
            sa.Column("event_key", sa.String(200), nullable=False),
            sa.Column("deal_id", sa.String(200), sa.ForeignKey("deals.deal_id"), nullable=False),
            *columns,
            sa.Column(time_col, sa.DateTime, nullable=False),
            sa.Column("event_id", sa.String(200)),
            sa.UniqueConstraint("deal_id", "event_key", name=f"uq_{table}_deal_event"),
        )
        names = ", ".join(["id", "event_key", "deal_id", *content, time_col, "event_id"])
        op.execute(f"INSERT INTO {new} ({names}) SELECT {names} FROM {table}")
        op.drop_table(table)
        op.rename_table(new, table)
        op.create_index(f"ix_{table}_deal_time", table, ["deal_id", time_col])
        if dialect == "postgresql":
            # ids were copied: the renamed table's sequence must continue after the largest one
            op.execute(
                f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
                f"COALESCE((SELECT MAX(id) FROM {table}), 0) + 1, false)"
            )


def downgrade() -> None:
    raise NotImplementedError(
        "downgrading below 0002 would merge events of different deals; restore a backup"
    )
