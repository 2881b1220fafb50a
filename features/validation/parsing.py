"""Text to typed columns: strings, UTC times, numbers, custom attributes, each with its per-value rules.

Used by file import (CSV text, Parquet) and the store; the API builds typed frames itself
(`serving.mapping`) after pydantic has applied the same rules field by field. Checks are vectorised over
whole columns; only the (capped) list of problems is formatted row by row.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from typing import Any, Final

import numpy as np
import pandas as pd

from features.history import ACTIVITY_TYPES, CHANGEABLE_FIELDS, DIRECTIONS, EVENT_TIME, TABLES, TIME_COLUMNS
from features.timeindex import (
    NAT_NS,
    SMALL_QUERY,
    datetimes_ns,
    frame_of,
    from_ns,
    object_values,
    plain_iso_ns,
    string_array,
    to_ns,
)
from features.validation.problems import ProblemCollector

STRING: Final = "string"
UTC_NS: Final = "datetime64[ns, UTC]"

# Output column order per event table (the DealHistory docstring).
EVENT_COLUMNS: dict[str, tuple[str, ...]] = {
    "stage_changes": ("deal_id", "stage", "changed_at", "event_id"),
    "activities": ("deal_id", "type", "direction", "occurred_at", "event_id"),
    "field_changes": ("deal_id", "field", "value", "changed_at", "event_id"),
}
DEAL_COLUMNS: tuple[str, ...] = TABLES["deals"][0] + TABLES["deals"][1]

# The times a history may hold, for file import and API alike (serving.schemas uses the same bounds).
# datetime64[ns] itself ends in 1677 and 2262; the margin keeps arithmetic on an accepted time (horizons,
# forecast months, likely close dates up to two years ahead, health windows) inside what pandas can hold.
EARLIEST_TIME = pd.Timestamp("1900-01-01", tz="UTC")
LATEST_TIME = pd.Timestamp("2200-01-01", tz="UTC")
# in the hint of a value that is not a time: one well-formed but out of range reads as none
TIME_RANGE = f"from {EARLIEST_TIME.date()} to {LATEST_TIME.date()}"
# The largest amount a deal (or an amount change) may carry, in the deal's currency: far above any real
# deal, far below where sums and expected values lose precision or overflow (2**64, 1e308 are refused).
MAX_AMOUNT = 1e15


def as_frame(raw: Any, table: str) -> pd.DataFrame:
    """A table as a frame with a fresh index and stripped headers; None or [] is an empty table."""
    if (
        raw is None
        or (isinstance(raw, pd.DataFrame) and raw.shape == (0, 0))
        or (isinstance(raw, list) and not raw)
    ):
        return pd.DataFrame(columns=list(TABLES[table][0]))
    frame = raw if isinstance(raw, pd.DataFrame) else pd.DataFrame(raw)
    names = [str(c).strip() for c in frame.columns]
    # Frames that already have a fresh index and clean headers are used as they are: nothing below
    # writes to the frame.
    if (
        isinstance(frame.index, pd.RangeIndex)
        and frame.index.start == 0
        and frame.index.step == 1
        and names == list(frame.columns)
    ):
        return frame
    frame = frame.reset_index(drop=True)
    # Headers typed by hand often carry stray spaces; the names themselves are the contract.
    frame.columns = names
    return frame


# Below this many values one Python pass is cheaper than the .str accessor's fixed costs; above it the
# vectorised conversion wins (about 2x on 500k values). Both give the same text.
_SMALL_COLUMN = 2_000


def to_string(series: pd.Series) -> pd.Series:
    """Pandas "string" dtype, stripped, with empty cells as <NA>; other values as their text."""
    if len(series) > _SMALL_COLUMN:
        out = series if isinstance(series.dtype, pd.StringDtype) else series.astype(object).astype(STRING)
        out = out.astype(STRING).str.strip()
        return out.where(out != "")
    values = object_values(series)
    return pd.Series(_small_text(values), index=series.index)


def _small_text(values: np.ndarray) -> Any:
    """`to_string`'s one Python pass over an object array (at most `_SMALL_COLUMN` values), as an array."""
    return string_array(_stripped(values, None))


