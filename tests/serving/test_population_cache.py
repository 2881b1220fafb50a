"""The population cache behind scoring: readers never refit; a refresh refits once per change."""

from __future__ import annotations

import threading
import time
from typing import Any

from serving.model_holder import PopulationCache


def _counting_cache(stamp: list[int] | None = None) -> tuple[PopulationCache, list[int]]:
    loads: list[int] = []

    def load() -> Any:
        loads.append(len(loads))
        return f"population {len(loads)}"

    return PopulationCache(load, stamp=(lambda: stamp[0]) if stamp is not None else None), loads


def test_a_write_never_makes_a_read_refit_and_a_burst_costs_one_refresh() -> None:
    cache, loads = _counting_cache()
    assert cache.get() == "population 1"  # the first fit
    assert cache.refresh() is False  # nothing changed since
    for _ in range(50):  # a burst of writes
        cache.mark_dirty()
        assert cache.get() == "population 1"  # the read answers with what was fitted, at once
    assert len(loads) == 1
    assert cache.refresh() is True and cache.get() == "population 2"
    assert cache.refresh() is False and len(loads) == 2


def test_a_change_of_the_store_stamp_makes_a_refresh_due() -> None:
    """Writes by another process do not call mark_dirty: the store's change stamp tells."""
    stamp = [1]
    cache, loads = _counting_cache(stamp)
    cache.get()
    assert not cache.due()
    stamp[0] = 2
    assert cache.due() and cache.refresh() and cache.get() == "population 2"
    assert not cache.due()


def test_readers_keep_the_previous_population_while_a_refresh_runs() -> None:
    release = threading.Event()
    started = threading.Event()
    calls = [0]

    def load() -> Any:
        calls[0] += 1
        if calls[0] == 2:  # the refresh after the write blocks until released
            started.set()
            release.wait(timeout=60)
        return f"population {calls[0]}"

    cache = PopulationCache(load)
    assert cache.get() == "population 1"
    cache.mark_dirty()
    refreshing = threading.Thread(target=cache.refresh)
    refreshing.start()
    assert started.wait(timeout=30)

    results: list[Any] = []
    reader = threading.Thread(target=lambda: results.append(cache.get()))
    reader.start()
    reader.join(timeout=30)
    assert not reader.is_alive(), "a reader queued behind the refresh"
    assert results == ["population 1"]

    release.set()
    refreshing.join(timeout=30)
    assert cache.get() == "population 2" and calls[0] == 2


def test_a_failed_refresh_keeps_the_previous_population_and_is_retried() -> None:
    fail = [False]
    calls = [0]

    def load() -> Any:
        calls[0] += 1
        if fail[0]:
            raise ValueError("a stored row no longer validates")
        return f"population {calls[0]}"

    cache = PopulationCache(load)
    assert cache.get() == "population 1"
    cache.mark_dirty()
    fail[0] = True
    assert cache.refresh() is False
    assert cache.get() == "population 1" and cache.last_error is not None
    assert cache.due()  # retried by the next refresh although nothing changed since
    fail[0] = False
    assert cache.refresh() is True and cache.get() == "population 3" and cache.last_error is None


def test_the_first_read_waits_for_the_population() -> None:
    """With no population yet, a second reader blocks until the first one has computed it (no None)."""
    release = threading.Event()
    started = threading.Event()
    calls = [0]

    def load() -> Any:
        calls[0] += 1
        started.set()
        release.wait(timeout=30)
        return "population"

    cache = PopulationCache(load)
    results: list[Any] = []
    first = threading.Thread(target=lambda: results.append(("first", cache.get())))
    first.start()
    assert started.wait(timeout=30)
    second = threading.Thread(target=lambda: results.append(("second", cache.get())))
    second.start()
    second.join(timeout=0.5)
    assert second.is_alive(), "the second reader answered before any population existed"
    assert results == []

    release.set()
    first.join(timeout=30)
    second.join(timeout=30)
    assert sorted(results) == [("first", "population"), ("second", "population")]
    assert calls[0] == 1  # the waiting reader used the first one's result instead of loading again


