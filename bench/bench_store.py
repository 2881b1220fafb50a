"""The store as the system of record (issue 8, "Figures"): reads, writes and live scores on a big store.

For each backend (SQLite, and PostgreSQL at 127.0.0.1:5432 in a fresh database of its own, dropped
afterwards; skipped with a note when unreachable), in a temporary DEALRISK_HOME:
- simulate N deals (default 100,000, seed 0) ending now, with `cycle_scale` 1.2 so a deal has about 20
  events (the simulator's longer stage visits give more activities; ~2,000,000 events at the default N),
  import them with `Store.import_history`; train `deal-risk` versions 1 and 2 on a sample of the deals
  (once, shared by the backends) and make version 1 @champion;
- start `python -m dealrisk serve` (one worker, registry watcher off, the live scorer in its own process
  unless `--live-scorer thread`; the result's "service" block says what /readyz reported) and time until
  every open deal has a live score of version 1 (polled in the store), with deals/s;
- time round-robin (so load drift hits them alike) GET /healthz, GET at-risk (limit 50, default sort,
  reasons), POST /v1/score of one open deal inline with its history, POST /v1/events (one activity on an
  open deal of the pipeline), GET health of the pipeline right after another such event (posted, not
  timed: `health_after_write`, the first read after a write, which computes the answer), and GET health
  again (`health`: nothing written since the read before, so the service may reuse that answer for up to
  DEALRISK_HEALTH_MAX_AGE_S); ratios to /healthz (`health_after_write` is reported, not a target row);
- at-risk p99 while 16 client threads post events; throughput (requests/s) of 16 concurrent clients vs 1
  running the same mix (at-risk, health, inline score, one event);
- freshness: after POSTing an activity on a deal of the at-risk page, time until GET /v1/deals/{id}/score
  and that deal's at-risk row (owner filter) show a score as of after the write and not pending;
- model swap: promote version 2, POST /v1/model/reload, time until every open deal's live score names
  version 2, with deals/s.

Run: .venv/bin/python bench/bench_store.py [--deals 100000] [--backends sqlite,postgresql] [--quick]
`--quick` shortens every phase (and, without --deals, uses 3,000 deals) to check the script end to end.
Writes bench/results/store.json at the full scale (100,000 deals or more, not --quick), otherwise
bench/results/store_small.json, labelled as a small-scale run; `--out PATH` writes PATH instead.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import sqlalchemy as sa

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.bench_serving import EVENT_FIELDS, _free_port, _percentiles, _server, deal_payloads  # noqa: E402
from bench.common import write_result  # noqa: E402
from features.history import DealHistory  # noqa: E402
from models.scoring import open_deal_points  # noqa: E402
from serving.store import Store  # noqa: E402
from training.registry import promote  # noqa: E402
from training.simulate import simulate_history  # noqa: E402
from training.train import TrainConfig, train  # noqa: E402

logger = logging.getLogger("bench_store")
PYTHON = sys.executable  # the interpreter running this script (a worktree has no .venv of its own)
POSTGRES_ADMIN_URL = os.environ.get(
    "DEALRISK_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
FULL_SCALE = 100_000
CYCLE_SCALE = 1.2  # about 20 events per deal (1.0 gives about 18)
# (figure, target operator, target value, how the target reads)
TARGETS: dict[str, tuple[str, float, str]] = {
    "at_risk_p50_x": ("<=", 10, "<= 10x healthz p50"),
    "at_risk_p99_x": ("<=", 20, "<= 20x healthz p99"),
    "health_p50_x": ("<=", 10, "<= 10x healthz p50"),
    "score_inline_p50_x": ("<=", 2, "<= 2x healthz p50"),
    "score_inline_p99_x": ("<=", 3, "<= 3x healthz p99"),
    "post_event_p50_x": ("<=", 5, "<= 5x healthz p50"),
    "reads_amid_writes_p99_x": ("<=", 20, "<= 20x healthz p99"),
    "throughput_16_vs_1_x": (">=", 1, ">= 1x"),
    "fresh_deal_score_max_s": ("<=", 1, "<= 1 s"),
    "fresh_at_risk_max_s": ("<=", 1, "<= 1 s"),
}


# ---- data, model, stores ---------------------------------------------------------------------------------
def simulate(n_deals: int, seed: int) -> DealHistory:
    """N simulated deals over the two years ending now (so time-based features are as of today)."""
    end = pd.Timestamp.now(tz="UTC").floor("min")
    return simulate_history(n_deals, seed=seed, start=(end - pd.Timedelta(days=730)).isoformat(),
                            end=end.isoformat(), cycle_scale=CYCLE_SCALE)


def training_sample(history: DealHistory, sample: int, seed: int) -> DealHistory:
    """The deals the models train on: a random `sample` of the history's deals (all when fewer)."""
    ids = history.deals["deal_id"].astype(str).to_numpy()
    rng = np.random.default_rng(seed)
    picked = ids if sample >= len(ids) else rng.choice(ids, sample, replace=False)
    return history.subset(picked)


