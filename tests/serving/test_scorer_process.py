"""The live scorer in a process of its own (`live_scorer = process`, what `dealrisk serve` runs), through
the API: a write reaches its live score, a model swap and a challenger reach the scorer process, a scorer
process that dies is started again, and it ends with the service, even one killed with SIGKILL."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from conftest import World, make_settings, store_copy_without_live_scores, wait_for
from fastapi.testclient import TestClient

from bench.common import free_port, start_server
from serving.app import create_app
from serving.settings import Settings

SCORER_NICE = 3  # the suite runs the child at the service's priority (conftest); here a little below


def _store_copy(world: World, tmp_path: Path) -> str:
    """A copy of the world's store without live scores (other apps' scorers made those)."""
    return store_copy_without_live_scores(world.home / "dealrisk.db", tmp_path / "scorer-process.db")


@pytest.fixture
def process_settings(world: World, tmp_path: Path) -> Settings:
    return make_settings(world, database_url=_store_copy(world, tmp_path), live_scorer="process",
                         scorer_nice=SCORER_NICE)


@pytest.fixture
def served(process_settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(process_settings), raise_server_exceptions=False) as client:
        yield client


def _scorer(client: TestClient) -> dict[str, Any]:
    body = client.get("/readyz").json()
    return dict(body["live_scorer"])


def _alive(pid: int) -> bool:
    """Whether process `pid` runs (a zombie, ended but not yet reaped by its parent, does not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


def _population_process(scorer_pid: int) -> int | None:
    """The pid of the process the scorer process fits its feature population in (None while there is none)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            cmdline = (stat.parent / "cmdline").read_bytes()
        except (FileNotFoundError, ProcessLookupError):
            continue
        pid = int(stat.parent.name)
        if int(fields[1]) == scorer_pid and b"run_population_worker" in cmdline and _alive(pid):
            return pid
    return None


def _wait_population_process(scorer_pid: int) -> int:
    wait_for(lambda: _population_process(scorer_pid) is not None, "the scorer's population process")
    pid = _population_process(scorer_pid)
    assert pid is not None
    return pid


def _at_risk(client: TestClient, world: World) -> dict[str, Any]:
    response = client.get(f"/v1/pipelines/{world.pipeline_a}/at-risk", params={"limit": 1000},
                          headers=world.auth("manager"))
    assert response.status_code == 200, response.text
    return dict(response.json())


def _live_rows(client: TestClient, world: World, version: str | None = None) -> list[dict[str, Any]] | None:
    """The at-risk rows when every one is a stored live score (of `version`, if given), else None."""
    body = _at_risk(client, world)
    rows = body["deals"]
    # a live score is as of when it was computed; an on-demand one is as of the request's time
    if not rows or any(d["scored_at"] == body["as_of"] or d["score_pending"] for d in rows):
        return None
    if version is not None and any(d["model_version"] != version for d in rows):
        return None
    return list(rows)


def test_a_write_reaches_its_live_score_made_in_the_scorer_process(world: World, served: TestClient) -> None:
    scorer = _scorer(served)
    assert scorer["mode"] == "process" and scorer["running"] and scorer["pid"] != os.getpid()
    assert served.get("/readyz").json()["status"] == "ready"
    wait_for(lambda: _live_rows(served, world) is not None, "the open deals' first live scores")
    rows = _live_rows(served, world)
    assert rows is not None
    # background work: the child (which scored them) below the service's CPU priority
    service_nice = os.getpriority(os.PRIO_PROCESS, 0)
    assert os.getpriority(os.PRIO_PROCESS, scorer["pid"]) == min(service_nice + SCORER_NICE, 19)
    # scored in the other process exactly as the service scores on demand as of the same time
    for row in rows[:3]:
        same_time = served.get(f"/v1/deals/{row['deal_id']}/score", params={"as_of": row["scored_at"]},
                               headers=world.auth("admin")).json()["scores"][0]
        assert row["model_version"] == world.versions[0]
        assert row["cold_risk"] == pytest.approx(same_time["cold_risk"], abs=1e-12)
        assert row["close_probability"] == pytest.approx(same_time["close_probability"], abs=1e-12)

    deal_id = world.deal_in(world.pipeline_a)
    written_at = datetime.now(UTC)
    event = {"deal_id": deal_id, "type": "meeting", "direction": "inbound",
             "occurred_at": written_at.isoformat()}
    response = served.post("/v1/events", json={"activities": [event]}, headers=world.auth("integration"))
    assert response.status_code == 200 and response.json()["inserted"] == 1

    def rescored() -> bool:
        row = next((d for d in _at_risk(served, world)["deals"] if d["deal_id"] == deal_id), None)
        return (row is not None and not row["score_pending"]
                and datetime.fromisoformat(row["scored_at"]) >= written_at)

    # a bound, not a timing assertion: without the write's notice reaching the scorer process, the deal
    # would wait for the scorer's hourly clock
    wait_for(rescored, "the written deal's live score as of after the write", ceiling_s=60)
    row = next(d for d in _at_risk(served, world)["deals"] if d["deal_id"] == deal_id)
    reasons = {r["feature"]: r["value"] for r in row["reasons"]}
    if "days_since_last_activity" in reasons:  # the meeting just happened
        assert reasons["days_since_last_activity"] < 0.01
    on_demand = served.get(f"/v1/deals/{deal_id}/score", headers=world.auth("admin")).json()
    assert datetime.fromisoformat(on_demand["scores"][0]["as_of"]) >= written_at


def test_a_model_swap_and_a_challenger_reach_the_scorer_process(world: World, served: TestClient) -> None:
    champion, other = world.versions
    admin = world.auth("admin")
    wait_for(lambda: _live_rows(served, world, champion) is not None, "live scores of the champion")
    try:
        world.set_champion(other)
        assert served.post("/v1/model/reload", headers=admin).json()["model_version"] == other
        wait_for(lambda: _live_rows(served, world, other) is not None,
                 f"every live score to name version {other} after the swap")
    finally:
        world.set_champion(champion)
    assert served.post("/v1/model/reload", headers=admin).json()["model_version"] == champion
    wait_for(lambda: _live_rows(served, world, champion) is not None, "live scores of the champion again")

    # a challenger named through the API is read back from the store by the scorer process
    res = served.post("/v1/model/challenger", json={"model_version": other}, headers=admin)
    assert res.status_code == 200, res.text

    def shadow_scored() -> bool:
        return int(served.get("/v1/model/challenger", headers=admin).json()["n_deals"]) > 0

    wait_for(shadow_scored, f"challenger {other}'s shadow scores")


def test_a_dead_scorer_process_is_started_again_and_stops_with_the_service(
    world: World, process_settings: Settings
) -> None:
    with TestClient(create_app(process_settings), raise_server_exceptions=False) as client:
        first = _scorer(client)["pid"]
        # the scorer's feature population is fitted in a process of its own, which ends with the scorer
        fitter = _wait_population_process(first)
        os.kill(first, signal.SIGKILL)
        wait_for(lambda: not _alive(fitter), "the population process to end with its scorer process")

        def restarted() -> bool:
            now = _scorer(client)
            return bool(now["running"]) and now["pid"] not in (None, first)

        wait_for(restarted, "a new scorer process")
        scorer = _scorer(client)
        assert scorer["restarts"] == 1 and scorer["last_exit"] == "was killed by SIGKILL"
        assert client.get("/readyz").json()["status"] == "ready"
        # the new process scores: every open deal gets its live score
        wait_for(lambda: _live_rows(client, world) is not None, "live scores from the new scorer process")
        second = scorer["pid"]
        second_fitter = _wait_population_process(second)
    assert not _alive(second), "the scorer process outlived the service's shutdown"
    wait_for(lambda: not _alive(second_fitter), "the population process to end with the service")


def test_the_scorer_process_ends_when_the_service_is_killed(world: World, process_settings: Settings,
                                                           tmp_path: Path) -> None:
    import httpx

    port = free_port()
    env = {
        "DEALRISK_HOME": str(tmp_path),
        "DEALRISK_DATABASE_URL": process_settings.database_url,
        "MLFLOW_TRACKING_URI": process_settings.tracking_uri,
        "DEALRISK_RELOAD_INTERVAL_S": "0",
        "DEALRISK_LIVE_SCORER": "process",
    }
    server = start_server(env, tmp_path, port, ready_path="/readyz")
    try:
        body = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=10).json()
        pid = body["live_scorer"]["pid"]
        assert body["live_scorer"]["running"] and _alive(pid)
        fitter = _wait_population_process(pid)
        server.send_signal(signal.SIGKILL)
        server.wait(timeout=30)
        wait_for(lambda: not _alive(pid), "the scorer process to end after its service was killed")
        wait_for(lambda: not _alive(fitter), "the population process to end after its service was killed")
    finally:
        if server.poll() is None:
            server.kill()


def test_requests_read_the_population_the_scorer_process_fits_and_the_service_never_refits(
    world: World, tmp_path: Path
) -> None:
    """With the scorer in its own process, the service fits the feature population once, at start; after
    writes, the scorer process refits it and publishes it, and the service's answers move to it: a stored
    deal scored as of a fixed time gives exactly what a fresh fit of the whole store gives."""
    from datetime import timedelta

    import pandas as pd

    from features.build import FeatureBuilder
    from features.population_stats import POPULATION_TABLES
    from models.scoring import points_at, score_points
    from serving.store import Store

    url = _store_copy(world, tmp_path)
    settings = make_settings(world, database_url=url, live_scorer="process", population_refresh_s=0.5)
    deal_id = world.deal_in(world.pipeline_a)
    now = datetime.now(UTC)
    as_of = now.isoformat()
    admin = world.auth("admin")
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:

        def score() -> dict[str, Any]:
            response = client.get(f"/v1/deals/{deal_id}/score", params={"as_of": as_of}, headers=admin)
            assert response.status_code == 200, response.text
            return dict(response.json()["scores"][0])

        # the scorer process scores once it has fitted (and published) its population
        wait_for(lambda: _live_rows(client, world) is not None, "the scorer process's first live scores")
        before = score()
        # 60 big deals created yesterday: the pipeline's typical amount, a population statistic, grows
        created = (now - timedelta(days=1)).isoformat()
        big = [{"deal_id": f"POP-{i}", "pipeline": world.pipeline_a, "owner": "Pop Owner", "amount": 5e7,
                "created_at": created} for i in range(60)]
        written = client.post("/v1/deals", json={"deals": big}, headers=world.auth("integration"))
        assert written.status_code == 200 and written.json()["inserted"] == 60, written.text

        store = Store(url)
        try:
            fresh = FeatureBuilder().fit(store.load_history(tables=POPULATION_TABLES))
            history = store.load_history(deal_ids=[deal_id])
        finally:
            store.close()
        bundle = client.app.state.model_holder.require().bundle  # type: ignore[attr-defined]
        expected = score_points(bundle, history, points_at([deal_id], pd.Timestamp(as_of)), fresh).iloc[0]
        assert (expected["cold_risk"], expected["close_probability"]) != (
            before["cold_risk"], before["close_probability"]
        ), "the write must move the deal's score, or this test shows nothing"

        def moved() -> bool:
            now_score = score()
            return (now_score["cold_risk"], now_score["close_probability"]) == (
                float(expected["cold_risk"]), float(expected["close_probability"])
            )

        wait_for(moved, "the service's answers to use the scorer process's new population", ceiling_s=120)
        # the service fitted once, at start; every later population came from the scorer process
        population = client.app.state.population  # type: ignore[attr-defined]
        assert population.published_reads >= 1 and population.fits - population.published_reads == 1


def test_the_forecast_s_new_deals_come_from_the_scorer_process_and_equal_a_fit_in_process(
    world: World, tmp_path: Path
) -> None:
    """With the scorer in its own process, the forecast's model of deals not created yet is fitted there
    with the population and published with it: after a write creating deals this month, the service's
    "new_deals" line moves to a model equal to one fitted here on the store's deal states as of the same
    time, and the service reads no deal's state for it (it used to read every deal after each refit)."""
    from datetime import timedelta

    import numpy as np
    import pandas as pd

    from models.forecast import forecast_from_scores, new_deals_from_states
    from serving.store import Store

    url = _store_copy(world, tmp_path)
    settings = make_settings(world, database_url=url, live_scorer="process", population_refresh_s=0.5)
    path, manager = f"/v1/pipelines/{world.pipeline_a}/forecast", world.auth("manager")
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        app: Any = client.app
        reads: list[str | None] = []  # the service's reads of deal states (None: every deal)
        read_states = app.state.store.deal_states

        def counted(*args: Any, **kwargs: Any) -> Any:
            reads.append(kwargs.get("pipeline"))
            return read_states(*args, **kwargs)

        app.state.store.deal_states = counted

        def forecast() -> dict[str, Any] | None:
            response = client.get(path, params={"months": 3}, headers=manager)
            assert response.status_code == 200, response.text
            body = dict(response.json())
            return body if body["source"] == "live_scores" else None

        wait_for(lambda: forecast() is not None, "the forecast from the scorer process's live scores")
        before = forecast()
        assert before is not None
        new_before = [p["new_deals"]["expected_deals_won"] for p in before["periods"]]

        created = (datetime.now(UTC) - timedelta(days=1)).isoformat()
        deals = [{"deal_id": f"NEW-{i}", "pipeline": world.pipeline_a, "owner": "New Owner", "amount": 1e4,
                  "created_at": created} for i in range(36)]
        written = client.post("/v1/deals", json={"deals": deals}, headers=world.auth("integration"))
        assert written.status_code == 200 and written.json()["inserted"] == 36, written.text

        def moved() -> dict[str, Any] | None:
            body = forecast()
            changed = body is not None and [p["new_deals"]["expected_deals_won"] for p in body["periods"]]
            return body if changed and changed != new_before else None

        wait_for(lambda: moved() is not None, "the scorer process's new-deal models after the write",
                 ceiling_s=120)
        after = moved()
        assert after is not None
        model, fitted_at = app.state.new_deals.get(world.pipeline_a)
        assert reads == []  # every new-deal model the service used came from the scorer process
        assert app.state.population.published_reads >= 1

    store = Store(url)
    try:
        states = store.deal_states(pipeline=world.pipeline_a)
        t = pd.Timestamp(after["as_of"])
        scores = store.forecast_scores(world.pipeline_a, t.to_pydatetime())
    finally:
        store.close()
    states = states.rename(columns={"outcome": "status", "current_amount": "amount"})
    expected = new_deals_from_states(states, pd.Timestamp(fitted_at))  # the same data, fitted here
    # 36 deals created yesterday within a look-back of at most 180 days: at least 0.2 a day
    assert model.rate_per_day == expected.rate_per_day >= 36 / 180
    assert np.array_equal(model.won_amounts, expected.won_amounts) and len(model.won_amounts) > 0
    assert np.array_equal(model.won_by_age, expected.won_by_age)
    here = forecast_from_scores(scores, t, expected, months=3)
    for served, fitted in zip(after["periods"], here["periods"], strict=True):
        for name in ("expected_deals_won", "expected_won_amount"):
            assert served["new_deals"][name] == fitted["new_deals"][name], (served["period"], name)
    # a deal created after now is rarely won within weeks: the later months carry the new line
    assert sum(p["new_deals"]["expected_won_amount"] for p in after["periods"]) > 0
