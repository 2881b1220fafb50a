"""The competing-risks timing model: person-period rows, the curves' arithmetic, calibration, bundle."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from features.history import DealHistory
from models.bundle import BundleIntegrityError, Head, ScoringBundle
from models.timing import (
    FINE_EARLY_EDGES,
    LOST,
    OPEN,
    WON,
    HazardCalibrator,
    OutcomeSplitCalibrator,
    TimingCurves,
    TimingModel,
    grid_position,
    hazard_map_from_dict,
    likely_close_days,
    person_periods,
    slip_risk,
)
from training.simulate import simulate_history
from training.train import RunResult, TrainConfig, train


def test_person_periods_count_only_fully_watched_periods() -> None:
    pp = person_periods(
        event=["won", "lost", None, "won", None, "lost"],
        event_days=[45.0, 10.0, np.nan, 50.0, np.nan, 400.0],
        observed_days=[200.0, 200.0, 75.0, 40.0, 20.0, 900.0],
        period_days=30.0,
        n_periods=6,
    )
    rows = pd.DataFrame({"row": pp.row, "period": pp.period, "target": pp.target})
    by_row = {r: list(zip(g["period"], g["target"], strict=True)) for r, g in rows.groupby("row")}
    assert by_row[0] == [(1, OPEN), (2, WON)]  # won on day 45: open in period 1, won in period 2
    assert by_row[1] == [(1, LOST)]
    assert by_row[2] == [(1, OPEN), (2, OPEN)]  # still open, watched 75 days: two full periods
    # closed on day 50 but its window ended on day 40: period 2 was cut short, so only period 1 counts
    assert by_row[3] == [(1, OPEN)]
    assert 4 not in by_row  # watched 20 days: not one full period
    # lost on day 400, past the 6-period horizon: six open periods, no event row
    assert by_row[5] == [(k, OPEN) for k in range(1, 7)]


def _constant(h_won: float, h_lost: float, n_periods: int = 3, n: int = 1) -> TimingCurves:
    hazards = np.tile([1.0 - h_won - h_lost, h_won, h_lost], (n, n_periods, 1))
    return TimingCurves(hazards, period_days=30.0)


def test_curves_follow_the_hazards_by_hand() -> None:
    curves = _constant(0.1, 0.1)
    # equal hazards of winning and losing forever: half the deals are won in the end (tail included)
    assert curves.p_won()[0] == pytest.approx(0.5)
    # won within 90 days = 0.1 + 0.8 * 0.1 + 0.8**2 * 0.1
    assert curves.won_within([90.0])[0] == pytest.approx(0.244)
    assert curves.open_at([30.0])[0] == pytest.approx(0.8)
    assert curves.open_at([15.0])[0] == pytest.approx(0.8**0.5)  # constant rate inside a period
    # P(still open) reaches 0.5 when 0.8 ** (d / 30) = 0.5, past the 3-period horizon (the tail)
    assert curves.days_to_closed(0.5)[0] == pytest.approx(30 * np.log(0.5) / np.log(0.8))


def test_likely_close_date_and_slip_risk_are_null_where_undefined() -> None:
    slow = _constant(0.0005, 0.0005, n=1)  # half-life about 57 years
    assert np.isnan(likely_close_days(slow)[0])
    curves = _constant(0.1, 0.1, n=3)
    risk = slip_risk(curves, [30.0, -5.0, np.nan])
    assert risk[0] == pytest.approx(0.8)
    assert np.isnan(risk[1]) and np.isnan(risk[2])


def test_hazard_calibrator_moves_towards_the_data_and_round_trips() -> None:
    rng = np.random.default_rng(0)
    n = 4000
    raw = np.tile([0.7, 0.15, 0.15], (n, 1))
    # the real hazard of winning is twice what the booster says
    target = rng.choice([OPEN, WON, LOST], n, p=[0.55, 0.3, 0.15])
    identity = HazardCalibrator().transform(raw)
    np.testing.assert_allclose(identity, raw)
    cal = HazardCalibrator(prior_sd=1.0).fit(raw, target)
    out = cal.transform(raw)[0]
    assert out[WON] > 0.25 and abs(out[LOST] - 0.15) < 0.03
    again = HazardCalibrator.from_dict(json.loads(json.dumps(cal.to_dict())))
    np.testing.assert_allclose(again.transform(raw), cal.transform(raw))
    # with each deal's rows counted as one deal (here 40 deals), the prior keeps it near the identity
    shy = HazardCalibrator(prior_sd=0.15).fit(raw, target, groups=np.arange(n) % 40)
    assert shy.transform(raw)[0][WON] < out[WON]


def test_outcome_split_map_keeps_when_deals_close_and_moves_only_which_way() -> None:
    rng = np.random.default_rng(0)
    n = 4000
    raw = np.tile([0.7, 0.15, 0.15], (n, 1))
    # the booster's closes are right (0.3 a period) but two thirds of them are won, not half
    target = rng.choice([OPEN, WON, LOST], n, p=[0.7, 0.2, 0.1])
    np.testing.assert_allclose(OutcomeSplitCalibrator().transform(raw), raw)
    cal = OutcomeSplitCalibrator(prior_sd=1.0).fit(raw, target)
    out = cal.transform(raw)[0]
    assert out[OPEN] == pytest.approx(0.7)  # the chance of closing in the period is the booster's
    assert out[WON] / (out[WON] + out[LOST]) == pytest.approx(2 / 3, abs=0.03)
    again = hazard_map_from_dict(json.loads(json.dumps(cal.to_dict())))
    assert isinstance(again, OutcomeSplitCalibrator)
    np.testing.assert_allclose(again.transform(raw), cal.transform(raw))
    # a map saved before there was a choice of maps reads as the three-number map it was
    old = {"method": "vector_scaling", "prior_sd": 0.15, "scale": 1.2, "intercept": [0.3, 0.4]}
    assert isinstance(hazard_map_from_dict(old), HazardCalibrator)
    np.testing.assert_allclose(hazard_map_from_dict(old).transform(raw),
                               HazardCalibrator.from_dict(old).transform(raw))


def _split(n_first: int | None = None) -> OutcomeSplitCalibrator:
    """A fitted-looking outcome split: won against lost 1:1 by the booster becomes 3:1."""
    return OutcomeSplitCalibrator.from_dict({"method": "outcome_split", "scale": 1.0,
                                             "intercept": float(np.log(3.0)), "n_first": n_first})


def test_outcome_split_on_the_first_periods_leaves_later_ones_as_the_booster_gives_them() -> None:
    # one deal, five periods: closing with chance 0.4, half the closes won, in every period
    raw = np.tile([0.6, 0.2, 0.2], (5, 1))
    period = np.arange(1, 6)
    mapped = _split(n_first=3).transform(raw, period)
    np.testing.assert_allclose(mapped[:, OPEN], 0.6)  # no period's chance of closing moves
    np.testing.assert_allclose(mapped[:3, WON], 0.3)  # periods 1-3: three closes in four won
    np.testing.assert_allclose(mapped[:3], _split().transform(raw)[:3])
    np.testing.assert_array_equal(mapped[3:], raw[3:])  # periods 4-5: the booster's own split
    # rows given in any order: each row's own period decides
    np.testing.assert_array_equal(_split(n_first=3).transform(raw[::-1], period[::-1]), mapped[::-1])
    with pytest.raises(ValueError, match="each row's period"):
        _split(n_first=3).transform(raw)
    with pytest.raises(ValueError, match="at least 1"):
        OutcomeSplitCalibrator(n_first=0)


def test_outcome_split_on_the_first_periods_round_trips_and_old_maps_read_as_every_period() -> None:
    raw = np.tile([0.6, 0.2, 0.2], (5, 1))
    period = np.arange(1, 6)
    first = _split(n_first=3)
    again = hazard_map_from_dict(json.loads(json.dumps(first.to_dict())))
    assert isinstance(again, OutcomeSplitCalibrator) and again.n_first == 3
    np.testing.assert_array_equal(again.transform(raw, period), first.transform(raw, period))
    # a map written before the field (every bundle so far) applies to every period, as it did
    every = _split()
    assert "n_first" not in every.to_dict()
    old = {k: v for k, v in first.to_dict().items() if k != "n_first"}
    read = hazard_map_from_dict(old)
    assert isinstance(read, OutcomeSplitCalibrator) and read.n_first is None
    np.testing.assert_array_equal(read.transform(raw, period), every.transform(raw))
    np.testing.assert_allclose(read.transform(raw, period)[:, WON], 0.3)


def test_outcome_split_without_its_shift_fits_the_stretch_alone_and_round_trips() -> None:
    rng = np.random.default_rng(1)
    n = 6000
    x = rng.normal(0.0, 1.0, n)  # the booster's won-against-lost log-odds of each closing row
    share = 1.0 / (1.0 + np.exp(-x))
    raw = np.column_stack([np.full(n, 0.5), 0.5 * share, 0.5 * (1.0 - share)])
    # the truth is stretched (c = 1.5) and shifted toward wins (d = 0.4)
    won = rng.random(n) < 1.0 / (1.0 + np.exp(-(1.5 * x + 0.4)))
    target = np.where(won, WON, LOST)
    both = OutcomeSplitCalibrator(prior_sd=1.0).fit(raw, target)
    stretch = OutcomeSplitCalibrator(prior_sd=1.0, fit_shift=False).fit(raw, target)
    assert both.intercept_ == pytest.approx(0.4, abs=0.1)
    assert stretch.intercept_ == 0.0  # held, however far the wins lean
    assert stretch.scale_ == pytest.approx(1.5, abs=0.1)  # the stretch is still learned
    mapped = stretch.transform(raw)
    np.testing.assert_allclose(mapped[:, OPEN], 0.5)
    np.testing.assert_allclose(mapped[:, WON] / 0.5, 1.0 / (1.0 + np.exp(-stretch.scale_ * x)))
    again = hazard_map_from_dict(json.loads(json.dumps(stretch.to_dict())))
    assert isinstance(again, OutcomeSplitCalibrator) and again.fit_shift is False
    np.testing.assert_array_equal(again.transform(raw), mapped)
    # a map that fits its shift is written as before, and a map without the field fits its shift
    assert "fit_shift" not in both.to_dict()
    read = OutcomeSplitCalibrator.from_dict({"method": "outcome_split", "scale": 1.2, "intercept": -0.1})
    assert read.fit_shift is True


@pytest.fixture(scope="module")
def history() -> DealHistory:
    return simulate_history(600, seed=4)


@pytest.fixture(scope="module")
def trained(history: DealHistory) -> RunResult:
    return train(history, TrainConfig(seed=0))


def test_trained_bundle_saves_the_timing_model_as_text_and_json(
    history: DealHistory, trained: RunResult, tmp_path: Path
) -> None:
    from features.build import FeatureBuilder
    from models.scoring import open_deal_points, score_points

    builder = FeatureBuilder().fit(history)
    bundle = trained.bundle
    assert bundle.close.kind == "competing_risks"
    folder = bundle.save(tmp_path / "bundle")
    assert sorted(p.name for p in folder.iterdir()) == [
        "bundle.json", "close_head.txt", "close_slip_head.txt", "cold_head.txt", "manifest.json",
        "reasons_reference.json",
    ]
    points = open_deal_points(history, history.end_time - pd.Timedelta(days=20))
    before = score_points(bundle, history, points, builder, top_reasons=0)
    after = score_points(ScoringBundle.load(folder), history, points, builder, top_reasons=0)
    pd.testing.assert_frame_equal(before, after)
    assert before["close_probability_90d"].notna().all()

    spec = json.loads((folder / "bundle.json").read_text())
    spec["heads"]["close"]["timing"]["calibrator"]["scale"] = 3.0
    (folder / "bundle.json").write_text(json.dumps(spec))
    with pytest.raises(BundleIntegrityError, match="bundle.json"):
        ScoringBundle.load(folder)


@pytest.fixture(scope="module")
def open_features(history: DealHistory, trained: RunResult) -> pd.DataFrame:
    """The feature frame of the deals open 20 days before the end of the data."""
    from features.build import FeatureBuilder
    from models.scoring import open_deal_points

    points = open_deal_points(history, history.end_time - pd.Timedelta(days=20))
    return FeatureBuilder().fit(history).transform(history, points)


def test_slip_risk_is_read_from_the_fine_grid_model_the_rest_from_the_30_day_one(
    trained: RunResult, open_features: pd.DataFrame
) -> None:
    bundle = trained.bundle
    timing = bundle.close.timing
    assert timing is not None and timing.slip is not None
    assert timing.edges is None and timing.period_days == 30.0  # the close curves stay on 30-day periods
    np.testing.assert_array_equal(timing.slip.edges, FINE_EARLY_EDGES)
    assert timing.slip.n_periods == 32 and FINE_EARLY_EDGES[:3].tolist() == [0.0, 7.0, 14.0]
    scores = bundle.score(open_features, top_reasons=0)
    x = bundle.encode(open_features)
    days = open_features["days_to_close"].to_numpy(dtype=float)
    fine = timing.slip.curves(x)
    close = timing.curves(x)
    want = slip_risk(fine, grid_position(days, FINE_EARLY_EDGES))
    got = scores["slip_risk"].to_numpy()
    has_date = np.isfinite(days) & (days > 0)
    assert has_date.sum() >= 30 and (~has_date).sum() >= 1
    np.testing.assert_array_equal(got, want)  # NaN where there is no date after as_of, as before
    assert np.isnan(got[~has_date]).all()
    # a date 7 (56) days away is the end of the first (eighth) weekly period: the fine curve's survival
    week = bundle.close.slip_risk(x, np.full(len(x), 7.0), close)
    np.testing.assert_allclose(week, fine.survival[:, 1], rtol=1e-12)
    np.testing.assert_allclose(bundle.close.slip_risk(x, np.full(len(x), 56.0), close), fine.survival[:, 8],
                               rtol=1e-12)
    # ... and not the 30-day curves' survival, which spreads the first month's closes evenly
    thirty = slip_risk(close, days)
    assert np.abs(got[has_date] - thirty[has_date]).max() > 0.01
    # the close probability, the 90-day figure and the likely close date are the 30-day model's
    np.testing.assert_array_equal(scores["close_probability"].to_numpy(), close.p_won())
    np.testing.assert_array_equal(scores["close_probability_90d"].to_numpy(), close.won_within(90.0))


def test_slip_scored_on_the_periods_a_date_reaches_equals_the_whole_curve_to_the_bit(
    trained: RunResult, open_features: pd.DataFrame
) -> None:
    # slip scores only the fine periods up to the one the date falls in; it must equal reading the whole
    # curve, for dates inside a weekly period, on a period's end, in the 30-day part, past the 776-day
    # horizon, and none (NaN: no date, a date today or behind)
    timing = trained.bundle.close.timing
    assert timing is not None and timing.slip is not None
    x = trained.bundle.encode(open_features)
    n = len(x)
    fine = timing.slip.curves(x)
    for day in (np.nan, -3.0, 0.0, 0.5, 3.0, 7.0, 13.0, 56.0, 60.0, 100.0, 775.0, 776.0, 900.0, 5000.0):
        days = np.full(n, day)
        got = timing.slip_risk(x, days)
        want = slip_risk(fine, grid_position(days, FINE_EARLY_EDGES))
        np.testing.assert_array_equal(got, want, err_msg=f"{day} days")
    # each deal its own date, as a score has
    days = np.resize([np.nan, 2.0, 9.0, 40.0, 200.0, 1000.0, -1.0], n)
    np.testing.assert_array_equal(timing.slip_risk(x, days),
                                  slip_risk(fine, grid_position(days, FINE_EARLY_EDGES)))


def test_a_bundle_without_a_slip_model_loads_and_scores_slip_from_the_30_day_curves(
    trained: RunResult, open_features: pd.DataFrame, tmp_path: Path
) -> None:
    """A bundle written before the slip model (its close head one booster, `timing` without `slip`)."""
    new = trained.bundle
    assert new.close.timing is not None
    old_timing = TimingModel(new.close.timing.booster, new.close.timing.calibrator)
    old = ScoringBundle(new.cold, Head.competing_risks(old_timing), new.feature_columns,
                        new.categorical_levels, new.band_thresholds, new.reference, new.metadata)
    folder = old.save(tmp_path / "old")
    assert "close_slip_head.txt" not in {p.name for p in folder.iterdir()}
    spec = json.loads((folder / "bundle.json").read_text())["heads"]["close"]
    assert sorted(spec["timing"]) == ["calibrator", "n_periods", "period_days"] and "slip_file" not in spec
    loaded = ScoringBundle.load(folder)
    assert loaded.close.timing is not None and loaded.close.timing.slip is None
    scores = loaded.score(open_features, top_reasons=0)
    curves = loaded.timing_curves(open_features)
    assert curves is not None
    days = open_features["days_to_close"].to_numpy(dtype=float)
    np.testing.assert_array_equal(scores["slip_risk"].to_numpy(), slip_risk(curves, days))
    # every other column is the new bundle's: only slip comes from the slip model
    fresh = new.score(open_features, top_reasons=0)
    others = [c for c in fresh.columns if c != "slip_risk"]
    pd.testing.assert_frame_equal(scores[others], fresh[others])
    assert not np.array_equal(scores["slip_risk"].to_numpy(), fresh["slip_risk"].to_numpy(), equal_nan=True)


def test_a_bundle_whose_slip_booster_is_gone_fails_to_load_naming_it(
    trained: RunResult, tmp_path: Path
) -> None:
    folder = trained.bundle.save(tmp_path / "bundle")
    (folder / "close_slip_head.txt").unlink()
    with pytest.raises(BundleIntegrityError, match="close_slip_head.txt"):
        ScoringBundle.load(folder)


def test_one_deal_at_a_time_gives_the_batch_slip_risk(
    trained: RunResult, open_features: pd.DataFrame
) -> None:
    bundle = trained.bundle
    batch = bundle.score(open_features, top_reasons=0)["slip_risk"].to_numpy()
    one_by_one = np.array([bundle.score(open_features.iloc[[i]], top_reasons=0)["slip_risk"].iloc[0]
                           for i in range(len(open_features))])
    np.testing.assert_array_equal(one_by_one, batch)


def _first_periods(bundle: ScoringBundle, n_first: int) -> ScoringBundle:
    """`bundle` with its close head's outcome split applied to the first `n_first` periods only (the
    same fitted c and d, the same boosters, the slip model's map untouched)."""
    timing = bundle.close.timing
    assert timing is not None and isinstance(timing.calibrator, OutcomeSplitCalibrator)
    split = OutcomeSplitCalibrator.from_dict({**timing.calibrator.to_dict(), "n_first": n_first})
    first = TimingModel(timing.booster, split, slip=timing.slip)
    return ScoringBundle(bundle.cold, Head.competing_risks(first), bundle.feature_columns,
                         bundle.categorical_levels, bundle.band_thresholds, bundle.reference, bundle.metadata)


