"""POST /v1/score and GET /v1/deals/{id}/score: roles, pipeline scoping, inline == stored, bad input."""

from __future__ import annotations

import copy
import json
from typing import Any

import pandas as pd
import pytest
from fastapi.testclient import TestClient


def _as_of(world: Any) -> str:
    return str(world.history.end_time.isoformat())


def test_inline_and_stored_scoring_of_the_same_deal_agree(world: Any, client: TestClient) -> None:
    deal_id = world.deal_in(world.pipeline_a)
    as_of = _as_of(world)
    inline = client.post("/v1/score", json={"as_of": as_of, "deals": [world.inline_deal(deal_id)]},
                         headers=world.auth("integration"))
    stored = client.get(f"/v1/deals/{deal_id}/score", params={"as_of": as_of}, headers=world.auth("manager"))
    assert inline.status_code == 200, inline.text
    assert stored.status_code == 200, stored.text
    a, b = inline.json(), stored.json()
    assert a["model_version"] == b["model_version"] == world.versions[0]
    assert "closed deals" in a["data_note"]  # how much history the model stands on, in plain words
    assert a["scores"] == b["scores"]
    score = a["scores"][0]
    assert 0 <= score["cold_risk"] <= 1 and 0 <= score["close_probability"] <= 1
    assert 0 <= score["close_probability_90d"] <= score["close_probability"]
    assert score["slip_risk"] is None or 0 <= score["slip_risk"] <= 1
    assert score["likely_close_date"] is None or score["likely_close_date"] >= as_of[:10]
    assert score["risk_band"] in {"high", "medium", "low"}
    assert score["reasons"]
    assert all({"feature", "value", "effect", "text"} <= set(r) for r in score["reasons"])
    assert all(r["effect"] > 0 for r in score["reasons"])
    assert all(r["effect"] < 0 for r in score["counter_reasons"])


def test_batch_mixing_pipelines_scores_only_the_keys_pipeline(world: Any, client: TestClient) -> None:
    a_id, b_id = world.deal_in(world.pipeline_a), world.deal_in(world.pipeline_b)
    body = {"as_of": _as_of(world), "deals": [world.inline_deal(b_id), world.inline_deal(a_id)]}
    response = client.post("/v1/score", json=body, headers=world.auth("integration_a"))
    assert response.status_code == 200, response.text
    payload = response.json()
    assert [s["deal_id"] for s in payload["scores"]] == [a_id]
    assert payload["errors"] == [{"index": 0, "deal_id": b_id, "status": 404, "detail": "deal not found"}]


def test_stored_deal_outside_the_keys_pipelines_is_404_like_a_missing(world: Any, client: TestClient) -> None:
    b_id = world.deal_in(world.pipeline_b)
    hidden = client.get(f"/v1/deals/{b_id}/score", headers=world.auth("integration_a"))
    missing = client.get("/v1/deals/NO-SUCH-DEAL/score", headers=world.auth("integration_a"))
    assert hidden.status_code == missing.status_code == 404
    assert hidden.json() == missing.json()
    a_id = world.deal_in(world.pipeline_a)
    assert client.get(f"/v1/deals/{a_id}/score", headers=world.auth("integration_a")).status_code == 200


def test_stored_score_defaults_to_now_and_names_the_version(world: Any, client: TestClient) -> None:
    """Without `as_of` the deal is scored at the request's wall-clock time, not at the end of the data.

    The fixture history ends in 2025-12, far before the clock: a default taken from the data would answer
    an `as_of` outside the window around the request, and a different score.
    """
    deal_id = world.deal_in(world.pipeline_a)
    before = pd.Timestamp.now(tz="UTC")
    response = client.get(f"/v1/deals/{deal_id}/score", headers=world.auth("admin"))
    after = pd.Timestamp.now(tz="UTC")
    assert response.status_code == 200, response.text
    payload = response.json()
    assert payload["model_version"] == world.versions[0]
    assert world.history.end_time < before - pd.Timedelta(days=30)  # the premise of this test
    as_of = pd.Timestamp(payload["as_of"])
    assert before <= as_of <= after
    assert before <= pd.Timestamp(payload["scores"][0]["as_of"]) <= after
    explicit_now = client.get(f"/v1/deals/{deal_id}/score", params={"as_of": as_of.isoformat()},
                              headers=world.auth("admin")).json()
    at_data_end = client.get(f"/v1/deals/{deal_id}/score", params={"as_of": _as_of(world)},
                             headers=world.auth("admin")).json()
    assert explicit_now["scores"] == payload["scores"]
    assert at_data_end["scores"][0]["cold_risk"] != payload["scores"][0]["cold_risk"]


