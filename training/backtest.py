"""Rolling time-split backtest: per-fold metrics per head, and forecast error of past periods.

Fold k tests on the window (start_k, end_k] and trains (and calibrates) only on snapshots before
start_k, with their labels censored at their own window ends, exactly like `train`. Features are built
once for every snapshot (they are point-in-time, so one frame serves every fold); labels are redone per
fold because their censoring depends on the fold.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from features.build import FeatureBuilder
from features.history import DealHistory
from models.scoring import open_deal_points, score_points
from training.labels import won_label
from training.metrics import METRIC_NAMES, binary_metrics
from training.snapshots import TimeSplit, make_snapshots, time_split
from training.train import (
    HEADS,
    HeadFit,
    TrainConfig,
    TrainingData,
    build_bundle,
    closed_deal_count,
    data_note_for,
    fit_head,
)


@dataclass(frozen=True)
class Fold:
    """One test window (start, end]; everything before `start` is what the fold may learn from."""

    number: int
    start: pd.Timestamp
    end: pd.Timestamp

    def split(self, calibration_days: float) -> TimeSplit:
        return TimeSplit(
            train_end=self.start - pd.Timedelta(days=float(calibration_days)),
            calibration_end=self.start,
            end=self.end,
        )


@dataclass
class BacktestResult:
    """Per-fold metrics (`fold, head, model, <metric>…`) and forecast error per fold period."""

    folds: list[Fold]
    metrics: pd.DataFrame
    forecast: pd.DataFrame

    def summary(self) -> pd.DataFrame:
        """Mean of each metric over folds, per head and model."""
        cols = [c for c in METRIC_NAMES if c in self.metrics.columns]
        return self.metrics.groupby(["head", "model"], sort=False)[cols].mean().reset_index()

    def to_dict(self) -> dict[str, Any]:
        return {
            "folds": [{"fold": f.number, "start": f.start, "end": f.end} for f in self.folds],
            "metrics": self.metrics.to_dict(orient="records"),
            "summary": self.summary().to_dict(orient="records"),
            "forecast": self.forecast.to_dict(orient="records"),
        }


def make_folds(
    history: DealHistory, n_folds: int = 3, fold_days: float | None = None, min_train_fraction: float = 0.4
) -> list[Fold]:
    """`n_folds` consecutive windows ending at the end of the data, oldest first.

    Windows shrink when the history is short, so the first fold still has `min_train_fraction` of the
    span to learn from.
    """
    end = history.end_time
    start = history.deals["created_at"].min()
    span_days = (end - start) / pd.Timedelta(days=1)
    width = float(fold_days) if fold_days else 60.0
    width = min(width, span_days * (1 - min_train_fraction) / n_folds)
    step = pd.Timedelta(days=width)
    return [Fold(k + 1, end - (n_folds - k) * step, end - (n_folds - k - 1) * step) for k in range(n_folds)]


def _shared_features(history: DealHistory, config: TrainConfig) -> tuple[pd.DataFrame, list[str], list[str]]:
    points = make_snapshots(history, cadence_days=config.cadence_days, at_events=config.at_events)
    feats = FeatureBuilder().fit(history).transform(history, points)
    cols, cats = config.feature_columns()
    return feats, cols, cats


def fold_features(history: DealHistory, config: TrainConfig) -> tuple[pd.DataFrame, list[str], list[str]]:
    """Point-in-time features of every snapshot `config` makes, built once for all folds, with the
    feature and categorical columns its heads use."""
    return _shared_features(history, config)


def fit_fold(
    history: DealHistory, feats: pd.DataFrame, fold: Fold, config: TrainConfig, cols: list[str],
    cats: list[str], n_closed: int,
) -> tuple[TrainingData, dict[str, HeadFit], Any]:
    """Fit both heads on what was known before `fold` starts (calibrated on the window just before
    it) and assemble the bundle: what `train` would have served at the fold's start."""
    data = _fold_data(history, feats, fold.split(config.calibration_days), config, cols, cats)
    labelled = data.frame[data.frame["window"] != "test"]
    n_pos = {h: int(min((labelled[c] == 1).sum(), (labelled[c] == 0).sum())) for h, c in HEADS.items()}
    thin, note = data_note_for(n_closed, n_pos, config)
    heads = {h: fit_head(h, data, config, thin) for h in HEADS}
    return data, heads, build_bundle(heads, data, config, history, note, thin)


def _fold_data(
    history: DealHistory, feats: pd.DataFrame, split: TimeSplit, config: TrainConfig, cols: list[str],
    cats: list[str],
) -> TrainingData:
    inside = feats[feats["as_of"] <= split.end].reset_index(drop=True)
    labelled = time_split(history, inside[["deal_id", "as_of"]], split, config.horizon_days)
    frame = pd.concat([labelled[["window", "cold", "won"]], inside], axis=1)
    return TrainingData(frame[frame["window"].notna()].reset_index(drop=True), split, cols, cats)


