"""What every CRM importer shares: reading export files, locating bad rows, and assembling the history.

A CRM module reads its own files into plain frames (deals with their values *at creation*, stage
changes, activities, field changes, stage metadata) and calls `assemble`, which checks what can only be
checked across files (an activity for a deal not in the export, a stage id the stage metadata does not
know), removes what carries no information (a stage "change" to the same stage, a field set to the value
it already had), builds one pipeline spec per pipeline from the stage metadata, and hands everything to
`DealHistory.from_frames`. Nothing is written anywhere: a converter either returns a complete history or
raises `HistoryValidationError` naming the export file, row and column.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from features.history import DealHistory, HistoryValidationError, PipelineSpec, Problem

# Column names of the intermediate frames a CRM module hands to `assemble`. `_file`, `_row` and
# `_column` locate the export cell an event came from, for error messages.
WHERE = ("_file", "_row", "_column")
# The deal columns a converter fills (values at creation); team and account may be empty.
DEAL_COLUMNS = (
    "deal_id",
    "pipeline",
    "owner",
    "amount",
    "created_at",
    "expected_close_date",
    "account",
    "team",
    "currency",
)
SYNTHETIC_WON = "won"
SYNTHETIC_LOST = "lost"


@dataclass(frozen=True)
class Note:
    """One line of the import report: something dropped, not mapped, or not tracked, and why."""

    what: str
    why: str
    count: int
    file: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"file": self.file, "what": self.what, "why": self.why, "count": self.count}

    def __str__(self) -> str:
        where = f"{self.file}: " if self.file else ""
        return f"{where}{self.what} ({self.count:,}): {self.why}"


@dataclass
class ImportReport:
    """What an import could not carry over, and the display labels of the ids it keyed on."""

    crm: str
    source: str
    dropped: list[Note] = field(default_factory=list)  # whole records left out (deleted, merged, ...)
    unmapped: list[Note] = field(default_factory=list)  # values or rows that have no place in a history
    untracked: list[Note] = field(default_factory=list)  # history that did not start at creation
    stage_labels: dict[str, str] = field(default_factory=dict)  # stage id -> label
    pipeline_labels: dict[str, str] = field(default_factory=dict)
    owner_labels: dict[str, str] = field(default_factory=dict)

    def drop(self, what: str, count: int, why: str, file: str = "") -> None:
        if count:
            self.dropped.append(Note(what, why, int(count), file))

    def unmap(self, what: str, count: int, why: str, file: str = "") -> None:
        if count:
            self.unmapped.append(Note(what, why, int(count), file))

    def untrack(self, what: str, count: int, why: str, file: str = "") -> None:
        if count:
            self.untracked.append(Note(what, why, int(count), file))


@dataclass
class CrmImport:
    """A converted export: the history (keyed on the CRM's ids) and the report of the conversion."""

    history: DealHistory
    report: ImportReport

    def summary(self) -> dict[str, Any]:
        """Deals, events per table, pipelines, date range, and everything dropped or not mapped."""
        h, r = self.history, self.report
        pipelines = {
            name: {
                "label": r.pipeline_labels.get(name, name),
                "deals": int((h.deals["pipeline"] == name).sum()),
                "stages": [r.stage_labels.get(s, s) for s in spec.stages],
                "won": [r.stage_labels.get(s, s) for s in spec.won],
                "lost": [r.stage_labels.get(s, s) for s in spec.lost],
            }
            for name, spec in sorted(h.pipelines.items())
        }
        empty = h.n_deals() == 0
        return {
            "crm": r.crm,
            "source": r.source,
            "deals": h.n_deals(),
            "events": {
                "stage_changes": len(h.stage_changes),
                "activities": len(h.activities),
                "field_changes": len(h.field_changes),
            },
            "pipelines": pipelines,
            "start": None if empty else h.deals["created_at"].min(),
            "end": None if empty else h.end_time,
            "dropped": [n.to_dict() for n in r.dropped],
            "unmapped": [n.to_dict() for n in r.unmapped],
            "untracked": [n.to_dict() for n in r.untracked],
        }

    def labelled(self) -> DealHistory:
        """The same history with pipeline, stage and owner labels in place of the CRM's ids.

        Labels are for people; ids are what a CRM keeps stable. Raises ValueError when two ids of one
        pipeline share a label (they would merge into one stage).
        """
        r, h = self.report, self.history

        def label(mapping: Mapping[str, str], values: pd.Series) -> pd.Series:
            return values.map(lambda v: mapping.get(v, v) if isinstance(v, str) else v).astype("string")

        specs: dict[str, dict[str, Any]] = {}
        for name, spec in h.pipelines.items():
            names = [r.stage_labels.get(s, s) for s in spec.stages + spec.won + spec.lost]
            clashes = sorted({n for n in names if names.count(n) > 1})
            if clashes:
                raise ValueError(f"pipeline {name!r}: several stage ids share the label(s) {clashes}")
            specs[r.pipeline_labels.get(name, name)] = {
                "stages": [r.stage_labels.get(s, s) for s in spec.stages],
                "won": [r.stage_labels.get(s, s) for s in spec.won],
                "lost": [r.stage_labels.get(s, s) for s in spec.lost],
                "stale_after_days": {r.stage_labels.get(s, s): v for s, v in spec.stale_after_days.items()},
            }
        if len(specs) != len(h.pipelines):
            raise ValueError("several pipeline ids share a label")
        deals = h.deals.copy()
        deals["pipeline"] = label(r.pipeline_labels, deals["pipeline"])
        deals["owner"] = label(r.owner_labels, deals["owner"])
        stages = h.stage_changes.copy()
        stages["stage"] = label(r.stage_labels, stages["stage"])
        fields = h.field_changes.copy()
        is_owner = fields["field"] == "owner"
        fields.loc[is_owner, "value"] = label(r.owner_labels, fields.loc[is_owner, "value"])
        return DealHistory.from_frames(deals, stages, h.activities, fields, pipelines=specs, source=r.source)


# ------------------------------------------------------------------------------------------------
# Reading export files
# ------------------------------------------------------------------------------------------------


class ExportFolder:
    """A CRM export folder. File and column names match case-insensitively (exports differ in case)."""

    def __init__(self, path: str | Path, crm: str) -> None:
        self.path = Path(path)
        self.crm = crm
        if not self.path.is_dir():
            raise self.error(
                str(self.path), None, None, "not a folder", f"give the folder of the {crm} export"
            )
        self._files = {p.name.lower(): p for p in self.path.iterdir() if p.is_file()}

    def error(
        self, file: str, row: int | None, column: str | None, message: str, hint: str = ""
    ) -> HistoryValidationError:
        return HistoryValidationError([Problem(file, row, column, message, hint)], str(self.path))

    def find(self, name: str) -> Path | None:
        return self._files.get(name.lower())

    def require(self, name: str, hint: str) -> Path:
        found = self.find(name)
        if found is None:
            raise self.error(name, None, None, f"missing file {name} in the {self.crm} export", hint)
        return found

    def read_csv(
        self,
        name: str,
        required: Iterable[str],
        optional: Iterable[str] = (),
        must_exist: bool = True,
        hint: str = "",
    ) -> pd.DataFrame | None:
        """The file's rows as text with the given columns (canonical case) plus `_row` (1-based data row).

        A missing optional column comes back empty; a missing required column raises naming it.
        """
        path = self.find(name) if not must_exist else self.require(name, hint)
        if path is None:
            return None
        try:
            raw = pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""], encoding="utf-8-sig")
        except pd.errors.EmptyDataError:
            raise self.error(path.name, None, None, "the file is empty", "it needs a header line") from None
        except (pd.errors.ParserError, UnicodeDecodeError, OSError) as exc:
            raise self.error(
                path.name, None, None, f"cannot read the file: {exc}", "CSV must be UTF-8"
            ) from exc
        by_lower = {str(c).strip().lower(): c for c in raw.columns}
        out = pd.DataFrame(index=raw.index)
        for column in required:
            source = by_lower.get(column.lower())
            if source is None:
                raise self.error(
                    path.name,
                    None,
                    column,
                    f"missing column {column!r}",
                    f"the columns found are {', '.join(map(str, raw.columns))}",
                )
            out[column] = raw[source].str.strip()
        for column in optional:
            source = by_lower.get(column.lower())
            out[column] = raw[source].str.strip() if source is not None else pd.Series(pd.NA, index=raw.index)
        out["_row"] = np.arange(1, len(raw) + 1)
        return out.replace({"": pd.NA})

    def read_json(self, name: str, must_exist: bool = True, hint: str = "") -> list[dict[str, Any]] | None:
        """The records of a JSON export: a list, an API page (`results` / `data`), or a list of pages."""
        path = self.find(name) if not must_exist else self.require(name, hint)
        if path is None:
            return None
        try:
            raw = json.loads(path.read_text(encoding="utf-8-sig"))
        except (json.JSONDecodeError, UnicodeDecodeError, OSError) as exc:
            raise self.error(path.name, None, None, f"not valid JSON: {exc}", hint) from exc
        records = _records(raw)
        if records is None:
            raise self.error(
                path.name,
                None,
                None,
                "expected a list of records, or API pages with 'results' or 'data'",
                hint,
            )
        for i, record in enumerate(records, start=1):
            if not isinstance(record, dict):
                raise self.error(path.name, i, None, "a record is not a JSON object", hint)
        return records

    def time(self, file: str, row: int, column: str, value: Any, hint: str) -> pd.Timestamp:
        """One record's time in UTC; raise naming the cell when it is missing or unreadable."""
        at = parse_time(value)
        if at is None:
            raise self.error(file, row, column, f"missing or unreadable time {value!r}", hint)
        return at

    def need(self, frame: pd.DataFrame, file: str, column: str, what: str = "a value") -> None:
        """Raise naming the first row whose `column` is empty."""
        empty = frame[column].isna().to_numpy()
        if empty.any():
            row = int(frame["_row"].to_numpy()[np.flatnonzero(empty)[0]])
            raise self.error(file, row, column, f"missing {what}")


