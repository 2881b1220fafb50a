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


def test_forecast_months_are_cut_at_utc_midnight(world: Any, own_client: TestClient) -> None:
    response = own_client.get(f"/v1/pipelines/{world.pipeline_a}/forecast",
                              params={"as_of": "2025-03-15T00:00:00-05:00", "months": 2},
                              headers=world.auth("admin"))
    assert response.status_code == 200, response.text
    march, april = response.json()["periods"]
    assert (march["period"], march["start"], march["end"]) == (
        "2025-03", "2025-03-15T05:00:00+00:00", "2025-04-01T00:00:00+00:00"
    )
    assert (april["period"], april["start"]) == ("2025-04", "2025-04-01T00:00:00+00:00")


def test_a_deal_due_late_on_march_31_in_chicago_is_placed_in_april_without_timing() -> None:
    """A model without timing curves places each deal in the month of its expected close date, in UTC."""
    import pandas as pd

    from models.forecast import forecast

    due = pd.to_datetime(pd.Series([LATE_MARCH_IN_CHICAGO, "2025-03-31T12:00:00Z"]), utc=True,
                         format="ISO8601")
    scored = pd.DataFrame({"amount": [1000.0, 500.0], "expected_close_date": due,
                           "close_probability": [0.5, 0.5]})
    march, april = forecast(scored, "2025-03-15T00:00:00Z", months=2)["periods"]
    assert (march["deals"], april["deals"]) == (1, 1)
    assert april["pipeline_amount"] == 1000.0
