"""Load shedding, a relocated DEALRISK_HOME, and faults of the stores the service depends on."""

from __future__ import annotations

import shutil
import threading
from pathlib import Path
from typing import Any

import pytest
from fastapi import Request
from fastapi.testclient import TestClient

from serving.app import create_app
from serving.deps import get_store
from serving.settings import Settings, read_settings
from tests.serving.conftest import World, make_settings


def test_over_the_concurrency_limit_the_service_sheds_with_503_and_retry_after(
    world: World, own_settings: Settings
) -> None:
    entered, release = threading.Event(), threading.Event()
    app = create_app(own_settings.model_copy(update={"max_concurrent_requests": 2, "retry_after_s": 3}))

    def slow_store(request: Request) -> Any:
        # Holds its request in flight until the test lets go: saturation without timing.
        entered.set()
        release.wait(timeout=60)
        return request.app.state.store

    with TestClient(app, raise_server_exceptions=False) as client:
        app.dependency_overrides[get_store] = slow_store
        results: list[int] = []

        def hold() -> None:
            results.append(client.get("/v1/pipelines", headers=world.auth("admin")).status_code)

        holders = [threading.Thread(target=hold) for _ in range(2)]
        for thread in holders:
            entered.clear()
            thread.start()
            assert entered.wait(timeout=60), results
        shed = client.get("/v1/pipelines", headers=world.auth("admin"))
        assert shed.status_code == 503
        assert shed.headers["retry-after"] == "3"
        assert "limit of 2 concurrent requests" in shed.json()["detail"]
        assert client.get("/healthz").status_code == 200  # probes are never shed
        metrics = client.get("/metrics", headers=world.auth("admin")).text
        assert "dealrisk_http_requests_shed_total 1.0" in metrics
        release.set()
        for thread in holders:
            thread.join(timeout=60)
        app.dependency_overrides.clear()
        assert results == [200, 200]
        assert client.get("/v1/pipelines", headers=world.auth("admin")).status_code == 200


def test_a_relocated_home_serves_its_own_artifacts(
    world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    copy = tmp_path / "restored-home"
    shutil.copytree(world.home, copy, ignore=shutil.ignore_patterns("mlruns"))
    deal_id = world.deal_in(world.pipeline_a)
    original = world.home / "mlartifacts"
    away = world.home.parent / f"{world.home.name}-artifacts-away"
    original.rename(away)  # the original location is gone: only the copy can serve
    try:
        monkeypatch.setenv("DEALRISK_HOME", str(copy))
        monkeypatch.delenv("MLFLOW_TRACKING_URI")
        monkeypatch.setenv("DEALRISK_RELOAD_INTERVAL_S", "0")
        settings = read_settings()
        assert settings.tracking_uri == f"sqlite:///{copy / 'mlflow.db'}"
        with TestClient(create_app(settings), raise_server_exceptions=False) as client:
            ready = client.get("/readyz")
            scored = client.get(f"/v1/deals/{deal_id}/score", headers=world.auth("admin"))
    finally:
        away.rename(original)
    assert ready.status_code == 200, ready.text
    assert ready.json()["model_version"] == world.versions[0]
    assert scored.status_code == 200, scored.text
    assert scored.json()["model_version"] == world.versions[0]


def test_a_copied_home_prefers_its_own_artifacts_while_the_original_exists(
    world: World, tmp_path: Path
) -> None:
    from mlflow import MlflowClient

    from models.loading import rebase_artifact_uri

    copy = tmp_path / "copy"
    shutil.copytree(world.home, copy, ignore=shutil.ignore_patterns("mlruns"))
    tracking = f"sqlite:///{copy / 'mlflow.db'}"
    recorded = MlflowClient(tracking_uri=tracking).get_model_version_download_uri(
        "deal-risk", world.versions[0]
    )
    assert recorded.startswith((world.home / "mlartifacts").as_uri())  # MLflow pins the old place
    rebased = rebase_artifact_uri(recorded, tracking)
    assert (
        rebased.startswith((copy / "mlartifacts").as_uri()) and Path(rebased.removeprefix("file://")).is_dir()
    )


def test_mlflow_store_unreachable_at_reload_keeps_serving_and_readyz_says_degraded(
    world: World, tmp_path: Path
) -> None:
    tracking = tmp_path / "mlflow.db"
    shutil.copyfile(world.settings.tracking_uri.removeprefix("sqlite:///"), tracking)
    settings = make_settings(world, tracking_uri=f"sqlite:///{tracking}")
    deal_id = world.deal_in(world.pipeline_a)
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        assert client.get("/readyz").json()["status"] == "ready"
        intact = tracking.read_bytes()
        # The tracking store stops answering: its file turns to garbage under the open connections (a
        # dead disk, a botched restore), so every query fails until the good bytes come back.
        tracking.write_bytes(b"\0" * len(intact))
        reload = client.post("/v1/model/reload", headers=world.auth("admin"))
        assert reload.status_code == 409
        assert f"still serving version {world.versions[0]}" in reload.json()["detail"]
        ready = client.get("/readyz")
        assert ready.status_code == 200
        assert ready.json()["status"] == "degraded"
        assert "last model reload failed" in ready.json()["warnings"][0]
        assert str(tmp_path) not in ready.text
        scored = client.get(f"/v1/deals/{deal_id}/score", headers=world.auth("admin"))
        assert scored.status_code == 200 and scored.json()["model_version"] == world.versions[0]
        tracking.write_bytes(intact)
        assert client.post("/v1/model/reload", headers=world.auth("admin")).status_code == 200
        assert client.get("/readyz").json()["status"] == "ready"
