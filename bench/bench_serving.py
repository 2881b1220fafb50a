"""Latency, memory and throughput of the HTTP service vs its own no-op endpoint and `mlflow models serve`.

In a temporary DEALRISK_HOME: simulate N deals (default 3,000, seed 0), import them into a SQLite store,
train and register `deal-risk` version 1 (champion), create an admin key, then start
`python -m dealrisk serve` on a free loopback port and, with one persistent httpx client after a
warm-up, time R rounds (default 300) of GET /healthz, POST /v1/score (one open deal inline with its whole
history) and GET /v1/deals/{id}/score, interleaved so load drift on the machine hits all three alike.

Also measured: the server's RSS after warm-up vs a fresh Python that only imports the server's libraries
(mlflow included: the service loads the model through the MLflow client); throughput of K client threads
for D seconds posting 50 deals per /v1/score request; the same against `mlflow models serve` of the same
registered version, fed the equivalent *feature* frame (what its pyfunc signature takes: features are
built beforehand, so mlflow does less work per deal than our endpoint, which builds them from history);
and an in-process breakdown of one single-deal /v1/score by stage (validation, frames, history
validation, features, heads + reasons, response models).

Run: .venv/bin/python bench/bench_serving.py [--deals 3000] [--rounds 300] [--clients 4] [--seconds 10]
     [--no-mlflow-serve]
Targets (SPEC "Figures it must reach"): /v1/score p50 <= 2x and p99 <= 3x /healthz; RSS <= 2x the
libraries' import; throughput >= 2x `mlflow models serve`. Writes bench/results/serving.json.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import cProfile
import io
import json
import logging
import os
import pstats
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import write_result  # noqa: E402
from features.history import DealHistory  # noqa: E402
from models.scoring import open_deal_points  # noqa: E402
from serving.store import Store  # noqa: E402
from training.simulate import simulate_history  # noqa: E402
from training.train import TrainConfig, train  # noqa: E402

logger = logging.getLogger("bench_serving")
PYTHON = str(ROOT / ".venv" / "bin" / "python")
MLFLOW = str(ROOT / ".venv" / "bin" / "mlflow")
DEAL_BASE = ("deal_id", "pipeline", "owner", "amount", "created_at", "team", "account",
             "expected_close_date", "currency")
EVENT_FIELDS = {
    "stage_changes": ("stage", "changed_at", "event_id"),
    "activities": ("type", "occurred_at", "direction", "event_id"),
    "field_changes": ("field", "value", "changed_at", "event_id"),
}
# What the service imports at run time (serving/*, models/*, features/*, and mlflow for loading).
SERVER_LIBS = ("fastapi", "uvicorn", "pydantic", "starlette", "pandas", "numpy", "lightgbm", "sqlalchemy",
               "prometheus_client", "yaml", "mlflow", "mlflow.artifacts")
_CHILDREN: list[subprocess.Popen[bytes]] = []


# ---- helpers -------------------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """Terminate one child we started, then kill it if it lingers."""
    if proc.poll() is not None:
        return
    # each server runs in its own session: signal its process group so a server that forks
    # workers (mlflow models serve runs uvicorn under a shell) goes down whole
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=15)


def _stop_all() -> None:
    for proc in _CHILDREN:
        _stop(proc)


atexit.register(_stop_all)


@contextlib.contextmanager
def _server(cmd: list[str], env: dict[str, str], log_path: Path, ready_url: str,
            timeout_s: float = 240) -> Iterator[subprocess.Popen[bytes]]:
    """Start a server, wait until `ready_url` answers 200 (bounded), always stop it afterwards."""
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=str(ROOT),
                                start_new_session=True)
    _CHILDREN.append(proc)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            if proc.poll() is not None:
                tail = log_path.read_text()[-3000:]
                raise RuntimeError(f"{cmd[:3]} exited with {proc.returncode}; log: {tail}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(ready_url, timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline:
                tail = log_path.read_text()[-3000:]
                raise RuntimeError(f"{ready_url} not ready after {timeout_s} s; log: {tail}")
            time.sleep(0.5)
        yield proc
    finally:
        _stop(proc)


def _rss_kb(pid: int) -> dict[str, int]:
    out: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(("VmRSS:", "VmHWM:")):
            key, value = line.split(":", 1)
            out[key] = int(value.split()[0])
    return out


def _tree_rss_kb(pid: int) -> int:
    """VmRSS summed over a process and its descendants (a server that runs its workers as children)."""
    total = _rss_kb(pid).get("VmRSS", 0)
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            for child in (task / "children").read_text().split():
                total += _tree_rss_kb(int(child))
    return total


def _import_rss_kb(libs: tuple[str, ...]) -> int:
    """VmRSS of a fresh interpreter after importing `libs` (nothing else)."""
    code = (
        "import importlib, pathlib\n"
        f"for m in {list(libs)!r}: importlib.import_module(m)\n"
        "print([l for l in pathlib.Path('/proc/self/status').read_text().splitlines()"
        " if l.startswith('VmRSS:')][0].split()[1])\n"
    )
    out = subprocess.run([PYTHON, "-c", code], capture_output=True, text=True, check=True, timeout=300)
    return int(out.stdout.strip().splitlines()[-1])


def _iso(value: Any) -> Any:
    if value is None or value is pd.NA or (isinstance(value, float) and np.isnan(value)):
        return None
    if isinstance(value, pd.Timestamp):
        return None if pd.isna(value) else value.isoformat()
    return value


def deal_payloads(history: DealHistory, deal_ids: list[str]) -> list[dict[str, Any]]:
    """Each deal with its whole history, shaped as `DealWithHistoryIn` (extra deal columns -> attributes)."""
    wanted = set(deal_ids)
    deals = history.deals[history.deals["deal_id"].isin(wanted)].set_index("deal_id", drop=False)
    events: dict[str, dict[str, list[dict[str, Any]]]] = {d: {t: [] for t in EVENT_FIELDS} for d in deal_ids}
    for table, fields in EVENT_FIELDS.items():
        frame = getattr(history, table)
        frame = frame[frame["deal_id"].isin(wanted)]
        for record in frame.to_dict(orient="records"):
            item = {f: _iso(record[f]) for f in fields}
            events[record["deal_id"]][table].append({k: v for k, v in item.items() if v is not None})
    out = []
    for deal_id in deal_ids:
        row = deals.loc[deal_id].to_dict()
        body = {k: _iso(row[k]) for k in DEAL_BASE if _iso(row.get(k)) is not None}
        body["attributes"] = {k: _iso(v) for k, v in row.items() if k not in DEAL_BASE}
        out.append({**body, **events[deal_id]})
    return out


def _percentiles(seconds: list[float]) -> dict[str, Any]:
    arr = np.asarray(seconds) * 1000
    return {"p50_ms": round(float(np.percentile(arr, 50)), 3),
            "p99_ms": round(float(np.percentile(arr, 99)), 3),
            "mean_ms": round(float(arr.mean()), 3), "n": int(arr.size)}


def _throughput(url: str, body: bytes, headers: dict[str, str], deals_per_request: int, clients: int,
                seconds: float) -> dict[str, Any]:
    """K threads, each with its own client, posting `body` until the time is up; deals scored per second."""
    stop_at = time.monotonic() + seconds
    counts = [0] * clients
    failures = [0] * clients

    def worker(i: int) -> None:
        with httpx.Client(timeout=120, headers=headers) as client:
            while time.monotonic() < stop_at:
                r = client.post(url, content=body)
                if r.status_code == 200:
                    counts[i] += 1
                else:
                    failures[i] += 1

    started = time.perf_counter()
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=seconds + 300)
    elapsed = time.perf_counter() - started
    requests = sum(counts)
    return {"clients": clients, "seconds": round(elapsed, 2), "requests": requests, "failures": sum(failures),
            "deals_per_request": deals_per_request,
            "deals_per_s": round(requests * deals_per_request / elapsed, 1)}


# ---- in-process breakdown of one /v1/score request ---------------------------------------------------
def stage_breakdown(home: Path, payload: dict[str, Any], reps: int) -> dict[str, Any]:
    """Median time of each stage of the /v1/score route for one deal, with the served bundle."""
    from features.build import build_features
    from features.jsonable import jsonable
    from models.loading import load_bundle
    from serving.mapping import inline_frames, validated_history
    from serving.model_holder import PopulationCache
    from serving.schemas import DealScore, DealScores, ScoreRequest

    bundle, _ = load_bundle("models:/deal-risk/1", f"sqlite:///{home / 'mlflow.db'}")
    store = Store(f"sqlite:///{home / 'dealrisk.db'}")
    builder = PopulationCache.from_store(store).get()
    assert builder is not None and builder.population_stats_ is not None
    population = builder.population_stats_
    timings: dict[str, list[float]] = {}

    def timed(name: str, fn: Callable[[], Any]) -> Any:
        t0 = time.perf_counter()
        value = fn()
        timings.setdefault(name, []).append(time.perf_counter() - t0)
        return value

    def one() -> None:
        body = timed("pydantic_request", lambda: ScoreRequest.model_validate(payload))
        as_of = pd.Timestamp(body.as_of)
        frames = timed("inline_frames", lambda: inline_frames(body.deals))
        specs = timed("store_pipeline_specs", store.pipeline_specs)
        specs = {k: v for k, v in specs.items() if k in {d.pipeline for d in body.deals}}
        history = timed("validated_history", lambda: validated_history(frames, specs))
        points = pd.DataFrame({"deal_id": pd.Series([d.deal_id for d in body.deals], dtype="string"),
                               "as_of": pd.Series([as_of] * len(body.deals), dtype="datetime64[ns, UTC]")})
        features = timed("build_features", lambda: build_features(history, points, population))
        scores = timed("bundle_score_3_reasons", lambda: bundle.score(features, top_reasons=3))
        timed("bundle_score_no_reasons", lambda: bundle.score(features, top_reasons=0))

        def respond() -> str:
            merged = pd.concat([scores, features[["pipeline", "stage"]].reset_index(drop=True)], axis=1)
            fields = DealScore.model_fields
            items = [DealScore.model_validate({k: jsonable(r.get(k)) for k in fields if k in r})
                     for r in merged.to_dict(orient="records")]
            return DealScores(model_version="1", data_note=None, as_of=as_of.to_pydatetime(),
                              scores=items).model_dump_json()

        timed("response_models", respond)

    try:
        for _ in range(5):
            one()
        timings.clear()
        for _ in range(reps):
            one()
        profiler = cProfile.Profile()
        profiler.enable()
        for _ in range(20):
            one()
        profiler.disable()
    finally:
        store.close()
    stream = io.StringIO()
    pstats.Stats(profiler, stream=stream).sort_stats("cumulative").print_stats(25)
    medians = {k: round(float(np.median(v)) * 1000, 3) for k, v in timings.items()}
    path_stages = [k for k in medians if k != "bundle_score_no_reasons"]
    return {"reps": reps, "median_ms": medians,
            "sum_of_route_stages_ms": round(sum(medians[k] for k in path_stages), 3),
            "cprofile_top_cumulative": stream.getvalue().splitlines()[:60]}


# ---- main ----------------------------------------------------------------------------------------------
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--deals", type=int, default=3000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rounds", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=30)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--batch", type=int, default=50)
    parser.add_argument("--no-mlflow-serve", action="store_true", help="Skip the `mlflow models serve` run.")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request would swamp the log

    result: dict[str, Any] = {"deals": args.deals, "seed": args.seed, "rounds": args.rounds,
                              "load_average_at_start": os.getloadavg()}
    with tempfile.TemporaryDirectory(prefix="dealrisk-bench-serving-") as tmp:
        home = Path(tmp)
        tracking = f"sqlite:///{home / 'mlflow.db'}"
        # no periodic alias check: it would add registry queries in the middle of the timings
        env = {**os.environ, "DEALRISK_HOME": str(home),
               "DEALRISK_DATABASE_URL": f"sqlite:///{home / 'dealrisk.db'}",
               "MLFLOW_TRACKING_URI": tracking, "DEALRISK_RELOAD_INTERVAL_S": "0",
               "PYTHONPATH": str(ROOT),
               # `mlflow models serve` execs `uvicorn` by name: the venv's bin must be on PATH
               "PATH": f"{ROOT / '.venv' / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}"}
        env.pop("DEALRISK_MODEL_URI", None)

        logger.info("simulating %d deals, importing, training", args.deals)
        history = simulate_history(args.deals, seed=args.seed)
        store = Store(env["DEALRISK_DATABASE_URL"])
        store.create_schema()
        store.import_history(history)
        t0 = time.perf_counter()
        run = train(history, TrainConfig(seed=args.seed), tracking_uri=tracking)
        result["train_seconds"] = round(time.perf_counter() - t0, 1)
        result["model_version"] = run.model_version
        key, _ = store.create_api_key("admin", ["*"], name="bench")
        store.close()

        as_of = history.end_time
        open_ids = open_deal_points(history, as_of)["deal_id"].astype(str).tolist()
        # the single deal: a typical one (median event count among open deals)
        payloads = deal_payloads(history, open_ids[: max(args.batch, 1)])
        sizes = [sum(len(p[t]) for t in EVENT_FIELDS) for p in payloads]
        single = payloads[int(np.argsort(sizes)[len(sizes) // 2])]
        single_body = json.dumps({"as_of": as_of.isoformat(), "deals": [single]}).encode()
        batch_body = json.dumps({"as_of": as_of.isoformat(), "deals": payloads}).encode()
        result["single_deal"] = {"deal_id": single["deal_id"],
                                 "events": sum(len(single[t]) for t in EVENT_FIELDS),
                                 "body_bytes": len(single_body)}
        result["as_of"] = as_of.isoformat()
        headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
        stored_path = f"/v1/deals/{single['deal_id']}/score?as_of={as_of.isoformat().replace('+', '%2B')}"

        port = _free_port()
        base = f"http://127.0.0.1:{port}"
        cmd = [PYTHON, "-m", "dealrisk", "serve", "--port", str(port), "--log-level", "warning"]
        with _server(cmd, env, home / "serve.log", f"{base}/readyz") as proc:
            with httpx.Client(base_url=base, headers=headers, timeout=60) as client:
                inline = client.post("/v1/score", content=single_body)
                stored = client.get(stored_path)
                for r in (inline, stored):
                    if r.status_code != 200:
                        raise RuntimeError(f"{r.request.url} answered {r.status_code}: {r.text[:500]}")
                a, b = inline.json()["scores"][0], stored.json()["scores"][0]
                result["inline_equals_stored"] = bool(
                    abs(a["cold_risk"] - b["cold_risk"]) < 1e-9
                    and abs(a["close_probability"] - b["close_probability"]) < 1e-9
                )
                calls: dict[str, Callable[[], httpx.Response]] = {
                    "healthz": lambda: client.get("/healthz"),
                    "score_inline_1_deal": lambda: client.post("/v1/score", content=single_body),
                    "score_stored": lambda: client.get(stored_path),
                }
                for _ in range(args.warmup):
                    for call in calls.values():
                        call()
                result["server_rss_kb_after_warmup"] = _rss_kb(proc.pid)
                times: dict[str, list[float]] = {name: [] for name in calls}
                for _ in range(args.rounds):
                    for name, call in calls.items():
                        t0 = time.perf_counter()
                        r = call()
                        times[name].append(time.perf_counter() - t0)
                        if r.status_code != 200:
                            raise RuntimeError(f"{name} answered {r.status_code}: {r.text[:300]}")
            lat: dict[str, Any] = {name: _percentiles(v) for name, v in times.items()}
            base_lat = lat["healthz"]
            for name in ("score_inline_1_deal", "score_stored"):
                lat[name]["p50_ratio_vs_healthz"] = round(lat[name]["p50_ms"] / base_lat["p50_ms"], 2)
                lat[name]["p99_ratio_vs_healthz"] = round(lat[name]["p99_ms"] / base_lat["p99_ms"], 2)
            lat["target"] = "score p50 <= 2x and p99 <= 3x healthz"
            lat["meets_target"] = bool(lat["score_inline_1_deal"]["p50_ratio_vs_healthz"] <= 2
                                       and lat["score_inline_1_deal"]["p99_ratio_vs_healthz"] <= 3)
            result["latency"] = lat
            logger.info("latency: %s", json.dumps(lat))
            ours = _throughput(f"{base}/v1/score", batch_body, headers, len(payloads), args.clients,
                               args.seconds)
            result["server_rss_kb_after_throughput"] = _rss_kb(proc.pid)
            result["server_process_tree_rss_kb"] = _tree_rss_kb(proc.pid)
        logger.info("ours: %s", ours)

        rss = result["server_rss_kb_after_warmup"]["VmRSS"]
        libs_rss = _import_rss_kb(SERVER_LIBS)
        libs_no_mlflow = _import_rss_kb(tuple(m for m in SERVER_LIBS if not m.startswith("mlflow")))
        result["memory"] = {
            "server_rss_mb": round(rss / 1024, 1),
            "import_libs_rss_mb": round(libs_rss / 1024, 1),
            "import_libs_without_mlflow_rss_mb": round(libs_no_mlflow / 1024, 1),
            "libs": list(SERVER_LIBS),
            "ratio": round(rss / libs_rss, 2),
            "ratio_vs_libs_without_mlflow": round(rss / libs_no_mlflow, 2),
            "target": "<= 2x",
            "meets_target": bool(rss / libs_rss <= 2),
        }

        throughput: dict[str, Any] = {"ours_post_v1_score": ours}
        if not args.no_mlflow_serve:
            throughput["mlflow_models_serve"] = _mlflow_throughput(history, payloads, as_of, home, env, args)
            theirs = throughput["mlflow_models_serve"].get("deals_per_s")
            if theirs:
                throughput["ratio"] = round(ours["deals_per_s"] / theirs, 2)
                throughput["meets_target"] = bool(ours["deals_per_s"] / theirs >= 2)
        throughput["target"] = ">= 2x mlflow models serve"
        throughput["note"] = (
            "ours takes each deal's raw history and builds features per request (then both heads + 3 "
            "reasons); mlflow models serve gets the already-built feature frame (its pyfunc signature), so "
            "it does strictly less work per deal; same registered version, same batch of deals, same "
            "client threads, one server process each, measured one after the other."
        )
        result["throughput"] = throughput

        logger.info("in-process stage breakdown of one /v1/score")
        result["single_request_breakdown"] = stage_breakdown(
            home, {"as_of": as_of.isoformat(), "deals": [single]}, reps=100
        )
    result["load_average_at_end"] = os.getloadavg()
    result["cores"] = os.cpu_count()
    write_result("serving", result)


def _mlflow_throughput(history: DealHistory, payloads: list[dict[str, Any]], as_of: pd.Timestamp, home: Path,
                       env: dict[str, str], args: argparse.Namespace) -> dict[str, Any]:
    from features.build import build_features
    from features.population_stats import compute_population_stats
    from models.loading import pyfunc_frame

    ids = [p["deal_id"] for p in payloads]
    points = pd.DataFrame({"deal_id": pd.Series(ids, dtype="string"),
                           "as_of": pd.Series([as_of] * len(ids), dtype="datetime64[ns, UTC]")})
    features = build_features(history, points, compute_population_stats(history))
    frame = pyfunc_frame(features)
    body = ('{"dataframe_split": ' + frame.to_json(orient="split", index=False) + "}").encode()
    port = _free_port()
    cmd = [MLFLOW, "models", "serve", "-m", "models:/deal-risk/1", "--env-manager", "local",
           "-p", str(port), "-h", "127.0.0.1"]
    try:
        ready = f"http://127.0.0.1:{port}/ping"
        with _server(cmd, env, home / "mlflow-serve.log", ready, timeout_s=300) as proc:
            url = f"http://127.0.0.1:{port}/invocations"
            headers = {"Content-Type": "application/json"}
            r = httpx.post(url, content=body, headers=headers, timeout=120)
            if r.status_code != 200:
                return {"error": f"invocations answered {r.status_code}: {r.text[:800]}"}
            for _ in range(args.warmup):
                httpx.post(url, content=body, headers=headers, timeout=120)
            out = _throughput(url, body, headers, len(ids), args.clients, args.seconds)
            out["process_tree_rss_mb"] = round(_tree_rss_kb(proc.pid) / 1024, 1)
            out["payload"] = "dataframe_split of pyfunc_frame(build_features(...)) for the same deals"
            return out
    except RuntimeError as exc:
        logger.warning("mlflow models serve failed: %s", exc)
        return {"error": str(exc)[:2000]}


if __name__ == "__main__":
    main()
