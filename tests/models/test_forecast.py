"""Forecast: tiny cases whose distribution can be enumerated by hand."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from models.forecast import AT_RISK_COLUMNS, forecast

AS_OF = "2024-03-10T12:00:00Z"


def deals(amounts: list[float], due: list[str | None], probs: list[float]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "amount": amounts,
            "expected_close_date": pd.to_datetime(pd.Series(due, dtype="object"), utc=True, format="ISO8601"),
            "close_probability": probs,
        }
    )


def test_two_deals_half_chance_give_the_enumerable_outcomes() -> None:
    # Outcomes 0, 100, 300, 400 each with probability 1/4: CDF 0.25, 0.5, 0.75, 1.
    frame = deals([100.0, 300.0], ["2024-03-20", "2024-03-31"], [0.5, 0.5])
    month = forecast(frame, AS_OF, months=2)["periods"][0]
    assert month["period"] == "2024-03" and month["deals"] == 2
    assert month["expected_won_amount"] == pytest.approx(200.0)  # 100 × 0.5 + 300 × 0.5
    assert (month["p10"], month["p50"], month["p90"]) == (0.0, 100.0, 400.0)


def test_simulation_path_agrees_with_the_enumeration() -> None:
    frame = deals([100.0, 300.0], ["2024-03-20", "2024-03-31"], [0.5, 0.5])
    month = forecast(frame, AS_OF, months=1, n_sims=4000, seed=3, exact_max_deals=0)["periods"][0]
    assert (month["p10"], month["p90"]) == (0.0, 400.0)
    assert month["p50"] in (100.0, 300.0)  # the 0.5 level sits exactly on a CDF step
    again = forecast(frame, AS_OF, months=1, n_sims=4000, seed=3, exact_max_deals=0)["periods"][0]
    assert again == month  # seeded


def test_months_overdue_unscheduled_and_later() -> None:
    frame = deals(
        [100.0, 200.0, 50.0, 400.0, 80.0],
        ["2024-02-01", "2024-04-15", None, "2024-09-01", "2024-03-31T23:00:00Z"],
        [0.2, 0.5, 0.9, 0.5, 1.0],
    )
    result = forecast(frame, AS_OF, months=3)
    march, april, may = result["periods"]
    assert [p["period"] for p in result["periods"]] == ["2024-03", "2024-04", "2024-05"]
    assert march["start"] == "2024-03-10T12:00:00+00:00" and march["end"] == "2024-04-01T00:00:00+00:00"
    # March holds the overdue February deal and the one due on 31 March.
    assert (march["deals"], march["overdue_deals"]) == (2, 1)
    assert march["expected_won_amount"] == pytest.approx(100 * 0.2 + 80 * 1.0)
    assert (march["p10"], march["p50"], march["p90"]) == (80.0, 80.0, 180.0)
    assert april["expected_won_amount"] == pytest.approx(100.0) and may["deals"] == 0
    assert may["p50"] == 0.0
    assert result["unscheduled"]["deals"] == 1
    assert result["unscheduled"]["expected_won_amount"] == pytest.approx(45.0)
    assert result["later"] == {"deals": 1, "pipeline_amount": 400.0, "expected_won_amount": 200.0}
    assert "first month" in result["note"]
    json.dumps(result, allow_nan=False)


def test_many_deals_expected_value_is_exact_and_quantiles_ordered() -> None:
    rng = np.random.default_rng(0)
    n = 500
    frame = deals(list(rng.uniform(1_000, 50_000, n)), ["2024-03-25"] * n, list(rng.uniform(0, 1, n)))
    month = forecast(frame, AS_OF, months=1, n_sims=5000)["periods"][0]
    expected = float((frame["amount"] * frame["close_probability"]).sum())
    assert month["expected_won_amount"] == pytest.approx(expected)
    assert month["p10"] < month["p50"] < month["p90"]
    assert month["p50"] == pytest.approx(expected, rel=0.03)  # sum of many Bernoullis is near-normal


def test_bad_input_is_rejected() -> None:
    with pytest.raises(ValueError, match="close_probability"):
        forecast(deals([1.0], ["2024-03-20"], [1.5]), AS_OF)
    with pytest.raises(ValueError, match="missing"):
        forecast(pd.DataFrame({"amount": [1.0]}), AS_OF)
    empty = forecast(deals([], [], []), AS_OF, months=2)
    assert [p["deals"] for p in empty["periods"]] == [0, 0]


def test_no_open_deals_gives_empty_periods() -> None:
    # The shape `score_open_deals` returns when nothing is open.
    nothing = pd.DataFrame({c: pd.Series(dtype="object") for c in AT_RISK_COLUMNS})
    result = forecast(nothing, AS_OF, months=1)
    assert result["periods"][0]["deals"] == 0 and result["periods"][0]["p90"] == 0.0
    assert result["unscheduled"]["deals"] == 0


def test_timing_spreads_each_deal_over_the_months_by_its_chances() -> None:
    from models.forecast import forecast as run

    # Deal A (100) is won in March with 0.5, April 0.25, later 0.1 (close probability 0.85);
    # deal B (300), due in March, has all its chance in May: its date does not place it.
    frame = deals([100.0, 300.0], ["2024-04-10", "2024-03-20"], [0.85, 0.4])
    by_month = np.array([[0.5, 0.25, 0.0], [0.0, 0.0, 0.4]])
    result = run(frame, AS_OF, months=3, month_probabilities=by_month)
    march, april, may = result["periods"]
    assert (march["expected_won_amount"], april["expected_won_amount"]) == (50.0, 25.0)
    assert (march["deals"], march["p10"], march["p50"], march["p90"]) == (1, 0.0, 0.0, 100.0)
    assert (may["deals"], may["p50"], may["p90"]) == (1, 0.0, 300.0)  # P(0) = 0.6 > 0.5
    assert result["later"]["expected_won_amount"] == pytest.approx(100 * 0.1)
    assert result["unscheduled"]["deals"] == 0


def test_new_deals_expected_wins_by_hand() -> None:
    from models.forecast import NewDealModel

    # 2 deals a day; half of them are won, at ages spread evenly over their first week
    model = NewDealModel(rate_per_day=2.0, won_amounts=np.array([10.0]),
                         won_by_age=np.array([0.0] + [0.5] * 20), bin_days=7.0)
    # created on days 0.5 .. 29.5; those older than a week by day 30 bring 0.5 each (23 of them), the
    # other seven 0.5 × age / 7: 0.5 / 7 × (0.5 + 1.5 + ... + 6.5) = 1.75
    assert model.expected_wins(0.0, 30.0) == pytest.approx(2.0 * (23 * 0.5 + 1.75))
    draws = model.simulate(26.5, 20_000, np.random.default_rng(0))
    assert draws.mean() == pytest.approx(265.0, rel=0.02)  # Poisson(26.5) wins of 10 each
