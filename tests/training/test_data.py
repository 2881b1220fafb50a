"""Reading and writing history folders: one tiny hand-written folder per validation error, round trips."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from features.history import DealHistory, HistoryValidationError, PipelineSpec
from training.data import history_fingerprint, read_history, write_history

DEALS = """deal_id,pipeline,owner,amount,created_at
d1,Sales,ann,1000,2024-01-01
d2,Sales,bob,2500.5,2024-01-02T09:30:00+02:00
"""
STAGES = """deal_id,stage,changed_at,event_id
d1,Lead In,2024-01-01,s1
d1,Demo,2024-01-05,s2
d2,Lead In,2024-01-02T10:00:00Z,s3
"""
ACTIVITIES = """deal_id,type,occurred_at,direction
d1,call,2024-01-02,outbound
d2,email,2024-01-03,inbound
"""
FIELDS = """deal_id,field,value,changed_at
d1,amount,1200,2024-01-06
d1,expected_close_date,2024-03-01,2024-01-06
"""
PIPELINES = """Sales:
  stages: [Lead In, Demo]
  won: [Closed Won]
  lost: [Closed Lost]
"""
BASE = {
    "deals.csv": DEALS,
    "stage_changes.csv": STAGES,
    "activities.csv": ACTIVITIES,
    "field_changes.csv": FIELDS,
}
TABLE_NAMES = ("deals", "stage_changes", "activities", "field_changes")


def write_folder(folder: Path, files: dict[str, str | None]) -> Path:
    """Write each file's text; None leaves the file out."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        if text is not None:
            (folder / name).write_text(text, encoding="utf-8")
    return folder


def read_problems(tmp_path: Path, **changes: str | None) -> HistoryValidationError:
    files: dict[str, str | None] = dict(BASE)
    files.update({name.replace("__", "."): text for name, text in changes.items()})
    folder = write_folder(tmp_path / "history", files)
    with pytest.raises(HistoryValidationError) as info:
        read_history(folder)
    return info.value


def assert_frames_equal(a: DealHistory, b: DealHistory) -> None:
    for table in TABLE_NAMES:
        pd.testing.assert_frame_equal(getattr(a, table), getattr(b, table), check_exact=True)
    assert a.pipelines == b.pipelines
    assert a.attribute_columns == b.attribute_columns


def test_reads_a_valid_folder(tmp_path: Path) -> None:
    history = read_history(write_folder(tmp_path, {**BASE, "pipelines.yaml": PIPELINES}))
    assert list(history.deals["deal_id"]) == ["d1", "d2"]
    assert history.deals["created_at"].tolist() == [
        pd.Timestamp("2024-01-01", tz="UTC"),
        pd.Timestamp("2024-01-02T07:30:00", tz="UTC"),
    ]
    assert history.pipelines["Sales"].stages == ("Lead In", "Demo")
    assert len(history.field_changes) == 2


