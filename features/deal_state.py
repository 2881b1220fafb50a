"""A deal's current state: where it stands after every event of its history.

The store keeps these values in columns of each deal (rewritten in the same transaction as the events
that change them), so "open deals of pipeline P" is a query. They are the history's values as of its
latest event:

- `current_stage`, `outcome`, `stage_entered_at`: `features.stages`' definitions (the latest stage change
  in the documented same-time order; the pipeline's first stage before any, entered at `created_at`);
  `closed_at` is `stage_entered_at` for a won or lost deal.
- `current_owner`, `current_amount`, `current_expected_close_date`: the latest field change of each field,
  else the value the deal was created with.
- `last_activity_at`, `first_event_at` (earliest event of any kind), `last_event_at`, `n_events`.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from features.history import DealHistory
from features.stages import first_stages, stage_rows
from features.timeindex import NAT_NS, DealIndex, field_rows, from_ns, owner_at, take, to_ns

STATE_FIELDS = (
    "current_stage",
    "outcome",
    "current_owner",
    "current_amount",
    "current_expected_close_date",
    "stage_entered_at",
    "closed_at",
    "last_activity_at",
    "first_event_at",
    "last_event_at",
    "n_events",
)
_END = np.iinfo(np.int64).max  # "after every event": the state as of the latest one


def current_deal_states(history: DealHistory) -> pd.DataFrame:
    """One row per deal of the history, indexed by `deal_id`, with the `STATE_FIELDS` columns."""
    deals = DealIndex(history.deals)
    codes = np.arange(deals.n, dtype=np.int64)
    end = np.full(deals.n, _END, dtype=np.int64)
    out = pd.DataFrame(index=pd.RangeIndex(deals.n))  # rows in deal-code order; ids set at the end

    rows = stage_rows(history, deals)
    last = rows.stream.last_index(codes, end)
    has_stage = last >= 0
    out["current_stage"] = pd.array(
        np.where(has_stage, take(rows.stage, last, None), first_stages(deals.pipeline, history.pipelines)),
        dtype="string",
    )
    out["outcome"] = pd.array(take(rows.outcome, last, "open"), dtype="string")
    entered = np.where(has_stage, take(rows.entered.astype(np.int64), last, NAT_NS), deals.created)
    out["stage_entered_at"] = _times(entered)
    out["closed_at"] = _times(np.where(out["outcome"].to_numpy() != "open", entered, NAT_NS))

    out["current_owner"] = pd.array(
        owner_at(field_rows(history, deals, "owner"), deals, codes, end), dtype="string"
    )
    amounts = field_rows(history, deals, "amount")
    index = amounts.stream.last_index(codes, end)
    changed_amount = pd.to_numeric(pd.Series(take(amounts.value, index, None)), errors="coerce").to_numpy()
    out["current_amount"] = np.where(index >= 0, changed_amount, deals.amount).astype(np.float64)
    closes = field_rows(history, deals, "expected_close_date")
    index = closes.stream.last_index(codes, end)
    changed_close = pd.to_datetime(pd.Series(take(closes.value, index, None)), utc=True, errors="coerce")
    close_ns = np.where(index >= 0, to_ns(changed_close), deals.close_date)
    out["current_expected_close_date"] = _times(close_ns)

    activities = history.activities
    act_codes = deals.codes(activities["deal_id"])
    out["last_activity_at"] = _group_times(act_codes, to_ns(activities["occurred_at"]), deals.n, np.maximum)
    parts = [
        (deals.codes(history.stage_changes["deal_id"]), history.stage_changes["changed_at"]),
        (act_codes, activities["occurred_at"]),
        (deals.codes(history.field_changes["deal_id"]), history.field_changes["changed_at"]),
    ]
    all_codes = np.concatenate([c for c, _ in parts])
    all_times = np.concatenate([to_ns(t) for _, t in parts])
    out["first_event_at"] = _group_times(all_codes, all_times, deals.n, np.minimum)
    out["last_event_at"] = _group_times(all_codes, all_times, deals.n, np.maximum)
    out["n_events"] = np.bincount(all_codes[all_codes >= 0], minlength=deals.n).astype(np.int64)
    out.index = pd.Index(deals.ids, name="deal_id", dtype="string")
    return out[list(STATE_FIELDS)]


def _times(ns: np.ndarray) -> pd.Series:
    return pd.Series(from_ns(np.asarray(ns, dtype=np.int64)))


def _group_times(codes: np.ndarray, ns: np.ndarray, n: int, reduce: np.ufunc) -> pd.Series:
    """Per deal code, the min or max (`reduce`) of its times (int64 ns); NaT for deals without one."""
    valid = (codes >= 0) & (ns != NAT_NS)
    start = np.iinfo(np.int64).max if reduce is np.minimum else np.iinfo(np.int64).min
    out = np.full(n, start, dtype=np.int64)
    reduce.at(out, codes[valid], ns[valid])
    out[out == start] = NAT_NS
    return _times(out)
