"""The served model and the fitted feature builder, each swapped atomically.

A request takes ONE `LoadedModel` reference at its start (`holder.require()`) and uses it to the end, so a
reload in the middle of a request can never mix two versions in one response. Loading happens outside
the lock; only the swap of the reference is under it, so requests never wait for a download.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from features.build import FeatureBuilder
from features.history import DealHistory
from features.population_stats import (
    POPULATION_TABLES,
    Source,
    load_population_extras,
    load_population_stats,
    save_population_stats,
)
from serving.background import BackgroundLoop
from serving.errors import ConflictError, ModelUnavailableError, PopulationUnavailableError, public_reason

logger = logging.getLogger(__name__)

Loader = Callable[[str, str], tuple[Any, str]]
Resolver = Callable[[str, str], str | None]

DEFAULT_POPULATION_REFRESH_S = 60.0
# After a refit on the clock, the next one waits at least this many times as long as the refit took, so
# refits (a read of the store's stage and owner changes) take at most a tenth of the service's time on a
# big store instead of all of it.
REFIT_PAUSE_FACTOR = 9.0
# A service that follows the scorer process's population (`PopulationCache.following`) looks for a new one
# this often at most (a stat of one file).
PUBLISHED_CHECK_S = 5.0


@dataclass(frozen=True)
class LoadedModel:
    """One loaded bundle and the registry version it came from."""

    bundle: Any  # models.bundle.ScoringBundle (typed loosely so tests can use a stand-in)
    version: str
    model_uri: str
    loaded_at: datetime

    @property
    def metadata(self) -> dict[str, Any]:
        meta = getattr(self.bundle, "metadata", None)
        return dict(meta) if isinstance(meta, dict) else {}


@dataclass
class ReloadOutcome:
    """What a reload did: `changed` if a new version is now served."""

    version: str | None
    changed: bool
    error: str | None = None


def resolve_registry_version(model_uri: str, tracking_uri: str) -> str | None:
    """The version a `models:/name@alias` or `models:/name/N` URI points at now, without downloading.

    None when the URI is not a registry URI (then only an explicit reload reloads it).
    """
    if not model_uri.startswith("models:/"):
        return None
    from models.loading import resolve_version

    return resolve_version(model_uri, tracking_uri)[1]


def _default_loader(model_uri: str, tracking_uri: str) -> tuple[Any, str]:
    from models.loading import load_bundle

    bundle, version = load_bundle(model_uri, tracking_uri)
    return bundle, str(version)


@dataclass
class ModelHolder:
    """Holds the current model; `reload()` swaps it atomically and keeps the old one on failure."""

    model_uri: str
    tracking_uri: str
    loader: Loader = _default_loader
    resolver: Resolver = resolve_registry_version
    _current: LoadedModel | None = None
    last_error: str | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)
    # Serialises loads so two reloads (background check and the endpoint) never download twice at once.
    _load_lock: threading.Lock = field(default_factory=threading.Lock)
    on_swap: Callable[[LoadedModel], None] | None = None

    def current(self) -> LoadedModel | None:
        """The model being served, or None."""
        with self._lock:
            return self._current

    def require(self) -> LoadedModel:
        """The model being served; raises ModelUnavailableError (503) with the reason if none."""
        model = self.current()
        if model is None:
            raise ModelUnavailableError(f"no model loaded: {self.last_error or 'not loaded yet'}")
        return model

    def reload(self, only_if_changed: bool = False) -> ReloadOutcome:
        """Load the model the URI points at now and swap it in; on failure keep the old one.

        With `only_if_changed`, first resolve the alias and skip the download when the version is
        the one already served (the cheap background check).
        """
        with self._load_lock:
            current = self.current()
            try:
                if only_if_changed and current is not None:
                    target = self.resolver(self.model_uri, self.tracking_uri)
                    if target is None or target == current.version:
                        return ReloadOutcome(current.version, changed=False)
                bundle, version = self.loader(self.model_uri, self.tracking_uri)
            except Exception as exc:  # noqa: BLE001 - any load failure must keep the old model serving
                reason = f"{type(exc).__name__}: {exc}"
                logger.warning("model load from %s failed: %s", self.model_uri, reason)
                # Clients see the reason (readyz, 409/503 details) without file paths or store URLs.
                self.last_error = public_reason(reason)
                return ReloadOutcome(current.version if current else None, changed=False,
                                     error=self.last_error)
            model = LoadedModel(bundle, str(version), self.model_uri, datetime.now(UTC))
            with self._lock:
                self._current = model
            self.last_error = None
            changed = current is None or current.version != model.version
            if changed:
                logger.info("serving model %s version %s", self.model_uri, model.version)
            if self.on_swap is not None:
                self.on_swap(model)
            return ReloadOutcome(model.version, changed=changed)

    def reload_or_raise(self) -> LoadedModel:
        """Reload for the endpoint: the new model, or ConflictError/ModelUnavailableError with the reason."""
        outcome = self.reload()
        if outcome.error is not None:
            if outcome.version is not None:
                raise ConflictError(
                    f"reload failed, still serving version {outcome.version}: {outcome.error}"
                )
            raise ModelUnavailableError(f"no model loaded: {outcome.error}")
        return self.require()


class PopulationCache:
    """A `FeatureBuilder` fitted on the whole stored history, refreshed off the request path.

    Readers (`get`) always take the builder last fitted and never wait for a refit: writes only flip a
    generation counter (`mark_dirty`), and `refresh` (called by the background thread `start` runs, at
    most once every `interval_s`) refits when the store changed since the last fit, so a burst of writes
    costs one refit. "Changed" is the generation moved, or the store's change stamp (`stamp`, a cheap
    query: deal count, last state update, last spec update) moved, which also catches writes by other
    processes (another worker, a CLI import).

    The one exception is the first fit: while no builder was ever fitted (the service primes it at
    start, before it serves), `get` fits it, and concurrent readers wait for that one fit.

    `following` builds the service's cache while the live scorer runs in its own process: after that first
    fit the service never refits; it reads the population the scorer process fits and publishes.

    When fitting fails (e.g. a stored row no longer validates), the previous builder keeps serving if
    there is one; without one, readers get PopulationUnavailableError (503 with the reason) rather than
    scores computed from something else. `last_error` holds the reason (for /readyz) until a fit
    succeeds; a failed refit is retried by the next refresh even if the store did not change.
    """

    def __init__(
        self,
        load: Callable[[], FeatureBuilder | None],
        stamp: Callable[[], Any] | None = None,
        interval_s: float = DEFAULT_POPULATION_REFRESH_S,
        clock: Callable[[], float] = time.monotonic,
        writes_make_due: bool = True,
        work_s: Callable[[], float | None] | None = None,
    ) -> None:
        self._load = load
        # how long the last load's own work took, when the loader knows better than the time around the
        # call (a load that first had to start a process for it: a one-off, not a refit's cost)
        self._work_s = work_s
        self._writes_make_due = writes_make_due
        self._clock = clock
        self._rest_until = float("-inf")  # no refit on the clock before this (`tick`)
        self._stamp = stamp
        self.interval_s = interval_s
        self._lock = threading.Lock()
        self._compute_lock = threading.Lock()
        self._value: FeatureBuilder | None = None
        self._computed = False
        self._generation = 0
        self._computed_generation = -1
        self._computed_stamp: Any = None
        self._failed = False
        self.fits = 0  # fits done (successful or not): the refresh tests count them
        self.published_reads = 0  # of them, populations read from the scorer process (`following`)
        # the new-deal models published with the population last read (`following`; None when it was
        # fitted here, or published without them): set before the listeners run
        self.new_deal_models: NewDealModels | None = None
        self.fitted_at: datetime | None = None  # wall-clock time the builder being served was fitted
        # when that fit started reading the store: a deal written at or after it may be missing from it
        self.read_from: datetime | None = None
        self.last_error: str | None = None
        # called (on the refitting thread) after each successful fit: the live scorer, the new-deal models
        self.listeners: list[Callable[[FeatureBuilder | None], None]] = []
        self._loop = BackgroundLoop("population-refresh", interval_s, self.tick, join_timeout_s=60.0)

    @property
    def available(self) -> bool:
        """Whether a population was ever computed (None for an empty store counts)."""
        with self._lock:
            return self._computed

    @classmethod
    def from_store(cls, store: Any, interval_s: float = DEFAULT_POPULATION_REFRESH_S) -> PopulationCache:
        """A cache that fits the builder on everything in `store` (None while it is empty)."""

        return cls(lambda: fit_population(store), stamp=store.change_stamp, interval_s=interval_s)

    @classmethod
    def following(
        cls, store: Any, published: os.PathLike[str] | str, interval_s: float = DEFAULT_POPULATION_REFRESH_S
    ) -> PopulationCache:
        """The service's cache while the scorer process fits the population (`serving.scorer_process`).

        A refit on a big store holds this process's GIL for seconds (100,000 deals: one-deal scores had a
        p99 of 2.6 s during one, `bench/bench_refit_stall.py`), so the service fits only
        once, at start, before it serves; from then on it reads the population the scorer process
        publishes at `published` (`save_population_stats`, a few tens of milliseconds to read) whenever
        that file changes, checked every `PUBLISHED_CHECK_S` at most, with the forecast's new-deal models
        published in it (`new_deal_models`). Writes do not make it due: the
        scorer process refits after them, on its own clock. A file left by an earlier run is never read:
        the first population is this process's own fit. While no file is there, it refits itself when the
        store's change stamp moves, as a cache of `from_store` does.
        """
        path = os.fspath(published)
        fit = cls.from_store(store)._load
        left_before = _file_stamp(path)

        def load() -> FeatureBuilder | None:
            if _file_stamp(path) in (None, left_before):
                cache.new_deal_models = None
                return fit()  # nothing published since this process started: a fit of its own
            cache.published_reads += 1
            builder, cache.new_deal_models = read_published(path)
            return builder

        def stamp() -> Any:
            # nothing published (the scorer process not started yet, or unable to write the file): the
            # store's change stamp, so the service refits itself on its clock as without a scorer process
            return _file_stamp(path) or ("store", store.change_stamp())

        cache = cls(load, stamp=stamp, interval_s=min(interval_s, PUBLISHED_CHECK_S), writes_make_due=False)
        return cache

    def mark_dirty(self) -> None:
        """Called after every committed write: the next refresh refits."""
        with self._lock:
            self._generation += 1

    def get(self) -> FeatureBuilder | None:
        """The builder last fitted; never refits (only the very first fit happens here)."""
        with self._lock:
            if self._computed:
                return self._value
        with self._compute_lock:  # the first fit: concurrent readers wait for this one
            with self._lock:
                if self._computed:
                    return self._value
            self._fit(raise_without_previous=True)
            with self._lock:
                return self._value

    def due(self) -> bool:
        """Whether a refresh would refit: never fitted, the last fit failed, or the store changed."""
        with self._lock:
            if not self._computed or self._failed:
                return True
            if self._writes_make_due and self._generation != self._computed_generation:
                return True
            known = self._computed_stamp
        return self._stamp is not None and self._read_stamp() != known

    def refresh(self) -> bool:
        """Refit when `due`; True when a new builder was fitted. Never raises (failures are kept in
        `last_error`); readers keep the previous builder meanwhile."""
        if not self.due():
            return False
        with self._compute_lock:
            return self._fit(raise_without_previous=False)

    def tick(self) -> bool:
        """What the background thread runs every `interval_s`: `refresh`, unless the last fit ended less
        than `REFIT_PAUSE_FACTOR` times its own duration ago (then it waits for a later tick)."""
        if self._clock() < self._rest_until:
            return False
        return self.refresh()

    def _read_stamp(self) -> Any:
        try:
            return self._stamp() if self._stamp is not None else None
        except Exception:  # noqa: BLE001 - a store outage: count it as a change, the fit will say why
            logger.warning("reading the store's change stamp failed", exc_info=True)
            return object()

    def _fit(self, raise_without_previous: bool) -> bool:
        """Fit now (the caller holds `_compute_lock`); True on success."""
        with self._lock:
            generation = self._generation
            have_previous = self._computed
        stamp = self._read_stamp()  # before the read: a write landing during the fit makes it due again
        started = datetime.now(UTC)
        self.fits += 1
        began = self._clock()
        try:
            value = self._load()
        except Exception as exc:  # noqa: BLE001 - any failure: keep the previous population or 503
            logger.warning("computing the feature population failed: %s: %s", type(exc).__name__, exc)
            self.last_error = public_reason(f"{type(exc).__name__}: {exc}")
            with self._lock:
                self._failed = True
            if raise_without_previous and not have_previous:
                raise PopulationUnavailableError(
                    f"feature population unavailable: {self.last_error}"
                ) from exc
            return False
        self.last_error = None
        ended = self._clock()
        logger.debug("population fitted in %.1f s", ended - began)
        if self._writes_make_due:  # a follower's reads are cheap: it looks again on its next tick
            work = self._work_s() if self._work_s is not None else None
            self._rest_until = ended + REFIT_PAUSE_FACTOR * (ended - began if work is None else work)
        with self._lock:
            self._value = value
            self._computed = True
            self._failed = False
            self._computed_generation = generation
            self._computed_stamp = stamp
            self.fitted_at = datetime.now(UTC)
            self.read_from = started
        for listener in self.listeners:
            try:
                listener(value)
            except Exception:  # noqa: BLE001 - a listener's failure must not undo the fit
                logger.exception("a population listener failed")
        return True

    def start(self) -> None:
        """Refresh on a daemon thread every `interval_s` until `stop`."""
        self._loop.start()

    def stop(self) -> None:
        self._loop.stop()


class NewDealCache:
    """Per pipeline, the forecast's model of deals not created yet (`models.forecast.NewDealModel`), fitted
    from the deals' current-state columns (no events read) as of the time it was fitted.

    Renewed for every pipeline when the population is (`refresh`, a `PopulationCache` listener: off the
    request path): with the models published beside the population when the scorer process fitted it
    (`published`, read with it from one file: nothing fitted here), else fitted here on every stored
    deal. `get` fits a pipeline the cache has not seen yet (one that appeared since).
    """

    def __init__(self, store: Any) -> None:
        self.store = store
        self._lock = threading.Lock()
        self._models: dict[str, tuple[Any, datetime]] = {}

    def refresh(self, now: datetime | None = None, published: NewDealModels | None = None) -> None:
        """Take the `published` models, or, without them, refit every pipeline's model as of `now`
        (default: the current time)."""
        fitted = dict(published) if published is not None else fit_new_deal_models(self.store, now)
        with self._lock:
            self._models = fitted

    def follow(self, population: PopulationCache) -> None:
        """Renew the models after each population `population` fits or reads: the models published with
        it when it read a published one (`PopulationCache.new_deal_models`), else a fit here."""
        population.listeners.append(lambda _builder: self.refresh(published=population.new_deal_models))

    def get(self, pipeline: str) -> tuple[Any, datetime]:
        """(model, the time it is as of) for `pipeline`."""
        with self._lock:
            found = self._models.get(pipeline)
        if found is not None:
            return found
        from models.forecast import new_deals_from_states

        t = datetime.now(UTC)
        states = _new_deal_states(self.store.deal_states(pipeline=pipeline, fields=NEW_DEAL_FIELDS))
        model = (new_deals_from_states(states, pd.Timestamp(t)), t)
        with self._lock:
            self._models[pipeline] = model
        return model


# per pipeline, (`models.forecast.NewDealModel`, the time it is as of)
NewDealModels = dict[str, tuple[Any, datetime]]

# the state columns `models.forecast.new_deals_from_states` reads: a fit reads every stored deal (a second
# of the interpreter's lock at 100,000 deals with every column), so only these
NEW_DEAL_FIELDS = ("outcome", "current_amount", "closed_at")
# the name of the new-deal models' table in a published population (`save_population_stats`' extras)
NEW_DEALS_TABLE = "new_deals"


def fit_new_deal_models(store: Any, now: datetime | None = None) -> NewDealModels:
    """Per pipeline, the forecast's model of deals not created yet, fitted on every stored deal's state as
    of `now` (default: the current time)."""
    from models.forecast import new_deals_from_states

    t = now or datetime.now(UTC)
    states = _new_deal_states(store.deal_states(fields=NEW_DEAL_FIELDS))
    at = pd.Timestamp(t)
    return {str(name): (new_deals_from_states(part, at), t) for name, part in states.groupby("pipeline")}


def _new_deal_states(states: Any) -> Any:
    """The store's current-state columns under the names `features.health.deal_states` gives them."""
    return states.rename(columns={"outcome": "status", "current_amount": "amount"})


