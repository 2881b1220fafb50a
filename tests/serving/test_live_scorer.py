"""The live scorer and the store's live-score queries, on SQLite and PostgreSQL, with a stand-in model:
what is due and in which order, a failing deal does not hold back the others, at-risk paging in SQL."""

from __future__ import annotations

from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import pandas as pd

from features.history import DealHistory
from serving.live_scores import LiveScorer
from serving.model_holder import LoadedModel, PopulationCache
from serving.store import Store

NOW = datetime(2025, 6, 1, tzinfo=UTC)


class StandInBundle:
    """Cold risk = amount / 10,000 (so the ranking is known); fails on the deals named in `broken`."""

    def __init__(self, broken: set[str] | None = None) -> None:
        self.broken = broken or set()

    def score(self, features: pd.DataFrame, top_reasons: int = 3, with_curves: bool = False) -> pd.DataFrame:
        if self.broken & set(features["deal_id"].astype(str)):
            raise ValueError("cannot score")
        risk = features["amount"].astype(float) / 10_000
        return pd.DataFrame(
            {
                "deal_id": features["deal_id"].astype("string").to_numpy(),
                "as_of": features["as_of"].to_numpy(),
                "cold_risk": risk.to_numpy(),
                "close_probability": 1 - risk.to_numpy(),
                "risk_band": "high",
                "expected_value": features["amount"].astype(float).to_numpy(),
                "reasons": [
                    [{"feature": "amount", "value": float(a), "effect": 0.1, "text": "big"}]
                    for a in features["amount"]
                ],
            }
        )


def _scorer(store: Store, bundle: StandInBundle, version: str = "7") -> LiveScorer:
    model = LoadedModel(bundle, version, "models:/x/7", NOW)
    holder: Any = SimpleNamespace(current=lambda: model)
    population = PopulationCache.from_store(store)
    return LiveScorer(store, holder, population, max_age_s=3600)


def _import(store: Store) -> None:
    deals = pd.DataFrame(
        {
            "deal_id": ["L1", "L2", "L3", "L4"],
            "pipeline": ["P", "P", "P", "Q"],
            "owner": ["ana", "bo", "ana", "cy"],
            "amount": ["3000", "9000", "5000", "100"],
            "created_at": ["2025-05-01"] * 4,
            "team": ["t1", "t1", "t2", "t1"],
        }
    )
    stages = pd.DataFrame(
        {"deal_id": ["L1", "L2", "L3", "L4"], "stage": ["Talk"] * 4, "changed_at": ["2025-05-02"] * 4}
    )
    activities = pd.DataFrame(columns=["deal_id", "type", "occurred_at"])
    store.import_history(DealHistory.from_frames(deals, stages, activities))


def test_due_deals_are_scored_and_a_broken_one_stays_pending(store: Store) -> None:
    _import(store)
    scorer = _scorer(store, StandInBundle(broken={"L2"}))
    assert scorer.score_due(NOW) == 3
    assert set(store.pending_scores("7", NOW, 10)) == {"L2"}  # still due, the others are done
    assert store.at_risk_page("P") is None  # an open deal of P has no score yet: the route scores on demand
    good = _scorer(store, StandInBundle())
    assert good.score_due(NOW) == 1 and store.pending_scores("7", NOW, 10) == {}
    page = store.at_risk_page("P")
    assert page is not None
    total, rows = page
    assert total == 3 and rows["deal_id"].tolist() == ["L2", "L3", "L1"]  # by cold risk, highest first
    assert rows["model_version"].tolist() == ["7"] * 3 and not rows["pending"].any()
    assert rows["reasons"].iloc[0][0]["value"] == 9000.0
    filtered = store.at_risk_page("P", owner="ana", min_amount=4000, limit=5)
    assert filtered is not None and filtered[0] == 1 and filtered[1]["deal_id"].tolist() == ["L3"]
    second_page = store.at_risk_page("P", limit=1, offset=1)
    assert second_page is not None and second_page[1]["deal_id"].tolist() == ["L3"] and second_page[0] == 3


def test_a_write_a_new_version_or_age_makes_a_score_due(store: Store) -> None:
    _import(store)
    scorer = _scorer(store, StandInBundle())
    scorer.score_due(NOW)
    assert store.pending_scores("7", NOW, 10) == {}
    call = pd.DataFrame(
        {
            "deal_id": pd.Series(["L3"], dtype="string"),
            "type": pd.Series(["call"], dtype="string"),
            "direction": pd.Series([pd.NA], dtype="string"),
            "occurred_at": pd.to_datetime(["2025-05-20"], utc=True),
            "event_id": pd.Series([pd.NA], dtype="string"),
        }
    )
    store.add_events(activities=call)
    assert list(store.pending_scores("7", NOW, 10)) == ["L3"]
    page = store.at_risk_page("P")
    assert page is not None and page[1].set_index("deal_id").loc["L3", "pending"]
    scorer.score_due(NOW)
    assert store.pending_scores("7", NOW, 10) == {}
    assert set(store.pending_scores("8", NOW, 10)) == {"L1", "L2", "L3", "L4"}  # a model swap
    an_hour_later = datetime(2025, 6, 1, 1, tzinfo=UTC)  # scores made at NOW are older than this
    assert set(store.pending_scores("7", an_hour_later, 10)) == {"L1", "L2", "L3", "L4"}
