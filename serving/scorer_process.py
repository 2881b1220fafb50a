"""The live scorer in a process of its own (setting `live_scorer = process`, the default of `dealrisk
serve`), so its CPU work never competes with requests for the service's GIL.

The child (`multiprocessing` "spawn" context) runs what keeps the stored scores live: the `LiveScorer`,
the learned stage limits (`serving.stage_limits`) and the feature population the scorer scores with
(its own `PopulationCache`, refitted on its own clock). Each fit is published to a file in the service's
home (`published_population_path`), which the service reads for its requests
(`PopulationCache.following`): the service never refits, so a refit's seconds of CPU never hold its GIL.
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

The child fits its feature population in a process of its own too (`PopulationWorker`), started by the
child and ending with it: a fit reads the whole store for seconds (about 10 s at 100,000 deals) and holds
the GIL for up to a second at a time, so a fit in the child's own threads held a write's round back for
that long; the child's refit thread now waits on a socket (no GIL held) until that process has published
the fit, then reads it (tens of milliseconds). That process also fits the forecast's new-deal models with
each population and publishes them in the same file (`serving.model_holder.publish_population`), so the
service takes them with the population rather than read every deal's state itself.

The parent (`ScorerProcess`) watches the child every `WATCH_S` and starts it again when it died (logged,
counted in `status()`; a child that dies soon after its start waits longer each time, up to
`MAX_RESTART_DELAY_S`). The child runs at a lower CPU priority (`Settings.scorer_nice`, 10 by
default): on busy cores the service's requests come first and the scores wait. The child's failures are
logged (to the service's stderr) and never reach a request: requests read what is stored, and the stored
scores only get older while no child runs.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import multiprocessing
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from multiprocessing.connection import Connection
from pathlib import Path
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
# the child's control loops run when notified; their clock is only a fallback
CONTROL_INTERVAL_S = 3600.0


def published_population_path(settings: Settings) -> Path:
    """Where the scorer process publishes its feature population for the service: in the home, named by
    the database (two services with one home and different stores never read each other's)."""
    digest = hashlib.sha256(settings.database_url.encode()).hexdigest()[:16]
    return settings.home / "population" / f"population-{digest}.zip"


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
        os.nice(settings.scorer_nice)
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
        self.fitter = PopulationWorker(settings)
        # rests after a refit as long as the fit itself took: the first fit also waits for the population
        # process to start (seconds of imports on a busy machine), which must not hold the next refit back
        self.population = PopulationCache(self.fitter.fit, stamp=self.store.change_stamp,
                                          interval_s=settings.population_refresh_s,
                                          work_s=lambda: self.fitter.last_fit_s)
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
        self.fitter.stop()  # first: a fit in progress ends at once, so the population's loop stops too
        for loop in self.loops:
            with contextlib.suppress(Exception):
                loop.stop()
        self.store.close()


class PopulationWorker:
    """Fits the feature population (`serving.model_holder.fit_population`) in a process of its own, one
    fit at a time (`fit`, for `PopulationCache`): the caller waits on a socket, holding no GIL, while the
    process fits and publishes the population (`published_population_path`, `save_population_stats`),
    then reads it from there, as the service does (`PopulationCache.following`). Only JSON and that file
    cross between the processes: nothing is unpickled. The process (a plain subprocess: the scorer
    process is a daemonic `multiprocessing` child, which may not start children of its own that way) is
    started at the first fit and again after it died (that fit raises; the population cache keeps its
    previous builder and retries on its next refresh). It ends on `stop`, or at the end of file on its
    socket when the process that started it ends, even by kill -9."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._lock = threading.Lock()  # one fit at a time
        self._process: subprocess.Popen[bytes] | None = None
        self._conn: Connection | None = None
        self._stopped = False
        # seconds the last fit took in the population process (its start and imports not counted):
        # what the scorer's population cache rests after, nine times over
        self.last_fit_s: float | None = None

    def fit(self) -> Any:
        """The population fitted on the store now (a `FeatureBuilder`, None for an empty store)."""
        with self._lock:
            if self._stopped:
                raise RuntimeError("the population process was stopped")
            if self._process is None or self._process.poll() is not None:
                self._start()
            conn = self._conn
            assert conn is not None
            try:
                conn.send_bytes(b"f")
                answer = json.loads(conn.recv_bytes())
            except (EOFError, OSError) as exc:
                self._discard()
                raise RuntimeError("the population process ended during a fit") from exc
            self.last_fit_s = answer.get("seconds")
            if not answer["ok"]:
                raise RuntimeError(answer["error"])
            if answer["empty"]:
                return None
            from serving.model_holder import read_published_population

            return read_published_population(published_population_path(self.settings))

    def _start(self) -> None:
        self._discard()
        ours, theirs = socket.socketpair()
        with ours, theirs:
            # the interpreter and import path of this process, as multiprocessing's spawn gives its children
            env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
            process = subprocess.Popen(
                [sys.executable, "-c", "import sys; from serving.scorer_process import run_population_worker;"
                 " run_population_worker(int(sys.argv[1]))", str(theirs.fileno())],
                pass_fds=(theirs.fileno(),), env=env, stdin=subprocess.DEVNULL,
            )
            conn = Connection(os.dup(ours.fileno()))
        try:
            conn.send_bytes(json.dumps({"settings": self.settings.model_dump(mode="json"),
                                        "log_level": logging.getLogger().getEffectiveLevel()}).encode())
        except OSError:
            conn.close()
            process.kill()
            process.wait()
            raise
        self._process, self._conn = process, conn

    def _discard(self) -> None:
        process, conn = self._process, self._conn
        self._process = self._conn = None
        if conn is not None:
            conn.close()
        if process is not None:
            process.kill()
            process.wait()

    def stop(self) -> None:
        """End the process (a fit in progress fails at once: the caller's population keeps its builder)."""
        self._stopped = True
        process = self._process
        if process is not None:
            with contextlib.suppress(OSError):
                process.kill()  # the waiting `fit` gets the end of file and discards the rest
        with self._lock:
            self._discard()


def run_population_worker(fd: int) -> None:
    """The population process's main: read the settings, then fit whenever asked, until the end of file."""
    conn = Connection(fd)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    start = json.loads(conn.recv_bytes())
    settings = Settings(**start["settings"])
    logging.basicConfig(level=start["log_level"],
                        format="%(asctime)s %(levelname)s population %(name)s: %(message)s")
    from serving.model_holder import publish_population
    from serving.store import Store

    published = published_population_path(settings)

    store = Store(settings.database_url, max_attribute_names=settings.max_attribute_names,
                  busy_timeout_s=settings.write_wait_s, pool_size=2)  # one fit at a time
    try:
        while True:
            try:
                conn.recv_bytes()
            except (EOFError, OSError):
                return
            began = time.perf_counter()
            try:
                builder = publish_population(store, published)
                answer: dict[str, Any] = {"ok": True, "empty": builder is None}
            except Exception as exc:  # noqa: BLE001 - the reason goes back to the caller
                answer = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
            answer["seconds"] = time.perf_counter() - began
            try:
                conn.send_bytes(json.dumps(answer).encode())
            except OSError:  # the caller is gone
                return
    finally:
        store.close()
