"""Shadow challengers through the API: admin-only routes, scores stored beside the champion's and reported
on known outcomes, never shown to managers, and kept across a restart."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pytest
import sqlalchemy as sa
from conftest import World, make_settings, wait_for
from fastapi.testclient import TestClient

import serving.challenger as challenger_module
from serving.app import create_app
from serving.challenger import Challenger, challenger_report
from serving.score_archive import ScoreArchive
from serving.settings import Settings
from serving.store import Store


@pytest.fixture
def store(own_settings: Settings) -> Iterator[Store]:
    s = Store(own_settings.database_url)
    yield s
    s.close()


def open_deal_ids(store: Store) -> list[str]:
    deals = store.table("deals")
    with store.engine.connect() as conn:
        return sorted(conn.execute(sa.select(deals.c.deal_id).where(deals.c.outcome == "open")).scalars())


def challenger_covers_open_deals(store: Store, version: str) -> Callable[[], bool]:
    """True once the challenger holds a score of every open deal, as of the champion's score time."""

    def check() -> bool:
        scores, shadow = store.table("deal_scores"), store.table("challenger_scores")
        deals = store.table("deals")
        query = (
            sa.select(sa.func.count())
            .select_from(deals.join(scores, scores.c.deal_id == deals.c.deal_id)
                         .join(shadow, shadow.c.deal_id == deals.c.deal_id))
            .where(deals.c.outcome == "open", shadow.c.model_version == version,
                   shadow.c.as_of == scores.c.as_of)
        )
        with store.engine.connect() as conn:
            n = conn.execute(query).scalar_one()
        return n == len(open_deal_ids(store))

    return check


def versions_in(value: Any, found: set[str] | None = None) -> set[str]:
    """Every value under a key naming a model version, anywhere in a JSON answer."""
    found = set() if found is None else found
    if isinstance(value, dict):
        for k, v in value.items():
            if "version" in k.lower() and isinstance(v, str | int):
                found.add(str(v))
            versions_in(v, found)
    elif isinstance(value, list):
        for v in value:
            versions_in(v, found)
    return found


def test_challenger_routes_are_for_admins_only(world: World, client: TestClient) -> None:
    for key in ("manager", "integration", "manager_a"):
        headers = world.auth(key)
        assert client.get("/v1/model/challenger", headers=headers).status_code == 403
        assert client.delete("/v1/model/challenger", headers=headers).status_code == 403
        res = client.post("/v1/model/challenger", json={"model_version": world.versions[1]}, headers=headers)
        assert res.status_code == 403, res.text
    assert client.get("/v1/model/challenger").status_code == 401


def test_unknown_or_unfit_versions_are_refused_with_a_reason(world: World, own_client: TestClient) -> None:
    admin = world.auth("admin")
    res = own_client.post("/v1/model/challenger", json={"model_version": "999"}, headers=admin)
    assert res.status_code == 404 and "no registered version '999'" in res.json()["detail"]
    res = own_client.post("/v1/model/challenger", json={"model_version": "latest"}, headers=admin)
    assert res.status_code == 422 and "model_version" in res.text
    res = own_client.post("/v1/model/challenger", json={"model_version": world.versions[0]}, headers=admin)
    assert res.status_code == 422 and "is the champion" in res.json()["detail"]
    res = own_client.post("/v1/model/challenger", json={"version": world.versions[1]}, headers=admin)
    assert res.status_code == 422
    # nothing was set by any of them
    res = own_client.get("/v1/model/challenger", headers=admin)
    assert res.status_code == 404 and "no challenger is set" in res.json()["detail"]
    assert own_client.delete("/v1/model/challenger", headers=admin).status_code == 404


