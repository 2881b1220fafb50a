"""Risk bands (high / medium / low) from cold risk, with thresholds chosen at training time."""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike, NDArray

BANDS = ("high", "medium", "low")


def choose_thresholds(
    cold_risk: ArrayLike, high_share: float = 0.2, medium_share: float = 0.3
) -> dict[str, float]:
    """Thresholds from calibration-window scores: the top `high_share` of deals are high, the next
    `medium_share` medium. Returns {"high": x, "medium": y} with x >= y."""
    scores = np.asarray(cold_risk, dtype=np.float64).ravel()
    scores = scores[np.isfinite(scores)]
    if scores.size == 0:
        return {"high": 0.5, "medium": 0.25}
    high = float(np.quantile(scores, 1.0 - high_share))
    medium = float(np.quantile(scores, max(0.0, 1.0 - high_share - medium_share)))
    return {"high": high, "medium": min(medium, high)}


def assign_bands(cold_risk: ArrayLike, thresholds: dict[str, float]) -> NDArray[np.str_]:
    """'high' when cold_risk >= thresholds['high'], 'medium' when >= thresholds['medium'], else 'low'."""
    scores = np.asarray(cold_risk, dtype=np.float64)
    return np.where(
        scores >= thresholds["high"], "high", np.where(scores >= thresholds["medium"], "medium", "low")
    )
