"""Live scores keep the close head's timing curve, so the forecast as of now reads them back.

`timing_curve` is the deal's `{"period_days", "hazards"}` (`models.timing.curves_to_json`), `{}` when
the model that scored it has no timing model, and NULL for a score stored before this revision: those
scores are marked pending (`state_updated_at` NULL), so the live scorer computes them again first, and
until then the forecast scores the pipeline on demand.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("deal_scores", sa.Column("timing_curve", sa.JSON))
    op.execute(sa.text("UPDATE deal_scores SET state_updated_at = NULL"))


def downgrade() -> None:
    with op.batch_alter_table("deal_scores") as batch:
        batch.drop_column("timing_curve")
