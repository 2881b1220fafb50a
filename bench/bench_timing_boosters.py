"""The close head's hazard booster, variants side by side on one history, judged against the truth.

Same setting as `bench_hazard_maps.py` (a history simulated for twice the span and cut in the middle;
every test-window snapshot of the cut history judged against what happened next), but here the booster
itself changes: each variant is one booster fit on the training window's person-period rows, with the
hazard map training fits (`OutcomeSplitCalibrator` on the calibration window's closes) on top, so slip
risk and the likely close date are each booster's own. Round 6 of docs/models.md.

- `current`: the booster and map `training.train.fit_timing` fits (`models.timing.timing_params`), slip
  read from its 30-day curves as before round 13's adoption (the shipped slip is `slip_fine`'s since);
- `big_leaves`: leaves of at least 4 % of the rows (`min_child_samples` = rows // 25, within 20-2,000)
  instead of 1 % (at most 400): at 5,000 deals a 1 % leaf is a few dozen deals' correlated weekly rows;
- `simple_trees`: 7 leaves instead of 15, leaves of at least 2 % of the rows (rows // 50, within
  20-2,000) and an L2 penalty of 20 instead of 5: fewer interactions between features (and between the
  features and the period), each fitted on more deals;
- `period_pooled`: `periods_ahead` capped at 3 in training and scoring, so the hazards of periods 3 to
  25 (day 60 on) are one set per deal, learned from every snapshot watched that long rather than split
  period by period on the older snapshots that alone reach the later periods. Half the test window's
  expected close dates are within about 4 weeks (period 1), a quarter beyond about 8 (period 2 on; at
  cycle scale 2 about 8 and 16 weeks): a cap at 6 would leave almost every slip point as it is.

Round 10 (`--round 10`, the default) keeps the booster's settings and adds one time-varying covariate, the
expected close date relative to each period, in training and in scoring:

- `close_offset`: `close_date_offset` = days_to_close - PERIOD_DAYS * (periods_ahead - 1), the days from
  the start of the row's period to the expected close date (negative when the date is behind the period,
  NaN without a date), so "the date falls in this period" is one split instead of an interaction;
- `close_position`: the same, bucketed: -1 the date is before the period, 0 inside it, 1 after it (NaN
  without a date).

Round 11 (`--round 11`) keeps the close head as it is and replaces how slip risk is made: a DIRECT slip
head, one LightGBM binary classifier of "still open at the expected close date" (`fit_direct_slip`):

- training rows: the training window's snapshots whose expected close date (as known at the snapshot,
  `days_to_close` d) is after the snapshot and on or before the training window's label end (d > 0 and
  d <= `observed_days`), so every one of them has a known label (1 no close within d days, 0 closed
  within them); features: the close head's columns, `days_to_close` among them; parameters as the cold
  head's (`models.heads.make_lightgbm`, `TrainConfig.lightgbm_params`, the run's seed);
- why the selection does not bias the label: whether a snapshot is kept depends only on its as_of and d,
  both known at the snapshot, never on what happened after it; d is one of the head's inputs, so for
  given features P(still open at the date | features, kept) = P(still open at the date | features) as
  long as the outcome does not depend on the calendar date itself. What the selection does change is
  the mix of d: snapshots near the window's end are kept only with near dates (a shift in covariates,
  which a model given d absorbs). Checked on each history (`selection_check` in the results): within bins
  of d, the training window's kept snapshots against the ones left out (labelled from the whole
  simulated history, which the bench has), the observed slip rate and the head's mean prediction;
- calibration: the calibration window's snapshots chosen the same way (d <= the calibration window's
  label end), mapped as the cold head is (`training.train._calibrate`: Platt below
  `TrainConfig.min_isotonic_rows` rows), on the training rows when the calibration window has fewer
  than 30 such rows or one class;
- scoring: slip_risk = the head's calibrated probability where the expected close date is after t, null
  otherwise (the rule as before); the close probability and the 90-day figure are `current`'s, unchanged
  by construction (the table shows their differences as exactly zero).

Variants (decided before any round-11 result was read): `direct_slip` (Platt, as above) and
`direct_slip_isotonic` (the same booster, an isotonic map on the same calibration rows: the only
difference is the map). Each is judged by round 6's rule below; the close ECE / AUC conditions hold
trivially (identical close scores). If both pass, round 6's tie-break chooses; the isotonic map also has
to keep resolution (issue 9: no plateaus tying a large share of deals), which the Platt map keeps.
Diagnostics (not variants; added after the round's table was read): every variant's slip error by days
to the date (`error_by_days`), the direct head before its map (`direct_slip_unmapped`) and the days to
the date of the calibration rows its map is fitted on. Round 11's verdict: docs/models.md.

Round 12 (`--round 12`) keeps the booster's settings and training's map and changes the period grid the
hazards live on. Slip is mostly S(d) read inside the first one or two 30-day periods (half the test
window's dates within about two weeks), where a constant rate over 30 days is an assumption the data may
not bear (closes gather around the date; round 11 found current errs most on the first week):

- `fine_early`: periods of 7 days for the first 8 weeks (days 0-56) and of 30 days after, out to day 776
  (`FINE_EARLY_EDGES`: 32 periods, one grid for every deal), in training (person-period rows), in the
  calibration window's rows the map is fitted on and in scoring. `periods_ahead` stays the period's
  ordinal (1-32): a tree splits on the order of a column's values only, and the start day (0, 7, ..., 56,
  86, ...) has the same order and the same 32 distinct values (each its own histogram bin), so the
  booster could not tell the two apart; the ordinal keeps the column as the shipped model spells it.
  Inside each period the hazards are spread evenly (a constant rate), as now. S(d), P(won by d), slip,
  the 90-day probability and the likely close date are read from that grid by a change of time
  (`grid_position`): day d becomes its position on the grid (k at the end of period k, linear inside each
  period, the last period's 30 days per unit past the horizon), and the shipped code
  (`models.timing.person_periods`, `TimingCurves`) runs on positions with periods of length 1, so the
  variant's code is a map of days to positions and back (`grid_days`), not a second hazard model.

The rule for round 12 is round 6's, unchanged (below), fixed before any round-12 result was read. A
diagnostic, not judged by the rule: each variant's likely close date (`likely_close`: its quartiles, the
share of test snapshots that have one within two years, and the share of those with a known outcome at
that date that had closed by it, which is 0.5 for a well-placed date).

Round 13 (`--round 13`) tests round 12's two leads, both suggested by reading round 12's table, on
histories round 12 did not see (5,000 deals seeds 6-11 at cycle scale 1 and seeds 2-3 at cycle scale 2,
20,000 deals seeds 5-7):

- `slip_fine`: two boosters in the head. The close probability, the 90-day probability and the likely
  close date are `current`'s (its 30-day booster and map, unchanged); slip risk alone is read from a
  fine_early booster and its map (fitted exactly as round 12's `fine_early`). The run checks that the
  variant's close and 90-day scores are bit-identical to current's (`close_identical_to_current`);
- `fine_deals`: the fine grid for the whole close head, as `fine_early`, with leaves holding as many
  deals as today's: `min_child_samples` = the shipped value on the history's 30-day rows (rows // 100
  within 20-400, `timing_params`) times the ratio of the fine grid's person-period rows to the 30-day
  ones, rounded (`deal_leaves`): the shipped bounds 20 and 400 scale with it, so the cap is 400 times
  that ratio. Everything else as fine_early.

The rule for round 13 is round 6's, unchanged (below), fixed before any round-13 result was read; for
slip_fine the close ECE and AUC conditions hold by construction. Beside the rule, the table counts the
5,000-deal histories with slip ECE <= 0.03 (`SLIP_TARGET`), current's against each variant's.

Each variant's `gain_share` (its booster's split gain on the period index, days_to_close and the new column)
and training's raw close rates by where the date lies (`training_close_rates_by_date_position`) are
written beside the figures, to tell an unused column from a used one that changes nothing.

Per variant and target (close probability, won within 90 days, slip): ECE, the shared-outcome noise
floor, mean predicted minus observed, ROC AUC, and the ECE and AUC minus `current`'s with a 95 %
interval from 200 paired resamples of test deals (`models.comparison.bootstrap_comparison`).

The adoption rule, fixed before any result was read (round 6): a variant replaces `current` only if, on
every history measured, its slip ECE and close ECE are not worse beyond the interval and its close AUC
is not lower beyond it, and its slip ECE is better beyond the interval on more histories than it is
worse on; if several pass, the one better on most histories, then the lowest mean slip ECE at 5,000
deals.

Run: .venv/bin/python bench/bench_timing_boosters.py --deals 5000 --seed 0 --cycle-scale 1 [--round N]
Writes bench/results/timing_boosters_r<round>_<deals>_seed<seed>_cs<scale>.json (round 6:
bench/results/timing_boosters_<deals>_seed<seed>_cs<scale>.json).
`--table FILE...` prints the round's table from such files and applies its adoption rule.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bench.common import RESULTS, machine
from features.build import FeatureBuilder
from features.labels import slip_label, won_label, won_within_label
from models.calibration import Calibrator, ece_noise_floor, expected_calibration_error
from models.comparison import bootstrap_comparison
from models.heads import make_lightgbm
from models.timing import (
    FINE_EARLY_EDGES,
    LIKELY_CLOSE_MAX_DAYS,
    PERIOD_DAYS,
    PERIOD_FEATURE,
    OutcomeSplitCalibrator,
    TimingCurves,
    TimingModel,
    expand_frame,
    fit_hazard_booster,
    grid_days,
    grid_person_periods,
    grid_position,
    likely_close_days,
    slip_risk,
    timing_params,
)
from training.metrics import binary_metrics
from training.simulate import simulate_history
from training.snapshots import make_snapshots
from training.train import TrainConfig, _calibrate, fit_timing, positive_proba, prepare_training_data

SPAN_DAYS = 730
N_BOOT = 200
TARGETS = ("close_probability", "close_probability_90d", "slip_risk")
# name -> (parameters over training's, leaf share: min_child_samples = rows // share or None, period cap,
# period-relative close date column: None, "offset" or "position")
Variant = tuple[dict[str, Any], int | None, int | None, str | None]
ROUNDS: dict[int, dict[str, Variant]] = {
    6: {
        "big_leaves": ({}, 25, None, None),
        "simple_trees": ({"num_leaves": 7, "reg_lambda": 20.0}, 50, None, None),
        "period_pooled": ({}, None, 3, None),
    },
    10: {
        "close_offset": ({}, None, None, "offset"),
        "close_position": ({}, None, None, "position"),
    },
}
RELATIVE_COLUMNS = {"offset": "close_date_offset", "position": "close_date_position"}
ROUNDS[11] = {}
# round -> direct slip heads beside current: name -> calibration map ("cold" = as the cold head's map)
SLIP_HEADS: dict[int, dict[str, str]] = {11: {"direct_slip": "cold", "direct_slip_isotonic": "isotonic"}}
# round 12: a period grid other than the shipped 30-day one, by variant (period k covers days
# (edges[k-1], edges[k]]): `models.timing.FINE_EARLY_EDGES`, 7-day periods to day 56, then 30-day ones to
# day 776 (the slip model's grid since round 13's adoption)
ROUNDS[12] = {"fine_early": ({}, None, None, None)}
GRIDS: dict[str, np.ndarray] = {"fine_early": FINE_EARLY_EDGES}
# round 13: slip from a fine_early booster, the rest current's; the fine grid with leaves of today's deals
ROUNDS[13] = {"slip_fine": ({}, None, None, None), "fine_deals": ({}, None, None, None)}
GRIDS.update(slip_fine=FINE_EARLY_EDGES, fine_deals=FINE_EARLY_EDGES)
SLIP_ONLY = {"slip_fine"}  # variants whose booster gives slip risk only
DEAL_LEAVES = {"fine_deals"}  # variants whose leaves hold as many deals as the 30-day booster's
SLIP_TARGET = 0.03
SELECTION_BINS = (0.0, 7.0, 30.0, 60.0, 120.0, np.inf)
LATE_DAYS = 120


def slip_rows(frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """The snapshots a direct slip head can learn from, and their label: the expected close date is after
    the snapshot and on or before its window's label end (0 < days_to_close <= observed_days), so the
    label (1 still open at the date, 0 closed before it) is known. Kept on as_of and the date alone."""
    d = frame["days_to_close"].to_numpy(dtype=np.float64)
    keep = np.isfinite(d) & (d > 0) & (d <= frame["observed_days"].to_numpy(dtype=np.float64))
    closed_before = frame["event_days"].to_numpy(dtype=np.float64) <= d  # NaN (no close) compares False
    return keep, np.where(closed_before, 0.0, 1.0)[keep]


def fit_direct_slip(train: pd.DataFrame, cols: list[str], config: TrainConfig) -> Any:
    """One LightGBM binary head of "still open at the expected close date" on the training window's
    snapshots whose date falls inside it (`slip_rows`), sized and seeded as the cold head is."""
    keep, y = slip_rows(train)
    rows = train[keep]
    model = make_lightgbm(len(rows), int(y.sum()), {"n_jobs": config.n_jobs, **config.lightgbm_params})
    model.set_params(random_state=config.seed)
    return model.fit(rows[cols], y)


def calibrate_direct_slip(
    model: Any, train: pd.DataFrame, cal: pd.DataFrame, cols: list[str], config: TrainConfig, method: str
) -> Calibrator:
    """The map of a direct slip head on the calibration window's snapshots whose date falls inside it (the
    training rows when there are under 30 or one class), as the cold head's (`method` "cold") or isotonic."""
    keep, y = slip_rows(cal)
    rows = cal[keep]
    if len(rows) < 30 or np.unique(y).size < 2:
        keep, y = slip_rows(train)
        rows = train[keep]
    raw = positive_proba(model, rows[cols])
    if method == "cold":
        return _calibrate(raw, y, config.min_isotonic_rows)
    return Calibrator("isotonic").fit(raw, y)


