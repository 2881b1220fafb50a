"""Input the model never saw and events that arrive late, scored end to end through the API."""

from __future__ import annotations

from typing import Any

import pandas as pd
from fastapi.testclient import TestClient

from features.history import DealHistory, PipelineSpec
from serving.store import Store

NEW_PIPELINE = "Partners"  # not among the simulated pipelines the fixture models were trained on


def _new_deal() -> dict[str, Any]:
    return {"deal_id": "NEW-P-1", "pipeline": NEW_PIPELINE, "owner": "Nova Quinn", "amount": 12000.0,
            "created_at": "2025-11-01T09:00:00Z"}


NEW_EVENTS: dict[str, list[dict[str, Any]]] = {
    "stage_changes": [
        {"stage": "Intro", "changed_at": "2025-11-01T09:00:00Z", "event_id": "np-s1"},
        {"stage": "Pilot", "changed_at": "2025-11-20T09:00:00Z", "event_id": "np-s2"},
    ],
    "activities": [
        {"type": "meeting", "direction": "outbound", "occurred_at": "2025-11-21T10:00:00Z",
         "event_id": "np-a1"},
    ],
    "field_changes": [],
}
AS_OF = "2025-12-01T00:00:00Z"


def test_a_pipeline_and_stage_unseen_at_training_get_a_valid_score(
    world: Any, own_settings: Any, own_client: TestClient
) -> None:
    """Unseen categories are encoded as missing: inline and stored scoring answer 200 with the same score."""
    assert NEW_PIPELINE not in world.history.pipelines
    inline = own_client.post("/v1/score", json={"as_of": AS_OF, "deals": [{**_new_deal(), **NEW_EVENTS}]},
                             headers=world.auth("admin"))
    assert inline.status_code == 200, inline.text
    score = inline.json()["scores"][0]
    assert score["pipeline"] == NEW_PIPELINE and score["stage"] == "Pilot"
    assert 0 < score["cold_risk"] < 1 and 0 < score["close_probability"] < 1
    assert score["expected_value"] == 12000.0 * score["close_probability"]
    assert score["risk_band"] in {"high", "medium", "low"}

    # The store learns the new pipeline the way an import does: a validated history with its spec.
    events = {t: pd.DataFrame([{"deal_id": "NEW-P-1", **e} for e in rows]) for t, rows in NEW_EVENTS.items()}
    history = DealHistory.from_frames(
        pd.DataFrame([_new_deal()]), events["stage_changes"], events["activities"],
        pd.DataFrame(columns=["deal_id", "field", "value", "changed_at"]),
        pipelines={NEW_PIPELINE: PipelineSpec(NEW_PIPELINE, ("Intro", "Pilot"), ("Won",), ("Lost",))},
    )
    store = Store(own_settings.database_url)
    try:
        store.import_history(history)
    finally:
        store.close()
    by_id = own_client.get("/v1/deals/NEW-P-1/score", params={"as_of": AS_OF}, headers=world.auth("admin"))
    assert by_id.status_code == 200, by_id.text
    assert by_id.json()["scores"][0]["stage"] == "Pilot"
    for key in ("cold_risk", "close_probability", "risk_band"):
        assert by_id.json()["scores"][0][key] == score[key]
    listed = own_client.get(f"/v1/pipelines/{NEW_PIPELINE}/at-risk", params={"as_of": AS_OF},
                            headers=world.auth("admin"))
    assert listed.status_code == 200, listed.text
    ranked = [(d["deal_id"], d["cold_risk"]) for d in listed.json()["deals"]]
    assert ranked == [("NEW-P-1", score["cold_risk"])]


def _day(n: float) -> str:
    return (pd.Timestamp("2025-06-01T00:00:00Z") + pd.Timedelta(days=n)).isoformat()


def test_a_late_activity_is_placed_by_its_time_not_by_its_arrival(world: Any, own_client: TestClient) -> None:
    """Backfill: an activity dated before stored ones, posted afterwards, counts from its own time.

    The stored deal's score as of day 7 then equals the score of the same history sent in time order,
    and differs from the score before the late event arrived (silent since day 1 vs. since day 5).
    """
    spec = world.history.pipelines[world.pipeline_a]
    deal = {"deal_id": "LATE-1", "pipeline": world.pipeline_a, "owner": "Lee Park", "amount": 8000.0,
            "created_at": _day(0)}
    stages = [{"stage": spec.stages[0], "changed_at": _day(0), "event_id": "late-s1"}]
    on_time = [{"type": "email", "direction": "outbound", "occurred_at": _day(d), "event_id": f"late-a{d}"}
               for d in (1, 10, 20)]
    late = {"type": "call", "direction": "inbound", "occurred_at": _day(5), "event_id": "late-a5"}
    as_of = _day(7)
    admin = world.auth("admin")

    assert own_client.post("/v1/deals", json={"deals": [deal]}, headers=admin).status_code == 200
    # sent newest first, in one request, then the late one in a request of its own
    first = {"stage_changes": [{"deal_id": "LATE-1", **s} for s in stages],
             "activities": [{"deal_id": "LATE-1", **a} for a in reversed(on_time)]}
    assert own_client.post("/v1/events", json=first, headers=admin).status_code == 200
    before = own_client.get("/v1/deals/LATE-1/score", params={"as_of": as_of}, headers=admin).json()
    written = own_client.post("/v1/events", json={"activities": [{"deal_id": "LATE-1", **late}]},
                              headers=admin)
    assert written.status_code == 200 and written.json()["inserted"] == 1, written.text
    after = own_client.get("/v1/deals/LATE-1/score", params={"as_of": as_of}, headers=admin).json()

    in_order = {**deal, "stage_changes": stages, "activities": [on_time[0], late, *on_time[1:]]}
    expected = own_client.post("/v1/score", json={"as_of": as_of, "deals": [in_order]}, headers=admin)
    assert expected.status_code == 200, expected.text
    assert after["scores"] == expected.json()["scores"]
    assert after["scores"][0]["cold_risk"] != before["scores"][0]["cold_risk"]
    stored = own_client.get("/v1/deals/LATE-1", headers=admin).json()
    assert [a["occurred_at"][:10] for a in stored["activities"]] == [
        "2025-06-02", "2025-06-06", "2025-06-11", "2025-06-21"]
