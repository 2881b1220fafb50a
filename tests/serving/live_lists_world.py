"""A small history built around a given time, and a stand-in model, for the live at-risk / stale tests.

Every feature of the live lists is exercised: stages with a configured limit (A: Demo), a learned one
(A: Lead, B: Intro, from won deals), and none (A: Proposal); deals with no stage change yet; deals past
and within twice their limit, with close probability under and over the stale bound; ties in every sort
key (same amount, scores, close date or stage entry), so the deal_id tie-break decides; ids whose code
point order differs from a locale's; deals without an expected close date.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from datetime import datetime
from types import SimpleNamespace
from typing import Any

import numpy as np
import pandas as pd

from features.history import DealHistory
from serving.live_scores import LiveScorer
from serving.model_holder import LoadedModel, PopulationCache
from serving.store import Store
from tests.serving.stand_in import ScoresAsColumns

VERSION = "7"
IDS = ["a10", "a9", "B1", "b2", "Z", "z", "éa", "Ea", "_x", "x_", "0k", "k0"]


class FixedScores(ScoresAsColumns):
    """Scores like `ScoringBundle.score`, with a fixed cold risk and close probability per deal."""

    def __init__(self, cold: Mapping[str, float], close: Mapping[str, float]) -> None:
        self.cold = dict(cold)
        self.close = dict(close)

    def score(self, features: pd.DataFrame, top_reasons: int = 3, with_curves: bool = False) -> pd.DataFrame:
        ids = features["deal_id"].astype(str)
        cold = ids.map(self.cold).astype(float)
        close = ids.map(self.close).astype(float)
        return pd.DataFrame(
            {
                "deal_id": ids.to_numpy(),
                "as_of": features["as_of"].to_numpy(),
                "cold_risk": cold.to_numpy(),
                "close_probability": close.to_numpy(),
                "risk_band": ["high" if c >= 0.5 else "low" for c in cold],
                "expected_value": (features["amount"].astype(float) * close).to_numpy(),
                "reasons": [[{"feature": "stage_age_days", "value": 1.0, "effect": 0.1, "text": f"{d} waits"}]
                            for d in ids],
                "counter_reasons": [[] for _ in ids],
                "close_probability_90d": (close / 2).to_numpy(),
                "slip_risk": np.nan,
                "likely_close_date": pd.NaT,
            }
        )

    def timing_curves(self, features: pd.DataFrame) -> None:
        return None


def make_world(now: datetime, seed: int = 3) -> tuple[DealHistory, FixedScores]:
    """The history (everything dated before `now`) and the stand-in model scoring it."""
    rng = random.Random(seed)
    t = pd.Timestamp(now).tz_convert("UTC") if pd.Timestamp(now).tzinfo else pd.Timestamp(now, tz="UTC")
    deals: list[dict[str, Any]] = []
    stages: list[tuple[str, str, pd.Timestamp]] = []
    cold: dict[str, float] = {}
    close: dict[str, float] = {}
    # Won deals the learned limits come from: A spends 4, 6, 8, 10 days in Lead, B 3 and 5 in Intro.
    for i, days in enumerate([4, 6, 8, 10]):
        start = t - pd.Timedelta(days=200 + i)
        deals.append({"deal_id": f"won-a{i}", "pipeline": "A", "owner": "ann", "team": "East", "amount": 100,
                      "created_at": start})
        stages += [(f"won-a{i}", "Lead", start), (f"won-a{i}", "Demo", start + pd.Timedelta(days=days)),
                   (f"won-a{i}", "Won", start + pd.Timedelta(days=days + 3))]
    for i, days in enumerate([3, 5]):
        start = t - pd.Timedelta(days=150 + i)
        deals.append({"deal_id": f"won-b{i}", "pipeline": "B", "owner": "dan", "team": "North", "amount": 100,
                      "created_at": start})
        stages += [(f"won-b{i}", "Intro", start), (f"won-b{i}", "Won", start + pd.Timedelta(days=days))]
    open_ids = [f"{p}{n}" for p in IDS for n in ("", "1")]
    for n, deal_id in enumerate(open_ids):
        pipeline = "B" if n % 4 == 3 else "A"
        created = t - pd.Timedelta(days=60)
        choices = [None, "Lead", "Demo", "Proposal"] if pipeline == "A" else [None, "Intro", "Pitch"]
        stage = rng.choice(choices)
        # whole days plus a half, so no deal sits on a limit's boundary
        entered = t - pd.Timedelta(days=rng.choice([1, 3, 7, 12, 19, 25, 40]) + 0.5)
        deals.append({
            "deal_id": deal_id, "pipeline": pipeline, "owner": rng.choice(["ann", "bob"]),
            "team": rng.choice(["East", "West"]), "amount": rng.choice([100, 500, 500, 1000]),
            "created_at": created, "expected_close_date": rng.choice([None, t + pd.Timedelta(days=30),
                                                                      t + pd.Timedelta(days=9)]),
        })
        if stage is not None:
            stages.append((deal_id, stage, entered))
        cold[deal_id] = rng.choice([0.2, 0.5, 0.8])
        close[deal_id] = rng.choice([0.01, 0.01, 0.3, 0.6])
    deal_frame = pd.DataFrame(deals)
    for col in ("created_at", "expected_close_date"):
        deal_frame[col] = [None if v is None or pd.isna(v) else pd.Timestamp(v).isoformat()
                           for v in deal_frame.get(col, pd.Series([None] * len(deal_frame)))]
    stage_frame = pd.DataFrame([(d, s, at.isoformat()) for d, s, at in stages],
                               columns=["deal_id", "stage", "changed_at"])
    activities = pd.DataFrame(columns=["deal_id", "type", "occurred_at"])
    specs: dict[str, dict[str, Any]] = {
        "A": {"stages": ["Lead", "Demo", "Proposal"], "won": ["Won"], "lost": ["Lost"],
              "stale_after_days": {"Demo": 10}},
        "B": {"stages": ["Intro", "Pitch"], "won": ["Won"], "lost": ["Lost"]},
    }
    history = DealHistory.from_frames(deal_frame, stage_frame, activities, None, specs, source="test")
    for deal_id in history.deals["deal_id"]:
        cold.setdefault(str(deal_id), 0.5)
        close.setdefault(str(deal_id), 0.5)
    return history, FixedScores(cold, close)


def score_live(store: Store, bundle: FixedScores, now: datetime) -> int:
    """Give every open deal of the store its live score as of `now` (the service's scorer, one model)."""
    model = LoadedModel(bundle, VERSION, "models:/x/7", now)
    holder: Any = SimpleNamespace(current=lambda: model)
    scorer = LiveScorer(store, holder, PopulationCache.from_store(store), max_age_s=3600)
    total = 0
    while (n := scorer.score_due(now)) > 0:
        total += n
    return total
