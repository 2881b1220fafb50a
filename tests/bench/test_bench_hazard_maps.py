"""bench/bench_hazard_maps.py's round 15 fits the outcome split (c, d) on the probability of a win by
the end of the training data, snapshot by snapshot: these check that the fit finds a stretch a person
planted in the data, and that a deal seen in many snapshots counts as one deal. Round 16 weighs every
snapshot (every closing row) the same instead: there a deal seen in many snapshots counts that many
times, and a fold whose deals are all seen equally often fits as if each deal counted once. Round 17
applies training's split on the first periods ahead only: a deal's later periods keep the booster's
won share, and no period's chance of closing changes. Round 19 pools a paired difference over
independent histories draw by draw, judges it by its rule, and takes the draws from the paired
bootstrap itself, so that they give back the per-history interval it reports."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from bench.bench_hazard_maps import (
    FirstPeriodsSplitMap,
    FoldRows,
    LagFold,
    PooledDelta,
    closing_deal_weights,
    lag_split_snapshots_map,
    marginal_split_map,
    pooled_delta,
    pooled_split_map,
    round19_verdict,
    round20_verdict,
    weighted_split_map,
)
from models import comparison
from models.comparison import bootstrap_comparison
from models.timing import LOST, OPEN, WON, OutcomeSplitCalibrator


def _fold(x: np.ndarray, won: np.ndarray, deals: np.ndarray) -> LagFold:
    """Snapshots that close for sure in their first 30-day period, won against lost at log-odds `x`
    by the booster, watched 45 days: P(won within 45 days) is the mapped won share itself."""
    n = len(x)
    hazards = np.zeros((n, 3, 3))
    hazards[:, :, OPEN] = 0.5
    hazards[:, 0, OPEN] = 0.0
    share = 1.0 / (1.0 + np.exp(-x))
    hazards[:, 0, WON], hazards[:, 0, LOST] = share, 1.0 - share
    hazards[:, 1:, WON] = hazards[:, 1:, LOST] = 0.25
    rows = FoldRows(pd.Timestamp("2025-01-01", tz="UTC"), hazards[:, 0], np.where(won > 0, WON, LOST),
                    np.ones(n), len(np.unique(deals)), groups=deals)
    return LagFold(rows, hazards, np.full(n, 45.0), won, deals)


def test_the_marginal_split_finds_a_planted_stretch_and_shift() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(0.0, 1.5, 40_000)
    won = (rng.random(len(x)) < 1.0 / (1.0 + np.exp(-(0.7 * x + 0.4)))).astype(np.float64)
    split = marginal_split_map([_fold(x, won, np.arange(len(x)).astype(str).astype(object))])
    # the booster's log-odds are too spread: the fit shrinks them (c near 0.7) and shifts them (d near
    # 0.4), only a little short of the truth under the prior on the identity (sd 0.15)
    assert 0.65 < split.scale_ < 0.8
    assert 0.3 < split.intercept_ < 0.45


def test_a_deal_seen_in_many_snapshots_counts_as_one_deal() -> None:
    # 2,000 deals won at the booster's own odds (the identity) and one deal, lost, seen 5,000 times at
    # odds of 9 to 1 for a win: counted once it cannot pull the map away from the identity
    rng = np.random.default_rng(1)
    x = rng.normal(0.0, 1.0, 2_000)
    won = (rng.random(len(x)) < 1.0 / (1.0 + np.exp(-x))).astype(np.float64)
    x_all = np.concatenate([x, np.full(5_000, np.log(9.0))])
    won_all = np.concatenate([won, np.zeros(5_000)])
    deals = np.concatenate([np.arange(len(x)).astype(str), np.full(5_000, "stubborn")]).astype(object)
    split = marginal_split_map([_fold(x_all, won_all, deals)])
    assert abs(split.scale_ - 1.0) < 0.1 and abs(split.intercept_) < 0.1


def _stubborn(n_deals: int, seen: int) -> LagFold:
    """`n_deals` deals won at the booster's own odds, and one deal, lost, seen `seen` times at odds of 9
    to 1 for a win."""
    rng = np.random.default_rng(1)
    x = rng.normal(0.0, 1.0, n_deals)
    won = (rng.random(len(x)) < 1.0 / (1.0 + np.exp(-x))).astype(np.float64)
    deals = np.concatenate([np.arange(n_deals).astype(str), np.full(seen, "stubborn")]).astype(object)
    x_all = np.concatenate([x, np.full(seen, np.log(9.0))])
    return _fold(x_all, np.concatenate([won, np.zeros(seen)]), deals)


def test_weighing_snapshots_alike_lets_a_deal_seen_often_pull_the_split() -> None:
    # the same data as above: with every snapshot weighing the same, the lost deal's 5,000 snapshots
    # are 5,000 of 7,000 and drag the won share down (d well below 0), in both round 16 fits
    fold = _stubborn(2_000, 5_000)
    for split in (marginal_split_map([fold], per_snapshot=True), lag_split_snapshots_map([fold.rows])):
        assert split.intercept_ < -0.5


def test_deals_seen_equally_often_fit_as_if_each_counted_once() -> None:
    # every deal seen in 3 snapshots: weighing snapshots alike (3 deals' worth spread over 9) is the same
    # as each deal counting once, so round 16's fits give round 15's (c, d)
    rng = np.random.default_rng(2)
    x = np.repeat(rng.normal(0.0, 1.5, 3_000), 3)
    won = np.repeat((rng.random(3_000) < 0.5).astype(np.float64), 3)
    fold = _fold(x, won, np.repeat(np.arange(3_000).astype(str), 3).astype(object))
    per_deal, per_snapshot = marginal_split_map([fold]), marginal_split_map([fold], per_snapshot=True)
    assert abs(per_deal.scale_ - per_snapshot.scale_) < 1e-4
    assert abs(per_deal.intercept_ - per_snapshot.intercept_) < 1e-4
    training, rows_alike = pooled_split_map([fold.rows]), lag_split_snapshots_map([fold.rows])
    assert abs(training.scale_ - rows_alike.scale_) < 1e-4
    assert abs(training.intercept_ - rows_alike.intercept_) < 1e-4


def test_the_split_on_the_first_two_periods_leaves_later_periods_as_the_booster_gives_them() -> None:
    split = OutcomeSplitCalibrator()
    split.scale_, split.intercept_ = 1.0, np.log(3.0)  # won against lost 1:1 becomes 3:1
    # two deals, four periods each: half the closes won, closing with chance 0.4 in every period
    hazards = np.tile([0.6, 0.2, 0.2], (8, 1))
    mapped = FirstPeriodsSplitMap(split, 2, n_periods=4).transform(hazards)
    period = np.tile([1, 2, 3, 4], 2)
    np.testing.assert_allclose(mapped[:, OPEN], 0.6)
    np.testing.assert_allclose(mapped[period <= 2, WON], 0.3)  # 0.4 closing, three in four won
    np.testing.assert_allclose(mapped[period <= 2, LOST], 0.1)
    np.testing.assert_allclose(mapped[period > 2, WON], 0.2)
    np.testing.assert_allclose(mapped[period > 2, LOST], 0.2)


def test_the_split_on_period_one_alone_leaves_period_two_on_as_the_booster_gives_them() -> None:
    split = OutcomeSplitCalibrator()
    split.scale_, split.intercept_ = 1.0, np.log(3.0)  # won against lost 1:1 becomes 3:1
    hazards = np.tile([0.6, 0.2, 0.2], (6, 1))  # two deals, three periods each
    mapped = FirstPeriodsSplitMap(split, 1, n_periods=3).transform(hazards)
    period = np.tile([1, 2, 3], 2)
    np.testing.assert_allclose(mapped[:, OPEN], 0.6)
    np.testing.assert_allclose(mapped[period == 1, WON], 0.3)
    np.testing.assert_allclose(mapped[period > 1, WON], 0.2)
    np.testing.assert_allclose(mapped[period > 1, LOST], 0.2)


def test_the_pooled_interval_pairs_the_histories_draw_by_draw() -> None:
    # each history's draws straddle zero, but they move against each other draw by draw: every pooled
    # draw is -0.003, so the pooled interval is that point (pooling each history's sorted draws instead
    # would give -0.007, -0.003, +0.001 and an interval over zero)
    first, second = [-0.006, -0.002, 0.002], [0.000, -0.004, -0.008]
    pooled = pooled_delta([-0.002, -0.004], [first, second])
    assert pooled.n_histories == 2
    assert pooled.mean == pytest.approx(-0.003)
    assert (pooled.ci_low, pooled.ci_high) == (pytest.approx(-0.003), pytest.approx(-0.003))
    assert round19_verdict(pooled, worse_beyond=0, auc_lower_beyond=0, missing=0) == "PASSES"


def test_a_pooled_interval_over_zero_fails_the_rule() -> None:
    # two draws per history, -0.004 and +0.004 in both: the 2.5th and 97.5th percentiles of the pooled
    # draws lie 2.5 % of the way in from each end, at -0.0038 and +0.0038
    pooled = pooled_delta([-0.001, -0.001], [[-0.004, 0.004], [-0.004, 0.004]])
    assert (pooled.ci_low, pooled.ci_high) == (pytest.approx(-0.0038), pytest.approx(0.0038))
    assert round19_verdict(pooled, worse_beyond=0, auc_lower_beyond=0, missing=0) == "fails"


def test_round_19_fails_on_any_history_worse_and_waits_for_missing_ones() -> None:
    below = PooledDelta(mean=-0.003, ci_low=-0.005, ci_high=-0.001, n_histories=6)
    assert round19_verdict(below, worse_beyond=0, auc_lower_beyond=0, missing=0) == "PASSES"
    assert round19_verdict(below, worse_beyond=1, auc_lower_beyond=0, missing=0) == "fails"
    assert round19_verdict(below, worse_beyond=0, auc_lower_beyond=1, missing=0) == "fails"
    assert round19_verdict(below, worse_beyond=0, auc_lower_beyond=0, missing=2) == "undecided"


def test_the_paired_draws_are_bootstrap_comparisons_own_in_draw_order() -> None:
    rng = np.random.default_rng(3)
    deals = np.repeat(np.arange(150).astype(str), 3)
    y = np.repeat((rng.random(150) < 0.4).astype(float), 3)
    frame = pd.DataFrame({"head": "close_probability", "y": y, "deal_id": deals,
                          "current": np.clip(0.4 + rng.normal(0.0, 0.2, len(y)), 0.01, 0.99),
                          "none": np.full(len(y), 0.4),
                          "candidate": np.clip(0.3 * y + 0.35 + rng.normal(0.0, 0.1, len(y)), 0.01, 0.99)})
    versions = ["current", "none", "candidate"]
    paired: dict[tuple[str, str, str], np.ndarray] = {}
    _, diffs = bootstrap_comparison(frame, versions, "current", n_boot=200, seed=0, draws_out=paired)
    draws = paired[("close_probability", "candidate", "ece")]
    row = diffs[(diffs["version"] == "candidate") & (diffs["metric"] == "ece")].iloc[0]
    assert len(draws) == 200 and np.std(draws) > 0
    np.testing.assert_allclose(np.nanquantile(draws, [0.025, 0.975]), [row.ci_low, row.ci_high],
                               rtol=0.0, atol=1e-12)
    # draw by draw, in order (pooling pairs histories' draws by their index): the b-th resample of deals
    # from a generator seeded 0, each deal's snapshots weighted by its count
    gen = np.random.default_rng(0)
    codes, uniques = pd.factorize(frame["deal_id"])
    for b in range(200):
        w = np.bincount(gen.integers(0, len(uniques), len(uniques)), minlength=len(uniques))[codes]
        ece = {v: comparison.weighted_metrics(y, frame[v].to_numpy(), w.astype(float))["ece"]
               for v in ("current", "candidate")}
        assert draws[b] == pytest.approx(ece["candidate"] - ece["current"], abs=1e-12)


def _planted_closes(n: int = 4000) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Closing rows (with open ones among them) whose wins follow a stretch 1.4 and a shift 0.5 of the
    booster's won-against-lost log-odds; deals of two rows each."""
    rng = np.random.default_rng(5)
    x = rng.normal(0.0, 1.0, n)
    share = 1.0 / (1.0 + np.exp(-x))
    raw = np.column_stack([np.full(n, 0.6), 0.4 * share, 0.4 * (1.0 - share)])
    won = rng.random(n) < 1.0 / (1.0 + np.exp(-(1.4 * x + 0.5)))
    target = np.where(rng.random(n) < 0.3, OPEN, np.where(won, WON, LOST))
    return raw, target, np.repeat(np.arange(n // 2).astype(str), 2)


def test_the_shift_prior_alone_tightens_and_training_fit_is_the_default() -> None:
    raw, target, deals = _planted_closes()
    w = closing_deal_weights(target, deals)
    assert np.all(w[target == OPEN] == 0.0)
    # with d's prior as c's, the weighted fit is training's own (each closing deal counting once)
    same = weighted_split_map(raw, target, w)
    training = OutcomeSplitCalibrator().fit(raw, target, groups=deals)
    assert same.scale_ == pytest.approx(training.scale_, abs=1e-4)
    assert same.intercept_ == pytest.approx(training.intercept_, abs=1e-4)
    # a tighter prior on d pulls d toward 0; a very tight one (sd 0.002) gives the stretch fitted alone
    tight = weighted_split_map(raw, target, w, shift_sd=0.05)
    assert 0.0 < tight.intercept_ < training.intercept_ - 0.1
    held = weighted_split_map(raw, target, w, shift_sd=0.002)
    stretch = OutcomeSplitCalibrator(fit_shift=False).fit(raw, target, groups=deals)
    assert held.intercept_ == pytest.approx(0.0, abs=0.005)
    assert held.scale_ == pytest.approx(stretch.scale_, abs=0.01)


def test_round_20_also_fails_a_90_day_delta_worse_beyond_its_pooled_interval() -> None:
    below = PooledDelta(mean=-0.003, ci_low=-0.005, ci_high=-0.001, n_histories=6)
    straddling = PooledDelta(mean=0.001, ci_low=-0.001, ci_high=0.003, n_histories=6)
    above = PooledDelta(mean=0.002, ci_low=0.0005, ci_high=0.004, n_histories=6)
    assert round20_verdict(below, straddling, worse_beyond=0, auc_lower_beyond=0, missing=0) == "PASSES"
    assert round20_verdict(below, below, worse_beyond=0, auc_lower_beyond=0, missing=0) == "PASSES"
    assert round20_verdict(below, above, worse_beyond=0, auc_lower_beyond=0, missing=0) == "fails"
    # the close delta's own interval over zero fails it, whatever the 90-day delta does
    assert round20_verdict(straddling, below, worse_beyond=0, auc_lower_beyond=0, missing=0) == "fails"
    assert round20_verdict(below, straddling, worse_beyond=1, auc_lower_beyond=0, missing=0) == "fails"
    assert round20_verdict(below, straddling, worse_beyond=0, auc_lower_beyond=1, missing=0) == "fails"
    assert round20_verdict(below, straddling, worse_beyond=0, auc_lower_beyond=0, missing=1) == "undecided"
