"""The FastAPI application: `create_app(settings)`; uvicorn runs `serving.app:create_app` as a factory.

Lifespan opens the store (creating its schema), loads the model once, fits the feature population (then
refreshed by its own background thread, never on a request's path), starts the live scorer (in a child
process, `serving.scorer_process`, or as threads: the `live_scorer` setting) and the background loops
(`serving.background`) that follow the registry alias (swapping the model atomically)
and the monitor state, and learns each pipeline's won deals' visits for health (`Store.keep_won_visits`).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import json
import logging
import time
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import parse_qsl

import anyio
import anyio.to_thread
from fastapi import FastAPI, HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serving.background import BackgroundLoop
from serving.challenger import Challenger
from serving.errors import install_error_handlers
from serving.health_cache import HealthCache
from serving.live_scores import LiveScorer, LiveScoring
from serving.metrics import ServiceMetrics
from serving.model_holder import ModelHolder, NewDealCache, PopulationCache
from serving.monitor_state import GAUGE_STATES, MonitorStateCache
from serving.schemas import ErrorBody
from serving.score_archive import ScoreArchive
from serving.scorer_process import ScorerProcess, published_population_path
from serving.settings import Settings, get_settings
from serving.stage_limits import StageLimitRefresher
from serving.store import Store

logger = logging.getLogger(__name__)
access_logger = logging.getLogger("serving.access")

__all__ = ["ERROR_RESPONSES", "create_app"]

# The one error body (serving.errors) documented on every operation, so clients and schema checks
# (schemathesis) know what a 4xx or 503 holds.
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorBody, "description": text}
    for status, text in [
        (400, "the body could not be read as text (e.g. not UTF-8)"),
        (401, "missing, invalid or revoked API key (or a key sent in the URL)"),
        (403, "the key's role may not do this"),
        (404, "absent, or outside the key's pipelines"),
        (409, "conflicts with what is stored (or a reload that kept the old model)"),
        (413, "request body or batch over its limit"),
        (422, "bad input: `problems` names each bad item or field"),
        (503, "no model loaded, store unreachable, or over the concurrency limit (see Retry-After)"),
    ]
}


class _BodyTooLarge(HTTPException):
    def __init__(self, limit: int) -> None:
        super().__init__(status_code=413, detail=f"request body exceeds the limit of {limit} bytes")


# Query parameters that would carry a credential in the URL, where proxies, browsers and access logs keep
# it. Such a request is refused before anything reads it, and the access log never holds query strings.
SECRET_QUERY_PARAMS = frozenset({"api_key", "apikey", "api-key", "access_token", "token"})
# Probes answer even when the service sheds load: an orchestrator must not restart a busy process.
UNSHED_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
# How often the service checks whether the store grew enough to take the planner's statistics again
# (`Store.refresh_planner_stats`).
PLANNER_STATS_INTERVAL_S = 60.0
# How often the service learns the won deals' visits of the pipelines it keeps none of under their current
# spec (`Store.keep_won_visits`): at start, then for a pipeline whose spec changed (or that is new).
WON_VISITS_INTERVAL_S = 60.0


class RequestGuard:
    """Pure ASGI middleware: credentials in URLs refused, load shedding, body-size limit, metrics and one
    JSON access-log line per request.

    Load shedding: at most `max_concurrent` requests are in flight; one more answers 503 with
    `Retry-After` at once instead of waiting in an unbounded queue (the event loop and the threadpool
    would otherwise queue every request a client sends, and every one would time out together).
    The body limit is enforced before the body is read in full: a declared Content-Length over it
    answers 413 at once; otherwise the streamed chunks are counted and the read fails as soon as they
    pass it.
    """

    def __init__(self, app: ASGIApp, max_body_bytes: int, metrics: ServiceMetrics,
                 max_concurrent: int = 64, retry_after_s: int = 1) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.metrics = metrics
        self.max_concurrent = max_concurrent
        self.retry_after_s = retry_after_s
        # Touched only on the event loop (no await between the check and the increment): no lock needed.
        self.in_flight = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500
        response_started = False
        limit = self.max_body_bytes

        async def send_wrapper(message: Message) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                status = int(message["status"])
                response_started = True
            await send(message)

        received = 0

        async def receive_wrapper() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise _BodyTooLarge(limit)
            return message

        counted = False
        try:
            declared = _content_length(scope)
            if _secret_in_query(scope):
                await _send_json(send_wrapper, 401, {"detail": (
                    "API keys go in the 'Authorization: Bearer <key>' header, never in the URL; "
                    "treat a key sent in a URL as exposed and revoke it")},
                    extra_headers=[(b"www-authenticate", b"Bearer")])
            elif scope["path"] not in UNSHED_PATHS and self.in_flight >= self.max_concurrent:
                self.metrics.observe_shed()
                await _send_json(send_wrapper, 503, {"detail": (
                    f"the service is at its limit of {self.max_concurrent} concurrent requests; "
                    f"retry after {self.retry_after_s} s")},
                    extra_headers=[(b"retry-after", str(self.retry_after_s).encode())])
            elif declared is not None and declared > limit:
                await _send_json(send_wrapper, 413, {"detail": _BodyTooLarge(limit).detail})
            else:
                self.in_flight += 1
                counted = True
                await self.app(scope, receive_wrapper, send_wrapper)
        except _BodyTooLarge as exc:
            if response_started:
                raise
            await _send_json(send_wrapper, 413, {"detail": exc.detail})
        finally:
            if counted:
                self.in_flight -= 1
            seconds = time.perf_counter() - started
            route = scope.get("route")
            # path_format: the template without its converters ({deal_id}, not {deal_id:path})
            template = getattr(route, "path_format", None) or getattr(route, "path", None) or "<unmatched>"
            self.metrics.observe_request(template, scope["method"], status, seconds)
            state = scope.get("state") or {}
            access_logger.info(json.dumps({
                "method": scope["method"],
                "path": scope["path"],
                "route": template,
                "status": status,
                "duration_ms": round(seconds * 1000, 3),
                "key_id": state.get("key_id") if isinstance(state, dict) else None,
            }))


def _secret_in_query(scope: Scope) -> bool:
    query = scope.get("query_string", b"")
    if not query:
        return False
    names = {name.lower() for name, _ in parse_qsl(query.decode("latin-1"), keep_blank_values=True)}
    return not names.isdisjoint(SECRET_QUERY_PARAMS)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


async def _send_json(send: Send, status: int, body: dict[str, Any],
                     extra_headers: list[tuple[bytes, bytes]] | None = None, close: bool = True) -> None:
    payload = json.dumps(body).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
    if close:  # the unread body would otherwise be taken for the next request on the connection
        headers.append((b"connection", b"close"))
    await send({
        "type": "http.response.start",
        "status": status,
        "headers": headers + list(extra_headers or []),
    })
    await send({"type": "http.response.body", "body": payload})


def _monitor_round(
    holder: ModelHolder, monitor: MonitorStateCache, archive: ScoreArchive, retention_days: float
) -> None:
    """Re-read the served version's monitor state and prune old score history."""
    model = holder.current()
    monitor.refresh(model.version if model else None)
    archive.prune(retention_days)


