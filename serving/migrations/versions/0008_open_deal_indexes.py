"""Indexes for the live lists, health as of now and the live scorer at scale (100,000 deals).

`deals (pipeline, outcome, closed_at, created_at, deal_id, team, current_owner, current_amount,
current_stage, stage_entered_at, id)`: a pipeline's deals by outcome, the closed ones by close time, with
every state column the at-risk list filters and ranks by and health as of now reads. The open deals of a
pipeline (at-risk: the check for unscored deals and the ranking) and the deals closed in a health window
are read from the index alone, not from every deal's row. It starts with `(pipeline, outcome)`, so it
replaces `ix_deals_pipeline_outcome`.
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

PIPELINE_STATE = ["pipeline", "outcome", "closed_at", "created_at", "deal_id", "team", "current_owner",
                  "current_amount", "current_stage", "stage_entered_at", "id"]


def upgrade() -> None:
    op.create_index("ix_deals_pipeline_state", "deals", PIPELINE_STATE)
    op.drop_index("ix_deals_pipeline_outcome", "deals")
    op.create_index("ix_deals_open_state", "deals", ["outcome", "state_updated_at", "deal_id"])


def downgrade() -> None:
    op.drop_index("ix_deals_open_state", "deals")
    op.create_index("ix_deals_pipeline_outcome", "deals", ["pipeline", "outcome"])
    op.drop_index("ix_deals_pipeline_state", "deals")
