"""Health and forecast as of now are reads, and the feature population is never refitted on a request's
path (issue 8, item 6), through the HTTP API on a copy of the fixture world's store:

- a read issued right after a write answers with the population already fitted (no fit on its path, and
  it does not wait for a refit in progress); the background refresh catches up with the write;
- health reads only the deals its window can see move (no activities, not the whole pipeline) and gives
  exactly the figures of the whole history, for windows from before any deal to all of it;
- the forecast as of now reads the stored live scores (no history load) and equals the on-demand
  forecast as of the same time, to the last bit.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import sqlalchemy as sa
from conftest import make_settings
from fastapi.testclient import TestClient

import serving.routes.pipelines as pipeline_routes
from features.health import pipeline_health
from features.history import DealHistory
from serving.app import create_app
from serving.live_scores import LiveScorer
from serving.routes.pipelines import DEFAULT_STALLED_LIMIT
from serving.stage_limits import refresh_stage_limits
from serving.store import Store
from tests.conftest import Database


def _copy_store(world: Any, database: Database) -> str:
    """A store of the test's own holding exactly the world's history and its API keys: the shared world
    store gathers other test files' writes (deals created today, events after the data's end), which
    would move this file's windows and its as-of times. Returns the URL an app opens it by."""
    store = Store(database.url, schema=database.schema)
    store.create_schema()
    store.import_history(world.history)
    source = Store(world.settings.database_url)
    with source.engine.connect() as conn:
        keys = [dict(row) for row in conn.execute(sa.select(source.table("api_keys"))).mappings()]
    with store.engine.begin() as conn:
        conn.execute(store.table("api_keys").insert(), keys)
    source.close()
    store.close()
    return database.scoped_url


@pytest.fixture
def service(world: Any, tmp_path: Path) -> Iterator[Callable[..., TestClient]]:
    """An app of the test's own on a copy of the world's store; settings overridden per test."""
    url = _copy_store(world, Database(f"sqlite:///{tmp_path / 'reads.db'}"))
    clients: list[TestClient] = []

    def start(**overrides: Any) -> TestClient:
        client = TestClient(create_app(make_settings(world, database_url=url, **overrides)),
                            raise_server_exceptions=False)
        client.__enter__()
        clients.append(client)
        return client

    yield start
    for client in clients:
        client.__exit__(None, None, None)


def _wait_for(check: Callable[[], Any], timeout_s: float) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.05)


def _new_deal(world: Any, deal_id: str) -> dict[str, Any]:
    return {"deal_id": deal_id, "pipeline": world.pipeline_a, "owner": "new-owner", "amount": 4321.0,
            "created_at": pd.Timestamp.now(tz="UTC").isoformat()}


def _population_has(client: TestClient, created_at: str) -> bool:
    """Whether the population served now has seen a deal created at `created_at` (its amount statistic)."""
    builder = client.app.state.population.get()  # type: ignore[attr-defined]
    at = pd.Timestamp(created_at).as_unit("ns").value
    return bool((builder.population_stats_.pipeline_amount["at"] == at).any())


def test_a_read_right_after_a_write_does_not_refit_the_population(
    world: Any, service: Callable[..., TestClient]
) -> None:
    client = service(population_refresh_s=3600.0)  # the clock will not tick during the test
    population = client.app.state.population  # type: ignore[attr-defined]
    fits = population.fits
    deal = _new_deal(world, "READ-AFTER-WRITE-1")
    written = client.post("/v1/deals", json={"deals": [deal]}, headers=world.auth("admin"))
    assert written.status_code == 200 and written.json()["inserted"] == 1, written.text
    other = world.deal_in(world.pipeline_a)
    read = client.get(f"/v1/deals/{other}/score", params={"as_of": world.history.end_time.isoformat()},
                      headers=world.auth("admin"))
    assert read.status_code == 200, read.text
    for path in ("at-risk", "health", "forecast"):
        assert client.get(f"/v1/pipelines/{world.pipeline_a}/{path}",
                          headers=world.auth("manager")).status_code == 200
    assert population.fits == fits, "a read refitted the population"
    assert not _population_has(client, deal["created_at"])
    assert population.due() and population.refresh()  # what the background thread does on its clock
    assert _population_has(client, deal["created_at"])