@pytest.mark.parametrize(
    ("headers", "status"),
    [({}, 401), ({"Authorization": "Bearer nope"}, 401), ({"Authorization": "Basic abc"}, 401)],
)
def test_scoring_without_a_valid_key_is_401(world: Any, client: TestClient, headers: dict[str, str],
                                            status: int) -> None:
    body = {"deals": [world.inline_deal(world.deal_in(world.pipeline_a))]}
    response = client.post("/v1/score", json=body, headers=headers)
    assert response.status_code == status
    assert response.headers["www-authenticate"] == "Bearer"


def test_revoked_key_is_401_and_manager_may_not_post_scores(world: Any, client: TestClient) -> None:
    body = {"deals": [world.inline_deal(world.deal_in(world.pipeline_a))]}
    assert client.post("/v1/score", json=body, headers=world.auth("revoked")).status_code == 401
    assert client.post("/v1/score", json=body, headers=world.auth("manager")).status_code == 403
    assert client.post("/v1/score", json=body, headers=world.auth("admin")).status_code == 200


def test_a_bad_key_is_refused_before_a_bad_body_to_score(world: Any, client: TestClient) -> None:
    # The route checks its key in the hop that scores: a body the schema refuses must still answer as the
    # key deserves first (401 / 403), never tell a caller without a valid key what its body lacks.
    deal = copy.deepcopy(world.inline_deal(world.deal_in(world.pipeline_a)))
    deal["amount"] = -5
    bad = {"deals": [deal]}
    assert client.post("/v1/score", json=bad).status_code == 401
    assert client.post("/v1/score", json=bad, headers=world.auth("revoked")).status_code == 401
    wrong = {"Authorization": "Bearer drk_nokey_notakey"}
    assert client.post("/v1/score", json=bad, headers=wrong).status_code == 401
    assert client.post("/v1/score", json=bad, headers=world.auth("manager")).status_code == 403
    invalid = client.post("/v1/score", json=bad, headers=world.auth("integration"))
    assert invalid.status_code == 422 and "deals[0].amount" in invalid.json()["detail"]


def _one_deal(world: Any) -> dict[str, Any]:
    return copy.deepcopy(world.inline_deal(world.deal_in(world.pipeline_a)))


def _post(client: TestClient, world: Any, deal: dict[str, Any]) -> Any:
    return client.post("/v1/score", content=json.dumps({"deals": [world.inline_deal(world.deal_in(
        world.pipeline_a)), deal]}), headers={**world.auth("admin"), "Content-Type": "application/json"})


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (lambda d: d.update(amount=float("nan")), "deals[1].amount"),
        (lambda d: d.update(amount=-5), "deals[1].amount"),
        (lambda d: d.update(colour="red"), "deals[1].colour"),
        (lambda d: d.update(created_at="last tuesday"), "deals[1].created_at"),
        (lambda d: d["activities"].append({"type": "fax", "occurred_at": "2025-01-01"}),
         "deals[1].activities"),
    ],
    ids=["nan", "negative", "unknown-field", "bad-time", "bad-enum"],
)
def test_bad_values_answer_422_naming_the_field(world: Any, client: TestClient, change: Any,
                                                field: str) -> None:
    deal = _one_deal(world)
    change(deal)
    response = _post(client, world, deal)
    assert response.status_code == 422, response.text
    assert field in response.json()["detail"]


def test_stage_change_before_creation_is_422_naming_the_event(world: Any, client: TestClient) -> None:
    deal = _one_deal(world)
    deal["stage_changes"].insert(0, {"stage": deal["stage_changes"][0]["stage"],
                                     "changed_at": "2000-01-01T00:00:00Z"})
    response = _post(client, world, deal)
    assert response.status_code == 422, response.text
    assert "deals[1].stage_changes[0].changed_at" in response.json()["detail"]
    assert "before the deal was created" in response.json()["detail"]


