"""Pipeline health over a window [since, until]: the seed metrics of every sales pipeline.

Pure functions over a `DealHistory`; the API (`GET /v1/pipelines/{p}/health`) and the CLI (`dealrisk
health`) both call `pipeline_health`. Everything is computed from the history cut at `until`, so rows dated
after `until` never change a figure.

Definitions (SPEC "Pipeline health"):
- open_deals: deals open at `until` (created at or before it, not in a won/lost stage as of it);
- avg_deal_size: mean amount of those deals, each amount as of `until` (latest `amount` field change);
- win_rate: won / (won + lost) among deals closed in [since, until]. A deal's close time is its entry into
  the closed state it is in at `until` (the first change of its final run of won/lost stages), so a deal
  that closed, reopened and is open again at `until` does not count as closed;
- avg_cycle_days: mean days from `created_at` to that close time among deals won in the window;
- sales_velocity: open_deals * avg_deal_size * win_rate / avg_cycle_days (money per day);
- funnel, per open stage of a pipeline in order: `reached` = deals that entered the stage in the window;
  of those, after their first entry in the window, `moved_on` = share whose next stage change (by `until`)
  went to a later stage or a won stage, `lost_here` = share whose next change was to a lost stage;
- stalled deals: open deals whose days in their current stage exceed the stage's threshold: its configured
  `stale_after_days`, else the 80th percentile of days spent in that stage by deals won by `until`.

Undefined figures (no closed deals, no open deals, ...) are None, never NaN, so the result is valid JSON.

The same definitions, read from the store: when the window ends at or after every event of a pipeline
(health as of now), each deal's state at `until` is its stored current state (`features.deal_state`,
which is `deal_states` as of the deal's last event). Then `health_from_current_state` takes the deals'
state columns, the window's stage changes and the stored learned limits (read by
`serving.store.Store.health_state`, SQL) instead of the history, and hands them to the functions below
(`_report`: `_scalar_figures`, `_funnel`, `_stalled`), so no figure has a second definition. The SQL
only selects rows (the deals open at `until` or closed in the window, the stage changes dated in the
window, the groups of the others), never computes a figure: means are exactly rounded sums (`math.fsum`)
over counts, which no database's SUM/AVG of floats promises, so a figure computed there could differ in
the last bits.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd

from features.history import DealHistory, PipelineSpec, to_utc_timestamp
from features.jsonable import jsonable
from features.stages import deal_states_at, order_stage_changes, stage_outcomes, stage_positions

STALE_QUANTILE = 0.8
NO_TEAM = "(no team)"
NO_OWNER = "(no owner)"
GroupBy = Literal["team", "owner"]


@dataclass(frozen=True)
class LeftOut:
    """What `pipeline_health` still needs of the deals left out of its history because the window cannot
    see them move: closed (their final run of won/lost stages began) before `since`, and no event of
    theirs after `until`. Their state at `until` is their current state, they are not open at `until`,
    did not close in the window and entered no open stage in it, so every figure but three is the same
    without them: the pipelines and groups (teams, owners as of `until`) they belong to are still listed,
    with empty figures, and the won ones still teach the stalled limits (their stage changes, in `won`).
    """

    pipelines: frozenset[str] = frozenset()
    teams: frozenset[str] = frozenset()  # NO_TEAM for a deal without one
    owners: frozenset[str] = frozenset()
    won: DealHistory | None = None  # the left-out deals won at `until`, with their stage changes


def _days(delta: pd.Series) -> pd.Series:
    """Timedeltas as float days (NaT stays NaN)."""
    return delta.dt.total_seconds() / 86400.0


def _positions(deal_ids: pd.Series, index: pd.Index) -> np.ndarray:
    """Row position of each deal_id in `index` (-1 when absent). Object hashing: fast on large frames."""
    return np.asarray(index.get_indexer(pd.Index(deal_ids.to_numpy(dtype=object), dtype=object)),
                      dtype=np.int64)


def _last_in_group(pos: np.ndarray) -> np.ndarray:
    """For rows sorted by group position: True on the last row of each group."""
    return np.r_[pos[1:] != pos[:-1], True] if len(pos) else np.zeros(0, dtype=bool)


def parse_field_values(field: str, values: pd.Series) -> pd.Series:
    """Changeable-field text as a deal's state reads it: `amount` as float64, `expected_close_date` as UTC
    times (text that does not parse is missing in both), `owner` as it is. The one conversion health, the
    stored state and its incremental form (`features.deal_state`) all use."""
    if field == "amount":
        return pd.to_numeric(values, errors="coerce").astype("float64")
    if field == "expected_close_date":
        return pd.to_datetime(values, utc=True, errors="coerce", format="ISO8601")
    return values


def _latest_field_value(history: DealHistory, field: str, as_of: pd.Timestamp, index: pd.Index) -> pd.Series:
    """Latest value of a changeable field at or before `as_of`, aligned to `index` (<NA> when none)."""
    out = pd.Series(pd.NA, index=range(len(index)), dtype="string")
    fc = history.field_changes
    if fc.empty:
        return out
    rows = fc[(fc["field"] == field) & (fc["changed_at"] <= as_of)]
    pos = _positions(rows["deal_id"], index)
    keep = pos >= 0
    pos, values = pos[keep], rows["value"].to_numpy(dtype=object)[keep]
    # lexsort is stable, so equal times keep the frame's (deal_id, time) order: the later row wins.
    order = np.lexsort((rows["changed_at"].to_numpy(dtype="datetime64[ns]")[keep], pos))
    pos, values = pos[order], values[order]
    last = _last_in_group(pos)
    out.iloc[pos[last]] = values[last]
    return out


def _stage_changes_as_of(history: DealHistory, as_of: pd.Timestamp, states: pd.DataFrame,
                         index: pd.Index) -> pd.DataFrame:
    """Stage changes at or before `as_of` of the deals in `states` (row `pos`), sorted by (deal, time),
    with pipeline, outcome and the next change's time, stage and outcome (within the same deal)."""
    sc = history.stage_changes
    sc = sc[sc["changed_at"] <= as_of]
    pos = _positions(sc["deal_id"], index)
    keep = pos >= 0
    order = np.lexsort((sc["changed_at"].to_numpy(dtype="datetime64[ns]")[keep], pos[keep]))
    picked = np.flatnonzero(keep)[order]
    out = pd.DataFrame(
        {
            "pos": pos[picked],
            "deal_id": sc["deal_id"].to_numpy(dtype=object)[picked],
            "stage": pd.Series(sc["stage"].to_numpy(dtype=object)[picked], dtype="string"),
            "changed_at": sc["changed_at"].iloc[picked].reset_index(drop=True),
        }
    )
    out["pipeline"] = pd.Series(states["pipeline"].to_numpy(dtype=object)[out["pos"].to_numpy()],
                                dtype="string")
    return _with_next_change(out, history.pipelines)


