"""The two recipes of known relative quality the comparison tests share (`test_compare`,
`test_compare_runs`): the full configuration and the activity-blind one, with few trees."""

from __future__ import annotations

from features.build import ACTIVITY_COUNT_COLUMNS
from training.train import TrainConfig

# Everything the model knows about the buyer's activity; the simulated cold label is driven by it.
ACTIVITY_FEATURES = (
    *ACTIVITY_COUNT_COLUMNS, "days_since_activity", "days_since_inbound", "inbound_30d", "max_gap_days",
    "activity_trend", "activity_trend_ratio",
)
FEW_TREES = {"n_estimators": 60}
FULL = TrainConfig(lightgbm_params=FEW_TREES)
BLIND = TrainConfig(lightgbm_params=FEW_TREES, drop_features=ACTIVITY_FEATURES)
HISTORY_DEALS, HISTORY_SEED = 800, 4  # the simulated history they are compared on
