"""Benchmark: point-in-time feature building on a simulated history.

20,000 deals x 25 weekly snapshots (500,000 points) by default. Writes bench/results/features.json.
Run: .venv/bin/python bench/bench_features.py [--deals N] [--snapshots K]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from features.build import FEATURE_COLUMNS, build_features  # noqa: E402
from features.population_stats import compute_population_stats  # noqa: E402
from training.simulate import simulate_history  # noqa: E402

logger = logging.getLogger("bench_features")
RESULTS = Path(__file__).resolve().parent / "results" / "features.json"


def weekly_points(created_at: pd.Series, deal_ids: pd.Series, snapshots: int) -> pd.DataFrame:
    """`snapshots` weekly points per deal, starting one day after creation."""
    n = len(deal_ids)
    base = pd.DatetimeIndex(np.repeat(created_at.to_numpy(dtype="datetime64[ns]"), snapshots), tz="UTC")
    offsets = pd.to_timedelta(np.tile(1 + 7 * np.arange(snapshots), n), unit="D")
    ids = np.repeat(deal_ids.to_numpy(dtype=object), snapshots)
    return pd.DataFrame({"deal_id": ids, "as_of": base + offsets})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--deals", type=int, default=20_000)
    parser.add_argument("--snapshots", type=int, default=25)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    start = time.perf_counter()
    history = simulate_history(n_deals=args.deals, seed=args.seed)
    simulate_s = time.perf_counter() - start
    points = weekly_points(history.deals["created_at"], history.deals["deal_id"], args.snapshots)

    start = time.perf_counter()
    population = compute_population_stats(history)
    population_s = time.perf_counter() - start
    start = time.perf_counter()
    features = build_features(history, points, population)
    build_s = time.perf_counter() - start
    start, cpu_start = time.perf_counter(), time.process_time()
    build_features(history, points, compute_population_stats(history))
    total_s = time.perf_counter() - start
    total_cpu_s = time.process_time() - cpu_start

    result = {
        "deals": args.deals,
        "points": len(points),
        "activities": len(history.activities),
        "stage_changes": len(history.stage_changes),
        "field_changes": len(history.field_changes),
        "n_features": len(FEATURE_COLUMNS),
        "simulate_seconds": round(simulate_s, 3),
        "population_seconds": round(population_s, 3),
        "build_with_population_seconds": round(build_s, 3),
        "build_including_population_seconds": round(total_s, 3),
        "build_including_population_cpu_seconds": round(total_cpu_s, 3),
        "points_per_second": round(len(points) / total_s),
        "target_seconds": 60,
        "meets_target": total_s < 60,
        "rows_out": len(features),
        "cpu_count": os.cpu_count(),
        # Other work on the machine slows wall-clock times; the CPU seconds above are less sensitive.
        "load_average_1m_at_end": round(os.getloadavg()[0], 2),
        "python": platform.python_version(),
        "pandas": pd.__version__,
        "measured_at": pd.Timestamp.now(tz="UTC").isoformat(),
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    logger.info(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
