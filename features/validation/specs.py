"""Pipeline specs as given (pipelines.yaml, the store) and the stage changes checked against them."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from features.history import PipelineSpec
from features.stages import stage_outcomes
from features.timeindex import object_values
from features.validation.checks import SMALL_ROWS
from features.validation.problems import ProblemCollector


def _string_list(value: Any) -> bool:
    return isinstance(value, list | tuple) and all(isinstance(v, str) and v.strip() for v in value)


def given_specs(raw: Any, problems: ProblemCollector) -> dict[str, PipelineSpec]:
    """Specs from a mapping of pipeline name to spec (or `PipelineSpec`); malformed ones are problems."""
    table = "pipelines"
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        problems.add(
            table,
            None,
            None,
            f"expected a mapping of pipeline name to spec, got {type(raw).__name__}",
            "pipelines.yaml maps each pipeline to {stages: [...], won: [...], lost: [...]}",
        )
        return {}
    specs: dict[str, PipelineSpec] = {}
    for name, spec in raw.items():
        if isinstance(spec, PipelineSpec):
            specs[str(name)] = spec
            continue
        if not isinstance(spec, Mapping):
            problems.add(
                table,
                None,
                str(name),
                "pipeline spec is not a mapping",
                "give stages: [...], won: [...], lost: [...]",
            )
            continue
        ok = True
        if not _string_list(spec.get("stages")):
            problems.add(
                table,
                None,
                f"{name}.stages",
                f"stages must be a list of stage names, got {spec.get('stages')!r}",
                "e.g. stages: [Lead In, Qualified, Proposal Sent]",
            )
            ok = False
        for key in ("won", "lost"):
            if spec.get(key) is not None and not _string_list(spec.get(key)):
                problems.add(
                    table,
                    None,
                    f"{name}.{key}",
                    f"{key} must be a list of stage names, got {spec.get(key)!r}",
                    f"e.g. {key}: [Closed {key.capitalize()}]",
                )
                ok = False
        stale = spec.get("stale_after_days")
        if stale is not None and not (
            isinstance(stale, Mapping)
            and all(isinstance(v, int | float) and not isinstance(v, bool) and v >= 0 for v in stale.values())
        ):
            problems.add(
                table,
                None,
                f"{name}.stale_after_days",
                f"not a mapping of stage to days ≥ 0: {stale!r}",
                "e.g. stale_after_days: {Lead In: 7}",
            )
            ok = False
        if ok:
            specs[str(name)] = PipelineSpec.from_dict(str(name), spec)
    return specs


def check_stages_against_specs(
    stages: Any,
    pipeline_of_row: Any,
    specs: Mapping[str, PipelineSpec],
    problems: ProblemCollector,
) -> None:
    """Every stage change of a pipeline with a spec names one of its stages (or a won/lost stage);
    `stages` holds each stage change's stage (the column's array), `pipeline_of_row` its pipeline (None
    for a row of no known deal)."""
    values = object_values(stages)
    missing = pd.isna(values)
    # a deal without a pipeline (reported where the deals are parsed) has no spec to hold its stages to;
    # as None its rows compare unequal to every name, where pd.NA has no truth value
    pipes = object_values(pipeline_of_row).copy()
    pipes[pd.isna(pipes)] = None
    for name, spec in specs.items():
        in_pipe = pipes == name
        if not in_pipe.any():
            continue
        listed = spec.stages + spec.won + spec.lost
        if len(values) <= SMALL_ROWS:
            # a set of the listed names answers a request's few rows without np.isin's fixed cost (the
            # same text equality); missing values are known before any lookup
            names = set(listed)
            rows = zip(values.tolist(), missing.tolist(), strict=True)
            known = np.array([g or v in names for v, g in rows], dtype=bool)
        else:
            # only present values are looked up: a missing one (pd.NA) has no truth value to compare
            # (it is reported as a missing stage where the column is parsed)
            known = missing.copy()
            known[~missing] = np.isin(values[~missing], np.array(listed, dtype=object))
        unlisted = in_pipe & ~known
        if not unlisted.any():
            continue
        # Without a won (lost) list, a stage named like it closes the deal (features.stages decides).
        pipe_names = np.full(int(unlisted.sum()), name, dtype=object)
        named = stage_outcomes(pipe_names, values[unlisted], specs) != "open"
        bad = unlisted.copy()
        bad[np.flatnonzero(unlisted)[named]] = False
        problems.add_rows(
            "stage_changes",
            bad,
            "stage",
            f"stage {{value}} is not a stage of pipeline {name!r}",
            f"{name!r} has the stages {', '.join(listed) or '(none)'}; "
            "fix the name or add it to pipelines.yaml",
            values=stages,
        )