def new_deal_models_table(models: NewDealModels) -> pa.Table:
    """`models` as an Arrow table (one row per pipeline), to publish with the population."""
    rows = sorted(models.items())
    return pa.table({
        "pipeline": pa.array([name for name, _ in rows], pa.string()),
        "as_of": pa.array([t for _, (_, t) in rows], pa.timestamp("us", tz="UTC")),
        "rate_per_day": pa.array([m.rate_per_day for _, (m, _) in rows], pa.float64()),
        "bin_days": pa.array([m.bin_days for _, (m, _) in rows], pa.float64()),
        "won_amounts": pa.array([m.won_amounts for _, (m, _) in rows], pa.list_(pa.float64())),
        "won_by_age": pa.array([m.won_by_age for _, (m, _) in rows], pa.list_(pa.float64())),
    })


def new_deal_models_from_table(table: pa.Table) -> NewDealModels:
    """What `new_deal_models_table` wrote: the same models, to the last bit."""
    from models.forecast import NewDealModel

    def floats(column: str, i: int) -> Any:
        return np.asarray(table[column][i].values.to_numpy(zero_copy_only=False), dtype=np.float64)

    models: NewDealModels = {}
    for i, (name, as_of) in enumerate(zip(table["pipeline"].to_pylist(), table["as_of"].to_pylist(),
                                          strict=True)):
        model = NewDealModel(table["rate_per_day"][i].as_py(), floats("won_amounts", i),
                             floats("won_by_age", i), bin_days=table["bin_days"][i].as_py())
        models[name] = (model, as_of.astimezone(UTC))
    return models


