"""The population cache behind scoring: recomputed after writes, without making every reader wait."""

from __future__ import annotations

import threading
from typing import Any

from serving.model_holder import PopulationCache


def test_a_write_makes_the_next_read_recompute() -> None:
    loads: list[int] = []

    def load() -> Any:
        loads.append(len(loads))
        return f"population {len(loads)}"

    cache = PopulationCache(load)
    assert cache.get() == "population 1"
    assert cache.get() == "population 1"  # unchanged store: no second read of it
    cache.mark_dirty()
    assert cache.get() == "population 2"
    assert len(loads) == 2


def test_readers_keep_the_previous_population_while_one_recomputes() -> None:
    release = threading.Event()
    started = threading.Event()
    calls = [0]

    def load() -> Any:
        calls[0] += 1
        if calls[0] == 2:  # the recompute after the write blocks until released
            started.set()
            release.wait(timeout=30)
        return f"population {calls[0]}"

    cache = PopulationCache(load)
    assert cache.get() == "population 1"
    cache.mark_dirty()
    results: list[Any] = []
    recomputing = threading.Thread(target=lambda: results.append(cache.get()))
    recomputing.start()
    assert started.wait(timeout=30)

    other = threading.Thread(target=lambda: results.append(cache.get()))
    other.start()
    other.join(timeout=30)
    assert not other.is_alive(), "a second reader queued behind the recompute"
    assert results == ["population 1"]

    release.set()
    recomputing.join(timeout=30)
    assert results == ["population 1", "population 2"]
    assert cache.get() == "population 2"
    assert calls[0] == 2


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
