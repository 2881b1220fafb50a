"""Validation and coercion of raw frames into a DealHistory (the one place that decides what is valid)."""

from __future__ import annotations

from typing import Final

import numpy as np
import pandas as pd
import pytest

from features.history import DealHistory, HistoryValidationError, PipelineSpec
from features.validation import MAX_PROBLEMS, format_utc_iso, infer_pipeline_specs, validate_and_coerce

UTC_NS: Final = "datetime64[ns, UTC]"


def deals_frame(**overrides: object) -> pd.DataFrame:
    data: dict[str, object] = {
        "deal_id": ["d1", "d2"],
        "pipeline": ["Sales", "Sales"],
        "owner": ["ann", "bob"],
        "amount": ["1000", "250.5"],
        "created_at": ["2024-01-01", "2024-01-02T09:30:00+02:00"],
    }
    data.update(overrides)
    return pd.DataFrame(data)


def stages_frame() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "deal_id": ["d2", "d1", "d1"],
            "stage": ["Lead In", "Demo", "Lead In"],
            "changed_at": ["2024-01-02T08:00:00Z", "2024-01-05", "2024-01-01"],
        }
    )


def empty_activities() -> pd.DataFrame:
    return pd.DataFrame(columns=["deal_id", "type", "occurred_at"])


def problems_of(**kwargs: object) -> list[tuple[str, int | None, str | None, str]]:
    args: dict[str, object] = {
        "deals": deals_frame(),
        "stage_changes": stages_frame(),
        "activities": empty_activities(),
        "field_changes": None,
        "pipelines": None,
    }
    args.update(kwargs)
    with pytest.raises(HistoryValidationError) as info:
        DealHistory.from_frames(**args)  # type: ignore[arg-type]
    return [(p.table, p.row, p.column, str(p)) for p in info.value.problems]


def test_dtypes_follow_the_contract() -> None:
    history = DealHistory.from_frames(deals_frame(), stages_frame(), empty_activities())
    deals = history.deals
    assert list(deals.columns) == [
        "deal_id",
        "pipeline",
        "owner",
        "amount",
        "created_at",
        "team",
        "account",
        "expected_close_date",
        "currency",
    ]
    for column in ("deal_id", "pipeline", "owner", "team", "account", "currency"):
        assert deals[column].dtype == "string", column
    assert deals["amount"].dtype == np.float64
    assert str(deals["created_at"].dtype) == UTC_NS
    assert str(deals["expected_close_date"].dtype) == UTC_NS
    for table, time_column in (
        ("stage_changes", "changed_at"),
        ("activities", "occurred_at"),
        ("field_changes", "changed_at"),
    ):
        frame = getattr(history, table)
        assert str(frame[time_column].dtype) == UTC_NS
        assert frame["deal_id"].dtype == "string" and frame["event_id"].dtype == "string"
    assert history.attribute_columns == ()


def test_times_iso_date_only_naive_and_mixed_offsets() -> None:
    deals = deals_frame(
        deal_id=["a", "b", "c", "d"],
        pipeline=["P"] * 4,
        owner=["o"] * 4,
        amount=["1"] * 4,
        created_at=[
            "2024-03-01",
            "2024-03-01 12:00",
            "2024-03-01T12:00:00+05:30",
            "2024-03-01T12:00:00-08:00",
        ],
    )
    history = DealHistory.from_frames(
        deals, pd.DataFrame(columns=["deal_id", "stage", "changed_at"]), empty_activities()
    )
    assert history.deals["created_at"].tolist() == [
        pd.Timestamp("2024-03-01T00:00", tz="UTC"),
        pd.Timestamp("2024-03-01T12:00", tz="UTC"),
        pd.Timestamp("2024-03-01T06:30", tz="UTC"),
        pd.Timestamp("2024-03-01T20:00", tz="UTC"),
    ]


def test_already_typed_frames_are_accepted() -> None:
    deals = deals_frame(
        amount=[1000, 250.5],
        created_at=pd.to_datetime(["2024-01-01", "2024-01-02"]),  # naive means UTC
        expected_close_date=pd.to_datetime(pd.Series(["2024-03-01T00:00:00+01:00", None]), utc=True),
    )
    history = DealHistory.from_frames(deals, stages_frame(), empty_activities())
    assert history.deals["created_at"].iloc[1] == pd.Timestamp("2024-01-02", tz="UTC")
    assert history.deals["expected_close_date"].iloc[0] == pd.Timestamp("2024-02-29T23:00", tz="UTC")
    assert pd.isna(history.deals["expected_close_date"].iloc[1])


