"""The live at-risk read on a big store (issue 8's first figure row): this tree against a baseline tree,
on two copies of one SQLite store (or PostgreSQL database), interleaved, each figure as a ratio to /healthz
of the same server in the same run.

Give it a store whose open deals already have live scores (for instance a copy of a 100,000-deal store a
service has scored once) and the MLflow tracking URI of its champion. The script copies the store once per
server into a temporary directory, adds an admin key to the first copy before the second is taken, and
starts `python -m dealrisk serve` from this tree and, with `--baseline DIR`, from DIR (e.g. the main
checkout), each from its own tree on its own copy (the tree's own migrations run on start) and on a free
port. Both servers keep their live scorers, with `DEALRISK_LIVE_SCORE_MAX_AGE_S` one day, so that neither
re-scores mid-run and both answer from the scores the store came with; the registry watcher is off. When
every open deal has a live score in both copies, each round calls, per server (their order alternating
by round), GET /healthz then GET /v1/pipelines/{pipeline}/at-risk?limit=50 (default sort, with reasons).
Every round also checks that both servers give the same answer: the same total and the same deals in the
same order with the same values (`as_of` and `days_in_stage` move with the clock between the two calls
and are left out).

With `--postgresql URL` instead of `--store` the source is a PostgreSQL database: each server gets a
database of its own on the same server, `CREATE DATABASE ... TEMPLATE` the source (which nothing may be
connected to then), dropped afterwards; the admin key is added to the first copy, which is then the
template of the others. The source is left as it was, so both copies start in the same state (e.g. never
vacuumed, as a store just imported and scored).

Run: .venv/bin/python bench/bench_at_risk.py --store STORE.db --tracking sqlite:////path/mlflow.db
     [--baseline /work/main] [--pipeline Enterprise] [--rounds 300] [--sort days_in_stage] [--stale]
     .venv/bin/python bench/bench_at_risk.py --postgresql postgresql+psycopg://postgres@HOST/DB ...
Writes bench/results/at_risk.json, or at_risk_postgresql.json with `--postgresql`, so the two backends'
results do not overwrite each other (`--out PATH` writes PATH).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import sqlalchemy as sa

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.bench_serving import _free_port, _percentiles  # noqa: E402
from bench.common import write_result  # noqa: E402
from serving.store import Store  # noqa: E402

PYTHON = sys.executable
TARGETS = {"at_risk_p50_x": 10.0, "at_risk_p99_x": 20.0}  # issue 8: <= 10x / <= 20x healthz
UNSCORED = (
    "SELECT count(*) FROM deals d LEFT JOIN deal_scores s ON s.deal_id = d.deal_id"
    " WHERE d.outcome = 'open' AND s.deal_id IS NULL"
)
VOLATILE = ("as_of", "days_in_stage")  # move with the clock between two calls


def _git_head(tree: Path) -> str:
    out = subprocess.run(["git", "-C", str(tree), "rev-parse", "--short", "HEAD"], capture_output=True,
                         text=True, check=False)
    return out.stdout.strip() or "unknown"


@contextlib.contextmanager
def serve(tree: Path, db: str | Path, home: Path, tracking: str, log: Path,
          extra_env: dict[str, str] | None = None) -> Iterator[str]:
    """`python -m dealrisk serve` from `tree` (its code, its migrations) on the store `db` (a URL, or a
    SQLite file's path); yields its base URL once /healthz answers, and stops its process group (this
    server's alone) afterwards. `extra_env` is added to (or overrides) its environment."""
    port = _free_port()
    url = f"sqlite:///{db}" if isinstance(db, Path) else db
    env = {**os.environ, "PYTHONPATH": str(tree), "DEALRISK_HOME": str(home),
           "DEALRISK_DATABASE_URL": url, "MLFLOW_TRACKING_URI": tracking,
           "DEALRISK_RELOAD_INTERVAL_S": "0", "DEALRISK_LIVE_SCORE_MAX_AGE_S": "86400", **(extra_env or {})}
    home.mkdir(parents=True, exist_ok=True)
    with open(log, "wb") as out:
        proc = subprocess.Popen([PYTHON, "-m", "dealrisk", "serve", "--port", str(port), "--log-level",
                                 "warning"], env=env, cwd=str(tree), stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 600
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"server from {tree} exited: {log.read_text()[-2000:]}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{base}/healthz", timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"server from {tree} not up after 600 s: {log.read_text()[-2000:]}")
            time.sleep(0.5)
        yield base
    finally:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=30)