def _records(raw: Any) -> list[Any] | None:
    if isinstance(raw, dict):
        for key in ("results", "data"):
            if key in raw:
                inner = raw[key]
                return [] if inner is None else (inner if isinstance(inner, list) else None)
        return None
    if isinstance(raw, list):
        # A list of API pages (each holding a list under `results` / `data`), not a list of records.
        if raw and all(
            isinstance(r, dict) and any(isinstance(r.get(k), list) for k in ("results", "data")) for r in raw
        ):
            pages = [_records(r) for r in raw]
            return None if any(p is None for p in pages) else [x for p in pages for x in (p or [])]
        return raw
    return None


def dig(record: Mapping[str, Any], path: str) -> Any:
    """`record["a"]["b"]` for "a.b"; None when any step is missing."""
    value: Any = record
    for key in path.split("."):
        if not isinstance(value, Mapping):
            return None
        value = value.get(key)
    return value


# ------------------------------------------------------------------------------------------------
# Values
# ------------------------------------------------------------------------------------------------

_EPOCH_MS = re.compile(r"^-?\d{11,}$")
_DATE = re.compile(r"^(\d{4}-\d{2}-\d{2})")
TRUE = {"true", "1", "yes", "t", "y"}


def parse_times(values: pd.Series) -> pd.Series:
    """Times to UTC: ISO 8601 (an offset is honoured, naive is UTC), `YYYY-MM-DD HH:MM:SS` (UTC), or epoch
    milliseconds. Unparsable values become NaT (callers report them)."""
    text = values.astype("string").str.strip()
    out = pd.Series(pd.NaT, index=values.index, dtype="datetime64[ns, UTC]")
    epoch = text.str.fullmatch(_EPOCH_MS.pattern).fillna(False).astype(bool)
    if epoch.any():
        out[epoch] = pd.to_datetime(text[epoch].astype("int64"), unit="ms", utc=True)
    rest = ~epoch & text.notna()
    if rest.any():
        out[rest] = pd.to_datetime(text[rest], utc=True, errors="coerce", format="mixed")
    return out


