"""Out-of-sample comparison: configurations of known relative quality are ranked correctly, with
intervals, and the figures reported are no longer the in-sample ones the old method gave."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from compare_recipes import BLIND, FEW_TREES, FULL, HISTORY_DEALS, HISTORY_SEED

from features.history import DealHistory
from models.comparison import BETTER, bootstrap_comparison
from training.backtest import evaluate_bundle, make_folds
from training.compare import Comparison, compare_configs
from training.simulate import simulate_history
from training.train import TrainConfig, train

# The comparisons that run their own configurations are in test_compare_runs (split so that
# `--dist loadfile` can give the two halves to different workers).
pytestmark = pytest.mark.quality  # model comparisons on a simulated history: tens of seconds


@pytest.fixture(scope="module")
def history() -> DealHistory:
    return simulate_history(HISTORY_DEALS, seed=HISTORY_SEED)


@pytest.fixture(scope="module")
def comparison(history: DealHistory) -> Comparison:
    # the activity-blind configuration plays the champion; the full one is the candidate
    return compare_configs(history, {"1": BLIND, "2": FULL}, champion="1", n_folds=2, n_boot=100)


def _diff(comparison: Comparison, head: str, metric: str) -> pd.Series:
    d = comparison.differences
    return d[(d["version"] == "2") & (d["head"] == head) & (d["metric"] == metric)].iloc[0]


def test_full_features_beat_the_activity_blind_model_with_intervals_excluding_zero(
    comparison: Comparison,
) -> None:
    assert comparison.verdicts == {"2": BETTER}
    for head in ("cold", "close"):
        auc = _diff(comparison, head, "roc_auc")
        assert 0 < auc["ci_low"] <= auc["difference"] <= auc["ci_high"], auc.to_dict()
        assert auc["verdict"] == BETTER
        assert _diff(comparison, head, "brier")["difference"] < 0
    # activity is what the cold label is about: without it the probabilities are clearly worse too
    cold_brier = _diff(comparison, "cold", "brier")
    assert cold_brier["ci_high"] < 0 and cold_brier["verdict"] == BETTER, cold_brier.to_dict()
    # every version gets every reported metric per head, with an interval around its value
    m = comparison.metrics
    assert len(m) == 2 * 2 * 4
    unbiased = m[m["metric"].isin(["roc_auc", "brier"])]  # ECE is biased upwards under resampling
    assert ((unbiased["ci_low"] <= unbiased["value"]) & (unbiased["value"] <= unbiased["ci_high"])).all()
    assert (m["n_deals"] < m["n_rows"]).all(), "deals have several snapshots each; deals are resampled"
    assert any("cold head roc_auc +" in r for r in comparison.reasons["2"])


def test_reported_gap_is_out_of_sample_not_the_in_sample_one(
    history: DealHistory, comparison: Comparison
) -> None:
    # The old method: each version trained once on the whole history, then scored on the fold windows
    # (windows it had partly seen through training and calibration).
    folds = make_folds(history, 2)
    in_sample = {}
    for version, config in (("1", BLIND), ("2", FULL)):
        table = evaluate_bundle(train(history, config).bundle, history, folds)
        in_sample[version] = table[table["fold"] == "all"].set_index("head")["roc_auc"]
    m = comparison.metrics.set_index(["version", "head", "metric"])["value"]
    for head in ("cold", "close"):
        old_gap = in_sample["2"][head] - in_sample["1"][head]
        new_gap = _diff(comparison, head, "roc_auc")["difference"]
        assert old_gap > 0 and new_gap > 0  # both rank the full model first on this history...
        assert abs(new_gap - old_gap) > 0.004, (head, old_gap, new_gap)  # ...by a different margin
        # and what is reported is each version's out-of-sample figure, not its in-sample one
        for version in ("1", "2"):
            assert m[(version, head, "roc_auc")] != pytest.approx(in_sample[version][head], abs=1e-3)


def test_bootstrap_resamples_deals_so_correlated_snapshots_widen_the_interval() -> None:
    # 20 deals observed 20 times each; a deal's snapshots share its outcome and roughly its score
    rng = np.random.default_rng(0)
    n = 400
    y = np.repeat((rng.uniform(size=20) < 0.4).astype(float), 20)
    p = np.clip(0.4 + 0.3 * (y - 0.4) + np.repeat(rng.normal(0, 0.15, 20), 20), 0.01, 0.99)
    frame = pd.DataFrame({"head": "cold", "y": y, "a": p, "b": p})

    def width(deal_ids: np.ndarray) -> float:
        metrics, _ = bootstrap_comparison(frame.assign(deal_id=deal_ids), ["a", "b"], "a", n_boot=200)
        row = metrics[(metrics["version"] == "a") & (metrics["metric"] == "brier")].iloc[0]
        return float(row["ci_high"] - row["ci_low"])

    every_row_its_own_deal = width(np.arange(n).astype(str))  # what resampling snapshots would give
    twenty_deals = width((np.arange(n) // 20).astype(str))
    assert twenty_deals > 2 * every_row_its_own_deal


def test_a_different_horizon_is_scored_on_the_reference_labels_and_says_so(history: DealHistory) -> None:
    longer = TrainConfig(lightgbm_params=FEW_TREES, horizon_days=28)
    result = compare_configs(history, {"1": FULL, "2": longer}, champion="1", n_folds=1, n_boot=30)
    assert result.notes == [
        "version 2 was trained for a 28-day cold horizon; its cold head is scored against the 14-day "
        "labels of version 1, the reference"
    ]
    # both versions were scored on exactly the same rows
    m = result.metrics
    assert m.groupby("head")["n_rows"].nunique().eq(1).all()
