"""bench/bench_timing_boosters.py's round 12 reads the shipped hazard code on another period grid (7-day
periods to day 56, 30-day ones after; `models.timing`'s grid, the shipped slip model's since round 13)
through a change of time: these check that a deal's person-period rows and its survival land in the
periods a person would put them in, and that the shipped 30-day grid gives exactly the shipped rows."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from bench.bench_timing_boosters import deal_leaves, read_curves
from models.timing import (
    FINE_EARLY_EDGES,
    LOST,
    OPEN,
    WON,
    TimingCurves,
    grid_days,
    grid_person_periods,
    person_periods,
)

DEALS = pd.DataFrame({
    # won on day 10, lost on day 70, open and watched 60 days, won on day 61 but watched 40 days only
    "event": ["won", "lost", None, "won"],
    "event_days": [10.0, 70.0, np.nan, 61.0],
    "observed_days": [200.0, 200.0, 60.0, 40.0],
})


def test_the_fine_grid_puts_each_day_in_its_week_then_its_month() -> None:
    pp = grid_person_periods(DEALS, FINE_EARLY_EDGES)
    rows = {d: (pp.period[pp.row == d].tolist(), pp.target[pp.row == d].tolist()) for d in range(4)}
    assert rows[0] == ([1.0, 2.0], [OPEN, WON])  # day 10 is in the second week
    assert rows[1] == ([float(k) for k in range(1, 10)], [OPEN] * 8 + [LOST])  # day 70: period 9, days 56-86
    assert rows[2] == ([float(k) for k in range(1, 9)], [OPEN] * 8)  # 60 days: eight full weeks
    assert rows[3] == ([float(k) for k in range(1, 6)], [OPEN] * 5)  # 40 days: five full weeks, no close
    assert len(FINE_EARLY_EDGES) - 1 == 32 and FINE_EARLY_EDGES[-1] == 776.0


def test_the_shipped_grid_gives_the_shipped_rows() -> None:
    rng = np.random.default_rng(0)
    n = 2_000
    frame = pd.DataFrame({
        "event": rng.choice(np.array(["won", "lost", None], dtype=object), n),
        "event_days": np.round(rng.uniform(0, 900, n), 1),
        "observed_days": np.round(rng.uniform(0, 900, n), 1),
    })
    frame.loc[frame["event"].isna(), "event_days"] = np.nan
    shipped = person_periods(frame["event"], frame["event_days"], frame["observed_days"])
    regridded = grid_person_periods(frame, 30.0 * np.arange(26.0))
    for name in ("row", "period", "target"):
        assert np.array_equal(getattr(shipped, name), getattr(regridded, name))


def test_survival_is_read_inside_the_week_and_the_month() -> None:
    # every period: 10 % close (all won), so S after k periods is 0.9 ** k
    hazards = np.tile([0.9, 0.1, 0.0], (1, 32, 1))
    curves = TimingCurves(hazards, period_days=1.0)
    scores, likely = read_curves(curves, FINE_EARLY_EDGES, np.array([3.5, 71.0, 0.0]))
    # day 3.5 is half of week 1; day 71 is half of period 9 (days 56-86), after eight weeks
    assert scores["slip_risk"][:2] == pytest.approx([0.9**0.5, 0.9**8.5])
    assert np.isnan(scores["slip_risk"][2])  # a date not after t has no slip risk
    # day 90: eight weeks, period 9 (to day 86), then 4 of period 10's 30 days
    assert scores["close_probability_90d"] == pytest.approx([1.0 - 0.9 ** (9 + 4 / 30)])
    # S = 0.5 after log(0.5) / log(0.9) = 6.58 periods: in week 7, at 6.58 * 7 = 46.05 days
    assert likely == pytest.approx([7.0 * np.log(0.5) / np.log(0.9)])
    assert grid_days(np.array([8.5, 33.0]), FINE_EARLY_EDGES) == pytest.approx([71.0, 806.0])


def test_fine_leaves_hold_as_many_deals_as_the_shipped_ones() -> None:
    # 76,447 30-day rows: the shipped leaves hold at least 400 rows (its cap); 199,833 fine rows are
    # 2.61 times as many, so a leaf needs 2.61 times as many rows for the same deals: 1,046
    assert deal_leaves(199_833, 76_447) == 1_046
    # 5,000 30-day rows: the shipped 50 (rows // 100, under the cap) scaled by 2.5 gives 125
    assert deal_leaves(12_500, 5_000) == 125
    # 1,000 rows: the shipped floor of 20 scales too
    assert deal_leaves(3_000, 1_000) == 60
