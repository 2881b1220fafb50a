"""Pipeline health as of now: the stored-state path against the window's-histories path (issue 8, item 6).

In a temporary folder, simulate N deals (default 10,000, seed 0) ending now with `cycle_scale` 1.2 (as
`bench_store.py` does), import them into a SQLite store (and PostgreSQL at 127.0.0.1:5432 in a schema of
its own, dropped afterwards, with `--backends sqlite,postgresql`), compute the learned stalled limits, then
time round-robin (so load drift hits them alike), for the last 30 days of each pipeline, the two ways
`GET /v1/pipelines/{p}/health` answers:

- `stored_state`: `Store.health_state` (state columns, the window's stage changes, stored limits) +
  `features.health.health_from_current_state`, the path as of now (the first read after a write: the
  service reuses the answer only while nothing was written); `read_p50_ms` is `Store.health_state` alone;
- `window_histories`: `Store.health_history` (the histories of the deals the window can see move) +
  `features.health.pipeline_health`, the path for other windows (and the only one before);

and a `SELECT 1` on the same engine as the floor. Every round checks both give the same figures. This
times the store read and the figures, not HTTP (`bench_store.py` times the endpoint against `/healthz`).

Run: .venv/bin/python bench/bench_health.py [--deals 10000] [--rounds 15] [--backends sqlite]
Writes bench/results/health_paths.json.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import imported_store, recent_history, write_result  # noqa: E402
from features.health import health_from_current_state, pipeline_health  # noqa: E402
from serving.stage_limits import refresh_stage_limits  # noqa: E402
from serving.store import Store  # noqa: E402


def _time_paths(store: Store, pipelines: list[str], rounds: int) -> dict[str, Any]:
    until = pd.Timestamp.now(tz="UTC")
    since = until - pd.Timedelta(days=30)
    t0, t1 = since.floor("us").to_pydatetime(), until.floor("us").to_pydatetime()

    read_ms: list[float] = []

    def stored_state(pipeline: str) -> dict[str, Any]:
        start = time.perf_counter()
        found = store.health_state(pipeline, t0, t1)
        read_ms.append(1000 * (time.perf_counter() - start))
        if found is None:
            raise RuntimeError(f"the stored state cannot answer for {pipeline}")
        return health_from_current_state(found.deals, found.window_changes, found.specs, found.learned,
                                         since, until, pipeline, None, found.left_out)

    def window_histories(pipeline: str) -> dict[str, Any]:
        history, left_out = store.health_history(pipeline, t0, t1)
        return pipeline_health(history, since, until, pipeline=pipeline, left_out=left_out)

    def select_one(_: str) -> None:
        with store.engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))

    paths = {"select_1": select_one, "stored_state": stored_state, "window_histories": window_histories}
    times: dict[str, list[float]] = {name: [] for name in paths}
    for _ in range(rounds):
        for pipeline in pipelines:
            answers = {}
            for name, path in paths.items():
                start = time.perf_counter()
                answers[name] = path(pipeline)
                times[name].append(1000 * (time.perf_counter() - start))
            if answers["stored_state"] != answers["window_histories"]:
                raise AssertionError(f"the two paths differ for {pipeline}")
    out: dict[str, Any] = {
        name: {"p50_ms": round(float(np.median(v)), 2), "p99_ms": round(float(np.percentile(v, 99)), 2)}
        for name, v in times.items()
    }
    # the stored-state path's store read alone (`Store.health_state`; the rest is the figures)
    out["stored_state"]["read_p50_ms"] = round(float(np.median(read_ms)), 2)
    out["speedup_p50"] = round(out["window_histories"]["p50_ms"] / out["stored_state"]["p50_ms"], 1)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--deals", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--backends", default="sqlite", help="comma-separated: sqlite,postgresql")
    args = parser.parse_args()
    history = recent_history(args.deals)
    pipelines = sorted(history.pipelines)
    events = len(history.stage_changes) + len(history.activities) + len(history.field_changes)
    result: dict[str, Any] = {"deals": args.deals, "events": int(events), "window_days": 30,
                              "rounds": args.rounds, "pipelines": pipelines, "backends": {}}
    for backend in args.backends.split(","):
        with imported_store(backend, history) as store:
            refresh_stage_limits(store)
            result["backends"][backend] = _time_paths(store, pipelines, args.rounds)
    write_result("health_paths", result)


if __name__ == "__main__":
    main()