def _with_next_change(out: pd.DataFrame, specs: Mapping[str, PipelineSpec]) -> pd.DataFrame:
    """Stage changes sorted by (deal `pos`, time, same-time order) with pipeline: add each change's
    outcome and the next change's time, stage and outcome (within the same deal)."""
    outcome = stage_outcomes(out["pipeline"].to_numpy(dtype=object), out["stage"].to_numpy(dtype=object),
                             specs)
    out["outcome"] = pd.Series(outcome, dtype="string")
    pos_sorted = out["pos"].to_numpy()
    same_deal = np.zeros(len(out), dtype=bool)
    same_deal[:-1] = pos_sorted[1:] == pos_sorted[:-1]
    out["next_at"] = out["changed_at"].shift(-1).where(same_deal)
    out["next_stage"] = out["stage"].shift(-1).where(same_deal)
    out["next_outcome"] = out["outcome"].shift(-1).where(same_deal)
    return out


def _states_and_changes(history: DealHistory, t: pd.Timestamp) -> tuple[pd.DataFrame, pd.DataFrame]:
    deals = history.deals[history.deals["created_at"] <= t].reset_index(drop=True)
    n = len(deals)
    index = pd.Index(deals["deal_id"].to_numpy(dtype=object), dtype=object)
    out = pd.DataFrame(
        {
            "deal_id": deals["deal_id"].astype("string"),
            "pipeline": deals["pipeline"].astype("string"),
            "team": deals["team"].astype("string") if "team" in deals else pd.Series(pd.NA, index=range(n),
                                                                                      dtype="string"),
            "created_at": deals["created_at"],
        }
    )
    out["owner"] = _latest_field_value(history, "owner", t, index).fillna(deals["owner"].astype("string"))
    amount = parse_field_values("amount", _latest_field_value(history, "amount", t, index))
    out["amount"] = amount.fillna(deals["amount"].astype("float64"))
    ecd = parse_field_values("expected_close_date",
                             _latest_field_value(history, "expected_close_date", t, index))
    created_ecd = (pd.to_datetime(deals["expected_close_date"], utc=True) if "expected_close_date" in deals
                   else pd.Series(pd.NaT, index=range(n), dtype="datetime64[ns, UTC]"))
    out["expected_close_date"] = ecd.where(ecd.notna(), created_ecd)

    sc = _stage_changes_as_of(history, t, out, index)
    last = sc[_last_in_group(sc["pos"].to_numpy())]
    at = last["pos"].to_numpy()
    stage = pd.Series(pd.NA, index=range(n), dtype="string")
    stage.iloc[at] = pd.Series(last["stage"].to_numpy(dtype=object), dtype="string")
    out["stage"] = stage
    # Every deal here was created by t, so its state is open, won or lost.
    state = deal_states_at(history, out[["deal_id"]].assign(as_of=t))
    out["status"] = pd.Series(state, dtype="string")
    entered = out["created_at"].copy()
    entered.iloc[at] = last["changed_at"].to_numpy()
    out["stage_entered_at"] = entered
    # Close time = first change of the final run of closed stages (after the last open-stage change).
    last_open = pd.Series(pd.NaT, index=range(n), dtype=out["created_at"].dtype)
    latest_open = sc[sc["outcome"] == "open"].groupby("pos")["changed_at"].max()
    last_open.iloc[latest_open.index.to_numpy()] = latest_open.to_numpy()
    closed = sc[sc["outcome"] != "open"]
    reopened_before = last_open.iloc[closed["pos"].to_numpy()].reset_index(drop=True)
    closed = closed[~(closed["changed_at"].reset_index(drop=True) <= reopened_before).to_numpy()]
    first_close = closed.groupby("pos")["changed_at"].min()
    closed_at = pd.Series(pd.NaT, index=range(n), dtype=out["created_at"].dtype)
    closed_at.iloc[first_close.index.to_numpy()] = first_close.to_numpy()
    out["closed_at"] = closed_at.where(out["status"] != "open")
    return out, sc


