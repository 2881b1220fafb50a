"""The one scoring path: history + points -> features -> both heads, bands and reasons.

Batch scoring, the CLI and the service all call `score_points`, so a deal scored any of those ways as
of the same time gets the same numbers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pandas as pd

from features.history import DealHistory, stage_outcome, to_utc_timestamp

if TYPE_CHECKING:
    from models.bundle import ScoringBundle

CONTEXT_OUTPUT_COLUMNS = ["pipeline", "owner", "team", "stage", "amount", "expected_close_date"]


def open_deal_points(history: DealHistory, as_of: Any) -> pd.DataFrame:
    """`deal_id, as_of` for every deal created at or before `as_of` and not closed by then.

    A deal's state at t is its latest stage change at or before t (a deal with none is open); a deal that
    reopened after a close counts as open again, as SPEC says.
    """
    t = to_utc_timestamp(as_of)
    deals = history.deals.loc[history.deals["created_at"] <= t, ["deal_id", "pipeline"]]
    changes = history.stage_changes
    seen = changes.loc[changes["changed_at"] <= t, ["deal_id", "stage", "changed_at"]]
    # event frames are sorted by (deal_id, time): the last row per deal is its stage as of t
    latest = seen.drop_duplicates("deal_id", keep="last").merge(deals, on="deal_id", how="inner")
    outcome = stage_outcome(latest["stage"], latest["pipeline"], history.pipelines)
    closed = pd.Index(latest.loc[(outcome != "open").to_numpy(), "deal_id"])
    ids = deals.loc[~deals["deal_id"].isin(closed), "deal_id"].astype("string").reset_index(drop=True)
    as_of_col = pd.Series(pd.DatetimeIndex([t] * len(ids)).as_unit("ns"), dtype="datetime64[ns, UTC]")
    return pd.DataFrame({"deal_id": ids, "as_of": as_of_col})


def point_features(history: DealHistory, points: pd.DataFrame, population: Any | None = None) -> pd.DataFrame:
    """The feature frame for `points` (deal_id, as_of), population statistics from the whole history."""
    from features.build import build_features
    from features.population import compute_population

    if population is None:
        # population statistics always come from the whole history, whichever deals are scored
        population = compute_population(history)
    ids = pd.unique(points["deal_id"].astype("string"))
    if len(ids) < len(history.deals) // 2:
        # Feature building indexes every event of the history it is given; scoring the open deals of a
        # large history otherwise spends most of its time on closed deals' events (0.73 s -> 0.12 s for
        # 1,720 of 20,000 deals). A deal's own features only read its own rows, so this is exact.
        history = history.subset(ids)
    return build_features(history, points, population=population)


def score_points(
    bundle: ScoringBundle,
    history: DealHistory,
    points: pd.DataFrame,
    population: Any | None = None,
    top_reasons: int = 3,
) -> pd.DataFrame:
    """Features for `points` (deal_id, as_of) as of each point, then `bundle.score`.

    Output: the score columns (deal_id, as_of, cold_risk, close_probability, risk_band, expected_value,
    reasons) plus the context as of each point: pipeline, owner, team, stage, amount,
    expected_close_date, and outcome (open/won/lost/not_created) when the feature builder gives it.
    """
    features = point_features(history, points, population)
    scores = bundle.score(features, top_reasons=top_reasons)
    context = [c for c in [*CONTEXT_OUTPUT_COLUMNS, "outcome"] if c in features.columns]
    return pd.concat([scores, features[context].reset_index(drop=True)], axis=1)
