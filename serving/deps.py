"""Request dependencies, as `Annotated` aliases, in one place.

Every route takes what it needs from here, so tests can swap any of them with
`app.dependency_overrides` and other route modules (pipelines, the manager page) share the same names:

- `SettingsDep`   -> `Settings` the app was created with (`app.state.settings`).
- `StoreDep`      -> the app's `Store` (`app.state.store`).
- `ModelDep`      -> a `LoadedModel` snapshot (`bundle`, `version`, `loaded_at`, `metadata`) taken once at
                     the start of the request; use it for the whole request so one response never mixes
                     versions. Answers 503 "no model loaded: <reason>" when no model could ever be loaded.
- `FeatureBuilderDep` -> a `FeatureBuilder` fitted on the whole store (refitted lazily after writes);
                     None while the store holds no deals (`model_holder.builder_for` then fits on the
                     scored history).

The four above only read `app.state`, so they are `async def`: FastAPI runs a plain `def` dependency in
its threadpool, one thread hop each, which cost a one-deal `POST /v1/score` more than its validation (the
first fit of the builder, which can take seconds, still runs in the threadpool). The key check queries the
store, so it stays a plain `def`.
- `require_role(*roles)` -> a dependency returning the caller's `ApiKey` (Authorization: Bearer <key>);
                     401 with WWW-Authenticate when missing/wrong/revoked, 403 when the role is not allowed.
  Ready-made aliases: `AdminKey` (admin), `ReadKey` (admin, manager), `WriteKey` (admin, integration),
  `AnyKey` (every role).
- `require_role_later(*roles)` -> the same check for an `async` route that does its work in one threadpool
  hop: a `KeyCheck` the route calls first in that hop (`key = check()`); `WriteKeyCheck` (admin,
  integration) for `POST /v1/events`; `ScoreKeyCheck` (admin, integration) for `POST /v1/score`;
  `ReadKeyCheck` (admin, manager) for the at-risk and stale lists,
  which read the key on the list's own connection. Visibility: `key.can_see(pipeline)`; anything
  outside it answers 404 as if absent — use `serving.errors.NotFoundError`.
- `require_visible_pipeline(store, key, pipeline)` -> 404 "pipeline not found" unless the pipeline exists
                     and the key may see it (one indexed lookup, whatever the store's size).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Path, Request
from starlette.concurrency import run_in_threadpool

from features.build import FeatureBuilder
from serving.auth import ApiKey, KeyCheck, require_role, require_role_later
from serving.errors import NotFoundError
from serving.limits import NAME_LENGTH
from serving.model_holder import LoadedModel, ModelHolder, PopulationCache
from serving.schemas import NO_CONTROL_CHARS
from serving.settings import Settings
from serving.store import Store

__all__ = [
    "AdminKey",
    "AnyKey",
    "DealIdPath",
    "PipelinePath",
    "ModelDep",
    "FeatureBuilderDep",
    "KeyCheck",
    "ReadKey",
    "ReadKeyCheck",
    "ScoreKeyCheck",
    "SettingsDep",
    "StoreDep",
    "WriteKey",
    "WriteKeyCheck",
    "after_write",
    "get_model",
    "feature_builder_dep",
    "get_feature_builder",
    "get_settings_dep",
    "get_store",
    "require_role",
    "require_visible_pipeline",
]


async def get_settings_dep(request: Request) -> Settings:
    """The settings the app was created with."""
    settings: Settings = request.app.state.settings
    return settings


async def get_store(request: Request) -> Store:
    """The app's store (opened once in lifespan)."""
    store: Store = request.app.state.store
    return store


async def get_model(request: Request) -> LoadedModel:
    """One snapshot of the served model for this request; 503 when none is loaded."""
    holder: ModelHolder = request.app.state.model_holder
    return holder.require()


def get_feature_builder(request: Request) -> FeatureBuilder | None:
    """The feature builder fitted on the stored history (refitted lazily after writes); None if empty."""
    cache: PopulationCache = request.app.state.population
    return cache.get()


async def feature_builder_dep(request: Request) -> FeatureBuilder | None:
    """`get_feature_builder` as a dependency: at once when a builder was ever fitted (`get` then never
    waits), in the threadpool for the first fit."""
    cache: PopulationCache = request.app.state.population
    if cache.available:
        return cache.get()
    return await run_in_threadpool(get_feature_builder, request)


def after_write(request: Request) -> None:
    """After a committed write: refit the population lazily, and wake the live scorer (the written deals'
    scores are due, so the next read sees them re-scored)."""
    population: PopulationCache = request.app.state.population
    population.mark_dirty()
    live_scores = getattr(request.app.state, "live_scores", None)
    if live_scores is not None:
        live_scores.notify()

# A deal id or pipeline name in the URL: the body's rule (no control characters, at most 256 characters).
def require_visible_pipeline(store: Store, key: ApiKey, pipeline: str) -> None:
    """404 unless the pipeline exists and the key may see it (the two cases look the same)."""
    if not key.can_see(pipeline) or not store.has_pipeline(pipeline):
        raise NotFoundError("pipeline not found")


DealIdPath = Annotated[str, Path(min_length=1, max_length=NAME_LENGTH, pattern=NO_CONTROL_CHARS)]
PipelinePath = Annotated[str, Path(min_length=1, max_length=NAME_LENGTH, pattern=NO_CONTROL_CHARS)]

SettingsDep = Annotated[Settings, Depends(get_settings_dep)]
StoreDep = Annotated[Store, Depends(get_store)]
ModelDep = Annotated[LoadedModel, Depends(get_model)]
FeatureBuilderDep = Annotated[FeatureBuilder | None, Depends(feature_builder_dep)]

AdminKey = Annotated[ApiKey, Depends(require_role("admin"))]
ReadKey = Annotated[ApiKey, Depends(require_role("admin", "manager"))]
ScoreKeyCheck = Annotated[KeyCheck, Depends(require_role_later("admin", "integration"))]
WriteKey = Annotated[ApiKey, Depends(require_role("admin", "integration"))]
WriteKeyCheck = Annotated[KeyCheck, Depends(require_role_later("admin", "integration"))]
ReadKeyCheck = Annotated[KeyCheck, Depends(require_role_later("admin", "manager"))]
AnyKey = Annotated[ApiKey, Depends(require_role("admin", "manager", "integration"))]
