"""Trusted reads of stored deals (`Store.load_history(deal_ids=..., trusted=True)`, what the live scorer and
the one-deal routes read) give exactly the `DealHistory` the validated read gives: same frames, dtypes,
column and row order (stage changes at one instant in `features.stages.order_stage_changes` order),
specs and attribute columns, on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa

from features.history import DealHistory, HistoryValidationError
from serving.store import Store
from training.simulate import PIPELINES, simulate_history

TABLES = ("deals", "stage_changes", "activities", "field_changes")
EMPTY_STAGES = pd.DataFrame(columns=["deal_id", "stage", "changed_at"])
EMPTY_ACTIVITIES = pd.DataFrame(columns=["deal_id", "type", "occurred_at"])


def assert_same_history(trusted: DealHistory, validated: DealHistory) -> None:
    for name in TABLES:
        pd.testing.assert_frame_equal(getattr(trusted, name), getattr(validated, name), check_exact=True,
                                      obj=name)
    assert trusted.pipelines == validated.pipelines
    assert {n: s.inferred for n, s in trusted.pipelines.items()} == {
        n: s.inferred for n, s in validated.pipelines.items()
    }
    assert trusted.attribute_columns == validated.attribute_columns


def assert_reads_agree(store: Store, deal_ids: list[str], **kwargs: Any) -> DealHistory:
    trusted = store.load_history(deal_ids=deal_ids, trusted=True, **kwargs)
    assert_same_history(trusted, store.load_history(deal_ids=deal_ids, **kwargs))
    return trusted


def test_every_deal_of_the_world_store_reads_the_same_trusted(world: Any) -> None:
    store = Store(world.settings.database_url)
    try:
        ids = sorted(str(d) for d in world.history.deals["deal_id"])
        for deal_id in ids:
            assert_reads_agree(store, [deal_id])
        assert_reads_agree(store, ids)  # one read of every deal: the long columns' vectorised rules
    finally:
        store.close()


def _events(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """Event rows as the typed frame `Store.add_events` takes (text as the writer sent it)."""
    frame = pd.DataFrame(rows)
    for column in frame.columns:
        if column in ("changed_at", "occurred_at"):
            frame[column] = pd.to_datetime(frame[column], utc=True)
        else:
            frame[column] = frame[column].astype("string")
    return frame


def _first_deal(history: DealHistory, pipeline: str) -> tuple[str, pd.Timestamp]:
    deals = history.deals[history.deals["pipeline"] == pipeline].sort_values("deal_id")
    return str(deals["deal_id"].iloc[0]), deals["created_at"].iloc[0]


def rich_store(store: Store) -> dict[str, str]:
    """A simulated store with custom attributes (numbers, codes with leading zeros, text), a given spec
    (Enterprise) and inferred ones, full-precision amounts, then written to like a CRM does: backfilled
    events, stage changes at one instant arriving out of the documented order, text as sent (padding,
    capitals, empty strings, a close date not in canonical form). Returns the deals written to."""
    simulated = simulate_history(n_deals=45, seed=11)
    deals = simulated.deals.copy()
    rng = np.random.default_rng(5)
    deals["amount"] = rng.uniform(0, 2e6, len(deals))  # every bit of the double matters
    deals["seats"] = [None if i % 3 else float(i) + 0.25 for i in range(len(deals))]
    deals["zip"] = [f"0{i:04d}" if i % 2 else None for i in range(len(deals))]
    history = DealHistory.from_frames(
        deals, simulated.stage_changes, simulated.activities, simulated.field_changes,
        pipelines={"Enterprise": PIPELINES["Enterprise"]},
    )
    store.import_history(history)
    smb, smb_created = _first_deal(history, "SMB")
    mid, mid_created = _first_deal(history, "Mid-Market")
    ent, ent_created = _first_deal(history, "Enterprise")
    minute, day = pd.Timedelta(minutes=1), pd.Timedelta(days=1)
    stages = PIPELINES["Enterprise"].stages
    mid_stages = history.pipelines["Mid-Market"].stages
    store.add_events(
        stage_changes=_events([
            # backfilled: before every stored event of the deal
            {"deal_id": smb, "stage": history.pipelines["SMB"].stages[0], "changed_at": smb_created + minute,
             "event_id": "late-s"},
            # one instant, arriving in the reverse of the documented order (position, closing last,
            # event_id with missing last, then name)
            {"deal_id": ent, "stage": "Lost", "changed_at": ent_created + day, "event_id": None},
            {"deal_id": ent, "stage": stages[3], "changed_at": ent_created + day, "event_id": "z"},
            {"deal_id": ent, "stage": stages[2], "changed_at": ent_created + day, "event_id": None},
            {"deal_id": ent, "stage": stages[1], "changed_at": ent_created + day, "event_id": "y"},
            {"deal_id": mid, "stage": "Closed Won", "changed_at": mid_created + day, "event_id": "w"},
            {"deal_id": mid, "stage": "Brand New Stage", "changed_at": mid_created + day, "event_id": None},
            {"deal_id": mid, "stage": mid_stages[0], "changed_at": mid_created + day, "event_id": "b"},
            {"deal_id": mid, "stage": mid_stages[1], "changed_at": mid_created + day, "event_id": "a"},
        ]),
        activities=_events([
            {"deal_id": smb, "type": "Call", "direction": "Inbound ", "occurred_at": smb_created + minute,
             "event_id": " late-a "},
            {"deal_id": smb, "type": "email", "direction": "", "occurred_at": smb_created + minute,
             "event_id": "late-b"},
        ]),
        field_changes=_events([
            {"deal_id": mid, "field": "expected_close_date", "value": "2031-01-15",
             "changed_at": mid_created + 2 * day, "event_id": "fc1"},
            {"deal_id": mid, "field": "Amount", "value": " 12500 ", "changed_at": mid_created + 2 * day,
             "event_id": "fc2"},
            {"deal_id": mid, "field": "owner", "value": "  zoe  ", "changed_at": mid_created + 3 * day,
             "event_id": "fc3"},
            {"deal_id": ent, "field": "expected_close_date", "value": "", "changed_at": ent_created + day,
             "event_id": "fc4"},
            {"deal_id": ent, "field": "expected_close_date", "value": "2030-02-01T10:00:00.120+02:00",
             "changed_at": ent_created + 2 * day, "event_id": "fc5"},
        ]),
    )
    # a deal written as an API client may send it: empty team, padded account, an odd amount
    new = DealHistory.from_frames(
        pd.DataFrame({"deal_id": ["NEW-1"], "pipeline": ["SMB"], "owner": ["ana"], "amount": [0.1 + 0.2],
                      "created_at": ["2024-02-01"], "zip": ["02139"]}),
        EMPTY_STAGES, EMPTY_ACTIVITIES,
    ).deals
    new = new.assign(team=pd.array([""], dtype="string"), account=pd.array(["  Acme  "], dtype="string"))
    store.upsert_deals(new)
    return {"smb": smb, "mid": mid, "ent": ent, "new": "NEW-1"}


def test_trusted_reads_equal_validated_reads(store: Store) -> None:
    written = rich_store(store)
    ids = sorted(str(d) for d in store.deal_states()["deal_id"])
    for deal_id in ids:
        assert_reads_agree(store, [deal_id])
    every = assert_reads_agree(store, ids)
    assert {"seats", "zip", "source", "industry"} <= set(every.attribute_columns)
    assert {n: s.inferred for n, s in every.pipelines.items()} == {
        "Enterprise": False, "Mid-Market": True, "SMB": True
    }
    assert_reads_agree(store, list(written.values()))
    assert_reads_agree(store, ids, pipelines=["SMB"])
    assert_reads_agree(store, [written["mid"], written["ent"]], tables=("stage_changes", "field_changes"))
    assert_reads_agree(store, ["no-such-deal"])
    # what the written text reads back as, on both paths
    new = every.deals.set_index("deal_id").loc["NEW-1"]
    assert pd.isna(new["team"]) and new["account"] == "Acme" and new["amount"] == 0.1 + 0.2
    assert new["zip"] == "02139"
    acts = every.activities
    smb = acts[(acts["deal_id"] == written["smb"]) & acts["event_id"].isin(["late-a", "late-b"])]
    assert smb["type"].tolist() == ["call", "email"] and smb["event_id"].tolist() == ["late-a", "late-b"]
    assert smb["direction"].tolist()[0] == "inbound" and pd.isna(smb["direction"].tolist()[1])
    fields = every.field_changes[every.field_changes["deal_id"].isin([written["mid"], written["ent"]])]
    fields = fields.set_index("event_id")
    assert fields.loc["fc1", "value"] == "2031-01-15T00:00:00+00:00" and pd.isna(fields.loc["fc4", "value"])
    assert fields.loc["fc5", "value"] == "2030-02-01T08:00:00.12+00:00"
    assert fields.loc["fc2", "field"] == "amount" and fields.loc["fc3", "value"] == "zoe"


def test_trusted_reads_keep_the_documented_order_of_stage_changes_at_one_instant(store: Store) -> None:
    written = rich_store(store)
    history = store.load_history(deal_ids=[written["ent"], written["mid"]], trusted=True)
    changes = history.stage_changes
    stages = PIPELINES["Enterprise"].stages
    created = history.deals.set_index("deal_id")["created_at"]
    ent = changes[(changes["deal_id"] == written["ent"])
                  & (changes["changed_at"] == created[written["ent"]] + pd.Timedelta(days=1))]
    assert ent["stage"].tolist() == [stages[1], stages[2], stages[3], "Lost"]
    mid = changes[(changes["deal_id"] == written["mid"])
                  & (changes["changed_at"] == created[written["mid"]] + pd.Timedelta(days=1))]
    mid_stages = history.pipelines["Mid-Market"].stages
    assert mid["stage"].tolist() == [mid_stages[0], mid_stages[1], "Brand New Stage", "Closed Won"]
    assert mid_stages[-1] == "Brand New Stage"  # the inferred spec grew in order of first appearance


def test_a_deal_no_write_has_validated_is_validated_on_a_trusted_read(store: Store) -> None:
    """A store just upgraded holds rows no write of this release checked (their state not computed
    yet): a trusted read of them validates, and refuses what the validated read refuses."""
    store.import_history(DealHistory.from_frames(
        pd.DataFrame({"deal_id": ["U1"], "pipeline": ["Core"], "owner": ["ana"], "amount": ["100"],
                      "created_at": ["2025-01-10"]}),
        EMPTY_STAGES,
        pd.DataFrame({"deal_id": ["U1"], "type": ["call"], "occurred_at": ["2025-01-11"]}),
    ))
    deals, activities = store.table("deals"), store.table("activities")
    with store.engine.begin() as conn:
        conn.execute(sa.update(activities).values(occurred_at=datetime(2025, 1, 1)))  # before creation
        conn.execute(sa.update(deals).values(state_updated_at=None))
    with pytest.raises(HistoryValidationError, match="before the deal was created"):
        store.load_history(deal_ids=["U1"])
    with pytest.raises(HistoryValidationError, match="before the deal was created"):
        store.load_history(deal_ids=["U1"], trusted=True)
