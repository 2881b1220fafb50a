"""Benchmark: the one-deal scoring routes against `/healthz`, in process (issue 8's ratios, without the
network and server process that bench_serving.py and bench_store.py add).

In a temporary DEALRISK_HOME: simulate N deals (default 3,000, seed 0), import them into a SQLite store,
train and register version 1 (champion), create an admin key, then with one FastAPI TestClient (live
scorer off, so no background rounds land in the timings) time R rounds (default 300) of GET /healthz,
POST /v1/score (one open deal inline with its whole history, the 20 open deals closest to 45 events in
turn) and GET /v1/deals/{id}/score (the same deals), interleaved so load drift hits all three alike.
Also the in-process time of `serving.routes.scoring.score_inline_deals` alone (what the route adds to
pydantic, the key check and the spec read), of its request side alone (`serving.mapping.inline_frames`
and `validated_history`: the request models to a validated `DealHistory`), wall and CPU (process_time,
which load from other processes inflates less), and the floor under it all: the time LightGBM's own code
takes for one deal whatever the Python around it does (the cold head's TreeSHAP contributions, which the
reasons need, its probability, and the close head's hazards over every period), each timed alone on the
bench deals' encoded rows. Writes bench/results/one_deal.json (or --out).

Run: .venv/bin/python bench/bench_one_deal.py [--deals 3000] [--rounds 300] [--out PATH]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.bench_serving import _percentiles, deal_payloads  # noqa: E402
from bench.common import write_result  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--deals", type=int, default=3_000)
    parser.add_argument("--rounds", type=int, default=300)
    parser.add_argument("--out", type=Path, default=None, help="default bench/results/one_deal.json")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-one-deal-") as tmp:
        home = Path(tmp)
        os.environ["DEALRISK_HOME"] = str(home)
        cwd = Path.cwd()
        os.chdir(home)  # MLflow writes run artifacts under the working directory
        try:
            result = _run(home, args.deals, args.rounds)
        finally:
            os.chdir(cwd)
    write_result("one_deal", result, args.out)


def _run(home: Path, n_deals: int, rounds: int) -> dict[str, Any]:
    from fastapi.testclient import TestClient

    from serving.app import create_app
    from serving.mapping import inline_frames, validated_history
    from serving.routes.scoring import score_inline_deals
    from serving.schemas import ScoreRequest
    from serving.settings import Settings
    from serving.store import Store
    from training.simulate import simulate_history
    from training.train import TrainConfig, train

    settings = Settings(home=home, database_url=f"sqlite:///{home / 'dealrisk.db'}",
                        tracking_uri=f"sqlite:///{home / 'mlflow.db'}", reload_interval_s=0,
                        live_score_max_age_s=0)
    history = simulate_history(n_deals=n_deals, seed=0)
    store = Store(settings.database_url)
    store.create_schema()
    store.import_history(history)
    key, _ = store.create_api_key("admin", ["*"], name="bench")
    store.close()
    train(history, TrainConfig(seed=0), settings.tracking_uri)

    ids, counts = open_deals_near(history)
    bodies = [{"deals": [deal]} for deal in deal_payloads(history, ids)]
    auth = {"Authorization": f"Bearer {key}"}
    times: dict[str, list[float]] = {"healthz": [], "inline": [], "stored": []}
    with TestClient(create_app(settings)) as client:
        calls = {
            "healthz": lambda i: client.get("/healthz"),
            "inline": lambda i: client.post("/v1/score", json=bodies[i % len(ids)], headers=auth),
            "stored": lambda i: client.get(f"/v1/deals/{ids[i % len(ids)]}/score", headers=auth),
        }
        for i in range(30):  # warm-up
            for call in calls.values():
                call(i)
        for i in range(rounds):
            for name, call in calls.items():
                start = time.perf_counter()
                response = call(i)
                times[name].append(time.perf_counter() - start)
                assert response.status_code == 200, response.text
        app: Any = client.app
        bundle = app.state.model_holder.require().bundle
        builder = app.state.population.get()
        specs = app.state.store.pipeline_specs()
        requests = [ScoreRequest.model_validate(body) for body in bodies]
        in_process = []
        for i in range(rounds):
            deals = requests[i % len(ids)].deals
            start = time.perf_counter()
            score_inline_deals(deals, [0], history.end_time, {deals[0].pipeline: specs[deals[0].pipeline]},
                               bundle, builder)
            in_process.append(time.perf_counter() - start)
        floor = model_floor(bundle, _encoded_rows(bundle, builder, requests, specs, history.end_time), rounds)

        request_side, request_cpu = [], []
        for i in range(rounds):
            deals = requests[i % len(ids)].deals
            start, cpu = time.perf_counter(), time.process_time()
            validated_history(inline_frames(deals, [0]), {deals[0].pipeline: specs[deals[0].pipeline]})
            request_side.append(time.perf_counter() - start)
            request_cpu.append(time.process_time() - cpu)

    out: dict[str, Any] = {"deals": n_deals, "rounds": rounds, "events_per_scored_deal": sorted(counts)}
    for name, seconds in times.items():
        out[name] = _percentiles(seconds)
    for name in ("inline", "stored"):
        out[name]["x_healthz_p50"] = round(out[name]["p50_ms"] / out["healthz"]["p50_ms"], 1)
        out[name]["x_healthz_p99"] = round(out[name]["p99_ms"] / out["healthz"]["p99_ms"], 1)
    out["score_inline_deals_median_ms"] = round(statistics.median(in_process) * 1e3, 2)
    out["request_side_median_ms"] = round(statistics.median(request_side) * 1e3, 3)
    out["request_side_cpu_median_ms"] = round(statistics.median(request_cpu) * 1e3, 3)
    out["model_floor_median_ms"] = floor
    out["model_floor_x_healthz_p50"] = round(floor["total"] / out["healthz"]["p50_ms"], 2)
    out["targets"] = {"x_healthz_p50": 2.0, "x_healthz_p99": 3.0}
    return out


def open_deals_near(history: Any, events: int = 45, n: int = 20) -> tuple[list[str], list[int]]:
    """The `n` deals open at the history's end whose event counts (stage changes, activities and field
    changes) are closest to `events`, and their counts."""
    from models.scoring import open_deal_points

    counts: dict[str, int] = {}
    for table in ("stage_changes", "activities", "field_changes"):
        for deal_id, k in getattr(history, table)["deal_id"].astype(str).value_counts().items():
            counts[deal_id] = counts.get(deal_id, 0) + int(k)
    open_ids = list(open_deal_points(history, history.end_time)["deal_id"].astype(str))
    ids = sorted(open_ids, key=lambda d: (abs(counts.get(d, 0) - events), d))[:n]
    return ids, [counts.get(d, 0) for d in ids]


def _encoded_rows(bundle: Any, builder: Any, requests: list[Any], specs: Any, as_of: Any) -> list[Any]:
    """The bench deals' encoded rows: what `score_points` hands the heads for each inline deal."""
    from models.scoring import point_features, points_at
    from serving.mapping import inline_frames, validated_history

    rows = []
    for request in requests:
        deal = request.deals[0]
        history = validated_history(inline_frames(request.deals), {deal.pipeline: specs[deal.pipeline]})
        rows.append(bundle.encode(point_features(history, points_at([deal.deal_id], as_of), builder)))
    return rows


def model_floor(bundle: Any, rows: list[Any], rounds: int) -> dict[str, float]:
    """Median ms per deal of each LightGBM call one deal makes, timed alone on encoded one-deal `rows`
    (taken in turn), and their sum: the cold head's TreeSHAP contributions (the reasons), its probability
    and the close head's hazards over every period."""
    calls = {
        "cold_contributions": lambda x: bundle.cold.contributions(x),
        "cold_probability": lambda x: bundle.cold.raw_proba(x, None),
        "close_hazards": lambda x: bundle.close.curves(x),
    }
    out = {name: median_ms(call, rows, rounds) for name, call in calls.items()}
    out["total"] = round(sum(out.values()), 3)
    return out


def median_ms(call: Callable[[Any], Any], rows: list[Any], rounds: int, digits: int = 3) -> float:
    """Median ms of `call` over `rounds` calls, taking `rows` in turn (rounded to `digits`)."""
    times = []
    for i in range(rounds):
        x = rows[i % len(rows)]
        start = time.perf_counter()
        call(x)
        times.append(time.perf_counter() - start)
    return round(statistics.median(times) * 1e3, digits)


if __name__ == "__main__":
    main()
