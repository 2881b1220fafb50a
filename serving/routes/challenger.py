"""Shadow challengers (admin only): name a registered version to score beside the champion, see how both
did on the outcomes known since, clear it. Its scores never appear in any manager-facing response."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from serving.challenger import Challenger
from serving.deps import AdminKey, StoreDep
from serving.errors import NotFoundError
from serving.model_holder import ModelHolder
from serving.schemas import ChallengerIn, ChallengerOut

router = APIRouter(tags=["operations"])

NO_CHALLENGER = "no challenger is set; POST /v1/model/challenger names one"


def _challenger(request: Request) -> Challenger:
    challenger: Challenger = request.app.state.challenger
    return challenger


def _challenger_changed(request: Request) -> None:
    """Tell the live scorer (a thread, or the scorer process, which reads the setting back from the
    store): what is due is scored with the challenger named now, or without one."""
    live_scores = getattr(request.app.state, "live_scores", None)
    if live_scores is not None:
        live_scores.challenger_changed()


@router.post("/v1/model/challenger", response_model=ChallengerOut)
def set_challenger(body: ChallengerIn, key: AdminKey, request: Request) -> ChallengerOut:
    """Name a registered version of the model as the shadow challenger (replacing any other). From now on
    every live score is computed with it too and stored apart; managers never see those scores. 404 when
    the model has no such version, 422 when it is the champion or cannot be loaded. Kept across restarts."""
    holder: ModelHolder = request.app.state.model_holder
    champion = holder.current()
    challenger = _challenger(request)
    challenger.set(body.model_version, champion.version if champion else None, key.key_id)
    _challenger_changed(request)
    status = challenger.status()
    assert status is not None
    return ChallengerOut(**status)


@router.delete("/v1/model/challenger", response_model=ChallengerOut)
def clear_challenger(key: AdminKey, request: Request) -> ChallengerOut:
    """Stop shadow scoring; answers the challenger that was cleared (404 when none was set). Its stored
    scores stay, so its report can be read again if it is named again."""
    challenger = _challenger(request)
    status = challenger.status()
    if status is None:
        raise NotFoundError(NO_CHALLENGER)
    challenger.clear()
    _challenger_changed(request)
    return ChallengerOut(**status)


@router.get("/v1/model/challenger")
def get_challenger(key: AdminKey, request: Request, store: StoreDep) -> JSONResponse:
    """The shadow challenger and how it did beside the champion: on every stored pair of their live scores
    (same deal, same time) whose outcome is known now (close: won or lost since; cold: went cold within
    the horizon or not), per head ROC AUC, Brier, log loss and ECE of both with bootstrap intervals over
    deals, the paired difference (challenger − champion), counts, and a verdict: better, worse or no
    detectable difference. 404 when no challenger is set. Computed on the first request after a pair is
    stored, a paired deal is written or a label settles with time, else the kept report (its `as_of` is
    when it was computed: `Challenger.report`). Admin only."""
    challenger = _challenger(request)
    status = challenger.status()
    if status is None:
        raise NotFoundError(NO_CHALLENGER)
    holder: ModelHolder = request.app.state.model_holder
    champion = holder.require()
    report: dict[str, Any] = challenger.report(store, champion, status["model_version"])
    return JSONResponse({"challenger": status, **report})
