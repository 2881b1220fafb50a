"""Live scores through the API: at-risk as of now reads the scores the service keeps, a write is visible
in them within a second, they equal on-demand scores as of the same time, and a model swap re-scores."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from conftest import make_settings, store_copy_without_live_scores
from fastapi.testclient import TestClient

from serving.app import create_app


def _wait_for(check: Callable[[], Any], timeout_s: float, step_s: float = 0.02) -> Any:
    """Poll `check` until it returns something truthy; that value, or None after the timeout."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            return value or None
        time.sleep(step_s)


@pytest.fixture
def live(world: Any, tmp_path: Path) -> Iterator[TestClient]:
    """A service of its own on a copy of the world's store, so no other app's scorer touches its scores."""
    source = Path(world.settings.database_url.removeprefix("sqlite:///"))
    # Scores other services computed, with the population of their time, are not this one's to test.
    settings = make_settings(world, database_url=store_copy_without_live_scores(source, tmp_path / "live.db"))
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        yield client


def _at_risk(client: TestClient, world: Any) -> dict[str, Any]:
    response = client.get(
        f"/v1/pipelines/{world.pipeline_a}/at-risk", params={"limit": 1000}, headers=world.auth("manager")
    )
    assert response.status_code == 200, response.text
    return dict(response.json())


def _live_at_risk(client: TestClient, world: Any, version: str | None = None) -> dict[str, Any] | None:
    """The at-risk list when it is served from live scores (of `version`, if given), else None."""
    body = _at_risk(client, world)
    if not _from_live_scores(body):
        return None
    if version is not None and any(d["model_version"] != version for d in body["deals"]):
        return None
    return body


def _from_live_scores(body: dict[str, Any]) -> bool:
    # a live score is as of when it was computed; an on-demand one is as of the request's time
    return bool(body["deals"]) and all(d["scored_at"] != body["as_of"] for d in body["deals"])


def test_at_risk_reads_live_scores_equal_to_on_demand_ones(world: Any, live: TestClient) -> None:
    body = _wait_for(lambda: _live_at_risk(live, world), timeout_s=60)
    assert body is not None, "the open deals were never scored in the background"
    on_demand = live.get(
        f"/v1/pipelines/{world.pipeline_a}/at-risk",
        params={"limit": 1000, "as_of": body["as_of"]},
        headers=world.auth("manager"),
    ).json()
    assert body["total"] == on_demand["total"] > 0
    for deal in body["deals"][:5]:
        assert deal["model_version"] == world.versions[0] and deal["score_pending"] is False
        same_time = live.get(
            f"/v1/deals/{deal['deal_id']}/score",
            params={"as_of": deal["scored_at"]},
            headers=world.auth("admin"),
        ).json()["scores"][0]
        assert deal["cold_risk"] == pytest.approx(same_time["cold_risk"], abs=1e-12)
        assert deal["close_probability"] == pytest.approx(same_time["close_probability"], abs=1e-12)
        assert [r["feature"] for r in deal["reasons"]] == [r["feature"] for r in same_time["reasons"]]
        # the timing scores and what lowers the risk are kept with the live score too
        for name in ("close_probability_90d", "slip_risk"):
            assert deal[name] == pytest.approx(same_time[name], abs=1e-12, nan_ok=True) or (
                deal[name] is None and same_time[name] is None
            )
        assert deal["likely_close_date"] == same_time["likely_close_date"]
        assert [r["feature"] for r in deal["counter_reasons"]] == [
            r["feature"] for r in same_time["counter_reasons"]
        ]
    assert any(d["close_probability_90d"] is not None for d in body["deals"])
    ranked = [d["value_at_risk"] for d in body["deals"]]
    assert ranked == sorted(ranked, reverse=True)
    # the live list ranks and splits exactly as the on-demand one as of the same time
    assert [d["deal_id"] for d in body["deals"]] == [d["deal_id"] for d in on_demand["deals"]]
    # Paging, on the clean-up list (this world's data ends long ago, so most open deals are stale by now)
    full = live.get(
        f"/v1/pipelines/{world.pipeline_a}/stale", params={"limit": 1000}, headers=world.auth("manager")
    ).json()
    assert _from_live_scores(full) and len(full["deals"]) >= 5
    paged = live.get(
        f"/v1/pipelines/{world.pipeline_a}/stale",
        params={"limit": 3, "offset": 2},
        headers=world.auth("manager"),
    ).json()
    assert [d["deal_id"] for d in paged["deals"]] == [d["deal_id"] for d in full["deals"][2:5]]
    assert [d["rank"] for d in paged["deals"]] == [3, 4, 5] and paged["total"] == full["total"]


