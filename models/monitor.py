"""What a served model is checked against once it is live: feature drift (population stability index
against the training snapshots) and calibration of its scores on outcomes known since, with a state.

Pure functions on frames and arrays; where the predictions and outcomes come from is the caller's
business (`training.monitor` scores past as-of times with the champion and labels them).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from models.bands import BANDS, assign_bands

# Deciles of the training snapshots: enough bins to see a shape change, few enough to fill each bin.
REFERENCE_QUANTILES = tuple(np.round(np.arange(0.1, 1.0, 0.1), 2))
# The usual reading of the population stability index: < 0.1 stable, 0.1-0.25 moved, > 0.25 shifted.
PSI_WATCH = 0.1
PSI_RETRAIN = 0.25
# Empty bins would make the index infinite; a share this small stands in for them.
_PSI_FLOOR = 1e-4
# Calibration gap (|observed rate - mean predicted|) of a head over all settled live scores.
CALIBRATION_WATCH = 0.05
CALIBRATION_RETRAIN = 0.10
# Fewer settled scores than this say nothing about calibration either way.
MIN_SETTLED = 200
STATES = ("ok", "watch", "retrain")


def feature_reference(
    frame: pd.DataFrame, columns: Sequence[str], categorical: Sequence[str]
) -> dict[str, Any]:
    """Bins and shares of each feature on the training snapshots (JSON-ready, kept in the bundle).

    Numeric columns: decile edges (deduplicated, so a count that is mostly 0 gets fewer bins) and the
    share of rows per bin, with the missing share last. Categorical columns: share per level.
    """
    numeric: dict[str, Any] = {}
    levels: dict[str, Any] = {}
    for column in columns:
        values = frame[column]
        if column in categorical:
            shares = values.astype("string").fillna("<missing>").value_counts(normalize=True)
            levels[column] = {str(k): float(v) for k, v in shares.items()}
            continue
        x = pd.to_numeric(values, errors="coerce").to_numpy(dtype=np.float64)
        finite = x[np.isfinite(x)]
        edges = np.unique(np.quantile(finite, REFERENCE_QUANTILES)) if finite.size else np.array([])
        numeric[column] = {"edges": [float(e) for e in edges], "shares": _bin_shares(x, edges).tolist()}
    return {"numeric": numeric, "categorical": levels, "n": int(len(frame))}


def _bin_shares(x: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Share of values per bin (-inf, e1], (e1, e2], …, (ek, inf), then missing."""
    finite = np.isfinite(x)
    bins = np.where(finite, np.searchsorted(edges, np.where(finite, x, 0.0), side="left"), len(edges) + 1)
    counts = np.bincount(bins, minlength=len(edges) + 2).astype(np.float64)
    return counts / max(len(x), 1)


def psi(expected: np.ndarray, actual: np.ndarray) -> float:
    """Population stability index Σ (actual − expected) · ln(actual / expected) over bins."""
    e = np.maximum(np.asarray(expected, dtype=np.float64), _PSI_FLOOR)
    a = np.maximum(np.asarray(actual, dtype=np.float64), _PSI_FLOOR)
    return float(np.sum((a - e) * np.log(a / e)))


def feature_drift(reference: Mapping[str, Any], live: pd.DataFrame) -> pd.DataFrame:
    """PSI of each referenced feature, live rows against the training snapshots, largest first.

    Columns: feature, psi, drift (stable < 0.1 ≤ moved < 0.25 ≤ shifted)."""
    rows: list[dict[str, Any]] = []
    for column, ref in reference.get("numeric", {}).items():
        if column not in live.columns:
            continue
        x = pd.to_numeric(live[column], errors="coerce").to_numpy(dtype=np.float64)
        shares = _bin_shares(x, np.asarray(ref["edges"], dtype=np.float64))
        rows.append({"feature": column, "psi": psi(np.asarray(ref["shares"]), shares)})
    for column, ref in reference.get("categorical", {}).items():
        if column not in live.columns:
            continue
        observed = live[column].astype("string").fillna("<missing>").value_counts(normalize=True)
        levels = sorted(set(ref) | {str(k) for k in observed.index})
        expected = np.array([ref.get(level, 0.0) for level in levels])
        actual = np.array([float(observed.get(level, 0.0)) for level in levels])
        rows.append({"feature": column, "psi": psi(expected, actual)})
    table = pd.DataFrame(rows, columns=["feature", "psi"])
    table["drift"] = np.where(
        table["psi"] >= PSI_RETRAIN, "shifted", np.where(table["psi"] >= PSI_WATCH, "moved", "stable")
    )
    return table.sort_values("psi", ascending=False, ignore_index=True)


def calibration_by_band(
    p: np.ndarray, y: np.ndarray, thresholds: Mapping[str, float]
) -> pd.DataFrame:
    """Per risk band: n, mean predicted probability, observed rate and their gap."""
    bands = assign_bands(p, dict(thresholds))
    rows = []
    for band in BANDS:
        mask = bands == band
        rows.append(_cell({"band": band}, p[mask], y[mask]))
    return pd.DataFrame(rows)


def calibration_by_week(p: np.ndarray, y: np.ndarray, as_of: pd.Series) -> pd.DataFrame:
    """Per calendar week (Monday, UTC) of the scores: n, mean predicted, observed rate, gap."""
    weeks = pd.DatetimeIndex(as_of).tz_convert("UTC").tz_localize(None).to_period("W-SUN").start_time
    rows = []
    for week in sorted(pd.unique(weeks)):
        mask = np.asarray(weeks == week)
        rows.append(_cell({"week": pd.Timestamp(week).date().isoformat()}, p[mask], y[mask]))
    return pd.DataFrame(rows)


def _cell(key: dict[str, Any], p: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    n = int(len(p))
    mean_p = float(p.mean()) if n else float("nan")
    rate = float(y.mean()) if n else float("nan")
    return key | {"n": n, "predicted": mean_p, "observed": rate, "gap": rate - mean_p}


def calibration_state(p: np.ndarray, y: np.ndarray, head: str) -> tuple[str, str]:
    """State of one head from its settled live scores, with the reason in words."""
    n = len(p)
    if n < MIN_SETTLED:
        return "ok", f"{head}: only {n} settled scores, too few to judge calibration"
    gap = float(y.mean() - p.mean())
    size = abs(gap)
    words = f"{head}: observed rate {y.mean():.3f} vs predicted {p.mean():.3f} on {n} settled scores"
    if size >= CALIBRATION_RETRAIN:
        return "retrain", words + f" (gap {gap:+.3f} ≥ {CALIBRATION_RETRAIN})"
    if size >= CALIBRATION_WATCH:
        return "watch", words + f" (gap {gap:+.3f} ≥ {CALIBRATION_WATCH})"
    return "ok", words


def overall_state(states: Sequence[tuple[str, str]]) -> tuple[str, list[str]]:
    """The worst state, with the reasons of every check that reached it (all reasons when ok)."""
    worst = max((s for s, _ in states), key=STATES.index, default="ok")
    reasons = [r for s, r in states if s == worst]
    return worst, reasons
