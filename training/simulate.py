"""Synthetic CRM deal history with a known, learnable-but-noisy signal.

Generative story (everything marked *hidden* drives the data but is never written out):

1. **Organisation.** Three pipelines (`PIPELINES`): SMB (4 short stages, small deals), Mid-Market (5 stages)
   and Enterprise (6 long stages, large deals, two ways to lose: `Lost` or `No Decision`). Each pipeline
   has two teams of five owners. Every team and owner has a *hidden skill* (a shift of the win log-odds)
   and every owner a *hidden logging diligence* (how many of their activities reach the CRM).
2. **Deals.** Creation times are spread uniformly over [start, end]. A deal gets a pipeline, a team and
   an owner, an amount (log-normal around the pipeline's typical size), an account, and two custom
   attributes: `source` (inbound / outbound / partner) and `industry`. It also gets a *hidden quality*
   (normal, shifted by source) and a *hidden buyer engagement* (correlated with quality).
3. **Planned outcome** (*hidden*): won with probability sigmoid(pipeline base + 0.75 quality + owner and
   team skill + industry effect). A lost deal drops out at a stage drawn from the pipeline's loss profile
   (early stages lose most). A share of lost deals stall for a long time before being marked lost, and
   some go silent for months ("zombies") until a pipeline clean-up closes them, so they are often still
   open at the end of the data.
4. **Stage path.** Deals start in the first stage and walk forward. Some stages are skipped; sometimes a
   deal goes back to the previous stage and returns (more often for weak deals). Time in each stage is
   Gamma-distributed around the pipeline's typical stage length, faster for good deals. Lost deals
   spend a *fade* period at the end of their last stage (long for stalls), then enter a lost stage; won
   deals enter the won stage at the end of the last stage.
5. **Activity.** Calls, emails, meetings, notes, tasks and other touches arrive as a Poisson process per
   stage visit, whose rate grows with engagement and the owner's diligence and jitters per visit.
   During a fade the rate collapses to a fifth (zombies: a twentieth), so activity thins out before a
   loss or stall and stays dense on deals heading for a win. Random quiet spells (lulls) on any deal
   add noise. Engaged buyers reach out more (inbound) and meet more.
6. **Field changes.** The expected close date is set optimistically at creation (more so for weak deals);
   each time it passes while the deal is still open the owner pushes it out (a slip, logged as a
   field change). Some amounts are revised (up for good deals, down for weak ones) and a few deals change
   owner within the team.
7. **End of data.** Everything dated after `end` is cut, so deals created late are still open.

What a CRM sees, and so what a model can learn from: recency and density of activity, stage and the
speed through stages, slips, amount changes, owner, source. Stage alone is a much weaker signal.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from features.history import DealHistory, PipelineSpec, to_utc_timestamp
from features.stages import deal_states_at

logger = logging.getLogger(__name__)

NS_PER_DAY = 86_400 * 10**9

PIPELINES: dict[str, PipelineSpec] = {
    "SMB": PipelineSpec(
        name="SMB",
        stages=("New", "Contacted", "Demo", "Quote"),
        won=("Won",),
        lost=("Lost",),
        stale_after_days={"New": 5.0, "Contacted": 7.0, "Demo": 10.0, "Quote": 14.0},
    ),
    "Mid-Market": PipelineSpec(
        name="Mid-Market",
        stages=("Lead In", "Qualified", "Demo Done", "Proposal Sent", "Negotiation"),
        won=("Closed Won",),
        lost=("Closed Lost",),
        stale_after_days={"Lead In": 7.0, "Qualified": 14.0},
    ),
    "Enterprise": PipelineSpec(
        name="Enterprise",
        stages=(
            "Discovery", "Qualification", "Solution Design", "Business Case", "Legal Review", "Procurement"
        ),
        won=("Signed",),
        lost=("Lost", "No Decision"),
        stale_after_days={"Discovery": 21.0, "Legal Review": 30.0},
    ),
}


@dataclass(frozen=True)
class _Profile:
    """How one pipeline behaves (hidden parameters of the simulation)."""

    share: float  # share of deals created in this pipeline
    stage_days: tuple[float, ...]  # mean days in each open stage for an average deal
    loss_weights: tuple[float, ...]  # where lost deals drop out
    amount_median: float
    amount_sigma: float
    base_logit: float  # win log-odds of an average deal
    activities_per_day: float
    fade_days: float  # mean length of the quiet spell before a loss
    slip_days: float  # mean push-out of an expected close date
    teams: tuple[str, str]


_PROFILES: dict[str, _Profile] = {
    "SMB": _Profile(0.5, (3, 5, 6, 8), (0.35, 0.3, 0.2, 0.15), 8_000, 0.6, -0.4, 0.45, 14, 14,
                    ("SMB East", "SMB West")),
    "Mid-Market": _Profile(0.32, (6, 10, 12, 15, 14), (0.3, 0.25, 0.2, 0.15, 0.1), 45_000, 0.7, -0.6, 0.3,
                           21, 30, ("Mid-Market North", "Mid-Market South")),
    "Enterprise": _Profile(0.18, (15, 20, 30, 30, 25, 20), (0.25, 0.2, 0.2, 0.15, 0.1, 0.1), 220_000, 0.8,
                           -0.8, 0.2, 35, 45, ("Enterprise Strategic", "Enterprise Named Accounts")),
}

OWNERS_PER_TEAM = 5
_FIRST = ("Avery", "Blake", "Casey", "Devon", "Emery", "Finley", "Harper", "Jordan", "Kai", "Logan",
          "Morgan", "Noel", "Parker", "Quinn", "Riley", "Sage", "Taylor", "Reese", "Rowan", "Skyler")
_LAST = ("Adams", "Brooks", "Chen", "Diaz", "Evans", "Fischer", "Garcia", "Hughes", "Ito", "Jensen",
         "Khan", "Lopez", "Moreau", "Novak", "Okafor", "Patel", "Rossi", "Silva", "Tanaka", "Weber")
SOURCES = ("inbound", "outbound", "partner")
_SOURCE_P = (0.4, 0.45, 0.15)
_SOURCE_QUALITY = (0.3, -0.25, 0.15)
INDUSTRIES = ("software", "manufacturing", "healthcare", "finance", "retail", "education")
_INDUSTRY_LOGIT = (0.2, 0.0, -0.15, 0.1, -0.1, -0.2)
_ACTIVITY_TYPES = np.array(["call", "email", "meeting", "note", "task", "other"])
_ACTIVITY_P = np.array([0.25, 0.42, 0.08, 0.1, 0.12, 0.03])
_SKIP_P = 0.08
_ZOMBIE_SHARE = 0.12  # of lost deals: go silent and stay open until a clean-up
_ZOMBIE_DAYS = 150.0  # mean silence before the clean-up marks a zombie lost
_STALL_SHARE = 0.2  # of other lost deals: fade four times longer


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _gamma(rng: np.random.Generator, mean: np.ndarray | float, shape: float, size: int) -> np.ndarray:
    """Gamma draws with the given mean (shape controls the spread)."""
    return rng.gamma(shape, np.asarray(mean, dtype=float) / shape, size)


def simulate_history(
    n_deals: int = 2000,
    seed: int = 0,
    start: str = "2024-01-01",
    end: str | None = None,
    cycle_scale: float = 1.0,
    quiet_after: str | None = None,
    quiet_activity_share: float = 0.3,
) -> DealHistory:
    """A seeded, multi-pipeline synthetic deal history in the SPEC input format.

    Deals are created uniformly between `start` and `end` (default: two years after `start`); the data
    ends at `end` and nothing after it is included. Same arguments, same frames.

    `cycle_scale` stretches every duration of a deal's life (time in stage, the fade before a loss,
    a zombie's silence, close-date slips and the optimistic first close date) by that factor: 3.0 makes
    sales cycles three times longer, so many deals are still open at the end of the data and a label
    that drops them keeps only the fast closers. 1.0 (the default) is the original history, draw for draw.

    `quiet_after` shifts the world at that time: from then on buyers go quiet faster, only
    `quiet_activity_share` of the activities that would have happened are logged (a changed market or
    a broken CRM sync), so deals go cold more often than a model trained before the shift expects.
    Everything before the shift is the same as without it.
    """
    if n_deals < 1:
        raise ValueError("n_deals must be at least 1")
    if not cycle_scale > 0:
        raise ValueError(f"cycle_scale must be positive, not {cycle_scale}")
    t0 = to_utc_timestamp(start)
    t_end = to_utc_timestamp(end) if end is not None else t0 + pd.Timedelta(days=730)
    if t_end <= t0:
        raise ValueError(f"end ({t_end}) must be after start ({t0})")
    # All times are float days since `start` until the frames are built.
    horizon = (t_end - t0) / pd.Timedelta(days=1)
    rng = np.random.default_rng(seed)
    n = n_deals
    names = list(_PROFILES)
    profiles = [_PROFILES[p] for p in names]
    n_stages = np.array([len(PIPELINES[p].stages) for p in names])
    k_max = int(n_stages.max())

    # --- organisation (hidden skills) ---
    teams = [t for prof in profiles for t in prof.teams]
    team_skill = rng.normal(0.0, 0.25, len(teams))
    n_owners = len(teams) * OWNERS_PER_TEAM
    owner_skill = rng.normal(0.0, 0.4, n_owners)
    owner_diligence = np.exp(rng.normal(0.0, 0.3, n_owners))
    name_idx = rng.permutation(len(_FIRST) * len(_LAST))[:n_owners]
    owner_names = np.array([f"{_FIRST[i // len(_LAST)]} {_LAST[i % len(_LAST)]}" for i in name_idx])

    # --- deals ---
    created = np.sort(rng.uniform(0.0, horizon, n))
    pipe = rng.choice(len(names), n, p=[prof.share for prof in profiles])
    team = pipe * 2 + rng.integers(0, 2, n)
    owner = team * OWNERS_PER_TEAM + rng.integers(0, OWNERS_PER_TEAM, n)
    source = rng.choice(len(SOURCES), n, p=_SOURCE_P)
    industry = rng.integers(0, len(INDUSTRIES), n)
    quality = rng.normal(0.0, 1.0, n) + np.asarray(_SOURCE_QUALITY)[source]
    engagement = 0.5 * quality + 0.85 * rng.normal(0.0, 1.0, n)
    base_logit = np.array([prof.base_logit for prof in profiles])[pipe]
    win_logit = (base_logit + 0.75 * quality + owner_skill[owner] + team_skill[team]
                 + np.asarray(_INDUSTRY_LOGIT)[industry])
    won = rng.uniform(size=n) < _sigmoid(win_logit)
    amount_median = np.array([prof.amount_median for prof in profiles])[pipe]
    amount_sigma = np.array([prof.amount_sigma for prof in profiles])[pipe]
    amount = np.maximum(np.round(amount_median * np.exp(amount_sigma * rng.normal(0.0, 1.0, n)), -2), 500.0)

    k = n_stages[pipe]
    last = k - 1
    for i, prof in enumerate(profiles):
        in_pipe = (pipe == i) & ~won
        last[in_pipe] = rng.choice(len(prof.loss_weights), int(in_pipe.sum()), p=prof.loss_weights)
    zombie = ~won & (rng.uniform(size=n) < _ZOMBIE_SHARE)
    stall = ~won & ~zombie & (rng.uniform(size=n) < _STALL_SHARE)
    fade_mean = (np.array([prof.fade_days for prof in profiles])[pipe] * np.where(stall, 4.0, 1.0)
                 * cycle_scale)
    fade = np.where(won, 0.0, _gamma(rng, fade_mean, 2.0, n))
    # Zombies sit silent until a pipeline clean-up closes them months later (or the data ends).
    fade = np.where(zombie, _gamma(rng, _ZOMBIE_DAYS * cycle_scale, 1.5, n), fade)
    speed = np.exp(-0.2 * quality + 0.3 * rng.normal(0.0, 1.0, n))  # >1 is slower
    stage_days = np.zeros((len(names), k_max))
    for i, prof in enumerate(profiles):
        stage_days[i, : len(prof.stage_days)] = np.asarray(prof.stage_days) * cycle_scale

    # --- stage path: one pass per stage index, every deal at once ---
    sc_deal: list[np.ndarray] = []
    sc_pos: list[np.ndarray] = []
    sc_time: list[np.ndarray] = []
    seg_deal: list[np.ndarray] = []
    seg_start: list[np.ndarray] = []
    seg_end: list[np.ndarray] = []
    t = created.copy()
    fade_start = np.full(n, np.inf)
    regress_p = np.clip(0.06 - 0.03 * quality, 0.01, 0.2)
    for j in range(k_max):
        skipped = (j >= 1) & (j < last) & (rng.uniform(size=n) < _SKIP_P)
        visit = (j <= last) & ~skipped
        dwell = _gamma(rng, stage_days[pipe, j] * speed, 2.0, n)
        regress = visit & (j >= 1) & (rng.uniform(size=n) < regress_p)
        back_at = t + rng.uniform(0.1, 0.7, n) * dwell
        back_for = _gamma(rng, 0.5 * stage_days[pipe, j - 1] * speed, 2.0, n) if j >= 1 else np.zeros(n)
        dwell = dwell + np.where(regress, back_for, 0.0)
        ends_here = visit & (j == last)
        fade_start = np.where(ends_here & ~won, t + dwell, fade_start)
        dwell = dwell + np.where(ends_here, fade, 0.0)
        idx = np.flatnonzero(visit)
        sc_deal.append(idx)
        sc_pos.append(np.full(idx.size, j))
        sc_time.append(t[idx])
        r = np.flatnonzero(regress)
        sc_deal += [r, r]
        sc_pos += [np.full(r.size, j - 1), np.full(r.size, j)]
        sc_time += [back_at[r], back_at[r] + back_for[r]]
        seg_deal.append(idx)
        seg_start.append(t[idx])
        seg_end.append(t[idx] + dwell[idx])
        t = np.where(visit, t + dwell, t)
    close_at = t
    closes = close_at <= horizon
    idx = np.flatnonzero(closes)
    sc_deal.append(idx)
    sc_pos.append(np.where(won[idx], k_max, k_max + 1))  # won / lost marker positions
    sc_time.append(close_at[idx])
    sc_deal_a = np.concatenate(sc_deal)
    sc_pos_a = np.concatenate(sc_pos)
    sc_time_a = np.concatenate(sc_time)
    stage_name = _stage_names(names, pipe[sc_deal_a], sc_pos_a, k_max, rng)

    # --- activity: Poisson per stage visit, thinned in fades and lulls ---
    seg_d = np.concatenate(seg_deal)
    s0 = np.concatenate(seg_start)
    s1 = np.minimum(np.concatenate(seg_end), horizon)
    span = np.maximum(s1 - s0, 0.0)
    base_rate = np.array([prof.activities_per_day for prof in profiles])[pipe]
    rate = base_rate * np.exp(0.45 * engagement) * owner_diligence[owner]
    seg_rate = rate[seg_d] * rng.gamma(4.0, 0.25, seg_d.size)
    counts = rng.poisson(seg_rate * span)
    act_deal = np.repeat(seg_d, counts)
    act_time = np.repeat(s0, counts) + rng.uniform(size=act_deal.size) * np.repeat(span, counts)
    life_end = np.minimum(np.where(closes, close_at, horizon), horizon)
    lull_start = created + rng.uniform(size=n) * np.minimum(life_end - created, 365.0)
    lull_end = np.where(rng.uniform(size=n) < 0.4, lull_start + _gamma(rng, 18.0, 3.0, n), lull_start)
    keep_p = np.ones(act_deal.size)
    in_fade = act_time >= fade_start[act_deal]
    keep_p = np.where(in_fade, np.where(zombie[act_deal], 0.05, 0.2), keep_p)
    in_lull = (act_time >= lull_start[act_deal]) & (act_time < lull_end[act_deal])
    keep_p = np.where(in_lull, keep_p * 0.15, keep_p)
    keep = rng.uniform(size=act_deal.size) < keep_p
    act_deal, act_time = act_deal[keep], act_time[keep]
    act_type = _ACTIVITY_TYPES[rng.choice(len(_ACTIVITY_TYPES), act_deal.size, p=_ACTIVITY_P)]
    engaged = rng.uniform(size=act_deal.size) < 0.15 * _sigmoid(engagement[act_deal] - 0.5)
    act_type = np.where(engaged & np.isin(act_type, ["call", "email"]), "meeting", act_type)
    talks = np.isin(act_type, ["call", "email", "meeting"])
    inbound = rng.uniform(size=act_deal.size) < _sigmoid(-0.6 + 0.8 * engagement[act_deal])
    direction = np.where(inbound, "inbound", "outbound").astype(object)
    direction[~talks] = None  # notes, tasks and other touches are internal: no direction
    if quiet_after is not None:
        # Thinned with a generator of its own, after every other draw, so the world before the shift
        # (and any history simulated without one) is exactly the same.
        shift_day = (to_utc_timestamp(quiet_after) - t0) / pd.Timedelta(days=1)
        quiet_rng = np.random.default_rng([seed, 1])
        kept = (act_time < shift_day) | (quiet_rng.uniform(size=act_deal.size) < quiet_activity_share)
        act_deal, act_time = act_deal[kept], act_time[kept]
        act_type, direction = act_type[kept], direction[kept]

    # --- field changes: close-date slips, amount revisions, owner changes ---
    typical_cycle = stage_days[pipe].sum(axis=1)
    optimism = np.exp(0.15 * np.minimum(quality, 0.0) + 0.25 * rng.normal(0.0, 1.0, n))
    expected = created + typical_cycle * optimism
    fc_deal: list[np.ndarray] = []
    fc_field: list[np.ndarray] = []
    fc_value: list[np.ndarray] = []
    fc_time: list[np.ndarray] = []
    slip_mean = np.array([prof.slip_days for prof in profiles])[pipe] * cycle_scale
    current = expected.copy()
    last_slip = created.copy()
    for _ in range(8):
        slips = (current + 3.0 < close_at) & (current < horizon)
        # Reps push the date around when it comes due; keep each deal's slips in time order.
        at = np.maximum(current + rng.uniform(-10.0, 2.0, n), last_slip + 0.5)
        new = current + np.maximum(_gamma(rng, slip_mean, 2.0, n), 3.0)
        idx = np.flatnonzero(slips & (at <= horizon))
        fc_deal.append(idx)
        fc_field.append(np.full(idx.size, "expected_close_date"))
        fc_value.append(_iso_dates(t0, new[idx]))
        fc_time.append(at[idx])
        current = np.where(slips, new, current)
        last_slip = np.where(slips, at, last_slip)
    n_amount = (rng.uniform(size=n) < 0.25).astype(int) + (rng.uniform(size=n) < 0.08)
    prev_amount = amount.copy()
    frac = np.zeros(n)
    for c in range(2):
        frac = frac + rng.uniform(size=n) * (1.0 - frac)
        at = created + frac * (life_end - created)
        new_amount = np.maximum(np.round(prev_amount * np.exp(rng.normal(0.08 * quality, 0.18)), -2), 500.0)
        idx = np.flatnonzero(n_amount > c)
        fc_deal.append(idx)
        fc_field.append(np.full(idx.size, "amount"))
        fc_value.append(np.char.mod("%.0f", new_amount[idx]))
        fc_time.append(at[idx])
        prev_amount = np.where(n_amount > c, new_amount, prev_amount)
    moved = np.flatnonzero(rng.uniform(size=n) < 0.05)
    new_owner = team[moved] * OWNERS_PER_TEAM + (
        (owner[moved] % OWNERS_PER_TEAM + rng.integers(1, OWNERS_PER_TEAM, moved.size)) % OWNERS_PER_TEAM
    )
    fc_deal.append(moved)
    fc_field.append(np.full(moved.size, "owner"))
    fc_value.append(owner_names[new_owner])
    fc_time.append(created[moved] + rng.uniform(size=moved.size) * (life_end[moved] - created[moved]))

    # --- frames ---
    deal_ids = pd.Series(np.arange(1, n + 1), dtype="int64").astype(str).str.zfill(6).radd("D").to_numpy()
    deals = pd.DataFrame(
        {
            "deal_id": deal_ids,
            "pipeline": _string_array(np.asarray(names, dtype=object)[pipe]),
            "owner": _string_array(owner_names[owner]),
            "team": _string_array(np.asarray(teams, dtype=object)[team]),
            "account": pd.Series(rng.integers(1, max(2, int(n * 0.7)), n)).astype(str).str.zfill(5)
            .radd("ACC-").to_numpy(),
            "amount": amount,
            "created_at": _to_times(t0, created),
            "expected_close_date": _to_times(t0, np.floor(expected), seconds=False),
            "currency": "USD",
            "source": _string_array(np.asarray(SOURCES, dtype=object)[source]),
            "industry": _string_array(np.asarray(INDUSTRIES, dtype=object)[industry]),
        }
    )
    stage_changes = _event_frame(
        deal_ids, sc_deal_a, sc_time_a, horizon, t0, "changed_at", "S", {"stage": stage_name}
    )
    activities = _event_frame(
        deal_ids, act_deal, act_time, horizon, t0, "occurred_at", "A",
        {"type": act_type, "direction": direction},
    )
    fc_deal_a = np.concatenate(fc_deal)
    field_changes = _event_frame(
        deal_ids, fc_deal_a, np.concatenate(fc_time), horizon, t0, "changed_at", "F",
        {"field": np.concatenate(fc_field), "value": np.concatenate(fc_value)},
    )
    logger.info(
        "simulated %d deals: %d stage changes, %d activities, %d field changes",
        n, len(stage_changes), len(activities), len(field_changes),
    )
    return DealHistory.from_frames(
        deals, stage_changes, activities, field_changes, pipelines=PIPELINES, source="simulated"
    )


def _stage_names(
    names: list[str], pipe: np.ndarray, pos: np.ndarray, k_max: int, rng: np.random.Generator
) -> np.ndarray:
    """Stage names for (pipeline index, position); position k_max is won, k_max + 1 is lost."""
    table = np.empty((len(names), k_max + 3), dtype=object)
    for i, name in enumerate(names):
        spec = PIPELINES[name]
        table[i, : len(spec.stages)] = spec.stages
        table[i, k_max] = spec.won[0]
        table[i, k_max + 1] = spec.lost[0]
        table[i, k_max + 2] = spec.lost[-1]
    # Pipelines with two lost stages: a third of losses are recorded under the second one.
    pos = np.where((pos == k_max + 1) & (rng.uniform(size=pos.size) < 1 / 3), k_max + 2, pos)
    return table[pipe, pos]


def _to_times(t0: pd.Timestamp, days: np.ndarray, seconds: bool = True) -> pd.DatetimeIndex:
    """Float days since t0 to UTC timestamps (whole seconds: CRMs do not log nanoseconds)."""
    ns = np.round(days * 86_400.0) * 10**9 if seconds else days * NS_PER_DAY
    return pd.DatetimeIndex(t0.value + ns.astype("int64")).tz_localize("UTC")


def _iso_dates(t0: pd.Timestamp, days: np.ndarray) -> np.ndarray:
    return _to_times(t0, np.floor(days), seconds=False).strftime("%Y-%m-%d").to_numpy()


def _event_frame(
    deal_ids: np.ndarray,
    deal_idx: np.ndarray,
    days: np.ndarray,
    horizon: float,
    t0: pd.Timestamp,
    time_column: str,
    id_prefix: str,
    columns: dict[str, Any],
) -> pd.DataFrame:
    """An event table cut at the end of the data, sorted by (deal, time), with stable event ids."""
    keep = np.flatnonzero(days <= horizon)
    keep = keep[np.lexsort((days[keep], deal_idx[keep]))]
    frame = pd.DataFrame({"deal_id": _string_array(deal_ids).take(deal_idx[keep])})
    for name, values in columns.items():
        frame[name] = _string_array(np.asarray(values, dtype=object)[keep])
    frame[time_column] = _to_times(t0, days[keep])
    numbers = pc.utf8_lpad(pc.cast(pa.array(np.arange(1, len(frame) + 1)), pa.string()), 8, "0")
    ids = pc.binary_join_element_wise(id_prefix, numbers, "")
    frame.insert(0, "event_id", pd.Series(pd.arrays.ArrowStringArray(ids), index=frame.index))
    return frame


def _string_array(values: np.ndarray) -> pd.api.extensions.ExtensionArray:
    """Pandas "string" array built from the distinct values only (None becomes <NA>).

    Converting hundreds of thousands of Python strings one by one dominates the run time otherwise;
    the columns here have few distinct values, so factorise, convert the uniques and take.
    """
    codes, uniques = pd.factorize(values, use_na_sentinel=True)
    return pd.array(np.asarray(uniques, dtype=object), dtype="string").take(codes, allow_fill=True)


def history_summary(history: DealHistory) -> dict[str, Any]:
    """Deals per pipeline with won/lost/open counts at the end of the data, and event counts."""
    deals = history.deals[["deal_id", "pipeline"]]
    state = deal_states_at(history, deals.assign(as_of=history.end_time))
    table = pd.crosstab(deals["pipeline"], state)
    per_pipeline = {
        str(p): {"deals": int(row.sum()), **{c: int(row.get(c, 0)) for c in ("won", "lost", "open")}}
        for p, row in table.iterrows()
    }
    totals = {c: sum(v[c] for v in per_pipeline.values()) for c in ("deals", "won", "lost", "open")}
    return {
        "pipelines": per_pipeline,
        "totals": totals,
        "events": {
            "stage_changes": len(history.stage_changes),
            "activities": len(history.activities),
            "field_changes": len(history.field_changes),
        },
        "start": history.deals["created_at"].min(),
        "end": history.end_time,
    }