def train_versions(history: DealHistory, sample: int, tracking: str, seed: int) -> dict[str, Any]:
    """Register versions 1 (champion) and 2 (candidate), trained on the same random sample of deals."""
    part = training_sample(history, sample, seed)
    out: dict[str, Any] = {"train_deals": part.n_deals()}
    for i, train_seed in enumerate((seed, seed + 1), start=1):
        started = time.perf_counter()
        run = train(part, TrainConfig(seed=train_seed), tracking_uri=tracking)
        seconds = round(time.perf_counter() - started, 1)
        out[f"version_{i}"] = {"version": run.model_version, "seconds": seconds}
    return out


@contextlib.contextmanager
def postgres_database() -> Iterator[str | None]:
    """A fresh PostgreSQL database (its URL), dropped afterwards; None when PostgreSQL is unreachable."""
    admin = sa.create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    name = f"dealrisk_bench_{uuid.uuid4().hex[:10]}"
    try:
        with admin.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:  # noqa: BLE001 - unreachable or refused: the run says so and goes on
        logger.warning("PostgreSQL unreachable (%s): skipped", exc)
        admin.dispose()
        yield None
        return
    try:
        yield admin.url.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def not_live(store: Store, version: str) -> int:
    """Open deals without a current live score of `version` (none, another version, or a newer write)."""
    deals, scores = store.table("deals"), store.table("deal_scores")
    current = sa.and_(scores.c.model_version == version, scores.c.state_updated_at.is_not(None),
                      scores.c.state_updated_at == deals.c.state_updated_at)
    joined = deals.outerjoin(scores, scores.c.deal_id == deals.c.deal_id)
    query = (sa.select(sa.func.count()).select_from(joined)
             .where(deals.c.outcome == "open", sa.or_(scores.c.deal_id.is_(None), sa.not_(current))))
    with store.engine.connect() as conn:
        return int(conn.execute(query).scalar_one())


def wait_all_live(store: Store, version: str, started: float, open_deals: int,
                  timeout_s: float) -> dict[str, Any]:
    """Poll the store every second until every open deal has a live score of `version` (bounded)."""
    left = not_live(store, version)
    while left and time.perf_counter() - started < timeout_s:
        time.sleep(1)
        left = not_live(store, version)
    seconds = time.perf_counter() - started
    return {"seconds": round(seconds, 1), "open_deals": open_deals, "left_unscored": left,
            "deals_per_s": round(open_deals / seconds, 1) if not left else None}


# ---- requests ---------------------------------------------------------------------------------------------
class Failures:
    """Answers other than 200 from client threads: how many of each status, with one body of each."""

    def __init__(self) -> None:
        self.by_status: dict[str, int] = {}
        self.samples: dict[str, str] = {}
        self._lock = threading.Lock()

    def add(self, r: httpx.Response) -> None:
        with self._lock:
            status = str(r.status_code)
            self.by_status[status] = self.by_status.get(status, 0) + 1
            self.samples.setdefault(status, f"{r.request.method} {r.request.url.path}: {r.text[:300]}")

    def to_dict(self) -> dict[str, Any]:
        return {"by_status": self.by_status, "samples": self.samples}


def _check(r: httpx.Response, name: str) -> httpx.Response:
    if r.status_code != 200:
        raise RuntimeError(f"{name} answered {r.status_code}: {r.text[:500]}")
    return r


