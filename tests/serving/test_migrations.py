"""Alembic owns the schema: a store made by the release before it upgrades in place, on both backends."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pandas as pd
import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from features.history import DealHistory
from serving.stage_limits import refresh_stage_limits
from serving.store import HEAD_REVISION, Store, _prepare_deals, _prepare_events, _records, _sha256


def previous_release_metadata(schema: str | None) -> sa.MetaData:
    """A frozen copy of the tables `Store.create_schema` made (with `create_all`) before Alembic."""
    md = sa.MetaData(schema=schema)
    prefix = f"{schema}." if schema else ""
    sa.Table(
        "pipelines",
        md,
        sa.Column("name", sa.String(200), primary_key=True),
        sa.Column("spec", sa.JSON, nullable=False),
    )
    sa.Table(
        "deals",
        md,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("deal_id", sa.String(200), nullable=False, unique=True),
        sa.Column("pipeline", sa.String(200), nullable=False, index=True),
        sa.Column("owner", sa.String(200), nullable=False),
        sa.Column("team", sa.String(200)),
        sa.Column("account", sa.String(500)),
        sa.Column("amount", sa.Float, nullable=False),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.Column("expected_close_date", sa.DateTime),
        sa.Column("currency", sa.String(10)),
        sa.Column("attributes", sa.JSON, nullable=False),
        sa.Column("row_hash", sa.String(64), nullable=False),
    )
    content: dict[str, list[sa.Column[Any]]] = {
        "stage_changes": [sa.Column("stage", sa.String(200), nullable=False)],
        "activities": [
            sa.Column("type", sa.String(20), nullable=False),
            sa.Column("direction", sa.String(20)),
        ],
        "field_changes": [sa.Column("field", sa.String(50), nullable=False), sa.Column("value", sa.Text)],
    }
    times = {"stage_changes": "changed_at", "activities": "occurred_at", "field_changes": "changed_at"}
    for table, columns in content.items():
        sa.Table(
            table,
            md,
            sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
            sa.Column("event_key", sa.String(200), nullable=False, unique=True),
            sa.Column(
                "deal_id", sa.String(200), sa.ForeignKey(f"{prefix}deals.deal_id"), nullable=False, index=True
            ),
            *columns,
            sa.Column(times[table], sa.DateTime, nullable=False),
            sa.Column("event_id", sa.String(200)),
        )
    sa.Table(
        "api_keys",
        md,
        sa.Column("key_id", sa.String(16), primary_key=True),
        sa.Column("name", sa.String(200)),
        sa.Column("role", sa.String(20), nullable=False),
        sa.Column("pipelines", sa.JSON, nullable=False),
        sa.Column("key_hash", sa.String(64), nullable=False),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.Column("revoked_at", sa.DateTime),
    )
    return md


def old_history() -> DealHistory:
    """Two pipelines, one with a spec (given) and one without, events with and without ids."""
    deals = pd.DataFrame(
        {
            "deal_id": ["M1", "M2", "M3"],
            "pipeline": ["SMB", "SMB", "Partners"],
            "owner": ["ana", "bo", "cy"],
            "amount": ["1000", "2500", "9000"],
            "created_at": ["2024-01-01", "2024-01-03", "2024-01-05"],
            "region": ["north", None, "south"],
        }
    )
    stage_changes = pd.DataFrame(
        {
            "deal_id": ["M1", "M1", "M2", "M3", "M3"],
            "stage": ["Lead", "Demo", "Lead", "Intro", "Closed Won"],
            "changed_at": ["2024-01-01", "2024-01-10", "2024-01-04", "2024-01-06", "2024-02-01"],
            "event_id": ["s-1", "s-2", "s-3", None, None],
        }
    )
    activities = pd.DataFrame(
        {
            "deal_id": ["M1", "M2"],
            "type": ["call", "email"],
            "direction": ["outbound", None],
            "occurred_at": ["2024-01-02", "2024-01-20"],
            "event_id": ["a-1", None],
        }
    )
    field_changes = pd.DataFrame(
        {
            "deal_id": ["M2"],
            "field": ["amount"],
            "value": ["3100"],
            "changed_at": ["2024-01-21"],
            "event_id": ["f-1"],
        }
    )
    pipelines = {"SMB": {"stages": ["Lead", "Demo"], "won": ["Closed Won"], "lost": ["Closed Lost"]}}
    return DealHistory.from_frames(deals, stage_changes, activities, field_changes, pipelines=pipelines)


def write_like_the_previous_release(engine: sa.Engine, md: sa.MetaData, history: DealHistory) -> str:
    """Rows as the previous release's store wrote them (its row hashes and event keys); returns a key."""
    tables = {name.split(".")[-1]: t for name, t in md.tables.items()}
    plaintext = "drk_0a1b2c3d_old-release-secret"
    with engine.begin() as conn:
        # The previous release stored only the specs it was given (an API-created pipeline had none).
        conn.execute(
            tables["pipelines"].insert(), [{"name": "SMB", "spec": history.pipelines["SMB"].to_dict()}]
        )
        conn.execute(
            tables["deals"].insert(), _records(_prepare_deals(history.deals, history.attribute_columns))
        )
        for name in ("stage_changes", "activities", "field_changes"):
            for chunk in _prepare_events(name, getattr(history, name)).record_chunks():
                conn.execute(tables[name].insert(), chunk)
        conn.execute(
            tables["api_keys"]
            .insert()
            .values(
                key_id="0a1b2c3d",
                name="old",
                role="manager",
                pipelines=["*"],
                key_hash=_sha256(plaintext),
                created_at=pd.Timestamp("2024-01-01").to_pydatetime(),
            )
        )
    return plaintext


