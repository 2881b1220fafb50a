"""The floor under one deal's score on the full-size model (issue 8): what LightGBM alone takes for one
deal when the model is trained as the 100,000-deal store bench trains it.

Every score carries reasons, the cold head's exact TreeSHAP contributions, and TreeSHAP costs about
trees x leaves x depth^2; bench_one_deal.py measures the floor on a model trained on 3,000 deals, whose
cold head the thin-data rules (`models.heads.lightgbm_params`) shrink. Here, as bench_store.py does:
simulate 100,000 deals (seed 0, two years ending now, cycle scale 1.2), train on a random 20,000 of them
(`bench_store.training_sample`, `TrainConfig(seed=0)`), and save and load the bundle as the service
does. Then, on the encoded rows (`bundle.encode(point_features(...))`, as `score_points` makes them) of
the 20 open deals whose event counts are closest to 45, each taken in turn, the median time of each
LightGBM call one deal makes through the product's own path (`bench_one_deal.model_floor`: the cold
head's contributions, its probability, the close head's hazards), the cold head's shape (trees, leaves,
leaf depths), and for scale the in-process GET /healthz over a FastAPI TestClient (an empty store, no
model loaded: what the route costs, which is what issue 8's 2x is a multiple of).

Run: nice -n 19 .venv/bin/python bench/bench_reasons_floor.py [--deals 100000] [--train-deals 20000]
     [--rounds 300] [--out PATH]
Writes bench/results/reasons_floor.json (or --out).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.bench_one_deal import model_floor, open_deals_near  # noqa: E402
from bench.bench_serving import _percentiles  # noqa: E402
from bench.common import write_result  # noqa: E402


def tree_shape(booster: Any) -> dict[str, Any]:
    """Trees, leaves per tree and leaf depths (root = depth 0) of a LightGBM booster, and the sum over
    trees of leaves x max depth^2, the order of TreeSHAP's work per row."""
    leaves: list[int] = []
    depths: list[int] = []
    max_depths: list[int] = []
    for tree in booster.dump_model()["tree_info"]:
        tree_depths: list[int] = []
        stack = [(tree["tree_structure"], 0)]
        while stack:
            node, depth = stack.pop()
            if "leaf_index" in node or "left_child" not in node:
                tree_depths.append(depth)
            else:
                stack.extend([(node["left_child"], depth + 1), (node["right_child"], depth + 1)])
        leaves.append(len(tree_depths))
        depths.extend(tree_depths)
        max_depths.append(max(tree_depths))
    return {
        "trees": len(leaves),
        "leaves_mean": round(statistics.mean(leaves), 2),
        "leaves_max": max(leaves),
        "leaf_depth_mean": round(statistics.mean(depths), 2),
        "tree_depth_mean": round(statistics.mean(max_depths), 2),
        "tree_depth_max": max(max_depths),
        "treeshap_work": int(sum(n * d * d for n, d in zip(leaves, max_depths, strict=True))),
    }


def open_rows(bundle: Any, history: Any) -> tuple[list[Any], list[int]]:
    """Encoded rows (one deal each, as of the history's end) of `bench_one_deal.open_deals_near`'s deals
    (the 20 open deals whose event counts are closest to 45), and the deals' event counts, sorted."""
    from features.build import FeatureBuilder
    from models.scoring import point_features, points_at

    ids, counts = open_deals_near(history)
    builder = FeatureBuilder().fit(history)
    rows = [bundle.encode(point_features(history, points_at([d], history.end_time), builder)) for d in ids]
    return rows, sorted(counts)


def healthz_times(home: Path, rounds: int) -> dict[str, Any]:
    """GET /healthz over one in-process TestClient: `_percentiles` of `rounds` calls after 30 warm-ups."""
    from fastapi.testclient import TestClient

    from serving.app import create_app
    from serving.settings import Settings

    settings = Settings(home=home, database_url=f"sqlite:///{home / 'dealrisk.db'}",
                        tracking_uri=f"sqlite:///{home / 'mlflow.db'}", reload_interval_s=0,
                        live_score_max_age_s=0)
    times = []
    with TestClient(create_app(settings)) as client:
        for _ in range(30):
            client.get("/healthz")
        for _ in range(rounds):
            start = time.perf_counter()
            response = client.get("/healthz")
            times.append(time.perf_counter() - start)
            assert response.status_code == 200, response.text
    return _percentiles(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--deals", type=int, default=100_000, help="deals simulated (as bench_store)")
    parser.add_argument("--train-deals", type=int, default=20_000, help="deals trained on (as bench_store)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rounds", type=int, default=300)
    parser.add_argument("--out", type=Path, default=None, help="default bench/results/reasons_floor.json")
    args = parser.parse_args()

    from bench.bench_store import simulate, training_sample
    from models.bundle import ScoringBundle
    from training.train import TrainConfig, train

    history = simulate(args.deals, args.seed)
    part = training_sample(history, args.train_deals, args.seed)
    started = time.perf_counter()
    result = train(part, TrainConfig(seed=args.seed))
    train_s = time.perf_counter() - started
    with tempfile.TemporaryDirectory(prefix="bench-reasons-floor-") as tmp:
        bundle = ScoringBundle.load(result.bundle.save(Path(tmp) / "bundle"))
        cwd = Path.cwd()
        os.chdir(tmp)  # MLflow would write under the working directory
        try:
            healthz = healthz_times(Path(tmp), args.rounds)
        finally:
            os.chdir(cwd)
    rows, events = open_rows(bundle, part)
    floor = model_floor(bundle, rows, args.rounds)
    assert bundle.cold.booster is not None and bundle.close.booster is not None
    out: dict[str, Any] = {
        "deals": args.deals, "train_deals": part.n_deals(), "seed": args.seed, "rounds": args.rounds,
        "train_seconds": round(train_s, 1), "served": result.served,
        "cold_head": tree_shape(bundle.cold.booster),
        "close_head_trees": bundle.close.booster.num_trees(),
        "events_per_scored_deal": events,
        "model_floor_median_ms": floor,
        "healthz_in_process": healthz,
        "cold_contributions_x_healthz_p50": round(floor["cold_contributions"] / healthz["p50_ms"], 2),
        "model_floor_x_healthz_p50": round(floor["total"] / healthz["p50_ms"], 2),
        "target_x_healthz_p50": 2.0,
    }
    write_result("reasons_floor", out, args.out)


if __name__ == "__main__":
    main()