def wait_scored(db: str, timeout_s: float = 1200) -> float:
    """Seconds until every open deal of the copy has a live score and every pipeline its learned limits."""
    started = time.monotonic()
    engine = sa.create_engine(db, poolclass=sa.pool.NullPool)
    while True:
        with engine.connect() as conn:
            unscored = conn.exec_driver_sql(UNSCORED).scalar_one()
            unlearned = conn.exec_driver_sql(
                "SELECT count(*) FROM pipelines WHERE learned_stale_days IS NULL").scalar_one()
        if unscored == 0 and unlearned == 0:
            engine.dispose()
            return time.monotonic() - started
        if time.monotonic() - started > timeout_s:
            raise RuntimeError(f"{db}: {unscored} open deals unscored after {timeout_s} s")
        time.sleep(2)


@contextlib.contextmanager
def store_copies(args: argparse.Namespace, names: list[str], tmp: Path) -> Iterator[dict[str, str]]:
    """One store URL per server, each a copy of the source (`--store` or `--postgresql`), the admin key
    (`args.key`, set here) in all of them; PostgreSQL copies are dropped afterwards."""
    if args.store is not None:
        copies = {name: tmp / f"{name}.db" for name in names}
        first = next(iter(copies.values()))
        with contextlib.closing(sqlite3.connect(f"file:{args.store}?mode=ro", uri=True)) as src, \
                contextlib.closing(sqlite3.connect(first)) as dst:
            src.backup(dst)
        args.key = _admin_key(f"sqlite:///{first}")
        for copy in list(copies.values())[1:]:
            shutil.copyfile(first, copy)
        yield {name: f"sqlite:///{path}" for name, path in copies.items()}
        return
    source = sa.engine.make_url(args.postgresql)
    admin = sa.create_engine(source.set(database="postgres"), isolation_level="AUTOCOMMIT",
                             poolclass=sa.pool.NullPool)
    tag = uuid.uuid4().hex[:8]
    databases = {name: f"bench_at_risk_{tag}_{name}" for name in names}
    made: list[str] = []
    try:
        template = source.database
        for name in names:
            with admin.connect() as conn:
                conn.exec_driver_sql(f'CREATE DATABASE "{databases[name]}" TEMPLATE "{template}"')
            made.append(databases[name])
            if template == source.database:
                args.key = _admin_key(source.set(database=databases[name]).render_as_string(False))
                template = databases[name]
        yield {name: source.set(database=db).render_as_string(False) for name, db in databases.items()}
    finally:
        with admin.connect() as conn:
            for db in made:
                conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
        admin.dispose()


def _admin_key(url: str) -> str:
    keeper = Store(url)
    try:
        key, _ = keeper.create_api_key("admin", ["*"], name="bench_at_risk")
    finally:
        keeper.close()
    return key


def _open_deals(url: str, pipeline: str) -> int:
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            query = sa.text("SELECT count(*) FROM deals WHERE outcome = 'open' AND pipeline = :p")
            return int(conn.execute(query, {"p": pipeline}).scalar_one())
    finally:
        engine.dispose()


