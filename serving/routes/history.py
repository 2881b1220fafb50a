"""History routes: store deals and events (idempotent), read a stored deal with its history.

Writes are all or nothing: a request with any bad item is rejected with 422 listing every bad item, and
nothing is written; a request that succeeds is committed in one transaction before it is acknowledged.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import anyio.to_thread
import pandas as pd
from fastapi import APIRouter, Request, Response
from starlette.concurrency import run_in_threadpool

from features.history import PipelineSpec
from features.jsonable import jsonable
from features.validation import DEAL_COLUMNS, EVENT_COLUMNS
from serving.deps import DealIdPath, ReadKey, SettingsDep, StoreDep, WriteKey, WriteKeyCheck, after_write
from serving.errors import InvalidInputError, NotFoundError, check_batch_size
from serving.mapping import checked_event_rows, deal_frames, validated_history
from serving.routes import answer
from serving.schemas import DealOut, DealsIn, EventsIn, WriteResult

logger = logging.getLogger(__name__)

router = APIRouter(tags=["history"])

def _bad_items(problems: list[dict[str, Any]]) -> None:
    if problems:
        summary = "; ".join(f"{p['loc']}: {p['msg']}" for p in problems[:20])
        raise InvalidInputError(summary, problems)


@router.post("/v1/deals", response_model=WriteResult)
async def post_deals(
    body: DealsIn, key: WriteKey, request: Request, settings: SettingsDep, store: StoreDep
) -> WriteResult:
    """Store deals (insert new ones, update changed ones). Sending the same deals again changes nothing.

    A deal in a pipeline the key may not see, or whose id belongs to such a pipeline, is a bad item
    ("deal not found" / "pipeline not found"). The request's reads and its write are one transaction.
    """
    check_batch_size(len(body.deals), settings.max_batch_deals)

    def build(existing: Mapping[str, str], specs: Mapping[str, PipelineSpec]) -> pd.DataFrame:
        problems: list[dict[str, Any]] = []
        for i, deal in enumerate(body.deals):
            stored_pipeline = existing.get(deal.deal_id)
            if stored_pipeline is not None and not key.can_see(stored_pipeline):
                problems.append({"loc": f"deals[{i}].deal_id", "msg": "deal not found", "status": 404})
            elif not key.can_see(deal.pipeline):
                problems.append({"loc": f"deals[{i}].pipeline", "msg": "pipeline not found", "status": 404})
        _bad_items(problems)
        return validated_history(deal_frames(body.deals), specs).deals

    def write() -> WriteResult:
        result = store.write_deals({d.deal_id: d.pipeline for d in body.deals}, build)
        if result.changed:
            after_write(request)
        # the deals' counts: a pipeline created (or extended) with them is not a deal written
        deals = result.tables["deals"]
        return WriteResult(inserted=deals.inserted, duplicates=deals.duplicates, updated=deals.updated)

    return await _on_write_threads(request, write)


@router.post("/v1/events", response_model=WriteResult)
async def post_events(body: EventsIn, check: WriteKeyCheck, request: Request, store: StoreDep) -> Response:
    """Store stage changes, activities and field changes of stored deals, idempotently (on `event_id`,
    or on the whole row without one). Events of unknown deals, or of deals outside the key's
    pipelines, are bad items ("deal not found"). The request's reads and its write are one transaction.

    `async`, with the key check and the write in one threadpool hop (`WriteKeyCheck`): as a plain `def`
    route with a `def` key check it took three (the key check, the route, FastAPI's validation of the
    returned model), and built frames of the few rows it checks; the checks run on their columns
    (`serving.mapping.checked_event_rows`)."""
    lists: dict[str, list[Any]] = {"stage_changes": body.stage_changes, "activities": body.activities,
             "field_changes": body.field_changes}
    if not any(lists.values()):
        await run_in_threadpool(check)
        return answer(WriteResult(inserted=0, duplicates=0))

    def build(
        stored: Sequence[Mapping[str, Any]], specs: Mapping[str, PipelineSpec]
    ) -> dict[str, list[dict[str, Any]]]:
        key = check()  # checked first in the transaction (`first`): answers at once
        mine = [row for row in stored if key.can_see(str(row["pipeline"]))]
        visible = {str(row["deal_id"]) for row in mine}
        problems = [
            {"loc": f"{table}[{j}].deal_id", "msg": "deal not found", "status": 404}
            for table, events in lists.items() for j, e in enumerate(events) if e.deal_id not in visible
        ]
        _bad_items(problems)
        # Only given specs refuse unknown stages; an inferred one is extended by the store's write. Only
        # the new events are checked against their deals (rows map one to one onto request items); the
        # store checks them again against what it holds.
        given = {name: spec for name, spec in specs.items() if not spec.inferred}
        return checked_event_rows(body, mine, given)

    ids = {e.deal_id for events in lists.values() for e in events}

    def write() -> WriteResult:
        # The caller's key is read first in the write's transaction: 401 / 403 as a `def` dependency
        # answers, before anything else is read. Only stage changes are checked against a spec: without
        # them the transaction reads none.
        result = store.write_events(ids, build, with_specs=bool(body.stage_changes), first=check,
                                    key_id=check.key_id)
        if result.changed:
            after_write(request)
        return WriteResult(inserted=result.inserted, duplicates=result.duplicates, updated=result.updated)

    return answer(await _on_write_threads(request, write))


async def _on_write_threads(request: Request, write: Callable[[], WriteResult]) -> WriteResult:
    """`write()` on the writers' threads (`serving.app`): a write queued for its turn at the store holds
    none of the threads that run reads and scoring."""
    limiter = getattr(request.app.state, "write_threads", None)  # None: an app started without lifespan
    return await anyio.to_thread.run_sync(write, limiter=limiter)


def _records(frame: pd.DataFrame, columns: tuple[str, ...]) -> list[dict[str, Any]]:
    records = frame[[c for c in columns if c in frame.columns]].to_dict(orient="records")
    return [{str(k): jsonable(v) for k, v in r.items()} for r in records]


@router.get("/v1/deals/{deal_id:path}", response_model=DealOut)
def get_deal(deal_id: DealIdPath, key: ReadKey, store: StoreDep) -> DealOut:
    """A stored deal as created, with its whole history (stage changes, activities, field changes)."""
    pipeline = store.deal_pipelines([deal_id]).get(deal_id)
    if pipeline is None or not key.can_see(pipeline):
        raise NotFoundError("deal not found")
    history = store.load_history(deal_ids=[deal_id], trusted=True)
    deal = _records(history.deals, (*DEAL_COLUMNS, *history.attribute_columns))[0]
    attributes = {c: deal.pop(c) for c in history.attribute_columns if c in deal}
    return DealOut.model_validate({
        **deal,
        "attributes": attributes,
        "stage_changes": _records(history.stage_changes, EVENT_COLUMNS["stage_changes"][1:]),
        "activities": _records(history.activities, EVENT_COLUMNS["activities"][1:]),
        "field_changes": _records(history.field_changes, EVENT_COLUMNS["field_changes"][1:]),
    })
