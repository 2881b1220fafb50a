"""Review routes for the manager page: one deal's score history, and what changed in a pipeline.

Reads only (admin and manager keys). A deal or pipeline outside the key answers 404 as if absent.
"""

from __future__ import annotations

from typing import Annotated, Any

import pandas as pd
from fastapi import APIRouter, Query

from features.changes import deal_changes
from features.jsonable import jsonable
from models.at_risk import rank_at_risk
from models.forecast import score_open_deals
from models.score_history import TooManyPointsError, score_history
from serving.deps import (
    DealIdPath,
    FeatureBuilderDep,
    ModelDep,
    PipelinePath,
    ReadKey,
    StoreDep,
    require_visible_pipeline,
)
from serving.errors import InvalidInputError, NotFoundError
from serving.mapping import time_or
from serving.model_holder import builder_for
from serving.schemas import UtcTime

router = APIRouter(tags=["review"])

DEFAULT_HISTORY_WEEKS = 12
DEFAULT_CHANGES_DAYS = 7


def _window(since: UtcTime | None, until: UtcTime | None, default: pd.Timedelta) -> tuple[pd.Timestamp,
                                                                                          pd.Timestamp]:
    t1 = time_or(until)
    t0 = time_or(since, t1 - default)
    if t0 > t1:
        raise InvalidInputError(f"since ({t0.isoformat()}) is after until ({t1.isoformat()})", loc="since")
    return t0, t1


@router.get("/v1/deals/{deal_id:path}/score-history")
def deal_score_history(
    deal_id: DealIdPath,
    key: ReadKey,
    store: StoreDep,
    model: ModelDep,
    builder: FeatureBuilderDep,
    since: Annotated[UtcTime | None, Query(description="default: until minus 12 weeks")] = None,
    until: Annotated[UtcTime | None, Query(description="default: now")] = None,
) -> dict[str, Any]:
    """The deal's scores week by week (counted back from `until`, while the deal was open):
    `{as_of, cold_risk, close_probability, risk_band, stage, changes: [{feature, text, effect}]}`, where
    `changes` are the contributions to the cold risk that moved most since the previous point (`effect`
    is the change in log-odds; positive raised the risk). At most 160 points. Names the model version."""
    pipeline = store.deal_pipelines([deal_id]).get(deal_id)
    if pipeline is None or not key.can_see(pipeline):
        raise NotFoundError("deal not found")
    t0, t1 = _window(since, until, pd.Timedelta(weeks=DEFAULT_HISTORY_WEEKS))
    history = store.load_history(deal_ids=[deal_id], trusted=True)
    try:
        points = score_history(model.bundle, history, deal_id, t0, t1, builder_for(builder, history))
    except TooManyPointsError as exc:
        raise InvalidInputError(str(exc), loc="since") from exc
    return {"deal_id": deal_id, "pipeline": pipeline, "model_version": model.version,
            "since": t0.isoformat(), "until": t1.isoformat(), "points": points}


@router.get("/v1/pipelines/{pipeline:path}/changes")
def pipeline_changes(
    pipeline: PipelinePath,
    key: ReadKey,
    store: StoreDep,
    model: ModelDep,
    builder: FeatureBuilderDep,
    since: Annotated[UtcTime | None, Query(description="default: until minus 7 days")] = None,
    until: Annotated[UtcTime | None, Query(description="default: now")] = None,
) -> dict[str, Any]:
    """What changed in the pipeline between `since` and `until`: close dates pushed (and pulled in),
    amounts changed, stage moves (forward, back, won, lost, reopened, by the pipeline's stage order), and
    deals newly at risk (in the high band of the going-cold list at `until`, not at `since`). Names the
    model version."""
    require_visible_pipeline(store, key, pipeline)
    t0, t1 = _window(since, until, pd.Timedelta(days=DEFAULT_CHANGES_DAYS))
    history = store.load_history(pipelines=[pipeline])
    fitted = builder_for(builder, history)
    now = rank_at_risk(score_open_deals(model.bundle, history, t1, fitted), history, t1)
    then = rank_at_risk(score_open_deals(model.bundle, history, t0, fitted), history, t0)
    was_high = set(then.loc[(then["risk_band"] == "high") & ~then["stale"], "deal_id"].astype(str))
    newly = now[(now["risk_band"] == "high") & ~now["stale"] & ~now["deal_id"].astype(str).isin(was_high)]
    columns = ["deal_id", "owner", "team", "stage", "amount", "cold_risk", "close_probability",
               "value_at_risk"]
    newly_records = [
        {**{c: jsonable(r[c]) for c in columns}, "reasons": r["reasons"]}
        for r in newly.to_dict("records")
    ]
    return {"pipeline": pipeline, "model_version": model.version, "since": t0.isoformat(),
            "until": t1.isoformat(), **deal_changes(history, t0, t1), "newly_at_risk": newly_records}