def _selection_check(
    full: Any, train: pd.DataFrame, train_end: pd.Timestamp, model: Any, cols: list[str]
) -> list[dict[str, Any]]:
    """Within bins of days to the date, the training window's snapshots a direct slip head learns from
    (`kept_before`: as_of more than LATE_DAYS before the window's end, `kept_late`: within them) against
    those left out (date after the window's end, as_of within the bin's days of the end), all labelled
    from the whole simulated history: how many, the observed slip rate and the head's raw mean
    prediction. Left-out snapshots unlike the kept ones of their own time (`kept_late`) would be a
    selection bias; unlike the earlier ones only, a change over time. Also checks that the kept ones'
    labels are those the whole history gives."""
    d = train["days_to_close"].to_numpy(dtype=np.float64)
    late = (train["as_of"] > train_end - pd.Timedelta(days=LATE_DAYS)).to_numpy(dtype=bool)
    keep, y_kept = slip_rows(train)
    y_full = slip_label(full, train[["deal_id", "as_of"]], d).to_numpy(dtype=np.float64)
    if not np.array_equal(y_kept, y_full[keep]):
        raise AssertionError("a kept snapshot's slip label differs from the whole history's")
    raw = positive_proba(model, train[cols])
    rows = []
    for lo, hi in zip(SELECTION_BINS[:-1], SELECTION_BINS[1:], strict=True):
        in_bin = (d > lo) & (d <= hi) & np.isfinite(y_full)
        groups = (("kept_before", in_bin & keep & ~late), ("kept_late", in_bin & keep & late),
                  ("left_out", in_bin & ~keep))
        for name, sel in groups:
            n = int(sel.sum())
            rows.append({"days": [lo, None if np.isinf(hi) else hi], "rows": name, "n": n,
                         "observed": float(y_full[sel].mean()) if n else None,
                         "raw_predicted": float(raw[sel].mean()) if n else None})
    return rows


