"""Path attributions against exact TreeSHAP for the reasons (issue 8, evidence only).

Every score's reasons come from the cold head's exact TreeSHAP (`Head.contributions`, `pred_contrib`),
which bench_reasons_floor.py measured at 2.5-2.6 ms per deal on the full-size model. Path attributions
(Saabas; XGBoost's `approx_contribs=True`) walk each tree's root-to-leaf path of the deal and credit each
split's feature with the change in the node's value. They need only the deal's leaf in every tree: for
each (tree, leaf) the per-feature credits along its path are fixed, so a deal's contributions are one
`pred_leaf` call plus a sum of its leaves' rows of a table built once from `booster.dump_model()`, and
the bias is the sum of the trees' root values. Two node values are tried, both exact (the credits along a
path sum to the leaf's value minus the root's): `internal_value`, LightGBM's own output of the node, and
`count_mean`, the mean of the leaf values under the node weighted by their training counts, the expected
value LightGBM's TreeSHAP takes (its bias is then TreeSHAP's bias).

For two models, the one bench_reasons_floor.py times (100,000 deals simulated as bench_store.py does,
trained on a random 20,000 with `TrainConfig(seed=0)`, saved and loaded) and one trained on all of
`simulate_history(5000, seed=0)`:
1. exactness: for every scored row, bias + sum of the path contributions against the raw score;
2. agreement on >= `--points` open-deal points (every deal open at the history's end, then at 30-day
   steps back until there are enough; features from a builder fitted on the whole history, encoded by
   the bundle, as `score_points` makes them), both matrices through the product's own `ReasonWriter`
   (top 3): the share of deals with the same top raising reason, the mean Jaccard index of the top-3
   raising (and lowering) sets, the share with the same set of raising features among the features
   whose |TreeSHAP| > 0.05, and the median over deals of the Spearman rank correlation of the
   per-feature contributions (context features, which are never reasons, left out);
3. median ms per deal: exact TreeSHAP of one row (the product's `SingleRowPredictor` 'contrib'), the path
   attribution of one row (LightGBM's one-row fast path with C_API_PREDICT_LEAF_INDEX, then the sum), on
   bench_reasons_floor.py's 20 open deals of ~45 events in turn, beside the product's other LightGBM calls
   for one deal (`bench_one_deal.model_floor`); and both on a batch of 1,000 rows (a model swap's
   re-scoring), TreeSHAP on every core as `Head.contributions` runs it.
For scale, the agreement figures of the TreeSHAP reasons of a retrain on the same deals (`--retrain-seed`,
default 1: only LightGBM's row and column subsampling differ) with the model's own: what every model swap
already does to the reasons.

Run: nice -n 19 .venv/bin/python bench/bench_reason_paths.py [--points 3000] [--rounds 300] [--out PATH]
     [--retrain-seed 1] [--small-only]
Writes bench/results/reason_paths.json (or --out).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, cast

import numpy as np
import pandas as pd
from numpy.typing import NDArray

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.bench_one_deal import median_ms, model_floor  # noqa: E402
from bench.bench_reasons_floor import open_rows, tree_shape  # noqa: E402
from bench.common import write_result  # noqa: E402

NodeValue = Literal["internal_value", "count_mean"]
NODE_VALUES: tuple[NodeValue, ...] = ("internal_value", "count_mean")
C_API_PREDICT_LEAF_INDEX = 2  # LightGBM's c_api.h
MATERIAL = 0.05  # |TreeSHAP| above which a feature's direction must agree
BATCH = 1000


@dataclass(frozen=True)
class PathAttribution:
    """Path (Saabas) attributions of one booster: each leaf's per-feature credits along its path."""

    table: NDArray[np.float64]  # (leaves of all trees, n_features)
    offsets: NDArray[np.intp]  # (n_trees,): the table row of each tree's leaf 0
    bias: float  # sum of the trees' root values

    def contributions(self, leaves: Any) -> NDArray[np.float64]:
        """(n, n_features + 1), bias last, as `pred_contrib` lays them out, from `pred_leaf` output
        (n, n_trees)."""
        rows = np.asarray(leaves, dtype=np.intp) + self.offsets
        out = np.empty((len(rows), self.table.shape[1] + 1))
        if len(rows) == 1:
            out[0, :-1] = self.table[rows[0]].sum(axis=0)
        else:
            from scipy.sparse import csr_matrix

            n, trees = rows.shape
            picks = csr_matrix((np.ones(n * trees), rows.ravel(), np.arange(0, n * trees + 1, trees)),
                               shape=(n, len(self.table)))
            out[:, :-1] = picks @ self.table
        out[:, -1] = self.bias
        return out


