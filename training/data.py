"""Reading and writing deal-history folders (CSV or Parquet plus pipelines.yaml), and their fingerprint.

Files are read as raw text (CSV) or as stored (Parquet) and handed to `DealHistory.from_frames`, so the
same validation applies whatever the source. Problems are relabelled with the file they came from
("deals.csv row 12 column 'amount': ...").
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from features.history import TABLES, TIME_COLUMNS, DealHistory, HistoryValidationError, Problem
from features.validation import format_utc_iso

logger = logging.getLogger(__name__)

REQUIRED_TABLES = ("deals", "stage_changes", "activities")
OPTIONAL_TABLES = ("field_changes",)
PIPELINES_FILE = "pipelines.yaml"
FORMATS = ("csv", "parquet")


def _fail(
    table: str, message: str, hint: str, source: Path, row: int | None = None
) -> HistoryValidationError:
    return HistoryValidationError(
        [Problem(table=table, row=row, column=None, message=message, hint=hint)], str(source)
    )


def _table_file(folder: Path, table: str) -> Path | None:
    """The table's file; Parquet wins when both exist because it keeps types exactly."""
    found = [folder / f"{table}.{ext}" for ext in ("parquet", "csv") if (folder / f"{table}.{ext}").is_file()]
    if len(found) > 1:
        logger.warning(
            "both %s and %s exist in %s; reading %s", found[0].name, found[1].name, folder, found[0].name
        )
    return found[0] if found else None


def _read_table(file: Path, folder: Path) -> pd.DataFrame:
    try:
        if file.suffix == ".parquet":
            return pd.read_parquet(file)
        # Everything as text so validation sees the raw values and can quote them back; only empty
        # cells are missing (a team literally called "NA" stays "NA"). utf-8-sig drops Excel's BOM.
        return pd.read_csv(file, dtype=str, keep_default_na=False, na_values=[""], encoding="utf-8-sig")
    except pd.errors.EmptyDataError:
        table = file.stem
        raise _fail(
            file.name, "the file is empty", f"it needs a header line: {','.join(TABLES[table][0])}", folder
        ) from None
    except (pd.errors.ParserError, UnicodeDecodeError, OSError, ValueError) as exc:
        raise _fail(
            file.name,
            f"cannot read the file: {exc}",
            "CSV must be UTF-8 with a header line; Parquet must be a valid Parquet file",
            folder,
        ) from exc


