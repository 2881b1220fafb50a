"""The fast validation path for small clean inputs gives exactly the full path's history, or steps aside.

`validate_and_coerce` first tries `_fast_validate` (typed, already clean frames such as the service
builds from a request); anything doubtful goes through the full checks. These tests pin both halves:
on clean inputs the two paths return identical frames, and any bad input gets the full path's problems.
"""

from __future__ import annotations

import decimal
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
import pytest
from pandas.testing import assert_frame_equal

import features.validation as validation
from features.history import DealHistory, HistoryValidationError
from training.simulate import simulate_history

Frames = dict[str, pd.DataFrame | None]

EVENT_COLUMNS = {
    "stage_changes": ["deal_id", "stage", "changed_at", "event_id"],
    "activities": ["deal_id", "type", "occurred_at", "direction", "event_id"],
    "field_changes": ["deal_id", "field", "value", "changed_at", "event_id"],
}
TABLE_NAMES = ("deals", "stage_changes", "activities", "field_changes")


@pytest.fixture(scope="module")
def store() -> DealHistory:
    return simulate_history(n_deals=200, seed=5)


def _records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """Rows as the API hands them over: Python scalars and datetimes, None for missing values."""
    out = []
    for row in frame.astype(object).to_dict(orient="records"):
        clean: dict[str, Any] = {}
        for key, value in row.items():
            if value is None or (not isinstance(value, str) and pd.isna(value)):
                clean[str(key)] = None
            elif isinstance(value, pd.Timestamp):
                clean[str(key)] = value.to_pydatetime()
            else:
                clean[str(key)] = value
        out.append(clean)
    return out


def raw_frames(history: DealHistory, deal_ids: list[str]) -> Frames:
    """Raw frames of some deals, shaped like `serving.routes.scoring.inline_frames` builds them."""
    sub = history.subset(deal_ids)
    frames: Frames = {"deals": pd.DataFrame(_records(sub.deals), columns=list(sub.deals.columns))}
    for table, cols in EVENT_COLUMNS.items():
        frames[table] = pd.DataFrame(_records(getattr(sub, table)[cols]), columns=cols)
    return frames


def validate(store: DealHistory, frames: Frames, fast: bool, monkeypatch: pytest.MonkeyPatch) -> DealHistory:
    """Validate with the fast path allowed, or forced off (every input then takes the full path)."""
    with monkeypatch.context() as patch:
        if not fast:
            patch.setattr(validation, "FAST_PATH_MAX_ROWS", -1)
        return DealHistory.from_frames(
            frames["deals"],  # type: ignore[arg-type]
            frames["stage_changes"],  # type: ignore[arg-type]
            frames["activities"],  # type: ignore[arg-type]
            frames["field_changes"],
            pipelines=store.pipelines,
            source="test",
        )


def takes_fast_path(store: DealHistory, frames: Frames) -> bool:
    raw = {table: validation._as_frame(frames[table], table) for table in TABLE_NAMES}
    return validation._fast_validate(raw, store.pipelines) is not None


def assert_same_history(a: DealHistory, b: DealHistory) -> None:
    for table in TABLE_NAMES:
        assert_frame_equal(getattr(a, table), getattr(b, table), check_exact=True)
    assert a.pipelines == b.pipelines
    assert a.attribute_columns == b.attribute_columns


def _ids(store: DealHistory, start: int, n: int) -> list[str]:
    return [str(d) for d in store.deals["deal_id"].iloc[start : start + n]]


def _no_optional_columns(frames: Frames) -> Frames:
    drop = {"deals": ["team", "account", "expected_close_date", "currency"],
            "activities": ["direction", "event_id"], "stage_changes": ["event_id"],
            "field_changes": ["event_id"]}
    return {t: f.drop(columns=drop[t]) if f is not None else None for t, f in frames.items()}


def _nan_free(frames: Frames) -> Frames:
    deals = frames["deals"]
    assert deals is not None
    filled = deals.assign(
        team=deals["team"].fillna("Team A"),
        account=deals["account"].fillna("Acme"),
        currency=deals["currency"].fillna("EUR"),
        expected_close_date=deals["expected_close_date"].fillna(deals["created_at"]),
    )
    return {**frames, "deals": filled}


def _without_field_changes(frames: Frames) -> Frames:
    return {**frames, "field_changes": None}


def _empty_field_changes(frames: Frames) -> Frames:
    field_changes = frames["field_changes"]
    assert field_changes is not None
    return {**frames, "field_changes": field_changes.iloc[:0]}


