"""The first health read after a win in a fresh service reads only the new won deal's stage changes: the
service learns every pipeline's won deals' visits in the background from its start
(`Store.keep_won_visits`), and a read that comes before that finished learns them itself, not waiting.

A small history dated back from today. Pipeline A (no configured limit for Lead): w1 won after 10 days in
Lead, w2 after 20 days; o1 open in Lead for 35 days, o2 for 40 days. Lead's learned limit is the 80th
percentile of the won deals' Lead visits: of [10, 20] it is 18 days (10 + 0.8 * 10), so o1 and o2 are
stalled. When o2 is won today, its 40-day visit counts: of [10, 20, 40] it is 32 days (20 + 0.6 * 20),
and o1 (35 days) is still stalled, against 32. Pipeline B: b1 won after 5 days in Lead, b2 open in Lead
for 9 days, stalled against 5.

The service runs no learned-limits refresh here (`live_score_max_age_s=0`): no stored limits, so every
health read learns them in its read, from the visits kept and the stage changes of the won deals not
kept yet (what each read asked `Store._learning_changes` for is recorded).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

import serving.app
from features.history import DealHistory
from serving.store import Store
from tests.serving.stand_in import admin_calls

TODAY = pd.Timestamp.now(tz="UTC").floor("D")


def days_ago(n: float) -> str:
    return (TODAY - pd.Timedelta(days=n)).isoformat()


def make_history() -> DealHistory:
    created = {"w1": 100, "w2": 80, "o1": 35, "o2": 40, "b1": 30, "b2": 9}
    deals = pd.DataFrame(
        {
            "deal_id": list(created),
            "pipeline": ["A", "A", "A", "A", "B", "B"],
            "owner": "ann",
            "amount": "1000",
            "created_at": [days_ago(n) for n in created.values()],
        }
    )
    stage_changes = pd.DataFrame(
        [("w1", "Lead", days_ago(100)), ("w1", "Won", days_ago(90)),
         ("w2", "Lead", days_ago(80)), ("w2", "Won", days_ago(60)),
         ("o1", "Lead", days_ago(35)), ("o2", "Lead", days_ago(40)),
         ("b1", "Lead", days_ago(30)), ("b1", "Won", days_ago(25)), ("b2", "Lead", days_ago(9))],
        columns=["deal_id", "stage", "changed_at"],
    )
    spec = {"stages": ["Lead", "Demo"], "won": ["Won"], "lost": ["Lost"]}
    activities = pd.DataFrame(columns=["deal_id", "type", "occurred_at"])
    return DealHistory.from_frames(deals, stage_changes, activities, None, {"A": spec, "B": spec},
                                   source="test")


class NoModel:
    """Health reads no model; the stand-in service wants one."""


class Watch:
    """What the service's reads and its warm-up do to the store, recorded from the threads doing it."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        # (pipeline, the deals whose stage changes were read) per health read's learning, in order
        self.read: list[tuple[str, list[str]]] = []
        self.warmed: list[list[str]] = []  # the pipelines each warm-up round learned
        self.hold_warm_up = threading.Event()
        self.hold_warm_up.set()  # not held unless a test clears it
        learning, keep = Store._learning_changes, Store.keep_won_visits

        def learning_changes(store: Store, conn: Any, pipeline: str, *args: Any) -> pd.DataFrame:
            changes = learning(store, conn, pipeline, *args)
            if threading.current_thread().name != "won-visits":  # a request's read, not the warm-up
                self.read.append((pipeline, sorted(set(changes["deal_id"]))))
            return changes

        def keep_won_visits(store: Store, *args: Any) -> list[str]:
            assert self.hold_warm_up.wait(timeout=60)
            learned = keep(store, *args)
            # A round that ran before the deals' state was computed learns nothing and the loop tries
            # again: only the rounds that learned are recorded.
            if learned:
                self.warmed.append(learned)
            return learned

        monkeypatch.setattr(Store, "_learning_changes", learning_changes)
        monkeypatch.setattr(Store, "keep_won_visits", keep_won_visits)
        monkeypatch.setattr(serving.app, "WON_VISITS_INTERVAL_S", 0.2)  # its rounds follow quickly

    def learned(self, count: int) -> list[str]:
        """The pipelines the warm-up learned, in order, once it has learned `count` (over one round or
        more: a pipeline whose deals' state is not computed yet is learned in a later round)."""
        deadline = time.monotonic() + 60
        while sum(map(len, self.warmed)) < count and time.monotonic() < deadline:
            time.sleep(0.05)
        return [name for names in self.warmed for name in names]


@pytest.fixture
def service(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[..., Any]:
    @contextmanager
    def start(watch: Watch) -> Iterator[Callable[..., Any]]:
        try:
            with admin_calls(tmp_path, make_history(), NoModel(), live_score_max_age_s=0) as call:
                yield call
        finally:
            watch.hold_warm_up.set()  # a held warm-up never holds the service's stop

    return start


def limits(call: Callable[..., Any], pipeline: str) -> dict[str, float]:
    """Health as of now: each stalled deal's limit, by deal."""
    body = call("GET", f"/v1/pipelines/{pipeline}/health")
    return {d["deal_id"]: d["threshold_days"] for d in body["overall"]["stalled_deals"]}


def win_o2(call: Callable[..., Any]) -> None:
    call("POST", "/v1/events", json={"stage_changes": [{"deal_id": "o2", "stage": "Won",
                                                        "changed_at": days_ago(0)}]})


def test_after_the_warm_up_the_read_after_a_win_reads_only_the_new_won_deal(
    service: Callable[..., Any], monkeypatch: pytest.MonkeyPatch,
) -> None:
    watch = Watch(monkeypatch)
    with service(watch) as call:
        assert watch.learned(2) == ["A", "B"]  # every pipeline, each once
        assert limits(call, "A") == {"o2": 18.0, "o1": 18.0}
        assert limits(call, "B") == {"b2": 5.0}
        assert watch.read == [("A", []), ("B", [])]  # no won deal's stage changes read: learned at start
        win_o2(call)
        assert limits(call, "A") == {"o1": 32.0}
        assert watch.read[-1] == ("A", ["o2"])  # the new won deal's alone


def test_a_read_before_the_warm_up_finished_learns_the_limits_itself(
    service: Callable[..., Any], monkeypatch: pytest.MonkeyPatch,
) -> None:
    watch = Watch(monkeypatch)
    watch.hold_warm_up.clear()
    with service(watch) as call:
        # the warm-up is held: the read does not wait for it, and reads every won deal of A
        assert limits(call, "A") == {"o2": 18.0, "o1": 18.0}
        assert watch.read == [("A", ["w1", "w2"])] and watch.warmed == []
        watch.hold_warm_up.set()
        assert watch.learned(1) == ["B"]  # A's visits were learned by the read: kept, not learned again
        win_o2(call)
        assert limits(call, "A") == {"o1": 32.0}
        assert watch.read[-1] == ("A", ["o2"])