def deal_states(history: DealHistory, as_of: pd.Timestamp | str) -> pd.DataFrame:
    """Each deal created at or before `as_of`, as it stood then.

    Columns: deal_id, pipeline, team, owner, amount, expected_close_date (values as of `as_of`), created_at,
    stage (<NA> when the deal has no stage change yet), stage_entered_at (its last stage change, else
    created_at), status ('open' / 'won' / 'lost'), closed_at (NaT unless closed).
    """
    return _states_and_changes(history, to_utc_timestamp(as_of))[0]


def stale_thresholds(history: DealHistory, as_of: pd.Timestamp | str) -> dict[tuple[str, str], float]:
    """Days after which a deal counts as stalled, per (pipeline, stage), as known at `as_of`.

    A stage's configured `stale_after_days` wins; otherwise the 80th percentile of the days deals won by
    `as_of` spent in that stage (each visit, from entering it to the next stage change).
    """
    return stage_limits(learned_stale_thresholds(history, as_of), history.pipelines)


def learned_stale_thresholds(history: DealHistory, as_of: pd.Timestamp | str) -> dict[tuple[str, str], float]:
    """The learned half of `stale_thresholds`: per (pipeline, stage), the 80th percentile of the days
    deals won by `as_of` spent in the stage (configured limits not applied).

    Only the stage changes of the deals won by `as_of` matter: this is `learned_from_stage_changes` of
    the history's stage changes (those of the deals created by `as_of`); the store calls it with just the
    changes of the deals that may be won (`serving.store.Store.learned_limits`).
    """
    t = to_utc_timestamp(as_of)
    deals = history.deals[history.deals["created_at"] <= t]
    pipeline_of = pd.Series(deals["pipeline"].to_numpy(dtype=object),
                            index=pd.Index(deals["deal_id"].to_numpy(dtype=object), dtype=object))
    sc = history.stage_changes
    pipeline = pipeline_of.reindex(pd.Index(sc["deal_id"].to_numpy(dtype=object), dtype=object))
    mine = pipeline.notna().to_numpy(dtype=bool)
    changes = sc[mine].assign(pipeline=pipeline.to_numpy(dtype=object)[mine])
    return learned_from_stage_changes(changes, history.pipelines, t)