# (files to change, table, row, column, words the message or hint must contain)
ERROR_CASES = {
    "missing required column": (
        {
            "deals.csv": "deal_id,pipeline,amount,created_at\n"
            "d1,Sales,1000,2024-01-01\nd2,Sales,5,2024-01-02\n"
        },
        "deals.csv",
        None,
        "owner",
        ["missing required column", "deal_id, pipeline, owner, amount, created_at"],
    ),
    "unparsable time": (
        {"deals.csv": DEALS.replace("2024-01-02T09:30:00+02:00", "2024-13-45")},
        "deals.csv",
        2,
        "created_at",
        ["'2024-13-45'", "ISO 8601"],
    ),
    "negative amount": (
        {"deals.csv": DEALS.replace("1000", "-5")},
        "deals.csv",
        1,
        "amount",
        ["negative", "'-5'"],
    ),
    "non-numeric amount": (
        {"deals.csv": DEALS.replace("1000", "1k")},
        "deals.csv",
        1,
        "amount",
        ["not a number", "'1k'"],
    ),
    "missing deal_id": (
        {"deals.csv": DEALS.replace("d2,Sales", ",Sales")},
        "deals.csv",
        2,
        "deal_id",
        ["missing deal_id"],
    ),
    "missing pipeline": (
        {"deals.csv": DEALS.replace("d2,Sales,bob", "d2,,bob")},
        "deals.csv",
        2,
        "pipeline",
        ["missing pipeline"],
    ),
    "missing owner": (
        {"deals.csv": DEALS.replace("ann", "")},
        "deals.csv",
        1,
        "owner",
        ["missing owner"],
    ),
    "duplicate deal_id": (
        {"deals.csv": DEALS.replace("d2,Sales", "d1,Sales")},
        "deals.csv",
        2,
        "deal_id",
        ["duplicate deal_id 'd1'", "row 1"],
    ),
    "history row for unknown deal": (
        {"stage_changes.csv": STAGES + "d9,Lead In,2024-01-03,s4\n"},
        "stage_changes.csv",
        4,
        "deal_id",
        ["unknown deal 'd9'"],
    ),
    "stage change before the deal was created": (
        {"stage_changes.csv": STAGES.replace("2024-01-02T10:00:00Z", "2023-12-31")},
        "stage_changes.csv",
        3,
        "changed_at",
        ["before the deal was created"],
    ),
    "activity before the deal was created": (
        {"activities.csv": ACTIVITIES.replace("2024-01-03", "2023-06-01")},
        "activities.csv",
        2,
        "occurred_at",
        ["before the deal was created"],
    ),
    "field change before the deal was created": (
        {"field_changes.csv": FIELDS.replace("1200,2024-01-06", "1200,2023-01-06")},
        "field_changes.csv",
        1,
        "changed_at",
        ["before the deal was created"],
    ),
    "unknown activity type": (
        {"activities.csv": ACTIVITIES.replace("email", "fax")},
        "activities.csv",
        2,
        "type",
        ["unknown activity type 'fax'", "call, email, meeting, note, task, other"],
    ),
    "unknown direction": (
        {"activities.csv": ACTIVITIES.replace("outbound", "sideways")},
        "activities.csv",
        1,
        "direction",
        ["unknown direction 'sideways'", "inbound, outbound"],
    ),
    "unknown field": (
        {"field_changes.csv": FIELDS.replace("amount,1200", "probability,0.4")},
        "field_changes.csv",
        1,
        "field",
        ["unknown field 'probability'", "amount, expected_close_date, owner"],
    ),
    "field change amount not a number": (
        {"field_changes.csv": FIELDS.replace("1200", "lots")},
        "field_changes.csv",
        1,
        "value",
        ["'lots'", "not a number"],
    ),
    "field change close date not a time": (
        {"field_changes.csv": FIELDS.replace("2024-03-01", "next week")},
        "field_changes.csv",
        2,
        "value",
        ["'next week'", "not a time"],
    ),
    "duplicate event_id": (
        {"stage_changes.csv": STAGES.replace(",s2", ",s1")},
        "stage_changes.csv",
        2,
        "event_id",
        ["duplicate event_id 's1'", "row 1"],
    ),
    "stage lists that are not lists of strings": (
        {"pipelines.yaml": "Sales:\n  stages: Lead In, Demo\n  won: [Closed Won]\n"},
        "pipelines.yaml",
        None,
        "Sales.stages",
        ["list of stage names"],
    ),
    "stage not in the pipeline's spec": (
        {"pipelines.yaml": PIPELINES, "stage_changes.csv": STAGES.replace("d1,Demo", "d1,Demonstration")},
        "stage_changes.csv",
        2,
        "stage",
        ["'Demonstration'", "Lead In, Demo, Closed Won, Closed Lost"],
    ),
}


@pytest.mark.parametrize("case", list(ERROR_CASES), ids=list(ERROR_CASES))
def test_each_validation_error_names_table_row_and_column(tmp_path: Path, case: str) -> None:
    changes, table, row, column, words = ERROR_CASES[case]
    files: dict[str, str | None] = {**BASE, **changes}
    folder = write_folder(tmp_path / "history", files)
    with pytest.raises(HistoryValidationError) as info:
        read_history(folder)
    # The problem itself comes first; a bad deal row may also orphan that deal's events, reported after.
    problem = info.value.problems[0]
    assert (problem.table, problem.row, problem.column) == (table, row, column)
    text = str(problem)
    for word in words:
        assert word in text
    # The message a user sees carries the location the way a CLI prints it.
    where = f"{table} row {row} column {column!r}" if row is not None else f"{table} column {column!r}"
    assert where in str(info.value)
    assert info.value.source == str(folder)


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    deals = DEALS.replace("1000", "-1").replace("2024-01-02T09:30:00+02:00", "yesterday")
    activities = ACTIVITIES.replace("email", "fax")
    folder = write_folder(tmp_path, {**BASE, "deals.csv": deals, "activities.csv": activities})
    with pytest.raises(HistoryValidationError) as info:
        read_history(folder)
    located = {(p.table, p.row, p.column) for p in info.value.problems}
    assert {
        ("deals.csv", 1, "amount"),
        ("deals.csv", 2, "created_at"),
        ("activities.csv", 2, "type"),
    } <= located