def test_reads_do_not_wait_for_a_refit_and_the_population_catches_up(
    world: Any, service: Callable[..., TestClient]
) -> None:
    client = service(population_refresh_s=0.2)
    population = client.app.state.population  # type: ignore[attr-defined]
    refitting, release = threading.Event(), threading.Event()
    load = population._load

    def held_load() -> Any:  # the next refit blocks until the test lets it go
        refitting.set()
        assert release.wait(timeout=120)
        return load()

    population._load = held_load
    deal = _new_deal(world, "READ-AFTER-WRITE-2")
    written = client.post("/v1/deals", json={"deals": [deal]}, headers=world.auth("admin"))
    assert written.status_code == 200, written.text
    assert refitting.wait(timeout=60), "the background refresh never started after the write"

    answers: list[int] = []
    other = world.deal_in(world.pipeline_a)

    def read() -> None:
        answers.append(client.get(f"/v1/deals/{other}/score",
                                  params={"as_of": world.history.end_time.isoformat()},
                                  headers=world.auth("admin")).status_code)

    reader = threading.Thread(target=read)
    reader.start()
    reader.join(timeout=60)
    try:
        assert not reader.is_alive() and answers == [200], "a read waited for the refit in progress"
    finally:
        release.set()
    assert _wait_for(lambda: _population_has(client, deal["created_at"]), timeout_s=120), (
        "the population never caught up with the write"
    )


# the service's background loops (`serving.background.BackgroundLoop` names its thread after the loop)
BACKGROUND_THREADS = {"population-refresh", "live-scores", "stage-limits", "model-alias", "monitor-state"}


def _full_health(world: Any, history: DealHistory, since: pd.Timestamp, until: pd.Timestamp,
                 by: str | None) -> dict[str, Any]:
    """Health of pipeline A from its whole `history`, as the route answered before it read the window
    (listing as many stalled deals as the route does by default)."""
    return {"pipeline": world.pipeline_a,
            **pipeline_health(history, since, until, pipeline=world.pipeline_a, by=by,  # type: ignore[arg-type]
                              stalled_limit=DEFAULT_STALLED_LIMIT)}


def _post(client: TestClient, world: Any, path: str, body: dict[str, Any]) -> None:
    answer = client.post(path, json=body, headers=world.auth("admin"))
    assert answer.status_code == 200, answer.text


