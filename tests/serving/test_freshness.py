"""Scores follow writes: after POST /v1/events, the next score of a stored deal reflects the new events.

Each test runs its own app on a copy of the fixture store, so the writes stay out of the shared world.
"""

from __future__ import annotations

import time
from typing import Any

import pandas as pd
from fastapi.testclient import TestClient

from models.scoring import open_deal_points
from serving.app import create_app


def _score(client: TestClient, world: Any, deal_id: str, as_of: pd.Timestamp) -> dict[str, Any]:
    response = client.get(f"/v1/deals/{deal_id}/score", params={"as_of": as_of.isoformat()},
                          headers=world.auth("admin"))
    assert response.status_code == 200, response.text
    return dict(response.json()["scores"][0])


def _at_risk(client: TestClient, world: Any, pipeline: str, as_of: pd.Timestamp) -> dict[str, dict[str, Any]]:
    response = client.get(f"/v1/pipelines/{pipeline}/at-risk",
                          params={"as_of": as_of.isoformat(), "limit": 500}, headers=world.auth("admin"))
    assert response.status_code == 200, response.text
    return {d["deal_id"]: d for d in response.json()["deals"]}


def test_an_activity_today_lowers_the_cold_risk_of_a_silent_deal(world: Any, own_client: TestClient) -> None:
    """A deal silent for 60 days gets a call today: its score, stored and in the at-risk list, changes."""
    as_of = world.history.end_time + pd.Timedelta(days=60)
    deal_id = world.deal_in(world.pipeline_a)
    before = _score(own_client, world, deal_id, as_of)
    listed_before = _at_risk(own_client, world, world.pipeline_a, as_of)[deal_id]
    assert listed_before["cold_risk"] == before["cold_risk"]

    call = {"deal_id": deal_id, "type": "call", "direction": "inbound",
            "occurred_at": (as_of - pd.Timedelta(hours=2)).isoformat(), "event_id": "fresh-call-1"}
    written = own_client.post("/v1/events", json={"activities": [call]}, headers=world.auth("integration"))
    assert written.status_code == 200 and written.json()["inserted"] == 1, written.text

    after = _score(own_client, world, deal_id, as_of)
    listed_after = _at_risk(own_client, world, world.pipeline_a, as_of)[deal_id]
    assert after["cold_risk"] < before["cold_risk"]
    assert listed_after["cold_risk"] == after["cold_risk"]


def test_closing_an_owners_deals_moves_the_score_of_the_owners_other_deal(
    world: Any, own_settings: Any
) -> None:
    """Wins posted for an owner change the population (owner win rate, open load) that scores every deal.

    Once the background refresh has caught up with the writes (a bounded wait: the population is
    refitted on a clock, never on a read), the score served equals the score of a service started
    afresh on the same store, which computes the population from scratch: a cache that kept the old
    population fails this.
    """
    settings = own_settings.model_copy(update={"population_refresh_s": 0.2})
    with TestClient(create_app(settings), raise_server_exceptions=False) as own_client:
        _close_an_owners_deals(world, own_settings, own_client)


def _close_an_owners_deals(world: Any, own_settings: Any, own_client: TestClient) -> None:
    as_of = world.history.end_time + pd.Timedelta(days=1)
    open_ids = set(open_deal_points(world.history, world.history.end_time)["deal_id"])
    deals = world.history.deals
    mine = deals.loc[deals["deal_id"].isin(open_ids)]
    owner = str(mine["owner"].value_counts().index[0])
    watched_row = mine.loc[mine["owner"] == owner].sort_values("deal_id").iloc[0]
    watched, pipeline = str(watched_row["deal_id"]), str(watched_row["pipeline"])
    before = _score(own_client, world, watched, as_of)

    # Six deals of the same owner, created and won within the last ten days.
    created = as_of - pd.Timedelta(days=10)
    new_ids = [f"FRESH-WIN-{i}" for i in range(6)]
    new_deals = [{"deal_id": d, "pipeline": pipeline, "owner": owner, "amount": 5000.0,
                  "created_at": created.isoformat()} for d in new_ids]
    written = own_client.post("/v1/deals", json={"deals": new_deals}, headers=world.auth("admin"))
    assert written.status_code == 200 and written.json()["inserted"] == 6, written.text
    won_stage = world.history.pipelines[pipeline].won[0]
    moves = [{"deal_id": d, "stage": won_stage, "changed_at": (as_of - pd.Timedelta(hours=1)).isoformat(),
              "event_id": f"fresh-win-{d}"} for d in new_ids]
    written = own_client.post("/v1/events", json={"stage_changes": moves}, headers=world.auth("admin"))
    assert written.status_code == 200 and written.json()["inserted"] == 6, written.text

    population = own_client.app.state.population  # type: ignore[attr-defined]
    deadline = time.monotonic() + 120
    while population.due() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not population.due(), "the population never caught up with the writes"
    after = _score(own_client, world, watched, as_of)
    listed = _at_risk(own_client, world, pipeline, as_of)
    assert not set(new_ids) & set(listed)  # the won deals left the open list
    with TestClient(create_app(own_settings), raise_server_exceptions=False) as restarted:
        fresh = _score(restarted, world, watched, as_of)
    assert after == fresh
    assert listed[watched]["cold_risk"] == fresh["cold_risk"]
    moved = (after["cold_risk"], after["close_probability"])
    assert moved != (before["cold_risk"], before["close_probability"])
