"""`dealrisk train`, `score`, `backtest`, `compare`, `promote` through the real Typer app (CliRunner).

One small simulated history is written to a folder and trained on once per module; every test then runs
commands against that folder and the module's own MLflow store (passed as env to each invocation, since
the autouse fixture points the environment at a fresh, empty folder per test).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from cli_helpers import isolated_env, ok_json, run
from typer.testing import CliRunner

from dealrisk.cli import app
from features.history import DealHistory
from models.scoring import open_deal_points
from training.data import read_history, write_history
from training.simulate import simulate_history

AS_OF = "2025-06-01"
HEADS = ("cold", "close")
BASELINES = ("lightgbm", "stage_prior", "logistic")
UNREADABLE = re.compile(r"\b(unknown|nan|none|inf)\b", re.IGNORECASE)


@dataclass(frozen=True)
class Trained:
    data: Path
    env: dict[str, str]
    train: dict[str, Any]
    history: DealHistory


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Trained]:
    root = tmp_path_factory.mktemp("models-cli")
    env = isolated_env(root)
    data = write_history(simulate_history(500, seed=3), root / "data")
    result = run(env, "train", "--data", str(data), "--json")
    yield Trained(Path(data), env, ok_json(result), read_history(data))


def test_train_json_reports_every_model_per_head_a_version_and_a_data_note(trained: Trained) -> None:
    out = trained.train
    assert out["model_version"] == "1"
    assert out["champion"] is True  # the first version becomes @champion
    assert isinstance(out["data_note"], str) and out["data_note"]
    assert out["n_snapshots"] > 0
    for head in HEADS:
        for model in BASELINES:
            m = out["metrics"][head][model]
            assert 0.0 <= m["roc_auc"] <= 1.0 and 0.0 <= m["brier"] <= 1.0, (head, model, m)
            assert m["n"] > 0
        # on this seeded history the model must beat the CRM's stage probability
        assert out["metrics"][head]["lightgbm"]["roc_auc"] > out["metrics"][head]["stage_prior"]["roc_auc"]


def test_score_as_of_writes_only_deals_open_then_with_valid_scores(trained: Trained, tmp_path: Path) -> None:
    out_file = tmp_path / "scores.csv"
    summary = ok_json(
        run(
            trained.env,
            "score",
            "--data",
            str(trained.data),
            "--as-of",
            AS_OF,
            "--out",
            str(out_file),
            "--json",
        )
    )
    scores = pd.read_csv(out_file, dtype={"deal_id": str, "model_version": str})
    assert summary["rows"] == len(scores) > 0
    assert summary["model_version"] == "1"
    for column in [
        "deal_id",
        "as_of",
        "cold_risk",
        "close_probability",
        "risk_band",
        "expected_value",
        "model_version",
        "reason_1",
    ]:
        assert column in scores.columns
    assert scores["cold_risk"].between(0, 1).all() and scores["close_probability"].between(0, 1).all()
    assert set(scores["risk_band"]) <= {"high", "medium", "low"}
    assert (scores["model_version"] == "1").all()
    t = pd.Timestamp(AS_OF, tz="UTC")
    assert (pd.to_datetime(scores["as_of"], utc=True) == t).all()
    assert set(scores["deal_id"]) == set(open_deal_points(trained.history, t)["deal_id"])
    # and, checked row by row on the data: a deal created after t, and one whose every stage change
    # is at or before t ending in a won stage, are not scored
    deals, changes = trained.history.deals, trained.history.stage_changes
    later = deals.loc[deals["created_at"] > t, "deal_id"].astype(str)
    done_by_t = changes.groupby("deal_id", observed=True).filter(lambda g: g["changed_at"].max() <= t)
    won_names = {w for spec in trained.history.pipelines.values() for w in spec.won}
    won_by_t = done_by_t.groupby("deal_id", observed=True)["stage"].last().isin(won_names)
    assert len(later) > 0 and won_by_t.sum() > 0
    assert not set(later) & set(scores["deal_id"])
    assert not set(won_by_t[won_by_t].index.astype(str)) & set(scores["deal_id"])
    assert scores["expected_value"].ge(0).all()
    reasons = scores["reason_1"].dropna()
    assert len(reasons) == len(scores)
    assert not [r for r in reasons if UNREADABLE.search(r)]


def test_score_at_points_scores_exactly_those_points(trained: Trained, tmp_path: Path) -> None:
    deals = trained.history.deals["deal_id"].astype(str).head(3).tolist()
    points = pd.DataFrame(
        {"deal_id": deals, "as_of": ["2025-03-01T00:00:00Z", "2025-04-15", "2025-12-01T12:00:00+02:00"]}
    )
    points.to_csv(tmp_path / "points.csv", index=False)
    out_file = tmp_path / "points_scores.parquet"
    result = run(
        trained.env,
        "score",
        "--data",
        str(trained.data),
        "--at",
        str(tmp_path / "points.csv"),
        "--out",
        str(out_file),
    )
    assert result.exit_code == 0, result.output
    scores = pd.read_parquet(out_file)
    assert scores["deal_id"].astype(str).tolist() == deals
    assert pd.to_datetime(scores["as_of"], utc=True).tolist() == [
        pd.Timestamp("2025-03-01", tz="UTC"),
        pd.Timestamp("2025-04-15", tz="UTC"),
        pd.Timestamp("2025-12-01T10:00:00", tz="UTC"),
    ]
    assert scores["close_probability"].between(0, 1).all()
    # a deal already won or lost at its point has no cold risk (the next test)
    open_then = scores["outcome"] == "open"
    assert scores.loc[open_then, "cold_risk"].between(0, 1).all()
    assert scores.loc[~open_then, "cold_risk"].isna().all()
    texts = [str(t) for c in ("reason_1", "reason_2", "reason_3") for t in scores[c].dropna()]
    assert not [t for t in texts if UNREADABLE.search(t)]


def test_score_input_errors_exit_non_zero_and_say_what_to_fix(trained: Trained, tmp_path: Path) -> None:
    out_file = tmp_path / "never.csv"
    bad_time = run(
        trained.env, "score", "--data", str(trained.data), "--as-of", "yesterdayish", "--out", str(out_file)
    )
    assert bad_time.exit_code != 0
    assert (
        "--as-of" in bad_time.output and "yesterdayish" in bad_time.output and "ISO 8601" in bad_time.output
    )

    (tmp_path / "points.csv").write_text("deal,as_of\nD000001,2025-01-01\n")
    no_column = run(
        trained.env,
        "score",
        "--data",
        str(trained.data),
        "--at",
        str(tmp_path / "points.csv"),
        "--out",
        str(out_file),
    )
    assert no_column.exit_code != 0
    assert "deal_id" in no_column.output and "points.csv" in no_column.output

    both = run(trained.env, "score", "--data", str(trained.data), "--out", str(out_file))
    assert both.exit_code != 0 and "--as-of" in both.output and "--at" in both.output

    missing = run(
        trained.env, "score", "--data", str(tmp_path / "nowhere"), "--as-of", AS_OF, "--out", str(out_file)
    )
    assert missing.exit_code != 0 and "nowhere" in missing.output
    assert not out_file.exists()

    # a file in a folder that does not exist: said before the history is read (it was an OSError
    # traceback after the scoring)
    elsewhere = tmp_path / "absent" / "scores.csv"
    no_folder = run(trained.env, "score", "--data", str(trained.data), "--as-of", AS_OF,
                    "--out", str(elsewhere))
    assert no_folder.exit_code == 1 and no_folder.stderr.startswith("error: --out")
    assert f"{elsewhere.parent} does not exist" in no_folder.stderr


def test_backtest_json_has_metrics_per_fold_and_head(trained: Trained) -> None:
    out = ok_json(run(trained.env, "backtest", "--data", str(trained.data), "--folds", "2", "--json"))
    assert [f["fold"] for f in out["folds"]] == [1, 2]
    starts = [pd.Timestamp(f["start"]) for f in out["folds"]]
    assert starts == sorted(starts)  # rolling windows move forward in time
    seen = {(m["fold"], m["head"], m["model"]) for m in out["metrics"]}
    for fold in (1, 2):
        for head in HEADS:
            assert (fold, head, "lightgbm") in seen
    for m in out["metrics"]:
        assert m["roc_auc"] is None or 0.0 <= m["roc_auc"] <= 1.0
    forecast = out["forecast"]  # the forecast of each past month against what was won, per pipeline
    assert {f["fold"] for f in forecast} <= {1, 2} and forecast
    for f in forecast:
        assert f["p10"] <= f["p50"] <= f["p90"] and f["actual"] >= 0
        assert f["covered"] == (f["p10"] <= f["actual"] <= f["p90"])
    figures = out["forecast_summary"]
    assert figures["forecast_months"] == len(out["forecast"])
    # the run is in MLflow with the forecast's coverage and error
    from mlflow import MlflowClient

    logged = MlflowClient(tracking_uri=trained.env["MLFLOW_TRACKING_URI"]).get_run(out["run_id"])
    assert logged.data.tags["kind"] == "backtest"
    assert logged.data.metrics["backtest.forecast_coverage_p10_p90"] == pytest.approx(
        figures["forecast_coverage_p10_p90"]
    )


def test_compare_json_lists_the_champion_per_head(trained: Trained) -> None:
    out = ok_json(
        run(trained.env, "compare", "--data", str(trained.data), "--folds", "1", "--boot", "20", "--json")
    )
    rows = out["metrics"]
    assert {(r["version"], r["head"]) for r in rows} == {("1", "cold"), ("1", "close")}
    assert all(r["champion"] and r["ci_low"] <= r["ci_high"] for r in rows)
    # ROC AUC and Brier are unbiased enough for their point to sit inside the percentile interval
    # (ECE is biased upwards under resampling, so its point may fall below)
    assert all(r["ci_low"] <= r["value"] <= r["ci_high"] for r in rows if r["metric"] in ("roc_auc", "brier"))
    assert out["verdicts"] == {} and out["differences"] == []  # nothing to hold against the champion


def test_promote_of_an_unknown_version_fails_and_names_the_known_ones(trained: Trained) -> None:
    result = run(trained.env, "promote", "99", "--force")
    assert result.exit_code != 0
    assert "99" in result.output and "registered versions: 1" in result.output


@pytest.mark.parametrize(
    ("command", "purpose"),
    [
        ("train", "Train both heads"),
        ("backtest", "backtest"),
        ("compare", "Compare the champion"),
        ("retrain", "promote it only if better"),
        ("promote", "@champion"),
        ("score", "Batch-score"),
    ],
)
def test_help_of_every_model_command_says_what_it_does(command: str, purpose: str) -> None:
    result = CliRunner().invoke(app, [command, "--help"])
    assert result.exit_code == 0, result.output
    assert purpose.lower() in " ".join(result.output.split()).lower()


def test_score_at_points_of_closed_and_uncreated_deals_says_what_is_known(
    trained: Trained, tmp_path: Path
) -> None:
    """A point where the deal is already won or lost has close probability 1 / 0 and no predictions; a
    point before the deal was created has no scores at all; both name the deal's outcome then."""
    from features.stages import deal_states_at
    from models.scoring import points_at

    history = trained.history
    t = history.end_time
    ids = history.deals["deal_id"].astype(str).tolist()
    states = dict(zip(ids, deal_states_at(history, points_at(ids, t)), strict=True))
    won = next(d for d in ids if states[d] == "won")
    lost = next(d for d in ids if states[d] == "lost")
    young = history.deals.sort_values("created_at")["deal_id"].astype(str).iloc[-1]
    before = history.deals.set_index("deal_id").loc[young, "created_at"] - pd.Timedelta(days=1)
    pd.DataFrame({"deal_id": [won, lost, young],
                  "as_of": [t.isoformat(), t.isoformat(), before.isoformat()]}).to_csv(
        tmp_path / "points.csv", index=False)
    out_file = tmp_path / "scores.csv"
    result = run(trained.env, "score", "--data", str(trained.data), "--at", str(tmp_path / "points.csv"),
                 "--out", str(out_file))
    assert result.exit_code == 0, result.output
    scores = pd.read_csv(out_file, dtype={"deal_id": str}, keep_default_na=False).set_index("deal_id")
    assert scores["outcome"].to_dict() == {won: "won", lost: "lost", young: "not_created"}
    assert scores["close_probability"].to_dict() == {won: "1.0", lost: "0.0", young: ""}
    for column in ("cold_risk", "close_probability_90d", "slip_risk", "likely_close_date", "risk_band",
                   "reason_1", "counter_reasons"):
        assert scores[column].tolist() == ["", "", ""], column