def test_close_curves_with_the_split_on_the_first_3_periods(
    trained: RunResult, open_features: pd.DataFrame
) -> None:
    every = trained.bundle.close.timing
    assert every is not None and every.calibrator.to_dict()["scale"] != 1.0
    first = _first_periods(trained.bundle, 3).close.timing
    assert first is not None
    x = trained.bundle.encode(open_features)
    raw, got, want = every.raw_hazards(x), first.curves(x), every.curves(x)

    def won_share(h: np.ndarray) -> np.ndarray:
        return h[:, :, WON] / (h[:, :, WON] + h[:, :, LOST])

    # periods 4 on: the booster's own won share; periods 1-3: the all-periods map's hazards
    np.testing.assert_allclose(won_share(got.hazards[:, 3:]), won_share(raw[:, 3:]), rtol=1e-12)
    assert np.abs(won_share(want.hazards[:, 3:]) - won_share(raw[:, 3:])).max() > 1e-3
    np.testing.assert_array_equal(got.hazards[:, :3], want.hazards[:, :3])
    # the chance of closing in every period, and so S, the likely close date and slip, unchanged
    np.testing.assert_allclose(got.hazards[:, :, OPEN], want.hazards[:, :, OPEN], rtol=0, atol=1e-15)
    np.testing.assert_allclose(got.survival, want.survival, rtol=1e-12)
    # 90 days are periods 1-3: the 90-day probability is the all-periods map's; the eventual one is not
    np.testing.assert_array_equal(got.won_within(90.0), want.won_within(90.0))
    assert np.abs(got.p_won() - want.p_won()).max() > 1e-3
    # the partial scoring (only the periods a day reaches) tells the map each row's period too
    days = np.resize([np.nan, 5.0, 40.0, 75.0, 100.0, 200.0, 900.0], len(x))
    np.testing.assert_array_equal(first.open_at_reached(x, days), slip_risk(got, days))


