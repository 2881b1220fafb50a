"""Validation and coercion of raw deal-history frames into a typed `DealHistory`.

Every reader (files, the store, the API) ends here, so this is the one place that decides what valid
input is. Checks are vectorised over whole columns; only the (capped) list of problems is formatted row
by row. Every problem found is collected before raising, so a user fixes a file in one pass instead of
one error at a time.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, Final

import numpy as np
import pandas as pd

from features.history import (
    ACTIVITY_TYPES,
    CHANGEABLE_FIELDS,
    DIRECTIONS,
    EVENT_TIME,
    TABLES,
    DealHistory,
    HistoryValidationError,
    PipelineSpec,
    Problem,
)
from features.stages import order_stage_changes

logger = logging.getLogger(__name__)

# Enough to show every kind of mistake in a file without building a million-line report.
MAX_PROBLEMS = 300
# How many offending values a single problem message quotes.
_SHOWN_VALUES = 3

STRING: Final = "string"
UTC_NS: Final = "datetime64[ns, UTC]"

# Output column order per event table (the DealHistory docstring).
EVENT_COLUMNS: dict[str, tuple[str, ...]] = {
    "stage_changes": ("deal_id", "stage", "changed_at", "event_id"),
    "activities": ("deal_id", "type", "direction", "occurred_at", "event_id"),
    "field_changes": ("deal_id", "field", "value", "changed_at", "event_id"),
}
DEAL_COLUMNS: tuple[str, ...] = TABLES["deals"][0] + TABLES["deals"][1]

# Bounds of datetime64[ns]; later or earlier times cannot be represented and are reported, not crashed on.
_MIN_TIME = pd.Timestamp.min.tz_localize("UTC")
_MAX_TIME = pd.Timestamp.max.tz_localize("UTC")


class _Problems:
    """Collects problems up to MAX_PROBLEMS; formatting happens only for rows that are kept."""

    def __init__(self) -> None:
        self.items: list[Problem] = []
        self.truncated = False

    @property
    def full(self) -> bool:
        return len(self.items) >= MAX_PROBLEMS

    def add(self, table: str, row: int | None, column: str | None, message: str, hint: str = "") -> None:
        if self.full:
            self.truncated = True
            return
        self.items.append(Problem(table=table, row=row, column=column, message=message, hint=hint))

    def add_rows(
        self,
        table: str,
        mask: pd.Series | np.ndarray,
        column: str | None,
        message: str,
        hint: str = "",
        values: pd.Series | None = None,
        extra: pd.Series | None = None,
    ) -> None:
        """One problem per flagged row. `message` may use {value} (the row's raw value) and {extra}."""
        positions = np.flatnonzero(np.asarray(mask, dtype=bool))
        if positions.size == 0:
            return
        room = MAX_PROBLEMS - len(self.items)
        if positions.size > room:
            self.truncated = True
            positions = positions[: max(room, 0)]
        for pos in positions:
            value = _show(values.iloc[pos]) if values is not None else ""
            more = extra.iloc[pos] if extra is not None else ""
            self.add(table, int(pos) + 1, column, message.format(value=value, extra=more), hint)


def _show(value: Any) -> str:
    if value is None or (not isinstance(value, str) and pd.isna(value)):
        return "(empty)"
    return repr(str(value))


def _as_frame(raw: Any, table: str) -> pd.DataFrame:
    # No frame, or a frame with neither rows nor columns (an empty JSON list), is an empty table.
    if (
        raw is None
        or (isinstance(raw, pd.DataFrame) and raw.shape == (0, 0))
        or (isinstance(raw, list) and not raw)
    ):
        return pd.DataFrame(columns=list(TABLES[table][0]))
    frame = raw if isinstance(raw, pd.DataFrame) else pd.DataFrame(raw)
    names = [str(c).strip() for c in frame.columns]
    # Frames that already have a fresh index and clean headers (the service's) are used as they are:
    # the copy costs more than the checks on a small input, and nothing below writes to the frame.
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


def _to_string(series: pd.Series) -> pd.Series:
    """Pandas "string" dtype, stripped, with empty cells as <NA>."""
    if isinstance(series.dtype, pd.StringDtype) and series.dtype.na_value is pd.NA:
        out = series
    else:
        # One conversion (missing values of any kind become <NA>); astype(object).where(...).astype()
        # built three Series, a fixed cost that dominated small inputs.
        out = pd.Series(pd.array(series.to_numpy(dtype=object), dtype=STRING), index=series.index)
    out = out.str.strip()
    return out.where(out != "")


def _parse_times(series: pd.Series) -> tuple[pd.Series, pd.Series]:
    """(UTC times, mask of present-but-unparsable values). Date-only is midnight UTC; naive is UTC."""
    if isinstance(series.dtype, pd.DatetimeTZDtype):
        return series.dt.tz_convert("UTC").astype(UTC_NS), pd.Series(False, index=series.index)
    if pd.api.types.is_datetime64_dtype(series.dtype):
        return series.dt.tz_localize("UTC").astype(UTC_NS), pd.Series(False, index=series.index)
    text = _to_string(series)
    # utc=True turns naive values into UTC and converts mixed offsets; format="ISO8601" accepts each
    # value's own ISO variant (date only, with or without seconds, "Z", offsets).
    parsed = pd.to_datetime(text, utc=True, format="ISO8601", errors="coerce")
    in_range = parsed.isna() | ((parsed >= _MIN_TIME) & (parsed <= _MAX_TIME))
    parsed = parsed.where(in_range)
    bad = text.notna() & parsed.isna()
    return parsed.astype(UTC_NS), bad.fillna(False).astype(bool)


def _parse_numbers(series: pd.Series) -> tuple[pd.Series, pd.Series]:
    """(float64 values, mask of present-but-not-a-finite-number values)."""
    if pd.api.types.is_numeric_dtype(series.dtype) and not pd.api.types.is_bool_dtype(series.dtype):
        values = series.astype("float64")
        present = series.notna()
    else:
        text = _to_string(series)
        present = text.notna()
        values = pd.to_numeric(text, errors="coerce").astype("float64")
    bad = present & (values.isna() | ~np.isfinite(values.fillna(0.0)))
    values = values.where(~bad)
    return values, bad.astype(bool)


def _first_row_of_duplicates(keys: pd.Series) -> tuple[pd.Series, pd.Series | None]:
    """(mask of repeated keys after their first occurrence, 1-based row of that first occurrence)."""
    dup = keys.notna() & keys.duplicated(keep="first")
    if not bool(dup.any()):
        # Nothing to report, so the first-row lookup (a few Series operations) is not needed.
        return dup.astype(bool), None
    firsts = keys[keys.notna() & ~keys.duplicated(keep="first")]
    first_row = pd.Series(firsts.index + 1, index=firsts.to_numpy())
    return dup.astype(bool), keys.map(first_row)


def _check_columns(frame: pd.DataFrame, table: str, problems: _Problems) -> bool:
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


def _require(frame: pd.DataFrame, table: str, column: str, values: pd.Series, problems: _Problems) -> None:
    problems.add_rows(table, values.isna(), column, f"missing {column}", f"every row needs a {column}")


def _times(frame: pd.DataFrame, table: str, column: str, problems: _Problems, required: bool) -> pd.Series:
    if column not in frame.columns:
        return pd.Series(pd.NaT, index=frame.index, dtype=UTC_NS)
    parsed, bad = _parse_times(frame[column])
    problems.add_rows(
        table,
        bad,
        column,
        "not a time: {value}",
        "use ISO 8601, e.g. 2024-03-01 or 2024-03-01T14:30:00+02:00",
        values=frame[column],
    )
    if required:
        problems.add_rows(table, parsed.isna() & ~bad, column, f"missing {column}", "every row needs a time")
    return parsed


def _coerce_deals(raw: pd.DataFrame, problems: _Problems) -> tuple[pd.DataFrame, tuple[str, ...]]:
    table = "deals"
    out: dict[str, pd.Series] = {}  # the frame is built once at the end (see _coerce_events)
    for column in ("deal_id", "pipeline", "owner"):
        out[column] = _to_string(raw[column])
        _require(raw, table, column, out[column], problems)

    amount, bad = _parse_numbers(raw["amount"])
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
    out["amount"] = amount
    out["created_at"] = _times(raw, table, "created_at", problems, required=True)
    for column in ("team", "account"):
        out[column] = (
            _to_string(raw[column])
            if column in raw.columns
            else pd.Series(pd.NA, index=raw.index, dtype=STRING)
        )
    out["expected_close_date"] = _times(raw, table, "expected_close_date", problems, required=False)
    out["currency"] = (
        _to_string(raw["currency"])
        if "currency" in raw.columns
        else pd.Series(pd.NA, index=raw.index, dtype=STRING)
    )
    dup, first_row = _first_row_of_duplicates(out["deal_id"])
    problems.add_rows(
        table,
        dup,
        "deal_id",
        "duplicate deal_id {value} (first seen in row {extra})",
        "each deal appears once in deals; later values belong in field_changes",
        values=out["deal_id"],
        extra=first_row,
    )

    attributes = tuple(sorted(c for c in raw.columns if c not in DEAL_COLUMNS))
    for column in attributes:
        out[column] = _coerce_attribute(raw[column])
    frame = pd.DataFrame({c: out[c] for c in (*DEAL_COLUMNS, *attributes)}, index=raw.index)
    return frame, attributes


def _coerce_attribute(series: pd.Series) -> pd.Series:
    """Custom attribute: float64 when every present value is a number, else string."""
    if pd.api.types.is_bool_dtype(series.dtype):
        return _to_string(series)
    if pd.api.types.is_numeric_dtype(series.dtype):
        return series.astype("float64")
    text = _to_string(series)
    present = text.notna()
    if not present.any():
        return text
    numbers = pd.to_numeric(text, errors="coerce")
    # Codes with leading zeros (zip codes, account numbers) would lose them as numbers: keep as text.
    leading_zero = text.str.match(r"^[+-]?0\d").fillna(False).astype(bool)
    if bool((numbers.notna() | ~present).all()) and not bool(leading_zero.any()):
        return numbers.astype("float64")
    return text


def _coerce_events(
    raw: pd.DataFrame,
    table: str,
    deals: pd.DataFrame | None,
    problems: _Problems,
) -> pd.DataFrame:
    time_column = EVENT_TIME[table]
    # Columns are collected in a dict and the frame built once: column inserts have a fixed cost that
    # dominated small inputs.
    out: dict[str, pd.Series] = {}
    out["deal_id"] = _to_string(raw["deal_id"])
    _require(raw, table, "deal_id", out["deal_id"], problems)
    out[time_column] = _times(raw, table, time_column, problems, required=True)
    out["event_id"] = (
        _to_string(raw["event_id"])
        if "event_id" in raw.columns
        else pd.Series(pd.NA, index=raw.index, dtype=STRING)
    )

    if table == "stage_changes":
        out["stage"] = _to_string(raw["stage"])
        _require(raw, table, "stage", out["stage"], problems)
    elif table == "activities":
        _coerce_activity_columns(raw, out, problems)
    else:
        _coerce_field_change_columns(raw, out, problems)

    # event_id is unique within a deal (two deals may use the same id), as the store keys it
    per_deal = (out["deal_id"].astype("string") + "\x1f" + out["event_id"]).where(out["event_id"].notna())
    dup, first_row = _first_row_of_duplicates(per_deal)
    problems.add_rows(
        table,
        dup,
        "event_id",
        "duplicate event_id {value} for the same deal (first seen in row {extra})",
        f"event_id must be unique within a deal's {table}",
        values=out["event_id"],
        extra=first_row,
    )

    if deals is not None:
        known = deals.drop_duplicates("deal_id").set_index("deal_id")["created_at"]
        present = out["deal_id"].notna()
        # get_indexer on a plain object Index hashes once; Series.isin on arrow strings is far slower.
        position = pd.Index(known.index.astype(object)).get_indexer(out["deal_id"].astype(object))
        unknown = present & (position < 0)
        problems.add_rows(
            table,
            unknown,
            "deal_id",
            "unknown deal {value}",
            "every history row must refer to a deal_id listed in deals",
            values=out["deal_id"],
        )
        # Read creation times by the positions found above instead of Series.map: map on an empty
        # lookup comes back float64, which cannot be cast to times (an empty history must validate).
        known_times = known.to_numpy(dtype="datetime64[ns]")
        created_values = np.full(len(raw), np.datetime64("NaT", "ns"))
        created_values[position >= 0] = known_times[position[position >= 0]]
        created_index = pd.DatetimeIndex(created_values).tz_localize("UTC")
        created = pd.Series(created_index, index=raw.index, dtype=UTC_NS)
        early = (out[time_column] < created).fillna(False).astype(bool)
        problems.add_rows(
            table,
            early,
            time_column,
            "{value} is before the deal was created ({extra})",
            "events cannot predate the deal's created_at; fix the time or created_at",
            values=raw[time_column],
            extra=created,
        )
    return pd.DataFrame({c: out[c] for c in EVENT_COLUMNS[table]}, index=raw.index)


def _coerce_activity_columns(raw: pd.DataFrame, out: dict[str, pd.Series], problems: _Problems) -> None:
    table = "activities"
    kind = _to_string(raw["type"]).str.lower()
    _require(raw, table, "type", kind, problems)
    problems.add_rows(
        table,
        kind.notna() & ~kind.isin(ACTIVITY_TYPES),
        "type",
        "unknown activity type {value}",
        f"allowed types: {', '.join(ACTIVITY_TYPES)}",
        values=raw["type"],
    )
    out["type"] = kind
    if "direction" in raw.columns:
        direction = _to_string(raw["direction"]).str.lower()
        problems.add_rows(
            table,
            direction.notna() & ~direction.isin(DIRECTIONS),
            "direction",
            "unknown direction {value}",
            f"allowed: {', '.join(DIRECTIONS)}, or leave it empty",
            values=raw["direction"],
        )
        out["direction"] = direction
    else:
        out["direction"] = pd.Series(pd.NA, index=raw.index, dtype=STRING)


def _coerce_field_change_columns(
    raw: pd.DataFrame, out: dict[str, pd.Series], problems: _Problems
) -> None:
    table = "field_changes"
    field = _to_string(raw["field"]).str.lower()
    _require(raw, table, "field", field, problems)
    problems.add_rows(
        table,
        field.notna() & ~field.isin(CHANGEABLE_FIELDS),
        "field",
        "unknown field {value}",
        f"field_changes can change: {', '.join(CHANGEABLE_FIELDS)}",
        values=raw["field"],
    )
    value = _to_string(raw["value"])

    is_amount = (field == "amount").fillna(False).astype(bool)
    amounts, bad_amount = _parse_numbers(value.where(is_amount))
    problems.add_rows(
        table,
        is_amount & (bad_amount | amounts.isna() | (amounts < 0).fillna(False)),
        "value",
        "amount value {value} is not a number ≥ 0",
        "amount changes carry the new amount, e.g. 12500",
        values=raw["value"],
    )

    is_close = (field == "expected_close_date").fillna(False).astype(bool)
    dates, bad_date = _parse_times(value.where(is_close))
    problems.add_rows(
        table,
        is_close & bad_date,
        "value",
        "expected_close_date value {value} is not a time",
        "use ISO 8601, e.g. 2024-03-01; leave it empty to clear the date",
        values=raw["value"],
    )
    # Dates are stored canonically so every consumer parses the same instant (naive/date-only = UTC).
    iso = format_utc_iso(dates)
    value = value.where(~(is_close & dates.notna()), iso)

    is_owner = (field == "owner").fillna(False).astype(bool)
    problems.add_rows(
        table, is_owner & value.isna(), "value", "missing new owner", "owner changes name the new owner"
    )
    out["field"] = field
    out["value"] = value


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


def _sort_events(frame: pd.DataFrame, time_column: str) -> pd.DataFrame:
    # Stable: events of one deal at the same instant keep the order they were given in, which is the
    # only signal of which stage change came last.
    return frame.sort_values(["deal_id", time_column], kind="stable").reset_index(drop=True)


def _string_list(value: Any) -> bool:
    return isinstance(value, list | tuple) and all(isinstance(v, str) and v.strip() for v in value)


def _given_specs(raw: Any, problems: _Problems) -> dict[str, PipelineSpec]:
    table = "pipelines"
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        problems.add(
            table,
            None,
            None,
            f"expected a mapping of pipeline name to spec, got {type(raw).__name__}",
            "pipelines.yaml maps each pipeline to {stages: [...], won: [...], lost: [...]}",
        )
        return {}
    specs: dict[str, PipelineSpec] = {}
    for name, spec in raw.items():
        if isinstance(spec, PipelineSpec):
            specs[str(name)] = spec
            continue
        if not isinstance(spec, Mapping):
            problems.add(
                table,
                None,
                str(name),
                "pipeline spec is not a mapping",
                "give stages: [...], won: [...], lost: [...]",
            )
            continue
        ok = True
        if not _string_list(spec.get("stages")):
            problems.add(
                table,
                None,
                f"{name}.stages",
                f"stages must be a list of stage names, got {spec.get('stages')!r}",
                "e.g. stages: [Lead In, Qualified, Proposal Sent]",
            )
            ok = False
        for key in ("won", "lost"):
            if spec.get(key) is not None and not _string_list(spec.get(key)):
                problems.add(
                    table,
                    None,
                    f"{name}.{key}",
                    f"{key} must be a list of stage names, got {spec.get(key)!r}",
                    f"e.g. {key}: [Closed {key.capitalize()}]",
                )
                ok = False
        stale = spec.get("stale_after_days")
        if stale is not None and not (
            isinstance(stale, Mapping)
            and all(isinstance(v, int | float) and not isinstance(v, bool) and v >= 0 for v in stale.values())
        ):
            problems.add(
                table,
                None,
                f"{name}.stale_after_days",
                f"not a mapping of stage to days ≥ 0: {stale!r}",
                "e.g. stale_after_days: {Lead In: 7}",
            )
            ok = False
        if ok:
            specs[str(name)] = PipelineSpec.from_dict(str(name), spec)
    return specs


def _check_stages_against_specs(
    stage_changes: pd.DataFrame,
    pipeline_of_row: pd.Series,
    specs: Mapping[str, PipelineSpec],
    problems: _Problems,
) -> None:
    stage = stage_changes["stage"]
    lower = stage.str.lower()
    for name, spec in specs.items():
        in_pipe = (pipeline_of_row == name).fillna(False).astype(bool)
        if not in_pipe.any():
            continue
        known = stage.isin(spec.stages + spec.won + spec.lost)
        if not spec.won:
            known |= lower.str.contains("won", regex=False)
        if not spec.lost:
            known |= lower.str.contains("lost", regex=False)
        bad = in_pipe & stage.notna() & ~known.fillna(False).astype(bool)
        listed = ", ".join(spec.stages + spec.won + spec.lost) or "(none)"
        problems.add_rows(
            "stage_changes",
            bad,
            "stage",
            f"stage {{value}} is not a stage of pipeline {name!r}",
            f"{name!r} has the stages {listed}; fix the name or add it to pipelines.yaml",
            values=stage,
        )


def infer_pipeline_specs(
    deals: pd.DataFrame, stage_changes: pd.DataFrame, pipelines: list[str]
) -> dict[str, PipelineSpec]:
    """Specs for pipelines without one: closing stages by name, open stages by typical order of entry.

    A stage whose name contains "won"/"lost" (any case) closes the deal, as SPEC says. Open stages are
    ordered by the median position (0 = first stage the deal entered) at which deals first enter them,
    ties broken by mean position, then by name, so the result is deterministic.
    """
    if not pipelines:
        return {}
    pipeline_of = deals.drop_duplicates("deal_id").set_index("deal_id")["pipeline"]
    events = stage_changes[["deal_id", "stage", "changed_at"]].dropna()
    events = events.assign(pipeline=events["deal_id"].map(pipeline_of))
    events = events[events["pipeline"].isin(pipelines)]
    # The position is the order of first entries per deal: a deal that goes back does not renumber.
    firsts = events.sort_values(["deal_id", "changed_at"], kind="stable").drop_duplicates(
        ["deal_id", "stage"]
    )
    firsts = firsts.assign(position=firsts.groupby("deal_id", sort=False).cumcount())
    stats = (
        firsts.groupby(["pipeline", "stage"], observed=True)["position"]
        .agg(["median", "mean"])
        .reset_index()
        .sort_values(["pipeline", "median", "mean", "stage"], kind="stable")
    )
    lower = stats["stage"].str.lower()
    stats["kind"] = np.where(
        lower.str.contains("won", regex=False),
        "won",
        np.where(lower.str.contains("lost", regex=False), "lost", "open"),
    )
    specs: dict[str, PipelineSpec] = {}
    grouped = {str(k): g for k, g in stats.groupby("pipeline", sort=False)}
    for name in pipelines:
        group = grouped.get(name)
        if group is None:
            specs[name] = PipelineSpec(name=name, stages=(), inferred=True)
            continue
        by_kind = {k: tuple(str(s) for s in g["stage"]) for k, g in group.groupby("kind", sort=False)}
        specs[name] = PipelineSpec(
            name=name,
            stages=by_kind.get("open", ()),
            won=by_kind.get("won", ()),
            lost=by_kind.get("lost", ()),
            inferred=True,
        )
    logger.info("inferred stage order for %d pipeline(s) without a spec", len(specs))
    return specs


def validate_and_coerce(
    deals: pd.DataFrame,
    stage_changes: pd.DataFrame,
    activities: pd.DataFrame,
    field_changes: pd.DataFrame | None = None,
    pipelines: Mapping[str, PipelineSpec] | Mapping[str, Mapping[str, Any]] | None = None,
    source: str | None = None,
) -> DealHistory:
    """Check raw frames against the SPEC format and return a typed `DealHistory`.

    Raises `HistoryValidationError` with every problem found (up to MAX_PROBLEMS), each naming the
    table, 1-based data row, column and a hint. Extra deal columns become custom attributes; extra event
    columns are dropped. Pipelines without a spec get one inferred from the stage changes.
    """
    problems = _Problems()
    raw = {
        "deals": _as_frame(deals, "deals"),
        "stage_changes": _as_frame(stage_changes, "stage_changes"),
        "activities": _as_frame(activities, "activities"),
        "field_changes": _as_frame(field_changes, "field_changes"),
    }
    complete = {table: _check_columns(frame, table, problems) for table, frame in raw.items()}
    specs = _given_specs(pipelines, problems)
    if not problems.items:
        # Clean small inputs (the service's inline deals) skip the per-column pandas work; anything
        # doubtful returns None and goes through the checks below, so problems read the same.
        fast = _fast_validate(raw, specs)
        if fast is not None:
            return fast

    deal_frame: pd.DataFrame | None = None
    attributes: tuple[str, ...] = ()
    if complete["deals"]:
        deal_frame, attributes = _coerce_deals(raw["deals"], problems)

    events: dict[str, pd.DataFrame] = {}
    for table in ("stage_changes", "activities", "field_changes"):
        if complete[table]:
            events[table] = _coerce_events(raw[table], table, deal_frame, problems)

    if deal_frame is not None and "stage_changes" in events:
        pipeline_of = deal_frame.drop_duplicates("deal_id").set_index("deal_id")["pipeline"]
        row_pipeline = events["stage_changes"]["deal_id"].map(pipeline_of)
        _check_stages_against_specs(events["stage_changes"], row_pipeline, specs, problems)

    if problems.items:
        if problems.truncated:
            problems.items.append(
                Problem(
                    "(all)", None, None, f"stopped after {MAX_PROBLEMS} problems", "fix these and run again"
                )
            )
        raise HistoryValidationError(problems.items, source)
    assert deal_frame is not None  # every table was complete, or there would be problems

    sorted_events = {table: _sort_events(frame, EVENT_TIME[table]) for table, frame in events.items()}
    deal_frame = deal_frame.sort_values("deal_id", kind="stable").reset_index(drop=True)
    seen = [str(p) for p in pd.unique(deal_frame["pipeline"])]
    missing_specs = sorted(p for p in seen if p not in specs)
    all_specs = dict(specs)
    all_specs.update(infer_pipeline_specs(deal_frame, sorted_events["stage_changes"], missing_specs))
    return DealHistory(
        deals=deal_frame,
        stage_changes=order_stage_changes(sorted_events["stage_changes"], deal_frame, all_specs),
        activities=sorted_events["activities"],
        field_changes=sorted_events["field_changes"],
        pipelines=all_specs,
        attribute_columns=attributes,
    )


# ---------------------------------------------------------------------------------------------------
# Fast path for small, already clean inputs (the service's inline deals).
#
# The full path costs ~40 ms on a one-deal history, almost all fixed pandas overhead (hundreds of small
# Series). Inputs from the API are typed (datetimes, floats, stripped strings), so most of those checks
# can be answered with a few numpy operations. The fast path only ever *accepts*: as soon as anything
# is not plainly valid (or merely needs a coercion it does not do itself, such as stripping or
# lower-casing), it gives up and the full path runs, so problems and their messages are the full path's.
# ---------------------------------------------------------------------------------------------------

# Above this many rows in one table the vectorised full path costs little more, so it is used as is.
FAST_PATH_MAX_ROWS = 5_000


class _NotFast(Exception):
    """The input needs the full path (a problem, or a coercion the fast path does not do)."""


def _fast_strings(
    series: pd.Series | None, n: int, required: bool
) -> tuple[np.ndarray, pd.api.extensions.ExtensionArray]:
    """(object values with None for missing, "string" array) of a column that needs no coercion."""
    if series is None:
        return np.full(n, None, dtype=object), pd.array(np.full(n, None, dtype=object), dtype=STRING)
    values = series.to_numpy(dtype=object)
    missing = pd.isna(values)
    if missing.any():
        if required:
            raise _NotFast
        values = values.copy()
        values[missing] = None
    present = values[~missing]
    if present.size:
        if pd.api.types.infer_dtype(present, skipna=False) != "string":
            raise _NotFast  # numbers, bools, bytes...: the full path turns them into text
        text = present.astype(str)
        lengths = np.strings.str_len(text)
        if (lengths == 0).any():
            raise _NotFast  # empty text is a missing value
        # Text with whitespace at either end is stripped by the full path; only accept ends that are
        # certainly not whitespace under any definition (printable ASCII, or non-ASCII letters/digits).
        codes = text.view(np.uint32).reshape(len(text), -1)
        rows = np.arange(len(text))
        ends = np.concatenate([codes[:, 0], codes[rows, lengths - 1]])
        odd = ends[(ends < 0x21) | (ends > 0x7E)]
        if odd.size and not all(chr(int(c)).isalnum() for c in np.unique(odd)):
            raise _NotFast
    return values, pd.array(values, dtype=STRING)


def _fast_times(series: pd.Series | None, n: int, required: bool) -> np.ndarray:
    """UTC nanoseconds (int64, NaT as the minimum int64) of a datetime column; no parsing of text."""
    if series is None or n == 0:
        if required and n:
            raise _NotFast
        return np.full(n, np.iinfo(np.int64).min, dtype=np.int64)
    dtype = series.dtype
    if isinstance(dtype, pd.DatetimeTZDtype):
        array = series.array.tz_convert("UTC")
    elif pd.api.types.is_datetime64_dtype(dtype):
        array = series.array.tz_localize("UTC")
    elif not required and bool(pd.isna(series.to_numpy(dtype=object)).all()):
        return np.full(n, np.iinfo(np.int64).min, dtype=np.int64)
    else:
        raise _NotFast  # text times are parsed (and checked) by the full path
    try:
        ns = array.as_unit("ns").asi8
    except (OverflowError, ValueError):
        raise _NotFast from None
    if required and (ns == np.iinfo(np.int64).min).any():
        raise _NotFast
    return ns


def _utc_series(ns: np.ndarray) -> pd.api.extensions.ExtensionArray:
    return pd.array(ns.view("datetime64[ns]"), dtype="datetime64[ns]").tz_localize("UTC")


def _column(frame: pd.DataFrame, name: str) -> pd.Series | None:
    return frame[name] if name in frame.columns else None


def _fast_member(values: np.ndarray, allowed: tuple[str, ...], optional: bool) -> None:
    """Every value is one of `allowed` exactly (already lower case), or missing when `optional`."""
    missing = pd.isna(values)
    if missing.any() and not optional:
        raise _NotFast
    if not np.isin(values[~missing], np.array(allowed, dtype=object)).all():
        raise _NotFast


def _fast_unique(values: np.ndarray) -> None:
    present = values[~pd.isna(values)]
    if np.unique(present).size != present.size:
        raise _NotFast


def _fast_deals(raw: pd.DataFrame) -> tuple[pd.DataFrame, np.ndarray, tuple[str, ...]]:
    """(deals frame as the full path returns it but unsorted, created_at ns, attribute columns)."""
    n = len(raw)
    out: dict[str, Any] = {}
    ids, out["deal_id"] = _fast_strings(raw["deal_id"], n, required=True)
    _fast_unique(ids)
    _, out["pipeline"] = _fast_strings(raw["pipeline"], n, required=True)
    _, out["owner"] = _fast_strings(raw["owner"], n, required=True)
    amount = raw["amount"]
    if isinstance(amount.dtype, np.dtype) and amount.dtype.kind in "iuf":
        values = amount.to_numpy(dtype=np.float64)
    else:
        # Text, boxed numbers (the store's Numeric column) or nullable floats: the full path's own parser,
        # so the floats are the same ones.
        parsed, bad = _parse_numbers(amount)
        if bool(bad.any()):
            raise _NotFast
        values = parsed.to_numpy(dtype=np.float64, na_value=np.nan)
    if not (np.isfinite(values) & (values >= 0)).all():
        raise _NotFast
    out["amount"] = values
    created = _fast_times(raw["created_at"], n, required=True)
    out["created_at"] = _utc_series(created)
    _, out["team"] = _fast_strings(_column(raw, "team"), n, required=False)
    _, out["account"] = _fast_strings(_column(raw, "account"), n, required=False)
    out["expected_close_date"] = _utc_series(
        _fast_times(_column(raw, "expected_close_date"), n, required=False)
    )
    _, out["currency"] = _fast_strings(_column(raw, "currency"), n, required=False)
    attributes = tuple(sorted(c for c in raw.columns if c not in DEAL_COLUMNS))
    for column in attributes:
        out[column] = _fast_attribute(raw[column])
    frame = pd.DataFrame({c: out[c] for c in (*DEAL_COLUMNS, *attributes)})
    return frame, created, attributes


def _fast_attribute(series: pd.Series) -> Any:
    """Text attributes with a value that is not a number stay text; anything else as the full path."""
    try:
        values, text = _fast_strings(series, len(series), required=False)
    except _NotFast:
        return _coerce_attribute(series)
    present = ~pd.isna(values)
    if present.any():
        numbers = pd.to_numeric(pd.Series(text), errors="coerce")
        if not bool((numbers.notna().to_numpy() | ~present).all()):
            return text
    return _coerce_attribute(series)


def _fast_events(
    raw: pd.DataFrame, table: str, deal_ids: np.ndarray, created: np.ndarray
) -> tuple[dict[str, Any], np.ndarray, np.ndarray]:
    """(output columns, deal code per row, event time ns per row) of one clean event table."""
    n = len(raw)
    time_column = EVENT_TIME[table]
    out: dict[str, Any] = {}
    ids, out["deal_id"] = _fast_strings(raw["deal_id"], n, required=True)
    times = _fast_times(raw[time_column], n, required=True)
    out[time_column] = _utc_series(times)
    event_ids, out["event_id"] = _fast_strings(_column(raw, "event_id"), n, required=False)
    keyed = ~pd.isna(event_ids)
    pairs = [f"{d}\x1f{e}" for d, e in zip(ids[keyed], event_ids[keyed], strict=True)]
    _fast_unique(np.array(pairs, dtype=object))
    codes = pd.Index(deal_ids, dtype=object).get_indexer(pd.Index(ids, dtype=object))
    if (codes < 0).any() or (times < created[codes]).any():
        raise _NotFast  # unknown deal, or an event before its deal was created
    if table == "stage_changes":
        _, out["stage"] = _fast_strings(raw["stage"], n, required=True)
    elif table == "activities":
        kinds, out["type"] = _fast_strings(raw["type"], n, required=True)
        _fast_member(kinds, ACTIVITY_TYPES, optional=False)
        directions, out["direction"] = _fast_strings(_column(raw, "direction"), n, required=False)
        _fast_member(directions, DIRECTIONS, optional=True)
    else:
        fields, out["field"] = _fast_strings(raw["field"], n, required=True)
        _fast_member(fields, CHANGEABLE_FIELDS, optional=False)
        values, out["value"] = _fast_field_values(raw["value"], fields)
    return out, codes, times


def _fast_field_values(series: pd.Series, fields: np.ndarray) -> tuple[np.ndarray, Any]:
    """Field-change values checked by field; close dates rewritten canonically as the full path does."""
    n = len(series)
    values, text = _fast_strings(series, n, required=False)
    present = ~pd.isna(values)
    if (~present & ((fields == "amount") | (fields == "owner"))).any():
        raise _NotFast
    is_amount = fields == "amount"
    if is_amount.any():
        parsed = pd.to_numeric(pd.Series(text[is_amount]), errors="coerce")
        numbers = parsed.to_numpy(dtype=np.float64, na_value=np.nan)
        if not (np.isfinite(numbers) & (numbers >= 0)).all():
            raise _NotFast
    is_close = (fields == "expected_close_date") & present
    if is_close.any():
        dates = pd.to_datetime(pd.Series(text[is_close]), utc=True, format="ISO8601", errors="coerce")
        if bool(dates.isna().any()) or not bool(((dates >= _MIN_TIME) & (dates <= _MAX_TIME)).all()):
            raise _NotFast
        values = values.copy()
        values[is_close] = format_utc_iso(dates.astype(UTC_NS)).to_numpy(dtype=object)
        text = pd.array(values, dtype=STRING)
    return values, text


def _fast_stages_known(stages: np.ndarray, pipelines: np.ndarray, specs: Mapping[str, PipelineSpec]) -> None:
    """Every stage row of a pipeline with a spec names one of its listed stages."""
    for name, spec in specs.items():
        in_pipe = pipelines == name
        if not in_pipe.any():
            continue
        listed = pd.Index(list(spec.stages + spec.won + spec.lost), dtype=object)
        if (listed.get_indexer(pd.Index(stages[in_pipe], dtype=object)) < 0).any():
            raise _NotFast  # may still be fine by the won/lost naming rule: the full path decides


def _fast_validate(
    raw: Mapping[str, pd.DataFrame], specs: Mapping[str, PipelineSpec]
) -> DealHistory | None:
    """The `DealHistory` the full path would return for a small, clean input; None to use the full path."""
    if any(len(frame) > FAST_PATH_MAX_ROWS for frame in raw.values()):
        return None
    if any(c not in raw[table].columns for table, (required, _) in TABLES.items() for c in required):
        return None
    try:
        deals, created, attributes = _fast_deals(raw["deals"])
        deal_ids = deals["deal_id"].to_numpy(dtype=object)
        pipelines = deals["pipeline"].to_numpy(dtype=object)
        events: dict[str, pd.DataFrame] = {}
        for table in ("stage_changes", "activities", "field_changes"):
            out, codes, times = _fast_events(raw[table], table, deal_ids, created)
            if table == "stage_changes":
                stages = np.asarray(out["stage"].to_numpy(dtype=object), dtype=object)
                _fast_stages_known(stages, pipelines[codes], specs)
            # (deal_id, time), stable: the order of deal ids is their sorted order as text.
            rank = np.argsort(np.argsort(deal_ids, kind="stable"), kind="stable")
            order = np.lexsort((times, rank[codes]))
            frame = pd.DataFrame({c: out[c] for c in EVENT_COLUMNS[table]})
            events[table] = frame.take(order).reset_index(drop=True)
    except _NotFast:
        return None
    deals = deals.take(np.argsort(deal_ids, kind="stable")).reset_index(drop=True)
    seen = [str(p) for p in pd.unique(deals["pipeline"])]
    missing_specs = sorted(p for p in seen if p not in specs)
    all_specs = dict(specs)
    all_specs.update(infer_pipeline_specs(deals, events["stage_changes"], missing_specs))
    return DealHistory(
        deals=deals,
        stage_changes=order_stage_changes(events["stage_changes"], deals, all_specs),
        activities=events["activities"],
        field_changes=events["field_changes"],
        pipelines=all_specs,
        attribute_columns=attributes,
    )
