"""Forecast of won amount per calendar month from open deals' close probabilities.

Each open deal is an independent Bernoulli close with its `close_probability`; if it closes it brings its
`amount`. A deal belongs to the calendar month of its `expected_close_date`, in UTC (a date sent as
2025-03-31T23:30:00-05:00 is April):
- month 1 is the month that contains `as_of` (from `as_of` to the month's end), month 2 the next, ...;
- deals already overdue (expected close before `as_of`) are counted in month 1: they are still open, so
  the nearest period is where they can still land;
- deals without an expected close date go to their own "unscheduled" bucket;
- deals due after the last month are summed in "later" (expected value only, no quantiles).

The expected won amount is exact (sum of amount × p). P10/P50/P90 are quantiles of the won amount as the
inverse CDF (the smallest outcome whose cumulative probability reaches the level, so each is an amount
the period can actually reach): exact by enumeration for up to `EXACT_MAX_DEALS` deals, else by a seeded
Monte-Carlo draw done as a matrix in chunks.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

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


def _simulated_quantiles(
    amounts: np.ndarray, probs: np.ndarray, n_sims: int, rng: np.random.Generator
) -> list[float]:
    """Inverse-CDF quantiles of the won amount from `n_sims` seeded draws (chunked matrix draws)."""
    chunk = max(1, min(n_sims, MAX_CHUNK_CELLS // max(1, len(amounts))))
    totals = np.empty(n_sims, dtype=float)
    probs32 = probs.astype(np.float32)
    for start in range(0, n_sims, chunk):
        stop = min(n_sims, start + chunk)
        # float32 uniforms halve the cost of the draw; p's resolution of 2**-24 is far below any model's.
        wins = rng.random((stop - start, len(amounts)), dtype=np.float32) < probs32[None, :]
        totals[start:stop] = wins @ amounts
    return [float(v) for v in np.quantile(totals, QUANTILES, method="inverted_cdf")]


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


def forecast(
    scored_open_deals: pd.DataFrame,
    as_of: pd.Timestamp | str,
    months: int = 3,
    n_sims: int = DEFAULT_SIMS,
    seed: int = 0,
    exact_max_deals: int = EXACT_MAX_DEALS,
) -> dict[str, Any]:
    """Per calendar month from `as_of`: expected won amount of open deals due then, with P10/P50/P90.

    `scored_open_deals` has one row per open deal with `amount`, `expected_close_date` (UTC, NaT when
    unknown) and `close_probability` in [0, 1]. Returns `{"as_of", "months", "method", "note", "periods":
    [{"period": "YYYY-MM", "start", "end", "deals", "overdue_deals", "pipeline_amount",
    "expected_won_amount", "p10", "p50", "p90"}], "total": {...} (all the months together, its own
    quantiles), "unscheduled": {...}, "later": {...}}`.
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

    first_month = pd.Period(t.tz_localize(None), freq="M")
    months_ahead = (due.dt.year - t.year) * 12 + (due.dt.month - t.month)
    offset = months_ahead.to_numpy(dtype="float64", na_value=np.nan)
    # Month index = calendar months from as_of's month to the due month; overdue deals land in month 1.
    overdue = (due < t).fillna(False).to_numpy(dtype=bool)
    offset = np.where(overdue, 0.0, offset)
    scheduled = ~np.isnan(offset)

    periods = []
    for k in range(months):  # a loop over months (a handful), never over deals
        in_k = scheduled & (offset == k)
        period = first_month + k
        start = t if k == 0 else period.start_time.tz_localize("UTC")
        end = (period + 1).start_time.tz_localize("UTC")
        summary = _bucket_summary(amounts[in_k], probs[in_k], n_sims, rng, exact_max_deals)
        periods.append(
            {
                "period": str(period),
                "start": start.isoformat(),
                "end": end.isoformat(),
                **summary,
                "overdue_deals": int((in_k & overdue).sum()),
            }
        )
    later = scheduled & (offset >= months)
    unscheduled = ~scheduled
    # The months together: quantiles of a sum are not sums of quantiles, so the total is its own draw.
    shown = scheduled & (offset < months)
    total = _bucket_summary(amounts[shown], probs[shown], n_sims, rng, exact_max_deals)
    return {
        "as_of": t.isoformat(),
        "months": months,
        "method": f"exact up to {exact_max_deals} deals per period, else {n_sims} seeded simulations",
        "note": OVERDUE_NOTE,
        "periods": periods,
        "total": {**total, "overdue_deals": int((shown & overdue).sum())},
        "unscheduled": _bucket_summary(
            amounts[unscheduled], probs[unscheduled], n_sims, rng, exact_max_deals
        ),
        "later": {
            "deals": int(later.sum()),
            "pipeline_amount": float(amounts[later].sum()),
            "expected_won_amount": float((amounts[later] * probs[later]).sum()),
        },
    }


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