def test_a_bundle_with_the_split_on_the_first_periods_scores_the_same_after_saving(
    trained: RunResult, open_features: pd.DataFrame, tmp_path: Path
) -> None:
    bundle = _first_periods(trained.bundle, 3)
    folder = bundle.save(tmp_path / "first3")
    timing_spec = json.loads((folder / "bundle.json").read_text())["heads"]["close"]["timing"]
    assert timing_spec["calibrator"]["n_first"] == 3
    assert "n_first" not in timing_spec["slip"]["calibrator"]  # the slip map stays on every period
    loaded = ScoringBundle.load(folder)
    assert loaded.close.timing is not None
    assert isinstance(loaded.close.timing.calibrator, OutcomeSplitCalibrator)
    assert loaded.close.timing.calibrator.n_first == 3
    before = bundle.score(open_features, top_reasons=0)
    pd.testing.assert_frame_equal(loaded.score(open_features, top_reasons=0), before)
    # ... and those are not the all-periods bundle's close probabilities, only its 90-day ones
    every = trained.bundle.score(open_features, top_reasons=0)
    assert np.abs(before["close_probability"] - every["close_probability"]).max() > 1e-3
    pd.testing.assert_series_equal(before["close_probability_90d"], every["close_probability_90d"])
    pd.testing.assert_series_equal(before["slip_risk"], every["slip_risk"])


def test_training_applies_the_split_where_its_config_says(history: DealHistory, trained: RunResult) -> None:
    assert TrainConfig().split_first_periods is None  # training's default: every period
    timing = trained.bundle.close.timing
    assert timing is not None and isinstance(timing.calibrator, OutcomeSplitCalibrator)
    assert timing.calibrator.n_first is None
    first = train(history, TrainConfig(seed=0, split_first_periods=3)).bundle.close.timing
    assert first is not None and first.slip is not None and timing.slip is not None
    assert first.calibrator.to_dict() == {**timing.calibrator.to_dict(), "n_first": 3}  # the same fit
    assert first.slip.calibrator.to_dict() == timing.slip.calibrator.to_dict()  # every period
    with pytest.raises(ValueError, match="split_first_periods"):
        TrainConfig(split_first_periods=0)