def parse_time(value: Any) -> pd.Timestamp | None:
    """One time, as `parse_times` reads it (None when missing or unreadable): for record-by-record JSON."""
    if value is None or value is False or value == "":
        return None
    text = str(value).strip()
    try:
        if _EPOCH_MS.fullmatch(text):
            return pd.Timestamp(int(text), unit="ms", tz="UTC")
        ts = pd.Timestamp(text)
    except (ValueError, TypeError):
        return None
    if pd.isna(ts):
        return None
    return ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")


def check_times(
    folder: ExportFolder, frame: pd.DataFrame, file: str, column: str, required: bool = True
) -> pd.Series:
    """Parse `column` of an export table; raise naming the first unparsable (or missing) cell."""
    parsed = parse_times(frame[column])
    bad = parsed.isna() & (frame[column].notna() | required)
    if bad.any():
        i = np.flatnonzero(bad.to_numpy())[0]
        value = frame[column].iloc[i]
        message = "missing time" if pd.isna(value) else f"{value!r} is not a time"
        raise folder.error(file, int(frame["_row"].iloc[i]), column, message, "use ISO 8601")
    return parsed


def calendar_dates(values: pd.Series) -> pd.Series:
    """The calendar date as written (`YYYY-MM-DD`), never moved by a time-zone offset.

    A close date of `2024-03-31T00:00:00+02:00` is March 31st, not March 30th in UTC. Epoch milliseconds
    carry no written date; their UTC date is used.
    """
    text = values.astype("string").str.strip()
    out = text.str.extract(_DATE.pattern, expand=False).astype("string")
    epoch = text.str.fullmatch(_EPOCH_MS.pattern).fillna(False).astype(bool)
    if epoch.any():
        out[epoch] = pd.to_datetime(text[epoch].astype("int64"), unit="ms", utc=True).dt.strftime("%Y-%m-%d")
    return out


