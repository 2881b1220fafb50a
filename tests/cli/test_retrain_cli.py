"""`dealrisk retrain` from the store on out-of-sample evidence, through the real Typer app (quality
tier: slower than the code tests): only a better version is promoted. Same recipes as test_compare_cli.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from cli_compare_recipes import BLIND, EVIDENCE, QUICK, registry_tags, write_data
from cli_helpers import isolated_env, ok_json, run

pytestmark = pytest.mark.quality  # each retrain trains a version and compares two recipes: about a minute


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_data(tmp_path_factory.mktemp("retrain"))


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
    assert registry_tags(env, "2")["retrain_verdict"] == "better"

    # The same recipe again scores identically out of sample: registered, but the champion stays.
    same = ok_json(run(env, "retrain", *QUICK, *EVIDENCE, "--json"))
    assert (same["version"], same["verdict"], same["promoted"], same["champion"]) == (
        "3", "no detectable difference", False, "2"
    )
    assert "kept v2 as champion" in same["decision"]
    assert registry_tags(env, "3")["retrain_decision"] == same["decision"]
    assert registry_tags(env, "3")["status"] == "candidate"
