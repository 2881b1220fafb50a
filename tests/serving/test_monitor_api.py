"""`GET /v1/model/monitor`: the report `dealrisk monitor` (a cron job) keeps with the served version."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

from conftest import World
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from dealrisk.cli import app
from serving import settings as settings_module


def _run_monitor(world: World) -> dict:
    env = {
        "DEALRISK_HOME": str(world.home),
        "DEALRISK_DATABASE_URL": world.settings.database_url,
        "MLFLOW_TRACKING_URI": world.settings.tracking_uri,
    }
    settings_module.get_settings.cache_clear()
    try:
        # Other test files write to this shared store while this one runs: a window that starts after
        # all of them keeps "nothing happened since" true whichever worker ran what first.
        tomorrow = (datetime.now(UTC) + timedelta(days=1)).date().isoformat()
        result = CliRunner().invoke(app, ["monitor", "--json", "--since", tomorrow], env=env,
                                    catch_exceptions=False)
    finally:
        settings_module.get_settings.cache_clear()
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_monitor_report_is_served_after_the_cron_job_ran(world: World, client: TestClient) -> None:
    assert client.get("/v1/model/monitor", headers=world.auth("integration")).status_code == 403
    missing = client.get("/v1/model/monitor", headers=world.auth("manager"))  # only this test monitors
    assert missing.status_code == 404 and "run `dealrisk monitor`" in missing.json()["detail"]

    # The champion was trained on the whole store, so nothing has happened since: ok, and it says why.
    report = _run_monitor(world)
    assert report["model_version"] == world.versions[0]
    assert report["state"] == "ok" and report["n_points"] == 0
    assert "no open deals after" in report["reasons"][0]

    served = client.get("/v1/model/monitor", headers=world.auth("manager"))
    assert served.status_code == 200, served.text
    assert served.json() == report
    assert client.get("/v1/model/monitor", headers=world.auth("admin")).json()["state"] == "ok"
