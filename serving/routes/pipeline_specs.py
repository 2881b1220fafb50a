"""A pipeline's spec: read it (any role that may see the pipeline), set it (admin).

A spec set here is authoritative: stage changes to a stage outside it answer 422 naming the allowed
stages. Until one is set, a pipeline has the spec the store inferred from its data (`inferred: true`),
extended as new stages arrive.
"""

from __future__ import annotations

from fastapi import APIRouter, Request

from features.history import PipelineSpec
from serving.deps import AdminKey, AnyKey, PipelinePath, StoreDep, after_write
from serving.errors import NotFoundError
from serving.schemas import PipelineOut, PipelineSpecIn

router = APIRouter(tags=["pipelines"])

PipelineName = PipelinePath


def _out(spec: PipelineSpec) -> PipelineOut:
    return PipelineOut(
        name=spec.name,
        stages=list(spec.stages),
        won=list(spec.won),
        lost=list(spec.lost),
        stale_after_days=dict(spec.stale_after_days),
        inferred=spec.inferred,
    )


@router.get("/v1/pipelines/{pipeline:path}", response_model=PipelineOut)
def get_pipeline(pipeline: PipelineName, key: AnyKey, store: StoreDep) -> PipelineOut:
    """The pipeline's spec: open stages in order, won and lost stages, stale thresholds, and whether it
    was inferred from the data or given."""
    spec = store.pipeline_spec(pipeline) if key.can_see(pipeline) else None
    if spec is None:
        raise NotFoundError("pipeline not found")
    return _out(spec)


@router.put("/v1/pipelines/{pipeline:path}", response_model=PipelineOut)
def put_pipeline(
    pipeline: PipelineName, body: PipelineSpecIn, key: AdminKey, request: Request, store: StoreDep
) -> PipelineOut:
    """Set the pipeline's spec (admin); it becomes authoritative. Creates the pipeline when new.

    Refused with 422, changing nothing, when stored deals of the pipeline use a stage the spec lacks.
    The pipeline's deals take the new spec's outcomes (won / lost stages) at once.
    """
    if not key.can_see(pipeline):
        raise NotFoundError("pipeline not found")
    spec = PipelineSpec(
        name=pipeline,
        stages=tuple(body.stages),
        won=tuple(body.won),
        lost=tuple(body.lost),
        stale_after_days=dict(body.stale_after_days),
    )
    result = store.set_pipeline_spec(spec)
    if result.changed:
        after_write(request)
    stored = store.pipeline_spec(pipeline)
    assert stored is not None  # just written in a committed transaction
    return _out(stored)
