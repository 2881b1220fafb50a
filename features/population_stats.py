"""Population statistics: what the feature builder learns from a history (its fitted state).

Some features compare a deal with its peers: the typical time spent in a stage of its pipeline, the
pipeline's typical amount, the owner's win rate and open load. Those peers keep changing, so each
statistic is stored as a cumulative table keyed by the time at which each row became known
(`at`). A feature as of t reads the last row with `at <= t` (`AsofIndex`), which keeps it
point-in-time however late the statistics were computed: statistics computed from the full history and
from the history cut at t give the same numbers as of t.
"""

from __future__ import annotations

import io
import json
import os
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, fields
from functools import cached_property
from pathlib import Path
from typing import IO, Any

import numpy as np
import pandas as pd
import pyarrow as pa

from features.history import DealHistory
from features.stages import StageRows, stage_rows
from features.timeindex import (
    DAY_NS,
    NAT_NS,
    AsofIndex,
    DealIndex,
    EventStream,
    FieldRows,
    field_rows,
    owner_at,
    pair_keys,
    take,
)

# The event tables the statistics read (with the deals): stage changes and owner changes, never
# activities, which are most of a store's rows. The service loads only these to fit the population.
POPULATION_TABLES = ("stage_changes", "field_changes")

# Win rates are smoothed towards the pipeline's rate with this many pseudo-deals, so an owner with two
# closed deals does not get 0 % or 100 %.
PRIOR_WEIGHT = 10.0
# Typical stage durations below a few hours would turn stage_age_rel into huge ratios for stages that
# are usually skipped through; floor the denominator.
MIN_TYPICAL_STAGE_DAYS = 0.25


@dataclass(frozen=True)
class PopulationStats:
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
        keys = pair_keys(table["pipeline"].to_numpy(dtype=object), table["stage"].to_numpy(dtype=object))
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


# `save_population_stats`' format: a zip archive (stored, not compressed) of one Arrow IPC file per table
# and a manifest of each table's columns and dtypes. Plain data: reading it runs no code (no pickle).
# Tables published with the statistics (`extras`) are further Arrow IPC files in the same archive, named
# in the manifest; a reader that does not know them reads the statistics alone.
STATS_FORMAT_VERSION = 1
_MANIFEST = "manifest.json"
_EXTRA_PREFIX = "extra/"

# a path, or a file opened for reading in binary (to read the statistics and their extras from one
# version of a file that a writer may replace meanwhile)
Source = str | os.PathLike[str] | IO[bytes]


def save_population_stats(
    stats: PopulationStats, path: str | os.PathLike[str], extras: Mapping[str, pa.Table] | None = None
) -> Path:
    """Write `stats` to `path` atomically (a reader sees the old file or the new one, never a part), with
    `extras` (name -> Arrow table), tables fitted with them that a reader gets from the same file
    (`load_population_extras`)."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    manifest: dict[str, object] = {"format_version": STATS_FORMAT_VERSION, "tables": {},
                                   "extras": sorted(extras or {})}
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as archive:
        for table in fields(PopulationStats):
            frame: pd.DataFrame = getattr(stats, table.name)
            manifest["tables"][table.name] = {c: str(t) for c, t in frame.dtypes.items()}  # type: ignore[index]
            arrow = pa.Table.from_pandas(frame, preserve_index=False)
            archive.writestr(f"{table.name}.arrow", _arrow_bytes(arrow))
        for name, extra in (extras or {}).items():
            archive.writestr(f"{_EXTRA_PREFIX}{name}.arrow", _arrow_bytes(extra))
        archive.writestr(_MANIFEST, json.dumps(manifest))
    os.replace(tmp, target)
    return target


def load_population_stats(source: Source) -> PopulationStats:
    """Read what `save_population_stats` wrote: the same tables, with the same dtypes and values."""
    with zipfile.ZipFile(source) as archive:
        manifest = _manifest(archive, source)
        tables = {}
        for table in fields(PopulationStats):
            dtypes: dict[str, str] = manifest["tables"][table.name]
            frame = _arrow_table(archive.read(f"{table.name}.arrow")).to_pandas()
            tables[table.name] = frame[list(dtypes)].astype(dtypes)
    return PopulationStats(**tables)


def load_population_extras(source: Source) -> dict[str, pa.Table]:
    """The `extras` `save_population_stats` wrote with the statistics (none from a file written without)."""
    with zipfile.ZipFile(source) as archive:
        names: list[str] = _manifest(archive, source).get("extras", [])
        return {name: _arrow_table(archive.read(f"{_EXTRA_PREFIX}{name}.arrow")) for name in names}


def _manifest(archive: zipfile.ZipFile, source: Source) -> dict[str, Any]:
    manifest: dict[str, Any] = json.loads(archive.read(_MANIFEST))
    if manifest.get("format_version") != STATS_FORMAT_VERSION:
        raise ValueError(f"{getattr(source, 'name', source)}: population statistics of format "
                         f"{manifest.get('format_version')!r}, this release reads {STATS_FORMAT_VERSION}")
    return manifest


def _arrow_bytes(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    with pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue()


def _arrow_table(data: bytes) -> pa.Table:
    return pa.ipc.open_file(pa.BufferReader(data)).read_all()


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


def compute_population_stats(history: DealHistory) -> PopulationStats:
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

    return PopulationStats(
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
