"""The backtest's forecast error on a history small enough to check by hand.

Fold: (2025-04-01, 2025-05-01]. A stand-in model gives every deal close_probability 0.5, so the
predicted won amount is half the amount of the deals open at the fold start and due inside the fold.

| deal | amount | due        | what happens                      | counts?                        |
|------|--------|------------|-----------------------------------|--------------------------------|
| A    | 100    | 2025-04-10 | lost 2025-04-12                   | yes: predicted 50, won 0       |
| B    | 200    | 2025-04-20 | won 2025-04-25                    | yes: predicted 100, won 200    |
| C    | 400    | 2025-04-30 | won 2025-05-20 (after the fold)   | yes: predicted 200, won 0 (400 later) |
| D    | 800    | 2025-06-15 | open                              | no: due after the fold         |
| E    | 1600   | 2025-04-15 | won 2025-03-20 (before the fold)  | no: not open at the fold start |
| F    | 3200   | 2025-04-15 | created 2025-04-05                | no: not created at the start   |

predicted = 350, actual = 200, error = 150, |error| / actual = 0.75, actual eventually = 600.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pytest

from features.history import DealHistory, PipelineSpec
from training.backtest import Fold, forecast_error


class HalfChance:
    """A stand-in bundle: close probability 0.5 for every deal (score_points calls only `score`)."""

    def score(self, features: pd.DataFrame, top_reasons: int = 3) -> pd.DataFrame:
        n = len(features)
        return pd.DataFrame({
            "deal_id": features["deal_id"].array, "as_of": features["as_of"].array,
            "cold_risk": np.full(n, 0.5), "close_probability": np.full(n, 0.5),
            "risk_band": ["medium"] * n, "expected_value": np.full(n, np.nan),
            "reasons": [[] for _ in range(n)],
        })


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
    fold = Fold(1, pd.Timestamp("2025-04-01", tz="UTC"), pd.Timestamp("2025-05-01", tz="UTC"))
    row: dict[str, Any] = forecast_error(_history(), HalfChance(), fold)
    assert row["n_deals"] == 3
    assert row["predicted"] == pytest.approx(350.0)
    assert row["actual"] == pytest.approx(200.0)
    assert row["error"] == pytest.approx(150.0)
    assert row["abs_pct_error"] == pytest.approx(0.75)
    assert row["actual_eventually"] == pytest.approx(600.0)