def _write_awkward_deals(client: TestClient, world: Any, end: pd.Timestamp) -> None:
    """Deals of pipeline A (a given spec: configured limits on some stages, learned on the others) that
    the whole history's health handles and the stored state must too, all dated by the data's end: a deal
    won then reopened, one lost, reopened and won in the last month, backward moves with two changes at
    the same instant, a zero amount with no stage, a changed amount and owner in a new team, and a deal
    closed long ago whose team and owner no other deal has (listed with empty figures)."""
    spec = client.get(f"/v1/pipelines/{world.pipeline_a}", headers=world.auth("admin")).json()
    stages, won, lost = spec["stages"], spec["won"][0], spec["lost"][0]

    def at(days: float) -> str:
        return (end - pd.Timedelta(days=days)).isoformat()

    def deal(deal_id: str, created: float, amount: float, **extra: Any) -> dict[str, Any]:
        return {"deal_id": deal_id, "pipeline": world.pipeline_a, "owner": "awkward-owner", "amount": amount,
                "created_at": at(created), **extra}

    def move(deal_id: str, stage: str, days: float, event_id: str | None = None) -> dict[str, Any]:
        return {"deal_id": deal_id, "stage": stage, "changed_at": at(days),
                **({"event_id": event_id} if event_id else {})}

    _post(client, world, "/v1/deals", {"deals": [
        deal("AWK-REOPENED", 80, 12000.0, team="Team-Awk"),
        deal("AWK-BACK-AND-WON", 70, 33000.5),
        deal("AWK-BACKWARD", 60, 7000.25, team="Team-Awk"),
        deal("AWK-ZERO", 50, 0.0),
        deal("AWK-CHANGED", 45, 9000.0, team="Team-New"),
        deal("AWK-IDLE", 400, 5000.0, team="Team-Idle", owner="idle-owner"),
    ]})
    _post(client, world, "/v1/events", {
        "stage_changes": [
            move("AWK-REOPENED", stages[0], 79), move("AWK-REOPENED", stages[1], 60),
            move("AWK-REOPENED", won, 40), move("AWK-REOPENED", stages[1], 20),  # won, then reopened
            move("AWK-BACK-AND-WON", stages[1], 69), move("AWK-BACK-AND-WON", lost, 50),
            move("AWK-BACK-AND-WON", stages[1], 35), move("AWK-BACK-AND-WON", won, 12),
            move("AWK-BACKWARD", stages[0], 59), move("AWK-BACKWARD", stages[2], 25),
            move("AWK-BACKWARD", stages[1], 15),  # backward
            move("AWK-BACKWARD", stages[3], 8, "b"), move("AWK-BACKWARD", stages[2], 8, "a"),  # same instant
            move("AWK-CHANGED", stages[0], 44),
            move("AWK-IDLE", stages[0], 399), move("AWK-IDLE", lost, 380),
        ],
        "field_changes": [
            {"deal_id": "AWK-CHANGED", "field": "amount", "value": "2500.75", "changed_at": at(3)},
            {"deal_id": "AWK-CHANGED", "field": "owner", "value": "moved-owner", "changed_at": at(2)},
        ],
    })


