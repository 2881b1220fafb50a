"""Out-of-sample comparisons that each run their own configurations (the ones sharing the blind-versus-
full comparison are in test_compare): a reseeded recipe is no detectable difference, retrain without a
champion promotes, and the forecast coverage per version is the backtest's figure."""

from __future__ import annotations

from pathlib import Path

import pytest
from compare_recipes import BLIND, FEW_TREES, FULL, HISTORY_DEALS, HISTORY_SEED

from features.history import DealHistory
from models.comparison import SAME
from training.compare import compare_configs
from training.simulate import simulate_history
from training.train import TrainConfig

pytestmark = pytest.mark.quality  # model comparisons on a simulated history: tens of seconds


@pytest.fixture(scope="module")
def history() -> DealHistory:
    return simulate_history(HISTORY_DEALS, seed=HISTORY_SEED)


def test_same_configuration_with_another_seed_is_no_detectable_difference(history: DealHistory) -> None:
    reseeded = TrainConfig(lightgbm_params=FEW_TREES, seed=7)
    result = compare_configs(history, {"1": FULL, "2": reseeded}, champion="1", n_folds=2, n_boot=100)
    assert result.verdicts == {"2": SAME}


def test_retrain_without_a_champion_promotes_and_says_why(history: DealHistory, tmp_path: Path) -> None:
    from mlflow import MlflowClient

    from training.registry import champion_version, retrain

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    result = retrain(history, BLIND, uri, n_folds=2, n_boot=50)
    assert (result.version, result.verdict, result.promoted) == ("1", "no champion", True)
    assert result.comparison is None
    assert champion_version(uri) == "1"
    tags = MlflowClient(tracking_uri=uri, registry_uri=uri).get_model_version("deal-risk", "1").tags
    assert tags["retrain_decision"] == "promoted version 1: there was no champion"


def test_forecast_coverage_per_version_is_the_backtests_figure(history: DealHistory) -> None:
    from training.backtest import backtest, forecast_summary

    result = compare_configs(history, {"1": FULL, "2": BLIND}, champion="1", n_folds=1, n_boot=20,
                             forecast_months=2)
    assert set(result.forecast) == {"1", "2"}
    summary = result.forecast["1"]
    assert summary["forecast_months"] >= 3 and 0.0 <= summary["forecast_coverage_p10_p90"] <= 1.0
    # the champion's fold model is the backtest's fold model, so its forecast is the backtest's
    expected = forecast_summary(backtest(history, FULL, n_folds=1, forecast_months=2).forecast)
    assert summary == pytest.approx(expected, nan_ok=True)
