"""At-risk reads while 16 clients write, on SQLite or PostgreSQL, and where a slow read waits (issue 8).

`bench/bench_store.py` measures the figure once per backend among many; this script repeats only it, on
one store, and records beside each run what the reads waited on:
- the store: a database given with `--url` (and an admin `--key` for it; `--url` once per `--code` gives
  each checkout's service a store of its own, e.g. copies of one database or of one SQLite file), or
  else a fresh PostgreSQL database on 127.0.0.1:5432 (bench_store's `postgres_database`, dropped
  afterwards) into which `--history` (a pickled `DealHistory`, e.g. the 100,000-deal one bench_store
  simulates) is imported;
- the service: `python -m dealrisk serve`, one worker, live scorer in its own process, served from each
  checkout given with `--code` in turn (default: this one), so an old and a new version of the code are
  measured interleaved on the same store and machine load; the run starts once every open deal has a
  live score (bench_store's `wait_all_live`), again after one event (the scorer's first round is over);
- each run: GET /healthz `--healthz-rounds` times (the denominator), then bench_store's
  `reads_amid_writes` (at-risk, limit 50, of the pipeline with most open deals, while `--writers`
  threads post one event per request with bench_store's `EventPoster`), and, during that phase:
  on PostgreSQL `pg_stat_activity` sampled every `--sample-ms` (the service's connections by state and
  wait event: "Lock:transactionid" would be writers waiting on row locks, "Client:ClientRead"
  connections idle in a transaction or in the pool); on SQLite the write-ahead log's length and how much
  of it was checkpointed, read from the WAL index (`-shm`) every `--sample-ms`; on both `py-spy dump` of
  the service every `--spy-s` seconds (how many of its threads were waiting for a pooled connection, for
  this process's writer turn, or in the database); the slowest reads (when in the phase, and whether
  their deals were scored on demand rather than read from the live scores);
- freshness as bench_store measures it (`--trials` events on deals of the at-risk page).

Run: .venv/bin/python bench/bench_amid_writes.py --history /tmp/h.pkl [--code /work/main --code .]
     [--repeats 3] ; writes bench/results/amid_writes_postgresql.json (or `--out`).
     .venv/bin/python bench/bench_amid_writes.py --url sqlite:////tmp/a.db --url sqlite:////tmp/b.db
     --key KEY --code /work/main --code . ; writes bench/results/amid_writes_sqlite.json.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import logging
import os
import pickle
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import sqlalchemy as sa

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.bench_serving import _free_port, _percentiles, _server  # noqa: E402
from bench.bench_store import (  # noqa: E402
    EventPoster,
    _check,
    freshness,
    postgres_database,
    reads_amid_writes,
    wait_all_live,
)
from bench.common import write_result  # noqa: E402
from features.history import DealHistory  # noqa: E402
from serving.store import Store  # noqa: E402

logger = logging.getLogger("bench_amid_writes")
PYTHON = sys.executable
PY_SPY = Path(sys.executable).with_name("py-spy")
# A thread's stack, by its innermost frame we care about (first match wins, innermost first).
STACK_KINDS = (
    ("pool: waiting for a connection", ("_do_get",)),
    ("writer turn: waiting", ("_writer_turn",)),
    ("in the database (psycopg)", ("psycopg",)),
    ("in the database (sqlite)", ("do_execute (sqlalchemy", "do_commit (sqlalchemy",
                                  "do_rollback (sqlalchemy")),
)
SLOWEST_READS = 5  # the slowest reads of a run, described one by one


# ---- what the service waits on ---------------------------------------------------------------------------
class ActivitySampler:
    """Samples `pg_stat_activity` of one database (other than its own connection) until stopped."""

    def __init__(self, url: str, every_s: float) -> None:
        self.engine = sa.create_engine(url, isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)
        self.every_s = every_s
        self.samples = 0
        self.sessions_before = self.new_sessions = 0
        self.waits: collections.Counter[str] = collections.Counter()
        self.connections: list[int] = []
        self.lock_waits: collections.Counter[str] = collections.Counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> ActivitySampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        self.engine.dispose()

    def _sessions(self) -> int:
        """Sessions the database has opened since its statistics were reset (PostgreSQL 14 and later)."""
        query = sa.text("SELECT sessions FROM pg_stat_database WHERE datname = current_database()")
        with self.engine.connect() as conn:
            return int(conn.execute(query).scalar_one())

    def _run(self) -> None:
        self.sessions_before = self._sessions()
        query = sa.text(
            "SELECT state, wait_event_type, wait_event, left(query, 70) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid() "
            "AND backend_type = 'client backend'"
        )
        with self.engine.connect() as conn:
            while not self._stop.is_set():
                rows = conn.execute(query).fetchall()
                self.samples += 1
                self.connections.append(len(rows))
                for state, wtype, wevent, text in rows:
                    kind = f"{state}: {wtype}:{wevent}" if wtype else f"{state}: running"
                    self.waits[kind] += 1
                    if wtype == "Lock":
                        self.lock_waits[f"{wevent}: {text}"] += 1
                self._stop.wait(self.every_s)
        self.new_sessions = self._sessions() - self.sessions_before

    def to_dict(self) -> dict[str, Any]:
        n = max(self.samples, 1)
        return {
            "samples": self.samples,
            "new_sessions": self.new_sessions,  # connections opened (one server process each)
            "every_ms": round(self.every_s * 1000),
            "connections": {"mean": round(sum(self.connections) / n, 1),
                            "max": max(self.connections, default=0)},
            "per_sample_by_state_and_wait": {k: round(v / n, 2) for k, v in self.waits.most_common()},
            "lock_waits_per_sample": {k: round(v / n, 3) for k, v in self.lock_waits.most_common(8)},
        }


class WalSampler:
    """Samples a SQLite database's write-ahead log until stopped, from its WAL index (the `-shm` file's
    header: `mxFrame`, the last valid frame, at byte 16; `nBackfill`, the frames checkpointed into the
    database, at byte 96; native byte order): the log's length in frames and how much of it was not yet
    checkpointed. A length that drops means a writer restarted the log from its start."""

    def __init__(self, url: str, every_s: float) -> None:
        database = sa.engine.make_url(url).database
        self.shm = Path(f"{database}-shm")
        self.every_s = every_s
        self.frames: list[int] = []
        self.unchecked: list[int] = []
        self.restarts = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> WalSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _run(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(OSError, struct.error):
                head = self.shm.read_bytes()[:104]
                frames = struct.unpack_from("=I", head, 16)[0]
                backfilled = struct.unpack_from("=I", head, 96)[0]
                if self.frames and frames < self.frames[-1]:
                    self.restarts += 1
                self.frames.append(frames)
                self.unchecked.append(max(frames - backfilled, 0))
            self._stop.wait(self.every_s)

    def to_dict(self) -> dict[str, Any]:
        n = max(len(self.frames), 1)
        return {"samples": len(self.frames), "every_ms": round(self.every_s * 1000),
                "log_frames": {"mean": round(sum(self.frames) / n), "max": max(self.frames, default=0)},
                "not_checkpointed_frames": {"mean": round(sum(self.unchecked) / n),
                                            "max": max(self.unchecked, default=0)},
                "log_restarts": self.restarts}


def store_sampler(url: str, every_s: float) -> ActivitySampler | WalSampler:
    """What the database does during the phase: `pg_stat_activity` (PostgreSQL) or the WAL (SQLite)."""
    if sa.engine.make_url(url).get_backend_name() == "sqlite":
        return WalSampler(url, every_s)
    return ActivitySampler(url, every_s)


class ThreadSpy:
    """`py-spy dump` of a process every `every_s` seconds until stopped: its threads by what they wait on."""

    def __init__(self, pid: int, every_s: float) -> None:
        self.pid = pid
        self.every_s = every_s
        self.dumps = 0
        self.kinds: collections.Counter[str] = collections.Counter()
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> ThreadSpy:
        if PY_SPY.exists():
            self._thread.start()
        else:
            self.errors.append(f"no py-spy at {PY_SPY}")
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=60)

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            done = subprocess.run([str(PY_SPY), "dump", "--pid", str(self.pid)], capture_output=True,
                                  text=True, timeout=60, check=False)
            if done.returncode != 0:
                self.errors.append(done.stderr[-300:])
                continue
            self.dumps += 1
            for stack in done.stdout.split("\nThread ")[1:]:
                self.kinds[_stack_kind(stack)] += 1

    def to_dict(self) -> dict[str, Any]:
        n = max(self.dumps, 1)
        return {"dumps": self.dumps, "every_s": self.every_s, "errors": self.errors[:3],
                "threads_per_dump": {k: round(v / n, 2) for k, v in self.kinds.most_common()}}


def _stack_kind(stack: str) -> str:
    """What one thread of a py-spy dump is doing (its frames are listed innermost first): a request
    thread by the first of `STACK_KINDS` its stack shows, or running Python; any other thread "other"."""
    lines = stack.splitlines()
    if "AnyIO worker" not in lines[0]:
        return "other thread"
    if "Queue.get" in "".join(lines[1:3]):
        return "request thread: no request"
    for line in lines[1:]:
        for kind, marks in STACK_KINDS:
            if any(m in line for m in marks):
                return f"request thread: {kind}"
    return "request thread: running Python" + (" (holds the GIL)" if "gil" in lines[0] else "")


# ---- one service ------------------------------------------------------------------------------------------
@contextlib.contextmanager
def serving(code: Path, url: str, tracking: str, home: Path, label: str) -> Iterator[tuple[str, int]]:
    """`python -m dealrisk serve` of the checkout `code` (only its modules: -P, PYTHONPATH=code)."""
    home.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "DEALRISK_HOME": str(home), "DEALRISK_DATABASE_URL": url,
           "MLFLOW_TRACKING_URI": tracking, "DEALRISK_RELOAD_INTERVAL_S": "0", "PYTHONPATH": str(code)}
    env.pop("DEALRISK_MODEL_URI", None)
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    cmd = [PYTHON, "-P", "-m", "dealrisk", "serve", "--port", str(port), "--log-level", "warning"]
    with _server(cmd, env, home / f"serve-{label}.log", f"{base}/readyz", timeout_s=1800) as proc:
        yield base, proc.pid


def one_run(base: str, pid: int, url: str, key: str, pipeline: str, poster: EventPoster,
            args: argparse.Namespace) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    at_risk_path = f"/v1/pipelines/{pipeline}/at-risk?limit=50"
    times = []
    with httpx.Client(base_url=base, headers=headers, timeout=300) as client:
        for _ in range(10):
            _check(client.get(at_risk_path), "at-risk")
        for _ in range(args.healthz_rounds):
            t0 = time.perf_counter()
            _check(client.get("/healthz"), "healthz")
            times.append(time.perf_counter() - t0)
        times_alone = []
        for _ in range(args.alone_reads):
            t0 = time.perf_counter()
            _check(client.get(at_risk_path), "at-risk")
            times_alone.append(time.perf_counter() - t0)
    healthz = _percentiles(times)
    reads: list[tuple[float, float, httpx.Response]] = []
    sampler = store_sampler(url, args.sample_ms / 1000)
    with sampler, ThreadSpy(pid, args.spy_s) as spy:
        amid = reads_amid_writes(base, headers, at_risk_path, poster, args.writers, args.reads, args.max_s,
                                 each=lambda at, s, r: reads.append((at, s, r)))
    out: dict[str, Any] = {
        "healthz": healthz,
        "at_risk_alone": _percentiles(times_alone),  # the same read with nothing written meanwhile
        "reads_amid_writes": amid,
        "p99_x_healthz_p99": round(amid["at_risk"]["p99_ms"] / healthz["p99_ms"], 1),
        "p50_x_healthz_p50": round(amid["at_risk"]["p50_ms"] / healthz["p50_ms"], 1),
        "p99_x_healthz_p50": round(amid["at_risk"]["p99_ms"] / healthz["p50_ms"], 1),
        "pg_stat_activity" if isinstance(sampler, ActivitySampler) else "wal": sampler.to_dict(),
        "py_spy": spy.to_dict(),
        "slowest_reads": [_read_detail(*read) for read in sorted(reads, key=lambda r: -r[1])[:SLOWEST_READS]],
        "load_average_at_end": os.getloadavg(),
    }
    if args.trials:
        with httpx.Client(base_url=base, headers=headers, timeout=300) as client:
            page = _check(client.get(at_risk_path), "at-risk").json()["deals"]
        out["freshness"] = freshness(base, headers, pipeline, page, poster, args.trials, 60.0)
    return out


def scorer_warm(base: str, key: str, poster: EventPoster, store: Store, version: str,
                open_deals: int) -> dict[str, Any]:
    """One event posted, then every open deal live again: the scorer process's first round (its first
    feature build computes the population's caches: a minute of CPU on busy cores at 100,000 deals) is
    over before the phase, whose writes it would otherwise leave pending while competing for the cores."""
    started = time.perf_counter()
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    with httpx.Client(base_url=base, headers=headers, timeout=300) as client:
        _check(poster.post(client), "warm-up event")
    return wait_all_live(store, version, started, open_deals, 3600)


def _read_detail(at_s: float, seconds: float, answer: httpx.Response) -> dict[str, Any]:
    """One read of the phase: when, how long, and where its page came from: `on_demand` when every deal
    of it was scored as of the answer's own time (the route's on-demand path), else the live scores."""
    body = answer.json()
    scored = {d.get("scored_at") for d in body.get("deals", [])}
    as_of = body.get("as_of")
    on_demand = bool(scored) and all(
        s is not None and as_of is not None and _same_time(s, as_of) for s in scored
    )
    return {"at_s": round(at_s, 3), "ms": round(seconds * 1000, 3), "on_demand": on_demand,
            "pending_deals": sum(bool(d.get("score_pending")) for d in body.get("deals", []))}


def _same_time(a: str, b: str) -> bool:
    return datetime.fromisoformat(a.replace("Z", "+00:00")) == datetime.fromisoformat(
        b.replace("Z", "+00:00"))


def run_all(url: str | list[str], key: str, history: DealHistory | None,
            args: argparse.Namespace) -> dict[str, Any]:
    """The runs; `url` one store for every checkout, or one store per checkout of `args.code` (copies of
    one database, so that what one checkout's service did to its store, e.g. a vacuum, is not what the
    other's is measured on)."""
    urls = url if isinstance(url, list) else [url] * len(args.code)
    stores = {u: Store(u) for u in dict.fromkeys(urls)}
    store = stores[urls[0]]
    try:
        version = _served_version(args.tracking)
        deals = store.deal_states()
        open_deals = deals[deals["outcome"] == "open"]
        pipeline = str(open_deals["pipeline"].value_counts().idxmax())
        pipe_open = sorted(open_deals.loc[open_deals["pipeline"] == pipeline, "deal_id"].astype(str))
        poster = EventPoster(pipe_open)
        runs: list[dict[str, Any]] = []
        for i in range(args.repeats):
            for code, code_url in zip(args.code, urls, strict=True):
                label = f"{code.name or 'root'}-{i}"
                logger.info("run %s: serving %s", label, code)
                with serving(code, code_url, args.tracking, args.home, label) as (base, pid):
                    started = time.perf_counter()
                    ready = wait_all_live(stores[code_url], version, started, len(open_deals), 3600)
                    logger.info("run %s: live scores %s", label, ready)
                    warm = scorer_warm(base, key, poster, stores[code_url], version, len(open_deals))
                    logger.info("run %s: the scorer's first round %s", label, warm)
                    run: dict[str, Any] = {"code": str(code), "repeat": i, "commit": _commit(code),
                                           "load_average_at_start": os.getloadavg()}
                    run["url"] = sa.engine.make_url(code_url).render_as_string(True)
                    run["scorer_first_round"] = warm
                    run.update(one_run(base, pid, code_url, key, pipeline, poster, args))
                    logger.info("run %s: p99 %.1fx healthz (%s ms), %s", label, run["p99_x_healthz_p99"],
                                run["reads_amid_writes"]["at_risk"]["p99_ms"],
                                run.get("pg_stat_activity", run.get("wal")))
                    runs.append(run)
        return {"pipeline": pipeline, "pipeline_open_deals": len(pipe_open), "open_deals": len(open_deals),
                "deals": len(deals), "runs": runs, "summary": _summary(runs)}
    finally:
        for each in stores.values():
            each.close()


def _summary(runs: list[dict[str, Any]]) -> dict[str, dict[str, list[float]]]:
    out: dict[str, dict[str, list[float]]] = {}
    for run in runs:
        s = out.setdefault(run["code"], {"p99_x": [], "p99_x_healthz_p50": [], "p99_ms": [], "p50_ms": [],
                                         "alone_p99_ms": [], "new_sessions": [], "events_per_s": [],
                                         "fresh_deal_score_max_s": []})
        s["p99_x"].append(run["p99_x_healthz_p99"])
        s["p99_x_healthz_p50"].append(run["p99_x_healthz_p50"])
        s["p99_ms"].append(run["reads_amid_writes"]["at_risk"]["p99_ms"])
        s["alone_p99_ms"].append(run["at_risk_alone"]["p99_ms"])
        if "pg_stat_activity" in run:
            s["new_sessions"].append(run["pg_stat_activity"]["new_sessions"])
        s["p50_ms"].append(run["reads_amid_writes"]["at_risk"]["p50_ms"])
        s["events_per_s"].append(run["reads_amid_writes"]["events_per_s"])
        if "freshness" in run:
            s["fresh_deal_score_max_s"].append(run["freshness"]["deal_score"]["max_s"])
    return out


def _served_version(tracking: str) -> str:
    from training.registry import champion_version

    return str(champion_version(tracking))


def _commit(code: Path) -> str | None:
    done = subprocess.run(["git", "-C", str(code), "rev-parse", "--short", "HEAD"], capture_output=True,
                          text=True, check=False)
    return done.stdout.strip() or None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n".join(__doc__.splitlines()[2:]))
    parser.add_argument("--url", action="append", default=None,
                        help="an existing store, PostgreSQL or SQLite (with --key); repeated: one per "
                             "--code, in order")
    parser.add_argument("--key", default=None, help="an admin API key of --url")
    parser.add_argument("--history", type=Path, default=None, help="pickled DealHistory to import (no --url)")
    parser.add_argument("--tracking", required=True, help="MLflow tracking URI with a deal-risk @champion")
    parser.add_argument("--code", type=Path, action="append", default=None,
                        help="checkout to serve (repeatable; runs alternate between them; default: this one)")
    parser.add_argument("--home", type=Path, default=Path("/tmp/bench-amid-writes"))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--writers", type=int, default=16)
    parser.add_argument("--reads", type=int, default=200)
    parser.add_argument("--max-s", type=float, default=300.0)
    parser.add_argument("--healthz-rounds", type=int, default=200)
    parser.add_argument("--alone-reads", type=int, default=30, help="at-risk reads before the writers start")
    parser.add_argument("--sample-ms", type=float, default=50.0)
    parser.add_argument("--spy-s", type=float, default=2.0)
    parser.add_argument("--trials", type=int, default=20, help="freshness trials per run (0: none)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    args.code = [c.resolve() for c in (args.code or [ROOT])]
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("httpx", "mlflow", "alembic"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    backend = sa.engine.make_url(args.url[0]).get_backend_name() if args.url else "postgresql"
    result: dict[str, Any] = {"backend": backend, "cores": os.cpu_count(), "writers": args.writers,
                              "reads": args.reads, "code": [str(c) for c in args.code]}
    if args.url:
        if not args.key:
            parser.error("--url needs --key")
        if len(args.url) not in (1, len(args.code)):
            parser.error("give one --url, or one per --code")
        result.update(run_all(args.url if len(args.url) > 1 else args.url[0], args.key, None, args))
    else:
        if args.history is None:
            parser.error("give --url and --key, or --history")
        with args.history.open("rb") as f:
            history: DealHistory = pickle.load(f)  # noqa: S301 - a file this bench's user made
        with postgres_database() as url:
            if url is None:
                sys.exit("PostgreSQL at 127.0.0.1:5432 is unreachable")
            with contextlib.closing(Store(url)) as store:
                store.create_schema()
                t0 = time.perf_counter()
                store.import_history(history)
                result["import_s"] = round(time.perf_counter() - t0, 1)
                key, _ = store.create_api_key("admin", ["*"], name="bench")
            result.update(run_all(url, key, history, args))
    write_result(f"amid_writes_{backend}", result, args.out)


if __name__ == "__main__":
    main()
