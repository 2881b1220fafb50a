"""The live scorer and the store's live-score queries, on SQLite and PostgreSQL, with a stand-in model:
what is due and in which order, a failing deal does not hold back the others, at-risk paging in SQL."""

from __future__ import annotations

from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import pandas as pd
import sqlalchemy as sa

from features.history import DealHistory
from serving.live_scores import BULK_CHUNK, BULK_DEALS, LiveScorer
from serving.model_holder import LoadedModel, PopulationCache
from serving.stage_limits import refresh_stage_limits
from serving.store import Store
from tests.serving.stand_in import ScoresAsColumns

NOW = datetime(2025, 6, 1, tzinfo=UTC)


class StandInBundle(ScoresAsColumns):
    """Cold risk = amount / 10,000 (so the ranking is known); fails on the deals named in `broken`."""

    def __init__(self, broken: set[str] | None = None) -> None:
        self.broken = broken or set()

    def score(self, features: pd.DataFrame, top_reasons: int = 3, with_curves: bool = False) -> pd.DataFrame:
        if self.broken & set(features["deal_id"].astype(str)):
            raise ValueError("cannot score")
        risk = features["amount"].astype(float) / 10_000
        return pd.DataFrame(
            {
                "deal_id": features["deal_id"].astype("string").to_numpy(),
                "as_of": features["as_of"].to_numpy(),
                "cold_risk": risk.to_numpy(),
                "close_probability": 1 - risk.to_numpy(),
                "risk_band": "high",
                "expected_value": features["amount"].astype(float).to_numpy(),
                "reasons": [
                    [{"feature": "amount", "value": float(a), "effect": 0.1, "text": "big"}]
                    for a in features["amount"]
                ],
            }
        )


def _scorer(store: Store, bundle: StandInBundle, version: str = "7") -> LiveScorer:
    model = LoadedModel(bundle, version, "models:/x/7", NOW)
    holder: Any = SimpleNamespace(current=lambda: model)
    population = PopulationCache.from_store(store)
    return LiveScorer(store, holder, population, max_age_s=3600)


def _import(store: Store) -> None:
    deals = pd.DataFrame(
        {
            "deal_id": ["L1", "L2", "L3", "L4"],
            "pipeline": ["P", "P", "P", "Q"],
            "owner": ["ana", "bo", "ana", "cy"],
            "amount": ["3000", "9000", "5000", "100"],
            "created_at": ["2025-05-01"] * 4,
            "team": ["t1", "t1", "t2", "t1"],
        }
    )
    stages = pd.DataFrame(
        {"deal_id": ["L1", "L2", "L3", "L4"], "stage": ["Talk"] * 4, "changed_at": ["2025-05-02"] * 4}
    )
    activities = pd.DataFrame(columns=["deal_id", "type", "occurred_at"])
    store.import_history(DealHistory.from_frames(deals, stages, activities))


def test_due_deals_are_scored_and_a_broken_one_stays_pending(store: Store) -> None:
    _import(store)
    scorer = _scorer(store, StandInBundle(broken={"L2"}))
    assert scorer.score_due(NOW) == 3
    assert set(store.pending_scores("7", NOW, 10)) == {"L2"}  # still due, the others are done
    assert store.at_risk_page("P") is None  # an open deal of P has no score yet: the route scores on demand
    good = _scorer(store, StandInBundle())
    assert good.score_due(NOW) == 1 and store.pending_scores("7", NOW, 10) == {}
    assert store.at_risk_page("P", NOW) is None  # the stages' learned limits were never computed
    assert refresh_stage_limits(store, NOW) == ["P", "Q"]
    page = store.at_risk_page("P", NOW, "cold_risk")
    assert page is not None
    total, rows = page
    assert total == 3 and rows["deal_id"].tolist() == ["L2", "L3", "L1"]  # by cold risk, highest first
    assert rows["model_version"].tolist() == ["7"] * 3 and not rows["pending"].any()
    assert rows["reasons"].iloc[0][0]["value"] == 9000.0
    filtered = store.at_risk_page("P", NOW, owner="ana", min_amount=4000, limit=5)
    assert filtered is not None and filtered[0] == 1 and filtered[1]["deal_id"].tolist() == ["L3"]
    second_page = store.at_risk_page("P", NOW, "cold_risk", limit=1, offset=1)
    assert second_page is not None and second_page[1]["deal_id"].tolist() == ["L3"] and second_page[0] == 3
    past_the_end = store.at_risk_page("P", NOW, "cold_risk", limit=2, offset=5)  # still counts them all
    assert past_the_end is not None and past_the_end[0] == 3 and past_the_end[1].empty


