"""The store as the system of record, through the API: pipelines as entities, write-time integrity,
events keyed per deal, bounded inputs. Each test is a bug the store had (issue 8)."""

from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient

from serving.limits import MAX_ATTRIBUTES_PER_DEAL, NAME_LENGTH


def _deal(deal_id: str, pipeline: str, **extra: Any) -> dict[str, Any]:
    return {
        "deal_id": deal_id,
        "pipeline": pipeline,
        "owner": "Integrity Owner",
        "amount": 5000.0,
        "created_at": "2025-03-01T09:00:00Z",
        **extra,
    }


def _post(client: TestClient, path: str, body: dict[str, Any], key: dict[str, str]) -> Any:
    return client.post(path, json=body, headers=key)


def test_moving_created_at_after_stored_events_is_refused_and_reads_keep_working(
    world: Any, client: TestClient
) -> None:
    admin = world.auth("admin")
    assert (
        _post(client, "/v1/deals", {"deals": [_deal("INT-C1", world.pipeline_b)]}, admin).status_code == 200
    )
    call = {"deal_id": "INT-C1", "type": "call", "occurred_at": "2025-03-05T10:00:00Z", "event_id": "c1-call"}
    assert _post(client, "/v1/events", {"activities": [call]}, admin).status_code == 200
    moved = _deal("INT-C1", world.pipeline_b, created_at="2025-04-01T00:00:00Z")
    response = _post(client, "/v1/deals", {"deals": [moved]}, admin)
    assert response.status_code == 422, response.text
    problem = response.json()["problems"][0]
    assert problem["loc"] == "deals[INT-C1].created_at"
    assert "activities event c1-call at 2025-03-05T10:00:00+00:00" in problem["msg"]
    stored = client.get("/v1/deals/INT-C1", headers=admin).json()
    assert stored["created_at"].startswith("2025-03-01T09:00:00")
    # Before, the update answered 200 and every pipeline's at-risk answered 422 from then on.
    for pipeline in (world.pipeline_a, world.pipeline_b):
        at_risk = client.get(f"/v1/pipelines/{pipeline}/at-risk", headers=world.auth("manager"))
        assert at_risk.status_code == 200, at_risk.text


def test_an_event_before_the_deal_was_created_is_refused(world: Any, client: TestClient) -> None:
    admin = world.auth("admin")
    _post(client, "/v1/deals", {"deals": [_deal("INT-E1", world.pipeline_a)]}, admin)
    early = {"deal_id": "INT-E1", "type": "email", "occurred_at": "2025-02-01T00:00:00Z"}
    response = _post(client, "/v1/events", {"activities": [early]}, admin)
    assert response.status_code == 422 and "activities[0].occurred_at" in response.json()["detail"]


def test_a_field_change_with_a_bad_value_is_refused_naming_it_and_nothing_is_stored(
    world: Any, client: TestClient
) -> None:
    admin = world.auth("admin")
    _post(client, "/v1/deals", {"deals": [_deal("INT-F1", world.pipeline_a)]}, admin)
    fine = {"deal_id": "INT-F1", "type": "call", "occurred_at": "2025-03-02T00:00:00Z", "event_id": "f1-ok"}
    bad = {"deal_id": "INT-F1", "field": "amount", "value": "-3", "changed_at": "2025-03-02T00:00:00Z"}
    response = _post(client, "/v1/events", {"activities": [fine], "field_changes": [bad]}, admin)
    assert response.status_code == 422, response.text
    assert "field_changes[0].value" in response.json()["detail"]
    assert "amount value '-3' is not a number ≥ 0" in response.json()["detail"]
    stored = client.get("/v1/deals/INT-F1", headers=admin).json()
    assert stored["amount"] == 5000.0 and not stored["activities"]  # the call in the same request neither


