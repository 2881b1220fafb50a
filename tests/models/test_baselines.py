import json

import numpy as np
import pandas as pd
import pytest

from models.bands import assign_bands, choose_thresholds
from models.baselines import StagePrior


def _frame() -> tuple[pd.DataFrame, np.ndarray]:
    # Mid-Market: a big stage at 10% and a tiny stage whose 2 rows are both positive;
    # Enterprise: 200 rows at 50%.
    rows = (
        [("Mid-Market", "Lead In", 0)] * 900
        + [("Mid-Market", "Lead In", 1)] * 100
        + [("Mid-Market", "Negotiation", 1)] * 2
        + [("Enterprise", "Demo", 0)] * 100
        + [("Enterprise", "Demo", 1)] * 100
    )
    frame = pd.DataFrame(rows, columns=["pipeline", "stage", "y"])
    return frame[["pipeline", "stage"]], frame["y"].to_numpy()


def test_big_stages_get_their_own_rate_and_tiny_ones_are_shrunk() -> None:
    frame, y = _frame()
    prior = StagePrior(prior_weight=20).fit(frame, y)
    query = pd.DataFrame(
        {"pipeline": ["Mid-Market", "Mid-Market", "Enterprise"], "stage": ["Lead In", "Negotiation", "Demo"]}
    )
    lead, nego, demo = prior.predict_proba(query)
    assert lead == pytest.approx(0.1, abs=0.005)
    assert demo == pytest.approx(0.5, abs=0.02)
    mid_rate = prior.pipeline_rates_["Mid-Market"]
    # two positives out of two is not a 100% stage: it stays near its pipeline's rate
    assert mid_rate < nego < 0.3


def test_unknown_stage_and_pipeline_fall_back() -> None:
    frame, y = _frame()
    prior = StagePrior().fit(frame, y)
    query = pd.DataFrame({"pipeline": ["Mid-Market", "Nowhere"], "stage": ["Unseen", "Lead In"]})
    stage_unknown, pipeline_unknown = prior.predict_proba(query)
    assert stage_unknown == pytest.approx(prior.pipeline_rates_["Mid-Market"])
    assert pipeline_unknown == pytest.approx(y.mean())


def test_json_round_trip_and_categorical_columns() -> None:
    frame, y = _frame()
    prior = StagePrior(prior_weight=5).fit(frame, y)
    again = StagePrior.from_dict(json.loads(json.dumps(prior.to_dict())))
    as_categories = pd.DataFrame(
        {"pipeline_cat": frame["pipeline"].astype("category"), "stage_cat": frame["stage"].astype("category")}
    )
    np.testing.assert_array_equal(prior.predict_proba(frame), again.predict_proba(as_categories))


def test_bands_follow_thresholds_chosen_from_scores() -> None:
    scores = np.linspace(0, 1, 1001)
    thresholds = choose_thresholds(scores, high_share=0.2, medium_share=0.3)
    bands = assign_bands(scores, thresholds)
    assert set(bands) == {"high", "medium", "low"}
    assert (bands == "high").mean() == pytest.approx(0.2, abs=0.01)
    assert (bands == "medium").mean() == pytest.approx(0.3, abs=0.01)
    # ordering: every high score is above every medium one, above every low one
    assert scores[bands == "high"].min() > scores[bands == "medium"].max() > scores[bands == "low"].max()
