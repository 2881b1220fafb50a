"""History routes: store deals and events (idempotent), read a stored deal with its history.

Writes are all or nothing: a request with any bad item is rejected with 422 listing every bad item, and
nothing is written; a request that succeeds is committed in one transaction before it is acknowledged.
"""

from __future__ import annotations

import logging
from typing import Any

import pandas as pd
from fastapi import APIRouter, Request

from features.history import DealHistory, HistoryValidationError
from serving.deps import ReadKey, SettingsDep, StoreDep, WriteKey
from serving.errors import InvalidInputError, NotFoundError, check_batch_size, raise_history_error
from serving.model_holder import PopulationCache
from serving.routes.scoring import ACTIVITY_FIELDS, DEAL_FIELDS, FIELD_CHANGE_FIELDS, STAGE_FIELDS, _value
from serving.schemas import DealOut, DealsIn, EventsIn, WriteResult

logger = logging.getLogger(__name__)

router = APIRouter(tags=["history"])

EVENT_FIELDS = {
    "stage_changes": STAGE_FIELDS, "activities": ACTIVITY_FIELDS, "field_changes": FIELD_CHANGE_FIELDS,
}


def mark_dirty(request: Request) -> None:
    """After a committed write: refit the population lazily, and re-score the written deals."""
    population: PopulationCache = request.app.state.population
    population.mark_dirty()
    live_scores = getattr(request.app.state, "live_scores", None)
    if live_scores is not None:
        live_scores.notify()  # the written deals' scores are due: the next read sees them re-scored


def _bad_items(problems: list[dict[str, Any]]) -> None:
    if problems:
        summary = "; ".join(f"{p['loc']}: {p['msg']}" for p in problems[:20])
        raise InvalidInputError(summary, problems)


@router.post("/v1/deals", response_model=WriteResult)
def post_deals(
    body: DealsIn, key: WriteKey, request: Request, settings: SettingsDep, store: StoreDep
) -> WriteResult:
    """Store deals (insert new ones, update changed ones). Sending the same deals again changes nothing.

    A deal in a pipeline the key may not see, or whose id belongs to such a pipeline, is a bad item
    ("deal not found" / "pipeline not found").
    """
    check_batch_size(len(body.deals), settings.max_batch_deals)
    existing = store.deal_pipelines(d.deal_id for d in body.deals)
    problems: list[dict[str, Any]] = []
    for i, deal in enumerate(body.deals):
        stored_pipeline = existing.get(deal.deal_id)
        if stored_pipeline is not None and not key.can_see(stored_pipeline):
            problems.append({"loc": f"deals[{i}].deal_id", "msg": "deal not found", "status": 404})
        elif not key.can_see(deal.pipeline):
            problems.append({"loc": f"deals[{i}].pipeline", "msg": "pipeline not found", "status": 404})
    _bad_items(problems)
    rows = [{**{f: _value(d, f) for f in DEAL_FIELDS}, **d.attributes} for d in body.deals]
    columns = [*DEAL_FIELDS, *dict.fromkeys(k for r in rows for k in r if k not in DEAL_FIELDS)]
    empty = {t: pd.DataFrame(columns=list(cols)) for t, cols in EVENT_FIELDS.items()}
    try:
        history = DealHistory.from_frames(
            pd.DataFrame(rows, columns=columns), empty["stage_changes"], empty["activities"],
            empty["field_changes"], pipelines=store.pipeline_specs(), source="request",
        )
    except HistoryValidationError as exc:
        raise_history_error(exc, {"deals": [f"deals[{i}]" for i in range(len(rows))]})
        raise
    result = store.upsert_deals(history.deals)
    if result.changed:
        mark_dirty(request)
    return WriteResult(inserted=result.inserted, duplicates=result.duplicates, updated=result.updated)


@router.post("/v1/events", response_model=WriteResult)
def post_events(body: EventsIn, key: WriteKey, request: Request, store: StoreDep) -> WriteResult:
    """Store stage changes, activities and field changes of stored deals, idempotently (on `event_id`,
    or on the whole row without one). Events of unknown deals, or of deals outside the key's
    pipelines, are bad items ("deal not found")."""
    lists: dict[str, list[Any]] = {"stage_changes": body.stage_changes, "activities": body.activities,
             "field_changes": body.field_changes}
    if not any(lists.values()):
        return WriteResult(inserted=0, duplicates=0)
    ids = {e.deal_id for events in lists.values() for e in events}
    pipelines = store.deal_pipelines(ids)
    visible = {d for d, p in pipelines.items() if key.can_see(p)}
    problems = [
        {"loc": f"{table}[{j}].deal_id", "msg": "deal not found", "status": 404}
        for table, events in lists.items() for j, e in enumerate(events) if e.deal_id not in visible
    ]
    _bad_items(problems)
    frames = {
        table: pd.DataFrame([{f: _value(e, f) for f in EVENT_FIELDS[table]} for e in events],
                            columns=list(EVENT_FIELDS[table]))
        for table, events in lists.items()
    }
    stored = store.deals_frame(visible)
    # Only given specs refuse unknown stages; an inferred one is extended by the store's write.
    given = {name: spec for name, spec in store.pipeline_specs().items() if not spec.inferred}
    try:
        # Validate only the new events against their deals: rows map one to one onto request items.
        # The store checks them again against what it holds, inside the write's transaction.
        checked = DealHistory.from_frames(
            stored, frames["stage_changes"], frames["activities"], frames["field_changes"],
            pipelines={p: s for p, s in given.items() if p in set(stored["pipeline"])}, source="request",
        )
    except HistoryValidationError as exc:
        locators = {t: [f"{t}[{j}]" for j in range(len(events))] for t, events in lists.items()}
        locators["deals"] = [f"stored deal {d}" for d in stored["deal_id"]]
        raise_history_error(exc, locators)
        raise
    result = store.add_events(checked.stage_changes, checked.activities, checked.field_changes)
    if result.changed:
        mark_dirty(request)
    return WriteResult(inserted=result.inserted, duplicates=result.duplicates, updated=result.updated)


def _records(frame: pd.DataFrame, columns: tuple[str, ...]) -> list[dict[str, Any]]:
    out = frame[[c for c in columns if c in frame.columns]].astype(object)
    records = out.where(out.notna(), None).to_dict(orient="records")
    return [{str(k): v for k, v in r.items()} for r in records]


@router.get("/v1/deals/{deal_id}", response_model=DealOut)
def get_deal(deal_id: str, key: ReadKey, store: StoreDep) -> DealOut:
    """A stored deal as created, with its whole history (stage changes, activities, field changes)."""
    pipeline = store.deal_pipelines([deal_id]).get(deal_id)
    if pipeline is None or not key.can_see(pipeline):
        raise NotFoundError("deal not found")
    history = store.load_history(deal_ids=[deal_id])
    deal = _records(history.deals, (*DEAL_FIELDS, *history.attribute_columns))[0]
    attributes = {c: deal.pop(c) for c in history.attribute_columns if c in deal}
    return DealOut.model_validate({
        **deal,
        "attributes": attributes,
        "stage_changes": _records(history.stage_changes, STAGE_FIELDS[1:]),
        "activities": _records(history.activities, ACTIVITY_FIELDS[1:]),
        "field_changes": _records(history.field_changes, FIELD_CHANGE_FIELDS[1:]),
    })
