"""The service gives the database's query planner the store's statistics when it starts (and when the
store has grown since): without them SQLite ranks the at-risk list through the live scores' wide rows,
about three times slower at 100,000 deals (docs/storage.md, the live at-risk and stale lists)."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

from serving.app import create_app
from tests.serving.conftest import make_settings


def _statistics(path: Path) -> int:
    with sqlite3.connect(path) as conn:
        if not conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'sqlite_stat1'").fetchone():
            return 0
        return int(conn.execute("SELECT count(*) FROM sqlite_stat1 WHERE tbl = 'deals'").fetchone()[0])


def test_a_started_service_takes_the_planner_statistics_of_a_store_that_has_none(
    world: Any, tmp_path: Path
) -> None:
    copy = tmp_path / "no-stats.db"
    with sqlite3.connect(world.settings.database_url.removeprefix("sqlite:///")) as src, \
            sqlite3.connect(copy) as dst:
        src.backup(dst)
        dst.execute("DROP TABLE IF EXISTS sqlite_stat1")  # a store grown through the API, never imported
    assert _statistics(copy) == 0
    settings = make_settings(world, database_url=f"sqlite:///{copy}", live_score_max_age_s=0)
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        assert client.get("/healthz").status_code == 200
        deadline = time.monotonic() + 60  # a bounded wait for the background loop, not a timing check
        while _statistics(copy) == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
    assert _statistics(copy) > 0, "the service never took the planner's statistics"
