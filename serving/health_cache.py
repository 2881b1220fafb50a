"""Pipeline health as of now, reused while nothing it reads has changed (`GET /v1/pipelines/{p}/health`).

An answer is kept with the store's `Store.health_stamp` of its pipeline, read before the answer was
computed, and reused for the same request (pipeline, since, until, by, stalled_limit) while both hold: it
is at most `max_age_s` old, and the pipeline's stamp is still the same (no deal of the pipeline written,
created, moved in or out, none of their events, no spec change, no learned-limits refresh since). The
stamp is read from the store, so writes by other workers and by the scorer process count too. A reused
answer is exactly the one computed then: its `until` is the time it was computed.

At most `max_entries` answers, the least recently used dropped first; safe across request threads.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Hashable
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
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return self.max_age_s > 0

    def get(self, key: Hashable, stamp: tuple[Any, ...]) -> bytes | None:
        """The answer (JSON body) kept for `key` if it is young enough and was computed under `stamp`, else
        None."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            if entry.stamp != stamp or time.monotonic() - entry.computed > self.max_age_s:
                del self._entries[key]
                return None
            self._entries.move_to_end(key)
            return entry.answer

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