def path_attribution(booster: Any, node_value: NodeValue = "internal_value") -> PathAttribution:
    """The path-attribution table of `booster` (the trees `predict` uses by default: the best iteration's
    when one is recorded). `node_value`: what a node is worth, LightGBM's `internal_value` (a leaf's
    `leaf_value`) or `count_mean`, the training-count-weighted mean of the leaf values under it."""
    trees = booster.dump_model()["tree_info"]
    n_features = booster.num_feature()
    sizes = [int(tree["num_leaves"]) for tree in trees]
    offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.intp)
    table = np.zeros((sum(sizes), n_features))
    bias = 0.0
    for offset, tree in zip(offsets, trees, strict=True):
        root = tree["tree_structure"]
        value = _node_values(root, node_value)
        bias += value[id(root)]
        stack = [(root, np.zeros(n_features))]
        while stack:
            node, credit = stack.pop()
            if "split_feature" not in node:
                table[offset + int(node.get("leaf_index", 0))] = credit
                continue
            for child in (node["left_child"], node["right_child"]):
                passed = credit.copy()
                passed[int(node["split_feature"])] += value[id(child)] - value[id(node)]
                stack.append((child, passed))
    return PathAttribution(table, offsets, bias)


def _node_values(root: dict[str, Any], node_value: NodeValue) -> dict[int, float]:
    """Each node's value (keyed by the id of its dict in the dump)."""
    values: dict[int, float] = {}

    def visit(node: dict[str, Any]) -> tuple[float, float]:  # (count-weighted sum of leaf values, count)
        if "split_feature" not in node:
            values[id(node)] = float(node["leaf_value"])
            count = float(node.get("leaf_count", 1))
            return values[id(node)] * count, count
        left, right = visit(node["left_child"]), visit(node["right_child"])
        total, count = left[0] + right[0], left[1] + right[1]
        values[id(node)] = float(node["internal_value"]) if node_value == "internal_value" else total / count
        return total, count

    visit(root)
    return values


def leaf_predictor(booster: Any) -> Callable[[NDArray[np.float64]], NDArray[np.float64]]:
    """One row's leaf indices (1, n_trees) through the product's one-row fast path (`SingleRowPredictor`).
    Its table of prediction types has only 'normal' and 'contrib'; the bench adds LightGBM's leaf-index
    type to it (no product change)."""
    from models import single_row

    single_row._PREDICT_TYPES.setdefault("leaf", C_API_PREDICT_LEAF_INDEX)
    return single_row.SingleRowPredictor(booster, cast(Any, "leaf"))


def open_points(history: Any, minimum: int, seed: int, step_days: int = 30) -> pd.DataFrame:
    """At least `minimum` (deal_id, as_of) points of open deals: every deal open at the history's end,
    then at `step_days` steps back, until there are enough; a random `minimum` of them (all if fewer)."""
    from models.scoring import open_deal_points

    frames: list[pd.DataFrame] = []
    t = history.end_time
    first = history.deals["created_at"].min()
    while sum(map(len, frames)) < minimum and t > first:
        frames.append(open_deal_points(history, t))
        t -= pd.Timedelta(days=step_days)
    points = pd.concat(frames, ignore_index=True)
    if len(points) > minimum:
        keep = np.sort(np.random.default_rng(seed).choice(len(points), minimum, replace=False))
        points = points.iloc[keep].reset_index(drop=True)
    return points


def exactness(booster: Any, paths: dict[NodeValue, PathAttribution], x: NDArray[np.float64],
              shap: NDArray[np.float64]) -> dict[str, Any]:
    """Max |bias + sum(contributions) - raw score| of each node value over the rows of `x`, and how far
    each one's bias is from TreeSHAP's (the same for `count_mean`, LightGBM's expected value)."""
    raw = np.asarray(booster.predict(x, raw_score=True), dtype=np.float64)
    leaves = booster.predict(x, pred_leaf=True)
    out: dict[str, Any] = {"rows": len(x),
                           "treeshap_sum_max_abs_error": float(np.abs(shap.sum(axis=1) - raw).max())}
    for name, path in paths.items():
        contrib = path.contributions(leaves)
        out[name] = {"sum_max_abs_error": float(np.abs(contrib.sum(axis=1) - raw).max()),
                     "bias": path.bias, "bias_minus_treeshap_bias": float(path.bias - shap[0, -1])}
    return out


