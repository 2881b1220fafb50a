"""A deal's current state: where it stands after every event of its history.

The store keeps these values in columns of each deal (rewritten in the same transaction as the events
that change them), so "open deals of pipeline P" is a query. They are the history's values as of its
latest event:

- `current_stage`: the stage of the deal's last stage change (in `DealHistory.stage_changes` order:
  by time, ties in the documented same-time order); None before any.
- `outcome`: open / won / lost, from the pipeline's spec (or the name rule), via `stage_outcome`.
- `stage_entered_at`: when the deal entered its current stage (the first change of the trailing run of
  changes to that stage; `created_at` before any); `closed_at` is that time for a won or lost deal.
- `current_owner`, `current_amount`, `current_expected_close_date`: the latest field change of each field,
  else the value the deal was created with.
- `last_activity_at`, `first_event_at` (earliest event of any kind), `last_event_at`, `n_events`.
"""

from __future__ import annotations

import pandas as pd

from features.history import DealHistory, stage_outcome

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


def current_deal_states(history: DealHistory) -> pd.DataFrame:
    """One row per deal of the history, indexed by `deal_id`, with the `STATE_FIELDS` columns."""
    deals = history.deals.drop_duplicates("deal_id").set_index("deal_id")
    index = deals.index
    out = pd.DataFrame(index=index)

    changes = history.stage_changes
    by_deal = changes.groupby("deal_id", sort=False)
    stage = by_deal["stage"].last().reindex(index)
    out["current_stage"] = stage.astype("string")
    outcome = stage_outcome(stage.fillna("").astype("string"), deals["pipeline"], history.pipelines)
    out["outcome"] = outcome.where(stage.notna(), "open").astype("string")
    previous = by_deal["stage"].shift()
    run_starts = changes[(changes["stage"] != previous).fillna(True).astype(bool) | previous.isna()]
    entered = run_starts.groupby("deal_id", sort=False)["changed_at"].last().reindex(index)
    out["stage_entered_at"] = entered.fillna(deals["created_at"])
    out["closed_at"] = out["stage_entered_at"].where(out["outcome"] != "open")

    fields = history.field_changes
    latest = fields.groupby(["deal_id", "field"], sort=False)["value"].last()

    def latest_of(name: str) -> pd.Series:
        if not len(latest):
            return pd.Series(pd.NA, index=index, dtype="string")
        values = latest.xs(name, level="field") if name in latest.index.get_level_values("field") else None
        if values is None:
            return pd.Series(pd.NA, index=index, dtype="string")
        return values.reindex(index).astype("string")

    owner = latest_of("owner")
    out["current_owner"] = owner.fillna(deals["owner"].astype("string"))
    amount = pd.to_numeric(latest_of("amount"), errors="coerce")
    out["current_amount"] = amount.fillna(deals["amount"]).astype("float64")
    close = pd.to_datetime(latest_of("expected_close_date"), utc=True, errors="coerce")
    has_close_change = latest_of("expected_close_date").notna()
    out["current_expected_close_date"] = close.where(has_close_change, deals["expected_close_date"])

    activities = history.activities
    out["last_activity_at"] = activities.groupby("deal_id", sort=False)["occurred_at"].max().reindex(index)
    times = pd.concat(
        [
            changes[["deal_id", "changed_at"]].rename(columns={"changed_at": "t"}),
            activities[["deal_id", "occurred_at"]].rename(columns={"occurred_at": "t"}),
            fields[["deal_id", "changed_at"]].rename(columns={"changed_at": "t"}),
        ],
        ignore_index=True,
    )
    grouped = times.groupby("deal_id", sort=False)["t"]
    out["first_event_at"] = grouped.min().reindex(index)
    out["last_event_at"] = grouped.max().reindex(index)
    out["n_events"] = grouped.size().reindex(index).fillna(0).astype("int64")
    return out[list(STATE_FIELDS)]