def learned_from_stage_changes(changes: pd.DataFrame, specs: Mapping[str, PipelineSpec],
                               as_of: pd.Timestamp | str) -> dict[tuple[str, str], float]:
    """`learned_stale_thresholds` from stage changes alone: `changes` holds deal_id, pipeline (the deal's),
    stage, changed_at and event_id of every deal created by `as_of` that is won then, each deal with all
    its changes up to `as_of` (later ones are left out here; other deals' may be included: only the won
    deals count). A deal is won at `as_of` when its latest change by then is to a won stage (its state,
    `features.stages`); `specs` say which stages are won."""
    return limits_of_visits(won_visits(changes, specs, as_of))


def won_visits(changes: pd.DataFrame, specs: Mapping[str, PipelineSpec],
               as_of: pd.Timestamp | str) -> pd.DataFrame:
    """The visits the learned limits count (`_won_visits`), from stage changes as
    `learned_from_stage_changes` takes them. Each deal's visits depend on its own changes only, so the
    visits of deals whose changes are the same can be kept and those of others added or dropped
    (`serving.store.Store.health_state` does)."""
    t = to_utc_timestamp(as_of)
    return _won_visits(_ordered_changes(changes[(changes["changed_at"] <= t).to_numpy(dtype=bool)], specs))


def stage_limits(
    learned: Mapping[tuple[str, str], float], specs: Mapping[str, PipelineSpec]
) -> dict[tuple[str, str], float]:
    """The stalled limit per (pipeline, stage): a configured `stale_after_days` wins, else the learned one."""
    out = {key: float(v) for key, v in learned.items()}
    for name, spec in specs.items():
        for stage, limit in spec.stale_after_days.items():
            out[(name, stage)] = float(limit)
    return out


def _learned(sc: pd.DataFrame) -> dict[tuple[str, str], float]:
    """The learned stalled limits of stage changes `sc` (`_won_visits`, `limits_of_visits`)."""
    return limits_of_visits(_won_visits(sc))


def _won_visits(sc: pd.DataFrame) -> pd.DataFrame:
    """The visits the learned stalled limits count: `sc` holds `_with_next_change` rows (sorted by deal
    `pos`, then time in the same-time order) of every change up to the as-of time of each deal created by
    then that may be won. A deal whose last change is to a won stage is won then; each visit of such a
    deal to an open stage lasts from its change to the deal's next one. Columns deal_id, pipeline, stage
    and days.

    "Won then" is the deal state of `features.stages` (the outcome of its latest change, in the same-time
    order), read off these rows, already in that order, rather than asked of `deal_states_at`: that takes
    a `DealHistory` with the deals' rows, which the store's reads of won deals' stage changes do not
    hold, and sorts the changes again (1.4-3.3x the time of `won_visits`, ordering included, measured on one
    pipeline's won deals at 20,000 deals). `tests/features/test_health.py` holds the two equal."""
    pos = sc["pos"].to_numpy()
    last_won = _last_in_group(pos) & sc["outcome"].eq("won").fillna(False).to_numpy(dtype=bool)
    won = np.isin(pos, pos[last_won])
    visits = sc[won & (sc["outcome"] == "open").to_numpy(dtype=bool) & sc["next_at"].notna().to_numpy()]
    days = _days(visits["next_at"] - visits["changed_at"])
    return visits[["deal_id", "pipeline", "stage"]].assign(days=days)


