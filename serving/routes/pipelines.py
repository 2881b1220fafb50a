"""Pipeline routes for managers: the pipelines a key may see, at-risk deals, health and forecast.

A pipeline outside the caller's key (or unknown) answers 404 "pipeline not found", exactly as if it did
not exist. At-risk, health and forecast are reads: admin and manager keys only (integration gets 403).
Routes are plain `def`: scoring and health are CPU-bound and run in the threadpool.
"""

from __future__ import annotations

import csv
import io
import logging
from datetime import datetime
from typing import Annotated, Any, Literal

import pandas as pd
from fastapi import APIRouter, Query, Request
from fastapi.responses import Response

from features.health import pipeline_health
from features.history import to_utc_timestamp
from features.jsonable import jsonable
from models.forecast import forecast_pipeline, score_open_deals
from serving.deps import AnyKey, FeatureBuilderDep, ModelDep, ReadKey, StoreDep, get_feature_builder
from serving.errors import InvalidInputError, NotFoundError
from serving.limits import NAME_LENGTH
from serving.mapping import time_or
from serving.model_holder import builder_for
from serving.schemas import AtRiskDeal, AtRiskList, PipelineList, PipelineOut, UtcTime
from serving.store import ApiKey, Store

logger = logging.getLogger(__name__)

router = APIRouter(tags=["pipelines"])

MAX_AT_RISK_LIMIT = 1000
DEFAULT_HEALTH_DAYS = 30


def _visible_pipeline(store: Store, key: ApiKey, pipeline: str) -> None:
    """404 unless the pipeline exists and the key may see it (the two cases look the same)."""
    if not key.can_see(pipeline) or pipeline not in store.list_pipelines():
        raise NotFoundError("pipeline not found")


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
    "/v1/pipelines/{pipeline}/at-risk",
    response_model=AtRiskList,
    responses={200: {"content": {"text/csv": {}}, "description": "JSON, or CSV with `Accept: text/csv`"}},
)
def at_risk(
    pipeline: str,
    key: ReadKey,
    request: Request,
    store: StoreDep,
    model: ModelDep,
    owner: Annotated[str | None, Query(max_length=NAME_LENGTH, description="owner as of as_of")] = None,
    team: Annotated[str | None, Query(max_length=NAME_LENGTH)] = None,
    min_amount: Annotated[float | None, Query(ge=0, allow_inf_nan=False)] = None,
    close_before: Annotated[UtcTime | None, Query(description="expected close date before this time")] = None,
    as_of: Annotated[UtcTime | None, Query(description="ISO 8601 time; default now")] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_AT_RISK_LIMIT)] = 50,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> Any:
    """Open deals of the pipeline ranked by cold risk (highest first), with reasons and close probability.

    Without `as_of` the list is read from the live scores the service keeps (each deal names its model
    version, the time its score is as of, and whether a newer write is being scored); with `as_of` the
    deals are scored on demand as of that time.

    Filters: owner, team, minimum amount, expected close before a time. Answers CSV when the request
    sends `Accept: text/csv`. The response names the model version that scored every deal.
    """
    _visible_pipeline(store, key, pipeline)
    t = time_or(as_of)
    # As of now: the live scores and current state the store keeps, filtered, sorted and paged by the
    # database. In the past (or while a deal has no live score yet): scored on demand from the history.
    stored = None if as_of is not None else store.at_risk_page(
        pipeline, owner=owner, team=team, min_amount=min_amount, close_before=close_before,
        limit=limit, offset=offset,
    )
    if stored is not None:
        total, page = stored
        page["days_in_stage"] = (t - page["stage_entered_at"]).dt.total_seconds() / 86400.0
        page = page.rename(columns={"pending": "score_pending"})
    else:
        history = store.load_history(pipelines=[pipeline])
        ranked = score_open_deals(
            model.bundle, history, t, builder_for(get_feature_builder(request), history), owner=owner,
            team=team, min_amount=min_amount,
            close_before=to_utc_timestamp(close_before) if close_before is not None else None,
        )
        total = len(ranked)
        page = ranked.iloc[offset : offset + limit].assign(model_version=model.version, scored_at=t)
    records = [{str(k): jsonable(v) for k, v in r.items()} for r in page.to_dict(orient="records")]
    for i, r in enumerate(records):
        r["rank"] = offset + i + 1
    if "text/csv" in request.headers.get("accept", ""):
        return _csv_response(records, pipeline, model.version)
    deals = [AtRiskDeal.model_validate({k: v for k, v in r.items() if k in AtRiskDeal.model_fields})
             for r in records]
    note = getattr(model.bundle, "metadata", {}).get("data_note")
    return AtRiskList(pipeline=pipeline, as_of=t.to_pydatetime(), model_version=model.version,
                      data_note=str(note) if note else None, total=total, limit=limit, offset=offset,
                      deals=deals)


