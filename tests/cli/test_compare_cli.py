"""`dealrisk compare` and `promote` on out-of-sample evidence, through the real Typer app
(quality tier: slower than the code tests).

Two configurations of known relative quality: the activity-blind one (every activity feature dropped)
and the full one. Few trees and two folds keep each comparison to seconds. `retrain` is in
test_retrain_cli (split so that `--dist loadfile` can give the two long tests to different workers).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from cli_compare_recipes import BLIND, EVIDENCE, QUICK, write_data
from cli_helpers import isolated_env, ok_json, run

pytestmark = pytest.mark.quality  # each comparison retrains two recipes twice: about a minute per test


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_data(tmp_path_factory.mktemp("cmp"))


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