def test_health_from_the_stored_state_equals_the_whole_history(
    world: Any, database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Health as of the data's end (or after it) reads the deals' state columns, the window's stage changes
    and the stored limits, never a deal's history, and equals the whole history's figures exactly, on
    SQLite and PostgreSQL, for every grouping; other windows, and stalled limits not learned as of
    `until`, take the window's deals' histories, with the same figures."""
    url = _copy_store(world, database)
    # no background refresh: this test decides when the learned limits are computed
    app = create_app(make_settings(world, database_url=url, live_score_max_age_s=0))
    with TestClient(app, raise_server_exceptions=False) as client:
        store: Store = client.app.state.store  # type: ignore[attr-defined]
        start, end = world.history.deals["created_at"].min(), world.history.end_time
        _write_awkward_deals(client, world, end)
        day = pd.Timedelta(days=1)
        windows = [
            (start - 400 * day, start - 300 * day),  # before any deal
            (start - 400 * day, end),  # since far in the past: everything
            (end - 30 * day, end),  # the last month of the data
            (start + (end - start) / 2 - 45 * day, start + (end - start) / 2),  # a past window
            (end - 60 * day, end + 90 * day),  # until after the data
        ]
        ends_after_the_data = [until >= end for _, until in windows]
        paths: list[str] = []
        read_history, from_state = Store._read_history, Store.health_state
        loaded: list[tuple[int, int]] = []

        def spy_history(self: Store, *args: Any, **kwargs: Any) -> Any:
            history = read_history(self, *args, **kwargs)
            # what the health request read, not the service's background loops (their own threads)
            if threading.current_thread().name not in BACKGROUND_THREADS:
                loaded.append((len(history.deals), len(history.activities)))
            return history

        def spy_state(self: Store, *args: Any, **kwargs: Any) -> Any:
            found = from_state(self, *args, **kwargs)
            paths.append("history" if found is None else "state")
            return found

        def check_every_window() -> list[str]:
            paths.clear()
            loaded.clear()
            full = store.load_history(pipelines=[world.pipeline_a])  # no writes during a check: read once
            for since, until in windows:
                for by in (None, "team", "owner"):
                    expected = _full_health(world, full, since, until, by)
                    monkeypatch.setattr(Store, "_read_history", spy_history)
                    monkeypatch.setattr(Store, "health_state", spy_state)
                    params = {"since": since.isoformat(), "until": until.isoformat(),
                              **({"by": by} if by else {})}
                    got = client.get(f"/v1/pipelines/{world.pipeline_a}/health", params=params,
                                     headers=world.auth("manager"))
                    monkeypatch.undo()
                    assert got.status_code == 200, got.text
                    assert got.json() == expected, (since, until, by)
            return list(paths)

        # never learned: the windows ending after the data read the stored state and learn the limits in
        # their read (no history); the others read their deals' histories (no activities, not the whole
        # pipeline)
        fast = [p for after in ends_after_the_data for p in (["state"] if after else ["history"]) * 3]
        assert check_every_window() == fast
        assert len(loaded) == 3 * ends_after_the_data.count(False), "the stored-state path read history"
        in_pipeline = int((world.history.deals["pipeline"] == world.pipeline_a).sum()) + 6
        assert loaded and all(activities == 0 for _, activities in loaded)
        past = loaded[3 : 3 + 1]  # the past window's read (its deals and won deals)
        assert sum(n for n, _ in past) < in_pipeline, "health of a past window read the whole pipeline"

        refresh_stage_limits(store)
        assert check_every_window() == fast
        assert len(loaded) == 3 * ends_after_the_data.count(False), "the stored-state path read history"
        last = _full_health(world, store.load_history(pipelines=[world.pipeline_a]), end - 30 * day, end,
                            None)["pipelines"][world.pipeline_a]
        spec = world.history.pipelines[world.pipeline_a]
        configured = spec.stale_after_days
        stalled_stages = {d["stage"] for d in last["stalled_deals"]}
        assert stalled_stages & set(configured) and stalled_stages - set(configured), stalled_stages

        # a won deal reopened after the limits were learned: they are not those as of until any more, so
        # health as of now learns them in its read (the stored state still answers, no history read)
        _post(client, world, "/v1/events", {"stage_changes": [
            {"deal_id": "AWK-BACK-AND-WON", "stage": spec.stages[1], "changed_at": (end - day).isoformat()}]})
        assert check_every_window() == fast
        assert len(loaded) == 3 * ends_after_the_data.count(False), "the stored-state path read history"
        # the reopening write made the limits due at once (not after their hour): one refresh round, and
        # health as of now reads the stored limits again, which no longer count that deal
        assert store.stage_limits_due(datetime.now(UTC), datetime.now(UTC) - timedelta(hours=1)) == [
            world.pipeline_a]
        assert refresh_stage_limits(store) == [world.pipeline_a]
        assert check_every_window() == fast
        # events that move no deal in or out of a won stage leave the learned limits as they were
        _post(client, world, "/v1/events", {
            "activities": [{"deal_id": "AWK-ZERO", "type": "call",
                            "occurred_at": (end - day / 2).isoformat()}],
            "stage_changes": [{"deal_id": "AWK-CHANGED", "stage": spec.stages[2],
                               "changed_at": (end - day / 3).isoformat()}],
        })
        assert check_every_window() == fast


def test_health_right_after_a_win_learns_the_limits_in_its_read(
    world: Any, database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A write that wins a deal (or un-wins one) leaves the stored learned limits stale until the next
    refresh round; health as of now read at once learns them in its own read from the won deals' stage
    changes: it reads no history (any history read fails the request here) and its figures, the stalled
    deals' learned limits among them, are exactly those of the whole history, on SQLite and PostgreSQL."""
    url = _copy_store(world, database)
    # no background refresh: the stored limits stay as learned before the win
    app = create_app(make_settings(world, database_url=url, live_score_max_age_s=0))
    with TestClient(app, raise_server_exceptions=False) as client:
        store: Store = client.app.state.store  # type: ignore[attr-defined]
        refresh_stage_limits(store)
        spec = world.history.pipelines[world.pipeline_a]

        def refuse(self: Store, *args: Any, **kwargs: Any) -> Any:
            raise AssertionError("health read a history")

        def read_now() -> dict[str, Any]:
            """Health as of now, with no history read allowed, checked against the whole history."""
            monkeypatch.setattr(Store, "_read_history", refuse)
            monkeypatch.setattr(Store, "health_history", refuse)
            got = client.get(f"/v1/pipelines/{world.pipeline_a}/health", params={"stalled_limit": 1000},
                             headers=world.auth("manager"))
            monkeypatch.undo()
            assert got.status_code == 200, got.text
            answer: dict[str, Any] = got.json()
            whole = store.load_history(pipelines=[world.pipeline_a])
            assert answer == {"pipeline": world.pipeline_a, **pipeline_health(
                whole, answer["since"], answer["until"], pipeline=world.pipeline_a, stalled_limit=1000)}
            return answer

        def limits(answer: dict[str, Any]) -> dict[str, float]:
            """The limit each stalled deal's stage had in `answer`, by stage."""
            return {d["stage"]: d["threshold_days"] for d in answer["overall"]["stalled_deals"]}

        before = limits(read_now())
        learned_stages = sorted(set(before) - set(spec.stale_after_days))
        assert learned_stages, before
        stage = learned_stages[0]
        now = pd.Timestamp.now(tz="UTC")
        _post(client, world, "/v1/deals", {"deals": [
            {"deal_id": "WON-NOW", "pipeline": world.pipeline_a, "owner": "o", "amount": 1000.0,
             "created_at": (now - pd.Timedelta(days=400)).isoformat()}]})

        def move(to: str, at: pd.Timestamp) -> None:
            _post(client, world, "/v1/events", {"stage_changes": [
                {"deal_id": "WON-NOW", "stage": to, "changed_at": at.isoformat()}]})

        move(stage, now - pd.Timedelta(days=399))
        assert limits(read_now()) == before  # open: it counts for no limit
        # the win: a 399-day visit of `stage` now counts, and the read does not wait for the refresh
        move(spec.won[0], pd.Timestamp.now(tz="UTC"))
        assert store.stage_limits_due(datetime.now(UTC), datetime.now(UTC) - timedelta(hours=1)) == [
            world.pipeline_a]
        after_win = limits(read_now())
        assert after_win[stage] > before[stage], (stage, before, after_win)
        # un-won at once: the visit counts no more
        move(stage, pd.Timestamp.now(tz="UTC"))
        assert limits(read_now())[stage] == before[stage]
        # won again, with one more short visit of `stage` (the reads since reuse the visits they learned
        # of the other won deals); the refresh round then stores the limits the read learned
        move(spec.won[0], pd.Timestamp.now(tz="UTC"))
        won_again = limits(read_now())
        assert won_again[stage] != before[stage]
        # a won deal that stays won gains a stage change dated back (its long visit of `stage` is cut
        # short): its visits are read again, not reused
        other = next(s for s in spec.stages if s != stage)
        move(other, now - pd.Timedelta(days=398.9))
        won_again = limits(read_now())
        assert refresh_stage_limits(store) == [world.pipeline_a]
        assert limits(read_now()) == won_again


def test_health_and_forecast_as_of_now_never_load_the_pipeline_history(
    world: Any, service: Callable[..., TestClient], monkeypatch: pytest.MonkeyPatch
) -> None:
    client = service()
    assert _wait_for(lambda: client.app.state.store.forecast_scores(  # type: ignore[attr-defined]
        world.pipeline_a, pd.Timestamp.now(tz="UTC").to_pydatetime()) is not None, timeout_s=120)

    def refuse(self: Store, *args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the whole history was loaded")

    monkeypatch.setattr(Store, "load_history", refuse)
    forecast = client.get(f"/v1/pipelines/{world.pipeline_a}/forecast", headers=world.auth("manager"))
    assert forecast.status_code == 200, forecast.text
    assert forecast.json()["source"] == "live_scores"
    health = client.get(f"/v1/pipelines/{world.pipeline_a}/health", headers=world.auth("manager"))
    assert health.status_code == 200, health.text
    # the on-demand path (a past as_of) does load it: the guard above is real
    past = client.get(f"/v1/pipelines/{world.pipeline_a}/forecast",
                      params={"as_of": world.history.end_time.isoformat()}, headers=world.auth("manager"))
    assert past.status_code == 500


def test_the_forecast_from_live_scores_equals_the_on_demand_forecast(
    world: Any, service: Callable[..., TestClient], monkeypatch: pytest.MonkeyPatch
) -> None:
    client = service(live_score_max_age_s=0)  # no background scorer: this test scores as of its own time
    app: Any = client.app
    t = (world.history.end_time + pd.Timedelta(days=1)).floor("s")
    scorer = LiveScorer(app.state.store, app.state.model_holder, app.state.population)
    while scorer.score_due(t.to_pydatetime()) > 0:
        pass
    app.state.new_deals.refresh(now=t.to_pydatetime())
    monkeypatch.setattr(pipeline_routes, "time_or",  # the route's clock reads t
                        lambda value, default=None: pd.Timestamp(value) if value is not None else t)
    for months in (1, 3, 12):
        live = client.get(f"/v1/pipelines/{world.pipeline_a}/forecast", params={"months": months},
                          headers=world.auth("manager")).json()
        on_demand = client.get(f"/v1/pipelines/{world.pipeline_a}/forecast",
                               params={"months": months, "as_of": t.isoformat()},
                               headers=world.auth("manager")).json()
        assert live["source"] == "live_scores" and on_demand["source"] == "on_demand"
        assert live["oldest_score_as_of"] == t.isoformat()
        assert live["model_version"] == on_demand["model_version"] == world.versions[0]
        assert live["method"].startswith("by each deal's chance")  # spread by the timing curves
        for name in ("as_of", "method", "note", "periods", "unscheduled", "later"):
            assert live[name] == on_demand[name], (months, name)
    assert any(p["deals"] > 0 for p in live["periods"])


def test_the_forecast_during_a_model_swap_adds_up_each_deal_s_own_live_score(
    world: Any, service: Callable[..., TestClient], monkeypatch: pytest.MonkeyPatch
) -> None:
    """While a swap is being scored the open deals' live scores name two versions. The forecast keeps
    reading them (each deal with its own latest score, as the at-risk list shows it) and says how many
    deals each version scored, instead of scoring the whole pipeline on demand for the swap's length."""
    client = service(live_score_max_age_s=0)  # no background scorer: the test sets the scores itself
    app: Any = client.app
    t = (world.history.end_time + pd.Timedelta(days=1)).floor("s")
    scorer = LiveScorer(app.state.store, app.state.model_holder, app.state.population)
    while scorer.score_due(t.to_pydatetime()) > 0:
        pass
    app.state.new_deals.refresh(now=t.to_pydatetime())
    monkeypatch.setattr(pipeline_routes, "time_or",
                        lambda value, default=None: pd.Timestamp(value) if value is not None else t)
    path, headers = f"/v1/pipelines/{world.pipeline_a}/forecast", world.auth("manager")
    before = client.get(path, params={"months": 6}, headers=headers).json()
    assert before["source"] == "live_scores"
    store: Store = app.state.store
    open_ids = sorted(store.forecast_scores(world.pipeline_a, t.to_pydatetime())["deal_id"])
    relabelled = open_ids[::2]  # as if the swap had re-scored these (same curves: same numbers)
    table = store.table("deal_scores")
    with store.engine.begin() as conn:
        conn.execute(table.update().where(table.c.deal_id.in_(relabelled))
                     .values(model_version=world.versions[1]))
    during = client.get(path, params={"months": 6}, headers=headers).json()
    assert during["source"] == "live_scores"
    assert during["model_versions"] == {world.versions[0]: len(open_ids) - len(relabelled),
                                        world.versions[1]: len(relabelled)}
    assert before["model_versions"] == {world.versions[0]: len(open_ids)}
    for name in ("as_of", "periods", "later"):
        assert during[name] == before[name], name
