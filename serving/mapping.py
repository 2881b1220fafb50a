"""Request models to history frames, in one place, and the one validation of what pydantic cannot see.

Pydantic has checked every field (types, allowed values, time range, amounts >= 0, sizes), so the
frames are built directly in the `DealHistory` dtypes and handed to `features.validation.validate_typed`,
which runs only the cross-row checks (duplicate ids, events of unknown deals or before creation, stages
of a pipeline with a spec) and the field-change value rule (new events of stored deals: to its checks
alone, `check_typed`, since the store orders events on every read). Its problems come back as a 422 naming
each bad item by its request path (`deals[3].stage_changes[0].changed_at`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import Enum
from typing import Any, cast

import numpy as np
import pandas as pd

from features.history import EVENT_TIME, DealHistory, HistoryValidationError, PipelineSpec, to_utc_timestamp
from features.timeindex import datetimes_ns, frame_of, from_ns, object_values, string_array
from features.validation import (
    DEAL_COLUMNS,
    EVENT_COLUMNS,
    EventColumns,
    KnownDeals,
    ProblemCollector,
    attribute_values,
    check_event_tables,
    validate_typed,
)
from serving.errors import raise_history_error
from serving.schemas import DealIn, DealWithHistoryIn, EventsIn

EVENT_TABLES = ("stage_changes", "activities", "field_changes")
_TIME_COLUMNS = frozenset({"created_at", "expected_close_date", "changed_at", "occurred_at"})
_FLOAT_COLUMNS = frozenset({"amount"})


@dataclass
class RequestFrames:
    """Typed frames of a request, and what writes the request path of every row (`locate()[table][row]`),
    called only when a problem is to be named."""

    tables: dict[str, pd.DataFrame]
    locate: Callable[[], dict[str, list[str]]] = dict


def time_or(value: datetime | None, default: pd.Timestamp | None = None) -> pd.Timestamp:
    """A request's time as a UTC Timestamp; when absent, `default`, or now."""
    if value is not None:
        return to_utc_timestamp(value)
    return default if default is not None else pd.Timestamp.now(tz="UTC")


def _column(name: str, values: list[Any]) -> Any:
    """One column's values as the array `DealHistory` holds (no Series: the frame is built once)."""
    if name in _TIME_COLUMNS:
        # pydantic made every time aware UTC; whole microseconds, so the nanoseconds are exact
        return from_ns(datetimes_ns(values))
    if name in _FLOAT_COLUMNS:
        return np.array([np.nan if v is None else v for v in values], dtype=np.float64)
    return string_array([v if type(v) is str else _text(v) for v in values])


def _text(value: Any) -> str | None:
    """A request value as the text the history stores (enum members are str subclasses: their value)."""
    if isinstance(value, Enum):
        return str(value._value_)  # `.value` without the descriptor's cost (paid for every activity)
    return None if value is None else str(value.value if hasattr(value, "value") else value)


def _frame(columns: Sequence[str], rows: list[dict[str, Any]]) -> pd.DataFrame:
    return _frame_of_columns({c: [r.get(c) for r in rows] for c in columns})


def _frame_of_columns(values: Mapping[str, list[Any]]) -> pd.DataFrame:
    """A typed frame of plain column values (`_column`), with a fresh RangeIndex."""
    n = len(next(iter(values.values()))) if values else 0
    return frame_of({c: _column(c, v) for c, v in values.items()}, pd.RangeIndex(n))


def _deal_rows(deals: Sequence[DealIn]) -> pd.DataFrame:
    columns = {c: _column(c, [getattr(d, c) for d in deals]) for c in DEAL_COLUMNS}
    names = sorted({name for d in deals for name in d.attributes})
    for name in names:
        columns[name] = attribute_values([d.attributes.get(name) for d in deals])  # float64 or text
    return frame_of(columns, pd.RangeIndex(len(deals)))


def empty_event_frames() -> dict[str, pd.DataFrame]:
    """The three event tables with no rows, typed."""
    return {table: _frame(EVENT_COLUMNS[table], []) for table in EVENT_TABLES}


# Each event table's columns but deal_id, as the request's event models name them.
_EVENT_FIELDS = {table: [c for c in EVENT_COLUMNS[table] if c != "deal_id"] for table in EVENT_TABLES}


