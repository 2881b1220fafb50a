"""The fixture world of the service tests, built once per session.

A temporary DEALRISK_HOME with a SQLite store and a SQLite MLflow tracking store, a small simulated
history imported into the store, two model versions trained on it (version 1 is the champion, version 2
a candidate with different numbers), and API keys for every role plus keys limited to one pipeline.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from fastapi.testclient import TestClient

from features.history import DealHistory
from models.loading import CHAMPION_ALIAS, REGISTERED_MODEL
from serving.app import create_app
from serving.settings import Settings
from serving.store import Store

N_DEALS = 300
SEED = 7


@dataclass
class World:
    """Everything the service tests share."""

    home: Path
    settings: Settings
    history: DealHistory
    versions: list[str]  # registered versions, in order; versions[0] is the champion at start
    keys: dict[str, str]  # name -> plaintext key
    pipeline_a: str
    pipeline_b: str

    def auth(self, name: str) -> dict[str, str]:
        """Authorization header for one of the fixture keys."""
        return {"Authorization": f"Bearer {self.keys[name]}"}

    def set_champion(self, version: str) -> None:
        """Move the champion alias (what `promote` does)."""
        from mlflow import MlflowClient

        client = MlflowClient(tracking_uri=self.settings.tracking_uri)
        client.set_registered_model_alias(REGISTERED_MODEL, CHAMPION_ALIAS, version)

    def deal_in(self, pipeline: str, open_only: bool = True) -> str:
        """A deal id of the given pipeline (open at the end of the data when possible)."""
        deals = self.history.deals
        ids = deals.loc[deals["pipeline"] == pipeline, "deal_id"]
        if open_only:
            from models.scoring import open_deal_points

            open_ids = set(open_deal_points(self.history, self.history.end_time)["deal_id"])
            candidates = [d for d in ids if d in open_ids]
            if candidates:
                return str(candidates[0])
        return str(ids.iloc[0])

    def inline_deal(self, deal_id: str) -> dict[str, Any]:
        """A stored deal and its whole history as the inline JSON `POST /v1/score` takes."""
        return inline_deal(self.history, deal_id)


def inline_deal(history: DealHistory, deal_id: str) -> dict[str, Any]:
    """A deal of `history` and its whole history as the inline JSON `POST /v1/score` takes."""
    sub = history.subset([deal_id])
    deal = sub.deals.iloc[0]

    def iso(value: Any) -> str | None:
        return None if pd.isna(value) else pd.Timestamp(value).isoformat()

    def text(value: Any) -> Any:
        return None if pd.isna(value) else str(value)

    body: dict[str, Any] = {
        "deal_id": str(deal["deal_id"]),
        "pipeline": str(deal["pipeline"]),
        "owner": str(deal["owner"]),
        "amount": float(deal["amount"]),
        "created_at": iso(deal["created_at"]),
        "team": text(deal.get("team")),
        "account": text(deal.get("account")),
        "expected_close_date": iso(deal.get("expected_close_date")),
        "currency": text(deal.get("currency")),
        "attributes": {c: _json_value(deal[c]) for c in sub.attribute_columns},
        "stage_changes": [
            {"stage": str(r.stage), "changed_at": iso(r.changed_at), "event_id": text(r.event_id)}
            for r in sub.stage_changes.itertuples()
        ],
        "activities": [
            {"type": str(r.type), "occurred_at": iso(r.occurred_at), "direction": text(r.direction),
             "event_id": text(r.event_id)}
            for r in sub.activities.itertuples()
        ],
        "field_changes": [
            {"field": str(r.field), "value": str(r.value), "changed_at": iso(r.changed_at),
             "event_id": text(r.event_id)}
            for r in sub.field_changes.itertuples()
        ],
    }
    return body


def _settings(home: Path, **overrides: Any) -> Settings:
    base = Settings(
        home=home,
        database_url=f"sqlite:///{home / 'dealrisk.db'}",
        tracking_uri=f"sqlite:///{home / 'mlflow.db'}",
        model_uri=f"models:/{REGISTERED_MODEL}@{CHAMPION_ALIAS}",
        reload_interval_s=0,  # tests reload explicitly; the watcher has its own test
        max_body_bytes=2 * 1024 * 1024,
        max_batch_deals=1000,
        max_events_per_deal=5000,
    )
    return base.model_copy(update=overrides)


@pytest.fixture(scope="session")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    from training.simulate import simulate_history
    from training.train import TrainConfig, train

    home = tmp_path_factory.mktemp("dealrisk-home")
    old_home = os.environ.get("DEALRISK_HOME")
    old_cwd = Path.cwd()
    os.environ["DEALRISK_HOME"] = str(home)
    # MLflow puts run artifacts under ./mlruns of the working directory: keep them in the temp home.
    os.chdir(home)
    settings = _settings(home)
    history = simulate_history(n_deals=N_DEALS, seed=SEED)
    store = Store(settings.database_url)
    store.create_schema()
    store.import_history(history)
    first = train(history, TrainConfig(seed=0, lightgbm_params={"n_estimators": 25}), settings.tracking_uri)
    second = train(
        history,
        TrainConfig(seed=1, lightgbm_params={"n_estimators": 60, "num_leaves": 7, "learning_rate": 0.2}),
        settings.tracking_uri,
    )
    assert first.model_version and second.model_version and first.is_champion
    pipelines = sorted(history.pipelines)
    a, b = pipelines[0], pipelines[1]
    keys: dict[str, str] = {}
    for name, role, pipes in [
        ("admin", "admin", ["*"]),
        ("manager", "manager", ["*"]),
        ("integration", "integration", ["*"]),
        ("manager_a", "manager", [a]),
        ("integration_a", "integration", [a]),
        ("revoked", "admin", ["*"]),
    ]:
        plaintext, record = store.create_api_key(role, pipes, name=name)
        keys[name] = plaintext
        if name == "revoked":
            store.revoke_api_key(record.key_id)
    store.close()
    yield World(home, settings, history, [first.model_version, second.model_version], keys, a, b)
    os.chdir(old_cwd)
    if old_home is None:
        os.environ.pop("DEALRISK_HOME", None)
    else:
        os.environ["DEALRISK_HOME"] = old_home


@pytest.fixture(scope="session")
def client(world: World) -> Iterator[TestClient]:
    """One running app on the fixture world, serving the champion (version 1)."""
    with TestClient(create_app(world.settings), raise_server_exceptions=False) as test_client:
        yield test_client


@pytest.fixture
def own_settings(world: Any, tmp_path: Path) -> Any:
    """The world's settings on a private copy of its store."""
    copy = tmp_path / "store-copy.db"
    shutil.copyfile(world.home / "dealrisk.db", copy)
    return make_settings(world, database_url=f"sqlite:///{copy}")


