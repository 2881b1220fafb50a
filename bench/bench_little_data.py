"""Quality against the amount of history: how the close probability ranks with 30 to 3,000 closed deals.

For each size, a history is simulated whose first two years hold about that many closed deals, and the
model is trained on those two years only (its own time split). Every model is then judged on the same
larger evaluation history (another seed of the same simulator, 3,000 deals, judged against what happened
in the two years after its cut), so the curve shows the effect of the training data alone. The stage
prior (win rate per pipeline and stage, shrunk towards the pipeline's and the overall rate) is fitted on
the same training snapshots and judged on the same points.

Run: .venv/bin/python bench/bench_little_data.py [--sizes 30 100 300 1000 3000] [--seed 0]
Writes bench/results/little_data.json. Target (issue 9): with 30 closed deals the served close
probability ranks better (ROC AUC) than the stage prior.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from features.build import FeatureBuilder
from features.labels import won_label
from models.baselines import StagePrior
from training.metrics import binary_metrics
from training.simulate import simulate_history
from training.snapshots import make_snapshots
from training.train import TrainConfig, closed_deal_count, prepare_training_data, train

RESULTS = Path(__file__).resolve().parent / "results" / "little_data.json"
START, CUT, END = "2024-01-01", "2026-01-01", "2028-01-01"
CLOSED_SHARE = 0.87  # of the deals created in the first two years, closed by the cut (measured)


def evaluation_set(seed: int, n_points: int = 4000) -> tuple[pd.DataFrame, np.ndarray]:
    """Features of snapshots in the last 180 days before the cut of a 3,000-deal history, and their
    eventual outcome (won 1 / lost 0) from the two years after it."""
    full = simulate_history(6000, seed=seed, start=START, end=END)
    cut = full.cut(CUT)
    points = make_snapshots(cut)
    points = points[points["as_of"] > cut.end_time - pd.Timedelta(days=180)]
    points = points.sample(min(n_points, len(points)), random_state=seed).reset_index(drop=True)
    y = won_label(full, points).to_numpy(dtype=float)
    known = np.isfinite(y)
    points = points[known].reset_index(drop=True)
    features = FeatureBuilder().fit(cut).transform(cut, points)
    return features, y[known]


def run_size(closed: int, seed: int, features: pd.DataFrame, y: np.ndarray) -> dict[str, Any]:
    n_deals = max(10, int(round(2 * closed / CLOSED_SHARE)))
    history = simulate_history(n_deals, seed=seed, start=START, end=END).cut(CUT)
    config = TrainConfig(seed=seed)
    started = time.perf_counter()
    result = train(history, config)
    seconds = time.perf_counter() - started
    served = result.bundle.score(features, top_reasons=0)["close_probability"].to_numpy(dtype=float)
    data = prepare_training_data(history, config)
    rows = data.frame[data.frame["won"].notna() & (data.frame["window"] != "test")]
    prior = StagePrior().fit(rows, rows["won"].to_numpy(dtype=float)).predict_proba(features)
    out = {
        "closed_deals": closed_deal_count(history),
        "deals": len(history.deals),
        "served": result.served["close"],
        "thin_data": result.thin_data,
        "data_note": result.data_note,
        "train_seconds": round(seconds, 1),
        "model": binary_metrics(y, served),
        "stage_prior": binary_metrics(y, prior),
    }
    out["auc_gain_over_stage_prior"] = out["model"]["roc_auc"] - out["stage_prior"]["roc_auc"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", type=int, nargs="+", default=[30, 100, 300, 1000, 3000])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    features, y = evaluation_set(seed=1000 + args.seed)
    runs = [run_size(n, args.seed, features, y) for n in args.sizes]
    out = {
        "evaluation_points": len(y),
        "evaluation_won_rate": float(y.mean()),
        "seed": args.seed,
        "runs": runs,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "load_avg_1m": os.getloadavg()[0]},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2, default=float))
    for r in runs:
        print(json.dumps({"closed": r["closed_deals"], "served": r["served"],
                          "auc": round(r["model"]["roc_auc"], 4), "ece": round(r["model"]["ece"], 4),
                          "prior_auc": round(r["stage_prior"]["roc_auc"], 4)}))


if __name__ == "__main__":
    main()