def test_empty_and_absent_event_tables_are_valid() -> None:
    history = DealHistory.from_frames(
        deals_frame(), pd.DataFrame(columns=["deal_id", "stage", "changed_at"]), empty_activities(), None
    )
    assert history.stage_changes.empty and history.activities.empty and history.field_changes.empty
    assert list(history.activities.columns) == ["deal_id", "type", "direction", "occurred_at", "event_id"]
    assert str(history.field_changes["changed_at"].dtype) == UTC_NS
    assert history.end_time == pd.Timestamp("2024-01-02T07:30", tz="UTC")
    # What an API request with no events turns into.
    again = DealHistory.from_frames(deals_frame(), pd.DataFrame(), [], pd.DataFrame())  # type: ignore[arg-type]
    assert again.activities.empty and list(again.stage_changes.columns) == list(history.stage_changes.columns)


def test_events_sorted_by_deal_then_time_stably_with_extra_columns_dropped() -> None:
    stages = pd.DataFrame(
        {
            "deal_id": ["d2", "d1", "d1", "d1"],
            "stage": ["Lead In", "Demo", "Lead In", "Proposal"],
            "changed_at": ["2024-01-03", "2024-01-05", "2024-01-01", "2024-01-05"],
            "note": ["x", "y", "z", "w"],
        }
    )
    history = DealHistory.from_frames(deals_frame(), stages, empty_activities())
    frame = history.stage_changes
    assert list(frame.columns) == ["deal_id", "stage", "changed_at", "event_id"]
    assert frame["stage"].tolist() == ["Lead In", "Demo", "Proposal", "Lead In"]
    # Same deal, same instant: the given order is kept, as it is the only sign of which came last.
    assert frame.index.equals(pd.RangeIndex(4))


def test_activity_type_and_direction_are_case_insensitive() -> None:
    activities = pd.DataFrame(
        {"deal_id": ["d1"], "type": ["Call "], "occurred_at": ["2024-01-02"], "direction": ["INBOUND"]}
    )
    history = DealHistory.from_frames(deals_frame(), stages_frame(), activities)
    assert history.activities[["type", "direction"]].iloc[0].tolist() == ["call", "inbound"]


def test_field_change_close_dates_are_stored_canonically() -> None:
    fields = pd.DataFrame(
        {
            "deal_id": ["d1", "d1", "d1"],
            "field": ["expected_close_date", "amount", "expected_close_date"],
            "value": ["2024-03-01", "900", None],
            "changed_at": ["2024-01-03", "2024-01-04", "2024-01-05"],
        }
    )
    history = DealHistory.from_frames(deals_frame(), stages_frame(), empty_activities(), fields)
    values = history.field_changes["value"].tolist()
    assert values[:2] == ["2024-03-01T00:00:00+00:00", "900"]
    assert pd.isna(values[2])  # an empty close date clears it