def test_the_service_fits_the_population_of_the_whole_history_without_reading_activities(
    tmp_path: Any,
) -> None:
    """The cache loads only `POPULATION_TABLES` from the store; the statistics must be exactly those of
    the whole history (activities included), or scores would differ between the service and the CLI."""
    from dataclasses import fields

    import pandas as pd

    from features.build import FeatureBuilder
    from serving.store import Store
    from training.simulate import simulate_history

    history = simulate_history(n_deals=300, seed=3)
    assert len(history.activities) > 1000
    store = Store(f"sqlite:///{tmp_path / 'pop.db'}")
    store.create_schema()
    store.import_history(history)
    served = PopulationCache.from_store(store).get()
    assert served is not None and served.population_stats_ is not None
    whole = FeatureBuilder().fit(history).population_stats_
    assert whole is not None
    for table in fields(whole):
        pd.testing.assert_frame_equal(
            getattr(served.population_stats_, table.name), getattr(whole, table.name), check_dtype=False,
            obj=table.name,
        )
    store.close()


def test_refits_on_the_clock_rest_nine_times_as_long_as_the_last_refit_took() -> None:
    """On a big store a refit takes seconds; refitting again at once after every write would keep the
    service busy refitting. The clock's refresh waits 9x the last refit's duration; a write is still
    picked up by the first tick after the rest."""
    now = [1000.0]
    loads: list[int] = []

    def load() -> Any:
        now[0] += 10.0  # each fit takes 10 s of the (fake) clock
        loads.append(1)
        return f"population {len(loads)}"

    cache = PopulationCache(load, clock=lambda: now[0])
    assert cache.get() == "population 1"  # fitted at 1010, resting until 1100
    cache.mark_dirty()
    now[0] = 1099.0
    assert cache.tick() is False and cache.get() == "population 1"
    now[0] = 1100.0
    assert cache.tick() is True and cache.get() == "population 2"  # ended 1110: rests until 1200
    cache.mark_dirty()
    now[0] = 1150.0
    assert cache.tick() is False
    assert cache.refresh() is True and cache.get() == "population 3"  # an explicit refresh does not rest


def test_the_service_following_the_scorer_process_reads_each_population_it_publishes_and_never_refits(
    tmp_path: Any,
) -> None:
    """`PopulationCache.following`: the first population is a fit of the store (a file an earlier run
    left is not read); writes do not make it due; each population the scorer process publishes is read
    once, with the same statistics to the last bit, and features built from it are bit-identical."""
    from dataclasses import fields

    import pandas as pd

    from features.build import FeatureBuilder
    from features.population_stats import save_population_stats
    from models.scoring import open_deal_points
    from serving.store import Store
    from training.simulate import simulate_history

    history = simulate_history(n_deals=300, seed=4)
    store = Store(f"sqlite:///{tmp_path / 'pop.db'}")
    store.create_schema()
    store.import_history(history.subset(history.deals["deal_id"].astype(str).tolist()[:150]))
    published = tmp_path / "population" / "population.zip"
    stale = FeatureBuilder().fit(simulate_history(n_deals=50, seed=9)).population_stats_
    assert stale is not None
    save_population_stats(stale, published)  # left by an earlier run on another store

    cache = PopulationCache.following(store, published, interval_s=60.0)
    first = cache.get()
    assert first is not None and first.population_stats_ is not None
    assert len(first.population_stats_.pipeline_amount) == 150  # the store's own 150 deals, not the file
    cache.mark_dirty()  # a write: the scorer process refits, not this process
    assert not cache.due() and cache.refresh() is False

    whole = FeatureBuilder().fit(history)  # what the scorer process would fit after more writes
    assert whole.population_stats_ is not None
    save_population_stats(whole.population_stats_, published)
    assert cache.due() and cache.refresh() is True and cache.refresh() is False
    served = cache.get()
    assert served is not None and served.population_stats_ is not None
    assert (cache.fits, cache.published_reads) == (2, 1)
    for table in fields(whole.population_stats_):
        pd.testing.assert_frame_equal(getattr(served.population_stats_, table.name),
                                      getattr(whole.population_stats_, table.name), check_exact=True,
                                      obj=table.name)
    points = open_deal_points(history, history.end_time)
    pd.testing.assert_frame_equal(served.transform(history, points), whole.transform(history, points),
                                  check_exact=True)
    store.close()


