"""Batch scoring of every open deal at one as-of vs raw LightGBM predict of both heads.

Simulates N deals (default 20,000, seed 0), trains a bundle once on that history (no MLflow), then times,
for every deal open at the history's end time minus `--before-end-days`:
- the full path `open_deal_points` + `score_points` (features + both heads + bands), with no reasons and
  with 3 reasons;
- raw `booster.predict` of both heads on the already-built, already-encoded feature matrix
  (`bundle.encode(features)` is done once, outside the timing) — the floor the SPEC compares to.
Each timing is the median of `--repeats` runs. A stage split (build_features, encode, heads, reasons) says
where the time goes. Writes bench/results/batch_score.json.

Run: .venv/bin/python bench/bench_batch_score.py [--deals 20000] [--repeats 5]
Target (SPEC "Figures it must reach"): batch scoring (features + both heads) <= 3x raw LightGBM predict.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import write_result  # noqa: E402
from features.build import FeatureBuilder, build_features  # noqa: E402
from features.population_stats import compute_population_stats  # noqa: E402
from models.scoring import open_deal_points, score_points  # noqa: E402
from training.simulate import simulate_history  # noqa: E402
from training.train import TrainConfig, train  # noqa: E402

logger = logging.getLogger("bench_batch_score")


def _median_s(fn: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    times = []
    value = None
    for _ in range(repeats):
        t0 = time.perf_counter()
        value = fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times)), value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--deals", type=int, default=20_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--before-end-days", type=float, default=0,
                        help="Score as of the history's end minus this many days.")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    load_start = os.getloadavg()

    history = simulate_history(args.deals, seed=args.seed)
    t0 = time.perf_counter()
    run = train(history, TrainConfig(seed=args.seed), tracking_uri=None, register=False)
    train_s = time.perf_counter() - t0
    bundle = run.bundle
    as_of = history.end_time - pd.Timedelta(days=args.before_end_days)
    logger.info("trained in %.1f s; scoring as of %s", train_s, as_of)

    builder = FeatureBuilder().fit(history)

    def full(top: int) -> pd.DataFrame:
        points = open_deal_points(history, as_of)
        return score_points(bundle, history, points, builder, top_reasons=top)

    full(0)  # warm caches (imports, first-call allocations) outside the timings
    full_0_s, scored = _median_s(lambda: full(0), args.repeats)
    full_3_s, _ = _median_s(lambda: full(3), args.repeats)
    n = len(scored)

    # The raw floor: both boosters on the ready float matrix.
    points = open_deal_points(history, as_of)
    features = builder.transform(history, points)
    x = bundle.encode(features)
    # The close head is a competing-risks model: its booster reads each deal once per period, so its raw
    # predict is `TimingModel.raw_hazards` (the person-period rows through the booster, uncalibrated).
    if bundle.cold.kind != "lightgbm" or bundle.close.kind not in ("lightgbm", "competing_risks"):
        raise RuntimeError(f"expected LightGBM heads, got kinds {bundle.cold.kind}, {bundle.close.kind}")
    boosters = [bundle.cold.booster, bundle.close.booster]
    timing = bundle.close.timing

    def raw() -> list[np.ndarray]:
        close = timing.raw_hazards(x) if timing is not None else boosters[1].predict(x)
        return [boosters[0].predict(x), close]

    raw()
    raw_s, _ = _median_s(raw, args.repeats)

    # Where the time goes (each a median of the same number of repeats).
    population_s, population = _median_s(lambda: compute_population_stats(history), args.repeats)
    points_s, _ = _median_s(lambda: open_deal_points(history, as_of), args.repeats)
    build_s, _ = _median_s(lambda: build_features(history, points, population), args.repeats)
    subset = history.subset(points["deal_id"])
    build_sub_s, _ = _median_s(lambda: build_features(subset, points, population), args.repeats)
    encode_s, _ = _median_s(lambda: bundle.encode(features), args.repeats)
    heads_s, _ = _median_s(lambda: (bundle.cold.proba(x, features), bundle.close.proba(x, features)),
                           args.repeats)
    score0_s, _ = _median_s(lambda: bundle.score(features, top_reasons=0), args.repeats)
    score3_s, _ = _median_s(lambda: bundle.score(features, top_reasons=3), args.repeats)

    result = {
        "deals": args.deals,
        "seed": args.seed,
        "as_of": as_of.isoformat(),
        "open_deals_scored": n,
        "n_features": len(bundle.feature_columns),
        "trees": {"cold": boosters[0].num_trees(), "close": boosters[1].num_trees()},
        "train_seconds": round(train_s, 1),
        "repeats": args.repeats,
        "seconds": {
            "full_no_reasons": round(full_0_s, 4),
            "full_3_reasons": round(full_3_s, 4),
            "raw_lightgbm_both_heads": round(raw_s, 4),
        },
        "ratio": {
            "full_no_reasons_vs_raw": round(full_0_s / raw_s, 2),
            "full_3_reasons_vs_raw": round(full_3_s / raw_s, 2),
        },
        "target": "full (features + both heads) <= 3x raw LightGBM predict of both heads",
        "meets_target": bool(full_0_s / raw_s <= 3),
        "meets_target_with_3_reasons": bool(full_3_s / raw_s <= 3),
        "stages_s": {
            "open_deal_points": round(points_s, 4),
            "compute_population": round(population_s, 4),
            "build_features_whole_history_given_population": round(build_s, 4),
            # what score_points does: only the scored deals' rows, population from the whole history
            "build_features_scored_deals_given_population": round(build_sub_s, 4),
            "bundle_encode": round(encode_s, 4),
            "both_heads_calibrated": round(heads_s, 4),
            "bundle_score_no_reasons": round(score0_s, 4),
            "bundle_score_3_reasons": round(score3_s, 4),
        },
        "deals_per_s_full_no_reasons": round(n / full_0_s, 1),
        "cores": os.cpu_count(),
        "load_average_at_start": load_start,
        "load_average_at_end": os.getloadavg(),
    }
    write_result("batch_score", result)


if __name__ == "__main__":
    main()
