"""Request and response bodies (Pydantic v2): one family of names per resource.

Everything is strict at the edge: unknown fields are rejected (`extra="forbid"`), amounts are finite
and >= 0, and times are ISO 8601 parsed to UTC (a date alone is midnight UTC; a naive time is UTC).
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime
from enum import StrEnum
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

from features.history import ACTIVITY_TYPES, CHANGEABLE_FIELDS, DIRECTIONS
from features.validation import EARLIEST_TIME, LATEST_TIME, MAX_AMOUNT
from serving.limits import (
    ACCOUNT_LENGTH,
    ATTRIBUTE_VALUE_LENGTH,
    CURRENCY_LENGTH,
    EVENT_ID_LENGTH,
    FIELD_VALUE_LENGTH,
    MAX_ATTRIBUTES_PER_DEAL,
    NAME_LENGTH,
)

MAX_BATCH_DEALS = 1000  # hard ceiling of the schema; settings.max_batch_deals may lower it
MAX_EVENTS_PER_LIST = 5000
MAX_WRITE_EVENTS = 50_000

RESERVED_DEAL_COLUMNS = frozenset(
    {"deal_id", "pipeline", "owner", "amount", "created_at", "team", "account", "expected_close_date",
     "currency", "stage_changes", "activities", "field_changes"}
)


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_SPACED_OFFSET = re.compile(r"(T\S+) (\d\d:?\d\d)$")


def _parse_time(value: Any) -> Any:
    # Pydantic's datetime parser accepts numbers as epoch seconds; a CRM sending a number almost
    # certainly sent the wrong field, so only ISO 8601 strings (or datetimes) are accepted.
    if isinstance(value, datetime):
        return value
    if isinstance(value, date):
        return datetime(value.year, value.month, value.day)
    if not isinstance(value, str):
        raise ValueError("expected an ISO 8601 time string")
    text = value.strip()
    if len(text) == 10:  # a date without a time is midnight UTC
        text += "T00:00:00"
    # an unencoded '+' in a query string arrives as a space: "2024-05-01T10:00:00 02:00"
    if " " in text:
        text = _SPACED_OFFSET.sub(r"\1+\2", text)
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as exc:
        raise ValueError(f"not an ISO 8601 time: {value!r}") from exc


def _field_value_text(value: Any) -> Any:
    # amount changes may arrive as JSON numbers; keep them as text like the CSV format does
    if isinstance(value, float) and (value != value or value in (float("inf"), float("-inf"))):
        raise ValueError("value must be a finite number or text")
    if isinstance(value, int | float) and not isinstance(value, bool):
        return repr(value)
    return value


def _to_utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


# The bounds as datetimes: comparing a datetime with a pandas Timestamp costs more than parsing it, and
# it is paid for every time of a request (both bounds are whole seconds, so the answers are the same).
_EARLIEST, _LATEST = EARLIEST_TIME.to_pydatetime(), LATEST_TIME.to_pydatetime()


def _in_time_range(value: datetime) -> datetime:
    # The history holds nanosecond times; the bounds are the file import's (features.validation).
    utc = _to_utc(value)
    if not _EARLIEST <= utc <= _LATEST:
        raise ValueError(
            f"time out of range: must be between {EARLIEST_TIME.date()} and {LATEST_TIME.date()}"
        )
    return utc


UtcTime = Annotated[datetime, BeforeValidator(_parse_time), AfterValidator(_in_time_range)]
# Names and ids may hold any printable character; control characters never belong in one (NUL above
# all, which PostgreSQL text cannot store). Path and query parameters use the same pattern.
NO_CONTROL_CHARS = r"^[^\x00-\x1f\x7f]*$"
NonEmptyStr = Annotated[str, Field(min_length=1, max_length=NAME_LENGTH, pattern=NO_CONTROL_CHARS)]
Text = Annotated[str, Field(max_length=NAME_LENGTH, pattern=NO_CONTROL_CHARS)]
EventId = Annotated[str, Field(max_length=EVENT_ID_LENGTH, pattern=NO_CONTROL_CHARS)]
def _not_true_or_false(value: Any) -> Any:
    # pydantic reads JSON true/false as 1.0/0.0 for a float: for an amount that is a client's mistake
    if isinstance(value, bool):
        raise ValueError(f"an amount is a number, not true or false ({str(value).lower()})")
    return value


Money = Annotated[float, BeforeValidator(_not_true_or_false), Field(ge=0, le=MAX_AMOUNT, allow_inf_nan=False)]
AttributeValue = Annotated[
    Annotated[str, Field(max_length=ATTRIBUTE_VALUE_LENGTH)] | bool | int | float | None,
    Field(union_mode="left_to_right"),
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, str_strip_whitespace=True)


# The allowed values are the history contract's (features.history); the API only names them.
ActivityType = StrEnum("ActivityType", [(v, v) for v in ACTIVITY_TYPES])  # type: ignore[misc]
Direction = StrEnum("Direction", [(v, v) for v in DIRECTIONS])  # type: ignore[misc]
ChangeableField = StrEnum("ChangeableField", [(v, v) for v in CHANGEABLE_FIELDS])  # type: ignore[misc]


class _Timed(_Strict):
    @field_validator("changed_at", "occurred_at", "created_at", "expected_close_date", "as_of",
                     mode="after", check_fields=False)
    @classmethod
    def _utc(cls, value: datetime | None) -> datetime | None:
        return None if value is None else _to_utc(value)


class DealIn(_Timed):
    """A deal as created (later values of amount, owner, close date come as field changes)."""

    deal_id: NonEmptyStr
    pipeline: NonEmptyStr
    owner: NonEmptyStr
    amount: Money
    created_at: UtcTime
    team: Text | None = None
    account: str | None = Field(default=None, max_length=ACCOUNT_LENGTH, pattern=NO_CONTROL_CHARS)
    expected_close_date: UtcTime | None = None
    currency: str | None = Field(default=None, max_length=CURRENCY_LENGTH, pattern=NO_CONTROL_CHARS)
    attributes: dict[str, AttributeValue] = Field(default_factory=dict, max_length=MAX_ATTRIBUTES_PER_DEAL)

    @field_validator("attributes")
    @classmethod
    def _attribute_names(cls, value: dict[str, Any]) -> dict[str, Any]:
        clash = sorted(set(value) & RESERVED_DEAL_COLUMNS)
        if clash:
            raise ValueError(f"attribute names clash with deal fields: {clash}")
        for name, item in value.items():
            if not name or len(name) > NAME_LENGTH:
                raise ValueError(f"attribute names must have 1 to {NAME_LENGTH} characters: {name[:40]!r}")
            if isinstance(item, float) and item != item:
                raise ValueError(f"attribute {name!r} is NaN")
            if _CONTROL.search(name):
                raise ValueError(f"attribute name {name[:40]!r} holds a control character")
            if isinstance(item, str) and "\x00" in item:  # free text may hold newlines, never NUL
                raise ValueError(f"attribute {name[:40]!r} holds a NUL character")
        return value


# Events inside an inline deal belong to that deal, so they do not repeat deal_id; the stored-event
# schemas below are the same with the deal named.
class InlineStageChange(_Timed):
    stage: NonEmptyStr
    changed_at: UtcTime
    event_id: EventId | None = None


class InlineActivity(_Timed):
    type: ActivityType
    occurred_at: UtcTime
    direction: Direction | None = None
    event_id: EventId | None = None


class InlineFieldChange(_Timed):
    field: ChangeableField
    value: str = Field(max_length=FIELD_VALUE_LENGTH, pattern=NO_CONTROL_CHARS)
    changed_at: UtcTime
    event_id: EventId | None = None

    @field_validator("value", mode="before")
    @classmethod
    def _value_text(cls, value: Any) -> Any:
        return _field_value_text(value)


class StageChangeIn(InlineStageChange):
    deal_id: NonEmptyStr


class ActivityIn(InlineActivity):
    deal_id: NonEmptyStr


class FieldChangeIn(InlineFieldChange):
    deal_id: NonEmptyStr


class DealWithHistoryIn(DealIn):
    """A deal and its whole history, for inline scoring."""

    stage_changes: list[InlineStageChange] = Field(default_factory=list, max_length=MAX_EVENTS_PER_LIST)
    activities: list[InlineActivity] = Field(default_factory=list, max_length=MAX_EVENTS_PER_LIST)
    field_changes: list[InlineFieldChange] = Field(default_factory=list, max_length=MAX_EVENTS_PER_LIST)


class ScoreRequest(_Timed):
    """Deals to score with their histories, as of one time (default: now)."""

    as_of: UtcTime | None = None
    deals: list[DealWithHistoryIn] = Field(min_length=1, max_length=MAX_BATCH_DEALS)


class DealsIn(_Strict):
    deals: list[DealIn] = Field(min_length=1, max_length=MAX_BATCH_DEALS)


class EventsIn(_Strict):
    stage_changes: list[StageChangeIn] = Field(default_factory=list, max_length=MAX_WRITE_EVENTS)
    activities: list[ActivityIn] = Field(default_factory=list, max_length=MAX_WRITE_EVENTS)
    field_changes: list[FieldChangeIn] = Field(default_factory=list, max_length=MAX_WRITE_EVENTS)


class Problem(BaseModel):
    """One bad item or field: where (`deals[3].amount`, `query.as_of`) and what is wrong."""

    loc: str
    msg: str
    type: str | None = None
    input: Any = None
    status: int | None = Field(default=None, description="per-item status, e.g. 404 for an unseen deal")


class ErrorBody(BaseModel):
    """Every 4xx and 503 answer: what is wrong in words, and for bad input each problem located."""

    detail: str
    problems: list[Problem] | None = None


class LiveScorerStatus(BaseModel):
    """Whether what keeps the live scores runs (`/readyz`)."""

    mode: str = Field(description="process (a child process of the service) or thread")
    running: bool
    pid: int | None = Field(default=None, description="the scorer process's id while it runs")
    restarts: int = Field(default=0, description="times the scorer process was started again after it died")
    last_exit: str | None = Field(default=None, description="how the scorer process last ended, if it did")


class Readiness(BaseModel):
    """`/readyz`: ready, degraded (serving, but something failed since) or not ready (with reasons)."""

    status: str = Field(description="ready, degraded or not ready")
    model_version: str | None
    reasons: list[str]
    warnings: list[str] = Field(default_factory=list)
    last_reload_error: str | None = None
    last_population_error: str | None = None
    live_scorer: LiveScorerStatus | None = Field(
        default=None, description="the live scorer's state; absent when live scores are off"
    )


class Reason(BaseModel):
    feature: str
    value: Any = None
    effect: float
    text: str


class DealScore(BaseModel):
    deal_id: str
    as_of: datetime
    outcome: str = Field(
        "open", description="the outcome as of as_of: open (scored), won or lost (known, not predicted)"
    )
    cold_risk: float | None = Field(description="P(goes cold); null for a deal already won or lost")
    close_probability: float = Field(description="P(eventually won); 1.0 / 0.0 for a deal already won / lost")
    close_probability_90d: float | None = Field(
        None, description="P(won within 90 days after as_of); null when the model has no timing head"
    )
    slip_risk: float | None = Field(
        None, description="P(still open at its expected close date); null without one or when it is past"
    )
    likely_close_date: date | None = Field(
        None, description="the date by which P(won or lost) reaches 0.5; null when past two years"
    )
    risk_band: str | None = Field(description="high, medium or low; null for a deal already won or lost")
    expected_value: float
    reasons: list[Reason] = Field(description="what raises the cold risk, strongest first")
    counter_reasons: list[Reason] = Field(
        default_factory=list, description="what lowers the cold risk, strongest first"
    )
    pipeline: str | None = None
    stage: str | None = None


class ItemError(BaseModel):
    """A per-item failure inside a batch (`index` into the request's list)."""

    index: int
    deal_id: str | None = None
    status: int
    detail: str


class DealScores(BaseModel):
    model_version: str
    data_note: str | None = Field(
        None, description="how much history the model was trained on, in plain words (thin data says so)"
    )
    as_of: datetime
    scores: list[DealScore]
    errors: list[ItemError] = Field(default_factory=list)


class WriteResult(BaseModel):
    """Outcome of an idempotent write: rows new to the store and rows already there."""

    inserted: int
    duplicates: int
    updated: int = 0


class StageChangeOut(BaseModel):
    stage: str
    changed_at: datetime
    event_id: str | None = None


class ActivityOut(BaseModel):
    type: str
    occurred_at: datetime
    direction: str | None = None
    event_id: str | None = None


class FieldChangeOut(BaseModel):
    field: str
    value: str | None = Field(description="the new value; null for an expected close date cleared")
    changed_at: datetime
    event_id: str | None = None


class DealOut(BaseModel):
    deal_id: str
    pipeline: str
    owner: str
    amount: float
    created_at: datetime
    team: str | None = None
    account: str | None = None
    expected_close_date: datetime | None = None
    currency: str | None = None
    attributes: dict[str, Any] = Field(default_factory=dict)
    stage_changes: list[StageChangeOut] = Field(default_factory=list)
    activities: list[ActivityOut] = Field(default_factory=list)
    field_changes: list[FieldChangeOut] = Field(default_factory=list)


class ModelInfo(BaseModel):
    model_version: str
    model_uri: str
    loaded_at: datetime
    trained_at: str | None = None
    horizon_days: float | None = None
    metrics: dict[str, Any] = Field(default_factory=dict)
    served: dict[str, str] = Field(default_factory=dict, description="head -> the model it serves")
    metrics_by_model: dict[str, Any] = Field(
        default_factory=dict, description="head -> model (served and baselines) -> test-window metric")
    calibration: dict[str, Any] = Field(
        default_factory=dict, description="head -> [{predicted, observed, count}] on the test window")
    metadata: dict[str, Any] = Field(default_factory=dict)


class PipelineSpecIn(_Strict):
    """A pipeline's authoritative spec: open stages in order, won and lost stages, stale thresholds."""

    stages: list[NonEmptyStr] = Field(min_length=1, max_length=200)
    won: list[NonEmptyStr] = Field(default_factory=list, max_length=50)
    lost: list[NonEmptyStr] = Field(default_factory=list, max_length=50)
    stale_after_days: dict[str, Annotated[float, Field(ge=0, allow_inf_nan=False)]] = Field(
        default_factory=dict
    )

    @model_validator(mode="after")
    def _distinct_stages(self) -> PipelineSpecIn:
        named = [*self.stages, *self.won, *self.lost]
        repeated = sorted({s for s in named if named.count(s) > 1})
        if repeated:
            raise ValueError(f"a stage may appear once across stages, won and lost: {repeated}")
        unknown = sorted(set(self.stale_after_days) - set(self.stages))
        if unknown:
            raise ValueError(f"stale_after_days names stages that are not open stages: {unknown}")
        return self


class PipelineOut(BaseModel):
    """A pipeline's spec; `inferred` is true while it was inferred from the data (not given)."""

    name: str
    stages: list[str]
    won: list[str]
    lost: list[str]
    stale_after_days: dict[str, float]
    inferred: bool = False


class PipelineList(BaseModel):
    pipelines: list[PipelineOut]


class AtRiskDeal(BaseModel):
    rank: int
    deal_id: str
    pipeline: str
    owner: str | None
    team: str | None
    stage: str | None
    amount: float
    expected_close_date: datetime | None
    days_in_stage: float | None
    cold_risk: float
    close_probability: float
    close_probability_90d: float | None = None
    slip_risk: float | None = None
    likely_close_date: date | None = None
    risk_band: str
    expected_value: float
    value_at_risk: float = Field(description="amount × close_probability × cold_risk (docs/scores.md)")
    stage_limit_days: float | None = Field(None, description="the stage's stalled threshold in days")
    reasons: list[Reason]
    counter_reasons: list[Reason] = Field(default_factory=list)
    model_version: str | None = Field(default=None, description="the model version that made this score")
    scored_at: datetime | None = Field(default=None, description="the time the score is as of")
    score_pending: bool = Field(
        default=False, description="the deal changed after this live score; a new one is being computed"
    )


class AtRiskList(BaseModel):
    pipeline: str
    as_of: datetime
    model_version: str
    data_note: str | None = Field(None, description="how much history the model was trained on")
    total: int = Field(description="open deals matching the filters, before limit/offset")
    limit: int
    offset: int
    deals: list[AtRiskDeal]


class ChallengerIn(_Strict):
    """Names a registered version of the model as the shadow challenger."""

    model_version: str = Field(
        min_length=1, max_length=20, pattern=r"^[0-9]+$",
        description="a registered version number of the model deal-risk, e.g. \"3\"",
    )


class ChallengerOut(BaseModel):
    """The shadow challenger: which version, who named it and when, and whether it is loaded."""

    model_version: str
    set_at: str
    set_by: str | None = None
    loaded: bool
    load_error: str | None = None
