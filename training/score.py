"""Batch scoring: every open deal as of a time, or a given list of (deal_id, as_of) points."""

from __future__ import annotations

from typing import Any

import pandas as pd

from features.build import FeatureBuilder
from features.history import DealHistory
from models.bundle import SCORE_COLUMNS
from models.scoring import open_deal_points, score_points

# The bundle's score columns, with the reasons list flattened into reason_1..N text columns.
OUTPUT_COLUMNS = [c for c in SCORE_COLUMNS if c not in ("reasons", "counter_reasons")] + ["model_version"]
N_REASONS = 3


def read_points(path: str) -> pd.DataFrame:
    """A POINTS file (CSV or Parquet) with `deal_id,as_of`; times parsed as UTC."""
    frame = pd.read_parquet(path) if path.endswith(".parquet") else pd.read_csv(path, dtype=str)
    missing = [c for c in ("deal_id", "as_of") if c not in frame.columns]
    if missing:
        raise ValueError(f"{path}: missing column(s) {missing}; the file needs 'deal_id' and 'as_of'")
    as_of = pd.to_datetime(frame["as_of"], utc=True, errors="coerce", format="ISO8601")
    bad = as_of.isna()
    if bad.any():
        row = int(bad.to_numpy().nonzero()[0][0]) + 1
        raise ValueError(f"{path} row {row} column 'as_of': not a time ({frame['as_of'].iloc[row - 1]!r})")
    return pd.DataFrame(
        {"deal_id": frame["deal_id"].astype("string"), "as_of": as_of.astype("datetime64[ns, UTC]")}
    )


def score_batch(
    history: DealHistory,
    bundle: Any,
    as_of: Any = None,
    points: pd.DataFrame | None = None,
    model_version: str | None = None,
    builder: FeatureBuilder | None = None,
) -> pd.DataFrame:
    """Scores as of `as_of` for every open deal (default: the end of the data), or for `points`.

    Columns: deal_id, as_of, cold_risk, close_probability, close_probability_90d, slip_risk,
    likely_close_date, risk_band, expected_value, model_version, reason_1..reason_3 (plain-words texts)
    and the deal context (pipeline, owner, team, stage, amount,
    expected_close_date) as of each point.
    """
    if points is None:
        points = open_deal_points(history, history.end_time if as_of is None else as_of)
    unknown = ~points["deal_id"].isin(history.deals["deal_id"])
    if unknown.any():
        first = points.loc[unknown, "deal_id"].iloc[0]
        raise ValueError(f"{int(unknown.sum())} point(s) name deals not in the history (first: {first!r})")
    if builder is None:
        builder = FeatureBuilder().fit(history)
    scores = score_points(bundle, history, points.reset_index(drop=True), builder)
    version = model_version or str(getattr(bundle, "metadata", {}).get("version", ""))
    out = scores.drop(columns=["reasons", "counter_reasons"]).assign(model_version=version)
    texts = [[r.get("text", "") for r in reasons[:N_REASONS]] for reasons in scores["reasons"]]
    for i in range(N_REASONS):
        out[f"reason_{i + 1}"] = [t[i] if len(t) > i else "" for t in texts]
    # what lowers the risk, in one cell (strongest first)
    out["counter_reasons"] = [" | ".join(r.get("text", "") for r in rs) for rs in scores["counter_reasons"]]
    reason_columns = [f"reason_{i + 1}" for i in range(N_REASONS)] + ["counter_reasons"]
    context = [c for c in out.columns if c not in OUTPUT_COLUMNS and c not in reason_columns]
    return out[OUTPUT_COLUMNS + reason_columns + context]


def write_scores(scores: pd.DataFrame, path: str) -> None:
    """CSV or Parquet by the file's extension."""
    if path.endswith(".parquet"):
        scores.to_parquet(path, index=False)
    else:
        scores.to_csv(path, index=False)
