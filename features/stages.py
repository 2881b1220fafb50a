"""Stage meaning and deal state: the one definition every layer asks.

- **Outcome** of a (pipeline, stage) pair: 'won', 'lost' or 'open'. A pipeline's spec decides when it
  lists won (lost) stages; a pipeline without a spec, or whose spec has no won (lost) list, uses the name
  rule: a stage whose name contains `won` (`lost`), in any case, closes the deal. A missing stage is open.
- **Position** of a stage within its pipeline: open stages 0 .. n-1 in the pipeline's order, and every
  closing stage n, after every open one. An unknown stage (not one of its pipeline's open stages and not
  closing, or any stage of a pipeline without a spec) has position NaN (`UNKNOWN_POSITION`): it is
  nowhere in the order, and since NaN compares False, a move from or to an unknown stage is neither
  forward nor backward.
- **Start**: before its first stage change a deal is in its pipeline's first open stage.
- **Deal state** as of t: 'not_created' before the deal's `created_at`; otherwise the outcome of its
  latest stage change at or before t ('open' when it has none). A later move back to an open stage
  therefore reopens a closed deal.
- **Order of stage changes with the same timestamp** (one deal): by the stage's position (open stages in
  pipeline order, unknown open stages after them, closing stages last), then `event_id`, then the stage
  name. The order does not depend on the order the events arrived in, so a deal's state after two
  changes at the same instant is the same whichever was sent first. `DealHistory.stage_changes` is kept
  in this order (`order_stage_changes`), and every reader takes the last row at or before t.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from features.history import DealHistory, PipelineSpec
from features.timeindex import (
    NAT_NS,
    SMALL_QUERY,
    DealIndex,
    EventStream,
    column,
    cumsum_by,
    fresh_index,
    is_missing,
    object_values,
    point_codes,
    take,
    text_values,
    to_ns,
)

UNKNOWN_POSITION = float("nan")
DEAL_STATES = ("not_created", "open", "won", "lost")
OUTCOMES = ("open", "won", "lost")


def stage_outcome(pipeline: str | None, stage: str | None, specs: Mapping[str, PipelineSpec]) -> str:
    """'won', 'lost' or 'open' for one (pipeline, stage) pair (see the module docstring)."""
    if stage is None or stage is pd.NA:
        return "open"
    spec = specs.get(pipeline) if pipeline is not None and pipeline is not pd.NA else None
    lower = stage.lower()
    won = stage in spec.won if spec is not None and spec.won else "won" in lower
    if won:
        return "won"
    lost = stage in spec.lost if spec is not None and spec.lost else "lost" in lower
    return "lost" if lost else "open"


def stage_position(pipeline: str | None, stage: str | None, specs: Mapping[str, PipelineSpec]) -> float:
    """Position of one stage in its pipeline: open stages in order, closing stages last, unknown NaN."""
    spec = specs.get(pipeline) if pipeline is not None and pipeline is not pd.NA else None
    if spec is None:
        return UNKNOWN_POSITION
    if stage is not None and stage is not pd.NA and stage in spec.stages:
        return float(spec.stages.index(stage))
    return float(len(spec.stages)) if stage_outcome(pipeline, stage, specs) != "open" else UNKNOWN_POSITION


def stage_outcomes(pipeline: Any, stage: Any, specs: Mapping[str, PipelineSpec]) -> np.ndarray:
    """Vectorised `stage_outcome`: an object array of 'open' / 'won' / 'lost', one per pair."""
    return _per_pair(pipeline, stage, lambda p, s: stage_outcome(p, s, specs), object, None)


def stage_positions(pipeline: Any, stage: Any, specs: Mapping[str, PipelineSpec]) -> np.ndarray:
    """Vectorised `stage_position`: a float array, NaN for unknown stages."""
    return _per_pair(pipeline, stage, lambda p, s: stage_position(p, s, specs), np.float64, None)


def open_stage_counts(pipeline: Any, specs: Mapping[str, PipelineSpec]) -> np.ndarray:
    """Open stages in each row's pipeline (the position of its closing stages); NaN without a spec."""

    def count(p: str | None, _: str | None) -> float:
        spec = specs.get(p) if p is not None else None
        return float(len(spec.stages)) if spec is not None else np.nan

    return _per_pair(pipeline, np.zeros(len(pipeline), dtype=object), count, np.float64, None)


def first_stages(pipeline: Any, specs: Mapping[str, PipelineSpec]) -> np.ndarray:
    """The pipeline's first open stage (where a deal starts before any stage change), or None."""

    def first(p: str | None, _: str | None) -> str | None:
        spec = specs.get(p) if p is not None else None
        return spec.stages[0] if spec is not None and spec.stages else None

    return _per_pair(pipeline, np.zeros(len(pipeline), dtype=object), first, object, None)


