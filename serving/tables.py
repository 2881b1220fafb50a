"""The store's tables as they are at the newest migration (what queries are written against).

Alembic owns the schema (`serving/migrations/`): these definitions must match the head revision, which
`tests/serving/test_migrations.py` checks by comparing them with a migrated database.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from models.at_risk import value_at_risk
from serving.limits import ACCOUNT_LENGTH, CURRENCY_LENGTH, EVENT_ID_LENGTH, NAME_LENGTH

# table -> (value columns in canonical order, time column); event_id is kept apart from the row's content
EVENT_TABLES: dict[str, tuple[tuple[str, ...], str]] = {
    "stage_changes": (("deal_id", "stage", "changed_at"), "changed_at"),
    "activities": (("deal_id", "type", "direction", "occurred_at"), "occurred_at"),
    "field_changes": (("deal_id", "field", "value", "changed_at"), "changed_at"),
}

# A deal's current state (after every stored event), kept with the deal and rewritten in the same
# transaction as the events that change it. `state_updated_at` NULL means "not yet computed" (a store
# just upgraded from the release before); the store computes those on open.
STATE_COLUMNS: tuple[tuple[str, Any], ...] = (
    ("current_stage", sa.String(NAME_LENGTH)),
    ("outcome", sa.String(10)),  # open / won / lost
    ("current_owner", sa.String(NAME_LENGTH)),
    ("current_amount", sa.Float),
    ("current_expected_close_date", sa.DateTime),
    ("stage_entered_at", sa.DateTime),  # when the deal entered its current stage (created_at before any)
    ("closed_at", sa.DateTime),  # when it entered its won/lost stage; NULL while open
    ("last_activity_at", sa.DateTime),
    ("first_event_at", sa.DateTime),  # earliest event of any kind: created_at may not move after it
    ("last_event_at", sa.DateTime),
    ("n_events", sa.Integer),
    ("state_updated_at", sa.DateTime),  # wall-clock time of the write that last changed the deal
)


# `models.at_risk.value_at_risk` of a deal's current amount and its live score (revision 0010's column)
LIVE_VALUE_AT_RISK = value_at_risk(
    sa.column("current_amount"), sa.column("live_close_probability"), sa.column("live_cold_risk")
)
# the columns of `ix_deals_at_risk` after (pipeline, outcome, value_at_risk DESC)
AT_RISK_INDEX_TAIL = ("deal_id", "live_close_probability", "live_cold_risk", "current_stage",
                      "stage_entered_at", "current_owner", "team", "current_amount",
                      "current_expected_close_date")


def event_columns(table: str) -> list[sa.Column[Any]]:
    """The content columns of one event table (besides id, event_key, deal_id, time and event_id)."""
    if table == "stage_changes":
        return [sa.Column("stage", sa.String(NAME_LENGTH), nullable=False)]
    if table == "activities":
        return [sa.Column("type", sa.String(20), nullable=False), sa.Column("direction", sa.String(20))]
    return [sa.Column("field", sa.String(50), nullable=False), sa.Column("value", sa.Text)]


def build_metadata(schema: str | None) -> sa.MetaData:
    """The head schema's tables; `schema` qualifies every table (a PostgreSQL schema)."""
    md = sa.MetaData(schema=schema)
    prefix = f"{schema}." if schema else ""
    sa.Table(
        "pipelines",
        md,
        sa.Column("name", sa.String(NAME_LENGTH), primary_key=True),
        sa.Column("spec", sa.JSON, nullable=False),
        sa.Column("inferred", sa.Boolean, nullable=False, server_default=sa.false()),
        # When the spec last changed, or a write took a deal stored as won out of the pipeline's won
        # deals (reopened, lost, moved): either makes the learned limits below due (`Store._unwon`).
        sa.Column("updated_at", sa.DateTime),
        # Revision 0004: the stages' learned stalled limits (stage -> days; NULL until first computed)
        # and when that computation started (serving.stage_limits keeps them fresh).
        sa.Column("learned_stale_days", sa.JSON),
        sa.Column("stale_learned_at", sa.DateTime),
    )
    sa.Table(
        "pipeline_attributes",
        md,
        sa.Column("pipeline", sa.String(NAME_LENGTH), primary_key=True),
        sa.Column("name", sa.String(NAME_LENGTH), primary_key=True),
    )
    deals = sa.Table(
        "deals",
        md,
        # A surrogate key keeps insertion order, so a history read back comes out in the order it went in.
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("deal_id", sa.String(NAME_LENGTH), nullable=False, unique=True),
        sa.Column("pipeline", sa.String(NAME_LENGTH), nullable=False),
        sa.Column("owner", sa.String(NAME_LENGTH), nullable=False),
        sa.Column("team", sa.String(NAME_LENGTH)),
        sa.Column("account", sa.String(ACCOUNT_LENGTH)),
        sa.Column("amount", sa.Float, nullable=False),
        sa.Column("created_at", sa.DateTime, nullable=False),  # naive UTC
        sa.Column("expected_close_date", sa.DateTime),  # naive UTC
        sa.Column("currency", sa.String(CURRENCY_LENGTH)),
        sa.Column("attributes", sa.JSON, nullable=False),
        sa.Column("row_hash", sa.String(64), nullable=False),
        *(sa.Column(name, type_) for name, type_ in STATE_COLUMNS),
        # named explicitly: with a schema, index=True would put the schema in the name
        sa.Index("ix_deals_pipeline", "pipeline"),
        # Revision 0008: a pipeline's deals by outcome and close time with the state columns the at-risk
        # list and health as of now read (it replaced (pipeline, outcome)), and the live scorer's look;
        # revision 0012 appended n_events: the won deals a health read learns the stalled limits from
        sa.Index("ix_deals_pipeline_state", "pipeline", "outcome", "closed_at", "created_at", "deal_id",
                 "team", "current_owner", "current_amount", "current_stage", "stage_entered_at", "id",
                 "n_events"),
        sa.Index("ix_deals_open_state", "outcome", "state_updated_at", "deal_id"),  # the live scorer's look
        # Revision 0007: what pipeline health as of now asks of the state columns (`Store.health_state`)
        sa.Index("ix_deals_pipeline_last_event", "pipeline", "last_event_at"),
        sa.Index("ix_deals_pipeline_state_updated", "pipeline", "state_updated_at"),
        # Revision 0011: with deal_id, the deals a health window's stage changes are read from
        sa.Index("ix_deals_pipeline_stage_entered", "pipeline", "stage_entered_at", "deal_id"),
        # Revision 0010: the two numbers of the deal's live score the at-risk list ranks and splits by,
        # copied from `deal_scores` in the transaction that saves the score (NULL while it has none), and
        # the deal's value at risk from them and its current amount, computed by the database.
        sa.Column("live_close_probability", sa.Float),
        sa.Column("live_cold_risk", sa.Float),
        sa.Column("value_at_risk", sa.Float, sa.Computed(LIVE_VALUE_AT_RISK)),
    )
    # Revision 0010: a pipeline's open deals in at-risk order (value at risk, highest first, then deal_id)
    # with every column the list filters, splits and sorts by: the page is the first rows of an index walk
    # and the count one scan of it, neither reading a live score's row.
    sa.Index("ix_deals_at_risk", deals.c.pipeline, deals.c.outcome, deals.c.value_at_risk.desc(),
             *(deals.c[name] for name in AT_RISK_INDEX_TAIL))
    for table, (_, time_col) in EVENT_TABLES.items():
        sa.Table(
            table,
            md,
            sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
            # event_id when the source gave one, else the SHA-256 of the whole row: unique per deal
            sa.Column("event_key", sa.String(EVENT_ID_LENGTH), nullable=False),
            sa.Column(
                "deal_id", sa.String(NAME_LENGTH), sa.ForeignKey(f"{prefix}deals.deal_id"), nullable=False
            ),
            *event_columns(table),
            sa.Column(time_col, sa.DateTime, nullable=False),  # naive UTC
            sa.Column("event_id", sa.String(EVENT_ID_LENGTH)),
            sa.UniqueConstraint("deal_id", "event_key", name=f"uq_{table}_deal_event"),
            # Revision 0011: a health window's stage changes read from this index alone (stage, event_id)
            sa.Index(f"ix_{table}_deal_time", "deal_id", time_col,
                     *(("stage", "event_id") if table == "stage_changes" else ())),
            # Revision 0007: the stage changes of a health window
            *([sa.Index("ix_stage_changes_changed_at", time_col)] if table == "stage_changes" else []),
        )
    sa.Table(
        "deal_scores",
        md,
        # The live score of a deal (revision 0003); `state_updated_at` is the deal state it was computed
        # from, so a deal whose state moved on since is pending a re-score.
        sa.Column(
            "deal_id", sa.String(NAME_LENGTH), sa.ForeignKey(f"{prefix}deals.deal_id"), primary_key=True
        ),
        sa.Column("model_version", sa.String(100), nullable=False),
        sa.Column("as_of", sa.DateTime, nullable=False),
        sa.Column("computed_at", sa.DateTime, nullable=False),
        sa.Column("state_updated_at", sa.DateTime),
        sa.Column("cold_risk", sa.Float, nullable=False),
        sa.Column("close_probability", sa.Float, nullable=False),
        sa.Column("risk_band", sa.String(20), nullable=False),
        sa.Column("expected_value", sa.Float, nullable=False),
        sa.Column("reasons", sa.JSON, nullable=False),
        # The timing scores (null where the bundle has no timing model or they do not apply).
        sa.Column("close_probability_90d", sa.Float),
        sa.Column("slip_risk", sa.Float),
        sa.Column("likely_close_date", sa.DateTime),
        sa.Column("counter_reasons", sa.JSON),
        # Revision 0005: the close head's timing curve ({} without a timing model; NULL before 0005)
        sa.Column("timing_curve", sa.JSON),
        sa.Index("ix_deal_scores_cold_risk", "cold_risk"),
        # the at-risk ranking and the live scorer's look for due deals read these, not the wide row
        sa.Index("ix_deal_scores_rank", "deal_id", "close_probability", "cold_risk", "state_updated_at",
                 "model_version", "as_of"),
    )
    sa.Table(
        "challenger_scores",
        md,
        # A shadow challenger's live score of a deal (revision 0006), computed in the same round and as
        # of the same time as the champion's. Kept apart from `deal_scores` so that no manager-facing
        # read can ever return it.
        sa.Column(
            "deal_id", sa.String(NAME_LENGTH), sa.ForeignKey(f"{prefix}deals.deal_id"), primary_key=True
        ),
        sa.Column("model_version", sa.String(100), nullable=False),
        sa.Column("as_of", sa.DateTime, nullable=False),
        sa.Column("computed_at", sa.DateTime, nullable=False),
        sa.Column("cold_risk", sa.Float, nullable=False),
        sa.Column("close_probability", sa.Float, nullable=False),
        sa.Column("risk_band", sa.String(20), nullable=False),
        sa.Column("close_probability_90d", sa.Float),
        sa.Column("slip_risk", sa.Float),
    )
    sa.Table(
        "score_history",
        md,
        # Every saved live score, champion's and challenger's (revision 0006), bounded to the last one of
        # each deal, model version and role per UTC day of its `as_of`; what the monitor and the
        # challenger report judge once the outcome is known. Rows older than the retention are pruned.
        sa.Column(
            "deal_id", sa.String(NAME_LENGTH), sa.ForeignKey(f"{prefix}deals.deal_id"), primary_key=True
        ),
        sa.Column("role", sa.String(20), primary_key=True),  # champion / challenger
        sa.Column("model_version", sa.String(100), primary_key=True),
        sa.Column("day", sa.Date, primary_key=True),
        sa.Column("as_of", sa.DateTime, nullable=False),
        sa.Column("computed_at", sa.DateTime, nullable=False),
        sa.Column("cold_risk", sa.Float, nullable=False),
        sa.Column("close_probability", sa.Float, nullable=False),
        sa.Index("ix_score_history_version", "model_version", "role", "as_of"),
        sa.Index("ix_score_history_as_of", "as_of"),
    )
    sa.Table(
        "service_settings",
        md,
        # Settings the service changes at run time and must keep across a restart (revision 0006):
        # `challenger` names the shadow challenger.
        sa.Column("name", sa.String(100), primary_key=True),
        sa.Column("value", sa.JSON, nullable=False),
        sa.Column("updated_at", sa.DateTime, nullable=False),
    )
    sa.Table(
        "api_keys",
        md,
        sa.Column("key_id", sa.String(16), primary_key=True),
        sa.Column("name", sa.String(NAME_LENGTH)),
        sa.Column("role", sa.String(20), nullable=False),
        sa.Column("pipelines", sa.JSON, nullable=False),
        sa.Column("key_hash", sa.String(64), nullable=False),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.Column("revoked_at", sa.DateTime),
    )
    return md
