"""Data commands: `simulate` (synthetic history in the input format) and `import` (into the store)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from dealrisk.console import emit_json, fail, option_time, out_console, progress


def register(app: typer.Typer) -> None:
    """Add this module's commands to the app."""
    _register_simulate(app)
    _register_import(app)


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
        cycle_scale: float = typer.Option(
            1.0, "--cycle-scale", min=0.05, help="Stretch every sales cycle by this factor (3: slow)."
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
        option_time(start, "--start")
        if end is not None:
            option_time(end, "--end")
        with progress(f"Simulating {deals:,} deals", total=2, quiet=as_json) as advance:
            try:
                history = simulate_history(deals, seed=seed, start=start, end=end, cycle_scale=cycle_scale)
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


def _register_import(app: typer.Typer) -> None:
    @app.command("import")
    def import_(
        folder: Path = typer.Argument(
            ...,
            help="History folder: deals, stage_changes, activities (+ field_changes) as CSV or Parquet; "
            "with --from, the CRM's export folder.",
        ),
        crm: str | None = typer.Option(
            None,
            "--from",
            help="Convert a CRM export: salesforce, hubspot, pipedrive or odoo (see docs/importers.md).",
        ),
        labels: bool = typer.Option(
            False, "--labels", help="With --from: key pipelines, stages and owners on their labels, not ids."
        ),
        as_json: bool = typer.Option(False, "--json", help="Print the per-table counts as JSON."),
    ) -> None:
        """Validate a whole deal-history folder (or convert a CRM export with --from), then write it into
        the store in one transaction.

        All or nothing: a folder with any problem leaves the store untouched. Importing the same rows again
        changes nothing (events are keyed by event_id, or by the whole row). The store is
        DEALRISK_DATABASE_URL, else a SQLite file under DEALRISK_HOME.
        """
        from features.history import HistoryValidationError
        from serving.settings import get_settings
        from serving.store import Store, UnknownDealError, WriteRejectedError
        from training.data import read_history
        from training.importers import CRMS, convert_export

        converted: dict[str, Any] | None = None
        if crm is not None and crm not in CRMS:
            fail(f"--from must be one of {', '.join(CRMS)}, not {crm!r}")
        if labels and crm is None:
            fail("--labels applies to CRM exports only; use it with --from")
        try:
            if crm is None:
                history = read_history(folder)
            else:
                result_of_conversion = convert_export(crm, folder)
                history = result_of_conversion.labelled() if labels else result_of_conversion.history
                converted = result_of_conversion.summary()
        except HistoryValidationError as exc:
            fail(f"{exc}\nNothing was imported; fix the rows above and run the import again.")
        except ValueError as exc:  # --labels with two ids sharing a label
            fail(f"{exc}\nNothing was imported; run without --labels to key on the CRM's ids.")
        if converted is not None and not as_json:
            _print_conversion(converted)
        settings = get_settings()
        store = Store(settings.database_url, max_attribute_names=settings.max_attribute_names)
        try:
            store.create_schema()
            tables = ("deals", "stage_changes", "activities", "field_changes")
            total = sum(len(getattr(history, t)) for t in tables)
            with progress(f"Importing {history.n_deals():,} deals", total=total, quiet=as_json) as advance:
                result = store.import_history(history, progress=advance)
        except (WriteRejectedError, UnknownDealError) as exc:  # the folder contradicts the store
            fail(f"{exc}\nNothing was imported: the rows above contradict what the store holds.")
        except Exception as exc:  # a database error: say where, and that nothing was written
            fail(f"import into {_safe_url(settings.database_url)} failed, nothing was written: {exc}")
        finally:
            store.close()
        if as_json:
            extra = {} if converted is None else {"conversion": converted}
            emit_json({"folder": str(folder), **result.to_dict(), **extra})
            return
        table = Table(title=f"Imported {folder}")
        for column in ("table", "new", "already present", "updated"):
            table.add_column(column, justify="left" if column == "table" else "right")
        for name, counts in result.tables.items():
            table.add_row(name, f"{counts.inserted:,}", f"{counts.duplicates:,}", f"{counts.updated:,}")
        out_console.print(table)
        if not result.changed:
            out_console.print("Nothing new: the store already held every row.")


def _print_conversion(summary: dict[str, Any]) -> None:
    """What the converter made of the export, and what it left out and why."""
    events = summary["events"]
    start, end = summary["start"], summary["end"]
    span = "no deals" if start is None else f"{start:%Y-%m-%d} to {end:%Y-%m-%d}"
    out_console.print(
        f"Converted the {summary['crm']} export {summary['source']}: {summary['deals']:,} deals, "
        f"{events['stage_changes']:,} stage changes, {events['activities']:,} activities, "
        f"{events['field_changes']:,} field changes; {len(summary['pipelines'])} pipeline(s); "
        f"data from {span}.",
        highlight=False,
    )
    table = Table(title="Pipelines")
    for column in ("pipeline", "label", "deals", "open stages", "won", "lost"):
        table.add_column(column, justify="right" if column == "deals" else "left")
    for name, row in summary["pipelines"].items():
        stages = (", ".join(row[k]) for k in ("stages", "won", "lost"))
        table.add_row(name, row["label"], f"{row['deals']:,}", *stages)
    out_console.print(table)
    # One line per note (not a table): they are read in logs and searched, so they must not wrap mid-word.
    titles = {
        "dropped": "Dropped",
        "unmapped": "Not mapped",
        "untracked": "History not tracked from creation",
    }
    for key, title in titles.items():
        if summary[key]:
            out_console.print(f"{title}:", style="bold")
        for note in summary[key]:
            where = f"{note['file']}: " if note["file"] else ""
            line = f"  - {where}{note['what']} ({note['count']:,}): {note['why']}"
            out_console.print(line, highlight=False, soft_wrap=True)


def _safe_url(url: str) -> str:
    """A database URL without its password, for messages."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # an unparsable URL is shown as given; it holds no usable secret then
        return url
