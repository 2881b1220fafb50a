"""Forecast of won amount per calendar month: open deals spread over the months by when they are likely
to be won, plus the deals not created yet.

Months are calendar months in UTC: month 1 is the month that contains `as_of` (from `as_of` to the
month's end), month 2 the next, and so on.

**Open deals, with a timing model** (`forecast_pipeline` with a competing-risks close head): each open
deal is won in month k with its probability P(won in month k) = P(won by the month's end) - P(won by its
start), read from its hazard curves, and otherwise is won later or lost. Its expected close date does not
place it; the curves say how likely each month is, so a deal that usually slips spreads over the months
after its date. Each month's won amount from open deals is then a sum of independent Bernoulli(p_k) ×
amount, whose quantiles are computed exactly (enumeration) for up to `EXACT_MAX_DEALS` deals with a
chance in that month, else from seeded simulations.

**Open deals, without one** (a stage-prior close head, or `forecast` called on scores alone): a deal is
placed in the month of its `expected_close_date` (in UTC: a date sent as 2025-03-31T23:30:00-05:00 is
April) with its `close_probability`; overdue deals count in
month 1, deals without a date go to "unscheduled".

**Deals not created yet** (`NewDealModel`, from the history as of `as_of` only): they are created at the
pipeline's rate of the last `NEW_DEAL_LOOKBACK_DAYS` days, and a deal created c days before a month's end
is won within it with the chance that a deal of that pipeline is won at that age (a life table of
won and lost deals by age in weeks, from deals created in the two years before `as_of`, deals still
open counted as censored). New deals won in month k are then a Poisson number (a thinned Poisson
creation process) with amounts drawn from the amounts of deals won before; the "new_deals" line of each
month has its own quantiles.

**Total**: open-deal and new-deal amounts are independent, so each month's "total" quantiles come from
simulating both and adding them. The expected values are exact sums. Quantiles are the inverse CDF (the
smallest outcome whose cumulative probability reaches the level), so each is an amount the month can
actually reach.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import NDArray

from features.build import FeatureBuilder
from features.health import deal_states
from features.history import DealHistory, to_utc_timestamp
from models.bundle import SCORE_COLUMNS

QUANTILES = (0.1, 0.5, 0.9)
EXACT_MAX_DEALS = 14
DEFAULT_SIMS = 20_000
# Bound on one chunk of draws (sims × deals) so a big pipeline never needs gigabytes at once.
MAX_CHUNK_CELLS = 4_000_000
REQUIRED = ("amount", "expected_close_date", "close_probability")
CONTEXT_COLUMNS = ["pipeline", "owner", "team", "stage", "amount", "expected_close_date", "stage_entered_at"]
AT_RISK_COLUMNS = [*SCORE_COLUMNS, *CONTEXT_COLUMNS, "days_in_stage"]
OVERDUE_NOTE = "deals whose expected close date is already past are counted in the first month"
TIMING_NOTE = (
    "open deals are spread over the months by their chance of being won in each; deals not created yet "
    "are their own line"
)
NEW_DEAL_LOOKBACK_DAYS = 180.0
WIN_AGE_BIN_DAYS = 7.0
WIN_AGE_MAX_DAYS = 730.0


def _exact_quantiles(amounts: np.ndarray, probs: np.ndarray) -> list[float]:
    """Inverse-CDF quantiles of the sum of independent Bernoulli(p) × amount, by enumerating outcomes."""
    n = len(amounts)
    bits = ((np.arange(2**n)[:, None] >> np.arange(n)[None, :]) & 1).astype(bool)
    totals = bits.astype(float) @ amounts
    weights = np.where(bits, probs[None, :], 1.0 - probs[None, :]).prod(axis=1)
    order = np.argsort(totals, kind="stable")
    cdf = np.cumsum(weights[order])
    # A small tolerance keeps an exact 0.5 boundary on the lower outcome despite float rounding.
    idx = np.searchsorted(cdf, np.asarray(QUANTILES) - 1e-9, side="left")
    return [float(totals[order][min(i, len(order) - 1)]) for i in idx]


def _simulated_totals(
    amounts: np.ndarray, probs: np.ndarray, n_sims: int, rng: np.random.Generator
) -> np.ndarray:
    """`n_sims` seeded draws of the won amount (sum of Bernoulli(p) × amount), as chunked matrix draws."""
    chunk = max(1, min(n_sims, MAX_CHUNK_CELLS // max(1, len(amounts))))
    totals = np.empty(n_sims, dtype=float)
    probs32 = probs.astype(np.float32)
    for start in range(0, n_sims, chunk):
        stop = min(n_sims, start + chunk)
        # float32 uniforms halve the cost of the draw; p's resolution of 2**-24 is far below any model's.
        wins = rng.random((stop - start, len(amounts)), dtype=np.float32) < probs32[None, :]
        totals[start:stop] = wins @ amounts
    return totals


def _quantiles(totals: np.ndarray) -> list[float]:
    return [float(v) for v in np.quantile(totals, QUANTILES, method="inverted_cdf")]


def _simulated_quantiles(
    amounts: np.ndarray, probs: np.ndarray, n_sims: int, rng: np.random.Generator
) -> list[float]:
    """Inverse-CDF quantiles of the won amount from `n_sims` seeded draws."""
    return _quantiles(_simulated_totals(amounts, probs, n_sims, rng))


def _bucket_summary(
    amounts: np.ndarray, probs: np.ndarray, n_sims: int, rng: np.random.Generator, exact_max_deals: int
) -> dict[str, Any]:
    if len(amounts) == 0:
        p10 = p50 = p90 = 0.0
    elif len(amounts) <= exact_max_deals:
        p10, p50, p90 = _exact_quantiles(amounts, probs)
    else:
        p10, p50, p90 = _simulated_quantiles(amounts, probs, n_sims, rng)
    return {
        "deals": len(amounts),
        "pipeline_amount": float(amounts.sum()),
        "expected_won_amount": float((amounts * probs).sum()),
        "p10": p10,
        "p50": p50,
        "p90": p90,
    }


@dataclass
class NewDealModel:
    """Deals not created yet, as learned from a history as of a time (see the module docstring)."""

    rate_per_day: float  # deals created per day over the lookback
    won_amounts: NDArray[np.float64]  # amounts a won new deal may bring (drawn with replacement)
    won_by_age: NDArray[np.float64]  # P(won by age a) at a = 0, bin, 2 bin, ... days
    bin_days: float = WIN_AGE_BIN_DAYS

    def expected_wins(self, start_days: float, end_days: float) -> float:
        """Expected number of deals created after as_of (day 0) and won in (start_days, end_days]."""
        if self.rate_per_day <= 0 or end_days <= 0:
            return 0.0
        ages = np.arange(len(self.won_by_age)) * self.bin_days
        created = np.arange(0.5, end_days, 1.0)  # creation days, one-day steps
        by_end = np.interp(end_days - created, ages, self.won_by_age)
        by_start = np.interp(np.maximum(start_days - created, 0.0), ages, self.won_by_age)
        return float(self.rate_per_day * np.sum(by_end - by_start))

    def simulate(self, expected_wins: float, n_sims: int, rng: np.random.Generator) -> np.ndarray:
        """Won amounts of new deals in one period: a Poisson number of wins, amounts drawn from the pool."""
        if expected_wins <= 0 or len(self.won_amounts) == 0:
            return np.zeros(n_sims)
        counts = rng.poisson(expected_wins, n_sims)
        draws = self.won_amounts[rng.integers(0, len(self.won_amounts), int(counts.sum()))]
        return np.bincount(np.repeat(np.arange(n_sims), counts), weights=draws, minlength=n_sims)


def fit_new_deals(history: DealHistory, as_of: pd.Timestamp | str) -> NewDealModel:
    """Creation rate, won amounts and the life table of winning by age, from what was known at `as_of`."""
    t = to_utc_timestamp(as_of)
    return new_deals_from_states(deal_states(history, t), t)


def new_deals_from_states(states: pd.DataFrame, as_of: pd.Timestamp | str) -> NewDealModel:
    """`fit_new_deals` from the deals' states as of `as_of` (created_at, status, closed_at, amount: as
    `features.health.deal_states` gives them, or the store's current-state columns when `as_of` is now)."""
    t = to_utc_timestamp(as_of)
    states = states[states["created_at"] <= t]
    age_now = (t - states["created_at"]).dt.total_seconds().to_numpy(dtype=float) / 86_400.0
    recent = age_now <= NEW_DEAL_LOOKBACK_DAYS
    span = min(NEW_DEAL_LOOKBACK_DAYS, float(age_now.max()) if len(age_now) else 0.0)
    rate = float(recent.sum() / span) if span > 0 else 0.0
    known = states[age_now <= WIN_AGE_MAX_DAYS]
    age = age_now[age_now <= WIN_AGE_MAX_DAYS]
    status = known["status"].to_numpy(dtype=object)
    closed_age = (known["closed_at"] - known["created_at"]).dt.total_seconds().to_numpy(
        dtype=float, na_value=np.nan
    ) / 86_400.0
    n_bins = int(WIN_AGE_MAX_DAYS // WIN_AGE_BIN_DAYS)
    full_bins = np.minimum(np.floor(age / WIN_AGE_BIN_DAYS), n_bins).astype(int)
    close_bin = np.floor(np.nan_to_num(closed_age, nan=1e9) / WIN_AGE_BIN_DAYS)
    # a close counts only in a fully watched age bin (as in the timing model's person-period rows)
    counted = (status != "open") & (close_bin < full_bins)
    exit_bin = np.where(counted, close_bin + 1, full_bins).astype(int)
    at_risk = np.cumsum(np.bincount(exit_bin, minlength=n_bins + 1)[::-1])[::-1][1:]  # at risk in bin j
    won_n = np.bincount(close_bin[counted & (status == "won")].astype(int), minlength=n_bins)[:n_bins]
    closed_n = np.bincount(close_bin[counted].astype(int), minlength=n_bins)[:n_bins]
    with np.errstate(invalid="ignore", divide="ignore"):
        h_won = np.where(at_risk[:n_bins] > 0, won_n / at_risk[:n_bins], 0.0)
        h_closed = np.where(at_risk[:n_bins] > 0, closed_n / at_risk[:n_bins], 0.0)
    still_open = np.concatenate([[1.0], np.cumprod(1.0 - h_closed)])
    won_by_age = np.concatenate([[0.0], np.cumsum(still_open[:-1] * h_won)])
    won_amounts = known.loc[status == "won", "amount"].to_numpy(dtype=float)
    return NewDealModel(rate, won_amounts[np.isfinite(won_amounts)], won_by_age)


def _month_edges(t: pd.Timestamp, months: int) -> list[tuple[pd.Period, pd.Timestamp, pd.Timestamp]]:
    first = pd.Period(t.tz_localize(None), freq="M")
    out = []
    for k in range(months):
        period = first + k
        start = t if k == 0 else period.start_time.tz_localize("UTC")
        out.append((period, start, (period + 1).start_time.tz_localize("UTC")))
    return out


def won_by_month(
    curves: Any, as_of: pd.Timestamp | str, months: int, lag_days: NDArray[np.float64] | None = None
) -> NDArray[np.float64]:
    """(deals × months) P(won in month k) from timing curves (`models.timing.TimingCurves`).

    `lag_days` (per deal, >= 0): the curves start that many days before `as_of` (a live score computed
    earlier); each deal is known to be still open at `as_of`, so its chances are conditioned on that.
    With no lag the arithmetic is exactly that of curves made as of `as_of`."""
    t = to_utc_timestamp(as_of)
    n = curves.hazards.shape[0]
    lag = np.zeros(n) if lag_days is None else np.maximum(np.asarray(lag_days, dtype=np.float64), 0.0)
    out = np.zeros((n, months))
    for k, (_, start, end) in enumerate(_month_edges(t, months)):
        d0 = (start - t) / pd.Timedelta(days=1)
        d1 = (end - t) / pd.Timedelta(days=1)
        out[:, k] = curves.won_within(d1 + lag) - curves.won_within(d0 + lag)
    if lag_days is not None:
        out = out / np.maximum(curves.open_at(lag), 1e-12)[:, None]
    return np.clip(out, 0.0, 1.0)


def forecast(
    scored_open_deals: pd.DataFrame,
    as_of: pd.Timestamp | str,
    months: int = 3,
    n_sims: int = DEFAULT_SIMS,
    seed: int = 0,
    exact_max_deals: int = EXACT_MAX_DEALS,
    month_probabilities: NDArray[np.float64] | None = None,
    new_deals: NewDealModel | None = None,
) -> dict[str, Any]:
    """Per calendar month from `as_of`: expected won amount with P10/P50/P90.

    `scored_open_deals` has one row per open deal with `amount`, `expected_close_date` (UTC, NaT when
    unknown) and `close_probability` in [0, 1]. With `month_probabilities` (deals × months, P(won in
    month k), from `won_by_month`) deals are spread over the months by it; without, each is placed in the
    month of its expected close date. With `new_deals`, each month also has a "new_deals" line and a
    "total" (open + new). Returns `{"as_of", "months", "method", "note", "periods": [{"period":
    "YYYY-MM", "start", "end", "deals", "overdue_deals", "pipeline_amount", "expected_won_amount", "p10",
    "p50", "p90", ["new_deals": {...}, "total": {...}]}], "unscheduled": {...}, "later": {...}}`.
    """
    if months < 1:
        raise ValueError(f"months must be at least 1, not {months}")
    missing = [c for c in REQUIRED if c not in scored_open_deals.columns]
    if missing:
        raise ValueError(f"forecast needs columns {list(REQUIRED)}; missing {missing}")
    t = to_utc_timestamp(as_of)
    rng = np.random.default_rng(seed)
    amounts = pd.to_numeric(scored_open_deals["amount"], errors="coerce").fillna(0.0).to_numpy(dtype=float)
    probs = pd.to_numeric(scored_open_deals["close_probability"], errors="coerce").to_numpy(dtype=float)
    if np.isnan(probs).any() or (probs < 0).any() or (probs > 1).any():
        raise ValueError("close_probability must be a number in [0, 1] for every deal")
    due = pd.to_datetime(scored_open_deals["expected_close_date"], utc=True)
    months_ahead = (due.dt.year - t.year) * 12 + (due.dt.month - t.month)
    offset = months_ahead.to_numpy(dtype="float64", na_value=np.nan)
    # Month index = calendar months from as_of's month to the due month; overdue deals land in month 1.
    overdue = (due < t).fillna(False).to_numpy(dtype=bool)
    offset = np.where(overdue, 0.0, offset)
    scheduled = ~np.isnan(offset)
    if month_probabilities is None:
        by_month = np.zeros((len(amounts), months))
        for k in range(months):
            by_month[:, k] = np.where(scheduled & (offset == k), probs, 0.0)
        later_p = np.where(scheduled & (offset >= months), probs, 0.0)
        unscheduled = ~scheduled
    else:
        by_month = np.asarray(month_probabilities, dtype=float)
        if by_month.shape != (len(amounts), months):
            raise ValueError(f"month_probabilities must be {len(amounts)} x {months}, not {by_month.shape}")
        later_p = np.clip(probs - by_month.sum(axis=1), 0.0, 1.0)
        unscheduled = np.zeros(len(amounts), dtype=bool)

    periods = []
    for k, (period, start, end) in enumerate(_month_edges(t, months)):  # a handful of months
        p_k = by_month[:, k]
        chance = p_k > 0 if month_probabilities is None else p_k >= 0.01
        summary = _bucket_summary(amounts[chance], p_k[chance], n_sims, rng, exact_max_deals)
        row: dict[str, Any] = {
            "period": str(period),
            "start": start.isoformat(),
            "end": end.isoformat(),
            **summary,
            "overdue_deals": int((chance & overdue).sum()) if k == 0 else 0,
        }
        # small chances below the 1% cut still count in the expected value
        row["expected_won_amount"] = float((amounts * p_k).sum())
        if new_deals is not None:
            d0, d1 = ((start - t) / pd.Timedelta(days=1), (end - t) / pd.Timedelta(days=1))
            lam = new_deals.expected_wins(d0, d1)
            new_draws = new_deals.simulate(lam, n_sims, rng)
            mean_amount = float(new_deals.won_amounts.mean()) if len(new_deals.won_amounts) else 0.0
            p10, p50, p90 = _quantiles(new_draws)
            row["new_deals"] = {"expected_deals_won": lam, "expected_won_amount": lam * mean_amount,
                                "p10": p10, "p50": p50, "p90": p90}
            open_draws = _simulated_totals(amounts, p_k, n_sims, rng)
            p10, p50, p90 = _quantiles(open_draws + new_draws)
            row["total"] = {"expected_won_amount": row["expected_won_amount"] + lam * mean_amount,
                            "p10": p10, "p50": p50, "p90": p90}
        periods.append(row)
    timing = month_probabilities is not None
    method = f"exact up to {exact_max_deals} deals per period, else {n_sims} seeded simulations"
    return {
        "as_of": t.isoformat(),
        "months": months,
        "method": ("by each deal's chance of being won in each month; " if timing else "") + method,
        "note": TIMING_NOTE if timing else OVERDUE_NOTE,
        "periods": periods,
        "unscheduled": _bucket_summary(
            amounts[unscheduled], probs[unscheduled], n_sims, rng, exact_max_deals
        ),
        "later": {
            "deals": int((later_p > 0).sum()),
            "pipeline_amount": float(amounts[later_p > 0].sum()),
            "expected_won_amount": float((amounts * later_p).sum()),
        },
    }


def forecast_pipeline(
    bundle: Any,
    history: DealHistory,
    as_of: pd.Timestamp | str,
    builder: FeatureBuilder,
    months: int = 3,
    n_sims: int = DEFAULT_SIMS,
    seed: int = 0,
) -> dict[str, Any]:
    """The forecast of `history`'s deals (give one pipeline's history for a pipeline's forecast): open
    deals scored as of `as_of` (features from the fitted `builder`) and spread by their timing curves
    when the bundle has them, plus the deals not created yet."""
    from models.scoring import open_deal_points, point_features

    t = to_utc_timestamp(as_of)
    points = open_deal_points(history, t)
    new = fit_new_deals(history, t)
    if points.empty:
        empty = pd.DataFrame({c: pd.Series(dtype="float64") for c in REQUIRED})
        return forecast(empty, t, months, n_sims, seed, month_probabilities=np.zeros((0, months)),
                        new_deals=new)
    features = point_features(history, points, builder)
    scores = bundle.score(features, top_reasons=0)
    frame = pd.DataFrame(
        {
            "amount": features["amount"].to_numpy(dtype=float),
            "expected_close_date": pd.to_datetime(features["expected_close_date"], utc=True).to_numpy(),
            "close_probability": scores["close_probability"].to_numpy(dtype=float),
        }
    )
    frame["expected_close_date"] = pd.to_datetime(frame["expected_close_date"], utc=True)
    curves = bundle.timing_curves(features)
    by_month = won_by_month(curves, t, months) if curves is not None else None
    return forecast(frame, t, months, n_sims, seed, month_probabilities=by_month, new_deals=new)


def forecast_from_scores(
    open_scores: pd.DataFrame,
    as_of: pd.Timestamp | str,
    new_deals: NewDealModel,
    months: int = 3,
    n_sims: int = DEFAULT_SIMS,
    seed: int = 0,
) -> dict[str, Any]:
    """`forecast_pipeline` from live scores kept earlier instead of scoring every open deal now.

    `open_scores`: one row per open deal (in the order `forecast_pipeline` would score them, so seeded
    simulations draw alike) with amount, expected_close_date, close_probability, scored_at (the time
    the score is as of) and timing_curve (`models.timing.curves_to_json` value, None when the model has
    no timing head: deals are then placed by their expected close date). A score made before `as_of`
    is conditioned on the deal being still open at `as_of`; with every score as of `as_of` the result
    is exactly `forecast_pipeline`'s.
    """
    t = to_utc_timestamp(as_of)
    frame = pd.DataFrame(
        {
            "amount": open_scores["amount"].to_numpy(dtype=float),
            "expected_close_date": pd.to_datetime(open_scores["expected_close_date"], utc=True),
            "close_probability": open_scores["close_probability"].to_numpy(dtype=float),
        }
    )
    stored = open_scores["timing_curve"].tolist()
    if not stored:
        return forecast(frame, t, months, n_sims, seed, month_probabilities=np.zeros((0, months)),
                        new_deals=new_deals)
    if all(c is None for c in stored):
        return forecast(frame, t, months, n_sims, seed, new_deals=new_deals)
    if any(c is None for c in stored):
        raise ValueError("scores with and without timing curves cannot be forecast together")
    from models.timing import curves_from_json

    curves = curves_from_json(stored)
    scored_at = pd.to_datetime(open_scores["scored_at"], utc=True)
    lag = np.asarray((t - scored_at) / pd.Timedelta(days=1), dtype=np.float64)
    by_month = won_by_month(curves, t, months, lag_days=lag)
    # P(won eventually | still open at as_of): the spread over the months and "later" add up to it
    lag0 = np.maximum(lag, 0.0)
    frame["close_probability"] = np.clip(
        (frame["close_probability"].to_numpy() - curves.won_within(lag0))
        / np.maximum(curves.open_at(lag0), 1e-12), 0.0, 1.0,
    )
    return forecast(frame, t, months, n_sims, seed, month_probabilities=by_month, new_deals=new_deals)


def score_open_deals(
    bundle: Any,
    history: DealHistory,
    as_of: pd.Timestamp | str,
    builder: FeatureBuilder,
    owner: str | None = None,
    team: str | None = None,
    min_amount: float | None = None,
    close_before: pd.Timestamp | str | None = None,
    top_reasons: int = 3,
) -> pd.DataFrame:
    """Open deals as of `as_of` (optionally filtered), scored and ranked by cold risk, highest first.

    Filters use each deal's values as of `as_of`: `owner`, `team`, `amount >= min_amount`, and an
    expected close date strictly before `close_before` (deals without one are left out by that filter).
    Columns: AT_RISK_COLUMNS (scores and reasons from `models.scoring.score_points`, context as of t,
    `days_in_stage`). This is the input `forecast` takes, and what the at-risk list shows.
    """
    from models.scoring import open_deal_points, score_points

    t = to_utc_timestamp(as_of)
    states = deal_states(history, t)
    keep = states["status"] == "open"
    if owner is not None:
        keep &= (states["owner"] == owner).fillna(False)
    if team is not None:
        keep &= (states["team"] == team).fillna(False)
    if min_amount is not None:
        keep &= states["amount"] >= float(min_amount)
    if close_before is not None:
        keep &= (states["expected_close_date"] < to_utc_timestamp(close_before)).fillna(False)
    states = states[keep]
    points = open_deal_points(history, t)
    points = points[points["deal_id"].isin(states["deal_id"])].reset_index(drop=True)
    if points.empty:
        return pd.DataFrame({c: pd.Series(dtype="object") for c in AT_RISK_COLUMNS})
    scored = score_points(bundle, history, points, builder, top_reasons=top_reasons)
    scored = scored[SCORE_COLUMNS].astype({"deal_id": "string"})
    out = scored.merge(states[["deal_id", *CONTEXT_COLUMNS]], on="deal_id", how="left", validate="1:1")
    out["days_in_stage"] = (t - out["stage_entered_at"]).dt.total_seconds() / 86400.0
    return out.sort_values(["cold_risk", "deal_id"], ascending=[False, True], kind="stable").reset_index(
        drop=True
    )
