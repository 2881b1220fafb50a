"""The served model and the fitted feature builder, each swapped atomically.

A request takes ONE `LoadedModel` reference at its start (`holder.require()`) and uses it to the end, so a
reload in the middle of a request can never mix two versions in one response. Loading happens outside
the lock; only the swap of the reference is under it, so requests never wait for a download.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from features.build import FeatureBuilder
from features.history import DealHistory
from serving.errors import ConflictError, ModelUnavailableError, PopulationUnavailableError, public_reason

logger = logging.getLogger(__name__)

Loader = Callable[[str, str], tuple[Any, str]]
Resolver = Callable[[str, str], str | None]


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
    """A `FeatureBuilder` fitted on the whole stored history, refitted lazily after a write marks it dirty.

    Writes only flip a generation counter (cheap); the next reader refits once while others keep
    using the previous builder, so a burst of writes costs one refit.

    When fitting fails (e.g. a stored row no longer validates), the previous builder keeps serving if
    there is one; without one, readers get PopulationUnavailableError (503 with the reason) rather than
    scores computed from something else. `last_error` holds the reason (for /readyz) until a fit
    succeeds; every read after a failure tries again.
    """

    def __init__(self, load: Callable[[], FeatureBuilder | None]) -> None:
        self._load = load
        self._lock = threading.Lock()
        self._compute_lock = threading.Lock()
        self._value: FeatureBuilder | None = None
        self._computed = False
        self._generation = 0
        self._computed_generation = -1
        self.last_error: str | None = None

    @property
    def available(self) -> bool:
        """Whether a population was ever computed (None for an empty store counts)."""
        with self._lock:
            return self._computed

    @classmethod
    def from_store(cls, store: Any) -> PopulationCache:
        """A cache that fits the builder on everything in `store` (None while it is empty)."""

        def load() -> FeatureBuilder | None:
            # With no stored deals there is nothing to fit on: see `builder_for`.
            if store.count_rows().get("deals", 0) == 0:
                return None
            return FeatureBuilder().fit(store.load_history())

        return cls(load)

    def mark_dirty(self) -> None:
        """Called after every committed write."""
        with self._lock:
            self._generation += 1

    def get(self) -> FeatureBuilder | None:
        """The fitted builder, refitted first if the store changed since it was fitted."""
        with self._lock:
            if self._computed and self._computed_generation == self._generation:
                return self._value
        with self._lock:
            have_previous = self._computed
            previous = self._value
        # Only one reader recomputes; while it does, the others answer with the previous population
        # instead of queueing behind a full read of the store (they wait only when there is none yet).
        if not self._compute_lock.acquire(blocking=not have_previous):
            return previous
        try:
            with self._lock:
                generation = self._generation
                if self._computed and self._computed_generation == generation:
                    return self._value
            try:
                value = self._load()
            except Exception as exc:  # noqa: BLE001 - any failure: keep the previous population or 503
                logger.warning("computing the feature population failed: %s: %s", type(exc).__name__, exc)
                self.last_error = public_reason(f"{type(exc).__name__}: {exc}")
                if have_previous:
                    return previous
                raise PopulationUnavailableError(
                    f"feature population unavailable: {self.last_error}"
                ) from exc
            self.last_error = None
            with self._lock:
                self._value = value
                self._computed = True
                self._computed_generation = generation
            return value
        finally:
            self._compute_lock.release()


def builder_for(stored: FeatureBuilder | None, history: DealHistory) -> FeatureBuilder:
    """The builder fitted on the store, or, while the store holds no deals, one fitted on `history` (the
    inline deals being scored), so an empty store still scores inline deals."""
    return stored if stored is not None else FeatureBuilder().fit(history)
