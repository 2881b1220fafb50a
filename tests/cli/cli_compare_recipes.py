"""The recipes, evidence settings and data the CLI comparison tests share (`test_compare_cli`,
`test_retrain_cli`): the activity-blind configuration and the full one, few trees, two folds."""

from __future__ import annotations

from pathlib import Path

from features.build import ACTIVITY_COUNT_COLUMNS
from training.data import write_history
from training.simulate import simulate_history

ACTIVITY_FEATURES = (
    *ACTIVITY_COUNT_COLUMNS, "days_since_activity", "days_since_inbound", "inbound_30d", "max_gap_days",
    "activity_trend", "activity_trend_ratio",
)
BLIND = [arg for column in ACTIVITY_FEATURES for arg in ("--drop-feature", column)]
QUICK = ["--trees", "60"]
EVIDENCE = ["--folds", "2", "--boot", "60"]


def write_data(folder: Path) -> Path:
    """The simulated history both files compare on, written as files under `folder`."""
    return Path(write_history(simulate_history(800, seed=4), folder / "data"))


def registry_tags(env: dict[str, str], version: str) -> dict[str, str]:
    """The registry tags of one version of the model."""
    from mlflow import MlflowClient

    uri = env["MLFLOW_TRACKING_URI"]
    return dict(MlflowClient(tracking_uri=uri, registry_uri=uri).get_model_version("deal-risk", version).tags)
