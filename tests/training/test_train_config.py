"""A run's TrainConfig can be rebuilt from what MLflow keeps, so `compare` retrains the same recipe."""

from __future__ import annotations

import pytest

from training.registry import _config_from_params
from training.train import TrainConfig


def test_config_round_trips_through_its_json_tag() -> None:
    config = TrainConfig(horizon_days=21, cadence_days=3, at_events=True, seed=5,
                         lightgbm_params={"n_estimators": 40, "num_leaves": 7},
                         timing_params={"n_estimators": 30},
                         drop_features=("days_since_activity", "n_call_7d"))
    assert TrainConfig.from_json(config.to_json()) == config


def test_config_is_rebuilt_from_flat_parameters_of_older_runs() -> None:
    config = TrainConfig(horizon_days=21, at_events=True, seed=5, lightgbm_params={"n_estimators": 40,
                         "learning_rate": 0.1}, timing_params={"num_leaves": 7},
                         drop_features=("n_call_7d", "max_gap_days"))
    # MLflow keeps parameters as strings
    params = {k: str(v) for k, v in config.params().items()} | {"n_snapshots": "1234"}
    assert _config_from_params(params) == config


def test_unknown_feature_to_drop_is_refused_by_name() -> None:
    with pytest.raises(ValueError, match="days_since_lunch"):
        TrainConfig(drop_features=("days_since_lunch",))


def test_dropped_features_leave_the_columns_the_heads_see() -> None:
    columns, categorical = TrainConfig(drop_features=("stage_cat", "log_amount")).feature_columns()
    assert "stage_cat" not in columns and "log_amount" not in columns and categorical == ["pipeline_cat"]
    assert len(columns) == len(TrainConfig().feature_columns()[0]) - 2
