"""End to end through the real command line: simulate → import → train → keys → serve → score → retrain →
promote → reload → rollback, and `dealrisk demo --no-serve`.

Every step runs `python -m dealrisk` in a subprocess, as a user would, with DEALRISK_HOME and
MLFLOW_TRACKING_URI pointing into the test's temporary folder (the autouse fixture in tests/conftest.py
sets them; subprocesses inherit them).
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

pytestmark = pytest.mark.slow

# Small enough to train in seconds on 2 cores, big enough for every pipeline to have closed deals.
N_DEALS = 600
CLI_TIMEOUT_S = 300
READY_TIMEOUT_S = 120


def _env() -> dict[str, str]:
    env = dict(os.environ)
    # Rich wraps at the terminal width; a wide fixed width keeps keys and URLs on one line.
    env["COLUMNS"] = "200"
    env.setdefault("DEALRISK_LOG_LEVEL", "WARNING")
    return env


def dealrisk(*args: str) -> subprocess.CompletedProcess[str]:
    """Run `dealrisk ARGS` in a subprocess; fail the test with its output when it exits non-zero."""
    proc = subprocess.run(
        [sys.executable, "-m", "dealrisk", *args],
        capture_output=True, text=True, env=_env(), timeout=CLI_TIMEOUT_S, check=False,
    )
    assert proc.returncode == 0, (
        f"dealrisk {' '.join(args)} exited {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    )
    return proc


def dealrisk_json(*args: str) -> Any:
    """Run a command with --json and parse its stdout."""
    return json.loads(dealrisk(*args, "--json").stdout)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_ready(base: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    last = ""
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"dealrisk serve exited {proc.returncode} before ready:\n{log.read_text()}")
        try:
            r = httpx.get(f"{base}/readyz", timeout=5)
            if r.status_code == 200:
                return
            last = r.text
        except httpx.TransportError as exc:
            last = repr(exc)
        time.sleep(0.3)
    pytest.fail(f"service not ready after {READY_TIMEOUT_S}s: {last}\n{log.read_text()}")


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Any]:
    """Start `dealrisk serve` on a free port; yields a function that starts it and returns the base URL."""
    procs: list[subprocess.Popen[bytes]] = []

    def start() -> str:
        port = _free_port()
        log = tmp_path / f"serve-{port}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "dealrisk", "serve", "--port", str(port), "--log-level", "warning"],
                stdout=out, stderr=subprocess.STDOUT, env=_env(),
            )
        procs.append(proc)
        base = f"http://127.0.0.1:{port}"
        _wait_ready(base, proc, log)
        return base

    try:
        yield start
    finally:
        for proc in procs:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=15)


def _stored_score(client: httpx.Client, deal_id: str) -> dict[str, Any]:
    r = client.get(f"/v1/deals/{deal_id}/score")
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def test_train_promote_serve_score_reload_rollback(tmp_path: Path, serve: Any) -> None:
    data = tmp_path / "data"
    summary = dealrisk_json("simulate", "--out", str(data), "--deals", str(N_DEALS), "--seed", "3")
    # the simulator reports what it wrote, and the import stores exactly that
    totals = summary["totals"]
    assert totals["deals"] == N_DEALS == totals["won"] + totals["lost"] + totals["open"]
    assert min(totals["won"], totals["lost"], totals["open"]) > 0
    imported = dealrisk_json("import", str(data))
    assert imported["tables"]["deals"]["inserted"] == N_DEALS
    for table in ("stage_changes", "activities", "field_changes"):
        assert imported["tables"][table]["inserted"] == summary["events"][table] > 0, table

    first = dealrisk_json("train")
    assert str(first["model_version"]) == "1"
    assert first["champion"] is True  # the first registered version becomes @champion

    key = dealrisk_json("keys", "create", "--role", "admin", "--pipelines", "*")
    assert key["role"] == "admin" and key["key"]

    base = serve()
    with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {key['key']}"}, timeout=60) as client:
        # A request without a key is refused: the service is not open to anyone on the port.
        assert httpx.get(f"{base}/v1/pipelines", timeout=10).status_code == 401

        r = client.get("/v1/pipelines")
        assert r.status_code == 200, r.text
        pipelines = [p["name"] for p in r.json()["pipelines"]]
        assert len(pipelines) >= 2, pipelines

        # A stored deal that is still open at the end of the data: push an event for it.
        at_risk = client.get(f"/v1/pipelines/{pipelines[0]}/at-risk", params={"limit": 5})
        assert at_risk.status_code == 200, at_risk.text
        listing = at_risk.json()
        assert listing["model_version"] == "1"
        assert listing["deals"], "an open pipeline with no open deals"
        deal = listing["deals"][0]
        deal_id = deal["deal_id"]
        at_stake = [d["value_at_risk"] for d in listing["deals"]]  # the going-cold order
        assert at_stake == sorted(at_stake, reverse=True)

        before = _stored_score(client, deal_id)
        assert before["model_version"] == "1"
        [score] = before["scores"]
        assert score["deal_id"] == deal_id
        assert 0.0 <= score["cold_risk"] <= 1.0 and 0.0 <= score["close_probability"] <= 1.0
        assert score["reasons"] and all(r["text"] for r in score["reasons"])

        # An inbound meeting just now: the deal is no longer silent.
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 60))
        event = {"activities": [{"deal_id": deal_id, "type": "meeting", "direction": "inbound",
                                 "occurred_at": now, "event_id": "e2e-meeting-1"}]}
        r = client.post("/v1/events", json=event)
        assert r.status_code == 200, r.text
        assert r.json()["inserted"] == 1
        # Idempotent: the same event again stores nothing new.
        r = client.post("/v1/events", json=event)
        assert r.status_code == 200 and r.json()["inserted"] == 0, r.text
        stored = client.get(f"/v1/deals/{deal_id}").json()
        assert any(a.get("event_id") == "e2e-meeting-1" for a in stored["activities"])

        after = _stored_score(client, deal_id)
        assert after["model_version"] == "1"
        assert after["scores"][0]["cold_risk"] <= score["cold_risk"] + 1e-9, (
            "a fresh inbound meeting should not make the deal look colder"
        )

        # The manager's CSV export names the model too.
        r = client.get(f"/v1/pipelines/{pipelines[0]}/at-risk", params={"limit": 5},
                       headers={"Accept": "text/csv"})
        assert r.status_code == 200, r.text
        assert r.headers["content-type"].startswith("text/csv")
        rows = list(csv.DictReader(io.StringIO(r.text)))
        assert 1 <= len(rows) <= 5
        assert {row["model_version"] for row in rows} == {"1"}
        assert all(row["deal_id"] and row["reasons"] for row in rows)

        # Retrain: version 2 waits as a candidate; the service keeps serving version 1.
        second = dealrisk_json("train", "--seed", "1")
        assert str(second["model_version"]) == "2"
        assert _stored_score(client, deal_id)["model_version"] == "1"

        promoted = dealrisk_json("promote", "2", "--force")
        assert str(promoted["champion"]) == "2"
        r = client.post("/v1/model/reload")
        assert r.status_code == 200, r.text
        assert r.json()["model_version"] == "2"
        assert _stored_score(client, deal_id)["model_version"] == "2"
        assert client.get("/v1/model").json()["model_version"] == "2"

        # Rollback: promote the older version again and reload.
        rolled = dealrisk_json("promote", "1", "--force")
        assert str(rolled["champion"]) == "1" and str(rolled["previous"]) == "2"
        r = client.post("/v1/model/reload")
        assert r.status_code == 200, r.text
        assert r.json()["model_version"] == "1"
        rescored = _stored_score(client, deal_id)
        assert rescored["model_version"] == "1"
        # Same model, same stored history, same time: the rolled-back scores are version 1's scores.
        assert rescored["scores"][0]["cold_risk"] == pytest.approx(after["scores"][0]["cold_risk"], abs=1e-6)


KEY_PATTERN = re.compile(r"admin key:\s+(\S+)")


def test_demo_without_serving_prints_a_working_key() -> None:
    from models.loading import CHAMPION_ALIAS, REGISTERED_MODEL
    from serving.settings import get_settings
    from serving.store import Store

    out = dealrisk("demo", "--no-serve", "--deals", "400").stdout
    match = KEY_PATTERN.search(out)
    assert match, out
    plaintext = match.group(1)
    assert f"Bearer {plaintext}" in out  # the printed curl carries the same key

    settings = get_settings()
    store = Store(settings.database_url)
    try:
        key = store.verify_api_key(plaintext)
        assert key is not None and key.role == "admin" and key.can_see("anything")
        assert len(store.list_pipelines()) >= 2
    finally:
        store.close()

    from mlflow import MlflowClient

    champion = MlflowClient(tracking_uri=settings.tracking_uri).get_model_version_by_alias(
        REGISTERED_MODEL, CHAMPION_ALIAS
    )
    assert str(champion.version) == "1"