def parse_amounts(values: pd.Series) -> pd.Series:
    return pd.to_numeric(values.astype("string").str.replace(",", "", regex=False), errors="coerce")


def format_amounts(values: pd.Series) -> pd.Series:
    """Amounts as text a person reads back: whole numbers without a decimal point."""

    def one(x: Any) -> Any:
        if x is None or (isinstance(x, float) and math.isnan(x)):
            return pd.NA
        x = float(x)
        return str(int(x)) if x.is_integer() else repr(x)

    return pd.Series([one(x) for x in values], index=values.index, dtype="string")


def flags(values: pd.Series) -> pd.Series:
    """Boolean cells ("true", "1", JSON true) as bool; empty is False."""
    return values.map(lambda v: str(v).strip().lower() in TRUE if v is not None and not pd.isna(v) else False)


def id_text(values: pd.Series) -> pd.Series:
    """Ids as text: JSON numbers lose their float suffix (7.0 -> "7"); many2one pairs take their id."""

    def one(v: Any) -> Any:
        if isinstance(v, list | tuple):
            v = v[0] if v else None
        if isinstance(v, Mapping):
            v = v.get("id", v.get("value"))
        if v is None or v is False or (isinstance(v, float) and math.isnan(v)):
            return pd.NA
        if isinstance(v, float) and v.is_integer():
            v = int(v)
        text = str(v).strip()
        return text or pd.NA

    return pd.Series([one(v) for v in values], index=values.index, dtype="string")


# ------------------------------------------------------------------------------------------------
# Assembling the history
# ------------------------------------------------------------------------------------------------


def first_value_per_deal(frame: pd.DataFrame, value: str, order: list[str]) -> pd.Series:
    """The first `value` per deal_id after sorting by `order` (stable)."""
    ordered = frame.sort_values(order, kind="stable")
    return ordered.groupby("deal_id", sort=False)[value].first()


def _drop_repeats(
    frame: pd.DataFrame, keys: list[str], value: str, initial: pd.Series | None
) -> pd.DataFrame:
    """Rows whose value differs from the row before in the same group (the first row compares with the
    group's `initial` value when given). Frame must be sorted by group then time."""
    if frame.empty:
        return frame
    prev = frame.groupby(keys, sort=False)[value].shift(1)
    if initial is not None:
        first = prev.isna() & ~frame.duplicated(keys)
        prev = prev.where(~first, frame["deal_id"].map(initial))
    same = (frame[value].astype("string") == prev.astype("string")).fillna(False).astype(bool)
    return frame[~same.to_numpy()]


