"""The store on SQLite and PostgreSQL: round trip, idempotence, all-or-nothing writes, API keys."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa

from features.history import DealHistory, HistoryValidationError
from serving.store import EVENT_TABLES, EventConflictError, Store, UnknownDealError, WriteRejectedError

TABLES = ("deals", "stage_changes", "activities", "field_changes")


def small_history() -> DealHistory:
    """Two pipelines, custom attributes, events with and without event_id, a missing close date."""
    deals = pd.DataFrame(
        {
            "deal_id": ["D1", "D2", "D3"],
            "pipeline": ["SMB", "SMB", "Enterprise"],
            "owner": ["ana", "bo", "cy"],
            "amount": ["1000", "2500.5", "90000"],
            "created_at": ["2024-01-01", "2024-01-03T09:30:00Z", "2024-01-05T12:00:00+02:00"],
            "team": ["east", "west", None],
            "expected_close_date": ["2024-03-01", None, "2024-06-30"],
            "industry": ["retail", "saas", None],
            "seats": ["10", "25", "400"],
        }
    )
    stage_changes = pd.DataFrame(
        {
            "deal_id": ["D1", "D1", "D2", "D3", "D1"],
            "stage": ["Lead", "Demo", "Lead", "Discovery", "Closed Won"],
            "changed_at": [
                "2024-01-01",
                "2024-01-10",
                "2024-01-03T09:30:00Z",
                "2024-01-05T10:00:00Z",
                "2024-02-01",
            ],
            "event_id": ["s1", None, "s3", None, None],
        }
    )
    activities = pd.DataFrame(
        {
            "deal_id": ["D1", "D2", "D2", "D3"],
            "type": ["call", "email", "email", "meeting"],
            "direction": ["outbound", "inbound", None, None],
            "occurred_at": ["2024-01-02", "2024-01-04", "2024-01-04T15:00:00Z", "2024-01-06"],
        }
    )
    field_changes = pd.DataFrame(
        {
            "deal_id": ["D2"],
            "field": ["amount"],
            "value": ["3000"],
            "changed_at": ["2024-01-20"],
            "event_id": ["f1"],
        }
    )
    pipelines = {
        "SMB": {"stages": ["Lead", "Demo"], "won": ["Closed Won"], "lost": ["Closed Lost"]},
    }
    return DealHistory.from_frames(deals, stage_changes, activities, field_changes, pipelines=pipelines)


def assert_same_history(a: DealHistory, b: DealHistory) -> None:
    for name in TABLES:
        pd.testing.assert_frame_equal(getattr(a, name), getattr(b, name), obj=name)
    assert a.pipelines == b.pipelines
    assert a.attribute_columns == b.attribute_columns


def test_import_then_load_gives_the_same_history(store: Store) -> None:
    history = small_history()
    result = store.import_history(history)
    assert result.tables["deals"].inserted == 3
    assert result.tables["stage_changes"].inserted == 5
    assert result.tables["activities"].inserted == 4
    assert_same_history(store.load_history(), history)
    assert store.list_pipelines() == ["Enterprise", "SMB"]
    assert store.pipeline_specs()["SMB"].stages == ("Lead", "Demo")
    # one pipeline read alone answers as the whole list would
    assert [store.has_pipeline(p) for p in ("SMB", "Enterprise", "Nope", "smb")] == [True, True, False, False]
    assert list(store.pipeline_specs(["SMB", "Nope"])) == ["SMB"]


def test_simulated_history_round_trips(store: Store) -> None:
    from training.simulate import simulate_history

    history = simulate_history(150, seed=3)
    store.import_history(history)
    assert_same_history(store.load_history(), history)


def test_load_filters_by_pipeline_and_deal(store: Store) -> None:
    history = small_history()
    store.import_history(history)
    smb = store.load_history(pipelines=["SMB"])
    assert sorted(smb.deals["deal_id"]) == ["D1", "D2"]
    assert set(smb.activities["deal_id"]) == {"D1", "D2"}
    one = store.load_history(deal_ids=["D3", "nope"])
    assert one.deals["deal_id"].tolist() == ["D3"]
    assert one.stage_changes["stage"].tolist() == ["Discovery"]
    assert store.deal_pipelines(["D1", "D3", "nope"]) == {"D1": "SMB", "D3": "Enterprise"}


def test_reimport_changes_nothing(store: Store) -> None:
    history = small_history()
    store.import_history(history)
    before = store.count_rows()
    again = store.import_history(history)
    assert again.inserted == 0 and again.updated == 0 and not again.changed
    assert again.tables["activities"].duplicates == 4
    assert store.count_rows() == before
    assert_same_history(store.load_history(), history)


def test_changed_deal_is_updated_not_duplicated(store: Store) -> None:
    history = small_history()
    store.import_history(history)
    deals = history.deals.copy()
    deals.loc[deals["deal_id"] == "D2", "amount"] = 4200.0
    result = store.upsert_deals(deals)
    assert (result.tables["deals"].updated, result.tables["deals"].duplicates) == (1, 2)
    stored = store.load_history(deal_ids=["D2"]).deals
    assert stored["amount"].tolist() == [4200.0]
    assert store.count_rows()["deals"] == 3


def test_failure_in_the_last_chunk_leaves_the_store_as_it_was(store: Store) -> None:
    from training.simulate import simulate_history

    first = small_history()
    store.import_history(first)
    before = store.count_rows()
    big = simulate_history(40, seed=5)
    total = sum(len(getattr(big, name)) for name in TABLES)
    done = 0

    def explode_at_the_end(n: int) -> None:
        nonlocal done
        done += n
        if done >= total:  # every row has been sent to the database; the commit has not happened
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        store.import_history(big, progress=explode_at_the_end)
    assert done == total
    assert store.count_rows() == before
    assert_same_history(store.load_history(), first)


def test_database_error_mid_import_rolls_back(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    history = small_history()

    def failing(self: Store, conn: sa.Connection, *args: object) -> None:
        # the last step of a write: pipelines, deals and every event table already went in
        conn.execute(sa.text("SELECT * FROM no_such_table"))

    monkeypatch.setattr(Store, "_refresh_state", failing)
    with pytest.raises(sa.exc.DBAPIError):
        store.import_history(history)
    counts = store.count_rows()
    assert all(counts[name] == 0 for name in ("pipelines", *TABLES))


def test_add_events_is_idempotent_on_event_id_and_on_whole_rows(store: Store) -> None:
    store.import_history(small_history())
    new = pd.DataFrame(
        {
            "deal_id": pd.Series(["D3", "D3"], dtype="string"),
            "type": pd.Series(["call", "note"], dtype="string"),
            "direction": pd.Series(["inbound", pd.NA], dtype="string"),
            "occurred_at": pd.to_datetime(["2024-02-01T08:00:00Z", "2024-02-02T08:00:00Z"], utc=True),
            "event_id": pd.Series(["a-100", pd.NA], dtype="string"),
        }
    )
    first = store.add_events(activities=new)
    assert first.tables["activities"].inserted == 2
    again = store.add_events(activities=new)
    assert (again.tables["activities"].inserted, again.tables["activities"].duplicates) == (0, 2)
    # The same event_id with other content is a conflict (SPEC: 409), never a silent duplicate, and the
    # whole write is refused: the new row without an id that came with it is not stored either.
    changed = new.copy()
    changed.loc[0, "type"] = "email"
    changed.loc[1, "occurred_at"] = pd.Timestamp("2024-02-03T08:00:00Z")
    conflict = r"activities\[deal D3, event a-100\].*type stored 'call', sent 'email'"
    with pytest.raises(EventConflictError, match=conflict):
        store.add_events(activities=changed)
    assert store.count_rows()["activities"] == 6


def test_events_for_unknown_deals_are_rejected_with_nothing_written(store: Store) -> None:
    store.import_history(small_history())
    before = store.count_rows()
    changes = pd.DataFrame(
        {
            "deal_id": pd.Series(["D1", "GHOST-1", "GHOST-2"], dtype="string"),
            "stage": pd.Series(["Demo", "Lead", "Lead"], dtype="string"),
            "changed_at": pd.to_datetime(["2024-03-01"] * 3, utc=True),
        }
    )
    with pytest.raises(UnknownDealError) as info:
        store.add_events(stage_changes=changes)
    assert info.value.deal_ids == ["GHOST-1", "GHOST-2"]
    assert "GHOST-1" in str(info.value)
    assert store.count_rows() == before


def test_times_are_stored_as_utc(store: Store) -> None:
    store.import_history(small_history())
    deals = store.table("deals")
    with store.engine.connect() as conn:
        created = conn.execute(sa.select(deals.c.created_at).where(deals.c.deal_id == "D3")).scalar_one()
    # 12:00 at +02:00 is 10:00 UTC, stored without a zone
    assert created.tzinfo is None and (created.hour, created.minute) == (10, 0)
    loaded = store.load_history(deal_ids=["D3"]).deals["created_at"].iloc[0]
    assert loaded == pd.Timestamp("2024-01-05T10:00:00Z")


def test_create_schema_is_idempotent_and_ping_answers(store: Store) -> None:
    store.import_history(small_history())
    store.create_schema()
    assert store.count_rows()["deals"] == 3
    assert store.ping() is True


def test_every_event_table_recognises_events_it_already_holds(store: Store) -> None:
    """Each event table (with or without event_id) stores an event once, and a moved one anew."""
    history = small_history()
    store.import_history(history)
    frames = {name: getattr(history, name) for name in EVENT_TABLES}
    again = store.add_events(**frames)
    assert {n: (again.tables[n].inserted, again.tables[n].duplicates) for n in EVENT_TABLES} == {
        "stage_changes": (0, 5), "activities": (0, 4), "field_changes": (0, 1)}
    moved = {
        name: frame.assign(**{time: frame[time] + pd.Timedelta(hours=1), "event_id": pd.NA}).head(1)
        for name, frame, time in (("stage_changes", frames["stage_changes"], "changed_at"),
                                  ("activities", frames["activities"], "occurred_at"),
                                  ("field_changes", frames["field_changes"], "changed_at"))
    }
    later = store.add_events(**moved)
    assert {n: later.tables[n].inserted for n in EVENT_TABLES} == {
        "stage_changes": 1, "activities": 1, "field_changes": 1}
    counts = store.count_rows()
    assert {n: counts[n] for n in EVENT_TABLES} == {"stage_changes": 6, "activities": 5, "field_changes": 2}


# ---------------------------------------------------------------------------- API keys
def test_api_key_is_hashed_at_rest_and_verifies(store: Store) -> None:
    plaintext, key = store.create_api_key("manager", ["SMB", "Enterprise"], name="ops dashboard")
    assert plaintext.startswith(f"drk_{key.key_id}_") and len(key.key_id) == 8
    with store.engine.connect() as conn:
        rows = conn.execute(sa.select(store.table("api_keys"))).mappings().all()
    dumped = repr([dict(r) for r in rows])
    assert plaintext not in dumped and plaintext.split("_", 2)[2] not in dumped
    verified = store.verify_api_key(plaintext)
    assert verified is not None
    assert (verified.role, verified.pipelines, verified.name) == (
        "manager",
        ("SMB", "Enterprise"),
        "ops dashboard",
    )
    assert store.verify_api_key(plaintext[:-1] + ("A" if plaintext[-1] != "A" else "B")) is None
    assert store.verify_api_key("drk_nothere_secret") is None
    assert store.verify_api_key("garbage") is None


def test_revoked_key_fails_and_revoking_twice_is_harmless(store: Store) -> None:
    plaintext, key = store.create_api_key("integration", ["*"])
    revoked = store.revoke_api_key(key.key_id)
    assert revoked is not None and revoked.revoked_at is not None
    assert store.verify_api_key(plaintext) is None
    assert store.revoke_api_key(key.key_id) == revoked
    assert store.revoke_api_key("deadbeef") is None
    listed = store.list_api_keys()
    assert [k.key_id for k in listed] == [key.key_id] and not listed[0].active


def test_an_event_write_reads_its_key_with_the_deals_and_a_refused_key_writes_nothing(store: Store) -> None:
    """`write_events(first=..., key_id=...)` reads the caller's key in the statement that locks the deals
    and hands its row to the check, which refuses a revoked key or a wrong secret before anything is
    written; without a row (no such deal, no such key) the check reads the key itself."""
    store.import_history(small_history())
    good, _ = store.create_api_key("integration", ["SMB"])
    revoked, record = store.create_api_key("integration", ["*"])
    store.revoke_api_key(record.key_id)
    wrong = good[:-1] + ("A" if good[-1] != "A" else "B")
    activity = {"deal_id": "D2", "type": "call", "direction": None, "occurred_at": datetime(2024, 2, 2),
                "event_id": "k1"}

    def write(plaintext: str, deal_ids: list[str]) -> tuple[Any, dict[str, Any]]:
        seen: dict[str, Any] = {}

        def first(conn: sa.Connection, stored: Any) -> None:
            seen["stored"] = None if stored is None else dict(stored)
            if store.verify_api_key(plaintext, conn, stored) is None:
                raise PermissionError("refused")

        def build(rows: Any, specs: Any) -> dict[str, list[dict[str, Any]]]:
            seen["deals"] = sorted(r["deal_id"] for r in rows)
            return {"activities": [activity]} if rows else {}

        key_id = Store.key_id_of(plaintext)
        return store.write_events(deal_ids, build, with_specs=False, first=first, key_id=key_id), seen

    before = store.count_rows()["activities"]
    for refused in (revoked, wrong, "drk_nothere_secret"):
        with pytest.raises(PermissionError):
            write(refused, ["D2"])
    assert store.count_rows()["activities"] == before
    result, seen = write(good, ["D2"])
    assert result.inserted == 1 and seen["deals"] == ["D2"]
    assert seen["stored"]["key_id"] == Store.key_id_of(good) and seen["stored"]["role"] == "integration"
    assert store.count_rows()["activities"] == before + 1
    result, seen = write(good, ["NOPE"])
    assert not result.changed and seen == {"stored": None, "deals": []}


def test_a_write_refused_after_the_writers_prepared_their_statements_writes_nothing(store: Store) -> None:
    """On PostgreSQL the writers' own pool prepares a statement once run 5 times on a connection
    (`Store._write_engine`); a write refused there rolls back (psycopg then forgets the connection's
    prepared statements) having written nothing, and the writes after it are stored, each deal's state
    counting exactly its stored events."""
    store.import_history(small_history())
    plaintext, _ = store.create_api_key("integration", ["*"])

    def write(event_id: str, when: datetime, kind: str = "call") -> Any:
        activity = {"deal_id": "D2", "type": kind, "direction": None, "occurred_at": when,
                    "event_id": event_id}
        return store.write_events(["D2"], lambda rows, specs: {"activities": [activity]}, with_specs=False,
                                  first=lambda conn, row: None, key_id=Store.key_id_of(plaintext))

    before = store.count_rows()["activities"]
    for i in range(8):
        assert write(f"p{i}", datetime(2024, 2, 2, 10, i)).inserted == 1
    if store.dialect == "postgresql":
        with store._write_engine.connect() as conn:
            prepared = conn.exec_driver_sql("SELECT statement FROM pg_prepared_statements").scalars().all()
        assert any("FOR UPDATE" in text for text in prepared)
        assert any(text.startswith("INSERT INTO") and "activities" in text for text in prepared)
    with pytest.raises(EventConflictError):
        write("p0", datetime(2024, 2, 2, 10, 0), kind="email")  # a stored event id, other content
    with pytest.raises(WriteRejectedError):
        write("early", datetime(2023, 12, 1))  # before the deal was created
    assert store.count_rows()["activities"] == before + 8
    assert write("p8", datetime(2024, 2, 2, 11)).inserted == 1
    assert store.count_rows()["activities"] == before + 9
    history = store.load_history(deal_ids=["D2"])
    events = sum(len(getattr(history, name)) for name in EVENT_TABLES)
    state = store.deal_states(deal_ids=["D2"])
    assert int(state["n_events"].iloc[0]) == events
    assert pd.Timestamp(state["last_activity_at"].iloc[0]) == pd.Timestamp("2024-02-02T11:00:00Z")


def test_key_pipeline_scoping(store: Store) -> None:
    _, scoped = store.create_api_key("manager", ["SMB"])
    _, everything = store.create_api_key("admin", ["*"])
    assert scoped.can_see("SMB") and not scoped.can_see("Enterprise")
    assert everything.pipelines == ("*",) and everything.can_see("Enterprise")
    with pytest.raises(ValueError, match="cannot be listed with names"):  # was silently every pipeline
        store.create_api_key("admin", ["SMB", "*"])
    with pytest.raises(ValueError, match="role"):
        store.create_api_key("root", ["*"])
    with pytest.raises(ValueError, match="pipeline"):
        store.create_api_key("admin", [])


def test_two_deals_may_share_an_event_id_but_one_deal_may_not_repeat_it(store: Store) -> None:
    deals = pd.DataFrame(
        {
            "deal_id": ["S1", "S2"],
            "pipeline": ["SMB", "Ent"],
            "owner": ["a", "b"],
            "amount": ["1", "2"],
            "created_at": ["2024-01-01", "2024-01-01"],
        }
    )
    shared = pd.DataFrame(
        {
            "deal_id": ["S1", "S2"],
            "type": ["call", "email"],
            "occurred_at": ["2024-01-02", "2024-01-03"],
            "event_id": ["ev-1", "ev-1"],
        }
    )
    history = DealHistory.from_frames(deals, pd.DataFrame(columns=["deal_id", "stage", "changed_at"]), shared)
    assert store.import_history(history).tables["activities"].inserted == 2
    assert store.load_history().activities["deal_id"].tolist() == ["S1", "S2"]
    repeated = pd.concat([shared, shared.iloc[[0]].assign(occurred_at="2024-01-04")], ignore_index=True)
    with pytest.raises(HistoryValidationError, match="duplicate event_id 'ev-1' for the same deal"):
        DealHistory.from_frames(deals, pd.DataFrame(columns=["deal_id", "stage", "changed_at"]), repeated)


def test_an_imported_store_reads_the_at_risk_page_from_the_deals_index_in_order(tmp_path: Any) -> None:
    """After a bulk import the planner has the store's statistics, and an at-risk page reads only the
    deals' index `ix_deals_at_risk` (revision 0010): the counts are one scan of it, without a live
    score's row, and the page in the default order is its first rows, without sorting the pipeline's
    open deals (at 100,000 deals the join to every open deal's score and the sort cost 40 ms a page)."""
    from training.simulate import simulate_history

    store = Store(f"sqlite:///{tmp_path / 'store.db'}")
    try:
        store.create_schema()
        store.import_history(simulate_history(n_deals=300, seed=2))  # thousands of rows: statistics taken
        deals = store.table("deals")
        with store.engine.connect() as conn:
            open_ids = [r.deal_id for r in conn.execute(
                sa.select(deals.c.deal_id, deals.c.pipeline).where(deals.c.outcome == "open"))]
        n = len(open_ids)
        store.save_scores(pd.DataFrame({
            "deal_id": open_ids, "as_of": pd.Timestamp.now(tz="UTC"), "cold_risk": [0.5] * n,
            "close_probability": [0.4] * n, "risk_band": ["medium"] * n, "expected_value": [100.0] * n,
            "reasons": [[] for _ in range(n)],
        }), "1", {})
        from serving.stage_limits import refresh_stage_limits

        refresh_stage_limits(store)
        assert store.refresh_planner_stats()  # the service's loop: the live scores are new since the import
        pipeline = store.deal_pipelines(open_ids[:1])[open_ids[0]]
        statements: list[tuple[str, Any]] = []

        def capture(conn: Any, cursor: Any, statement: str, params: Any, context: Any, many: bool) -> None:
            statements.append((statement, params))

        sa.event.listen(store.engine, "before_cursor_execute", capture)
        live = store.at_risk_rows(pipeline, limit=10)
        sa.event.remove(store.engine, "before_cursor_execute", capture)
        assert live is not None and live[0] > 0 and len(live[1]) == 10

        def plan(marker: str) -> list[tuple[int, int, str]]:
            statement, params = next((s, p) for s, p in statements if marker in s)
            with store.engine.connect() as conn:
                return [(r[0], r[1], str(r[-1]))
                        for r in conn.exec_driver_sql("EXPLAIN QUERY PLAN " + statement, params)]

        # one statement: the counts, the ranking and the page are parts of its plan
        page = plan("AS ranked_id")
        counted = next(i for i, _, d in page if d == "MATERIALIZE counts")
        counts = [d for _, parent, d in page if parent == counted]
        covering = "SEARCH deals USING COVERING INDEX ix_deals_at_risk (pipeline=? AND outcome=?)"
        assert counts == [covering], page
        ranked = next(i for i, _, d in page if d == "MATERIALIZE ranked")
        ranking = [d for _, parent, d in page if parent == ranked]
        assert ranking == ["SEARCH deals USING INDEX ix_deals_at_risk (pipeline=? AND outcome=?)"], page
    finally:
        store.close()


@pytest.mark.postgres
def test_dead_rows_another_transaction_still_sees_do_not_make_every_round_vacuum_again(
    database: Any,
) -> None:
    """A transaction open elsewhere in the database (a long report, another client) keeps the dead row
    versions of every write after its snapshot: a vacuum cannot remove them, and the statistics still
    count them after it. The deals were vacuumed once for those writes; the next rounds must not vacuum
    them again (each a scan of the whole table) until as many rows changed once more, or until that
    transaction ended (then a vacuum removes them)."""
    from training.simulate import simulate_history

    if database.backend != "postgresql":
        pytest.skip("PostgreSQL's vacuum")
    store = Store(database.url, schema=database.schema)
    holder = sa.create_engine(database.url)
    try:
        store.create_schema()
        store.import_history(simulate_history(n_deals=1500, seed=2))
        store.close()  # the import's backends report their writes to the statistics
        store.vacuum_changed_tables()  # whatever the import's own vacuum left
        deals = store.table("deals")
        with holder.connect() as held:
            held.execution_options(isolation_level="REPEATABLE READ")
            held.begin()
            assert held.execute(sa.select(sa.func.count()).select_from(deals)).scalar_one() == 1500

            def touch() -> None:
                with store.engine.begin() as conn:
                    conn.execute(deals.update().values(state_updated_at=deals.c.state_updated_at))
                store.close()  # the backend reports its writes to the statistics when it ends

            def dead() -> int:
                query = sa.text("SELECT n_dead_tup FROM pg_stat_user_tables"
                                " WHERE schemaname = :schema AND relname = 'deals'")
                with store.engine.connect() as conn:
                    return int(conn.execute(query, {"schema": database.schema}).scalar_one())

            def await_dead(rows: int) -> None:
                for _ in range(100):
                    if dead() >= rows:
                        return
                    time.sleep(0.1)
                pytest.fail(f"the statistics never counted {rows} dead deals' rows ({dead()})")

            touch()
            await_dead(1500)
            assert store.vacuum_changed_tables() == ["deals"]
            assert dead() >= 1500  # the held snapshot keeps them: the vacuum could not remove them
            assert store.vacuum_changed_tables() == []
            assert store.vacuum_changed_tables() == []
            touch()  # 1,500 more rows changed: due again
            await_dead(3000)
            assert store.vacuum_changed_tables() == ["deals"]
            assert store.vacuum_changed_tables() == []
            held.rollback()
        # the transaction that kept them has ended: a next round vacuums them away (once a transaction
        # another test may have open since before the last vacuum has ended too), and then rests
        # (the statistics may take a moment to show what that vacuum removed)
        rounds = [store.vacuum_changed_tables()]
        while not (["deals"] in rounds and dead() < 1500) and len(rounds) < 100:
            time.sleep(0.1)
            rounds.append(store.vacuum_changed_tables())
        assert ["deals"] in rounds, rounds
        assert dead() < 1500, (dead(), rounds)
        assert store.vacuum_changed_tables() == []
    finally:
        store.close()
        holder.dispose()


@pytest.mark.postgres
def test_a_scored_postgresql_store_is_vacuumed_and_walks_the_at_risk_index(database: Any) -> None:
    """On PostgreSQL the service's planner-stats round also vacuums the deals and their live scores when
    they changed since their last vacuum (`Store.vacuum_changed_tables`; autovacuum may be off, as on the
    CI's server, or wait for a fifth of the table): the deals' pages are then all-visible, the counts
    read `ix_deals_at_risk` alone, and the planner estimates the at-risk split from its columns (as
    `IS NOT TRUE`), so the page in the default order is that index's first rows, not a sort of every
    open deal of the pipeline (at 100,000 deals after the first live scoring: 5.3 + 6.5 ms of SQL a
    page before, 1.5 + 0.8 ms after)."""
    from serving.stage_limits import refresh_stage_limits
    from training.simulate import simulate_history

    if database.backend != "postgresql":
        pytest.skip("PostgreSQL's vacuum and plans")
    store = Store(database.url, schema=database.schema)
    try:
        store.create_schema()
        store.import_history(simulate_history(n_deals=1500, seed=2))
        deals = store.table("deals")
        with store.engine.connect() as conn:
            query = sa.select(deals.c.deal_id).where(deals.c.outcome == "open")
            open_ids = list(conn.execute(query).scalars())
        n = len(open_ids)
        store.save_scores(pd.DataFrame({
            "deal_id": open_ids, "as_of": pd.Timestamp.now(tz="UTC"),
            "cold_risk": np.linspace(0.1, 0.9, n), "close_probability": np.linspace(0.01, 0.6, n),
            "risk_band": ["medium"] * n, "expected_value": [100.0] * n, "reasons": [[] for _ in range(n)],
        }), "1", {})
        refresh_stage_limits(store)
        # A backend reports what it wrote to the server's statistics lazily (within a second, or when it
        # ends): close the pools' connections (reads' and writers'; the store opens new ones after), so the
        # writes above are counted before the vacuum reads them
        store.close()
        store.refresh_planner_stats()  # the service's loop
        stats = sa.text(
            "SELECT relname, last_vacuum IS NOT NULL FROM pg_stat_user_tables"
            " WHERE schemaname = :schema AND relname IN ('deals', 'deal_scores') ORDER BY relname")
        with store.engine.connect() as conn:
            assert conn.execute(stats, {"schema": database.schema}).fetchall() == [
                ("deal_scores", True), ("deals", True)]
        # nothing changed since (a closed connection's report may still land after the vacuum: then one
        # more round vacuums it, and none after that)
        assert store.vacuum_changed_tables() in ([], ["deals"], ["deal_scores"], ["deal_scores", "deals"])
        assert store.vacuum_changed_tables() == []

        pipeline = store.deal_pipelines(open_ids[:1])[open_ids[0]]
        statements: list[tuple[str, Any]] = []

        def capture(conn: Any, cursor: Any, statement: str, params: Any, context: Any, many: bool) -> None:
            statements.append((statement, params))

        sa.event.listen(store.engine, "before_cursor_execute", capture)
        live = store.at_risk_rows(pipeline, limit=10)
        sa.event.remove(store.engine, "before_cursor_execute", capture)
        assert live is not None and live[0] > 0 and len(live[1]) == 10

        def plan(marker: str) -> dict[str, Any]:
            statement, params = next((s, p) for s, p in statements if marker in s)
            with store.engine.connect() as conn:
                return conn.exec_driver_sql("EXPLAIN (FORMAT JSON) " + statement, params).scalar_one()[0]

        def nodes(node: dict[str, Any]) -> Iterator[dict[str, Any]]:
            yield node
            for child in node.get("Plans", []):
                yield from nodes(child)

        # one statement: the counts, the ranking and the page are parts of its plan
        page = list(nodes(plan("AS ranked_id")["Plan"]))
        counts = list(nodes(next(n for n in page if n["Node Type"] == "Aggregate")))
        assert [(n["Node Type"], n.get("Index Name")) for n in counts] == [
            ("Aggregate", None), ("Index Only Scan", "ix_deals_at_risk")], counts
        limit = next(n for n in page if n["Node Type"] == "Limit")
        ranking = list(nodes(limit))
        scans = [n for n in ranking if "Scan" in n["Node Type"]]
        assert [(n["Node Type"], n.get("Index Name")) for n in scans] == [
            ("Index Only Scan", "ix_deals_at_risk")], ranking
        assert "Sort" not in [n["Node Type"] for n in ranking], ranking  # an incremental sort of ties is fine
        # the split's estimate: most open deals are not stale (it took `CASE ... END = 0` for 0.5%)
        assert scans[0]["Plan Rows"] >= 0.5 * live[0], (scans[0]["Plan Rows"], live[0])
    finally:
        store.close()


@pytest.mark.postgres
def test_a_pooled_connection_the_server_closed_is_replaced_before_use(database: Any) -> None:
    """The pool pings a connection before use only when it was idle long or the server closed it (its
    socket has input waiting): a backend terminated while its connection sat in the pool a moment is
    replaced, and the next read answers instead of failing."""
    import time

    if database.backend != "postgresql":
        pytest.skip("PostgreSQL's pool")
    store = Store(database.url, schema=database.schema)
    other = sa.create_engine(database.url)
    try:
        store.create_schema()
        with store.engine.connect() as conn:
            pid = conn.execute(sa.text("SELECT pg_backend_pid()")).scalar_one()
        with other.connect() as conn:
            assert conn.execute(sa.text("SELECT pg_terminate_backend(:pid)"), {"pid": pid}).scalar_one()
        time.sleep(0.3)  # the server's goodbye reaches the pooled connection's socket
        with store.engine.connect() as conn:
            assert conn.execute(sa.text("SELECT pg_backend_pid()")).scalar_one() != pid
        assert store.count_rows()["deals"] == 0
    finally:
        other.dispose()
        store.close()