def comparable(answer: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in answer.items() if k not in VOLATILE}
    out["deals"] = [{k: v for k, v in d.items() if k not in VOLATILE} for d in answer["deals"]]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--store", type=Path, help="SQLite store (copied, never written)")
    source.add_argument("--postgresql", help="PostgreSQL database URL (copied with TEMPLATE, never written)")
    parser.add_argument("--tracking", required=True, help="MLflow tracking URI of the store's champion")
    parser.add_argument("--baseline", type=Path, help="another checkout to compare with (e.g. main)")
    parser.add_argument("--pipeline", default="Enterprise")
    parser.add_argument("--sort", default=None, help="another order than the default (value_at_risk)")
    parser.add_argument("--stale", action="store_true", help="the clean-up list (/stale) instead")
    parser.add_argument("--rounds", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    trees = {"this": ROOT, **({"baseline": args.baseline.resolve()} if args.baseline else {})}
    path = f"/v1/pipelines/{args.pipeline}/{'stale' if args.stale else 'at-risk'}?limit=50"
    path += f"&sort={args.sort}" if args.sort else ""
    with tempfile.TemporaryDirectory(prefix="bench-at-risk-") as tmp_dir, contextlib.ExitStack() as stack:
        tmp = Path(tmp_dir)
        copies = stack.enter_context(store_copies(args, list(trees), tmp))
        key = args.key
        open_deals = _open_deals(next(iter(copies.values())), args.pipeline)
        bases = {name: stack.enter_context(serve(tree, copies[name], tmp / f"home-{name}", args.tracking,
                                                 tmp / f"{name}.log"))
                 for name, tree in trees.items()}
        ready = {name: round(wait_scored(copies[name]), 1) for name in trees}
        headers = {"Authorization": f"Bearer {key}"}
        clients = {name: stack.enter_context(httpx.Client(base_url=base, headers=headers, timeout=120))
                   for name, base in bases.items()}
        times: dict[str, dict[str, list[float]]] = {n: {"healthz": [], "at_risk": []} for n in trees}
        differ = 0
        load_start = os.getloadavg()
        for i in range(args.warmup + args.rounds):
            answers = {}
            order = list(trees) if i % 2 == 0 else list(reversed(trees))
            for name in order:
                client = clients[name]
                t0 = time.perf_counter()
                client.get("/healthz").raise_for_status()
                t1 = time.perf_counter()
                r = client.get(path)
                t2 = time.perf_counter()
                r.raise_for_status()
                answers[name] = comparable(r.json())
                if i >= args.warmup:
                    times[name]["healthz"].append(t1 - t0)
                    times[name]["at_risk"].append(t2 - t1)
            if len({repr(a) for a in answers.values()}) > 1:
                differ += 1
        servers: dict[str, Any] = {}
        for name, tree in trees.items():
            hz, ar = _percentiles(times[name]["healthz"]), _percentiles(times[name]["at_risk"])
            servers[name] = {
                "tree": str(tree), "commit": _git_head(tree), "seconds_until_scored": ready[name],
                "healthz": hz, "at_risk": ar,
                "at_risk_p50_x": round(ar["p50_ms"] / hz["p50_ms"], 2),
                "at_risk_p99_x": round(ar["p99_ms"] / hz["p99_ms"], 2),
            }
    result = {
        "store": str(args.store or sa.engine.make_url(args.postgresql).render_as_string(True)),
        "backend": "sqlite" if args.store else "postgresql", "pipeline": args.pipeline,
        "open_deals_in_pipeline": open_deals,
        "request": f"GET {path} ({'sort ' + args.sort if args.sort else 'default sort'}, reasons)",
        "rounds": args.rounds, "warmup": args.warmup,
        "load_average_at_start": [round(x, 2) for x in load_start],
        "targets": {k: f"<= {v}x healthz" for k, v in TARGETS.items()},
        "servers": servers,
        "rounds_with_different_answers": differ if len(trees) > 1 else None,
    }
    write_result("at_risk" if args.store else "at_risk_postgresql", result, args.out)


if __name__ == "__main__":
    main()
