"""Throughput of 16 concurrent clients against 1 (issue 8: >= 1x, "more clients never means less work
done"), on a served copy of a big store, this tree against a baseline tree, interleaved.

Give it a store whose open deals already have live scores (e.g. a copy of the shared 100,000-deal
world) and the MLflow tracking URI of its champion. Each server (`this`, `--baseline DIR`, and one more
of this tree per `--variant NAME=VALUE[,NAME=VALUE]`, which sets those environment variables) serves a
copy of its own (`bench.bench_at_risk.store_copies`: SQLite's backup API, or PostgreSQL's `CREATE
DATABASE ... TEMPLATE`, dropped afterwards) with `python -m dealrisk serve` (one worker, the live
scorer in its own process, registry watcher off, live scores kept for a day so none is re-scored on
the clock mid-run). The mix is bench_store's (`bench.bench_store.throughput`): GET at-risk (limit 50,
default sort, reasons), GET health of the pipeline, POST /v1/score of one open deal inline with its
history (the deal of median event count of 50), POST /v1/events of one activity on an open deal;
`--mix` keeps some of them (`at-risk,health,score,event`, and `healthz` on request).

Each trial runs, for every server in turn (the order alternating by trial), 1 client then `--clients`
clients (that order alternating too) for `--seconds` each; after each run it waits until the live
scorer has scored every write of it (no open deal's live score behind its state), so no run pays for
the one before. The figure per server is the ratio of requests/s over all its trials (many / one),
with every trial's ratio and each request kind's count and latency beside it, and the CPU time per
request of the server process and of its children (the scorer process, its work for the run's writes
included): on a machine other work keeps busy, requests/s of one client suffer most from it (each
request waits for a core at every hop), while CPU per request shows the work each request costs.

Run: .venv/bin/python bench/bench_throughput.py --store STORE.db --tracking sqlite:////path/mlflow.db
         [--baseline /work/main] [--variant DEALRISK_X=1] [--trials 3] [--seconds 20] [--mix ...]
     .venv/bin/python bench/bench_throughput.py --postgresql postgresql+psycopg://postgres@HOST/DB ...
Writes bench/results/throughput.json (`--out PATH` writes PATH).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import sqlalchemy as sa

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.bench_at_risk import _git_head, serve, store_copies, wait_scored  # noqa: E402
from bench.bench_post_event import open_deals  # noqa: E402
from bench.bench_serving import EVENT_FIELDS, deal_payloads  # noqa: E402
from bench.bench_store import EventPoster, throughput  # noqa: E402
from bench.common import write_result  # noqa: E402
from serving.store import Store  # noqa: E402

TARGET_X = 1.0  # issue 8: 16 clients do at least as many requests per second as 1
TICKS_PER_S = os.sysconf("SC_CLK_TCK")
KINDS = ("at-risk", "health", "score", "event", "healthz")
BEHIND = (  # open deals whose live score is missing or older than their state (a write not scored yet)
    "SELECT count(*) FROM deals d LEFT JOIN deal_scores s ON s.deal_id = d.deal_id"
    " WHERE d.outcome = 'open' AND (s.deal_id IS NULL OR s.state_updated_at IS NULL"
    " OR s.state_updated_at <> d.state_updated_at)"
)


def wait_settled(url: str, timeout_s: float = 300) -> float:
    """Seconds until the live scorer has caught up with every write (bounded: then it goes on)."""
    started = time.monotonic()
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        while time.monotonic() - started < timeout_s:
            with engine.connect() as conn:
                if conn.exec_driver_sql(BEHIND).scalar_one() == 0:
                    break
            time.sleep(0.5)
    finally:
        engine.dispose()
    return round(time.monotonic() - started, 1)


def listening_pid(base: str) -> int:
    """The process listening on `base`'s port (the server: uvicorn's one worker)."""
    port = base.rsplit(":", 1)[1]
    out = subprocess.run(["ss", "-Hltnp", f"sport = :{port}"], capture_output=True, text=True, check=True)
    match = re.search(r"pid=(\d+)", out.stdout)
    if match is None:
        raise RuntimeError(f"no process listens on port {port}: {out.stdout!r}")
    return int(match.group(1))


def cpu_seconds(pid: int) -> dict[str, float]:
    """CPU seconds (user + system) so far of the server process and of its children (the scorer)."""

    def of(p: int) -> float:
        fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / TICKS_PER_S

    children = [int(c) for task in Path(f"/proc/{pid}/task").iterdir()
                for c in (task / "children").read_text().split()]
    return {"server": of(pid), "children": sum(of(c) for c in children)}


def inline_body(url: str, deal_ids: list[str]) -> tuple[bytes, dict[str, Any]]:
    """POST /v1/score's body of one of the deals (the median event count of the first 50) inline."""
    with contextlib.closing(Store(url)) as store:
        history = store.load_history(deal_ids=deal_ids[:50])
    sample = deal_payloads(history, deal_ids[:50])
    sizes = [sum(len(p[t]) for t in EVENT_FIELDS) for p in sample]
    single = sample[int(np.argsort(sizes)[len(sizes) // 2])]
    return json.dumps({"deals": [single]}).encode(), {"deal_id": single["deal_id"],
                                                       "events": sum(len(single[t]) for t in EVENT_FIELDS)}


def the_mix(kinds: list[str], pipeline: str, body: bytes,
            poster: EventPoster) -> list[Callable[[httpx.Client], httpx.Response]]:
    calls: dict[str, Callable[[httpx.Client], httpx.Response]] = {
        "at-risk": lambda c: c.get(f"/v1/pipelines/{pipeline}/at-risk", params={"limit": 50}),
        "health": lambda c: c.get(f"/v1/pipelines/{pipeline}/health"),
        "score": lambda c: c.post("/v1/score", content=body),
        "event": lambda c: poster.post(c),
        "healthz": lambda c: c.get("/healthz"),
    }
    return [calls[k] for k in kinds]


def _variant(text: str) -> dict[str, str]:
    pairs = [p.split("=", 1) for p in text.split(",") if p]
    if not pairs or any(len(p) != 2 or not p[0] for p in pairs):
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE[,NAME=VALUE], not {text!r}")
    return {name: value for name, value in pairs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--store", type=Path, help="SQLite store (copied, never written)")
    source.add_argument("--postgresql", help="PostgreSQL database URL (copied with TEMPLATE, never written)")
    parser.add_argument("--tracking", required=True, help="MLflow tracking URI of the store's champion")
    parser.add_argument("--baseline", type=Path, help="another checkout to compare with (e.g. main)")
    parser.add_argument("--variant", type=_variant, action="append", default=[],
                        help="one more server of this tree with these environment variables (repeatable)")
    parser.add_argument("--mix", default="at-risk,health,score,event",
                        help=f"comma-separated request kinds, in mix order, of: {', '.join(KINDS)}")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=20.0, help="each run")
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    kinds = [k.strip() for k in args.mix.split(",") if k.strip()]
    if not kinds or set(kinds) - set(KINDS):
        parser.error(f"--mix takes kinds of {KINDS}")
    servers: dict[str, tuple[Path, dict[str, str]]] = {"this": (ROOT, {})}
    if args.baseline:
        servers["baseline"] = (args.baseline.resolve(), {})
    for env in args.variant:
        servers["this+" + ",".join(f"{k}={v}" for k, v in env.items())] = (ROOT, env)
    names = list(servers)
    load_start = os.getloadavg()
    runs: dict[str, dict[str, list[dict[str, Any]]]] = {n: {"one": [], "many": []} for n in names}
    with tempfile.TemporaryDirectory(prefix="bench-throughput-") as tmp_dir, contextlib.ExitStack() as stack:
        tmp = Path(tmp_dir)
        slots = [f"s{i}" for i in range(len(names))]  # file and database names: labels hold any text
        copies = dict(zip(names, stack.enter_context(store_copies(args, slots, tmp)).values(), strict=True))
        first = copies[names[0]]
        pipeline, deal_ids = open_deals(first)
        body, single = inline_body(first, deal_ids)
        poster = EventPoster(deal_ids)
        mix = the_mix(kinds, pipeline, body, poster)
        bases = {
            name: stack.enter_context(serve(tree, copies[name], tmp / f"home-{slot}", args.tracking,
                                            tmp / f"{slot}.log", extra_env=env))
            for slot, (name, (tree, env)) in zip(slots, servers.items(), strict=True)
        }
        ready = {name: round(wait_scored(copies[name]), 1) for name in names}
        pids = {name: listening_pid(base) for name, base in bases.items()}
        headers = {"Authorization": f"Bearer {args.key}", "Content-Type": "application/json"}
        for name, base in bases.items():  # warm-up: the first call of each kind pays for lazy set-ups
            throughput(base, headers, mix, 1, 2.0)
            throughput(base, headers, mix, args.clients, 2.0)
            wait_settled(copies[name])
        for trial in range(args.trials):
            order = names if trial % 2 == 0 else list(reversed(names))
            for name in order:
                counts = [("one", 1), ("many", args.clients)]
                for label, clients in counts if trial % 2 == 0 else reversed(counts):
                    before = cpu_seconds(pids[name])
                    run = throughput(bases[name], headers, mix, clients, args.seconds, names=kinds)
                    run["load_average_1_min"] = round(os.getloadavg()[0], 2)
                    run["settled_after_s"] = wait_settled(copies[name])
                    after = cpu_seconds(pids[name])  # the scorer's work for the run's writes included
                    run["cpu_ms_per_request"] = {
                        part: round(1000 * (after[part] - before[part]) / max(run["requests"], 1), 2)
                        for part in after}
                    runs[name][label].append(run)
                    print(f"trial {trial} {name} {clients} clients: {run['requests_per_s']} req/s, "
                          f"cpu ms/request {run['cpu_ms_per_request']}, load {run['load_average_1_min']}",
                          flush=True)
    result: dict[str, Any] = {
        "backend": "sqlite" if args.store else "postgresql",
        "store": str(args.store or sa.engine.make_url(args.postgresql).render_as_string(True)),
        "pipeline": pipeline, "open_deals_in_pipeline": len(deal_ids), "inline_deal": single,
        "mix": kinds, "clients": args.clients, "seconds_per_run": args.seconds, "trials": args.trials,
        "target": f">= {TARGET_X}x (requests/s of {args.clients} clients / of 1)",
        "load_average_at_start": [round(x, 2) for x in load_start],
        "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
        "servers": {},
    }
    for name, (tree, env) in servers.items():
        one, many = runs[name]["one"], runs[name]["many"]

        def rate(rs: list[dict[str, Any]]) -> float:
            return sum(r["requests"] for r in rs) / sum(r["seconds"] for r in rs)

        def cpu(rs: list[dict[str, Any]]) -> dict[str, float]:  # per request, over the runs
            n = max(sum(r["requests"] for r in rs), 1)
            return {part: round(sum(r["cpu_ms_per_request"][part] * r["requests"] for r in rs) / n, 2)
                    for part in ("server", "children")}

        x = round(rate(many) / rate(one), 3)
        result["servers"][name] = {
            "tree": str(tree), "commit": _git_head(tree), "env": env, "seconds_until_scored": ready[name],
            "one_requests_per_s": round(rate(one), 2), "many_requests_per_s": round(rate(many), 2),
            "many_vs_one_x": x, "met": x >= TARGET_X,
            "cpu_ms_per_request": {"one": cpu(one), "many": cpu(many)},
            "trial_x": [round(m["requests_per_s"] / o["requests_per_s"], 3) for o, m in zip(one, many,
                                                                                          strict=True)],
            "runs": runs[name],
        }
    write_result("throughput", result, args.out)


if __name__ == "__main__":
    main()
