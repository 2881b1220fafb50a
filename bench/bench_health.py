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

`--after-win` times instead health right after a deal is won (issue 8): per round and pipeline, one open
deal is won (a stage change to the pipeline's won stage, dated now, written by `Store.add_events`), then
`after_win` is the first health read as the route computes it (`serving.routes.pipelines._health`, the
learned limits due), `refresh` one round of `refresh_stage_limits` (the background refresh), and
`settled` the read after it (the stored limits: the as-of-now path's time). `..._deals_read` counts the
deals whose stage changes a first read read to learn the limits (`Store._learning_changes`),
`history_reads` the first reads that took the window's-histories path (`Store.health_history`). The first
round's first read
of each pipeline is checked against `pipeline_health` of the pipeline's whole history. With `--warm-up`,
`Store.keep_won_visits` runs first (`warm_up_ms`), as the service runs it in the background at start:
the first round's first reads (`after_win_round_1_ms`, a fresh process's first read after a win) then
reuse the won deals' visits it learned, as the later rounds' do.

Run: .venv/bin/python bench/bench_health.py [--deals 10000] [--rounds 15] [--backends sqlite] [--after-win]
[--warm-up]
Writes bench/results/health_paths.json (`--after-win`: health_after_win.json; `--out NAME` another name).
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
from serving.routes.pipelines import DEFAULT_STALLED_LIMIT, _health  # noqa: E402
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


def _after_win(store: Store, pipelines: list[str], rounds: int, warm_up: bool = False) -> dict[str, Any]:
    deals = store.table("deals")
    with store.engine.connect() as conn:
        open_ids = {
            p: list(conn.execute(
                sa.select(deals.c.deal_id).where(deals.c.pipeline == p, deals.c.outcome == "open")
                .order_by(deals.c.deal_id).limit(rounds)
            ).scalars())
            for p in pipelines
        }
    specs = store.pipeline_specs(pipelines)
    history_reads = [0]
    window_histories = store.health_history

    def counted(*args: Any, **kwargs: Any) -> Any:
        history_reads[0] += 1
        return window_histories(*args, **kwargs)

    store.health_history = counted  # type: ignore[method-assign]
    learning_changes, deals_read = store._learning_changes, [0]

    def read_changes(*args: Any, **kwargs: Any) -> Any:
        changes = learning_changes(*args, **kwargs)
        deals_read[0] += int(changes["deal_id"].nunique())
        return changes

    store._learning_changes = read_changes  # type: ignore[method-assign]
    won_read: list[int] = []  # per first read: the deals whose stage changes it read to learn the limits
    times: dict[str, list[float]] = {"after_win": [], "refresh": [], "settled": []}
    warmed: dict[str, Any] = {}
    if warm_up:  # as the service does in the background at start
        start = time.perf_counter()
        warmed["warmed_pipelines"] = store.keep_won_visits()
        warmed["warm_up_ms"] = round(1000 * (time.perf_counter() - start), 2)
    checked = 0
    for r in range(rounds):
        for pipeline in pipelines:
            won = specs[pipeline].won[0]
            now = pd.Timestamp.now(tz="UTC")
            store.add_events(stage_changes=pd.DataFrame({
                "deal_id": [open_ids[pipeline][r]], "stage": [won], "changed_at": [now],
                "event_id": [f"bench-win-{r}"]}))
            until = pd.Timestamp.now(tz="UTC")
            since = until - pd.Timedelta(days=30)
            deals_read[0] = 0
            start = time.perf_counter()
            answer = _health(store, pipeline, since, until, None, DEFAULT_STALLED_LIMIT)
            times["after_win"].append(1000 * (time.perf_counter() - start))
            won_read.append(deals_read[0])
            if r == 0:
                whole = store.load_history(pipelines=[pipeline])
                expected = pipeline_health(whole, since, until, pipeline=pipeline,
                                           stalled_limit=DEFAULT_STALLED_LIMIT)
                if answer != {"pipeline": pipeline, **expected}:
                    raise AssertionError(f"health after a win differs from the whole history for {pipeline}")
                checked += 1
            start = time.perf_counter()
            refresh_stage_limits(store)
            times["refresh"].append(1000 * (time.perf_counter() - start))
            start = time.perf_counter()
            _health(store, pipeline, since, until, None, DEFAULT_STALLED_LIMIT)
            times["settled"].append(1000 * (time.perf_counter() - start))
    out: dict[str, Any] = {
        name: {"p50_ms": round(float(np.median(v)), 2), "p99_ms": round(float(np.percentile(v, 99)), 2)}
        for name, v in times.items()
    }
    # the first round's first reads: no visits learned in a read kept by the store yet (`Store.health_state`)
    out["after_win_round_1_ms"] = [round(v, 2) for v in times["after_win"][: len(pipelines)]]
    out["after_win_round_1_deals_read"] = won_read[: len(pipelines)]
    out["after_win_later_deals_read_max"] = max(won_read[len(pipelines):], default=None)
    # the later rounds' first reads alone: the won deals' visits kept from the round before
    later = times["after_win"][len(pipelines):]
    if later:
        out["after_win_kept"] = {"p50_ms": round(float(np.median(later)), 2),
                                 "p99_ms": round(float(np.percentile(later, 99)), 2)}
    out.update(warmed)
    out["history_reads"] = history_reads[0]
    out["first_reads"] = len(times["after_win"])
    out["checked_against_whole_history"] = checked
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--deals", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--backends", default="sqlite", help="comma-separated: sqlite,postgresql")
    parser.add_argument("--after-win", action="store_true", help="health right after a deal is won")
    parser.add_argument("--warm-up", action="store_true",
                        help="with --after-win: learn the won deals' visits first, as the service does")
    parser.add_argument("--out", default=None, help="result name (default health_paths / health_after_win)")
    args = parser.parse_args()
    history = recent_history(args.deals)
    pipelines = sorted(history.pipelines)
    events = len(history.stage_changes) + len(history.activities) + len(history.field_changes)
    result: dict[str, Any] = {"deals": args.deals, "events": int(events), "window_days": 30,
                              "rounds": args.rounds, "pipelines": pipelines, "backends": {}}
    if args.after_win:
        result["warm_up"] = args.warm_up
    for backend in args.backends.split(","):
        with imported_store(backend, history) as store:
            refresh_stage_limits(store)
            result["backends"][backend] = (_after_win(store, pipelines, args.rounds, args.warm_up)
                                           if args.after_win else _time_paths(store, pipelines, args.rounds))
    write_result(args.out or ("health_after_win" if args.after_win else "health_paths"), result)


if __name__ == "__main__":
    main()