def limits_of_visits(visits: pd.DataFrame) -> dict[tuple[str, str], float]:
    """The one definition of the learned stalled limits: per (pipeline, stage), the 80th percentile of the
    days of the won deals' visits (`won_visits`), in any order."""
    learned = visits["days"].groupby([visits["pipeline"], visits["stage"]]).quantile(STALE_QUANTILE)
    return {
        (str(pipe), str(stage)): float(v)
        for pipe, stage, v in zip(learned.index.get_level_values(0), learned.index.get_level_values(1),
                                  learned.to_numpy(), strict=True)
    }


def _scalar_figures(states: pd.DataFrame, key: pd.Series, since: pd.Timestamp,
                    until: pd.Timestamp) -> dict[str, dict[str, Any]]:
    """open_deals, avg_deal_size, won_deals, lost_deals, win_rate, avg_cycle_days, sales_velocity per
    value of `key` (every value present, sorted), as JSON-ready blocks.

    A mean is the exactly rounded sum (`math.fsum`) over the count, so it does not depend on the order
    the deals come in (the store's SQL path reads them in another order than a history holds them)."""
    is_open = states["status"].eq("open").fillna(False).to_numpy(dtype=bool)
    in_window = states["closed_at"].between(since, until).to_numpy(dtype=bool) & ~is_open
    won = in_window & states["status"].eq("won").fillna(False).to_numpy(dtype=bool)
    lost = in_window & states["status"].eq("lost").fillna(False).to_numpy(dtype=bool)
    cycle = _days(states["closed_at"] - states["created_at"]).to_numpy(dtype="float64")
    amount = states["amount"].to_numpy(dtype="float64", na_value=np.nan)
    codes, uniques = pd.factorize(key.to_numpy(dtype=object), sort=True)
    order = np.argsort(codes, kind="stable")
    bounds = np.searchsorted(codes[order], np.arange(len(uniques) + 1))
    out: dict[str, dict[str, Any]] = {}
    for g, name in enumerate(uniques):
        rows = order[bounds[g] : bounds[g + 1]]
        open_amounts = amount[rows[is_open[rows]]]
        open_amounts = open_amounts[~np.isnan(open_amounts)]
        won_cycles = cycle[rows[won[rows]]]
        won_cycles = won_cycles[~np.isnan(won_cycles)]
        n_open, n_won, n_lost = int(is_open[rows].sum()), int(won[rows].sum()), int(lost[rows].sum())
        avg_size = math.fsum(open_amounts) / len(open_amounts) if len(open_amounts) else None
        win_rate = n_won / (n_won + n_lost) if n_won + n_lost else None
        avg_cycle = math.fsum(won_cycles) / len(won_cycles) if len(won_cycles) else None
        velocity = None
        if win_rate is not None and avg_cycle is not None and avg_cycle > 0:
            # With no open deals the pipeline's velocity is plainly zero, not undefined.
            velocity = (n_open * avg_size * win_rate / avg_cycle if avg_size is not None
                        else 0.0 if n_open == 0 else None)
        out[str(name)] = jsonable({"open_deals": n_open, "avg_deal_size": avg_size, "won_deals": n_won,
                                   "lost_deals": n_lost, "win_rate": win_rate, "avg_cycle_days": avg_cycle,
                                   "sales_velocity": velocity})
    return out


