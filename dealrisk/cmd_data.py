"""Data commands: `simulate` (synthetic history in the input format) and `import` (into the store)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from dealrisk.console import emit_json, fail, out_console, progress


def register(app: typer.Typer) -> None:
    """Add this module's commands to the app."""
    _register_simulate(app)


def _register_simulate(app: typer.Typer) -> None:
    @app.command("simulate")
    def simulate(
        out: Path = typer.Option(
            ..., "--out", "-o", help="Folder to write the history into (created if missing)."
        ),
        deals: int = typer.Option(2000, "--deals", "-n", min=1, help="Number of deals to simulate."),
        seed: int = typer.Option(0, "--seed", "-s", help="Random seed; the same seed gives the same files."),
        fmt: str = typer.Option("csv", "--format", "-f", help="File format of the tables: csv or parquet."),
        start: str = typer.Option("2024-01-01", "--start", help="First creation date (ISO 8601)."),
        end: str | None = typer.Option(
            None, "--end", help="End of the data (ISO 8601); default two years after --start."
        ),
        as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
    ) -> None:
        """Write a synthetic multi-pipeline deal history (deals, stage changes, activities, field
        changes, pipelines.yaml) in the input format, for demos, tests and benchmarks."""
        from training.data import write_history
        from training.simulate import history_summary, simulate_history

        if fmt not in ("csv", "parquet"):
            fail(f"--format must be csv or parquet, not {fmt!r}")
        if out.exists() and not out.is_dir():
            fail(f"--out {out} is a file; give a folder path (it is created if missing)")
        with progress(f"Simulating {deals:,} deals", total=2, quiet=as_json) as advance:
            try:
                history = simulate_history(deals, seed=seed, start=start, end=end)
            except ValueError as exc:
                fail(f"cannot simulate: {exc} (check --start/--end are ISO dates with --end after --start)")
            advance()
            try:
                write_history(history, out, fmt=fmt)  # type: ignore[arg-type]
            except OSError as exc:
                fail(f"cannot write to {out}: {exc}")
            advance()
        summary = history_summary(history)
        summary["out"] = str(out)
        summary["format"] = fmt
        summary["seed"] = seed
        if as_json:
            emit_json(summary)
        else:
            _print_summary(summary)


def _print_summary(summary: dict[str, Any]) -> None:
    title = f"Simulated history in {summary['out']} ({summary['format']}, seed {summary['seed']})"
    table = Table(title=title)
    for column in ("pipeline", "deals", "won", "lost", "open"):
        table.add_column(column, justify="left" if column == "pipeline" else "right")
    for name, row in summary["pipelines"].items():
        table.add_row(name, *(f"{row[c]:,}" for c in ("deals", "won", "lost", "open")))
    totals = summary["totals"]
    table.add_row("all", *(f"{totals[c]:,}" for c in ("deals", "won", "lost", "open")), style="bold")
    out_console.print(table)
    events = summary["events"]
    out_console.print(
        f"{events['stage_changes']:,} stage changes, {events['activities']:,} activities, "
        f"{events['field_changes']:,} field changes; data from {summary['start']:%Y-%m-%d} "
        f"to {summary['end']:%Y-%m-%d}."
    )
