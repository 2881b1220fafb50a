"""Live scores: a background worker keeps a current score for every open deal in the store.

What makes a deal's stored score due (`Store.pending_scores`):
- a write touched the deal after its score (its state stamp moved on: the stamp is written in the write's
  own transaction, so the need survives a crash or restart); writes `notify()` the worker, which scores
  them at once: visible to the next read well within a second for a handful of deals;
- the score was made by another model version (after a swap every deal is re-scored in the background;
  until then each row names the version that made it);
- the score is older than `max_age_s` (default one hour): time-based features (days since the last
  activity, days in stage) move as time passes, so scores are refreshed on that clock.

Scores are computed exactly as the on-demand path does (`models.scoring.score_points` with the feature
builder fitted on the store), as of the time they are computed; their `as_of` is stored with them, and so
are the close head's timing curves (the live forecast spreads each deal over the months with them).

The scorer never refits the feature population: it scores with the one last fitted (its own thread
refits it on a clock, `PopulationCache`). A deal written after that fit started is scored at once anyway
(its write visible within the second) and scored again when a refit that includes the write arrives.

While a shadow challenger is set (`serving.challenger`), every round scores the same deals as of the same
time with it too and stores those scores apart (`challenger_scores` and the score history), never in
`deal_scores`. Naming a challenger makes every score computed before that moment due once, so both
models soon hold scores of every open deal. A challenger that fails to score never holds back the
champion's scores.
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import pandas as pd

from features.build import FeatureBuilder
from features.history import DealHistory, to_utc_timestamp
from models.scoring import open_deal_points, score_points
from serving.background import BackgroundLoop
from serving.challenger import Challenger
from serving.model_holder import LoadedModel, ModelHolder, PopulationCache, builder_for
from serving.store import Store

logger = logging.getLogger(__name__)

DEFAULT_MAX_AGE_S = 3600.0
BATCH_DEALS = 500  # deals scored per round: one history read and one feature build per round
# of which at most this many for background work (a swap, aged scores, a refit's re-scores): at 100,000
# stored deals a round of 100 took 0.25 to 0.9 s (2 busy cores)
BULK_DEALS = 100
# background work is scored this many deals at a time; a write's notice stops the round after the chunk
# in progress (the scored deals are saved, the rest stay due), so a write waits for one chunk at most
BULK_CHUNK = 20
IDLE_POLL_S = 5.0  # how often the worker looks for aged scores when nobody notifies it


class LiveScoring(Protocol):
    """What the service tells whatever keeps its live scores: a `LiveScorer` thread (setting
    `live_scorer = thread`) or the scorer process (`serving.scorer_process.ScorerProcess`)."""

    def notify(self) -> None: ...

    def model_swapped(self, version: str) -> None: ...

    def challenger_changed(self) -> None: ...

    def status(self) -> dict[str, Any]: ...

    def stop(self) -> None: ...


class LiveScorer:
    """Scores what is due, in rounds, on a daemon thread (`start`/`stop`), or once (`score_due`)."""

    def __init__(
        self,
        store: Store,
        holder: ModelHolder,
        population: PopulationCache,
        max_age_s: float = DEFAULT_MAX_AGE_S,
        batch: int = BATCH_DEALS,
        challenger: Challenger | None = None,
    ) -> None:
        self.store = store
        self.challenger = challenger
        self.holder = holder
        self.population = population
        self.max_age_s = max_age_s
        self.batch = batch
        self._loop = BackgroundLoop("live-scores", IDLE_POLL_S, self._rounds)
        self._builder: FeatureBuilder | None = None  # the population the last round scored with
        # deals scored with a population that may miss their latest write: scored again after a refit
        self._provisional: set[str] = set()
        self._redo: set[str] = set()  # such deals once a refit arrived: re-scored, `bulk` per round
        self.bulk = min(batch, BULK_DEALS)

    def notify(self) -> None:
        """Something changed (a write, a model swap, a refitted population): score what is due."""
        self._loop.notify()

    def model_swapped(self, _version: str) -> None:
        """The service swapped its model (this process's holder holds it): every open deal is due."""
        self._loop.notify()

    def challenger_changed(self) -> None:
        """A challenger was named or cleared (this process's `Challenger` holds it): score what is due."""
        self._loop.notify()

    def population_refitted(self, _builder: FeatureBuilder | None) -> None:
        """The population was refitted: deals scored with one that missed their latest write are due."""
        self._loop.notify()

    def score_due(self, now: datetime | None = None) -> int:
        """One round: score the due deals as of `now` (default: the current time); how many. Written deals
        (up to `batch`) make a round of their own; without any, background work (at most `bulk`)."""
        return self._round(now)[0]

    def _round(self, now: datetime | None = None) -> tuple[int, bool]:
        """`score_due`, and whether more may be due (a round of written deals, or a full background
        round): `_rounds` goes on then."""
        model = self.holder.current()
        if model is None:
            return 0, False
        began = time.perf_counter()
        started = to_utc_timestamp(now if now is not None else datetime.now(UTC))
        stale_before = started - timedelta(seconds=self.max_age_s)
        challenger = self.challenger.current() if self.challenger is not None else None
        if challenger is not None and challenger.version == model.version:
            challenger = None  # promoted meanwhile: it is the champion now
        if challenger is not None:
            stale_before = max(stale_before, self._challenger_since(started))
        # Written deals first, in a round of their own: a write waits for the round in progress at most,
        # never for background work in its own round (at 100,000 deals a round of 100 took 0.5 s). The
        # background work (another version, aged scores, a refit's re-scores) goes in rounds of at most
        # `bulk` while no write is due.
        due: dict[str, datetime | None] = dict(
            self.store.pending_scores(model.version, stale_before.to_pydatetime(), self.batch, aged_limit=0)
        )
        written = len(due)
        # The population is never refitted here (its own thread does that, on a clock): a write is
        # scored at once with the population already fitted, and scored again once a refit includes it.
        builder = self.population.get()
        if builder is not self._builder:
            self._builder = builder
            self._redo |= self._provisional
            self._provisional = set()
        redo: dict[str, datetime | None] = {}
        if not due:
            due = dict(self.store.pending_scores(
                model.version, stale_before.to_pydatetime(), self.bulk, aged_limit=self.bulk
            ))
            redo = self._rescore_provisional(self.bulk - len(due))
            due = {**redo, **due}
        if not due:
            return 0, False
        found = time.perf_counter()
        # Scored as of now, after the due deals and their state stamps were read: a write committed before
        # that read is within the score's time (as of the round's start, a write that landed meanwhile had
        # its stamp taken by a score as of before it, and its events after that time left out until the
        # clock's re-score).
        t = to_utc_timestamp(now if now is not None else datetime.now(UTC))
        history = self.store.load_history(deal_ids=list(due), trusted=True)
        points = open_deal_points(history, t)
        if points.empty:
            return 0, written > 0
        full = len(due) >= self.bulk
        if written:
            scored = self._score(model, history, points, builder)
        else:
            # Background work yields to a write that arrives meanwhile: scored `BULK_CHUNK` deals at a
            # time, it stops at the first notice (the scored ones are saved, the rest stay due).
            scored, done = self._score_chunks(model, history, points, builder)
            left = set(points["deal_id"].astype(str)) - set(done["deal_id"].astype(str))
            points = done
            self._redo |= left & set(redo)
            due = {d: stamp for d, stamp in due.items() if d not in left}
            full = full or bool(left)
        saved = self.store.save_scores(scored, model.version, due) if len(scored) else 0
        logger.debug("round: %d deals due (%d written) found in %.3f s, %d scored and saved in %.3f s",
                     len(due), written, found - began, saved, time.perf_counter() - found)
        read_from = self.population.read_from
        cutoff = read_from.astimezone(UTC).replace(tzinfo=None) if read_from is not None else None
        self._provisional.update(
            d for d, stamp in due.items() if cutoff is None or stamp is None or stamp >= cutoff
        )
        if challenger is not None:
            self._score_challenger(challenger, history, points, builder)
        return saved, written > 0 or full

    def _rescore_provisional(self, room: int) -> dict[str, datetime | None]:
        """Deals scored with a population fitted before their latest write, to score again (at most
        `room`; the rest wait for the next round), with their state stamps."""
        if room <= 0 or not self._redo:
            return {}
        ids = sorted(self._redo)[:room]
        self._redo.difference_update(ids)
        states = self.store.deal_states(deal_ids=ids, outcome="open")
        stamps = states["state_updated_at"].dt.tz_convert(None)
        return {
            str(d): (None if pd.isna(v) else v.to_pydatetime())
            for d, v in zip(states["deal_id"], stamps, strict=True)
        }

    def _challenger_since(self, t: pd.Timestamp) -> pd.Timestamp:
        """When the challenger was named (scores older than that are due once), never after `t`."""
        setting = self.challenger.setting() if self.challenger is not None else None
        try:
            since = to_utc_timestamp(setting.set_at) if setting is not None else None
        except (TypeError, ValueError):
            since = None
        return min(since, t) if since is not None else t - timedelta(seconds=self.max_age_s)

    def _score_challenger(
        self,
        challenger: LoadedModel,
        history: DealHistory,
        points: pd.DataFrame,
        stored_builder: FeatureBuilder | None,
    ) -> int:
        """Shadow-score the round's deals with the challenger, as of the same time as the champion."""
        try:
            scored = score_points(challenger.bundle, history, points, builder_for(stored_builder, history))
            assert self.challenger is not None  # a challenger model implies its setting holder
            return self.challenger.archive.save_challenger_scores(scored, challenger.version)
        except Exception:  # the shadow model must never disturb live scoring
            logger.exception("shadow scoring %d deals with challenger %s failed", len(points),
                             challenger.version)
            return 0

    def _score_chunks(
        self, model: LoadedModel, history: DealHistory, points: pd.DataFrame, builder: FeatureBuilder | None
    ) -> tuple[pd.DataFrame, pd.DataFrame]:
        """`_score` of `points`, `BULK_CHUNK` at a time, until a notice arrives (a write, mostly): the
        scores and the points scored."""
        parts, done = [], 0
        while done < len(points):
            chunk = points.iloc[done : done + BULK_CHUNK]
            parts.append(self._score(model, history, chunk, builder))
            done += len(chunk)
            if self._loop.notified:
                break
        return pd.concat(parts, ignore_index=True), points.iloc[:done]

    def _score(
        self, model: LoadedModel, history: DealHistory, points: pd.DataFrame, stored: FeatureBuilder | None
    ) -> pd.DataFrame:
        """Live scores of `points` (with their timing curves); a deal that fails to score is left out (it
        stays pending)."""
        builder = builder_for(stored, history)
        try:
            return score_points(model.bundle, history, points, builder, with_curves=True)
        except Exception:  # one bad deal must not hold back the others: score them one by one
            logger.exception("scoring a round of %d deals failed; scoring them one at a time", len(points))
            parts = []
            for i in range(len(points)):
                try:
                    parts.append(
                        score_points(model.bundle, history, points.iloc[[i]], builder, with_curves=True)
                    )
                except Exception:
                    deal_id = points["deal_id"].iloc[i]
                    logger.exception("live score of deal %s failed; it stays pending", deal_id)
            return pd.concat(parts, ignore_index=True) if parts else points.iloc[:0]

    def status(self) -> dict[str, Any]:
        """Whether the scorer's thread runs (`/readyz`)."""
        return {"mode": "thread", "running": self._loop.running}

    def start(self) -> None:
        """Run rounds on a daemon thread until `stop`."""
        self._loop.start()

    def stop(self) -> None:
        self._loop.stop()

    def _rounds(self) -> None:
        """Score what is due; a round of written deals or a full background round means more may be due
        (background work held back by the writes, a swap, a big import): go on."""
        while not self._loop.stopping:
            self._loop.clear_notices()  # this round serves them (it looks for written deals first)
            if not self._round()[1]:
                break
