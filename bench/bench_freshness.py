"""A new event visible in that deal's live score and in at-risk (issue 8: <= 1 s), on a big store, this tree
against a baseline tree, interleaved, with what the live scorer was doing at the time.

Give it a store whose open deals already have live scores (e.g. a copy of a 100,000-deal store a service
scored once) and the MLflow tracking URI of its champion. As `bench_at_risk.py` does, the script copies the
store once per server, adds an admin key, and starts `python -m dealrisk serve` (live scorer in its own
process, the default) from this tree and, with `--baseline DIR`, from DIR, each on its own copy.
`--max-age-s` sets the servers' DEALRISK_LIVE_SCORE_MAX_AGE_S: a value far below the time the initial
scores are old (e.g. 60) makes the clock re-score run throughout the trials. A background writer per
server posts one activity on an open deal of the pipeline every `--write-every-s` seconds, so the
feature population is refitted on its clock (every DEALRISK_POPULATION_REFRESH_S, default 60 s) and a
refit's re-scores run, as on a service that takes writes.

After `--warmup` uncounted trials, each trial is `bench_store.freshness` with one trial (an activity
on a deal of the at-risk page: time from just before the POST until GET /v1/deals/{id}/score and the
deal's at-risk row, owner filter, show a score as of after the write and not pending), on every server
in turn (order alternating), then a random pause (0 to 1 s) so trials fall at any point of the
scorer's rounds. The scorers' debug lines (one per round: deals due, written ones, seconds) and the
population refits are written to a log per server when the tree logs them, and the result keeps, for
every trial of more than `--slow-s`, the lines logged during it.

Run: .venv/bin/python bench/bench_freshness.py --store STORE.db --tracking sqlite:////path/mlflow.db
     [--baseline /work/main] [--pipeline Enterprise] [--trials 60] [--max-age-s 60]
Writes bench/results/freshness.json (`--out PATH` writes PATH).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import shutil
import sqlite3
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.bench_at_risk import _git_head, serve, wait_scored  # noqa: E402
from bench.bench_store import EventPoster, freshness  # noqa: E402
from bench.common import write_result  # noqa: E402
from serving.store import Store  # noqa: E402

TARGET_S = 1.0
# Loaded first by every Python process of a server (scorer and population processes too): the live scorer's
# and the population cache's log lines go to a file of their own, at DEBUG, whatever the service's level.
SITECUSTOMIZE = """
import logging, os
_path = os.environ.get("BENCH_FRESHNESS_LOG")
if _path:
    _handler = logging.FileHandler(_path)
    _handler.setFormatter(logging.Formatter("%(asctime)s %(process)d %(name)s: %(message)s"))
    for _name in ("serving.live_scores", "serving.model_holder"):
        _logger = logging.getLogger(_name)
        _logger.setLevel(logging.DEBUG)
        _logger.addHandler(_handler)
