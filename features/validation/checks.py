"""Cross-row checks on typed frames: duplicate ids, events of unknown deals, events before creation.

These are the checks that no single field can answer, so they run on every path: after parsing on file
import, and alone on the API path, where pydantic has already checked each field.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from features.history import EVENT_TIME
from features.timeindex import column, from_ns, object_values
from features.validation.problems import ProblemCollector

# Below this many rows the checks run as one Python pass over plain values: pandas' string and index
# operations have fixed costs that dominate the API's one-deal requests. Same answers either way.
SMALL_ROWS = 2_000


def _first_row_of_duplicates(keys: Any, index: pd.Index) -> tuple[np.ndarray, pd.Series | None]:
    """(mask of repeated keys after their first occurrence, 1-based row of that first occurrence);
    `keys` a Series, or the array of a Series with `index` (an object array: a Series of dtype object)."""
    values = object_values(keys)
    present = values[pd.notna(values)]
    # The common case (no repeats) is answered with one set; pandas' duplicated costs more on small input.
    if len(set(present)) == len(present):
        return np.zeros(len(values), dtype=bool), None
    if not isinstance(keys, pd.Series):
        keys = pd.Series(keys, index=index, dtype=object if isinstance(keys, np.ndarray) else None)
    dup = keys.notna() & keys.duplicated(keep="first")
    firsts = keys[keys.notna() & ~keys.duplicated(keep="first")]
    first_row = pd.Series(firsts.index + 1, index=firsts.to_numpy())
    return dup.to_numpy(dtype=bool), keys.map(first_row)


def _per_deal_keys(deal_ids: Any, event_ids: Any, index: pd.Index) -> pd.Series | np.ndarray:
    """One key per (deal_id, event_id) pair; missing when the event_id is missing. A Series, or for
    small tables the object array of one (the index is the events')."""
    if len(deal_ids) > SMALL_ROWS:
        event_id = pd.Series(event_ids, index=index).astype("string")
        deal_id = pd.Series(deal_ids, index=index).astype("string")
        return (deal_id + "\x1f" + event_id).where(event_id.notna())
    deal = object_values(deal_ids)
    event = object_values(event_ids)
    gone = (pd.isna(deal) | pd.isna(event)).tolist()  # one array test, not one per value
    keys = np.empty(len(deal), dtype=object)
    pairs = zip(deal.tolist(), event.tolist(), gone, strict=True)
    keys[:] = [None if g else f"{d}\x1f{e}" for d, e, g in pairs]
    return keys


def deal_positions(deals: pd.DataFrame, ids: Any) -> np.ndarray:
    """Row in `deals` of each id (a Series or array), its first row if repeated; -1 for an id not in
    deals or missing."""
    return positions_among(column(deals, "deal_id"), ids)


def positions_among(deal_ids: Any, ids: Any) -> np.ndarray:
    """Position in `deal_ids` (an array) of each of `ids`, its first position if repeated; -1 for an id
    not there or missing."""
    deal_ids = object_values(deal_ids)
    wanted = object_values(ids)
    if len(deal_ids) <= SMALL_ROWS and len(wanted) <= SMALL_ROWS:
        # missing values are found by one array test each, not one per value
        first: dict[object, int] = {}
        present = zip(deal_ids.tolist(), pd.isna(deal_ids).tolist(), strict=True)
        for row, (deal_id, gone) in enumerate(present):
            if not gone:
                first.setdefault(deal_id, row)
        lost = pd.isna(wanted).tolist()
        return np.array([-1 if g else first.get(i, -1) for i, g in zip(wanted.tolist(), lost, strict=True)],
                        dtype=np.intp)
    # Repeated and missing deal ids are reported elsewhere; look ids up among each id's first row.
    is_first = ~pd.Index(deal_ids, dtype=object).duplicated(keep="first") & pd.notna(deal_ids)
    rows = np.flatnonzero(is_first)
    if rows.size == 0:
        return np.full(len(ids), -1, dtype=np.intp)
    found = pd.Index(deal_ids[rows], dtype=object).get_indexer(wanted)
    return np.where(found >= 0, rows[found], -1)


def check_unique_deals(deals: pd.DataFrame, problems: ProblemCollector) -> None:
    """Each deal_id appears once in deals."""
    dup, first_row = _first_row_of_duplicates(column(deals, "deal_id"), deals.index)
    if not dup.any():
        return
    problems.add_rows(
        "deals",
        dup,
        "deal_id",
        "duplicate deal_id {value} (first seen in row {extra})",
        "each deal appears once in deals; later values belong in field_changes",
        values=deals["deal_id"],
        extra=first_row,
    )


def check_events(
    events: pd.DataFrame,
    table: str,
    deals: pd.DataFrame | None,
    problems: ProblemCollector,
    shown_times: pd.Series | None = None,
) -> None:
    """Unique event ids; with `deals`, every event names a known deal and is not before its creation.

    `shown_times` are the times as the user wrote them (for messages); default the typed times.
    """
    if events.empty:
        return
    time_column = EVENT_TIME[table]
    known = None if deals is None else KnownDeals(column(deals, "deal_id"), column(deals, "created_at").asi8)
    rows = EventColumns(
        column(events, "deal_id"),
        column(events, "event_id"),
        column(events, time_column).asi8,
        events.index,
        shown_times,
    )
    check_event_columns(rows, table, known, problems)


@dataclass(frozen=True)
class KnownDeals:
    """The deals events may name: their ids, creation times (int64 ns, NAT_NS when missing) and, for the
    stage checks, pipelines (arrays, one item per deal)."""

    deal_id: Any
    created_ns: np.ndarray
    pipeline: Any = None


@dataclass(frozen=True)
class EventColumns:
    """The columns of one event table the checks read: deal and event ids (arrays), the event times in
    int64 ns (NAT_NS when missing), the rows' index (data row i + 1 is position i) and the times as
    quoted in messages (default: the typed times)."""

    deal_id: Any
    event_id: Any
    at_ns: np.ndarray
    index: pd.Index
    shown_times: Any = None


def check_event_columns(
    rows: EventColumns, table: str, deals: KnownDeals | None, problems: ProblemCollector
) -> None:
    """`check_events` on the columns alone (no frame: a request's few new events are checked so)."""
    if not len(rows.at_ns):
        return
    time_column = EVENT_TIME[table]
    # event_id is unique within a deal (two deals may use the same id), as the store keys it
    ids = object_values(rows.deal_id)
    # a small table's keys are built from these values; a large one's from the column itself
    keys = _per_deal_keys(ids if len(ids) <= SMALL_ROWS else rows.deal_id, rows.event_id, rows.index)
    dup, first_row = _first_row_of_duplicates(keys, rows.index)
    if dup.any():
        problems.add_rows(
            table,
            dup,
            "event_id",
            "duplicate event_id {value} for the same deal (first seen in row {extra})",
            f"event_id must be unique within a deal's {table}",
            values=rows.event_id,
            extra=first_row,
        )
    if deals is None:
        return
    position = positions_among(deals.deal_id, ids)
    unknown = pd.notna(ids) & (position < 0)
    if unknown.any():
        problems.add_rows(
            table,
            unknown,
            "deal_id",
            "unknown deal {value}",
            "every history row must refer to a deal_id listed in deals",
            values=rows.deal_id,
        )
    # Creation times by the positions found above, in int64 nanoseconds (NaT is the minimum int64, so a
    # missing time is never "before"); the Series for messages is built only when something is early.
    known_ns = deals.created_ns
    event_ns = rows.at_ns
    found = position >= 0
    created_ns = np.full(len(event_ns), np.iinfo(np.int64).min, dtype=np.int64)
    created_ns[found] = known_ns[position[found]]
    early = found & (event_ns != np.iinfo(np.int64).min) & (event_ns < created_ns)
    if not early.any():
        return
    created_index = pd.DatetimeIndex(created_ns.view("datetime64[ns]")).tz_localize("UTC")
    created = pd.Series(created_index, index=rows.index)
    shown = rows.shown_times if rows.shown_times is not None else from_ns(event_ns)
    problems.add_rows(
        table,
        early,
        time_column,
        "{value} is before the deal was created ({extra})",
        "events cannot predate the deal's created_at; fix the time or created_at",
        values=shown,
        extra=created,
    )
