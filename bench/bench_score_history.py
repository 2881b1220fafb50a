"""What the stored score history costs a live-score round: `Store.save_scores` of one round of deals,
with the score-history append (the default) and without it, interleaved so both see the same load.

Run: .venv/bin/python bench/bench_score_history.py [--deals 500] [--rounds 30]
Writes bench/results/score_history.json (median and p90 milliseconds per round, and the ratio).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import serving.store as store_module  # noqa: E402
from bench.common import write_result  # noqa: E402
from serving.store import Store  # noqa: E402
from training.simulate import simulate_history  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--deals", type=int, default=500, help="deals per round (the live scorer's batch)")
    parser.add_argument("--rounds", type=int, default=30)
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp())
    store = Store(f"sqlite:///{home / 'store.db'}")
    store.create_schema()
    history = simulate_history(n_deals=args.deals, seed=1)
    store.import_history(history)
    ids = history.deals["deal_id"].astype(str).tolist()
    with_history = store_module.append_score_history

    def skip_history(*_: object, **__: object) -> int:
        return 0

    timings: dict[str, list[float]] = {"with_history": [], "without_history": []}
    for i in range(args.rounds):
        for label, append in (("with_history", with_history), ("without_history", skip_history)):
            store_module.append_score_history = append  # type: ignore[assignment]
            scores = pd.DataFrame({
                # a new day each round: every row of the history append is an insert, its costlier case
                "deal_id": ids, "as_of": pd.Timestamp("2026-01-01", tz="UTC") + pd.Timedelta(days=i),
                "cold_risk": 0.3, "close_probability": 0.4, "risk_band": "medium", "expected_value": 1.0,
                "reasons": [[{"feature": "days_since_last_activity", "effect": 0.1, "text": "t"}]] * len(ids),
            })
            start = time.perf_counter()
            store.save_scores(scores, "1", {})
            timings[label].append((time.perf_counter() - start) * 1000)
    store_module.append_score_history = with_history
    store.close()

    def summary(values: list[float]) -> dict[str, float]:
        ordered = sorted(values)
        return {"median_ms": statistics.median(values), "p90_ms": ordered[int(0.9 * (len(ordered) - 1))]}

    result = {
        "deals_per_round": args.deals,
        "rounds": args.rounds,
        "with_history": summary(timings["with_history"]),
        "without_history": summary(timings["without_history"]),
        "median_ratio": (statistics.median(timings["with_history"])
                         / statistics.median(timings["without_history"])),
    }
    write_result("score_history", result)


if __name__ == "__main__":
    main()
