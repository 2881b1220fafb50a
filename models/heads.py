"""Estimator factories for the two heads (cold risk, close probability) and the logistic baseline.

A head is fit on a feature frame (categoricals as pandas `category` dtype) and returns P(positive).
"""

from __future__ import annotations

from typing import Any

import lightgbm as lgb
import numpy as np
from sklearn.compose import ColumnTransformer, make_column_selector
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

SEED = 20240601

# Defaults sized for ~300k snapshot rows on 2 cores: a few hundred shallow-ish trees at lr 0.05 train in
# well under a minute per head and calibrate well after isotonic.
DEFAULT_LIGHTGBM_PARAMS: dict[str, Any] = {
    "objective": "binary",
    "n_estimators": 300,
    "learning_rate": 0.05,
    "num_leaves": 31,
    "max_depth": -1,
    "min_child_samples": 50,
    "subsample": 0.8,
    "subsample_freq": 1,
    "colsample_bytree": 0.8,
    "reg_lambda": 1.0,
    "reg_alpha": 0.0,
    "max_cat_to_onehot": 8,
    "cat_smooth": 10.0,
    "n_jobs": 2,
    "verbose": -1,
    "random_state": SEED,
    "deterministic": True,
    "force_row_wise": True,
}

# Below these sizes the data is "thin": trees must be few, shallow and strongly regularised, so the model
# leans on the stage/pipeline structure instead of memorising a handful of deals.
FULL_DATA_ROWS = 50_000
FULL_DATA_POSITIVES = 2_000


def data_scale(n_rows: int, n_positive: int) -> float:
    """How much data there is on a 0..1 scale (1 = enough for the default model), from rows and positives.

    Uses the scarcer of the two: 100k rows with 30 positives is as thin as 30 positives.
    """
    n_minority = max(0, min(n_positive, n_rows - n_positive))
    by_rows = np.log1p(max(n_rows, 0)) / np.log1p(FULL_DATA_ROWS)
    by_pos = np.log1p(n_minority) / np.log1p(FULL_DATA_POSITIVES)
    return float(np.clip(min(by_rows, by_pos), 0.0, 1.0))


def lightgbm_params(n_rows: int, n_positive: int, params: dict[str, Any] | None = None) -> dict[str, Any]:
    """LightGBM parameters scaled to the data size; explicit `params` win over the scaled defaults."""
    scale = data_scale(n_rows, n_positive)
    out = dict(DEFAULT_LIGHTGBM_PARAMS)
    if scale < 1.0:
        n_minority = max(1, min(n_positive, n_rows - n_positive))
        out.update(
            n_estimators=int(round(40 + 260 * scale**2)),
            num_leaves=int(max(4, round(31 * scale**2))),
            max_depth=int(max(2, round(2 + 4 * scale))) if scale < 0.9 else -1,
            # a leaf must hold a meaningful share of the minority class
            min_child_samples=int(max(20, min(200, n_rows // 50 + 5, 10 * np.sqrt(n_minority)))),
            reg_lambda=float(1.0 + 20.0 * (1.0 - scale)),
            learning_rate=0.05,
            min_data_per_group=int(max(10, min(100, n_rows // 20))),
            cat_smooth=float(10.0 + 40.0 * (1.0 - scale)),
        )
    if params:
        out.update(params)
    return out


def make_lightgbm(n_rows: int, n_positive: int, params: dict[str, Any] | None = None) -> lgb.LGBMClassifier:
    """A LightGBM binary classifier whose complexity shrinks on little data.

    Fit it on a frame whose categorical features have pandas `category` dtype (LightGBM picks them up
    automatically); `model.booster_` is what goes into the `ScoringBundle`.
    """
    return lgb.LGBMClassifier(**lightgbm_params(n_rows, n_positive, params))


def make_logistic(max_iter: int = 500, c: float = 1.0) -> Pipeline:
    """The logistic-regression baseline: one-hot categoricals, impute + scale numerics.

    For the baseline report only; never served.
    """
    categorical = make_column_selector(dtype_include=["category", "object", "string"])
    numeric = make_column_selector(dtype_include="number")
    encode = ColumnTransformer(
        [
            (
                "categorical",
                make_pipeline(
                    SimpleImputer(strategy="constant", fill_value="(missing)"),
                    OneHotEncoder(handle_unknown="ignore", min_frequency=5),
                ),
                categorical,
            ),
            (
                "numeric",
                make_pipeline(SimpleImputer(strategy="median", add_indicator=True), StandardScaler()),
                numeric,
            ),
        ],
        remainder="drop",
    )
    return Pipeline(
        [("encode", encode), ("model", LogisticRegression(C=c, max_iter=max_iter, random_state=SEED))]
    )
