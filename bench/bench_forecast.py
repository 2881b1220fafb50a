"""Forecast backtest: rolling cut dates, each with a model trained only on what came before it.

Run: .venv/bin/python bench/bench_forecast.py [--deals 5000] [--folds 5] [--fold-days 91] [--seed 0]
Writes bench/results/forecast.json. Targets (issue 9): P10-P90 coverage of the monthly won amount
between 70% and 90% over at least 12 forecast months; weighted absolute percentage error 3 months
ahead at most 20%.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

from training.backtest import backtest
from training.simulate import simulate_history
from training.train import TrainConfig

RESULTS = Path(__file__).resolve().parent / "results" / "forecast.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--deals", type=int, default=5000)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--fold-days", type=float, default=91.0)
    parser.add_argument("--cycle-scale", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    history = simulate_history(args.deals, seed=args.seed, cycle_scale=args.cycle_scale)
    started = time.perf_counter()
    result = backtest(history, TrainConfig(seed=args.seed), n_folds=args.folds, fold_days=args.fold_days)
    figures = result.forecast_figures()
    out = {
        "deals": args.deals,
        "folds": args.folds,
        "fold_days": args.fold_days,
        "cycle_scale": args.cycle_scale,
        "seed": args.seed,
        "seconds": round(time.perf_counter() - started, 1),
        "summary": figures,
        "months": result.forecast.to_dict(orient="records"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "load_avg_1m": os.getloadavg()[0]},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2, default=str))
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
