"""Live calibration from stored scores: every live score goes to a bounded score history; `dealrisk monitor`
judges those stored scores on the outcomes known since; the state reaches /metrics off the request path."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from typing import Any

import pandas as pd
import pytest
import sqlalchemy as sa
from conftest import World, make_settings, wait_for
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from dealrisk.cli import app
from models.loading import REGISTERED_MODEL
from serving import settings as settings_module
from serving.app import create_app
from serving.score_archive import ScoreArchive
from serving.settings import Settings
from serving.store import Store
from training.monitor import STORED_METHOD


def _scores(deal_ids: list[str], as_of: str, cold: float) -> pd.DataFrame:
    n = len(deal_ids)
    return pd.DataFrame({
        "deal_id": deal_ids, "as_of": pd.Timestamp(as_of, tz="UTC"), "cold_risk": [cold] * n,
        "close_probability": [0.4] * n, "risk_band": ["medium"] * n, "expected_value": [100.0] * n,
        "reasons": [[] for _ in range(n)],
    })


def test_score_history_is_bounded_and_pairs_the_two_models(database: Any) -> None:
    from training.simulate import simulate_history

    store = Store(database.url, schema=database.schema)
    try:
        store.create_schema()
        history = simulate_history(n_deals=6, seed=3)
        store.import_history(history)
        deals = [str(d) for d in history.deals["deal_id"].iloc[:2]]
        store.save_scores(_scores(deals, "2026-01-01T09:00", 0.1), "1", {})
        store.save_scores(_scores(deals, "2026-01-01T15:00", 0.2), "1", {})
        store.save_scores(_scores(deals, "2026-01-02T09:00", 0.3), "1", {})
        archive = ScoreArchive(store)
        history_1 = archive.history("1")
        assert len(history_1) == 4  # two deals, two days: the day's last score replaces earlier ones
        first_day = history_1[history_1["as_of"].dt.day == 1]
        assert set(first_day["cold_risk"]) == {0.2}
        assert set(first_day["as_of"]) == {pd.Timestamp("2026-01-01T15:00", tz="UTC")}

        # A challenger's scores of the same round pair with the champion's; other times do not.
        shadow = _scores(deals, "2026-01-02T09:00", 0.7).drop(columns=["expected_value", "reasons"])
        assert archive.save_challenger_scores(shadow, "2") == 2
        assert archive.save_challenger_scores(_scores(deals[:1], "2026-01-03T09:00", 0.8), "2") == 1
        paired = archive.paired_history("1", "2")
        assert len(paired) == 2 and set(paired["challenger_cold_risk"]) == {0.7}
        assert set(paired["champion_cold_risk"]) == {0.3}
        assert sorted(archive.challenger_scores("2")["cold_risk"]) == [0.7, 0.8]  # the current ones
        assert archive.history("1", role="challenger").empty  # roles never mix

        # The report's stamp moves with a pair stored or a paired deal written, and only then.
        stamp = archive.paired_stamp("1", "2")
        assert archive.paired_stamp("1", "2") == stamp
        store.save_scores(_scores(deals[:1], "2026-01-03T09:00", 0.4), "1", {})  # pairs the 2nd shadow
        assert archive.paired_stamp("1", "2") != stamp and len(archive.paired_history("1", "2")) == 3
        stamp = archive.paired_stamp("1", "2")
        call = pd.DataFrame({"deal_id": deals[:1], "type": ["call"],
                             "occurred_at": [pd.Timestamp("2026-01-04", tz="UTC")]})
        store.add_events(activities=call)
        assert archive.paired_stamp("1", "2") != stamp
        stamp = archive.paired_stamp("1", "2")

        assert archive.prune(retention_days=1, now=datetime(2026, 1, 3, tzinfo=UTC)) == 2
        assert set(archive.history("1")["cold_risk"]) == {0.3, 0.4}
        assert archive.paired_stamp("1", "2") == stamp  # the pruned rows predate every shadow score

        assert archive.get_setting("challenger") is None
        archive.set_setting("challenger", {"model_version": "2"})
        archive.set_setting("challenger", {"model_version": "3"})
        assert archive.get_setting("challenger") == {"model_version": "3"}
        assert archive.delete_setting("challenger") and archive.get_setting("challenger") is None
    finally:
        store.close()


def _run_monitor(world: World, database_url: str, version: str) -> dict:
    env = {
        "DEALRISK_HOME": str(world.home),
        "DEALRISK_DATABASE_URL": database_url,
        "MLFLOW_TRACKING_URI": world.settings.tracking_uri,
    }
    settings_module.get_settings.cache_clear()
    try:
        result = CliRunner().invoke(
            app, ["monitor", "--json", "--model-uri", f"models:/{REGISTERED_MODEL}/{version}"], env=env,
            catch_exceptions=False,
        )
    finally:
        settings_module.get_settings.cache_clear()
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def _gauge(client: TestClient, world: World, version: str) -> dict[str, float]:
    text = client.get("/metrics", headers=world.auth("admin")).text
    pattern = rf'dealrisk_model_monitor_state\{{model_version="{version}",state="(\w+)"\}} ([0-9.]+)'
    return {state: float(value) for state, value in re.findall(pattern, text)}


def test_monitor_judges_stored_live_scores_and_metrics_show_its_state(
    world: World, own_settings: Settings
) -> None:
    # Served: version 2 (no other test monitors it), so its state starts unknown.
    version = world.versions[1]
    settings = make_settings(world, database_url=own_settings.database_url, monitor_refresh_s=0.5,
                             model_uri=f"models:/{REGISTERED_MODEL}/{version}")
    store = Store(own_settings.database_url)
    archive = ScoreArchive(store)
    deals_t = store.table("deals")
    with store.engine.connect() as conn:
        query = sa.select(deals_t.c.deal_id).where(deals_t.c.outcome == "open")
        open_ids = sorted(conn.execute(query).scalars())
    try:
        with TestClient(create_app(settings), raise_server_exceptions=False) as client:
            assert _gauge(client, world, version) == {"ok": 0.0, "watch": 0.0, "retrain": 0.0, "unknown": 1.0}
            wait_for(lambda: set(archive.history(version)["deal_id"]) >= set(open_ids),
                     "the live scores of every open deal in the score history")

            # Outcomes become known for up to 60 deals: half won, half lost, after their stored scores.
            # (deals of the world's history only: tests sharing the world's store may have added others)
            pipe_of = dict(zip(world.history.deals["deal_id"].astype(str), world.history.deals["pipeline"],
                               strict=True))
            closing = [d for d in open_ids if d in pipe_of][:60]
            now = datetime.now(UTC).isoformat()
            events = [{"deal_id": d, "changed_at": now, "event_id": f"outcome-{d}",
                       "stage": (world.history.pipelines[pipe_of[d]].won if i % 2 else
                                 world.history.pipelines[pipe_of[d]].lost)[0]}
                      for i, d in enumerate(closing)]
            res = client.post("/v1/events", json={"stage_changes": events}, headers=world.auth("integration"))
            assert res.status_code == 200, res.text

            # The live scorer stops here (a round in progress finishes first): a round that read these deals
            # as open before the write would otherwise save their scores over the marks below.
            client.app.state.live_scores.stop()  # type: ignore[attr-defined]
            # Mark the stored scores of half the closed deals, so that only a monitor that reads the stored
            # scores (rather than scoring again) can report their mean.
            history_t = store.table("score_history")
            with store.engine.begin() as conn:
                conn.execute(history_t.update().where(history_t.c.deal_id.in_(closing[::2]),
                                                      history_t.c.model_version == version)
                             .values(close_probability=0.987))
            report = _run_monitor(world, own_settings.database_url, version)
            stored = archive.history(version)
            assert report["method"] == STORED_METHOD
            assert report["n_points"] == len(stored)  # every stored score after the training data
            settled = stored[stored["deal_id"].isin(closing)]
            close = report["calibration"]["close"]
            assert close["n_settled"] == len(settled)
            # the probabilities judged are the stored ones, not recomputed
            assert (settled["close_probability"] == 0.987).sum() >= len(closing[::2]) >= 10
            assert close["predicted"] == pytest.approx(settled["close_probability"].mean())
            assert close["observed"] == pytest.approx(settled["deal_id"].isin(closing[1::2]).mean())

            # The service's background refresh (not a request) picks the new report up for /metrics.
            wait_for(lambda: _gauge(client, world, version).get(report["state"]) == 1.0,
                     "the monitor state in /metrics")
            gauge = _gauge(client, world, version)
            assert sum(gauge.values()) == 1.0 and gauge["unknown"] == 0.0
    finally:
        store.close()
