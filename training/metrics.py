"""Evaluation metrics for one head: discrimination, calibration and observed rate per score band."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike
from sklearn.metrics import average_precision_score, brier_score_loss, log_loss, roc_auc_score

from models.bands import BANDS, assign_bands
from models.calibration import expected_calibration_error

METRIC_NAMES = ("roc_auc", "pr_auc", "brier", "log_loss", "ece", "n", "positive_rate")
# Lower is better for these; used when deciding which model wins.
LOWER_IS_BETTER = frozenset({"brier", "log_loss", "ece"})


def binary_metrics(
    y: ArrayLike, p: ArrayLike, band_thresholds: Mapping[str, float] | None = None
) -> dict[str, float]:
    """ROC AUC, PR AUC, Brier, log loss, ECE (10 equal-width bins), and observed rate per band.

    Rows with a missing label are dropped first. AUCs are NaN when only one class is present.
    """
    y_arr = np.asarray(y, dtype=np.float64).ravel()
    p_arr = np.clip(np.asarray(p, dtype=np.float64).ravel(), 0.0, 1.0)
    keep = np.isfinite(y_arr) & np.isfinite(p_arr)
    y_arr, p_arr = y_arr[keep], p_arr[keep]
    out: dict[str, float] = {"n": float(y_arr.size)}
    if y_arr.size == 0:
        return out | {k: float("nan") for k in METRIC_NAMES if k != "n"}
    out["positive_rate"] = float(y_arr.mean())
    two_classes = np.unique(y_arr).size == 2
    out["roc_auc"] = float(roc_auc_score(y_arr, p_arr)) if two_classes else float("nan")
    out["pr_auc"] = float(average_precision_score(y_arr, p_arr)) if two_classes else float("nan")
    out["brier"] = float(brier_score_loss(y_arr, p_arr))
    out["log_loss"] = float(log_loss(y_arr, np.clip(p_arr, 1e-6, 1 - 1e-6), labels=[0, 1]))
    out["ece"] = expected_calibration_error(p_arr, y_arr, n_bins=10)
    if band_thresholds is not None:
        bands = assign_bands(p_arr, dict(band_thresholds))
        for band in BANDS:
            in_band = bands == band
            out[f"band_{band}.share"] = float(in_band.mean())
            rate = float(y_arr[in_band].mean()) if in_band.any() else float("nan")
            out[f"band_{band}.observed_rate"] = rate
    return out


def flatten(prefix: str, metrics: Mapping[str, float]) -> dict[str, float]:
    """`{'roc_auc': 0.8}` with prefix `cold.lightgbm` -> `{'cold.lightgbm.roc_auc': 0.8}`."""
    return {f"{prefix}.{k}": float(v) for k, v in metrics.items()}


def side_by_side(metrics: Mapping[str, Mapping[str, Mapping[str, float]]]) -> pd.DataFrame:
    """Table of head x model rows and metric columns from `{head: {model: {metric: value}}}`."""
    rows = [
        {"head": head, "model": model, **{k: v for k, v in values.items() if k in METRIC_NAMES}}
        for head, models in metrics.items()
        for model, values in models.items()
    ]
    return pd.DataFrame(rows)
