"""Training snapshots (each open deal observed at several times) and the time split.

A snapshot is a point (`deal_id`, `as_of`): features are built as of it and labels look after it.
The time split keeps every label inside its own window: training labels are computed as if the data
ended at the training window's end, calibration labels as if it ended at the calibration window's end.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from features.history import DealHistory, to_utc_timestamp
from features.labels import close_event, cold_label, won_label
from features.stages import deal_states_at, stage_outcomes

WINDOWS = ("train", "calibration", "test")


def make_snapshots(
    history: DealHistory,
    cadence_days: float = 7,
    at_events: bool = False,
    start: pd.Timestamp | str | None = None,
    end: pd.Timestamp | str | None = None,
) -> pd.DataFrame:
    """Every deal open at each cadence time in [start, end]; optionally also at its events.

    The grid is anchored at `end` (default: the end of the data) and steps back by `cadence_days`, so the
    latest snapshot is always at the end. Returns `deal_id`, `as_of` sorted by (as_of, deal_id).
    """
    t_end = history.end_time if end is None else to_utc_timestamp(end)
    deals = history.deals
    t_start = deals["created_at"].min() if start is None else to_utc_timestamp(start)
    step = pd.Timedelta(days=float(cadence_days))
    n_steps = int((t_end - t_start) // step)
    grid_first = t_end - n_steps * step

    # Upper bound of a deal's open life: its last stage change if that closes it, else the end.
    # Cross each deal only with the grid times in [created_at, upper]; reopens are handled by the
    # exact open-at filter afterwards.
    sc = history.stage_changes
    pipe = deals.set_index("deal_id")["pipeline"]
    last = sc.drop_duplicates("deal_id", keep="last").set_index("deal_id")
    last_outcome = stage_outcomes(last.index.to_series().map(pipe).to_numpy(dtype=object),
                                  last["stage"].to_numpy(dtype=object), history.pipelines)
    last_close = last["changed_at"].where(last_outcome != "open")
    upper = deals["deal_id"].map(last_close).fillna(t_end)
    upper = upper.where(upper <= t_end, t_end)
    step_ns = step.value
    k0 = np.ceil(((deals["created_at"] - grid_first).dt.total_seconds().to_numpy() * 1e9) / step_ns)
    k1 = np.floor(((upper - grid_first).dt.total_seconds().to_numpy() * 1e9) / step_ns)
    k0 = np.maximum(k0, 0)
    k1 = np.minimum(k1, n_steps)
    counts = np.clip(k1 - k0 + 1, 0, None).astype(np.int64)
    ids = np.repeat(deals["deal_id"].to_numpy(dtype=object), counts)
    offsets = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
    k = np.repeat(k0.astype(np.int64), counts) + offsets
    as_of = pd.Series(grid_first + pd.to_timedelta(k * step_ns, unit="ns")).astype("datetime64[ns, UTC]")
    points = pd.DataFrame({"deal_id": pd.Series(ids, dtype="string"), "as_of": as_of})

    if at_events:
        ev = pd.concat(
            [
                sc[["deal_id", "changed_at"]].rename(columns={"changed_at": "as_of"}),
                history.activities[["deal_id", "occurred_at"]].rename(columns={"occurred_at": "as_of"}),
            ],
            ignore_index=True,
        )
        ev = ev[(ev["as_of"] >= t_start) & (ev["as_of"] <= t_end)]
        points = pd.concat([points, ev.astype({"deal_id": "string"})], ignore_index=True)

    points = points.drop_duplicates().reset_index(drop=True)
    points = points[deal_states_at(history, points) == "open"]
    return points.sort_values(["as_of", "deal_id"], kind="stable").reset_index(drop=True)


@dataclass(frozen=True)
class TimeSplit:
    """Window boundaries on `as_of`: train ≤ train_end < calibration ≤ calibration_end < test ≤ end."""

    train_end: pd.Timestamp
    calibration_end: pd.Timestamp
    end: pd.Timestamp

    def window_of(self, as_of: pd.Series) -> pd.Series:
        """'train', 'calibration' or 'test' for each time (None after `end`)."""
        out = pd.Series(None, index=as_of.index, dtype="object")
        out[as_of <= self.end] = "test"
        out[as_of <= self.calibration_end] = "calibration"
        out[as_of <= self.train_end] = "train"
        return out

    def label_end(self, window: str) -> pd.Timestamp:
        """The end of observable data for a window's labels."""
        return {"train": self.train_end, "calibration": self.calibration_end, "test": self.end}[window]

    def to_dict(self) -> dict[str, str]:
        return {
            "train_end": self.train_end.isoformat(),
            "calibration_end": self.calibration_end.isoformat(),
            "end": self.end.isoformat(),
        }


def make_time_split(
    end: pd.Timestamp,
    start: pd.Timestamp,
    test_days: float = 90,
    calibration_days: float = 60,
    min_train_fraction: float = 0.5,
) -> TimeSplit:
    """Test window last, calibration before it, training before that.

    When the history is too short for the requested windows, they shrink proportionally so training
    keeps at least `min_train_fraction` of the span.
    """
    span = end - start
    test = pd.Timedelta(days=float(test_days))
    cal = pd.Timedelta(days=float(calibration_days))
    budget = span * (1 - min_train_fraction)
    if test + cal > budget:
        scale = budget / (test + cal)
        test, cal = test * scale, cal * scale
    return TimeSplit(train_end=end - test - cal, calibration_end=end - test, end=end)


def time_split(
    history: DealHistory,
    points: pd.DataFrame,
    split: TimeSplit,
    horizon_days: float = 14,
) -> pd.DataFrame:
    """Assign each point its window and both labels, each censored at its window's end.

    Returns `points` with `window`, `cold` and `won` columns (NaN where censored) and the timing label
    `event`, `event_days`, `observed_days` (see `features.labels.close_event`); no label uses an event
    after the end of the point's own window.
    """
    out = points.copy()
    out["window"] = split.window_of(out["as_of"])
    out["cold"] = np.nan
    out["won"] = np.nan
    out["event"] = pd.Series(pd.NA, index=out.index, dtype="string")
    out["event_days"] = np.nan
    out["observed_days"] = np.nan
    for window in WINDOWS:
        mask = (out["window"] == window).to_numpy(dtype=bool)
        if not mask.any():
            continue
        part = out.loc[mask, ["deal_id", "as_of"]]
        label_end = split.label_end(window)
        out.loc[mask, "cold"] = cold_label(history, part, horizon_days, end=label_end).to_numpy()
        out.loc[mask, "won"] = won_label(history, part, end=label_end).to_numpy()
        timing = close_event(history, part, end=label_end)
        for column in ("event", "event_days", "observed_days"):
            out.loc[mask, column] = timing[column].to_numpy()
    return out
