"""The stages' learned stalled limits, kept per pipeline in the store off the request path.

The live at-risk and stale lists (`Store.at_risk_page`) split stale deals from the others by each stage's
limit: a configured `stale_after_days` (read from the spec with the list, so a spec PUT counts at once),
else the learned one, `features.health.learned_stale_thresholds` of the pipeline's won deals. The lists
read the limits stored with the pipeline (`pipelines.learned_stale_days`, `stale_learned_at`), learned
here by `Store.learned_limits` from the stage changes of the deals that may be won (no history is read).
Health as of now uses the stored limits while they hold and otherwise learns them itself the same way,
within its read (`Store.health_state`), so a read right after a win does not wait for this refresh.

How fresh (`Store.stage_limits_due`): a pipeline's learned limits are recomputed on the next poll (every
`POLL_S`, 5 s) after a write that touches a deal counting for them (won now, or with events dated after
now), takes a deal stored as won out of them (reopened, lost, or moved to another pipeline: the write
stamps `pipelines.updated_at`, as a spec change does) or changes the pipeline's spec, and at least every
`max_age_s` (the live scores' clock, one hour by default; it also covers events dated in the future
becoming past). Until a pipeline's limits were computed once, its lists are ranked on demand (as while an
open deal has no live score).

Two clocks: the limits are learned as of `now` (which deals are won by then, which stage visits ended),
while `stale_learned_at` is always the wall-clock time taken before the refresh read anything. It is
compared with the wall-clock stamps writes leave (`deals.state_updated_at`, `pipelines.updated_at`) to
know what was written since, and the age `max_age_s` is wall-clock time since it. So an explicit `now`
(tests and benches replaying a fixed time) changes what is learned, never what counts as written since
or how old the limits are.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

from serving.background import BackgroundLoop
from serving.store import Store

logger = logging.getLogger(__name__)

POLL_S = 5.0
DEFAULT_MAX_AGE_S = 3600.0


def refresh_stage_limits(store: Store, now: datetime | None = None,
                         max_age_s: float = DEFAULT_MAX_AGE_S) -> list[str]:
    """Recompute the learned limits of every pipeline that is due as of `now` (default: the current
    time), learned as of `now`; the pipelines refreshed. Limits are due by age `max_age_s` of wall-clock
    time after their `stale_learned_at`, whatever `now` (see the module docstring)."""
    clock = datetime.now(UTC)
    t = now if now is not None else clock
    due = store.stage_limits_due(t, clock - timedelta(seconds=max_age_s))
    for pipeline in due:
        # wall clock, taken before reading: a write stamped from now on makes the limits due again
        started = datetime.now(UTC)
        store.save_learned_limits(pipeline, store.learned_limits(pipeline, t), started)
    return due


class StageLimitRefresher:
    """Runs `refresh_stage_limits` every `poll_s` on a daemon thread (`start`/`stop`)."""

    def __init__(self, store: Store, max_age_s: float = DEFAULT_MAX_AGE_S, poll_s: float = POLL_S) -> None:
        self.store = store
        self.max_age_s = max_age_s
        self.poll_s = poll_s
        self._loop = BackgroundLoop("stage-limits", poll_s, self.refresh, first_round_at_start=True)

    def refresh(self) -> list[str]:
        """One round: the pipelines whose learned limits were due, recomputed."""
        return refresh_stage_limits(self.store, max_age_s=self.max_age_s)

    def start(self) -> None:
        self._loop.start()

    def stop(self) -> None:
        self._loop.stop()
