"""Calendar buckets are UTC: health windows and forecast months cut at UTC midnight, whatever offset
a time was sent with. 2025-03-31T23:30:00-05:00 is 2025-04-01T04:30:00Z, so it belongs to April."""

from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient

LATE_MARCH_IN_CHICAGO = "2025-03-31T23:30:00-05:00"  # 2025-04-01T04:30:00Z
MARCH = {"since": "2025-03-01T00:00:00Z", "until": "2025-03-31T23:59:59Z"}
APRIL = {"since": "2025-04-01T00:00:00Z", "until": "2025-04-30T23:59:59Z"}


def _won_deals(client: TestClient, world: Any, window: dict[str, str]) -> int:
    response = client.get(f"/v1/pipelines/{world.pipeline_a}/health", params=window,
                          headers=world.auth("admin"))
    assert response.status_code == 200, response.text
    return int(response.json()["overall"]["won_deals"])


def _deals_per_month(client: TestClient, world: Any) -> dict[str, int]:
    response = client.get(f"/v1/pipelines/{world.pipeline_a}/forecast",
                          params={"as_of": "2025-03-15T00:00:00Z", "months": 2}, headers=world.auth("admin"))
    assert response.status_code == 200, response.text
    return {p["period"]: int(p["deals"]) for p in response.json()["periods"]}


def test_a_deal_won_late_on_march_31_in_chicago_is_won_in_april(world: Any, own_client: TestClient) -> None:
    spec = world.history.pipelines[world.pipeline_a]
    march_before, april_before = (_won_deals(own_client, world, w) for w in (MARCH, APRIL))
    deal = {"deal_id": "UTC-WON", "pipeline": world.pipeline_a, "owner": "Ada Chen", "amount": 1000.0,
            "created_at": "2025-03-01T00:00:00Z"}
    posted = own_client.post("/v1/deals", json={"deals": [deal]}, headers=world.auth("admin"))
    assert posted.status_code == 200, posted.text
    events = {"stage_changes": [
        {"deal_id": "UTC-WON", "stage": spec.stages[0], "changed_at": "2025-03-01T00:00:00Z"},
        {"deal_id": "UTC-WON", "stage": spec.won[0], "changed_at": LATE_MARCH_IN_CHICAGO},
    ]}
    assert own_client.post("/v1/events", json=events, headers=world.auth("admin")).status_code == 200
    assert _won_deals(own_client, world, MARCH) == march_before
    assert _won_deals(own_client, world, APRIL) == april_before + 1


def test_a_deal_due_late_on_march_31_in_chicago_is_forecast_in_april(
    world: Any, own_client: TestClient
) -> None:
    spec = world.history.pipelines[world.pipeline_a]
    before = _deals_per_month(own_client, world)
    assert list(before) == ["2025-03", "2025-04"]
    deal = {"deal_id": "UTC-DUE", "pipeline": world.pipeline_a, "owner": "Ada Chen", "amount": 1000.0,
            "created_at": "2025-03-01T00:00:00Z", "expected_close_date": LATE_MARCH_IN_CHICAGO}
    posted = own_client.post("/v1/deals", json={"deals": [deal]}, headers=world.auth("admin"))
    assert posted.status_code == 200, posted.text
    events = {"stage_changes": [
        {"deal_id": "UTC-DUE", "stage": spec.stages[0], "changed_at": "2025-03-01T00:00:00Z"}]}
    assert own_client.post("/v1/events", json=events, headers=world.auth("admin")).status_code == 200
    after = _deals_per_month(own_client, world)
    assert after == {"2025-03": before["2025-03"], "2025-04": before["2025-04"] + 1}
