"""Benchmark: reading a few deals' stored history, trusted (typed without re-validation) vs validated.

`Store.load_history(deal_ids=..., trusted=True)` is what the live scorer (a round of up to 500 due deals),
`GET /v1/deals/{id}/score`, `GET /v1/deals/{id}` and the score history read; `trusted=False` validates
the rows again (`DealHistory.from_frames`). On a simulated store of N deals (default 3,000, ending now,
`cycle_scale` 1.2 as bench_store.py), SQLite (and PostgreSQL at 127.0.0.1:5432 in a schema of its own,
dropped afterwards), it times, round-robin so load drift hits both alike: one-deal reads of the first
`--one` deals, and reads of `--batch` deals at once (a live-scoring round); `SELECT 1` alongside as the
floor. Every pair of answers is checked equal (frames exactly, specs, attribute columns).

Run: .venv/bin/python bench/bench_trusted_read.py [--deals 3000] [--one 200] [--batch 500] [--rounds 5]
     [--backends sqlite,postgresql]
Writes bench/results/trusted_read.json.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import imported_store, recent_history, write_result  # noqa: E402
from features.history import DealHistory  # noqa: E402
from serving.store import Store  # noqa: E402

TABLES = ("deals", "stage_changes", "activities", "field_changes")


def _check_same(trusted: DealHistory, validated: DealHistory) -> None:
    for name in TABLES:
        pd.testing.assert_frame_equal(getattr(trusted, name), getattr(validated, name), check_exact=True)
    if trusted.pipelines != validated.pipelines or trusted.attribute_columns != validated.attribute_columns:
        raise AssertionError("the trusted read's specs or attribute columns differ")


def _summary(times: list[float]) -> dict[str, float]:
    return {"p50_ms": round(float(np.median(times)), 3), "p99_ms": round(float(np.percentile(times, 99)), 3),
            "n": len(times)}


def _time_reads(store: Store, groups: list[list[str]], rounds: int) -> dict[str, Any]:
    def select_one(_: list[str]) -> None:
        with store.engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))

    paths: dict[str, Callable[[list[str]], Any]] = {
        "select_1": select_one,
        "validated": lambda ids: store.load_history(deal_ids=ids),
        "trusted": lambda ids: store.load_history(deal_ids=ids, trusted=True),
    }
    times: dict[str, list[float]] = {name: [] for name in paths}
    for _ in range(rounds):
        for ids in groups:
            answers = {}
            for name, path in paths.items():
                start = time.perf_counter()
                answers[name] = path(ids)
                times[name].append(1000 * (time.perf_counter() - start))
            _check_same(answers["trusted"], answers["validated"])
    out: dict[str, Any] = {name: _summary(v) for name, v in times.items()}
    out["speedup_p50"] = round(out["validated"]["p50_ms"] / out["trusted"]["p50_ms"], 2)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--deals", type=int, default=3_000)
    parser.add_argument("--one", type=int, default=200, help="deals read one by one")
    parser.add_argument("--batch", type=int, default=500, help="deals read at once (a live-scoring round)")
    parser.add_argument("--rounds", type=int, default=5, help="rounds of the batch read")
    parser.add_argument("--backends", default="sqlite", help="comma-separated: sqlite,postgresql")
    args = parser.parse_args()
    history = recent_history(args.deals)
    ids = sorted(str(d) for d in history.deals["deal_id"])
    rng = np.random.default_rng(0)
    one = [[str(d)] for d in rng.choice(ids, size=min(args.one, len(ids)), replace=False)]
    batch = [str(d) for d in rng.choice(ids, size=min(args.batch, len(ids)), replace=False)]
    events = len(history.stage_changes) + len(history.activities) + len(history.field_changes)
    result: dict[str, Any] = {"deals": args.deals, "events": int(events), "one_deal_reads": len(one),
                              "batch_deals": len(batch), "batch_rounds": args.rounds, "backends": {}}
    for backend in args.backends.split(","):
        with imported_store(backend, history) as store:
            result["backends"][backend] = {
                "one_deal": _time_reads(store, one, 1),
                f"{len(batch)}_deals": _time_reads(store, [batch], args.rounds),
            }
    write_result("trusted_read", result)


if __name__ == "__main__":
    main()
