"""`dealrisk compare`, `promote` and `retrain` on out-of-sample evidence, through the real Typer app
(quality tier: slower than the code tests).

Two configurations of known relative quality: the activity-blind one (every activity feature dropped)
and the full one. Few trees and two folds keep each comparison to seconds.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from cli_helpers import isolated_env, ok_json, run

from features.build import ACTIVITY_COUNT_COLUMNS
from training.data import write_history
from training.simulate import simulate_history

ACTIVITY_FEATURES = (
    *ACTIVITY_COUNT_COLUMNS, "days_since_activity", "days_since_inbound", "inbound_30d", "max_gap_days",
    "activity_trend", "activity_trend_ratio",
)
BLIND = [arg for column in ACTIVITY_FEATURES for arg in ("--drop-feature", column)]
QUICK = ["--trees", "60"]
EVIDENCE = ["--folds", "2", "--boot", "60"]

pytestmark = pytest.mark.quality  # each comparison retrains two recipes twice: about a minute per test


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return Path(write_history(simulate_history(800, seed=4), tmp_path_factory.mktemp("cmp") / "data"))


def _registry_tags(env: dict[str, str], version: str) -> dict[str, str]:
    from mlflow import MlflowClient

    uri = env["MLFLOW_TRACKING_URI"]
    return dict(MlflowClient(tracking_uri=uri, registry_uri=uri).get_model_version("deal-risk", version).tags)


def test_compare_reports_intervals_and_verdict_and_promote_refuses_the_worse(
    data: Path, tmp_path: Path
) -> None:
    env = isolated_env(tmp_path)
    assert ok_json(run(env, "train", "--data", str(data), *BLIND, *QUICK, "--json"))["champion"] is True
    assert ok_json(run(env, "train", "--data", str(data), *QUICK, "--json"))["model_version"] == "2"

    table = run(env, "compare", "--data", str(data), *EVIDENCE)
    assert table.exit_code == 0, table.output
    text = " ".join(table.stdout.split())
    assert "version 2 against champion v1: better" in text and "95% CI" in text
    assert "cold head roc_auc +" in text and "Logged as MLflow run" in text

    promoted = ok_json(run(env, "promote", "2", "--data", str(data), "--folds", "2", "--json"))
    assert promoted == {"champion": "2", "previous": "1", "forced": False, "verdict": "better"}
    refused = run(env, "promote", "1", "--data", str(data), "--folds", "2")
    assert refused.exit_code != 0
    assert "worse than the champion (v2) out of sample" in " ".join(refused.output.split())
    assert ok_json(run(env, "promote", "1", "--force", "--json"))["champion"] == "1"


def test_retrain_from_the_store_promotes_only_a_better_version(data: Path, tmp_path: Path) -> None:
    env = isolated_env(tmp_path)
    imported = run(env, "import", str(data))
    assert imported.exit_code == 0, imported.output
    clash = run(env, "train", "--from-store", "--data", str(data))
    assert clash.exit_code != 0 and "not both" in clash.output
    first = ok_json(run(env, "train", "--from-store", *BLIND, *QUICK, "--json"))
    assert first["model_version"] == "1" and first["champion"] is True

    better = ok_json(run(env, "retrain", *QUICK, *EVIDENCE, "--json"))
    assert (better["version"], better["verdict"], better["promoted"], better["champion"]) == (
        "2", "better", True, "2"
    )
    out = better["comparison"]
    assert out["champion"] == "1" and out["versions"] == ["1", "2"] and out["verdicts"] == {"2": "better"}
    cold_auc = next(d for d in out["differences"] if d["head"] == "cold" and d["metric"] == "roc_auc")
    assert 0 < cold_auc["ci_low"] <= cold_auc["difference"] <= cold_auc["ci_high"]
    # version 1's recipe was read back from its run: the blind configuration, not the default
    assert "days_since_activity" in out["configs"]["1"]["drop_features"]
    assert out["run_id"]
    assert better["decision"].startswith("promoted version 2 over v1: better out of sample")
    assert _registry_tags(env, "2")["retrain_verdict"] == "better"

    # The same recipe again scores identically out of sample: registered, but the champion stays.
    same = ok_json(run(env, "retrain", *QUICK, *EVIDENCE, "--json"))
    assert (same["version"], same["verdict"], same["promoted"], same["champion"]) == (
        "3", "no detectable difference", False, "2"
    )
    assert "kept v2 as champion" in same["decision"]
    assert _registry_tags(env, "3")["retrain_decision"] == same["decision"]
    assert _registry_tags(env, "3")["status"] == "candidate"