Answer = httpx.Response | tuple[httpx.Response, float]


class EventPoster:
    """POSTs one new activity on an open deal (round-robin over a pool), each with an event id of its own."""

    def __init__(self, deal_ids: list[str]) -> None:
        self.deal_ids = deal_ids
        self._i = 0
        self._lock = threading.Lock()

    def body(self, deal_id: str | None = None) -> bytes:
        with self._lock:
            self._i += 1
            i = self._i
        deal = deal_id or self.deal_ids[i % len(self.deal_ids)]
        at = (datetime.now(UTC) - timedelta(seconds=1)).isoformat()
        return json.dumps({"activities": [{"deal_id": deal, "type": "email", "occurred_at": at,
                                           "event_id": f"bench-{uuid.uuid4().hex}"}]}).encode()

    def post(self, client: httpx.Client, deal_id: str | None = None) -> httpx.Response:
        return client.post("/v1/events", content=self.body(deal_id))


def latency_rounds(calls: dict[str, Callable[[], Answer]], rounds: int, warmup: int,
                   max_s: float) -> dict[str, Any]:
    """`rounds` rounds of every call in turn after `warmup` rounds; stops early (after at least 20 rounds)
    once `max_s` seconds have gone, so a slow read cannot hold the run for hours. A call answering
    (response, seconds) is timed by those seconds (the rest of it prepares the timed part)."""
    for _ in range(warmup):
        for name, call in calls.items():
            r = call()
            _check(r[0] if isinstance(r, tuple) else r, name)
    times: dict[str, list[float]] = {name: [] for name in calls}
    started = time.perf_counter()
    for i in range(rounds):
        if i >= 20 and time.perf_counter() - started > max_s:
            break
        for name, call in calls.items():
            t0 = time.perf_counter()
            r = call()
            elapsed = time.perf_counter() - t0
            if isinstance(r, tuple):  # (response, seconds of the part of the call that is timed)
                r, elapsed = r
            times[name].append(elapsed)
            _check(r, name)
    return {name: _percentiles(v) for name, v in times.items()}


def reads_amid_writes(base: str, headers: dict[str, str], at_risk_path: str, poster: EventPoster,
                      writers: int, reads: int, max_s: float,
                      each: Callable[[float, float, httpx.Response], None] | None = None) -> dict[str, Any]:
    """At-risk read latency while `writers` threads post one event per request as fast as they can.
    `each(started_s, seconds, answer)` is told of every read (`started_s`: from the phase's start)."""
    stop = threading.Event()
    written = [0] * writers
    failed = Failures()

    def write(i: int) -> None:
        with httpx.Client(base_url=base, headers=headers, timeout=300) as client:
            while not stop.is_set():
                r = poster.post(client)
                if r.status_code == 200:
                    written[i] += 1
                else:
                    failed.add(r)

    threads = [threading.Thread(target=write, args=(i,), daemon=True) for i in range(writers)]
    for t in threads:
        t.start()
    times: list[float] = []
    started = time.perf_counter()
    try:
        with httpx.Client(base_url=base, headers=headers, timeout=300) as client:
            time.sleep(1)  # the writers are up
            while len(times) < reads and (len(times) < 10 or time.perf_counter() - started < max_s):
                t0 = time.perf_counter()
                r = _check(client.get(at_risk_path), "at-risk amid writes")
                times.append(time.perf_counter() - t0)
                if each is not None:
                    each(t0 - started, times[-1], r)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=300)
    elapsed = time.perf_counter() - started
    return {"at_risk": _percentiles(times), "writers": writers, "events_written": sum(written),
            "write_failures": failed.to_dict(), "seconds": round(elapsed, 1),
            "events_per_s": round(sum(written) / elapsed, 1)}


