"""A deal's stored state after small writes equals `current_deal_states` of its whole history.

Writes that only add events to a deal take the incremental state (`features.deal_state.appended_state`)
when their events qualify, deals written without events `created_state`, and the full recompute
otherwise. Hundreds of random writes over hundreds of deals (mixed event kinds, times after the deal's
last event, backfilled and at the same instant, duplicates, new and changed deals, a given and an
inferred pipeline) must leave every deal's state columns exactly as the definition computes them from
the stored history, on SQLite and PostgreSQL.
"""

from __future__ import annotations

import random
from typing import Any

import pandas as pd
import pytest

import serving.store as store_module
from features.deal_state import STATE_FIELDS, current_deal_states
from features.history import DealHistory, PipelineSpec
from serving.store import Store

N_DEALS = 200
N_WRITES = 400
START = pd.Timestamp("2025-01-01", tz="UTC")
GIVEN = PipelineSpec("Given", ("Lead", "Qualified", "Proposal"), ("Closed Won",), ("Closed Lost",))
GIVEN_STAGES = ["Lead", "Qualified", "Proposal", "Closed Won", "Closed Lost"]
INFERRED_STAGES = ["Intro", "Demo", "Trial", "Deal Won", "Deal Lost", "Paused"]


def _deal_row(rng: random.Random, i: int) -> dict[str, Any]:
    return {
        "deal_id": f"S{i:03d}",
        "pipeline": "Given" if i % 2 else "Inferred",
        "owner": rng.choice(["ana", "bo", "cy"]),
        "amount": str(rng.choice([0, 500, 12500.5, 90000])),
        "created_at": (START + pd.Timedelta(hours=rng.randint(0, 24 * 60))).isoformat(),
        "expected_close_date": rng.choice([None, "2025-09-01"]),
        "team": rng.choice([None, "north"]),
    }


def _deals(rows: list[dict[str, Any]]) -> pd.DataFrame:
    empty = pd.DataFrame(columns=["deal_id", "stage", "changed_at"])
    none = pd.DataFrame(columns=["deal_id", "type", "occurred_at"])
    return DealHistory.from_frames(pd.DataFrame(rows), empty, none).deals


def _frame(rows: list[dict[str, Any]], columns: tuple[str, ...], time_col: str) -> pd.DataFrame | None:
    if not rows:
        return None
    frame = pd.DataFrame({c: pd.Series([r.get(c) for r in rows], dtype="string") for c in columns})
    frame[time_col] = pd.to_datetime(pd.Series([r[time_col] for r in rows]), utc=True)
    return frame


