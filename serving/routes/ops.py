"""Operations routes: liveness, readiness, Prometheus metrics, the served model and its reload."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from serving.auth import require_role
from serving.deps import AdminKey, ModelDep, ReadKey, SettingsDep, StoreDep
from serving.errors import NotFoundError
from serving.metrics import CONTENT_TYPE_LATEST, ServiceMetrics
from serving.model_holder import LoadedModel, ModelHolder, PopulationCache
from serving.monitor_state import MonitorStateCache
from serving.schemas import ModelInfo, Readiness
from serving.settings import Settings

logger = logging.getLogger(__name__)

router = APIRouter(tags=["operations"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """Liveness: the process answers (even without a model)."""
    return {"status": "ok"}


@router.head("/healthz", include_in_schema=False)
async def healthz_head() -> Response:
    """Liveness for monitors that send HEAD: 200, no body."""
    return Response(status_code=200)


@router.get("/readyz", response_model=Readiness,
            responses={503: {"model": Readiness, "description": "not ready, with the reasons"}})
def readyz(request: Request, store: StoreDep) -> JSONResponse:
    """Readiness: a model is loaded, the feature population computed and the store answers; otherwise
    503 with the reasons. `degraded` (200): serving, but the last reload or population refresh failed
    (e.g. the MLflow store is unreachable) or the live scorer is not running; the reason says what
    failed, never where files live. `live_scorer`: whether the live scorer runs, in a process of its own
    (with its pid and how often it was started again) or as a thread."""
    holder: ModelHolder = request.app.state.model_holder
    reasons: list[str] = []
    model = holder.current()
    if model is None:
        reasons.append(f"no model loaded: {holder.last_error or 'not loaded yet'}")
    population: PopulationCache = request.app.state.population
    if not population.available and population.last_error is not None:
        reasons.append(f"feature population unavailable: {population.last_error}")
    try:
        store_ok = bool(store.ping())
    except Exception as exc:  # noqa: BLE001 - readiness reports any store failure as a reason
        store_ok = False
        logger.warning("readiness: store unreachable: %s: %s", type(exc).__name__, exc)
        reasons.append(f"store unreachable: {type(exc).__name__}")
    else:
        if not store_ok:
            reasons.append("store unreachable")
    warnings: list[str] = []
    if holder.last_error and model is not None:
        warnings.append(f"last model reload failed, still serving version {model.version}: "
                        f"{holder.last_error}")
    if population.last_error and population.available:
        warnings.append(f"last feature population refresh failed: {population.last_error}")
    live_scores = getattr(request.app.state, "live_scores", None)
    scorer = live_scores.status() if live_scores is not None else None
    if scorer is not None and not scorer["running"]:
        # requests are served; the live scores only get older until the scorer runs again
        warnings.append(f"the live scorer ({scorer['mode']}) is not running"
                        + (f": it {scorer['last_exit']}" if scorer.get("last_exit") else ""))
    status = "not ready" if reasons else ("degraded" if warnings else "ready")
    body: dict[str, Any] = {
        "status": status,
        "model_version": model.version if model else None,
        "reasons": reasons,
        "warnings": warnings,
    }
    if holder.last_error and model is not None:
        body["last_reload_error"] = holder.last_error
    if population.last_error and population.available:
        body["last_population_error"] = population.last_error
    if scorer is not None:
        body["live_scorer"] = scorer
    return JSONResponse(body, status_code=200 if not reasons else 503)


@router.get("/metrics", include_in_schema=False)
async def metrics(request: Request) -> Response:
    """Prometheus exposition of this process's metrics. Needs a key of any role unless the setting
    `public_metrics` is on (then a scraper without credentials may read it)."""
    settings: Settings = request.app.state.settings
    if not settings.public_metrics:
        require_role("admin", "manager", "integration")(request)
    service_metrics: ServiceMetrics = request.app.state.metrics
    return Response(service_metrics.render(), media_type=CONTENT_TYPE_LATEST)


@router.get("/v1/model/monitor")
def get_model_monitor(key: ReadKey, model: ModelDep, settings: SettingsDep, request: Request) -> JSONResponse:
    """The latest monitor report of the model being served, as `dealrisk monitor` (run from cron) left
    it: state (ok, watch, retrain) with its reasons, observed rate against predicted probability per
    risk band and per week on outcomes known since training, and feature drift (population stability
    index per feature). 404 when the served version has not been monitored yet. Reading it also
    refreshes the state `/metrics` and the manager page show (`dealrisk_model_monitor_state`)."""
    from models.loading import load_monitor_report

    report = load_monitor_report(model.version, settings.tracking_uri)
    cache: MonitorStateCache | None = getattr(request.app.state, "monitor_state", None)
    if cache is not None:  # /metrics and the page show what was just read
        cache.update(model.version, report)
    if report is None:
        raise NotFoundError(
            f"no monitor report for model version {model.version} yet; "
            "run `dealrisk monitor` (e.g. from cron)"
        )
    return JSONResponse(report)


def model_info(model: LoadedModel) -> ModelInfo:
    """What is known about a loaded model, from its bundle's metadata."""
    meta = model.metadata
    metrics = meta.get("metrics")
    horizon = meta.get("horizon_days", meta.get("horizon"))
    trained_at = meta.get("trained_at")
    return ModelInfo(
        model_version=model.version,
        model_uri=model.model_uri,
        loaded_at=model.loaded_at,
        trained_at=str(trained_at) if trained_at is not None else None,
        horizon_days=float(horizon) if isinstance(horizon, int | float) else None,
        metrics=metrics if isinstance(metrics, dict) else {},
        served={str(k): str(v) for k, v in _dict_or_empty(meta.get("served")).items()},
        metrics_by_model=_dict_or_empty(meta.get("metrics_by_model")),
        calibration=_dict_or_empty(meta.get("calibration")),
        metadata={k: v for k, v in meta.items() if k != "metrics" and _is_json_scalar(v)},
    )


def _dict_or_empty(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _is_json_scalar(value: Any) -> bool:
    return isinstance(value, str | int | float | bool) or value is None


@router.get("/v1/model", response_model=ModelInfo)
def get_model_info(key: ReadKey, model: ModelDep) -> ModelInfo:
    """The model being served: registry version, training time, horizon and test metrics."""
    return model_info(model)


@router.post("/v1/model/reload", response_model=ModelInfo)
def reload_model(key: AdminKey, request: Request) -> ModelInfo:
    """Load the model the registry alias points at now and serve it.

    409 (old model kept) or 503 (no model at all) with the reason when the new one fails to load.
    """
    holder: ModelHolder = request.app.state.model_holder
    return model_info(holder.reload_or_raise())