def order_stage_changes(
    stage_changes: pd.DataFrame, deals: pd.DataFrame, specs: Mapping[str, PipelineSpec]
) -> pd.DataFrame:
    """Stage changes sorted by (deal_id, changed_at), ties in the documented same-time order.

    At equal time: open stages by position, unknown open stages after them, closing stages last; then
    `event_id` (missing last), then the stage name. Returns a new frame with a fresh RangeIndex.
    """
    if len(stage_changes) == 0:
        return stage_changes.reset_index(drop=True)
    # Integer sort keys and one np.lexsort: this runs on every validated history, the service's
    # one-deal requests included, where pandas' multi-column sort_values costs milliseconds.
    deal_rank = _text_rank(column(stage_changes, "deal_id"))
    times = to_ns(column(stage_changes, "changed_at"))
    order = np.lexsort((times, deal_rank))
    tied = (deal_rank[order][1:] == deal_rank[order][:-1]) & (times[order][1:] == times[order][:-1])
    if tied.any():
        pipe_of = pd.Series(object_values(deals["pipeline"]), index=pd.Index(object_values(deals["deal_id"])))
        pipe_of = pipe_of[~pipe_of.index.duplicated()]
        pipeline = pipe_of.reindex(pd.Index(object_values(stage_changes["deal_id"]))).to_numpy(dtype=object)
        stage = object_values(stage_changes["stage"])
        closing = (stage_outcomes(pipeline, stage, specs) != "open").astype(np.int64)
        position = np.nan_to_num(stage_positions(pipeline, stage, specs), nan=np.inf)
        events = (
            _text_rank(stage_changes["event_id"])
            if "event_id" in stage_changes.columns
            else np.zeros(len(stage), dtype=np.int64)
        )
        # np.lexsort: the last key is the primary one.
        order = np.lexsort((_text_rank(stage_changes["stage"]), events, position, closing, times, deal_rank))
    if np.array_equal(order, np.arange(len(order))):
        return fresh_index(stage_changes)  # already in order, as a request's stage changes usually are
    return stage_changes.take(order).reset_index(drop=True)


def _text_rank(values: Any) -> np.ndarray:
    """Rank of each value in sorted text order (missing values after every other value)."""
    text = text_values(values)
    last = np.iinfo(np.int64).max
    if len(text) <= SMALL_QUERY:
        # the same ranks from one sort of the distinct values (pandas' sorted factorize has a fixed cost)
        listed = text.tolist()
        rank = {v: i for i, v in enumerate(sorted({v for v in listed if not is_missing(v)}))}
        return np.array([last if is_missing(v) else rank[v] for v in listed], dtype=np.int64)
    codes, _ = pd.factorize(text, sort=True, use_na_sentinel=True)
    codes = codes.astype(np.int64)
    return np.where(codes < 0, last, codes)


def deal_states_at(history: DealHistory, points: pd.DataFrame) -> np.ndarray:
    """The state of each point's deal (`deal_id`, `as_of`) as of its time, one of DEAL_STATES.

    Raises ValueError for deal ids not in the history or a missing as_of.
    """
    deals = DealIndex(history.deals)
    codes, t = point_codes(deals, points)
    frame = history.stage_changes
    stream = EventStream(deals.codes(frame["deal_id"]), to_ns(frame["changed_at"]), deals.n)
    stage = text_values(frame["stage"])[stream.order]
    pipeline = deals.pipeline[stream.codes] if len(stream.codes) else np.array([], dtype=object)
    latest = stream.last_index(codes, t)
    state = take(stage_outcomes(pipeline, stage, history.pipelines), latest, "open").astype(object)
    created = deals.created[codes]
    state[(created == NAT_NS) | (t < created)] = "not_created"
    return state


