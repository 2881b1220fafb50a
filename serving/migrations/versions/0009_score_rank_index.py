"""A narrow index of the live scores, for the at-risk ranking and the live scorer's look for due deals.

`deal_scores (deal_id, close_probability, cold_risk, state_updated_at, model_version, as_of)`: the at-risk
list ranks a pipeline's open deals by amount × close probability × cold risk, joining each open deal to
its live score, and the live scorer looks every round for open deals whose score is missing, older than
the deal's state, of another model version or aged. A live score's row is wide (its reasons and its
timing curve, about 2 KB), so at 100,000 deals each of those joins read one table page per open deal;
through this index they read the few columns they need and nothing else (the ranking's SQL went from
about 38 ms to 12 ms on a 100,000-deal SQLite store with 3,960 open deals in the pipeline).

Revision ID: 0009
Revises: 0008
"""

from __future__ import annotations

from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

SCORE_RANK = ["deal_id", "close_probability", "cold_risk", "state_updated_at", "model_version", "as_of"]


def upgrade() -> None:
    op.create_index("ix_deal_scores_rank", "deal_scores", SCORE_RANK)


def downgrade() -> None:
    op.drop_index("ix_deal_scores_rank", "deal_scores")
