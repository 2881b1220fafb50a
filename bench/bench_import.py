"""Time `dealrisk import` of a simulated history: read the folder, then write it into a fresh store.

Simulates N deals (default 20,000, seed 1), writes them as CSV to a temporary folder, then times
`read_history` and `Store.import_history` into a fresh SQLite file and, if reachable, a fresh schema of
the PostgreSQL at 127.0.0.1:5432. A second import of the same history is timed too (it must insert
nothing). Writes bench/results/import.json.

Run: .venv/bin/python bench/bench_import.py [--deals 20000] [--seed 1] [--no-postgres]
Target (issue 2): 20,000 deals with their history imported in under a minute on a two-core machine.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from serving.store import Store  # noqa: E402
from training.data import read_history, write_history  # noqa: E402
from training.simulate import simulate_history  # noqa: E402

logger = logging.getLogger("bench_import")
RESULTS = Path(__file__).resolve().parent / "results" / "import.json"
POSTGRES_URL = os.environ.get(
    "DEALRISK_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
TABLES = ("deals", "stage_changes", "activities", "field_changes")


def _time_import(folder: Path, url: str, schema: str | None) -> dict[str, Any]:
    started = time.perf_counter()
    history = read_history(folder)
    read_s = time.perf_counter() - started
    store = Store(url, schema=schema)
    try:
        store.create_schema()
        started = time.perf_counter()
        first = store.import_history(history)
        import_s = time.perf_counter() - started
        started = time.perf_counter()
        second = store.import_history(history)
        reimport_s = time.perf_counter() - started
        rows = store.count_rows()
    finally:
        store.close()
    if second.changed:
        raise RuntimeError(f"re-import changed the store: {second.to_dict()}")
    return {
        "read_history_s": round(read_s, 2),
        "import_s": round(import_s, 2),
        "read_plus_import_s": round(read_s + import_s, 2),
        "reimport_s": round(reimport_s, 2),
        "rows_inserted": first.inserted,
        "rows_in_store": {t: rows[t] for t in TABLES},
    }


def _postgres_schema() -> str | None:
    try:
        engine = sa.create_engine(POSTGRES_URL, connect_args={"connect_timeout": 3})
        schema = f"bench_{uuid.uuid4().hex[:10]}"
        with engine.begin() as conn:
            conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
        engine.dispose()
        return schema
    except Exception as exc:  # any connection failure: report and skip that backend
        logger.warning("PostgreSQL at %s unreachable, skipped: %s", POSTGRES_URL, exc)
        return None


def _drop_schema(schema: str) -> None:
    engine = sa.create_engine(POSTGRES_URL)
    with engine.begin() as conn:
        conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
    engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--deals", type=int, default=20_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--no-postgres", action="store_true", help="Only time SQLite.")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    history = simulate_history(args.deals, seed=args.seed)
    rows = {t: len(getattr(history, t)) for t in TABLES}
    result: dict[str, Any] = {
        "deals": args.deals,
        "seed": args.seed,
        "rows": rows,
        "total_rows": sum(rows.values()),
        "cores": os.cpu_count(),
        "machine": platform.platform(),
        "python": platform.python_version(),
        "target_s": 60,
        "backends": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "history"
        write_history(history, folder, fmt="csv")
        del history
        logger.info("timing SQLite")
        result["backends"]["sqlite"] = _time_import(folder, f"sqlite:///{Path(tmp) / 'bench.db'}", None)
        schema = None if args.no_postgres else _postgres_schema()
        if schema is not None:
            logger.info("timing PostgreSQL (schema %s)", schema)
            try:
                result["backends"]["postgresql"] = _time_import(folder, POSTGRES_URL, schema)
            finally:
                _drop_schema(schema)
        else:
            result["backends"]["postgresql"] = "skipped"
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