def throughput(base: str, headers: dict[str, str], mix: list[Callable[[httpx.Client], httpx.Response]],
               clients: int, seconds: float, names: list[str] | None = None) -> dict[str, Any]:
    """`clients` threads, each cycling through the same request mix until the time is up and, so a slow
    mix is not judged on a request or two, at least twice through the mix in all (up to 10x the time).
    With `names` (one per call of the mix), also each kind's answered requests and latency."""
    start = time.monotonic()
    stop_at, hard_stop = start + seconds, start + 10 * seconds
    least = 2 * len(mix)
    done = [0] * clients
    failed = Failures()
    kinds = names or [str(i) for i in range(len(mix))]
    took: list[list[list[float]]] = [[[] for _ in mix] for _ in range(clients)]  # per client, per call

    def work(i: int) -> None:
        with httpx.Client(base_url=base, headers=headers, timeout=300) as client:
            k = i  # each client starts at another point of the mix
            while (now := time.monotonic()) < stop_at or (sum(done) < least and now < hard_stop):
                t0 = time.perf_counter()
                r = mix[k % len(mix)](client)
                if r.status_code == 200:
                    done[i] += 1
                    took[i][k % len(mix)].append(time.perf_counter() - t0)
                else:
                    failed.add(r)
                k += 1

    started = time.perf_counter()
    threads = [threading.Thread(target=work, args=(i,), daemon=True) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=seconds + 600)
    elapsed = time.perf_counter() - started
    out = {"clients": clients, "seconds": round(elapsed, 1), "requests": sum(done),
           "failures": failed.to_dict(), "requests_per_s": round(sum(done) / elapsed, 2)}
    if names is not None:
        out["by_kind"] = {}
        for j, name in enumerate(kinds):
            times = [t for per_client in took for t in per_client[j]]
            out["by_kind"][name] = {"requests": len(times), **(_percentiles(times) if times else {})}
    return out


def _fresh(row: dict[str, Any] | None, time_key: str, after: datetime) -> bool:
    """A score row as of `after` or later and not pending a newer write."""
    if row is None or row.get(time_key) is None or row.get("score_pending"):
        return False
    return pd.Timestamp(row[time_key]) >= pd.Timestamp(after)


def _first_fresh(base: str, headers: dict[str, str], read: Callable[[httpx.Client], dict[str, Any] | None],
                 time_key: str, sent: datetime, t0: float, timeout_s: float) -> tuple[float | None, int]:
    """Poll `read` until its row is fresh (`_fresh`): seconds from `t0` to the answer that shows it (None
    after `timeout_s`), and how many reads it took."""
    polls = 0
    with httpx.Client(base_url=base, headers=headers, timeout=300) as client:
        while time.perf_counter() - t0 < timeout_s:
            polls += 1
            if _fresh(read(client), time_key, sent):
                return time.perf_counter() - t0, polls
            time.sleep(0.02)
    return None, polls


def _poll_into(results: dict[str, tuple[float | None, int]], name: str, *args: Any) -> None:
    results[name] = _first_fresh(*args)


def freshness(base: str, headers: dict[str, str], pipeline: str, rows: list[dict[str, Any]],
              poster: EventPoster, trials: int, timeout_s: float) -> dict[str, Any]:
    """After one new activity on a deal of the at-risk page: seconds until GET /v1/deals/{id}/score and
    the deal's at-risk row (at-risk filtered to its owner, up to 1,000 rows) are as of after the write and
    not pending. Each read is polled by a thread of its own once the POST is answered; the time counts from
    just before the POST is sent."""
    found: dict[str, list[float]] = {"deal_score": [], "at_risk": []}
    polls: dict[str, list[int]] = {"deal_score": [], "at_risk": []}
    timed_out = {"deal_score": 0, "at_risk": 0}
    with httpx.Client(base_url=base, headers=headers, timeout=300) as writer:
        for i in range(trials):
            row = rows[i % len(rows)]
            deal_id, owner = row["deal_id"], row["owner"]
            params: dict[str, Any] = {"limit": 1000, **({"owner": owner} if owner is not None else {})}

            def deal_score(client: httpx.Client, deal_id: str = deal_id) -> dict[str, Any] | None:
                body = _check(client.get(f"/v1/deals/{deal_id}/score"), "deal score").json()
                extra = {k: v for k, v in body.items() if k == "score_pending"}
                return {**body["scores"][0], **extra} if body["scores"] else None

            def at_risk_row(client: httpx.Client, deal_id: str = deal_id,
                            params: dict[str, Any] = params) -> dict[str, Any] | None:
                page = _check(client.get(f"/v1/pipelines/{pipeline}/at-risk", params=params), "at-risk")
                return next((d for d in page.json()["deals"] if d["deal_id"] == deal_id), None)

            sent = datetime.now(UTC)
            t0 = time.perf_counter()
            results: dict[str, tuple[float | None, int]] = {}
            reads = (("deal_score", deal_score, "as_of"), ("at_risk", at_risk_row, "scored_at"))
            readers = [
                threading.Thread(target=_poll_into, daemon=True,
                                 args=(results, name, base, headers, read, key, sent, t0, timeout_s))
                for name, read, key in reads
            ]
            _check(poster.post(writer, deal_id), "POST /v1/events")
            for t in readers:
                t.start()
            for t in readers:
                t.join(timeout=timeout_s + 600)
            for name, (seconds, n) in results.items():
                polls[name].append(n)
                if seconds is None:
                    timed_out[name] += 1
                else:
                    found[name].append(seconds)

    def summary(values: list[float], n: list[int]) -> dict[str, Any]:
        if not values:
            return {"p50_s": None, "max_s": None, "n": 0, "max_polls": max(n, default=0)}
        return {"p50_s": round(float(np.median(values)), 3), "max_s": round(max(values), 3), "n": len(values),
                "max_polls": max(n, default=0)}

    return {"trials": trials, "timeout_s": timeout_s, "timed_out": timed_out,
            "from": "just before the POST is sent to the answer that shows the new score",
            **{name: summary(found[name], polls[name]) for name in found}}


