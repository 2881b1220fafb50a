"""Little data: with about 30 closed deals the close probability still ranks better than the stage prior,
and every output says how thin the history is."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from features.build import FeatureBuilder
from features.labels import won_label
from models.baselines import StagePrior
from training.metrics import binary_metrics
from training.simulate import simulate_history
from training.snapshots import make_snapshots
from training.train import TrainConfig, closed_deal_count, prepare_training_data, train

START, CUT, END = "2024-01-01", "2026-01-01", "2028-01-01"


@pytest.fixture(scope="module")
def judge() -> tuple[pd.DataFrame, np.ndarray]:
    """Snapshots of another, larger history of the same simulator, with their eventual outcome."""
    full = simulate_history(3000, seed=77, start=START, end=END)
    cut = full.cut(CUT)
    points = make_snapshots(cut)
    points = points[points["as_of"] > cut.end_time - pd.Timedelta(days=180)].reset_index(drop=True)
    y = won_label(full, points).to_numpy(dtype=float)
    points = points[np.isfinite(y)].reset_index(drop=True)
    return FeatureBuilder().fit(cut).transform(cut, points), y[np.isfinite(y)]


@pytest.mark.parametrize("seed", [0, 1])
def test_thirty_closed_deals_rank_better_than_the_stage_prior(
    judge: tuple[pd.DataFrame, np.ndarray], seed: int
) -> None:
    features, y = judge
    history = simulate_history(70, seed=seed, start=START, end=END).cut(CUT)
    assert 20 <= closed_deal_count(history) <= 45
    result = train(history, TrainConfig(seed=seed))
    assert result.thin_data and f"Only {result.n_closed_deals} closed deals" in result.data_note
    assert result.bundle.metadata["data_note"] == result.data_note  # travels with the model
    served = result.bundle.score(features, top_reasons=0)["close_probability"].to_numpy()
    data = prepare_training_data(history, TrainConfig(seed=seed))
    rows = data.frame[data.frame["won"].notna() & (data.frame["window"] != "test")]
    prior = StagePrior().fit(rows, rows["won"].to_numpy(dtype=float)).predict_proba(features)
    served_auc = binary_metrics(y, served)["roc_auc"]
    prior_auc = binary_metrics(y, prior)["roc_auc"]
    assert served_auc > prior_auc + 0.03, (served_auc, prior_auc)