def test_a_store_of_the_previous_release_upgrades_in_place(database: Any) -> None:
    engine = sa.create_engine(database.url)
    md = previous_release_metadata(database.schema)
    md.create_all(engine)
    history = old_history()
    key = write_like_the_previous_release(engine, md, history)
    engine.dispose()

    store = Store(database.url, schema=database.schema)
    try:
        assert store.schema_revision() is None
        store.create_schema()
        assert store.schema_revision() == HEAD_REVISION
        loaded = store.load_history()
        for name in ("deals", "stage_changes", "activities", "field_changes"):
            pd.testing.assert_frame_equal(getattr(loaded, name), getattr(history, name), obj=name)
        # the pipeline without a stored spec got one inferred from its deals; the given one stays given
        specs = store.pipeline_specs()
        assert (specs["Partners"].stages, specs["Partners"].won, specs["Partners"].inferred) == (
            ("Intro",),
            ("Closed Won",),
            True,
        )
        assert specs["SMB"].inferred is False
        states = store.deal_states().set_index("deal_id")
        assert states.loc["M1", "current_stage"] == "Demo" and states.loc["M1", "outcome"] == "open"
        assert states.loc["M2", "current_amount"] == 3100.0
        assert states.loc["M3", "outcome"] == "won"
        assert states.loc["M3", "closed_at"] == pd.Timestamp("2024-02-01", tz="UTC")
        # the same rows imported again are recognised (same row hashes and event keys): nothing changes
        again = store.import_history(history)
        assert (again.inserted, again.updated) == (0, 0), again.to_dict()
        # event ids are now unique per deal: M2 may reuse M1's id
        reuse = pd.DataFrame(
            {
                "deal_id": pd.Series(["M2"], dtype="string"),
                "type": pd.Series(["call"], dtype="string"),
                "direction": pd.Series([pd.NA], dtype="string"),
                "occurred_at": pd.to_datetime(["2024-01-22"], utc=True),
                "event_id": pd.Series(["a-1"], dtype="string"),
            }
        )
        assert store.add_events(activities=reuse).tables["activities"].inserted == 1
        verified = store.verify_api_key(key)
        assert verified is not None and verified.role == "manager"
        store.create_schema()  # again: nothing to do
        assert store.count_rows()["activities"] == 3
    finally:
        store.close()


