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
