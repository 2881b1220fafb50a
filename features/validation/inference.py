"""Specs for pipelines that have none, inferred from the stage changes."""

from __future__ import annotations

import logging

import pandas as pd

from features.history import PipelineSpec
from features.stages import stage_outcomes

logger = logging.getLogger(__name__)


def infer_pipeline_specs(
    deals: pd.DataFrame, stage_changes: pd.DataFrame, pipelines: list[str]
) -> dict[str, PipelineSpec]:
    """Specs for pipelines without one: closing stages by name, open stages by typical order of entry.

    A stage whose name contains "won"/"lost" (any case) closes the deal, as SPEC says. Open stages are
    ordered by the median position (0 = first stage the deal entered) at which deals first enter them,
    ties broken by mean position, then by name, so the result is deterministic.
    """
    if not pipelines:
        return {}
    if len(stage_changes) == 0:  # nothing to order (a write of activities): skip the frame work
        return {name: PipelineSpec(name=name, stages=(), inferred=True) for name in pipelines}
    pipeline_of = deals.drop_duplicates("deal_id").set_index("deal_id")["pipeline"]
    events = stage_changes[["deal_id", "stage", "changed_at"]].dropna()
    events = events.assign(pipeline=events["deal_id"].map(pipeline_of))
    events = events[events["pipeline"].isin(pipelines)]
    # The position is the order of first entries per deal: a deal that goes back does not renumber.
    firsts = events.sort_values(["deal_id", "changed_at"], kind="stable").drop_duplicates(
        ["deal_id", "stage"]
    )
    firsts = firsts.assign(position=firsts.groupby("deal_id", sort=False).cumcount())
    stats = (
        firsts.groupby(["pipeline", "stage"], observed=True)["position"]
        .agg(["median", "mean"])
        .reset_index()
        .sort_values(["pipeline", "median", "mean", "stage"], kind="stable")
    )
    # No spec yet: features.stages' name rule decides which stages close the deal.
    stats["kind"] = stage_outcomes(
        stats["pipeline"].to_numpy(dtype=object), stats["stage"].to_numpy(dtype=object), {}
    )
    specs: dict[str, PipelineSpec] = {}
    grouped = {str(k): g for k, g in stats.groupby("pipeline", sort=False)}
    for name in pipelines:
        group = grouped.get(name)
        if group is None:
            specs[name] = PipelineSpec(name=name, stages=(), inferred=True)
            continue
        by_kind = {k: tuple(str(s) for s in g["stage"]) for k, g in group.groupby("kind", sort=False)}
        specs[name] = PipelineSpec(
            name=name,
            stages=by_kind.get("open", ()),
            won=by_kind.get("won", ()),
            lost=by_kind.get("lost", ()),
            inferred=True,
        )
    logger.info("inferred stage order for %d pipeline(s) without a spec", len(specs))
    return specs
