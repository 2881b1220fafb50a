"""PostgreSQL stops answering mid-run: store endpoints answer 503 with the reason, inline scoring goes
on, and everything recovers when the database is back.

The machine's PostgreSQL server is shared, so the outage is made by a TCP relay of the test's own in
front of it: closing the relay (and every connection through it) is, to the service, the server gone.
"""

from __future__ import annotations

import socket
import threading
import time
import uuid
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from serving.app import create_app
from serving.store import Store
from tests.conftest import POSTGRES_URL, _postgres_problem
from tests.serving.conftest import World, make_settings

pytestmark = pytest.mark.postgres


class Relay:
    """A TCP relay 127.0.0.1:port -> target that can be cut and restored on the same port."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        self.port = probe.getsockname()[1]
        probe.close()
        self._listener: socket.socket | None = None
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()

    def start(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            with self._lock:
                self._conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def cut(self) -> None:
        """The database is gone: new connections are refused, open ones are dropped."""
        if self._listener is not None:
            # shutdown wakes the thread blocked in accept(); close alone would leave it accepting
            try:
                self._listener.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self._listener.close()
            self._listener = None
        with self._lock:
            conns, self._conns = self._conns, []
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            conn.close()


@pytest.fixture
def relayed_postgres() -> Iterator[tuple[str, Relay]]:
    problem = _postgres_problem()
    if problem is not None:
        pytest.skip(problem)
    import sqlalchemy as sa

    schema = f"t_{uuid.uuid4().hex[:12]}"
    engine = sa.create_engine(POSTGRES_URL)
    with engine.begin() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    relay = Relay(("127.0.0.1", 5432))
    relay.start()
    url = POSTGRES_URL.replace("127.0.0.1:5432", f"127.0.0.1:{relay.port}")
    try:
        yield f"{url}?options=-csearch_path%3D{schema}&connect_timeout=3", relay
    finally:
        relay.cut()
        with engine.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        engine.dispose()


def test_postgres_outage_503s_store_endpoints_keeps_inline_scoring_and_recovers(
    world: World, relayed_postgres: tuple[str, Relay]
) -> None:
    url, relay = relayed_postgres
    store = Store(url)
    store.create_schema()
    store.import_history(world.history)
    admin, _ = store.create_api_key("admin", ["*"], name="outage")
    store.close()
    auth = {"Authorization": f"Bearer {admin}"}
    deal_id = world.deal_in(world.pipeline_a)
    inline = {"deals": [world.inline_deal(deal_id)]}
    with TestClient(
        create_app(make_settings(world, database_url=url)), raise_server_exceptions=False
    ) as client:
        assert client.get(f"/v1/deals/{deal_id}", headers=auth).status_code == 200
        before = client.post("/v1/score", json=inline, headers=auth)
        assert before.status_code == 200, before.text

        relay.cut()
        read = client.get(f"/v1/deals/{deal_id}", headers=auth)
        assert read.status_code == 503, read.text
        assert "store is unreachable" in read.json()["detail"] and read.headers["retry-after"]
        event = {"deal_id": deal_id, "type": "call", "occurred_at": "2026-01-01T00:00:00Z", "event_id": "o1"}
        write = client.post("/v1/events", json={"activities": [event]}, headers=auth)
        assert write.status_code == 503, write.text
        ready = client.get("/readyz")
        assert ready.status_code == 503 and any("store unreachable" in r for r in ready.json()["reasons"])
        during = client.post("/v1/score", json=inline, headers=auth)
        assert during.status_code == 200, during.text
        assert during.json()["scores"][0]["cold_risk"] == before.json()["scores"][0]["cold_risk"]

        relay.start()
        statuses = []
        for _ in range(20):  # the pool drops dead connections on first use; a few tries at most
            statuses.append(client.get(f"/v1/deals/{deal_id}", headers=auth).status_code)
            if statuses[-1] == 200:
                break
            time.sleep(0.1)
        assert statuses[-1] == 200, statuses
        written = client.post("/v1/events", json={"activities": [event]}, headers=auth)
        assert written.status_code == 200, written.text
        assert written.json()["inserted"] == 1
        assert client.get("/readyz").status_code == 200