def test_a_write_a_new_version_or_age_makes_a_score_due(store: Store) -> None:
    _import(store)
    scorer = _scorer(store, StandInBundle())
    scorer.score_due(NOW)
    refresh_stage_limits(store, NOW)
    assert store.pending_scores("7", NOW, 10) == {}
    call = pd.DataFrame(
        {
            "deal_id": pd.Series(["L3"], dtype="string"),
            "type": pd.Series(["call"], dtype="string"),
            "direction": pd.Series([pd.NA], dtype="string"),
            "occurred_at": pd.to_datetime(["2025-05-20"], utc=True),
            "event_id": pd.Series([pd.NA], dtype="string"),
        }
    )
    store.add_events(activities=call)
    assert list(store.pending_scores("7", NOW, 10)) == ["L3"]
    page = store.at_risk_page("P", NOW)
    assert page is not None and page[1].set_index("deal_id").loc["L3", "pending"]
    scorer.score_due(NOW)
    assert store.pending_scores("7", NOW, 10) == {}
    assert set(store.pending_scores("8", NOW, 10)) == {"L1", "L2", "L3", "L4"}  # a model swap
    an_hour_later = datetime(2025, 6, 1, 1, tzinfo=UTC)  # scores made at NOW are older than this
    assert set(store.pending_scores("7", an_hour_later, 10)) == {"L1", "L2", "L3", "L4"}


def test_forecast_scores_wait_for_every_open_deal_and_keep_the_curve_marker(store: Store) -> None:
    """The live forecast's read: None until every open deal has a score; a model without a timing head
    stores {} (read back as None), never NULL, which marks a score from before revision 0005."""
    _import(store)
    assert store.forecast_scores("P", NOW) is None
    assert _scorer(store, StandInBundle()).score_due(NOW) == 4
    frame = store.forecast_scores("P", NOW)
    assert frame is not None and frame["deal_id"].tolist() == ["L1", "L2", "L3"]  # insertion order
    assert frame["timing_curve"].tolist() == [None] * 3
    assert frame["amount"].tolist() == [3000.0, 9000.0, 5000.0]
    assert (frame["scored_at"] == pd.Timestamp(NOW)).all() and set(frame["model_version"]) == {"7"}


def test_health_history_equals_the_whole_history(store: Store) -> None:
    """Health from the deals its window can see move equals health from the whole history, on both
    backends (the selection is SQL over the state columns)."""
    from features.health import pipeline_health

    _import(store)
    later = pd.DataFrame({"deal_id": ["L1", "L2"], "stage": ["Won", "Lost"],
                          "changed_at": ["2025-05-10", "2025-05-20"]})
    empty = pd.DataFrame(columns=["deal_id", "type", "occurred_at"])
    stored = store.load_history()
    store.import_history(DealHistory.from_frames(stored.deals, later, empty, pipelines=stored.pipelines))
    full = store.load_history(pipelines=["P"])
    windows = [("2025-01-01", "2025-02-01"), ("2025-05-15", "2025-06-01"), ("2025-05-01", "2025-05-12"),
               ("2024-01-01", "2026-01-01")]
    for since, until in windows:
        t0, t1 = pd.Timestamp(since, tz="UTC"), pd.Timestamp(until, tz="UTC")
        history, left_out = store.health_history("P", t0.to_pydatetime(), t1.to_pydatetime())
        if since == "2025-05-15":
            assert left_out.won is not None and left_out.won.deals["deal_id"].tolist() == ["L1"]
        for by in (None, "owner", "team"):
            got = pipeline_health(history, t0, t1, pipeline="P", by=by, left_out=left_out)  # type: ignore[arg-type]
            expected = pipeline_health(full, t0, t1, pipeline="P", by=by)  # type: ignore[arg-type]
            assert got == expected, (since, until, by)


def test_a_deal_written_after_the_population_was_fitted_is_scored_again_after_a_refit(store: Store) -> None:
    """The scorer never refits: a write is scored at once with the population already fitted, and once
    the (background) refresh has refitted it, that deal is scored again with the new one."""
    _import(store)
    scorer = _scorer(store, StandInBundle())
    assert scorer.score_due(NOW) == 4  # the first fit happens here, after the import
    assert scorer.score_due(NOW) == 0
    call = pd.DataFrame({"deal_id": ["L3"], "type": ["call"], "occurred_at": ["2025-05-21"]})
    store.add_events(activities=DealHistory.from_frames(
        store.load_history().deals, pd.DataFrame(columns=["deal_id", "stage", "changed_at"]), call,
        pipelines=store.pipeline_specs(),
    ).activities)
    fits = scorer.population.fits
    assert scorer.score_due(NOW) == 1  # the write, scored with the population fitted before it
    assert scorer.population.fits == fits  # no refit on the scorer's path
    assert scorer.score_due(NOW) == 0
    scorer.population.mark_dirty()
    assert scorer.population.refresh()
    assert scorer.score_due(NOW) == 1  # L3 again, with the population that includes its call
    assert scorer.score_due(NOW) == 0