def inline_frames(deals: Sequence[DealWithHistoryIn], indexes: Sequence[int] | None = None) -> RequestFrames:
    """Frames of deals sent with their histories; `indexes[i]` is deal i's index in the request's list."""
    positions = list(indexes) if indexes is not None else list(range(len(deals)))
    counts: dict[str, list[int]] = {}
    tables = {"deals": _deal_rows(deals)}
    for table in EVENT_TABLES:
        # the columns read straight off the models (no per-event dict): the same values as model_dump
        values: dict[str, list[Any]] = {c: [] for c in EVENT_COLUMNS[table]}
        counts[table] = []
        for deal in deals:
            events = getattr(deal, table)
            counts[table].append(len(events))
            if not events:
                continue
            values["deal_id"] += [deal.deal_id] * len(events)
            for name in _EVENT_FIELDS[table]:
                values[name] += [getattr(e, name) for e in events]
        tables[table] = _frame_of_columns(values)
    return RequestFrames(tables, functools.partial(_inline_paths, positions, counts))


def _inline_paths(positions: list[int], counts: dict[str, list[int]]) -> dict[str, list[str]]:
    """The request path of every row of `inline_frames`' frames: deal i is `deals[positions[i]]`, with
    `counts[table][i]` events of each table."""
    paths = {"deals": [f"deals[{i}]" for i in positions]}
    for table, per_deal in counts.items():
        paths[table] = [f"deals[{i}].{table}[{j}]" for i, n in zip(positions, per_deal, strict=True)
                        for j in range(n)]
    return paths


def deal_frames(deals: Sequence[DealIn]) -> RequestFrames:
    """Frames of deals without events (`POST /v1/deals`)."""
    tables = {"deals": _deal_rows(deals), **empty_event_frames()}
    return RequestFrames(tables, lambda: {"deals": [f"deals[{i}]" for i in range(len(deals))]})


def checked_event_rows(
    body: EventsIn, stored: Sequence[Mapping[str, Any]], specs: Mapping[str, PipelineSpec]
) -> dict[str, list[dict[str, Any]]]:
    """New events of stored deals (`POST /v1/events`) as the store's rows by table (naive UTC times,
    missing values None, field-change values canonical), after the checks `checked_events` runs on frames
    (`features.validation.check_event_tables`, on the columns: a request's few events build no frame);
    422 naming each bad item by its request path. `stored`: the deals' rows as the store holds them
    (`deal_id`, `pipeline`, naive UTC `created_at`); `specs`: the specs stage changes must meet."""
    known = KnownDeals(
        np.array([r["deal_id"] for r in stored], dtype=object),
        datetimes_ns([r["created_at"] for r in stored]),
        np.array([r["pipeline"] for r in stored], dtype=object),
    )
    rows: dict[str, list[dict[str, Any]]] = {}
    columns: dict[str, EventColumns] = {}
    locators: dict[str, list[str]] = {"deals": [f"stored deal {r['deal_id']}" for r in stored]}
    for table in EVENT_TABLES:
        events = getattr(body, table)
        if not events:
            continue
        names, time_col = EVENT_COLUMNS[table], EVENT_TIME[table]
        rows[table] = [{c: _text(getattr(e, c)) for c in names if c != time_col} for e in events]
        times = [getattr(e, time_col) for e in events]
        for rec, at in zip(rows[table], times, strict=True):
            rec[time_col] = at.astimezone(UTC).replace(tzinfo=None)
        columns[table] = EventColumns(
            np.array([r["deal_id"] for r in rows[table]], dtype=object),
            np.array([r["event_id"] for r in rows[table]], dtype=object),
            datetimes_ns(times),
            pd.RangeIndex(len(events)),
        )
        locators[table] = [f"{table}[{j}]" for j in range(len(events))]
    fields = None
    if "field_changes" in rows:
        changes = rows["field_changes"]
        fields = tuple(pd.Series(_column(c, [r[c] for r in changes])) for c in ("field", "value"))
    stages = None
    if "stage_changes" in rows:
        stages = np.array([r["stage"] for r in rows["stage_changes"]], dtype=object)
    problems = ProblemCollector()
    try:
        values = check_event_tables(known, columns, cast(Any, fields), stages, specs, problems)
        problems.raise_if_any("request")
    except HistoryValidationError as exc:
        raise_history_error(exc, locators)
        raise  # unreachable: raise_history_error always raises
    if values is not None:
        for rec, value in zip(rows["field_changes"], object_values(values, None), strict=True):
            rec["value"] = value
    return rows


def validated_history(frames: RequestFrames, specs: Mapping[str, PipelineSpec]) -> DealHistory:
    """The request's `DealHistory` after the cross-row checks; 422 naming each bad item otherwise."""
    t = frames.tables
    try:
        return validate_typed(
            t["deals"], t["stage_changes"], t["activities"], t["field_changes"], specs, source="request"
        )
    except HistoryValidationError as exc:
        raise_history_error(exc, frames.locate())
        raise  # unreachable: raise_history_error always raises
