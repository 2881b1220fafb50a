"""Events streamed into a real server process that is killed with SIGKILL at a random moment: after a
restart every acknowledged event is stored exactly once, and re-sending everything (acknowledged or
not) adds no duplicates. On SQLite and on PostgreSQL.

The run kills once, 2-5 s in; SQLite runs in `make test`, PostgreSQL in `make soak`.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from bench.common import free_port, start_server
from serving.store import Store
from tests.conftest import POSTGRES_URL, _postgres_problem
from tests.serving.conftest import World


def start_test_server(database_url: str, home: Path, port: int) -> subprocess.Popen[bytes]:
    """The service in its own process on `database_url` (no model: storing events needs none)."""
    env = {
        "DEALRISK_HOME": str(home),
        "DEALRISK_DATABASE_URL": database_url,
        "MLFLOW_TRACKING_URI": f"sqlite:///{home / 'none.db'}",
        "DEALRISK_RELOAD_INTERVAL_S": "0",
    }
    return start_server(env, home, port)


def stream_until_killed(
    url: str,
    key: str,
    deal_ids: list[str],
    created: str,
    kill_after_s: float,
    proc: subprocess.Popen[bytes],
    seed: int,
    clients: int = 4,
) -> tuple[dict, set]:
    """Post events from `clients` threads; SIGKILL the server after `kill_after_s`.

    Returns (every event sent, by id -> its JSON) and the ids whose request was acknowledged (200).
    """
    sent: dict[str, dict[str, Any]] = {}
    acked: set[str] = set()
    lock = threading.Lock()
    stop = threading.Event()

    def client(n: int) -> None:
        rng = random.Random(seed * 100 + n)
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=10) as http:
            i = 0
            while not stop.is_set():
                batch = []
                for _ in range(rng.randint(1, 5)):
                    i += 1
                    event = {
                        "deal_id": rng.choice(deal_ids),
                        "type": "email",
                        "direction": "inbound",
                        "occurred_at": created,
                        "event_id": f"c{n}-{i}",
                    }
                    batch.append(event)
                with lock:
                    sent.update({e["event_id"]: e for e in batch})
                try:
                    response = http.post("/v1/events", json={"activities": batch})
                except httpx.HTTPError:
                    return  # the server is gone; whatever this batch did is unacknowledged
                if response.status_code == 200:
                    with lock:
                        acked.update(e["event_id"] for e in batch)

    threads = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
    for t in threads:
        t.start()
    time.sleep(kill_after_s)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    stop.set()
    for t in threads:
        t.join(timeout=30)
    return sent, acked


def stored_event_counts(database_url: str, schema: str | None, deal_ids: list[str]) -> Counter[str]:
    store = Store(database_url, schema=schema)
    try:
        activities = store.load_history(deal_ids=deal_ids).activities
    finally:
        store.close()
    return Counter(str(e) for e in activities["event_id"].dropna() if str(e).startswith("c"))


def run_kill_round(
    world: World, database_url: str, schema: str | None, home: Path, seed: int
) -> dict[str, int]:
    """One round: stream, kill, restart, check, resend, check. Returns the figures."""
    rng = random.Random(seed)
    deal_ids = sorted(world.history.deals["deal_id"].astype(str))[:20]
    created = world.history.deals["created_at"].max().isoformat()
    server_url = database_url if schema is None else f"{database_url}?options=-csearch_path%3D{schema}"
    port = free_port()
    proc = start_test_server(server_url, home, port)
    try:
        sent, acked = stream_until_killed(
            f"http://127.0.0.1:{port}",
            world_key(database_url, schema),
            deal_ids,
            created,
            rng.uniform(2.0, 5.0),
            proc,
            seed,
        )
    finally:
        if proc.poll() is None:
            proc.kill()
    before = stored_event_counts(database_url, schema, deal_ids)
    port = free_port()
    proc = start_test_server(server_url, home, port)
    try:
        key = world_key(database_url, schema)
        with httpx.Client(
            base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {key}"}, timeout=30
        ) as http:
            after_restart = stored_event_counts(database_url, schema, deal_ids)
            events = list(sent.values())
            for i in range(0, len(events), 200):
                response = http.post("/v1/events", json={"activities": events[i : i + 200]})
                assert response.status_code == 200, response.text
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    after_resend = stored_event_counts(database_url, schema, deal_ids)
    assert acked, "nothing was acknowledged before the kill"
    lost = [e for e in acked if after_restart[e] != 1]
    assert not lost, f"{len(lost)} acknowledged events not stored exactly once, e.g. {lost[:5]}"
    assert before == after_restart
    assert set(after_resend) == set(sent) and max(after_resend.values()) == 1
    return {
        "sent": len(sent),
        "acknowledged": len(acked),
        "stored_after_kill": len(after_restart),
        "stored_after_resend": len(after_resend),
    }


_KEYS: dict[tuple[str, str | None], str] = {}


def world_key(database_url: str, schema: str | None) -> str:
    return _KEYS[(database_url, schema)]


# SQLite runs in `make test`; PostgreSQL (two more server starts, ~60 s) in `make soak`.
@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=[pytest.mark.postgres, pytest.mark.soak])])
def backend(request: pytest.FixtureRequest, world: World, tmp_path: Path) -> Iterator[tuple[str, str | None]]:
    if request.param == "sqlite":
        url, schema = f"sqlite:///{tmp_path / 'store.db'}", None
    else:
        problem = _postgres_problem()
        if problem is not None:
            pytest.skip(problem)
        url, schema = POSTGRES_URL, f"t_{uuid.uuid4().hex[:12]}"
        import sqlalchemy as sa

        engine = sa.create_engine(url)
        with engine.begin() as conn:
            conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    store = Store(url, schema=schema)
    store.create_schema()
    store.import_history(world.history.subset(sorted(world.history.deals["deal_id"].astype(str))[:20]))
    key, _ = store.create_api_key("integration", ["*"], name="durability")
    store.close()
    _KEYS[(url, schema)] = key
    yield url, schema
    if schema is not None:
        with engine.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        engine.dispose()


def test_sigkill_while_streaming_loses_no_acknowledged_event(
    world: World, backend: tuple[str, str | None], tmp_path: Path
) -> None:
    url, schema = backend
    figures = run_kill_round(world, url, schema, tmp_path, seed=11)
    print(f"durability {url.split(':')[0]}: {figures}")
    assert figures["acknowledged"] >= 5
