"""Tiny inputs (the service's inline scoring path): empty histories, and results identical to batch."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from features.build import FeatureBuilder
from features.history import DealHistory
from features.timeindex import AsofIndex
from training.simulate import simulate_history

UTC_NS = "datetime64[ns, UTC]"


@pytest.fixture(scope="module")
def store() -> DealHistory:
    return simulate_history(n_deals=300, seed=11)


def test_empty_history_validates_to_empty_typed_frames() -> None:
    history = DealHistory.from_frames(
        pd.DataFrame(columns=["deal_id", "pipeline", "owner", "amount", "created_at"]),
        pd.DataFrame(columns=["deal_id", "stage", "changed_at"]),
        pd.DataFrame(columns=["deal_id", "type", "occurred_at"]),
        pd.DataFrame(columns=["deal_id", "field", "value", "changed_at"]),
    )
    assert len(history.deals) == 0 and history.pipelines == {}
    assert str(history.deals["created_at"].dtype) == UTC_NS
    assert str(history.deals["amount"].dtype) == "float64"
    for frame, column in (
        (history.stage_changes, "changed_at"),
        (history.activities, "occurred_at"),
        (history.field_changes, "changed_at"),
    ):
        assert len(frame) == 0
        assert str(frame[column].dtype) == UTC_NS
        assert str(frame["deal_id"].dtype) == "string"


def test_missing_tables_are_empty_histories() -> None:
    history = DealHistory.from_frames(None, None, None)  # type: ignore[arg-type]
    assert len(history.deals) == len(history.activities) == 0


def test_one_deal_with_store_population_matches_the_whole_store(store: DealHistory) -> None:
    """A deal scored alone against the store's population gets the numbers it gets in a batch."""
    builder = FeatureBuilder().fit(store)
    as_of = store.end_time - pd.Timedelta(days=30)
    ids = store.deals["deal_id"].iloc[[3, 50, 120]].tolist()
    times = pd.Series(pd.DatetimeIndex([as_of] * 3).as_unit("ns"))
    points = pd.DataFrame({"deal_id": pd.array(ids, dtype="string"), "as_of": times})
    whole = builder.transform(store, points)
    for i, deal_id in enumerate(ids):
        alone = builder.transform(store.subset([deal_id]), points.iloc[[i]])
        pd.testing.assert_frame_equal(alone, whole.iloc[[i]])


def test_raw_inline_frames_validate_like_text(store: DealHistory) -> None:
    """Frames with Python datetimes (as the API builds them) give the same history as ISO text."""
    sub = store.subset(store.deals["deal_id"].iloc[:2].tolist())
    as_text = {
        name: getattr(sub, name).astype(object).apply(
            lambda col: col.map(lambda v: None if v is None or v is pd.NA or v is pd.NaT else str(v))
        )
        for name in ("deals", "stage_changes", "activities", "field_changes")
    }
    tables = ("deals", "stage_changes", "activities", "field_changes")
    as_objects = {name: getattr(sub, name).astype(object) for name in tables}
    a = DealHistory.from_frames(**as_text, pipelines=store.pipelines)  # type: ignore[arg-type]
    b = DealHistory.from_frames(**as_objects, pipelines=store.pipelines)  # type: ignore[arg-type]
    for name in ("stage_changes", "activities", "field_changes"):
        pd.testing.assert_frame_equal(getattr(a, name), getattr(b, name))
        pd.testing.assert_frame_equal(getattr(a, name), getattr(sub, name))


def test_asof_index_matches_merge_asof() -> None:
    rng = np.random.default_rng(3)
    table = pd.DataFrame(
        {
            "owner": rng.choice(["ann", "bob", "cy"], 200),
            "at": np.sort(rng.integers(0, 1000, 200)),
            "x": rng.normal(size=200),
        }
    ).drop_duplicates(["owner", "at"], keep="last")
    keys = rng.choice(["ann", "bob", "cy", "zed"], 50).astype(object)
    times = rng.integers(-50, 1100, 50)
    got = AsofIndex(table, "owner", ["x"]).lookup(keys, times, ["x"])["x"]
    left = pd.DataFrame({"owner": keys, "at": times, "_row": np.arange(50)}).sort_values("at")
    merged = pd.merge_asof(left, table.sort_values("at"), on="at", by="owner").sort_values("_row")
    np.testing.assert_array_equal(got, merged["x"].to_numpy(dtype=np.float64))


def _iso_texts(n: int, seed: int) -> list[str]:
    """Close dates as clients write them, valid and not: date only, with time and fraction, naive, "Z",
    "+00:00" and other offsets, impossible dates (month 13, February 30th, hour 24) and junk."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        text = f"{rng.integers(1790, 2210):04d}-{rng.integers(0, 14):02d}-{rng.integers(0, 33):02d}"
        if rng.random() < 0.7:
            text += f"T{rng.integers(0, 25):02d}:{rng.integers(0, 61):02d}:{rng.integers(0, 61):02d}"
            if rng.random() < 0.3:
                text += "." + "123456789"[: int(rng.integers(1, 10))]
        text += str(rng.choice(["", "", "Z", "+00:00", "+02:00", "-00:00"]))
        out.append(text)
    return out + ["2025-11-12", "2025-11-12Z", "2025-11-12 00:00:00", "soon", "", "2025-1-12"]


def test_close_dates_read_as_pandas_reads_them() -> None:
    """The one-deal shortcut of close-date parsing gives pandas' instant (or NaT) for every text, alone
    and among others."""
    from features.timeindex import parse_iso_ns, to_ns

    texts = _iso_texts(4_000, seed=3)
    want = to_ns(pd.to_datetime(np.asarray(texts, dtype=object), utc=True, errors="coerce", format="ISO8601"))
    alone = np.concatenate([parse_iso_ns([t]) for t in texts])
    assert alone.tolist() == want.tolist()
    assert (want != np.iinfo(np.int64).min).sum() > 1_000  # most of them are times
    in_pairs = np.concatenate([parse_iso_ns(texts[i: i + 2]) for i in range(0, len(texts), 2)])
    assert in_pairs.tolist() == want.tolist()
    assert parse_iso_ns(["2025-11-12T10:30:00Z", None]).tolist() == [
        pd.Timestamp("2025-11-12T10:30:00Z").value, np.iinfo(np.int64).min]
