"""Learned stage limits kept per pipeline, so the live at-risk and stale lists never load history.

`learned_stale_days` maps each stage of the pipeline to the 80th percentile of the days won deals spent in
it (`features.health.learned_stale_thresholds`); NULL until first computed. `stale_learned_at` is the
wall-clock time the computation started: a won deal written after it makes the limits due again
(`serving.stage_limits`). Configured `stale_after_days` stay in `spec` and win at read time.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("pipelines", sa.Column("learned_stale_days", sa.JSON))
    op.add_column("pipelines", sa.Column("stale_learned_at", sa.DateTime))


def downgrade() -> None:
    with op.batch_alter_table("pipelines") as batch:
        batch.drop_column("stale_learned_at")
        batch.drop_column("learned_stale_days")