def test_empty_folder_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(HistoryValidationError) as info:
        read_history(tmp_path)
    assert "no deal-history files" in str(info.value)
    assert "deals.csv" in info.value.problems[0].hint


def test_missing_required_file_names_the_table(tmp_path: Path) -> None:
    folder = write_folder(tmp_path, {**BASE, "stage_changes.csv": None})
    with pytest.raises(HistoryValidationError) as info:
        read_history(folder)
    (problem,) = info.value.problems
    assert problem.table == "stage_changes"
    assert "stage_changes.csv" in problem.message


def test_missing_folder_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(HistoryValidationError, match="not a folder"):
        read_history(tmp_path / "nowhere")


def test_bad_yaml_names_the_file_and_line(tmp_path: Path) -> None:
    folder = write_folder(
        tmp_path, {**BASE, "pipelines.yaml": "Sales:\n  stages: [Lead In, Demo\n  won: x\n"}
    )
    with pytest.raises(HistoryValidationError) as info:
        read_history(folder)
    (problem,) = info.value.problems
    assert problem.table == "pipelines.yaml"
    assert "not valid YAML at line" in problem.message


def test_header_only_file_without_columns_is_reported(tmp_path: Path) -> None:
    error = read_problems(tmp_path, activities__csv="")
    assert error.problems[0].table == "activities.csv"
    assert "empty" in error.problems[0].message


def test_history_without_activities_or_field_changes_is_valid(tmp_path: Path) -> None:
    folder = write_folder(
        tmp_path, {**BASE, "activities.csv": "deal_id,type,occurred_at\n", "field_changes.csv": None}
    )
    history = read_history(folder)
    assert history.activities.empty and history.field_changes.empty
    assert str(history.activities["occurred_at"].dtype) == "datetime64[ns, UTC]"
    assert list(history.field_changes.columns) == ["deal_id", "field", "value", "changed_at", "event_id"]


def test_times_with_offsets_date_only_and_naive(tmp_path: Path) -> None:
    deals = (
        "deal_id,pipeline,owner,amount,created_at\n"
        "a,Sales,ann,1,2024-03-01\n"
        "b,Sales,ann,1,2024-03-01T12:00:00\n"
        "c,Sales,ann,1,2024-03-01T12:00:00+05:30\n"
        "d,Sales,ann,1,2024-03-01T12:00:00Z\n"
    )
    folder = write_folder(
        tmp_path,
        {
            "deals.csv": deals,
            "stage_changes.csv": "deal_id,stage,changed_at\n",
            "activities.csv": "deal_id,type,occurred_at\n",
        },
    )
    created = read_history(folder).deals.set_index("deal_id")["created_at"]
    assert created["a"] == pd.Timestamp("2024-03-01T00:00:00", tz="UTC")
    assert created["b"] == pd.Timestamp("2024-03-01T12:00:00", tz="UTC")
    assert created["c"] == pd.Timestamp("2024-03-01T06:30:00", tz="UTC")
    assert created["d"] == pd.Timestamp("2024-03-01T12:00:00", tz="UTC")


def test_custom_attributes_are_kept(tmp_path: Path) -> None:
    deals = (
        "deal_id,pipeline,owner,amount,created_at,region,seats,zip\n"
        "d1,Sales,ann,1000,2024-01-01,EU,12,01234\n"
        "d2,Sales,bob,2500.5,2024-01-02,,3.5,90210\n"
    )
    history = read_history(write_folder(tmp_path, {**BASE, "deals.csv": deals}))
    assert history.attribute_columns == ("region", "seats", "zip")
    assert history.deals["region"].tolist()[0] == "EU" and pd.isna(history.deals["region"].iloc[1])
    assert history.deals["seats"].tolist() == [12.0, 3.5]
    # Leading zeros mean a code, not a number.
    assert history.deals["zip"].tolist() == ["01234", "90210"]


