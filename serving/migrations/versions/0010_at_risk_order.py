"""The at-risk list read from one index of the deals, in its order.

`deals.live_close_probability` and `deals.live_cold_risk`: the two numbers of the deal's live score the
at-risk list ranks and splits by, copied from `deal_scores` by the transaction that saves the score (NULL
while the deal has none; filled here from the stored scores). `deals.value_at_risk`: amount × close
probability × cold risk of the deal's current amount and those two, computed by the database (a generated
column: a write that changes the amount changes it in the same statement). `ix_deals_at_risk (pipeline,
outcome, value_at_risk DESC, deal_id, ...)` with every column the list filters, splits and sorts by.

Before, each page joined every open deal of the pipeline to its live score (3,980 index look-ups in the
100,000-deal store's "Enterprise"), twice (the check for unscored deals, then the ranking), and sorted
them all under a window count: 11 + 29 ms of SQL on a loaded 2-core machine. Now the page is the first
rows of an index walk and the counts one scan of the index, without a join: 0.7 + 3.4 ms there.

Revision ID: 0010
Revises: 0009
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

# models.at_risk.value_at_risk of the columns, as serving/tables.py renders it at this revision
VALUE_AT_RISK = "current_amount * live_close_probability * live_cold_risk"
INDEX_TAIL = ["deal_id", "live_close_probability", "live_cold_risk", "current_stage", "stage_entered_at",
              "current_owner", "team", "current_amount", "current_expected_close_date"]


def upgrade() -> None:
    op.add_column("deals", sa.Column("live_close_probability", sa.Float))
    op.add_column("deals", sa.Column("live_cold_risk", sa.Float))
    op.execute(sa.text(
        "UPDATE deals SET"
        " live_close_probability = (SELECT s.close_probability FROM deal_scores s"
        " WHERE s.deal_id = deals.deal_id),"
        " live_cold_risk = (SELECT s.cold_risk FROM deal_scores s WHERE s.deal_id = deals.deal_id)"
        " WHERE deal_id IN (SELECT deal_id FROM deal_scores)"
    ))
    # SQLite adds only virtual generated columns to a table (an index on one keeps its values);
    # PostgreSQL before 18 has only stored ones
    stored = op.get_bind().dialect.name != "sqlite"
    op.add_column("deals", sa.Column("value_at_risk", sa.Float, sa.Computed(VALUE_AT_RISK, persisted=stored)))
    op.create_index("ix_deals_at_risk", "deals",
                    ["pipeline", "outcome", sa.desc(sa.column("value_at_risk")), *INDEX_TAIL])


def downgrade() -> None:
    op.drop_index("ix_deals_at_risk", "deals")
    op.drop_column("deals", "value_at_risk")
    op.drop_column("deals", "live_cold_risk")
    op.drop_column("deals", "live_close_probability")
