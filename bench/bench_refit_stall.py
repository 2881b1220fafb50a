"""Benchmark: one-deal scores while the feature population is refitted, in the service's process or in
another process (issue 8: population statistics are refreshed off the request's path; this measures what
a refit still costs the requests beside it).

Serves a store that already holds a big history (e.g. a copy of bench_store's 100,000-deal SQLite store)
in process with a FastAPI TestClient (live scorer off, so nothing else runs) and times `POST /v1/score`
of one stored open deal inline with its history, 20 deals in turn:
- `quiet`: no refit running;
- `refit_in_service`: while the service's own `PopulationCache` refits on a thread of its process (what
  the service did after writes until the scorer process published its population: it shares the GIL);
- `refit_in_other_process`: while the same fit runs in a child process (what the scorer process does
  now; it shares the cores, not the interpreter).
For each: p50, p99 and max of the requests and how long the refit took. Run on an otherwise idle machine
for figures to compare (the load average is recorded).

Run: .venv/bin/python bench/bench_refit_stall.py --store STORE.db --key KEYFILE --tracking-uri URI
     [--pipeline Enterprise] [--quiet-rounds 300]
Writes bench/results/refit_stall.json (`--out PATH`: PATH instead).
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.bench_serving import _percentiles, deal_payloads  # noqa: E402
from bench.common import write_result  # noqa: E402


def _fit_in_child(url: str) -> None:
    from features.build import FeatureBuilder
    from features.population_stats import POPULATION_TABLES
    from serving.store import Store

    store = Store(url)
    FeatureBuilder().fit(store.load_history(tables=POPULATION_TABLES))
    store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", type=Path, required=True, help="SQLite store (read only)")
    parser.add_argument("--key", type=Path, required=True, help="file holding an admin API key")
    parser.add_argument("--tracking-uri", required=True)
    parser.add_argument("--pipeline", default="Enterprise")
    parser.add_argument("--quiet-rounds", type=int, default=300)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    import sqlalchemy as sa
    from fastapi.testclient import TestClient

    from serving.app import create_app
    from serving.settings import Settings
    from serving.store import Store

    url = f"sqlite:///{args.store.resolve()}"
    store = Store(url)
    with store.engine.connect() as conn:
        ids = [r[0] for r in conn.execute(
            sa.text("SELECT deal_id FROM deals WHERE pipeline = :p AND outcome = 'open' ORDER BY deal_id "
                    "LIMIT 20"), {"p": args.pipeline})]
    history = store.load_history(deal_ids=ids, trusted=True)
    bodies = [{"deals": [deal]} for deal in deal_payloads(history, ids)]
    store.close()
    auth = {"Authorization": f"Bearer {args.key.read_text().strip()}"}

    with tempfile.TemporaryDirectory(prefix="bench-refit-") as tmp:
        settings = Settings(home=Path(tmp), database_url=url, tracking_uri=args.tracking_uri,
                            reload_interval_s=0, live_score_max_age_s=0, population_refresh_s=86_400)
        with TestClient(create_app(settings)) as client:

            def timed(i: int) -> float:
                start = time.perf_counter()
                response = client.post("/v1/score", json=bodies[i % len(bodies)], headers=auth)
                assert response.status_code == 200, response.text
                return time.perf_counter() - start

            for i in range(30):  # warm-up
                timed(i)
            out: dict[str, Any] = {"deals_scored": len(bodies), "load_average_at_start": os.getloadavg()}
            out["quiet"] = _percentiles([timed(i) for i in range(args.quiet_rounds)])

            population: Any = client.app.state.population  # type: ignore[attr-defined]

            def refit_in_service() -> None:
                population.mark_dirty()
                population.refresh()

            def refit_in_other_process() -> None:
                child = multiprocessing.get_context("spawn").Process(target=_fit_in_child, args=(url,))
                child.start()
                child.join()

            for name, refit in (("refit_in_service", refit_in_service),
                                ("refit_in_other_process", refit_in_other_process)):
                done = threading.Event()
                started = time.perf_counter()
                worker = threading.Thread(target=lambda refit=refit, done=done: (refit(), done.set()))
                worker.start()
                times: list[float] = []
                while not done.is_set():
                    times.append(timed(len(times)))
                worker.join()
                out[name] = {**_percentiles(times), "refit_s": round(time.perf_counter() - started, 1)}
    write_result("refit_stall", out, args.out)


if __name__ == "__main__":
    main()