def test_a_new_event_reaches_the_live_score_without_a_read_scoring_it(world: Any, live: TestClient) -> None:
    assert _wait_for(lambda: _live_at_risk(live, world), timeout_s=60)
    deal_id = world.deal_in(world.pipeline_a)
    written_at = datetime.now(UTC)
    event = {
        "deal_id": deal_id,
        "type": "meeting",
        "direction": "inbound",
        "occurred_at": written_at.isoformat(),
    }
    response = live.post("/v1/events", json={"activities": [event]}, headers=world.auth("integration"))
    assert response.status_code == 200 and response.json()["inserted"] == 1
    acknowledged = time.monotonic()

    def rescored() -> dict[str, Any] | None:
        body = _at_risk(live, world)
        if not _from_live_scores(body):  # an on-demand answer would be fresh by construction
            return None
        row = next((d for d in body["deals"] if d["deal_id"] == deal_id), None)
        fresh = row is not None and datetime.fromisoformat(row["scored_at"]) >= written_at
        return row if fresh and not row["score_pending"] else None

    # A bounded wait, not a timing assertion: how fast (SPEC: within 1 s) is a bench figure, and a loaded
    # CI machine must not fail this test for being slow. Without the scorer being woken by the write, the
    # hourly clock would leave the deal unscored for the whole wait.
    row = _wait_for(rescored, timeout_s=30.0)
    elapsed = time.monotonic() - acknowledged
    assert row is not None, f"not re-scored {elapsed:.2f} s after the write was acknowledged"
    reasons = {r["feature"]: r["value"] for r in row["reasons"]}
    if "days_since_last_activity" in reasons:  # the meeting just happened
        assert reasons["days_since_last_activity"] < 0.01


def test_a_model_swap_rescores_every_open_deal(world: Any, live: TestClient) -> None:
    assert _wait_for(lambda: _live_at_risk(live, world), timeout_s=60)
    try:
        world.set_champion(world.versions[1])
        assert live.post("/v1/model/reload", headers=world.auth("admin")).status_code == 200
        swapped = _wait_for(lambda: _live_at_risk(live, world, world.versions[1]), timeout_s=60)
        assert swapped is not None and swapped["model_version"] == world.versions[1]
        one = swapped["deals"][0]
        same_time = live.get(
            f"/v1/deals/{one['deal_id']}/score",
            params={"as_of": one["scored_at"]},
            headers=world.auth("admin"),
        ).json()
        assert same_time["model_version"] == world.versions[1]
        assert one["cold_risk"] == pytest.approx(same_time["scores"][0]["cold_risk"], abs=1e-12)
    finally:
        world.set_champion(world.versions[0])


def test_a_new_deal_is_waited_for_not_a_reason_to_score_the_pipeline_on_demand(
    world: Any, live: TestClient
) -> None:
    """Right after a deal is created it has no live score. The at-risk list and the forecast as of now wait
    the moment the live scorer takes to score it (it scores written deals first) and answer from the live
    scores, with the new deal counted, instead of scoring the whole pipeline on demand."""
    assert _wait_for(lambda: _live_at_risk(live, world), timeout_s=60)
    before = _at_risk(live, world)
    created = datetime.now(UTC).isoformat()
    for deal_id, read in (("NEW-AT-RISK", "at-risk"), ("NEW-FORECAST", "forecast")):
        deal = {"deal_id": deal_id, "pipeline": world.pipeline_a, "owner": "Test Owner", "amount": 5000.0,
                "created_at": created, "team": "T1"}
        response = live.post("/v1/deals", json={"deals": [deal]}, headers=world.auth("integration"))
        assert response.status_code == 200 and response.json()["inserted"] == 1, response.text
        if read == "at-risk":
            body = _at_risk(live, world)
            assert _from_live_scores(body), "ranked on demand"
            assert body["total"] == before["total"] + 1
            assert deal_id in [d["deal_id"] for d in body["deals"]]
        else:
            forecast = live.get(f"/v1/pipelines/{world.pipeline_a}/forecast", headers=world.auth("manager"))
            assert forecast.status_code == 200, forecast.text
            assert forecast.json()["source"] == "live_scores"


