"""Censoring on slow sales cycles: trained on a history cut at a date, judged on what happened next.

The simulator stretches every cycle three times (`cycle_scale=3`), so at the cut many deals are still
open, and a label that drops them keeps the fast closers. The full history runs two more years, so the
outcome of almost every snapshot in the cut history's test window is known: that is the truth.
"""

from __future__ import annotations

from dataclasses import dataclass

import lightgbm as lgb
import numpy as np
import pandas as pd
import pytest

from features.build import FeatureBuilder
from features.history import DealHistory
from features.labels import slip_label, won_label, won_within_label
from models.calibration import Calibrator, expected_calibration_error
from models.scoring import score_points
from training.simulate import simulate_history
from training.train import TrainConfig, TrainingData, prepare_training_data, train

CUT = "2026-01-01"


@dataclass
class Judged:
    full: DealHistory
    data: TrainingData
    test: pd.DataFrame  # the cut history's test-window snapshots with their features
    scores: pd.DataFrame


@pytest.fixture(scope="module")
def judged() -> Judged:
    full = simulate_history(2400, seed=0, start="2024-01-01", end="2028-01-01", cycle_scale=3.0)
    cut = full.cut(CUT)
    config = TrainConfig(test_days=120, seed=0)
    result = train(cut, config)
    data = prepare_training_data(cut, config)
    test = data.frame[data.frame["window"] == "test"].reset_index(drop=True)
    builder = FeatureBuilder().fit(cut)
    scores = score_points(result.bundle, cut, test[["deal_id", "as_of"]], builder, top_reasons=0)
    return Judged(full, data, test, scores)


def _truth_and_scores(label: pd.Series, scores: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    y = label.to_numpy(dtype=float)
    p = pd.to_numeric(scores, errors="coerce").to_numpy(dtype=float)
    known = np.isfinite(y) & np.isfinite(p)
    return y[known], p[known]


def _dropped_open_deals_probability(data: TrainingData, test: pd.DataFrame) -> np.ndarray:
    """The old way: a classifier on the snapshots whose deal closed inside their window (open ones
    dropped), Platt-calibrated on the calibration window's closed ones."""
    frame, cols = data.frame, data.feature_columns
    train_rows = frame[(frame["window"] == "train") & frame["won"].notna()]
    cal_rows = frame[(frame["window"] == "calibration") & frame["won"].notna()]
    model = lgb.LGBMClassifier(n_estimators=200, min_child_samples=50, verbose=-1, n_jobs=1, random_state=0)
    model.fit(train_rows[cols], train_rows["won"])
    calibrator = Calibrator("platt").fit(model.predict_proba(cal_rows[cols])[:, 1], cal_rows["won"])
    return calibrator.transform(model.predict_proba(test[cols])[:, 1])


def test_close_probability_is_calibrated_where_dropping_open_deals_is_biased(judged: Judged) -> None:
    points = judged.test[["deal_id", "as_of"]]
    truth = won_label(judged.full, points)
    assert truth.notna().mean() > 0.9, "the full history must settle almost every test snapshot"
    y, p = _truth_and_scores(truth, judged.scores["close_probability"])
    known = truth.notna().to_numpy()
    old = _dropped_open_deals_probability(judged.data, judged.test)[known]
    ece_new = expected_calibration_error(p, y)
    ece_old = expected_calibration_error(old, y)
    # The setting is one where the old label goes wrong ...
    assert ece_old >= 0.045, ece_old
    # ... and the competing-risks probability does not.
    assert ece_new <= 0.04, (ece_new, ece_old)
    assert abs(p.mean() - y.mean()) <= 0.03, (p.mean(), y.mean())
    assert ece_new < ece_old - 0.015


def test_close_probability_in_90_days_is_calibrated(judged: Judged) -> None:
    truth = won_within_label(judged.full, judged.test[["deal_id", "as_of"]], 90)
    y, p = _truth_and_scores(truth, judged.scores["close_probability_90d"])
    assert len(y) > 2000
    assert expected_calibration_error(p, y) <= 0.035
    assert abs(p.mean() - y.mean()) <= 0.02, (p.mean(), y.mean())
    # a 90-day win is rarer than an eventual one, deal by deal
    assert (judged.scores["close_probability_90d"] <= judged.scores["close_probability"] + 1e-9).all()


def test_slip_risk_is_calibrated_and_null_without_a_future_date(judged: Judged) -> None:
    due = pd.to_datetime(judged.scores["expected_close_date"], utc=True)
    days = ((due - judged.test["as_of"]) / pd.Timedelta(days=1)).to_numpy()
    truth = slip_label(judged.full, judged.test[["deal_id", "as_of"]], days)
    y, p = _truth_and_scores(truth, judged.scores["slip_risk"])
    assert len(y) > 2000
    assert expected_calibration_error(p, y) <= 0.08
    assert abs(p.mean() - y.mean()) <= 0.07, (p.mean(), y.mean())
    past_or_none = ~(days > 0)
    assert judged.scores.loc[past_or_none, "slip_risk"].isna().all()
    assert judged.scores.loc[~past_or_none, "slip_risk"].notna().all()