def deal_leaves(grid_rows: int, period_rows: int) -> int:
    """`min_child_samples` for a booster on `grid_rows` person-period rows whose leaves hold as many deals
    as the shipped booster's on the same history's `period_rows` 30-day rows: the shipped value
    (`timing_params`: rows // 100 within 20-400) scaled by the ratio of the rows, bounds and all."""
    shipped = int(timing_params(period_rows, 0)["min_child_samples"])
    return int(round(shipped * grid_rows / period_rows))


def read_curves(
    curves: TimingCurves, edges: np.ndarray | None, days_to_close: np.ndarray
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Close probability, 90-day probability and slip risk, and the likely close date in days (NaN past two
    years), from curves on the grid `edges` (on positions, periods of length 1), or on the shipped grid."""
    if edges is None:
        scores = {"close_probability": curves.p_won(), "close_probability_90d": curves.won_within(90.0),
                  "slip_risk": slip_risk(curves, days_to_close)}
        return scores, likely_close_days(curves)
    scores = {"close_probability": curves.p_won(),
              "close_probability_90d": curves.won_within(grid_position(90.0, edges)),
              "slip_risk": slip_risk(curves, grid_position(days_to_close, edges))}
    days = grid_days(curves.days_to_closed(0.5), edges)
    return scores, np.where(days <= LIKELY_CLOSE_MAX_DAYS, days, np.nan)


def _likely_close_summary(days: np.ndarray, closed_by: np.ndarray) -> dict[str, Any]:
    """The likely close date's quartiles (days), the share of snapshots that have one, and the share closed
    by it among those whose outcome at that date is known (`closed_by`: 1 closed, 0 open, NaN unknown)."""
    has = np.isfinite(days)
    known = has & np.isfinite(closed_by)
    return {"days_quartiles": np.percentile(days[has], [25, 50, 75]).tolist() if has.any() else None,
            "share_with_date": float(has.mean()), "n_known": int(known.sum()),
            "closed_by_date": float(closed_by[known].mean()) if known.any() else None}


def _relative_close(days_to_close: pd.Series, period: pd.Series, kind: str) -> np.ndarray:
    """The expected close date relative to the period: days from its start to the date (`offset`), or
    -1 / 0 / 1 for before / inside / after it (`position`); NaN without a date."""
    start = PERIOD_DAYS * (period.to_numpy(dtype=np.float64) - 1.0)
    offset = days_to_close.to_numpy(dtype=np.float64) - start
    if kind == "offset":
        return offset
    position = np.where(offset < 0.0, -1.0, np.where(offset < PERIOD_DAYS, 0.0, 1.0))
    return np.where(np.isnan(offset), np.nan, position)


def _design(
    frame: pd.DataFrame, cols: list[str], cap: int | None, rel: str | None, edges: np.ndarray | None = None
) -> tuple[pd.DataFrame, Any]:
    pp = grid_person_periods(frame, edges)
    x = expand_frame(frame, cols, pp)
    if rel is not None:
        x[RELATIVE_COLUMNS[rel]] = _relative_close(x["days_to_close"], x[PERIOD_FEATURE], rel)
    if cap is not None:
        x[PERIOD_FEATURE] = np.minimum(x[PERIOD_FEATURE], float(cap))
    return x, pp


def _raw_hazards(
    booster: Any, x: pd.DataFrame, cap: int | None, rel: str | None, n_periods: int
) -> np.ndarray:
    """As `TimingModel.raw_hazards` on a feature frame, with the period index capped at `cap` and the
    period-relative close date column `rel` added."""
    if cap is None and rel is None:
        return TimingModel(booster, n_periods=n_periods).raw_hazards(x)
    n = len(x)
    added = {PERIOD_FEATURE, *RELATIVE_COLUMNS.values()}
    names = [c for c in booster.feature_name() if c not in added]
    design = x[names].iloc[np.repeat(np.arange(n), n_periods)].reset_index(drop=True)
    design[PERIOD_FEATURE] = np.tile(np.arange(1, n_periods + 1, dtype=np.float64), n)
    if rel is not None:
        design[RELATIVE_COLUMNS[rel]] = _relative_close(design["days_to_close"], design[PERIOD_FEATURE], rel)
    if cap is not None:
        design[PERIOD_FEATURE] = np.minimum(design[PERIOD_FEATURE], float(cap))
    design = design[booster.feature_name()]
    return np.asarray(booster.predict(design), dtype=np.float64).reshape(n, n_periods, 3)


def _close_rates_by_position(x: pd.DataFrame, target: np.ndarray) -> list[dict[str, Any]]:
    """Training's person-period rows of periods 1-3 by where the expected close date lies (before, inside,
    after the period, or none): how many, and the share won and lost in the period (the raw hazards)."""
    position = _relative_close(x["days_to_close"], x[PERIOD_FEATURE], "position")
    period = x[PERIOD_FEATURE].to_numpy(dtype=np.float64)
    rows = []
    for k in (1.0, 2.0, 3.0):
        for name, value in (("before", -1.0), ("inside", 0.0), ("after", 1.0), ("none", np.nan)):
            sel = (period == k) & (np.isnan(position) if np.isnan(value) else position == value)
            n = int(sel.sum())
            rows.append({"period": int(k), "date": name, "rows": n,
                         "won": float((target[sel] == 1).mean()) if n else None,
                         "lost": float((target[sel] == 2).mean()) if n else None})
    return rows


def _gain_shares(booster: Any) -> dict[str, float]:
    """Share of the booster's total split gain taken by the period index, days_to_close and the
    period-relative column (when it has one)."""
    gain = dict(zip(booster.feature_name(), booster.feature_importance("gain"), strict=True))
    total = float(sum(gain.values())) or 1.0
    names = [PERIOD_FEATURE, "days_to_close", *RELATIVE_COLUMNS.values()]
    return {c: round(float(gain[c]) / total, 4) for c in names if c in gain}


def _mean_error_sd(p: np.ndarray, y: np.ndarray, deals: np.ndarray, n_boot: int = N_BOOT) -> float:
    """Standard deviation of mean(p - y) over resamples of deals (a deal's snapshots drawn together)."""
    codes, uniq = pd.factorize(pd.Series(deals))
    err = np.bincount(codes, weights=p - y, minlength=len(uniq))
    count = np.bincount(codes, minlength=len(uniq)).astype(float)
    rng = np.random.default_rng(0)
    draws = [np.bincount(rng.integers(0, len(uniq), len(uniq)), minlength=len(uniq)) for _ in range(n_boot)]
    return float(np.std([(w @ err) / (w @ count) for w in draws]))


def _error_by_days(p: np.ndarray, y: np.ndarray, days: np.ndarray) -> list[dict[str, Any]]:
    """Slip's mean predicted minus observed in bins of days to the expected close date (SELECTION_BINS)."""
    rows = []
    for lo, hi in zip(SELECTION_BINS[:-1], SELECTION_BINS[1:], strict=True):
        sel = np.isfinite(y) & np.isfinite(p) & (days > lo) & (days <= hi)
        n = int(sel.sum())
        rows.append({"days": [lo, None if np.isinf(hi) else hi], "n": n,
                     "predicted_minus_observed": float(p[sel].mean() - y[sel].mean()) if n else None})
    return rows


def _target_metrics(p: np.ndarray, y: np.ndarray, deal_ids: np.ndarray) -> dict[str, Any]:
    """One target's figures on the test snapshots where both the score and the truth are known."""
    keep = np.isfinite(y) & np.isfinite(p)
    return {
        "n": int(keep.sum()),
        "n_deals": int(pd.Series(deal_ids[keep]).nunique()),
        "ece": expected_calibration_error(p[keep], y[keep]),
        "ece_noise_floor_deals": ece_noise_floor(p[keep], groups=deal_ids[keep]),
        "mean_predicted_minus_observed": float(p[keep].mean() - y[keep].mean()),
        # its spread over resamples of test deals: how far the test deals' own luck moves it
        "mean_predicted_minus_observed_sd": _mean_error_sd(p[keep], y[keep], deal_ids[keep]),
        "roc_auc": binary_metrics(y[keep], p[keep])["roc_auc"],
    }


def run(
    deals: int, seed: int, cycle_scale: float, variants: dict[str, Variant],
    slip_heads: dict[str, str] | None = None,
) -> dict[str, Any]:
    start = pd.Timestamp("2024-01-01", tz="UTC")
    cut_at = start + pd.Timedelta(days=SPAN_DAYS)
    full = simulate_history(2 * deals, seed=seed, start=str(start.date()),
                            end=str((cut_at + pd.Timedelta(days=SPAN_DAYS)).date()), cycle_scale=cycle_scale)
    cut = full.cut(cut_at)
    config = TrainConfig(seed=seed)
    builder = FeatureBuilder().fit(cut)
    data = prepare_training_data(cut, config, builder=builder)
    frame, cols = data.frame, data.feature_columns
    train = frame[frame["window"] == "train"]
    cal = frame[frame["window"] == "calibration"]

    points = make_snapshots(cut)
    points = points[points["as_of"] > cut.end_time - pd.Timedelta(days=90)].reset_index(drop=True)
    feats = builder.transform(cut, points)
    due = pd.to_datetime(feats["expected_close_date"], utc=True)
    days_to_close = ((due - points["as_of"]).dt.total_seconds() / 86_400.0).to_numpy(dtype=float)
    truth = {
        "close_probability": won_label(full, points).to_numpy(dtype=float),
        "close_probability_90d": won_within_label(full, points, 90).to_numpy(dtype=float),
        "slip_risk": slip_label(full, points, days_to_close).to_numpy(dtype=float),
    }
    deal_ids = points["deal_id"].to_numpy(dtype=object)
    valid_days = days_to_close[np.isfinite(days_to_close) & (days_to_close > 0)]

    out: dict[str, Any] = {"deals_in_training_history": len(cut.deals), "cycle_scale": cycle_scale,
                           "test_snapshots": len(points),
                           "days_to_expected_close_quartiles":
                               np.percentile(valid_days, [25, 50, 75]).tolist(),
                           "variants": {}}
    scored: dict[str, dict[str, np.ndarray]] = {}
    base_params = {"n_jobs": config.n_jobs, "random_state": config.seed, **config.timing_params}
    cal_groups_all = cal["deal_id"].to_numpy(dtype=object)
    boosters: dict[str, Variant] = {"current": ({}, None, None, None), **variants}
    likely_by: dict[str, np.ndarray] = {}
    for name, (extra, leaf_share, cap, rel) in boosters.items():
        t0 = time.perf_counter()
        edges = GRIDS.get(name)
        x_train, pp = _design(train, cols, cap, rel, edges)
        n_events = int((pp.target != 0).sum())
        if name == "current":
            out["training_close_rates_by_date_position"] = _close_rates_by_position(x_train, pp.target)
        if name == "current":
            timing = fit_timing(train, cal, cols, config)  # exactly what training fits
            booster, calibrator = timing.booster, timing.calibrator
            params = timing_params(len(x_train), n_events, base_params)
        else:
            params = {**base_params, **extra}
            if leaf_share is not None:
                params["min_child_samples"] = int(np.clip(len(x_train) // leaf_share, 20, 2000))
            if name in DEAL_LEAVES:
                params["min_child_samples"] = deal_leaves(len(x_train), out["variants"]["current"]
                                                          ["training_rows"])
            booster = fit_hazard_booster(x_train, pp.target, params)
            params = timing_params(len(x_train), n_events, params)
            x_cal, pp_cal = _design(cal, cols, cap, rel, edges)
            calibrator = OutcomeSplitCalibrator()
            if len(pp_cal.row):
                raw_cal = np.asarray(booster.predict(x_cal), dtype=np.float64)
                calibrator.fit(raw_cal, pp_cal.target, groups=cal_groups_all[pp_cal.row])
        fit_seconds = time.perf_counter() - t0
        if edges is None:
            model = TimingModel(booster, calibrator)
        else:
            model = TimingModel(booster, calibrator, period_days=1.0, n_periods=len(edges) - 1)
        raw = _raw_hazards(booster, feats[cols], cap, rel, model.n_periods)
        n, k = raw.shape[:2]
        curves = TimingCurves(calibrator.transform(raw.reshape(n * k, 3)).reshape(n, k, 3), model.period_days)
        scores, likely = read_curves(curves, edges, days_to_close)
        if name in SLIP_ONLY:  # the close head's other figures stay current's
            scores = {**scored["current"], "slip_risk": scores["slip_risk"]}
            likely = likely_by["current"]
        likely_by[name] = likely
        closed_by = 1.0 - slip_label(full, points, likely).to_numpy(dtype=float)
        result: dict[str, Any] = {
            "training_rows": len(x_train), "training_events": n_events,
            "min_child_samples": int(params["min_child_samples"]), "num_leaves": int(params["num_leaves"]),
            "n_estimators": int(params["n_estimators"]),
            "reg_lambda": float(params["reg_lambda"]), "period_cap": cap, "relative_close": rel,
            "period_edges": None if edges is None else edges.tolist(),
            "likely_close": _likely_close_summary(likely, closed_by),
            "map": calibrator.to_dict(), "gain_share": _gain_shares(booster),
            "fit_seconds": round(fit_seconds, 1),
        }
        if name in SLIP_ONLY:
            result["slip_only"] = True
            result["close_identical_to_current"] = all(
                np.array_equal(scores[t], scored["current"][t], equal_nan=True)
                for t in ("close_probability", "close_probability_90d"))
        for target, p in scores.items():
            result[target] = _target_metrics(p, truth[target], deal_ids)
        out["variants"][name] = result
        scored[name] = scores
    if slip_heads:
        t0 = time.perf_counter()
        slip_model = fit_direct_slip(train, cols, config)
        fit_seconds = time.perf_counter() - t0
        keep, y_kept = slip_rows(train)
        out["selection_check"] = _selection_check(full, train, data.split.train_end, slip_model, cols)
        raw_test = positive_proba(slip_model, feats[cols])
        valid = np.isfinite(days_to_close) & (days_to_close > 0)
        booster = slip_model.booster_
        gain = dict(zip(booster.feature_name(), booster.feature_importance("gain"), strict=True))
        for name, method in slip_heads.items():
            calibrator = calibrate_direct_slip(slip_model, train, cal, cols, config, method)
            p_slip = np.where(valid, calibrator.transform(raw_test), np.nan)
            scores = {**scored["current"], "slip_risk": p_slip}
            params = slip_model.get_params()
            result = {
                "training_rows": int(keep.sum()), "training_events": int(y_kept.sum()),
                "calibration_rows": int(slip_rows(cal)[0].sum()),
                "min_child_samples": int(params["min_child_samples"]),
                "num_leaves": int(params["num_leaves"]),
                "n_estimators": int(params["n_estimators"]), "reg_lambda": float(params["reg_lambda"]),
                "period_cap": None, "relative_close": None, "map": calibrator.to_dict(),
                "distinct_slip_values": int(np.unique(p_slip[valid]).size),
                "gain_share": {"days_to_close": round(float(gain["days_to_close"])
                                                      / (float(sum(gain.values())) or 1.0), 4)},
                "fit_seconds": round(fit_seconds, 1),
            }
            for target, p in scores.items():
                result[target] = _target_metrics(p, truth[target], deal_ids)
            out["variants"][name] = result
            scored[name] = scores
        # a diagnostic, not a variant: the head before its map
        p_raw = np.where(valid, raw_test, np.nan)
        sel = np.isfinite(truth["slip_risk"]) & np.isfinite(p_raw)
        out["direct_slip_unmapped"] = {
            "ece": expected_calibration_error(p_raw[sel], truth["slip_risk"][sel]),
            "mean_predicted_minus_observed": float(p_raw[sel].mean() - truth["slip_risk"][sel].mean()),
            "error_by_days": _error_by_days(p_raw, truth["slip_risk"], days_to_close),
        }
        days_cal = cal["days_to_close"].to_numpy(dtype=np.float64)[slip_rows(cal)[0]]
        out["direct_slip_calibration_days_quartiles"] = np.percentile(days_cal, [25, 50, 75, 100]).tolist()
    for name, scores in scored.items():
        out["variants"][name]["slip_risk"]["error_by_days"] = _error_by_days(
            scores["slip_risk"], truth["slip_risk"], days_to_close)
    for target, y in truth.items():
        keep = np.isfinite(y) & np.all([np.isfinite(s[target]) for s in scored.values()], axis=0)
        frame_t = pd.DataFrame({"head": target, "y": y[keep], "deal_id": deal_ids[keep],
                                **{name: s[target][keep] for name, s in scored.items()}})
        _, diffs = bootstrap_comparison(frame_t, list(scored), "current", n_boot=N_BOOT, seed=0)
        for row in diffs[diffs["metric"].isin(["ece", "roc_auc"])].itertuples():
            out["variants"][row.version][target][f"{row.metric}_minus_current"] = {
                "difference": row.difference, "ci_low": row.ci_low, "ci_high": row.ci_high}
    return out


def _label(r: dict[str, Any]) -> str:
    return f"{r['deals']:,}, {r['seed']}" + (", cycle 2" if r["cycle_scale"] != 1 else "")


def _verdict(d: dict[str, float], higher_is_better: bool = False) -> int:
    """+1 better beyond the interval, -1 worse beyond it, 0 within."""
    if d["ci_low"] > 0:
        return 1 if higher_is_better else -1
    if d["ci_high"] < 0:
        return -1 if higher_is_better else 1
    return 0


def table(paths: list[Path]) -> None:
    """The round's markdown table from result files, and the adoption rule applied to each variant."""
    runs = [json.loads(p.read_text()) for p in paths]
    print("| deals, seed | booster | close AUC | Δ AUC | close ECE | Δ close | 90-day ECE | Δ 90-day "
          "| slip ECE [floor] | Δ slip | slip: predicted − observed |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")

    def iv(d: dict[str, float]) -> str:
        text = f"{d['difference']:+.3f} ({d['ci_low']:+.3f}, {d['ci_high']:+.3f})"
        return text.replace("-", "−")

    for r in runs:
        for i, (name, v) in enumerate(r["variants"].items()):
            c, n90, s = v["close_probability"], v["close_probability_90d"], v["slip_risk"]
            cells = [_label(r) if i == 0 else "", name.replace("_", " "),
                     f"{c['roc_auc']:.3f}", iv(c["roc_auc_minus_current"]) if name != "current" else "",
                     f"{c['ece']:.3f}", iv(c["ece_minus_current"]) if name != "current" else "",
                     f"{n90['ece']:.3f}", iv(n90["ece_minus_current"]) if name != "current" else "",
                     f"{s['ece']:.3f} [{s['ece_noise_floor_deals']:.3f}]",
                     iv(s["ece_minus_current"]) if name != "current" else "",
                     f"{s['mean_predicted_minus_observed']:+.3f}".replace("-", "−")]
            print("| " + " | ".join(cells) + " |")
    print()
    names = [n for n in runs[0]["variants"] if n != "current"]
    for name in names:
        slip = [_verdict(r["variants"][name]["slip_risk"]["ece_minus_current"]) for r in runs]
        close = [_verdict(r["variants"][name]["close_probability"]["ece_minus_current"]) for r in runs]
        auc = [_verdict(r["variants"][name]["close_probability"]["roc_auc_minus_current"], True)
               for r in runs]
        n90 = [_verdict(r["variants"][name]["close_probability_90d"]["ece_minus_current"]) for r in runs]
        better, worse = slip.count(1), slip.count(-1)
        passes = worse == 0 and -1 not in close and -1 not in auc and better > worse
        small = [r["variants"][name]["slip_risk"]["ece"] for r in runs if r["deals"] <= 5000]
        print(f"{name}: slip better/worse beyond interval {better}/{worse}; close ECE worse on "
              f"{close.count(-1)}, better on {close.count(1)}; AUC worse on {auc.count(-1)}; 90-day worse on "
              f"{n90.count(-1)}, better on {n90.count(1)}; mean slip ECE at 5,000 deals "
              f"{np.mean(small):.4f}; {'PASSES' if passes else 'fails'} the rule")
    cur = [r["variants"]["current"]["slip_risk"]["ece"] for r in runs if r["deals"] <= 5000]
    print(f"current: mean slip ECE at 5,000 deals {np.mean(cur):.4f}")
    for name in ["current", *names]:
        small = [r["variants"][name]["slip_risk"]["ece"] for r in runs if r["deals"] <= 5000]
        print(f"{name}: slip ECE <= {SLIP_TARGET} on {sum(e <= SLIP_TARGET for e in small)} of {len(small)} "
              "histories at 5,000 deals")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--deals", type=int, default=5000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cycle-scale", type=float, default=1.0)
    parser.add_argument("--round", type=int, choices=sorted(ROUNDS), default=10,
                        help="which round's variants to fit beside current")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--table", type=Path, nargs="+", default=None,
                        help="print the table and the rule's verdict from these result files")
    args = parser.parse_args()
    if args.table:
        table(args.table)
        return
    started = time.perf_counter()
    body = run(args.deals, args.seed, args.cycle_scale, ROUNDS[args.round], SLIP_HEADS.get(args.round))
    result = {"deals": args.deals, "seed": args.seed, "round": args.round, **body,
              "seconds": round(time.perf_counter() - started, 1), "machine": machine()}
    prefix = "timing_boosters" if args.round == 6 else f"timing_boosters_r{args.round}"
    out = args.out or RESULTS / f"{prefix}_{args.deals}_seed{args.seed}_cs{args.cycle_scale:g}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, default=str) + "\n")
    for name, v in result["variants"].items():
        brief = {t: {k: round(x, 4) for k, x in v[t].items() if isinstance(x, float)} for t in TARGETS}
        print(json.dumps({"booster": name, "min_child_samples": v["min_child_samples"], **brief}))
    print(f"written to {out} in {result['seconds']} s")


if __name__ == "__main__":
    main()
