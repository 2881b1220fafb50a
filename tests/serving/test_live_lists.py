"""The at-risk and stale lists as of now come from the store (live scores, stored stage limits, ranking
and paging in SQL) and equal the on-demand lists (`models.at_risk.rank_at_risk`) on the same store at
the same time: same deals, same order, same values, for every sort and both lists.

The store-level tests run on SQLite and PostgreSQL; the API tests on SQLite, through the real app.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from features.build import FeatureBuilder
from features.history import DealHistory, PipelineSpec
from models.at_risk import AT_RISK_SORTS, STALE_LIMIT_FACTOR, STALE_MAX_CLOSE_PROBABILITY, rank_at_risk
from models.forecast import score_open_deals
from serving.deps import get_model
from serving.errors import ModelUnavailableError
from serving.stage_limits import refresh_stage_limits
from serving.store import Store
from tests.serving.live_lists_world import FixedScores, make_world, score_live
from tests.serving.stand_in import stand_in_service

NOW = datetime(2025, 6, 1, 12, tzinfo=UTC)
SORTS = sorted(AT_RISK_SORTS)
COMPARED = ["deal_id", "pipeline", "owner", "team", "stage", "amount", "cold_risk", "close_probability",
            "value_at_risk", "stage_limit_days"]


def _on_demand(
    history: DealHistory, bundle: FixedScores, pipeline: str, sort: str, stale: bool
) -> pd.DataFrame:
    scored = score_open_deals(bundle, history, NOW, FeatureBuilder().fit(history))
    scored = scored[scored["pipeline"] == pipeline]
    ranked = rank_at_risk(scored, history, NOW, sort)
    return ranked[ranked["stale"] == stale].reset_index(drop=True)


@pytest.fixture
def live_store(store: Store) -> tuple[Store, DealHistory, FixedScores]:
    history, bundle = make_world(NOW)
    store.import_history(history)
    assert score_live(store, bundle, NOW) > 0
    assert store.at_risk_page("A", NOW) is None  # learned limits never computed: the route ranks on demand
    assert refresh_stage_limits(store, NOW) == ["A", "B"]
    return store, history, bundle


@pytest.mark.parametrize("stale", [False, True], ids=["at-risk", "stale"])
def test_the_store_ranks_like_rank_at_risk_for_every_sort(
    live_store: tuple[Store, DealHistory, FixedScores], stale: bool
) -> None:
    store, history, bundle = live_store
    for pipeline in ("A", "B"):
        for sort in SORTS:
            page = store.at_risk_page(pipeline, NOW, sort, stale=stale, limit=None)
            assert page is not None
            total, live = page
            expected = _on_demand(history, bundle, pipeline, sort, stale)
            assert total == len(expected) == len(live), (pipeline, sort)
            for column in COMPARED:
                got, want = live[column].tolist(), expected[column].tolist()
                assert _plain(got) == _plain(want), (pipeline, sort, column)
            assert live["days_in_stage"].to_numpy() == pytest.approx(expected["days_in_stage"].to_numpy(),
                                                                     abs=1e-9, nan_ok=True)
            assert (live["expected_close_date"].fillna(pd.Timestamp(0, tz="UTC"))
                    == expected["expected_close_date"].fillna(pd.Timestamp(0, tz="UTC"))).all()
    # The world is built so both lists and every tie-break matter.
    a_stale = store.at_risk_page("A", NOW, stale=True, limit=None)
    a_live = store.at_risk_page("A", NOW, stale=False, limit=None)
    assert a_stale is not None and a_live is not None and a_stale[0] >= 3 and a_live[0] >= 10
    assert a_live[1]["value_at_risk"].duplicated().any() and a_live[1]["stage_limit_days"].isna().any()


def test_learned_limits_are_due_again_after_a_deal_is_won(
    live_store: tuple[Store, DealHistory, FixedScores],
) -> None:
    store, history, _ = live_store
    assert store.stage_limits_due(NOW, NOW - timedelta(hours=1)) == []
    page = store.at_risk_page("A", NOW, limit=None)
    assert page is not None
    # Lead's learned limit: the 80th percentile of 4, 6, 8, 10 days; Demo's is configured.
    limits = dict(zip(page[1]["stage"], page[1]["stage_limit_days"], strict=True))
    assert limits.get("Lead") == pytest.approx(8.8) and limits.get("Demo") == 10.0
    lead = history.stage_changes
    deal_id = str(lead.loc[lead["stage"] == "Lead", "deal_id"].iloc[0])
    won = pd.DataFrame({"deal_id": [deal_id, deal_id], "stage": ["Demo", "Won"],
                        "changed_at": [NOW - timedelta(minutes=2), NOW - timedelta(minutes=1)]})
    store.add_events(stage_changes=won.assign(changed_at=pd.to_datetime(won["changed_at"], utc=True)))
    assert store.stage_limits_due(NOW, NOW - timedelta(hours=1)) == ["A"]
    assert refresh_stage_limits(store, NOW) == ["A"]
    after = store.at_risk_page("A", NOW, limit=None)
    assert after is not None
    new_limits = dict(zip(after[1]["stage"], after[1]["stage_limit_days"], strict=True))
    assert new_limits["Lead"] != pytest.approx(8.8)  # one more won deal's time in Lead counts now
    assert store.stage_limits_due(NOW, NOW - timedelta(hours=1)) == []
    # the hourly clock (computed_at is the wall-clock time of the refresh)
    assert store.stage_limits_due(NOW, datetime.now(UTC) + timedelta(seconds=1)) == ["A", "B"]


# won-a3 spent 10 days in Lead: without it, Lead's learned limit is the 80th percentile of 4, 6 and 8 days
LEAD_WITH_ALL_WON, LEAD_WITHOUT_WON_A3 = 8.8, 7.2


def _lead_limit(store: Store, now: datetime = NOW) -> float:
    """The `stage_limit_days` the live lists of A show for Lead (every Lead deal, at-risk and stale)."""
    seen = set()
    for stale in (False, True):
        page = store.at_risk_page("A", now, stale=stale, limit=None)
        assert page is not None, "the list was ranked on demand"
        seen |= {v for stage, v in zip(page[1]["stage"], page[1]["stage_limit_days"], strict=True)
                 if stage == "Lead"}
    assert len(seen) == 1, seen
    return float(seen.pop())


def _take_won_a3_out(store: Store, history: DealHistory, how: str) -> None:
    """Take the won deal won-a3 out of A's won deals, a minute before NOW."""
    at = pd.Timestamp(NOW - timedelta(minutes=1))
    if how == "moved":
        deal = history.deals[history.deals["deal_id"] == "won-a3"].reset_index(drop=True)
        store.upsert_deals(deal.assign(pipeline=pd.Series(["C"], dtype="string")))
        return
    stage = "Lost" if how == "lost" else "Demo"
    store.add_events(stage_changes=pd.DataFrame({"deal_id": ["won-a3"], "stage": [stage],
                                                 "changed_at": [at]}))
    if how == "reopened, recomputed":
        # a field change dated before its last event: the state is recomputed from the whole history
        store.add_events(field_changes=pd.DataFrame({
            "deal_id": ["won-a3"], "field": ["amount"], "value": ["150"],
            "changed_at": [pd.Timestamp("2024-11-11T12:00:00Z")]}))


