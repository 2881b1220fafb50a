"""Write-time integrity in the store itself, on SQLite and PostgreSQL: every refused write changes
nothing, and every problem names the row (deal, event) it is about."""

from __future__ import annotations

from typing import Any

import pandas as pd
import pytest

from features.history import DealHistory, PipelineSpec
from serving.store import Store, WriteRejectedError

EMPTY_STAGES = pd.DataFrame(columns=["deal_id", "stage", "changed_at"])
EMPTY_ACTIVITIES = pd.DataFrame(columns=["deal_id", "type", "occurred_at"])


def _deals(**columns: list[str]) -> pd.DataFrame:
    base = {
        "deal_id": ["K1"],
        "pipeline": ["Core"],
        "owner": ["ana"],
        "amount": ["100"],
        "created_at": ["2025-01-10"],
    }
    return DealHistory.from_frames(pd.DataFrame({**base, **columns}), EMPTY_STAGES, EMPTY_ACTIVITIES).deals


def _activity(when: str, event_id: str = "k-a1") -> pd.DataFrame:
    return pd.DataFrame(
        {
            "deal_id": pd.Series(["K1"], dtype="string"),
            "type": pd.Series(["call"], dtype="string"),
            "direction": pd.Series([pd.NA], dtype="string"),
            "occurred_at": pd.to_datetime([when], utc=True),
            "event_id": pd.Series([event_id], dtype="string"),
        }
    )


def _stage(stage: str, when: str) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "deal_id": pd.Series(["K1"], dtype="string"),
            "stage": pd.Series([stage], dtype="string"),
            "changed_at": pd.to_datetime([when], utc=True),
            "event_id": pd.Series([pd.NA], dtype="string"),
        }
    )


def test_an_event_before_creation_is_refused_naming_it(store: Store) -> None:
    store.upsert_deals(_deals())
    with pytest.raises(WriteRejectedError) as info:
        store.add_events(activities=_activity("2025-01-09T23:00:00Z", "too-early"))
    assert info.value.problems[0].loc == "activities[deal K1, event too-early]"
    assert "before the deal was created (2025-01-10T00:00:00+00:00)" in info.value.problems[0].msg
    assert store.count_rows()["activities"] == 0


def test_created_at_cannot_move_after_stored_events(store: Store) -> None:
    store.upsert_deals(_deals())
    store.add_events(activities=_activity("2025-01-12"))
    before = store.deal_states().iloc[0]
    with pytest.raises(WriteRejectedError, match=r"deals\[K1\]\.created_at: .*activities event k-a1"):
        store.upsert_deals(_deals(created_at=["2025-01-15"]))
    assert store.load_history().deals["created_at"].iloc[0] == pd.Timestamp("2025-01-10", tz="UTC")
    # moving it earlier is fine, and a backfilled event older than the others is accepted and placed by time
    assert store.upsert_deals(_deals(created_at=["2025-01-05"])).updated == 1
    assert store.add_events(activities=_activity("2025-01-06", "k-a0")).inserted == 1
    after = store.deal_states().iloc[0]
    assert after["first_event_at"] == pd.Timestamp("2025-01-06", tz="UTC")
    assert after["last_activity_at"] == before["last_activity_at"] == pd.Timestamp("2025-01-12", tz="UTC")


def test_inferred_specs_grow_and_given_specs_refuse(store: Store) -> None:
    store.upsert_deals(_deals())
    store.add_events(stage_changes=_stage("Scope", "2025-01-11"))
    store.add_events(stage_changes=_stage("Closed Lost", "2025-01-13"))
    spec = store.pipeline_spec("Core")
    assert spec is not None and (spec.stages, spec.lost, spec.inferred) == (
        ("Scope",),
        ("Closed Lost",),
        True,
    )
    state = store.deal_states().iloc[0]
    assert (state["current_stage"], state["outcome"]) == ("Closed Lost", "lost")
    given = PipelineSpec("Core", ("Scope", "Build"), won=("Live",), lost=("Closed Lost",))
    assert store.set_pipeline_spec(given).updated == 1
    with pytest.raises(WriteRejectedError, match="'Pilot' is not a stage of pipeline 'Core'.*Scope, Build"):
        store.add_events(stage_changes=_stage("Pilot", "2025-01-14"))
    assert store.count_rows()["stage_changes"] == 2
    with pytest.raises(WriteRejectedError, match="stored deal K1 has stage 'Scope'"):
        store.set_pipeline_spec(PipelineSpec("Core", ("Build",), won=("Live",), lost=("Closed Lost",)))
    stored = store.pipeline_spec("Core")
    assert stored is not None and stored.stages == ("Scope", "Build") and not stored.inferred


def test_a_spec_change_rewrites_the_outcome_of_stored_deals(store: Store) -> None:
    store.upsert_deals(_deals())
    store.add_events(stage_changes=_stage("Signed", "2025-01-11"))
    assert store.deal_states().iloc[0]["outcome"] == "open"
    store.set_pipeline_spec(PipelineSpec("Core", ("Scope",), won=("Signed",), lost=("Dropped",)))
    state = store.deal_states().iloc[0]
    assert (state["outcome"], state["closed_at"]) == ("won", pd.Timestamp("2025-01-11", tz="UTC"))


def test_attribute_names_are_bounded_per_pipeline(database: Any) -> None:
    store = Store(database.url, schema=database.schema, max_attribute_names=3)
    store.create_schema()
    try:
        store.upsert_deals(_deals(color=["red"], size=["L"]))
        with pytest.raises(WriteRejectedError, match="4 distinct custom attribute names; the limit is 3"):
            store.upsert_deals(_deals(deal_id=["K2"], shape=["round"], weight=["9"]))
        assert store.count_rows()["deals"] == 1 and store.count_rows()["pipeline_attributes"] == 2
        assert store.upsert_deals(_deals(deal_id=["K3"], color=["blue"], shape=["flat"])).inserted == 1
    finally:
        store.close()
