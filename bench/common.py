"""Shared bits for the bench scripts: where results go and what machine measured them."""

from __future__ import annotations

import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> dict[str, Any]:
    return {
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "load_average_1_5_15_min": [round(x, 2) for x in os.getloadavg()],
    }


def write_result(name: str, result: dict[str, Any], path: Path | None = None) -> Path:
    """Write bench/results/<name>.json (or `path`) with the machine description beside the figures."""
    path = path or RESULTS / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"machine": machine(), **result}, indent=2, default=str) + "\n")
    print(json.dumps(result, indent=2, default=str))
    print(f"written to {path}")
    return path


def free_port() -> int:
    """A TCP port on 127.0.0.1 nobody listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(env: dict[str, str], home: Path, port: int, ready_path: str = "/healthz",
                 timeout_s: float = 120, root: Path | None = None) -> subprocess.Popen[bytes]:
    """`uvicorn serving.app:create_app` in a process of its own on 127.0.0.1:`port`, with `env` added to
    this process's environment; returns once `ready_path` answers 200 (kills it and raises otherwise).
    `root`: the checkout whose code is served (default this one)."""
    import httpx

    root = root or Path(__file__).resolve().parents[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "serving.app:create_app", "--factory", "--host", "127.0.0.1",
         "--port", str(port), "--log-level", "warning", "--no-access-log"],
        env={**os.environ, "PYTHONPATH": str(root), **env}, cwd=str(home),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}{ready_path}", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            break
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"the server on port {port} did not become ready ({ready_path})")


POSTGRES_URL = os.environ.get("DEALRISK_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def recent_history(n_deals: int, seed: int = 0, cycle_scale: float = 1.2) -> Any:
    """`n_deals` simulated deals over the two years ending now (time-based features are as of today)."""
    import pandas as pd

    from training.simulate import simulate_history

    end = pd.Timestamp.now(tz="UTC").floor("min")
    return simulate_history(n_deals, seed=seed, start=(end - pd.Timedelta(days=730)).isoformat(),
                            end=end.isoformat(), cycle_scale=cycle_scale)


@contextmanager
def imported_store(backend: str, history: Any) -> Iterator[Any]:
    """A store of its own holding `history`: SQLite in a temporary folder, or PostgreSQL (POSTGRES_URL) in
    a schema of its own, dropped afterwards."""
    import sqlalchemy as sa

    from serving.store import Store

    with tempfile.TemporaryDirectory() as home:
        schema = f"bench_{uuid.uuid4().hex[:10]}" if backend == "postgresql" else None
        url = POSTGRES_URL if schema else f"sqlite:///{Path(home) / 'store.db'}"
        store = Store(url, schema=schema)
        try:
            store.create_schema()
            store.import_history(history)
            yield store
        finally:
            if schema is not None:
                with store.engine.begin() as conn:
                    conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
            store.close()
