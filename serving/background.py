"""The service's background loops: one daemon thread each, off every request's path.

A `BackgroundLoop` runs its round every `interval_s`, or at once when `notify()`d (a notice that
arrives during a round makes another round follow it). A round that raises is logged and retried on the
next wake; the loop never dies of it. `stop()` wakes the thread and joins it (within `join_timeout_s`; a
round in progress is finished first). `start()` after `stop()` runs the loop again.

The loops: the live scorer (`serving.live_scores`), the feature population's refit
(`serving.model_holder.PopulationCache`), the learned stage limits (`serving.stage_limits`), the
registry alias check, the monitor state refresh, the query planner's statistics and the won deals'
visits health learns its stalled limits from (`serving.app`).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

logger = logging.getLogger(__name__)


class BackgroundLoop:
    """`round()` on a daemon thread named `name`: every `interval_s` and whenever `notify`d.

    With `first_round_at_start`, the first round runs as soon as the thread starts; otherwise the first
    round waits for a notice or the first interval.
    """

    def __init__(
        self,
        name: str,
        interval_s: float,
        round: Callable[[], object],  # noqa: A002 - the loop's one job: a round
        first_round_at_start: bool = False,
        join_timeout_s: float = 30.0,
    ) -> None:
        self.name = name
        self.interval_s = interval_s
        self._round = round
        self.first_round_at_start = first_round_at_start
        self.join_timeout_s = join_timeout_s
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def notify(self) -> None:
        """Run a round now (or right after the one in progress)."""
        self._wake.set()

    def start(self) -> None:
        """Start the thread (again, after `stop`: the wake-up `stop` gave is not carried over)."""
        if self._stop.is_set():
            self._stop.clear()
            self._wake.clear()
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the loop and join its thread (a round in progress is finished first)."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=self.join_timeout_s)

    @property
    def running(self) -> bool:
        """Whether the loop's thread is alive."""
        return self._thread is not None and self._thread.is_alive()

    @property
    def notified(self) -> bool:
        """Whether a notice arrived since the current round started (a long round may yield to it)."""
        return self._wake.is_set()

    def clear_notices(self) -> None:
        """Forget the notices so far: the round about to start serves them. A round that repeats itself
        calls it before each repeat, so that `notified` tells of the notices during that repeat only."""
        self._wake.clear()

    @property
    def stopping(self) -> bool:
        """Whether `stop` was called: a round that repeats itself checks this between repeats."""
        return self._stop.is_set()

    def _run(self) -> None:
        wait = not self.first_round_at_start
        while not self._stop.is_set():
            if wait:
                self._wake.wait(self.interval_s)
                self._wake.clear()
                if self._stop.is_set():
                    return
            wait = True
            try:
                self._round()
            except Exception:  # a failed round is retried on the next wake; the service keeps serving
                logger.exception("background loop %s: a round failed; retried on the next wake", self.name)
