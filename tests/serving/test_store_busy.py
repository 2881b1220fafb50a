"""SQLite has one writer at a time: a write that waits past the busy timeout answers 503 "the store is
busy" with Retry-After (not "unreachable", not a 500), and nothing of it is stored."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

from serving.app import create_app
from serving.store import PG_WRITE_TURNS, Store
from tests.serving.conftest import make_settings


def _writable_store(world: Any, path: Path, event_id: str) -> tuple[str, dict[str, Any]]:
    """A SQLite store of the world's history at `path`: an integration key and one event to post."""
    store = Store(f"sqlite:///{path}")
    store.create_schema()
    store.import_history(world.history)
    plaintext, _ = store.create_api_key("integration", ["*"], name="writer")
    store.close()
    deal_id = str(world.history.deals["deal_id"].iloc[0])
    event = {"activities": [{"deal_id": deal_id, "type": "email", "direction": "outbound",
                             "occurred_at": "2026-11-30T10:00:00+00:00", "event_id": event_id}]}
    return plaintext, event


def test_a_write_blocked_by_another_writer_answers_busy(world: Any, tmp_path: Path) -> None:
    path = tmp_path / "busy.db"
    plaintext, event = _writable_store(world, path, "busy-1")
    settings = make_settings(world, database_url=f"sqlite:///{path}", write_wait_s=0.5,
                             live_score_max_age_s=0)
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        holder = sqlite3.connect(path, timeout=0.1, isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")  # another process holds the write lock
        try:
            busy = client.post("/v1/events", json=event, headers={"Authorization": f"Bearer {plaintext}"})
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        assert busy.status_code == 503, busy.text
        assert "store is busy" in busy.json()["detail"] and busy.headers["retry-after"]
        again = client.post("/v1/events", json=event, headers={"Authorization": f"Bearer {plaintext}"})
        assert again.status_code == 200, again.text
        assert again.json()["inserted"] == 1  # the refused attempt stored nothing


def test_a_write_meeting_another_process_s_write_waits_for_it(world: Any, tmp_path: Path) -> None:
    """The scorer process writes the same SQLite file: a request's write that meets its lock waits."""
    import subprocess
    import sys

    path = tmp_path / "shared.db"
    plaintext, event = _writable_store(world, path, "shared-1")
    settings = make_settings(world, database_url=f"sqlite:///{path}", live_score_max_age_s=0)
    hold = ("import sqlite3, sys, time; c = sqlite3.connect(sys.argv[1], isolation_level=None); "
            "c.execute('BEGIN IMMEDIATE'); print('locked', flush=True); time.sleep(2); c.execute('ROLLBACK')")
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        other = subprocess.Popen([sys.executable, "-c", hold, str(path)], stdout=subprocess.PIPE, text=True)
        try:
            assert other.stdout is not None and other.stdout.readline().strip() == "locked"
            answer = client.post("/v1/events", json=event, headers={"Authorization": f"Bearer {plaintext}"})
        finally:
            assert other.wait(timeout=60) == 0
        assert answer.status_code == 200, answer.text
        assert answer.json()["inserted"] == 1


def test_sixteen_writers_of_one_service_take_turns_instead_of_failing_busy(
    world: Any, tmp_path: Path
) -> None:
    """Writers of one service queue for SQLite's one write lock in turn. Queued on SQLite's own lock they
    slept in growing steps while it stood free, and some waited past the busy timeout (503) while the
    store could have taken them all: here 16 concurrent writers, a 2 s busy timeout, 80 writes."""
    from concurrent.futures import ThreadPoolExecutor

    path = tmp_path / "turns.db"
    plaintext, event = _writable_store(world, path, "unused")
    deal_ids = world.history.deals["deal_id"].astype(str).tolist()[:16]
    settings = make_settings(world, database_url=f"sqlite:///{path}", write_wait_s=2.0,
                             live_score_max_age_s=0)
    headers = {"Authorization": f"Bearer {plaintext}"}
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:

        def write(n: int) -> int:
            body = {"activities": [{"deal_id": deal_ids[n % 16], "type": "call", "direction": "outbound",
                                    "occurred_at": "2026-11-30T10:00:00+00:00", "event_id": f"turn-{n}"}]}
            return client.post("/v1/events", json=body, headers=headers).status_code

        with ThreadPoolExecutor(16) as pool:
            statuses = list(pool.map(write, range(80)))
        assert statuses == [200] * 80, {s: statuses.count(s) for s in set(statuses)}


def test_a_write_waiting_past_the_write_timeout_for_the_service_s_other_writers_answers_busy(
    world: Any, database_url: str
) -> None:
    """The writers of one service take turns (one at a time on SQLite, `PG_WRITE_TURNS` on PostgreSQL).
    While every turn is held by a write that does not end, one more write waits for the write timeout,
    then answers 503 "the store is busy" and stores nothing; it does not wait without end behind a stuck
    writer. Once the turns are free the same write goes through."""
    deal_id = str(world.history.deals["deal_id"].iloc[0])
    store = Store(database_url)
    store.create_schema()
    store.import_history(world.history.subset([deal_id]))
    plaintext, _ = store.create_api_key("integration", ["*"], name="writer")
    store.close()
    event = {"activities": [{"deal_id": deal_id, "type": "email", "direction": "outbound",
                             "occurred_at": "2026-11-30T10:00:00+00:00", "event_id": "stuck-1"}]}
    headers = {"Authorization": f"Bearer {plaintext}"}
    settings = make_settings(world, database_url=database_url, write_wait_s=0.5, live_score_max_age_s=0)
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        service_store: Store = client.app.state.store  # type: ignore[attr-defined]
        turns = 1 if service_store.dialect == "sqlite" else PG_WRITE_TURNS
        holding = threading.Barrier(turns + 1)
        release = threading.Event()

        def stuck_writer() -> None:
            with service_store._write():
                holding.wait()
                release.wait(timeout=60)

        holders = [threading.Thread(target=stuck_writer, daemon=True) for _ in range(turns)]
        for t in holders:
            t.start()
        holding.wait(timeout=30)  # every turn is held
        try:
            busy = client.post("/v1/events", json=event, headers=headers)
        finally:
            release.set()
            for t in holders:
                t.join(timeout=30)
        assert busy.status_code == 503, busy.text
        assert "store is busy" in busy.json()["detail"] and busy.headers["retry-after"]
        again = client.post("/v1/events", json=event, headers=headers)
        assert again.status_code == 200, again.text
        assert again.json()["inserted"] == 1  # the refused attempt stored nothing


def test_reads_answer_while_writes_wait_for_their_turn_with_one_request_thread(
    world: Any, tmp_path: Path
) -> None:
    """Requests' blocking work runs on `request_threads` threads; writes wait for their turn at the store
    on threads of their own. So with one request thread, a write waiting behind a stuck writer does not
    hold up a read: the read answers while the write still waits, and the write goes through after."""
    path = tmp_path / "threads.db"
    plaintext, event = _writable_store(world, path, "threads-1")
    settings = make_settings(world, database_url=f"sqlite:///{path}", write_wait_s=30.0,
                             live_score_max_age_s=0, request_threads=1)
    headers = {"Authorization": f"Bearer {plaintext}"}
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        service_store: Store = client.app.state.store  # type: ignore[attr-defined]
        holding, release, write_waits = threading.Event(), threading.Event(), threading.Event()
        take_turn = service_store._writers.acquire

        def acquire(timeout: float | None) -> bool:
            if holding.is_set():
                write_waits.set()  # the request's write, behind the stuck writer
            return take_turn(timeout)

        service_store._writers.acquire = acquire  # type: ignore[method-assign]

        def stuck_writer() -> None:
            with service_store._write():
                holding.set()
                release.wait(timeout=60)

        holder = threading.Thread(target=stuck_writer, daemon=True)
        holder.start()
        assert holding.wait(timeout=30)
        statuses: list[int] = []
        writer = threading.Thread(target=lambda: statuses.append(
            client.post("/v1/events", json=event, headers=headers).status_code), daemon=True)
        writer.start()
        try:
            assert write_waits.wait(timeout=30)
            read = client.get("/v1/pipelines", headers=headers)
            still_waiting = writer.is_alive()
        finally:
            release.set()
            holder.join(timeout=30)
            writer.join(timeout=60)
        assert read.status_code == 200, read.text
        assert still_waiting  # answered before the write, not after it gave up or went through
        assert statuses == [200]
