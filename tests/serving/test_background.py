"""`serving.background.BackgroundLoop`, the one loop of the service's background threads (live scores,
population refit, stage limits, alias check, monitor state): a notice runs a round without waiting for
the interval, a failed round is logged and the next wake runs another, `stop` joins the thread, and a
stopped loop starts again. Waits are bounded (never timing assertions): the intervals are an hour, so
only a notice or the first round at start can have run what the test sees."""

from __future__ import annotations

import logging
import threading

import pytest

from serving.background import BackgroundLoop

HOUR = 3600.0
BOUND_S = 30.0  # a bound for a loaded machine, not a timing assertion


def _alive(name: str) -> bool:
    return any(t.name == name and t.is_alive() for t in threading.enumerate())


def test_a_failed_round_is_logged_and_the_next_notice_runs_another(caplog: pytest.LogCaptureFixture) -> None:
    rounds: list[int] = []
    failed, succeeded = threading.Event(), threading.Event()

    def round_() -> None:
        rounds.append(len(rounds) + 1)
        if len(rounds) == 1:
            failed.set()
            raise RuntimeError("the store is unreachable")
        succeeded.set()

    loop = BackgroundLoop("test-retry", HOUR, round_)
    with caplog.at_level(logging.ERROR, logger="serving.background"):
        loop.start()
        try:
            assert _alive("test-retry")
            loop.notify()
            assert failed.wait(BOUND_S), "a notice did not run a round"
            loop.notify()
            assert succeeded.wait(BOUND_S), "the loop did not survive a failed round"
        finally:
            loop.stop()
    assert rounds == [1, 2]
    assert not _alive("test-retry")  # stop joined the thread
    assert any("test-retry" in r.getMessage() and r.exc_info for r in caplog.records)


def test_first_round_at_start_and_a_stopped_loop_starts_again() -> None:
    ran = threading.Semaphore(0)
    loop = BackgroundLoop("test-restart", HOUR, ran.release, first_round_at_start=True)
    loop.start()
    assert ran.acquire(timeout=BOUND_S), "no round at start"
    loop.stop()
    assert not _alive("test-restart")
    loop.start()  # again: the first round runs again, and the thread waits for the next notice
    try:
        assert ran.acquire(timeout=BOUND_S), "a restarted loop did not run"
        loop.notify()
        assert ran.acquire(timeout=BOUND_S), "a restarted loop did not answer a notice"
    finally:
        loop.stop()
    assert not _alive("test-restart")
