"""Time `simulate_history(20000)` and writing it (CSV and Parquet); write bench/results/simulate.json.

Run: .venv/bin/python bench/bench_simulate.py [--deals 20000] [--seed 0]
Target (issue 2): 20,000 deals simulated in well under a minute on a two-core machine.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from training.data import write_history  # noqa: E402
from training.simulate import history_summary, simulate_history  # noqa: E402

logger = logging.getLogger("bench_simulate")
RESULTS = Path(__file__).resolve().parent / "results" / "simulate.json"


def main(argv: list[str] | None = None) -> dict[str, object]:
    """Run the benchmark, write the results file and return its content."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--deals", type=int, default=20_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    simulate_history(200, seed=args.seed)  # warm-up: imports and first-call costs are not the simulator's
    started = time.perf_counter()
    history = simulate_history(args.deals, seed=args.seed)
    simulate_seconds = time.perf_counter() - started
    write_seconds: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for fmt in ("csv", "parquet"):
            started = time.perf_counter()
            write_history(history, Path(tmp) / fmt, fmt=fmt)  # type: ignore[arg-type]
            write_seconds[fmt] = time.perf_counter() - started
    summary = history_summary(history)
    result: dict[str, object] = {
        "benchmark": "simulate",
        "deals": args.deals,
        "seed": args.seed,
        "simulate_seconds": round(simulate_seconds, 3),
        "write_csv_seconds": round(write_seconds["csv"], 3),
        "write_parquet_seconds": round(write_seconds["parquet"], 3),
        "events": summary["events"],
        "totals": summary["totals"],
        "target_simulate_seconds": 20.0,
        "meets_target": simulate_seconds < 20.0,
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "machine": platform.machine(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    logger.info("wrote %s", args.out)
    return result


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    print(json.dumps(main(), indent=2))
