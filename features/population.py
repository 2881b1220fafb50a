"""Population-level statistics as time-indexed cumulative tables.

Some features compare a deal with its peers: the typical time spent in a stage of its pipeline, the
pipeline's typical amount, the owner's win rate and open load. Those peers keep changing, so each
statistic is stored as a cumulative table keyed by the time at which each row became known
(`at`). A feature as of t reads the last row with `at <= t` (`pd.merge_asof`), which keeps it
point-in-time however late the population was computed: a population built from the full history and
one built from the history cut at t give the same numbers as of t.

The private helpers at the top (`DealIndex`, `EventStream`, `stage_rows`, `owner_at`) are shared with
`features.build` so both read the event tables the same way.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
import pandas as pd

from features.history import DealHistory, PipelineSpec

DAY_NS = 86_400 * 10**9
NAT_NS = np.iinfo(np.int64).min
# Win rates are smoothed towards the pipeline's rate with this many pseudo-deals, so an owner with two
# closed deals does not get 0 % or 100 %.
PRIOR_WEIGHT = 10.0
# Typical stage durations below a few hours would turn stage_age_rel into huge ratios for stages that
# are usually skipped through; floor the denominator.
MIN_TYPICAL_STAGE_DAYS = 0.25


def to_ns(values: pd.Series | pd.Index | np.ndarray) -> np.ndarray:
    """Times as int64 nanoseconds since the epoch (UTC); missing times are NAT_NS.

    pandas 3 infers second/micro resolutions, so the unit is normalised here once.
    """
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


def from_ns(values: np.ndarray) -> pd.DatetimeIndex:
    """int64 nanoseconds (NAT_NS for missing) back to datetime64[ns, UTC] times."""
    naive = pd.DatetimeIndex(np.asarray(values, dtype=np.int64).view("datetime64[ns]"))
    return naive.tz_localize("UTC")


class DealIndex:
    """Integer codes for deals, in sorted deal_id order.

    Codes follow the sorted ids (not the frame's row order) so that ties between deals are always
    broken the same way, whether or not other deals were added to the history.
    """

    def __init__(self, deals: pd.DataFrame) -> None:
        ids = deals["deal_id"].astype("string")
        order = np.argsort(ids.to_numpy(dtype=object), kind="stable")
        frame = deals.iloc[order].reset_index(drop=True)
        self.ids = pd.Index(frame["deal_id"].astype("string").to_numpy(dtype=object))
        self.n = len(frame)
        self.pipeline = frame["pipeline"].astype("string").to_numpy(dtype=object)
        self.owner = frame["owner"].astype("string").to_numpy(dtype=object)
        team = frame["team"] if "team" in frame.columns else pd.Series(pd.NA, index=frame.index)
        self.team = team.astype("string").to_numpy(dtype=object)
        self.amount = pd.to_numeric(frame["amount"], errors="coerce").to_numpy(dtype=np.float64)
        self.created = to_ns(frame["created_at"])
        if "expected_close_date" in frame.columns:
            self.close_date = to_ns(frame["expected_close_date"])
        else:
            self.close_date = np.full(self.n, NAT_NS, dtype=np.int64)

    def codes(self, deal_ids: pd.Series) -> np.ndarray:
        """Code of each id, -1 for ids not among the deals."""
        return self.ids.get_indexer(pd.Index(deal_ids.astype("string").to_numpy(dtype=object)))


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
    picked = values[np.clip(index, 0, None)]
    return np.where(index >= 0, picked, default)


def pair_keys(pipeline: np.ndarray, stage: np.ndarray) -> pd.Index:
    """One string key per (pipeline, stage) pair; a missing part gives a missing key."""
    joined = pd.Series(pipeline, dtype="string") + "\x1f" + pd.Series(stage, dtype="string")
    return pd.Index(joined.to_numpy(dtype=object))


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


def _outcome_of(specs: Mapping[str, PipelineSpec]) -> Any:
    def outcome(pipeline: str | None, stage: str | None) -> str:
        # As `stage_outcome`: a pipeline's spec decides when it lists won/lost stages, else the name rule.
        if stage is None:
            return "open"
        spec = specs.get(pipeline) if pipeline is not None else None
        lower = stage.lower()
        won = stage in spec.won if spec is not None and spec.won else "won" in lower
        if won:
            return "won"
        lost = stage in spec.lost if spec is not None and spec.lost else "lost" in lower
        return "lost" if lost else "open"

    return outcome


def stage_positions(
    pipeline: np.ndarray, stage: np.ndarray, specs: Mapping[str, PipelineSpec]
) -> tuple[np.ndarray, np.ndarray]:
    """(position, number of open stages) per pair, as PipelineSpec.position does; NaN when unknown."""
    outcome = _outcome_of(specs)

    def position(p: str | None, s: str | None) -> float:
        spec = specs.get(p) if p is not None else None
        if spec is None:
            return np.nan
        if s is not None and s in spec.stages:
            return float(spec.stages.index(s))
        # Closing stages come after every open one; unknown stages have no position.
        return float(len(spec.stages)) if outcome(p, s) != "open" else np.nan

    def n_open(p: str | None, s: str | None) -> float:
        spec = specs.get(p) if p is not None else None
        return float(len(spec.stages)) if spec is not None else np.nan

    pos = _per_pair(pipeline, stage, position, np.float64, None)
    n_open_arr = _per_pair(pipeline, np.zeros(len(stage), dtype=object), n_open, np.float64, None)
    return pos, n_open_arr


def outcomes(pipeline: np.ndarray, stage: np.ndarray, specs: Mapping[str, PipelineSpec]) -> np.ndarray:
    """'open', 'won' or 'lost' per (pipeline, stage); a missing stage is open."""
    return _per_pair(pipeline, stage, _outcome_of(specs), object, None)


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


def first_stage(pipeline: np.ndarray, specs: Mapping[str, PipelineSpec]) -> np.ndarray:
    """The pipeline's first open stage (where a deal starts before any stage change), or None."""
    def first(p: str | None, s: str | None) -> str | None:
        spec = specs.get(p) if p is not None else None
        return spec.stages[0] if spec is not None and spec.stages else None

    return _per_pair(pipeline, np.zeros(len(pipeline), dtype=object), first, object, None)


def stage_rows(history: DealHistory, deals: DealIndex) -> StageRows:
    """Derive change flags, stage-entry times and cumulative move counts for every stage row."""
    frame = history.stage_changes
    stream = EventStream(deals.codes(frame["deal_id"]), to_ns(frame["changed_at"]), deals.n)
    codes = stream.codes
    stage = frame["stage"].astype("string").to_numpy(dtype=object)[stream.order]
    pipeline = deals.pipeline[codes] if len(codes) else np.array([], dtype=object)
    first = stream.first_in_code()
    created = deals.created[codes] if len(codes) else np.array([], dtype=np.int64)

    # A deal starts in its pipeline's first stage, so a first row in that stage is not a move.
    prev_stage = np.empty(len(codes), dtype=object)
    if len(codes):
        prev_stage[1:] = stage[:-1]
        prev_stage[first] = first_stage(pipeline[first], history.pipelines)
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

    pos, _ = stage_positions(pipeline, stage, history.pipelines)
    prev_pos, _ = stage_positions(pipeline, prev_stage, history.pipelines)
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
        outcome=outcomes(pipeline, stage, history.pipelines),
        n_changes=n_changes,
        n_backward=n_backward,
        position=pos,
    )


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
    value = sub["value"].astype("string").to_numpy(dtype=object)[stream.order]
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
            self.known: pd.Index | None = None
        else:
            # Integer codes for the keys: immune to object-vs-string dtype clashes. A query key the table
            # has never seen gets -1, which matches nothing.
            raw = keys if keys is not None else table[by].astype(object).to_numpy(dtype=object)
            right_keys = pd.Index(np.asarray(raw, dtype=object))
            self.known = right_keys.unique()
            codes = self.known.get_indexer(right_keys).astype(np.int64)
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
            query_codes = self.known.get_indexer(pd.Index(np.asarray(keys, dtype=object))).astype(np.int64)
        query = query_codes * self.base + np.searchsorted(self.grid, times, side="right")
        pos = np.searchsorted(self.keys, query, side="right") - 1
        safe = np.clip(pos, 0, None)
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


