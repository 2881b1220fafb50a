"""Text columns read the same whatever their size (small columns take a cheaper route)."""

from __future__ import annotations

import decimal

import numpy as np
import pandas as pd
import pytest

import features.validation.parsing as parsing

MIXED = [" a", "", None, np.nan, 5, 5.0, True, decimal.Decimal("1.50"), "b "]


@pytest.mark.parametrize(
    "column",
    [pd.Series(MIXED * 300, dtype=object), pd.Series([" a", "", None, "x"] * 700, dtype="string")],
    ids=["object", "string"],
)
def test_small_and_large_columns_give_the_same_text(
    column: pd.Series, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(parsing, "_SMALL_COLUMN", 10**9)
    small = parsing.to_string(column)
    monkeypatch.setattr(parsing, "_SMALL_COLUMN", 0)
    large = parsing.to_string(column)
    pd.testing.assert_series_equal(small, large)
    if column.dtype == object:
        assert small.head(9).tolist() == ["a", pd.NA, pd.NA, pd.NA, "5", "5.0", "True", "1.50", "b"]
