"""Indexes for pipeline health as of now, read from the deals' state columns (`Store.health_state`).

`(pipeline, last_event_at)`: the pipeline's latest event (whether the deals' current state is their state
at `until`); `(pipeline, state_updated_at)` and `(pipeline, stage_entered_at)`: the deals written, or
moved, since the learned stalled limits were computed; `stage_changes.changed_at`: the window's stage
changes (the funnel).

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_deals_pipeline_last_event", "deals", ["pipeline", "last_event_at"])
    op.create_index("ix_deals_pipeline_state_updated", "deals", ["pipeline", "state_updated_at"])
    op.create_index("ix_deals_pipeline_stage_entered", "deals", ["pipeline", "stage_entered_at"])
    op.create_index("ix_stage_changes_changed_at", "stage_changes", ["changed_at"])


def downgrade() -> None:
    op.drop_index("ix_stage_changes_changed_at", "stage_changes")
    op.drop_index("ix_deals_pipeline_stage_entered", "deals")
    op.drop_index("ix_deals_pipeline_state_updated", "deals")
    op.drop_index("ix_deals_pipeline_last_event", "deals")
