"""Labels on hand-written histories: each SPEC rule, censoring included."""

from __future__ import annotations

import pandas as pd
import pytest

from features.history import DealHistory, PipelineSpec
from features.labels import cold_label, won_label

T0 = pd.Timestamp("2025-01-01", tz="UTC")
PIPE = PipelineSpec("P", ("Lead", "Demo", "Proposal"), ("Closed Won",), ("Closed Lost",))


def day(n: float) -> pd.Timestamp:
    return T0 + pd.Timedelta(days=n)


def history(
    stages: list[tuple[str, str, float]], acts: list[tuple[str, float]], end_day: float
) -> DealHistory:
    """Deals all created at day 0 in pipeline P; a marker deal with an activity fixes the data end."""
    ids = sorted({d for d, _, _ in stages} | {d for d, _ in acts} | {"marker"})
    deals = pd.DataFrame(
        {
            "deal_id": pd.Series(ids, dtype="string"),
            "pipeline": pd.Series(["P"] * len(ids), dtype="string"),
            "owner": pd.Series(["o"] * len(ids), dtype="string"),
            "amount": 100.0,
            "created_at": pd.Series([T0] * len(ids), dtype="datetime64[ns, UTC]"),
        }
    )
    sc = pd.DataFrame(
        {
            "deal_id": pd.Series([d for d, _, _ in stages], dtype="string"),
            "stage": pd.Series([s for _, s, _ in stages], dtype="string"),
            "changed_at": pd.Series([day(n) for _, _, n in stages], dtype="datetime64[ns, UTC]"),
        }
    )
    acts = acts + [("marker", end_day)]
    ac = pd.DataFrame(
        {
            "deal_id": pd.Series([d for d, _ in acts], dtype="string"),
            "type": pd.Series(["call"] * len(acts), dtype="string"),
            "occurred_at": pd.Series([day(n) for _, n in acts], dtype="datetime64[ns, UTC]"),
        }
    )
    fc = pd.DataFrame(
        {
            "deal_id": pd.Series([], dtype="string"),
            "field": pd.Series([], dtype="string"),
            "value": pd.Series([], dtype="string"),
            "changed_at": pd.Series([], dtype="datetime64[ns, UTC]"),
        }
    )
    return DealHistory(deals, sc, ac, fc, {"P": PIPE})


def points(*rows: tuple[str, float]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "deal_id": pd.Series([d for d, _ in rows], dtype="string"),
            "as_of": pd.Series([day(n) for _, n in rows], dtype="datetime64[ns, UTC]"),
        }
    )


def test_cold_label_follows_each_spec_rule() -> None:
    h = history(
        stages=[
            ("won", "Lead", 0), ("won", "Closed Won", 15),
            ("lost", "Lead", 0), ("lost", "Closed Lost", 15),
            ("silent", "Lead", 0),
            ("advance", "Lead", 0), ("advance", "Demo", 12),
            ("back", "Demo", 0), ("back", "Lead", 12),
            ("busy", "Lead", 0),
            ("busylost", "Lead", 0), ("busylost", "Closed Lost", 18),
        ],
        acts=[("busy", 20), ("busylost", 13), ("won", 5)],
        end_day=100,
    )
    pts = points(
        ("won", 10), ("lost", 10), ("silent", 10), ("advance", 10), ("back", 10), ("busy", 10),
        ("busylost", 10),
    )
    got = cold_label(h, pts, horizon_days=14).tolist()
    # won inside: not cold; lost inside: cold; silent 14 days: cold; advance without activity: not
    # cold; a move back is not progress: cold; activity on day 20 is in (10, 24]: not cold;
    # a called deal that is then lost in the window: cold.
    assert got == [0.0, 1.0, 1.0, 0.0, 1.0, 0.0, 1.0]


def test_a_deal_without_stage_changes_is_in_its_first_stage() -> None:
    # Before its first stage change a deal is in the pipeline's first stage (features.stages): its first
    # recorded change to that stage is no progress, a change to the second stage is.
    h = history(stages=[("late", "Lead", 12), ("skip", "Demo", 12)], acts=[], end_day=100)
    assert cold_label(h, points(("late", 5), ("skip", 5)), horizon_days=14).tolist() == [1.0, 0.0]


def test_activity_outside_window_does_not_count() -> None:
    h = history(stages=[("d", "Lead", 0)], acts=[("d", 10), ("d", 25)], end_day=100)
    # The activity at exactly t is not "after t"; the one at day 25 is after t+H.
    assert cold_label(h, points(("d", 10)), horizon_days=14).tolist() == [1.0]
    assert cold_label(h, points(("d", 11)), horizon_days=14).tolist() == [0.0]


def test_window_past_the_end_is_censored_unless_decided() -> None:
    h = history(
        stages=[("open", "Lead", 0), ("lost", "Lead", 0), ("lost", "Closed Lost", 33),
                ("busy", "Lead", 0)],
        acts=[("busy", 32)],
        end_day=35,
    )
    got = cold_label(h, points(("open", 30), ("lost", 30), ("busy", 30)), horizon_days=14)
    assert pd.isna(got.iloc[0])
    assert got.iloc[1] == 1.0
    # Activity is not enough to decide: a loss could still follow before t+H.
    assert pd.isna(got.iloc[2])


def test_end_parameter_hides_later_events() -> None:
    h = history(stages=[("d", "Lead", 0), ("d", "Closed Won", 40)], acts=[], end_day=100)
    pts = points(("d", 10))
    assert won_label(h, pts).tolist() == [1.0]
    assert pd.isna(won_label(h, pts, end=day(30)).iloc[0])
    assert cold_label(h, pts, end=day(30)).tolist() == [1.0]
    assert pd.isna(cold_label(h, pts, end=day(20)).iloc[0])


def test_won_label_uses_last_close_and_open_is_not_a_loss() -> None:
    h = history(
        stages=[
            ("reopened", "Lead", 0), ("reopened", "Closed Lost", 5), ("reopened", "Demo", 8),
            ("reopened", "Closed Won", 20),
            ("open", "Lead", 0), ("open", "Demo", 10),
            ("lost", "Lead", 0), ("lost", "Closed Lost", 9),
        ],
        acts=[],
        end_day=50,
    )
    got = won_label(h, points(("reopened", 1), ("open", 1), ("lost", 1)))
    assert got.iloc[0] == 1.0
    assert pd.isna(got.iloc[1])
    assert got.iloc[2] == 0.0


@pytest.mark.parametrize("horizon", [7, 14, 30])
def test_labels_keep_point_order_and_index(horizon: int) -> None:
    h = history(stages=[("a", "Lead", 0), ("b", "Lead", 0)], acts=[("a", 3)], end_day=100)
    pts = points(("b", 1), ("a", 1), ("b", 50)).set_index(pd.Index([7, 3, 5]))
    got = cold_label(h, pts, horizon_days=horizon)
    assert list(got.index) == [7, 3, 5]
    assert got.tolist() == [1.0, 0.0, 1.0]