def _funnel(specs: Mapping[str, PipelineSpec], names: Sequence[str], sc: pd.DataFrame,
            since: pd.Timestamp) -> dict[str, list[dict[str, Any]]]:
    """Per pipeline of `names`, per open stage in order: reached in the window, share moved on, share lost
    there.

    `sc` (`_with_next_change` rows) holds only changes at or before `until`, so "next change" never looks
    past it; changes before `since` may be missing from it (they are never entries)."""
    # column by column on arrays: a frame's filter and drop_duplicates copy every column of `sc`
    entry = np.flatnonzero((sc["changed_at"] >= since).to_numpy(dtype=bool)
                           & sc["outcome"].eq("open").fillna(False).to_numpy(dtype=bool))
    stage_all = sc["stage"].to_numpy(dtype=object)
    # the first entry of each (deal, stage) in the window
    repeated = pd.MultiIndex.from_arrays([sc["pos"].to_numpy()[entry], stage_all[entry]]).duplicated()
    entry = entry[~repeated]
    pipeline, entered = sc["pipeline"].to_numpy(dtype=object)[entry], stage_all[entry]
    next_stage = sc["next_stage"].to_numpy(dtype=object)[entry]
    next_is = {outcome: sc["next_outcome"].eq(outcome).fillna(False).to_numpy(dtype=bool)[entry]
               for outcome in ("open", "won", "lost")}
    pos = stage_positions(pipeline, entered, specs)
    next_pos = stage_positions(pipeline, next_stage, specs)
    # A later open stage (unknown stages have no position, NaN compares False) or a win moves a deal on.
    moved_on = next_is["won"] | (next_is["open"] & (next_pos > pos))
    lost_here = next_is["lost"]
    # (reached, moved on, lost here) per (pipeline, stage): one count per entry in the window
    counts: dict[tuple[str, str], list[int]] = {}
    for key in zip(pipeline.tolist(), entered.tolist(), moved_on.tolist(), lost_here.tolist(), strict=True):
        tally = counts.setdefault((str(key[0]), str(key[1])), [0, 0, 0])
        tally[0] += 1
        tally[1] += key[2]
        tally[2] += key[3]
    out: dict[str, list[dict[str, Any]]] = {}
    for name in names:
        found = specs.get(str(name))
        stages = list(found.stages) if found else []
        rows = []
        for stage in stages:
            reached, moved, lost = counts.get((str(name), stage), (0, 0, 0))
            rows.append(
                {
                    "stage": stage,
                    "reached": reached,
                    "moved_on": moved,
                    "lost_here": lost,
                    "moved_on_share": moved / reached if reached else None,
                    "lost_share": lost / reached if reached else None,
                }
            )
        out[str(name)] = rows
    return out


def _stalled(states: pd.DataFrame, thresholds: dict[tuple[str, str], float],
             until: pd.Timestamp) -> pd.DataFrame:
    """Open deals whose days in the current stage exceed that stage's threshold, longest-stalled first."""
    is_open = (states["status"].eq("open").fillna(False) & states["stage"].notna()).to_numpy(dtype=bool)
    pipeline, stage = states["pipeline"].to_numpy(dtype=object), states["stage"].to_numpy(dtype=object)
    limit = np.full(len(states), np.nan)  # no threshold: never stalled (NaN compares False)
    for name in pd.unique(pipeline[is_open]):  # one pipeline, usually
        mine = is_open & (pipeline == name)
        per_stage = pd.Series({s: v for (p, s), v in thresholds.items() if p == name}, dtype="float64")
        limit[mine] = per_stage.reindex(pd.Index(stage[mine], dtype=object)).to_numpy(dtype="float64")
    days = _days(until - states["stage_entered_at"]).to_numpy(dtype="float64")
    hit = np.flatnonzero(is_open & (days > limit))
    # longest-stalled first, then by deal_id (unique): ordered on arrays, then one take of the rows
    id_rank = pd.factorize(states["deal_id"].to_numpy(dtype=object)[hit], sort=True)[0]
    hit = hit[np.lexsort((id_rank, -days[hit]))]
    return states.iloc[hit].assign(threshold_days=limit[hit], days_in_stage=days[hit])


def _stalled_records(stalled: pd.DataFrame) -> list[dict[str, Any]]:
    cols = ["deal_id", "pipeline", "stage", "owner", "team", "amount", "days_in_stage", "threshold_days"]
    # column by column: pandas' object `where` and `to_dict` cost more than the few rows
    columns = [[jsonable(v) for v in stalled[c].to_numpy(dtype=object).tolist()] for c in cols]
    return [dict(zip(cols, row, strict=True)) for row in zip(*columns, strict=True)]


