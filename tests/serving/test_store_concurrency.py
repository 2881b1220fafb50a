"""Concurrent writers of the same new deal and the same events: no error, and the counts are true.

Run on SQLite and on PostgreSQL (where writers really overlap: row locks and ON CONFLICT decide).
"""

from __future__ import annotations

import threading
from typing import Any

import pandas as pd

from features.history import DealHistory
from serving.store import PG_WRITE_TURNS, ImportResult, Store

WRITERS = 8


def _same_deal_and_events() -> DealHistory:
    deals = pd.DataFrame(
        {
            "deal_id": ["RACE-1"],
            "pipeline": ["Race Line"],
            "owner": ["ana"],
            "amount": ["700"],
            "created_at": ["2025-05-01"],
            "channel": ["web"],
        }
    )
    stage_changes = pd.DataFrame(
        {
            "deal_id": ["RACE-1", "RACE-1"],
            "stage": ["Qualify", "Propose"],
            "changed_at": ["2025-05-02", "2025-05-09"],
            "event_id": ["r-s1", "r-s2"],
        }
    )
    activities = pd.DataFrame(
        {
            "deal_id": ["RACE-1"] * 3,
            "type": ["call", "email", "meeting"],
            "occurred_at": ["2025-05-03", "2025-05-04", "2025-05-05"],
            "event_id": [None, "r-a2", "r-a3"],
        }
    )
    return DealHistory.from_frames(deals, stage_changes, activities)


def _run_concurrently(work: Any) -> tuple[list[Any], list[BaseException]]:
    barrier = threading.Barrier(WRITERS)
    results: list[Any] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def run() -> None:
        barrier.wait()
        try:
            out = work()
        except BaseException as exc:  # every failure is collected and reported by the test
            with lock:
                errors.append(exc)
            return
        with lock:
            results.append(out)

    threads = [threading.Thread(target=run) for _ in range(WRITERS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    return results, errors


def test_concurrent_writers_of_the_same_new_deal_and_events(store: Store) -> None:
    history = _same_deal_and_events()

    def write() -> tuple[ImportResult, ImportResult]:
        deal = store.upsert_deals(history.deals)
        events = store.add_events(stage_changes=history.stage_changes, activities=history.activities)
        return deal, events

    results, errors = _run_concurrently(write)
    assert errors == []
    deals = [r[0].tables["deals"] for r in results]
    assert sum(c.inserted for c in deals) == 1 and sum(c.duplicates for c in deals) == WRITERS - 1
    pipelines = sum(r[0].tables["pipelines"].inserted for r in results)
    assert pipelines == 1
    events = [r[1] for r in results]
    assert sum(e.tables["stage_changes"].inserted for e in events) == 2
    assert sum(e.tables["activities"].inserted for e in events) == 3
    assert sum(e.duplicates for e in events) == (WRITERS - 1) * 5
    counts = store.count_rows()
    assert (counts["deals"], counts["stage_changes"], counts["activities"]) == (1, 2, 3)
    spec = store.pipeline_spec("Race Line")
    assert spec is not None and spec.stages == ("Qualify", "Propose") and spec.inferred
    state = store.deal_states(deal_ids=["RACE-1"]).iloc[0]
    assert (state["current_stage"], state["n_events"]) == ("Propose", 5)


def test_concurrent_imports_of_one_history_count_it_once(store: Store) -> None:
    history = _same_deal_and_events()
    results, errors = _run_concurrently(lambda: store.import_history(history))
    assert errors == []
    assert sum(r.inserted for r in results) == 1 + 1 + 5  # pipeline, deal, five events
    assert all(r.updated == 0 for r in results)


def test_writers_past_the_process_s_turns_wait_for_a_turn_and_then_all_write(store: Store) -> None:
    """A store's writers take turns: one at a time on SQLite, `PG_WRITE_TURNS` at a time on PostgreSQL
    (there 16 writers of one service at once used to run together and starve its readers). While every
    turn is held by an open write transaction, one more write waits; once they end it is stored."""
    store.import_history(_same_deal_and_events())
    turns = 1 if store.dialect == "sqlite" else PG_WRITE_TURNS
    holding = threading.Barrier(turns + 1)
    release = threading.Event()

    def hold() -> None:
        with store._write():
            holding.wait()
            release.wait(timeout=120)

    holders = [threading.Thread(target=hold, daemon=True) for _ in range(turns)]
    for t in holders:
        t.start()
    holding.wait(timeout=60)  # every turn is taken
    answers: list[ImportResult] = []
    late = pd.DataFrame({"deal_id": ["RACE-1"], "type": ["call"], "occurred_at": ["2025-05-20"],
                         "event_id": ["r-late"]})
    writer = threading.Thread(target=lambda: answers.append(store.add_events(activities=late)), daemon=True)
    writer.start()
    writer.join(timeout=1.0)
    waited = writer.is_alive() and store.count_rows()["activities"] == 3
    release.set()
    for t in [*holders, writer]:
        t.join(timeout=120)
    assert waited, "a write went on while every turn was held"
    assert [a.tables["activities"].inserted for a in answers] == [1]
    assert store.count_rows()["activities"] == 4


def test_a_writer_holding_a_turn_writes_again_inside_it(store: Store) -> None:
    """A turn is the thread's: a write made inside another of the same thread does not wait for itself."""
    store.import_history(_same_deal_and_events())
    turns = 1 if store.dialect == "sqlite" else PG_WRITE_TURNS
    done: list[bool] = []

    def nested(depth: int) -> None:
        with store._writer_turn():
            if depth < turns + 1:
                nested(depth + 1)
            else:
                done.append(True)

    t = threading.Thread(target=nested, args=(1,), daemon=True)  # a thread waiting for itself never ends
    t.start()
    t.join(timeout=60)
    assert done == [True]