CSV_COLUMNS = ["rank", "deal_id", "pipeline", "owner", "team", "stage", "amount", "expected_close_date",
               "days_in_stage", "cold_risk", "close_probability", "close_probability_90d", "slip_risk",
               "likely_close_date", "risk_band", "expected_value", "reasons", "counter_reasons",
               "model_version"]


def _csv_response(records: list[dict[str, Any]], pipeline: str, version: str) -> Response:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for r in records:
        row = dict(r)
        # One cell a person can read in a spreadsheet: the reasons' sentences, strongest first.
        for column in ("reasons", "counter_reasons"):
            row[column] = " | ".join(str(x.get("text", "")) for x in r.get(column) or [])
        if isinstance(row.get("expected_close_date"), datetime):
            row["expected_close_date"] = row["expected_close_date"].isoformat()
        if isinstance(row.get("likely_close_date"), datetime):
            row["likely_close_date"] = row["likely_close_date"].date().isoformat()
        row["model_version"] = r.get("model_version") or version
        writer.writerow(row)
    return Response(
        buffer.getvalue(),
        media_type="text/csv",
        headers={"Content-Disposition": f'attachment; filename="at-risk-{pipeline}.csv"',
                 "X-Model-Version": version},
    )


@router.get("/v1/pipelines/{pipeline}/health")
def health(
    pipeline: str,
    key: ReadKey,
    store: StoreDep,
    since: Annotated[UtcTime | None, Query(description="default: until minus 30 days")] = None,
    until: Annotated[UtcTime | None, Query(description="default: now")] = None,
    by: Annotated[Literal["team", "owner"] | None, Query(description="figures per team or owner")] = None,
) -> dict[str, Any]:
    """Pipeline health over [since, until]: open deals, average deal size, win rate, cycle days, sales
    velocity, funnel by stage and stalled deals (by team or owner too with `by`)."""
    _visible_pipeline(store, key, pipeline)
    t1 = time_or(until)
    t0 = time_or(since, t1 - pd.Timedelta(days=DEFAULT_HEALTH_DAYS))
    if t0 > t1:
        raise InvalidInputError(f"since ({t0.isoformat()}) is after until ({t1.isoformat()})", loc="since")
    history = store.load_history(pipelines=[pipeline])
    report = pipeline_health(history, t0, t1, pipeline=pipeline, by=by)
    return {"pipeline": pipeline, **report}


@router.get("/v1/pipelines/{pipeline}/forecast")
def pipeline_forecast(
    pipeline: str,
    key: ReadKey,
    store: StoreDep,
    model: ModelDep,
    builder: FeatureBuilderDep,
    months: Annotated[int, Query(ge=1, le=24)] = 3,
    as_of: Annotated[UtcTime | None, Query(description="ISO 8601 time; default now")] = None,
) -> dict[str, Any]:
    """Won amount per calendar month ahead: expected value and P10/P50/P90. Open deals are spread over
    the months by their chance of being won in each (timing included); deals not created yet are the
    `new_deals` line of each month and `total` adds both. Names the model version."""
    _visible_pipeline(store, key, pipeline)
    t = time_or(as_of)
    history = store.load_history(pipelines=[pipeline])
    result = forecast_pipeline(model.bundle, history, t, builder_for(builder, history), months=months)
    return {"pipeline": pipeline, "model_version": model.version, **result}
