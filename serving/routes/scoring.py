"""Scoring routes: inline histories (`POST /v1/score`) and stored deals (`GET /v1/deals/{id}/score`).

Both go through `models.scoring.score_points` with the same feature builder (fitted on the whole store)
and pipeline specs from the store, so a deal scored inline and the same deal scored from the store, as
of the same time, get the same numbers and reasons. CPU-bound, so plain `def` routes (run in the threadpool).
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Annotated, Any

import pandas as pd
from fastapi import APIRouter, Depends, Query, Request

from features.history import DealHistory, HistoryValidationError, PipelineSpec, to_utc_timestamp
from models.scoring import score_points
from serving.auth import require_role
from serving.deps import FeatureBuilderDep, ModelDep, ScoreKey, SettingsDep, StoreDep
from serving.errors import InvalidInputError, NotFoundError, check_batch_size, raise_history_error
from serving.model_holder import LoadedModel, builder_for
from serving.schemas import DealScore, DealScores, DealWithHistoryIn, ItemError, ScoreRequest, UtcTime
from serving.store import ApiKey

logger = logging.getLogger(__name__)

router = APIRouter(tags=["scoring"])

DEAL_FIELDS = ("deal_id", "pipeline", "owner", "amount", "created_at", "team", "account",
               "expected_close_date", "currency")
STAGE_FIELDS = ("deal_id", "stage", "changed_at", "event_id")
ACTIVITY_FIELDS = ("deal_id", "type", "occurred_at", "direction", "event_id")
FIELD_CHANGE_FIELDS = ("deal_id", "field", "value", "changed_at", "event_id")

DealReader = Annotated[ApiKey, Depends(require_role("admin", "manager", "integration"))]


def _value(item: Any, name: str) -> Any:
    value = getattr(item, name)
    return value.value if hasattr(value, "value") and not isinstance(value, datetime) else value


def inline_frames(
    deals: list[DealWithHistoryIn], prefix: str = "deals"
) -> tuple[dict[str, pd.DataFrame], dict[str, list[str]]]:
    """Frames (as `DealHistory.from_frames` takes them) from inline deals, and each row's request path."""
    deal_rows: list[dict[str, Any]] = []
    rows: dict[str, list[dict[str, Any]]] = {"stage_changes": [], "activities": [], "field_changes": []}
    locators: dict[str, list[str]] = {"deals": [], "stage_changes": [], "activities": [], "field_changes": []}
    for i, deal in enumerate(deals):
        deal_rows.append({**{f: _value(deal, f) for f in DEAL_FIELDS}, **deal.attributes})
        locators["deals"].append(f"{prefix}[{i}]")
        for table, events, fields in (
            ("stage_changes", deal.stage_changes, STAGE_FIELDS[1:]),
            ("activities", deal.activities, ACTIVITY_FIELDS[1:]),
            ("field_changes", deal.field_changes, FIELD_CHANGE_FIELDS[1:]),
        ):
            for j, event in enumerate(events):
                rows[table].append({"deal_id": deal.deal_id, **{f: _value(event, f) for f in fields}})
                locators[table].append(f"{prefix}[{i}].{table}[{j}]")
    frames = {
        "deals": pd.DataFrame(deal_rows, columns=_columns(deal_rows, DEAL_FIELDS)),
        "stage_changes": pd.DataFrame(rows["stage_changes"], columns=list(STAGE_FIELDS)),
        "activities": pd.DataFrame(rows["activities"], columns=list(ACTIVITY_FIELDS)),
        "field_changes": pd.DataFrame(rows["field_changes"], columns=list(FIELD_CHANGE_FIELDS)),
    }
    return frames, locators


def _columns(rows: list[dict[str, Any]], base: tuple[str, ...]) -> list[str]:
    extra = dict.fromkeys(k for row in rows for k in row if k not in base)
    return [*base, *extra]


def validated_history(
    frames: dict[str, pd.DataFrame], locators: dict[str, list[str]], specs: dict[str, PipelineSpec]
) -> DealHistory:
    """`DealHistory.from_frames` with problems reported as request paths (422)."""
    try:
        return DealHistory.from_frames(
            frames["deals"], frames["stage_changes"], frames["activities"], frames["field_changes"],
            pipelines=specs, source="request",
        )
    except HistoryValidationError as exc:
        raise_history_error(exc, locators)
        raise  # unreachable: raise_history_error always raises