VARIANTS: dict[str, Callable[[Frames], Frames]] = {
    "as_given": lambda f: f,
    "nan_free": _nan_free,
    "no_optional_columns": _no_optional_columns,
    "without_field_changes": _without_field_changes,
    "empty_field_changes": _empty_field_changes,
}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
@pytest.mark.parametrize(("start", "n_deals"), [(0, 1), (17, 1), (40, 3), (90, 10), (0, 60)])
def test_fast_path_gives_the_full_paths_history(
    store: DealHistory, monkeypatch: pytest.MonkeyPatch, variant: str, start: int, n_deals: int
) -> None:
    frames = VARIANTS[variant](raw_frames(store, _ids(store, start, n_deals)))
    assert takes_fast_path(store, frames)
    fast, full = validate(store, frames, True, monkeypatch), validate(store, frames, False, monkeypatch)
    assert_same_history(fast, full)


def test_subsets_with_field_changes_of_every_kind_take_the_fast_path(
    store: DealHistory, monkeypatch: pytest.MonkeyPatch
) -> None:
    fields = store.field_changes.groupby("deal_id", observed=True)["field"].nunique()
    ids = [str(d) for d in fields[fields == fields.max()].index[:5]]
    frames = raw_frames(store, ids)
    field_changes = frames["field_changes"]
    assert field_changes is not None
    assert set(field_changes["field"]) == {"amount", "owner", "expected_close_date"}
    assert takes_fast_path(store, frames)
    history = validate(store, frames, True, monkeypatch)
    assert_same_history(history, validate(store, frames, False, monkeypatch))
    assert len(history.field_changes) == len(field_changes)


def test_pipelines_without_a_spec_are_inferred_alike(
    store: DealHistory, monkeypatch: pytest.MonkeyPatch
) -> None:
    frames = raw_frames(store, _ids(store, 0, 20))
    without_specs = DealHistory.from_frames(
        frames["deals"], frames["stage_changes"], frames["activities"], frames["field_changes"]  # type: ignore[arg-type]
    )
    with monkeypatch.context() as patch:
        patch.setattr(validation, "FAST_PATH_MAX_ROWS", -1)
        full = DealHistory.from_frames(
            frames["deals"], frames["stage_changes"], frames["activities"], frames["field_changes"]  # type: ignore[arg-type]
        )
    assert_same_history(without_specs, full)


def _set(table: str, column: str, value: Any, row: int = 0) -> Callable[[Frames], Frames]:
    def change(frames: Frames) -> Frames:
        frame = frames[table]
        assert frame is not None
        values = frame[column].to_numpy(dtype=object).copy()
        values[row] = value
        frame = frame.assign(**{column: values})
        return {**frames, table: frame}

    return change


def _duplicate_event(frames: Frames) -> Frames:
    acts = frames["activities"]
    assert acts is not None
    event_ids = acts["event_id"].to_numpy(dtype=object).copy()
    event_ids[1] = event_ids[0]
    acts = acts.assign(event_id=event_ids)
    return {**frames, "activities": acts}


def _before_creation(frames: Frames) -> Frames:
    acts = frames["activities"]
    assert acts is not None
    acts = acts.copy()
    acts["occurred_at"] = acts["occurred_at"] - pd.Timedelta(days=4000)
    return {**frames, "activities": acts}


def _field_value(field: str, value: Any) -> Callable[[Frames], Frames]:
    """Set the value of the first field change of that field (the subset must have one)."""

    def change(frames: Frames) -> Frames:
        changes = frames["field_changes"]
        assert changes is not None
        rows = np.flatnonzero((changes["field"] == field).to_numpy(dtype=bool))
        assert rows.size, f"no {field} change in the subset"
        return _set("field_changes", "value", value, int(rows[0]))(frames)

    return change


def _missing_column(frames: Frames) -> Frames:
    stages = frames["stage_changes"]
    assert stages is not None
    return {**frames, "stage_changes": stages.drop(columns=["stage"])}


BAD: dict[str, Callable[[Frames], Frames]] = {
    "missing_deal_id": _set("deals", "deal_id", None),
    "negative_amount": _set("deals", "amount", -5.0),
    "nan_amount": _set("deals", "amount", np.nan),
    "text_created_at": _set("deals", "created_at", "not a time"),
    "empty_owner": _set("deals", "owner", "   "),
    "unknown_deal": _set("stage_changes", "deal_id", "NO-SUCH-DEAL"),
    "unknown_stage": _set("stage_changes", "stage", "Somewhere Else"),
    "missing_stage_time": _set("stage_changes", "changed_at", None),
    "unknown_activity_type": _set("activities", "type", "fax"),
    "unknown_direction": _set("activities", "direction", "sideways"),
    "duplicate_event_id": _duplicate_event,
    "event_before_creation": _before_creation,
    "unknown_field": _set("field_changes", "field", "colour"),
    "bad_amount_value": _field_value("amount", "lots"),
    "negative_amount_value": _field_value("amount", "-3"),
    "bad_close_date_value": _field_value("expected_close_date", "next spring"),
    "missing_owner_value": _field_value("owner", None),
    "missing_column": _missing_column,
}


