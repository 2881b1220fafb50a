"""Two stage changes of one deal with the same timestamp: the stored order does not depend on arrival.

The rule (features.stages): at equal time, open stages in pipeline order, closing stages last, then
event_id, then the stage name. Each case runs on a fresh store, with the events sent one per request.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from conftest import World, make_settings
from fastapi.testclient import TestClient

from serving.app import create_app
from serving.store import Store

AT = "2025-06-05T10:00:00Z"


def _stored_after(
    world: World, root: Path, changes: list[dict[str, Any]]
) -> tuple[list[str], dict[str, Any]]:
    """Send `changes` in this order (one request each) to a fresh store; (stored stages, the deal's score)."""
    root.mkdir()
    settings = make_settings(world, database_url=f"sqlite:///{root / 'store.db'}")
    store = Store(settings.database_url)
    store.create_schema()
    store.import_history(world.history.subset([]))  # the pipelines and their stages, no deals
    key, _ = store.create_api_key("admin", ["*"], name="order")
    store.close()
    auth = {"Authorization": f"Bearer {key}"}
    deal = {"deal_id": "TIE-1", "pipeline": world.pipeline_a, "owner": "Tie Owner", "amount": 5000.0,
            "created_at": "2025-06-01T09:00:00Z"}
    with TestClient(create_app(settings)) as client:
        assert client.post("/v1/deals", json={"deals": [deal]}, headers=auth).status_code == 200
        for change in changes:
            response = client.post("/v1/events", json={"stage_changes": [change]}, headers=auth)
            assert response.status_code == 200, response.text
        stored = client.get("/v1/deals/TIE-1", headers=auth).json()
        score = client.get("/v1/deals/TIE-1/score", params={"as_of": "2025-06-10T00:00:00Z"}, headers=auth)
        assert score.status_code == 200, score.text
    return [s["stage"] for s in stored["stage_changes"]], score.json()["scores"][0]


@pytest.mark.parametrize("closing", ["lost", "open"])
def test_same_time_stage_changes_give_one_stored_stage_whatever_the_arrival_order(
    world: World, tmp_path: Path, closing: str
) -> None:
    spec = world.history.pipelines[world.pipeline_a]
    if closing == "lost":
        # An open stage and a loss at the same instant: the loss is last, so the deal is lost.
        first, last = spec.stages[1], spec.lost[0]
    else:
        # Two open stages: pipeline order decides, the later stage is where the deal is.
        first, last = spec.stages[1], spec.stages[2]
    a = {"deal_id": "TIE-1", "stage": first, "changed_at": AT, "event_id": "tie-b"}
    b = {"deal_id": "TIE-1", "stage": last, "changed_at": AT, "event_id": "tie-a"}
    stages_ab, score_ab = _stored_after(world, tmp_path / "ab", [a, b])
    stages_ba, score_ba = _stored_after(world, tmp_path / "ba", [b, a])
    assert stages_ab == stages_ba == [first, last]
    assert score_ab["stage"] == score_ba["stage"] == last
    assert score_ab["cold_risk"] == score_ba["cold_risk"]
    assert score_ab["close_probability"] == score_ba["close_probability"]
