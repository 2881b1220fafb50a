"""bench/bench_reasons_floor.py's yardsticks: the cold head's shape it reports beside the TreeSHAP time
(the time is only read against trees x leaves x depth^2, so the shape must be the booster's own), and the
training sample it shares with bench_store.py (the model it times must be the one bench_store trains)."""

from __future__ import annotations

import lightgbm as lgb
import numpy as np

from bench.bench_reasons_floor import tree_shape
from bench.bench_store import training_sample
from training.simulate import simulate_history


def _booster(num_leaves: int, max_depth: int, rounds: int) -> lgb.Booster:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2000, 5))
    y = (x[:, 0] + x[:, 1] * x[:, 2] + rng.normal(scale=0.5, size=2000) > 0).astype(float)
    params = {"objective": "binary", "num_leaves": num_leaves, "max_depth": max_depth, "min_data_in_leaf": 5,
              "verbose": -1, "seed": 0}
    return lgb.train(params, lgb.Dataset(x, y), num_boost_round=rounds)


def test_stumps_have_two_leaves_at_depth_one() -> None:
    shape = tree_shape(_booster(num_leaves=2, max_depth=-1, rounds=7))
    assert shape["trees"] == 7
    assert shape["leaves_mean"] == 2 and shape["leaves_max"] == 2
    assert shape["leaf_depth_mean"] == 1 and shape["tree_depth_max"] == 1
    assert shape["treeshap_work"] == 7 * 2 * 1  # trees x leaves x depth^2


def test_full_depth_two_trees_have_four_leaves_at_depth_two() -> None:
    # 4 leaves at most and depth at most 2: on this signal every tree is the full binary tree of depth 2
    shape = tree_shape(_booster(num_leaves=4, max_depth=2, rounds=5))
    assert shape["trees"] == 5
    assert shape["leaves_mean"] == 4 and shape["leaf_depth_mean"] == 2
    assert shape["tree_depth_mean"] == 2 and shape["tree_depth_max"] == 2
    assert shape["treeshap_work"] == 5 * 4 * 2 * 2


def test_training_sample_keeps_the_picked_deals_whole() -> None:
    history = simulate_history(80, seed=3)
    part = training_sample(history, 30, seed=0)
    ids = set(part.deals["deal_id"].astype(str))
    assert len(ids) == 30 and ids <= set(history.deals["deal_id"].astype(str))
    for table in ("stage_changes", "activities"):
        mine = getattr(history, table)["deal_id"].astype(str).isin(ids)
        assert len(getattr(part, table)) == int(mine.sum()) > 0  # every event of the picked deals, no other
    assert training_sample(history, 30, seed=0).deals["deal_id"].tolist() == part.deals["deal_id"].tolist()
    assert training_sample(history, 500, seed=0).n_deals() == 80  # more than there are: all of them
