"""The forecast's new-deal models refitted in the service's process (`NewDealCache.refresh`, after every
refit of the population): every stored deal's state read and the models fitted, reading only the columns
the models use (`NEW_DEAL_FIELDS`, what the service does) against every state column (what it did
before), interleaved, on an existing store (e.g. a copy of bench_store's 100,000-deal store). The read
holds the service's interpreter lock, so its length is a stall of the service's requests.

Run: .venv/bin/python bench/bench_new_deals.py --store FILE [--rounds 10]
Writes bench/results/new_deals.json.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import write_result  # noqa: E402
from serving import model_holder  # noqa: E402
from serving.model_holder import NewDealCache  # noqa: E402
from serving.store import Store  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", type=Path, required=True, help="SQLite store (only read)")
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()
    store = Store(f"sqlite:///{args.store}")
    cache = NewDealCache(store)
    narrowed = model_holder.NEW_DEAL_FIELDS
    every = None  # deal_states' default: every state column
    times: dict[str, list[float]] = {"needed_columns": [], "every_column": []}
    cache.refresh()  # warm the connection and the page cache
    for _ in range(args.rounds):
        for name, fields in (("needed_columns", narrowed), ("every_column", every)):
            model_holder.NEW_DEAL_FIELDS = fields  # type: ignore[assignment]
            started = time.perf_counter()
            cache.refresh()
            times[name].append(time.perf_counter() - started)
    model_holder.NEW_DEAL_FIELDS = narrowed
    deals = store.count_rows().get("deals", 0)
    store.close()
    result: dict[str, Any] = {"store_deals": deals, "rounds": args.rounds, "fields": list(narrowed)}
    for name, values in times.items():
        result[name] = {"median_s": round(statistics.median(values), 3), "max_s": round(max(values), 3)}
    write_result("new_deals", result)


if __name__ == "__main__":
    main()
