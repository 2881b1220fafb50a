"""The monitor on a simulated world that does or does not shift after the model was trained: buyers
going quiet faster is caught as calibration drift (state `retrain`); an unchanged world stays `ok`."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from features.history import DealHistory
from models.monitor import feature_drift, feature_reference, psi
from training.monitor import MonitorReport, monitor
from training.simulate import simulate_history
from training.train import RunResult, TrainConfig, train

pytestmark = pytest.mark.quality  # trains once and scores four months of weekly snapshots twice

TRAINED_UNTIL = "2025-05-01"
ACTIVITY = {"days_since_activity", "n_activity_7d", "n_activity_30d", "n_activity_90d", "activity_trend"}


def _world(shifted: bool) -> DealHistory:
    return simulate_history(800, seed=8, end="2025-08-15", quiet_after=TRAINED_UNTIL if shifted else None,
                            quiet_activity_share=0.15)


@pytest.fixture(scope="module")
def model() -> RunResult:
    # both worlds are the same up to the shift, so one model trained on that past serves both
    return train(_world(False).cut(TRAINED_UNTIL), TrainConfig(lightgbm_params={"n_estimators": 60}))


@pytest.fixture(scope="module")
def steady(model: RunResult) -> MonitorReport:
    return monitor(_world(False), model.bundle, model_version="1")


@pytest.fixture(scope="module")
def shifted(model: RunResult) -> MonitorReport:
    return monitor(_world(True), model.bundle, model_version="1")


def test_the_shift_leaves_the_past_untouched() -> None:
    before = _world(False).cut(TRAINED_UNTIL)
    after = _world(True).cut(TRAINED_UNTIL)
    # the same activities (ids are numbered over the whole table, so they are not compared)
    pd.testing.assert_frame_equal(before.activities.drop(columns="event_id"),
                                  after.activities.drop(columns="event_id"))
    assert len(_world(True).activities) < 0.9 * len(_world(False).activities)


def test_unchanged_world_stays_ok(steady: MonitorReport) -> None:
    assert steady.state == "ok", steady.reasons
    cold = steady.calibration["cold"]
    assert cold["state"] == "ok" and cold["n_settled"] > 500
    assert abs(cold["observed"] - cold["predicted"]) < 0.05
    # live means after the last event the model was trained on
    cut = pd.Timestamp(TRAINED_UNTIL, tz="UTC")
    assert cut - pd.Timedelta(days=1) < steady.since <= cut
    # per band: the bands split the settled scores, and a higher band means a higher observed rate
    bands = cold["by_band"].set_index("band")
    assert bands["n"].sum() == cold["n_settled"]
    assert bands.loc["high", "observed"] > bands.loc["medium", "observed"] > bands.loc["low", "observed"]
    weeks = cold["by_week"]
    assert len(weeks) >= 14 and weeks["n"].sum() == cold["n_settled"]
    shifted_features = set(steady.drift.loc[steady.drift["psi"] >= 0.25, "feature"])
    assert not shifted_features & ACTIVITY, shifted_features


def test_buyers_going_quiet_is_caught_as_calibration_drift(shifted: MonitorReport) -> None:
    assert shifted.state == "retrain"
    cold = shifted.calibration["cold"]
    assert cold["state"] == "retrain"
    assert cold["observed"] - cold["predicted"] > 0.1  # far more deals went cold than predicted
    assert any(r.startswith("cold: observed rate") for r in shifted.reasons)
    # the activity features are what moved
    top = set(shifted.drift.head(5)["feature"])
    assert top & ACTIVITY, shifted.drift.head(5)
    weeks = cold["by_week"]
    assert (weeks["gap"] > 0).mean() > 0.7


def test_psi_is_zero_for_the_same_population_and_large_for_a_shifted_one() -> None:
    rng = np.random.default_rng(0)
    train_rows = pd.DataFrame({"x": rng.exponential(5.0, 5000), "c": rng.choice(["a", "b"], 5000)})
    reference = feature_reference(train_rows, ["x", "c"], ["c"])
    shares = np.array(reference["numeric"]["x"]["shares"])
    assert psi(shares, shares) == 0
    same = pd.DataFrame({"x": rng.exponential(5.0, 2000), "c": rng.choice(["a", "b"], 2000)})
    moved = pd.DataFrame({"x": rng.exponential(12.0, 2000), "c": rng.choice(["a", "b"], 2000, p=[0.9, 0.1])})
    assert feature_drift(reference, same)["psi"].max() < 0.05
    drift = feature_drift(reference, moved).set_index("feature")
    assert drift.loc["x", "psi"] > 0.25 and drift.loc["c", "psi"] > 0.25
    assert set(drift["drift"]) == {"shifted"}