def test_a_store_scored_before_revision_0010_lists_at_risk_deals_after_the_upgrade(database: Any) -> None:
    """Revision 0010 copies each stored live score's close probability and cold risk to its deal's row,
    where the at-risk list ranks them: a store scored at revision 0009 answers the live list right after
    the upgrade, ranked by each deal's current amount × close probability × cold risk, and a deal
    scored later joins it."""
    now = datetime(2024, 3, 1, tzinfo=UTC)
    store = Store(database.url, schema=database.schema)
    try:
        store.upgrade("0009")
        store.import_history(old_history())  # open in SMB: M1 (1,000) and M2 (2,500, changed to 3,100)
        scores = store.table("deal_scores")  # the same table at 0009
        with store.engine.begin() as conn:
            conn.execute(scores.insert(), [
                {"deal_id": deal_id, "model_version": "1", "as_of": now.replace(tzinfo=None),
                 "computed_at": now.replace(tzinfo=None), "state_updated_at": None, "cold_risk": cold,
                 "close_probability": close, "risk_band": "high", "expected_value": 0.0, "reasons": []}
                for deal_id, close, cold in [("M1", 0.35, 0.8), ("M2", 0.2, 0.5)]
            ])
        store.create_schema()
        assert store.schema_revision() == HEAD_REVISION == "0012"
        assert refresh_stage_limits(store, now) == ["Partners", "SMB"]
        page = store.at_risk_page("SMB", now, limit=None)
        assert page is not None
        total, rows = page
        # M2 ranks first with its current amount (3,100 × 0.2 × 0.5 = 310 against M1's 1,000 × 0.35 × 0.8
        # = 280); with the amount it was created with (2,500: 250) it would rank second
        assert total == 2
        assert rows["deal_id"].tolist() == ["M2", "M1"]
        assert rows["value_at_risk"].tolist() == pytest.approx([310.0, 280.0])
        assert rows["amount"].tolist() == [3100.0, 1000.0]
        # a new open deal has no live score: the live list waits for it (None: the route ranks on demand)
        created = pd.DataFrame({"deal_id": ["M4"], "pipeline": ["SMB"], "owner": ["ana"], "amount": [5000.0],
                                "created_at": [pd.Timestamp("2024-02-20", tz="UTC")]})
        store.upsert_deals(created)
        assert store.at_risk_page("SMB", now, limit=None) is None
        store.save_scores(pd.DataFrame({
            "deal_id": ["M4"], "as_of": [pd.Timestamp(now)], "cold_risk": [0.1], "close_probability": [0.9],
            "risk_band": ["low"], "expected_value": [4500.0], "reasons": [[]],
        }), "1", {})
        page = store.at_risk_page("SMB", now, limit=None)
        assert page is not None
        assert page[1]["deal_id"].tolist() == ["M4", "M2", "M1"]  # 5,000 × 0.9 × 0.1 = 450 first
    finally:
        store.close()


def test_revision_0012_puts_n_events_in_the_pipeline_state_index_and_the_won_deals_list_uses_it(
    database: Any,
) -> None:
    """Revision 0012 appends `n_events` to `ix_deals_pipeline_state`: a store at 0011 upgrades in place,
    and the list of a pipeline's won deals with their `n_events` that health reads right after a win
    (`Store._learned_in_read`) is then answered from that index alone on SQLite (no deal's row)."""
    store = Store(database.url, schema=database.schema)
    try:
        store.upgrade("0011")
        store.import_history(old_history())
        store.create_schema()
        assert store.schema_revision() == HEAD_REVISION == "0012"
        indexes = {ix["name"]: ix["column_names"]
                   for ix in sa.inspect(store.engine).get_indexes("deals", schema=database.schema)}
        assert indexes["ix_deals_pipeline_state"] == [
            "pipeline", "outcome", "closed_at", "created_at", "deal_id", "team", "current_owner",
            "current_amount", "current_stage", "stage_entered_at", "id", "n_events"]
        # health as of now with no stored limits learns them in its read, listing the won deals first
        statements: list[tuple[str, Any]] = []

        def capture(conn: Any, cursor: Any, statement: str, params: Any, context: Any, many: bool) -> None:
            statements.append((statement, params))

        now = datetime.now(UTC)
        sa.event.listen(store.engine, "before_cursor_execute", capture)
        state = store.health_state("Partners", datetime(2024, 1, 1, tzinfo=UTC), now)
        sa.event.remove(store.engine, "before_cursor_execute", capture)
        assert state is not None and state.learned == {("Partners", "Intro"): 26.0}
        statement, params = next((s, p) for s, p in statements if "n_events" in s and "outcome" in s)
        if database.backend == "sqlite":
            with store.engine.connect() as conn:
                plan = [str(r[-1]) for r in conn.exec_driver_sql("EXPLAIN QUERY PLAN " + statement, params)]
            assert plan == [
                "SEARCH deals USING COVERING INDEX ix_deals_pipeline_state (pipeline=? AND outcome=?)"], plan
    finally:
        store.close()


def test_the_table_definitions_match_the_migrated_schema(database: Any) -> None:
    store = Store(database.url, schema=database.schema)
    try:
        store.create_schema()
        with store.engine.connect() as conn:
            context = MigrationContext.configure(
                conn,
                opts={
                    "include_schemas": bool(database.schema),
                    "include_name": lambda name, type_, parent: type_ != "schema" or name == database.schema,
                },
            )
            diff = [d for d in compare_metadata(context, store.metadata) if "alembic_version" not in repr(d)]
        assert diff == [], "\n".join(map(repr, diff))
    finally:
        store.close()
