"""Benchmark: POST /v1/events of one activity on an open deal against GET /healthz (issue 8: p50 <= 5x).

Serves a store that already holds the history (e.g. 100,000 deals imported as bench/bench_store.py
imports them) and times, round-robin so load drift hits them alike, GET /healthz and POST /v1/events of
one new activity (its own event id) on an open deal of the pipeline with the most open deals, the deals
taken in turn: the write is acknowledged once committed, and the live scorer re-scores the deal in the
background meanwhile, as in service. Ratios are to /healthz in the same run.

Each `--root` (a checkout: default this one) is served by a server of its own (`uvicorn
serving.app:create_app`, one worker, registry watcher off, the live scorer as configured by default),
and the rounds go to every server in turn: `--root /work/main --root .` compares a change with its base
on the same machine at the same time. A SQLite store (`--sqlite FILE`) is copied for each server (SQLite's
backup API; the given file is never written); a PostgreSQL store (`--postgresql URL`) is served in place
(the posted events stay in it). Before timing, each server is waited for until it is ready and every open
deal has a live score (the first start of a big store scores them all).

Run: .venv/bin/python bench/bench_post_event.py --sqlite STORE.db --key KEYFILE \
         --tracking-uri sqlite:////path/mlflow.db [--postgresql URL] [--root PATH ...] [--rounds 300]
Writes bench/results/post_event.json (`--out PATH`: PATH instead).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import sqlalchemy as sa

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.bench_store import Answer, EventPoster, latency_rounds  # noqa: E402
from bench.common import free_port, start_server, write_result  # noqa: E402
from serving.store import Store  # noqa: E402

TARGET_X = 5.0  # issue 8: POST /v1/events p50 <= 5x GET /healthz p50


def open_deals(url: str) -> tuple[str, list[str]]:
    """The pipeline with the most open deals and its open deals' ids (in id order)."""
    with contextlib.closing(Store(url)) as store:
        deals = store.table("deals")
        with store.engine.connect() as conn:
            pipeline = conn.execute(
                sa.select(deals.c.pipeline).where(deals.c.outcome == "open").group_by(deals.c.pipeline)
                .order_by(sa.func.count().desc(), deals.c.pipeline).limit(1)
            ).scalar_one()
            ids = conn.execute(
                sa.select(deals.c.deal_id).where(deals.c.outcome == "open", deals.c.pipeline == pipeline)
                .order_by(deals.c.deal_id)
            ).scalars().all()
    return str(pipeline), [str(d) for d in ids]


def wait_scored(url: str, timeout_s: float) -> dict[str, Any]:
    """Poll until every open deal has a live score (bounded); how long it took and how many are left."""
    started = time.perf_counter()
    with contextlib.closing(Store(url)) as store:
        left = store.unscored_open_deals(None)
        while left and time.perf_counter() - started < timeout_s:
            time.sleep(2)
            left = store.unscored_open_deals(None)
    return {"seconds": round(time.perf_counter() - started, 1), "left_unscored": left}


@contextlib.contextmanager
def served(label: str, root: Path, url: str, tracking: str, work: Path,
           timeout_s: float) -> Iterator[dict[str, Any]]:
    """A server of `root`'s code on the store at `url`, ready and with every open deal scored."""
    home = work / f"home-{label}"
    home.mkdir(parents=True, exist_ok=True)
    env = {"DEALRISK_HOME": str(home), "DEALRISK_DATABASE_URL": url, "MLFLOW_TRACKING_URI": tracking,
           "DEALRISK_RELOAD_INTERVAL_S": "0"}
    port = free_port()
    proc = start_server(env, home, port, ready_path="/readyz", timeout_s=timeout_s, root=root)
    try:
        settled = wait_scored(url, timeout_s)
        yield {"label": label, "root": str(root), "base": f"http://127.0.0.1:{port}", "settle": settled}
    finally:
        proc.terminate()  # the service stops its live scorer process on the way out
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=30)


