"""Live scores: the current score of every open deal, with the model version and when it was computed.

`state_updated_at` is the deal's state stamp the score was computed from: a deal whose stamp moved on
since (a write touched it) is pending a re-score, which survives a crash or restart because the stamp
is written in the write's own transaction.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "deal_scores",
        sa.Column("deal_id", sa.String(200), sa.ForeignKey("deals.deal_id"), primary_key=True),
        sa.Column("model_version", sa.String(100), nullable=False),
        sa.Column("as_of", sa.DateTime, nullable=False),
        sa.Column("computed_at", sa.DateTime, nullable=False),
        sa.Column("state_updated_at", sa.DateTime),
        sa.Column("cold_risk", sa.Float, nullable=False),
        sa.Column("close_probability", sa.Float, nullable=False),
        sa.Column("risk_band", sa.String(20), nullable=False),
        sa.Column("expected_value", sa.Float, nullable=False),
        sa.Column("reasons", sa.JSON, nullable=False),
        sa.Column("close_probability_90d", sa.Float),
        sa.Column("slip_risk", sa.Float),
        sa.Column("likely_close_date", sa.DateTime),
        sa.Column("counter_reasons", sa.JSON),
    )
    op.create_index("ix_deal_scores_cold_risk", "deal_scores", ["cold_risk"])


def downgrade() -> None:
    op.drop_table("deal_scores")
