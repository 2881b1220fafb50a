"""Collecting problems: capped, formatted only for the rows that are kept."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from features.history import HistoryValidationError, Problem

# Enough to show every kind of mistake in a file without building a million-line report.
MAX_PROBLEMS = 300


class ProblemCollector:
    """Collects problems up to MAX_PROBLEMS; every problem is collected before raising, so a user fixes a
    file in one pass instead of one error at a time."""

    def __init__(self) -> None:
        self.items: list[Problem] = []
        self.truncated = False

    @property
    def full(self) -> bool:
        return len(self.items) >= MAX_PROBLEMS

    def add(self, table: str, row: int | None, column: str | None, message: str, hint: str = "") -> None:
        if self.full:
            self.truncated = True
            return
        self.items.append(Problem(table=table, row=row, column=column, message=message, hint=hint))

    def add_rows(
        self,
        table: str,
        mask: pd.Series | np.ndarray,
        column: str | None,
        message: str,
        hint: str = "",
        values: Any = None,
        extra: Any = None,
    ) -> None:
        """One problem per flagged row. `message` may use {value} (the row's raw value) and {extra};
        `values` and `extra` hold one item per row: a Series (read by position) or an array."""
        positions = np.flatnonzero(np.asarray(mask, dtype=bool))
        if positions.size == 0:
            return
        room = MAX_PROBLEMS - len(self.items)
        if positions.size > room:
            self.truncated = True
            positions = positions[: max(room, 0)]
        for pos in positions:
            value = show_value(_at(values, int(pos))) if values is not None else ""
            more = _at(extra, int(pos)) if extra is not None else ""
            self.add(table, int(pos) + 1, column, message.format(value=value, extra=more), hint)

    def raise_if_any(self, source: str | None) -> None:
        """Raise `HistoryValidationError` with everything collected, if anything was."""
        if not self.items:
            return
        if self.truncated:
            stopped = f"stopped after {MAX_PROBLEMS} problems"
            self.items.append(Problem("(all)", None, None, stopped, "fix these and run again"))
        raise HistoryValidationError(self.items, source)


def _at(items: Any, position: int) -> Any:
    """The item at `position` of a Series (by position, whatever its index) or of an array."""
    return items.iloc[position] if isinstance(items, pd.Series) else items[position]


def show_value(value: Any) -> str:
    """A cell as quoted in a message; missing values read "(empty)"."""
    if value is None or (not isinstance(value, str) and pd.isna(value)):
        return "(empty)"
    return repr(str(value))
