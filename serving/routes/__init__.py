"""Route modules; `include_routers(app)` mounts them all."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.responses import Response
from pydantic import BaseModel


def answer(body: BaseModel) -> Response:
    """The answer as its JSON body, for a route that declares the model as its response model: FastAPI
    would validate a returned model again (for a plain `def` route in a threadpool hop of its own) before
    encoding it."""
    return Response(body.model_dump_json(), media_type="application/json")


def include_routers(app: FastAPI) -> None:
    """Mount every router of the service (operations, scoring, history, pipelines, the manager page)."""
    from serving.page import page_router
    from serving.routes import challenger, history, ops, pipeline_specs, pipelines, review, scoring

    # A deal id or pipeline name may hold '/' ("EU/North", sent as EU%2FNorth, which arrives decoded): their
    # path parameters take the `path` converter, so the routes with a suffix (/score, /score-history,
    # /at-risk, /stale, /health, /forecast, /changes) are mounted BEFORE the bare /v1/deals/{deal_id} and
    # /v1/pipelines/{pipeline} (history, pipeline_specs), which would otherwise take the suffix as part
    # of the id. The first matching route wins.
    app.include_router(ops.router)
    app.include_router(scoring.router)
    app.include_router(review.router)
    app.include_router(pipelines.router)
    app.include_router(history.router)
    app.include_router(pipeline_specs.router)
    app.include_router(challenger.router)
    app.include_router(page_router)