@pytest.mark.parametrize("read", ["at-risk", "forecast"])
def test_a_deal_scored_between_the_reads_is_read_live_not_scored_on_demand(
    world: Any, live: TestClient, monkeypatch: pytest.MonkeyPatch, read: str
) -> None:
    """The race behind a CI failure: the read finds the new deal unscored, the live scorer saves its score
    a moment later, before the route counts the unscored deals. The route must read the live scores again,
    not take the count of 0 as a reason to score the whole pipeline on demand."""
    assert _wait_for(lambda: _live_at_risk(live, world), timeout_s=60)
    store = live.app.state.store  # type: ignore[attr-defined]
    scorer = live.app.state.live_scores  # type: ignore[attr-defined]
    scorer.stop()  # it scores the new deal when this test says: between the route's reads
    name = "at_risk_rows" if read == "at-risk" else "forecast_scores"
    first_read = getattr(store, name)
    calls = []

    def read_then_let_the_scorer_finish(*args: Any, **kwargs: Any) -> Any:
        answer = first_read(*args, **kwargs)
        calls.append(answer is None)
        if answer is None and len(calls) == 1:  # the scorer saves the new deal's score right after this read
            assert scorer.score_due() == 1
        return answer

    deal = {"deal_id": f"RACE-{read}", "pipeline": world.pipeline_a, "owner": "Test Owner", "amount": 5000.0,
            "created_at": datetime.now(UTC).isoformat(), "team": "T1"}
    monkeypatch.setattr(store, name, read_then_let_the_scorer_finish)
    response = live.post("/v1/deals", json={"deals": [deal]}, headers=world.auth("integration"))
    assert response.status_code == 200 and response.json()["inserted"] == 1, response.text
    if read == "at-risk":
        body = _at_risk(live, world)
        assert _from_live_scores(body), "ranked on demand"
        assert deal["deal_id"] in [d["deal_id"] for d in body["deals"]]
    else:
        forecast = live.get(f"/v1/pipelines/{world.pipeline_a}/forecast", headers=world.auth("manager"))
        assert forecast.status_code == 200, forecast.text
        assert forecast.json()["source"] == "live_scores"
    assert calls[0] is True, "the first read found every deal scored: the race was not reproduced"


def test_a_read_waiting_for_new_deals_scores_holds_no_request_thread(
    world: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With one request thread, an at-risk read that waits for a new deal's live score (the scorer is
    held back here) must not keep other requests waiting: a pipeline list answers during the wait, and
    the waiting read then answers from the live score once the deal is scored."""
    import threading

    from serving.routes import pipelines

    source = Path(world.settings.database_url.removeprefix("sqlite:///"))
    settings = make_settings(world, request_threads=1,
                             database_url=store_copy_without_live_scores(source, tmp_path / "wait.db"))
    monkeypatch.setattr(pipelines, "LIVE_WAIT_S", 30.0)  # long enough to tell "during" from "after"
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        assert _wait_for(lambda: _live_at_risk(client, world), timeout_s=60)
        scorer = client.app.state.live_scores  # type: ignore[attr-defined]
        scorer.stop()  # the new deal stays unscored until this test scores it
        deal = {"deal_id": "WAITED-FOR", "pipeline": world.pipeline_a, "owner": "Test Owner",
                "amount": 5000.0, "created_at": datetime.now(UTC).isoformat(), "team": "T1"}
        response = client.post("/v1/deals", json={"deals": [deal]}, headers=world.auth("integration"))
        assert response.status_code == 200, response.text
        store = client.app.state.store  # type: ignore[attr-defined]
        counted = store.unscored_open_deals
        waiting = threading.Event()

        def count(pipeline: str | None) -> int:
            n = counted(pipeline)
            if n:
                waiting.set()  # the read found the deal unscored: it is waiting now
            return n

        monkeypatch.setattr(store, "unscored_open_deals", count)
        answers: list[dict[str, Any]] = []
        reader = threading.Thread(target=lambda: answers.append(_at_risk(client, world)))
        reader.start()
        try:
            assert waiting.wait(30)
            listed = client.get("/v1/pipelines", headers=world.auth("manager"))
            assert listed.status_code == 200
            assert reader.is_alive(), "the at-risk read stopped waiting before the deal was scored"
        finally:
            scorer.score_due()  # the scorer scores the new deal: the waiting read ends
            reader.join(60)
        assert answers and _from_live_scores(answers[0]), "ranked on demand"
        assert "WAITED-FOR" in [d["deal_id"] for d in answers[0]["deals"]]