@dataclass(frozen=True)
class Population:
    """Time-indexed cumulative population tables (all `at` columns are int64 ns UTC).

    stage_time:      pipeline, stage, at, typical_stage_days (from stage episodes that ended at `at`)
    pipeline_amount: pipeline, at, typical_amount (geometric mean of amounts at creation)
    owner_closes:    owner, at, owner_won, owner_closed (owner at the time of each close)
    pipeline_closes: pipeline, at, pipeline_won, pipeline_closed
    global_closes:   at, global_won, global_closed
    owner_load:      owner, at, owner_open_deals (open deals held, after the changes at `at`)
    """

    stage_time: pd.DataFrame
    pipeline_amount: pd.DataFrame
    owner_closes: pd.DataFrame
    pipeline_closes: pd.DataFrame
    global_closes: pd.DataFrame
    owner_load: pd.DataFrame

    # Built on first use and kept: the service computes one Population for the whole store and reads
    # it for every request, so the big tables are coded and sorted once, not on every call.
    @cached_property
    def stage_time_index(self) -> AsofIndex:
        table = self.stage_time
        keys = pair_keys(
            table["pipeline"].to_numpy(dtype=object), table["stage"].to_numpy(dtype=object)
        ).to_numpy(dtype=object)
        return AsofIndex(self.stage_time, "pipeline", ["typical_stage_days"], keys=keys)

    @cached_property
    def pipeline_amount_index(self) -> AsofIndex:
        return AsofIndex(self.pipeline_amount, "pipeline", ["typical_amount"])

    @cached_property
    def owner_closes_index(self) -> AsofIndex:
        return AsofIndex(self.owner_closes, "owner", ["owner_won", "owner_closed"])

    @cached_property
    def pipeline_closes_index(self) -> AsofIndex:
        return AsofIndex(self.pipeline_closes, "pipeline", ["pipeline_won", "pipeline_closed"])

    @cached_property
    def global_closes_index(self) -> AsofIndex:
        return AsofIndex(self.global_closes, None, ["global_won", "global_closed"])

    @cached_property
    def owner_load_index(self) -> AsofIndex:
        return AsofIndex(self.owner_load, "owner", ["owner_open_deals"])


