"""One deal through LightGBM's single-row API gives the numbers `Booster.predict` gives, to the last bit."""

import lightgbm as lgb
import numpy as np
import pandas as pd
import pytest

from models.bundle import ScoringBundle
from models.single_row import SingleRowPredictor
from tests.models.test_bundle import fit_bundle, synthetic_features


def _matrix(n: int, seed: int) -> np.ndarray:
    """Rows with missing values, zeros (which LightGBM's row reader skips) and a categorical code."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 6))
    x[:, 1] = np.round(x[:, 1])  # many exact zeros
    x[:, 5] = rng.integers(0, 4, n)  # a categorical feature's codes
    x[rng.random((n, 6)) < 0.1] = np.nan
    return x


@pytest.fixture(scope="module")
def boosters() -> dict[str, lgb.Booster]:
    x = _matrix(2_000, seed=1)
    signal = np.nan_to_num(x[:, 0]) - np.nan_to_num(x[:, 2]) + (x[:, 5] == 2)
    params = {"verbose": -1, "num_leaves": 15, "min_child_samples": 20, "deterministic": True}
    labels = (signal > 0.3).astype(int)
    binary = lgb.train({**params, "objective": "binary"},
                       lgb.Dataset(x, labels, categorical_feature=[5]), num_boost_round=40)
    classes = np.digitize(signal, [-0.5, 0.8])
    multiclass = lgb.train({**params, "objective": "multiclass", "num_class": 3},
                           lgb.Dataset(x, classes, categorical_feature=[5]), num_boost_round=30)
    return {"binary": binary, "multiclass": multiclass}


@pytest.mark.parametrize(("kind", "predict_type"),
                         [("binary", "normal"), ("binary", "contrib"), ("multiclass", "normal")])
def test_each_row_equals_booster_predict_exactly(
    boosters: dict[str, lgb.Booster], kind: str, predict_type: str
) -> None:
    booster = boosters[kind]
    x = _matrix(500, seed=2)
    contrib = predict_type == "contrib"
    batch = np.asarray(booster.predict(x, pred_contrib=contrib))
    one_row = SingleRowPredictor(booster, "contrib" if contrib else "normal")
    for i in range(len(x)):
        got = one_row(x[i : i + 1])
        assert got.shape == np.asarray(booster.predict(x[i : i + 1], pred_contrib=contrib)).shape
        assert np.array_equal(got, batch[i : i + 1], equal_nan=True), i


def test_a_row_of_the_wrong_width_is_refused(boosters: dict[str, lgb.Booster]) -> None:
    with pytest.raises(ValueError, match="one row of 6 features"):
        SingleRowPredictor(boosters["binary"], "normal")(np.zeros((1, 5)))
    with pytest.raises(ValueError, match="one row of 6 features"):
        SingleRowPredictor(boosters["binary"], "normal")(np.zeros((2, 6)))


@pytest.fixture(scope="module")
def bundle() -> ScoringBundle:
    return fit_bundle(*synthetic_features(3000, seed=11))


def test_a_deal_scored_alone_gets_its_batch_scores_and_reasons(bundle: ScoringBundle) -> None:
    frame, _, _ = synthetic_features(200, seed=21)
    batch = bundle.score(frame, top_reasons=3)
    for i in range(len(frame)):
        alone = bundle.score(frame.iloc[[i]].reset_index(drop=True), top_reasons=3)
        for column in ("cold_risk", "close_probability", "close_probability_90d"):
            assert alone[column].iloc[0] == batch[column].iloc[i], (column, i)
        assert alone["reasons"].iloc[0] == batch["reasons"].iloc[i]
        assert alone["counter_reasons"].iloc[0] == batch["counter_reasons"].iloc[i]
    assert pd.Series([len(r) for r in batch["reasons"]]).max() == 3  # the reasons were there to compare
