"""Pipeline health as of now, reused while nothing it reads has changed (`GET /v1/pipelines/{p}/health`).

An answer is kept with the store's `Store.health_stamp` of its pipeline, read before the answer was
computed, and reused for the same request (pipeline, since, until, by, stalled_limit) while both hold: it
is at most `max_age_s` old, and the pipeline's stamp is still the same (no deal of the pipeline written,
created, moved in or out, none of their events, no spec change, no learned-limits refresh since). The
stamp is read from the store, so writes by other workers and by the scorer process count too. A reused
answer is exactly the one computed then: its `until` is the time it was computed.

Requests that find no answer kept share one computation (`answer`): while one request computes the answer
of a request and stamp, the same request under the same stamp waits for it instead of computing it again.
Under concurrent clients a write is followed by several reads at once, and each computed the same answer
(the costliest read of the mix bench/bench_throughput.py times), so more clients did less work per second.

At most `max_entries` answers, the least recently used dropped first; safe across request threads.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any

MAX_ENTRIES = 256


@dataclass(frozen=True)
class _Entry:
    stamp: tuple[Any, ...]
    computed: float  # time.monotonic() when the answer was computed
    answer: bytes  # the JSON body


class HealthCache:
    """Health answers by request, each valid while its pipeline's stamp holds, for `max_age_s` at most
    (0: nothing is kept)."""

    def __init__(self, max_age_s: float, max_entries: int = MAX_ENTRIES) -> None:
        self.max_age_s = max_age_s
        self.max_entries = max_entries
        self._entries: OrderedDict[Hashable, _Entry] = OrderedDict()
        self._computing: dict[tuple[Hashable, tuple[Any, ...]], threading.Event] = {}
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return self.max_age_s > 0

    def _kept(self, key: Hashable, stamp: tuple[Any, ...]) -> bytes | None:
        """The answer (JSON body) kept for `key` if it is young enough and was computed under `stamp`, else
        None (under the lock)."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry.stamp != stamp or time.monotonic() - entry.computed > self.max_age_s:
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return entry.answer

    def answer(
        self, key: Hashable, stamp: tuple[Any, ...], started: float, compute: Callable[[], bytes]
    ) -> bytes:
        """The answer kept for `key` under `stamp`; else the one another request is computing for them,
        once it is done; else `compute()`'s, kept (`put`, computed from reads that began at `started`).
        A computation that fails leaves its waiters to compute the answer themselves."""
        flight = (key, stamp)
        while True:
            with self._lock:
                kept = self._kept(key, stamp)
                if kept is not None:
                    return kept
                running = self._computing.get(flight)
                if running is None:
                    done = self._computing[flight] = threading.Event()
                    break
            running.wait()  # then read what it kept (or compute, if it failed or kept nothing)
        try:
            body = compute()
            self.put(key, stamp, started, body)
            return body
        finally:
            with self._lock:
                del self._computing[flight]
            done.set()

    def put(self, key: Hashable, stamp: tuple[Any, ...], started: float, answer: bytes) -> None:
        """Keep `answer` (its JSON body) for `key`, computed from reads that began at `started`
        (time.monotonic()) after `stamp` was read."""
        if not self.enabled:
            return
        with self._lock:
            self._entries[key] = _Entry(stamp, started, answer)
            self._entries.move_to_end(key)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)