def test_a_pipeline_created_through_the_api_takes_stage_changes(world: Any, client: TestClient) -> None:
    admin, pipeline = world.auth("admin"), "Partner Channel"
    created = _post(client, "/v1/deals", {"deals": [_deal("INT-P1", pipeline)]}, admin)
    assert created.status_code == 200, created.text
    spec = client.get(f"/v1/pipelines/{pipeline}", headers=admin).json()
    assert spec == {
        "name": pipeline,
        "stages": [],
        "won": [],
        "lost": [],
        "stale_after_days": {},
        "inferred": True,
    }
    moves = [
        {"deal_id": "INT-P1", "stage": "Referral", "changed_at": "2025-03-02T00:00:00Z"},
        {"deal_id": "INT-P1", "stage": "Joint Pitch", "changed_at": "2025-03-09T00:00:00Z"},
    ]
    # sent in reverse time order: the spec takes them in order of time, not of arrival
    response = _post(client, "/v1/events", {"stage_changes": moves[::-1]}, admin)
    assert response.status_code == 200, response.text
    later = {"deal_id": "INT-P1", "stage": "Closed Won", "changed_at": "2025-03-20T00:00:00Z"}
    assert _post(client, "/v1/events", {"stage_changes": [later]}, admin).status_code == 200
    spec = client.get(f"/v1/pipelines/{pipeline}", headers=admin).json()
    assert (spec["stages"], spec["won"], spec["inferred"]) == (
        ["Referral", "Joint Pitch"],
        ["Closed Won"],
        True,
    )
    score = client.get(
        "/v1/deals/INT-P1/score", params={"as_of": "2025-03-10T00:00:00Z"}, headers=world.auth("integration")
    )
    assert score.status_code == 200, score.text
    assert score.json()["scores"][0]["stage"] == "Joint Pitch"
    listed = client.get("/v1/pipelines", headers=admin).json()["pipelines"]
    assert {"name": pipeline, "inferred": True}.items() <= next(
        p for p in listed if p["name"] == pipeline
    ).items()


def test_a_given_spec_is_authoritative(world: Any, client: TestClient) -> None:
    admin, pipeline = world.auth("admin"), "Given Line"
    spec = {
        "stages": ["Intro", "Trial"],
        "won": ["Signed"],
        "lost": ["Dropped"],
        "stale_after_days": {"Intro": 5},
    }
    put = client.put(f"/v1/pipelines/{pipeline}", json=spec, headers=admin)
    assert put.status_code == 200, put.text
    assert put.json()["inferred"] is False and put.json()["stages"] == ["Intro", "Trial"]
    # Known by its spec alone (no deal yet), the pipeline's reads find it; one nobody named is not found.
    assert client.get(f"/v1/pipelines/{pipeline}/health", headers=admin).status_code == 200
    assert client.get("/v1/pipelines/Nobody Named/health", headers=admin).status_code == 404
    _post(client, "/v1/deals", {"deals": [_deal("INT-G1", pipeline)]}, admin)
    unknown = {"deal_id": "INT-G1", "stage": "Pilot", "changed_at": "2025-03-03T00:00:00Z"}
    response = _post(client, "/v1/events", {"stage_changes": [unknown]}, admin)
    assert response.status_code == 422
    assert (
        "Pilot" in response.json()["detail"] and "Intro, Trial, Signed, Dropped" in response.json()["detail"]
    )
    ok = {"deal_id": "INT-G1", "stage": "Trial", "changed_at": "2025-03-03T00:00:00Z"}
    assert _post(client, "/v1/events", {"stage_changes": [ok]}, admin).status_code == 200
    # A spec that drops a stage stored deals use would break their reads: refused, nothing changed.
    narrower = {"stages": ["Intro"], "won": ["Signed"], "lost": ["Dropped"]}
    refused = client.put(f"/v1/pipelines/{pipeline}", json=narrower, headers=admin)
    assert refused.status_code == 422 and "'Trial'" in refused.json()["detail"]
    assert client.get(f"/v1/pipelines/{pipeline}", headers=admin).json()["stages"] == ["Intro", "Trial"]
    # Only admins set specs; a key that cannot see the pipeline gets 404 as if it did not exist.
    assert (
        client.put(f"/v1/pipelines/{pipeline}", json=spec, headers=world.auth("manager")).status_code == 403
    )
    assert client.get(f"/v1/pipelines/{pipeline}", headers=world.auth("manager_a")).status_code == 404
    bad = client.put(f"/v1/pipelines/{pipeline}", json={"stages": ["A", "A"]}, headers=admin)
    assert bad.status_code == 422


def test_an_event_id_is_unique_per_deal_not_across_pipelines(world: Any, client: TestClient) -> None:
    a_deal, b_deal = world.deal_in(world.pipeline_a), world.deal_in(world.pipeline_b)
    b_event = {
        "deal_id": b_deal,
        "type": "meeting",
        "occurred_at": "2026-01-02T00:00:00Z",
        "event_id": "shared-7",
    }
    first = _post(client, "/v1/events", {"activities": [b_event]}, world.auth("integration"))
    assert first.status_code == 200 and first.json()["inserted"] == 1
    # A key limited to pipeline A uses the same id for its own deal: stored, and nothing tells it
    # that a deal of pipeline B used that id (before: "duplicates: 1" and the event was lost).
    a_event = {**b_event, "deal_id": a_deal, "type": "call"}
    response = _post(client, "/v1/events", {"activities": [a_event]}, world.auth("integration_a"))
    assert response.json() == {"inserted": 1, "duplicates": 0, "updated": 0}
    ids = [
        a["event_id"]
        for a in client.get(f"/v1/deals/{a_deal}", headers=world.auth("admin")).json()["activities"]
    ]
    assert "shared-7" in ids
    # The same id again with other content is a conflict, naming only the caller's own deal.
    changed = {**a_event, "type": "email"}
    conflict = _post(client, "/v1/events", {"activities": [changed]}, world.auth("integration_a"))
    assert conflict.status_code == 409, conflict.text
    assert a_deal in conflict.json()["detail"] and b_deal not in conflict.json()["detail"]
    again = _post(client, "/v1/events", {"activities": [a_event]}, world.auth("integration_a"))
    assert again.json() == {"inserted": 0, "duplicates": 1, "updated": 0}