@pytest.mark.parametrize("how", ["reopened", "reopened, recomputed", "lost", "moved"])
def test_a_won_deal_taken_out_makes_the_learned_limits_due_at_once(
    live_store: tuple[Store, DealHistory, FixedScores], how: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    store, history, bundle = live_store
    assert _lead_limit(store) == pytest.approx(LEAD_WITH_ALL_WON)
    recomputed: list[str] = []
    refresh_state = Store._refresh_state

    def spy(self: Store, conn: Any, deal_ids: Any) -> None:
        recomputed.extend(deal_ids)
        refresh_state(self, conn, deal_ids)

    monkeypatch.setattr(Store, "_refresh_state", spy)
    _take_won_a3_out(store, history, how)
    # the incremental state path (one stage change after the deal's last event) and the whole-history one
    assert ("won-a3" in recomputed) == (how in ("reopened, recomputed", "moved"))
    assert "A" in store.stage_limits_due(NOW, NOW - timedelta(hours=1))  # not after the hour: at once
    score_live(store, bundle, NOW)  # a reopened deal is open: the live lists need its score
    assert _lead_limit(store) == pytest.approx(LEAD_WITH_ALL_WON)  # until the refresh round
    assert "A" in refresh_stage_limits(store, NOW)
    assert _lead_limit(store) == pytest.approx(LEAD_WITHOUT_WON_A3)
    assert store.stage_limits_due(NOW, NOW - timedelta(hours=1)) == []


def test_learned_limits_age_and_see_writes_in_wall_clock_time_whatever_they_were_learned_as_of(
    live_store: tuple[Store, DealHistory, FixedScores],
) -> None:
    """`stale_learned_at` is the wall clock before the refresh read, not the `now` it learned as of: the
    fixture learned as of NOW, months before the wall clock."""
    store, history, bundle = live_store
    assert refresh_stage_limits(store, NOW) == []  # learned a moment ago
    assert refresh_stage_limits(store, NOW, max_age_s=0) == ["A", "B"]  # but older than 0 s
    # Learned as of a month ahead (the same limits: nothing is dated after NOW), then a write: it was
    # stamped after the refresh read, so it counts, whatever time the limits were learned as of.
    ahead = datetime.now(UTC) + timedelta(days=30)
    assert refresh_stage_limits(store, ahead, max_age_s=0) == ["A", "B"]
    assert _lead_limit(store) == pytest.approx(LEAD_WITH_ALL_WON)
    _take_won_a3_out(store, history, "reopened")
    score_live(store, bundle, NOW)
    assert refresh_stage_limits(store, NOW) == ["A"]
    assert _lead_limit(store) == pytest.approx(LEAD_WITHOUT_WON_A3)


def _plain(values: list[Any]) -> list[Any]:
    return [None if pd.isna(v) else v for v in values]


# ---------------------------------------------------------------------- through the API
@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    now = datetime.now(UTC)
    history, bundle = make_world(now)
    home: Path = tmp_path_factory.mktemp("live-lists")
    keys = {"manager": ("manager", ["*"])}
    with stand_in_service(home, history, keys, bundle) as env:
        store = Store(f"sqlite:///{home / 'dealrisk.db'}")
        score_live(store, bundle, now)
        refresh_stage_limits(store)
        store.close()
        yield {**env, "history": history}


def _get(env: dict[str, Any], path: str, **params: Any) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {env['keys']['manager']}"}
    response = env["client"].get(path, params=params, headers=headers)
    assert response.status_code == 200, response.text
    return dict(response.json())


def _live(body: dict[str, Any]) -> bool:
    # a live score is as of when it was computed; an on-demand one is as of the request's time
    return all(d["scored_at"] != body["as_of"] for d in body["deals"])


@pytest.mark.parametrize("route", ["at-risk", "stale"])
@pytest.mark.parametrize("sort", SORTS)
def test_api_live_list_equals_on_demand_list_as_of_the_same_time(
    service: dict[str, Any], route: str, sort: str
) -> None:
    for pipeline in ("A", "B"):
        live = _get(service, f"/v1/pipelines/{pipeline}/{route}", sort=sort, limit=1000)
        assert _live(live)
        on_demand = _get(service, f"/v1/pipelines/{pipeline}/{route}", sort=sort, limit=1000,
                         as_of=live["as_of"])
        assert not _live(on_demand) or not on_demand["deals"]
        assert live["total"] == on_demand["total"] == len(live["deals"])
        for column in ("deal_id", "rank", "stage", "amount", "cold_risk", "close_probability",
                       "value_at_risk", "stage_limit_days", "expected_close_date"):
            assert [d[column] for d in live["deals"]] == [d[column] for d in on_demand["deals"]], column
        assert [d["days_in_stage"] for d in live["deals"]] == pytest.approx(
            [d["days_in_stage"] for d in on_demand["deals"]], abs=1e-6)


@pytest.mark.parametrize("route", ["at-risk", "stale"])
def test_api_live_list_filters_equal_the_on_demand_filters(service: dict[str, Any], route: str) -> None:
    """Each filter, alone and together, one value after another (the live list's statement is kept per
    shape and binds the values of each read): the same deals and totals as on demand."""
    soon = (datetime.now(UTC) + timedelta(days=45)).isoformat()
    for params in ({"owner": "ann"}, {"owner": "bob"}, {"team": "East"}, {"team": "West"},
                   {"min_amount": 500}, {"min_amount": 1000}, {"close_before": soon},
                   {"owner": "bob", "team": "West", "min_amount": 500}, {"owner": "nobody"}):
        live = _get(service, f"/v1/pipelines/A/{route}", limit=1000, **params)
        on_demand = _get(service, f"/v1/pipelines/A/{route}", limit=1000, as_of=live["as_of"], **params)
        assert _live(live) and live["total"] == on_demand["total"] == len(live["deals"]), params
        assert [d["deal_id"] for d in live["deals"]] == [d["deal_id"] for d in on_demand["deals"]], params
    assert _get(service, f"/v1/pipelines/A/{route}", limit=1000, owner="ann")["total"] > 0


@pytest.mark.parametrize("route", ["at-risk", "stale"])
def test_api_pages_are_disjoint_and_make_up_the_whole_list(service: dict[str, Any], route: str) -> None:
    for sort in ("value_at_risk", "close_date"):
        whole = _get(service, f"/v1/pipelines/A/{route}", sort=sort, limit=1000)
        assert _live(whole) and whole["total"] == len(whole["deals"]) >= 3
        seen: list[str] = []
        for offset in range(0, whole["total"] + 3, 3):
            page = _get(service, f"/v1/pipelines/A/{route}", sort=sort, limit=3, offset=offset)
            assert page["total"] == whole["total"] and len(page["deals"]) <= 3
            ranks = list(range(offset + 1, offset + 1 + len(page["deals"])))
            assert [d["rank"] for d in page["deals"]] == ranks
            seen += [d["deal_id"] for d in page["deals"]]
        assert seen == [d["deal_id"] for d in whole["deals"]] and len(set(seen)) == len(seen)


def test_api_stale_deals_appear_only_in_stale(service: dict[str, Any]) -> None:
    history: DealHistory = service["history"]
    open_ids = {str(d) for d in history.deals["deal_id"] if not str(d).startswith("won")}
    for pipeline in ("A", "B"):
        going_cold = _get(service, f"/v1/pipelines/{pipeline}/at-risk", limit=1000)
        dead = _get(service, f"/v1/pipelines/{pipeline}/stale", limit=1000)
        cold_ids = {d["deal_id"] for d in going_cold["deals"]}
        stale_ids = {d["deal_id"] for d in dead["deals"]}
        assert not cold_ids & stale_ids
        mine = {d for d in open_ids if history.deals.set_index("deal_id").loc[d, "pipeline"] == pipeline}
        assert cold_ids | stale_ids == mine  # together, every open deal of the pipeline
        for d in dead["deals"]:
            assert d["close_probability"] < STALE_MAX_CLOSE_PROBABILITY
            assert d["days_in_stage"] > STALE_LIMIT_FACTOR * d["stage_limit_days"]
        for d in going_cold["deals"]:
            limit = d["stage_limit_days"]
            assert not (d["close_probability"] < STALE_MAX_CLOSE_PROBABILITY and limit is not None
                        and d["days_in_stage"] > STALE_LIMIT_FACTOR * limit)
    assert _get(service, "/v1/pipelines/A/stale")["total"] >= 3


def test_api_live_lists_read_no_history(service: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    def no_history(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the live list loaded the pipeline's history")

    monkeypatch.setattr(Store, "load_history", no_history)
    for route in ("at-risk", "stale"):
        for sort in SORTS:
            body = _get(service, f"/v1/pipelines/A/{route}", sort=sort, owner="ann", limit=5)
            assert _live(body)
    # the patch does bite: a past as_of takes the on-demand path, which reads the history
    with pytest.raises(AssertionError, match="loaded the pipeline's history"):
        service["client"].get("/v1/pipelines/A/at-risk", params={"as_of": "2025-01-01T00:00:00Z"},
                              headers={"Authorization": f"Bearer {service['keys']['manager']}"})


def test_api_csv_of_the_live_list(service: dict[str, Any]) -> None:
    response = service["client"].get("/v1/pipelines/A/stale", params={"limit": 2},
                                     headers={"Authorization": f"Bearer {service['keys']['manager']}",
                                              "Accept": "text/csv"})
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(response.text)))
    assert len(rows) == 2 and [r["rank"] for r in rows] == ["1", "2"]
    assert all(float(r["value_at_risk"]) >= 0 and r["model_version"] == "7" for r in rows)


@pytest.mark.parametrize("recomputed", [False, True], ids=["incremental-state", "whole-history-state"])
def test_api_a_won_deal_reopened_changes_the_live_limits_after_one_refresh_round(
    tmp_path: Path, recomputed: bool
) -> None:
    """Through the running service (its own scorer and refresher threads too): a won deal moved back to
    an open stage by POST /v1/events leaves A's learned Lead limit after one refresh round, not an hour."""
    now = datetime.now(UTC)
    history, bundle = make_world(now)
    with stand_in_service(tmp_path, history, {"crm": ("integration", ["*"]), "manager": ("manager", ["*"])},
                          bundle) as env:
        store = Store(f"sqlite:///{tmp_path / 'dealrisk.db'}")
        try:
            score_live(store, bundle, now)
            refresh_stage_limits(store)

            def lead_limit() -> float:
                seen = set()
                for route in ("at-risk", "stale"):
                    body = _get(env, f"/v1/pipelines/A/{route}", limit=1000)
                    assert _live(body)
                    seen |= {d["stage_limit_days"] for d in body["deals"] if d["stage"] == "Lead"}
                assert len(seen) == 1, seen
                return float(seen.pop())

            assert lead_limit() == pytest.approx(LEAD_WITH_ALL_WON)
            a_minute_ago = (now - timedelta(minutes=1)).isoformat()
            reopen = {"deal_id": "won-a3", "stage": "Demo", "changed_at": a_minute_ago}
            events: dict[str, Any] = {"stage_changes": [reopen]}
            if recomputed:  # dated before the deal's last event: its state is recomputed from its history
                created = history.deals.loc[history.deals["deal_id"] == "won-a3", "created_at"].iloc[0]
                backfilled = (pd.Timestamp(created) + pd.Timedelta(days=1)).isoformat()
                events["field_changes"] = [{"deal_id": "won-a3", "field": "amount", "value": "150",
                                            "changed_at": backfilled}]
            response = env["client"].post("/v1/events", json=events,
                                          headers={"Authorization": f"Bearer {env['keys']['crm']}"})
            assert response.status_code == 200, response.text
            score_live(store, bundle, datetime.now(UTC))  # the reopened deal is open: its live score
            refresh_stage_limits(store)  # one round (the service's own refresher may have run it already)
            assert lead_limit() == pytest.approx(LEAD_WITHOUT_WON_A3)
        finally:
            store.close()


def test_a_configured_limit_counts_from_the_next_read(
    live_store: tuple[Store, DealHistory, FixedScores],
) -> None:
    store, history, _ = live_store
    before = store.at_risk_page("A", NOW, stale=True, limit=None)
    assert before is not None and "Demo" in set(before[1]["stage"])
    spec = history.pipelines["A"]
    store.set_pipeline_spec(PipelineSpec("A", spec.stages, spec.won, spec.lost, {"Demo": 1000.0}))
    after = store.at_risk_page("A", NOW, stale=True, limit=None)  # no refresh in between
    assert after is not None and "Demo" not in set(after[1]["stage"])
    assert after[0] == before[0] - int((before[1]["stage"] == "Demo").sum())
    assert store.stage_limits_due(NOW, NOW - timedelta(hours=1)) == ["A"]  # its deals' state was rewritten


def test_api_live_lists_check_the_key_and_the_pipeline_on_every_read(tmp_path: Path) -> None:
    """The live lists read the caller's key on the list's own connection and find the pipeline through
    the list's own statement: a key revoked between two reads answers 401 on the next one, a pipeline
    outside the key 404 exactly as an unknown one, a role that may not read 403, and a bad key 401 before
    a bad query's 422 or the 503 of a service with no model loaded."""
    now = datetime.now(UTC)
    history, bundle = make_world(now)
    keys = {"doomed": ("manager", ["*"]), "manager_a": ("manager", ["A"]), "crm": ("integration", ["*"])}
    with stand_in_service(tmp_path, history, keys, bundle) as env:
        store = Store(f"sqlite:///{tmp_path / 'dealrisk.db'}")
        try:
            score_live(store, bundle, now)
            refresh_stage_limits(store)
            client = env["client"]

            def status(key: str, path: str, **params: Any) -> tuple[int, Any]:
                response = client.get(path, params=params, headers={"Authorization": f"Bearer {key}"})
                return response.status_code, response.json()

            doomed, scoped = env["keys"]["doomed"], env["keys"]["manager_a"]
            missing = (404, {"detail": "pipeline not found"})
            for route in ("at-risk", "stale"):
                code, body = status(doomed, f"/v1/pipelines/B/{route}")
                assert code == 200 and _live(body) and body["total"] > 0
                code, body = status(scoped, f"/v1/pipelines/A/{route}")
                assert code == 200 and _live(body)
                assert status(scoped, f"/v1/pipelines/B/{route}") == missing
                assert status(doomed, f"/v1/pipelines/Nope/{route}") == missing
                assert status(env["keys"]["crm"], f"/v1/pipelines/A/{route}")[0] == 403
                assert client.get(f"/v1/pipelines/A/{route}").status_code == 401
            store.revoke_api_key(doomed.split("_", 2)[1])
            for route in ("at-risk", "stale"):
                assert status(doomed, f"/v1/pipelines/B/{route}")[0] == 401
                assert status(doomed, f"/v1/pipelines/B/{route}", limit=0)[0] == 401  # not 422
                assert status(scoped, f"/v1/pipelines/A/{route}", limit=0)[0] == 422

            def no_model() -> Any:
                raise ModelUnavailableError("no model loaded: test")

            client.app.dependency_overrides[get_model] = no_model
            for route in ("at-risk", "stale"):
                assert status(doomed, f"/v1/pipelines/A/{route}")[0] == 401  # not 503
                assert status(env["keys"]["crm"], f"/v1/pipelines/A/{route}")[0] == 403
                code, body = status(scoped, f"/v1/pipelines/A/{route}")
                assert code == 503 and body["detail"] == "no model loaded: test"
        finally:
            store.close()
