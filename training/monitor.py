"""Is the served model still right? Calibration on outcomes known since it was trained, and feature
drift of live deals against its training snapshots, with a state (ok / watch / retrain).

The scores judged are, when the service has stored them, the live scores themselves: the store's score
history (`serving.score_archive`: a deal's last score of each day by each model version), whose outcome
is now known. Otherwise (a history folder, or a model the service never served) they are recomputed as
of past weekly snapshots after the model's training data ended, with the model being checked; scores as
of a past time are point-in-time (features use only rows dated at or before it), so this is what the
model would have said then. Drift compares the features at the judged points with the training ones.
Outcomes are the training labels: won or lost for the close head (open deals are censored and left out),
cold within the horizon for the cold head (windows not yet over are left out).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from features.build import FeatureBuilder
from features.history import DealHistory, to_utc_timestamp
from features.labels import cold_label, won_label
from models.monitor import (
    PSI_RETRAIN,
    PSI_WATCH,
    calibration_by_band,
    calibration_by_week,
    calibration_state,
    feature_drift,
    overall_state,
)
from training.snapshots import make_snapshots

SCORE_COLUMNS = {"cold": "cold_risk", "close": "close_probability"}
METHOD = (
    "scores recomputed as of weekly snapshots after the model's training data ended (point-in-time), "
    "against outcomes known now"
)
STORED_METHOD = (
    "the live scores the service stored (score history: a deal's last score of each day) after the "
    "model's training data ended, against outcomes known now"
)
# One feature drifting is often a benign trend (tenure-like counts such as owner_closed_deals grow with
# time), so drift asks for a look ("watch") only when this many features shifted at once. Drift alone
# never asks for retraining: that takes evidence that the probabilities no longer hold.
DRIFTED_FEATURES_FOR_WATCH = 2
# Heads whose calibration decides the state. The close head's outcome (won or lost) is known only for
# deals that have closed since; those are the quick outcomes, a biased sample, so its calibration is
# reported but not judged until the data covers its deals' whole cycle.
JUDGED_HEADS = ("cold",)


@dataclass
class MonitorReport:
    """The monitor's answer: the state with its reasons, and the evidence behind it."""

    state: str
    reasons: list[str]
    model_version: str | None
    since: pd.Timestamp
    until: pd.Timestamp
    n_points: int
    calibration: dict[str, dict[str, Any]] = field(default_factory=dict)
    drift: pd.DataFrame = field(default_factory=pd.DataFrame)
    method: str = METHOD

    def to_dict(self) -> dict[str, Any]:
        return {
            "state": self.state,
            "reasons": self.reasons,
            "model_version": self.model_version,
            "since": self.since,
            "until": self.until,
            "n_points": self.n_points,
            "method": self.method,
            "calibration": {
                head: {k: (v.to_dict(orient="records") if isinstance(v, pd.DataFrame) else v)
                       for k, v in part.items()}
                for head, part in self.calibration.items()
            },
            "drift": self.drift.to_dict(orient="records"),
        }


def monitor(
    history: DealHistory,
    bundle: Any,
    model_version: str | None = None,
    since: pd.Timestamp | str | None = None,
    cadence_days: float = 7,
    builder: FeatureBuilder | None = None,
    stored_scores: pd.DataFrame | None = None,
    end: pd.Timestamp | str | None = None,
) -> MonitorReport:
    """Calibration per band and per week of both heads, PSI per feature, and the state.

    `since` defaults to the end of the model's training data (`data_end` in its metadata): only what
    the model could not have seen counts as live. `stored_scores` (deal_id, as_of, cold_risk,
    close_probability: the model's stored live scores) are judged as they are when any falls after
    `since`; otherwise scores are recomputed at weekly snapshots. `end` is when outcomes are read
    (default: the history's last event; for a live store, now).
    """
    until = history.end_time if end is None else max(history.end_time, to_utc_timestamp(end))
    start = to_utc_timestamp(since if since is not None else bundle.metadata.get("data_end", until))
    builder = builder or FeatureBuilder().fit(history)
    stored = _stored_after(stored_scores, start)
    method = METHOD if stored is None else STORED_METHOD
    if stored is None:
        points = make_snapshots(history, cadence_days=cadence_days, start=start)
        points = points[points["as_of"] > start].reset_index(drop=True)
        if points.empty:
            return MonitorReport("ok", [f"no open deals after {start.date()} to check the model on yet"],
                                 model_version, start, until, 0)
        features = builder.transform(history, points)
        scores = bundle.score(features, top_reasons=0)
    else:
        points = stored[["deal_id", "as_of"]]
        features = builder.transform(history, points)  # for drift only: the scores are the stored ones
        scores = stored
    horizon = float(bundle.metadata.get("horizon_days", 14))
    outcomes = {
        "cold": cold_label(history, points, horizon, end=until),
        "close": won_label(history, points, end=until),
    }

    checks: list[tuple[str, str]] = []
    calibration: dict[str, dict[str, Any]] = {}
    for head, column in SCORE_COLUMNS.items():
        y = outcomes[head].to_numpy(dtype=float)
        settled = np.isfinite(y)
        p = scores[column].to_numpy(dtype=float)[settled]
        y = y[settled]
        state, reason = calibration_state(p, y, head)
        if head in JUDGED_HEADS:
            checks.append((state, reason))
        else:
            state, reason = "reported", reason + (
                f"; {int(settled.sum())} of {len(settled)} scores settled (deals still open are censored, "
                "so the settled ones over-represent quick outcomes): reported, not judged"
            )
        calibration[head] = {
            "state": state,
            "reason": reason,
            "n_settled": int(settled.sum()),
            "predicted": float(p.mean()) if len(p) else None,
            "observed": float(y.mean()) if len(y) else None,
            "by_band": calibration_by_band(p, y, bundle.band_thresholds),
            "by_week": calibration_by_week(p, y, points["as_of"][settled]),
        }

    reference = bundle.metadata.get("feature_reference")
    drift = feature_drift(reference, features) if reference else pd.DataFrame(columns=["feature", "psi"])
    checks.append(_drift_check(drift, reference is not None))
    state, reasons = overall_state(checks)
    return MonitorReport(state, reasons, model_version, start, until, len(points), calibration, drift, method)


def _stored_after(stored: pd.DataFrame | None, start: pd.Timestamp) -> pd.DataFrame | None:
    """The stored scores with `as_of` after `start` (None when there are none)."""
    if stored is None or stored.empty:
        return None
    as_of = pd.to_datetime(stored["as_of"], utc=True)
    kept = stored.assign(as_of=as_of)[as_of > start].reset_index(drop=True)
    if kept.empty:
        return None
    kept["deal_id"] = kept["deal_id"].astype("string")
    return kept


def _drift_check(drift: pd.DataFrame, has_reference: bool) -> tuple[str, str]:
    if not has_reference:
        return "ok", "the model has no training feature reference (trained before drift checks)"
    shifted = drift[drift["psi"] >= PSI_RETRAIN]
    moved = drift[drift["psi"] >= PSI_WATCH]
    top = ", ".join(f"{r.feature} {r.psi:.2f}" for r in drift.head(3).itertuples(index=False))
    if len(shifted) >= DRIFTED_FEATURES_FOR_WATCH:
        return "watch", f"{len(shifted)} features shifted (PSI ≥ {PSI_RETRAIN}): {top}"
    if len(moved):
        return "ok", f"{len(moved)} feature(s) moved (PSI ≥ {PSI_WATCH}), fewer than "\
            f"{DRIFTED_FEATURES_FOR_WATCH} shifted: {top}"
    return "ok", f"no feature moved (largest PSI: {top})"
