"""Out-of-sample comparison of training configurations: the evidence `compare`, `promote` and `retrain`
decide on.

Scoring each registered model on past windows would rank them in-sample (each was trained on all of its
data, those windows included). Instead every candidate's *configuration* is retrained on the backtest's
rolling-origin folds (`training.backtest.make_folds`): for each fold, fit on what was known before it
starts, score the snapshots inside it. All versions score the same test snapshots, so their errors are
paired; confidence intervals come from a bootstrap over deals (a deal's snapshots are correlated, so
deals, not snapshots, are resampled), and the paired difference against the champion gets its own
interval. A verdict is "better" or "worse" only when that interval excludes zero.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from features.build import FeatureBuilder
from features.history import DealHistory
from features.jsonable import json_ready
from models.comparison import REPORTED_METRICS, bootstrap_comparison, overall_verdict
from training.backtest import Fold, fit_fold, fold_features, forecast_error, forecast_summary, make_folds
from training.train import HEADS, TrainConfig, closed_deal_count

logger = logging.getLogger(__name__)

SCORE_COLUMNS = {"cold": "cold_risk", "close": "close_probability"}

Progress = Callable[[str, float], None]


@dataclass
class Comparison:
    """Per version and head: metrics with bootstrap intervals, paired differences with the champion,
    and a verdict per candidate."""

    champion: str | None
    versions: list[str]
    folds: list[Fold]
    metrics: pd.DataFrame  # version, champion, head, metric, value, ci_low, ci_high, n_rows, n_deals
    differences: pd.DataFrame  # version, head, metric, difference, ci_low, ci_high, verdict
    verdicts: dict[str, str]  # candidate version -> better / worse / no detectable difference
    reasons: dict[str, list[str]]  # candidate version -> the differences behind its verdict
    n_boot: int
    confidence: float
    run_id: str | None = None
    configs: dict[str, dict[str, Any]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    # version -> `training.backtest.forecast_summary` of the forecasts its fold models made (P10-P90
    # coverage and WAPE per month ahead); empty when forecasts were not asked for
    forecast: dict[str, dict[str, float]] = field(default_factory=dict)

    def table(self) -> pd.DataFrame:
        """One row per version, head and metric: value [CI] and the difference with the champion."""
        diffs = self.differences.drop(columns=["verdict"]).rename(
            columns={"ci_low": "diff_ci_low", "ci_high": "diff_ci_high"}
        )
        merged = self.metrics.merge(diffs, on=["version", "head", "metric"], how="left")
        verdict = self.differences[["version", "head", "metric", "verdict"]]
        return merged.merge(verdict, on=["version", "head", "metric"], how="left")

    def to_dict(self) -> dict[str, Any]:
        return {
            "champion": self.champion,
            "versions": self.versions,
            "folds": [{"fold": f.number, "start": f.start, "end": f.end} for f in self.folds],
            "method": f"retrained per fold; {self.n_boot} bootstrap resamples of deals; "
            f"{self.confidence:.0%} intervals",
            "metrics": self.metrics.to_dict(orient="records"),
            "differences": self.differences.to_dict(orient="records"),
            "verdicts": self.verdicts,
            "reasons": self.reasons,
            "configs": self.configs,
            "notes": self.notes,
            "forecast": self.forecast,
            "run_id": self.run_id,
        }


def out_of_sample_predictions(
    history: DealHistory,
    configs: Mapping[str, TrainConfig],
    folds: list[Fold],
    reference: str,
    progress: Progress | None = None,
    forecast_months: int = 0,
    forecast_rows: dict[str, list[dict[str, Any]]] | None = None,
) -> pd.DataFrame:
    """Each configuration retrained per fold, scoring the same test snapshots (those `reference`'s
    configuration makes, labelled with its horizon).

    Returns one row per test snapshot and head: fold, head, deal_id, as_of, y, and one probability
    column per version. Snapshots whose label is censored are left out (there is nothing to score them
    against); they still count in training, where their censoring is handled. With `forecast_months`,
    each fold model's forecast made at the fold start (`training.backtest.forecast_error`) is added to
    `forecast_rows[version]`.
    """
    n_closed = closed_deal_count(history)
    # time-indexed statistics: a feature as of t reads only what was known at t, so one fit serves all
    builder = FeatureBuilder().fit(history)
    features: dict[tuple[float, bool], tuple[pd.DataFrame, list[str], list[str]]] = {}

    def features_for(config: TrainConfig) -> tuple[pd.DataFrame, list[str], list[str]]:
        key = (config.cadence_days, config.at_events)
        if key not in features:
            features[key] = fold_features(history, config, builder)
        feats, _, _ = features[key]
        cols, cats = config.feature_columns()
        return feats, cols, cats

    steps = len(folds) * len(configs)
    done = 0
    parts: list[pd.DataFrame] = []
    for fold in folds:
        test: pd.DataFrame | None = None
        scores: dict[str, pd.DataFrame] = {}
        for version in [reference, *[v for v in configs if v != reference]]:
            config = configs[version]
            if progress:
                progress(f"fold {fold.number}: retraining version {version}", done / steps)
            feats, cols, cats = features_for(config)
            data, _, bundle = fit_fold(history, feats, fold, config, cols, cats, n_closed)
            if version == reference:
                test = data.frame[data.frame["window"] == "test"].reset_index(drop=True)
            assert test is not None
            scores[version] = bundle.score(test, top_reasons=0)
            if forecast_months and forecast_rows is not None:
                forecast_rows.setdefault(version, []).extend(
                    forecast_error(history, bundle, fold, builder, forecast_months)
                )
            done += 1
        assert test is not None
        if test.empty:
            continue
        for head, label in HEADS.items():
            y = test[label].to_numpy(dtype=float)
            keep = np.isfinite(y)
            part = pd.DataFrame(
                {"fold": fold.number, "head": head, "deal_id": test["deal_id"].astype(str).to_numpy()[keep],
                 "as_of": test["as_of"].to_numpy()[keep], "y": y[keep]}
            )
            for version, frame in scores.items():
                part[version] = frame[SCORE_COLUMNS[head]].to_numpy(dtype=float)[keep]
            parts.append(part)
    if progress:
        progress("bootstrap", 0.95)
    if not parts:
        raise ValueError(
            "the comparison folds hold no labelled snapshots to score; use fewer or longer folds "
            "(--folds, --fold-days) or a longer history"
        )
    return pd.concat(parts, ignore_index=True)


def compare_configs(
    history: DealHistory,
    configs: Mapping[str, TrainConfig],
    champion: str | None,
    n_folds: int = 3,
    fold_days: float | None = None,
    n_boot: int = 200,
    confidence: float = 0.95,
    seed: int = 0,
    progress: Progress | None = None,
    forecast_months: int = 0,
) -> Comparison:
    """Retrain every configuration on the same rolling-origin folds and compare them out of sample.

    `configs` maps a version name to its TrainConfig; `champion` (one of its keys, or None) is what the
    others are measured against, and its configuration decides the test snapshots and their labels.
    With `forecast_months`, each fold model also forecasts that many months from its fold's start, and
    the P10-P90 coverage and WAPE per version are reported (no verdict: coverage aims at 80 %, not up).
    """
    if not configs:
        raise ValueError("nothing to compare: no configurations given")
    if champion is not None and champion not in configs:
        raise ValueError(f"champion {champion!r} is not among the configurations compared")
    versions = list(configs)
    reference = champion or versions[0]
    folds = make_folds(history, n_folds, fold_days)
    forecast_rows: dict[str, list[dict[str, Any]]] = {}
    predictions = out_of_sample_predictions(history, configs, folds, reference, progress, forecast_months,
                                            forecast_rows)
    metrics, differences = bootstrap_comparison(predictions, versions, champion, n_boot, confidence, seed)
    verdicts: dict[str, str] = {}
    reasons: dict[str, list[str]] = {}
    for version in versions:
        if champion is not None and version != champion:
            verdicts[version], reasons[version] = overall_verdict(differences, version)
    ref = configs[reference]
    notes = [
        f"version {v} was trained for a {c.horizon_days:g}-day cold horizon; its cold head is scored "
        f"against the {ref.horizon_days:g}-day labels of version {reference}, the reference"
        for v, c in configs.items() if c.horizon_days != ref.horizon_days
    ]
    if progress:
        progress("done", 1.0)
    return Comparison(
        champion=champion, versions=versions, folds=folds, metrics=metrics, differences=differences,
        verdicts=verdicts, reasons=reasons, n_boot=n_boot, confidence=confidence,
        configs={v: c.params() for v, c in configs.items()}, notes=notes,
        forecast={v: forecast_summary(pd.DataFrame(rows)) for v, rows in forecast_rows.items()},
    )


def log_comparison(comparison: Comparison, tracking_uri: str) -> str:
    """Log the comparison as its own MLflow run (tag `kind=comparison`): every figure with its
    interval as metrics, the verdicts as tags, the full result as JSON and one plot per metric."""
    import tempfile
    from pathlib import Path

    import mlflow

    from training.plots import plot_metric_intervals
    from training.train import ensure_experiment

    mlflow.set_tracking_uri(tracking_uri)
    experiment_id = ensure_experiment(tracking_uri)
    with mlflow.start_run(experiment_id=experiment_id, run_name="compare") as run:
        mlflow.set_tags(
            {"kind": "comparison", "champion": comparison.champion or "",
             "versions": ",".join(comparison.versions),
             **{f"verdict.v{v}": verdict for v, verdict in comparison.verdicts.items()}}
        )
        mlflow.log_params({"n_folds": len(comparison.folds), "n_boot": comparison.n_boot,
                           "confidence": comparison.confidence})
        values: dict[str, float] = {}
        for r in comparison.metrics.itertuples(index=False):
            key = f"v{r.version}.{r.head}.{r.metric}"
            values.update({key: r.value, f"{key}.ci_low": r.ci_low, f"{key}.ci_high": r.ci_high})
        for r in comparison.differences.itertuples(index=False):
            key = f"v{r.version}.{r.head}.{r.metric}.diff"
            values.update({key: r.difference, f"{key}.ci_low": r.ci_low, f"{key}.ci_high": r.ci_high})
        for version, summary in comparison.forecast.items():
            values.update({f"v{version}.forecast.{k}": v for k, v in summary.items()})
        mlflow.log_metrics({k: float(v) for k, v in values.items() if np.isfinite(v)})
        mlflow.log_dict(json_ready(comparison.to_dict()), "comparison.json")
        with tempfile.TemporaryDirectory() as tmp:
            for metric in REPORTED_METRICS:
                rows = comparison.metrics[comparison.metrics["metric"] == metric]
                plot_metric_intervals(rows, Path(tmp) / f"{metric}.png",
                                      f"{metric} per version (out of sample, {comparison.confidence:.0%} CI)")
            mlflow.log_artifacts(tmp, artifact_path="plots")
        comparison.run_id = run.info.run_id
    return str(comparison.run_id)

