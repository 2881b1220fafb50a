import json

import numpy as np
import pytest

from models.calibration import Calibrator, ece_noise_floor, expected_calibration_error


def _miscalibrated(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    true_p = rng.uniform(0, 1, n)
    y = (rng.random(n) < true_p).astype(int)
    raw = true_p**3  # a model that is badly over-confident about negatives
    return raw, y, true_p


@pytest.mark.parametrize("method", ["isotonic", "platt"])
def test_json_round_trip_gives_identical_outputs(method: str) -> None:
    raw, y, _ = _miscalibrated(3000, 1)
    cal = Calibrator(method).fit(raw, y)
    again = Calibrator.from_dict(json.loads(json.dumps(cal.to_dict())))
    grid = np.linspace(0, 1, 501)
    np.testing.assert_array_equal(cal.transform(grid), again.transform(grid))


@pytest.mark.parametrize("method", ["isotonic", "platt"])
def test_outputs_are_monotone_probabilities(method: str) -> None:
    raw, y, _ = _miscalibrated(3000, 2)
    out = Calibrator(method).fit(raw, y).transform(np.linspace(-0.5, 1.5, 1001))
    assert np.all(np.diff(out) >= 0)
    assert out.min() >= 0.0 and out.max() <= 1.0


def test_isotonic_fixes_a_miscalibrated_model() -> None:
    raw, y, _ = _miscalibrated(20_000, 3)
    fit_half, test_half = slice(0, 10_000), slice(10_000, None)
    cal = Calibrator("isotonic").fit(raw[fit_half], y[fit_half])
    before = expected_calibration_error(raw[test_half], y[test_half])
    after = expected_calibration_error(cal.transform(raw[test_half]), y[test_half])
    assert before > 0.15
    assert after < 0.03
    assert after < before / 5


def test_platt_with_one_class_predicts_its_rate() -> None:
    cal = Calibrator("platt").fit([0.2, 0.4, 0.9], [0, 0, 0])
    assert np.all(cal.transform([0.1, 0.5, 0.99]) < 0.01)


def test_unknown_method_is_rejected() -> None:
    with pytest.raises(ValueError, match="unknown calibration method"):
        Calibrator("beta").fit([0.1, 0.9], [0, 1])  # type: ignore[arg-type]


def test_ece_of_a_perfect_forecast_is_small() -> None:
    _, y, true_p = _miscalibrated(50_000, 4)
    assert expected_calibration_error(true_p, y) < 0.01


@pytest.mark.parametrize("method", ["isotonic", "platt"])
def test_no_deal_is_ever_certain(method: str) -> None:
    # The lowest scores never won and the highest always did: isotonic steps would reach 0 and 1.
    p = np.linspace(0.0, 1.0, 400)
    y = (p > 0.5).astype(float)
    out = Calibrator(method).fit(p, y).transform(np.array([0.0, 0.01, 0.99, 1.0]))
    assert (out > 0.0).all() and (out < 1.0).all()
    assert out[0] < 0.05 and out[-1] > 0.95


def test_reliability_bins_are_the_calibration_curve_points() -> None:
    from models.calibration import reliability_bins

    bins = reliability_bins([0.05, 0.15, 0.15, 0.95, np.nan], [0, 1, 0, 1, 1])
    assert bins == [
        {"predicted": pytest.approx(0.05), "observed": 0.0, "count": 1.0},
        {"predicted": pytest.approx(0.15), "observed": 0.5, "count": 2.0},
        {"predicted": pytest.approx(0.95), "observed": 1.0, "count": 1.0},
    ]
    assert reliability_bins([], []) == []


def test_ece_noise_floor_is_what_calibrated_outcomes_score_and_shrinks_with_more_points() -> None:
    rng = np.random.default_rng(3)
    p = rng.uniform(size=3_000)
    floor = ece_noise_floor(p)
    # outcomes drawn from p itself: their ECE is of the size of the floor, not zero
    drawn = [expected_calibration_error(p, rng.uniform(size=p.size) < p) for _ in range(50)]
    assert 0.01 < floor < 0.03
    assert abs(np.mean(drawn) - floor) < 0.003
    # ten times the points: about a third of the floor (binomial noise ~ 1 / sqrt(n))
    assert ece_noise_floor(rng.uniform(size=30_000)) < 0.5 * floor


def test_noise_floor_with_outcomes_shared_within_deals_is_what_such_outcomes_score() -> None:
    # 300 deals seen in 10 weekly snapshots each, their scores drifting around the deal's own level:
    # every snapshot of a deal shares the deal's one outcome, so 3,000 snapshots judge far less than
    # 3,000 independent points would
    rng = np.random.default_rng(5)
    level = rng.uniform(0.05, 0.95, 300)
    deal = np.repeat(np.arange(300), 10)
    p = np.clip(level[deal] + rng.normal(0.0, 0.03, deal.size), 0.0, 1.0)
    floor = ece_noise_floor(p)
    shared = ece_noise_floor(p, groups=deal.astype(str))
    # outcomes drawn once per deal, each snapshot calibrated on its own (u < p): their ECE is the floor
    drawn = []
    for _ in range(100):
        u = rng.uniform(size=300)[deal]
        drawn.append(expected_calibration_error(p, u < p))
    assert abs(np.mean(drawn) - shared) < 0.004
    assert shared > 1.8 * floor
    with pytest.raises(ValueError, match="one label per score"):
        ece_noise_floor(p, groups=deal[:10])
