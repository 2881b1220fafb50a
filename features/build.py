"""Point-in-time features: one row per (deal_id, as_of) point, from rows dated at or before as_of.

Training snapshots, batch scoring and the service all use a `FeatureBuilder`, so a deal gets the same
numbers whichever path scores it. The builder's fitted state is explicit: `fit(history)` learns the
population statistics (`features.population_stats`), `transform(history, points)` builds features
with them, and transforming before fitting raises `NotFittedError`. Everything is vectorised: per-deal
event streams answer "how many events at or before t" with one global `np.searchsorted` (see
`features.timeindex.EventStream`), and population statistics are read from time-indexed cumulative
tables (`features.timeindex.AsofIndex`).
"""

from __future__ import annotations

import functools
import logging
from typing import Any

import numpy as np
import pandas as pd

from features.history import ACTIVITY_TYPES, CHANGEABLE_FIELDS, DealHistory
from features.population_stats import PRIOR_WEIGHT, PopulationStats, compute_population_stats
from features.stages import first_stages, open_stage_counts, stage_rows
from features.timeindex import (
    DAY_NS,
    NAT_NS,
    DealIndex,
    EventStream,
    FieldRows,
    KeyCodes,
    column,
    cumsum_by,
    field_rows,
    frame_of,
    from_ns,
    owner_at,
    pair_keys,
    parse_iso_ns,
    point_codes,
    running_max_by,
    string_array,
    take,
    text_values,
    to_ns,
)
from features.validation.checks import SMALL_ROWS

logger = logging.getLogger(__name__)

ACTIVITY_WINDOWS_DAYS = (7, 30, 90)
_ACTIVITY_KINDS = ACTIVITY_TYPES + ("activity",)  # "activity" = all types together

ACTIVITY_COUNT_COLUMNS = [f"n_{kind}_{w}d" for w in ACTIVITY_WINDOWS_DAYS for kind in _ACTIVITY_KINDS]

CATEGORICAL_FEATURES = ["pipeline_cat", "stage_cat"]

FEATURE_COLUMNS = [
    "stage_age_days",
    "stage_age_rel",
    "stage_position",
    "stage_position_frac",
    "n_stage_changes",
    "n_backward_moves",
    "deal_age_days",
    "days_since_activity",
    "days_since_inbound",
    *ACTIVITY_COUNT_COLUMNS,
    "inbound_30d",
    "max_gap_days",
    "activity_trend",
    "activity_trend_ratio",
    "log_amount",
    "amount_rel_pipeline",
    "n_amount_changes",
    "amount_change_ratio",
    "days_to_close",
    "n_close_slips",
    "owner_win_rate",
    "owner_closed_deals",
    "owner_open_deals",
    *CATEGORICAL_FEATURES,
]

CONTEXT_COLUMNS = ["pipeline", "owner", "team", "stage", "amount", "expected_close_date", "outcome"]

_KIND_WORDS = {
    "call": "calls",
    "email": "emails",
    "meeting": "meetings",
    "note": "notes",
    "task": "tasks",
    "other": "other activities",
    "activity": "activities of any kind",
}

FEATURE_DESCRIPTIONS: dict[str, str] = {
    "stage_age_days": "days in the current stage",
    "stage_age_rel": "time in the current stage relative to the typical time in that stage (ratio)",
    "stage_position": "position of the current stage in the pipeline (0 = first stage)",
    "stage_position_frac": "progress through the pipeline's stages (0 = first stage, 1 = closed)",
    "n_stage_changes": "number of stage changes so far",
    "n_backward_moves": "number of moves back to an earlier stage",
    "deal_age_days": "days since the deal was created",
    "days_since_activity": "days since the last activity",
    "days_since_inbound": "days since the buyer last reached out (inbound activity)",
    **{
        f"n_{kind}_{w}d": f"number of {_KIND_WORDS[kind]} in the last {w} days"
        for w in ACTIVITY_WINDOWS_DAYS
        for kind in _ACTIVITY_KINDS
    },
    "inbound_30d": "number of inbound activities in the last 30 days",
    "max_gap_days": "longest silence between two activities (days)",
    "activity_trend": "activities in the last 14 days minus the 14 days before",
    "activity_trend_ratio": "activity in the last 14 days against the 14 days before (ratio)",
    "log_amount": "deal amount (natural log of 1 + amount)",
    "amount_rel_pipeline": "deal amount relative to the pipeline's typical amount (ratio)",
    "n_amount_changes": "number of times the amount was changed",
    "amount_change_ratio": "current amount relative to the amount at creation (ratio)",
    "days_to_close": "days until the expected close date (negative when overdue)",
    "n_close_slips": "number of times the expected close date was pushed later",
    "owner_win_rate": "owner's share of closed deals that were won (smoothed)",
    "owner_closed_deals": "number of deals the owner has closed",
    "owner_open_deals": "number of open deals the owner holds",
    "pipeline_cat": "pipeline",
    "stage_cat": "current stage",
}

