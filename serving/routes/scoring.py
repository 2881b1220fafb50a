"""Scoring routes: inline histories (`POST /v1/score`) and stored deals (`GET /v1/deals/{id}/score`).

Both go through `models.scoring.score_point_columns` (`score_points`' columns, unframed) with the same
feature builder (fitted on the whole store) and pipeline specs from the store, so a deal scored inline and
the same deal scored from the store, as of the same time, get the same numbers and reasons. CPU-bound, so
they run in the threadpool: the stored deal's route as a plain `def`, the inline one `async` with its key
check, spec read and scoring in one threadpool hop (`ScoreKeyCheck`), as a `def` route behind a `def` key
check took two.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Annotated, Any

import pandas as pd
from fastapi import APIRouter, Query, Request, Response
from starlette.concurrency import run_in_threadpool

from features.build import FeatureBuilder
from features.history import PipelineSpec
from features.jsonable import jsonable
from features.timeindex import object_values
from models.bundle import ScoringBundle
from models.scoring import points_at, score_point_columns, scores_frame
from serving.auth import KeyCheck
from serving.deps import (
    AnyKey,
    DealIdPath,
    FeatureBuilderDep,
    ModelDep,
    ScoreKeyCheck,
    SettingsDep,
    StoreDep,
)
from serving.errors import InvalidInputError, NotFoundError, check_batch_size, is_store_outage
from serving.mapping import inline_frames, time_or, validated_history
from serving.model_holder import LoadedModel, builder_for
from serving.routes import answer
from serving.schemas import DealScore, DealScores, DealWithHistoryIn, ItemError, ScoreRequest, UtcTime
from serving.settings import Settings
from serving.store import Store

logger = logging.getLogger(__name__)

router = APIRouter(tags=["scoring"])


def scores_response(
    scored: Mapping[str, Any], model: LoadedModel, as_of: pd.Timestamp, errors: list[ItemError],
    request: Request,
) -> Response:
    """Turn `score_point_columns` output into the response (and count bands for /metrics)."""
    # column by column, as arrays (DataFrame.to_dict, or a Series' tolist of text, costs more than the rest
    # of a one-deal answer); jsonable makes each value plain whichever way it was read
    columns = {k: object_values(scored[k]).tolist() for k in DealScore.model_fields if k in scored}
    n = len(next(iter(columns.values()))) if columns else 0
    scores = [DealScore.model_validate({k: jsonable(values[i]) for k, values in columns.items()})
              for i in range(n)]
    request.app.state.metrics.observe_bands(s.risk_band for s in scores if s.risk_band is not None)
    return answer(DealScores(model_version=model.version, data_note=_data_note(model),
                             as_of=as_of.to_pydatetime(), scores=scores, errors=errors))


def _data_note(model: LoadedModel) -> str | None:
    note = getattr(model.bundle, "metadata", {}).get("data_note")
    return str(note) if note else None


def _pipeline_specs(store: StoreDep, request: Request) -> dict[str, Any]:
    """The stored pipeline specs; while the store is unreachable, the ones last read (inline scoring
    needs nothing else from the store, so it goes on through an outage)."""
    try:
        specs = store.pipeline_specs()
    except Exception as exc:
        if not is_store_outage(exc):
            raise
        logger.warning("store unreachable: inline scoring uses the pipeline specs last read")
        last: dict[str, Any] = request.app.state.pipeline_specs
        return last
    request.app.state.pipeline_specs = specs
    return specs


@router.post("/v1/score", response_model=DealScores)
async def score_inline(
    body: ScoreRequest,
    check: ScoreKeyCheck,
    request: Request,
    settings: SettingsDep,
    store: StoreDep,
    model: ModelDep,
    builder: FeatureBuilderDep,
) -> Response:
    """Score deals sent inline with their whole history, as of `as_of` (default: now).

    Deals in pipelines the key may not see come back in `errors` with status 404 ("deal not found"),
    the others are scored. The response names the model version that produced every score.
    """
    return await run_in_threadpool(_score_inline, body, check, request, settings, store, model, builder)


def _score_inline(body: ScoreRequest, check: KeyCheck, request: Request, settings: Settings, store: Store,
                  model: LoadedModel, builder: FeatureBuilder | None) -> Response:
    """`POST /v1/score`'s work, in one threadpool hop: the key check first (401 / 403 before anything)."""
    key = check()
    check_batch_size(len(body.deals), settings.max_batch_deals)
    too_many = [
        f"deals[{i}]" for i, d in enumerate(body.deals)
        if len(d.stage_changes) + len(d.activities) + len(d.field_changes) > settings.max_events_per_deal
    ]
    if too_many:
        limit = f"more than {settings.max_events_per_deal} events for one deal"
        raise InvalidInputError(f"{limit} at {', '.join(too_many[:10])}",
                                [{"loc": loc, "msg": limit} for loc in too_many])
    as_of = time_or(body.as_of)
    errors: list[ItemError] = []
    kept: list[int] = []
    for i, deal in enumerate(body.deals):
        if not key.can_see(deal.pipeline):
            errors.append(ItemError(index=i, deal_id=deal.deal_id, status=404, detail="deal not found"))
        elif pd.Timestamp(deal.created_at) > as_of:
            errors.append(ItemError(index=i, deal_id=deal.deal_id, status=422,
                                    detail=f"as_of {as_of.isoformat()} is before the deal was created"))
        else:
            kept.append(i)
    if not kept:
        return answer(DealScores(model_version=model.version, data_note=_data_note(model),
                                 as_of=as_of.to_pydatetime(), scores=[], errors=errors))
    deals = [body.deals[i] for i in kept]
    wanted = {d.pipeline for d in deals}
    specs = {name: spec for name, spec in _pipeline_specs(store, request).items() if name in wanted}
    scored = inline_score_columns(deals, kept, as_of, specs, model.bundle, builder)
    return scores_response(scored, model, as_of, errors, request)