@pytest.fixture
def own_client(own_settings: Any) -> Iterator[TestClient]:
    """An app of the test's own on `own_settings`, for tests that write to the store."""
    with TestClient(create_app(own_settings), raise_server_exceptions=False) as test_client:
        yield test_client


def make_settings(world: World, **overrides: Any) -> Settings:
    """The world's settings with some fields changed (for apps with their own limits or model URI)."""
    return world.settings.model_copy(update=overrides)


def store_copy_without_live_scores(source: Path, copy: Path) -> str:
    """A copy of a SQLite store without its live scores (nor their copies on the deals' rows, revision
    0010), as a store no scorer has run on yet; its URL."""
    with sqlite3.connect(source) as src, sqlite3.connect(copy) as dst:
        src.backup(dst)
        dst.execute("DELETE FROM deal_scores")
        dst.execute("UPDATE deals SET live_close_probability = NULL, live_cold_risk = NULL")
    return f"sqlite:///{copy}"


def _json_value(value: Any) -> Any:
    if pd.isna(value):
        return None
    if hasattr(value, "item"):
        return value.item()
    return value


def wait_for(check: Callable[[], bool], what: str, ceiling_s: float = 300.0) -> None:
    """Poll `check` until it holds; fail naming `what` past a generous ceiling (the machine is shared:
    this is a bound, never a timing assertion)."""
    deadline = time.monotonic() + ceiling_s
    while not check():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.2)
