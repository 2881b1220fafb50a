"""Text cells that are safe to open in a spreadsheet: the one guard every CSV report goes through.

A cell whose text starts with `=`, `+`, `-`, `@`, a tab or a carriage return is read by Excel, LibreOffice
and Google Sheets as a formula (CSV/formula injection): an owner named `=HYPERLINK(...)` pushed by an
integration would run in a manager's spreadsheet. Following OWASP's guidance, such text gets a leading
single quote, which the spreadsheet shows as plain text. Numbers are left as numbers (a negative
amount is data, not a formula); only text is touched.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")

__all__ = ["FORMULA_PREFIXES", "spreadsheet_safe", "spreadsheet_safe_frame"]


def spreadsheet_safe(value: Any) -> Any:
    """`value` with a leading `'` when it is text a spreadsheet would run as a formula; else unchanged."""
    if isinstance(value, str) and value.startswith(FORMULA_PREFIXES):
        return "'" + value
    return value


def spreadsheet_safe_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """A copy of `frame` with every text cell made safe (numeric, time and bool columns untouched)."""
    out = frame.copy()
    for column in out.columns:
        dtype = out[column].dtype
        if isinstance(dtype, pd.StringDtype) or pd.api.types.is_object_dtype(dtype):
            out[column] = out[column].map(spreadsheet_safe, na_action="ignore")
    return out
