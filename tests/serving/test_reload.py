"""Model swaps: atomic under load, old model kept on failure, a corrupt champion at start."""

from __future__ import annotations

import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from models.loading import REGISTERED_MODEL
from serving.app import create_app
from serving.errors import ConflictError, ModelUnavailableError
from serving.model_holder import ModelHolder


def test_holder_keeps_the_old_model_when_a_load_fails() -> None:
    outcomes: list[Any] = [("bundle-1", "1"), RuntimeError("disk on fire"), ("bundle-2", "2")]

    def loader(uri: str, tracking: str) -> tuple[Any, str]:
        item = outcomes.pop(0)
        if isinstance(item, Exception):
            raise item
        return item

    holder = ModelHolder("models:/x@champion", "sqlite://", loader=loader)
    with pytest.raises(ModelUnavailableError, match="no model loaded"):
        holder.require()
    assert holder.reload().version == "1"
    snapshot = holder.require()
    with pytest.raises(ConflictError, match="still serving version 1: RuntimeError: disk on fire"):
        holder.reload_or_raise()
    assert holder.require() is snapshot and holder.last_error
    assert holder.reload_or_raise().version == "2"
    assert snapshot.version == "1"  # a reference taken earlier never changes under its holder


def test_holder_background_check_skips_the_download_when_the_alias_did_not_move() -> None:
    loads: list[str] = []

    def loader(uri: str, tracking: str) -> tuple[Any, str]:
        loads.append(uri)
        return object(), "7"

    holder = ModelHolder("models:/x@champion", "sqlite://", loader=loader, resolver=lambda u, t: "7")
    holder.reload()
    assert holder.reload(only_if_changed=True).changed is False
    assert len(loads) == 1


@pytest.fixture()
def champion_restored(world: Any) -> Iterator[None]:
    yield
    world.set_champion(world.versions[0])


def _payload(world: Any) -> dict[str, Any]:
    ids = [world.deal_in(world.pipeline_a), world.deal_in(world.pipeline_b)]
    return {"as_of": world.history.end_time.isoformat(), "deals": [world.inline_deal(d) for d in ids]}


def test_reload_under_load_never_mixes_versions(world: Any, champion_restored: None) -> None:
    v1, v2 = world.versions
    payload = _payload(world)
    admin = world.auth("admin")
    # The watcher also follows the alias (every 50 ms) while the endpoint reloads explicitly.
    settings = world.settings.model_copy(update={"reload_interval_s": 0.05})
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        expected: dict[str, Any] = {}
        for version in (v1, v2):
            world.set_champion(version)
            assert client.post("/v1/model/reload", headers=admin).json()["model_version"] == version
            body = client.post("/v1/score", json=payload, headers=admin).json()
            expected[body["model_version"]] = body["scores"]
        assert expected[v1] != expected[v2], "the two versions must score differently for this test to bite"

        failures: list[str] = []
        seen: set[str] = set()
        stop = threading.Event()

        def hammer() -> None:
            while not stop.is_set():
                response = client.post("/v1/score", json=payload, headers=admin)
                if response.status_code != 200:
                    failures.append(f"{response.status_code}: {response.text[:200]}")
                    continue
                body = response.json()
                seen.add(body["model_version"])
                if body["scores"] != expected[body["model_version"]]:
                    failures.append(f"scores do not match version {body['model_version']}")

        threads = [threading.Thread(target=hammer) for _ in range(4)]
        for thread in threads:
            thread.start()
        try:
            for i in range(8):
                version = (v1, v2)[i % 2]
                world.set_champion(version)
                reload = client.post("/v1/model/reload", headers=admin)
                if reload.status_code != 200:
                    failures.append(f"reload {reload.status_code}: {reload.text[:200]}")
        finally:
            stop.set()
            for thread in threads:
                thread.join()
        assert failures == []
        assert seen == {v1, v2}


def _register_corrupt_version(world: Any, tmp_path: Path) -> str:
    """A new registered version whose bundle fails its hash check (a tampered booster file)."""
    import mlflow.artifacts
    from mlflow import MlflowClient

    source = Path(mlflow.artifacts.download_artifacts(
        artifact_uri=f"models:/{REGISTERED_MODEL}/{world.versions[0]}", dst_path=str(tmp_path / "copy"),
        tracking_uri=world.settings.tracking_uri,
    ))
    bad = tmp_path / "corrupt"
    shutil.copytree(source, bad)
    manifest = next(bad.rglob("manifest.json"))
    victim = next(p for p in sorted(manifest.parent.iterdir()) if p.is_file() and p.name != "manifest.json")
    victim.write_bytes(victim.read_bytes() + b"\ntampered\n")
    client = MlflowClient(tracking_uri=world.settings.tracking_uri)
    version = client.create_model_version(REGISTERED_MODEL, source=str(bad))
    return str(version.version)


def test_corrupt_champion_at_start_then_reload_to_a_good_version(
    world: Any, tmp_path: Path, champion_restored: None
) -> None:
    corrupt = _register_corrupt_version(world, tmp_path)
    world.set_champion(corrupt)
    admin = world.auth("admin")
    with TestClient(create_app(world.settings), raise_server_exceptions=False) as client:
        assert client.get("/healthz").status_code == 200
        ready = client.get("/readyz")
        assert ready.status_code == 503
        assert "no model loaded" in ready.json()["reasons"][0]
        assert "SHA-256 does not match" in ready.json()["reasons"][0]
        scored = client.post("/v1/score", json=_payload(world), headers=admin)
        assert scored.status_code == 503 and scored.json()["detail"].startswith("no model loaded: ")
        failed = client.post("/v1/model/reload", headers=admin)
        assert failed.status_code == 503

        world.set_champion(world.versions[0])
        reloaded = client.post("/v1/model/reload", headers=admin)
        assert reloaded.status_code == 200 and reloaded.json()["model_version"] == world.versions[0]
        assert client.get("/readyz").status_code == 200

        # A bad promotion later keeps the good model serving and says why.
        world.set_champion(corrupt)
        conflict = client.post("/v1/model/reload", headers=admin)
        assert conflict.status_code == 409
        assert f"still serving version {world.versions[0]}" in conflict.json()["detail"]
        assert client.post("/v1/score", json=_payload(world), headers=admin).status_code == 200


def test_the_background_check_follows_the_alias(world: Any, champion_restored: None) -> None:
    import time

    v1, v2 = world.versions
    settings = world.settings.model_copy(update={"reload_interval_s": 0.05})
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        assert client.get("/readyz").json()["model_version"] == v1
        world.set_champion(v2)
        # Poll rather than sleep a fixed time: the check runs every 50 ms; 60 s is only a safety net.
        deadline = time.monotonic() + 60
        version = v1
        while version != v2 and time.monotonic() < deadline:
            time.sleep(0.05)
            version = client.get("/readyz").json()["model_version"]
        assert version == v2
        metrics = client.get("/metrics", headers=world.auth("admin")).text
        assert f'dealrisk_model_info{{version="{v2}"}} 1.0' in metrics
        assert f'version="{v1}"' not in metrics