def _rich_ids(store: DealHistory) -> list[str]:
    """Two deals whose field changes cover amount, owner and expected_close_date."""
    fields = store.field_changes.groupby("deal_id", observed=True)["field"].nunique()
    return [str(d) for d in fields[fields == 3].index[:2]]


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_gets_the_full_paths_exact_problems(
    store: DealHistory, monkeypatch: pytest.MonkeyPatch, case: str
) -> None:
    frames = BAD[case](raw_frames(store, _rich_ids(store)))
    assert not takes_fast_path(store, frames)
    with pytest.raises(HistoryValidationError) as fast:
        validate(store, frames, True, monkeypatch)
    with pytest.raises(HistoryValidationError) as full:
        validate(store, frames, False, monkeypatch)
    assert fast.value.problems == full.value.problems
    assert str(fast.value) == str(full.value)


# Valid input the full path has to coerce (strip, lower-case, parse text): the fast path steps aside.
NEEDS_COERCION: dict[str, Callable[[Frames], Frames]] = {
    "padded_owner": _set("deals", "owner", "  Dana Smith "),
    "upper_case_type": _set("activities", "type", "CALL"),
    "text_time": _set("activities", "occurred_at", "2030-01-01T10:00:00+02:00"),
    "empty_team": _set("deals", "team", ""),
    "text_close_date_value": _field_value("expected_close_date", " 2031-02-03 "),
}


def _shifted_offset(frames: Frames) -> Frames:
    acts = frames["activities"]
    assert acts is not None
    shifted = acts["occurred_at"].dt.tz_convert("Asia/Kolkata")
    return {**frames, "activities": acts.assign(occurred_at=shifted)}


def _naive_times(frames: Frames) -> Frames:
    stages = frames["stage_changes"]
    assert stages is not None
    return {**frames, "stage_changes": stages.assign(changed_at=stages["changed_at"].dt.tz_localize(None))}


def _close_date_with_offset(frames: Frames) -> Frames:
    return _field_value("expected_close_date", "2031-02-03T09:30:00.25-05:00")(frames)


def _amounts_as(kind: str) -> Callable[[Frames], Frames]:
    """Deal amounts as text, as boxed Decimals (what the store reads back) or as nullable floats."""

    def change(frames: Frames) -> Frames:
        deals = frames["deals"]
        assert deals is not None
        amounts = deals["amount"]
        if kind == "Float64":
            return {**frames, "deals": deals.assign(amount=amounts.astype("Float64"))}
        boxed = [decimal.Decimal(repr(a)) if kind == "decimal" else f"{a}" for a in amounts.tolist()]
        return {**frames, "deals": deals.assign(amount=pd.Series(boxed, index=deals.index, dtype=object))}

    return change


@pytest.mark.parametrize(
    "change",
    [_shifted_offset, _naive_times, _close_date_with_offset, _amounts_as("text"), _amounts_as("decimal"),
     _amounts_as("Float64")],
)
def test_typed_inputs_of_other_kinds_take_the_fast_path(
    store: DealHistory, monkeypatch: pytest.MonkeyPatch, change: Callable[[Frames], Frames]
) -> None:
    frames = change(raw_frames(store, _rich_ids(store)))
    assert takes_fast_path(store, frames)
    fast, full = validate(store, frames, True, monkeypatch), validate(store, frames, False, monkeypatch)
    assert_same_history(fast, full)


@pytest.mark.parametrize("case", sorted(NEEDS_COERCION))
def test_input_needing_coercion_takes_the_full_path(
    store: DealHistory, monkeypatch: pytest.MonkeyPatch, case: str
) -> None:
    frames = NEEDS_COERCION[case](raw_frames(store, _rich_ids(store)))
    assert not takes_fast_path(store, frames)
    fast, full = validate(store, frames, True, monkeypatch), validate(store, frames, False, monkeypatch)
    assert_same_history(fast, full)


def test_feature_building_reads_field_changes_as_field_rows_does(store: DealHistory) -> None:
    """`features.build` splits the field changes once; each field's rows equal `field_rows` for it."""
    from features.build import _field_rows_by_field
    from features.timeindex import DealIndex, field_rows

    deals = DealIndex(store.deals)
    shared = _field_rows_by_field(store, deals)
    for field, rows in shared.items():
        alone = field_rows(store, deals, field)
        assert len(rows.stream) > 0
        np.testing.assert_array_equal(rows.stream.order, alone.stream.order)
        np.testing.assert_array_equal(rows.stream.keys, alone.stream.keys)
        np.testing.assert_array_equal(rows.stream.starts, alone.stream.starts)
        assert rows.value.tolist() == alone.value.tolist()