def _cumulative(frame: pd.DataFrame, by: list[str], sums: dict[str, str]) -> pd.DataFrame:
    """Sort by (at, deal code), cumulative-sum `sums` (source -> target) per `by`, keep the last per
    (by, at).

    The deterministic sort makes a population of a cut history a prefix of the full one, so the
    cumulative values (floating sums included) are bit-identical.
    """
    frame = frame.sort_values(["at", "_code"], kind="stable").reset_index(drop=True)
    grouped = frame.groupby(by, sort=False, dropna=False) if by else None
    for source, target in sums.items():
        frame[target] = grouped[source].cumsum() if grouped is not None else frame[source].cumsum()
    frame = frame.drop_duplicates(subset=by + ["at"], keep="last")
    return frame[by + ["at"] + list(sums.values())].reset_index(drop=True)


def compute_population(history: DealHistory) -> Population:
    """The population tables of a history (see `Population`). Vectorised; no loop per deal."""
    deals = DealIndex(history.deals)
    rows = stage_rows(history, deals)
    owners = field_rows(history, deals, "owner")
    codes = rows.stream.codes

    # Typical time in stage: episodes end at each real change; the stage left is prev_stage.
    ended = rows.is_change & pd.notna(rows.prev_stage)
    duration_days = (rows.stream.times - rows.prev_entered) / DAY_NS
    episodes = pd.DataFrame(
        {
            "pipeline": rows.pipeline[ended],
            "stage": rows.prev_stage[ended],
            "at": rows.stream.times[ended],
            "_code": codes[ended],
            "_log": np.log1p(np.clip(duration_days[ended], 0.0, None)),
            "_one": 1.0,
        }
    )
    stage_time = _cumulative(episodes, ["pipeline", "stage"], {"_log": "_sum", "_one": "_n"})
    typical = np.expm1(stage_time["_sum"] / stage_time["_n"])
    stage_time["typical_stage_days"] = np.maximum(typical, MIN_TYPICAL_STAGE_DAYS)
    stage_time = stage_time.drop(columns=["_sum", "_n"])

    # Pipeline amount: geometric mean of creation amounts (a cumulative median is not vectorisable;
    # the log-mean is just as robust to the few huge deals that make a mean useless).
    created_ok = deals.created != NAT_NS
    amounts = pd.DataFrame(
        {
            "pipeline": deals.pipeline[created_ok],
            "at": deals.created[created_ok],
            "_code": np.arange(deals.n)[created_ok],
            "_log": np.log1p(np.clip(np.nan_to_num(deals.amount[created_ok]), 0.0, None)),
            "_one": 1.0,
        }
    )
    pipeline_amount = _cumulative(amounts, ["pipeline"], {"_log": "_sum", "_one": "_n"})
    pipeline_amount["typical_amount"] = np.expm1(pipeline_amount["_sum"] / pipeline_amount["_n"])
    pipeline_amount = pipeline_amount.drop(columns=["_sum", "_n"])

    # Closes: each real move into a won or lost stage, credited to the owner at that moment.
    closing = rows.is_change & (rows.outcome != "open")
    close_codes = codes[closing]
    close_times = rows.stream.times[closing]
    closes = pd.DataFrame(
        {
            "owner": owner_at(owners, deals, close_codes, close_times),
            "pipeline": rows.pipeline[closing],
            "at": close_times,
            "_code": close_codes,
            "_won": (rows.outcome[closing] == "won").astype(np.float64),
            "_one": 1.0,
        }
    )
    owner_closes = _cumulative(closes, ["owner"], {"_won": "owner_won", "_one": "owner_closed"})
    pipeline_closes = _cumulative(
        closes, ["pipeline"], {"_won": "pipeline_won", "_one": "pipeline_closed"}
    )
    global_closes = _cumulative(closes, [], {"_won": "global_won", "_one": "global_closed"})

    return Population(
        stage_time=stage_time,
        pipeline_amount=pipeline_amount,
        owner_closes=owner_closes,
        pipeline_closes=pipeline_closes,
        global_closes=global_closes,
        owner_load=_owner_load(history, deals, rows, owners),
    )