def rich_history() -> DealHistory:
    deals = pd.DataFrame(
        {
            "deal_id": ["d1", "d2", "d3"],
            "pipeline": ["Sales", "Sales", "Partners"],
            "owner": ["ann", "bob", "NA"],
            "amount": ["1000", "0.1", "3e3"],
            "created_at": ["2024-01-01T00:00:00.123456789+00:00", "2024-01-02T09:30:00+02:00", "2024-01-03"],
            "team": ["east", None, "west"],
            "expected_close_date": ["2024-03-01", None, "2024-04-01T10:00:00-04:00"],
            "currency": ["EUR", "USD", None],
            "region": ["EU", None, "US"],
            "seats": ["1", "2.25", None],
        }
    )
    stages = pd.DataFrame(
        {
            "deal_id": ["d1", "d1", "d2", "d1", "d3"],
            "stage": ["Lead In", "Demo", "Lead In", "Closed Won", "Intro"],
            "changed_at": [
                "2024-01-01T00:00:01",
                "2024-01-05",
                "2024-01-02T08:00:00Z",
                "2024-01-09",
                "2024-01-03",
            ],
            "event_id": ["s1", "s2", None, "s4", "s5"],
        }
    )
    activities = pd.DataFrame(
        {
            "deal_id": ["d1", "d2"],
            "type": ["call", "Meeting"],
            "occurred_at": ["2024-01-02", "2024-01-03"],
            "direction": ["inbound", None],
        }
    )
    fields = pd.DataFrame(
        {
            "deal_id": ["d1", "d1", "d2"],
            "field": ["amount", "expected_close_date", "owner"],
            "value": ["1200", "2024-03-15", "carl"],
            "changed_at": ["2024-01-06", "2024-01-06", "2024-01-07"],
        }
    )
    return DealHistory.from_frames(
        deals,
        stages,
        activities,
        fields,
        pipelines={
            "Sales": {
                "stages": ["Lead In", "Demo"],
                "won": ["Closed Won"],
                "lost": ["Closed Lost"],
                "stale_after_days": {"Demo": 10},
            }
        },
    )


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_round_trip_write_then_read_gives_the_same_history(tmp_path: Path, fmt: str) -> None:
    history = rich_history()
    folder = write_history(history, tmp_path / "out", fmt=fmt)
    assert (folder / f"deals.{fmt}").is_file() and (folder / "pipelines.yaml").is_file()
    again = read_history(folder)
    assert_frames_equal(history, again)
    assert again.pipelines["Sales"].stale_after_days == {"Demo": 10.0}
    assert history_fingerprint(again) == history_fingerprint(history)


def test_csv_times_are_written_with_an_offset(tmp_path: Path) -> None:
    folder = write_history(rich_history(), tmp_path / "out")
    deals = pd.read_csv(folder / "deals.csv", dtype=str)
    assert deals["created_at"].tolist()[0] == "2024-01-01T00:00:00.123456789+00:00"
    assert deals["created_at"].str.endswith("+00:00").all()


def test_switching_format_leaves_one_unambiguous_folder(tmp_path: Path) -> None:
    history = rich_history()
    write_history(history, tmp_path, fmt="parquet")
    write_history(history, tmp_path, fmt="csv")
    assert not list(tmp_path.glob("*.parquet"))
    assert_frames_equal(history, read_history(tmp_path))


def test_fingerprint_ignores_row_order_and_sees_content() -> None:
    history = rich_history()
    shuffled = DealHistory(
        deals=history.deals.iloc[::-1].reset_index(drop=True),
        stage_changes=history.stage_changes.iloc[::-1].reset_index(drop=True),
        activities=history.activities,
        field_changes=history.field_changes,
        pipelines=dict(reversed(list(history.pipelines.items()))),
        attribute_columns=history.attribute_columns,
    )
    assert history_fingerprint(shuffled) == history_fingerprint(history)
    changed = history.deals.copy()
    changed.loc[0, "amount"] = 1000.01
    other = DealHistory(
        changed,
        history.stage_changes,
        history.activities,
        history.field_changes,
        history.pipelines,
        history.attribute_columns,
    )
    assert history_fingerprint(other) != history_fingerprint(history)
    respec = dict(history.pipelines)
    respec["Sales"] = PipelineSpec("Sales", ("Demo", "Lead In"), ("Closed Won",), ("Closed Lost",))
    other = DealHistory(
        history.deals,
        history.stage_changes,
        history.activities,
        history.field_changes,
        respec,
        history.attribute_columns,
    )
    assert history_fingerprint(other) != history_fingerprint(history)
    assert len(history_fingerprint(history)) == 64
