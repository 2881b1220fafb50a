"""Cross-row checks on typed frames: duplicate ids, events of unknown deals, events before creation.

These are the checks that no single field can answer, so they run on every path: after parsing on file
import, and alone on the API path, where pydantic has already checked each field.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from features.history import EVENT_TIME
from features.validation.problems import ProblemCollector


def _first_row_of_duplicates(keys: pd.Series) -> tuple[pd.Series, pd.Series | None]:
    """(mask of repeated keys after their first occurrence, 1-based row of that first occurrence)."""
    dup = keys.notna() & keys.duplicated(keep="first")
    if not bool(dup.any()):
        return dup.astype(bool), None
    firsts = keys[keys.notna() & ~keys.duplicated(keep="first")]
    first_row = pd.Series(firsts.index + 1, index=firsts.to_numpy())
    return dup.astype(bool), keys.map(first_row)


def check_unique_deals(deals: pd.DataFrame, problems: ProblemCollector) -> None:
    """Each deal_id appears once in deals."""
    dup, first_row = _first_row_of_duplicates(deals["deal_id"])
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
    dup, first_row = _first_row_of_duplicates(events["event_id"])
    problems.add_rows(
        table,
        dup,
        "event_id",
        "duplicate event_id {value} (first seen in row {extra})",
        f"event_id must be unique within {table}",
        values=events["event_id"],
        extra=first_row,
    )
    if deals is None:
        return
    known = deals.drop_duplicates("deal_id").set_index("deal_id")["created_at"]
    ids = events["deal_id"]
    # get_indexer on a plain object Index hashes once; Series.isin on arrow strings is far slower.
    position = pd.Index(known.index.astype(object)).get_indexer(ids.astype(object))
    problems.add_rows(
        table,
        ids.notna() & (position < 0),
        "deal_id",
        "unknown deal {value}",
        "every history row must refer to a deal_id listed in deals",
        values=ids,
    )
    # Creation times by the positions found above, not Series.map: map on an empty lookup comes back
    # float64, which cannot be cast to times (an empty history must validate).
    known_times = known.to_numpy(dtype="datetime64[ns]")
    created_values = np.full(len(events), np.datetime64("NaT", "ns"))
    created_values[position >= 0] = known_times[position[position >= 0]]
    created = pd.Series(pd.DatetimeIndex(created_values).tz_localize("UTC"), index=events.index)
    early = (events[time_column] < created).fillna(False).astype(bool)
    problems.add_rows(
        table,
        early,
        time_column,
        "{value} is before the deal was created ({extra})",
        "events cannot predate the deal's created_at; fix the time or created_at",
        values=events[time_column] if shown_times is None else shown_times,
        extra=created,
    )