def test_malformed_json_is_422_not_500(world: Any, client: TestClient) -> None:
    response = client.post("/v1/score", content=b'{"deals": [', headers={
        **world.auth("admin"), "Content-Type": "application/json"})
    assert response.status_code == 422


def test_oversized_body_is_413(world: Any, client: TestClient) -> None:
    too_big = b" " * (world.settings.max_body_bytes + 1)
    response = client.post("/v1/score", content=too_big, headers={
        **world.auth("admin"), "Content-Type": "application/json"})
    assert response.status_code == 413


def test_oversized_streamed_body_without_length_is_413(world: Any, client: TestClient) -> None:
    chunk = b" " * 65536

    def body() -> Any:
        for _ in range(world.settings.max_body_bytes // len(chunk) + 2):
            yield chunk

    response = client.post("/v1/score", content=body(), headers={
        **world.auth("admin"), "Content-Type": "application/json"})
    assert response.status_code == 413


@pytest.mark.parametrize("route", ["/v1/score", "/v1/deals"])
def test_batch_over_the_schema_limit_is_413_naming_the_limit(
    world: Any, client: TestClient, route: str
) -> None:
    deal = world.inline_deal(world.deal_in(world.pipeline_a))
    slim = {k: v for k, v in deal.items() if k not in ("stage_changes", "activities", "field_changes")}
    response = client.post(route, json={"deals": [slim] * 1001}, headers=world.auth("admin"))
    assert response.status_code == 413, response.text
    assert response.json()["detail"] == "1001 deals in one request; the limit is 1000"


def test_batch_over_the_configured_limit_is_413_too(world: Any) -> None:
    from serving.app import create_app
    from tests.serving.conftest import make_settings

    deals = [world.inline_deal(str(d)) for d in world.history.deals["deal_id"].iloc[:3]]
    with TestClient(create_app(make_settings(world, max_batch_deals=2)),
                    raise_server_exceptions=False) as small:
        two = small.post("/v1/score", json={"deals": deals[:2]}, headers=world.auth("admin"))
        three = small.post("/v1/score", json={"deals": deals}, headers=world.auth("admin"))
    assert two.status_code == 200, two.text
    assert three.status_code == 413, three.text
    assert three.json()["detail"] == "3 deals in one request; the limit is 2"


def test_as_of_before_creation_is_a_per_item_error(world: Any, client: TestClient) -> None:
    deal = world.inline_deal(world.deal_in(world.pipeline_a))
    response = client.post("/v1/score", json={"as_of": "2000-01-01", "deals": [deal]},
                           headers=world.auth("admin"))
    assert response.status_code == 200, response.text
    assert response.json()["scores"] == []
    assert response.json()["errors"][0]["status"] == 422


@pytest.mark.parametrize(
    ("change", "loc", "message"),
    [
        (lambda d: d.update(created_at="1500-01-01"), "deals[1].created_at", "time out of range"),
        (lambda d: d["field_changes"].append(
            {"field": "amount", "value": "-3", "changed_at": d["created_at"]}),
         "deals[1].field_changes[0].value", "amount value '-3' is not a number ≥ 0"),
        (lambda d: d["stage_changes"].append({"stage": "Nowhere", "changed_at": d["created_at"]}),
         "deals[1].stage_changes[{last}].stage", "stage 'Nowhere' is not a stage of pipeline"),
        (lambda d: d["activities"].extend([
            {"type": "call", "occurred_at": d["created_at"], "event_id": "same"},
            {"type": "email", "occurred_at": d["created_at"], "event_id": "same"}]),
         "deals[1].activities[{last}].event_id", "duplicate event_id 'same'"),
    ],
    ids=["time-out-of-range", "negative-amount-change", "unknown-stage", "duplicate-event-id"],
)
def test_one_validation_names_the_item_and_keeps_the_error_shape(
    world: Any, client: TestClient, change: Any, loc: str, message: str
) -> None:
    """Edge rules (pydantic) and cross-row rules (the history checks) answer the same 422 shape."""
    deal = _one_deal(world)
    deal["field_changes"] = []
    change(deal)
    last = {"stage_changes": len(deal["stage_changes"]) - 1, "activities": len(deal["activities"]) - 1}
    loc = loc.format(last=last["stage_changes"] if "stage_changes" in loc else last["activities"])
    response = _post(client, world, deal)
    assert response.status_code == 422, response.text
    body = response.json()
    assert set(body) == {"detail", "problems"} and isinstance(body["detail"], str)
    [problem] = [p for p in body["problems"] if p["loc"] == loc]
    assert message in problem["msg"]


def test_a_422_raised_by_a_route_has_the_schema_errors_shape(world: Any, client: TestClient) -> None:
    """Route-level checks answer {"detail", "problems": [{"loc", "msg"}]} like pydantic's 422s."""
    deal_id = world.deal_in(world.pipeline_a)
    response = client.get(f"/v1/deals/{deal_id}/score", params={"as_of": "2001-01-01"},
                          headers=world.auth("admin"))
    assert response.status_code == 422, response.text
    body = response.json()
    assert body["problems"] == [{"loc": "as_of", "msg": body["detail"]}]
    assert body["detail"].startswith("as_of 2001-01-01T00:00:00+00:00 is before the deal was created")
    schema_error = client.get(f"/v1/deals/{deal_id}/score", params={"as_of": "yesterday"},
                              headers=world.auth("admin"))
    assert schema_error.status_code == 422
    assert set(schema_error.json()) == set(body) == {"detail", "problems"}
    assert schema_error.json()["problems"][0]["loc"] == "query.as_of"


def _deal_closed_at(world: Any, outcome: str, t: pd.Timestamp) -> str:
    """A deal of pipeline A whose outcome as of `t` is `outcome` (won / lost)."""
    from features.stages import deal_states_at
    from models.scoring import points_at

    deals = world.history.deals
    ids = deals.loc[deals["pipeline"] == world.pipeline_a, "deal_id"].astype(str).tolist()
    states = deal_states_at(world.history, points_at(ids, t))
    return next(d for d, s in zip(ids, states, strict=True) if s == outcome)


@pytest.mark.parametrize(("outcome", "probability"), [("won", 1.0), ("lost", 0.0)])
def test_a_deal_won_or_lost_as_of_t_says_so_instead_of_a_prediction(
    world: Any, client: TestClient, outcome: str, probability: float
) -> None:
    """A deal closed as of t has a known P(eventually won): 1 or 0, and nothing left to predict."""
    t = world.history.end_time
    deal_id = _deal_closed_at(world, outcome, t)
    stored = client.get(f"/v1/deals/{deal_id}/score", params={"as_of": t.isoformat()},
                        headers=world.auth("manager"))
    inline = client.post("/v1/score", json={"as_of": t.isoformat(), "deals": [world.inline_deal(deal_id)]},
                         headers=world.auth("integration"))
    assert stored.status_code == inline.status_code == 200, (stored.text, inline.text)
    assert stored.json()["scores"] == inline.json()["scores"]
    score = stored.json()["scores"][0]
    assert score["outcome"] == outcome
    assert score["close_probability"] == probability
    assert score["cold_risk"] is None and score["risk_band"] is None
    assert score["close_probability_90d"] is None and score["slip_risk"] is None
    assert score["likely_close_date"] is None
    assert score["reasons"] == [] and score["counter_reasons"] == []
    amount = score["expected_value"] if outcome == "won" else 0.0
    assert score["expected_value"] == amount and (outcome == "lost" or amount > 0)


def test_an_open_deal_is_scored_and_named_open(world: Any, client: TestClient) -> None:
    deal_id = world.deal_in(world.pipeline_a)
    response = client.get(f"/v1/deals/{deal_id}/score", params={"as_of": _as_of(world)},
                          headers=world.auth("manager"))
    score = response.json()["scores"][0]
    assert score["outcome"] == "open"
    assert 0 < score["close_probability"] < 1 and score["risk_band"] in {"high", "medium", "low"}