def fit_population(store: Any) -> FeatureBuilder | None:
    """A `FeatureBuilder` fitted on everything in `store` (None while it holds no deals)."""
    # With no stored deals there is nothing to fit on: see `builder_for`.
    if store.count_rows().get("deals", 0) == 0:
        return None
    # Only what the statistics read (`POPULATION_TABLES`): no activities, a third of the rows.
    return FeatureBuilder().fit(store.load_history(tables=POPULATION_TABLES))


def publish_population(
    store: Any, path: str | os.PathLike[str], now: datetime | None = None
) -> FeatureBuilder | None:
    """Fit the population on everything in `store` (`fit_population`) and, with it, the forecast's
    new-deal models (`fit_new_deal_models`, as of `now`: default the current time); publish both in one
    file at `path` (what the scorer's fitting process does after each fit; `read_published` reads them).
    Nothing is written for an empty store (None)."""
    builder = fit_population(store)
    if builder is not None and builder.population_stats_ is not None:
        new_deals = new_deal_models_table(fit_new_deal_models(store, now))
        save_population_stats(builder.population_stats_, path, extras={NEW_DEALS_TABLE: new_deals})
    return builder


def read_published_population(source: Source) -> FeatureBuilder:
    """A fitted `FeatureBuilder` from a population published by the scorer's fitting process."""
    builder = FeatureBuilder()
    builder.population_stats_ = load_population_stats(source)
    return builder


def read_published(path: str | os.PathLike[str]) -> tuple[FeatureBuilder, NewDealModels | None]:
    """The population the scorer's fitting process published at `path` and the new-deal models it fitted
    with it (None when the file has none), both from one version of the file."""
    with open(path, "rb") as file:  # a population published meanwhile replaces the file, not this one
        builder = read_published_population(file)
        table = load_population_extras(file).get(NEW_DEALS_TABLE)
    return builder, (new_deal_models_from_table(table) if table is not None else None)


def _file_stamp(path: str) -> tuple[int, int, int] | None:
    """What changes when a file is replaced (modification time, size, inode); None without the file."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)


def builder_for(stored: FeatureBuilder | None, history: DealHistory) -> FeatureBuilder:
    """The builder fitted on the store, or, while the store holds no deals, one fitted on `history` (the
    inline deals being scored), so an empty store still scores inline deals."""
    return stored if stored is not None else FeatureBuilder().fit(history)
