"""An index for ranking the live at-risk list at scale.

`deal_scores (deal_id, close_probability, cold_risk)`: the at-risk list ranks a pipeline's open deals by
amount × close probability × cold risk, joining each open deal to its live score. A live score's row is
wide (its reasons and its timing curve, about 2 KB), so at 100,000 deals the join read one table page per
open deal; through this index it reads the two numbers it ranks by and nothing else (the ranking's SQL
went from about 38 ms to 12 ms on a 100,000-deal SQLite store with 3,960 open deals in the pipeline).

Revision ID: 0009
Revises: 0008
"""

from __future__ import annotations

from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_deal_scores_rank", "deal_scores", ["deal_id", "close_probability", "cold_risk"])


def downgrade() -> None:
    op.drop_index("ix_deal_scores_rank", "deal_scores")
