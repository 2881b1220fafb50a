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
from features.health import deal_states
from features.history import DealHistory
from models.scoring import score_points
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

    def forecast_figures(self) -> dict[str, float]:
        """P10-P90 coverage and WAPE per month ahead over every fold and pipeline."""
        return forecast_summary(self.forecast)

    def to_dict(self) -> dict[str, Any]:
        return {
            "folds": [{"fold": f.number, "start": f.start, "end": f.end} for f in self.folds],
            "metrics": self.metrics.to_dict(orient="records"),
            "summary": self.summary().to_dict(orient="records"),
            "forecast": self.forecast.to_dict(orient="records"),
            "forecast_summary": self.forecast_figures(),
        }


def log_backtest(result: BacktestResult, config: TrainConfig, tracking_uri: str) -> str:
    """One MLflow run (tag `kind=backtest`) in experiment `deal-risk`: the folds as parameters, the mean
    metrics per head and model, the forecast's coverage and WAPE, and the per-month rows as a CSV."""
    import tempfile
    from pathlib import Path

    import mlflow

    from training.metrics import flatten
    from training.train import ensure_experiment

    mlflow.set_tracking_uri(tracking_uri)
    with mlflow.start_run(experiment_id=ensure_experiment(tracking_uri)) as run:
        mlflow.set_tags({"kind": "backtest"})
        params = config.params() | {"n_folds": len(result.folds)}
        params |= {f"fold_{f.number}": f"{f.start.isoformat()} .. {f.end.isoformat()}" for f in result.folds}
        mlflow.log_params({k: str(v)[:500] for k, v in params.items()})
        metrics: dict[str, float] = {}
        for row in result.summary().to_dict(orient="records"):
            values = {k: float(v) for k, v in row.items() if k not in ("head", "model")}
            metrics.update(flatten(f"backtest.{row['head']}.{row['model']}", values))
        metrics.update({f"backtest.{k}": v for k, v in result.forecast_figures().items()})
        mlflow.log_metrics({k: v for k, v in metrics.items() if np.isfinite(v)})
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "forecast_backtest.csv"
            result.forecast.to_csv(path, index=False)
            mlflow.log_artifact(str(path))
        return str(run.info.run_id)


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


def _shared_features(
    history: DealHistory, config: TrainConfig, builder: FeatureBuilder
) -> tuple[pd.DataFrame, list[str], list[str]]:
    points = make_snapshots(history, cadence_days=config.cadence_days, at_events=config.at_events)
    feats = builder.transform(history, points)
    cols, cats = config.feature_columns()
    return feats, cols, cats


def fold_features(
    history: DealHistory, config: TrainConfig, builder: FeatureBuilder
) -> tuple[pd.DataFrame, list[str], list[str]]:
    """Point-in-time features of every snapshot `config` makes, built once for all folds, with the
    feature and categorical columns its heads use."""
    return _shared_features(history, config, builder)


def fit_fold(
    history: DealHistory, feats: pd.DataFrame, fold: Fold, config: TrainConfig, cols: list[str],
    cats: list[str], n_closed: int,
) -> tuple[TrainingData, dict[str, HeadFit], Any]:
    """Fit both heads on what was known before `fold` starts (calibrated on the window just before
    it) and assemble the bundle: what `train` would have served at the fold's start, without the close
    head's slip booster. Fold models are judged on cold risk, close probability and the forecast (the
    30-day curves) only; the slip booster, fitted on ~2.5x the rows, was a third of a comparison's time
    and its slip risk was never read."""
    data = _fold_data(history, feats, fold.split(config.calibration_days), config, cols, cats)
    labelled = data.frame[data.frame["window"] != "test"]
    n_pos = {h: int(min((labelled[c] == 1).sum(), (labelled[c] == 0).sum())) for h, c in HEADS.items()}
    thin, note = data_note_for(n_closed, n_pos, config)
    heads = {h: fit_head(h, data, config, thin, slip=False) for h in HEADS}
    return data, heads, build_bundle(heads, data, config, history, note, thin)


