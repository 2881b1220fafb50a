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

`current_deal_states` is the definition. `appended_state` is its incremental form for a write that only
appends to a deal's history (see its docstring), and `created_state` the state of a deal without events:
each returns exactly what `current_deal_states` would give, or None when the input does not qualify, and
the caller recomputes from the whole history then. `tests/serving/test_state_fast_path.py` holds them
equal to the definition over random writes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from features.health import deal_states, parse_field_values
from features.history import ACTIVITY_TYPES, CHANGEABLE_FIELDS, DIRECTIONS, DealHistory, PipelineSpec
from features.stages import stage_outcome
from features.validation.parsing import EARLIEST_TIME, LATEST_TIME, MAX_AMOUNT

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


Event = Mapping[str, Any]


def appended_state(
    state: Mapping[str, Any],
    deal: Mapping[str, Any],
    specs: Mapping[str, PipelineSpec],
    stage_changes: Sequence[Event] = (),
    activities: Sequence[Event] = (),
    field_changes: Sequence[Event] = (),
) -> dict[str, Any] | None:
    """The `STATE_FIELDS` of a deal after new events are added to its history, from its state before
    (`state`, as `current_deal_states` gave it) without reading the history; None when the events do not
    qualify.

    `deal` is the deal as created (`pipeline`, `owner`, `amount`, `expected_close_date`); `specs` holds
    its pipeline's spec as it is after the write. Events are records with the event tables' columns; all
    times are UTC `pd.Timestamp`s (missing: None). They qualify when:

    - every value is as the history's validation reads it back unchanged (text stripped and non-empty,
      known activity types, directions and fields, times and amounts within the accepted range), so a
      whole-history validation could not refuse them;
    - stage and field changes are all later than the deal's last stored event (`last_event_at`), with no
      two new stage changes (or two new changes of one field) at the same time: the latest row, which
      decides the state, is then the latest new one, whatever the same-time order;
    - activities may have any time: they only move the event aggregates.

    Then: `n_events` grows by the number of events, `first_event_at` / `last_event_at` /
    `last_activity_at` take the new minimum / maximum, each new stage change in time order sets the stage,
    its outcome (`features.stages.stage_outcome`) and `stage_entered_at`, and `closed_at` (kept through a
    run of closing stages, set by the first of a run, cleared by an open stage); the latest change of each
    field sets the current value as `features.health.deal_states` reads it (an amount or date that does
    not parse falls back to the deal's created value).
    """
    if not _qualifies(state, stage_changes, activities, field_changes):
        return None
    if stage_changes and str(deal["pipeline"]) not in specs:
        return None
    out = {name: state.get(name) for name in STATE_FIELDS}
    times = [e["changed_at"] for e in stage_changes] + [e["occurred_at"] for e in activities]
    times += [e["changed_at"] for e in field_changes]
    if not times:
        return out
    out["n_events"] = int(state.get("n_events") or 0) + len(times)
    out["first_event_at"] = _min_or(min(times), state.get("first_event_at"))
    out["last_event_at"] = _max_or(max(times), state.get("last_event_at"))
    if activities:
        latest = max(e["occurred_at"] for e in activities)
        out["last_activity_at"] = _max_or(latest, state.get("last_activity_at"))
    pipeline = str(deal["pipeline"])
    for event in sorted(stage_changes, key=lambda e: e["changed_at"]):
        outcome = stage_outcome(pipeline, str(event["stage"]), specs)
        out["current_stage"] = str(event["stage"])
        out["outcome"] = outcome
        out["stage_entered_at"] = event["changed_at"]
        if outcome == "open":
            out["closed_at"] = None
        elif out.get("closed_at") is None:
            out["closed_at"] = event["changed_at"]
    for name in CHANGEABLE_FIELDS:
        changes = [e for e in field_changes if e["field"] == name]
        if changes:
            value = max(changes, key=lambda e: e["changed_at"])["value"]
            out[_CURRENT_FIELD[name]] = _field_value(name, value, deal)
    return out