def forecast_error(
    history: DealHistory, bundle: Any, fold: Fold, builder: FeatureBuilder | None = None
) -> dict[str, Any]:
    """Predicted won amount (Σ amount × close_probability over deals open at the fold start whose expected
    close date falls in the fold) against the amount of those deals actually won within the fold."""
    points = open_deal_points(history, fold.start)
    row: dict[str, Any] = {"fold": fold.number, "period_start": fold.start, "period_end": fold.end}
    if points.empty:
        return row | {"n_deals": 0, "predicted": 0.0, "actual": 0.0, "error": 0.0, "abs_pct_error": np.nan}
    if builder is None:
        builder = FeatureBuilder().fit(history)
    scores = score_points(bundle, history, points, builder, top_reasons=0)
    close = pd.to_datetime(scores["expected_close_date"], utc=True)
    due = ((close > fold.start) & (close <= fold.end)).to_numpy(dtype=bool)
    due_scores = scores[due]
    predicted = float((due_scores["amount"] * due_scores["close_probability"]).sum())
    amounts = due_scores["amount"].to_numpy()
    won = won_label(history, due_scores[["deal_id", "as_of"]], end=fold.end).to_numpy()
    actual = float(amounts[won == 1].sum())
    # close_probability means "eventually won", so deals that slip past the period and win later
    # make the in-period forecast run high; the eventual figure separates calibration from slippage.
    won_ever = won_label(history, due_scores[["deal_id", "as_of"]]).to_numpy()
    actual_eventually = float(amounts[won_ever == 1].sum())
    error = predicted - actual
    pct = abs(error) / actual if actual > 0 else np.nan
    return row | {"n_deals": int(due.sum()), "predicted": predicted, "actual": actual, "error": error,
                  "abs_pct_error": pct, "actual_eventually": actual_eventually}


def backtest(
    history: DealHistory,
    config: TrainConfig | None = None,
    n_folds: int = 3,
    fold_days: float | None = None,
    progress: Callable[[str, float], None] | None = None,
) -> BacktestResult:
    """Train on everything before each fold, test on the fold; metrics per head and forecast error."""
    config = config or TrainConfig()
    folds = make_folds(history, n_folds, fold_days)
    feats, cols, cats = _shared_features(history, config)
    n_closed = closed_deal_count(history)
    metric_rows: list[dict[str, Any]] = []
    forecast_rows: list[dict[str, Any]] = []
    for i, fold in enumerate(folds):
        if progress:
            progress(f"fold {fold.number}", i / len(folds))
        _, heads, bundle = fit_fold(history, feats, fold, config, cols, cats, n_closed)
        for head, fit in heads.items():
            for model, values in fit.metrics.items():
                metric_rows.append({"fold": fold.number, "head": head, "model": model, **values})
        forecast_rows.append(forecast_error(history, bundle, fold))
    if progress:
        progress("done", 1.0)
    return BacktestResult(folds, pd.DataFrame(metric_rows), pd.DataFrame(forecast_rows))


def evaluate_bundle(
    bundle: Any, history: DealHistory, folds: list[Fold], config: TrainConfig | None = None
) -> pd.DataFrame:
    """Metrics of an existing bundle on the folds' test windows (`fold, head, <metric>…`), plus an
    `all` row pooling the folds. A bundle trained on data overlapping those windows is scored
    in-sample here; comparing versions goes through `training.compare`, which retrains per fold."""
    config = config or TrainConfig(horizon_days=float(bundle.metadata.get("horizon_days", 14)))
    points = make_snapshots(history, cadence_days=config.cadence_days)
    builder = FeatureBuilder().fit(history)
    rows: list[dict[str, Any]] = []
    pooled: dict[str, list[np.ndarray]] = {"cold_y": [], "cold_p": [], "close_y": [], "close_p": []}
    for fold in folds:
        split = fold.split(config.calibration_days)
        labelled = time_split(history, points[points["as_of"] <= fold.end], split, config.horizon_days)
        test = labelled[labelled["window"] == "test"].reset_index(drop=True)
        if test.empty:
            continue
        scores = score_points(bundle, history, test[["deal_id", "as_of"]], builder, top_reasons=0)
        for head, label, col in (("cold", "cold", "cold_risk"), ("close", "won", "close_probability")):
            y = test[label].to_numpy(dtype=float)
            p = scores[col].to_numpy(dtype=float)
            pooled[f"{head}_y"].append(y)
            pooled[f"{head}_p"].append(p)
            rows.append({"fold": fold.number, "head": head, **binary_metrics(y, p)})
    for head in ("cold", "close"):
        if pooled[f"{head}_y"]:
            y_all = np.concatenate(pooled[f"{head}_y"])
            p_all = np.concatenate(pooled[f"{head}_p"])
            rows.append({"fold": "all", "head": head, **binary_metrics(y_all, p_all)})
    return pd.DataFrame(rows)
