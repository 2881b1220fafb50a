"""The schema of the first release (what `create_all` made before Alembic owned it).

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

EVENTS = {
    "stage_changes": ([sa.Column("stage", sa.String(200), nullable=False)], "changed_at"),
    "activities": (
        [sa.Column("type", sa.String(20), nullable=False), sa.Column("direction", sa.String(20))],
        "occurred_at",
    ),
    "field_changes": (
        [sa.Column("field", sa.String(50), nullable=False), sa.Column("value", sa.Text)],
        "changed_at",
    ),
}


def upgrade() -> None:
    op.create_table(
        "pipelines",
        sa.Column("name", sa.String(200), primary_key=True),
        sa.Column("spec", sa.JSON, nullable=False),
    )
    op.create_table(
        "deals",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("deal_id", sa.String(200), nullable=False, unique=True),
        sa.Column("pipeline", sa.String(200), nullable=False),
        sa.Column("owner", sa.String(200), nullable=False),
        sa.Column("team", sa.String(200)),
        sa.Column("account", sa.String(500)),
        sa.Column("amount", sa.Float, nullable=False),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.Column("expected_close_date", sa.DateTime),
        sa.Column("currency", sa.String(10)),
        sa.Column("attributes", sa.JSON, nullable=False),
        sa.Column("row_hash", sa.String(64), nullable=False),
    )
    op.create_index("ix_deals_pipeline", "deals", ["pipeline"])
    for table, (columns, time_col) in EVENTS.items():
        op.create_table(
            table,
            sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
            sa.Column("event_key", sa.String(200), nullable=False, unique=True),
            sa.Column("deal_id", sa.String(200), sa.ForeignKey("deals.deal_id"), nullable=False),
            *columns,
            sa.Column(time_col, sa.DateTime, nullable=False),
            sa.Column("event_id", sa.String(200)),
        )
        op.create_index(f"ix_{table}_deal_id", table, ["deal_id"])
    op.create_table(
        "api_keys",
        sa.Column("key_id", sa.String(16), primary_key=True),
        sa.Column("name", sa.String(200)),
        sa.Column("role", sa.String(20), nullable=False),
        sa.Column("pipelines", sa.JSON, nullable=False),
        sa.Column("key_hash", sa.String(64), nullable=False),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.Column("revoked_at", sa.DateTime),
    )


def downgrade() -> None:
    for table in ("api_keys", *EVENTS, "deals", "pipelines"):
        op.drop_table(table)