def sqlite_copy(source: Path, target: Path) -> str:
    """A copy of a SQLite store made with SQLite's backup API (consistent even beside a writer)."""
    with contextlib.closing(sqlite3.connect(f"file:{source}?mode=ro", uri=True)) as src, \
            contextlib.closing(sqlite3.connect(target)) as dst:
        src.backup(dst)
    return f"sqlite:///{target}"


def run_backend(stores: list[tuple[str, Path, str]], tracking: str, key: str, work: Path,
                args: argparse.Namespace) -> dict[str, Any]:
    """Time every server (label, root, store URL) round-robin; figures per server."""
    pipeline, ids = open_deals(stores[0][2])
    poster = EventPoster(ids)
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    out: dict[str, Any] = {"pipeline": pipeline, "open_deals_posted_to": len(ids),
                           "load_average_at_start": [round(x, 2) for x in os.getloadavg()]}
    with contextlib.ExitStack() as stack:
        servers = [stack.enter_context(served(label, root, url, tracking, work, args.settle_timeout_s))
                   for label, root, url in stores]
        clients = {s["label"]: stack.enter_context(httpx.Client(base_url=s["base"], headers=headers,
                                                                 timeout=300)) for s in servers}
        calls: dict[str, Callable[[], Answer]] = {}
        for label, client in clients.items():
            calls[f"{label}.healthz"] = partial(client.get, "/healthz")
            calls[f"{label}.post_event"] = partial(poster.post, client)
        times = latency_rounds(calls, args.rounds, args.warmup, args.max_s)
        for s in servers:
            label = s["label"]
            health, post = times[f"{label}.healthz"], times[f"{label}.post_event"]
            out[label] = {
                "root": s["root"], "settle": s["settle"], "healthz": health, "post_event": post,
                "post_event_p50_x": round(post["p50_ms"] / health["p50_ms"], 2),
                "post_event_p99_x": round(post["p99_ms"] / health["p99_ms"], 2),
            }
    out["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sqlite", type=Path, help="a SQLite store file (copied for each server)")
    parser.add_argument("--postgresql", help="a PostgreSQL store URL (served in place)")
    parser.add_argument("--key", required=True, help="an admin API key, or a file holding one")
    parser.add_argument("--tracking-uri", required=True, help="the MLflow tracking URI with a champion")
    parser.add_argument("--root", type=Path, action="append", help="a checkout to serve (repeatable)")
    parser.add_argument("--rounds", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--max-s", type=float, default=600.0, help="stop the rounds after this long")
    parser.add_argument("--settle-timeout-s", type=float, default=900.0)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if not args.sqlite and not args.postgresql:
        parser.error("give --sqlite, --postgresql or both")
    key_path = Path(args.key)
    key = key_path.read_text().strip() if key_path.is_file() else args.key
    roots = [r.resolve() for r in (args.root or [ROOT])]
    labels = [f"{i}:{r.name}" for i, r in enumerate(roots)] if len(roots) > 1 else ["served"]

    result: dict[str, Any] = {"rounds": args.rounds, "warmup": args.warmup, "target_p50_x": TARGET_X,
                              "backends": {}}
    with tempfile.TemporaryDirectory(prefix="bench-post-event-") as tmp:
        work = Path(tmp)
        if args.sqlite:
            stores = [(label, root, sqlite_copy(args.sqlite, work / f"store-{i}.db"))
                      for i, (label, root) in enumerate(zip(labels, roots, strict=True))]
            result["backends"]["sqlite"] = run_backend(stores, args.tracking_uri, key, work, args)
        if args.postgresql:
            stores = [(label, root, args.postgresql) for label, root in zip(labels, roots, strict=True)]
            result["backends"]["postgresql"] = run_backend(stores, args.tracking_uri, key, work, args)
    write_result("post_event", result, args.out)


if __name__ == "__main__":
    main()
