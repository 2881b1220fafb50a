"""The live scorer in a process of its own (setting `live_scorer = process`, the default of `dealrisk
serve`), so its CPU work never competes with requests for the service's GIL.

The child (`multiprocessing` "spawn" context) runs what keeps the stored scores live: the `LiveScorer`,
the learned stage limits (`serving.stage_limits`) and the feature population the scorer scores with
(its own `PopulationCache`, refitted on its own clock; the population requests use stays in the service).
It shares nothing with the service but the database (the need to re-score is stamped in the store by the
write itself, `Store.pending_scores`) and one pipe, parent to child, of one-byte messages:

- `n` (notify): a write committed; the child's reader thread wakes the scorer at once (`LiveScorer.notify`),
  so a new event reaches its live score as fast as in a thread. The parent writes without blocking; when
  the pipe is full the child has a wake-up pending anyway, so the byte is dropped.
- `m` (model): the service swapped its model (`POST /v1/model/reload`, the alias watcher): the child
  reloads its own `ModelHolder` from the same model URI, then every open deal is due again.
- `c` (challenger): a challenger was named or cleared: the child reads the setting back from the store
  (`Challenger.restore`) and scores what is due.
- `s` (stop): the service is shutting down: the child stops its loops and exits.
- end of file: the service died (even by kill -9, the kernel closes its end of the pipe): the child
  exits at once.

The parent (`ScorerProcess`) watches the child every `WATCH_S` and starts it again when it died (logged,
counted in `status()`; a child that dies soon after its start waits longer each time, up to
`MAX_RESTART_DELAY_S`). The child runs at a lower CPU priority (`NICE`): on busy cores the service's
requests come first and the scores wait. The child's failures are logged (to the service's stderr) and
never reach a request: requests read what is stored, and the stored scores only get older while no child
runs.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import signal
import threading
import time
from datetime import UTC, datetime
from multiprocessing.connection import Connection
from typing import Any

from serving.background import BackgroundLoop
from serving.settings import Settings

logger = logging.getLogger(__name__)

NOTIFY, MODEL, CHALLENGER, STOP = b"n", b"m", b"c", b"s"
WATCH_S = 1.0  # how often the parent checks that the child lives
STOP_TIMEOUT_S = 60.0  # a stopping child finishes its round first; past this it is killed
QUICK_DEATH_S = 30.0  # a child that dies sooner than this after its start waits before the next one
MAX_RESTART_DELAY_S = 60.0
PROCESS_NAME = "dealrisk-live-scorer"
NICE = 10  # the child's CPU priority below the service's (os.nice): requests first on busy cores
# the child's control loops run when notified; their clock is only a fallback
CONTROL_INTERVAL_S = 3600.0


class ScorerProcess:
    """The parent's handle on the scorer child: `start`, `notify`, `model_swapped`, `challenger_changed`,
    `status`, `stop`. Every method is safe to call from any thread and never blocks a request."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._ctx = multiprocessing.get_context("spawn")
        self._lock = threading.Lock()
        self._process: Any = None  # multiprocessing.context.SpawnProcess
        self._writer: Connection | None = None
        self._started_at = 0.0  # monotonic time of the last start
        self._next_start_at = 0.0
        self._quick_deaths = 0
        self._unsent: set[bytes] = set()  # control bytes a full pipe refused: sent again by the watcher
        self._stopping = False
        self.restarts = 0
        self.last_exit: str | None = None
        self._watch = BackgroundLoop("live-scorer-watch", WATCH_S, self._check)

    def start(self) -> None:
        """Start the child and the watcher that starts it again when it dies."""
        self._stopping = False
        self._spawn()
        self._watch.start()

    def _spawn(self) -> None:
        reader, writer = self._ctx.Pipe(duplex=False)
        process = self._ctx.Process(
            target=run_child, args=(self.settings, reader, logging.getLogger().getEffectiveLevel()),
            name=PROCESS_NAME, daemon=True,
        )
        process.start()
        reader.close()  # only the child holds the read end: its EOF is the parent's death
        os.set_blocking(writer.fileno(), False)
        with self._lock:
            old = self._writer
            self._process, self._writer = process, writer
            self._started_at = time.monotonic()
            self._unsent.clear()  # a new child reads everything from the store at its start
        if old is not None:
            old.close()
        logger.info("live scorer process started (pid %s)", process.pid)

    def notify(self) -> None:
        """A write committed: wake the child's scorer."""
        self._send(NOTIFY)

    def model_swapped(self, _version: str) -> None:
        """The service swapped its model: the child reloads its own."""
        self._send(MODEL)

    def challenger_changed(self) -> None:
        """A challenger was named or cleared (kept in the store): the child reads it back."""
        self._send(CHALLENGER)

    def _send(self, message: bytes) -> None:
        with self._lock:
            writer = self._writer
            if writer is None:
                return
            try:
                os.write(writer.fileno(), message)
            except BlockingIOError:  # the pipe is full: the child is behind, and will read the rest
                if message != NOTIFY:
                    self._unsent.add(message)
            except OSError:  # the child died: the watcher starts another, which reads the store afresh
                pass

    def status(self) -> dict[str, Any]:
        """Whether the child runs, its pid, how often it was started again and why it last ended."""
        with self._lock:
            process = self._process
        running = process is not None and process.is_alive()
        return {
            "mode": "process",
            "running": running,
            "pid": process.pid if running else None,
            "restarts": self.restarts,
            "last_exit": self.last_exit,
        }

    def _check(self) -> None:
        """The watcher's round: start a dead child again (after a delay when it died young); resend
        control bytes a full pipe refused."""
        if self._stopping:
            return
        with self._lock:
            process, unsent = self._process, sorted(self._unsent)
            self._unsent.clear()
        for message in unsent:
            self._send(message)
        if process is None or process.is_alive():
            return
        now = time.monotonic()
        if self._next_start_at == 0.0:
            self.last_exit = _exit_text(process.exitcode)
            lived = now - self._started_at
            self._quick_deaths = self._quick_deaths + 1 if lived < QUICK_DEATH_S else 0
            delay = min(MAX_RESTART_DELAY_S, 2.0 ** self._quick_deaths - 1) if self._quick_deaths else 0.0
            self._next_start_at = now + delay
            logger.error("live scorer process (pid %s) %s after %.0f s; starting another in %.0f s",
                         process.pid, self.last_exit, lived, delay)
        if now >= self._next_start_at:
            self._next_start_at = 0.0
            self.restarts += 1
            self._spawn()

    def stop(self) -> None:
        """Ask the child to stop (it finishes its round), wait for it, kill it past `STOP_TIMEOUT_S`."""
        self._stopping = True
        self._watch.stop()
        with self._lock:
            process, writer = self._process, self._writer
            self._writer = None
        if writer is not None:
            with contextlib.suppress(OSError):  # a full pipe: the end of file below stops the child too
                os.write(writer.fileno(), STOP)
            writer.close()
        if process is None:
            return
        process.join(STOP_TIMEOUT_S)
        if process.is_alive():
            logger.warning("live scorer process (pid %s) did not stop in %.0f s; killing it",
                           process.pid, STOP_TIMEOUT_S)
            process.kill()
            process.join(5.0)
        logger.info("live scorer process (pid %s) stopped", process.pid)