def created_state(deal: Mapping[str, Any]) -> dict[str, Any] | None:
    """The `STATE_FIELDS` of a deal with no events, from its row (`DEAL_COLUMNS`; times UTC
    `pd.Timestamp`s, missing None): no stage, open, its owner, amount and expected close date as created,
    in its (first) stage since `created_at`, no event counted. None when a value is not as the history's
    validation reads it back (the caller recomputes then)."""
    amount = deal.get("amount")
    if not (
        all(_clean(deal.get(c)) for c in ("deal_id", "pipeline", "owner"))
        and all(deal.get(c) is None or _clean(deal.get(c)) for c in ("team", "account", "currency"))
        and isinstance(amount, float | int) and not isinstance(amount, bool)
        and 0 <= amount <= MAX_AMOUNT
        and _in_range(deal.get("created_at"))
        and (deal.get("expected_close_date") is None or _in_range(deal.get("expected_close_date")))
    ):
        return None
    state: dict[str, Any] = {name: None for name in STATE_FIELDS}
    state.update(outcome="open", current_owner=deal["owner"], current_amount=float(amount),
                 current_expected_close_date=deal.get("expected_close_date"),
                 stage_entered_at=deal["created_at"], n_events=0)
    return state


_CURRENT_FIELD = {
    "owner": "current_owner",
    "amount": "current_amount",
    "expected_close_date": "current_expected_close_date",
}


def _field_value(name: str, value: str | None, deal: Mapping[str, Any]) -> Any:
    """A field's current value from its latest change, converted as `features.health.deal_states` does."""
    if name == "owner":
        return deal["owner"] if value is None else value
    parsed = _parsed(name, value)
    if pd.isna(parsed):
        return float(deal["amount"]) if name == "amount" else deal.get("expected_close_date")
    return float(parsed) if name == "amount" else parsed


def _parsed(name: str, value: Any) -> Any:
    """One field-change value through `features.health.parse_field_values` (missing: does not parse)."""
    return parse_field_values(name, pd.Series([value], dtype="string")).iloc[0]


def _qualifies(
    state: Mapping[str, Any], stage_changes: Sequence[Event], activities: Sequence[Event],
    field_changes: Sequence[Event],
) -> bool:
    after = state.get("last_event_at")
    for event in stage_changes:
        if not (_clean(event["stage"]) and _clean_id(event) and _later(event["changed_at"], after)):
            return False
    if len({e["changed_at"] for e in stage_changes}) < len(stage_changes):
        return False
    for event in activities:
        direction = event.get("direction")
        if not (
            event["type"] in ACTIVITY_TYPES
            and (direction is None or direction in DIRECTIONS)
            and _clean_id(event)
            and _in_range(event["occurred_at"])
        ):
            return False
    for event in field_changes:
        if not (
            event["field"] in CHANGEABLE_FIELDS
            and _clean_id(event)
            and _later(event["changed_at"], after)
            and _clean_value(event["field"], event.get("value"))
        ):
            return False
    pairs = {(e["field"], e["changed_at"]) for e in field_changes}
    return len(pairs) == len(field_changes)


def _clean(text: Any) -> bool:
    """Text the history's validation reads back as it is (stripped, non-empty)."""
    return isinstance(text, str) and text != "" and text == text.strip()


def _clean_id(event: Event) -> bool:
    event_id = event.get("event_id")
    return event_id is None or _clean(event_id)


def _in_range(when: Any) -> bool:
    return isinstance(when, pd.Timestamp) and EARLIEST_TIME <= when <= LATEST_TIME


def _later(when: Any, after: pd.Timestamp | None) -> bool:
    return _in_range(when) and (after is None or when > after)


def _clean_value(name: str, value: Any) -> bool:
    if not _clean(value):
        return False
    if name == "amount":
        amount = _parsed(name, value)
        return bool(pd.notna(amount) and 0 <= amount <= MAX_AMOUNT)
    if name == "expected_close_date":
        return _in_range(_parsed(name, value))
    return True


def _min_or(value: pd.Timestamp, other: pd.Timestamp | None) -> pd.Timestamp:
    return value if other is None or value < other else other


def _max_or(value: pd.Timestamp, other: pd.Timestamp | None) -> pd.Timestamp:
    return value if other is None or value > other else other
