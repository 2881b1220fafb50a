"""An app on a fresh SQLite store of a small history, with a stand-in model: for route tests whose numbers
are checked by hand (the stand-in's scores are fixed per deal, so only the route's own work is tested)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
from fastapi.testclient import TestClient

from features.history import DealHistory
from models.bundle import ScoringBundle
from serving.app import create_app
from serving.deps import get_model
from serving.model_holder import LoadedModel
from serving.settings import Settings
from serving.store import Store


class ScoresAsColumns:
    """For a test's stand-in bundle that defines `score`: the rest of the scoring interface
    (`ScoringBundle.score_columns`, which `models.scoring.score_points` calls, and `OBJECT_COLUMNS`),
    answered from its `score` frame."""

    OBJECT_COLUMNS = ScoringBundle.OBJECT_COLUMNS

    def score(self, features: pd.DataFrame, top_reasons: int = 3, with_curves: bool = False) -> pd.DataFrame:
        raise NotImplementedError

    def score_columns(
        self, features: pd.DataFrame | Mapping[str, Any], top_reasons: int = 3, with_curves: bool = False
    ) -> dict[str, Any]:
        # `score_points` hands the feature columns by name (`models.bundle.Features`), not a frame
        given = features if isinstance(features, pd.DataFrame) else pd.DataFrame(dict(features))
        frame = self.score(given, top_reasons=top_reasons, with_curves=with_curves)
        return {str(c): frame[c].array if isinstance(frame[c].dtype, pd.api.extensions.ExtensionDtype)
                else frame[c].to_numpy() for c in frame.columns}


@contextmanager
def stand_in_service(
    home: Path, history: DealHistory, keys: Mapping[str, tuple[str, list[str]]], bundle: Any,
    **settings_given: Any,
) -> Iterator[dict[str, Any]]:
    """`{"client", "keys"}`: a TestClient on `history` stored under `home`, serving `bundle` as version 7,
    and one plaintext key per name in `keys` (name -> (role, pipelines)); `settings_given` are further
    `Settings` fields."""
    db = f"sqlite:///{home / 'dealrisk.db'}"
    store = Store(db)
    store.create_schema()
    store.import_history(history)
    plaintext = {name: store.create_api_key(role, pipes)[0] for name, (role, pipes) in keys.items()}
    store.close()
    settings = Settings(
        home=home, database_url=db, tracking_uri=f"sqlite:///{home / 'mlflow.db'}",
        model_uri=str(home / "no-model-here"), reload_interval_s=0, max_body_bytes=1_000_000,
        max_batch_deals=100, max_events_per_deal=1000, **settings_given,
    )
    app = create_app(settings)
    model = LoadedModel(bundle, "7", "test", datetime.now(UTC))
    app.dependency_overrides[get_model] = lambda: model
    with TestClient(app) as client:
        yield {"client": client, "keys": plaintext}


@contextmanager
def admin_calls(home: Path, history: DealHistory, bundle: Any,
                **settings_given: Any) -> Iterator[Callable[..., dict[str, Any]]]:
    """`stand_in_service` with one admin key: `call(method, path, **kwargs)`, the JSON body of a request
    with that key, which must answer 200."""
    with stand_in_service(home, history, {"admin": ("admin", ["*"])}, bundle, **settings_given) as env:
        client, auth = env["client"], {"Authorization": f"Bearer {env['keys']['admin']}"}

        def call(method: str, path: str, **kwargs: Any) -> dict[str, Any]:
            answer = client.request(method, path, headers=auth, **kwargs)
            assert answer.status_code == 200, answer.text
            body: dict[str, Any] = answer.json()
            return body

        yield call
