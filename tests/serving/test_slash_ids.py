"""Deal ids and pipeline names holding '/' ("EU/North"): written, then read back by their percent-encoded
name on every route that names them (Starlette decodes %2F before routing), the key scoping unchanged."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from fastapi.testclient import TestClient

from serving.app import create_app
from serving.store import Store

DEAL, PIPELINE = "A/B", "EU/North"


def test_a_deal_and_a_pipeline_named_with_a_slash_read_back_on_every_route(
    world: Any, own_settings: Any
) -> None:
    store = Store(own_settings.database_url)
    eu_only, _ = store.create_api_key("manager", ["EU"], name="eu-only")
    north, _ = store.create_api_key("manager", [PIPELINE], name="eu-north")
    store.close()
    deal_path, pipe_path = f"/v1/deals/{quote(DEAL, safe='')}", f"/v1/pipelines/{quote(PIPELINE, safe='')}"
    assert deal_path == "/v1/deals/A%2FB" and pipe_path == "/v1/pipelines/EU%2FNorth"
    admin = world.auth("admin")
    with TestClient(create_app(own_settings), raise_server_exceptions=False) as client:
        body = {"deals": [{"deal_id": DEAL, "pipeline": PIPELINE, "owner": "Ola", "amount": 5000,
                           "created_at": "2025-06-01T00:00:00Z"}]}
        written = client.post("/v1/deals", json=body, headers=world.auth("integration"))
        assert written.status_code == 200, written.text
        spec = {"stages": ["Lead", "Demo"], "won": ["Won"], "lost": ["Lost"]}
        put = client.put(pipe_path, json=spec, headers=admin)
        assert put.status_code == 200, put.text
        events = {"stage_changes": [{"deal_id": DEAL, "stage": "Demo", "changed_at": "2025-06-10T00:00:00Z"}]}
        assert client.post("/v1/events", json=events, headers=admin).status_code == 200

        deal = client.get(deal_path, headers=admin)
        assert deal.status_code == 200, deal.text
        assert deal.json()["deal_id"] == DEAL and deal.json()["pipeline"] == PIPELINE
        score = client.get(f"{deal_path}/score", params={"as_of": "2025-06-20"}, headers=admin)
        assert score.status_code == 200, score.text
        assert score.json()["scores"][0]["deal_id"] == DEAL
        assert score.json()["scores"][0]["stage"] == "Demo"
        window = {"since": "2025-06-01", "until": "2025-06-20"}
        history = client.get(f"{deal_path}/score-history", params=window, headers=admin)
        assert history.status_code == 200, history.text
        got = client.get(pipe_path, headers=admin)
        assert got.status_code == 200 and got.json()["stages"] == ["Lead", "Demo"], got.text
        at_risk = client.get(f"{pipe_path}/at-risk", headers=admin)
        assert at_risk.status_code == 200, at_risk.text
        assert [d["deal_id"] for d in at_risk.json()["deals"]] == [DEAL]
        for suffix in ("stale", "health", "forecast", "changes?since=2025-06-01"):
            res = client.get(f"{pipe_path}/{suffix}", headers=admin)
            assert res.status_code == 200, (suffix, res.text)
        assert client.get(f"{pipe_path}/health", headers=admin).json()["pipeline"] == PIPELINE

        # a key for pipeline EU sees nothing of EU/North; a key for EU/North does
        eu = {"Authorization": f"Bearer {eu_only}"}
        for path in (deal_path, f"{deal_path}/score", f"{pipe_path}/at-risk", f"{pipe_path}/health"):
            assert client.get(path, headers=eu).status_code == 404, path
            assert client.get(path, headers={"Authorization": f"Bearer {north}"}).status_code == 200, path

        # plain names still route as before
        plain = world.deal_in(world.pipeline_a)
        assert client.get(f"/v1/deals/{plain}", headers=admin).json()["deal_id"] == plain
        assert client.get(f"/v1/deals/{plain}/score", headers=admin).status_code == 200
        assert client.get(f"/v1/pipelines/{world.pipeline_a}/health", headers=admin).status_code == 200
