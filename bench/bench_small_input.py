"""Benchmark: fixed per-call cost of validation and feature building for tiny inputs.

The service scores one deal inline (`POST /v1/score`): it validates a history of one deal with a few
dozen events (`DealHistory.from_frames`) and builds its features against the population of the whole
store (`build_features(history, points, population)`). Both must cost milliseconds, not the fixed
pandas overhead of a batch path. Inputs are raw frames shaped like the service builds them (object
columns, Python datetimes). Writes bench/results/small_input.json.

Run: .venv/bin/python bench/bench_small_input.py [--population-deals N] [--repeats R]
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import write_result  # noqa: E402
from features.build import build_features  # noqa: E402
from features.history import DealHistory  # noqa: E402
from features.population_stats import compute_population_stats  # noqa: E402
from training.simulate import simulate_history  # noqa: E402

logger = logging.getLogger("bench_small_input")

EVENT_COLUMNS = {
    "stage_changes": ["deal_id", "stage", "changed_at", "event_id"],
    "activities": ["deal_id", "type", "occurred_at", "direction", "event_id"],
    "field_changes": ["deal_id", "field", "value", "changed_at", "event_id"],
}
DEAL_COLUMNS = ["deal_id", "pipeline", "owner", "amount", "created_at", "team", "account",
                "expected_close_date", "currency"]


def _records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """Rows as the API hands them over: Python scalars, datetimes, None for missing values."""
    out: list[dict[str, Any]] = []
    for row in frame.astype(object).to_dict(orient="records"):
        clean: dict[str, Any] = {}
        for key, value in row.items():
            if value is None or (not isinstance(value, str) and pd.isna(value)):
                clean[str(key)] = None
            elif isinstance(value, pd.Timestamp):
                clean[str(key)] = value.to_pydatetime()
            else:
                clean[str(key)] = value
        out.append(clean)
    return out


def raw_frames(history: DealHistory, deal_ids: list[str]) -> dict[str, pd.DataFrame]:
    """Raw frames for some deals of a history, built like `serving.routes.scoring.inline_frames`."""
    sub = history.subset(deal_ids)
    deals = sub.deals
    columns = DEAL_COLUMNS + [c for c in deals.columns if c not in DEAL_COLUMNS]
    frames = {"deals": pd.DataFrame(_records(deals), columns=columns)}
    for table, cols in EVENT_COLUMNS.items():
        frames[table] = pd.DataFrame(_records(getattr(sub, table)[cols]), columns=cols)
    return frames


def pick_deals(history: DealHistory, n_deals: int, events_per_deal: int) -> list[str]:
    """Deals whose event count is closest to `events_per_deal` (deterministic)."""
    counts = pd.concat(
        [history.stage_changes["deal_id"], history.activities["deal_id"], history.field_changes["deal_id"]]
    ).value_counts()
    counts = counts.reindex(history.deals["deal_id"], fill_value=0)
    distance = (counts - events_per_deal).abs().sort_values(kind="stable")
    return [str(d) for d in distance.index[:n_deals]]


def timed(fn: Callable[[], Any], repeats: int) -> dict[str, float]:
    """Milliseconds per call (after two warm-up calls) over `repeats` calls."""
    fn()
    fn()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1000.0)
    ordered = sorted(samples)
    return {
        "median_ms": round(statistics.median(samples), 3),
        "p90_ms": round(ordered[int(0.9 * (len(ordered) - 1))], 3),
        "min_ms": round(ordered[0], 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--population-deals", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(message)s")

    store = simulate_history(n_deals=args.population_deals, seed=args.seed)
    population = compute_population_stats(store)
    as_of = store.end_time
    cases: dict[str, Any] = {}
    for n_deals, events in ((1, 50), (10, 30)):
        ids = pick_deals(store, n_deals, events)
        frames = raw_frames(store, ids)
        n_events = sum(len(frames[t]) for t in EVENT_COLUMNS)

        def validate(frames: dict[str, pd.DataFrame] = frames) -> DealHistory:
            return DealHistory.from_frames(
                frames["deals"], frames["stage_changes"], frames["activities"], frames["field_changes"],
                pipelines=store.pipelines, source="bench",
            )

        history = validate()
        points = pd.DataFrame(
            {
                "deal_id": pd.array(history.deals["deal_id"].to_numpy(dtype=object), dtype="string"),
                "as_of": pd.Series(pd.DatetimeIndex([as_of] * len(history.deals)).as_unit("ns")),
            }
        )
        cases[f"{n_deals}_deals"] = {
            "deals": n_deals,
            "events": n_events,
            "validate": timed(validate, args.repeats),
            "build_with_store_population": timed(
                partial(build_features, history, points, population), args.repeats
            ),
            "build_own_population": timed(
                lambda h=history, p=points: build_features(h, p, compute_population_stats(h)), args.repeats
            ),
        }
    one = cases["1_deals"]
    result = {
        "population_deals": args.population_deals,
        "repeats": args.repeats,
        "cases": cases,
        "target_ms_each": 10.0,
        "meets_target": bool(
            one["validate"]["median_ms"] < 10.0 and one["build_with_store_population"]["median_ms"] < 10.0
        ),
        "pandas": pd.__version__,
        "numpy": np.__version__,
    }
    write_result("small_input", result)


if __name__ == "__main__":
    main()
