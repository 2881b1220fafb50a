"""Pipeline health on a small hand-written history; every expected figure is worked out by hand below."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from features.health import deal_states, pipeline_health, stale_thresholds
from features.history import DealHistory, PipelineSpec

SINCE, UNTIL = "2024-01-01", "2024-01-31"


def _t(values: list[str]) -> pd.Series:
    return pd.to_datetime(pd.Series(values), utc=True)


def make_history(extra_stage_changes: list[tuple[str, str, str]] = ()) -> DealHistory:  # type: ignore[assignment]
    """Pipeline P: A → B → C, Won / Lost; A is stale after 5 days. Pipeline Q uses the name rule."""
    deals = pd.DataFrame(
        {
            "deal_id": ["d1", "d2", "d3", "d4", "d5", "d6", "d7", "d8"],
            "pipeline": ["P", "P", "P", "P", "P", "P", "P", "Q"],
            "owner": ["ann", "bob", "ann", "cat", "ann", "bob", "bob", "dan"],
            "team": ["East", "West", "West", "East", None, "West", "West", "East"],
            "amount": [100.0, 200.0, 300.0, 50.0, 400.0, 70.0, 999.0, 80.0],
            "created_at": _t(["2023-12-01", "2024-01-05", "2024-01-02", "2024-01-10", "2023-11-01",
                              "2024-01-03", "2024-02-01", "2024-01-01"]),
            "expected_close_date": _t(["2024-02-01"] * 8),
        }
    ).astype({"deal_id": "string", "pipeline": "string", "owner": "string", "team": "string"})
    rows = [
        ("d1", "A", "2023-12-01"), ("d1", "B", "2023-12-10"), ("d1", "Won", "2024-01-10"),
        ("d2", "A", "2024-01-05"), ("d2", "B", "2024-01-08"), ("d2", "Lost", "2024-01-20"),
        ("d3", "A", "2024-01-02"), ("d3", "B", "2024-01-04"),
        ("d4", "A", "2024-01-10"),
        ("d5", "A", "2023-11-01"), ("d5", "B", "2023-11-05"), ("d5", "C", "2023-11-10"),
        ("d5", "Won", "2023-12-01"),
        ("d6", "A", "2024-01-03"), ("d6", "Won", "2024-02-05"),
        ("d7", "A", "2024-02-01"),
        ("d8", "X", "2024-01-01"), ("d8", "Closed Won", "2024-01-11"),
        *extra_stage_changes,
    ]
    stage_changes = pd.DataFrame(rows, columns=["deal_id", "stage", "changed_at"])
    stage_changes["changed_at"] = pd.to_datetime(stage_changes["changed_at"], utc=True)
    stage_changes = stage_changes.astype({"deal_id": "string", "stage": "string"})
    stage_changes["event_id"] = pd.Series(pd.NA, index=stage_changes.index, dtype="string")
    stage_changes = stage_changes.sort_values(["deal_id", "changed_at"], kind="stable").reset_index(drop=True)
    activities = pd.DataFrame(
        {"deal_id": pd.Series([], dtype="string"), "type": pd.Series([], dtype="string"),
         "direction": pd.Series([], dtype="string"), "occurred_at": _t([]),
         "event_id": pd.Series([], dtype="string")}
    )
    field_changes = pd.DataFrame(
        {
            "deal_id": ["d3", "d3", "d3"],
            "field": ["amount", "owner", "amount"],
            "value": ["500", "bob", "900"],  # the 900 comes after `until` and must be ignored
            "changed_at": _t(["2024-01-15", "2024-01-20", "2024-02-10"]),
        }
    ).astype({"deal_id": "string", "field": "string", "value": "string"})
    field_changes["event_id"] = pd.Series(pd.NA, index=field_changes.index, dtype="string")
    pipelines = {
        "P": PipelineSpec("P", ("A", "B", "C"), ("Won",), ("Lost",), {"A": 5.0}),
        "Q": PipelineSpec("Q", ("X",)),
    }
    return DealHistory(deals, stage_changes, activities, field_changes, pipelines)


def test_pipeline_figures_match_hand_computation() -> None:
    result = pipeline_health(make_history(), SINCE, UNTIL, pipeline="P")
    p = result["pipelines"]["P"]
    # Open at until: d3 (amount 500 after its change), d4 (50), d6 (70, wins only after until).
    assert p["open_deals"] == 3
    assert p["avg_deal_size"] == pytest.approx(620 / 3)
    # Closed in the window: d1 won, d2 lost (d5 closed before the window).
    assert (p["won_deals"], p["lost_deals"]) == (1, 1)
    assert p["win_rate"] == pytest.approx(0.5)
    assert p["avg_cycle_days"] == pytest.approx(40.0)  # d1: 2023-12-01 → 2024-01-10
    assert p["sales_velocity"] == pytest.approx(3 * (620 / 3) * 0.5 / 40)
    assert list(result["pipelines"]) == ["P"]  # the filter keeps Q out
    assert result["overall"]["open_deals"] == 3


def test_funnel_counts_entries_in_window_and_their_next_move() -> None:
    funnel = pipeline_health(make_history(), SINCE, UNTIL, pipeline="P")["pipelines"]["P"]["funnel"]
    by_stage = {row["stage"]: row for row in funnel}
    assert [row["stage"] for row in funnel] == ["A", "B", "C"]
    # A entered in the window by d2, d3, d4, d6; d2 and d3 moved on to B; d6's win is after until.
    assert (by_stage["A"]["reached"], by_stage["A"]["moved_on"], by_stage["A"]["lost_here"]) == (4, 2, 0)
    assert by_stage["A"]["moved_on_share"] == pytest.approx(0.5)
    # B entered by d2 (then lost) and d3 (still there); d1 entered B before the window.
    assert (by_stage["B"]["reached"], by_stage["B"]["moved_on"], by_stage["B"]["lost_here"]) == (2, 0, 1)
    assert by_stage["B"]["lost_share"] == pytest.approx(0.5)
    assert by_stage["C"]["reached"] == 0 and by_stage["C"]["moved_on_share"] is None


def test_a_deal_back_in_a_stage_counts_once_by_its_first_entry() -> None:
    # d4: A (Jan 10) -> B (Jan 12) -> back to A (Jan 14) -> Lost (Jan 16), all in the window
    history = make_history([("d4", "B", "2024-01-12"), ("d4", "A", "2024-01-14"),
                            ("d4", "Lost", "2024-01-16")])
    funnel = pipeline_health(history, SINCE, UNTIL, pipeline="P")["pipelines"]["P"]["funnel"]
    by_stage = {row["stage"]: (row["reached"], row["moved_on"], row["lost_here"]) for row in funnel}
    # A: d2, d3, d4, d6 reached it; d4 counts once, by its first entry, which moved on to B (its second
    # entry, lost next, does not count)
    assert by_stage["A"] == (4, 3, 0)
    # B: d2 (then lost), d3 (still there), d4 (then back to A: neither moved on nor lost)
    assert by_stage["B"] == (3, 0, 1)


def test_stalled_deals_equally_long_in_stage_are_listed_by_deal_id() -> None:
    # d6 moves to B on Jan 4, as d3 did: both 27 days in B at until, over B's learned 25.8
    history = make_history([("d6", "B", "2024-01-04")])
    stalled = pipeline_health(history, SINCE, UNTIL, pipeline="P")["pipelines"]["P"]["stalled_deals"]
    assert [(s["deal_id"], s["days_in_stage"]) for s in stalled] == [
        ("d3", pytest.approx(27.0)), ("d6", pytest.approx(27.0)), ("d4", pytest.approx(21.0))]


def test_stalled_uses_configured_then_learned_thresholds() -> None:
    history = make_history()
    thresholds = stale_thresholds(history, UNTIL)
    assert thresholds[("P", "A")] == 5.0  # configured
    # Learned for B from won deals: d1 spent 31 days, d5 5 days; 80th percentile = 5 + 0.8 * 26.
    assert thresholds[("P", "B")] == pytest.approx(25.8)
    assert thresholds[("P", "C")] == pytest.approx(21.0)  # only d5, 21 days
    stalled = pipeline_health(history, SINCE, UNTIL, pipeline="P")["pipelines"]["P"]["stalled_deals"]
    got = {s["deal_id"]: (s["stage"], s["days_in_stage"], s["threshold_days"]) for s in stalled}
    assert got == {
        "d6": ("A", pytest.approx(28.0), 5.0),
        "d3": ("B", pytest.approx(27.0), pytest.approx(25.8)),
        "d4": ("A", pytest.approx(21.0), 5.0),
    }
    assert [s["deal_id"] for s in stalled] == ["d6", "d3", "d4"]  # longest-stalled first


def test_overall_spans_pipelines() -> None:
    overall = pipeline_health(make_history(), SINCE, UNTIL)["overall"]
    # Adds Q's d8, won in the window after 10 days.
    assert overall["open_deals"] == 3
    assert overall["win_rate"] == pytest.approx(2 / 3)
    assert overall["avg_cycle_days"] == pytest.approx(25.0)


def test_by_team_and_owner() -> None:
    result = pipeline_health(make_history(), SINCE, UNTIL, pipeline="P", by="team")
    east, west = result["by_team"]["East"], result["by_team"]["West"]
    assert (east["open_deals"], east["avg_deal_size"], east["win_rate"]) == (1, 50.0, 1.0)
    assert east["sales_velocity"] == pytest.approx(1 * 50 * 1.0 / 40)
    assert (west["open_deals"], west["avg_deal_size"], west["win_rate"]) == (2, 285.0, 0.0)
    assert west["avg_cycle_days"] is None and west["sales_velocity"] is None
    assert (east["stalled_count"], west["stalled_count"]) == (1, 2)
    assert result["by_team"]["(no team)"]["win_rate"] is None  # d5 closed before the window

    owners = pipeline_health(make_history(), SINCE, UNTIL, pipeline="P", by="owner")["by_owner"]
    # d3 moved from ann to bob on 2024-01-20: bob holds d3 and d6 open, and lost d2.
    assert owners["bob"]["open_deals"] == 2 and owners["bob"]["lost_deals"] == 1
    assert owners["ann"]["open_deals"] == 0 and owners["ann"]["won_deals"] == 1


def test_events_after_until_change_nothing_and_json_is_nan_free() -> None:
    before = pipeline_health(make_history(), SINCE, UNTIL, by="owner")
    later = make_history([("d3", "Lost", "2024-02-02"), ("d4", "B", "2024-03-01")])
    after = pipeline_health(later, SINCE, UNTIL, by="owner")
    assert before == after
    text = json.dumps(before, allow_nan=False)  # raises on NaN or inf
    assert '"since": "2024-01-01T00:00:00+00:00"' in text


def test_reopened_deal_is_open_and_empty_window_is_undefined() -> None:
    history = make_history([("d2", "B", "2024-01-25")])  # d2 lost on 01-20, reopened on 01-25
    states = deal_states(history, UNTIL).set_index("deal_id")
    assert states.loc["d2", "status"] == "open"
    p = pipeline_health(history, SINCE, UNTIL, pipeline="P")["pipelines"]["P"]
    assert p["open_deals"] == 4 and p["win_rate"] == 1.0
    empty = pipeline_health(make_history(), "2022-01-01", "2022-02-01", pipeline="P")["pipelines"]["P"]
    assert empty["open_deals"] == 0 and empty["avg_deal_size"] is None and empty["win_rate"] is None
    with pytest.raises(ValueError, match="after until"):
        pipeline_health(make_history(), UNTIL, SINCE)



def test_the_learned_limits_count_the_deals_won_as_the_deal_state_says() -> None:
    """`won_visits` decides "won as of t" from its own ordered changes (the last one's outcome); it must be
    the deal state of `features.stages` (`deal_states_at`), same-time order included, whatever order the
    changes come in. With d1 reopened (to B on 2024-01-20), d2 lost and won at one instant (closing
    stages tie: by name, Won last) and d3 won at the instant it entered B (closing stages after open
    ones): at `UNTIL` d2, d3, d5 and d8 are won (d6 only on 2024-02-05), and exactly they count; on
    2024-01-15 d1 still counted."""
    from features.health import won_visits
    from features.stages import deal_states_at, order_stage_changes

    extra = [("d1", "B", "2024-01-20"), ("d2", "Won", "2024-01-20"), ("d3", "Won", "2024-01-04")]
    history = make_history(extra)
    # as a validated history keeps them: in the same-time order
    history.stage_changes = order_stage_changes(history.stage_changes, history.deals, history.pipelines)
    pipeline_of = dict(zip(history.deals["deal_id"], history.deals["pipeline"], strict=True))
    changes = history.stage_changes.assign(pipeline=history.stage_changes["deal_id"].map(pipeline_of))
    changes = changes.iloc[::-1].reset_index(drop=True)  # every tie the other way round
    for as_of, won in [(UNTIL, {"d2", "d3", "d5", "d8"}), ("2024-01-15", {"d1", "d3", "d5", "d8"})]:
        t = pd.Timestamp(as_of, tz="UTC")
        created = history.deals[history.deals["created_at"] <= t]
        state = deal_states_at(history, created[["deal_id"]].assign(as_of=t))
        assert set(created["deal_id"][state == "won"]) == won
        mine = changes["deal_id"].isin(created["deal_id"])
        assert set(won_visits(changes[mine], history.pipelines, t)["deal_id"]) == won, as_of