def test_attributes_numeric_or_string() -> None:
    deals = deals_frame(segment=["smb", None], seats=["10", ""], code=["007", "12"], flag=[True, False])
    history = DealHistory.from_frames(deals, stages_frame(), empty_activities())
    assert history.attribute_columns == ("code", "flag", "seats", "segment")
    assert history.deals["seats"].dtype == np.float64 and history.deals["seats"].iloc[0] == 10.0
    assert history.deals["segment"].dtype == "string"
    assert history.deals["code"].tolist() == ["007", "12"]
    assert history.deals["flag"].tolist() == ["True", "False"]


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        (
            {"deals": deals_frame().drop(columns=["created_at"])},
            ("deals", None, "created_at", "missing required"),
        ),
        (
            {"deals": deals_frame(created_at=["2024-01-01", "01/02/2024 9am"])},
            ("deals", 2, "created_at", "'01/02"),
        ),
        (
            {"deals": deals_frame(created_at=["2024-01-01", "9999-01-01"])},
            ("deals", 2, "created_at", "not a time"),
        ),
        ({"deals": deals_frame(amount=["-1", "2"])}, ("deals", 1, "amount", "negative")),
        ({"deals": deals_frame(amount=["1", "inf"])}, ("deals", 2, "amount", "not a number")),
        ({"deals": deals_frame(owner=["ann", None])}, ("deals", 2, "owner", "missing owner")),
        (
            {"deals": deals_frame(expected_close_date=["soon", None])},
            ("deals", 1, "expected_close_date", "'soon'"),
        ),
        (
            {
                "activities": pd.DataFrame(
                    {
                        "deal_id": ["d1"],
                        "type": ["call"],
                        "occurred_at": ["2024-01-02"],
                        "event_id": ["a"],
                        "direction": ["up"],
                    }
                )
            },
            ("activities", 1, "direction", "unknown direction 'up'"),
        ),
        (
            {
                "field_changes": pd.DataFrame(
                    {"deal_id": ["d1"], "field": ["amount"], "value": ["-3"], "changed_at": ["2024-01-03"]}
                )
            },
            ("field_changes", 1, "value", "not a number ≥ 0"),
        ),
        (
            {
                "field_changes": pd.DataFrame(
                    {"deal_id": ["d1"], "field": ["owner"], "value": [""], "changed_at": ["2024-01-03"]}
                )
            },
            ("field_changes", 1, "value", "missing new owner"),
        ),
        (
            {"pipelines": {"Sales": {"stages": ["Lead In", 3]}}},
            ("pipelines", None, "Sales.stages", "list of stage"),
        ),
        (
            {"pipelines": {"Sales": {"stages": ["Lead In", "Demo"], "won": "Closed Won"}}},
            ("pipelines", None, "Sales.won", "list of stage"),
        ),
        (
            {"pipelines": {"Sales": {"stages": ["Lead In"], "stale_after_days": {"Lead In": "a week"}}}},
            ("pipelines", None, "Sales.stale_after_days", "days"),
        ),
        (
            {"pipelines": {"Sales": PipelineSpec("Sales", ("Lead In",))}},
            ("stage_changes", 2, "stage", "'Demo' is not a stage of pipeline 'Sales'"),
        ),
    ],
)
def test_problems_name_table_row_and_column(
    kwargs: dict[str, object], expected: tuple[str, int | None, str, str]
) -> None:
    problems = problems_of(**kwargs)
    table, row, column, words = expected
    matching = [p for p in problems if p[:3] == (table, row, column)]
    assert matching, problems
    assert words in matching[0][3]


def test_problem_count_is_capped_and_says_so() -> None:
    n = MAX_PROBLEMS * 3
    deals = pd.DataFrame(
        {
            "deal_id": [f"d{i}" for i in range(n)],
            "pipeline": "P",
            "owner": "o",
            "amount": "-1",
            "created_at": "2024-01-01",
        }
    )
    with pytest.raises(HistoryValidationError) as info:
        validate_and_coerce(
            deals, pd.DataFrame(columns=["deal_id", "stage", "changed_at"]), empty_activities()
        )
    problems = info.value.problems
    assert len(problems) == MAX_PROBLEMS + 1
    assert problems[0].row == 1 and problems[MAX_PROBLEMS - 1].row == MAX_PROBLEMS
    assert "stopped after" in problems[-1].message


def test_given_specs_kept_and_missing_ones_inferred() -> None:
    deals = deals_frame(pipeline=["Sales", "Partners"])
    history = DealHistory.from_frames(
        deals,
        stages_frame(),
        empty_activities(),
        pipelines={"Sales": {"stages": ["Lead In", "Demo"], "won": ["Won"], "lost": ["Lost"]}},
    )
    assert history.pipelines["Sales"] == PipelineSpec("Sales", ("Lead In", "Demo"), ("Won",), ("Lost",))
    assert history.pipelines["Partners"].stages == ("Lead In",)


