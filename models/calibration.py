"""Probability calibration fitted on the calibration window, stored as JSON (no pickle)."""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike, NDArray

Method = Literal["isotonic", "platt"]
_EPS = 1e-6


def _logit(p: NDArray[np.float64]) -> NDArray[np.float64]:
    q = np.clip(p, _EPS, 1.0 - _EPS)
    return np.asarray(np.log(q / (1.0 - q)), dtype=np.float64)


PROBABILITY_FLOOR = 1e-3


class Calibrator:
    """Maps a head's raw probability to a calibrated one.

    `isotonic`: a monotone step function, stored as breakpoints and applied with `np.interp` (linear
    between breakpoints, flat beyond them). `platt`: sigmoid(a * logit(p) + b), two floats.
    """

    def __init__(self, method: Method = "isotonic") -> None:
        self.method = method

    def fit(self, p: ArrayLike, y: ArrayLike) -> Calibrator:
        """Learn the mapping from raw probabilities `p` to outcomes `y` (0/1)."""
        p_arr = np.asarray(p, dtype=np.float64).ravel()
        y_arr = np.asarray(y, dtype=np.float64).ravel()
        if p_arr.shape != y_arr.shape or p_arr.size == 0:
            raise ValueError("p and y must be non-empty and the same length")
        if self.method == "isotonic":
            from sklearn.isotonic import IsotonicRegression

            iso = IsotonicRegression(y_min=0.0, y_max=1.0, increasing=True, out_of_bounds="clip")
            iso.fit(p_arr, y_arr)
            self.x_ = np.asarray(iso.X_thresholds_, dtype=np.float64)
            self.y_ = np.asarray(iso.y_thresholds_, dtype=np.float64)
        elif self.method == "platt":
            from sklearn.linear_model import LogisticRegression

            if np.unique(y_arr).size < 2:
                # one class only: the best constant is its rate
                self.a_, self.b_ = 0.0, float(_logit(np.array([y_arr.mean()]))[0])
            else:
                lr = LogisticRegression(C=1e6, max_iter=1000)
                lr.fit(_logit(p_arr).reshape(-1, 1), y_arr.astype(int))
                self.a_, self.b_ = float(lr.coef_[0, 0]), float(lr.intercept_[0])
        else:
            raise ValueError(f"unknown calibration method {self.method!r}; use 'isotonic' or 'platt'")
        return self

    def transform(self, p: ArrayLike) -> NDArray[np.float64]:
        """Calibrated probabilities in [0, 1], same shape as `p`."""
        p_arr = np.asarray(p, dtype=np.float64)
        if self.method == "isotonic":
            out = np.interp(p_arr, self.x_, self.y_)
        else:
            out = 1.0 / (1.0 + np.exp(-(self.a_ * _logit(p_arr) + self.b_)))
        # Isotonic steps fitted on a finite window can reach exactly 0 or 1 where a bin held no
        # positives (or no negatives); no deal is certain, and a "0%" shown to a manager or an infinite
        # log loss would claim it is, so the ends are kept just inside (0, 1).
        return np.clip(np.asarray(out, dtype=np.float64), PROBABILITY_FLOOR, 1.0 - PROBABILITY_FLOOR)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready state."""
        if self.method == "isotonic":
            return {"method": "isotonic", "x": self.x_.tolist(), "y": self.y_.tolist()}
        return {"method": "platt", "a": self.a_, "b": self.b_}

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Calibrator:
        """Rebuild from `to_dict()` output."""
        cal = cls(method=raw["method"])
        if cal.method == "isotonic":
            cal.x_ = np.asarray(raw["x"], dtype=np.float64)
            cal.y_ = np.asarray(raw["y"], dtype=np.float64)
            if cal.x_.shape != cal.y_.shape or cal.x_.size == 0:
                raise ValueError("isotonic calibrator needs equal-length, non-empty x and y")
        elif cal.method == "platt":
            cal.a_, cal.b_ = float(raw["a"]), float(raw["b"])
        else:
            raise ValueError(f"unknown calibration method {cal.method!r}")
        return cal


def _bin_sums(
    p: ArrayLike, y: ArrayLike, n_bins: int, weights: ArrayLike | None = None
) -> tuple[NDArray[np.float64], ...]:
    """Per equal-width bin of p: (weighted) count, sum of p, sum of y."""
    p_arr = np.asarray(p, dtype=np.float64).ravel()
    y_arr = np.asarray(y, dtype=np.float64).ravel()
    w = np.ones_like(p_arr) if weights is None else np.asarray(weights, dtype=np.float64).ravel()
    bins = np.minimum((p_arr * n_bins).astype(int), n_bins - 1)
    count = np.bincount(bins, weights=w, minlength=n_bins).astype(np.float64)
    sum_p = np.bincount(bins, weights=w * p_arr, minlength=n_bins).astype(np.float64)
    sum_y = np.bincount(bins, weights=w * y_arr, minlength=n_bins).astype(np.float64)
    return count, sum_p, sum_y


def expected_calibration_error(
    p: ArrayLike, y: ArrayLike, n_bins: int = 10, weights: ArrayLike | None = None
) -> float:
    """ECE with equal-width bins: the share-weighted mean |observed rate - mean predicted| per bin.

    `weights` count each row that many times (a bootstrap resample without copying rows)."""
    if np.asarray(p).size == 0:
        return float("nan")
    count, sum_p, sum_y = _bin_sums(p, y, n_bins, weights)
    used = count > 0
    gap = np.abs(sum_y[used] - sum_p[used]) / count[used]
    return float(np.sum(gap * count[used]) / count.sum())


def ece_noise_floor(
    p: ArrayLike, n_bins: int = 10, n_draws: int = 200, seed: int = 0, groups: ArrayLike | None = None
) -> float:
    """The ECE a perfectly calibrated model would show on these scores: the mean ECE of outcomes drawn
    as Bernoulli(p) (`n_draws` times). Binning noise alone gives this much, so an ECE near it cannot be
    improved on this sample (about 0.016 for 3,000 independent points in 10 equal-width bins).

    `groups` (one label per score, e.g. the deal of each snapshot) makes the scores of one group share a
    single outcome draw, as the weekly snapshots of one deal share its one eventual outcome: each group
    draws one uniform u and each of its scores p gives the outcome u < p (every score is still exactly
    calibrated on its own). Outcomes shared within deals are far noisier than independent ones, so this
    floor is higher; it is the one to judge snapshot-level ECE against."""
    p_arr = np.clip(np.asarray(p, dtype=np.float64).ravel(), 0.0, 1.0)
    if p_arr.size == 0:
        return float("nan")
    rng = np.random.default_rng(seed)
    if groups is None:
        codes = np.arange(p_arr.size)
    else:
        codes = pd.factorize(pd.Series(np.asarray(groups, dtype=object).ravel()))[0]
        if codes.size != p_arr.size:
            raise ValueError("groups must have one label per score")
    n_groups = int(codes.max()) + 1
    draws = [expected_calibration_error(p_arr, rng.uniform(size=n_groups)[codes] < p_arr, n_bins)
             for _ in range(n_draws)]
    return float(np.mean(draws))


def reliability_bins(p: ArrayLike, y: ArrayLike, n_bins: int = 10) -> list[dict[str, float]]:
    """The calibration curve's points, in the same equal-width bins as the ECE: for every non-empty bin
    `{"predicted": mean p, "observed": rate of y = 1, "count": rows}`, lowest bin first. Rows with a
    missing label or score are left out (as the metrics do)."""
    p_arr = np.asarray(p, dtype=np.float64).ravel()
    y_arr = np.asarray(y, dtype=np.float64).ravel()
    keep = np.isfinite(p_arr) & np.isfinite(y_arr)
    if not keep.any():
        return []
    count, sum_p, sum_y = _bin_sums(np.clip(p_arr[keep], 0.0, 1.0), y_arr[keep], n_bins)
    return [
        {"predicted": float(sum_p[i] / count[i]), "observed": float(sum_y[i] / count[i]),
         "count": float(count[i])}
        for i in range(n_bins)
        if count[i] > 0
    ]
