"""Stage meaning and deal state (features.stages) on hand-written pipelines and deals."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from features.history import DealHistory, PipelineSpec
from features.stages import deal_states_at, order_stage_changes, stage_outcomes, stage_positions

SPECS = {
    "Direct": PipelineSpec("Direct", ("Lead", "Qualified", "Proposal"), won=("Won",), lost=("Lost",)),
    # A spec without won/lost lists: the name rule decides what closes a deal.
    "Loose": PipelineSpec("Loose", ("A", "B")),
}


def test_outcome_follows_the_spec_and_else_the_name_rule() -> None:
    pairs = [
        ("Direct", "Won", "won"),
        ("Direct", "Lost", "lost"),
        ("Direct", "Closed Won", "open"),  # Direct lists its won stages: the name does not matter
        ("Loose", "Closed WON", "won"),
        ("Loose", "deal lost", "lost"),
        ("Loose", "B", "open"),
        ("NoSpec", "won it", "won"),
        ("NoSpec", "Proposal", "open"),
        ("Direct", None, "open"),
    ]
    pipeline = np.array([p for p, _, _ in pairs], dtype=object)
    stage = np.array([s for _, s, _ in pairs], dtype=object)
    assert stage_outcomes(pipeline, stage, SPECS).tolist() == [o for _, _, o in pairs]


def test_position_open_in_order_closing_last_unknown_nan() -> None:
    pairs = [
        ("Direct", "Lead", 0.0),
        ("Direct", "Proposal", 2.0),
        ("Direct", "Won", 3.0),
        ("Direct", "Lost", 3.0),
        ("Loose", "deal lost", 2.0),
        ("Direct", "Mystery", math.nan),  # not a stage of Direct and not closing
        ("NoSpec", "Lead", math.nan),  # a pipeline without a spec has no order
        ("NoSpec", "won it", math.nan),
    ]
    pipeline = np.array([p for p, _, _ in pairs], dtype=object)
    stage = np.array([s for _, s, _ in pairs], dtype=object)
    got = stage_positions(pipeline, stage, SPECS)
    np.testing.assert_array_equal(got, np.array([x for _, _, x in pairs]))


def _history(stage_rows: list[tuple[str, str, str, str | None]]) -> DealHistory:
    deals = pd.DataFrame(
        [("D1", "Direct", "ann", 100.0, "2024-01-01"), ("D2", "Direct", "bob", 200.0, "2024-01-03")],
        columns=["deal_id", "pipeline", "owner", "amount", "created_at"],
    )
    stages = pd.DataFrame(stage_rows, columns=["deal_id", "stage", "changed_at", "event_id"])
    activities = pd.DataFrame(columns=["deal_id", "type", "occurred_at"])
    return DealHistory.from_frames(deals, stages, activities, pipelines={"Direct": SPECS["Direct"].to_dict()})


def test_deal_state_at_t_includes_not_created_and_reopening() -> None:
    history = _history([
        ("D1", "Lost", "2024-01-10", None),
        ("D1", "Qualified", "2024-01-20", None),  # back to an open stage: reopened
        ("D2", "Won", "2024-01-10", None),
    ])
    times = ["2023-12-31", "2024-01-05", "2024-01-10", "2024-01-15", "2024-01-20", "2024-01-25"]
    points = pd.DataFrame({
        "deal_id": ["D1"] * len(times) + ["D2", "D2"],
        "as_of": pd.to_datetime(times + ["2024-01-02", "2024-02-01"], utc=True),
    })
    assert deal_states_at(history, points).tolist() == [
        "not_created", "open", "lost", "lost", "open", "open", "not_created", "won",
    ]
    with pytest.raises(ValueError, match="D9"):
        deal_states_at(history, pd.DataFrame({"deal_id": ["D9"], "as_of": points["as_of"].iloc[:1]}))


def test_same_time_stage_changes_are_ordered_by_position_then_event_id_whatever_the_input_order() -> None:
    rows = [
        ("D1", "Lost", "2024-02-01", "e1"),
        ("D1", "Proposal", "2024-02-01", "e2"),
        ("D1", "Qualified", "2024-02-01", "e9"),
        ("D2", "Lead", "2024-02-01", "z"),
        ("D2", "Lead", "2024-02-01", "a"),  # same stage twice: event_id decides
        ("D1", "Lead", "2024-01-15", "e5"),
    ]
    expected = [
        ("D1", "Lead", "e5"), ("D1", "Qualified", "e9"), ("D1", "Proposal", "e2"), ("D1", "Lost", "e1"),
        ("D2", "Lead", "a"), ("D2", "Lead", "z"),
    ]
    for given in (rows, rows[::-1]):
        changes = _history(given).stage_changes
        got = list(zip(changes["deal_id"], changes["stage"], changes["event_id"], strict=True))
        assert got == expected
    # The deal's state after the tie is the closing stage's, whichever order the rows came in.
    points = pd.DataFrame({"deal_id": ["D1"], "as_of": pd.to_datetime(["2024-02-01"], utc=True)})
    assert deal_states_at(_history(rows[::-1]), points).tolist() == ["lost"]


def test_an_unknown_stage_at_the_same_time_sorts_after_the_open_stages_and_before_closing() -> None:
    # Validation rejects unknown stages of a pipeline with a spec, so this calls the ordering directly.
    deals = pd.DataFrame({"deal_id": ["D1"], "pipeline": ["Direct"]})
    at = pd.Timestamp("2024-02-01", tz="UTC")
    changes = pd.DataFrame({"deal_id": ["D1"] * 3, "stage": ["Won", "Mystery", "Lead"],
                            "changed_at": [at] * 3})
    assert order_stage_changes(changes, deals, SPECS)["stage"].tolist() == ["Lead", "Mystery", "Won"]