def _prime_population(population: PopulationCache) -> None:
    try:
        population.get()
    except Exception:  # noqa: BLE001 - an empty or odd store must not stop the service from starting
        logger.warning("could not compute the feature population at start", exc_info=True)


# Threads that writes (`POST /v1/deals`, `/v1/events`) take (`app.state.write_threads`): beside the request
# threads, so writers queued for their turn at the store never hold up reads and scoring.
WRITE_THREADS = 40


def _bound_request_threads(app: FastAPI, request_threads: int) -> None:
    """At most `request_threads` threads run requests' blocking work at once (anyio's default limiter of
    this event loop, which FastAPI runs plain `def` routes and dependencies with; anyio's own default is
    40). CPU-bound requests on more threads than cores only take turns at the interpreter's lock, every
    few milliseconds: 16 concurrent clients then did less work per second than one (bench/
    bench_throughput.py). Writes mostly wait for their turn at the store, so they run on threads of their
    own (`app.state.write_threads`)."""
    anyio.to_thread.current_default_thread_limiter().total_tokens = request_threads
    app.state.write_threads = anyio.CapacityLimiter(WRITE_THREADS)


def _freeze_start_up_heap() -> None:
    """Collect start-up's garbage, then leave every object start-up made (modules, the model, the
    population, caches: about 350,000 objects the cyclic garbage collector tracks) out of the collector's
    full collections (`gc.freeze`). Those objects live as long as the service, yet each full collection
    walked them all, holding the interpreter's lock: 130 ms of CPU each on the 2-core machine, 0.3 to 2.5 s
    of wall time amid 16 writers on busy cores, during which no request thread ran; and the writers'
    requests, waiting their turn long enough to outlive the younger generations, made full collections
    frequent (23 in a 62 s run, 100,000 deals). Frozen objects are still freed when nothing refers to
    them; `gc.unfreeze` at shutdown hands them back to the collector."""
    gc.collect()
    gc.freeze()


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the service. Without `settings`, read them from the environment (`get_settings()`)."""
    settings = settings or get_settings()
    metrics = ServiceMetrics()
    monitor = MonitorStateCache(settings.tracking_uri)
    monitor.on_change = lambda s: metrics.set_monitor_state(s.model_version, s.state, GAUGE_STATES)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        store = Store(settings.database_url, max_attribute_names=settings.max_attribute_names,
                      busy_timeout_s=settings.write_wait_s, pool_size=settings.pg_pool_size)
        store.create_schema()
        holder = ModelHolder(settings.model_uri, settings.tracking_uri, on_swap=_on_swap)
        scorer_in_child = settings.live_score_max_age_s > 0 and settings.live_scorer == "process"
        if scorer_in_child:  # the scorer process fits the population after this first fit; this one reads it
            population = PopulationCache.following(store, published_population_path(settings),
                                                   interval_s=settings.population_refresh_s)
        else:
            population = PopulationCache.from_store(store, interval_s=settings.population_refresh_s)
        new_deals = NewDealCache(store)
        new_deals.follow(population)
        app.state.store = store
        app.state.model_holder = holder
        app.state.population = population
        app.state.new_deals = new_deals
        archive = ScoreArchive(store)
        challenger = Challenger(archive, settings.tracking_uri)
        app.state.challenger = challenger
        await asyncio.to_thread(holder.reload)
        await asyncio.to_thread(challenger.restore)
        await asyncio.to_thread(_prime_population, population)
        live_scores: LiveScoring | None = None
        limits = None
        if scorer_in_child:
            # The scorer, the stage limits and the scorer's population in a child process
            # (serving.scorer_process): requests keep this process's GIL to themselves.
            process = ScorerProcess(settings)
            await asyncio.to_thread(process.start)
            live_scores = process
        elif settings.live_score_max_age_s > 0:
            # Requests and the scorer share one population, refitted only by its own background thread.
            scorer = LiveScorer(
                store, holder, population, max_age_s=settings.live_score_max_age_s, challenger=challenger
            )
            population.listeners.append(scorer.population_refitted)
            scorer.start()
            scorer.notify()  # deals written while the service was down, or scored by another version
            live_scores = scorer
            # the live lists' learned stage limits, kept on the same clock as the scores
            limits = StageLimitRefresher(store, max_age_s=settings.live_score_max_age_s)
            limits.start()
        if live_scores is not None:
            app.state.live_scores = live_scores
            holder.on_swap = _swapped(live_scores)
        population.start()
        # the query planner's statistics, taken at start and again when the store has grown
        loops: list[BackgroundLoop] = [BackgroundLoop("planner-stats", PLANNER_STATS_INTERVAL_S,
                                                      store.refresh_planner_stats, first_round_at_start=True)]
        # each pipeline's won deals' visits, learned once in the background, so that the first health read
        # after a win reads only the stage changes of the deals won since (a read before it learns them
        # itself, not waiting for this)
        won_visits = BackgroundLoop("won-visits", WON_VISITS_INTERVAL_S,
                                    lambda: store.keep_won_visits(lambda: won_visits.stopping),
                                    first_round_at_start=True)
        loops.append(won_visits)
        if settings.reload_interval_s > 0:
            # Check the alias every interval; swap when it moved (failures keep the old model).
            loops.append(BackgroundLoop("model-alias", settings.reload_interval_s,
                                        functools.partial(holder.reload, True)))
        if settings.monitor_refresh_s > 0:
            model = holder.current()
            await asyncio.to_thread(monitor.refresh, model.version if model else None)
            loops.append(BackgroundLoop("monitor-state", settings.monitor_refresh_s, functools.partial(
                _monitor_round, holder, monitor, archive, settings.score_history_days)))
        for loop in loops:
            loop.start()
        _bound_request_threads(app, settings.request_threads)
        _freeze_start_up_heap()
        try:
            yield
        finally:
            gc.unfreeze()  # what start-up made is garbage once the service stops (tests start many)
            await asyncio.to_thread(population.stop)
            if live_scores is not None:
                await asyncio.to_thread(live_scores.stop)
            if limits is not None:
                await asyncio.to_thread(limits.stop)
            for loop in loops:
                await asyncio.to_thread(loop.stop)
            store.close()

    def _swapped(live_scores: LiveScoring) -> Any:
        def on_swap(model: Any) -> None:
            _on_swap(model)
            live_scores.model_swapped(model.version)  # every open deal is now due: re-score them

        return on_swap

    def _on_swap(model: Any) -> None:
        metrics.set_model_version(model.version)
        current = monitor.get()
        if current is not None and current.model_version != model.version and settings.monitor_refresh_s > 0:
            # At once: the old version's state no longer describes what is served. Then read the new one's.
            monitor.update(model.version, None, reason="the monitor report of this version is being read")
            monitor.refresh(model.version)

    app = FastAPI(
        title="dealrisk",
        summary="Which deals are going cold and how likely each is to close.",
        version="1",
        lifespan=lifespan,
        # /docs is served by serving.page with Swagger UI's files from the package (no CDN: works
        # offline); ReDoc would load from a CDN, so it is off.
        docs_url=None,
        redoc_url=None,
        responses=ERROR_RESPONSES,
    )
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.monitor_state = monitor
    app.state.verified_keys = {}  # serving.auth: keys last verified, for a store outage
    app.state.pipeline_specs = {}  # serving.routes.scoring: specs last read, for a store outage
    app.state.health_cache = HealthCache(settings.health_max_age_s)  # serving.routes.pipelines
    install_error_handlers(app)

    from serving.routes import include_routers

    include_routers(app)
    app.add_middleware(RequestGuard, max_body_bytes=settings.max_body_bytes, metrics=metrics,
                       max_concurrent=settings.max_concurrent_requests, retry_after_s=settings.retry_after_s)
    return app
