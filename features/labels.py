"""The training labels, exactly as SPEC defines them, censoring included (training builds snapshots with
them; the service and the monitor judge stored scores with the same definitions).

Both take `points` (`deal_id`, `as_of`) and return one float per point (1.0, 0.0 or NaN for censored),
aligned with `points.index`. `end` is the end of the observable data: events after it are treated as
not yet happened, which is how the time split keeps a training label from peeking past its window.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from features.history import DealHistory, to_utc_timestamp
from features.stages import first_stages, stage_outcomes, stage_positions

DEFAULT_HORIZON_DAYS = 14


def _end_of(history: DealHistory, end: pd.Timestamp | str | None) -> pd.Timestamp:
    return history.end_time if end is None else to_utc_timestamp(end)


def _stage_events(history: DealHistory, end: pd.Timestamp) -> pd.DataFrame:
    """Stage changes up to `end` with the deal's pipeline, outcome and stage position (`features.stages`:
    NaN for an unknown stage, so a move from or to one is never forward)."""
    sc = history.stage_changes
    sc = sc.loc[sc["changed_at"] <= end, ["deal_id", "stage", "changed_at"]]
    pipe = history.deals.set_index("deal_id")["pipeline"]
    sc = sc.assign(pipeline=sc["deal_id"].map(pipe).astype("string"))
    pipeline, stage = sc["pipeline"].to_numpy(dtype=object), sc["stage"].to_numpy(dtype=object)
    outcome = stage_outcomes(pipeline, stage, history.pipelines)
    sc["outcome"] = pd.Series(outcome, index=sc.index, dtype="string")
    sc["position"] = stage_positions(pipeline, stage, history.pipelines)
    return sc.sort_values(["changed_at", "deal_id"], kind="stable").reset_index(drop=True)


def _prepare_points(points: pd.DataFrame) -> pd.DataFrame:
    as_of = pd.to_datetime(points["as_of"], utc=True).astype("datetime64[ns, UTC]")
    return pd.DataFrame(
        {
            "deal_id": points["deal_id"].astype("string").reset_index(drop=True),
            "as_of": as_of.reset_index(drop=True),
            "_row": np.arange(len(points)),
        }
    )


def _first_close_after(pts: pd.DataFrame, sc: pd.DataFrame) -> pd.DataFrame:
    """Per prepared point (in `_row` order): the first close strictly after its as_of among `sc`
    (`close_at`, NaT when none, and its `outcome`)."""
    closes = sc.loc[sc["outcome"] != "open", ["deal_id", "changed_at", "outcome"]]
    return pd.merge_asof(
        pts[["deal_id", "as_of", "_row"]].sort_values("as_of", kind="stable"),
        closes.assign(close_at=closes["changed_at"]).rename(columns={"changed_at": "as_of"}),
        on="as_of",
        by="deal_id",
        direction="forward",
        allow_exact_matches=False,
    ).sort_values("_row")


def won_label(
    history: DealHistory, points: pd.DataFrame, end: pd.Timestamp | str | None = None
) -> pd.Series:
    """Close-probability label: 1 won, 0 lost, NaN when the deal is still open at `end` (censored).

    The deal's final outcome is its last stage change at or before `end`, so a deal that reopens
    and closes again is labelled by its last close.
    """
    t_end = _end_of(history, end)
    sc = _stage_events(history, t_end)
    last = sc.drop_duplicates("deal_id", keep="last").set_index("deal_id")["outcome"]
    # deals with no stage change yet map to a missing outcome: open, so censored
    outcome = points["deal_id"].astype("string").map(last).astype("string")
    won = outcome.eq("won").fillna(False).to_numpy(dtype=bool)
    lost = outcome.eq("lost").fillna(False).to_numpy(dtype=bool)
    values = np.where(won, 1.0, np.where(lost, 0.0, np.nan))
    return pd.Series(values, index=points.index, dtype="float64", name="won")


def cold_label(
    history: DealHistory,
    points: pd.DataFrame,
    horizon_days: float = DEFAULT_HORIZON_DAYS,
    end: pd.Timestamp | str | None = None,
) -> pd.Series:
    """Cold-risk label at horizon H over the window (t, t+H].

    1 when the deal has no activity and no move to a later stage in the window, or is lost in it;
    0 when it has activity or a forward move, or is won in it. The first close in the window decides
    over activity (a deal that was called and then lost is cold). When t+H is past `end` the label is
    NaN unless a close inside (t, end] already decides it: activity alone does not, since a loss could
    still follow before t+H.
    """
    t_end = _end_of(history, end)
    horizon = pd.Timedelta(days=float(horizon_days))
    pts = _prepare_points(points)
    pts["win_end"] = pts["as_of"] + horizon
    pts["obs_end"] = pts["win_end"].where(pts["win_end"] <= t_end, t_end)
    complete = (pts["win_end"] <= t_end).to_numpy()

    sc = _stage_events(history, t_end)

    # Stage position at t: the latest change at or before t, else the pipeline's first stage's.
    by_t = pts.sort_values("as_of", kind="stable")
    at_t = pd.merge_asof(
        by_t,
        sc[["deal_id", "changed_at", "position"]].assign(_seen=True).rename(columns={"changed_at": "as_of"}),
        on="as_of",
        by="deal_id",
        direction="backward",
    )
    pos_by_row = pd.Series(at_t["position"].to_numpy(), index=at_t["_row"].to_numpy()).sort_index()
    no_change = pd.Series(at_t["_seen"].isna().to_numpy(), index=at_t["_row"].to_numpy()).sort_index()
    pipe = history.deals.set_index("deal_id")["pipeline"]
    pipeline_of = pts["deal_id"].map(pipe).to_numpy(dtype=object)
    start_position = stage_positions(pipeline_of, first_stages(pipeline_of, history.pipelines),
                                     history.pipelines)
    pos_at_t = np.where(no_change.to_numpy(), start_position, pos_by_row.to_numpy())

    # First close strictly after t (and at or before the observed window end).
    first_close = _first_close_after(pts, sc)
    close_at = first_close["close_at"].reset_index(drop=True)
    in_window = (close_at.notna() & (close_at <= pts["obs_end"])).to_numpy(dtype=bool)
    close_outcome = first_close["outcome"].astype("string").fillna("").to_numpy(dtype=object)
    lost_in = in_window & (close_outcome == "lost")
    won_in = in_window & (close_outcome == "won")

    # Activity count in (t, obs_end] as a difference of per-deal running counts (exact, vectorised).
    act = history.activities
    act = act.loc[act["occurred_at"] <= t_end, ["deal_id", "occurred_at"]]
    act = act.sort_values(["deal_id", "occurred_at"], kind="stable")
    act = act.assign(n=act.groupby("deal_id", sort=False).cumcount() + 1).sort_values(
        "occurred_at", kind="stable"
    )
    act = act.rename(columns={"occurred_at": "t"})

    def count_upto(times: pd.Series) -> np.ndarray:
        left = pd.DataFrame({"deal_id": pts["deal_id"], "t": times, "_row": pts["_row"]})
        left = left.sort_values("t", kind="stable")
        merged = pd.merge_asof(left, act, on="t", by="deal_id", direction="backward")
        return merged.sort_values("_row")["n"].fillna(0).to_numpy()

    has_activity = (count_upto(pts["obs_end"]) - count_upto(pts["as_of"])) > 0

    # Forward move: any stage change in (t, obs_end] to a later stage than the one at t. Stage
    # changes per deal are few, so a join on deal_id stays small.
    moves = pts[["deal_id", "as_of", "obs_end", "_row"]].assign(pos_t=pos_at_t)
    moves = moves.merge(sc[["deal_id", "changed_at", "position"]], on="deal_id", how="inner")
    moves = moves[
        (moves["changed_at"] > moves["as_of"])
        & (moves["changed_at"] <= moves["obs_end"])
        & (moves["position"] > moves["pos_t"])
    ]
    forward = np.zeros(len(pts), dtype=bool)
    forward[moves["_row"].unique()] = True

    label = np.where(lost_in, 1.0, np.where(won_in, 0.0, np.nan))
    undecided = ~in_window
    active = has_activity | forward
    label = np.where(undecided & complete & active, 0.0, label)
    label = np.where(undecided & complete & ~active, 1.0, label)
    return pd.Series(label, index=points.index, dtype="float64", name="cold")


def close_event(
    history: DealHistory, points: pd.DataFrame, end: pd.Timestamp | str | None = None
) -> pd.DataFrame:
    """When and how each point's deal next closes: the time-to-event label of the timing model.

    One row per point (aligned with `points.index`): `event` is "won" or "lost" for the first close
    strictly after `as_of` and at or before `end`, else <NA> (still open at `end`: censored);
    `event_days` is the days from `as_of` to that close (NaN when censored); `observed_days` is the days
    from `as_of` to `end`, how long the deal was watched. A censored point is information (the deal
    stayed open that long), never dropped and never counted as lost.
    """
    t_end = _end_of(history, end)
    pts = _prepare_points(points)
    first_close = _first_close_after(pts, _stage_events(history, t_end))
    close_at = first_close["close_at"].reset_index(drop=True)
    day = pd.Timedelta(days=1)
    event_days = ((close_at - pts["as_of"]).dt.total_seconds() / day.total_seconds()).to_numpy(
        dtype="float64", na_value=np.nan
    )
    event = first_close["outcome"].astype("string").reset_index(drop=True)
    event = event.mask(close_at.isna())
    observed = ((t_end - pts["as_of"]).dt.total_seconds() / day.total_seconds()).to_numpy(dtype="float64")
    return pd.DataFrame(
        {"event": event.to_numpy(), "event_days": event_days, "observed_days": observed},
        index=points.index,
    ).astype({"event": "string"})


def won_within_label(
    history: DealHistory, points: pd.DataFrame, days: float = 90, end: pd.Timestamp | str | None = None
) -> pd.Series:
    """`close_probability_90d` label: 1 won within `days` after as_of, 0 when it closed otherwise in that
    time (lost, or won later) or was watched open through it, NaN when the data ends first (censored)."""
    ev = close_event(history, points, end)
    closed_in = ev["event_days"].to_numpy() <= days
    won_in = closed_in & (ev["event"] == "won").fillna(False).to_numpy(dtype=bool)
    decided = closed_in | (ev["observed_days"].to_numpy() >= days) | ev["event"].notna().to_numpy(dtype=bool)
    values = np.where(won_in, 1.0, np.where(decided, 0.0, np.nan))
    return pd.Series(values, index=points.index, dtype="float64", name=f"won_{days:g}d")


def slip_label(
    history: DealHistory,
    points: pd.DataFrame,
    days_to_close: pd.Series | np.ndarray,
    end: pd.Timestamp | str | None = None,
) -> pd.Series:
    """`slip_risk` label: 1 still open at the expected close date (`days_to_close` days after as_of),
    0 closed (won or lost) before it; NaN when there is no date in the future of as_of, or the data ends
    before the date with the deal still open (censored)."""
    ev = close_event(history, points, end)
    d = np.asarray(days_to_close, dtype=np.float64)
    valid = np.isfinite(d) & (d > 0)
    closed_before = ev["event_days"].to_numpy() <= d
    watched = ev["observed_days"].to_numpy() >= d
    values = np.where(closed_before, 0.0, np.where(watched, 1.0, np.nan))
    values = np.where(valid, values, np.nan)
    return pd.Series(values, index=points.index, dtype="float64", name="slipped")
