"""Training without MLflow: metrics side by side, thin data, and point-in-time batch scores."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from features.history import DealHistory
from training.data import read_history, write_history
from training.score import score_batch
from training.simulate import simulate_history
from training.train import RunResult, TrainConfig, closed_deal_count, head_rows, train


@pytest.fixture(scope="module")
def history() -> DealHistory:
    return simulate_history(700, seed=11)


@pytest.fixture(scope="module")
def trained(history: DealHistory) -> RunResult:
    return train(history, TrainConfig(seed=1))


def test_run_reports_model_and_both_baselines_per_head(trained: RunResult) -> None:
    table = trained.metrics_table()
    for head in ("cold", "close"):
        models = set(table.loc[table["head"] == head, "model"])
        assert {"lightgbm", "stage_prior", "logistic"} <= models
    flat = trained.flat_metrics()
    assert "cold.lightgbm.roc_auc" in flat and "close.stage_prior.ece" in flat
    cold = trained.metrics["cold"]
    # Activity recency carries the cold signal; the stage alone cannot rank as well.
    assert cold["lightgbm"]["roc_auc"] > cold["stage_prior"]["roc_auc"]
    assert not trained.thin_data
    assert trained.served == {"cold": "lightgbm", "close": "lightgbm"}


def test_progress_callback_sees_the_stages(history: DealHistory) -> None:
    seen: list[tuple[str, float]] = []
    small = history.subset(history.deals["deal_id"].iloc[:200])
    train(small, TrainConfig(), progress=lambda stage, fraction: seen.append((stage, fraction)))
    fractions = [f for _, f in seen]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0


def test_thirty_closed_deals_still_train_and_say_so() -> None:
    thin = simulate_history(34, seed=5)
    assert closed_deal_count(thin) <= 40
    result = train(thin, TrainConfig())
    assert result.thin_data
    assert f"Only {result.n_closed_deals} closed deals" in result.data_note
    assert "rough" in result.data_note
    # Too little data for LightGBM: the cold head serves the stage prior, so a deal's cold risk is the
    # (shrunk) rate of its pipeline and stage, the same for every deal sitting there. The close head
    # keeps its competing-risks model (it learns from the open deals too; tests/training/test_little_data).
    assert result.served == {"cold": "stage_prior", "close": "lightgbm"}
    assert result.bundle.close.kind == "competing_risks"
    scores = score_batch(thin, result.bundle)
    assert len(scores) > 0
    assert scores["close_probability"].between(0, 1).all() and scores["close_probability_90d"].notna().all()
    for column, head in (("cold_risk", result.bundle.cold),):
        assert head.kind == "stage_prior" and head.calibrator is None
        rates = head.prior.stage_rates_
        keys = zip(scores["pipeline"].astype(str), scores["stage"].astype(str), strict=True)
        expected = [rates.get(k, head.prior.pipeline_rates_[k[0]]) for k in keys]
        np.testing.assert_allclose(scores[column].to_numpy(), expected, rtol=1e-12)
        assert scores.groupby(["pipeline", "stage"], observed=True)[column].nunique().max() == 1


def test_scores_from_a_folder_cut_at_t_equal_the_full_folder_as_of_t(
    history: DealHistory, trained: RunResult, tmp_path: Path
) -> None:
    t = history.end_time - pd.Timedelta(days=100)
    full_dir = write_history(history, tmp_path / "full", fmt="csv")
    cut_dir = write_history(history.cut(t), tmp_path / "cut", fmt="csv")
    from_full = score_batch(read_history(full_dir), trained.bundle, as_of=t, model_version="x")
    from_cut = score_batch(read_history(cut_dir), trained.bundle, as_of=t, model_version="x")
    assert len(from_full) > 20
    pd.testing.assert_frame_equal(from_full, from_cut)


def test_score_batch_columns_and_points(history: DealHistory, trained: RunResult) -> None:
    t = history.end_time - pd.Timedelta(days=30)
    scores = score_batch(history, trained.bundle, as_of=t, model_version="7")
    assert list(scores.columns[:13]) == [
        "deal_id", "as_of", "cold_risk", "close_probability", "close_probability_90d", "slip_risk",
        "likely_close_date", "risk_band", "expected_value", "model_version", "reason_1", "reason_2",
        "reason_3",
    ]
    # the timing scores are probabilities, consistent with each other, and a date after as_of
    p90, close = scores["close_probability_90d"], scores["close_probability"]
    assert ((p90 >= 0) & (p90 <= close + 1e-9)).all()
    slip = scores["slip_risk"].dropna()
    assert len(slip) > 0 and ((slip >= 0) & (slip <= 1)).all()
    past_due = scores["expected_close_date"] <= scores["as_of"]
    assert scores.loc[past_due, "slip_risk"].isna().all()
    likely = scores["likely_close_date"].dropna()
    assert len(likely) > 0 and (likely >= scores.loc[likely.index, "as_of"].dt.floor("D")).all()
    assert (scores["model_version"] == "7").all()
    assert set(scores["risk_band"]) <= {"high", "medium", "low"}
    assert (scores["reason_1"].str.len() > 0).all()
    np.testing.assert_allclose(scores["expected_value"], scores["amount"] * scores["close_probability"])
    points = scores[["deal_id", "as_of"]].iloc[::-1].reset_index(drop=True)
    again = score_batch(history, trained.bundle, points=points, model_version="7")
    assert list(again["deal_id"]) == list(points["deal_id"])
    np.testing.assert_allclose(again["cold_risk"].to_numpy(), scores["cold_risk"].to_numpy()[::-1])


def test_backtest_reports_every_fold_and_the_forecast_error(history: DealHistory) -> None:
    from training.backtest import backtest, make_folds

    folds = make_folds(history, n_folds=2, fold_days=45)
    assert folds[0].end == folds[1].start and folds[1].end == history.end_time
    result = backtest(history, TrainConfig(), n_folds=2, fold_days=45)
    assert set(result.metrics["fold"]) == {1, 2}
    for head in ("cold", "close"):
        models = set(result.metrics.loc[result.metrics["head"] == head, "model"])
        assert {"lightgbm", "stage_prior", "logistic"} <= models
    forecast = result.forecast
    assert set(forecast["fold"]) == {1, 2}
    assert set(forecast["pipeline"]) == set(history.deals["pipeline"])
    assert (forecast["p10"] <= forecast["p50"]).all() and (forecast["p50"] <= forecast["p90"]).all()
    assert (forecast["covered"] == (forecast["p10"] <= forecast["actual"])
            & (forecast["actual"] <= forecast["p90"])).all()
    # only months that ended inside the data are judged
    assert (pd.PeriodIndex(forecast["period"], freq="M").end_time.tz_localize("UTC")
            <= history.end_time + pd.Timedelta(days=1)).all()
    # the actual amount is what each pipeline won in the month, by any deal, new ones included
    row = forecast.iloc[0]
    won_at = history.stage_changes[history.stage_changes["stage"].isin(
        [s for spec in history.pipelines.values() for s in spec.won])]
    won_at = won_at.merge(history.deals[["deal_id", "pipeline"]], on="deal_id")
    in_month = won_at[(won_at["pipeline"] == row["pipeline"])
                      & (won_at["changed_at"].dt.strftime("%Y-%m") == row["period"])
                      & (won_at["changed_at"] > result.folds[0].start)]
    assert (row["actual"] > 0) == (len(in_month) > 0)
    figures = result.forecast_figures()
    assert 0 <= figures["forecast_coverage_p10_p90"] <= 1 and figures["forecast_wape_month_1"] >= 0
    summary = result.summary()
    cold = dict(zip(summary.loc[summary["head"] == "cold", "model"],
                    summary.loc[summary["head"] == "cold", "roc_auc"], strict=True))
    assert cold["lightgbm"] > cold["stage_prior"]


def test_cold_head_calibration_undoes_a_biased_model(history: DealHistory) -> None:
    # Positives weighted 4x: the booster ranks as before but its raw scores sit far above the observed
    # rate. The map fitted on the calibration window (Platt at this size) must bring the served scores
    # on the later test window back to it; with the map removed or broken the ECE is several times this.
    biased = train(history, TrainConfig(seed=1, lightgbm_params={"scale_pos_weight": 4.0}))
    cold = biased.metrics["cold"]["lightgbm"]
    assert cold["n"] > 300
    assert cold["ece"] <= 0.09, cold["ece"]  # 0.06 here; the raw scores are far off
    assert biased.bundle.cold.calibrator.method == "platt"


def test_a_head_with_one_outcome_before_the_split_learns_from_every_labelled_row_outside_the_test() -> None:
    """Only deals that stayed warm before the calibration window: the head also learns from the
    calibration window's labelled snapshot; unlabelled snapshots and the test window stay out."""
    frame = pd.DataFrame({"window": ["train", "train", "calibration", "calibration", "test"],
                          "cold": [0.0, 0.0, 1.0, np.nan, 1.0]})
    train_rows, cal_rows, test_rows = head_rows(frame, "cold")
    assert list(train_rows.index) == [0, 1, 2]
    assert list(cal_rows.index) == [2]
    assert list(test_rows.index) == [4]
    frame.loc[1, "cold"] = 1.0  # both outcomes before the split: the train window alone
    assert list(head_rows(frame, "cold")[0].index) == [0, 1]