def score_inline_deals(
    deals: Sequence[DealWithHistoryIn],
    indexes: Sequence[int],
    as_of: pd.Timestamp,
    specs: Mapping[str, PipelineSpec],
    bundle: ScoringBundle,
    builder: FeatureBuilder | None,
) -> pd.DataFrame:
    """`score_points` of deals sent with their histories, as of `as_of` (`indexes[i]`: deal i's index in
    the request, which a 422 names); the same numbers as scoring them within the whole store. The route
    answers from the same columns, unframed (`inline_score_columns`)."""
    columns = inline_score_columns(deals, indexes, as_of, specs, bundle, builder)
    return scores_frame(bundle, columns, len(deals))


def inline_score_columns(
    deals: Sequence[DealWithHistoryIn],
    indexes: Sequence[int],
    as_of: pd.Timestamp,
    specs: Mapping[str, PipelineSpec],
    bundle: ScoringBundle,
    builder: FeatureBuilder | None,
) -> dict[str, Any]:
    """`score_inline_deals`' columns by name, before they are framed (`score_point_columns`)."""
    history = validated_history(inline_frames(deals, indexes), specs)
    points = points_at([d.deal_id for d in deals], as_of)
    return score_point_columns(bundle, history, points, builder_for(builder, history))


@router.get("/v1/deals/{deal_id:path}/score", response_model=DealScores)
def score_stored(
    deal_id: DealIdPath,
    key: AnyKey,
    request: Request,
    store: StoreDep,
    model: ModelDep,
    builder: FeatureBuilderDep,
    as_of: Annotated[UtcTime | None, Query(description="ISO 8601 time; default now")] = None,
) -> Response:
    """Score a stored deal from its stored history as of `as_of` (default: now)."""
    # one read: the deal's history names its pipeline, which decides whether the key may see the deal
    history = store.load_history(deal_ids=[deal_id], trusted=True)
    if len(history.deals) == 0 or not key.can_see(str(history.deals["pipeline"].iloc[0])):
        raise NotFoundError("deal not found")
    t = time_or(as_of)
    created = history.deals["created_at"].iloc[0]
    if t < created:
        raise InvalidInputError(
            f"as_of {t.isoformat()} is before the deal was created ({created.isoformat()})", loc="as_of"
        )
    points = points_at([deal_id], t)
    return scores_response(score_point_columns(model.bundle, history, points, builder_for(builder, history)),
                           model, t, [], request)
