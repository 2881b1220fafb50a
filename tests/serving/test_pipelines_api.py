"""Pipeline routes through the real app (`create_app`) with a temporary SQLite store.

The model is a small stand-in bundle (fixed cold risk per deal, close probability 0.5) swapped in with
`dependency_overrides`: these tests are about ranking, filters, formats and who may see what; scoring
itself is tested with real bundles elsewhere.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import numpy as np
import pandas as pd
import pytest

from features.health import pipeline_health
from features.history import DealHistory
from tests.serving.stand_in import ScoresAsColumns, stand_in_service

AS_OF = "2024-01-31T00:00:00Z"
COLD = {"a1": 0.9, "a2": 0.2, "a3": 0.6, "a4": 0.4, "b1": 0.7}


class StandInBundle(ScoresAsColumns):
    """Scores like `ScoringBundle.score`: fixed cold risk per deal, close probability 0.5."""

    def score(self, features: pd.DataFrame, top_reasons: int = 3, with_curves: bool = False) -> pd.DataFrame:
        ids = features["deal_id"].astype(str)
        cold = ids.map(COLD).astype(float)
        return pd.DataFrame(
            {
                "deal_id": ids.to_numpy(),
                "as_of": features["as_of"].to_numpy(),
                "cold_risk": cold.to_numpy(),
                "close_probability": 0.5,
                "close_probability_90d": 0.25,
                "slip_risk": [0.8 if d == "a1" else np.nan for d in ids],
                "likely_close_date": (pd.to_datetime(features["as_of"], utc=True) + pd.Timedelta(days=40))
                .dt.floor("D").to_numpy(),
                "risk_band": ["high" if c >= 0.6 else "low" for c in cold],
                "expected_value": (features["amount"].astype(float) * 0.5).to_numpy(),
                "reasons": [[{"feature": "stage_age_days", "value": 3.0, "effect": 0.1,
                              "text": f"{d} is quiet"}] for d in ids],
                "counter_reasons": [[{"feature": "n_meeting_30d", "value": 2.0, "effect": -0.3,
                                      "text": "2 meetings in the last 30 days"}] for _ in ids],
            }
        )


    def timing_curves(self, features: pd.DataFrame) -> None:
        """No timing model: the forecast places deals by their expected close date."""
        return None


def make_history() -> DealHistory:
    deals = pd.DataFrame(
        {
            "deal_id": ["a1", "a2", "a3", "a4", "a5", "b1"],
            "pipeline": ["A", "A", "A", "A", "A", "B"],
            "owner": ["ann", "bob", "ann", "cat", "ann", "dan"],
            "team": ["East", "West", "East", "West", "East", "North"],
            "amount": ["1000", "500", "2000", "300", "800", "700"],
            "created_at": ["2023-12-01", "2024-01-02", "2024-01-05", "2024-01-10", "2023-12-01",
                           "2024-01-03"],
            "expected_close_date": ["2024-02-10", "2024-03-05", "", "2024-01-20", "2024-01-15", "2024-02-01"],
        }
    )
    stage_changes = pd.DataFrame(
        [("a1", "Lead", "2023-12-01"), ("a1", "Demo", "2023-12-05"),
         ("a2", "Lead", "2024-01-02"), ("a3", "Lead", "2024-01-05"), ("a3", "Demo", "2024-01-20"),
         ("a4", "Lead", "2024-01-10"),
         ("a5", "Lead", "2023-12-01"), ("a5", "Won", "2024-01-15"),
         ("b1", "Intro", "2024-01-03")],
        columns=["deal_id", "stage", "changed_at"],
    )
    activities = pd.DataFrame(
        [("a1", "call", "2023-12-02"), ("a2", "email", "2024-01-25"), ("b1", "meeting", "2024-01-04")],
        columns=["deal_id", "type", "occurred_at"],
    )
    pipelines: dict[str, dict[str, Any]] = {
        "A": {"stages": ["Lead", "Demo"], "won": ["Won"], "lost": ["Lost"], "stale_after_days": {"Demo": 10}},
        "B": {"stages": ["Intro", "Pitch"], "won": ["Won"], "lost": ["Lost"]},
    }
    return DealHistory.from_frames(deals, stage_changes, activities, None, pipelines, source="test")


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    keys = {"admin": ("admin", ["*"]), "manager_a": ("manager", ["A"]),
         "integration": ("integration", ["*"])}
    with stand_in_service(tmp_path_factory.mktemp("home"), make_history(), keys, StandInBundle()) as service:
        yield service


def get(env: dict[str, Any], path: str, key: str = "manager_a", **headers: str) -> Any:
    return env["client"].get(path, headers={"Authorization": f"Bearer {env['keys'][key]}", **headers})


def test_pipelines_lists_only_what_the_key_may_see(env: dict[str, Any]) -> None:
    mine = get(env, "/v1/pipelines").json()["pipelines"]
    assert [p["name"] for p in mine] == ["A"]
    assert mine[0]["stages"] == ["Lead", "Demo"] and mine[0]["won"] == ["Won"]
    assert [p["name"] for p in get(env, "/v1/pipelines", "admin").json()["pipelines"]] == ["A", "B"]


def test_at_risk_ranks_open_deals_by_value_at_risk_and_names_the_model(env: dict[str, Any]) -> None:
    body = get(env, f"/v1/pipelines/A/at-risk?as_of={AS_OF}").json()
    assert body["model_version"] == "7" and body["pipeline"] == "A"
    # a5 is won; the rest are ranked by amount × close probability (0.5) × cold risk:
    # a3 2000×0.5×0.6 = 600, a1 1000×0.5×0.9 = 450, a4 300×0.5×0.4 = 60, a2 500×0.5×0.2 = 50.
    assert [d["deal_id"] for d in body["deals"]] == ["a3", "a1", "a4", "a2"]
    assert [d["value_at_risk"] for d in body["deals"]] == pytest.approx([600, 450, 60, 50])
    assert [d["rank"] for d in body["deals"]] == [1, 2, 3, 4]
    by_cold = get(env, f"/v1/pipelines/A/at-risk?as_of={AS_OF}&sort=cold_risk").json()
    assert [d["deal_id"] for d in by_cold["deals"]] == ["a1", "a3", "a4", "a2"]
    top = by_cold["deals"][0]
    assert (top["owner"], top["team"], top["stage"], top["amount"]) == ("ann", "East", "Demo", 1000.0)
    assert top["close_probability"] == 0.5 and top["reasons"][0]["text"] == "a1 is quiet"
    assert top["counter_reasons"][0]["effect"] == -0.3  # what lowers the risk, listed apart
    assert (top["close_probability_90d"], top["slip_risk"]) == (0.25, 0.8)
    assert by_cold["deals"][1]["slip_risk"] is None  # a3: no expected close date
    assert top["likely_close_date"] == (pd.Timestamp(AS_OF) + pd.Timedelta(days=40)).date().isoformat()
    assert top["days_in_stage"] == pytest.approx(57.0)  # Demo since 2023-12-05


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("owner=ann", ["a3", "a1"]),
        ("team=West", ["a4", "a2"]),
        ("min_amount=900", ["a3", "a1"]),
        ("close_before=2024-03-01", ["a1", "a4"]),  # a3 has no expected close date
        ("limit=2&offset=1", ["a1", "a4"]),
        ("owner=nobody", []),
    ],
)
def test_at_risk_filters(env: dict[str, Any], query: str, expected: list[str]) -> None:
    body = get(env, f"/v1/pipelines/A/at-risk?as_of={AS_OF}&{query}").json()
    assert [d["deal_id"] for d in body["deals"]] == expected


def test_at_risk_as_csv(env: dict[str, Any]) -> None:
    res = get(env, f"/v1/pipelines/A/at-risk?as_of={AS_OF}", Accept="text/csv")
    assert res.status_code == 200 and res.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(res.text)))
    assert [r["deal_id"] for r in rows] == ["a3", "a1", "a4", "a2"]
    assert float(rows[0]["value_at_risk"]) == pytest.approx(600.0)
    a1, a3 = rows[1], rows[0]
    assert a1["model_version"] == "7" and a1["reasons"] == "a1 is quiet"
    assert a1["counter_reasons"] == "2 meetings in the last 30 days"
    assert a1["close_probability_90d"] == "0.25" and a1["slip_risk"] == "0.8"
    assert a3["slip_risk"] == ""  # no expected close date in the future: blank, not NaN
    expected = (pd.Timestamp(AS_OF) + pd.Timedelta(days=40)).date().isoformat()
    assert a1["likely_close_date"] == expected


def test_health_matches_the_pure_function(env: dict[str, Any]) -> None:
    body = get(env, "/v1/pipelines/A/health?since=2024-01-01&until=2024-01-31&by=team").json()
    expected = pipeline_health(make_history(), "2024-01-01", "2024-01-31", pipeline="A", by="team")
    assert body["pipeline"] == "A"
    assert body["pipelines"]["A"]["open_deals"] == 4 == expected["pipelines"]["A"]["open_deals"]
    assert body["pipelines"]["A"]["win_rate"] == 1.0  # a5 won in the window
    assert body["pipelines"]["A"]["avg_cycle_days"] == pytest.approx(45.0)
    assert body["by_team"]["East"]["open_deals"] == 2
    assert [s["deal_id"] for s in body["pipelines"]["A"]["stalled_deals"]] == ["a1", "a3"]
    bad = get(env, "/v1/pipelines/A/health?since=2024-02-01&until=2024-01-01")
    assert bad.status_code == 422 and "after until" in bad.json()["detail"]


def test_health_lists_the_longest_stalled_deals_up_to_stalled_limit(env: dict[str, Any]) -> None:
    """A pipeline with thousands of stalled deals answers their count and the longest-stalled few, not a
    list as long as the pipeline (the default is 50)."""
    window = "since=2024-01-01&until=2024-01-31"
    one = get(env, f"/v1/pipelines/A/health?{window}&stalled_limit=1").json()
    for block in (one["overall"], one["pipelines"]["A"]):
        assert block["stalled_count"] == 2
        assert [s["deal_id"] for s in block["stalled_deals"]] == ["a1"]  # the longer stalled of a1, a3
    none = get(env, f"/v1/pipelines/A/health?{window}&stalled_limit=0").json()
    assert none["pipelines"]["A"]["stalled_deals"] == [] and none["pipelines"]["A"]["stalled_count"] == 2
    for bad in ("-1", "1001", "many"):
        answer = get(env, f"/v1/pipelines/A/health?{window}&stalled_limit={bad}")
        assert answer.status_code == 422 and "stalled_limit" in answer.text, answer.text


def test_forecast_by_month(env: dict[str, Any]) -> None:
    body = get(env, f"/v1/pipelines/A/forecast?months=2&as_of={AS_OF}").json()
    assert body["model_version"] == "7" and body["pipeline"] == "A"
    jan, feb = body["periods"]
    # January: a4 (overdue since 01-20); February: a1. March (a2) is later; a3 has no date.
    assert (jan["period"], jan["deals"], jan["overdue_deals"]) == ("2024-01", 1, 1)
    assert jan["expected_won_amount"] == pytest.approx(150.0)
    assert (feb["deals"], feb["p10"], feb["p50"], feb["p90"]) == (1, 0.0, 0.0, 1000.0)
    assert body["unscheduled"]["deals"] == 1 and body["later"]["deals"] == 1
    # deals not created yet are a line of their own, and the total adds them to the open deals
    for month in (jan, feb):
        new, total = month["new_deals"], month["total"]
        assert total["expected_won_amount"] == pytest.approx(
            month["expected_won_amount"] + new["expected_won_amount"]
        )
        assert 0 <= new["p10"] <= new["p50"] <= new["p90"] and total["p90"] >= month["p90"]


@pytest.mark.parametrize("route", ["at-risk", "health", "forecast"])
def test_other_pipelines_and_unknown_ones_are_not_found(env: dict[str, Any], route: str) -> None:
    res = get(env, f"/v1/pipelines/B/{route}")
    assert res.status_code == 404 and res.json()["detail"] == "pipeline not found"
    unknown = get(env, f"/v1/pipelines/Nope/{route}", "admin")
    assert unknown.status_code == 404 and unknown.json() == res.json()


@pytest.mark.parametrize("route", ["at-risk", "health", "forecast"])
def test_roles_and_missing_keys(env: dict[str, Any], route: str) -> None:
    assert get(env, f"/v1/pipelines/A/{route}", "integration").status_code == 403
    assert env["client"].get(f"/v1/pipelines/A/{route}").status_code == 401
    assert get(env, f"/v1/pipelines/B/{route}?as_of={AS_OF}", "admin").status_code == 200


@pytest.mark.parametrize("route", ["at-risk", "stale"])
def test_the_lists_check_the_key_before_the_query(env: dict[str, Any], route: str) -> None:
    # the key check runs in the lists' one threadpool hop, after FastAPI validated the query: a bad query
    # still answers as the key deserves first, and tells a caller without a valid key nothing more
    bad = f"/v1/pipelines/A/{route}?limit=0"
    assert env["client"].get(bad).status_code == 401
    wrong = env["client"].get(bad, headers={"Authorization": "Bearer drk_nope_nope"})
    assert wrong.status_code == 401 and wrong.headers["www-authenticate"] == "Bearer"
    assert get(env, bad, "integration").status_code == 403
    refused = get(env, bad)
    assert refused.status_code == 422 and "limit" in refused.text
    assert get(env, f"/v1/pipelines/B/{route}?limit=0").status_code == 422  # as before: the query first
    assert get(env, f"/v1/pipelines/B/{route}").status_code == 404


def test_openapi_documents_the_pipeline_routes(env: dict[str, Any]) -> None:
    paths = env["client"].get("/openapi.json").json()["paths"]
    for path in ("/v1/pipelines", "/v1/pipelines/{pipeline}/at-risk", "/v1/pipelines/{pipeline}/health",
                 "/v1/pipelines/{pipeline}/forecast"):
        assert path in paths
    assert "/" not in paths  # the page is not part of the API


@pytest.mark.parametrize("route", ["at-risk", "stale"])
def test_csv_of_a_pipeline_named_beyond_ascii_downloads_under_its_name(
    tmp_path: Any, route: str
) -> None:
    # HTTP header values are Latin-1 bytes: the name goes in `filename*` (UTF-8, percent-encoded) with a
    # plain ASCII `filename` beside it for old clients; a quote in the name cannot end the header's string
    name = 'Café "Nord" ☃'
    keys = {"admin": ("admin", ["*"])}
    with stand_in_service(tmp_path, make_history(), keys, StandInBundle()) as service:
        auth = {"Authorization": f"Bearer {service['keys']['admin']}"}
        spec = {"stages": ["Lead"], "won": ["Won"], "lost": ["Lost"]}
        put = service["client"].put(f"/v1/pipelines/{quote(name)}", json=spec, headers=auth)
        assert put.status_code == 200, put.text
        for query in ("", f"?as_of={AS_OF}"):
            res = service["client"].get(f"/v1/pipelines/{quote(name)}/{route}{query}",
                                        headers={**auth, "Accept": "text/csv"})
            assert res.status_code == 200, res.text
            assert res.text.startswith("rank,deal_id,")
            disposition = res.headers["content-disposition"]
            assert f'filename="{route}-Caf_ _Nord_ _.csv"' in disposition
            assert f"filename*=UTF-8''{quote(f'{route}-{name}.csv', safe='')}" in disposition


@pytest.mark.parametrize("route", ["at-risk", "stale"])
def test_an_offset_past_any_store_is_refused_by_name(env: dict[str, Any], route: str) -> None:
    # 10**20 does not fit a database integer: it was a 500 (OverflowError) on the live lists
    res = get(env, f"/v1/pipelines/A/{route}?offset={10**20}")
    assert res.status_code == 422 and res.json()["problems"][0]["loc"] == "query.offset"
    assert "1000000000" in res.json()["detail"]
    assert get(env, f"/v1/pipelines/A/{route}?offset=1000000000&as_of={AS_OF}").json()["deals"] == []
