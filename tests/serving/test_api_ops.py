"""Operations endpoints: liveness, readiness, metrics, the served model and who may reload it."""

from __future__ import annotations

import gc
import json
import logging
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from serving.app import create_app


def test_liveness_and_readiness(world: Any, client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["model_version"] == world.versions[0] and ready.json()["reasons"] == []


def test_monitors_sending_head_get_200_without_a_body(client: TestClient) -> None:
    # monitoring tools probe with HEAD; it was 405 on both
    for path in ("/healthz", "/"):
        response = client.head(path)
        assert response.status_code == 200, (path, response.status_code)
        assert response.content == b"", path


def test_model_info_names_version_metrics_and_horizon(world: Any, client: TestClient) -> None:
    response = client.get("/v1/model", headers=world.auth("manager"))
    assert response.status_code == 200, response.text
    info = response.json()
    assert info["model_version"] == world.versions[0]
    assert info["horizon_days"] == 14
    assert info["trained_at"]
    assert {"cold", "close"} <= set(info["metrics"])
    # The model card: the served model's test metrics beside both baselines, and its calibration curve.
    assert set(info["served"]) == {"cold", "close"}
    for head in ("cold", "close"):
        by_model = info["metrics_by_model"][head]
        assert info["served"][head] in by_model
        assert {"lightgbm", "stage_prior", "logistic"} <= set(by_model)
        assert 0.0 <= by_model["stage_prior"]["brier"] <= 1.0
        curve = info["calibration"][head]
        assert curve and sum(b["count"] for b in curve) == pytest.approx(by_model["lightgbm"]["n"])
        assert all(0.0 <= b["predicted"] <= 1.0 and 0.0 <= b["observed"] <= 1.0 for b in curve)
    assert client.get("/v1/model", headers=world.auth("integration")).status_code == 403
    assert client.get("/v1/model").status_code == 401


def test_reload_is_admin_only_and_keeps_serving(world: Any, client: TestClient) -> None:
    assert client.post("/v1/model/reload", headers=world.auth("manager")).status_code == 403
    assert client.post("/v1/model/reload", headers=world.auth("integration")).status_code == 403
    response = client.post("/v1/model/reload", headers=world.auth("admin"))
    assert response.status_code == 200, response.text
    assert response.json()["model_version"] == world.versions[0]


def test_metrics_count_requests_scores_and_model_version(world: Any, client: TestClient) -> None:
    deal_id = world.deal_in(world.pipeline_a)
    client.get(f"/v1/deals/{deal_id}/score", headers=world.auth("admin"))
    client.get("/v1/deals/NO-SUCH/score", headers=world.auth("admin"))
    text = client.get("/metrics", headers=world.auth("manager")).text
    assert f'dealrisk_model_info{{version="{world.versions[0]}"}} 1.0' in text
    assert 'route="/v1/deals/{deal_id}/score"' in text and 'status="404"' in text
    assert "dealrisk_scores_total{band=" in text
    assert "dealrisk_http_request_duration_seconds_bucket" in text


def test_each_request_logs_one_json_line(
    world: Any, client: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="serving.access"):
        client.get("/v1/model", headers=world.auth("manager"))
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "serving.access"]
    assert len(lines) == 1
    line = lines[0]
    assert line["method"] == "GET" and line["path"] == "/v1/model" and line["status"] == 200
    assert line["duration_ms"] >= 0 and line["key_id"]


def test_a_fresh_empty_store_still_serves_inline_scores(world: Any, tmp_path: Path) -> None:
    from serving.store import Store

    settings = world.settings.model_copy(update={"database_url": f"sqlite:///{tmp_path / 'empty.db'}"})
    store = Store(settings.database_url)
    store.create_schema()
    key, _ = store.create_api_key("integration", ["*"])
    store.close()
    deal = world.inline_deal(world.deal_in(world.pipeline_a))
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        assert client.get("/readyz").status_code == 200
        body = {"as_of": world.history.end_time.isoformat(), "deals": [deal]}
        response = client.post("/v1/score", json=body, headers={"Authorization": f"Bearer {key}"})
        assert response.status_code == 200, response.text
        assert len(response.json()["scores"]) == 1


def test_objects_made_at_start_up_are_left_out_of_full_collections_while_serving(own_settings: Any) -> None:
    # every full collection of the cyclic garbage collector walked the ~350,000 objects start-up makes
    # (modules, model, population) with the interpreter's lock held; frozen, a collection skips them
    gc.unfreeze()
    with TestClient(create_app(own_settings), raise_server_exceptions=False) as client:
        assert client.get("/healthz").status_code == 200
        assert gc.get_freeze_count() > 10_000
    assert gc.get_freeze_count() == 0  # handed back to the collector when the service stops


def test_openapi_lists_every_endpoint(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    for path in ("/v1/score", "/v1/deals", "/v1/events", "/v1/deals/{deal_id}", "/v1/deals/{deal_id}/score",
                 "/v1/model", "/v1/model/reload", "/healthz", "/readyz"):
        assert path in paths
