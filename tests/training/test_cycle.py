"""The full model cycle against a temporary MLflow store: train, train again, compare, promote, score
with the new champion, and roll back."""

from __future__ import annotations

from pathlib import Path

import pytest

from models.loading import CHAMPION_URI, load_bundle
from training.registry import PromotionRefused, RegistryError, champion_version, compare, promote
from training.score import score_batch
from training.simulate import simulate_history
from training.train import TrainConfig, train


@pytest.mark.quality  # three out-of-sample comparisons, each retraining two recipes per fold
def test_train_compare_promote_score_rollback(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    history = simulate_history(600, seed=21)

    # v1: a deliberately weak model (a handful of stumps), so v2 should beat it.
    weak = TrainConfig(lightgbm_params={"n_estimators": 3, "num_leaves": 2})
    first = train(history, weak, tracking_uri=uri)
    assert first.model_version == "1" and first.is_champion
    assert first.run_id
    assert champion_version(uri) == "1"
    assert not any(tmp_path.parent.glob("mlruns")), "artifacts must live next to the tracking store"

    second = train(history, TrainConfig(lightgbm_params={"n_estimators": 60}), tracking_uri=uri)
    assert second.model_version == "2" and not second.is_champion
    assert champion_version(uri) == "1"  # a new version waits

    comparison = compare(history, None, uri, n_folds=2, n_boot=50)
    table = comparison.metrics
    assert set(table["version"]) == {"1", "2"}
    assert set(table["head"]) == {"cold", "close"}
    assert table.loc[table["version"] == "1", "champion"].all()
    # each version was retrained from the configuration logged with its run
    assert comparison.configs["1"]["lightgbm.n_estimators"] == 3
    assert comparison.verdicts["2"] in ("better", "no detectable difference")
    # logged as a comparison run with its figures, the full result and a plot per metric
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    run = client.get_run(comparison.run_id)
    assert run.data.tags["kind"] == "comparison" and run.data.tags["verdict.v2"] == comparison.verdicts["2"]
    assert "v2.cold.roc_auc.diff.ci_low" in run.data.metrics
    assert {a.path for a in client.list_artifacts(comparison.run_id, "plots")} == {
        f"plots/{m}.png" for m in ("roc_auc", "brier", "log_loss", "ece")
    }
    assert "comparison.json" in {a.path for a in client.list_artifacts(comparison.run_id)}

    promoted = promote("2", uri, history=history, n_folds=2, n_boot=50)
    assert promoted.previous == "1"
    assert champion_version(uri) == "2"

    bundle, version = load_bundle(CHAMPION_URI, uri)
    assert version == "2"
    scores = score_batch(history, bundle, model_version=version)
    assert (scores["model_version"] == "2").all()
    assert scores["cold_risk"].between(0, 1).all()

    # Rolling back to the weak v1 is refused with the numbers, unless forced.
    with pytest.raises(PromotionRefused, match=r"worse than the champion \(v2\) out of sample: .*interval"):
        promote("1", uri, history=history, n_folds=2, n_boot=50)
    assert champion_version(uri) == "2"
    promote("1", uri, history=history, force=True)
    assert champion_version(uri) == "1"
    assert load_bundle(CHAMPION_URI, uri)[1] == "1"

    with pytest.raises(RegistryError, match="no version '9'"):
        promote("9", uri)
