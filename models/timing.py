"""When a deal closes, and how: a discrete-time competing-risks model of winning and losing.

Time after a snapshot at t is cut into periods of `period_days` (30). For period k the model gives the
probability that a deal still open at the start of the period is won in it, lost in it, or still open
at its end: the hazards h_won(k), h_lost(k) and h_open(k) = 1 - h_won(k) - h_lost(k). One LightGBM
multiclass booster learns them from "person-period" rows: every training snapshot is repeated once per
period it was watched, with the period index as an extra feature, and the row's class is what happened
in that period. A deal still open when its window's data ends contributes the periods it was seen open
(class "open") and nothing after: it is censored, not dropped and not counted as lost. This is what makes
the estimate unbiased when many deals are still open at the end of the data; a label that drops them
keeps only the deals that closed fast.

From the hazards, per deal (S is the probability of being still open):
  S(k) = prod_{j<=k} h_open(j);  P(won by k) = sum_{j<=k} S(j-1) h_won(j)
  close_probability     = P(won by K) + S(K) h_won(K) / (h_won(K) + h_lost(K))
the last term being the tail after the horizon K (`n_periods`): the last period's hazards are taken to
hold from then on, so the tail is a geometric series with that closed form. Inside a period the hazards
are spread evenly in time (a constant rate), so S and P(won by d) are defined for any day d, which is
how the 90-day probability, the slip risk at an expected close date and the likely close date are read.

Slip risk is read from a second model of the same kind (`TimingModel.slip`, round 13 of docs/models.md),
fitted the same way on a finer grid (`FINE_EARLY_EDGES`: 7-day periods to day 56, 30-day ones after):
its rows and curves are on grid positions (`grid_position`), periods of length 1, so the code above
serves any grid. Models saved without one read slip from their own 30-day curves.

Calibration is done on the hazards, not on the final probability. Training's map is
`OutcomeSplitCalibrator`: the probability of closing in each period stays the booster's, and the share
won among closes is a logistic map of the booster's log-odds of won against lost, fitted on the
calibration window's closes. `HazardCalibrator` (a multinomial logistic map of both log-odds against
open, fitted on all of that window's person-period rows) was the map before; bundles that carry it
still load and score as they did. Both maps are smooth and monotone, so scores keep their resolution
(no isotonic plateaus).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import lightgbm as lgb
import numpy as np
import pandas as pd
from numpy.typing import ArrayLike, NDArray

# LightGBM's thread count for a prediction: a number (0: its default), or a function of the number of
# person-period rows the prediction scores, for callers that choose by size before the rows are known
Threads = int | Callable[[int], int]
PERIOD_DAYS = 30.0
N_PERIODS = 25  # 750 days: past the two-year limit of `likely_close_date`
LIKELY_CLOSE_MAX_DAYS = 730.0
PERIOD_FEATURE = "periods_ahead"
# The slip booster's period grid (round 13 of docs/models.md): period k covers days (edges[k-1], edges[k]],
# 7-day periods to day 56, then 30-day ones to day 776 (32 periods, one grid for every deal)
FINE_EARLY_EDGES = np.concatenate([np.arange(0.0, 57.0, 7.0), 56.0 + 30.0 * np.arange(1.0, 25.0)])
OPEN, WON, LOST = 0, 1, 2
EVENT_CLASSES = {"won": WON, "lost": LOST}
_EPS = 1e-9

# Each deal appears in many weekly snapshots and each snapshot in many periods, so the person-period rows
# of one deal are far from independent: few, small trees with large leaves keep the booster from
# memorising deals (on simulated histories, 250 trees of 31 leaves gave an ECE of 0.05 on later
# snapshots, 100 trees of 15 leaves with 400-row leaves 0.026, and a better AUC).
DEFAULT_TIMING_PARAMS: dict[str, Any] = {
    "objective": "multiclass",
    "num_class": 3,
    "n_estimators": 100,
    "learning_rate": 0.05,
    "num_leaves": 15,
    "min_child_samples": 400,
    "subsample": 0.8,
    "subsample_freq": 1,
    "colsample_bytree": 0.8,
    "reg_lambda": 5.0,
    "max_cat_to_onehot": 8,
    "cat_smooth": 10.0,
    "verbose": -1,
    "deterministic": True,
    "force_row_wise": True,
}


@dataclass(frozen=True)
class PersonPeriods:
    """Person-period rows: `row` indexes the snapshot, `period` is 1-based, `target` OPEN/WON/LOST."""

    row: NDArray[np.int64]
    period: NDArray[np.float64]
    target: NDArray[np.int64]


def person_periods(
    event: ArrayLike,
    event_days: ArrayLike,
    observed_days: ArrayLike,
    period_days: float = PERIOD_DAYS,
    n_periods: int = N_PERIODS,
) -> PersonPeriods:
    """Expand snapshots into one row per period each was watched (vectorised, no loop over deals).

    Only periods a snapshot was watched for in full count (`observed_days`, the time from as_of to the
    end of its window's data, is known whatever the outcome): a closed snapshot gives "open" rows for the
    periods before the close and a won or lost row for the period it closed in; a snapshot still open at
    the end, or that closed in a period cut short by the end of the data, gives "open" rows for the full
    periods it was watched. Counting closes in a cut-short period while dropping the deals that stayed
    open in it would overstate the hazards (only the fast closers fit in it). Rows after `n_periods` are
    not made: the last period's hazard stands for the tail.
    """
    ev = pd.Series(pd.array(np.asarray(event, dtype=object), dtype="string")).fillna("")
    cls = ev.map(EVENT_CLASSES).fillna(OPEN).to_numpy(dtype=np.int64)
    days = np.asarray(event_days, dtype=np.float64)
    watched = np.asarray(observed_days, dtype=np.float64)
    k_event = np.maximum(1.0, np.ceil(np.where(cls != OPEN, days, 0.0) / period_days))
    k_watched = np.floor(np.maximum(watched, 0.0) / period_days)
    closed = (cls != OPEN) & (k_event <= k_watched)
    n_rows = np.minimum(np.where(closed, k_event, k_watched), n_periods).astype(np.int64)
    row = np.repeat(np.arange(len(cls), dtype=np.int64), n_rows)
    starts = np.repeat(np.cumsum(n_rows) - n_rows, n_rows)
    period = (np.arange(n_rows.sum(), dtype=np.int64) - starts + 1).astype(np.float64)
    target = np.zeros(len(row), dtype=np.int64)
    # the close is the last row of its snapshot, when it happened inside the horizon
    last = np.cumsum(n_rows) - 1
    hit = closed & (k_event <= n_periods) & (n_rows > 0)
    target[last[hit]] = cls[hit]
    return PersonPeriods(row, period, target)


def grid_position(days: ArrayLike, edges: NDArray[np.float64]) -> NDArray[np.float64]:
    """Days after t as a position on the period grid `edges` (0 at t, k at the end of period k, linear in
    days inside each period, the last period's length per unit past the horizon); NaN stays NaN, days
    before t give 0. With periods of length 1 on positions, the hazard code runs on any grid."""
    d = np.asarray(days, dtype=np.float64)
    k = len(edges) - 1
    pos = np.interp(d, edges, np.arange(k + 1, dtype=np.float64))
    past = (d - edges[-1]) / (edges[-1] - edges[-2])
    return np.asarray(np.where(d > edges[-1], k + past, pos), dtype=np.float64)  # NaN stays NaN


def grid_days(position: ArrayLike, edges: NDArray[np.float64]) -> NDArray[np.float64]:
    """The inverse of `grid_position`: days after t at a position on the grid."""
    pos = np.asarray(position, dtype=np.float64)
    k = len(edges) - 1
    days = np.interp(pos, np.arange(k + 1, dtype=np.float64), edges)
    return np.asarray(np.where(pos > k, edges[-1] + (pos - k) * (edges[-1] - edges[-2]), days),
                      dtype=np.float64)


def grid_person_periods(frame: pd.DataFrame, edges: NDArray[np.float64] | None) -> PersonPeriods:
    """`person_periods` of a frame's close events on the grid `edges` (positions, periods of length 1),
    or on the 30-day grid when None."""
    if edges is None:
        return person_periods(frame["event"], frame["event_days"], frame["observed_days"])
    return person_periods(frame["event"], grid_position(frame["event_days"], edges),
                          grid_position(frame["observed_days"], edges), period_days=1.0,
                          n_periods=len(edges) - 1)


def horizon_rows(n_deals: int, n_periods: int) -> tuple[NDArray[np.int64], NDArray[np.float64]]:
    """Person-period rows of `n_deals` deals over every period of the horizon, each deal's periods in
    turn (the layout of `TimingModel.raw_hazards` and `curves`): each row's deal and 1-based period."""
    rows = np.repeat(np.arange(n_deals, dtype=np.int64), n_periods)
    periods = np.tile(np.arange(1, n_periods + 1, dtype=np.float64), n_deals)
    return rows, periods


def expand_frame(frame: pd.DataFrame, feature_columns: list[str], pp: PersonPeriods) -> pd.DataFrame:
    """The person-period design frame: the snapshot's features (dtypes kept) plus the period index."""
    x = frame[feature_columns].iloc[pp.row].reset_index(drop=True)
    x[PERIOD_FEATURE] = pp.period
    return x


def timing_params(n_rows: int, n_events: int, params: dict[str, Any] | None = None) -> dict[str, Any]:
    """LightGBM multiclass parameters, smaller and more regularised on little data."""
    out = dict(DEFAULT_TIMING_PARAMS)
    out["min_child_samples"] = int(max(20, min(400, n_rows // 100)))
    if n_events < 2_000:
        scale = float(np.clip(np.log1p(n_events) / np.log1p(2_000), 0.0, 1.0))
        out.update(
            n_estimators=int(round(40 + 60 * scale**2)),
            num_leaves=int(max(4, round(15 * scale**2))),
            reg_lambda=float(1.0 + 20.0 * (1.0 - scale)),
            min_data_per_group=int(max(10, min(100, n_rows // 20))),
            cat_smooth=float(10.0 + 40.0 * (1.0 - scale)),
        )
    if params:
        out.update(params)
    return out


def fit_hazard_booster(
    design: pd.DataFrame, target: NDArray[np.int64], params: dict[str, Any] | None = None
) -> lgb.Booster:
    """Fit the multiclass hazard model on a person-period design frame; returns its booster."""
    n_events = int((target != OPEN).sum())
    model = lgb.LGBMClassifier(**timing_params(len(design), n_events, params))
    model.fit(design, target)
    return model.booster_


def _log_odds(proba: NDArray[np.float64]) -> NDArray[np.float64]:
    p = np.clip(proba, _EPS, 1.0)
    return np.log(p[:, 1:] / p[:, [0]])


class HazardCalibrator:
    """Recalibration of the three per-period probabilities on a later window: softmax over
    (0, a * z_won + b_won, a * z_lost + b_lost), z being the booster's log-odds of won and lost against
    open; identity at a = 1, b = 0.

    Three parameters, fitted by penalised maximum likelihood with a Gaussian prior (sd `prior_sd`)
    centred on the identity, and each deal's rows weighted to count as one deal: the rows of a deal's
    weekly snapshots are far from independent, and a calibration window of a few weeks must not bend a
    model trained on a year on the strength of a handful of deals.
    """

    def __init__(self, prior_sd: float = 0.15) -> None:
        self.prior_sd = prior_sd
        self.scale_ = 1.0
        self.intercept_ = np.zeros(2)

    def fit(
        self, proba: NDArray[np.float64], target: ArrayLike, groups: ArrayLike | None = None,
        min_rows: int = 100,
    ) -> HazardCalibrator:
        """Fit on person-period rows (censored snapshots' open periods included); `groups` (the deal of
        each row) sets the weights. Stays the identity below `min_rows` rows."""
        from scipy.optimize import minimize

        y = np.asarray(target, dtype=np.int64)
        if len(y) < min_rows:
            return self
        z = _log_odds(proba)
        if groups is None:
            w = np.ones(len(y))
        else:
            codes, _ = pd.factorize(pd.Series(np.asarray(groups, dtype=object)))
            w = 1.0 / np.bincount(codes)[codes]
        onehot = np.eye(3)[y]
        identity = np.array([1.0, 0.0, 0.0])
        var = self.prior_sd**2

        def loss(theta: NDArray[np.float64]) -> tuple[float, NDArray[np.float64]]:
            a, b = theta[0], theta[1:]
            logits = np.column_stack([np.zeros(len(y)), a * z + b])
            logits -= logits.max(axis=1, keepdims=True)
            p = np.exp(logits)
            p /= p.sum(axis=1, keepdims=True)
            nll = -float(np.sum(w * np.log(np.clip(p[np.arange(len(y)), y], 1e-300, None))))
            resid = (p - onehot)[:, 1:] * w[:, None]  # d nll / d logits (won, lost)
            grad = np.array([np.sum(resid * z), *resid.sum(axis=0)])
            dev = theta - identity
            return nll + 0.5 * float(dev @ dev) / var, grad + dev / var

        res = minimize(loss, identity, jac=True, method="L-BFGS-B")
        if res.success and np.all(np.isfinite(res.x)):
            self.scale_ = float(res.x[0])
            self.intercept_ = np.asarray(res.x[1:], dtype=np.float64)
        return self

    def transform(self, proba: NDArray[np.float64], period: ArrayLike | None = None) -> NDArray[np.float64]:
        """The mapped probabilities of person-period rows; the same map in every period (`period`, each
        row's, is taken so that every hazard map is called alike, and not read)."""
        z = self.scale_ * _log_odds(proba) + self.intercept_
        logits = np.column_stack([np.zeros(len(z)), z])
        logits -= logits.max(axis=1, keepdims=True)
        e = np.exp(logits)
        return np.asarray(e / e.sum(axis=1, keepdims=True), dtype=np.float64)

    def to_dict(self) -> dict[str, Any]:
        return {"method": "vector_scaling", "prior_sd": self.prior_sd, "scale": self.scale_,
                "intercept": self.intercept_.tolist()}

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> HazardCalibrator:
        cal = cls(prior_sd=float(raw.get("prior_sd", 0.15)))
        cal.scale_ = float(raw["scale"])
        cal.intercept_ = np.asarray(raw["intercept"], dtype=np.float64).reshape(2)
        return cal


class OutcomeSplitCalibrator:
    """Recalibration of the outcome only: the probability of closing in each period stays the booster's
    (h_won + h_lost = 1 - h_open as given), and the share won among what closes is mapped:
    sigmoid(c * (z_won - z_lost) + d), z as in `HazardCalibrator`; identity at c = 1, d = 0.

    Fitted on the calibration window's rows that close (won or lost), each closing deal's rows counting
    as one deal, with a Gaussian prior (sd `prior_sd`) centred on the identity; `fit_scale=False` keeps
    c at 1 and fits the shift alone, `fit_shift=False` keeps d at 0 and fits the stretch alone (round 20
    of docs/models.md: d may carry the calibration window's chance excess of wins or losses). Slip
    risk and the likely close date are therefore the booster's own; the close probability and the
    90-day probability change through the split.

    `n_first` is where the map applies: every period ahead when None (training's default, and every map
    saved before the field), else periods 1 to `n_first` only, later ones keeping the booster's won share
    (rounds 17-18 of docs/models.md: the split is fitted on a 60-day window's closes, all in period 1).
    It does not change what is fitted, only `transform`, which then needs each row's period.
    """

    method = "outcome_split"

    def __init__(self, prior_sd: float = 0.15, fit_scale: bool = True, n_first: int | None = None,
                 fit_shift: bool = True) -> None:
        if n_first is not None and n_first < 1:
            raise ValueError(f"n_first must be None (every period) or at least 1, not {n_first}")
        self.prior_sd = prior_sd
        self.fit_scale = fit_scale
        self.fit_shift = fit_shift
        self.n_first = n_first
        self.scale_ = 1.0
        self.intercept_ = 0.0

    def fit(
        self, proba: NDArray[np.float64], target: ArrayLike, groups: ArrayLike | None = None,
        min_rows: int = 100,
    ) -> OutcomeSplitCalibrator:
        """Fit on person-period rows (the open ones are left out: they say nothing about the split);
        `groups` (the deal of each row) sets the weights. Stays the identity below `min_rows` rows."""
        from scipy.optimize import minimize

        y_all = np.asarray(target, dtype=np.int64)
        if len(y_all) < min_rows:
            return self
        closes = y_all != OPEN
        if not closes.any():
            return self
        z = _log_odds(np.asarray(proba, dtype=np.float64)[closes])
        x = z[:, 0] - z[:, 1]
        y = (y_all[closes] == WON).astype(np.float64)
        if groups is None:
            w = np.ones(len(y))
        else:
            codes, _ = pd.factorize(pd.Series(np.asarray(groups, dtype=object)[closes]))
            w = 1.0 / np.bincount(codes)[codes]
        identity = np.array([1.0, 0.0])
        free = np.array([self.fit_scale, self.fit_shift], dtype=np.float64)  # 0: held at the identity
        var = self.prior_sd**2

        def loss(theta: NDArray[np.float64]) -> tuple[float, NDArray[np.float64]]:
            c, d = np.where(free > 0, theta, identity)
            eta = c * x + d
            # -log sigmoid(eta) for wins, -log sigmoid(-eta) for losses
            nll = float(np.sum(w * np.logaddexp(0.0, np.where(y > 0, -eta, eta))))
            resid = w * (1.0 / (1.0 + np.exp(-eta)) - y)
            dev = (theta - identity) * free
            grad = np.array([np.sum(resid * x), np.sum(resid)]) * free
            return nll + 0.5 * float(dev @ dev) / var, grad + dev / var

        res = minimize(loss, identity, jac=True, method="L-BFGS-B")
        if res.success and np.all(np.isfinite(res.x)):
            self.scale_, self.intercept_ = (float(v) for v in np.where(free > 0, res.x, identity))
        return self

    def transform(self, proba: NDArray[np.float64], period: ArrayLike | None = None) -> NDArray[np.float64]:
        """The mapped probabilities of person-period rows; `period` (each row's, 1-based, as the booster
        was given it) is needed when the map applies to the first `n_first` periods only: rows after
        them are returned as given."""
        p = np.asarray(proba, dtype=np.float64)
        if self.n_first is None:
            return self._split(p)
        if period is None:
            raise ValueError(f"this outcome split applies to the first {self.n_first} periods only: "
                             "transform needs each row's period")
        first = np.asarray(period, dtype=np.float64) <= self.n_first
        out = p.copy()
        out[first] = self._split(p[first])
        return out

    def _split(self, p: NDArray[np.float64]) -> NDArray[np.float64]:
        z = _log_odds(p)
        share = 1.0 / (1.0 + np.exp(-(self.scale_ * (z[:, 0] - z[:, 1]) + self.intercept_)))
        closes = np.clip(1.0 - p[:, OPEN], 0.0, 1.0)
        out = np.empty_like(p)
        out[:, OPEN] = 1.0 - closes
        out[:, WON] = closes * share
        out[:, LOST] = closes - out[:, WON]
        return out

    def to_dict(self) -> dict[str, Any]:
        out = {"method": self.method, "prior_sd": self.prior_sd, "fit_scale": self.fit_scale,
               "scale": self.scale_, "intercept": self.intercept_}
        # each only when not its default, so a map fitted as before is written as it always was
        if not self.fit_shift:
            out["fit_shift"] = False
        return out if self.n_first is None else {**out, "n_first": self.n_first}

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> OutcomeSplitCalibrator:
        """The map back from `to_dict`; without `n_first` (every map saved before it) every period,
        without `fit_shift` the shift fitted (as every map saved before it was)."""
        n_first = raw.get("n_first")
        cal = cls(prior_sd=float(raw.get("prior_sd", 0.15)), fit_scale=bool(raw.get("fit_scale", True)),
                  n_first=None if n_first is None else int(n_first),
                  fit_shift=bool(raw.get("fit_shift", True)))
        cal.scale_ = float(raw["scale"])
        cal.intercept_ = float(raw["intercept"])
        return cal


HazardMap = HazardCalibrator | OutcomeSplitCalibrator


def hazard_map_from_dict(raw: dict[str, Any]) -> HazardMap:
    """A hazard map back from its JSON; bundles written before the method field was told apart (and
    every "vector_scaling" one) read as `HazardCalibrator`."""
    if raw.get("method") == OutcomeSplitCalibrator.method:
        return OutcomeSplitCalibrator.from_dict(raw)
    return HazardCalibrator.from_dict(raw)


@dataclass
class TimingCurves:
    """Per-deal hazards over the horizon and what follows from them (arrays have one row per deal)."""

    hazards: NDArray[np.float64]  # (n, K, 3): open, won, lost per period
    period_days: float

    def __post_init__(self) -> None:
        h_open = np.clip(self.hazards[:, :, OPEN], _EPS, 1.0 - _EPS)
        n = h_open.shape[0]
        self.survival = np.concatenate([np.ones((n, 1)), np.cumprod(h_open, axis=1)], axis=1)  # (n, K+1)
        won_in = self.survival[:, :-1] * self.hazards[:, :, WON]
        self.won_by = np.concatenate([np.zeros((n, 1)), np.cumsum(won_in, axis=1)], axis=1)  # (n, K+1)

    @property
    def n_periods(self) -> int:
        return int(self.hazards.shape[1])

    def p_won(self) -> NDArray[np.float64]:
        """P(eventually won): won within the horizon, plus the geometric tail after it."""
        last = self.hazards[:, -1, :]
        share = last[:, WON] / np.maximum(last[:, WON] + last[:, LOST], _EPS)
        return np.clip(self.won_by[:, -1] + self.survival[:, -1] * share, 0.0, 1.0)

    def _at(self, days: NDArray[np.float64]) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        """(P(still open), P(won)) at `days` after t, per deal; a constant rate inside each period, the
        last period's hazards past the horizon."""
        n, k_max = self.hazards.shape[0], self.n_periods
        d = np.maximum(np.nan_to_num(np.asarray(days, dtype=np.float64), nan=0.0), 0.0)
        pos = d / self.period_days
        k = np.minimum(np.floor(pos).astype(np.int64), k_max - 1)  # 0-based period index containing d
        frac = pos - k  # within the period; beyond the horizon it keeps growing (the tail)
        rows = np.arange(n)
        s0 = self.survival[rows, k]
        w0 = self.won_by[rows, k]
        h = self.hazards[rows, k, :]
        h_open = np.clip(h[:, OPEN], _EPS, 1.0 - _EPS)
        s = s0 * h_open**frac
        won = w0 + (s0 - s) * h[:, WON] / np.maximum(1.0 - h_open, _EPS)
        return s, np.clip(won, 0.0, 1.0)

    def open_at(self, days: ArrayLike) -> NDArray[np.float64]:
        """P(still open) `days` after t."""
        return self._at(np.asarray(days, dtype=np.float64))[0]

    def won_within(self, days: ArrayLike) -> NDArray[np.float64]:
        """P(won within `days` after t)."""
        return self._at(np.asarray(days, dtype=np.float64))[1]

    def days_to_closed(self, level: float = 0.5) -> NDArray[np.float64]:
        """Days after t by which P(won or lost) first reaches `level` (may lie in the tail)."""
        target = 1.0 - level
        s = self.survival
        n, k_max = self.hazards.shape[0], self.n_periods
        below = s[:, 1:] <= target
        reached = below.any(axis=1)
        k = np.where(reached, below.argmax(axis=1), k_max - 1)  # 0-based period where S crosses
        rows = np.arange(n)
        s0 = s[rows, k]
        h_open = np.clip(self.hazards[rows, k, OPEN], _EPS, 1.0 - _EPS)
        # s0 * h_open**f = target  ->  f = log(target / s0) / log(h_open)
        frac = np.log(target / s0) / np.log(h_open)
        return np.asarray((k + np.maximum(frac, 0.0)) * self.period_days, dtype=np.float64)


class TimingModel:
    """The hazard booster, its calibrator and the period grid; `curves(x)` scores an encoded matrix.

    The grid is `n_periods` periods of `period_days`, or, with `edges`, the periods between those days
    (the curves are then on grid positions: `period_days` 1, days read through `grid_position`). `slip`,
    when present, is a second model (on `FINE_EARLY_EDGES`) that slip risk alone is read from; without it
    (bundles written before round 13's adoption) slip comes from this model's own curves.
    """

    def __init__(
        self,
        booster: lgb.Booster,
        calibrator: HazardMap | None = None,
        period_days: float = PERIOD_DAYS,
        n_periods: int = N_PERIODS,
        edges: ArrayLike | None = None,
        slip: TimingModel | None = None,
    ) -> None:
        self.booster = booster
        self.calibrator: HazardMap = calibrator or HazardCalibrator()
        self.edges = None if edges is None else np.asarray(edges, dtype=np.float64)
        if self.edges is not None:
            period_days, n_periods = 1.0, len(self.edges) - 1
        self.period_days = float(period_days)
        self.n_periods = int(n_periods)
        self.slip = slip

    def raw_hazards(
        self, x: NDArray[np.float64] | pd.DataFrame, num_threads: Threads = 0
    ) -> NDArray[np.float64]:
        """Uncalibrated (n, K, 3) per-period probabilities: `x` is the bundle's encoded matrix, or a
        feature frame with the training dtypes (categoricals as pandas `category`)."""
        n, k = x.shape[0], self.n_periods
        rows, periods = horizon_rows(n, k)
        return self._predict(x, rows, periods, num_threads).reshape(n, k, 3)

    def _predict(self, x: NDArray[np.float64] | pd.DataFrame, rows: NDArray[np.int64],
                 periods: NDArray[np.float64], num_threads: Threads) -> NDArray[np.float64]:
        """The booster's uncalibrated (len(rows), 3) probabilities of the rows `rows` of `x`, each in its
        period `periods` (1-based)."""
        design: NDArray[np.float64] | pd.DataFrame
        if isinstance(x, pd.DataFrame):
            names = [c for c in self.booster.feature_name() if c != PERIOD_FEATURE]
            design = x[names].iloc[rows].reset_index(drop=True)
            design[PERIOD_FEATURE] = periods
        else:
            design = np.empty((len(rows), x.shape[1] + 1), dtype=np.float64)
            design[:, :-1] = x[rows]
            design[:, -1] = periods
        threads = num_threads(len(rows)) if callable(num_threads) else num_threads
        # (reshaped: LightGBM gives no second axis for zero rows, an empty request)
        return np.asarray(self.booster.predict(design, num_threads=threads), dtype=np.float64).reshape(-1, 3)

    def curves(self, x: NDArray[np.float64] | pd.DataFrame, num_threads: Threads = 0) -> TimingCurves:
        """Each deal's calibrated curves over the horizon; the calibrator is told each row's period, the
        one the booster was told."""
        n, k = x.shape[0], self.n_periods
        rows, periods = horizon_rows(n, k)
        raw = self._predict(x, rows, periods, num_threads)
        return TimingCurves(self.calibrator.transform(raw, periods).reshape(n, k, 3), self.period_days)

    def slip_risk(
        self, x: NDArray[np.float64] | pd.DataFrame, days_to_expected_close: ArrayLike,
        curves: TimingCurves | None = None, num_threads: Threads = 0,
    ) -> NDArray[np.float64]:
        """P(still open at the expected close date) per deal, NaN where there is none or it is not after
        t: from the slip model's curves when there is one, else from this model's (`curves`, when given,
        are this model's curves of `x`, so they need not be scored twice)."""
        if self.slip is None:
            return slip_risk(curves if curves is not None else self.curves(x, num_threads),
                             days_to_expected_close)
        return self.slip.open_at_reached(x, days_to_expected_close, num_threads)

    def open_at_reached(self, x: NDArray[np.float64] | pd.DataFrame, days: ArrayLike,
                        num_threads: Threads = 0) -> NDArray[np.float64]:
        """`slip_risk(self.curves(x), self.position(days))` to the last bit, scoring for each deal only
        the periods up to the one its day falls in (the survival there depends on no later period):
        most expected close dates are weeks away, so a few of the grid's periods instead of all of them.
        NaN where a day is missing or not after t."""
        d = np.asarray(days, dtype=np.float64)
        out = np.full(d.shape, np.nan)
        valid = np.flatnonzero(np.isfinite(d) & (d > 0))
        if len(valid) == 0:
            return out
        position = self.position(d[valid])
        # the 0-based period TimingCurves reads at `position` (the last one past the horizon), and so the
        # periods each deal needs: that one and those before it
        reached = np.minimum(np.floor(position / self.period_days).astype(np.int64), self.n_periods - 1) + 1
        rows = np.repeat(valid, reached)
        starts = np.repeat(np.cumsum(reached) - reached, reached)
        periods = np.arange(len(rows)) - starts + 1
        raw = self._predict(x, rows, periods.astype(np.float64), num_threads)
        width = int(reached.max())
        hazards = np.zeros((len(valid), width, 3))
        hazards[:, :, OPEN] = 1.0  # periods past a deal's own are never read
        mapped = self.calibrator.transform(raw, periods)
        hazards[np.repeat(np.arange(len(valid)), reached), periods - 1] = mapped
        out[valid] = TimingCurves(hazards, self.period_days).open_at(position)
        return out

    def position(self, days: ArrayLike) -> NDArray[np.float64]:
        """Days after t in this model's time: days on the 30-day grid, grid positions with `edges`."""
        if self.edges is None:
            return np.asarray(days, dtype=np.float64)
        return grid_position(days, self.edges)

    def spec(self) -> dict[str, Any]:
        """JSON-ready settings and calibrator (the booster, and the slip model's, are saved as their own
        text files); `edges` and `slip` only when there are any, so older specs read as they were."""
        out: dict[str, Any] = {
            "period_days": self.period_days,
            "n_periods": self.n_periods,
            "calibrator": self.calibrator.to_dict(),
        }
        if self.edges is not None:
            out["edges"] = self.edges.tolist()
        if self.slip is not None:
            out["slip"] = self.slip.spec()
        return out

    @classmethod
    def from_spec(
        cls, booster: lgb.Booster, spec: dict[str, Any], slip_booster: lgb.Booster | None = None
    ) -> TimingModel:
        """The model back from `spec`; a spec with a slip model needs that model's booster."""
        slip = None
        if spec.get("slip") is not None:
            if slip_booster is None:
                raise ValueError("the timing spec has a slip model but no slip booster was given")
            slip = cls.from_spec(slip_booster, spec["slip"])
        return cls(
            booster,
            hazard_map_from_dict(spec["calibrator"]),
            period_days=float(spec["period_days"]),
            n_periods=int(spec["n_periods"]),
            edges=spec.get("edges"),
            slip=slip,
        )


def likely_close_days(curves: TimingCurves) -> NDArray[np.float64]:
    """Days until P(closed) reaches 0.5, NaN when that is more than two years away."""
    days = curves.days_to_closed(0.5)
    return np.where(days <= LIKELY_CLOSE_MAX_DAYS, days, np.nan)


def slip_risk(curves: TimingCurves, days_to_expected_close: ArrayLike) -> NDArray[np.float64]:
    """P(still open at the expected close date); NaN when there is none or it is not after t."""
    d = np.asarray(days_to_expected_close, dtype=np.float64)
    valid = np.isfinite(d) & (d > 0)
    return np.where(valid, curves.open_at(np.where(valid, d, 0.0)), np.nan)


def curves_to_json(curves: TimingCurves) -> list[dict[str, Any]]:
    """Each deal's curve as JSON-ready `{"period_days", "hazards"}` (its (K, 3) hazards as lists of
    floats, which JSON carries exactly), for the live scores the store keeps."""
    return [{"period_days": curves.period_days, "hazards": h.tolist()} for h in curves.hazards]


def curves_from_json(stored: Sequence[Mapping[str, Any]]) -> TimingCurves:
    """The curves of several deals back from `curves_to_json` values (one period grid for all of them:
    the values of one model version). Bit for bit the curves they were made from."""
    if not stored:
        return TimingCurves(np.zeros((0, N_PERIODS, 3)), PERIOD_DAYS)
    grids = {float(c["period_days"]) for c in stored}
    if len(grids) != 1:
        raise ValueError(f"timing curves of different period grids cannot be read together: {sorted(grids)}")
    hazards = np.asarray([c["hazards"] for c in stored], dtype=np.float64)
    return TimingCurves(hazards, grids.pop())