_COUNT_COLUMNS = {
    "n_stage_changes",
    "n_backward_moves",
    *ACTIVITY_COUNT_COLUMNS,
    "inbound_30d",
    "activity_trend",
    "n_amount_changes",
    "n_close_slips",
    "owner_closed_deals",
    "owner_open_deals",
}


def category_levels(history: DealHistory) -> tuple[list[str], list[str]]:
    """Categories of pipeline_cat and stage_cat: pipelines by name; stages in pipeline order."""
    pipelines = sorted(history.pipelines)
    stages: list[str] = []
    for name in pipelines:
        spec = history.pipelines[name]
        stages.extend(s for s in spec.stages + spec.won + spec.lost if s not in stages)
    return pipelines, stages


_ACTIVITY_TYPE_CODES = KeyCodes(list(ACTIVITY_TYPES))
_FIELD_CODES = KeyCodes(list(CHANGEABLE_FIELDS))


def _categorical(values: np.ndarray, levels: list[str]) -> pd.Categorical:
    """`pd.Categorical(values, categories=levels)` (values not in levels are missing), built from codes.

    The constructor infers and factorizes the values, a fixed cost that dominated a handful of points.
    """
    dtype, lookup = _category_lookup(tuple(levels))
    return pd.Categorical.from_codes(lookup.codes(values), dtype=dtype, validate=False)  # codes from lookup


@functools.lru_cache(maxsize=64)
def _category_lookup(levels: tuple[str, ...]) -> tuple[pd.CategoricalDtype, KeyCodes]:
    # The service scores against the same pipelines on every request: build the dtype and lookup once.
    return pd.CategoricalDtype(list(levels)), KeyCodes(pd.Index(list(levels), dtype=object))


def _zero_nan(values: np.ndarray) -> np.ndarray:
    """`np.nan_to_num(values)` (NaN as 0, infinities as the largest finite floats), a new array; without
    its fixed cost (~5 us, paid two dozen times per deal) when there are no infinities."""
    if values.dtype.kind != "f":
        return values.copy()  # integers (counts) have no NaN
    out = np.where(np.isnan(values), 0.0, values)
    return out if np.isfinite(out).all() else np.nan_to_num(values)


def _days(delta_ns: np.ndarray, valid: np.ndarray) -> np.ndarray:
    return np.where(valid, delta_ns / DAY_NS, np.nan)


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


class NotFittedError(RuntimeError):
    """A `FeatureBuilder` was asked to transform before it was fitted."""


class FeatureBuilder:
    """Point-in-time features with explicit fitted state (scikit-learn's fit/transform).

    `fit(history)` learns the population statistics (`population_stats_`) from a history, which is the
    builder's only learned state; `transform(history, points)` builds the features of points from any
    history (the whole store, or only the scored deals) with those statistics. Statistics are
    time-indexed, so a feature as of t reads only what was known at t whichever history they came from.
    """

    def __init__(self) -> None:
        self.population_stats_: PopulationStats | None = None

    @property
    def is_fitted(self) -> bool:
        return self.population_stats_ is not None

    def fit(self, history: DealHistory) -> FeatureBuilder:
        """Learn the population statistics of `history`; returns self."""
        self.population_stats_ = compute_population_stats(history)
        return self

    def transform(self, history: DealHistory, points: pd.DataFrame) -> pd.DataFrame:
        """`build_features(history, points, self.population_stats_)`; NotFittedError before `fit`."""
        return build_features(history, points, self._fitted())

    def transform_arrays(self, history: DealHistory, points: pd.DataFrame) -> dict[str, Any]:
        """`transform`'s columns by name, unframed (`feature_arrays`); NotFittedError before `fit`."""
        return feature_arrays(history, points, self._fitted())

    def _fitted(self) -> PopulationStats:
        if self.population_stats_ is None:
            raise NotFittedError(
                "this FeatureBuilder is not fitted: call fit(history) before transform(history, points)"
            )
        return self.population_stats_


