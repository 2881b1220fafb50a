"""A deal's current state: where it stands after every event of its history.

The store keeps these values in columns of each deal (rewritten in the same transaction as the events
that change them), so "open deals of pipeline P" is a query. They are `features.health.deal_states` —
the deal state every manager view (at-risk filters, health, forecast) uses, built on `features.stages` —
as of the history's latest event, plus a few event aggregates:

- `current_stage` (None before any stage change), `outcome` (open / won / lost), `stage_entered_at`
  (its last stage change, else `created_at`), `closed_at` (the first change of its final run of closing
  stages; NaT while open);
- `current_owner`, `current_amount`, `current_expected_close_date`: the latest field change of each field,
  else the value the deal was created with;
- `last_activity_at`, `first_event_at` (earliest event of any kind), `last_event_at`, `n_events`.
"""

from __future__ import annotations

import pandas as pd

from features.health import deal_states
from features.history import DealHistory

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
# the STATE_FIELDS that are times (UTC)
STATE_TIME_FIELDS = (
    "current_expected_close_date",
    "stage_entered_at",
    "closed_at",
    "last_activity_at",
    "first_event_at",
    "last_event_at",
)
_FROM_DEAL_STATES = {
    "stage": "current_stage",
    "status": "outcome",
    "owner": "current_owner",
    "amount": "current_amount",
    "expected_close_date": "current_expected_close_date",
    "stage_entered_at": "stage_entered_at",
    "closed_at": "closed_at",
}


def current_deal_states(history: DealHistory) -> pd.DataFrame:
    """One row per deal of the history, indexed by `deal_id`, with the `STATE_FIELDS` columns."""
    ids = pd.Index(history.deals["deal_id"].drop_duplicates().astype("string"), name="deal_id")
    if not len(ids):
        return pd.DataFrame({c: pd.Series(dtype=object) for c in STATE_FIELDS}, index=ids)
    # As of the latest time anything happened: every deal is created and every event counted by then.
    states = deal_states(history, history.end_time)
    out = states.set_index(pd.Index(states["deal_id"].astype("string"), name="deal_id"))
    out = out[list(_FROM_DEAL_STATES)].rename(columns=_FROM_DEAL_STATES).reindex(ids)

    activities = history.activities
    out["last_activity_at"] = activities.groupby("deal_id")["occurred_at"].max().reindex(ids)
    times = pd.concat(
        [
            history.stage_changes[["deal_id", "changed_at"]].set_axis(["deal_id", "t"], axis=1),
            activities[["deal_id", "occurred_at"]].set_axis(["deal_id", "t"], axis=1),
            history.field_changes[["deal_id", "changed_at"]].set_axis(["deal_id", "t"], axis=1),
        ],
        ignore_index=True,
    )
    grouped = times.groupby("deal_id")["t"]
    out["first_event_at"] = grouped.min().reindex(ids)
    out["last_event_at"] = grouped.max().reindex(ids)
    out["n_events"] = grouped.size().reindex(ids).fillna(0).astype("int64")
    return out[list(STATE_FIELDS)]
