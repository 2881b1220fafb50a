"""Validation and coercion of deal-history frames into a typed `DealHistory`.

Three entries, one set of rules:

- `validate_and_coerce` takes raw frames (CSV text, Parquet, the store's rows): it parses every column
  (`parsing`), applying the per-value rules, then runs the cross-row checks (`checks`, `specs`).
- `validate_typed` takes frames already in the `DealHistory` dtypes whose fields were checked one by one
  at the edge (the API's pydantic models, built by `serving.mapping`): it runs only the cross-row checks
  and the field-change value rule, which depends on two columns. `check_typed` is those checks alone,
  `validate_typed` them and the assembly below (new events of stored deals need only the checks: the
  store orders events on every read).
- `assemble_typed` takes typed frames whose validity is already known (the store's rows, which every
  write validated in its transaction, typed by `parsing.stored_deals` / `stored_events` with the same
  per-value rules): it runs no check, only the assembly both entries end in (sorting, the same-time
  order of stage changes, inferred specs), so it returns what they return on the same rows.

The first two collect every problem (up to MAX_PROBLEMS) before raising `HistoryValidationError`, each
naming the table, 1-based data row, column and a hint. Pipelines without a spec get one inferred
(`inference`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from features.history import EVENT_TIME, DealHistory, PipelineSpec
from features.stages import order_stage_changes
from features.timeindex import column, fresh_index, object_values
from features.validation.checks import (
    SMALL_ROWS,
    EventColumns,
    KnownDeals,
    check_event_columns,
    check_events,
    check_unique_deals,
    deal_positions,
    positions_among,
)
from features.validation.inference import infer_pipeline_specs
from features.validation.parsing import (
    DEAL_COLUMNS,
    EARLIEST_TIME,
    EVENT_COLUMNS,
    LATEST_TIME,
    MAX_AMOUNT,
    UTC_NS,
    as_frame,
    attribute_values,
    check_columns,
    coerce_attribute,
    field_change_values,
    format_utc_iso,
    parse_deals,
    parse_events,
    stored_deals,
    stored_events,
)
from features.validation.problems import MAX_PROBLEMS, ProblemCollector
from features.validation.specs import check_stages_against_specs, given_specs

__all__ = [
    "DEAL_COLUMNS",
    "EventColumns",
    "KnownDeals",
    "ProblemCollector",
    "EARLIEST_TIME",
    "EVENT_COLUMNS",
    "LATEST_TIME",
    "MAX_AMOUNT",
    "MAX_PROBLEMS",
    "UTC_NS",
    "assemble_typed",
    "attribute_values",
    "check_event_tables",
    "check_typed",
    "coerce_attribute",
    "format_utc_iso",
    "infer_pipeline_specs",
    "stored_deals",
    "stored_events",
    "validate_and_coerce",
    "validate_typed",
]

EVENT_TABLES = ("stage_changes", "activities", "field_changes")
SpecsIn = Mapping[str, PipelineSpec] | Mapping[str, Mapping[str, Any]] | None


def validate_and_coerce(
    deals: pd.DataFrame,
    stage_changes: pd.DataFrame,
    activities: pd.DataFrame,
    field_changes: pd.DataFrame | None = None,
    pipelines: SpecsIn = None,
    source: str | None = None,
) -> DealHistory:
    """Check raw frames against the input format and return a typed `DealHistory`.

    Raises `HistoryValidationError` with every problem found. Extra deal columns become custom
    attributes; extra event columns are dropped.
    """
    problems = ProblemCollector()
    raw = {
        "deals": as_frame(deals, "deals"),
        "stage_changes": as_frame(stage_changes, "stage_changes"),
        "activities": as_frame(activities, "activities"),
        "field_changes": as_frame(field_changes, "field_changes"),
    }
    complete = {table: check_columns(frame, table, problems) for table, frame in raw.items()}
    specs = given_specs(pipelines, problems)

    deal_frame: pd.DataFrame | None = None
    attributes: tuple[str, ...] = ()
    if complete["deals"]:
        deal_frame, attributes = parse_deals(raw["deals"], problems)
        check_unique_deals(deal_frame, problems)
    events: dict[str, pd.DataFrame] = {}
    for table in EVENT_TABLES:
        if complete[table]:
            events[table] = parse_events(raw[table], table, problems)
            check_events(events[table], table, deal_frame, problems, raw[table][EVENT_TIME[table]])
    if deal_frame is not None and "stage_changes" in events:
        _check_stages(deal_frame, events["stage_changes"], specs, problems)
    problems.raise_if_any(source)
    assert deal_frame is not None  # every table was complete, or there would be problems
    return _assemble(deal_frame, events, specs, attributes)


def validate_typed(
    deals: pd.DataFrame,
    stage_changes: pd.DataFrame,
    activities: pd.DataFrame,
    field_changes: pd.DataFrame,
    pipelines: Mapping[str, PipelineSpec],
    source: str | None = None,
) -> DealHistory:
    """A `DealHistory` from frames whose fields are already typed and checked one by one.

    Columns must be those of `DealHistory` (any order; deals may carry attribute columns, already
    coerced), with a fresh RangeIndex. Runs the cross-row checks (duplicate ids, unknown deals, events
    before creation, stages of pipelines with a spec) and the field-change value rule; raises
    `HistoryValidationError` like `validate_and_coerce`, with rows numbered in the frames' order.
    """
    events = {"stage_changes": stage_changes, "activities": activities, "field_changes": field_changes}
    checked = check_typed(deals, events, pipelines, source)
    return assemble_typed(
        deals, checked["stage_changes"], checked["activities"], checked["field_changes"], pipelines
    )


def check_typed(
    deals: pd.DataFrame,
    events: Mapping[str, pd.DataFrame],
    pipelines: Mapping[str, PipelineSpec],
    source: str | None = None,
) -> dict[str, pd.DataFrame]:
    """The checks of `validate_typed` without the assembly: the event frames by table as given (a table
    left out has no rows), field-change values canonical."""
    problems = ProblemCollector()
    check_unique_deals(deals, problems)
    known = KnownDeals(column(deals, "deal_id"), column(deals, "created_at").asi8, column(deals, "pipeline"))
    columns = {
        table: EventColumns(
            column(frame, "deal_id"),
            column(frame, "event_id"),
            column(frame, EVENT_TIME[table]).asi8,
            frame.index,
        )
        for table, frame in events.items()
        if len(frame)
    }
    field_changes = events.get("field_changes")
    stage_changes = events.get("stage_changes")
    given = None if field_changes is None else column(field_changes, "value")
    values = check_event_tables(
        known,
        columns,
        None if field_changes is None or given is None else (column(field_changes, "field"), given),
        None if stage_changes is None else column(stage_changes, "stage"),
        pipelines,
        problems,
    )
    problems.raise_if_any(source)
    out = dict(events)
    if values is not None and field_changes is not None and values is not given:
        out["field_changes"] = field_changes.assign(value=values)
    return out


def check_event_tables(
    deals: KnownDeals,
    events: Mapping[str, EventColumns],
    field_changes: tuple[Any, Any] | None,
    stages: Any,
    pipelines: Mapping[str, PipelineSpec],
    problems: ProblemCollector,
) -> Any | None:
    """The cross-row checks of new events of `deals` (with their pipelines), on the columns alone:
    `check_typed` on frames, and a request's few new events of stored deals without building any
    (`serving.mapping.checked_event_rows`). `field_changes`: (field, value) of the field changes (Series
    or arrays); `stages`: the stage changes' stages. Adds the problems found; returns the field-change
    values, close dates canonical (the given column itself when none was rewritten; None without field
    changes)."""
    for table, rows in events.items():
        check_event_columns(rows, table, deals, problems)
    values = None
    if field_changes is not None and len(field_changes[1]):
        field, value = field_changes
        values = field_change_values(field, value, value, problems)
    if stages is not None and len(stages) and pipelines and "stage_changes" in events:
        position = positions_among(deals.deal_id, events["stage_changes"].deal_id)
        pipes = object_values(deals.pipeline)
        row_pipeline: Any = np.full(len(position), None, dtype=object)
        if len(pipes):
            row_pipeline = np.where(position >= 0, pipes[position], None)
        check_stages_against_specs(stages, row_pipeline, pipelines, problems)
    return values


def assemble_typed(
    deals: pd.DataFrame,
    stage_changes: pd.DataFrame,
    activities: pd.DataFrame,
    field_changes: pd.DataFrame,
    pipelines: Mapping[str, PipelineSpec],
) -> DealHistory:
    """The `DealHistory` of typed frames that hold a valid history, without checking it: what
    `validate_typed` returns once its checks pass (columns in order, frames sorted, stage changes in
    `features.stages.order_stage_changes` order, a spec for every pipeline).

    For frames whose validity is already known: the store's rows (`serving.store`, `trusted` reads),
    which every write validated in its transaction, built by `parsing.stored_deals` / `stored_events`.
    """
    attributes = tuple(sorted(c for c in deals.columns if c not in DEAL_COLUMNS))
    deals = _columns(deals, [*DEAL_COLUMNS, *attributes])
    given = {"stage_changes": stage_changes, "activities": activities, "field_changes": field_changes}
    events = {table: _columns(frame, list(EVENT_COLUMNS[table])) for table, frame in given.items()}
    return _assemble(deals, events, dict(pipelines), attributes)


def _columns(frame: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    """`frame[columns]`, without the copy when the frame already has exactly those columns in order."""
    return frame if list(frame.columns) == columns else frame[columns]


def _check_stages(
    deals: pd.DataFrame,
    stage_changes: pd.DataFrame,
    specs: Mapping[str, PipelineSpec],
    problems: ProblemCollector,
) -> None:
    if stage_changes.empty or not specs:
        return
    position = deal_positions(deals, column(stage_changes, "deal_id"))
    pipelines = object_values(column(deals, "pipeline"))
    row_pipeline = np.where(position >= 0, pipelines[position], None)
    check_stages_against_specs(column(stage_changes, "stage"), row_pipeline, specs, problems)


def _sort_events(frame: pd.DataFrame, time_column: str) -> pd.DataFrame:
    # Stable: events of one deal at the same instant keep the order they were given in; stage changes
    # are then put in `features.stages.order_stage_changes` order, which does not depend on arrival.
    return _stable_sort(frame, ["deal_id", time_column])


def _stable_sort(frame: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    """`frame.sort_values(by, kind="stable")` with a fresh RangeIndex.

    Small frames without missing keys are ordered by one Python sort of the key tuples (the same
    stable order: text by code point, times by instant), and not copied when already in order, as a
    request's events usually are: pandas' multi-column sort has a fixed cost of milliseconds.
    """
    if len(frame) < 2:
        return fresh_index(frame)
    if len(frame) <= SMALL_ROWS:
        keys = [_sort_key(column(frame, c)) for c in by]
        if not any(bool(pd.isna(k).any()) for k in keys if k.dtype == object) and all(
            (k != np.iinfo(np.int64).min).all() for k in keys if k.dtype != object
        ):
            if _in_order(keys):
                return fresh_index(frame)
            rows = list(zip(*(k.tolist() for k in keys), strict=True))
            order = sorted(range(len(rows)), key=rows.__getitem__)
            return frame.take(order).reset_index(drop=True)
    return frame.sort_values(by, kind="stable").reset_index(drop=True)


def _in_order(keys: list[np.ndarray]) -> bool:
    """Whether rows whose sort keys (no missing values) are `keys` are already in their sorted order: each
    row's key tuple is at most the next one's (then a stable sort keeps every row where it is)."""
    if len(keys[0]) < 2:
        return True
    undecided = np.ones(len(keys[0]) - 1, dtype=bool)  # rows whose keys so far equal the next row's
    for key in keys:
        before, after = key[:-1], key[1:]
        if (undecided & (before > after)).any():
            return False
        undecided &= before == after
    return True


def _sort_key(values: Any) -> np.ndarray:
    """A column's values (its array) for `_stable_sort`: times as int64 ns (NaT the minimum), others as
    objects."""
    if isinstance(values.dtype, pd.DatetimeTZDtype):
        return np.asarray(values.asi8)
    return object_values(values)


def _assemble(
    deals: pd.DataFrame,
    events: Mapping[str, pd.DataFrame],
    specs: Mapping[str, PipelineSpec],
    attributes: tuple[str, ...],
) -> DealHistory:
    """Sorted frames and a spec for every pipeline (given, or inferred): the validated history."""
    sorted_events: dict[str, pd.DataFrame] = {}
    for table, frame in events.items():
        sorted_events[table] = _sort_events(frame, EVENT_TIME[table])
    deals = _stable_sort(deals, ["deal_id"])
    pipes = column(deals, "pipeline")
    # a set of the few values of a small frame costs less than pd.unique's fixed cost; the same names
    seen = {str(p) for p in (object_values(pipes).tolist() if len(pipes) <= SMALL_ROWS else pd.unique(pipes))}
    missing_specs = sorted(p for p in seen if p not in specs)
    all_specs = dict(specs)
    all_specs.update(infer_pipeline_specs(deals, sorted_events["stage_changes"], missing_specs))
    return DealHistory(
        deals=deals,
        stage_changes=order_stage_changes(sorted_events["stage_changes"], deals, all_specs),
        activities=sorted_events["activities"],
        field_changes=sorted_events["field_changes"],
        pipelines=all_specs,
        attribute_columns=attributes,
    )
