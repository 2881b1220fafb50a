"""Train on a simulated history of 20,000 deals and record the time and the test-window metrics.

Run: .venv/bin/python bench/bench_train.py [--deals 20000] [--seed 0]
Writes bench/results/train.json. The target (issue 3): under five minutes on this machine, each head
beating its stage prior by at least 0.05 ROC AUC with ECE at most 0.03.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

from training.simulate import simulate_history
from training.train import TrainConfig, train

RESULTS = Path(__file__).resolve().parent / "results" / "train.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--deals", type=int, default=20_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-mlflow", action="store_true", help="Skip logging to a temporary MLflow store.")
    args = parser.parse_args()

    started = time.perf_counter()
    history = simulate_history(args.deals, seed=args.seed)
    simulated = time.perf_counter() - started
    with tempfile.TemporaryDirectory() as tmp:
        uri = None if args.no_mlflow else f"sqlite:///{Path(tmp) / 'mlflow.db'}"
        t0 = time.perf_counter()
        result = train(history, TrainConfig(seed=args.seed), tracking_uri=uri)
        seconds = time.perf_counter() - t0
    heads: dict[str, dict[str, Any]] = {}
    for head, models in result.metrics.items():
        lgb, prior = models["lightgbm"], models["stage_prior"]
        heads[head] = {
            "lightgbm": lgb,
            "stage_prior": prior,
            "logistic": models["logistic"],
            "auc_gain_over_stage_prior": lgb["roc_auc"] - prior["roc_auc"],
            "meets_target": bool(lgb["roc_auc"] - prior["roc_auc"] >= 0.05 and lgb["ece"] <= 0.03),
        }
    out = {
        "deals": args.deals,
        "seed": args.seed,
        "simulate_seconds": round(simulated, 2),
        "train_seconds": round(seconds, 2),
        "under_five_minutes": seconds < 300,
        "with_mlflow": not args.no_mlflow,
        "n_snapshots": result.n_snapshots,
        "n_closed_deals": result.n_closed_deals,
        "heads": heads,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "load_avg_1m": os.getloadavg()[0]},
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(out, indent=2, default=float))
    print(json.dumps({"train_seconds": out["train_seconds"],
                      **{h: {"auc_gain": round(v["auc_gain_over_stage_prior"], 3),
                             "ece": round(v["lightgbm"]["ece"], 4)} for h, v in heads.items()}}))


if __name__ == "__main__":
    main()
