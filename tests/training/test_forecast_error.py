"""The backtest's forecast against what was won, on a history small enough to check by hand.

Cut at 2025-04-01; the data ends 2025-06-30, so April and May are judged (June ends after the data). A
stand-in model gives every deal close_probability 0.5 and no timing curves, so each open deal sits in
the month of its expected close date.

| deal | amount | due        | what happens                      | in the forecast                    |
|------|--------|------------|-----------------------------------|------------------------------------|
| A    | 100    | 2025-04-10 | lost 2025-04-12                   | April, 50 expected                 |
| B    | 200    | 2025-04-20 | won 2025-04-25                    | April, 100 expected; won in April  |
| C    | 400    | 2025-04-30 | won 2025-05-20                    | April, 200 expected; won in May    |
| D    | 800    | 2025-06-15 | open                              | June (not judged)                  |
| E    | 1600   | 2025-04-15 | won 2025-03-20 (before the cut)   | not open at the cut                |
| F    | 3200   | 2025-04-15 | created 2025-04-05                | not known at the cut               |

New deals: the only deal won before the cut (E) took 78 days, so no deal created after the cut can be
won by the end of May: their line is 0. April: expected 350, P10 0, P90 700 (eight equally likely
totals 0..700), actual 200, covered. May: expected 0, band 0..0, actual 400 (C), not covered.
Coverage 1/2; WAPE |350 - 200| / 200 = 0.75 in month 1 and 1.0 in month 2.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from features.history import DealHistory, PipelineSpec
from training.backtest import Fold, forecast_error


class HalfChance:
    """A stand-in bundle: close probability 0.5 for every deal (score_points calls only `score`)."""

    def score(self, features: pd.DataFrame, top_reasons: int = 3, with_curves: bool = False) -> pd.DataFrame:
        n = len(features)
        return pd.DataFrame({
            "deal_id": features["deal_id"].array, "as_of": features["as_of"].array,
            "cold_risk": np.full(n, 0.5), "close_probability": np.full(n, 0.5),
            "risk_band": ["medium"] * n, "expected_value": np.full(n, np.nan),
            "reasons": [[] for _ in range(n)],
        })

    def timing_curves(self, features: pd.DataFrame) -> None:
        return None


def _history() -> DealHistory:
    rows = [("A", 100, "2025-04-10"), ("B", 200, "2025-04-20"), ("C", 400, "2025-04-30"),
            ("D", 800, "2025-06-15"), ("E", 1600, "2025-04-15"), ("F", 3200, "2025-04-15")]
    deals = pd.DataFrame([{"deal_id": d, "pipeline": "P", "owner": "o", "amount": a,
                           "created_at": "2025-04-05" if d == "F" else "2025-01-01",
                           "expected_close_date": due} for d, a, due in rows])
    moves = [(d, "Open", "2025-04-05" if d == "F" else "2025-01-01") for d, _, _ in rows]
    moves += [("A", "Lost", "2025-04-12"), ("B", "Won", "2025-04-25"), ("C", "Won", "2025-05-20"),
              ("E", "Won", "2025-03-20")]
    stage_changes = pd.DataFrame(moves, columns=["deal_id", "stage", "changed_at"])
    activities = pd.DataFrame([("D", "email", "2025-06-30")], columns=["deal_id", "type", "occurred_at"])
    return DealHistory.from_frames(deals, stage_changes, activities,
                                   pipelines={"P": PipelineSpec("P", ("Open",), ("Won",), ("Lost",))})


def test_forecast_error_by_hand() -> None:
    from features.build import FeatureBuilder
    from training.backtest import forecast_summary

    history = _history()
    fold = Fold(1, pd.Timestamp("2025-04-01", tz="UTC"), pd.Timestamp("2025-05-01", tz="UTC"))
    rows = pd.DataFrame(forecast_error(history, HalfChance(), fold, FeatureBuilder().fit(history)))
    assert list(rows["period"]) == ["2025-04", "2025-05"]
    april, may = rows.to_dict(orient="records")
    assert april["expected_open"] == pytest.approx(350.0) and april["expected_new"] == pytest.approx(0.0)
    assert (april["p10"], april["p90"], april["actual"], april["covered"]) == (0.0, 700.0, 200.0, True)
    assert (may["expected"], may["p90"], may["actual"], may["covered"]) == (0.0, 0.0, 400.0, False)
    figures = forecast_summary(rows)
    assert figures["forecast_coverage_p10_p90"] == 0.5
    assert figures["forecast_wape_month_1"] == pytest.approx(0.75)
    assert figures["forecast_wape_month_2"] == pytest.approx(1.0)
