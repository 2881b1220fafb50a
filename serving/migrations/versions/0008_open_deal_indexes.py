"""Indexes for the live lists and health as of now at scale (100,000 deals).

`deals (pipeline, outcome, deal_id, current_stage, stage_entered_at, current_amount)`: the open deals of a
pipeline with what the at-risk list filters and ranks by (stage, time in stage, amount), so that checking
for unscored deals and ranking the list read the index, not every open deal's row. It starts with
`(pipeline, outcome)`, so it replaces `ix_deals_pipeline_outcome`.
`deals (pipeline, closed_at)`: the deals closed in a health window, without reading every closed deal.
`deals (outcome, state_updated_at, deal_id)`: the live scorer's look for due deals (every round) reads the
open deals' stamps from the index instead of scanning every deal (220 ms to 25 ms at 100,000 deals).

Revision ID: 0008
Revises: 0007
"""

from __future__ import annotations

from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

OPEN_RANK = ["pipeline", "outcome", "deal_id", "current_stage", "stage_entered_at", "current_amount"]


def upgrade() -> None:
    op.create_index("ix_deals_open_rank", "deals", OPEN_RANK)
    op.drop_index("ix_deals_pipeline_outcome", "deals")
    op.create_index("ix_deals_pipeline_closed", "deals", ["pipeline", "closed_at"])
    op.create_index("ix_deals_open_state", "deals", ["outcome", "state_updated_at", "deal_id"])


def downgrade() -> None:
    op.drop_index("ix_deals_open_state", "deals")
    op.drop_index("ix_deals_pipeline_closed", "deals")
    op.create_index("ix_deals_pipeline_outcome", "deals", ["pipeline", "outcome"])
    op.drop_index("ix_deals_open_rank", "deals")
