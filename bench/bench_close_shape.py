"""Where the close probability's calibration error is made: by horizon, by pipeline, by stage.

Same setting as `bench_timing.py` (a history simulated for four years and cut after two; the close head
fitted on the cut history as training fits it; every snapshot of the cut history's last 90 days judged
against the full history). For the shipped close head it reports the ECE of P(won within h days) for
h = 30, 90, 180, 365 and 730 against `won_within_label(h)` (the eventual probability is the last of
them, up to the tail after the horizon), and, per pipeline and per stage, the mean predicted and
observed eventual win and the ECE. Issue 9's close-probability target is on the eventual probability;
this says which part of the curve the error comes from.

Two diagnostics of remedies, each judged on the same snapshots (no paired intervals: a reading, not a
verdict; `bench_hazard_maps.py` and `bench_timing_boosters.py` hold the judged rounds):
- `pipeline_split`: training's outcome split (`OutcomeSplitCalibrator`, c and d) fitted per pipeline on
  the calibration window's closing rows of that pipeline, same prior; `pipeline_shift` the same with c
  held at 1;
- `split_first_2` / `split_first_3`: training's split applied to the first 2 / 3 periods only, the
  booster's own won share after (the split is fitted on a 60-day window, whose closes are in the first
  two periods); `no_split`: the booster's hazards alone;
- `trees_300`: the hazard booster with 300 trees instead of 100 (same learning rate), `learning_rate_015`
  with a learning rate of 0.15 instead of 0.05: is the booster underfit? (training's map refitted on each.)

Run: nice -n 19 .venv/bin/python bench/bench_close_shape.py --deals 20000 --seed 0
Writes bench/results/close_shape_<deals>_seed<seed>.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.bench_timing import cut_history, judged_points
from bench.common import RESULTS, machine
from features.build import FeatureBuilder
from features.labels import won_label, won_within_label
from models.calibration import expected_calibration_error
from models.timing import OutcomeSplitCalibrator, TimingCurves, TimingModel, expand_frame, person_periods
from training.metrics import binary_metrics
from training.train import TrainConfig, fit_timing, prepare_training_data

HORIZONS = (30, 90, 180, 365, 730)
MIN_SEGMENT = 300  # snapshots: smaller segments are left out of the per-stage table


def _calibration(p: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    keep = np.isfinite(y)
    return {"n": int(keep.sum()), "predicted": float(p[keep].mean()), "observed": float(y[keep].mean()),
            "ece": expected_calibration_error(p[keep], y[keep])}


def _by(segment: np.ndarray, p: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    out = {}
    for value in sorted(set(segment)):
        rows = segment == value
        if rows.sum() >= MIN_SEGMENT:
            out[str(value)] = _calibration(p[rows], y[rows])
    return out


def _judged(p: np.ndarray, y: np.ndarray, pipeline: np.ndarray) -> dict[str, Any]:
    keep = np.isfinite(y)
    return {**_calibration(p, y), "roc_auc": binary_metrics(y[keep], p[keep])["roc_auc"],
            "by_pipeline": _by(pipeline, p, y)}


def _curves_of(raw: np.ndarray, maps: dict[str, OutcomeSplitCalibrator], pipeline: np.ndarray,
               period_days: float) -> TimingCurves:
    """Each pipeline's map applied to its deals' hazards (`"*"` for every deal)."""
    n, k = raw.shape[:2]
    hazards = np.empty_like(raw)
    for name, split in maps.items():
        rows = np.ones(n, dtype=bool) if name == "*" else pipeline == name
        hazards[rows] = split.transform(raw[rows].reshape(-1, 3)).reshape(-1, k, 3)
    return TimingCurves(hazards, period_days)


def run(deals: int, seed: int) -> dict[str, Any]:
    full, cut = cut_history(deals, seed)
    config = TrainConfig(seed=seed)
    builder = FeatureBuilder().fit(cut)
    data = prepare_training_data(cut, config, builder=builder)
    frame, cols = data.frame, data.feature_columns
    train, cal = frame[frame["window"] == "train"], frame[frame["window"] == "calibration"]
    points = judged_points(cut, 0)
    feats = builder.transform(cut, points)
    pipeline = feats["pipeline"].astype(str).to_numpy()
    stage = (feats["pipeline"].astype(str) + " / " + feats["stage"].astype(str)).to_numpy()
    y = won_label(full, points).to_numpy(dtype=float)

    t0 = time.perf_counter()
    timing = fit_timing(train, cal, cols, config, slip=False)
    fit_seconds = time.perf_counter() - t0
    curves = timing.curves(feats[cols])
    p = curves.p_won()
    out: dict[str, Any] = {
        "deals": deals, "seed": seed, "test_snapshots": len(points), "fit_seconds": round(fit_seconds, 1),
        "close_probability": _judged(p, y, pipeline),
        "map": timing.calibrator.to_dict(),
        "won_within": {str(h): _calibration(curves.won_within(np.full(len(points), float(h))),
                                            won_within_label(full, points, h).to_numpy(dtype=float))
                       for h in HORIZONS},
        "by_stage": _by(stage, p, y),
        "variants": {},
    }

    # per-pipeline outcome splits on the calibration window's closing rows, on the same booster
    pp = person_periods(cal["event"], cal["event_days"], cal["observed_days"])
    raw_cal = np.asarray(timing.booster.predict(expand_frame(cal, cols, pp)), dtype=np.float64)
    cal_deals = cal["deal_id"].to_numpy(dtype=object)[pp.row]
    cal_pipeline = cal["pipeline"].astype(str).to_numpy()[pp.row]
    raw = TimingModel(timing.booster).raw_hazards(feats[cols])
    for name, fit_scale in (("pipeline_split", True), ("pipeline_shift", False)):
        maps = {}
        for pl in sorted(set(pipeline)):
            rows = cal_pipeline == pl
            maps[pl] = OutcomeSplitCalibrator(fit_scale=fit_scale).fit(raw_cal[rows], pp.target[rows],
                                                                       groups=cal_deals[rows])
        pv = _curves_of(raw, maps, pipeline, timing.period_days).p_won()
        out["variants"][name] = {**_judged(pv, y, pipeline),
                                 "maps": {pl: [m.scale_, m.intercept_] for pl, m in maps.items()}}

    mapped = timing.calibrator.transform(raw.reshape(-1, 3)).reshape(raw.shape)
    for name, first in (("split_first_2", 2), ("split_first_3", 3), ("no_split", 0)):
        hazards = raw.copy()
        hazards[:, :first] = mapped[:, :first]
        out["variants"][name] = _judged(TimingCurves(hazards, timing.period_days).p_won(), y, pipeline)

    for name, extra in (("trees_300", {"n_estimators": 300}), ("learning_rate_015", {"learning_rate": 0.15})):
        variant = TrainConfig(seed=seed, timing_params={**config.timing_params, **extra})
        t0 = time.perf_counter()
        fitted = fit_timing(train, cal, cols, variant, slip=False)
        seconds = time.perf_counter() - t0
        pv = fitted.curves(feats[cols]).p_won()
        out["variants"][name] = {**_judged(pv, y, pipeline), "map": fitted.calibrator.to_dict(),
                                 "fit_seconds": round(seconds, 1)}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--deals", type=int, default=20000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    t0 = time.perf_counter()
    result = run(args.deals, args.seed)
    result["seconds"] = round(time.perf_counter() - t0, 1)
    result["machine"] = machine()
    out = args.out or RESULTS / f"close_shape_{args.deals}_seed{args.seed}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, default=str))
    brief = {"close_ece": round(result["close_probability"]["ece"], 4),
             "won_within_ece": {h: round(v["ece"], 4) for h, v in result["won_within"].items()},
             "by_pipeline_ece": {k: round(v["ece"], 4)
                                 for k, v in result["close_probability"]["by_pipeline"].items()},
             "variants_ece": {k: round(v["ece"], 4) for k, v in result["variants"].items()}}
    print(json.dumps(brief))


if __name__ == "__main__":
    main()