def build_features(
    history: DealHistory, points: pd.DataFrame, population: PopulationStats
) -> pd.DataFrame:
    """Features and context of each point (deal_id, as_of), using only rows dated at or before as_of.

    One output row per point, in the points' order and with their index: `deal_id`, `as_of`, every
    column of FEATURE_COLUMNS, then CONTEXT_COLUMNS. Population statistics come from `population`
    (fitted beforehand, see `FeatureBuilder`). Raises ValueError for unknown deal ids or missing times.
    """
    frame = frame_of(feature_arrays(history, points, population), points.index)
    logger.debug("built %d feature rows", len(frame))
    return frame


def feature_arrays(
    history: DealHistory, points: pd.DataFrame, population: PopulationStats
) -> dict[str, Any]:
    """`build_features`' columns by name, in its order: the arrays its frame is built from (the same
    dtypes as its columns read back), for a caller that only reads them (scoring, where building and
    taking apart the frame cost more than one deal's features)."""
    deals = DealIndex(history.deals)
    codes, t = point_codes(deals, points)
    # Queries sorted by (deal, time) hit the sorted event keys in order, which makes the many
    # searchsorted calls cache-friendly; results go back to the points' order at the end.
    order = np.lexsort((t, codes))
    values, context = _compute(history, population, deals, codes[order], t[order])
    back = np.empty_like(order)
    back[order] = np.arange(len(order))

    pipeline_levels, stage_levels = category_levels(history)
    # Columns are collected first and the frame is built once: inserting 50 columns one by one costs
    # more than the features themselves for a handful of points.
    columns: dict[str, Any] = {
        "deal_id": string_array(text_values(column(points, "deal_id"))),
        "as_of": from_ns(t),
    }
    for name in FEATURE_COLUMNS:
        if name == "pipeline_cat":
            columns[name] = _categorical(context["pipeline"][back], pipeline_levels)
        elif name == "stage_cat":
            columns[name] = _categorical(context["stage"][back], stage_levels)
        elif name in _COUNT_COLUMNS:
            columns[name] = _zero_nan(values[name][back]).astype(np.int64)
        else:
            columns[name] = np.asarray(values[name][back], dtype=np.float64)
    for name in ("pipeline", "owner", "team", "stage"):
        columns[name] = string_array(context[name][back])
    columns["amount"] = context["amount"][back].astype(np.float64)
    columns["expected_close_date"] = from_ns(context["expected_close_date"][back])
    columns["outcome"] = string_array(context["outcome"][back])
    return columns