def scores_response(
    scored: pd.DataFrame, model: LoadedModel, as_of: pd.Timestamp, errors: list[ItemError], request: Request
) -> DealScores:
    """Turn `score_points` output into the response (and count bands for /metrics)."""
    records = scored.to_dict(orient="records")
    scores = [DealScore.model_validate(_clean_record(r)) for r in records]
    request.app.state.metrics.observe_bands(s.risk_band for s in scores)
    return DealScores(model_version=model.version, as_of=as_of.to_pydatetime(), scores=scores, errors=errors)


def _clean_record(record: dict[Any, Any]) -> dict[str, Any]:
    out = {str(k): v for k, v in record.items() if k in DealScore.model_fields}
    for key in ("pipeline", "stage"):
        if key in out and (out[key] is None or pd.isna(out[key])):
            out[key] = None
    if isinstance(out.get("as_of"), pd.Timestamp):
        out["as_of"] = out["as_of"].to_pydatetime()
    return out


def _now() -> pd.Timestamp:
    return pd.Timestamp.now(tz="UTC")


@router.post("/v1/score", response_model=DealScores)
def score_inline(
    body: ScoreRequest,
    key: ScoreKey,
    request: Request,
    settings: SettingsDep,
    store: StoreDep,
    model: ModelDep,
    builder: FeatureBuilderDep,
) -> DealScores:
    """Score deals sent inline with their whole history, as of `as_of` (default: now).

    Deals in pipelines the key may not see come back in `errors` with status 404 ("deal not found"),
    the others are scored. The response names the model version that produced every score.
    """
    check_batch_size(len(body.deals), settings.max_batch_deals)
    too_many = [
        f"deals[{i}]" for i, d in enumerate(body.deals)
        if len(d.stage_changes) + len(d.activities) + len(d.field_changes) > settings.max_events_per_deal
    ]
    if too_many:
        raise InvalidInputError(
            f"more than {settings.max_events_per_deal} events for one deal at {', '.join(too_many[:10])}"
        )
    as_of = pd.Timestamp(body.as_of) if body.as_of is not None else _now()
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
        return DealScores(model_version=model.version, as_of=as_of.to_pydatetime(), scores=[], errors=errors)
    deals = [body.deals[i] for i in kept]
    frames, locators = inline_frames(deals)
    # Row paths must point at the request's own indexes, not the filtered list's.
    locators = {t: [_reindex(p, kept) for p in paths] for t, paths in locators.items()}
    wanted = {d.pipeline for d in deals}
    specs = {name: spec for name, spec in store.pipeline_specs().items() if name in wanted}
    history = validated_history(frames, locators, specs)
    points = pd.DataFrame({"deal_id": pd.Series([d.deal_id for d in deals], dtype="string"),
                           "as_of": pd.Series([as_of] * len(deals), dtype="datetime64[ns, UTC]")})
    scored = score_points(model.bundle, history, points, builder_for(builder, history))
    return scores_response(scored, model, as_of, errors, request)


def _reindex(path: str, kept: list[int]) -> str:
    # "deals[2].activities[0]" in the filtered list -> "deals[<original index>].activities[0]"
    head, _, rest = path.partition("]")
    index = int(head.split("[", 1)[1])
    return f"deals[{kept[index]}]{rest}"


@router.get("/v1/deals/{deal_id}/score", response_model=DealScores)
def score_stored(
    deal_id: str,
    key: DealReader,
    request: Request,
    store: StoreDep,
    model: ModelDep,
    builder: FeatureBuilderDep,
    as_of: Annotated[UtcTime | None, Query(description="ISO 8601 time; default now")] = None,
) -> DealScores:
    """Score a stored deal from its stored history as of `as_of` (default: now)."""
    pipeline = store.deal_pipelines([deal_id]).get(deal_id)
    if pipeline is None or not key.can_see(pipeline):
        raise NotFoundError("deal not found")
    t = to_utc_timestamp(as_of) if as_of is not None else _now()
    history = store.load_history(deal_ids=[deal_id])
    created = history.deals["created_at"].iloc[0]
    if t < created:
        raise InvalidInputError(
            f"as_of {t.isoformat()} is before the deal was created ({created.isoformat()})"
        )
    points = pd.DataFrame({"deal_id": pd.Series([deal_id], dtype="string"),
                           "as_of": pd.Series([t], dtype="datetime64[ns, UTC]")})
    scored = score_points(model.bundle, history, points, builder_for(builder, history))
    return scores_response(scored, model, t, [], request)