def _stripped(values: np.ndarray, missing: Any = pd.NA) -> np.ndarray:
    """The values `to_string` holds (stripped text; empty or missing values as `missing`) as an object
    array, by one Python pass: `object_values(to_string(...))` of a small column without the Series."""
    gone = pd.isna(values)
    text = np.empty(len(values), dtype=object)
    text[:] = [missing if g else (str(v).strip() or missing) for v, g in zip(values, gone, strict=True)]
    return text


def text_array(values: list[Any]) -> Any:
    """`to_string` of plain values (text or None, as a database returns them), as a "string" array."""
    array = np.empty(len(values), dtype=object)
    array[:] = values
    if len(values) > _SMALL_COLUMN:
        return to_string(pd.Series(array, dtype=object)).array
    return _small_text(array)


def lowered(text: Any) -> Any:
    """A "string" array lower-cased as `Series.str.lower` does; without the call (whose fixed cost is
    that of validating a small request) when every present value is ASCII and already lower case, for
    which every lower-casing is the identity."""
    if len(text) <= _SMALL_COLUMN:
        present = [v for v in object_values(text, na_value=None).tolist() if v is not None]
        if all(v.isascii() and v == v.lower() for v in present):
            return text
    return pd.Series(text, dtype=STRING).str.lower().array


def parse_times(series: pd.Series) -> tuple[pd.Series, pd.Series]:
    """(UTC times, mask of present-but-unparsable values). Date-only is midnight UTC; naive is UTC."""
    if isinstance(series.dtype, pd.DatetimeTZDtype):
        return series.dt.tz_convert("UTC").astype(UTC_NS), pd.Series(False, index=series.index)
    if pd.api.types.is_datetime64_dtype(series.dtype):
        return series.dt.tz_localize("UTC").astype(UTC_NS), pd.Series(False, index=series.index)
    text = to_string(series)
    times, bad = time_values(object_values(text))
    return pd.Series(from_ns(times), index=text.index), pd.Series(bad, index=text.index)


