"""Pipeline health as of now is reused while no write touched the pipeline (`serving.health_cache`).

A small history dated back from today: pipeline A has three open deals (a1 in Demo for 15 days, a2 and a3
in Lead), pipeline B one (b1). Each test starts its own service, reads a pipeline's health as of now,
writes and reads again: the answer moves with every write that changes a figure, and two reads with
nothing written in between are the same answer, computed once (same `until`, a1's same days in Demo).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from features.history import DealHistory
from serving.store import Store
from tests.serving.stand_in import admin_calls

TODAY = pd.Timestamp.now(tz="UTC").floor("D")


def days_ago(n: float) -> str:
    return (TODAY - pd.Timedelta(days=n)).isoformat()


def make_history() -> DealHistory:
    deals = pd.DataFrame(
        {
            "deal_id": ["a1", "a2", "a3", "b1"],
            "pipeline": ["A", "A", "A", "B"],
            "owner": ["ann", "bob", "ann", "dan"],
            "team": ["East", "West", "East", "North"],
            "amount": ["1000", "500", "2000", "700"],
            "created_at": [days_ago(20), days_ago(10), days_ago(8), days_ago(9)],
        }
    )
    stage_changes = pd.DataFrame(
        [("a1", "Lead", days_ago(20)), ("a1", "Demo", days_ago(15)),
         ("a2", "Lead", days_ago(10)), ("a3", "Lead", days_ago(8)), ("b1", "Lead", days_ago(9))],
        columns=["deal_id", "stage", "changed_at"],
    )
    pipelines: dict[str, dict[str, Any]] = {
        "A": {"stages": ["Lead", "Demo"], "won": ["Won"], "lost": ["Lost"], "stale_after_days": {"Demo": 10}},
        "B": {"stages": ["Lead", "Pitch"], "won": ["Won"], "lost": ["Lost"]},
    }
    activities = pd.DataFrame(columns=["deal_id", "type", "occurred_at"])
    return DealHistory.from_frames(deals, stage_changes, activities, None, pipelines, source="test")


class NoModel:
    """Health reads no model; the stand-in service wants one."""


@pytest.fixture
def service(tmp_path: Path) -> Callable[..., Any]:
    @contextmanager
    def start(**settings: Any) -> Iterator[Callable[..., Any]]:
        # No live scorer and no learned-limits refresher: nothing but the test writes to the store, so
        # each test sees only the invalidation it is about (the refresher would add recomputations).
        settings = {"live_score_max_age_s": 0, **settings}
        with admin_calls(tmp_path, make_history(), NoModel(), **settings) as call:
            yield call

    return start


def health(call: Callable[..., Any], pipeline: str = "A") -> dict[str, Any]:
    body: dict[str, Any] = call("GET", f"/v1/pipelines/{pipeline}/health")
    return body


def stalled(body: dict[str, Any]) -> list[str]:
    return [d["deal_id"] for d in body["overall"]["stalled_deals"]]


def test_a_stage_change_to_won_shows_on_the_next_read(service: Callable[..., Any]) -> None:
    with service() as call:
        before = health(call)
        assert before["overall"]["open_deals"] == 3 and before["overall"]["won_deals"] == 0
        call("POST", "/v1/events", json={"stage_changes": [
            {"deal_id": "a2", "stage": "Won", "changed_at": days_ago(1)}]})
        after = health(call)
        assert after["overall"]["open_deals"] == 2 and after["overall"]["won_deals"] == 1
        assert after["until"] > before["until"]


def test_a_deal_moved_to_another_pipeline_leaves_the_old_pipelines_figures(
    service: Callable[..., Any],
) -> None:
    with service() as call:
        assert health(call)["overall"]["open_deals"] == 3
        assert health(call, "B")["overall"]["open_deals"] == 1
        moved = {"deal_id": "a3", "pipeline": "B", "owner": "ann", "team": "East", "amount": 2000,
                 "created_at": days_ago(8)}
        assert call("POST", "/v1/deals", json={"deals": [moved]})["updated"] == 1
        assert health(call)["overall"]["open_deals"] == 2
        assert health(call, "B")["overall"]["open_deals"] == 2


def test_a_spec_change_shows_in_the_stalled_list(service: Callable[..., Any]) -> None:
    with service() as call:
        assert stalled(health(call)) == ["a1"]  # in Demo for 15 days, its limit 10
        spec = {"stages": ["Lead", "Demo"], "won": ["Won"], "lost": ["Lost"],
                "stale_after_days": {"Demo": 30}}
        call("PUT", "/v1/pipelines/A", json=spec)
        assert stalled(health(call)) == []


def test_two_reads_with_no_write_between_are_one_answer(service: Callable[..., Any]) -> None:
    with service() as call:
        first, second = health(call), health(call)
        assert second == first  # the same answer, as of the same time (a1's days in Demo included)
        by_team = call("GET", "/v1/pipelines/A/health", params={"by": "team"})
        assert by_team["until"] != first["until"] and "by_team" in by_team  # another request
        assert health(call, "B")["pipeline"] == "B"  # never another pipeline's answer
        # a write to another pipeline leaves A's answer as it was
        call("POST", "/v1/events", json={"activities": [
            {"deal_id": "b1", "type": "call", "occurred_at": days_ago(1)}]})
        assert health(call) == first


def test_reuse_turned_off_computes_every_read(service: Callable[..., Any]) -> None:
    with service(health_max_age_s=0) as call:
        first, second = health(call), health(call)
        assert second["until"] > first["until"]
        assert second["overall"]["open_deals"] == first["overall"]["open_deals"] == 3
        # computed again: a1's days in Demo count up to the later `until`
        assert second["overall"]["stalled_deals"][0]["days_in_stage"] > first["overall"]["stalled_deals"][0][
            "days_in_stage"]


def test_a_window_given_in_the_past_is_computed_every_read(service: Callable[..., Any]) -> None:
    with service() as call:
        window = {"since": days_ago(30), "until": days_ago(2)}
        first = call("GET", "/v1/pipelines/A/health", params=window)
        assert first["overall"]["open_deals"] == 3
        call("POST", "/v1/events", json={"stage_changes": [
            {"deal_id": "a2", "stage": "Won", "changed_at": days_ago(3)}]})
        again = call("GET", "/v1/pipelines/A/health", params=window)
        assert again["overall"]["open_deals"] == 2 and again["until"] == first["until"]



def test_learned_limits_stored_by_another_process_show_on_the_next_read(
    service: Callable[..., Any], tmp_path: Path,
) -> None:
    # the limits come from outside the service, as the scorer process stores them
    with service() as call:
        assert stalled(health(call, "B")) == []  # B configures no limit and has no won deal to learn from
        other = Store(f"sqlite:///{tmp_path / 'dealrisk.db'}")
        other.save_learned_limits("B", {"Lead": 5.0}, pd.Timestamp.now(tz="UTC").to_pydatetime())
        other.close()
        assert stalled(health(call, "B")) == ["b1"]  # in Lead for 9 days, the stored limit 5


def _in_thread(work: Callable[[], Any]) -> tuple[Any, list[Any]]:
    import threading

    out: list[Any] = []
    thread = threading.Thread(target=lambda: out.append(work()), daemon=True)
    thread.start()
    return thread, out


def test_reads_of_the_same_answer_at_once_compute_it_once() -> None:
    """While one read computes the answer of a request under a stamp, another read of it under the same
    stamp waits for that answer instead of computing it again; under another stamp it computes its own."""
    import threading

    from serving.health_cache import HealthCache

    cache = HealthCache(max_age_s=30)
    first_started, release, second_computed = threading.Event(), threading.Event(), threading.Event()

    def first_compute() -> bytes:
        first_started.set()
        release.wait(timeout=30)
        return b'{"n": 1}'

    def second_compute() -> bytes:
        second_computed.set()
        return b'{"n": 2}'

    first, first_out = _in_thread(lambda: cache.answer("A", ("s1",), time.monotonic(), first_compute))
    assert first_started.wait(timeout=30)
    second, second_out = _in_thread(lambda: cache.answer("A", ("s1",), time.monotonic(), second_compute))
    computed_meanwhile = second_computed.wait(timeout=0.5)  # it would have by now, not waiting
    # another stamp (a write since) is not the answer being computed: computed at once
    assert cache.answer("A", ("s2",), time.monotonic(), lambda: b'{"n": 3}') == b'{"n": 3}'
    release.set()
    first.join(timeout=30)
    second.join(timeout=30)
    assert not computed_meanwhile and not second_computed.is_set()
    assert first_out == second_out == [b'{"n": 1}']


def test_a_read_waiting_for_a_computation_that_fails_computes_the_answer_itself() -> None:
    import threading

    from serving.health_cache import HealthCache

    cache = HealthCache(max_age_s=30)
    first_started, release = threading.Event(), threading.Event()

    def failing() -> bytes:
        first_started.set()
        release.wait(timeout=30)
        raise RuntimeError("store went away")

    failed: list[BaseException] = []

    def first_read() -> None:
        try:
            cache.answer("A", ("s1",), time.monotonic(), failing)
        except RuntimeError as exc:
            failed.append(exc)

    first, _ = _in_thread(first_read)
    assert first_started.wait(timeout=30)
    second, second_out = _in_thread(lambda: cache.answer("A", ("s1",), time.monotonic(), lambda: b'{"n": 2}'))
    release.set()
    first.join(timeout=30)
    second.join(timeout=30)
    assert len(failed) == 1 and second_out == [b'{"n": 2}']
    def not_again() -> bytes:
        raise AssertionError("the answer the second read computed was not kept")

    assert cache.answer("A", ("s1",), time.monotonic(), not_again) == b'{"n": 2}'
