"""bench/bench_store.py's yardstick for "every open deal has a live score": it must count what the service
itself treats as due (`Store.pending_scores`), or the bench would time the wrong thing."""

from __future__ import annotations

from datetime import UTC, datetime

import pandas as pd

from bench.bench_store import _fresh, not_live
from serving.store import Store
from training.simulate import simulate_history

LONG_AGO = datetime(1970, 1, 1, tzinfo=UTC)  # no score counts as aged: only missing, moved or other version


def _due(store: Store, version: str) -> dict[str, datetime]:
    return store.pending_scores(version, LONG_AGO, 100_000)


def _save(store: Store, states: dict[str, datetime], version: str) -> None:
    ids = list(states)
    now = pd.Timestamp.now(tz="UTC")
    scores = pd.DataFrame({
        "deal_id": ids, "as_of": [now] * len(ids), "cold_risk": 0.5, "close_probability": 0.4,
        "risk_band": "medium", "expected_value": 1.0, "reasons": [[] for _ in ids],
    })
    store.save_scores(scores, version, states)


def test_not_live_counts_what_the_service_would_score(store: Store) -> None:
    store.import_history(simulate_history(80, seed=3))
    due = _due(store, "1")
    assert len(due) > 4  # never scored: every open deal is due
    assert not_live(store, "1") == len(due)

    half = dict(list(due.items())[: len(due) // 2])
    _save(store, half, "1")
    assert not_live(store, "1") == len(due) - len(half) == len(_due(store, "1"))
    assert not_live(store, "2") == len(due)  # a swap makes every open deal due again

    # a new event on a scored deal moves its state on: it is not live until scored again
    moved = next(iter(half))
    activity = pd.DataFrame({
        "deal_id": pd.Series([moved], dtype="string"), "type": pd.Series(["email"], dtype="string"),
        "occurred_at": pd.Series([pd.Timestamp.now(tz="UTC")], dtype="datetime64[ns, UTC]"),
        "direction": pd.Series([None], dtype="string"), "event_id": pd.Series(["b-1"], dtype="string"),
    })
    store.add_events(activities=activity)
    assert not_live(store, "1") == len(due) - len(half) + 1 == len(_due(store, "1"))


def test_fresh_needs_a_score_as_of_after_the_write_and_not_pending() -> None:
    sent = datetime(2026, 1, 1, 12, tzinfo=UTC)
    assert _fresh({"scored_at": "2026-01-01T12:00:01+00:00"}, "scored_at", sent)
    assert not _fresh({"scored_at": "2026-01-01T11:59:59+00:00"}, "scored_at", sent)
    assert not _fresh({"scored_at": "2026-01-01T12:00:01+00:00", "score_pending": True}, "scored_at", sent)
    assert not _fresh(None, "scored_at", sent)