def _exit_text(code: int | None) -> str:
    if code is None:
        return "ended"
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"was killed by {signal.Signals(-code).name}"
        return f"was killed by signal {-code}"
    return f"exited with code {code}"


def run_child(settings: Settings, reader: Connection, log_level: int) -> None:
    """The child's main: start the scorer, the stage limits and the population refit, then read the
    parent's messages until a stop or the parent's end."""
    # Ctrl-C in a terminal reaches the whole process group: the service stops the child itself.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # Background work: when the cores are busy, the service's requests come first.
    with contextlib.suppress(OSError):
        os.nice(NICE)
    logging.basicConfig(level=log_level, format="%(asctime)s %(levelname)s %(processName)s %(name)s: "
                        "%(message)s")
    try:
        child = _Child(settings)
    except Exception:
        logger.exception("the live scorer process could not start")
        raise SystemExit(1) from None
    try:
        child.serve(reader)
    finally:
        child.stop()


class _Child:
    """What runs in the scorer process: the same objects `serving.app` runs as threads in `thread` mode."""

    def __init__(self, settings: Settings) -> None:
        from serving.challenger import Challenger
        from serving.live_scores import LiveScorer
        from serving.model_holder import ModelHolder, PopulationCache
        from serving.score_archive import ScoreArchive
        from serving.stage_limits import StageLimitRefresher
        from serving.store import Store

        self.store = Store(settings.database_url, max_attribute_names=settings.max_attribute_names,
                           busy_timeout_s=settings.write_wait_s, pool_size=settings.pg_pool_size)
        self.holder = ModelHolder(settings.model_uri, settings.tracking_uri)
        self.challenger = Challenger(ScoreArchive(self.store), settings.tracking_uri)
        self.population = PopulationCache.from_store(self.store, interval_s=settings.population_refresh_s)
        self.holder.reload()
        self.challenger.restore()
        with contextlib.suppress(Exception):  # an odd store: the scorer's rounds log why
            self.population.get()
        self.live = LiveScorer(self.store, self.holder, self.population,
                               max_age_s=settings.live_score_max_age_s, challenger=self.challenger)
        self.holder.on_swap = lambda _model: self.live.notify()
        self.population.listeners.append(self.live.population_refitted)
        self.limits = StageLimitRefresher(self.store, max_age_s=settings.live_score_max_age_s)
        self.model_loop = BackgroundLoop("scorer-model", CONTROL_INTERVAL_S, self._follow_model)
        self.challenger_loop = BackgroundLoop("scorer-challenger", CONTROL_INTERVAL_S,
                                              self._follow_challenger)
        self.loops: list[Any] = [self.live, self.limits, self.population, self.model_loop,
                                 self.challenger_loop]
        for loop in self.loops:
            loop.start()
        self.live.notify()  # deals written while no scorer ran, or scored by another version
        logger.info("live scorer process ready at %s, scoring with model version %s",
                    datetime.now(UTC).isoformat(), getattr(self.holder.current(), "version", None))

    def _follow_model(self) -> None:
        # a registry alias: reload only when it moved; another URI (a path): always reload
        self.holder.reload(only_if_changed=self.holder.model_uri.startswith("models:/"))

    def _follow_challenger(self) -> None:
        self.challenger.restore()
        self.live.notify()

    def serve(self, reader: Connection) -> None:
        """Read the parent's bytes until a stop or the end of file (the parent is gone)."""
        fd = reader.fileno()
        while True:
            try:
                data = os.read(fd, 4096)
            except InterruptedError:
                continue
            if not data:
                logger.warning("the service that started this live scorer is gone; stopping")
                return
            if STOP in data:
                return
            if MODEL in data:
                self.model_loop.notify()
            if CHALLENGER in data:
                self.challenger_loop.notify()
            if NOTIFY in data:
                self.live.notify()

    def stop(self) -> None:
        for loop in self.loops:
            with contextlib.suppress(Exception):
                loop.stop()
        self.store.close()
