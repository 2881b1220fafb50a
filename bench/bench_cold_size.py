"""Is the cold head bigger than the data supports? Its size against smaller ones, judged against the truth.

Every score's reasons are the cold head's TreeSHAP contributions, whose cost grows with trees x leaves x
depth^2 (bench_reasons_floor.py measures it on the full-size model). Here the cold head as trained
(`current`: the shipped `models.heads.lightgbm_params`, 300 trees x 31 leaves at lr 0.05 on full data,
scaled down on thin data; a change of that schedule changes `current` here)
is set against smaller ones, each fixed before any result of this script about it was read:

- `t150_l15`: 150 trees of at most 15 leaves at learning rate 0.1 (half the trees at twice the step);
- `t100_l15_mcs200`: 100 trees of at most 15 leaves at learning rate 0.1, leaves of at least 200 rows;
- `shipped_new`: `capped_lightgbm_params`, the schedule shipped in commit 5947600 and reverted - 150
  trees x 15 leaves at lr 0.1 on full data; on thin data `current`'s schedule wherever that has at most
  150 trees and 15 leaves, else capped there with the rate raised to keep `current`'s trees x rate.

The first two are `current`'s parameters with explicit ones on top (what the scaling sets besides them,
depth cap and L2 penalty on thin data, stays); each variant's full parameter set goes in as
`TrainConfig.lightgbm_params` (which win over the shipped scaled defaults), computed from the cold head's
own training rows and positives.

Setting (bench_timing.py's): a history simulated for twice the span with twice the deals (cycle scale 1)
and cut in the middle; the cold head is fitted and calibrated as training does
(`training.train.prepare_training_data` and `fit_head` on the cut history, the run's seed) and put in
place of the cold head of the bundle `train` made (the close head, bands and reasons data unchanged);
every test-window snapshot of the cut history (`--points 0`, bench_timing's `truth_metrics`) is scored
and its cold risk judged against what happened next in the full history: ROC AUC and ECE (10 bins). Also
per variant: its shape (`bench_reasons_floor.tree_shape`) and the median ms of one row's TreeSHAP
contributions and probability (`bench_one_deal.model_floor` over the 20 open deals at the cut whose event
counts are closest to 45).

Rule, written before reading results: a variant may be adopted only if on EVERY history its cold ROC AUC
is not lower than `current`'s by more than 0.003 and its cold ECE is not higher by more than 0.003; when
both pass, the one with the lower TreeSHAP time on the 20,000-deal history. (Applied to `t150_l15` and
`t100_l15_mcs200` on 5,000 deals seeds 0-2 and 20,000 seed 0: `t150_l15` passed.)

Rule for `shipped_new`, written 2026-12-02 before any run of it: the new schedule stays shipped only if
on EVERY one of these fresh and thin histories - 1,000 deals seeds 0 and 1, 2,000 deals seed 0, 5,000
deals seeds 3 and 4, 20,000 deals seed 1 - its cold ROC AUC is not lower than `current`'s by more than
0.003 and its cold ECE is not higher by more than 0.003 (the point figures; the paired intervals are
context). If it fails on any one, the shipped defaults go back to `current`'s. Outcome: it failed on
5,000 deals seed 4 (cold ECE +0.0073; AUC +0.0044) and passed on the other five; the defaults went back.

Run: nice -n 19 .venv/bin/python bench/bench_cold_size.py --deals 5000 --seed 0   (then 1, 2; and
     --deals 20000 --seed 0); for the new schedule
     nice -n 19 .venv/bin/python bench/bench_cold_size.py --deals 1000 --seed 0 --variants current shipped_new
     (then 1,000 seed 1, 2,000 seed 0, 5,000 seeds 3 and 4, 20,000 seed 1, smallest first, one at a time);
     `--table PATH...` prints the comparison of saved results and the verdict.
Writes bench/results/cold_size_<deals>_seed<seed>.json (or --out).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.bench_one_deal import model_floor  # noqa: E402
from bench.bench_reasons_floor import open_rows, tree_shape  # noqa: E402
from bench.common import RESULTS, write_result  # noqa: E402

SPAN_DAYS = 730

def capped_lightgbm_params(n_rows: int, n_positive: int) -> dict[str, Any]:
    """The schedule shipped in commit 5947600 and reverted when its rule failed (`shipped_new`): 150 trees
    x 15 leaves at lr 0.1 on full data; on thin data `current`'s, capped at 150 trees and 15 leaves with
    the rate raised where the tree cap binds so that trees x rate stays `current`'s (0.05 x its trees)."""
    from models.heads import data_scale, lightgbm_params

    out = lightgbm_params(n_rows, n_positive)
    if data_scale(n_rows, n_positive) >= 1.0:
        return {**out, "n_estimators": 150, "num_leaves": 15, "learning_rate": 0.1}
    trees = min(int(out["n_estimators"]), 150)
    return {**out, "n_estimators": trees, "num_leaves": min(int(out["num_leaves"]), 15),
            "learning_rate": 0.05 * (int(out["n_estimators"]) / trees)}


