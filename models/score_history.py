"""A deal's score week by week, and what moved it between one week and the next.

Points are weekly, counted back from `until` (until, until − 7 days, ...) down to `since` and never before
the deal was created; only points where the deal was open are scored (a closed deal has no risk to
show). Each point is scored as of its own time through the one scoring path (`models.scoring
.score_points`), so a point equals what the at-risk list said that day.

`changes` at a point are the features whose contribution to the cold-risk head moved most since the
previous point: `effect` is the change of that contribution (log-odds; positive = pushed the risk up),
`text` the reason's sentence at this point. The first point has nothing to compare with: no changes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pandas as pd

from features.build import FeatureBuilder
from features.history import DealHistory, to_utc_timestamp
from features.jsonable import jsonable
from features.stages import deal_states_at
from models.scoring import score_points

if TYPE_CHECKING:
    from models.bundle import ScoringBundle

STEP_DAYS = 7
MAX_POINTS = 160  # three years of weeks
TOP_CHANGES = 3
# Contribution moves smaller than this (log-odds) are noise, not news.
MIN_CHANGE = 0.01
ALL_REASONS = 10_000  # ReasonWriter.explain clamps this to the number of features: every contribution


class TooManyPointsError(ValueError):
    """The window holds more weekly points than `MAX_POINTS`."""


def weekly_times(created_at: pd.Timestamp, since: pd.Timestamp, until: pd.Timestamp) -> pd.DatetimeIndex:
    """until, until − 7 d, ... down to max(since, created_at), in ascending order."""
    start = max(since, created_at)
    if start > until:
        return pd.DatetimeIndex([], tz="UTC")
    count = int((until - start) / pd.Timedelta(days=STEP_DAYS)) + 1
    if count > MAX_POINTS:
        raise TooManyPointsError(f"the window holds {count} weekly points; at most {MAX_POINTS}")
    return pd.DatetimeIndex([until - pd.Timedelta(days=STEP_DAYS * k) for k in range(count)][::-1])


def _changes(previous: dict[str, dict[str, Any]], current: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    moves: list[dict[str, Any]] = []
    for feature in set(previous) | set(current):
        before = float(previous.get(feature, {}).get("effect", 0.0))
        now = current.get(feature) or previous[feature]
        delta = float(current.get(feature, {}).get("effect", 0.0)) - before
        if abs(delta) >= MIN_CHANGE:
            moves.append({"feature": feature, "text": str(now.get("text", "")), "effect": round(delta, 4)})
    moves.sort(key=lambda m: (-abs(float(m["effect"])), str(m["feature"])))
    return moves[:TOP_CHANGES]


def score_history(
    bundle: ScoringBundle,
    history: DealHistory,
    deal_id: str,
    since: pd.Timestamp | str,
    until: pd.Timestamp | str,
    builder: FeatureBuilder,
) -> list[dict[str, Any]]:
    """Weekly `{as_of, cold_risk, close_probability, risk_band, stage, changes}` for one deal, oldest first.

    Raises KeyError when the deal is not in `history`, TooManyPointsError for a window too long.
    """
    deal = history.subset([deal_id])
    if deal.deals.empty:
        raise KeyError(deal_id)
    created = to_utc_timestamp(deal.deals["created_at"].iloc[0])
    times = weekly_times(created, to_utc_timestamp(since), to_utc_timestamp(until))
    points = pd.DataFrame({"deal_id": pd.array([deal_id] * len(times), dtype="string"),
                           "as_of": pd.Series(times.as_unit("ns"), dtype="datetime64[ns, UTC]")})
    points = points[deal_states_at(deal, points) == "open"].reset_index(drop=True)
    if points.empty:
        return []
    scored = score_points(bundle, deal, points, builder, top_reasons=ALL_REASONS)
    out: list[dict[str, Any]] = []
    previous: dict[str, dict[str, Any]] | None = None
    for row in scored.to_dict("records"):  # one row per week of one deal: at most MAX_POINTS
        # Every contribution, raising (reasons) or lowering (counter_reasons) the risk.
        every = [*(row["reasons"] or []), *(row.get("counter_reasons") or [])]
        current = {str(r["feature"]): r for r in every}
        out.append({
            "as_of": jsonable(row["as_of"]),
            "cold_risk": float(row["cold_risk"]),
            "close_probability": float(row["close_probability"]),
            "risk_band": str(row["risk_band"]),
            "stage": jsonable(row.get("stage")),
            "changes": [] if previous is None else _changes(previous, current),
        })
        previous = current
    return out

