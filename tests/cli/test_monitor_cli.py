"""`dealrisk monitor` for a cron job: a model trained before buyers went quiet is flagged `retrain`,
with the calibration evidence per band and per week and the features that drifted."""

from __future__ import annotations

from pathlib import Path

import pytest
from cli_helpers import isolated_env, ok_json, run

from training.data import write_history
from training.simulate import simulate_history

pytestmark = pytest.mark.quality  # trains a model and scores four months of weekly snapshots

TRAINED_UNTIL = "2025-05-01"


def test_monitor_flags_a_world_that_shifted_after_training(tmp_path: Path) -> None:
    env = isolated_env(tmp_path)
    world = simulate_history(800, seed=8, end="2025-08-15", quiet_after=TRAINED_UNTIL,
                             quiet_activity_share=0.15)
    past = write_history(world.cut(TRAINED_UNTIL), tmp_path / "past")
    now = write_history(world, tmp_path / "now")
    assert ok_json(run(env, "train", "--data", str(past), "--trees", "60", "--json"))["champion"] is True

    report = ok_json(run(env, "monitor", "--data", str(now), "--json"))
    assert report["state"] == "retrain" and report["model_version"] == "1"
    cold = report["calibration"]["cold"]
    assert cold["observed"] > cold["predicted"] + 0.1
    assert {b["band"] for b in cold["by_band"]} == {"high", "medium", "low"}
    assert sum(w["n"] for w in cold["by_week"]) == cold["n_settled"]
    assert report["drift"][0]["drift"] == "shifted"
    assert "scores recomputed as of weekly snapshots" in report["method"]

    text = run(env, "monitor", "--data", str(now), "--no-record")
    assert text.exit_code == 0, text.output
    words = " ".join(text.stdout.split())
    assert "Model version 1: retrain" in words and "cold: observed rate" in words
    assert "per risk band" in words and "PSI" in words

    bad = run(env, "monitor", "--data", str(now), "--since", "last tuesday")
    assert bad.exit_code != 0 and "--since" in bad.output