def time_values(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`parse_times` of an object array of text (stripped, missing values <NA>), without the Series:
    (the times as int64 nanoseconds since the epoch, NAT_NS where missing or bad; mask of
    present-but-unparsable values)."""
    # The values parsed as an array and the masks taken in numpy: equal to the Series operations, and
    # cheaper at every size (a few values' Series operations cost more than parsing them; 500,000
    # times parse in half the time). utc=True turns naive values into UTC and converts mixed offsets;
    # format="ISO8601" accepts each value's own ISO variant (date only, with or without seconds, "Z",
    # offsets).
    present = ~pd.isna(values)
    at: np.ndarray | None = None
    unit: Any = "ns"
    if len(values) <= SMALL_QUERY:
        # a request's few close dates, when every present one is a plain ISO time, read by numpy as
        # `parse_iso_ns` reads them (pandas' instants): pandas' fixed cost was the largest part of
        # checking one deal's field changes
        plain = plain_iso_ns(values[present])
        if plain is not None:
            at = np.full(len(values), NAT_NS, dtype=np.int64)
            at[present] = plain
    if at is None:
        # pandas' cache of distinct values pays off on long columns (dates repeat); on a request's few
        # values its set-up costs more than the parse (the same times either way)
        cache = len(values) > _SMALL_COLUMN
        found = pd.to_datetime(values, utc=True, format="ISO8601", errors="coerce", cache=cache)
        if not isinstance(found, pd.DatetimeIndex):  # an array's parse is one already
            found = pd.DatetimeIndex(found)
        at, unit = found.asi8, found.unit
    # Compared with the bounds and scaled to nanoseconds as integers in the parse's unit: the same
    # answers as the index operations (every time within the bounds is exact in nanoseconds), without
    # their fixed costs.
    missing = at == NAT_NS
    earliest, latest, per_ns = _unit_scale(unit)
    kept = ~missing & (at >= earliest) & (at <= latest)
    bad = present & ~kept
    times = np.where(kept, at, 0) * per_ns  # no overflow: the kept times are within the bounds
    times[~kept] = NAT_NS
    return times, bad


@functools.lru_cache(maxsize=8)
def _unit_scale(unit: Any) -> tuple[int, int, int]:
    """(EARLIEST_TIME, LATEST_TIME as integers of `unit` since the epoch (both are whole days), and
    nanoseconds per `unit`)."""
    earliest, latest = (int(t.tz_convert(None).as_unit(unit).to_datetime64().view("i8"))
                        for t in (EARLIEST_TIME, LATEST_TIME))
    return earliest, latest, int(pd.Timedelta(1, unit=unit).value)


def parse_numbers(series: pd.Series) -> tuple[pd.Series, pd.Series]:
    """(float64 values, mask of present-but-not-a-finite-number values)."""
    if pd.api.types.is_numeric_dtype(series.dtype) and not pd.api.types.is_bool_dtype(series.dtype):
        values = series.astype("float64")
        present = series.notna()
    elif len(series) <= _SMALL_COLUMN:
        numbers, flagged = _number_values(object_values(to_string(series)))
        return pd.Series(numbers, index=series.index), pd.Series(flagged, index=series.index)
    else:
        text = to_string(series)
        present = text.notna()
        values = pd.to_numeric(text, errors="coerce").astype("float64")
    bad = present & (values.isna() | ~np.isfinite(values.fillna(0.0)))
    values = values.where(~bad)
    return values, bad.astype(bool)


def _number_values(texts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`parse_numbers` of an object array of text (stripped, missing values <NA>), as arrays: the same
    parse of the values as an array, and the masks in numpy (see `time_values`)."""
    numbers = np.asarray(pd.to_numeric(texts, errors="coerce"), dtype=np.float64)
    flagged = ~pd.isna(texts) & ~np.isfinite(numbers)
    return np.where(flagged, np.nan, numbers), flagged


def coerce_attribute(series: pd.Series) -> pd.Series:
    """Custom attribute: float64 when every present value is a number, else string."""
    if pd.api.types.is_bool_dtype(series.dtype):
        return to_string(series)
    if pd.api.types.is_numeric_dtype(series.dtype):
        return series.astype("float64")
    text = to_string(series)
    if len(text) <= _SMALL_COLUMN and not _may_be_numbers(text):
        return text
    present = text.notna()
    if not present.any():
        return text
    numbers = pd.to_numeric(text, errors="coerce")
    # Codes with leading zeros (zip codes, account numbers) would lose them as numbers: keep as text.
    leading_zero = text.str.match(r"^[+-]?0\d").fillna(False).astype(bool)
    if bool((numbers.notna() | ~present).all()) and not bool(leading_zero.any()):
        return numbers.astype("float64")
    return text


def attribute_values(values: list[Any]) -> Any:
    """`coerce_attribute` of plain values (a JSON request's: text, numbers, booleans, None) as the array
    a frame holds (float64 numpy, or "string"); small columns of text skip the Series."""
    objects = np.empty(len(values), dtype=object)
    objects[:] = values
    if len(values) <= _SMALL_COLUMN:
        stripped = _stripped(objects, None)  # `_small_text`'s values, read before they become an array
        if not _may_be_numbers(stripped):
            return string_array(stripped)
    coerced = coerce_attribute(pd.Series(objects, dtype=object))
    return coerced.to_numpy() if isinstance(coerced.dtype, np.dtype) else coerced.array


def _may_be_numbers(text: Any) -> bool:
    """False when some present value cannot parse as a number (no digit, and not an infinity) or is a
    code with a leading zero, or no value is present: the attribute is text without parsing any of it.
    (A value with neither a digit nor "inf" in it is NaN to `pd.to_numeric`; the leading-zero rule is
    the one below, with pyarrow's ASCII `\\d`.)"""
    present = [v for v in object_values(text).tolist() if v is not None and v is not pd.NA]
    if not present:
        return False
    for v in present:
        if _LEADING_ZERO.match(v) or not (any(c.isdigit() for c in v) or "inf" in v.lower()):
            return False
    return True


_LEADING_ZERO = re.compile(r"[+-]?0[0-9]")


def format_utc_iso(times: pd.Series) -> pd.Series:
    """ISO 8601 text with an explicit +00:00 offset and nanoseconds only when present; NaT -> <NA>.

    Vectorised (no per-value isoformat), and exact, so text written this way parses back to the same
    instant.
    """
    utc = (
        times.dt.tz_convert("UTC")
        if isinstance(times.dtype, pd.DatetimeTZDtype)
        else times.dt.tz_localize("UTC")
    )
    instants = utc.astype(UTC_NS).dt.tz_convert(None).to_numpy(dtype="datetime64[ns]")
    present = ~np.isnat(instants)
    # numpy formats in C; Series.dt.strftime goes through Python per value and is ~20x slower.
    text = np.char.add(np.datetime_as_string(instants, unit="s"), "+00:00").astype(object)
    nanos = instants.view("i8") % 1_000_000_000
    fractional = present & (nanos != 0)
    if fractional.any():
        digits = np.char.rstrip(np.char.zfill(nanos[fractional].astype(str), 9), "0")
        seconds = np.datetime_as_string(instants[fractional], unit="s")
        text[fractional] = np.char.add(np.char.add(np.char.add(seconds, "."), digits), "+00:00")
    text[~present] = None
    return pd.Series(text, index=times.index, dtype=STRING)


def check_columns(frame: pd.DataFrame, table: str, problems: ProblemCollector) -> bool:
    """Report each missing required column; True when none is missing."""
    required = TABLES[table][0]
    missing = [c for c in required if c not in frame.columns]
    for column in missing:
        problems.add(
            table,
            None,
            column,
            "missing required column",
            f"{table} needs the columns {', '.join(required)}; "
            f"found {', '.join(map(str, frame.columns)) or 'none'}",
        )
    return not missing


def _require(table: str, column: str, values: pd.Series, problems: ProblemCollector) -> None:
    problems.add_rows(table, values.isna(), column, f"missing {column}", f"every row needs a {column}")


def _optional_string(raw: pd.DataFrame, column: str) -> pd.Series:
    if column in raw.columns:
        return to_string(raw[column])
    return pd.Series(pd.NA, index=raw.index, dtype=STRING)


def _times(
    raw: pd.DataFrame, table: str, column: str, problems: ProblemCollector, required: bool
) -> pd.Series:
    if column not in raw.columns:
        return pd.Series(pd.NaT, index=raw.index, dtype=UTC_NS)
    parsed, bad = parse_times(raw[column])
    problems.add_rows(
        table,
        bad,
        column,
        "not a time: {value}",
        f"use ISO 8601 {TIME_RANGE}, e.g. 2024-03-01 or 2024-03-01T14:30:00+02:00",
        values=raw[column],
    )
    if required:
        problems.add_rows(table, parsed.isna() & ~bad, column, f"missing {column}", "every row needs a time")
    return parsed


def parse_deals(raw: pd.DataFrame, problems: ProblemCollector) -> tuple[pd.DataFrame, tuple[str, ...]]:
    """(typed deals frame, custom attribute columns); per-value problems go to `problems`."""
    table = "deals"
    out: dict[str, pd.Series] = {}  # the frame is built once at the end: column inserts cost
    for column in ("deal_id", "pipeline", "owner"):
        out[column] = to_string(raw[column])
        _require(table, column, out[column], problems)

    amount, bad = parse_numbers(raw["amount"])
    problems.add_rows(
        table,
        bad,
        "amount",
        "not a number: {value}",
        "amounts are plain numbers like 12500.50",
        values=raw["amount"],
    )
    problems.add_rows(
        table, amount.isna() & ~bad, "amount", "missing amount", "every deal needs an amount ≥ 0"
    )
    problems.add_rows(
        table, amount < 0, "amount", "negative amount {value}", "amounts must be ≥ 0", values=raw["amount"]
    )
    problems.add_rows(
        table, amount > MAX_AMOUNT, "amount", "amount {value} is too large",
        f"amounts must be at most {MAX_AMOUNT:.0e}", values=raw["amount"],
    )
    out["amount"] = amount
    out["created_at"] = _times(raw, table, "created_at", problems, required=True)
    out["team"] = _optional_string(raw, "team")
    out["account"] = _optional_string(raw, "account")
    out["expected_close_date"] = _times(raw, table, "expected_close_date", problems, required=False)
    out["currency"] = _optional_string(raw, "currency")
    attributes = tuple(sorted(c for c in raw.columns if c not in DEAL_COLUMNS))
    for column in attributes:
        out[column] = coerce_attribute(raw[column])
    frame = pd.DataFrame({c: out[c] for c in (*DEAL_COLUMNS, *attributes)}, index=raw.index)
    return frame, attributes


def parse_events(raw: pd.DataFrame, table: str, problems: ProblemCollector) -> pd.DataFrame:
    """One typed event table; per-value problems go to `problems` (cross-row checks come later)."""
    time_column = EVENT_TIME[table]
    out: dict[str, pd.Series] = {}
    out["deal_id"] = to_string(raw["deal_id"])
    _require(table, "deal_id", out["deal_id"], problems)
    out[time_column] = _times(raw, table, time_column, problems, required=True)
    out["event_id"] = _optional_string(raw, "event_id")
    if table == "stage_changes":
        out["stage"] = to_string(raw["stage"])
        _require(table, "stage", out["stage"], problems)
    elif table == "activities":
        out["type"] = _allowed(raw, table, "type", ACTIVITY_TYPES, "allowed types: {}", problems)
        _require(table, "type", out["type"], problems)
        out["direction"] = _allowed(
            raw, table, "direction", DIRECTIONS, "allowed: {}, or leave it empty", problems
        )
    else:
        field = _allowed(raw, table, "field", CHANGEABLE_FIELDS, "field_changes can change: {}", problems)
        _require(table, "field", field, problems)
        out["field"] = field
        out["value"] = field_change_values(field, to_string(raw["value"]), raw["value"], problems)
    return pd.DataFrame({c: out[c] for c in EVENT_COLUMNS[table]}, index=raw.index)


def _allowed(
    raw: pd.DataFrame,
    table: str,
    column: str,
    allowed: tuple[str, ...],
    hint: str,
    problems: ProblemCollector,
) -> pd.Series:
    """A lower-cased text column whose present values must be one of `allowed` (an absent column is
    empty). The names come from features.history, which the API's enums use too."""
    text = _optional_string(raw, column)
    values = pd.Series(lowered(text.array), index=text.index)
    noun = "activity type" if column == "type" else column
    problems.add_rows(
        table,
        values.notna() & ~values.isin(allowed),
        column,
        f"unknown {noun} {{value}}",
        hint.format(", ".join(allowed)),
        values=raw[column] if column in raw.columns else None,
    )
    return values

def field_change_values(field: Any, value: Any, shown: Any, problems: ProblemCollector) -> Any:
    """Check each field change's value against its field and return the values, close dates canonical.

    Runs on file import and on the API path alike (the rule depends on two columns, so it is a frame
    check): an amount is a number >= 0, a close date a time (or empty, to clear it), an owner present.
    `field` and `value` are text columns (Series or arrays, one item per row); `shown` holds the values
    as the user wrote them, for messages. The values come back as given (the same object) when no close
    date needed rewriting, else a new column of the same kind. Each rule parses only the rows of its
    field (small requests often carry none of a kind); columns of up to `_SMALL_COLUMN` rows are read as
    plain values, without a Series per rule.
    """
    table = "field_changes"
    n = len(value)
    if n == 0:
        return value
    kinds = _field_kinds(field)
    values = object_values(value) if n <= _SMALL_COLUMN else None

    def series() -> pd.Series:
        return value if isinstance(value, pd.Series) else pd.Series(value)

    def flagged(rows: np.ndarray, bad: np.ndarray) -> np.ndarray:
        mask = np.zeros(n, dtype=bool)
        mask[rows] = bad
        return mask

    amount_rows = np.flatnonzero(kinds == "amount")
    if amount_rows.size:
        if values is not None:
            number, bad_amount = _number_values(_stripped(values[amount_rows]))
        else:
            amounts, bad_series = parse_numbers(series().iloc[amount_rows])
            number, bad_amount = amounts.to_numpy(dtype=np.float64), bad_series.to_numpy(dtype=bool)
        problems.add_rows(
            table,
            flagged(amount_rows, bad_amount | np.isnan(number) | (number < 0)),
            "value",
            "amount value {value} is not a number ≥ 0",
            "amount changes carry the new amount, e.g. 12500",
            values=shown,
        )
        problems.add_rows(
            table, flagged(amount_rows, number > MAX_AMOUNT), "value",
            "amount value {value} is too large", f"amounts must be at most {MAX_AMOUNT:.0e}", values=shown,
        )
    close_rows = np.flatnonzero(kinds == "expected_close_date")
    if close_rows.size:
        if values is not None:
            dates, bad_date = time_values(_stripped(values[close_rows]))
        else:
            parsed, bad_series = parse_times(series().iloc[close_rows])
            dates, bad_date = to_ns(parsed), bad_series.to_numpy(dtype=bool)
        problems.add_rows(
            table,
            flagged(close_rows, bad_date),
            "value",
            "expected_close_date value {value} is not a time",
            f"use ISO 8601 {TIME_RANGE}, e.g. 2024-03-01; leave it empty to clear the date",
            values=shown,
        )
        value = _with_canonical_times(value, close_rows, dates)
    owner_rows = np.flatnonzero(kinds == "owner")
    if owner_rows.size:
        # a request's values arrive unstripped: an empty or blank owner is as missing as a file's empty cell
        blank = pd.isna(_stripped(object_values(value)[owner_rows]))
        problems.add_rows(
            table, flagged(owner_rows, blank), "value", "missing new owner",
            "owner changes name the new owner",
        )
    return value


def _field_kinds(field: Any) -> np.ndarray:
    """Each row's field name as an object array ('' when missing)."""
    if len(field) > _SMALL_COLUMN:
        return np.asarray(pd.Series(field).astype(STRING).fillna("").to_numpy(dtype=object), dtype=object)
    names = ["" if v is None or v is pd.NA or v != v else str(v) for v in object_values(field).tolist()]
    return np.array(names, dtype=object)


def _with_canonical_times(value: Any, rows: np.ndarray, dates: np.ndarray) -> Any:
    """`value` (a Series or text array) with its rows `rows` (parsed as `dates`, int64 ns, NAT_NS when
    not a time) written as `format_utc_iso` writes them: `value` itself when none needs it, else a new
    column of its kind.

    Close dates are stored canonically so every consumer parses the same instant (naive/date-only =
    UTC); values that did not parse are left as they are.
    """
    parsed = dates != NAT_NS
    text = object_values(value)  # a copy: `value` is left as it was
    # a value already written so is its own canonical form (see _CANONICAL_UTC)
    written = [bool(_CANONICAL_UTC.fullmatch(str(v))) for v in text[rows].tolist()]
    rewrite = parsed & ~np.array(written, dtype=bool)
    if not rewrite.any():
        return value
    text[rows[rewrite]] = object_values(format_utc_iso(pd.Series(from_ns(dates[rewrite]))))
    array = string_array(text)
    return pd.Series(array, index=value.index, name=value.name) if isinstance(value, pd.Series) else array


# What `format_utc_iso` writes (seconds, a fraction without trailing zeros, "+00:00"): a valid time
# written so is its own canonical form, and is not parsed again.
_CANONICAL_UTC = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{0,8}[1-9])?\+00:00"
)


