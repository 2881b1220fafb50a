"""The file importer, fuzzed: whatever a folder of CSV files holds, `read_history` returns a history or
raises `HistoryValidationError` whose problems name a table (and, for a cell, its row and column);
never another exception, never a traceback."""

from __future__ import annotations

import csv
import os
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from features.history import HistoryValidationError
from training.data import read_history

HEADERS = {
    "deals": ["deal_id", "pipeline", "owner", "amount", "created_at", "team", "expected_close_date"],
    "stage_changes": ["deal_id", "stage", "changed_at", "event_id"],
    "activities": ["deal_id", "type", "occurred_at", "direction"],
    "field_changes": ["deal_id", "field", "value", "changed_at"],
}
TABLES = set(HEADERS) | {"pipelines.yaml"}

# Cells a hostile or broken export holds: plausible values, edge numbers and times, formulas, control
# characters, quotes, separators and random text.
cells = st.one_of(
    st.sampled_from(
        [
            "D1",
            "D2",
            "Pipe",
            "Closed Won",
            "call",
            "email",
            "inbound",
            "amount",
            "owner",
            "expected_close_date",
            "Lead",
        ]
    ),
    st.sampled_from(
        [
            "2025-01-01",
            "2025-01-02T10:00:00+02:00",
            "9999-12-31",
            "0001-01-01",
            "1e308",
            "-1",
            "NaN",
            "inf",
            "18446744073709551616",
            "1e15",
            "",
            " ",
            "=HYPERLINK(1)",
            "\x00",
            "\r\n",
            '"',
            ",",
            "2025-02-30",
        ]
    ),
    st.text(max_size=12),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.integers().map(str),
)


def tables(name: str) -> st.SearchStrategy[list[list[str]]]:
    return st.lists(st.lists(cells, min_size=len(HEADERS[name]), max_size=len(HEADERS[name])), max_size=6)


@settings(
    max_examples=10 * int(os.environ.get("DEALRISK_FUZZ_EXAMPLES", "6")),  # 60 here, 1000 in make fuzz
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(HealthCheck),
)
@given(
    deals=tables("deals"),
    stage_changes=tables("stage_changes"),
    activities=tables("activities"),
    field_changes=st.none() | tables("field_changes"),
    drop_column=st.none() | st.sampled_from(["amount", "created_at", "stage", "occurred_at"]),
    pipelines_yaml=st.none()
    | st.sampled_from(
        [
            "Pipe: {stages: [Lead], won: [Won], lost: [Lost]}",
            "Pipe: [unclosed",
            "- a list",
            "Pipe: {stages: 3}",
        ]
    ),
)
def test_read_history_raises_only_clean_validation_errors(
    deals: list[list[str]],
    stage_changes: list[list[str]],
    activities: list[list[str]],
    field_changes: list[list[str]] | None,
    drop_column: str | None,
    pipelines_yaml: str | None,
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        rows = {"deals": deals, "stage_changes": stage_changes, "activities": activities}
        if field_changes is not None:
            rows["field_changes"] = field_changes
        for table, body in rows.items():
            header = HEADERS[table]
            keep = [i for i, h in enumerate(header) if h != drop_column]
            with open(
                folder / f"{table}.csv", "w", newline="", encoding="utf-8", errors="surrogatepass"
            ) as f:
                writer = csv.writer(f)
                writer.writerow([header[i] for i in keep])
                writer.writerows([[r[i] for i in keep] for r in body])
        if pipelines_yaml is not None:
            (folder / "pipelines.yaml").write_text(pipelines_yaml, encoding="utf-8")
        try:
            history = read_history(folder)
        except HistoryValidationError as exc:
            assert exc.problems
            for problem in exc.problems:
                assert (
                    any(problem.table.startswith(t) or t in problem.table for t in TABLES)
                    or str(folder) in problem.table
                ), problem
                if problem.row is not None:
                    assert problem.row >= 1 and problem.column, problem
        else:
            assert len(history.deals) == len(deals)