def test_challenger_scores_are_stored_reported_and_never_shown_to_managers(
    world: World, own_client: TestClient, store: Store
) -> None:
    champion, challenger = world.versions
    admin, manager = world.auth("admin"), world.auth("manager")
    res = own_client.post("/v1/model/challenger", json={"model_version": challenger}, headers=admin)
    assert res.status_code == 200, res.text
    assert res.json()["model_version"] == challenger and res.json()["loaded"] is True
    wait_for(challenger_covers_open_deals(store, challenger), "the challenger to score every open deal")

    archive = ScoreArchive(store)
    shadow = archive.challenger_scores(challenger).set_index("deal_id")
    assert len(shadow) == len(open_deal_ids(store))
    report = own_client.get("/v1/model/challenger", headers=admin).json()
    assert report["challenger"]["model_version"] == challenger
    assert report["champion_version"] == champion and report["challenger_version"] == challenger
    assert report["n_paired_scores"] >= len(shadow)
    assert report["heads"]["close"]["n_settled"] == 0  # nothing has closed since: no outcome known yet

    # Managers see only the champion: every version named anywhere is the champion's, and the scores are
    # the champion's, not the challenger's (the two models give different numbers).
    deal_ids = open_deal_ids(store)
    pipelines = sorted({*world.history.pipelines})
    answers = [own_client.get(f"/v1/deals/{d}/score", headers=manager) for d in deal_ids[:5]]
    for p in pipelines:
        answers += [own_client.get(f"/v1/pipelines/{p}/{path}", headers=manager)
                    for path in ("at-risk?limit=200", "stale", "forecast", "changes?since=2020-01-01")]
    answers.append(own_client.get("/v1/model", headers=manager))
    answers.append(own_client.get("/", headers=manager))
    differing = 0
    for res in answers:
        assert res.status_code == 200, (res.url, res.text)
        if res.headers["content-type"].startswith("application/json"):
            assert versions_in(res.json()) <= {champion}, res.url
        for deal in (res.json().get("deals", []) if "at-risk" in str(res.url) else []):
            if deal["deal_id"] in shadow.index:
                differing += abs(deal["cold_risk"] - shadow.loc[deal["deal_id"], "cold_risk"]) > 1e-9
    assert differing > 0  # the check above could see a challenger score if one leaked

    # Outcomes become known: close 40 open deals, half won, half lost, after their stored scores.
    closing = deal_ids[:40]
    deals = world.history.deals
    pipe_of = dict(zip(deals["deal_id"].astype(str), deals["pipeline"], strict=True))
    now = datetime.now(UTC).isoformat()
    events = []
    for i, d in enumerate(closing):
        spec = world.history.pipelines[pipe_of[d]]
        stage = (spec.won if i % 2 == 0 else spec.lost)[0]
        events.append({"deal_id": d, "stage": stage, "changed_at": now, "event_id": f"close-{d}"})
    res = own_client.post("/v1/events", json={"stage_changes": events}, headers=world.auth("integration"))
    assert res.status_code == 200, res.text

    report = own_client.get("/v1/model/challenger", headers=admin).json()
    close, cold = report["heads"]["close"], report["heads"]["cold"]
    paired = archive.paired_history(champion, challenger)
    settled = paired[paired["deal_id"].isin(closing)]
    assert close["n_settled"] == len(settled) and close["n_deals"] == len(closing)
    assert cold["n_settled"] == len(settled)  # a deal lost in the window went cold, a won one did not
    won = settled["deal_id"].isin(closing[::2]).to_numpy(dtype=float)
    assert close["positive_rate"] == pytest.approx(won.mean())
    assert cold["positive_rate"] == pytest.approx(1 - won.mean())
    for role in ("champion", "challenger"):
        p = settled[f"{role}_close_probability"].to_numpy()
        assert close[role]["brier"]["value"] == pytest.approx(float(np.mean((p - won) ** 2)))
        auc = close[role]["roc_auc"]
        assert auc["ci_low"] <= auc["value"] <= auc["ci_high"]
        assert 0 <= cold[role]["ece"]["value"] <= 1
    assert close["difference"]["brier"]["value"] == pytest.approx(
        close["challenger"]["brier"]["value"] - close["champion"]["brier"]["value"])
    assert report["verdict"] in ("better", "worse", "no detectable difference") and report["reasons"]


