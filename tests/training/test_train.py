"""Training without MLflow: metrics side by side, thin data, and point-in-time batch scores."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from features.history import DealHistory
from training.data import read_history, write_history
from training.score import score_batch
from training.simulate import simulate_history
from training.train import RunResult, TrainConfig, closed_deal_count, train


@pytest.fixture(scope="module")
def history() -> DealHistory:
    return simulate_history(700, seed=11)


@pytest.fixture(scope="module")
def trained(history: DealHistory) -> RunResult:
    return train(history, TrainConfig(seed=1))


def test_run_reports_model_and_both_baselines_per_head(trained: RunResult) -> None:
    table = trained.metrics_table()
    for head in ("cold", "close"):
        models = set(table.loc[table["head"] == head, "model"])
        assert {"lightgbm", "stage_prior", "logistic"} <= models
    flat = trained.flat_metrics()
    assert "cold.lightgbm.roc_auc" in flat and "close.stage_prior.ece" in flat
    cold = trained.metrics["cold"]
    # Activity recency carries the cold signal; the stage alone cannot rank as well.
    assert cold["lightgbm"]["roc_auc"] > cold["stage_prior"]["roc_auc"]
    assert not trained.thin_data
    assert trained.served == {"cold": "lightgbm", "close": "lightgbm"}


def test_progress_callback_sees_the_stages(history: DealHistory) -> None:
    seen: list[tuple[str, float]] = []
    small = history.subset(history.deals["deal_id"].iloc[:200])
    train(small, TrainConfig(), progress=lambda stage, fraction: seen.append((stage, fraction)))
    fractions = [f for _, f in seen]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0


def test_thirty_closed_deals_still_train_and_say_so() -> None:
    thin = simulate_history(34, seed=5)
    assert closed_deal_count(thin) <= 40
    result = train(thin, TrainConfig())
    assert result.thin_data
    assert f"Only {result.n_closed_deals} closed deals" in result.data_note
    assert "rough" in result.data_note
    # Too little data for LightGBM: both heads serve the stage prior, so a deal's score is the
    # (shrunk) rate of its pipeline and stage, the same for every deal sitting there.
    assert result.served == {"cold": "stage_prior", "close": "stage_prior"}
    scores = score_batch(thin, result.bundle)
    assert len(scores) > 0
    for column, head in (("cold_risk", result.bundle.cold), ("close_probability", result.bundle.close)):
        assert head.kind == "stage_prior" and head.calibrator is None
        rates = head.prior.stage_rates_
        keys = zip(scores["pipeline"].astype(str), scores["stage"].astype(str), strict=True)
        expected = [rates.get(k, head.prior.pipeline_rates_[k[0]]) for k in keys]
        np.testing.assert_allclose(scores[column].to_numpy(), expected, rtol=1e-12)
        assert scores.groupby(["pipeline", "stage"], observed=True)[column].nunique().max() == 1


def test_scores_from_a_folder_cut_at_t_equal_the_full_folder_as_of_t(
    history: DealHistory, trained: RunResult, tmp_path: Path
) -> None:
    t = history.end_time - pd.Timedelta(days=100)
    full_dir = write_history(history, tmp_path / "full", fmt="csv")
    cut_dir = write_history(history.cut(t), tmp_path / "cut", fmt="csv")
    from_full = score_batch(read_history(full_dir), trained.bundle, as_of=t, model_version="x")
    from_cut = score_batch(read_history(cut_dir), trained.bundle, as_of=t, model_version="x")
    assert len(from_full) > 20
    pd.testing.assert_frame_equal(from_full, from_cut)


def test_score_batch_columns_and_points(history: DealHistory, trained: RunResult) -> None:
    t = history.end_time - pd.Timedelta(days=30)
    scores = score_batch(history, trained.bundle, as_of=t, model_version="7")
    assert list(scores.columns[:10]) == [
        "deal_id", "as_of", "cold_risk", "close_probability", "risk_band", "expected_value",
        "model_version", "reason_1", "reason_2", "reason_3",
    ]
    assert (scores["model_version"] == "7").all()
    assert set(scores["risk_band"]) <= {"high", "medium", "low"}
    assert (scores["reason_1"].str.len() > 0).all()
    np.testing.assert_allclose(scores["expected_value"], scores["amount"] * scores["close_probability"])
    points = scores[["deal_id", "as_of"]].iloc[::-1].reset_index(drop=True)
    again = score_batch(history, trained.bundle, points=points, model_version="7")
    assert list(again["deal_id"]) == list(points["deal_id"])
    np.testing.assert_allclose(again["cold_risk"].to_numpy(), scores["cold_risk"].to_numpy()[::-1])


def test_backtest_reports_every_fold_and_the_forecast_error(history: DealHistory) -> None:
    from training.backtest import backtest, make_folds

    folds = make_folds(history, n_folds=2, fold_days=45)
    assert folds[0].end == folds[1].start and folds[1].end == history.end_time
    result = backtest(history, TrainConfig(), n_folds=2, fold_days=45)
    assert set(result.metrics["fold"]) == {1, 2}
    for head in ("cold", "close"):
        models = set(result.metrics.loc[result.metrics["head"] == head, "model"])
        assert {"lightgbm", "stage_prior", "logistic"} <= models
    forecast = result.forecast.set_index("fold")
    assert list(forecast.index) == [1, 2]
    assert (forecast["predicted"] >= 0).all() and (forecast["actual"] >= 0).all()
    assert (forecast["n_deals"] > 0).all()
    # wins after the period still count eventually, never the other way round
    assert (forecast["actual_eventually"] >= forecast["actual"]).all()
    summary = result.summary()
    cold = dict(zip(summary.loc[summary["head"] == "cold", "model"],
                    summary.loc[summary["head"] == "cold", "roc_auc"], strict=True))
    assert cold["lightgbm"] > cold["stage_prior"]
