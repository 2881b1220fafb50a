"""Pipeline routes for managers: the pipelines a key may see, at-risk deals, health and forecast.

A pipeline outside the caller's key (or unknown) answers 404 "pipeline not found", exactly as if it did
not exist. At-risk, health and forecast are reads: admin and manager keys only (integration gets 403).
Routes are plain `def`: scoring and health are CPU-bound and run in the threadpool. The at-risk and stale
lists are `async`, with the key check, the read and the answer's encoding in one threadpool hop
(`ReadKeyCheck`, `_one_hop_waiting`). The forecast is `async` too: like the lists, it waits for new deals'
live scores on the event loop, not on a request thread.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import datetime
from typing import Annotated, Any
from urllib.parse import quote

import anyio
import pandas as pd
from fastapi import APIRouter, Query, Request
from fastapi.encoders import jsonable_encoder
from fastapi.responses import JSONResponse, Response
from sqlalchemy.engine import Connection
from starlette.concurrency import run_in_threadpool

from features.health import GroupBy, health_from_current_state, pipeline_health
from features.history import to_utc_timestamp
from features.jsonable import jsonable
from features.validation import MAX_AMOUNT
from models.at_risk import DEFAULT_SORT, MAX_LIST_POSITION, AtRiskSort, deal_list_csv, rank_at_risk
from models.forecast import forecast_from_scores, forecast_pipeline, score_open_deals
from serving.auth import ApiKey, KeyCheck
from serving.deps import (
    AnyKey,
    ModelDep,
    PipelinePath,
    ReadKey,
    ReadKeyCheck,
    StoreDep,
    get_feature_builder,
    require_visible_pipeline,
)
from serving.errors import InvalidInputError, NotFoundError
from serving.health_cache import HealthCache
from serving.limits import NAME_LENGTH
from serving.mapping import time_or
from serving.model_holder import LoadedModel, builder_for
from serving.routes import answer
from serving.schemas import NO_CONTROL_CHARS, AtRiskDeal, AtRiskList, PipelineList, PipelineOut, UtcTime
from serving.store import Store

logger = logging.getLogger(__name__)

router = APIRouter(tags=["pipelines"])

MAX_AT_RISK_LIMIT = 1000
# A read as of now that finds a few open deals with no live score yet (deals just created: the live scorer
# takes written deals first, within a second) waits for them instead of scoring the whole pipeline on
# demand, which at 100,000 deals means reading its history for seconds.
LIVE_WAIT_S = 2.0
LIVE_WAIT_MAX_DEALS = 100  # more unscored deals than this (a service just started): on demand at once
LIVE_WAIT_POLL_S = 0.05
DEFAULT_HEALTH_DAYS = 30
DEFAULT_STALLED_LIMIT = 50  # stalled deals a health answer lists per block, longest-stalled first
MAX_STALLED_LIMIT = MAX_AT_RISK_LIMIT


@router.get("/v1/pipelines", response_model=PipelineList)
def list_pipelines(key: AnyKey, store: StoreDep) -> PipelineList:
    """The pipelines this key may see, each with its ordered open stages, won/lost stages and thresholds."""
    specs = store.pipeline_specs()
    out = []
    for name in store.list_pipelines():
        if not key.can_see(name):
            continue
        spec = specs.get(name)
        out.append(
            PipelineOut(
                name=name,
                stages=list(spec.stages) if spec else [],
                won=list(spec.won) if spec else [],
                lost=list(spec.lost) if spec else [],
                stale_after_days=dict(spec.stale_after_days) if spec else {},
                inferred=spec.inferred if spec else True,
            )
        )
    return PipelineList(pipelines=out)


@router.get(
    "/v1/pipelines/{pipeline:path}/at-risk",
    response_model=AtRiskList,
    responses={200: {"content": {"text/csv": {}}, "description": "JSON, or CSV with `Accept: text/csv`"}},
)
async def at_risk(
    pipeline: PipelinePath,
    check: ReadKeyCheck,
    request: Request,
    store: StoreDep,
    model: ModelDep,
    owner: Annotated[str | None, Query(max_length=NAME_LENGTH, pattern=NO_CONTROL_CHARS,
                                       description="owner as of as_of")] = None,
    team: Annotated[str | None, Query(max_length=NAME_LENGTH, pattern=NO_CONTROL_CHARS)] = None,
    min_amount: Annotated[float | None, Query(ge=0, le=MAX_AMOUNT, allow_inf_nan=False)] = None,
    close_before: Annotated[UtcTime | None, Query(description="expected close date before this time")] = None,
    as_of: Annotated[UtcTime | None, Query(description="ISO 8601 time; default now")] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_AT_RISK_LIMIT)] = 50,
    offset: Annotated[int, Query(ge=0, le=MAX_LIST_POSITION)] = 0,
    sort: Annotated[AtRiskSort, Query(description="order: value_at_risk (default), cold_risk, amount, "
                                      "days_in_stage (highest first) or close_date (soonest first)")]
    = DEFAULT_SORT,
) -> Any:
    """Open deals of the pipeline going cold, ranked by value at risk (amount × close probability × cold
    risk, highest first), with reasons and close probability.

    Without `as_of` the scores are the live ones the service keeps (each deal names its model version,
    the time its score is as of, and whether a newer write is being scored); with `as_of` (or while an
    open deal has no live score yet) the deals are scored on demand as of that time. A few deals without
    a live score (just created) are waited for, up to 2 s, before scoring on demand.

    Effectively dead deals (close probability under 2% and more than twice their stage's stalled limit
    in days) are left out: `GET /v1/pipelines/{pipeline}/stale` lists them. Filters: owner, team, minimum
    amount, expected close before a time; `sort=` picks another order. Answers CSV when the request
    sends `Accept: text/csv`. The response names the model version that scored every deal.
    """
    return await _one_hop_waiting(
        store, pipeline,
        lambda may_wait: _ranked_list(store, check, model, request, pipeline, as_of, sort, False, limit,
                                      offset, may_wait, owner=owner, team=team, min_amount=min_amount,
                                      close_before=close_before),
    )


@router.get(
    "/v1/pipelines/{pipeline:path}/stale",
    response_model=AtRiskList,
    responses={200: {"content": {"text/csv": {}}, "description": "JSON, or CSV with `Accept: text/csv`"}},
)
async def stale(
    pipeline: PipelinePath,
    check: ReadKeyCheck,
    request: Request,
    store: StoreDep,
    model: ModelDep,
    owner: Annotated[str | None, Query(max_length=NAME_LENGTH, pattern=NO_CONTROL_CHARS,
                                       description="owner as of as_of")] = None,
    team: Annotated[str | None, Query(max_length=NAME_LENGTH, pattern=NO_CONTROL_CHARS)] = None,
    as_of: Annotated[UtcTime | None, Query(description="ISO 8601 time; default now")] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_AT_RISK_LIMIT)] = 50,
    offset: Annotated[int, Query(ge=0, le=MAX_LIST_POSITION)] = 0,
    sort: Annotated[AtRiskSort, Query(description="order; default days_in_stage (longest first)")]
    = "days_in_stage",
) -> Any:
    """Effectively dead open deals, for clean-up: close probability under 2% and more than twice their
    stage's stalled limit in days (configured `stale_after_days`, else learned from won deals). These
    are the deals the at-risk list leaves out. Same fields, paging and CSV as at-risk."""
    return await _one_hop_waiting(
        store, pipeline,
        lambda may_wait: _ranked_list(store, check, model, request, pipeline, as_of, sort, True, limit,
                                      offset, may_wait, owner=owner, team=team),
    )


async def _one_hop_waiting(store: Store, pipeline: str, read: Callable[[bool], Any | None]) -> Any:
    """`read(True)` (the key check, the list or forecast and its answer) in one threadpool hop; when it
    gives None (new deals waiting for their live scores), the wait for them (`_wait_for_live_scores`),
    then `read(False)` in a second hop, which answers from the live scores or on demand.

    As plain `def` routes with a `def` key check the lists took three hops (the key check, the route,
    FastAPI's validation of the returned model), and each hop waits for the event loop and then for a
    thread to take the interpreter's lock: amid 16 writing clients, much of a slow read's time. The wait
    is not on a request thread: there are as many of those as cores (`DEALRISK_REQUEST_THREADS`), and two
    reads waiting up to 2 s on them would hold every other request back as long."""
    answered = await run_in_threadpool(read, True)
    if answered is not None:
        return answered
    await _wait_for_live_scores(store, pipeline)
    return await run_in_threadpool(read, False)


def _ranked_list(
    store: Store, check: KeyCheck, model: LoadedModel, request: Request, pipeline: str,
    as_of: datetime | None, sort: str, stale: bool, limit: int, offset: int, may_wait: bool,
    owner: str | None = None, team: str | None = None, min_amount: float | None = None,
    close_before: datetime | None = None,
) -> Any | None:
    """One page of the at-risk list (`stale` False) or the clean-up list (`stale` True); None when
    `may_wait` and a few open deals have no live score yet (`_worth_waiting`: the caller waits for the
    live scorer, then asks again with `may_wait` False).

    As of now, the page the store answers from the live scores and the stored stage limits (filtered,
    split, ordered and paged by the database; no history is read), the caller's key read first on the
    same connection. A page there is the pipeline's row found: nothing else looks the pipeline up. With
    `as_of`, or while an open deal of the pipeline has no live score yet (or its learned limits were
    never computed, or it has no row), the pipeline is looked up (`require_visible_pipeline`) and the
    open deals are scored and ranked on demand as of that time (`models.at_risk.rank_at_risk`).
    """

    def checked(conn: Connection | None = None) -> ApiKey:
        """The caller's key (401 / 403); a pipeline outside it answers 404 as if absent."""
        key = check(conn)
        if not key.can_see(pipeline):
            raise NotFoundError("pipeline not found")
        return key

    t = time_or(as_of)
    name = "stale" if stale else "at-risk"
    if as_of is None:
        live = store.at_risk_rows(
            pipeline, t.to_pydatetime(), sort, stale=stale, owner=owner, team=team, min_amount=min_amount,
            close_before=close_before, limit=limit, offset=offset, first=checked,
        )
        if live is not None:
            total, rows = live
            for row in rows:
                row["score_pending"] = row.pop("pending")
            return _deal_list(rows, total, request, pipeline, t, model, limit, offset, name)
    require_visible_pipeline(store, checked(), pipeline)
    if as_of is None and may_wait and _worth_waiting(request, store, pipeline):
        return None
    history = store.load_history(pipelines=[pipeline])
    scored = score_open_deals(
        model.bundle, history, t, builder_for(get_feature_builder(request), history), owner=owner,
        team=team, min_amount=min_amount,
        close_before=to_utc_timestamp(close_before) if close_before is not None else None,
    ).assign(model_version=model.version, scored_at=t, score_pending=False)
    ranked = rank_at_risk(scored, history, t, sort)
    ranked = ranked[ranked["stale"] == stale]  # the two lists split the open deals
    page = ranked.iloc[offset : offset + limit]
    records = [{str(k): jsonable(v) for k, v in r.items()} for r in page.to_dict(orient="records")]
    return _deal_list(records, len(ranked), request, pipeline, t, model, limit, offset, name)


def _worth_waiting(request: Request, store: Store, pipeline: str) -> bool:
    """Whether a read as of now that the live scores could not answer should wait for the live scorer
    (`_wait_for_live_scores`) before answering on demand: a live scorer runs and at most
    `LIVE_WAIT_MAX_DEALS` open deals of the pipeline have no live score. That includes none: the scorer
    may have scored them between the caller's read and this count (the caller then reads again at once;
    if the live path is still refused, for another reason, it answers on demand)."""
    if getattr(request.app.state, "live_scores", None) is None:
        return False
    return store.unscored_open_deals(pipeline) <= LIVE_WAIT_MAX_DEALS


async def _wait_for_live_scores(store: Store, pipeline: str) -> None:
    """Wait, on the event loop, until every open deal of the pipeline has a live score or `LIVE_WAIT_S`
    passed (the caller's next read tells which); each count of the unscored deals is one short read on a
    request thread. The caller has just counted them (`_worth_waiting`), so the first poll waits before
    counting again."""
    deadline = time.monotonic() + LIVE_WAIT_S
    while time.monotonic() < deadline:
        await anyio.sleep(LIVE_WAIT_POLL_S)
        if await run_in_threadpool(store.unscored_open_deals, pipeline) == 0:
            return


def _deal_list(records: list[dict[str, Any]], total: int, request: Request, pipeline: str, t: pd.Timestamp,
               model: LoadedModel, limit: int, offset: int, name: str) -> Response:
    """One page of a ranked deal list (`total` rows in all; plain JSON-ready values), as `AtRiskList` JSON
    or as CSV."""
    for i, r in enumerate(records):
        r["rank"] = offset + i + 1
    if "text/csv" in request.headers.get("accept", ""):
        return _csv_response(records, f"{name}-{pipeline}", model.version)
    fields = AtRiskDeal.model_fields  # a property with a deprecation check: read once, not per value
    deals = [AtRiskDeal.model_validate({k: v for k, v in r.items() if k in fields}) for r in records]
    note = getattr(model.bundle, "metadata", {}).get("data_note")
    # as its JSON body: FastAPI would validate the returned model again, in one more threadpool hop
    return answer(AtRiskList(pipeline=pipeline, as_of=t.to_pydatetime(), model_version=model.version,
                             data_note=str(note) if note else None, total=total, limit=limit,
                             offset=offset, deals=deals))


def _csv_response(records: list[dict[str, Any]], filename: str, version: str) -> Response:
    return Response(
        deal_list_csv(records, version),
        media_type="text/csv",
        headers={"Content-Disposition": _attachment(f"{filename}.csv"),
                 "X-Model-Version": version},
    )


def _attachment(filename: str) -> str:
    """A Content-Disposition for a download named `filename`. Header values are Latin-1 bytes, so a name
    with other characters (a pipeline named in any language) goes in `filename*` (RFC 6266: UTF-8,
    percent-encoded), beside an ASCII `filename` for clients that know only that; a quote or backslash in
    the name cannot end the quoted string."""
    plain = "".join(c if c.isascii() and c not in '"\\' else "_" for c in filename)
    if plain == filename:
        return f'attachment; filename="{filename}"'
    return f"attachment; filename=\"{plain}\"; filename*=UTF-8''{quote(filename, safe='')}"


@router.get("/v1/pipelines/{pipeline:path}/health", response_model=dict[str, Any])
def health(
    pipeline: PipelinePath,
    key: ReadKey,
    request: Request,
    store: StoreDep,
    since: Annotated[UtcTime | None, Query(description="default: until minus 30 days")] = None,
    until: Annotated[UtcTime | None, Query(description="default: now")] = None,
    by: Annotated[GroupBy | None, Query(description="figures per team or owner")] = None,
    stalled_limit: Annotated[int, Query(
        ge=0, le=MAX_STALLED_LIMIT,
        description="how many of the longest-stalled deals each block lists (stalled_count counts all)",
    )] = DEFAULT_STALLED_LIMIT,
) -> Any:
    """Pipeline health over [since, until]: open deals, average deal size, win rate, cycle days, sales
    velocity, funnel by stage and stalled deals (by team or owner too with `by`).

    When the window ends at or after every event of the pipeline (`until` now, the default), the deals'
    state at `until` is their stored current state: the figures come from the deals' state columns, the
    window's stage changes and the stored stalled limits, read by the database. Otherwise they are
    computed from the deals the window can see move (open at `until`, closed in the window or touched
    after it), selected by the deals' stored state, plus the won deals' stage changes for the learned
    stalled limits. Either way, exactly the figures of the whole history, without reading it.

    As of now (no `until`, or `until` not in the past), the answer of the same request is reused while no
    write touched the pipeline, for `health_max_age_s` (default 30 s) at most: `until` then says when it
    was computed. The first read after a write to the pipeline computes it again."""
    require_visible_pipeline(store, key, pipeline)
    started = time.monotonic()
    now = pd.Timestamp.now(tz="UTC")
    t1 = time_or(until, now)
    t0 = time_or(since, t1 - pd.Timedelta(days=DEFAULT_HEALTH_DAYS))
    if t0 > t1:
        raise InvalidInputError(f"since ({t0.isoformat()}) is after until ({t1.isoformat()})", loc="since")
    cache: HealthCache = request.app.state.health_cache
    if not cache.enabled or t1 < now:  # a window ending in the past: on demand, every time
        return _health(store, pipeline, t0, t1, by, stalled_limit)
    # as of now: the same request's answer while the pipeline's stamp holds (read before computing, so a
    # write committed meanwhile moves it); a given `since`/`until` is part of the request
    request_key = (pipeline, None if since is None else t0, None if until is None else t1, by, stalled_limit)
    stamp = store.health_stamp(pipeline)

    def compute() -> bytes:  # kept as the JSON body it answers: a reused answer is not encoded again
        report = _health(store, pipeline, t0, t1, by, stalled_limit)
        return bytes(JSONResponse(jsonable_encoder(report)).body)

    # the same request under the same stamp, in flight in another thread, is waited for, not computed twice
    return Response(cache.answer(request_key, stamp, started, compute), media_type="application/json")


def _health(store: Store, pipeline: str, t0: pd.Timestamp, t1: pd.Timestamp, by: GroupBy | None,
            stalled_limit: int) -> dict[str, Any]:
    """The health answer of the window [t0, t1], computed."""
    # the store keeps microseconds: a stored time is at or after t0 (at or before t1) iff it is so of
    # t0 (t1) floored to the microsecond
    t0_us, t1_us = t0.floor("us").to_pydatetime(), t1.floor("us").to_pydatetime()
    current = store.health_state(pipeline, t0_us, t1_us, by)
    if current is not None:
        report = health_from_current_state(current.deals, current.window_changes, current.specs,
                                           current.learned, t0, t1, pipeline, by, current.left_out,
                                           stalled_limit)
        return {"pipeline": pipeline, **report}
    # Only the deals the window can see move, and no activities: work in proportion to the window
    history, left_out = store.health_history(pipeline, t0_us, t1_us)
    report = pipeline_health(history, t0, t1, pipeline=pipeline, by=by, left_out=left_out,
                             stalled_limit=stalled_limit)
    return {"pipeline": pipeline, **report}


@router.get("/v1/pipelines/{pipeline:path}/forecast")
async def pipeline_forecast(
    pipeline: PipelinePath,
    key: ReadKey,
    request: Request,
    store: StoreDep,
    model: ModelDep,
    months: Annotated[int, Query(ge=1, le=24)] = 3,
    as_of: Annotated[UtcTime | None, Query(description="ISO 8601 time; default now")] = None,
) -> dict[str, Any]:
    """Won amount per calendar month ahead: expected value and P10/P50/P90. Open deals are spread over
    the months by their chance of being won in each (timing included); deals not created yet are the
    `new_deals` line of each month and `total` adds both. Names the model version.

    Without `as_of` the forecast reads the live scores the service keeps (`source: live_scores`, with
    `oldest_score_as_of`; a score made before now is conditioned on the deal being still open now) and
    the new-deal model fitted with the feature population; during a model swap each deal counts with
    its own latest score (`model_versions`: deals per version). With `as_of`, or while an open deal has
    no live score yet, every open deal is scored on demand (`source: on_demand`)."""

    def forecast(may_wait: bool) -> dict[str, Any] | None:
        require_visible_pipeline(store, key, pipeline)
        t = time_or(as_of)
        if as_of is None:
            live = _live_forecast(request, store, pipeline, t, months)
            if live is not None:
                return live
            if may_wait and _worth_waiting(request, store, pipeline):
                return None
        history = store.load_history(pipelines=[pipeline])
        builder = builder_for(get_feature_builder(request), history)
        result = forecast_pipeline(model.bundle, history, t, builder, months=months)
        return {"pipeline": pipeline, "model_version": model.version, "source": "on_demand", **result}

    return dict(await _one_hop_waiting(store, pipeline, forecast))


def _live_forecast(request: Request, store: Store, pipeline: str, t: pd.Timestamp,
                   months: int) -> dict[str, Any] | None:
    """The forecast from stored live scores, or None when they cannot give it (some open deal unscored,
    or scores with a timing curve mixed with scores without one).

    During a model swap the open deals' live scores name two versions until every deal is re-scored;
    each deal counts with its own latest score (its own timing curve), as the at-risk list shows it, and
    `model_versions` says how many deals each version scored. `model_version` is the version that scored
    the most of them (the only one outside a swap)."""
    scores = store.forecast_scores(pipeline, t.to_pydatetime())
    if scores is None:
        return None
    counts = scores["model_version"].astype(str).value_counts(sort=False)
    versions = {str(v): int(n) for v, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))}
    new_deals, _ = request.app.state.new_deals.get(pipeline)
    try:
        result = forecast_from_scores(scores, t, new_deals, months=months)
    except ValueError:  # curves from a timing head and none from another cannot be added up
        logger.warning("live scores of pipeline %s could not be forecast; scoring on demand", pipeline,
                       exc_info=True)
        return None
    oldest = scores["scored_at"].min().isoformat() if len(scores) else None  # as "as_of" is written
    most = next(iter(versions)) if versions else request.app.state.model_holder.require().version
    return {
        "pipeline": pipeline,
        "model_version": most,
        "model_versions": versions,
        "source": "live_scores",
        "oldest_score_as_of": oldest,
        **result,
    }
