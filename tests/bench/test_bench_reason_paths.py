"""bench/bench_reason_paths.py's path attributions: a deal's credits along its root-to-leaf paths plus the
bias add up to its raw score, as TreeSHAP's do, for both node values; with the count-weighted node means
the bias is TreeSHAP's own; and on one split the credit is the leaf's value minus the root's."""

from __future__ import annotations

import lightgbm as lgb
import numpy as np
import pytest

from bench.bench_reason_paths import NODE_VALUES, path_attribution


def _booster(num_leaves: int, rounds: int) -> tuple[lgb.Booster, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2000, 5))
    x[rng.random(2000) < 0.1, 3] = np.nan  # missing values take a default direction
    y = (x[:, 0] + x[:, 1] * x[:, 2] + rng.normal(scale=0.5, size=2000) > 0).astype(float)
    params = {"objective": "binary", "num_leaves": num_leaves, "min_data_in_leaf": 5, "verbose": -1,
              "seed": 0}
    return lgb.train(params, lgb.Dataset(x, y), num_boost_round=rounds), x


@pytest.mark.parametrize("node_value", NODE_VALUES)
def test_bias_plus_credits_is_the_raw_score(node_value: str) -> None:
    booster, x = _booster(num_leaves=8, rounds=20)
    paths = path_attribution(booster, node_value)  # type: ignore[arg-type]
    contrib = paths.contributions(booster.predict(x, pred_leaf=True))
    raw = np.asarray(booster.predict(x, raw_score=True))
    assert contrib.shape == (2000, 6) and np.all(contrib[:, -1] == paths.bias)
    assert np.abs(contrib.sum(axis=1) - raw).max() < 1e-9
    one = paths.contributions(booster.predict(x[:1], pred_leaf=True))  # one row takes its own path
    assert np.abs(one - contrib[:1]).max() < 1e-12


def test_count_means_give_treeshaps_bias() -> None:
    booster, x = _booster(num_leaves=8, rounds=20)
    shap = np.asarray(booster.predict(x[:5], pred_contrib=True))
    assert path_attribution(booster, "count_mean").bias == pytest.approx(shap[0, -1], abs=1e-12)
    assert abs(path_attribution(booster, "internal_value").bias - shap[0, -1]) > 1e-3  # not the same


def test_a_stump_credits_its_feature_with_leaf_minus_root() -> None:
    booster, x = _booster(num_leaves=2, rounds=1)
    root = booster.dump_model()["tree_info"][0]["tree_structure"]
    feature = root["split_feature"]
    paths = path_attribution(booster, "internal_value")
    leaves = np.asarray(booster.predict(x[:50], pred_leaf=True))
    contrib = paths.contributions(leaves)
    leaf_value = {0: root["left_child"]["leaf_value"], 1: root["right_child"]["leaf_value"]}
    assert paths.bias == root["internal_value"]
    for row, leaf in zip(contrib, leaves[:, 0], strict=True):
        assert row[feature] == pytest.approx(leaf_value[leaf] - root["internal_value"], abs=1e-15)
        assert np.count_nonzero(row[:-1]) == 1  # the other features get nothing
