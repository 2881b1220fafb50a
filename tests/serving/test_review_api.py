"""The manager's review routes through the real app: value at risk and sorts, the stale list, what changed
since a date, and a deal's weekly score history.

The model is a stand-in (cold risk and close probability fixed per deal, reasons read from the deal's
features) so every number below can be checked by hand from the small history in `make_history`:
pipeline P has stages Lead < Demo < Proposal, each with a 10-day stalled limit, and AS_OF is 2024-03-01.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from typing import Any

import numpy as np
import pandas as pd
import pytest

from features.history import DealHistory
from tests.serving.stand_in import ScoresAsColumns, stand_in_service

AS_OF = "2024-03-01T00:00:00Z"
CLOSE = {"d1": 0.5, "d5": 0.6, "d2": 0.01, "d3": 0.01, "d4": 0.3, "d6": 0.4, "q1": 0.5}
COLD = {"d1": 0.8, "d5": 0.3, "d2": 0.9, "d3": 0.5, "d4": 0.2, "d6": 0.7, "q1": 0.5}
# d4 starts going cold on 2024-02-20: from then on its cold risk is high (>= 0.6).
D4_COLD_FROM = pd.Timestamp("2024-02-20", tz="UTC")


class StandInBundle(ScoresAsColumns):
    """Scores like `ScoringBundle.score`; a reason, days in stage (effect = days / 100), and a counter
    reason, the amount (effect = −amount / 10,000), so how they move between weeks is plain arithmetic."""

    def score(self, features: pd.DataFrame, top_reasons: int = 3, with_curves: bool = False) -> pd.DataFrame:
        ids = features["deal_id"].astype(str).to_numpy()
        as_of = pd.to_datetime(features["as_of"], utc=True)
        cold = [0.65 if d == "d4" and t >= D4_COLD_FROM else COLD[d] for d, t in zip(ids, as_of, strict=True)]
        close = [CLOSE[d] for d in ids]
        amount = features["amount"].astype(float).to_numpy()
        age = features["stage_age_days"].astype(float).to_numpy()
        reasons = [[{"feature": "stage_age_days", "value": a, "effect": a / 100,
                     "text": f"{a:.0f} days in stage"}] for a in age]
        counter = [[{"feature": "amount", "value": m, "effect": -m / 10_000, "text": f"amount {m:.0f}"}]
                   for m in amount]
        return pd.DataFrame({
            "deal_id": ids, "as_of": features["as_of"].to_numpy(), "cold_risk": cold,
            "close_probability": close, "close_probability_90d": [c / 2 for c in close], "slip_risk": np.nan,
            "likely_close_date": pd.NaT, "risk_band": ["high" if c >= 0.6 else "low" for c in cold],
            "expected_value": amount * close, "reasons": reasons, "counter_reasons": counter,
        })

    def timing_curves(self, features: pd.DataFrame) -> None:
        """No timing model."""
        return None


def make_history() -> DealHistory:
    deals = pd.DataFrame({
        "deal_id": ["d1", "d2", "d3", "d4", "d5", "d6", "q1"],
        "pipeline": ["P", "P", "P", "P", "P", "P", "Q"],
        "owner": ["Ann", "Bob", "ann", "Cat", "Ann", "Bob", "Dan"],
        "team": ["East", "West", "East", "West", "East", "West", "North"],
        "amount": ["1000", "10000", "5000", "2000", "700", "800", "100"],
        "created_at": ["2024-01-15", "2024-01-01", "2024-01-10", "2024-01-20", "2024-01-05", "2024-02-20",
                       "2024-01-01"],
        "expected_close_date": ["2024-03-20", "2024-02-01", "2024-04-15", "2024-03-01", "", "", ""],
    })
    stage_changes = pd.DataFrame(
        [("d1", "Lead", "2024-01-15"), ("d1", "Demo", "2024-02-20"),
         ("d2", "Lead", "2024-01-01"),
         ("d3", "Lead", "2024-01-10"), ("d3", "Proposal", "2024-02-01"), ("d3", "Demo", "2024-02-25"),
         ("d4", "Lead", "2024-01-20"), ("d4", "Demo", "2024-02-01"),
         ("d5", "Proposal", "2024-01-05"), ("d5", "Won", "2024-02-25"),
         ("d6", "Lead", "2024-02-20"), ("q1", "Intro", "2024-01-01")],
        columns=["deal_id", "stage", "changed_at"],
    )
    activities = pd.DataFrame([("d1", "call", "2024-02-21")], columns=["deal_id", "type", "occurred_at"])
    field_changes = pd.DataFrame(
        [("d1", "amount", "1500", "2024-02-12"), ("d4", "expected_close_date", "2024-03-31", "2024-02-15")],
        columns=["deal_id", "field", "value", "changed_at"],
    )
    limits = {"Lead": 10, "Demo": 10, "Proposal": 10}
    pipelines: dict[str, dict[str, Any]] = {
        "P": {"stages": ["Lead", "Demo", "Proposal"], "won": ["Won"], "lost": ["Lost"],
              "stale_after_days": limits},
        "Q": {"stages": ["Intro"], "won": ["Won"], "lost": ["Lost"]},
    }
    return DealHistory.from_frames(deals, stage_changes, activities, field_changes, pipelines, source="test")


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    keys = {"manager_p": ("manager", ["P"]), "manager_q": ("manager", ["Q"]),
         "integration": ("integration", ["*"])}
    with stand_in_service(tmp_path_factory.mktemp("home"), make_history(), keys, StandInBundle()) as service:
        yield service


def get(env: dict[str, Any], path: str, key: str = "manager_p", **headers: str) -> Any:
    return env["client"].get(path, headers={"Authorization": f"Bearer {env['keys'][key]}", **headers})


def ids(body: dict[str, Any]) -> list[str]:
    return [d["deal_id"] for d in body["deals"]]


def test_going_cold_ranks_by_value_at_risk_and_leaves_dead_deals_out(env: dict[str, Any]) -> None:
    body = get(env, f"/v1/pipelines/P/at-risk?as_of={AS_OF}").json()
    # amount × close probability × cold risk: d1 1500×0.5×0.8 = 600 (amount raised on 02-12),
    # d4 2000×0.3×0.65 = 390, d6 800×0.4×0.7 = 224, d3 5000×0.01×0.5 = 25. d5 is won.
    # d2 (10,000 × 0.01 × 0.9 = 90) is dead: close probability 1% < 2% and 60 days in Lead > 2 × 10.
    assert ids(body) == ["d1", "d4", "d6", "d3"]
    assert [d["value_at_risk"] for d in body["deals"]] == pytest.approx([600, 390, 224, 25])
    assert body["total"] == 4 and body["model_version"] == "7"
    assert [d["stage_limit_days"] for d in body["deals"]] == [10, 10, 10, 10]
    # d3 is as unlikely as d2 to be won but only 5 days in Demo: not stalled, so still in the list.
    assert body["deals"][3]["days_in_stage"] == pytest.approx(5.0)


def test_stale_lists_the_dead_deals_apart(env: dict[str, Any]) -> None:
    body = get(env, f"/v1/pipelines/P/stale?as_of={AS_OF}").json()
    assert ids(body) == ["d2"] and body["total"] == 1 and body["model_version"] == "7"
    dead = body["deals"][0]
    assert dead["days_in_stage"] == pytest.approx(60.0) and dead["close_probability"] == 0.01
    rows = list(csv.DictReader(io.StringIO(get(env, f"/v1/pipelines/P/stale?as_of={AS_OF}",
                                                Accept="text/csv").text)))
    assert [r["deal_id"] for r in rows] == ["d2"]


@pytest.mark.parametrize(
    ("sort", "expected"),
    [
        ("value_at_risk", ["d1", "d4", "d6", "d3"]),
        ("cold_risk", ["d1", "d6", "d4", "d3"]),
        ("amount", ["d3", "d4", "d1", "d6"]),
        ("close_date", ["d1", "d4", "d3", "d6"]),  # d4 pushed to 03-31; d6 has no date: last
        ("days_in_stage", ["d4", "d1", "d6", "d3"]),  # 29, 10, 10 (tie: by id), 5
    ],
)
def test_at_risk_sorts(env: dict[str, Any], sort: str, expected: list[str]) -> None:
    assert ids(get(env, f"/v1/pipelines/P/at-risk?as_of={AS_OF}&sort={sort}").json()) == expected


def test_an_unknown_sort_is_refused(env: dict[str, Any]) -> None:
    res = get(env, f"/v1/pipelines/P/at-risk?as_of={AS_OF}&sort=risk")
    assert res.status_code == 422 and "value_at_risk" in res.text


def test_changes_since_a_date(env: dict[str, Any]) -> None:
    body = get(env, f"/v1/pipelines/P/changes?since=2024-02-10&until={AS_OF}").json()
    assert body["model_version"] == "7"
    pushed = body["close_date_pushed"]
    assert [(c["deal_id"], c["days_pushed"]) for c in pushed] == [("d4", 30.0)]
    assert pushed[0]["close_date_before"].startswith("2024-03-01")
    assert pushed[0]["close_date_after"].startswith("2024-03-31")
    assert [(c["deal_id"], c["amount_before"], c["amount_after"], c["change"])
            for c in body["amount_changed"]] == [("d1", 1000.0, 1500.0, 500.0)]
    moves = {m["deal_id"]: (m["stage_before"], m["stage_after"], m["direction"]) for m in body["stage_moves"]}
    assert moves == {"d1": ("Lead", "Demo", "forward"), "d3": ("Proposal", "Demo", "back"),
                     "d5": ("Proposal", "Won", "won")}
    # d4 turned high on 02-20; d6 did not exist on 02-10; d1 was already high; d2 is dead.
    assert sorted(d["deal_id"] for d in body["newly_at_risk"]) == ["d4", "d6"]


def test_changes_window_must_be_in_order(env: dict[str, Any]) -> None:
    res = get(env, "/v1/pipelines/P/changes?since=2024-03-10&until=2024-03-01")
    assert res.status_code == 422 and "after until" in res.text


def test_score_history_is_weekly_with_what_moved_it(env: dict[str, Any]) -> None:
    body = get(env, f"/v1/deals/d1/score-history?since=2024-02-01&until={AS_OF}").json()
    assert body["model_version"] == "7" and body["deal_id"] == "d1"
    points = body["points"]
    assert [p["as_of"][:10] for p in points] == ["2024-02-02", "2024-02-09", "2024-02-16", "2024-02-23",
                                                 "2024-03-01"]
    assert [p["stage"] for p in points] == ["Lead", "Lead", "Lead", "Demo", "Demo"]
    assert all(p["cold_risk"] == 0.8 and p["close_probability"] == 0.5 for p in points)
    assert points[0]["changes"] == []  # nothing to compare with
    # Days in stage 18 -> 25: +0.07; the amount reason did not move, so it is not a change.
    assert points[1]["changes"] == [{"feature": "stage_age_days", "text": "25 days in stage", "effect": 0.07}]
    # 02-16: a week older (+0.07) and the amount went 1000 -> 1500 on 02-12, which lowers the risk more
    # (counter reason -0.10 -> -0.15: -0.05): both moves, biggest first.
    assert [(c["feature"], c["effect"]) for c in points[2]["changes"]] == [("stage_age_days", 0.07),
                                                                            ("amount", -0.05)]
    # 02-23: moved to Demo on 02-20, days in stage 32 -> 3.
    assert points[3]["changes"][0] == {"feature": "stage_age_days", "text": "3 days in stage",
                                       "effect": -0.29}


def test_score_history_stops_when_the_deal_closes_and_starts_when_it_was_created(env: dict[str, Any]) -> None:
    won = get(env, f"/v1/deals/d5/score-history?since=2024-01-01&until={AS_OF}").json()["points"]
    assert [p["as_of"][:10] for p in won] == ["2024-01-05", "2024-01-12", "2024-01-19", "2024-01-26",
                                              "2024-02-02", "2024-02-09", "2024-02-16", "2024-02-23"]
    new = get(env, f"/v1/deals/d6/score-history?since=2024-01-01&until={AS_OF}").json()["points"]
    assert [p["as_of"][:10] for p in new] == ["2024-02-23", "2024-03-01"]


def test_score_history_bounds_and_visibility(env: dict[str, Any]) -> None:
    long = get(env, "/v1/deals/d1/score-history?since=2024-01-01&until=2030-01-01")
    assert long.status_code == 422 and "at most 160" in long.text
    assert get(env, "/v1/deals/d1/score-history?since=2024-03-02&until=2024-03-01").status_code == 422
    assert get(env, "/v1/deals/nope/score-history").status_code == 404


@pytest.mark.parametrize("path", ["/v1/pipelines/P/stale", "/v1/pipelines/P/changes",
                                  "/v1/deals/d1/score-history"])
def test_outside_the_key_is_not_found_and_integration_may_not_read(env: dict[str, Any], path: str) -> None:
    other = get(env, path, "manager_q")
    assert other.status_code == 404 and "not found" in other.json()["detail"]
    assert get(env, path, "integration").status_code == 403
