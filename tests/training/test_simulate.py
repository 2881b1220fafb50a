"""The simulator: seeded, valid, and showing what real CRMs show (but not its hidden drivers)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from features.history import DealHistory
from features.stages import stage_outcomes
from training.simulate import PIPELINES, simulate_history

N_DEALS = 1500
END = pd.Timestamp("2025-12-31", tz="UTC")
FRAMES = ("deals", "stage_changes", "activities", "field_changes")


@pytest.fixture(scope="module")
def history() -> DealHistory:
    return simulate_history(N_DEALS, seed=0, start="2024-01-01", end="2025-12-31")


def _positions(history: DealHistory) -> pd.DataFrame:
    """Stage changes with the deal's pipeline, the stage's open position (NaN if closing) and outcome."""
    sc = history.stage_changes.merge(history.deals[["deal_id", "pipeline"]], on="deal_id")
    lookup = {(p, s): i for p, spec in history.pipelines.items() for i, s in enumerate(spec.stages)}
    keys = pd.Series(list(zip(sc["pipeline"], sc["stage"], strict=True)), index=sc.index)
    sc["position"] = keys.map(lookup).astype("float64")
    sc["outcome"] = stage_outcomes(sc["pipeline"], sc["stage"], history.pipelines)
    return sc


def _final_outcome(history: DealHistory) -> pd.Series:
    sc = _positions(history)
    return sc.groupby("deal_id")["outcome"].last().reindex(history.deals["deal_id"]).fillna("open")


def test_same_seed_gives_identical_frames_and_another_seed_does_not() -> None:
    a = simulate_history(400, seed=7)
    b = simulate_history(400, seed=7)
    c = simulate_history(400, seed=8)
    for name in FRAMES:
        pd.testing.assert_frame_equal(getattr(a, name), getattr(b, name))
    assert a.pipelines == b.pipelines
    assert not a.deals.equals(c.deals)
    assert not a.activities.equals(c.activities)


def test_output_passes_validation_again_and_has_event_ids(history: DealHistory) -> None:
    again = DealHistory.from_frames(
        history.deals, history.stage_changes, history.activities, history.field_changes,
        pipelines=history.pipelines,
    )
    assert again.n_deals() == N_DEALS
    for name in FRAMES[1:]:
        frame = getattr(history, name)
        assert frame["event_id"].notna().all()
        assert frame["event_id"].is_unique
    assert history.deals["deal_id"].is_unique
    assert (history.deals["amount"] >= 0).all()


def test_csv_round_trip_through_the_reader(tmp_path: Path) -> None:
    from training.data import read_history, write_history

    small = simulate_history(200, seed=3)
    write_history(small, tmp_path / "hist", fmt="csv")
    back = read_history(tmp_path / "hist")
    assert set(back.pipelines) == set(PIPELINES)
    assert back.pipelines["Enterprise"].lost == ("Lost", "No Decision")
    for name in FRAMES:
        assert len(getattr(back, name)) == len(getattr(small, name))
    pd.testing.assert_series_equal(back.activities["occurred_at"], small.activities["occurred_at"])


def test_at_least_three_pipelines_with_their_own_stages(history: DealHistory) -> None:
    used = set(history.deals["pipeline"])
    assert len(used) >= 3 and used <= set(history.pipelines)
    stage_lists = {spec.stages for spec in history.pipelines.values()}
    won_names = {spec.won for spec in history.pipelines.values()}
    assert len(stage_lists) == len(history.pipelines) >= 3
    assert len(won_names) >= 3
    assert all(spec.stale_after_days for spec in history.pipelines.values())
    # Speed and size differ: Enterprise deals are larger and take longer than SMB deals.
    sizes = history.deals.groupby("pipeline")["amount"].median()
    assert sizes["Enterprise"] > 5 * sizes["SMB"]
    sc = _positions(history)
    closed = sc[sc["outcome"] != "open"].drop_duplicates("deal_id", keep="last")
    closed = closed.merge(history.deals[["deal_id", "created_at"]], on="deal_id")
    cycle = (closed["changed_at"] - closed["created_at"]).dt.days.groupby(closed["pipeline"]).median()
    assert cycle["Enterprise"] > 2 * cycle["SMB"]


def test_no_hidden_quantities_in_the_output(history: DealHistory) -> None:
    hidden = ("quality", "skill", "engagement", "planned", "zombie", "stall", "diligence", "won", "fade")
    for name in FRAMES:
        for column in getattr(history, name).columns:
            assert not any(word in column.lower() for word in hidden), (name, column)
    assert set(history.attribute_columns) == {"source", "industry"}
    assert set(history.deals["source"]) == {"inbound", "outbound", "partner"}


def test_nothing_after_the_end_and_deals_still_open_there(history: DealHistory) -> None:
    assert history.end_time <= END
    assert history.deals["created_at"].min() < END - pd.Timedelta(days=600)
    outcome = _final_outcome(history)
    n_open = int((outcome == "open").sum())
    assert 0.03 * N_DEALS < n_open < 0.5 * N_DEALS
    # Open deals include recent ones that are still active in the last month of data.
    open_ids = outcome[outcome == "open"].index
    recent = history.activities[history.activities["occurred_at"] > END - pd.Timedelta(days=30)]
    assert recent["deal_id"].isin(open_ids).sum() > 0


def test_won_rate_is_plausible(history: DealHistory) -> None:
    outcome = _final_outcome(history)
    won, lost = int((outcome == "won").sum()), int((outcome == "lost").sum())
    assert 0.1 <= won / (won + lost) <= 0.6


def test_stage_regressions_and_skips_are_present(history: DealHistory) -> None:
    sc = _positions(history)
    open_moves = sc[sc["position"].notna()].copy()
    open_moves["previous"] = open_moves.groupby("deal_id")["position"].shift()
    step = open_moves["position"] - open_moves["previous"]
    regressions = open_moves.loc[step < 0, "deal_id"].nunique()
    skips = open_moves.loc[step > 1, "deal_id"].nunique()
    assert regressions > 0.01 * N_DEALS
    assert skips > 0.01 * N_DEALS
    # Every deal starts in the first stage of its pipeline at its creation time.
    first = sc.drop_duplicates("deal_id").merge(history.deals[["deal_id", "created_at"]], on="deal_id")
    assert (first["position"] == 0).all()
    assert (first["changed_at"] == first["created_at"]).all()


def test_close_dates_slip_amounts_change_and_owners_move(history: DealHistory) -> None:
    fc = history.field_changes
    counts = fc["field"].value_counts()
    assert counts.get("expected_close_date", 0) > 0.1 * N_DEALS
    assert counts.get("amount", 0) > 0.05 * N_DEALS
    assert counts.get("owner", 0) > 0
    slips = fc[fc["field"] == "expected_close_date"].merge(
        history.deals[["deal_id", "expected_close_date"]], on="deal_id"
    )
    new_date = pd.to_datetime(slips["value"], utc=True)
    assert (new_date > slips["expected_close_date"]).mean() > 0.95  # slips push the date out
    owners = set(history.deals["owner"])
    assert set(fc.loc[fc["field"] == "owner", "value"]) <= owners
    amounts = pd.to_numeric(fc.loc[fc["field"] == "amount", "value"])
    assert (amounts >= 0).all()


def test_activity_thins_out_before_a_loss(history: DealHistory) -> None:
    sc = _positions(history)
    closes = sc[sc["outcome"] != "open"].drop_duplicates("deal_id", keep="last")[
        ["deal_id", "changed_at", "outcome"]
    ]
    act = history.activities.merge(closes, on="deal_id")
    window = (act["occurred_at"] > act["changed_at"] - pd.Timedelta(days=14)) & (
        act["occurred_at"] <= act["changed_at"]
    )
    per_deal = act[window].groupby("deal_id").size().reindex(closes["deal_id"]).fillna(0)
    by_outcome = per_deal.groupby(closes.set_index("deal_id")["outcome"]).mean()
    assert by_outcome["won"] > 3 * by_outcome["lost"]


def test_owners_differ_in_win_rate(history: DealHistory) -> None:
    outcome = _final_outcome(history)
    closed = outcome[outcome != "open"]
    owner = history.deals.set_index("deal_id")["owner"].reindex(closed.index)
    rates = (closed == "won").groupby(owner).mean()
    assert rates.max() - rates.min() > 0.2
    assert np.isfinite(rates).all()


def test_simulate_command_writes_the_folder_and_prints_json(tmp_path: Path) -> None:
    from dealrisk.cli import app

    out = tmp_path / "sim"
    result = CliRunner().invoke(
        app, ["simulate", "--out", str(out), "--deals", "150", "--seed", "4", "--format", "parquet", "--json"]
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["totals"]["deals"] == 150
    assert summary["totals"]["won"] + summary["totals"]["lost"] + summary["totals"]["open"] == 150
    assert (out / "deals.parquet").exists() and (out / "pipelines.yaml").exists()
    assert summary["events"]["activities"] > 0

    bad = CliRunner().invoke(app, ["simulate", "--out", str(out), "--format", "xlsx"])
    assert bad.exit_code != 0
    assert "csv or parquet" in bad.output


def _won_cycle_days(history: DealHistory) -> pd.Series:
    sc = _positions(history)
    won_at = sc[sc["outcome"] == "won"].groupby("deal_id")["changed_at"].last()
    created = history.deals.set_index("deal_id")["created_at"]
    return (won_at - created.reindex(won_at.index)) / pd.Timedelta(days=1)


def test_cycle_scale_stretches_cycles_and_leaves_more_deals_open() -> None:
    normal = simulate_history(1000, seed=5, start="2024-01-01", end="2025-12-31")
    slow = simulate_history(1000, seed=5, start="2024-01-01", end="2025-12-31", cycle_scale=3.0)
    again = simulate_history(1000, seed=5, start="2024-01-01", end="2025-12-31", cycle_scale=1.0)
    pd.testing.assert_frame_equal(normal.stage_changes, again.stage_changes)
    # Deals created in the first year have had time to close in both histories: their won cycles
    # are about three times longer.
    early = normal.deals.loc[normal.deals["created_at"] < pd.Timestamp("2024-07-01", tz="UTC"), "deal_id"]
    ratio = _won_cycle_days(slow).reindex(early).median() / _won_cycle_days(normal).reindex(early).median()
    assert 2.3 < ratio < 3.7, ratio
    open_normal = int((_final_outcome(normal) == "open").sum())
    open_slow = int((_final_outcome(slow) == "open").sum())
    assert open_slow > 1.8 * open_normal, (open_slow, open_normal)


def test_cycle_scale_must_be_positive() -> None:
    with pytest.raises(ValueError, match="cycle_scale"):
        simulate_history(10, cycle_scale=0.0)