# ---------------------------------------------------------------------- rows of a stored, valid history
# The store hands back rows that every write validated (`serving.store`, docs/storage.md): these build
# the `DealHistory` dtypes from them by the per-value rules above (text stripped, empty text missing,
# allowed names lower-cased, close dates canonical, attributes coerced), without the checks, whose
# answer the store already holds. On a history that passes them, the frames are those `parse_deals` /
# `parse_events` build.


def stored_deals(
    columns: Mapping[str, list[Any]], attributes: list[Mapping[str, Any] | None]
) -> pd.DataFrame:
    """Typed deals from plain column values (text or None, floats, naive UTC datetimes) and each deal's
    custom attributes (a mapping of name to value, or None), with a fresh RangeIndex."""
    n = len(columns["deal_id"])
    out: dict[str, Any] = {}
    for column in DEAL_COLUMNS:
        values = columns[column]
        if column in TIME_COLUMNS["deals"]:
            out[column] = from_ns(datetimes_ns(values))
        elif column == "amount":
            out[column] = _numbers(values)
        else:
            out[column] = text_array(values)
    names: list[str] = []
    if any(attributes):
        raw = pd.DataFrame([a or {} for a in attributes], index=pd.RangeIndex(n))
        names = sorted(str(c) for c in raw.columns if c not in DEAL_COLUMNS)
        for name in names:
            coerced = coerce_attribute(raw[name])
            out[name] = coerced.to_numpy() if isinstance(coerced.dtype, np.dtype) else coerced.array
    return frame_of({c: out[c] for c in (*DEAL_COLUMNS, *names)}, pd.RangeIndex(n))


