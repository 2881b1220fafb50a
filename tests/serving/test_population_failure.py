"""A feature population that cannot be computed: scoring answers 503 with the reason, never 500.

Scoring without the population would not be honest (peer statistics such as an owner's win rate would
come from the scored deals alone), so the scoring endpoints refuse until it can be computed, and
/readyz says why. Here a stored stage change is dated before its deal was created, so the stored history
no longer validates.
"""

from __future__ import annotations

import time
from typing import Any

import sqlalchemy as sa
from fastapi.testclient import TestClient

from serving.app import create_app


def _break_one_row(database_url: str, deal_id: str) -> tuple[int, Any]:
    engine = sa.create_engine(database_url)
    with engine.begin() as conn:
        row = conn.execute(sa.text("SELECT id, changed_at FROM stage_changes WHERE deal_id = :d ORDER BY id"),
                           {"d": deal_id}).first()
        assert row is not None
        conn.execute(sa.text("UPDATE stage_changes SET changed_at = '1990-01-01 00:00:00' WHERE id = :i"),
                     {"i": row[0]})
    engine.dispose()
    return int(row[0]), row[1]


def _restore(database_url: str, row_id: int, changed_at: Any) -> None:
    engine = sa.create_engine(database_url)
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE stage_changes SET changed_at = :t WHERE id = :i"),
                     {"t": changed_at, "i": row_id})
    engine.dispose()


def test_scoring_answers_503_with_the_reason_and_readyz_reports_it(world: Any, own_settings: Any) -> None:
    broken = str(world.history.deals["deal_id"].iloc[0])
    other = world.deal_in(world.pipeline_a)
    assert other != broken
    row_id, changed_at = _break_one_row(own_settings.database_url, broken)
    as_of = {"as_of": world.history.end_time.isoformat()}
    with TestClient(create_app(own_settings), raise_server_exceptions=False) as client:
        ready = client.get("/readyz")
        assert ready.status_code == 503
        [reason] = ready.json()["reasons"]
        assert reason.startswith("feature population unavailable: HistoryValidationError")
        assert "before the deal was created" in reason

        responses = [
            client.get(f"/v1/deals/{other}/score", params=as_of, headers=world.auth("admin")),
            client.post("/v1/score", json={**as_of, "deals": [world.inline_deal(other)]},
                        headers=world.auth("admin")),
            client.get(f"/v1/pipelines/{world.pipeline_a}/at-risk", params=as_of,
                       headers=world.auth("admin")),
        ]
        for response in responses:
            assert response.status_code == 503, response.text
            assert response.json()["detail"] == reason

        # Once the row is repaired the next request computes the population and scores again.
        _restore(own_settings.database_url, row_id, changed_at)
        healed = client.get(f"/v1/deals/{other}/score", params=as_of, headers=world.auth("admin"))
        assert healed.status_code == 200, healed.text
        assert client.get("/readyz").json()["reasons"] == []


def test_a_failed_refresh_keeps_the_previous_population(world: Any, own_settings: Any) -> None:
    broken = str(world.history.deals["deal_id"].iloc[0])
    other = world.deal_in(world.pipeline_a)
    params = {"as_of": world.history.end_time.isoformat()}
    settings = own_settings.model_copy(update={"population_refresh_s": 0.2})
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        first = client.get(f"/v1/deals/{other}/score", params=params, headers=world.auth("admin"))
        assert first.status_code == 200, first.text
        _break_one_row(own_settings.database_url, broken)
        client.app.state.population.mark_dirty()  # what a write does  # type: ignore[attr-defined]

        def failed() -> Any:  # the background refresh tried, and failed
            return client.get("/readyz").json().get("last_population_error")

        deadline = time.monotonic() + 60
        while not failed() and time.monotonic() < deadline:
            time.sleep(0.05)
        again = client.get(f"/v1/deals/{other}/score", params=params, headers=world.auth("admin"))
        assert again.status_code == 200, again.text
        assert again.json()["scores"] == first.json()["scores"]
        ready = client.get("/readyz").json()
        assert ready["reasons"] == []
        assert ready["last_population_error"].startswith("HistoryValidationError")