def pipeline_health(
    history: DealHistory,
    since: pd.Timestamp | str,
    until: pd.Timestamp | str,
    pipeline: str | Sequence[str] | None = None,
    by: GroupBy | None = None,
    left_out: LeftOut | None = None,
    stalled_limit: int | None = None,
) -> dict[str, Any]:
    """Health figures of the window [since, until] (UTC instants), overall and per pipeline (and per
    team/owner).

    Returns `{"since", "until", "overall": {...}, "pipelines": {name: {...}}}` plus `"by_team"` or
    `"by_owner"` when `by` is given; each figure block holds open_deals, avg_deal_size, won_deals,
    lost_deals, win_rate, avg_cycle_days, sales_velocity, stalled_count and stalled_deals; pipeline blocks
    also hold the funnel. Undefined figures are None.

    `left_out` describes deals left out of `history` that the window cannot see move (see `LeftOut`):
    the result is then exactly that of the history with them.
    """
    t0, t1 = _window(since, until, by)
    left_out = left_out or LeftOut()
    states, sc = _states_and_changes(history, t1)
    # Thresholds are per (pipeline, stage), so learning them before filtering changes nothing.
    learn_sc = sc
    if left_out.won is not None and len(left_out.won.deals):
        won_sc = _states_and_changes(left_out.won, t1)[1]
        learn_sc = pd.concat([sc, won_sc.assign(pos=won_sc["pos"] + len(states))], ignore_index=True)
    thresholds = stage_limits(_learned(learn_sc), history.pipelines)
    also = left_out.pipelines
    if pipeline is not None:
        wanted = [pipeline] if isinstance(pipeline, str) else list(pipeline)
        states = states[states["pipeline"].isin(wanted)].reset_index(drop=True)
        sc = sc[sc["pipeline"].isin(wanted)]
        names = sorted(set(wanted))
        also = frozenset(also & set(wanted))
    else:
        names = sorted(set(states["pipeline"].dropna().unique().tolist()) | set(also))
    return _report(states, sc, thresholds, history.pipelines, names, also, t0, t1, by, left_out,
                   stalled_limit)


def health_from_current_state(
    deals: pd.DataFrame,
    window_changes: pd.DataFrame,
    specs: Mapping[str, PipelineSpec],
    learned: Mapping[tuple[str, str], float],
    since: pd.Timestamp | str,
    until: pd.Timestamp | str,
    pipeline: str,
    by: GroupBy | None = None,
    left_out: LeftOut | None = None,
    stalled_limit: int | None = None,
) -> dict[str, Any]:
    """`pipeline_health` of one pipeline, from the deals' stored current state instead of their history,
    for a window that ends at or after every event of the pipeline (then each deal's state at `until` is
    its current state). The store's SQL path (`serving.store.Store.health_state`) reads these inputs; the
    figures are then computed by the same functions as `pipeline_health`, so they are equal to it.

    - `deals`: the pipeline's deals created by `until` that the window can see (every one but those
      `left_out`), in `deal_states` columns: deal_id, pipeline, team, owner, amount, created_at, stage,
      stage_entered_at, status, closed_at (the current state columns);
    - `window_changes`: the pipeline's stage changes (deal_id, stage, changed_at, event_id) dated at or
      after `since` (earlier ones may be included): the funnel's entries and their next changes;
    - `learned`: the learned stalled limits as of `until` (`learned_stale_thresholds`); configured
      `stale_after_days` in `specs` win over them (`stage_limits`).
    """
    t0, t1 = _window(since, until, by)
    left_out = left_out or LeftOut()
    sc = _ordered_changes(window_changes, specs)
    mine = (deals["pipeline"] == pipeline).to_numpy(dtype=bool)
    states = deals if mine.all() else deals[mine].reset_index(drop=True)
    return _report(states, sc, stage_limits(learned, specs), specs, [pipeline],
                   frozenset(left_out.pipelines & {pipeline}), t0, t1, by, left_out, stalled_limit)