def test_inferred_stage_order_follows_the_median_entry_position() -> None:
    # Most deals go Lead -> Qualify -> Demo; one skips Qualify and one goes back; closing stages by name.
    rows = [
        ("a", "Lead"),
        ("a", "Qualify"),
        ("a", "Demo"),
        ("a", "Closed Won"),
        ("b", "Lead"),
        ("b", "Qualify"),
        ("b", "Demo"),
        ("b", "Qualify"),
        ("b", "closed_lost"),
        ("c", "Lead"),
        ("c", "Demo"),
        ("c", "CLOSED LOST"),
        ("d", "Qualify"),
        ("d", "Lead"),
        ("d", "Qualify"),
        ("d", "Demo"),
        ("e", "Lead"),
        ("e", "Qualify"),
    ]
    ids = sorted({deal for deal, _ in rows})
    deals = pd.DataFrame(
        {"deal_id": ids, "pipeline": "New", "owner": "o", "amount": "1", "created_at": "2024-01-01"}
    )
    times = pd.Timestamp("2024-01-02", tz="UTC") + pd.to_timedelta(np.arange(len(rows)), unit="h")
    stages = pd.DataFrame(
        {"deal_id": [d for d, _ in rows], "stage": [s for _, s in rows], "changed_at": times.astype(str)}
    )
    history = DealHistory.from_frames(deals, stages, empty_activities())
    spec = history.pipelines["New"]
    assert spec.stages == ("Lead", "Qualify", "Demo")
    assert spec.won == ("Closed Won",)
    assert set(spec.lost) == {"closed_lost", "CLOSED LOST"}


def test_pipeline_without_stage_changes_gets_an_empty_spec() -> None:
    deals = deals_frame(pipeline=["Sales", "Quiet"])
    stages = pd.DataFrame({"deal_id": ["d1"], "stage": ["Lead In"], "changed_at": ["2024-01-01"]})
    history = DealHistory.from_frames(deals, stages, empty_activities())
    assert history.pipelines["Quiet"] == PipelineSpec("Quiet", ())
    specs = infer_pipeline_specs(history.deals, history.stage_changes, ["Quiet", "Sales"])
    assert specs["Quiet"].stages == () and specs["Sales"].stages == ("Lead In",)


def test_format_utc_iso_round_trips_nanoseconds_and_missing() -> None:
    times = pd.Series(
        pd.to_datetime(
            pd.Series(["2024-01-01T00:00:00.000000001+00:00", None, "1969-12-31T23:59:59.5Z"]),
            utc=True,
            format="ISO8601",
        )
    ).astype(UTC_NS)
    text = format_utc_iso(times)
    assert text.tolist()[0] == "2024-01-01T00:00:00.000000001+00:00" and pd.isna(text.iloc[1])
    back = pd.to_datetime(text, utc=True, format="ISO8601").astype(UTC_NS)
    pd.testing.assert_series_equal(back, times, check_names=False)


def test_large_history_validates_without_per_row_python() -> None:
    # Not timed (no timed tests): this guards against accidental quadratic behaviour by size alone.
    rng = np.random.default_rng(7)
    n = 20_000
    deals = pd.DataFrame(
        {
            "deal_id": [f"d{i}" for i in range(n)],
            "pipeline": rng.choice(["A", "B"], n),
            "owner": "o",
            "amount": rng.integers(0, 10_000, n).astype(str),
            "created_at": "2024-01-01",
        }
    )
    ids = rng.choice(deals["deal_id"].to_numpy(), 5 * n)
    stage_names = np.array(["s1", "s2", "s3", "Won", "Lost"])
    stages = pd.DataFrame(
        {
            "deal_id": ids,
            "stage": stage_names[rng.integers(0, 5, 5 * n)],
            "changed_at": (
                pd.Timestamp("2024-01-02", tz="UTC")
                + pd.to_timedelta(rng.integers(0, 10**6, 5 * n), unit="s")
            ).astype(str),
        }
    )
    history = validate_and_coerce(deals, stages, empty_activities())
    # every value survives, parsed, in (deal_id, time) order
    expected = stages.assign(changed_at=pd.to_datetime(stages["changed_at"], utc=True)).sort_values(
        ["deal_id", "changed_at"], kind="stable").reset_index(drop=True)
    got = history.stage_changes
    assert got["deal_id"].astype(str).tolist() == expected["deal_id"].tolist()
    assert got["stage"].astype(str).tolist() == expected["stage"].tolist()
    assert (got["changed_at"].to_numpy() == expected["changed_at"].to_numpy()).all()
    assert history.deals["amount"].tolist() == deals.sort_values("deal_id")["amount"].astype(float).tolist()
    for name in ("A", "B"):
        spec = history.pipelines[name]
        assert (spec.won, spec.lost, sorted(spec.stages)) == (("Won",), ("Lost",), ["s1", "s2", "s3"])
