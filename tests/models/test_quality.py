"""Model quality on larger simulated histories (the issues' acceptance figures); its own, slower tier.

Run alone with: .venv/bin/pytest -m quality. The checks against what happened after a training cut
are in test_quality_judged.
"""

from __future__ import annotations

from functools import partial

import pytest

import training.train
from training.simulate import simulate_history
from training.train import RunResult, TrainConfig, fit_head, train

pytestmark = pytest.mark.quality

N_DEALS = 20_000


@pytest.fixture(scope="module")
def result() -> RunResult:
    # These checks read the cold head and the data note only, so the close head is fitted without its
    # slip booster: 18 of this training's 41 s (782,747 fine-grid rows). The slip model of a training is
    # checked in test_timing, and on 10,000 deals against what happened next in test_quality_judged.
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(training.train, "fit_head", partial(fit_head, slip=False))
        return train(simulate_history(N_DEALS, seed=0), TrainConfig(seed=0))


def test_cold_head_beats_its_stage_prior_and_is_calibrated(result: RunResult) -> None:
    lgb = result.metrics["cold"]["lightgbm"]
    prior = result.metrics["cold"]["stage_prior"]
    assert lgb["n"] > 2_000, "the test window must hold enough labelled snapshots to judge"
    assert lgb["roc_auc"] >= prior["roc_auc"] + 0.05, (lgb["roc_auc"], prior["roc_auc"])
    assert lgb["ece"] <= 0.03, lgb["ece"]
    assert result.served["cold"] == "lightgbm"


def test_big_history_is_not_called_thin(result: RunResult) -> None:
    assert not result.thin_data
    assert "enough history" in result.data_note
