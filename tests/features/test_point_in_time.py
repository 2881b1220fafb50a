"""Features as of t must not move when anything dated after t is added, cut away, or feeds the population."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from features.build import FeatureBuilder
from features.history import DealHistory
from training.simulate import simulate_history

ONE_NS = pd.Timedelta(1, unit="ns")


@pytest.fixture(scope="module")
def history() -> DealHistory:
    return simulate_history(n_deals=300, seed=11)


@pytest.fixture(scope="module")
def as_of(history: DealHistory) -> pd.Timestamp:
    # An instant at which something happened, so "at or before t" is tested at the boundary.
    times = history.activities["occurred_at"].sort_values().reset_index(drop=True)
    return pd.Timestamp(times.iloc[len(times) // 2])


def _fit_and_build(history: DealHistory, points: pd.DataFrame) -> pd.DataFrame:
    """Features of `points` from a builder fitted on `history` itself (its statistics included)."""
    return FeatureBuilder().fit(history).transform(history, points)


def _points(history: DealHistory, as_of: pd.Timestamp, only_created: bool = False) -> pd.DataFrame:
    """Every deal at t, plus earlier points; deals created after t appear too unless only_created."""
    deals = history.deals
    if only_created:
        deals = deals[deals["created_at"] <= as_of]
    rng = np.random.default_rng(5)
    ids = deals["deal_id"].to_numpy(dtype=object)
    earlier = as_of - pd.to_timedelta(rng.integers(0, 120, len(ids)), unit="D")
    points = pd.DataFrame(
        {
            "deal_id": np.concatenate([ids, ids]),
            "as_of": pd.DatetimeIndex([as_of] * len(ids)).append(pd.DatetimeIndex(earlier)),
        }
    )
    return points.sample(frac=1.0, random_state=3).reset_index(drop=True)  # any order must work


def _append_after(history: DealHistory, as_of: pd.Timestamp) -> DealHistory:
    """The same history plus, for every deal, activities, stage moves, a close and field changes dated
    after t (the first one a nanosecond after), and new deals created after t."""
    deals = history.deals
    base = deals["created_at"].where(deals["created_at"] > as_of, as_of) + ONE_NS
    closing = deals["pipeline"].map(lambda p: (history.pipelines[p].won or ("Closed Won",))[0])
    first = deals["pipeline"].map(lambda p: history.pipelines[p].stages[0])
    new_ids = [f"NEW{i}" for i in range(5)]
    new_deals = deals.head(5).copy()
    new_deals["deal_id"] = new_ids
    new_deals["created_at"] = as_of + pd.Timedelta(hours=1)
    new_base = pd.Series([as_of + pd.Timedelta(hours=2)] * 5)

    ids = pd.concat([deals["deal_id"], pd.Series(new_ids)], ignore_index=True)
    starts = pd.concat([base, new_base], ignore_index=True)
    n = len(ids)
    day = pd.Timedelta(days=1)
    activities = pd.DataFrame(
        {
            "deal_id": np.concatenate([ids, ids, ids]),
            "type": ["email"] * n + ["call"] * n + ["meeting"] * n,
            "direction": ["inbound"] * n + ["outbound"] * n + ["inbound"] * n,
            "occurred_at": pd.concat([starts, starts + day, starts + 3 * day], ignore_index=True),
        }
    )
    stages = pd.DataFrame(
        {
            "deal_id": np.concatenate([deals["deal_id"], deals["deal_id"]]),
            "stage": np.concatenate([first, closing]),
            "changed_at": pd.concat([base + 2 * ONE_NS, base + 2 * day], ignore_index=True),
        }
    )
    fields = pd.DataFrame(
        {
            "deal_id": np.concatenate([ids, ids, ids]),
            "field": ["amount"] * n + ["expected_close_date"] * n + ["owner"] * n,
            "value": ["987654"] * n + [str((as_of + 400 * day).date())] * n + ["Late Owner"] * n,
            "changed_at": pd.concat([starts, starts + day, starts + day], ignore_index=True),
        }
    )
    return DealHistory.from_frames(
        pd.concat([deals, new_deals], ignore_index=True),
        pd.concat([history.stage_changes.drop(columns="event_id"), stages], ignore_index=True),
        pd.concat([history.activities.drop(columns="event_id"), activities], ignore_index=True),
        pd.concat([history.field_changes.drop(columns="event_id"), fields], ignore_index=True),
        pipelines=history.pipelines,
    )


def test_events_after_t_change_nothing(history: DealHistory, as_of: pd.Timestamp) -> None:
    points = _points(history, as_of)
    later = _append_after(history, as_of)
    assert len(later.activities) > len(history.activities)  # the appended rows are really there

    before = _fit_and_build(history, points)
    after = _fit_and_build(later, points)

    pd.testing.assert_frame_equal(before, after)
    assert (before["outcome"] == "not_created").any()  # points before creation are covered too
    assert set(before["outcome"]) >= {"open", "won", "lost"}


def test_appended_events_do_count_once_t_passes_them(history: DealHistory, as_of: pd.Timestamp) -> None:
    # Guards the test above: the same appended rows change the features a few days later.
    # Cut first so the history's own events in (t, t+4d] cannot override the appended ones.
    points = _points(history, as_of, only_created=True).assign(as_of=as_of + pd.Timedelta(days=4))
    later = _fit_and_build(_append_after(history.cut(as_of), as_of), points)
    assert (later["n_meeting_7d"] >= 1).all()
    assert (later["owner"] == "Late Owner").all()
    assert (later["amount"] == 987654.0).all()


def test_cut_history_gives_identical_features(history: DealHistory, as_of: pd.Timestamp) -> None:
    points = _points(history, as_of, only_created=True)
    full = _fit_and_build(history, points)
    cut = _fit_and_build(history.cut(as_of), points)
    pd.testing.assert_frame_equal(full, cut)


def test_population_from_full_or_cut_history_gives_identical_features(
    history: DealHistory, as_of: pd.Timestamp
) -> None:
    points = _points(history, as_of)
    from_full = FeatureBuilder().fit(history).transform(history, points)
    from_cut = FeatureBuilder().fit(history.cut(as_of)).transform(history, points)
    pd.testing.assert_frame_equal(from_full, from_cut)
    # The population really is used: owners' win rates vary across deals.
    assert from_full["owner_win_rate"].nunique() > 5
