"""Model quality on a large simulated history (the issue's acceptance figures); its own, slower tier.

Run alone with: .venv/bin/pytest -m quality
"""

from __future__ import annotations

import pytest

from training.simulate import simulate_history
from training.train import RunResult, TrainConfig, train

pytestmark = pytest.mark.quality

N_DEALS = 20_000


@pytest.fixture(scope="module")
def result() -> RunResult:
    return train(simulate_history(N_DEALS, seed=0), TrainConfig(seed=0))


@pytest.mark.parametrize("head", ["cold", "close"])
def test_head_beats_its_stage_prior_and_is_calibrated(result: RunResult, head: str) -> None:
    lgb = result.metrics[head]["lightgbm"]
    prior = result.metrics[head]["stage_prior"]
    assert lgb["n"] > 2_000, "the test window must hold enough labelled snapshots to judge"
    assert lgb["roc_auc"] >= prior["roc_auc"] + 0.05, (head, lgb["roc_auc"], prior["roc_auc"])
    assert lgb["ece"] <= 0.03, (head, lgb["ece"])
    assert result.served[head] == "lightgbm"


def test_big_history_is_not_called_thin(result: RunResult) -> None:
    assert not result.thin_data
    assert "enough history" in result.data_note
