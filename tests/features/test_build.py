"""Exact feature values on a hand-written history, and the shape of the output."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from features.build import (
    CATEGORICAL_FEATURES,
    CONTEXT_COLUMNS,
    FEATURE_COLUMNS,
    FEATURE_DESCRIPTIONS,
    FeatureBuilder,
    NotFittedError,
)
from features.history import DealHistory

PIPELINES = {
    "Direct": {"stages": ["Lead", "Qualified", "Proposal", "Negotiation"], "won": ["Won"], "lost": ["Lost"]},
    "Partner": {"stages": ["Intro", "Pilot"], "won": ["Signed"], "lost": ["Dropped"]},
}


def _build(history: DealHistory, points: pd.DataFrame) -> pd.DataFrame:
    """Features of `points` from a builder fitted on the same history."""
    return FeatureBuilder().fit(history).transform(history, points)


def _history() -> DealHistory:
    """D1 is the deal under test; D2-D6 are its owner's and pipeline's peers; D7 comes later."""
    deals = pd.DataFrame(
        [
            ("D1", "Direct", "alice", 1000, "2024-01-01", "East", "2024-02-01"),
            ("D2", "Direct", "alice", 500, "2024-01-01", "East", ""),
            ("D3", "Direct", "alice", 2000, "2024-01-01", "East", ""),
            ("D4", "Direct", "bob", 4000, "2024-01-02", "West", ""),
            ("D5", "Direct", "bob", 8000, "2024-01-05", "West", ""),
            ("D6", "Direct", "bob", 16000, "2024-01-10", "West", ""),
            ("D7", "Partner", "carol", 300, "2024-03-10", "", ""),
        ],
        columns=["deal_id", "pipeline", "owner", "amount", "created_at", "team", "expected_close_date"],
    )
    stages = pd.DataFrame(
        [
            ("D1", "Lead", "2024-01-01"),
            ("D1", "Qualified", "2024-01-05"),
            ("D1", "Proposal", "2024-01-10"),
            ("D1", "Qualified", "2024-01-15"),  # a move back
            ("D1", "Proposal", "2024-01-20"),
            ("D2", "Lead", "2024-01-01"),
            ("D2", "Won", "2024-01-15"),
            ("D3", "Lead", "2024-01-01"),
            ("D3", "Lost", "2024-01-18"),
            ("D4", "Lead", "2024-01-02"),
            ("D4", "Won", "2024-01-20"),
            ("D5", "Lead", "2024-01-05"),
            ("D5", "Won", "2024-03-01"),  # after the point in time used below
        ],
        columns=["deal_id", "stage", "changed_at"],
    )
    activities = pd.DataFrame(
        [
            ("D1", "call", "outbound", "2024-01-02"),
            ("D1", "email", "inbound", "2024-01-03"),
            ("D1", "meeting", "outbound", "2024-01-12"),
            ("D1", "email", "inbound", "2024-01-25"),
            ("D1", "note", "", "2024-02-05"),
            ("D1", "call", "inbound", "2024-02-25"),  # after t
            ("D2", "call", "outbound", "2024-01-03"),
        ],
        columns=["deal_id", "type", "direction", "occurred_at"],
    )
    fields = pd.DataFrame(
        [
            ("D1", "amount", "1500", "2024-01-10"),
            ("D1", "expected_close_date", "2024-02-15", "2024-01-20"),  # slip
            ("D1", "expected_close_date", "2024-02-10", "2024-01-25"),  # pulled in: not a slip
            ("D1", "expected_close_date", "2024-03-01", "2024-02-15"),  # slip
            ("D6", "owner", "alice", "2024-02-01"),
        ],
        columns=["deal_id", "field", "value", "changed_at"],
    )
    return DealHistory.from_frames(deals, stages, activities, fields, pipelines=PIPELINES)


def _points(*pairs: tuple[str, str]) -> pd.DataFrame:
    return pd.DataFrame(
        {"deal_id": [d for d, _ in pairs], "as_of": pd.to_datetime([t for _, t in pairs], utc=True)}
    )


@pytest.fixture(scope="module")
def history() -> DealHistory:
    return _history()


def test_hand_written_deal_has_exact_values(history: DealHistory) -> None:
    row = _build(history, _points(("D1", "2024-02-20"))).iloc[0]

    assert row["stage"] == "Proposal"
    assert row["outcome"] == "open"
    assert row["stage_age_days"] == 31.0  # back in Proposal since 2024-01-20
    assert row["n_stage_changes"] == 4  # starting in the first stage is not a change
    assert row["n_backward_moves"] == 1
    assert row["stage_position"] == 2.0
    assert row["stage_position_frac"] == 0.5
    # The only finished Proposal episode (D1, 10 → 15 January) lasted 5 days.
    assert row["stage_age_rel"] == pytest.approx(31.0 / 5.0)
    assert row["deal_age_days"] == 50.0

    assert row["days_since_activity"] == 15.0  # the note on 5 February
    assert row["days_since_inbound"] == 26.0  # the email on 25 January; the 25 February call is later
    assert row["n_activity_7d"] == 0
    assert (row["n_activity_30d"], row["n_email_30d"], row["n_note_30d"], row["n_call_30d"]) == (2, 1, 1, 0)
    counts_90d = (row["n_activity_90d"], row["n_call_90d"], row["n_email_90d"], row["n_meeting_90d"])
    assert counts_90d == (5, 1, 2, 1)
    assert row["inbound_30d"] == 1
    assert row["max_gap_days"] == 13.0  # 12 → 25 January
    assert row["activity_trend"] == -2  # 0 in the last 14 days, 2 in the 14 before
    assert row["activity_trend_ratio"] == pytest.approx(1 / 3)

    assert row["amount"] == 1500.0
    assert row["log_amount"] == pytest.approx(math.log1p(1500))
    assert row["n_amount_changes"] == 1
    assert row["amount_change_ratio"] == 1.5
    assert row["expected_close_date"] == pd.Timestamp("2024-03-01", tz="UTC")
    assert row["days_to_close"] == 10.0  # 2024 is a leap year
    assert row["n_close_slips"] == 2

    # Closed by t: D2 won and D3 lost (alice), D4 won (bob); D5's win comes later.
    # global 2/3 -> (2 + 10 * 0.5) / 13; pipeline (2 + 10 * global) / 13; alice (1 + 10 * pipeline) / 12.
    global_rate = (2 + 10 * 0.5) / 13
    pipeline_rate = (2 + 10 * global_rate) / 13
    assert row["owner_win_rate"] == pytest.approx((1 + 10 * pipeline_rate) / 12)
    assert row["owner_closed_deals"] == 2
    assert row["owner_open_deals"] == 2  # D1, and D6 handed over from bob on 1 February
    assert (row["owner"], row["team"], row["pipeline"]) == ("alice", "East", "Direct")


def test_overdue_close_date_is_negative_and_counts_slips_so_far(history: DealHistory) -> None:
    row = _build(history, _points(("D1", "2024-02-12"))).iloc[0]
    assert row["expected_close_date"] == pd.Timestamp("2024-02-10", tz="UTC")
    assert row["days_to_close"] == -2.0
    assert row["n_close_slips"] == 1


def test_owner_as_of_t_follows_owner_changes(history: DealHistory) -> None:
    frame = _build(history, _points(("D6", "2024-01-31"), ("D6", "2024-02-01"), ("D4", "2024-02-20")))
    assert list(frame["owner"]) == ["bob", "alice", "bob"]
    # bob holds D5 and D6 on 31 January; D6 moves to alice the next day; D4 was won on 20 January.
    assert list(frame["owner_open_deals"]) == [2, 2, 1]
    assert frame["owner_closed_deals"].iloc[2] == 1


def test_deal_without_activity_or_stage_changes_is_valid(history: DealHistory) -> None:
    row = _build(history, _points(("D6", "2024-01-20"))).iloc[0]
    assert row["stage"] == "Lead"  # deals start in the pipeline's first stage
    assert row["stage_age_days"] == 10.0
    assert row["n_stage_changes"] == 0
    assert np.isnan(row["days_since_activity"])
    assert np.isnan(row["days_since_inbound"])
    assert np.isnan(row["max_gap_days"])
    assert row["n_activity_90d"] == 0
    assert row["activity_trend"] == 0
    assert np.isnan(row["days_to_close"])
    assert row["outcome"] == "open"


def test_closed_deal_reports_outcome_and_last_position(history: DealHistory) -> None:
    frame = _build(history, _points(("D2", "2024-02-01"), ("D3", "2024-02-01"), ("D5", "2024-03-01")))
    assert list(frame["outcome"]) == ["won", "lost", "won"]
    assert list(frame["stage_position_frac"]) == [1.0, 1.0, 1.0]


def test_point_before_creation_is_not_created(history: DealHistory) -> None:
    frame = _build(history, _points(("D7", "2024-03-01"), ("D7", "2024-03-10")))
    assert list(frame["outcome"]) == ["not_created", "open"]
    assert pd.isna(frame["stage"].iloc[0])
    assert frame["stage"].iloc[1] == "Intro"
    assert frame["n_activity_90d"].iloc[0] == 0


def test_output_follows_the_points_order_and_index(history: DealHistory) -> None:
    points = _points(("D3", "2024-01-10"), ("D1", "2024-02-20"), ("D6", "2024-01-20"), ("D1", "2024-01-06"))
    points.index = pd.Index([40, 10, 30, 20])
    frame = _build(history, points)
    assert list(frame.index) == [40, 10, 30, 20]
    assert list(frame["deal_id"]) == ["D3", "D1", "D6", "D1"]
    assert list(frame["as_of"]) == list(points["as_of"])
    one_by_one = pd.concat([_build(history, points.iloc[[i]]) for i in range(len(points))])
    pd.testing.assert_frame_equal(frame, one_by_one)


def test_columns_dtypes_and_descriptions(history: DealHistory) -> None:
    frame = _build(history, _points(("D1", "2024-02-20"), ("D7", "2024-03-20")))
    assert list(frame.columns) == ["deal_id", "as_of", *FEATURE_COLUMNS, *CONTEXT_COLUMNS]
    assert str(frame["as_of"].dtype) == "datetime64[ns, UTC]"
    assert str(frame["expected_close_date"].dtype) == "datetime64[ns, UTC]"
    for column in CATEGORICAL_FEATURES:
        assert isinstance(frame[column].dtype, pd.CategoricalDtype)
    assert list(frame["pipeline_cat"].cat.categories) == ["Direct", "Partner"]
    assert list(frame["stage_cat"].cat.categories) == [
        "Lead", "Qualified", "Proposal", "Negotiation", "Won", "Lost", "Intro", "Pilot", "Signed", "Dropped",
    ]
    numeric = [c for c in FEATURE_COLUMNS if c not in CATEGORICAL_FEATURES]
    assert all(pd.api.types.is_numeric_dtype(frame[c]) for c in numeric)
    assert set(FEATURE_DESCRIPTIONS) == set(FEATURE_COLUMNS)
    assert all(text for text in FEATURE_DESCRIPTIONS.values())


def test_unknown_deal_is_an_error_naming_it(history: DealHistory) -> None:
    with pytest.raises(ValueError, match="D99"):
        _build(history, _points(("D99", "2024-02-01")))


def test_empty_points_give_an_empty_frame(history: DealHistory) -> None:
    frame = _build(history, _points())
    assert len(frame) == 0
    assert list(frame.columns) == ["deal_id", "as_of", *FEATURE_COLUMNS, *CONTEXT_COLUMNS]


def test_reopened_deal_is_open_again_and_back_in_its_owners_load() -> None:
    history = DealHistory.from_frames(
        pd.DataFrame(
            [("R1", "Direct", "dana", 100, "2024-01-01"), ("R2", "Direct", "dana", 100, "2024-01-01")],
            columns=["deal_id", "pipeline", "owner", "amount", "created_at"],
        ),
        pd.DataFrame(
            [("R1", "Lost", "2024-01-10"), ("R1", "Qualified", "2024-01-20")],
            columns=["deal_id", "stage", "changed_at"],
        ),
        pd.DataFrame(columns=["deal_id", "type", "occurred_at"]),
        pipelines=PIPELINES,
    )
    points = _points(("R1", "2024-01-15"), ("R1", "2024-01-25"), ("R2", "2024-01-15"), ("R2", "2024-01-25"))
    frame = _build(history, points)
    assert list(frame["outcome"]) == ["lost", "open", "open", "open"]
    assert list(frame["owner_open_deals"]) == [1, 2, 1, 2]
    assert list(frame["owner_closed_deals"]) == [1, 1, 1, 1]
    assert frame["n_backward_moves"].iloc[1] == 1  # reopening goes back from a closing stage
    assert frame["stage_age_days"].iloc[1] == 5.0
    # Lead lasted 9 days for R1 (1 → 10 January); R2 is in Lead without a finished episode of its own.
    assert frame["stage_age_rel"].iloc[3] == pytest.approx(24.0 / 9.0)


def test_pipeline_without_spec_uses_inferred_stages_and_names() -> None:
    history = DealHistory.from_frames(
        pd.DataFrame(
            [("A", "Adhoc", "erin", 10, "2024-01-01"), ("B", "Adhoc", "erin", 10, "2024-01-01")],
            columns=["deal_id", "pipeline", "owner", "amount", "created_at"],
        ),
        pd.DataFrame(
            [("A", "Open", "2024-01-01"), ("A", "Closed Won", "2024-01-05"), ("B", "Open", "2024-01-01")],
            columns=["deal_id", "stage", "changed_at"],
        ),
        pd.DataFrame([("B", "Call", "2024-01-02")], columns=["deal_id", "type", "occurred_at"]),
    )
    frame = _build(history, _points(("A", "2024-01-06"), ("B", "2024-01-06")))
    assert list(frame["outcome"]) == ["won", "open"]
    assert list(frame["stage_position"]) == [1.0, 0.0]
    assert list(frame["stage_cat"].astype(str)) == ["Closed Won", "Open"]
    assert frame["n_call_7d"].iloc[1] == 1
    assert frame["days_since_inbound"].isna().all()  # no direction given: nothing is inbound


def test_history_without_any_events_and_naive_or_text_times() -> None:
    history = DealHistory.from_frames(
        pd.DataFrame(
            [("Q1", "Direct", "fay", 0, "2024-01-01", "2024-01-31")],
            columns=["deal_id", "pipeline", "owner", "amount", "created_at", "expected_close_date"],
        ),
        pd.DataFrame(columns=["deal_id", "stage", "changed_at"]),
        pd.DataFrame(columns=["deal_id", "type", "occurred_at"]),
        pipelines=PIPELINES,
    )
    points = pd.DataFrame({"deal_id": ["Q1", "Q1"], "as_of": ["2024-01-11", "2024-01-11T12:00:00"]})
    frame = _build(history, points)
    expected = [pd.Timestamp("2024-01-11", tz="UTC"), pd.Timestamp("2024-01-11 12:00", tz="UTC")]
    assert list(frame["as_of"]) == expected
    assert list(frame["days_to_close"]) == [20.0, 19.5]
    assert list(frame["stage"]) == ["Lead", "Lead"]
    assert frame["owner_win_rate"].tolist() == [0.5, 0.5]  # nothing closed anywhere: the neutral prior
    assert frame["owner_open_deals"].tolist() == [1, 1]
    assert np.isnan(frame["amount_change_ratio"]).all()  # created with amount 0
    assert np.isnan(frame["stage_age_rel"]).all()  # no finished stage episode yet


def test_cleared_close_date_has_no_days_to_close() -> None:
    history = DealHistory.from_frames(
        pd.DataFrame(
            [("C1", "Direct", "gus", 10, "2024-01-01", "2024-02-01")],
            columns=["deal_id", "pipeline", "owner", "amount", "created_at", "expected_close_date"],
        ),
        pd.DataFrame(columns=["deal_id", "stage", "changed_at"]),
        pd.DataFrame(columns=["deal_id", "type", "occurred_at"]),
        pd.DataFrame(
            [
                ("C1", "expected_close_date", "", "2024-01-05"),
                ("C1", "expected_close_date", "2024-03-01", "2024-01-09"),
            ],
            columns=["deal_id", "field", "value", "changed_at"],
        ),
        pipelines=PIPELINES,
    )
    frame = _build(history, _points(("C1", "2024-01-06"), ("C1", "2024-01-10")))
    assert np.isnan(frame["days_to_close"].iloc[0])
    assert pd.isna(frame["expected_close_date"].iloc[0])
    assert frame["days_to_close"].iloc[1] == 51.0
    assert list(frame["n_close_slips"]) == [0, 0]  # a date after a cleared one is not a slip


def test_transform_before_fit_raises_and_fit_learns_only_population_statistics(history: DealHistory) -> None:
    builder = FeatureBuilder()
    with pytest.raises(NotFittedError, match="not fitted"):
        builder.transform(history, _points(("D1", "2024-02-20")))
    assert builder.fit(history) is builder and builder.is_fitted
    # D1 transformed alone still sees its owner's record from the fitted statistics: alice closed D2
    # (won) and D3 (lost) by then, as the hand computation in the test above says.
    alone = builder.transform(history.subset(["D1"]), _points(("D1", "2024-02-20"))).iloc[0]
    global_rate = (2 + 10 * 0.5) / 13
    pipeline_rate = (2 + 10 * global_rate) / 13
    assert alone["owner_win_rate"] == pytest.approx((1 + 10 * pipeline_rate) / 12)
    assert alone["owner_closed_deals"] == 2
