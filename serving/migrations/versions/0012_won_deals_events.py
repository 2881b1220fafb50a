"""`n_events` in the deals' pipeline-state index: the won deals of a pipeline read from the index alone.

Health as of now right after a win learns the stalled limits in its read (`Store._learned_in_read`) and
first lists the pipeline's won deals with their `n_events` (`pipeline = ? AND outcome = 'won' AND
created_at <= ?`). `ix_deals_pipeline_state (pipeline, outcome, closed_at, created_at, deal_id, ...)` holds
every column of that read but `n_events`, so each won deal's row was read too; with `n_events` appended the
list is one range of the index. The index keeps its leading columns, so what used it uses it as before, and
every write of a deal's state already rewrites its entry (the state update sets `current_stage` and the
other state columns it holds), so writes do not gain an index to maintain.

Revision ID: 0012
Revises: 0011
"""

from __future__ import annotations

from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

PIPELINE_STATE = ["pipeline", "outcome", "closed_at", "created_at", "deal_id", "team", "current_owner",
                  "current_amount", "current_stage", "stage_entered_at", "id"]


def upgrade() -> None:
    op.drop_index("ix_deals_pipeline_state", "deals")
    op.create_index("ix_deals_pipeline_state", "deals", [*PIPELINE_STATE, "n_events"])


def downgrade() -> None:
    op.drop_index("ix_deals_pipeline_state", "deals")
    op.create_index("ix_deals_pipeline_state", "deals", PIPELINE_STATE)
