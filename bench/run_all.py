"""Run every bench/bench_*.py in turn (each in its own interpreter, so one's memory and threads do not
colour the next) and print a one-line summary per script.

Run: .venv/bin/python bench/run_all.py [--only serving batch_score] [--timeout 1800]
Each script writes its own bench/results/<name>.json; this only runs them and reports exit codes and
wall time. A failing script does not stop the others; the exit code is non-zero if any failed.
"""

from __future__ import annotations

import argparse
import logging
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent

logger = logging.getLogger("run_all")


def scripts(only: list[str] | None = None) -> list[Path]:
    """The bench scripts, sorted by name; `only` keeps those named (with or without `bench_`/`.py`)."""
    found = sorted(BENCH.glob("bench_*.py"))
    if not only:
        return found
    wanted = {n.removeprefix("bench_").removesuffix(".py") for n in only}
    return [p for p in found if p.stem.removeprefix("bench_") in wanted]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", help="Run only these benches (e.g. serving batch_score).")
    parser.add_argument("--timeout", type=float, default=1800, help="Seconds allowed per script.")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    summary: list[tuple[str, str, float]] = []
    for script in scripts(args.only):
        logger.info("running %s", script.name)
        started = time.perf_counter()
        try:
            done = subprocess.run([sys.executable, str(script)], cwd=str(ROOT), timeout=args.timeout)
            status = "ok" if done.returncode == 0 else f"failed (exit {done.returncode})"
        except subprocess.TimeoutExpired:
            status = f"timed out after {args.timeout:.0f} s"
        summary.append((script.name, status, time.perf_counter() - started))
    for name, status, seconds in summary:
        logger.info("%-28s %-24s %7.1f s", name, status, seconds)
    return 0 if all(status == "ok" for _, status, _ in summary) else 1


if __name__ == "__main__":
    sys.exit(main())