def assemble(
    folder: ExportFolder,
    report: ImportReport,
    deals: pd.DataFrame,
    stage_changes: pd.DataFrame,
    activities: pd.DataFrame,
    field_changes: pd.DataFrame,
    stage_meta: pd.DataFrame,
    shared_stages: str = "all",
) -> CrmImport:
    """Check, clean and validate the converted frames into a `CrmImport`.

    deals: deal_id, pipeline, owner, amount (float), created_at (UTC), expected_close_date (YYYY-MM-DD or
      <NA>), account, team, currency: values at creation.
    stage_changes: deal_id, stage, changed_at, seq (tie order), + `_file`, `_row`, `_column`.
    activities: deal_id, type, direction, occurred_at, + `_file`, `_row`, `_column`.
    field_changes: deal_id, field, value (text), changed_at, seq.
    stage_meta: stage (id), pipeline (<NA> = shared by every pipeline), order, outcome (open/won/lost),
      active (bool), label.
    shared_stages: "all" puts every active shared stage in every pipeline; "used" only the shared stages
      a pipeline's deals visited (Salesforce: which stages a sales process shows is not in any export).
    """
    known_deals = pd.Index(deals["deal_id"])
    orphan = ~activities["deal_id"].isin(known_deals)
    if orphan.any():
        row = activities[orphan].iloc[0]
        raise folder.error(
            row["_file"],
            int(row["_row"]),
            row["_column"],
            f"activity for deal {row['deal_id']!r}, which is not in the export",
            "export the activities and the deals at the same time, with deleted deals included",
        )
    unknown = ~stage_changes["stage"].isin(stage_meta["stage"])
    if unknown.any():
        row = stage_changes[unknown].iloc[0]
        raise folder.error(
            row["_file"],
            int(row["_row"]),
            row["_column"],
            f"unknown stage id {row['stage']!r}: not in the stage metadata",
            "export the stages (with inactive ones) together with the deals",
        )

    stages = stage_changes.sort_values(["deal_id", "changed_at", "seq"], kind="stable")
    stages = _drop_repeats(stages, ["deal_id"], "stage", None)
    fields = field_changes.sort_values(["deal_id", "field", "changed_at", "seq"], kind="stable")
    kept = []
    for name, group in fields.groupby("field", sort=True):
        initial = deals.set_index("deal_id")[str(name)]
        initial = format_amounts(initial) if name == "amount" else initial.astype("string")
        kept.append(_drop_repeats(group, ["deal_id"], "value", initial))
    fields = pd.concat(kept) if kept else fields

    specs = _pipeline_specs(report, deals, stages, stage_meta, shared_stages)
    columns = list(DEAL_COLUMNS)
    out_deals = deals[[c for c in columns if c in deals.columns]].copy()
    try:
        history = DealHistory.from_frames(
            out_deals,
            stages[["deal_id", "stage", "changed_at"]].reset_index(drop=True),
            activities[["deal_id", "type", "direction", "occurred_at"]].reset_index(drop=True),
            fields[["deal_id", "field", "value", "changed_at"]].reset_index(drop=True),
            pipelines=specs,
            source=f"{report.source} (converted from {report.crm})",
        )
    except HistoryValidationError:
        raise
    return CrmImport(history, report)


def _pipeline_specs(
    report: ImportReport, deals: pd.DataFrame, stages: pd.DataFrame, meta: pd.DataFrame, shared_stages: str
) -> dict[str, PipelineSpec]:
    """One spec per pipeline: its own and shared stages by the CRM's order (inactive stages only when a
    deal used them), then stages of other pipelines that its deals visited (deals that moved pipeline)."""
    used = stages.merge(deals[["deal_id", "pipeline"]], on="deal_id")
    meta = meta.assign(_rank=np.arange(len(meta))).sort_values(["order", "_rank"], kind="stable")
    specs: dict[str, PipelineSpec] = {}
    foreign_deals: set[str] = set()
    for pipeline in sorted(pd.unique(deals["pipeline"].astype(str))):
        seen = set(used.loc[used["pipeline"] == pipeline, "stage"])
        shared = meta["pipeline"].isna()
        if shared_stages == "used":
            shared &= meta["stage"].isin(seen)
        own = meta[(shared | (meta["pipeline"] == pipeline)) & (meta["active"] | meta["stage"].isin(seen))]
        foreign_ids = [s for s in meta["stage"] if s in seen and s not in set(own["stage"])]
        if foreign_ids:
            moved = used[(used["pipeline"] == pipeline) & used["stage"].isin(foreign_ids)]["deal_id"]
            foreign_deals.update(moved)
        rows = pd.concat([own, meta[meta["stage"].isin(foreign_ids)]]).drop_duplicates("stage")
        outcome = dict(zip(rows["stage"], rows["outcome"], strict=True))
        order = list(rows["stage"])
        specs[pipeline] = PipelineSpec(
            name=pipeline,
            stages=tuple(s for s in order if outcome[s] == "open"),
            won=tuple(s for s in order if outcome[s] == "won"),
            lost=tuple(s for s in order if outcome[s] == "lost"),
        )
    report.unmap(
        "deals that moved to another pipeline",
        len(foreign_deals),
        "a deal keeps the pipeline it was created in; the other pipeline's stages it visited are added "
        "to that pipeline's stages",
    )
    return specs


def stage_frame(
    deal_id: Any, stage: Any, changed_at: Any, seq: Any, file: str, row: Any, column: str
) -> pd.DataFrame:
    frame = pd.DataFrame({"deal_id": deal_id, "stage": stage, "changed_at": changed_at, "seq": seq})
    frame["_file"], frame["_row"], frame["_column"] = file, row, column
    return frame


def empty_events(kind: str) -> pd.DataFrame:
    if kind == "stage_changes":
        return pd.DataFrame(columns=["deal_id", "stage", "changed_at", "seq", *WHERE])
    if kind == "activities":
        return pd.DataFrame(columns=["deal_id", "type", "direction", "occurred_at", *WHERE])
    return pd.DataFrame(columns=["deal_id", "field", "value", "changed_at", "seq"])