def agreement(bundle: Any, frame: pd.DataFrame, x: NDArray[np.float64], shap: NDArray[np.float64],
              other: NDArray[np.float64]) -> dict[str, Any]:
    """How the reasons from the contributions `other` compare with those from `shap`, both through the
    bundle's `ReasonWriter` (module docstring, point 2)."""
    from scipy.stats import rankdata

    from models.bundle import _keys_or_blank

    writer = bundle._reasons
    pipeline, stage = _keys_or_blank(frame)
    shap_reasons = writer.explain(shap, x, pipeline, stage, 3)
    other_reasons = writer.explain(other, x, pipeline, stage, 3)
    out: dict[str, Any] = {"points": len(x)}
    for side, (a_rows, b_rows) in zip(("raises", "lowers"), zip(shap_reasons, other_reasons, strict=True),
                                      strict=True):
        a = [[r["feature"] for r in row] for row in a_rows]
        b = [[r["feature"] for r in row] for row in b_rows]
        pairs = list(zip(a, b, strict=True))
        out[side] = {
            "same_top": round(float(np.mean([p[:1] == q[:1] for p, q in pairs])), 4),
            "same_top3_in_order": round(float(np.mean([p == q for p, q in pairs])), 4),
            "top3_jaccard_mean": round(float(np.mean([_jaccard(p, q) for p, q in pairs])), 4),
            "deals_without_reasons_treeshap_other": [sum(not p for p in a), sum(not q for q in b)],
        }
    reasons = [i for i, c in enumerate(bundle.feature_columns) if i not in set(writer._context_idx)]
    s, p = shap[:, reasons], other[:, reasons]
    material = np.abs(s) > MATERIAL
    has = material.any(axis=1)
    same_set = ((s > 0) == (p > 0)) | ~material
    out["material"] = {
        "threshold": MATERIAL,
        "deals_with_a_material_feature": int(has.sum()),
        "same_raising_set_share": round(float(same_set.all(axis=1)[has].mean()), 4),
        "feature_sign_agreement_share": round(float(((s > 0) == (p > 0))[material].mean()), 4),
    }
    rs, rp = rankdata(s, axis=1), rankdata(p, axis=1)
    rs, rp = rs - rs.mean(1, keepdims=True), rp - rp.mean(1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        rho = (rs * rp).sum(1) / np.sqrt((rs * rs).sum(1) * (rp * rp).sum(1))
    out["spearman_per_deal"] = {"median": round(float(np.nanmedian(rho)), 4),
                                "p10": round(float(np.nanpercentile(rho, 10)), 4),
                                "min": round(float(np.nanmin(rho)), 4), "undefined": int(np.isnan(rho).sum())}
    out["effect_of_top_reason_mean_abs_diff"] = round(float(np.mean([
        abs(sr[0]["effect"] - float(other[i, bundle.feature_columns.index(sr[0]["feature"])]))
        for i, sr in enumerate(shap_reasons[0]) if sr])), 4)
    return out


def _jaccard(a: list[str], b: list[str]) -> float:
    union = set(a) | set(b)
    return 1.0 if not union else len(set(a) & set(b)) / len(union)


def timings(bundle: Any, path: PathAttribution, rows: list[NDArray[np.float64]], batch: NDArray[np.float64],
            rounds: int) -> dict[str, Any]:
    """Median ms per deal of each way to the contributions, one row and a batch (module docstring, 3)."""
    from models.bundle import _threads_for

    booster = bundle.cold.booster
    leaf = leaf_predictor(booster)
    for x in rows:  # the one-row fast path gives the leaves `predict` gives, and the same contributions
        batch_leaves = booster.predict(x, pred_leaf=True)
        assert np.array_equal(leaf(x).astype(np.intp), batch_leaves)
        assert np.allclose(path.contributions(leaf(x)), path.contributions(batch_leaves), rtol=0, atol=1e-12)
    leaves = [leaf(x) for x in rows]
    one: dict[str, Any] = {
        "treeshap": median_ms(bundle.cold.contributions, rows, rounds, 4),
        "paths": median_ms(lambda x: path.contributions(leaf(x)), rows, rounds, 4),
        "paths_leaf_indices": median_ms(leaf, rows, rounds, 4),
        "paths_sum": median_ms(path.contributions, leaves, rounds, 4),
    }
    floor = model_floor(bundle, rows, rounds)
    one["model_floor_treeshap"] = floor
    one["model_floor_paths_total"] = round(floor["total"] - floor["cold_contributions"] + one["paths"], 3)

    n_threads = _threads_for(len(batch))

    def batch_paths(x: NDArray[np.float64]) -> NDArray[np.float64]:
        return path.contributions(booster.predict(x, pred_leaf=True, num_threads=n_threads))

    repeats = max(3, rounds // 60)
    many = {
        "rows": len(batch),
        "treeshap": median_ms(bundle.cold.contributions, [batch], repeats, 4),
        "paths": median_ms(batch_paths, [batch], repeats, 4),
        "repeats": repeats,
    }
    return {"one_row_median_ms": one, "batch_median_ms": many,
            "one_row_paths_x_faster": round(one["treeshap"] / one["paths"], 1),
            "batch_paths_x_faster": round(many["treeshap"] / many["paths"], 1)}


def measure(name: str, history: Any, train_history: Any, args: argparse.Namespace) -> dict[str, Any]:
    """Train on `train_history`, save and load the bundle, and every figure of one model."""
    from features.build import FeatureBuilder
    from models.bundle import ScoringBundle
    from models.scoring import point_features
    from training.train import TrainConfig, train

    started = time.perf_counter()
    result = train(train_history, TrainConfig(seed=args.seed))
    train_s = time.perf_counter() - started
    with tempfile.TemporaryDirectory(prefix="bench-reason-paths-") as tmp:
        bundle = ScoringBundle.load(result.bundle.save(Path(tmp) / "bundle"))
    if bundle.cold.kind != "lightgbm":
        return {"model": name, "cold_head": bundle.cold.kind, "skipped": "the cold head is not LightGBM"}
    booster: Any = bundle.cold.booster
    paths = {v: path_attribution(booster, v) for v in NODE_VALUES}

    started = time.perf_counter()
    points = open_points(history, args.points, args.seed)
    frame = point_features(history, points, FeatureBuilder().fit(history))
    x = bundle.encode(frame)
    features_s = time.perf_counter() - started
    shap = bundle.cold.contributions(x)
    leaves = booster.predict(x, pred_leaf=True)
    rows, events = open_rows(bundle, train_history)
    print(f"{name}: trained in {train_s:.0f} s, {len(x)} points in {features_s:.0f} s", flush=True)
    retrain: dict[str, Any] = {"seed": args.retrain_seed}
    if args.retrain_seed is not None:  # the yardstick: how far a retrain moves TreeSHAP's own reasons
        other = train(train_history, TrainConfig(seed=args.retrain_seed)).bundle
        retrain["served"] = other.cold.kind
        if other.cold.kind == "lightgbm":
            retrain.update(agreement(bundle, frame, x, shap, other.cold.contributions(other.encode(frame))))
    return {
        "model": name,
        "deals": history.n_deals(), "train_deals": train_history.n_deals(), "seed": args.seed,
        "train_seconds": round(train_s, 1), "served": result.served,
        "cold_head": tree_shape(booster), "best_iteration": booster.best_iteration,
        "points": {"n": len(points), "as_of_dates": int(points["as_of"].nunique()),
                   "distinct_deals": int(points["deal_id"].nunique())},
        "exactness": exactness(booster, paths, x, shap),
        "agreement": {v: agreement(bundle, frame, x, shap, paths[v].contributions(leaves))
                      for v in NODE_VALUES},
        "agreement_treeshap_of_a_retrain": retrain,
        "events_per_timed_deal": events,
        "timing": timings(bundle, paths["internal_value"], rows, x[:BATCH], args.rounds),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--deals", type=int, default=100_000, help="deals simulated (as bench_store)")
    parser.add_argument("--train-deals", type=int, default=20_000, help="deals trained on (as bench_store)")
    parser.add_argument("--small-deals", type=int, default=5_000, help="deals of the second model")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--points", type=int, default=3000, help="open-deal points compared (>= 2,000)")
    parser.add_argument("--rounds", type=int, default=300)
    parser.add_argument("--retrain-seed", type=int, default=1,
                        help="TrainConfig seed of a retrain on the same deals whose TreeSHAP reasons are set "
                             "against the model's own as a yardstick (subsampling differs)")
    parser.add_argument("--small-only", action="store_true", help="only the second model (a quick run)")
    parser.add_argument("--out", type=Path, default=None, help="default bench/results/reason_paths.json")
    args = parser.parse_args()

    from bench.bench_store import simulate, training_sample
    from training.simulate import simulate_history

    models = []
    small = simulate_history(args.small_deals, seed=args.seed)
    models.append(measure(f"{args.small_deals:,} deals", small, small, args))
    if not args.small_only:
        history = simulate(args.deals, args.seed)
        models.append(measure(f"{args.deals:,} deals, trained on {args.train_deals:,} (bench_store)", history,
                              training_sample(history, args.train_deals, args.seed), args))
    out = {"threads_available": os.cpu_count(), "material_threshold": MATERIAL, "models": models}
    write_result("reason_paths", out, args.out)


if __name__ == "__main__":
    main()
