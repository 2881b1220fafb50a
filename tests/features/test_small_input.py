"""Tiny inputs (the service's inline scoring path): empty histories, and results identical to batch."""

from __future__ import annotations

from typing import Any

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


def test_a_few_close_dates_are_checked_as_a_long_column_checks_them() -> None:
    """A request's few close-date texts (`time_values` of up to SMALL_QUERY values, read by numpy when
    every present one is a plain ISO time) give the instants and the bad-value mask a long column's
    pandas parse gives, alone and in pairs with missing values: times outside 1900-2200 and impossible
    dates are bad, missing ones are not."""
    from features.timeindex import NAT_NS, SMALL_QUERY
    from features.validation.parsing import time_values

    edges = ["1899-12-31T23:59:59Z", "1900-01-01", "1900-01-01T00:00:00.000000001",
             "2199-12-31T23:59:59.999Z", "2200-01-01T00:00:00+00:00", "2200-01-01T00:00:00.000000001",
             "1850-06-01", "2024-02-30"]
    texts: list[Any] = _iso_texts(600, seed=5) + edges
    texts = [t if i % 7 else pd.NA for i, t in enumerate(texts)]  # missing values among them
    long = np.asarray(texts * (SMALL_QUERY // len(texts) + 2), dtype=object)  # pandas' way
    assert len(long) > SMALL_QUERY
    want_times, want_bad = time_values(long)
    want_times, want_bad = want_times[: len(texts)].tolist(), want_bad[: len(texts)].tolist()
    alone = [time_values(np.asarray([t], dtype=object)) for t in texts]
    assert [int(t[0]) for t, _ in alone] == want_times
    assert [bool(b[0]) for _, b in alone] == want_bad
    pairs = [time_values(np.asarray(texts[i: i + 2], dtype=object)) for i in range(0, len(texts), 2)]
    assert np.concatenate([t for t, _ in pairs]).tolist() == want_times
    assert np.concatenate([b for _, b in pairs]).tolist() == want_bad
    by_text = dict(zip(map(str, texts), want_bad, strict=True))
    assert by_text["2200-01-01T00:00:00+00:00"] is False and by_text["2200-01-01T00:00:00.000000001"] is True
    assert by_text["1900-01-01"] is False and by_text["1899-12-31T23:59:59Z"] is True
    assert by_text["2024-02-30"] is True and by_text["<NA>"] is False
    assert 200 < sum(t != NAT_NS for t in want_times) and sum(want_bad) > 50
