"""The close head's hazard map, variants side by side on one booster, judged against the truth.

Same setting as `bench_timing.py` (a history simulated for twice the span and cut in the middle; the
model trained on the cut history, its test-window snapshots judged against what happened next), but
the hazard booster is fitted once and only the map from its hazards to calibrated ones changes:

- `current`: the map training fits (`models.timing.OutcomeSplitCalibrator` since round 5 of
  docs/models.md; `HazardCalibrator` with each deal's rows counting once before, which is what
  `current` is in the results committed with round 5 and earlier);
- `vector_scaling`: `HazardCalibrator` fitted as training fitted it before round 5 (each deal's rows
  counting once), so that runs after the change still compare with it;
- `none`: the booster's own hazards;
- `equal_weights`: `HazardCalibrator` with every person-period row weighing the same;
- `equal_weights_deal_evidence`: rows weighing the same, but all of them together as much as the
  calibration window's deals (each row weighs deals / rows): the shape of `equal_weights` (no pull
  toward the fast closers' few rows) with the evidence, against the prior, of `current` (a deal's
  weekly snapshots are one outcome, not many). Equivalent to `equal_weights` with the prior's sd
  times sqrt(deals / rows), which is how it is fitted.
- `outcome_split` (round 5): the probability of closing in each period left as the booster gives it,
  only the share won among closes mapped (`models.timing.OutcomeSplitCalibrator`: c and d fitted on the
  calibration window's closing rows, each closing deal counting once, prior sd 0.15 toward the
  identity); `outcome_split_wide` the same with prior sd 0.5; `outcome_split_intercept` (and `_wide`)
  with c held at 1, the shift d alone. Their slip risk is `none`'s by construction.

Every test-window snapshot is judged (at `--deals 20000` about 23,000 snapshots of 4,000 deals, where
the ECE noise floor for outcomes shared within deals is about 0.008, against 0.021 for `bench_timing`'s
3,000 points): the only size at which the maps' differences stand above the noise. Per variant: close
ROC AUC, ECE, mean predicted minus won, the 90-day and slip ECE, and observed minus predicted per bin;
per variant and figure, its ECE minus `current`'s with a 95 % interval from 200 paired resamples of the
test deals (`models.comparison.bootstrap_comparison`: the same draw for every map).

Run: .venv/bin/python bench/bench_hazard_maps.py [--deals 20000] [--seed 0] [--cycle-scale 1]
Writes bench/results/hazard_maps_seed<seed>.json.
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
from features.labels import slip_label, won_label, won_within_label
from models.calibration import ece_noise_floor, expected_calibration_error, reliability_bins
from models.comparison import bootstrap_comparison
from models.timing import (
    OPEN,
    HazardCalibrator,
    OutcomeSplitCalibrator,
    TimingCurves,
    TimingModel,
    expand_frame,
    person_periods,
    slip_risk,
)
from training.metrics import binary_metrics
from training.simulate import simulate_history
from training.snapshots import make_snapshots
from training.train import TrainConfig, fit_timing, prepare_training_data

RESULTS = Path(__file__).resolve().parent / "results"
SPAN_DAYS = 730
N_BOOT = 200  # resamples of test deals for the paired differences against `current`


def run(deals: int, seed: int, cycle_scale: float) -> dict[str, Any]:
    start = pd.Timestamp("2024-01-01", tz="UTC")
    cut_at = start + pd.Timedelta(days=SPAN_DAYS)
    full = simulate_history(2 * deals, seed=seed, start=str(start.date()),
                            end=str((cut_at + pd.Timedelta(days=SPAN_DAYS)).date()), cycle_scale=cycle_scale)
    cut = full.cut(cut_at)
    config = TrainConfig(seed=seed)
    builder = FeatureBuilder().fit(cut)
    data = prepare_training_data(cut, config, builder=builder)
    frame, cols = data.frame, data.feature_columns
    cal = frame[frame["window"] == "calibration"]
    timing = fit_timing(frame[frame["window"] == "train"], cal, cols, config)
    pp = person_periods(cal["event"], cal["event_days"], cal["observed_days"])
    raw_cal = np.asarray(timing.booster.predict(expand_frame(cal, cols, pp)), dtype=np.float64)
    n_cal_deals = int(cal["deal_id"].iloc[pp.row].nunique())
    deal_evidence_sd = HazardCalibrator().prior_sd * float(np.sqrt(n_cal_deals / max(len(pp.row), 1)))
    maps = {
        "current": timing.calibrator,
        "none": HazardCalibrator(),
        "equal_weights": HazardCalibrator().fit(raw_cal, pp.target),
        "equal_weights_deal_evidence": HazardCalibrator(prior_sd=deal_evidence_sd).fit(raw_cal, pp.target),
    }
    cal_groups = cal["deal_id"].to_numpy(dtype=object)[pp.row]
    maps["vector_scaling"] = HazardCalibrator().fit(raw_cal, pp.target, groups=cal_groups)
    for name, sd, fit_scale in (("outcome_split", 0.15, True), ("outcome_split_wide", 0.5, True),
                                ("outcome_split_intercept", 0.15, False),
                                ("outcome_split_intercept_wide", 0.5, False)):
        maps[name] = OutcomeSplitCalibrator(prior_sd=sd, fit_scale=fit_scale).fit(
            raw_cal, pp.target, groups=cal_groups)
    closing = pp.target != OPEN

    points = make_snapshots(cut)
    points = points[points["as_of"] > cut.end_time - pd.Timedelta(days=90)].reset_index(drop=True)
    feats = builder.transform(cut, points)
    due = pd.to_datetime(feats["expected_close_date"], utc=True)
    days_to_close = ((due - points["as_of"]).dt.total_seconds() / 86_400.0).to_numpy(dtype=float)
    truth = {
        "close_probability": won_label(full, points).to_numpy(dtype=float),
        "close_probability_90d": won_within_label(full, points, 90).to_numpy(dtype=float),
        "slip_risk": slip_label(full, points, days_to_close).to_numpy(dtype=float),
    }
    deal_ids = points["deal_id"].to_numpy(dtype=object)
    out: dict[str, Any] = {"deals_in_training_history": len(cut.deals), "cycle_scale": cycle_scale,
                           "calibration_rows": len(pp.row), "calibration_deals": n_cal_deals,
                           "calibration_closing_rows": int(closing.sum()),
                           "calibration_closing_deals": int(pd.Series(cal_groups[closing]).nunique()),
                           "test_snapshots": len(points), "variants": {}}
    scored: dict[str, dict[str, np.ndarray]] = {}
    # the booster's hazards once; each map applied to them as `TimingModel.curves` does
    raw = TimingModel(timing.booster).raw_hazards(feats[cols])
    n_points, n_k = raw.shape[:2]
    for name, calibrator in maps.items():
        curves = TimingCurves(calibrator.transform(raw.reshape(n_points * n_k, 3)).reshape(n_points, n_k, 3),
                              timing.period_days)
        scores = {
            "close_probability": curves.p_won(),
            "close_probability_90d": curves.won_within(90.0),
            "slip_risk": slip_risk(curves, days_to_close),
        }
        result: dict[str, Any] = {"map": calibrator.to_dict()}
        for target, p in scores.items():
            y = truth[target]
            keep = np.isfinite(y) & np.isfinite(p)
            entry: dict[str, Any] = {
                "n": int(keep.sum()),
                "n_deals": int(pd.Series(deal_ids[keep]).nunique()),
                "ece": expected_calibration_error(p[keep], y[keep]),
                "ece_noise_floor_deals": ece_noise_floor(p[keep], groups=deal_ids[keep]),
                "mean_predicted_minus_observed": float(p[keep].mean() - y[keep].mean()),
            }
            if target == "close_probability":
                entry["roc_auc"] = binary_metrics(y[keep], p[keep])["roc_auc"]
                entry["observed_minus_predicted_by_bin"] = [
                    {"predicted": round(b["predicted"], 3), "gap": round(b["observed"] - b["predicted"], 3),
                     "count": int(b["count"])}
                    for b in reliability_bins(p[keep], y[keep])
                ]
            result[target] = entry
        out["variants"][name] = result
        scored[name] = scores
    # Paired: every variant against `current` on the same bootstrap draws of test deals (a deal's
    # snapshots come along together), so the differences' intervals are far narrower than the floors.
    for target, y in truth.items():
        keep = np.isfinite(y) & np.all([np.isfinite(s[target]) for s in scored.values()], axis=0)
        frame_t = pd.DataFrame({"head": target, "y": y[keep], "deal_id": deal_ids[keep],
                                **{name: s[target][keep] for name, s in scored.items()}})
        _, diffs = bootstrap_comparison(frame_t, list(scored), "current", n_boot=N_BOOT, seed=0)
        for row in diffs[diffs["metric"] == "ece"].itertuples():
            out["variants"][row.version][target]["ece_minus_current"] = {
                "difference": row.difference, "ci_low": row.ci_low, "ci_high": row.ci_high}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--deals", type=int, default=20000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cycle-scale", type=float, default=1.0)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    started = time.perf_counter()
    body = run(args.deals, args.seed, args.cycle_scale)
    result = {"deals": args.deals, "seed": args.seed, **body,
              "seconds": round(time.perf_counter() - started, 1),
              "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                          "load_avg_1m": os.getloadavg()[0]}}
    out = args.out or RESULTS / f"hazard_maps_seed{args.seed}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, default=str))
    targets = ("close_probability", "close_probability_90d", "slip_risk")
    for name, v in result["variants"].items():
        brief = {t: {k: round(x, 4) for k, x in v[t].items() if isinstance(x, float)} for t in targets}
        print(json.dumps({"map": name, **brief}))


if __name__ == "__main__":
    main()
