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
    cache = PopulationCache(lambda: "population")
    assert cache.get() == "population"
