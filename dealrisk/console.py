"""Shared helpers for CLI commands: JSON output, errors that exit, progress bars."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, NoReturn, overload

import pandas as pd
import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn

from features.jsonable import jsonable

err_console = Console(stderr=True)
out_console = Console()


def _default(value: Any) -> Any:
    if hasattr(value, "isoformat"):
        return value.isoformat()
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, set | tuple):
        return list(value)
    return str(value)


def emit_json(obj: Any) -> None:
    """Print machine-readable output on stdout (NaN becomes null)."""
    text = json.dumps(jsonable(obj), default=_default, indent=2)
    sys.stdout.write(text + "\n")


def fail(message: str, code: int = 1) -> NoReturn:
    """Print an error a person can act on and exit non-zero."""
    err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


@overload
def option_time(value: str, option: str) -> pd.Timestamp: ...


@overload
def option_time(value: None, option: str) -> None: ...


def option_time(value: str | None, option: str) -> pd.Timestamp | None:
    """A time given as `option` on the command line, in UTC (None when the option was not given); an
    error naming the option when it is not ISO 8601 or lies outside the times a history may hold (the
    bounds of files and the API)."""
    if value is None:
        return None
    from features.history import to_utc_timestamp
    from features.validation import EARLIEST_TIME, LATEST_TIME

    try:
        t = to_utc_timestamp(value)
    except (ValueError, TypeError):
        fail(f"{option} {value!r} is not a time; use ISO 8601, e.g. 2024-05-01 or 2024-05-01T09:30:00Z")
    if not EARLIEST_TIME <= t <= LATEST_TIME:
        fail(f"{option} {value!r} is out of range: times must be from {EARLIEST_TIME.date()} to "
             f"{LATEST_TIME.date()}")
    return t


@contextmanager
def progress(description: str, total: float | None = None, quiet: bool = False) -> Iterator[Any]:
    """A progress bar on stderr; yields `advance(n=1)`. Silent when `quiet` (e.g. with --json)."""
    if quiet:
        yield lambda n=1: None
        return
    with Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        TimeElapsedColumn(),
        console=err_console,
        transient=False,
    ) as bar:
        task = bar.add_task(description, total=total)

        def advance(n: float = 1) -> None:
            bar.advance(task, n)

        yield advance
