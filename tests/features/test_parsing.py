"""Text columns read the same whatever their size (small columns take a cheaper route)."""

from __future__ import annotations

import decimal

import numpy as np
import pandas as pd
import pytest

import features.validation.parsing as parsing
from features.validation.problems import ProblemCollector

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


# Field changes of every kind, good and bad: amounts (plain, spaced, negative, too large, not numbers),
# close dates (canonical, date only, offsets, "Z", empty, impossible, out of range), owners (named, missing).
FIELD_ROWS = [
    ("amount", "12500"), ("amount", " 7 "), ("amount", "-5"), ("amount", "1e16"), ("amount", "abc"),
    ("expected_close_date", "2025-11-12T00:00:00+00:00"), ("expected_close_date", "2025-11-12"),
    ("expected_close_date", "2025-11-12T05:00:00+02:00"), ("expected_close_date", "2025-11-12T10:30:00Z"),
    ("expected_close_date", ""), ("expected_close_date", "2024-02-30"), ("expected_close_date", "2300-01-01"),
    ("owner", "Ann"), ("owner", None), (None, "x"),
]


def test_field_change_values_read_the_same_whatever_the_column_size(monkeypatch: pytest.MonkeyPatch) -> None:
    """Small columns are checked as plain values; the values and problems are those of the Series
    route."""
    field = pd.Series([f for f, _ in FIELD_ROWS] * 3, dtype="string")
    value = pd.Series([v for _, v in FIELD_ROWS] * 3, dtype="string")
    answers = []
    for size in (10**9, 0):
        monkeypatch.setattr(parsing, "_SMALL_COLUMN", size)
        problems = ProblemCollector()
        values = parsing.field_change_values(field, value, value, problems)
        answers.append((values, [str(p) for p in problems.items]))
    (small, small_problems), (large, large_problems) = answers
    pd.testing.assert_series_equal(small, large)
    assert small_problems == large_problems
    assert len(small_problems) == 3 * 6  # -5, 1e16, abc, 2024-02-30, 2300-01-01, and the missing owner
    # close dates canonical
    assert small.iloc[5:9].tolist() == ["2025-11-12T00:00:00+00:00", "2025-11-12T00:00:00+00:00",
                                        "2025-11-12T03:00:00+00:00", "2025-11-12T10:30:00+00:00"]