def test_the_report_is_kept_until_new_pairs_arrive_and_equals_the_uncached_report(
    world: World, own_client: TestClient, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    champion, challenger = world.versions
    admin = world.auth("admin")
    res = own_client.post("/v1/model/challenger", json={"model_version": challenger}, headers=admin)
    assert res.status_code == 200, res.text
    wait_for(challenger_covers_open_deals(store, challenger), "the challenger to score every open deal")
    state = own_client.app.state  # type: ignore[attr-defined]
    state.live_scores.stop()  # from here this test runs the scorer's rounds itself: nothing lands unseen
    archive, served = ScoreArchive(store), state.model_holder.require()
    computed: list[str] = []
    compute = challenger_module._report

    def counting(*args: Any, **kwargs: Any) -> Any:
        computed.append("report")
        return compute(*args, **kwargs)

    monkeypatch.setattr(challenger_module, "_report", counting)

    def uncached(now: Any) -> dict[str, Any]:
        with monkeypatch.context() as plain:  # not counted: only the service's computations are
            plain.setattr(challenger_module, "_report", compute)
            return challenger_report(store, archive, served, challenger, now=now)

    def read() -> dict[str, Any]:
        """The API's report, checked equal to the report computed without the cache as of its `as_of`."""
        res = own_client.get("/v1/model/challenger", headers=admin)
        assert res.status_code == 200, res.text
        body = dict(res.json())
        assert body.pop("challenger")["model_version"] == challenger
        assert body == json.loads(json.dumps(uncached(body["as_of"])))
        return body

    first = read()
    assert read() == first and computed == ["report"]  # kept: the same as_of, nothing computed again
    # New shadow-scored pairs with no deal written: the scorer's clock re-scores deals with both models
    # (here every score is old enough), moving those deals' pairs of the day on.
    state.live_scores.max_age_s = 0
    assert state.live_scores.score_due() > 0
    on_the_clock = read()
    assert on_the_clock["last_score_at"] > first["last_score_at"] and computed == ["report"] * 2
    # And after a write: an activity makes the deal due, and a round scores it with both models.
    state.live_scores.max_age_s = 3600
    event = {"deal_id": open_deal_ids(store)[0], "type": "call", "occurred_at": datetime.now(UTC).isoformat()}
    res = own_client.post("/v1/events", json={"activities": [event]}, headers=world.auth("integration"))
    assert res.status_code == 200, res.text
    while state.live_scores.score_due() > 0:
        pass
    after = read()
    assert after["as_of"] > on_the_clock["as_of"] and after["last_score_at"] > on_the_clock["last_score_at"]
    assert computed == ["report"] * 3 and read() == after
    # Time alone settles labels: a year on, every cold window of these pairs is over, so the kept report
    # is not the one as of then; what is answered equals the report computed as of that time.
    kept: Challenger = state.challenger
    later = datetime.now(UTC) + timedelta(days=365)
    body = kept.report(store, served, challenger, now=later)
    assert body == uncached(later) and computed == ["report"] * 4
    assert body["heads"]["cold"]["n_settled"] > after["heads"]["cold"]["n_settled"]


def test_the_challenger_survives_a_restart_until_cleared(world: World, own_settings: Settings) -> None:
    admin = world.auth("admin")
    settings = make_settings(world, database_url=own_settings.database_url, live_score_max_age_s=0)
    with TestClient(create_app(settings), raise_server_exceptions=False) as first:
        res = first.post("/v1/model/challenger", json={"model_version": world.versions[1]}, headers=admin)
        assert res.status_code == 200, res.text
    with TestClient(create_app(settings), raise_server_exceptions=False) as second:
        res = second.get("/v1/model/challenger", headers=admin)
        assert res.status_code == 200, res.text
        assert res.json()["challenger"]["model_version"] == world.versions[1]
        assert res.json()["challenger"]["loaded"] is True
    # Promoted meanwhile (the service now serves it): the report says so instead of comparing it with itself.
    promoted = make_settings(world, database_url=own_settings.database_url, live_score_max_age_s=0,
                             model_uri=f"models:/deal-risk/{world.versions[1]}")
    with TestClient(create_app(promoted), raise_server_exceptions=False) as after_promotion:
        res = after_promotion.get("/v1/model/challenger", headers=admin)
        assert res.status_code == 200, res.text
        assert res.json()["verdict"] is None and "is the champion now" in res.json()["reasons"][0]
    with TestClient(create_app(settings), raise_server_exceptions=False) as again:
        cleared = again.delete("/v1/model/challenger", headers=admin)
        assert cleared.status_code == 200 and cleared.json()["model_version"] == world.versions[1]
        assert again.get("/v1/model/challenger", headers=admin).status_code == 404
    with TestClient(create_app(settings), raise_server_exceptions=False) as last:
        assert last.get("/v1/model/challenger", headers=admin).status_code == 404