# each variant: the cold head's training rows and positives -> its full LightGBM parameters
# (`current` is the shipped schedule, `models.heads.lightgbm_params`: the defaults went back when the
# rule failed, so it is the schedule every result here was judged against)
VARIANTS: dict[str, Callable[[int, int], dict[str, Any]]] = {
    "current": lambda n, p: _shipped(n, p),
    "t150_l15": lambda n, p: _shipped(
        n, p, {"n_estimators": 150, "num_leaves": 15, "learning_rate": 0.1}),
    "t100_l15_mcs200": lambda n, p: _shipped(
        n, p, {"n_estimators": 100, "num_leaves": 15, "learning_rate": 0.1, "min_child_samples": 200}),
    "shipped_new": capped_lightgbm_params,
}
MAX_AUC_LOSS = 0.003


def _shipped(n_rows: int, n_positive: int, params: dict[str, Any] | None = None) -> dict[str, Any]:
    from models.heads import lightgbm_params

    return lightgbm_params(n_rows, n_positive, params)

SIZE_PARAMS = ("n_estimators", "num_leaves", "learning_rate", "max_depth", "min_child_samples", "reg_lambda")
MAX_ECE_GAIN = 0.003


def run(deals: int, seed: int, rounds: int, variants: list[str]) -> dict[str, Any]:
    import pandas as pd

    from bench.bench_timing import judged_points, truth_metrics
    from features.build import FeatureBuilder
    from features.labels import cold_label
    from models.bundle import Head, ScoringBundle
    from models.comparison import bootstrap_comparison
    from models.heads import data_scale
    from models.scoring import score_points
    from training.simulate import simulate_history
    from training.train import (
        HEADS,
        TrainConfig,
        closed_deal_count,
        data_note_for,
        fit_head,
        head_rows,
        prepare_training_data,
        train,
    )

    start = pd.Timestamp("2024-01-01", tz="UTC")
    cut_at = start + pd.Timedelta(days=SPAN_DAYS)
    full = simulate_history(2 * deals, seed=seed, start=str(start.date()),
                            end=str((cut_at + pd.Timedelta(days=SPAN_DAYS)).date()), cycle_scale=1.0)
    cut = full.cut(cut_at)
    trained = train(cut, TrainConfig(seed=seed)).bundle
    data = prepare_training_data(cut, TrainConfig(seed=seed))
    labelled = data.frame[data.frame["window"] != "test"]
    n_pos = {h: int(min((labelled[c] == 1).sum(), (labelled[c] == 0).sum())) for h, c in HEADS.items()}
    thin, _ = data_note_for(closed_deal_count(cut), n_pos, TrainConfig(seed=seed))
    points = judged_points(cut, 0, seed)  # every test-window snapshot, as truth_metrics(n_points=0) judges
    builder = FeatureBuilder().fit(cut)
    y = cold_label(full, points).to_numpy(dtype=float)
    paired = pd.DataFrame({"head": "cold", "y": y, "deal_id": points["deal_id"].to_numpy(dtype=object)})
    cold_train = head_rows(data.frame, HEADS["cold"])[0]
    n_rows, n_positive = len(cold_train), int((cold_train[HEADS["cold"]] == 1).sum())
    out: dict[str, Any] = {"deals": deals, "seed": seed, "deals_in_training_history": cut.n_deals(),
                           "thin": thin, "cold_training_rows": n_rows, "cold_training_positives": n_positive,
                           "data_scale": data_scale(n_rows, n_positive), "variants": {}}
    for name in variants:
        # threads stay the run's (`TrainConfig.n_jobs`), as in training: the schedules' own n_jobs is dropped
        params = {k: v for k, v in VARIANTS[name](n_rows, n_positive).items() if k != "n_jobs"}
        t0 = time.perf_counter()
        fit = fit_head("cold", data, TrainConfig(seed=seed, lightgbm_params=params), thin)
        fit_s = time.perf_counter() - t0
        bundle = ScoringBundle(Head.lightgbm(fit.model, fit.calibrator), trained.close,
                               trained.feature_columns, trained.categorical_levels, trained.band_thresholds,
                               trained.reference, trained.metadata)
        truth = truth_metrics(full, cut, bundle, n_points=0, seed=seed)["cold_risk"]
        paired[name] = score_points(bundle, cut, points, builder, top_reasons=0)["cold_risk"].to_numpy(float)
        rows, _ = open_rows(bundle, cut)
        floor = model_floor(bundle, rows, rounds)
        assert bundle.cold.booster is not None and trained.cold.booster is not None
        # which variant is the shipped schedule: its fit is `train`'s, tree for tree
        out[f"{name}_is_trained_head"] = (bundle.cold.booster.model_to_string()
                                         == trained.cold.booster.model_to_string())
        out["variants"][name] = {
            "params": {k: params[k] for k in SIZE_PARAMS if k in params},
            "served": fit.served, "fit_seconds": round(fit_s, 1),
            "shape": tree_shape(bundle.cold.booster),
            "cold_roc_auc": truth["roc_auc"], "cold_ece": truth["ece"], "n_points": truth["n"],
            "ece_noise_floor": truth["ece_noise_floor"],
            "treeshap_ms": floor["cold_contributions"], "cold_probability_ms": floor["cold_probability"],
        }
    # context for the rule (which reads the point figures above): each variant minus `current` with a 95 %
    # interval from 200 paired resamples of test deals (a deal's snapshots drawn together)
    paired = paired[np.isfinite(paired["y"]) & np.all(np.isfinite(paired[variants]), axis=1)]
    _, diffs = bootstrap_comparison(paired, variants, "current", n_boot=200, seed=0)
    for row in diffs[diffs["metric"].isin(["roc_auc", "ece"])].itertuples():
        out["variants"][row.version][f"{row.metric}_minus_current"] = {
            "difference": row.difference, "ci_low": row.ci_low, "ci_high": row.ci_high}
    return out


