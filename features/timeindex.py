"""Time-index primitives: int64-nanosecond times, integer deal codes and sorted event streams.

Everything that answers "what was true at or before t" reads the event tables through these: a
`DealIndex` codes deals in sorted deal_id order, an `EventStream` sorts one event table by (deal, time)
and answers "how many events at or before t" with one global `np.searchsorted`, and an `AsofIndex`
answers "the last row with this key and `at <= t`" against a presorted time-indexed table.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from features.history import DealHistory

DAY_NS = 86_400 * 10**9
NAT_NS = np.iinfo(np.int64).min


def to_ns(values: Any) -> np.ndarray:
    """Times (a Series, Index or array) as int64 nanoseconds since the epoch (UTC); missing times are
    NAT_NS.

    pandas 3 infers second/micro resolutions, so the unit is normalised here once.
    """
    dtype = values.dtype
    if isinstance(dtype, pd.DatetimeTZDtype) and dtype.unit == "ns" and not isinstance(values, np.ndarray):
        # tz-aware nanosecond times (every DealHistory time) hold UTC epoch integers: read them as they are
        if isinstance(values, pd.Index):
            return np.array(pd.DatetimeIndex(values).asi8, dtype=np.int64)
        times: Any = values.array if isinstance(values, pd.Series) else values  # a DatetimeArray
        return np.array(times.asi8, dtype=np.int64)
    if pd.api.types.is_datetime64_any_dtype(values.dtype):
        # Already times: read the UTC epoch integers directly (NaT is int64 min, i.e. NAT_NS), which
        # skips building Series and parsing for every call on the scoring hot path.
        index = pd.DatetimeIndex(values)
        if index.tz is not None:
            index = index.tz_convert("UTC")
        return np.array(index.as_unit("ns").asi8, dtype=np.int64)
    raw = pd.Series(values)
    if pd.api.types.is_datetime64_any_dtype(raw.dtype):
        series = pd.Series(pd.to_datetime(raw, utc=True))
    else:
        # Text times: each value may use its own ISO 8601 variant (date only, "Z", offsets); naive is UTC.
        series = pd.Series(pd.to_datetime(raw, utc=True, format="ISO8601"))
    naive = series.dt.as_unit("ns").to_numpy(dtype="datetime64[ns]")
    return naive.view(np.int64)


_UTC_NS = pd.DatetimeTZDtype("ns", "UTC")


def from_ns(values: np.ndarray) -> Any:
    """int64 nanoseconds (NAT_NS for missing) back to datetime64[ns, UTC] times, as the array a frame
    holds (a copy). Wrapped as they are, without the index constructor and localisation (whose fixed
    cost was paid for every time column of a one-deal request); the same times either way."""
    naive = np.array(values, dtype=np.int64).view("datetime64[ns]")
    build = getattr(pd.arrays.DatetimeArray, "_simple_new", None)  # pandas' internal constructor
    if build is None:
        return pd.DatetimeIndex(naive).tz_localize("UTC").array
    return build(naive, dtype=_UTC_NS)


_EPOCH = datetime(1970, 1, 1)
_EPOCH_UTC = _EPOCH.replace(tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


def datetimes_ns(values: Iterable[datetime | None]) -> np.ndarray:
    """Python datetimes as int64 nanoseconds since the epoch, None as NAT_NS: aware ones by their
    instant, naive ones as UTC (as the store keeps them). Exact: datetimes hold whole microseconds."""
    return np.array(
        [NAT_NS if v is None else (v - (_EPOCH if v.tzinfo is None else _EPOCH_UTC)) // _MICROSECOND * 1000
         for v in values],
        dtype=np.int64,
    )


# Below this many query keys a dict lookup answers faster than pandas' hash-table lookup (whose fixed
# cost of tens of microseconds, paid a dozen times, dominated scoring one deal); same codes either way.
SMALL_QUERY = 64


# ISO 8601 times numpy reads as pandas does: a date, or a date and time to the second (optional
# fraction), naive or in UTC ("Z", "+00:00"; pandas refuses them after a date alone); years 1800-2199,
# well inside datetime64[ns]. Groups 1 and 2 are what numpy reads.
_PLAIN_ISO = re.compile(r"((?:1[89]|2[01])\d\d-\d\d-\d\d)(?:(T\d\d:\d\d:\d\d(?:\.\d{1,9})?)(?:Z|\+00:00)?)?")


def parse_iso_ns(values: Any) -> np.ndarray:
    """`pd.to_datetime(values, utc=True, errors="coerce", format="ISO8601")` of text values as int64 ns
    (NAT_NS where missing or unparsable). Up to SMALL_QUERY values that are all plain ISO times (see
    _PLAIN_ISO) are read by numpy: the same instants, without pandas' fixed cost (~60 us, the largest
    single cost of one deal's close-date features); anything else takes pandas' way."""
    texts = np.asarray(values, dtype=object)
    if len(texts) == 0:
        return np.zeros(0, dtype=np.int64)
    plain = plain_iso_ns(texts)
    if plain is not None:
        return plain
    return to_ns(pd.to_datetime(texts, utc=True, errors="coerce", format="ISO8601"))


def plain_iso_ns(texts: np.ndarray) -> np.ndarray | None:
    """`parse_iso_ns`' shortcut: up to SMALL_QUERY texts (an object array) that are all plain ISO times
    (`_PLAIN_ISO`) as int64 ns, read by numpy (pandas' instants); None for anything else (more values,
    one that is not such a text, or one numpy refuses, such as February 30th), which pandas must read."""
    if len(texts) > SMALL_QUERY:
        return None
    plain = []
    for v in texts.tolist():
        if not isinstance(v, str):
            return None
        match = _PLAIN_ISO.fullmatch(v)
        if match is None:
            return None
        plain.append(match.group(1) + (match.group(2) or ""))
    try:
        return np.array(plain, dtype="datetime64[ns]").view(np.int64)
    except ValueError:  # e.g. February 30th: pandas decides (NaT)
        return None


def is_missing(value: Any) -> bool:
    """None, NaN, NaT or <NA> (a scalar test without pandas' array dispatch)."""
    return value is None or (not isinstance(value, str) and bool(pd.isna(value)))


def frame_of(columns: Mapping[str, Any], index: pd.Index, objects: Collection[str] = ()) -> pd.DataFrame:
    """`pd.DataFrame(columns, index=index)` for columns that are already typed arrays of the index's
    length (numpy arrays of a non-object dtype, or pandas extension arrays), built without the
    constructor's per-column inference and checks, which cost more than the features of one deal.
    The columns named in `objects` may be object arrays of values that are not text (lists, dicts),
    which the constructor would keep as objects too."""
    build = getattr(pd.DataFrame, "_from_arrays", None)  # pandas' internal constructor (2.x and 3.x)

    def as_is(name: str, v: Any) -> bool:
        if isinstance(v, pd.api.extensions.ExtensionArray):
            return True
        # numpy text (kind S, U) and object arrays are inferred by the constructor
        return (isinstance(v, np.ndarray) and v.ndim == 1
                and (v.dtype.kind not in "OSU" or (v.dtype == object and name in objects)))

    typed = all(len(v) == len(index) and as_is(name, v) for name, v in columns.items())
    if build is None or not typed:
        return pd.DataFrame(columns, index=index)
    frame: pd.DataFrame = build(list(columns.values()), columns=_column_index(tuple(columns)), index=index,
                                verify_integrity=False)
    return frame


@functools.lru_cache(maxsize=256)
def _column_index(names: tuple[Any, ...]) -> pd.Index:
    """The columns index of `frame_of`'s frames with these names, built once: the same few column sets
    come back on every request, and an index (immutable) keeps the lookup table its first column read
    builds."""
    return pd.Index(list(names))


_NOT_GIVEN: Any = object()


def object_values(values: Any, na_value: Any = _NOT_GIVEN) -> np.ndarray:
    """`values.to_numpy(dtype=object)` (with `na_value` when given) of a Series, Index or array, as a new
    array. Text held by pyarrow (every `DealHistory` text column) is read through Arrow: the same values,
    without pandas' conversion, whose fixed cost (tens of microseconds) is paid dozens of times when
    checking and scoring one deal, and which is slower on large columns too."""
    array = values.array if isinstance(values, pd.Series | pd.Index) else values
    dtype = getattr(array, "dtype", None)
    if isinstance(dtype, pd.StringDtype) and dtype.storage == "pyarrow" and hasattr(array, "__arrow_array__"):
        chunked = array.__arrow_array__()
        missing = dtype.na_value if na_value is _NOT_GIVEN else na_value
        if len(chunked) <= SMALL_QUERY:
            out = np.empty(len(chunked), dtype=object)
            out[:] = [missing if v is None else v for v in chunked.to_pylist()]
            return out
        out = np.asarray(chunked.to_numpy(zero_copy_only=False), dtype=object)
        if chunked.null_count and missing is not None:
            out[chunked.is_null().to_numpy(zero_copy_only=False)] = missing
        return out
    if isinstance(array, np.ndarray):
        out = np.array(array, dtype=object)
        if na_value is not _NOT_GIVEN:
            out[pd.isna(out)] = na_value
        return out
    if na_value is _NOT_GIVEN:
        return np.asarray(values.to_numpy(dtype=object), dtype=object)
    return np.asarray(values.to_numpy(dtype=object, na_value=na_value), dtype=object)


def string_array(values: Any, dtype: pd.StringDtype | None = None) -> Any:
    """`pd.array(values, dtype=dtype)` of text values (str, or None / NaN / <NA> for missing ones), by
    default of dtype "string" (missing as <NA>); `pd.StringDtype(na_value=np.nan)` is pandas' "str".
    With pyarrow storage (pandas' default), built by pyarrow directly: the same array, without the
    per-value check and dispatch that cost more than the rest of a one-deal frame column; values that
    are not all text take pandas' way (which writes numbers as text)."""
    dtype = dtype or pd.StringDtype()
    if dtype.storage == "pyarrow":
        try:
            arrow = pa.array(np.asarray(values, dtype=object), type=pa.large_string(), from_pandas=True)
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            pass
        else:
            chunked = pa.chunked_array([arrow])
            return pd.arrays.ArrowStringArray(chunked, dtype=dtype)  # type: ignore[call-arg]  # stubs lag pandas 3
    return pd.array(values, dtype=dtype)


def fresh_index(frame: pd.DataFrame) -> pd.DataFrame:
    """`frame.reset_index(drop=True)`; the frame itself when its index is already 0, 1, ..., n - 1."""
    index = frame.index
    if isinstance(index, pd.RangeIndex) and index.start == 0 and index.step == 1:
        return frame
    return frame.reset_index(drop=True)


def text_values(values: Any) -> np.ndarray:
    """`values.astype("string").to_numpy(dtype=object)` of a Series or pandas array: text, missing values
    as <NA>; without the conversion when the values already have that dtype (as a `DealHistory`'s text
    columns do)."""
    dtype = values.dtype
    if isinstance(dtype, pd.StringDtype) and dtype.na_value is pd.NA:
        return object_values(values)
    if isinstance(values, np.ndarray):
        values = pd.Series(values, dtype=object)
    return object_values(values.astype("string"))


def column(frame: pd.DataFrame | Mapping[str, Any], name: str) -> Any:
    """`frame[name].array`: a column's values (a pandas or numpy array, not to be written to), without
    building the Series, which costs more than reading a one-deal column (`frame[name]` is read dozens
    of times per one-deal score). Columns given by name (a mapping of arrays) are read as they are."""
    if not isinstance(frame, pd.DataFrame):
        return frame[name]
    get = getattr(frame, "_get_column_array", None)  # pandas' internal accessor (2.x and 3.x)
    loc = frame.columns.get_loc(name)
    if get is None or not isinstance(loc, int):
        return frame[name].array
    return get(loc)


def text_or_blank(values: Any) -> np.ndarray:
    """Each value as text, missing ones (None, NaN, <NA>) as '': an object array."""
    array = np.asarray(values, dtype=object)
    if len(array) > SMALL_QUERY:
        return pd.Series(array).fillna("").astype(str).to_numpy(dtype=object)
    out = np.empty(len(array), dtype=object)
    out[:] = ["" if is_missing(v) else str(v) for v in array.tolist()]
    return out


class KeyCodes:
    """Position of each key in a fixed list of distinct keys (`pd.Index.get_indexer`), -1 when absent.

    Missing keys (None, NaN, <NA>) match a missing entry of the list, as in pandas.
    """

    def __init__(self, keys: Any) -> None:
        self._keys = keys if isinstance(keys, pd.Index) else np.asarray(keys, dtype=object)
        # the index is built on the first large query, the dict on the first small one
        self._index: pd.Index | None = keys if isinstance(keys, pd.Index) else None
        self._code: dict[Any, int] | None = None
        self._missing_code = -1

    @property
    def index(self) -> pd.Index:
        if self._index is None:
            self._index = pd.Index(self._keys, dtype=object)
        return self._index

    def _small_lookup(self) -> dict[Any, int]:
        if self._code is None:
            code: dict[Any, int] = {}
            for i, key in enumerate(self._keys.tolist()):
                if is_missing(key):
                    if self._missing_code < 0:
                        self._missing_code = i
                else:
                    code.setdefault(key, i)
            self._code = code
        return self._code

    def __len__(self) -> int:
        return len(self._keys)

    def codes(self, keys: Any) -> np.ndarray:
        """int64 code of each key."""
        values = np.asarray(keys, dtype=object)
        if len(values) > SMALL_QUERY:
            return np.asarray(self.index.get_indexer(pd.Index(values, dtype=object)), dtype=np.int64)
        code = self._small_lookup()
        missing = self._missing_code
        return np.array(
            [missing if is_missing(k) else code.get(k, -1) for k in values.tolist()], dtype=np.int64
        )


class DealIndex:
    """Integer codes for deals, in sorted deal_id order.

    Codes follow the sorted ids (not the frame's row order) so that ties between deals are always
    broken the same way, whether or not other deals were added to the history.
    """

    def __init__(self, deals: pd.DataFrame) -> None:
        ids = text_values(column(deals, "deal_id"))
        order = np.argsort(ids, kind="stable")
        # a validated history's deals are already in deal_id order: no reordered copy
        in_order = bool((order == np.arange(len(order))).all())
        frame = deals if in_order else deals.iloc[order].reset_index(drop=True)
        self._codes = KeyCodes(ids if in_order else ids[order])
        self.n = len(frame)
        self.pipeline = text_values(column(frame, "pipeline"))
        self.owner = text_values(column(frame, "owner"))
        team = column(frame, "team") if "team" in frame.columns else pd.array([pd.NA] * len(frame), "string")
        self.team = text_values(team)
        amount = column(frame, "amount")
        if isinstance(amount, np.ndarray) and amount.dtype == np.float64:
            self.amount = amount.copy()
        else:
            self.amount = pd.to_numeric(frame["amount"], errors="coerce").to_numpy(dtype=np.float64)
        self.created = to_ns(column(frame, "created_at"))
        if "expected_close_date" in frame.columns:
            self.close_date = to_ns(column(frame, "expected_close_date"))
        else:
            self.close_date = np.full(self.n, NAT_NS, dtype=np.int64)

    def codes(self, deal_ids: Any) -> np.ndarray:
        """Code of each id (a Series or pandas array), -1 for ids not among the deals."""
        return self._codes.codes(text_values(deal_ids))


def point_codes(deals: DealIndex, points: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """(deal code, as_of in int64 ns) of each point (`deal_id`, `as_of`).

    Raises ValueError for deal ids not among `deals` or a missing as_of.
    """
    codes = deals.codes(column(points, "deal_id"))
    if (codes < 0).any():
        unknown = pd.unique(points["deal_id"].astype("string")[codes < 0])[:5]
        raise ValueError(f"points name deal_id(s) not in the history: {list(unknown)}")
    t = to_ns(column(points, "as_of"))
    if (t == NAT_NS).any():
        raise ValueError("points have a missing as_of; every point needs a time")
    return codes, t


class EventStream:
    """Events sorted by (code, time) with vectorised "how many at or before t" queries.

    Each (code, time) pair is encoded as one int64: code * (G + 1) + rank of time among the G distinct
    event times. A query time gets the rank "number of event times <= t", so comparing encoded keys is
    exactly comparing times within a code, and one global `np.searchsorted` answers every query.
    """

    def __init__(self, codes: np.ndarray, times: np.ndarray, n_codes: int) -> None:
        codes = np.asarray(codes, dtype=np.int64)
        times = np.asarray(times, dtype=np.int64)
        valid = np.flatnonzero((codes >= 0) & (times != NAT_NS))
        # lexsort is stable, so rows at the same time keep their input order.
        self.order = valid[np.lexsort((times[valid], codes[valid]))]
        self.codes = codes[self.order]
        self.times = times[self.order]
        self.grid = np.unique(self.times)
        self.base = np.int64(len(self.grid) + 1)
        self.keys = self.codes * self.base + np.searchsorted(self.grid, self.times, side="right")
        bounds = np.arange(n_codes + 1, dtype=np.int64) * self.base
        self.starts = np.searchsorted(self.keys, bounds, side="left")

    def __len__(self) -> int:
        return len(self.order)

    def count_le(self, codes: np.ndarray, times: np.ndarray) -> np.ndarray:
        """Number of events of each code dated at or before each time (codes must be valid)."""
        query = codes * self.base + np.searchsorted(self.grid, times, side="right")
        return np.searchsorted(self.keys, query, side="right") - self.starts[codes]

    def count_many(self, codes: np.ndarray, times: list[np.ndarray]) -> list[np.ndarray]:
        """`[count_le(codes, ts) for ts in times]`, answered by one query."""
        if not times:
            return []
        n = len(codes)
        counts = self.count_le(np.concatenate([codes] * len(times)), np.concatenate(times))
        return [counts[i * n:(i + 1) * n] for i in range(len(times))]

    def last_index(self, codes: np.ndarray, times: np.ndarray) -> np.ndarray:
        """Position (in sorted order) of the latest event of each code at or before each time; -1 if none."""
        count = self.count_le(codes, times)
        return np.where(count > 0, self.starts[codes] + count - 1, -1)

    def first_in_code(self) -> np.ndarray:
        """Boolean per sorted event: is it the first event of its code."""
        first = np.ones(len(self.codes), dtype=bool)
        first[1:] = self.codes[1:] != self.codes[:-1]
        return first


def take(values: np.ndarray, index: np.ndarray, default: Any) -> np.ndarray:
    """values[index] where index >= 0, else default (object or float arrays)."""
    if len(values) == 0:
        return np.full(len(index), default, dtype=values.dtype)
    picked = values[np.maximum(index, 0)]
    return np.where(index >= 0, picked, default)


def pair_keys(pipeline: np.ndarray, stage: np.ndarray) -> np.ndarray:
    """One string key per (pipeline, stage) pair, an object array; a missing part gives a missing key
    (<NA>)."""
    if len(pipeline) <= SMALL_QUERY:
        # the same text as the vectorised concatenation below, without its fixed cost
        pairs = zip(np.asarray(pipeline, dtype=object).tolist(), np.asarray(stage, dtype=object).tolist(),
                    strict=True)
        keys = np.empty(len(pipeline), dtype=object)
        keys[:] = [pd.NA if is_missing(p) or is_missing(s) else f"{p}\x1f{s}" for p, s in pairs]
        return keys
    joined = pd.Series(pipeline, dtype="string") + "\x1f" + pd.Series(stage, dtype="string")
    return np.asarray(joined.to_numpy(dtype=object), dtype=object)




def cumsum_by(flags: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """Cumulative count of True flags within each run of equal (sorted) codes."""
    if len(flags) == 0:
        return np.zeros(0, dtype=np.int64)
    total = np.cumsum(flags.astype(np.int64))
    first = np.ones(len(codes), dtype=bool)
    first[1:] = codes[1:] != codes[:-1]
    before = total - flags.astype(np.int64)  # count strictly before each row
    offset = np.maximum.accumulate(np.where(first, np.arange(len(codes)), 0))
    return total - before[offset]


def running_max_by(values: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """Running maximum of float `values` within each run of equal (sorted) codes, NaN skipped as in
    pandas' groupby cummax (a NaN row stays NaN)."""
    values = np.asarray(values, dtype=np.float64)
    if len(values) > SMALL_QUERY or np.isnan(values).any():
        return pd.Series(values).groupby(codes).cummax().to_numpy(dtype=np.float64)
    if len(values) and codes[0] == codes[-1] and not np.signbit(values).any():
        # one code (one deal's events): one running maximum, the loop's bits when no value is negative
        # (no -0.0, whose tie with 0.0 the two would settle differently)
        return np.maximum.accumulate(values)
    out = values.copy()
    for i in range(1, len(out)):
        if codes[i] == codes[i - 1] and out[i - 1] > out[i]:
            out[i] = out[i - 1]
    return out


@dataclass(frozen=True)
class FieldRows:
    """Changes of one field in (deal, time) order."""

    stream: EventStream
    value: np.ndarray  # object (strings) in sorted order


def field_rows(history: DealHistory, deals: DealIndex, field: str) -> FieldRows:
    frame = history.field_changes
    if frame is None or len(frame) == 0:
        empty = np.zeros(0, dtype=np.int64)
        return FieldRows(EventStream(empty, empty, deals.n), np.array([], dtype=object))
    mask = (frame["field"].astype("string") == field).fillna(False).to_numpy(dtype=bool)
    sub = frame[mask]
    stream = EventStream(deals.codes(sub["deal_id"]), to_ns(sub["changed_at"]), deals.n)
    value = text_values(sub["value"])[stream.order]
    return FieldRows(stream, value)


def owner_at(owners: FieldRows, deals: DealIndex, codes: np.ndarray, times: np.ndarray) -> np.ndarray:
    """The deal's owner as of each time: the latest owner change at or before it, else the creator."""
    idx = owners.stream.last_index(codes, times)
    return np.where(idx >= 0, take(owners.value, idx, None), deals.owner[codes])


class AsofIndex:
    """A time-indexed table presorted once for "last row with this key and `at <= t`" lookups.

    Same answers as `pd.merge_asof(direction="backward", allow_exact_matches=True)` by key, but the
    table is coded and sorted once, so a lookup for a handful of points against a big population
    costs two `np.searchsorted` calls instead of re-sorting and merging the whole table.
    Each row is encoded as key code * (G + 1) + rank of its time among the G distinct times (as in
    `EventStream`), so one global searchsorted answers every (key, time) query.
    """

    def __init__(self, table: pd.DataFrame, by: str | None, columns: list[str], keys: Any = None) -> None:
        at = table["at"].to_numpy(dtype=np.int64)
        if by is None:
            codes = np.zeros(len(at), dtype=np.int64)
            self.known: KeyCodes | None = None
        else:
            # Integer codes for the keys: immune to object-vs-string dtype clashes. A query key the table
            # has never seen gets -1, which matches nothing.
            raw = keys if keys is not None else table[by].astype(object).to_numpy(dtype=object)
            right_keys = pd.Index(np.asarray(raw, dtype=object))
            self.known = KeyCodes(right_keys.unique())
            codes = self.known.index.get_indexer(right_keys).astype(np.int64)
        order = np.lexsort((at, codes))  # stable: equal (key, at) rows keep their order; the last wins
        self.grid = np.unique(at)
        self.base = np.int64(len(self.grid) + 1)
        self.codes = codes[order]
        self.keys = self.codes * self.base + np.searchsorted(self.grid, at[order], side="right")
        self.values = {c: table[c].to_numpy(dtype=np.float64)[order] for c in columns}

    def lookup(self, keys: np.ndarray | None, times: np.ndarray, columns: list[str]) -> dict[str, np.ndarray]:
        """The `columns` of the last row with each key at or before each time; NaN where none."""
        times = np.asarray(times, dtype=np.int64)
        if self.known is None:
            query_codes = np.zeros(len(times), dtype=np.int64)
        else:
            assert keys is not None
            query_codes = self.known.codes(keys)
        query = query_codes * self.base + np.searchsorted(self.grid, times, side="right")
        pos = np.searchsorted(self.keys, query, side="right") - 1
        safe = np.maximum(pos, 0)
        hit = (query_codes >= 0) & (pos >= 0)
        if len(self.codes):
            hit &= self.codes[safe] == query_codes
        else:
            hit[:] = False
        out: dict[str, np.ndarray] = {}
        for col in columns:
            values = self.values[col]
            out[col] = np.where(hit, values[safe], np.nan) if len(values) else np.full(len(times), np.nan)
        return out


def asof_lookup(
    table: pd.DataFrame, by: str | None, keys: np.ndarray | None, times: np.ndarray, columns: list[str]
) -> dict[str, np.ndarray]:
    """For each (key, time), the `columns` of the last table row with that key and `at <= time`.

    Rows without a match get NaN. The table must have an int64-ns column `at`. For repeated lookups
    against the same table, build an `AsofIndex` once (a `Population` keeps one per table).
    """
    return AsofIndex(table, by, columns).lookup(keys, times, columns)