def _per_pair(
    pipeline: np.ndarray, stage: np.ndarray, value: Any, dtype: Any, missing_stage: Any
) -> np.ndarray:
    """Apply `value(pipeline, stage)` once per distinct (pipeline, stage) pair and spread the results.

    Pairs repeat heavily (a few pipelines times a few stages), so this is a short loop over distinct
    pairs, not per row, and avoids pandas string operations whose fixed cost dominates small inputs.
    A missing stage (None/NA/NaN) is passed as `missing_stage`.
    """
    n = len(stage)
    if n == 0:
        return np.array([], dtype=dtype)
    if n <= SMALL_QUERY:
        # a few rows: one call per distinct pair, remembered in a dict (no factorizing)
        seen: dict[tuple[str | None, Any], Any] = {}
        out = []
        rows = zip(np.asarray(pipeline, dtype=object).tolist(), np.asarray(stage, dtype=object).tolist(),
                   strict=True)
        for p, s in rows:
            key = (None if is_missing(p) else str(p), missing_stage if is_missing(s) else str(s))
            if key not in seen:
                seen[key] = value(*key)
            out.append(seen[key])
        return np.asarray(out, dtype=dtype)
    p_codes, p_uniques = pd.factorize(np.asarray(pipeline, dtype=object), use_na_sentinel=True)
    s_codes, s_uniques = pd.factorize(np.asarray(stage, dtype=object), use_na_sentinel=True)
    width = len(s_uniques) + 1
    pair = (p_codes.astype(np.int64) + 1) * width + (s_codes.astype(np.int64) + 1)
    distinct, inverse = np.unique(pair, return_inverse=True)
    results = []
    for code in distinct:
        p, s = divmod(int(code), width)
        name = None if p == 0 else str(p_uniques[p - 1])
        results.append(value(name, missing_stage if s == 0 else str(s_uniques[s - 1])))
    return np.asarray(results, dtype=dtype)[inverse.reshape(-1)]


@dataclass(frozen=True)
class StageRows:
    """Stage changes in (deal, time) order with per-row derived columns."""

    stream: EventStream
    stage: np.ndarray  # object
    pipeline: np.ndarray  # object
    is_change: np.ndarray  # bool: the stage differs from the one before (or the pipeline's first)
    entered: np.ndarray  # int64 ns: when the deal entered the stage it is in after this row
    prev_stage: np.ndarray  # object, the stage before this row
    prev_entered: np.ndarray  # int64 ns, when the deal entered prev_stage
    outcome: np.ndarray  # object: open / won / lost after this row
    n_changes: np.ndarray  # int64 cumulative per deal
    n_backward: np.ndarray  # int64 cumulative per deal
    position: np.ndarray  # float: position of the stage after this row (NaN if unknown)


def stage_rows(history: DealHistory, deals: DealIndex) -> StageRows:
    """Derive change flags, stage-entry times and cumulative move counts for every stage row."""
    frame = history.stage_changes
    stream = EventStream(deals.codes(column(frame, "deal_id")), to_ns(column(frame, "changed_at")), deals.n)
    codes = stream.codes
    stage = text_values(column(frame, "stage"))[stream.order]
    pipeline = deals.pipeline[codes] if len(codes) else np.array([], dtype=object)
    first = stream.first_in_code()
    created = deals.created[codes] if len(codes) else np.array([], dtype=np.int64)

    # A deal starts in its pipeline's first stage, so a first row in that stage is not a move.
    prev_stage = np.empty(len(codes), dtype=object)
    if len(codes):
        prev_stage[1:] = stage[:-1]
        prev_stage[first] = first_stages(pipeline[first], history.pipelines)
    # A missing stage on either side counts as a change (as a <NA> comparison would).
    both = pd.notna(stage) & pd.notna(prev_stage)
    same = np.zeros(len(codes), dtype=bool)
    same[both] = stage[both] == prev_stage[both]
    is_change_arr = ~same

    # Entry time of the current stage: the latest change row, else creation; forward-filled in a deal
    # by carrying the index of the latest row that sets it (each deal's first row always sets it).
    sets = is_change_arr | first
    raw = np.where(is_change_arr, stream.times, created)
    carrier = np.maximum.accumulate(np.where(sets, np.arange(len(codes)), 0)) if len(codes) else raw
    entered = raw[carrier] if len(codes) else raw.astype(np.int64)
    prev_entered = np.empty(len(codes), dtype=np.int64)
    if len(codes):
        prev_entered[1:] = entered[:-1]
        prev_entered[first] = created[first]

    pos = stage_positions(pipeline, stage, history.pipelines)
    prev_pos = stage_positions(pipeline, prev_stage, history.pipelines)
    backward = is_change_arr & (pos < prev_pos)  # NaN compares False: unknown stages never count
    n_changes = cumsum_by(is_change_arr, codes)
    n_backward = cumsum_by(backward, codes)
    return StageRows(
        stream=stream,
        stage=stage,
        pipeline=pipeline,
        is_change=is_change_arr,
        entered=entered,
        prev_stage=prev_stage,
        prev_entered=prev_entered,
        outcome=stage_outcomes(pipeline, stage, history.pipelines),
        n_changes=n_changes,
        n_backward=n_backward,
        position=pos,
    )