def _compute(
    history: DealHistory, population: PopulationStats, deals: DealIndex, codes: np.ndarray, t: np.ndarray
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(feature arrays, context arrays) for valid deal codes and times, in the given order."""
    specs = history.pipelines
    created = deals.created[codes]
    not_created = t < created
    pipeline = deals.pipeline[codes]
    out: dict[str, np.ndarray] = {}

    # Stage as of t: the latest stage row, else the pipeline's first stage (position 0, open).
    rows = stage_rows(history, deals)
    sidx = rows.stream.last_index(codes, t)
    has_stage = sidx >= 0
    start = first_stages(pipeline, specs)
    stage = np.where(has_stage, take(rows.stage, sidx, None), start)
    stage[not_created] = None
    entered = np.where(has_stage, take(rows.entered, sidx, 0), created)
    out["stage_age_days"] = _days(t - entered, ~not_created)
    stage_keys = pair_keys(pipeline, stage)
    typical = population.stage_time_index.lookup(stage_keys, t, ["typical_stage_days"])["typical_stage_days"]
    out["stage_age_rel"] = _ratio(out["stage_age_days"], typical)
    starting_position = np.where(pd.notna(start), 0.0, np.nan)
    position = np.where(has_stage, take(rows.position, sidx, np.nan), starting_position)
    position[not_created] = np.nan
    out["stage_position"] = position
    out["stage_position_frac"] = _ratio(position, open_stage_counts(pipeline, specs))
    out["n_stage_changes"] = take(rows.n_changes, sidx, 0)
    out["n_backward_moves"] = take(rows.n_backward, sidx, 0)
    out["deal_age_days"] = _days(t - created, created != NAT_NS)
    outcome = np.where(has_stage, take(rows.outcome, sidx, "open"), "open").astype(object)
    outcome[not_created] = "not_created"

    out.update(_activity_features(history, deals, codes, t))
    changes = _field_rows_by_field(history, deals)
    amount, close_date, amount_features = _field_features(changes, deals, codes, t)
    out.update(amount_features)
    typical_amount = population.pipeline_amount_index.lookup(pipeline, t, ["typical_amount"])
    out["amount_rel_pipeline"] = _ratio(amount, typical_amount["typical_amount"])

    owner = owner_at(changes["owner"], deals, codes, t)
    out.update(_owner_features(population, owner, pipeline, t))
    context = {
        "pipeline": pipeline,
        "owner": owner,
        "team": deals.team[codes],
        "stage": stage,
        "amount": amount,
        "expected_close_date": close_date,
        "outcome": outcome,
    }
    return out, context


def _activity_features(
    history: DealHistory, deals: DealIndex, codes: np.ndarray, t: np.ndarray
) -> dict[str, np.ndarray]:
    acts = history.activities
    act_codes = deals.codes(column(acts, "deal_id"))
    times = to_ns(column(acts, "occurred_at"))
    # Index lookup rather than a Categorical: same codes (-1 for anything else), a fraction of the cost.
    type_code = _ACTIVITY_TYPE_CODES.codes(text_values(column(acts, "type")))
    type_code = np.where(type_code < 0, ACTIVITY_TYPES.index("other"), type_code).astype(np.int64)
    k = len(ACTIVITY_TYPES)
    every = EventStream(act_codes, times, deals.n)
    # One stream keyed by (deal, type) answers all per-type window counts.
    typed = EventStream(np.where(act_codes >= 0, act_codes * k + type_code, -1), times, deals.n * k)
    # up to SMALL_ROWS rows (as the validation's checks), per-row comparisons on plain values
    if "direction" in acts.columns and len(acts) <= SMALL_ROWS:
        # one comparison of plain values (a missing direction is not inbound) instead of pandas' three
        # calls on a string column, whose fixed cost is that of the rest of one deal's activity features
        direction = text_values(column(acts, "direction")).tolist()
        inbound_mask = np.array([isinstance(v, str) and v == "inbound" for v in direction], dtype=bool)
    elif "direction" in acts.columns:
        inbound_mask = (acts["direction"].astype("string") == "inbound").fillna(False).to_numpy(dtype=bool)
    else:
        inbound_mask = np.zeros(len(acts), dtype=bool)
    inbound = EventStream(np.where(inbound_mask, act_codes, -1), times, deals.n)

    out: dict[str, np.ndarray] = {}
    # Every window edge of every point in one query per stream (a query's answer does not depend on
    # the others asked with it): a few large searchsorted calls instead of ~50 small ones.
    edges = [t, *(t - w * DAY_NS for w in ACTIVITY_WINDOWS_DAYS), t - 14 * DAY_NS, t - 28 * DAY_NS]
    counts = every.count_many(codes, edges)
    now_all = counts[0]
    for j, w in enumerate(ACTIVITY_WINDOWS_DAYS, start=1):
        out[f"n_activity_{w}d"] = now_all - counts[j]
    for i, kind in enumerate(ACTIVITY_TYPES):
        by_type = typed.count_many(codes * k + i, edges[: 1 + len(ACTIVITY_WINDOWS_DAYS)])
        for j, w in enumerate(ACTIVITY_WINDOWS_DAYS, start=1):
            out[f"n_{kind}_{w}d"] = by_type[0] - by_type[j]
    in_counts = inbound.count_many(codes, [t, t - 30 * DAY_NS])
    out["inbound_30d"] = in_counts[0] - in_counts[1]

    last = every.last_index(codes, t)
    out["days_since_activity"] = _days(t - take(every.times, last, 0), last >= 0)
    last_in = inbound.last_index(codes, t)
    out["days_since_inbound"] = _days(t - take(inbound.times, last_in, 0), last_in >= 0)

    # Longest gap so far: between consecutive activities, the first one measured from creation.
    first = every.first_in_code()
    prev = np.empty(len(every.times), dtype=np.int64)
    if len(prev):
        prev[1:] = every.times[:-1]
        prev[first] = deals.created[every.codes[first]]
    gap_days = np.clip((every.times - prev) / DAY_NS, 0.0, None)
    running_max = running_max_by(gap_days, every.codes)
    out["max_gap_days"] = np.where(last >= 0, take(running_max, last, np.nan), np.nan)

    recent = now_all - counts[-2]
    before = counts[-2] - counts[-1]
    out["activity_trend"] = recent - before
    out["activity_trend_ratio"] = (recent + 1.0) / (before + 1.0)  # +1 keeps silent deals finite
    return out


def _field_rows_by_field(history: DealHistory, deals: DealIndex) -> dict[str, FieldRows]:
    """`field_rows(history, deals, field)` of every changeable field, sharing the per-column work.

    Deal codes, times and values are read once for the whole table and then split by field: the same
    arrays as three separate `field_rows` calls, whose fixed pandas cost dominated a handful of points.
    """
    frame = history.field_changes
    if (
        frame is None
        or len(frame) == 0
        or not pd.api.types.is_datetime64_any_dtype(column(frame, "changed_at").dtype)
    ):
        return {field: field_rows(history, deals, field) for field in CHANGEABLE_FIELDS}
    field_code = _FIELD_CODES.codes(text_values(column(frame, "field")))
    codes = deals.codes(column(frame, "deal_id"))
    times = to_ns(column(frame, "changed_at"))
    values = text_values(column(frame, "value"))
    out: dict[str, FieldRows] = {}
    for i, field in enumerate(CHANGEABLE_FIELDS):
        mask = field_code == i
        stream = EventStream(codes[mask], times[mask], deals.n)
        out[field] = FieldRows(stream, values[mask][stream.order])
    return out


def _field_features(
    changes: dict[str, FieldRows], deals: DealIndex, codes: np.ndarray, t: np.ndarray
) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """(amount as of t, expected close date as of t in ns, amount and close-date features)."""
    out: dict[str, np.ndarray] = {}
    amounts = changes["amount"]
    parsed_amount = np.asarray(pd.to_numeric(np.asarray(amounts.value, dtype=object), errors="coerce"),
                               dtype=np.float64)
    aidx = amounts.stream.last_index(codes, t)
    created_amount = deals.amount[codes]
    amount = np.where(aidx >= 0, take(parsed_amount, aidx, np.nan), created_amount)
    out["log_amount"] = np.log1p(np.clip(amount, 0.0, None))
    out["n_amount_changes"] = amounts.stream.count_le(codes, t)
    out["amount_change_ratio"] = _ratio(amount, created_amount)

    closes = changes["expected_close_date"]
    parsed_close = parse_iso_ns(closes.value)
    cidx = closes.stream.last_index(codes, t)
    close_date = np.where(cidx >= 0, take(parsed_close, cidx, NAT_NS), deals.close_date[codes])
    out["days_to_close"] = _days(close_date - t, close_date != NAT_NS)
    # A slip is a change to a later date than the one it replaces (the creation value for the first).
    first = closes.stream.first_in_code()
    previous = np.empty(len(parsed_close), dtype=np.int64)
    if len(previous):
        previous[1:] = parsed_close[:-1]
        previous[first] = deals.close_date[closes.stream.codes[first]]
    slipped = (parsed_close != NAT_NS) & (previous != NAT_NS) & (parsed_close > previous)
    out["n_close_slips"] = take(cumsum_by(slipped, closes.stream.codes), cidx, 0)
    return amount, close_date, out


def _owner_features(
    population: PopulationStats, owner: np.ndarray, pipeline: np.ndarray, t: np.ndarray
) -> dict[str, np.ndarray]:
    own = population.owner_closes_index.lookup(owner, t, ["owner_won", "owner_closed"])
    pipe = population.pipeline_closes_index.lookup(pipeline, t, ["pipeline_won", "pipeline_closed"])
    glob = population.global_closes_index.lookup(None, t, ["global_won", "global_closed"])
    owner_won = _zero_nan(own["owner_won"])
    owner_closed = _zero_nan(own["owner_closed"])
    pipe_won = _zero_nan(pipe["pipeline_won"])
    pipe_closed = _zero_nan(pipe["pipeline_closed"])
    # Shrink the owner towards the pipeline, the pipeline towards everyone and everyone towards a coin
    # flip, so early and thin data give a rate near the prior instead of 0 % or 100 % (and never NaN).
    global_rate = (_zero_nan(glob["global_won"]) + PRIOR_WEIGHT * 0.5) / (
        _zero_nan(glob["global_closed"]) + PRIOR_WEIGHT
    )
    pipe_rate = (pipe_won + PRIOR_WEIGHT * global_rate) / (pipe_closed + PRIOR_WEIGHT)
    owner_rate = (owner_won + PRIOR_WEIGHT * pipe_rate) / (owner_closed + PRIOR_WEIGHT)
    load = population.owner_load_index.lookup(owner, t, ["owner_open_deals"])
    return {
        "owner_win_rate": owner_rate,
        "owner_closed_deals": owner_closed,
        "owner_open_deals": _zero_nan(load["owner_open_deals"]),
    }
