"""The deal-history contract: tables, dtypes, pipelines, and validation.

Every other layer works on a `DealHistory`: four pandas frames with fixed columns and dtypes (times are
tz-aware UTC `datetime64[ns, UTC]`) plus the pipelines' stage definitions. Reading files lives in
`training.data`; reading the database lives in `serving.store`; both end in `DealHistory.from_frames`,
so validation and coercion happen in exactly one place.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

ACTIVITY_TYPES = ("call", "email", "meeting", "note", "task", "other")
DIRECTIONS = ("inbound", "outbound")
CHANGEABLE_FIELDS = ("amount", "expected_close_date", "owner")

# table -> (required columns, optional columns). Column names are the contract.
DEAL_REQUIRED = ("deal_id", "pipeline", "owner", "amount", "created_at")
DEAL_OPTIONAL = ("team", "account", "expected_close_date", "currency")
STAGE_REQUIRED = ("deal_id", "stage", "changed_at")
ACTIVITY_REQUIRED = ("deal_id", "type", "occurred_at")
ACTIVITY_OPTIONAL = ("direction",)
FIELD_REQUIRED = ("deal_id", "field", "value", "changed_at")

TABLES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "deals": (DEAL_REQUIRED, DEAL_OPTIONAL),
    "stage_changes": (STAGE_REQUIRED, ("event_id",)),
    "activities": (ACTIVITY_REQUIRED, ACTIVITY_OPTIONAL + ("event_id",)),
    "field_changes": (FIELD_REQUIRED, ("event_id",)),
}
TIME_COLUMNS = {
    "deals": ("created_at", "expected_close_date"),
    "stage_changes": ("changed_at",),
    "activities": ("occurred_at",),
    "field_changes": ("changed_at",),
}
EVENT_TIME = {"stage_changes": "changed_at", "activities": "occurred_at", "field_changes": "changed_at"}


@dataclass(frozen=True)
class Problem:
    """One thing wrong with the input, located as precisely as we can."""

    table: str
    row: int | None  # 1-based data row (a CSV's header is line 1, so row N is line N + 1)
    column: str | None
    message: str
    hint: str = ""

    def __str__(self) -> str:
        where = self.table
        if self.row is not None:
            where += f" row {self.row}"
        if self.column is not None:
            where += f" column {self.column!r}"
        text = f"{where}: {self.message}"
        return f"{text} ({self.hint})" if self.hint else text


class HistoryValidationError(ValueError):
    """The input history is not valid; `problems` lists every problem found (first ones first)."""

    def __init__(self, problems: list[Problem], source: str | None = None) -> None:
        self.problems = problems
        self.source = source
        shown = "\n".join(f"  - {p}" for p in problems[:20])
        more = f"\n  … and {len(problems) - 20} more" if len(problems) > 20 else ""
        prefix = f"{source}: " if source else ""
        super().__init__(f"{prefix}{len(problems)} problem(s) in the deal history:\n{shown}{more}")


@dataclass(frozen=True)
class PipelineSpec:
    """Ordered open stages of one pipeline and its closing stages.

    What a stage means (outcome, position) is defined once, in `features.stages`.
    """

    name: str
    stages: tuple[str, ...]
    won: tuple[str, ...] = ()
    lost: tuple[str, ...] = ()
    stale_after_days: Mapping[str, float] = field(default_factory=dict)
    # Inferred from the data (stages in order of appearance, extended as new ones arrive) rather than
    # given (pipelines.yaml or the API), which is authoritative. Provenance, not content: not part of
    # `to_dict` (the store keeps it in its own column) nor of equality (same stages, same spec).
    inferred: bool = field(default=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        return {
            "stages": list(self.stages),
            "won": list(self.won),
            "lost": list(self.lost),
            "stale_after_days": dict(self.stale_after_days),
        }

    @classmethod
    def from_dict(cls, name: str, raw: Mapping[str, Any], inferred: bool = False) -> PipelineSpec:
        return cls(
            name=name,
            stages=tuple(str(s) for s in raw.get("stages", ()) or ()),
            won=tuple(str(s) for s in raw.get("won", ()) or ()),
            lost=tuple(str(s) for s in raw.get("lost", ()) or ()),
            stale_after_days={str(k): float(v) for k, v in (raw.get("stale_after_days") or {}).items()},
            inferred=inferred,
        )


@dataclass
class DealHistory:
    """A CRM's deal history, validated and typed.

    Frames and dtypes (after `from_frames`):
      deals:          deal_id string, pipeline string, owner string, amount float64,
                      created_at datetime64[ns, UTC], team string (may be <NA>), account string,
                      expected_close_date datetime64[ns, UTC] (NaT if unknown), currency string,
                      plus one column per custom attribute (names in `attribute_columns`).
      stage_changes:  deal_id, stage string; changed_at UTC; event_id string (may be <NA>)
      activities:     deal_id, type (one of ACTIVITY_TYPES), direction (inbound/outbound/<NA>) string;
                      occurred_at UTC; event_id string
      field_changes:  deal_id, field (one of CHANGEABLE_FIELDS), value string; changed_at UTC; event_id
    Event frames are sorted by (deal_id, time) with a fresh RangeIndex.
    `pipelines` holds a spec for every pipeline in `deals` (given, or inferred from the data).
    """

    deals: pd.DataFrame
    stage_changes: pd.DataFrame
    activities: pd.DataFrame
    field_changes: pd.DataFrame
    pipelines: dict[str, PipelineSpec]
    attribute_columns: tuple[str, ...] = ()

    @property
    def end_time(self) -> pd.Timestamp:
        """The latest time anything in the history happened (the end of the data)."""
        times = [self.deals["created_at"].max()]
        times += [self.stage_changes["changed_at"].max(), self.activities["occurred_at"].max()]
        times += [self.field_changes["changed_at"].max()]
        valid = [t for t in times if pd.notna(t)]
        if not valid:
            raise ValueError("the history is empty")
        return max(valid)

    def n_deals(self) -> int:
        return len(self.deals)

    def cut(self, as_of: pd.Timestamp | str) -> DealHistory:
        """The history as it was known at `as_of`: deals created and events dated at or before it."""
        t = to_utc_timestamp(as_of)
        deals = self.deals[self.deals["created_at"] <= t].reset_index(drop=True)
        return DealHistory(
            deals=deals,
            stage_changes=self.stage_changes[self.stage_changes["changed_at"] <= t].reset_index(drop=True),
            activities=self.activities[self.activities["occurred_at"] <= t].reset_index(drop=True),
            field_changes=self.field_changes[self.field_changes["changed_at"] <= t].reset_index(drop=True),
            pipelines=self.pipelines,
            attribute_columns=self.attribute_columns,
        )

    def subset(self, deal_ids: Iterable[str]) -> DealHistory:
        """Only the given deals and their events."""
        ids = pd.Index(pd.unique(pd.Series(list(deal_ids), dtype="string")))

        def keep(frame: pd.DataFrame) -> pd.DataFrame:
            return frame[frame["deal_id"].isin(ids)].reset_index(drop=True)

        return DealHistory(
            deals=keep(self.deals),
            stage_changes=keep(self.stage_changes),
            activities=keep(self.activities),
            field_changes=keep(self.field_changes),
            pipelines=self.pipelines,
            attribute_columns=self.attribute_columns,
        )

    @classmethod
    def from_frames(
        cls,
        deals: pd.DataFrame,
        stage_changes: pd.DataFrame,
        activities: pd.DataFrame,
        field_changes: pd.DataFrame | None = None,
        pipelines: Mapping[str, PipelineSpec] | Mapping[str, Mapping[str, Any]] | None = None,
        source: str | None = None,
    ) -> DealHistory:
        """Validate and coerce raw frames (strings as read from CSV/JSON are fine).

        Raises HistoryValidationError listing every problem with table, row, column and a hint.
        """
        from features.validation import validate_and_coerce

        return validate_and_coerce(deals, stage_changes, activities, field_changes, pipelines, source)


def to_utc_timestamp(value: Any) -> pd.Timestamp:
    """Parse one time: ISO 8601; a date without time is midnight UTC; naive times are UTC."""
    ts = pd.Timestamp(value)
    if pd.isna(ts):
        raise ValueError(f"not a time: {value!r}")
    return ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")