"""


def background_writer(
    base: str,
    headers: dict[str, str],
    poster: EventPoster,
    every_s: float,
    stop: threading.Event,
    counts: dict[str, int],
) -> None:
    """One activity every `every_s` seconds until `stop`; answers counted by status (errors by name)."""
    with httpx.Client(base_url=base, headers=headers, timeout=300) as client:
        while not stop.wait(every_s):
            try:
                status = poster.post(client).status_code
                outcome = "ok" if status == 200 else str(status)
            except httpx.HTTPError as exc:
                outcome = type(exc).__name__
            counts[outcome] = counts.get(outcome, 0) + 1


def summary(values: list[float]) -> dict[str, Any]:
    if not values:
        return {"n": 0}
    return {
        "n": len(values),
        "p50_s": round(float(np.median(values)), 3),
        "p90_s": round(float(np.quantile(values, 0.9)), 3),
        "max_s": round(max(values), 3),
        "over_target": sum(v > TARGET_S for v in values),
    }


def log_lines(log: Path, since: datetime, until: datetime) -> list[str]:
    """The lines of a server's scorer log stamped between `since` and `until` (local time stamps)."""
    if not log.exists():
        return []
    out = []
    lo, hi = since.astimezone().replace(tzinfo=None), until.astimezone().replace(tzinfo=None)
    for line in log.read_text().splitlines():
        with contextlib.suppress(ValueError):
            stamp = datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f")
            if lo <= stamp <= hi:
                out.append(line)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", type=Path, required=True, help="SQLite store (copied, never written)")
    parser.add_argument("--tracking", required=True, help="MLflow tracking URI of the store's champion")
    parser.add_argument("--baseline", type=Path, help="another checkout to compare with (e.g. main)")
    parser.add_argument("--pipeline", default="Enterprise")
    parser.add_argument("--trials", type=int, default=60, help="trials per server")
    parser.add_argument("--warmup", type=int, default=3, help="trials per server first, not counted")
    parser.add_argument(
        "--max-age-s",
        type=float,
        default=86400.0,
        help="DEALRISK_LIVE_SCORE_MAX_AGE_S of the servers (small: the clock re-score runs)",
    )
    parser.add_argument("--write-every-s", type=float, default=2.0, help="background writes (0: none)")
    parser.add_argument("--slow-s", type=float, default=0.8, help="keep the scorer's log of slower trials")
    parser.add_argument("--timeout-s", type=float, default=60.0)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    trees = {"this": ROOT, **({"baseline": args.baseline.resolve()} if args.baseline else {})}
    with tempfile.TemporaryDirectory(prefix="bench-freshness-") as tmp_dir, contextlib.ExitStack() as stack:
        tmp = Path(tmp_dir)
        (tmp / "site").mkdir()
        (tmp / "site" / "sitecustomize.py").write_text(SITECUSTOMIZE)
        copies = {name: tmp / f"{name}.db" for name in trees}
        first = next(iter(copies.values()))
        with (
            contextlib.closing(sqlite3.connect(args.store)) as src,
            contextlib.closing(sqlite3.connect(first)) as dst,
        ):
            src.backup(dst)
        keeper = Store(f"sqlite:///{first}")
        key, _ = keeper.create_api_key("admin", ["*"], name="bench_freshness")
        keeper.close()
        for copy in list(copies.values())[1:]:
            shutil.copyfile(first, copy)
        with contextlib.closing(sqlite3.connect(first)) as conn:
            open_ids = [
                r[0]
                for r in conn.execute(
                    "SELECT deal_id FROM deals WHERE outcome = 'open' AND pipeline = ? ORDER BY deal_id",
                    (args.pipeline,),
                )
            ]
        logs = {name: tmp / f"scorer-{name}.log" for name in trees}
        bases = {
            name: stack.enter_context(
                serve(
                    tree,
                    copies[name],
                    tmp / f"home-{name}",
                    args.tracking,
                    tmp / f"{name}.log",
                    {
                        "PYTHONPATH": f"{tree}{os.pathsep}{tmp / 'site'}",
                        "BENCH_FRESHNESS_LOG": str(logs[name]),
                        "DEALRISK_LIVE_SCORE_MAX_AGE_S": str(args.max_age_s),
                    },
                )
            )
            for name, tree in trees.items()
        }
        ready = {name: round(wait_scored(f"sqlite:///{copies[name]}"), 1) for name in trees}
        headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
        # trials on deals of the at-risk page, background writes on the other open deals of the pipeline
        with httpx.Client(base_url=next(iter(bases.values())), headers=headers, timeout=300) as client:
            page = client.get(f"/v1/pipelines/{args.pipeline}/at-risk", params={"limit": 50}).json()["deals"]
        page_ids = {d["deal_id"] for d in page}
        poster = EventPoster([d for d in open_ids if d not in page_ids])
        stop = threading.Event()
        written: dict[str, dict[str, int]] = {name: {} for name in trees}
        if args.write_every_s > 0:
            for name, base in bases.items():
                threading.Thread(
                    target=background_writer,
                    daemon=True,
                    args=(base, headers, poster, args.write_every_s, stop, written[name]),
                ).start()
        load_start = os.getloadavg()
        trials: dict[str, list[dict[str, Any]]] = {name: [] for name in trees}
        rng = random.Random(0)
        try:
            for i in range(args.warmup):  # the first scores and reads of a process are slow
                for name in trees:
                    freshness(bases[name], headers, args.pipeline, [page[-1 - i]], poster, 1, args.timeout_s)
            for i in range(args.trials):
                row = page[i % len(page)]
                order = list(trees) if i % 2 == 0 else list(reversed(trees))
                for name in order:
                    started = datetime.now(UTC)
                    r = freshness(bases[name], headers, args.pipeline, [row], poster, 1, args.timeout_s)
                    ended = datetime.now(UTC)
                    trials[name].append(
                        {
                            "at": started.isoformat(),
                            "deal_id": row["deal_id"],
                            "deal_score_s": r["deal_score"]["max_s"],
                            "at_risk_s": r["at_risk"]["max_s"],
                            "at_risk_polls": r["at_risk"]["max_polls"],
                            "_until": ended,
                        }
                    )
                    time.sleep(rng.random())
        finally:
            stop.set()
        servers: dict[str, Any] = {}
        for name, tree in trees.items():
            rows = trials[name]
            for t in rows:
                until = t.pop("_until")
                if t["at_risk_s"] is None or t["at_risk_s"] > args.slow_s:
                    t["scorer_log"] = log_lines(logs[name], datetime.fromisoformat(t["at"]), until)
            servers[name] = {
                "tree": str(tree),
                "commit": _git_head(tree),
                "seconds_until_scored": ready[name],
                "deal_score": summary([t["deal_score_s"] for t in rows if t["deal_score_s"] is not None]),
                "at_risk": summary([t["at_risk_s"] for t in rows if t["at_risk_s"] is not None]),
                "timed_out": sum(t["at_risk_s"] is None for t in rows),
                "background_writes": written[name],
                "refits_logged": sum(
                    "population fitted" in line
                    for line in (logs[name].read_text().splitlines() if logs[name].exists() else [])
                ),
                "trials": rows,
            }
    result = {
        "store": str(args.store),
        "pipeline": args.pipeline,
        "open_deals_in_pipeline": len(open_ids),
        "trials_per_server": args.trials,
        "warmup": args.warmup,
        "max_age_s": args.max_age_s,
        "write_every_s": args.write_every_s,
        "load_average_at_start": [round(x, 2) for x in load_start],
        "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
        "target": f"at-risk and deal score fresh <= {TARGET_S} s after the POST is sent",
        "servers": servers,
    }
    write_result("freshness", result, args.out)


if __name__ == "__main__":
    main()
