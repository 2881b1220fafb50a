"""The one scoring path: history + points -> features -> both heads, bands and reasons.

Batch scoring, the CLI and the service all call `score_points`, so a deal scored any of those ways as
of the same time gets the same numbers.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from features.build import FeatureBuilder
from features.history import DealHistory, to_utc_timestamp
from features.stages import deal_states_at
from features.timeindex import (
    NAT_NS,
    column,
    frame_of,
    from_ns,
    object_values,
    string_array,
    text_values,
    to_ns,
)

if TYPE_CHECKING:
    from models.bundle import ScoringBundle

CONTEXT_OUTPUT_COLUMNS = ["pipeline", "owner", "team", "stage", "amount", "expected_close_date"]
# What a deal's outcome as of a point makes known: P(eventually won) of a deal won or lost by then. Its
# timing scores, cold risk, band and reasons have nothing left to predict and are left empty.
KNOWN_CLOSE_PROBABILITY = {"won": 1.0, "lost": 0.0}
# the scores a model predicts, empty for a point whose outcome is already known (or a deal not created yet)
PREDICTED_ONLY = ("cold_risk", "close_probability_90d", "slip_risk")


def open_deal_points(history: DealHistory, as_of: Any) -> pd.DataFrame:
    """`deal_id, as_of` for every deal created at or before `as_of` and not closed by then.

    A deal's state is `features.stages.deal_states_at` (a deal that reopened after a close is open again).
    """
    t = to_utc_timestamp(as_of)
    ids = history.deals["deal_id"].astype("string").reset_index(drop=True)
    # tz given explicitly: with no deals there is no value to carry it (an empty pipeline answered 500)
    as_of_col = pd.Series(pd.DatetimeIndex([t] * len(ids), tz="UTC").as_unit("ns"))
    points = pd.DataFrame({"deal_id": ids, "as_of": as_of_col})
    return points[deal_states_at(history, points) == "open"].reset_index(drop=True)


def points_at(deal_ids: Sequence[str], as_of: pd.Timestamp) -> pd.DataFrame:
    """Points (`deal_id`, `as_of`) of the given deals, all as of one UTC time."""
    ns = pd.Timestamp(as_of).as_unit("ns").value
    return frame_of({"deal_id": string_array(list(deal_ids)), "as_of": from_ns(np.full(len(deal_ids), ns))},
                    pd.RangeIndex(len(deal_ids)))


def point_features(history: DealHistory, points: pd.DataFrame, builder: FeatureBuilder) -> pd.DataFrame:
    """The feature frame of `points` (deal_id, as_of) from a fitted `builder`, reading only the points'
    own deals' events."""
    return builder.transform(_points_history(history, points), points)


def _points_history(history: DealHistory, points: pd.DataFrame) -> DealHistory:
    """The history of the points' own deals when they are less than half of it, else all of it."""
    if len(history.deals) < 2:
        return history  # no subset is less than half of one deal
    ids = pd.unique(text_values(column(points, "deal_id")))
    if len(ids) < len(history.deals) // 2:
        # Feature building indexes every event of the history it is given; scoring the open deals of a
        # large history otherwise spends most of its time on closed deals' events (0.73 s -> 0.12 s for
        # 1,720 of 20,000 deals). A deal's own features only read its own rows, so this is exact.
        return history.subset(ids)
    return history


def score_points(
    bundle: ScoringBundle,
    history: DealHistory,
    points: pd.DataFrame,
    builder: FeatureBuilder,
    top_reasons: int = 3,
    with_curves: bool = False,
) -> pd.DataFrame:
    """Features for `points` (deal_id, as_of) as of each point from a fitted `builder`, then `bundle.score`
    (with the `timing_curve` column when `with_curves`: what the live forecast reads back).

    The builder's population statistics are whatever it was fitted on (the service and the CLI fit it on
    the whole store), never on the possibly partial `history` given here.

    Output: the score columns (`models.bundle.SCORE_COLUMNS`) plus the context as of each point:
    pipeline, owner, team, stage, amount, expected_close_date, and outcome (open/won/lost/not_created)
    when the feature builder gives it.
    """
    columns = score_point_columns(bundle, history, points, builder, top_reasons, with_curves)
    return scores_frame(bundle, columns, len(points))


def scores_frame(bundle: ScoringBundle, columns: dict[str, Any], n: int) -> pd.DataFrame:
    """`score_points`' frame of its columns (`score_point_columns`' answer for `n` points)."""
    return frame_of(columns, pd.RangeIndex(n), objects=bundle.OBJECT_COLUMNS)


def score_point_columns(
    bundle: ScoringBundle,
    history: DealHistory,
    points: pd.DataFrame,
    builder: FeatureBuilder,
    top_reasons: int = 3,
    with_curves: bool = False,
) -> dict[str, Any]:
    """`score_points`' columns by name, as arrays of one item per point, before they are framed: what a
    reader that takes them apart again at once (the service's one-deal answers) reads, without the frame
    (building it cost more than reading one deal's answer off it)."""
    # the feature columns as arrays, never framed: the scores read them and the context columns join
    # the scores' columns as they are (building the feature frame and taking it apart again cost more
    # than one deal's features)
    features = builder.transform_arrays(_points_history(history, points), points)
    columns = bundle.score_columns(features, top_reasons=top_reasons, with_curves=with_curves)
    for c in [*CONTEXT_OUTPUT_COLUMNS, "outcome"]:
        if c in features:
            columns[c] = features[c]
    if "outcome" in columns:
        settle_known_outcomes(columns)
    return columns


def settle_known_outcomes(columns: dict[str, Any]) -> None:
    """In place: points whose deal is won or lost as of their time (and not reopened since) say so
    instead of a prediction: close_probability 1.0 (won) or 0.0 (lost), expected_value the amount or 0,
    and no cold risk, timing scores, band nor reasons. A point before its deal was created
    ('not_created') gets no scores at all: there was no deal to score. Open points are left as scored."""
    outcome = np.asarray(text_values(column(columns, "outcome")), dtype=object)
    known = np.isin(outcome, list(KNOWN_CLOSE_PROBABILITY))
    settled = known | (outcome == "not_created")
    if not settled.any():
        return
    close = np.array(columns["close_probability"], dtype=np.float64)
    close[settled] = np.nan
    for name, p in KNOWN_CLOSE_PROBABILITY.items():
        close[outcome == name] = p
    columns["close_probability"] = close
    value = np.array(columns["expected_value"], dtype=np.float64)
    amount = np.asarray(columns["amount"], dtype=np.float64) if "amount" in columns else np.nan
    columns["expected_value"] = np.where(settled, amount * close, value)
    for name in PREDICTED_ONLY:
        scores = np.array(columns[name], dtype=np.float64)
        scores[settled] = np.nan
        columns[name] = scores
    likely = to_ns(columns["likely_close_date"])
    likely[settled] = NAT_NS
    columns["likely_close_date"] = from_ns(likely)
    band = np.asarray(object_values(columns["risk_band"]), dtype=object).copy()
    band[settled] = None
    columns["risk_band"] = string_array(band, columns["risk_band"].dtype)
    for name in ("reasons", "counter_reasons", "timing_curve"):
        if name in columns:
            items = np.array(columns[name], dtype=object)
            for i in np.flatnonzero(settled):
                items[i] = None if name == "timing_curve" else []
            columns[name] = items