def table(paths: list[Path]) -> None:
    """Each history's figures against `current`, and the rule's verdict per variant."""
    runs = [json.loads(p.read_text()) for p in paths]
    passes: dict[str, bool] = {}
    for r in runs:
        base = r["variants"]["current"]
        scale = f", data scale {r['data_scale']:.3f}" if "data_scale" in r else ""
        trained = {k.removesuffix("_is_trained_head"): v for k, v in r.items()
                   if k.endswith("_is_trained_head")}
        print(f"deals {r['deals']} seed {r['seed']} (thin={r['thin']}{scale}, {int(base['n_points'])} points,"
              f" train's own head: {trained})")
        for name, v in r["variants"].items():
            d_auc, d_ece = v["cold_roc_auc"] - base["cold_roc_auc"], v["cold_ece"] - base["cold_ece"]
            ok = d_auc >= -MAX_AUC_LOSS and d_ece <= MAX_ECE_GAIN
            if name != "current":
                passes[name] = passes.get(name, True) and ok
            s = v["shape"]
            mark = "" if name == "current" else ("  ok" if ok else "  FAIL")
            rate = f"{v['params']['learning_rate']:.4g}" if "learning_rate" in v["params"] else "-"
            print(f"  {name:16s} trees {s['trees']:3d} leaves {s['leaves_mean']:5.1f}"
                  f" depth {s['leaf_depth_mean']:4.1f} lr {rate:6s}"
                  f"  AUC {v['cold_roc_auc']:.4f} ({d_auc:+.4f}{_ci(v, 'roc_auc')})"
                  f"  ECE {v['cold_ece']:.4f} ({d_ece:+.4f}{_ci(v, 'ece')})"
                  f"  TreeSHAP {v['treeshap_ms']:.3f} ms{mark}")
    for name, ok in passes.items():
        n = sum(name in r["variants"] for r in runs)
        print(f"{name}: {'passes the rule on all' if ok else 'fails the rule on one or more of'} the"
              f" {n} histories it ran on")


def _ci(variant: dict[str, Any], metric: str) -> str:
    interval = variant.get(f"{metric}_minus_current")
    return f" [{interval['ci_low']:+.4f}, {interval['ci_high']:+.4f}]" if interval else ""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--deals", type=int, default=5000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rounds", type=int, default=300)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS),
                        help="which to fit (`current` always is: the others are judged against it)")
    parser.add_argument("--table", type=Path, nargs="+", default=None, help="print saved results and stop")
    args = parser.parse_args()
    if args.table:
        table(args.table)
        return
    out = args.out or RESULTS / f"cold_size_{args.deals}_seed{args.seed}.json"
    variants = ["current", *(v for v in args.variants if v != "current")]
    write_result("cold_size", run(args.deals, args.seed, args.rounds, variants), out)


if __name__ == "__main__":
    main()