# ---- one backend ------------------------------------------------------------------------------------------
def run_backend(backend: str, url: str, history: DealHistory, tracking: str, versions: dict[str, Any],
                home: Path, args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {"load_average_at_start": os.getloadavg()}
    phases: dict[str, float] = {}
    t_phase = time.perf_counter()
    with contextlib.closing(Store(url)) as store:
        store.create_schema()
        imported = store.import_history(history)
        out["import"] = {"seconds": round(time.perf_counter() - t_phase, 1), **imported.to_dict()}
        out["rows"] = store.count_rows()
        key, _ = store.create_api_key("admin", ["*"], name="bench")
        phases["import"] = time.perf_counter() - t_phase
        v1, v2 = versions["version_1"]["version"], versions["version_2"]["version"]
        promote(v1, tracking, force=True)

        now = pd.Timestamp.now(tz="UTC")
        open_ids = open_deal_points(history, now)["deal_id"].astype(str).tolist()
        open_pipes = history.deals.set_index("deal_id").loc[open_ids, "pipeline"].astype(str)
        pipeline = str(open_pipes.value_counts().idxmax())  # the pipeline with the most open deals
        pipe_open = open_pipes[open_pipes == pipeline].index.tolist()
        out["pipeline"] = {"name": pipeline, "open_deals": len(pipe_open), "store_open_deals": len(open_ids)}
        sample = deal_payloads(history, pipe_open[:50])
        sizes = [sum(len(p[t]) for t in EVENT_FIELDS) for p in sample]
        single = sample[int(np.argsort(sizes)[len(sizes) // 2])]  # a typical deal: median event count
        single_body = json.dumps({"deals": [single]}).encode()
        n_events = sum(len(single[t]) for t in EVENT_FIELDS)
        out["single_deal"] = {"deal_id": single["deal_id"], "events": n_events}
        poster = EventPoster(pipe_open)

        headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
        env = {**os.environ, "DEALRISK_HOME": str(home), "DEALRISK_DATABASE_URL": url,
               "MLFLOW_TRACKING_URI": tracking, "DEALRISK_RELOAD_INTERVAL_S": "0", "PYTHONPATH": str(ROOT),
               "DEALRISK_LIVE_SCORER": args.live_scorer}
        env.pop("DEALRISK_MODEL_URI", None)
        out["service"] = {"workers": 1, "reload_interval_s": 0, "model_swap": "POST /v1/model/reload",
                          "live_score_max_age_s": env.get("DEALRISK_LIVE_SCORE_MAX_AGE_S", "default")}
        port = _free_port()
        base = f"http://127.0.0.1:{port}"
        cmd = [PYTHON, "-m", "dealrisk", "serve", "--port", str(port), "--log-level", "warning"]
        at_risk_path = f"/v1/pipelines/{pipeline}/at-risk?limit=50"
        launched = time.perf_counter()
        with _server(cmd, env, home / f"serve-{backend}.log", f"{base}/readyz", timeout_s=args.ready_timeout):
            out["ready_s"] = round(time.perf_counter() - launched, 1)
            out["service"]["live_scorer"] = httpx.get(f"{base}/readyz", timeout=30).json().get("live_scorer")
            logger.info("%s: ready after %.1f s; waiting for %d live scores", backend, out["ready_s"],
                        len(open_ids))
            out["initial_scoring"] = wait_all_live(store, v1, launched, len(open_ids), args.scoring_timeout)
            out["initial_scoring"]["from"] = "server launch"
            scored_s = out["initial_scoring"]["seconds"]
            out["initial_scoring"]["after_ready_s"] = round(scored_s - out["ready_s"], 1)
            phases["initial_scoring"] = time.perf_counter() - launched
            logger.info("%s: initial scoring %s", backend, out["initial_scoring"])

            with httpx.Client(base_url=base, headers=headers, timeout=300) as client:
                t_phase = time.perf_counter()
                health_path = f"/v1/pipelines/{pipeline}/health"

                def health_after_write() -> tuple[httpx.Response, float]:
                    _check(poster.post(client), "post_event")  # not timed: the write the read follows
                    t0 = time.perf_counter()
                    response = client.get(health_path)
                    return response, time.perf_counter() - t0

                # in this order: `health` is read with nothing written since `health_after_write`'s read
                calls: dict[str, Callable[[], Answer]] = {
                    "healthz": lambda: client.get("/healthz"),
                    "at_risk": lambda: client.get(at_risk_path),
                    "score_inline": lambda: client.post("/v1/score", content=single_body),
                    "post_event": lambda: poster.post(client),
                    "health_after_write": health_after_write,
                    "health": lambda: client.get(health_path),
                }
                lat = latency_rounds(calls, args.rounds, args.warmup, args.latency_max_s)
                out["latency"] = lat
                phases["latency"] = time.perf_counter() - t_phase
                logger.info("%s: latency %s", backend, json.dumps(lat))

                t_phase = time.perf_counter()
                out["reads_amid_writes"] = reads_amid_writes(
                    base, headers, at_risk_path, poster, args.clients, args.amid_reads, args.amid_max_s)
                phases["reads_amid_writes"] = time.perf_counter() - t_phase
                logger.info("%s: reads amid writes %s", backend, out["reads_amid_writes"])

                t_phase = time.perf_counter()
                mix: list[Callable[[httpx.Client], httpx.Response]] = [
                    lambda c: c.get(at_risk_path),
                    lambda c: c.get(f"/v1/pipelines/{pipeline}/health"),
                    lambda c: c.post("/v1/score", content=single_body),
                    lambda c: poster.post(c),
                ]
                kinds = ["at-risk", "health", "score inline", "post event"]
                one = throughput(base, headers, mix, 1, args.seconds, names=kinds)
                many = throughput(base, headers, mix, args.clients, args.seconds, names=kinds)
                out["throughput"] = {"mix": kinds, "one": one, "many": many}
                phases["throughput"] = time.perf_counter() - t_phase
                logger.info("%s: throughput %s", backend, out["throughput"])

                # freshness on a settled store: every write of the phases above scored first
                settle = wait_all_live(store, v1, time.perf_counter(), len(open_ids), args.scoring_timeout)
                out["settle_before_freshness"] = settle
                t_phase = time.perf_counter()
                page = _check(client.get(at_risk_path), "at-risk").json()["deals"]
                out["freshness"] = freshness(
                    base, headers, pipeline, page, poster, args.trials, args.fresh_timeout)
                phases["freshness"] = time.perf_counter() - t_phase
                logger.info("%s: freshness %s", backend, out["freshness"])

                wait_all_live(store, v1, time.perf_counter(), len(open_ids), args.scoring_timeout)
                promote(v2, tracking, force=True)
                swapped = time.perf_counter()
                info = _check(client.post("/v1/model/reload"), "model reload").json()
                out["model_swap"] = {"to_version": info.get("version", v2),
                                     **wait_all_live(store, v2, swapped, len(open_ids), args.scoring_timeout)}
                out["model_swap"]["from"] = "POST /v1/model/reload"
                phases["model_swap"] = time.perf_counter() - swapped
                logger.info("%s: model swap %s", backend, out["model_swap"])
    out["phase_seconds"] = {k: round(v, 1) for k, v in phases.items()}
    out["figures"] = figures(out)
    out["load_average_at_end"] = os.getloadavg()
    return out


def figures(r: dict[str, Any]) -> dict[str, Any]:
    """Every figure of the issue's table with its target and whether it is met."""
    lat, hz = r["latency"], r["latency"]["healthz"]

    def x(value: float | None, base: float) -> float | None:
        return None if value is None else round(value / base, 2)

    measured: dict[str, Any] = {
        "at_risk_p50_x": x(lat["at_risk"]["p50_ms"], hz["p50_ms"]),
        "at_risk_p99_x": x(lat["at_risk"]["p99_ms"], hz["p99_ms"]),
        "health_p50_x": x(lat["health"]["p50_ms"], hz["p50_ms"]),
        "score_inline_p50_x": x(lat["score_inline"]["p50_ms"], hz["p50_ms"]),
        "score_inline_p99_x": x(lat["score_inline"]["p99_ms"], hz["p99_ms"]),
        "post_event_p50_x": x(lat["post_event"]["p50_ms"], hz["p50_ms"]),
        "reads_amid_writes_p99_x": x(r["reads_amid_writes"]["at_risk"]["p99_ms"], hz["p99_ms"]),
        "throughput_16_vs_1_x": x(r["throughput"]["many"]["requests_per_s"],
                                  r["throughput"]["one"]["requests_per_s"]),
        "fresh_deal_score_max_s": r["freshness"]["deal_score"]["max_s"],
        "fresh_at_risk_max_s": r["freshness"]["at_risk"]["max_s"],
    }
    out: dict[str, Any] = {}
    for name, value in measured.items():
        op, target, text = TARGETS[name]
        timed_out = name.startswith("fresh_") and r["freshness"]["timed_out"][name[6:-6]] > 0
        met = value is not None and not timed_out and (value <= target if op == "<=" else value >= target)
        out[name] = {"measured": value, "target": text, "met": "yes" if met else "no"}
    out["health_after_write_p50_x"] = {
        "measured": x(lat["health_after_write"]["p50_ms"], hz["p50_ms"]),
        "target": "reported (health, first read after a write to the pipeline; not a target row)",
        "met": "n/a"}
    for name in ("initial_scoring", "model_swap"):
        s = r[name]
        met = "n/a" if not s["left_unscored"] else "no (timed out)"
        out[f"{name}_s"] = {"measured": s["seconds"], "deals_per_s": s["deals_per_s"], "target": "reported",
                            "met": met}
    return out


def markdown(result: dict[str, Any]) -> str:
    lines = ["| backend | figure | measured | target | met |", "|---|---|---|---|---|"]
    for backend, r in result["backends"].items():
        if not isinstance(r, dict) or "figures" not in r:
            lines.append(f"| {backend} | - | {r if isinstance(r, str) else r.get('error')} | - | - |")
            continue
        for name, f in r["figures"].items():
            value = f["measured"]
            if name.endswith("_s") and "deals_per_s" in f:
                value = f"{value} s ({f['deals_per_s']} deals/s)"
            lines.append(f"| {backend} | {name} | {value} | {f['target']} | {f['met']} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n".join(__doc__.splitlines()[2:]))
    parser.add_argument("--deals", type=int, default=None,
                        help=f"deals in the store (default {FULL_SCALE:,}; 3,000 with --quick)")
    parser.add_argument("--backends", default="sqlite,postgresql", help="comma-separated: sqlite,postgresql")
    parser.add_argument("--quick", action="store_true", help="short phases, to check the script end to end")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train-deals", type=int, default=None, help="deals the models train on (default "
                        "20,000; 2,000 with --quick)")
    parser.add_argument("--rounds", type=int, default=None, help="latency rounds (default 200; 30 quick)")
    parser.add_argument("--clients", type=int, default=16, help="concurrent clients / writer threads")
    parser.add_argument("--seconds", type=float, default=None,
                        help="each throughput run (default 30; 8 quick)")
    parser.add_argument("--trials", type=int, default=None, help="freshness trials (default 20; 8 quick)")
    parser.add_argument("--out", type=Path, default=None,
                        help="write the result here instead of bench/results/store(_small).json")
    parser.add_argument("--live-scorer", choices=["process", "thread"], default="process",
                        help="where the service runs its live scorer (DEALRISK_LIVE_SCORER)")
    args = parser.parse_args()
    quick = args.quick
    args.deals = args.deals or (3000 if quick else FULL_SCALE)
    args.train_deals = args.train_deals or (2000 if quick else 20_000)
    args.rounds = args.rounds or (30 if quick else 200)
    args.warmup = 5 if quick else 20
    args.seconds = args.seconds or (8.0 if quick else 30.0)
    args.trials = args.trials or (8 if quick else 20)
    args.amid_reads, args.amid_max_s = (30, 30.0) if quick else (200, 300.0)
    args.latency_max_s = 120.0 if quick else 900.0
    args.fresh_timeout = 60.0
    args.ready_timeout = 1800.0
    args.scoring_timeout = 7200.0
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    unknown = set(backends) - {"sqlite", "postgresql"}
    if unknown:
        parser.error(f"unknown backend(s): {sorted(unknown)}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("httpx", "mlflow", "alembic"):
        logging.getLogger(noisy).setLevel(logging.WARNING)

    full = args.deals >= FULL_SCALE and not quick
    result: dict[str, Any] = {
        "scale": "full (issue 8)" if full
        else f"SMALL-SCALE CHECK ({args.deals:,} deals): not the issue-8 figures",
        "deals": args.deals, "seed": args.seed, "cycle_scale": CYCLE_SCALE, "quick": quick,
        "rounds": args.rounds, "clients": args.clients, "throughput_seconds": args.seconds,
        "freshness_trials": args.trials, "cores": os.cpu_count(), "load_average_at_start": os.getloadavg(),
    }
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="dealrisk-bench-store-") as tmp:
        root = Path(tmp)
        logger.info("simulating %d deals", args.deals)
        t0 = time.perf_counter()
        history = simulate(args.deals, args.seed)
        events = len(history.stage_changes) + len(history.activities) + len(history.field_changes)
        result["simulate"] = {"seconds": round(time.perf_counter() - t0, 1), "deals": history.n_deals(),
                              "events": events, "events_per_deal": round(events / history.n_deals(), 2)}
        tracking = f"sqlite:///{root / 'mlflow.db'}"
        logger.info("training two versions on %d deals", min(args.train_deals, args.deals))
        result["models"] = train_versions(history, args.train_deals, tracking, args.seed)
        result["backends"] = {}
        for backend in backends:
            home = root / backend
            home.mkdir()
            logger.info("backend %s", backend)
            try:
                if backend == "sqlite":
                    result["backends"][backend] = run_backend(backend, f"sqlite:///{home / 'dealrisk.db'}",
                                                              history, tracking, result["models"], home, args)
                else:
                    with postgres_database() as url:
                        if url is None:
                            result["backends"][backend] = "skipped: PostgreSQL at 127.0.0.1:5432 unreachable"
                            continue
                        result["backends"][backend] = run_backend(backend, url, history, tracking,
                                                                  result["models"], home, args)
            except Exception as exc:  # noqa: BLE001 - one backend failing still records the other
                logger.exception("backend %s failed", backend)
                result["backends"][backend] = {"error": str(exc)[:3000]}
    result["total_seconds"] = round(time.perf_counter() - started, 1)
    result["load_average_at_end"] = os.getloadavg()
    table = markdown(result)
    result["table_markdown"] = table
    write_result("store" if full else "store_small", result, args.out)
    print(table)
    if any(not isinstance(r, dict) or "error" in r for r in result["backends"].values()
           if not (isinstance(r, str) and r.startswith("skipped"))):
        sys.exit(1)


if __name__ == "__main__":
    main()