def test_the_service_following_refits_itself_while_nothing_is_published(tmp_path: Any) -> None:
    """Without the scorer process's file (not written yet, or the home not writable) the service's cache
    refits when the store changes, as without a scorer process, rather than keep its first fit forever."""
    from serving.store import Store
    from training.simulate import simulate_history

    history = simulate_history(n_deals=120, seed=5)
    ids = history.deals["deal_id"].astype(str).tolist()
    store = Store(f"sqlite:///{tmp_path / 'pop.db'}")
    store.create_schema()
    store.import_history(history.subset(ids[:60]))
    cache = PopulationCache.following(store, tmp_path / "population" / "none.zip", interval_s=60.0)
    first = cache.get()
    assert first is not None and first.population_stats_ is not None
    assert not cache.due()
    store.import_history(history.subset(ids[60:]))  # another process's write: the store's stamp moves
    assert cache.due() and cache.refresh() is True
    served = cache.get()
    assert served is not None and served.population_stats_ is not None
    assert len(served.population_stats_.pipeline_amount) == 120 and cache.published_reads == 0
    store.close()


def test_the_rest_after_a_refit_counts_the_fit_not_the_start_of_the_process_that_fits() -> None:
    """The scorer process fits in a process of its own, started at its first fit: on a busy machine that
    start (imports) took long enough that nine times it held the next refit back past two minutes, and
    a write's new population waited for it. The rest counts the fit's own time, as the loader reports."""
    now = [1000.0]
    work: list[float | None] = [None]

    def load() -> Any:
        now[0] += 100.0  # a process start and a fit: 100 s of the (fake) clock
        work[0] = 1.0  # of which the fit itself took 1 s
        return "population"

    cache = PopulationCache(load, clock=lambda: now[0], work_s=lambda: work[0])
    assert cache.get() == "population"  # ended at 1100: rests 9 s, not 900 s
    cache.mark_dirty()
    now[0] = 1108.0
    assert cache.tick() is False
    now[0] = 1109.0
    assert cache.tick() is True


def test_the_population_process_reports_how_long_its_fit_took(tmp_path: Any) -> None:
    """`PopulationWorker.fit` (the scorer process's fitter) returns the population of the store and the
    seconds the fit took in the population process, without the process's own start."""
    from serving.scorer_process import PopulationWorker
    from serving.settings import Settings
    from serving.store import Store
    from training.simulate import simulate_history

    url = f"sqlite:///{tmp_path / 'pop.db'}"
    store = Store(url)
    store.create_schema()
    store.import_history(simulate_history(n_deals=120, seed=2))
    store.close()
    fitter = PopulationWorker(Settings(database_url=url, home=tmp_path))
    try:
        began = time.monotonic()
        builder = fitter.fit()
        first_call_s = time.monotonic() - began
        assert builder is not None and builder.population_stats_ is not None
        assert fitter.last_fit_s is not None and 0 < fitter.last_fit_s < first_call_s
    finally:
        fitter.stop()


