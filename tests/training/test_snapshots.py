"""Snapshots and the time split: only open deals are observed, and no label peeks past its window."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from features.history import DealHistory, PipelineSpec
from training.simulate import simulate_history
from training.snapshots import make_snapshots, make_time_split, time_split


@pytest.fixture(scope="module")
def history() -> DealHistory:
    return simulate_history(600, seed=7)


def test_snapshots_are_open_deals_on_a_weekly_grid_ending_at_the_end(history: DealHistory) -> None:
    pts = make_snapshots(history, cadence_days=7)
    assert not pts.empty
    assert pts["as_of"].max() == history.end_time
    steps = (history.end_time - pts["as_of"]).dt.total_seconds().to_numpy() / (7 * 86_400)
    assert np.allclose(steps, np.round(steps))
    created = pts["deal_id"].map(history.deals.set_index("deal_id")["created_at"])
    assert (created <= pts["as_of"]).all()
    assert not pts.duplicated().any()


def _day(n: int) -> str:
    return (pd.Timestamp("2025-01-01", tz="UTC") + pd.Timedelta(days=n)).isoformat()


def test_snapshots_of_a_tiny_history_by_hand() -> None:
    """A won on day 10; B lost on day 20 and reopened on day 30; C created on day 15; data ends day 35.

    Weekly points end at day 35 (35, 28, 21, 14, 7, 0). Open then: day 0 and 7 A and B; day 14 B;
    day 21 and 28 C (B lost); day 35 B (reopened) and C.
    """
    deals = pd.DataFrame({"deal_id": ["A", "B", "C"], "pipeline": "P", "owner": "o", "amount": 100,
                          "created_at": [_day(0), _day(0), _day(15)]})
    changes = pd.DataFrame(
        [("A", "Open", _day(0)), ("A", "Won", _day(10)), ("B", "Open", _day(0)), ("B", "Lost", _day(20)),
         ("B", "Open", _day(30)), ("C", "Open", _day(15))], columns=["deal_id", "stage", "changed_at"])
    activities = pd.DataFrame([("C", "call", _day(35))], columns=["deal_id", "type", "occurred_at"])
    tiny = DealHistory.from_frames(deals, changes, activities,
                                   pipelines={"P": PipelineSpec("P", ("Open",), ("Won",), ("Lost",))})
    pts = make_snapshots(tiny, cadence_days=7)
    days = (pts["as_of"] - pd.Timestamp(_day(0))).dt.days
    got = sorted(zip(pts["deal_id"].astype(str), days.astype(int), strict=True))
    assert got == sorted([("A", 0), ("B", 0), ("A", 7), ("B", 7), ("B", 14), ("C", 21), ("C", 28),
                          ("B", 35), ("C", 35)])


def test_snapshots_at_events_add_points(history: DealHistory) -> None:
    weekly = make_snapshots(history, cadence_days=7)
    both = make_snapshots(history, cadence_days=7, at_events=True)
    assert len(both) > len(weekly)
    assert set(map(tuple, weekly.to_numpy())) <= set(map(tuple, both.to_numpy()))


def test_no_train_label_uses_information_after_the_train_end(history: DealHistory) -> None:
    pts = make_snapshots(history, cadence_days=7)
    split = make_time_split(history.end_time, history.deals["created_at"].min(), 90, 60)
    full = time_split(history, pts, split, horizon_days=14)
    train = full[full["window"] == "train"]
    assert train["as_of"].max() <= split.train_end
    assert (full.loc[full["window"] == "test", "as_of"] > split.calibration_end).all()

    # The same training labels computed from a history that ends at the train end.
    cut = history.cut(split.train_end)
    cut_split = make_time_split(history.end_time, history.deals["created_at"].min(), 90, 60)
    again = time_split(cut, train[["deal_id", "as_of"]], cut_split, horizon_days=14)
    pd.testing.assert_series_equal(train["cold"].reset_index(drop=True), again["cold"].reset_index(drop=True))
    pd.testing.assert_series_equal(train["won"].reset_index(drop=True), again["won"].reset_index(drop=True))
    # Windows that run past the train end are censored unless a close inside decided them.
    late = train[train["as_of"] + pd.Timedelta(days=14) > split.train_end]
    assert late["cold"].isna().mean() > 0.5
    assert train["cold"].notna().sum() > 100


def test_short_history_shrinks_the_windows() -> None:
    start = pd.Timestamp("2025-01-01", tz="UTC")
    split = make_time_split(start + pd.Timedelta(days=100), start, test_days=90, calibration_days=60)
    assert split.train_end - start >= pd.Timedelta(days=50)
    assert split.train_end < split.calibration_end < split.end