def test_attribute_names_are_bounded_per_pipeline(world: Any, client: TestClient) -> None:
    admin, pipeline = world.auth("admin"), "Attribute Flood"
    first = _deal("INT-F1", pipeline, attributes={f"a{i}": i for i in range(MAX_ATTRIBUTES_PER_DEAL)})
    second = _deal("INT-F2", pipeline, attributes={f"b{i}": "x" for i in range(MAX_ATTRIBUTES_PER_DEAL)})
    assert _post(client, "/v1/deals", {"deals": [first, second]}, admin).status_code == 200  # 200 names
    known = _deal("INT-F3", pipeline, attributes={"a1": 5, "b7": "y"})
    assert _post(client, "/v1/deals", {"deals": [known]}, admin).status_code == 200
    one_past = _deal("INT-F4", pipeline, attributes={"a1": 5, "c0": "new"})
    response = _post(client, "/v1/deals", {"deals": [one_past]}, admin)
    assert response.status_code == 422, response.text
    assert "201 distinct custom attribute names; the limit is 200" in response.json()["detail"]
    assert client.get("/v1/deals/INT-F4", headers=admin).status_code == 404
    too_many = _deal("INT-F5", pipeline, attributes={f"a{i}": i for i in range(MAX_ATTRIBUTES_PER_DEAL + 1)})
    assert _post(client, "/v1/deals", {"deals": [too_many]}, admin).status_code == 422


def test_request_limits_are_the_column_sizes(world: Any, client: TestClient) -> None:
    admin = world.auth("admin")
    longest = "L" * NAME_LENGTH
    ok = _post(client, "/v1/deals", {"deals": [_deal(longest, world.pipeline_a, owner=longest)]}, admin)
    assert ok.status_code == 200, ok.text
    too_long = _post(client, "/v1/deals", {"deals": [_deal(longest + "L", world.pipeline_a)]}, admin)
    assert too_long.status_code == 422 and "deals[0].deal_id" in too_long.json()["detail"]


def test_a_new_pipeline_without_stages_can_be_ranked(world: Any, client: TestClient) -> None:
    # Its deals have no stage yet (an empty category for the model): this answered 500 before.
    admin = world.auth("admin")
    assert _post(client, "/v1/deals", {"deals": [_deal("INT-N1", "No Stages Yet")]}, admin).status_code == 200
    response = client.get(
        "/v1/pipelines/No Stages Yet/at-risk",
        params={"as_of": "2025-03-05T00:00:00Z"},
        headers=world.auth("manager"),
    )
    assert response.status_code == 200, response.text
    assert [d["deal_id"] for d in response.json()["deals"]] == ["INT-N1"]


def test_a_stage_outside_a_given_spec_is_named_by_its_place_in_the_request_and_nothing_is_stored(
    world: Any, client: TestClient
) -> None:
    admin, pipeline = world.auth("admin"), "Given Path Line"
    spec = {"stages": ["Intro", "Trial"], "won": ["Signed"], "lost": ["Dropped"]}
    assert client.put(f"/v1/pipelines/{pipeline}", json=spec, headers=admin).status_code == 200
    _post(client, "/v1/deals", {"deals": [_deal("INT-GP1", pipeline)]}, admin)
    call = {"deal_id": "INT-GP1", "type": "call", "occurred_at": "2025-03-02T00:00:00Z", "event_id": "gp1-c"}
    unknown = {"deal_id": "INT-GP1", "stage": "Pilot", "changed_at": "2025-03-03T00:00:00Z"}
    # the activity comes first in the body: the request's one stage change still meets the spec
    response = _post(client, "/v1/events", {"activities": [call], "stage_changes": [unknown]}, admin)
    assert response.status_code == 422, response.text
    assert [p["loc"] for p in response.json()["problems"]] == ["stage_changes[0].stage"]
    stored = client.get("/v1/deals/INT-GP1", headers=admin).json()
    assert stored["activities"] == [] and stored["stage_changes"] == []
