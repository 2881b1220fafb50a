"""Plain Python values for JSON: the one place that turns pandas/numpy missing values into None."""

from __future__ import annotations

import json
import math
from typing import Any

import pandas as pd


def jsonable(value: Any) -> Any:
    """NaN, NaT, <NA> and ±inf become None; numpy scalars Python ones; Timestamps datetimes.

    Recurses into lists, tuples and dicts (JSON has no NaN, so a reason's value or a health figure
    must not carry one). Anything else is returned as it is.
    """
    kind = type(value)
    if kind is float:  # the common cases first: plain Python values need no pandas check
        return value if math.isfinite(value) else None
    if kind is int or kind is str or kind is bool or value is None:
        return value
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if value is None or isinstance(value, str | bool):
        return value
    if pd.api.types.is_scalar(value) and pd.isna(value):
        return None
    if isinstance(value, pd.Timestamp):
        return value.to_pydatetime()
    if hasattr(value, "item") and pd.api.types.is_scalar(value):
        value = value.item()  # numpy scalar -> Python scalar
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def loads_jsonable(text: str) -> Any:
    """`jsonable(json.loads(text))` of JSON that `json.dumps` wrote, in one parse: its NaN, Infinity
    and -Infinity become None. For stored JSON read as text (the live at-risk list's reasons)."""
    return _DECODER.decode(text)


def _none(_token: str) -> None:
    return None


_DECODER = json.JSONDecoder(parse_constant=_none)


def json_ready(value: Any) -> Any:
    """`jsonable`, then times as ISO 8601 strings: a structure `json.dumps` takes as it is (for JSON
    artifacts and stored reports)."""
    return json.loads(json.dumps(jsonable(value), default=lambda v: v.isoformat() if hasattr(v, "isoformat")
                                 else str(v)))