def _fold_data(
    history: DealHistory, feats: pd.DataFrame, split: TimeSplit, config: TrainConfig, cols: list[str],
    cats: list[str],
) -> TrainingData:
    inside = feats[feats["as_of"] <= split.end].reset_index(drop=True)
    labelled = time_split(history, inside[["deal_id", "as_of"]], split, config.horizon_days)
    labels = ["window", "cold", "won", "event", "event_days", "observed_days"]
    frame = pd.concat([labelled[labels], inside], axis=1)
    return TrainingData(frame[frame["window"].notna()].reset_index(drop=True), split, cols, cats)


def forecast_error(
    history: DealHistory, bundle: Any, fold: Fold, builder: FeatureBuilder | None = None, months: int = 3
) -> list[dict[str, Any]]:
    """The forecast made at the fold's start (`models.forecast.forecast_pipeline`, per pipeline, with
    the fold's bundle and only the history known then) against the amount actually won in each month.

    One row per pipeline and month that ended inside the data: `fold, pipeline, month_ahead, period,
    expected (= expected_open + expected_new), p10, p50, p90, actual, covered` (the total line: open
    deals and deals not created yet; `actual` counts every deal of the pipeline won in the month, at its
    amount when it was won).
    """
    from models.forecast import forecast_pipeline

    if builder is None:
        builder = FeatureBuilder().fit(history)  # time-indexed statistics: as of t it reads only <= t
    known = history.cut(fold.start)
    end_of_data = history.end_time
    rows: list[dict[str, Any]] = []
    for pipeline in sorted(known.deals["pipeline"].astype(str).unique()):
        ids = known.deals.loc[known.deals["pipeline"] == pipeline, "deal_id"]
        result = forecast_pipeline(bundle, known.subset(ids), fold.start, builder, months)
        all_ids = history.deals.loc[history.deals["pipeline"] == pipeline, "deal_id"]
        for k, period in enumerate(result["periods"], start=1):
            start, end = pd.Timestamp(period["start"]), pd.Timestamp(period["end"])
            if end > end_of_data:
                break
            states = deal_states(history.subset(all_ids), end)
            won = (states["status"] == "won") & (states["closed_at"] > start) & (states["closed_at"] <= end)
            actual = float(states.loc[won, "amount"].sum())
            total = period.get("total", period)
            new = period.get("new_deals", {}).get("expected_won_amount", 0.0)
            rows.append({
                "fold": fold.number, "pipeline": pipeline, "month_ahead": k, "period": period["period"],
                "expected": float(total["expected_won_amount"]),
                "expected_open": float(period["expected_won_amount"]), "expected_new": float(new),
                "p10": float(total["p10"]),
                "p50": float(total["p50"]), "p90": float(total["p90"]), "actual": actual,
                "covered": bool(total["p10"] <= actual <= total["p90"]),
            })
    return rows


def forecast_summary(rows: pd.DataFrame) -> dict[str, float]:
    """P10-P90 coverage over every forecast month, and the weighted absolute percentage error
    (Σ|expected - actual| / Σ actual) per month ahead."""
    if rows.empty:
        return {"forecast_months": 0.0}
    out = {"forecast_months": float(len(rows)), "forecast_coverage_p10_p90": float(rows["covered"].mean())}
    for k, part in rows.groupby("month_ahead"):
        actual = float(part["actual"].sum())
        error = float((part["expected"] - part["actual"]).abs().sum())
        out[f"forecast_wape_month_{k}"] = error / actual if actual > 0 else float("nan")
        out[f"forecast_coverage_month_{k}"] = float(part["covered"].mean())
    return out


def backtest(
    history: DealHistory,
    config: TrainConfig | None = None,
    n_folds: int = 3,
    fold_days: float | None = None,
    progress: Callable[[str, float], None] | None = None,
    forecast_months: int = 3,
) -> BacktestResult:
    """Train on everything before each fold, test on the fold; metrics per head, and the forecast made
    at each fold's start against what was won in each following month (`forecast_error`)."""
    config = config or TrainConfig()
    folds = make_folds(history, n_folds, fold_days)
    # time-indexed statistics: a feature as of t reads only what was known at t, so one fit serves all
    builder = FeatureBuilder().fit(history)
    feats, cols, cats = _shared_features(history, config, builder)
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
        forecast_rows.extend(forecast_error(history, bundle, fold, builder, forecast_months))
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