def test_a_write_during_a_model_swap_waits_for_one_short_round_not_the_whole_swap(store: Store) -> None:
    """After a swap every open deal is due again; that background work goes in rounds of at most
    `BULK_DEALS`, and a deal written meanwhile is in the next round (at 100,000 deals a round of 500 took
    seconds, and the write waited for it). Each row names the version that made it until the swap ends."""
    n = 250
    ids = [f"S{i:03d}" for i in range(n)]
    deals = pd.DataFrame({"deal_id": ids, "pipeline": "P", "owner": "ana", "amount": "1000",
                          "created_at": "2025-05-01"})
    stages = pd.DataFrame({"deal_id": ids, "stage": "Talk", "changed_at": "2025-05-02"})
    store.import_history(DealHistory.from_frames(deals, stages, pd.DataFrame(
        columns=["deal_id", "type", "occurred_at"])))
    assert _scorer(store, StandInBundle(), "7").score_due(NOW) == n
    swapped = _scorer(store, StandInBundle(), "8")
    assert len(store.pending_scores("8", NOW, 1000)) == n
    written = ids[-1]
    store.add_events(activities=pd.DataFrame({
        "deal_id": pd.Series([written], dtype="string"), "type": pd.Series(["call"], dtype="string"),
        "direction": pd.Series([pd.NA], dtype="string"),
        "occurred_at": pd.to_datetime(["2025-05-20"], utc=True),
        "event_id": pd.Series([pd.NA], dtype="string"),
    }))
    first = swapped.score_due(NOW)
    assert first == 1  # the written deal, in a round of its own
    left = store.pending_scores("8", NOW, 1000)
    assert written not in left and len(left) == n - first  # the written deal went first
    page = store.at_risk_page("P", NOW, limit=None) if refresh_stage_limits(store, NOW) else None
    assert page is not None
    versions = page[1].set_index("deal_id")["model_version"]
    assert versions[written] == "8" and (versions == "7").sum() == n - first  # mixed, each names its own
    # A write's notice during a background round stops it after the chunk in progress: the scored deals
    # are saved, the rest stay due for the next round.
    swapped._loop.notify()
    assert swapped.score_due(NOW) == BULK_CHUNK
    assert len(store.pending_scores("8", NOW, 1000)) == n - first - BULK_CHUNK
    # The loop's next round serves that notice; the rounds after it are whole again.
    sizes: list[int] = []
    one_round = swapped._round

    def counted(now: datetime | None = None) -> tuple[int, bool]:
        scored, more = one_round(now)
        sizes.append(scored)
        return scored, more

    swapped._round = counted  # type: ignore[method-assign]
    swapped._rounds()  # the rest of the swap, round after round
    assert sizes[0] == BULK_DEALS
    assert store.pending_scores("8", NOW, 1000) == {}


def test_a_write_that_lands_while_a_round_looks_for_due_deals_is_scored_as_of_after_it(store: Store) -> None:
    """The round's time is taken after it read the due deals and their state stamps: a write committed
    before that read is within the score's time. (As of the round's start, the write's stamp was taken by
    a score as of before it: not pending any more, its new event left out, until the hourly re-score.)"""
    _import(store)
    scorer = _scorer(store, StandInBundle())
    assert scorer.score_due() == 4
    read_due = store.pending_scores
    written: list[datetime] = []

    def a_write_first(*args: Any, **kwargs: Any) -> dict[str, datetime]:
        if not written:  # the write commits after the round started, before it reads what is due
            store.add_events(activities=pd.DataFrame({
                "deal_id": pd.Series(["L1"], dtype="string"), "type": pd.Series(["call"], dtype="string"),
                "direction": pd.Series([pd.NA], dtype="string"),
                "occurred_at": pd.to_datetime([datetime.now(UTC)], utc=True),
                "event_id": pd.Series(["late-call"], dtype="string"),
            }))
            written.append(datetime.now(UTC))
        return read_due(*args, **kwargs)

    store.pending_scores = a_write_first  # type: ignore[method-assign]
    assert scorer.score_due() == 1
    scores = store.table("deal_scores")
    with store.engine.connect() as conn:
        as_of = conn.execute(sa.select(scores.c.as_of).where(scores.c.deal_id == "L1")).scalar_one()
    assert as_of.replace(tzinfo=UTC) >= written[0]
    assert read_due("7", NOW, 10) == {}  # and it is not pending: its score is as of after the write