def stored_events(table: str, columns: Mapping[str, list[Any]]) -> pd.DataFrame:
    """One typed event table from plain column values, with a fresh RangeIndex."""
    time_column = EVENT_TIME[table]
    out: dict[str, Any] = {
        "deal_id": text_array(columns["deal_id"]),
        time_column: from_ns(datetimes_ns(columns[time_column])),
        "event_id": text_array(columns["event_id"]),
    }
    if table == "stage_changes":
        out["stage"] = text_array(columns["stage"])
    elif table == "activities":
        out["type"] = lowered(text_array(columns["type"]))
        out["direction"] = lowered(text_array(columns["direction"]))
    else:
        field = lowered(text_array(columns["field"]))
        out["field"] = field
        out["value"] = _canonical_close_dates(field, text_array(columns["value"]))
    n = len(columns["deal_id"])
    return frame_of({c: out[c] for c in EVENT_COLUMNS[table]}, pd.RangeIndex(n))


def _numbers(values: list[Any]) -> np.ndarray:
    """`parse_numbers` of plain floats (None missing) as float64. `parse_numbers` reads a column of Python
    objects through their text (`repr`, which round-trips), and pandas parses that back to the same
    double (checked on 400,000 random doubles; `tests/serving/test_trusted_reads.py` holds full-precision
    stored amounts equal on both reads), so the floats are taken as they are."""
    return np.array([np.nan if v is None else float(v) for v in values], dtype=np.float64)


def _canonical_close_dates(field: Any, value: Any) -> Any:
    """`field_change_values`' close dates written canonically, parsing only those not written so."""
    kinds = object_values(field, na_value="")
    text = object_values(value, na_value=None)
    rows = np.array(
        [i for i, (k, v) in enumerate(zip(kinds, text, strict=True))
         if k == "expected_close_date" and v is not None and not _CANONICAL_UTC.fullmatch(v)],
        dtype=np.intp,
    )
    if rows.size == 0:
        return value
    series = pd.Series(value, dtype=STRING)
    dates, _ = parse_times(series.iloc[rows])
    return _with_canonical_times(series, rows, to_ns(dates)).array