class _World:
    """The test's own record of each deal's creation and latest event time, to pick event times."""

    def __init__(self, rng: random.Random, rows: list[dict[str, Any]]) -> None:
        self.rng = rng
        self.rows = {r["deal_id"]: r for r in rows}
        self.created = {r["deal_id"]: pd.Timestamp(r["created_at"]) for r in rows}
        self.pipeline = {r["deal_id"]: r["pipeline"] for r in rows}
        self.last = dict(self.created)
        self.sent: list[tuple[str, dict[str, Any]]] = []  # (table, row) with an event_id, to re-send
        self.n = 0

    def when(self, deal_id: str) -> pd.Timestamp:
        """After the deal's latest event (mostly), at the same instant, or backfilled."""
        roll = self.rng.random()
        if roll < 0.65:
            t = self.last[deal_id] + pd.Timedelta(minutes=self.rng.randint(1, 60 * 24 * 5))
        elif roll < 0.8:
            t = self.last[deal_id]
        else:
            span = (self.last[deal_id] - self.created[deal_id]).total_seconds()
            t = self.created[deal_id] + pd.Timedelta(seconds=int(self.rng.uniform(0, span)))
        self.last[deal_id] = max(self.last[deal_id], t)
        return t

    def event_id(self) -> str | None:
        self.n += 1
        return None if self.rng.random() < 0.2 else f"ev{self.n}"

    def deal_write(self) -> pd.DataFrame:
        """A new deal, or a stored one changed (owner, amount, team, close date, or created earlier)."""
        if self.rng.random() < 0.4:
            row = _deal_row(self.rng, len(self.rows))
            self.created[row["deal_id"]] = self.last[row["deal_id"]] = pd.Timestamp(row["created_at"])
            self.pipeline[row["deal_id"]] = row["pipeline"]
        else:
            row = dict(self.rows[self.rng.choice(sorted(self.rows))])
            change = self.rng.choice(["owner", "amount", "team", "expected_close_date", "created_at"])
            if change == "created_at":
                earlier = self.created[row["deal_id"]] - pd.Timedelta(hours=self.rng.randint(1, 48))
                row["created_at"] = earlier.isoformat()
                self.created[row["deal_id"]] = earlier
            else:
                row[change] = _deal_row(self.rng, 0)[change]
        self.rows[row["deal_id"]] = row
        return _deals([row])

    def write(self) -> dict[str, list[dict[str, Any]]]:
        rows: dict[str, list[dict[str, Any]]] = {"stage_changes": [], "activities": [], "field_changes": []}
        if self.sent and self.rng.random() < 0.05:  # a duplicate: the same event again
            table, again = self.rng.choice(self.sent)
            rows[table].append(again)
            return rows
        for deal_id in self.rng.sample(sorted(self.created), self.rng.choice([1, 1, 1, 2, 3])):
            for _ in range(self.rng.randint(1, 4)):
                kind = self.rng.choices(["stage_changes", "activities", "field_changes"], [3, 5, 3])[0]
                row: dict[str, Any] = {"deal_id": deal_id, "event_id": self.event_id()}
                if kind == "activities":
                    row.update(type=self.rng.choice(["call", "email", "meeting"]),
                               direction=self.rng.choice([None, "inbound", "outbound"]),
                               occurred_at=self.when(deal_id))
                elif kind == "stage_changes":
                    stages = GIVEN_STAGES if self.pipeline[deal_id] == "Given" else INFERRED_STAGES
                    row.update(stage=self.rng.choice(stages), changed_at=self.when(deal_id))
                else:
                    field = self.rng.choice(["owner", "amount", "expected_close_date"])
                    close = START + pd.Timedelta(days=self.rng.randint(30, 400))
                    value = {
                        "owner": self.rng.choice(["ana", "bo", "dee"]),
                        "amount": str(self.rng.choice([0, 100, 2500.25, 1e6])),
                        "expected_close_date": close.isoformat(),
                    }[field]
                    row.update(field=field, value=value, changed_at=self.when(deal_id))
                rows[kind].append(row)
                if row["event_id"] is not None:
                    self.sent.append((kind, row))
        return rows


def _assert_states_match(store: Store, n_deals: int) -> None:
    stored = store.deal_states().set_index("deal_id")[list(STATE_FIELDS)]
    expected = current_deal_states(store.load_history())
    assert len(stored) == len(expected) == n_deals
    for deal_id, want in expected.iterrows():
        got = stored.loc[str(deal_id)]
        for field in STATE_FIELDS:
            a, b = got[field], want[field]
            same = bool(pd.isna(a) and pd.isna(b)) if pd.isna(a) or pd.isna(b) else bool(a == b)
            assert same, f"deal {deal_id} {field}: stored {a!r}, whole history gives {b!r}"


@pytest.mark.slow
def test_random_small_writes_keep_every_state_equal_to_the_whole_history(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    rng = random.Random(20261201)
    store.set_pipeline_spec(GIVEN)
    rows = [_deal_row(rng, i) for i in range(N_DEALS)]
    store.upsert_deals(_deals(rows))
    taken = {"incremental": 0, "recomputed": 0}
    real = store_module.appended_state

    def counted(*args: Any, **kwargs: Any) -> Any:
        out = real(*args, **kwargs)
        taken["incremental" if out is not None else "recomputed"] += 1
        return out

    monkeypatch.setattr(store_module, "appended_state", counted)
    world = _World(rng, rows)
    _assert_states_match(store, len(world.rows))  # deals as created: their state without events
    for i in range(N_WRITES):
        if rng.random() < 0.1:
            store.upsert_deals(world.deal_write())
            continue
        events = world.write()
        store.add_events(
            _frame(events["stage_changes"], ("deal_id", "stage", "event_id"), "changed_at"),
            _frame(events["activities"], ("deal_id", "type", "direction", "event_id"), "occurred_at"),
            _frame(events["field_changes"], ("deal_id", "field", "value", "event_id"), "changed_at"),
        )
        if i % 100 == 99:
            _assert_states_match(store, len(world.rows))
    # both paths were exercised, the incremental one for most writes
    assert taken["incremental"] > 2 * taken["recomputed"] > 0, taken
