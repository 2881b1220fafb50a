"""The forecast's new-deal models in the service's process after each population refit, before and after
they moved to the scorer's fitting process, on an existing store (e.g. a copy of bench_store's
100,000-deal store), interleaved:

- before: the service read the published population, then fitted the new-deal models itself
  (`NewDealCache.refresh`: every stored deal's state read, `NEW_DEAL_FIELDS` only);
- after: the service reads the population and the models the fitting process published with it, from
  one file (`read_published`), and takes them (`NewDealCache.refresh(published=...)`).

Both hold the service's interpreter lock, so their length is a stall of the service's requests. Also
timed: what the fitting process adds to its fit (`fit_new_deal_models` and the table it publishes), and
the published file's size with and without the models.

Run: .venv/bin/python bench/bench_new_deals.py --store FILE [--rounds 10]
Writes bench/results/new_deals.json.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import write_result  # noqa: E402
from features.population_stats import save_population_stats  # noqa: E402
from serving.model_holder import (  # noqa: E402
    NewDealCache,
    fit_new_deal_models,
    new_deal_models_table,
    publish_population,
    read_published,
    read_published_population,
)
from serving.store import Store  # noqa: E402


def _summary(values: list[float]) -> dict[str, float]:
    return {"median_s": round(statistics.median(values), 3), "max_s": round(max(values), 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", type=Path, required=True, help="SQLite store (only read)")
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()
    store = Store(f"sqlite:///{args.store}")
    cache = NewDealCache(store)
    with tempfile.TemporaryDirectory() as home:
        published = Path(home) / "population.zip"
        builder = publish_population(store, published)  # what the fitting process publishes
        assert builder is not None and builder.population_stats_ is not None
        with_models = published.stat().st_size
        bare = Path(home) / "bare.zip"
        save_population_stats(builder.population_stats_, bare)
        file_bytes = {"with_new_deal_models": with_models, "without": bare.stat().st_size}
        cache.refresh()  # warm the connection and the page cache
        _, models = read_published(published)
        assert models is not None
        won_amounts: int = sum(len(model.won_amounts) for model, _ in models.values())
        times: dict[str, list[float]] = {
            "before_service_per_refit": [], "after_service_per_refit": [], "fitting_process_added": [],
        }
        for _ in range(args.rounds):
            started = time.perf_counter()
            read_published_population(published)
            cache.refresh()
            times["before_service_per_refit"].append(time.perf_counter() - started)

            started = time.perf_counter()
            _, read = read_published(published)
            cache.refresh(published=read)
            times["after_service_per_refit"].append(time.perf_counter() - started)

            started = time.perf_counter()
            new_deal_models_table(fit_new_deal_models(store))
            times["fitting_process_added"].append(time.perf_counter() - started)
    deals = store.count_rows().get("deals", 0)
    store.close()
    result: dict[str, Any] = {
        "store_deals": deals,
        "rounds": args.rounds,
        "pipelines": len(models),
        "won_amounts": won_amounts,
        "published_file_bytes": file_bytes,
    }
    for name, values in times.items():
        result[name] = _summary(values)
    write_result("new_deals", result)


if __name__ == "__main__":
    main()