def _read_pipelines(file: Path, folder: Path) -> Any:
    try:
        return yaml.safe_load(file.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise _fail(
            PIPELINES_FILE,
            f"not valid YAML{line}: {problem}",
            "see docs/input-format.md: each pipeline maps to {stages: [...], won: [...], lost: [...]}",
            folder,
        ) from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise _fail(
            PIPELINES_FILE, f"cannot read the file: {exc}", "pipelines.yaml must be UTF-8 text", folder
        ) from exc


def read_history(path: str | Path) -> DealHistory:
    """Read a deal-history folder: deals, stage_changes, activities (and optional field_changes) as
    `.csv` or `.parquet`, plus an optional `pipelines.yaml`.

    Raises HistoryValidationError naming the file, row, column and a fix for every problem found.
    """
    folder = Path(path)
    if not folder.is_dir():
        raise _fail(
            str(folder), "not a folder", "give the folder that holds deals.csv, stage_changes.csv, …", folder
        )
    files = {table: _table_file(folder, table) for table in REQUIRED_TABLES + OPTIONAL_TABLES}
    expected = ", ".join(f"{t}.csv" for t in REQUIRED_TABLES)
    if not any(files.values()):
        raise _fail(
            str(folder),
            "no deal-history files in this folder",
            f"expected {expected} (or .parquet), optional field_changes.csv and pipelines.yaml",
            folder,
        )
    missing = [t for t in REQUIRED_TABLES if files[t] is None]
    if missing:
        raise HistoryValidationError(
            [
                Problem(
                    table=t,
                    row=None,
                    column=None,
                    message=f"missing file {t}.csv (or {t}.parquet)",
                    hint=f"a history folder needs {expected}; a table with no rows is a header line only",
                )
                for t in missing
            ],
            str(folder),
        )

    frames = {table: _read_table(file, folder) for table, file in files.items() if file is not None}
    pipelines_file = folder / PIPELINES_FILE
    pipelines = _read_pipelines(pipelines_file, folder) if pipelines_file.is_file() else None

    names = {table: file.name for table, file in files.items() if file is not None}
    names["pipelines"] = PIPELINES_FILE
    try:
        history = DealHistory.from_frames(
            frames["deals"],
            frames["stage_changes"],
            frames["activities"],
            frames.get("field_changes"),
            pipelines=pipelines,
            source=str(folder),
        )
    except HistoryValidationError as exc:
        relabelled = [dataclasses.replace(p, table=names.get(p.table, p.table)) for p in exc.problems]
        raise HistoryValidationError(relabelled, exc.source) from None
    logger.info("read %d deals from %s", history.n_deals(), folder)
    return history


def _as_text(frame: pd.DataFrame, table: str) -> pd.DataFrame:
    out = frame.copy()
    for column in TIME_COLUMNS[table]:
        if column in out.columns:
            out[column] = format_utc_iso(out[column])
    return out


def write_history(history: DealHistory, path: str | Path, fmt: str = "csv") -> Path:
    """Write `history` as a folder that `read_history` reads back to an equal history.

    CSV times are ISO 8601 with an explicit +00:00 offset; Parquet keeps native UTC timestamps. Custom
    attributes are extra deal columns; pipeline specs (given or inferred) go to pipelines.yaml.
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}")
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    tables = {
        "deals": history.deals,
        "stage_changes": history.stage_changes,
        "activities": history.activities,
        "field_changes": history.field_changes,
    }
    for table, frame in tables.items():
        # Remove the other format's file so the folder is unambiguous for the next read.
        other = folder / f"{table}.{'parquet' if fmt == 'csv' else 'csv'}"
        other.unlink(missing_ok=True)
        if fmt == "csv":
            # repr-exact floats so amounts and numeric attributes read back bit for bit.
            _as_text(frame, table).to_csv(
                folder / f"{table}.csv", index=False, lineterminator="\n", float_format=None
            )
        else:
            frame.to_parquet(folder / f"{table}.parquet", index=False)
    specs = {name: spec.to_dict() for name, spec in sorted(history.pipelines.items())}
    (folder / PIPELINES_FILE).write_text(
        yaml.safe_dump(specs, sort_keys=False, allow_unicode=True, default_flow_style=None), encoding="utf-8"
    )
    logger.info("wrote %d deals to %s as %s", history.n_deals(), folder, fmt)
    return folder


def history_fingerprint(history: DealHistory) -> str:
    """SHA-256 of the history's content, independent of row order: the data version of an MLflow run."""
    digest = hashlib.sha256()
    tables = {
        "deals": history.deals,
        "stage_changes": history.stage_changes,
        "activities": history.activities,
        "field_changes": history.field_changes,
    }
    for table, frame in tables.items():
        # Times as integer nanoseconds since the epoch (UTC): canonical and far cheaper than text.
        text = frame.copy()
        for column in TIME_COLUMNS[table]:
            if column in text.columns:
                nanos = text[column].dt.tz_convert(None).to_numpy(dtype="datetime64[ns]").view("i8")
                text[column] = pd.Series(nanos, index=text.index).where(text[column].notna()).astype("Int64")
        text = text[sorted(text.columns)].astype("string")
        text = text.sort_values(list(text.columns), kind="stable", na_position="first").reset_index(drop=True)
        digest.update(f"\x00table:{table}\n".encode())
        digest.update(text.to_csv(index=False, lineterminator="\n", na_rep="\x01").encode("utf-8"))
    specs = {name: spec.to_dict() for name, spec in history.pipelines.items()}
    digest.update(b"\x00pipelines\n")
    digest.update(json.dumps(specs, sort_keys=True, ensure_ascii=False).encode("utf-8"))
    return digest.hexdigest()