def _owner_load(history: DealHistory, deals: DealIndex, rows: StageRows, owners: FieldRows) -> pd.DataFrame:
    """Open deals per owner over time, from the (open?, owner) state of each deal after each event."""
    ev_codes = np.concatenate([np.arange(deals.n), rows.stream.codes, owners.stream.codes])
    ev_times = np.concatenate([deals.created, rows.stream.times, owners.stream.times])
    keep = ev_times != NAT_NS
    events = EventStream(ev_codes[keep], ev_times[keep], deals.n)
    codes, times = events.codes, events.times
    # State after each event, read "as of" its time so simultaneous events agree.
    alive = times >= deals.created[codes]
    stage_idx = rows.stream.last_index(codes, times)
    outcome = take(rows.outcome, stage_idx, "open")
    holding = alive & (outcome == "open")
    owner = owner_at(owners, deals, codes, times)

    first = events.first_in_code()
    prev_holding = np.zeros(len(codes), dtype=bool)
    prev_owner = np.empty(len(codes), dtype=object)
    if len(codes):
        prev_holding[1:] = holding[:-1]
        prev_owner[1:] = owner[:-1]
    prev_holding[first] = False
    same_owner = pd.Series(owner, dtype="string").eq(pd.Series(prev_owner, dtype="string")).fillna(False)
    moved = ~same_owner.to_numpy(dtype=bool)
    plus = holding & (~prev_holding | moved)
    minus = prev_holding & (~holding | moved)
    deltas = pd.DataFrame(
        {
            "owner": np.concatenate([owner[plus], prev_owner[minus]]),
            "at": np.concatenate([times[plus], times[minus]]),
            "_code": np.concatenate([codes[plus], codes[minus]]),
            "_delta": np.concatenate([np.ones(int(plus.sum())), -np.ones(int(minus.sum()))]),
        }
    )
    return _cumulative(deltas, ["owner"], {"_delta": "owner_open_deals"})
