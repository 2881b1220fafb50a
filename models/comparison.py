"""Paired evidence between two or more models scored on the same rows: metrics with bootstrap intervals
over deals, paired differences against a reference (the champion), and a plain verdict.

Pure functions on a predictions frame; where the predictions come from is the caller's business
(`training.compare` retrains configurations out of sample; the service pairs a shadow challenger's
stored live scores with the champion's).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

from models.calibration import expected_calibration_error

REPORTED_METRICS = ("roc_auc", "brier", "log_loss", "ece")
# The metrics a verdict rests on: ranking (ROC AUC) and probability accuracy (Brier). Log loss tells
# the same story as Brier with a heavier tail, and ECE alone is too noisy on a few hundred deals.
VERDICT_METRICS = ("roc_auc", "brier")
HIGHER_IS_BETTER = frozenset({"roc_auc"})
BETTER, WORSE, SAME = "better", "worse", "no detectable difference"


def weighted_metrics(y: np.ndarray, p: np.ndarray, w: np.ndarray) -> dict[str, float]:
    """ROC AUC (NaN with one class), Brier, log loss and ECE of `p` against `y` with row weights `w`."""
    total = w.sum()
    clipped = np.clip(p, 1e-6, 1 - 1e-6)
    two_classes = (w[y == 1].sum() > 0) and (w[y == 0].sum() > 0)
    return {
        "roc_auc": float(roc_auc_score(y, p, sample_weight=w)) if two_classes else float("nan"),
        "brier": float(np.sum(w * (p - y) ** 2) / total),
        "log_loss": float(-np.sum(w * (y * np.log(clipped) + (1 - y) * np.log(1 - clipped))) / total),
        "ece": expected_calibration_error(p, y, n_bins=10, weights=w),
    }


def bootstrap_comparison(
    predictions: pd.DataFrame,
    versions: list[str],
    champion: str | None,
    n_boot: int = 200,
    confidence: float = 0.95,
    seed: int = 0,
    draws_out: dict[tuple[str, str, str], np.ndarray] | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Point metrics and percentile intervals per version and head, and paired differences against the
    champion, from `n_boot` resamples of deals (every snapshot of a drawn deal comes along, as often as
    the deal was drawn; the same draw is used for every version, which is what makes them paired).

    `draws_out`, when given, receives each paired difference's draws, in draw order, under
    (head, version, metric): what an interval pooled over independent comparisons is built from."""
    rng = np.random.default_rng(seed)
    alpha = (1 - confidence) / 2
    metric_rows: list[dict[str, Any]] = []
    diff_rows: list[dict[str, Any]] = []
    for head, rows in predictions.groupby("head", sort=False):
        y = rows["y"].to_numpy(dtype=float)
        codes, deals = pd.factorize(rows["deal_id"])
        ones = np.ones(len(y))
        point = {v: weighted_metrics(y, rows[v].to_numpy(dtype=float), ones) for v in versions}
        draws: dict[str, dict[str, list[float]]] = {v: {m: [] for m in REPORTED_METRICS} for v in versions}
        for _ in range(n_boot):
            drawn = rng.integers(0, len(deals), len(deals))
            w = np.bincount(drawn, minlength=len(deals))[codes].astype(float)
            for v in versions:
                for m, value in weighted_metrics(y, rows[v].to_numpy(dtype=float), w).items():
                    draws[v][m].append(value)
        for v in versions:
            for m in REPORTED_METRICS:
                lo, hi = np.nanquantile(draws[v][m], [alpha, 1 - alpha])
                metric_rows.append(
                    {"version": v, "champion": v == champion, "head": head, "metric": m,
                     "value": point[v][m], "ci_low": float(lo), "ci_high": float(hi),
                     "n_rows": len(y), "n_deals": len(deals)}
                )
            if champion is None or v == champion:
                continue
            for m in REPORTED_METRICS:
                diff = np.asarray(draws[v][m]) - np.asarray(draws[champion][m])
                if draws_out is not None:
                    draws_out[(str(head), v, m)] = diff
                lo, hi = np.nanquantile(diff, [alpha, 1 - alpha])
                diff_rows.append(
                    {"version": v, "head": head, "metric": m,
                     "difference": point[v][m] - point[champion][m],
                     "ci_low": float(lo), "ci_high": float(hi),
                     "verdict": _metric_verdict(m, float(lo), float(hi))}
                )
    columns = ["version", "head", "metric", "difference", "ci_low", "ci_high", "verdict"]
    return pd.DataFrame(metric_rows), pd.DataFrame(diff_rows, columns=columns)


def _metric_verdict(metric: str, lo: float, hi: float) -> str:
    """Better/worse only when the interval of (candidate − champion) excludes zero."""
    if not (np.isfinite(lo) and np.isfinite(hi)) or lo <= 0 <= hi:
        return SAME
    up = lo > 0
    return BETTER if up == (metric in HIGHER_IS_BETTER) else WORSE


def overall_verdict(differences: pd.DataFrame, version: str) -> tuple[str, list[str]]:
    """A candidate is worse if either head is worse on a verdict metric, better if it is better on one
    and worse on none, else no detectable difference; with the differences that decided it."""
    rows = differences[(differences["version"] == version) & differences["metric"].isin(VERDICT_METRICS)]
    reasons = {BETTER: [], WORSE: []}  # type: dict[str, list[str]]
    for r in rows.itertuples(index=False):
        verdict = str(r.verdict)
        if verdict in reasons:
            reasons[verdict].append(
                f"{r.head} head {r.metric} {r.difference:+.4f} vs champion "
                f"(interval {r.ci_low:+.4f} to {r.ci_high:+.4f})"
            )
    if reasons[WORSE]:
        return WORSE, reasons[WORSE]
    if reasons[BETTER]:
        return BETTER, reasons[BETTER]
    return SAME, ["every interval of the difference with the champion includes zero"]