def test_the_new_deal_models_read_only_the_state_columns_they_need_and_equal_a_fit_on_every_column(
    tmp_path: Any,
) -> None:
    """`NewDealCache.refresh` reads every stored deal in the service's process, so it reads only the
    columns `new_deals_from_states` uses; its models equal those fitted from every state column."""
    import numpy as np
    import pandas as pd

    from models.forecast import new_deals_from_states
    from serving.model_holder import NewDealCache
    from serving.store import Store
    from training.simulate import simulate_history

    store = Store(f"sqlite:///{tmp_path / 'new.db'}")
    store.create_schema()
    store.import_history(simulate_history(n_deals=400, seed=6))
    now = pd.Timestamp("2025-06-01", tz="UTC")
    cache = NewDealCache(store)
    cache.refresh(now.to_pydatetime())
    every = store.deal_states().rename(columns={"outcome": "status", "current_amount": "amount"})
    assert every["pipeline"].nunique() > 1
    for pipeline, part in every.groupby("pipeline"):
        expected = new_deals_from_states(part, now)
        got, as_of = cache.get(str(pipeline))
        assert as_of == now.to_pydatetime()
        assert got.rate_per_day == expected.rate_per_day > 0
        assert np.array_equal(got.won_amounts, expected.won_amounts) and len(got.won_amounts) > 0
        assert np.array_equal(got.won_by_age, expected.won_by_age)
    store.close()


def test_the_service_following_the_scorer_process_takes_the_new_deal_models_published_with_the_population(
    tmp_path: Any,
) -> None:
    """The scorer's fitting process publishes the forecast's new-deal models in the population's file
    (`publish_population`); the service's `NewDealCache` takes them when it reads that population, equal
    to the last bit to a fit of every stored deal's state as of the time they were fitted, and reads no
    deal's state itself. Without published models (its own first fit, a file without them) it fits; a
    pipeline missing from them is fitted on its first read."""
    import numpy as np
    import pandas as pd

    from features.build import FeatureBuilder
    from features.population_stats import save_population_stats
    from models.forecast import new_deals_from_states
    from serving.model_holder import NewDealCache, publish_population
    from serving.store import Store
    from training.simulate import simulate_history

    history = simulate_history(n_deals=400, seed=6)
    ids = history.deals["deal_id"].astype(str).tolist()
    store = Store(f"sqlite:///{tmp_path / 'new.db'}")
    store.create_schema()
    store.import_history(history.subset(ids[:200]))
    reads: list[str | None] = []  # the pipeline of each read of deal states (None: every deal)
    read_states = store.deal_states

    def counted(*args: Any, **kwargs: Any) -> Any:
        reads.append(kwargs.get("pipeline"))
        return read_states(*args, **kwargs)

    store.deal_states = counted  # type: ignore[method-assign]
    published = tmp_path / "population" / "population.zip"
    population = PopulationCache.following(store, published, interval_s=60.0)
    new_deals = NewDealCache(store)
    new_deals.follow(population)
    population.get()  # nothing published yet: the service's own first fit, and its own new-deal models
    assert reads == [None] and population.new_deal_models is None

    store.import_history(history.subset(ids[200:]))  # the scorer process refits after these writes
    fitted_at = pd.Timestamp("2025-06-01", tz="UTC")  # within the simulated deals' creation, to check rates
    publish_population(store, published, now=fitted_at.to_pydatetime())  # what its fitting process does
    reads.clear()
    assert population.refresh() is True and population.published_reads == 1
    assert reads == []  # the models came with the population: no deal state read here
    every = store.deal_states().rename(columns={"outcome": "status", "current_amount": "amount"})
    assert every["pipeline"].nunique() > 1 and len(every) == 400
    for pipeline, part in every.groupby("pipeline"):
        got, as_of = new_deals.get(str(pipeline))
        assert as_of == fitted_at.to_pydatetime()
        expected = new_deals_from_states(part, fitted_at)
        assert got.rate_per_day == expected.rate_per_day > 0
        assert np.array_equal(got.won_amounts, expected.won_amounts) and len(got.won_amounts) > 0
        assert np.array_equal(got.won_by_age, expected.won_by_age) and got.won_by_age[-1] > 0
        assert got.bin_days == expected.bin_days
    assert reads == [None]  # the check's own read above

    reads.clear()
    new_deals.get("a pipeline created since")  # not published: fitted on its first read
    assert reads == ["a pipeline created since"]

    reads.clear()
    whole = FeatureBuilder().fit(history).population_stats_
    assert whole is not None
    save_population_stats(whole, published)  # a population published without new-deal models
    assert population.refresh() is True and population.new_deal_models is None
    assert reads == [None]  # so the service fits them itself
    store.close()
