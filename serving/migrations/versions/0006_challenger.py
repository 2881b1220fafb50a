"""Shadow challengers and stored score history.

`challenger_scores`: the current live score of each open deal by the shadow challenger (never read by a
manager-facing route). `score_history`: every saved live score (champion and challenger), one row per
deal, model version, role and UTC day of its `as_of` (the day's last score), for the monitor and the
challenger report. `service_settings`: run-time settings kept across restarts (the challenger).

Revision ID: 0006
Revises: 0005
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
        "challenger_scores",
        sa.Column("deal_id", sa.String(200), sa.ForeignKey("deals.deal_id"), primary_key=True),
        sa.Column("model_version", sa.String(100), nullable=False),
        sa.Column("as_of", sa.DateTime, nullable=False),
        sa.Column("computed_at", sa.DateTime, nullable=False),
        sa.Column("cold_risk", sa.Float, nullable=False),
        sa.Column("close_probability", sa.Float, nullable=False),
        sa.Column("risk_band", sa.String(20), nullable=False),
        sa.Column("close_probability_90d", sa.Float),
        sa.Column("slip_risk", sa.Float),
    )
    op.create_table(
        "score_history",
        sa.Column("deal_id", sa.String(200), sa.ForeignKey("deals.deal_id"), primary_key=True),
        sa.Column("role", sa.String(20), primary_key=True),
        sa.Column("model_version", sa.String(100), primary_key=True),
        sa.Column("day", sa.Date, primary_key=True),
        sa.Column("as_of", sa.DateTime, nullable=False),
        sa.Column("computed_at", sa.DateTime, nullable=False),
        sa.Column("cold_risk", sa.Float, nullable=False),
        sa.Column("close_probability", sa.Float, nullable=False),
    )
    op.create_index("ix_score_history_version", "score_history", ["model_version", "role", "as_of"])
    op.create_index("ix_score_history_as_of", "score_history", ["as_of"])
    op.create_table(
        "service_settings",
        sa.Column("name", sa.String(100), primary_key=True),
        sa.Column("value", sa.JSON, nullable=False),
        sa.Column("updated_at", sa.DateTime, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("service_settings")
    op.drop_table("score_history")
    op.drop_table("challenger_scores")