def _ordered_changes(changes: pd.DataFrame, specs: Mapping[str, PipelineSpec]) -> pd.DataFrame:
    """Stage changes (deal_id, pipeline, stage, changed_at, event_id) as `_with_next_change` rows: in the
    same-time order of `features.stages`, each deal's together (`pos`: its rank), with the next change of
    each within its deal."""
    ordered = order_stage_changes(changes, changes[["deal_id", "pipeline"]], specs)
    deal_rank = pd.factorize(ordered["deal_id"].to_numpy(dtype=object))[0]
    return _with_next_change(
        pd.DataFrame(
            {
                "pos": deal_rank.astype(np.int64),
                "deal_id": ordered["deal_id"].to_numpy(dtype=object),
                "stage": ordered["stage"].astype("string"),
                "changed_at": ordered["changed_at"],
                "pipeline": ordered["pipeline"].astype("string"),
            }
        ),
        specs,
    )


def _window(since: pd.Timestamp | str, until: pd.Timestamp | str,
            by: GroupBy | None) -> tuple[pd.Timestamp, pd.Timestamp]:
    """The window as UTC instants; ValueError when it is empty or `by` is not a grouping."""
    t0, t1 = to_utc_timestamp(since), to_utc_timestamp(until)
    if t0 > t1:
        raise ValueError(f"since ({t0.isoformat()}) is after until ({t1.isoformat()})")
    if by not in (None, "team", "owner"):
        raise ValueError(f"by must be 'team' or 'owner', not {by!r}")
    return t0, t1


def _report(states: pd.DataFrame, sc: pd.DataFrame, thresholds: dict[tuple[str, str], float],
            specs: Mapping[str, PipelineSpec], names: Sequence[str], also: frozenset[str], t0: pd.Timestamp,
            t1: pd.Timestamp, by: GroupBy | None, left_out: LeftOut,
            stalled_limit: int | None = None) -> dict[str, Any]:
    """The health report of the deals in `states` (as of `t1`) and their stage changes `sc`: every figure
    of `pipeline_health`, for the pipelines `names` (a funnel for those with deals here or in `also`).
    `stalled_deals` lists the `stalled_limit` longest-stalled (all when None); `stalled_count` counts all."""
    stalled = _stalled(states, thresholds, t1)
    funnels = _funnel(specs, sorted(set(states["pipeline"].dropna().unique().tolist()) | set(also)), sc, t0)

    per_pipe = _scalar_figures(states, states["pipeline"], t0, t1)
    if len(per_pipe) <= 1:  # every deal in one pipeline (or none): the overall figures are that pipeline's
        overall = {"all": dict(next(iter(per_pipe.values())))} if per_pipe else {}
    else:
        overall = _scalar_figures(states, pd.Series("all", index=states.index), t0, t1)
    overall_block = overall.get("all") or _empty_figures()
    overall_block["stalled_count"] = len(stalled)
    overall_block["stalled_deals"] = _stalled_records(stalled.iloc[:stalled_limit])

    pipelines: dict[str, dict[str, Any]] = {}
    for name in names:
        block = per_pipe.get(name) or _empty_figures()
        mine = stalled[stalled["pipeline"] == name]
        block["stalled_count"] = len(mine)
        block["stalled_deals"] = _stalled_records(mine.iloc[:stalled_limit])
        block["funnel"] = funnels.get(name, [])
        pipelines[name] = block

    result: dict[str, Any] = {"since": t0.isoformat(), "until": t1.isoformat(), "overall": overall_block,
                              "pipelines": pipelines}
    if by is not None:
        key = states[by].astype("string").fillna(NO_TEAM if by == "team" else NO_OWNER)
        groups = _scalar_figures(states, key, t0, t1)
        for idle in sorted((left_out.teams if by == "team" else left_out.owners) - set(groups)):
            groups[idle] = _empty_figures()
        stalled_key = stalled[by].astype("string").fillna(NO_TEAM if by == "team" else NO_OWNER)
        counts = stalled_key.value_counts()
        for name, block in groups.items():
            block["stalled_count"] = int(counts.get(name, 0))
        result[f"by_{by}"] = dict(sorted(groups.items()))
    return result


def _empty_figures() -> dict[str, Any]:
    return {"open_deals": 0, "avg_deal_size": None, "won_deals": 0, "lost_deals": 0, "win_rate": None,
            "avg_cycle_days": None, "sales_velocity": None}
