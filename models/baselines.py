"""The stage-prior baseline: what a CRM's stage probability gives.

The label's historical rate per (pipeline, stage) in the training rows, shrunk towards the pipeline's
rate, which is itself shrunk towards the global rate, so rare stages and small pipelines get sensible
numbers instead of 0 or 1.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike, NDArray


def context_keys(frame: pd.DataFrame) -> tuple[pd.Series, pd.Series]:
    """The (pipeline, stage) of each row as strings, from the context columns or the categorical features."""
    pipeline_col = "pipeline" if "pipeline" in frame.columns else "pipeline_cat"
    stage_col = "stage" if "stage" in frame.columns else "stage_cat"
    missing = [c for c in (pipeline_col, stage_col) if c not in frame.columns]
    if missing:
        raise KeyError(f"the frame needs 'pipeline' and 'stage' columns (missing: {missing})")
    pipeline = frame[pipeline_col].astype("string").fillna("")
    stage = frame[stage_col].astype("string").fillna("")
    return pipeline, stage


class StagePrior:
    """Label rate per (pipeline, stage) with hierarchical shrinkage.

    rate(pipeline) = (positives_p + w * global) / (n_p + w)
    rate(pipeline, stage) = (positives_ps + w * rate(pipeline)) / (n_ps + w)
    Unknown stages get their pipeline's rate; unknown pipelines the global rate.
    """

    def __init__(self, prior_weight: float = 20.0) -> None:
        self.prior_weight = prior_weight

    def fit(self, frame: pd.DataFrame, y: ArrayLike) -> StagePrior:
        """Count rows and positives per pipeline and per (pipeline, stage)."""
        pipeline, stage = context_keys(frame)
        y_arr = np.asarray(y, dtype=np.float64).ravel()
        if y_arr.size != len(frame) or y_arr.size == 0:
            raise ValueError("y must be non-empty and have one value per row of the frame")
        w = float(self.prior_weight)
        data = pd.DataFrame({"pipeline": pipeline.to_numpy(), "stage": stage.to_numpy(), "y": y_arr})
        self.global_rate_ = float(y_arr.mean())
        by_pipe = data.groupby("pipeline", sort=True)["y"].agg(["sum", "count"])
        pipe_rate = (by_pipe["sum"] + w * self.global_rate_) / (by_pipe["count"] + w)
        self.pipeline_rates_: dict[str, float] = {str(k): float(v) for k, v in pipe_rate.items()}
        by_stage = data.groupby(["pipeline", "stage"], sort=True)["y"].agg(["sum", "count"]).reset_index()
        parent = by_stage["pipeline"].map(self.pipeline_rates_).astype(np.float64)
        rate = (by_stage["sum"] + w * parent) / (by_stage["count"] + w)
        self.stage_rates_: dict[tuple[str, str], float] = {
            (str(p), str(s)): float(r)
            for p, s, r in zip(by_stage["pipeline"], by_stage["stage"], rate, strict=True)
        }
        self.stage_counts_: dict[tuple[str, str], int] = {
            (str(p), str(s)): int(n)
            for p, s, n in zip(by_stage["pipeline"], by_stage["stage"], by_stage["count"], strict=True)
        }
        self._build_lookup()
        return self

    def _build_lookup(self) -> None:
        # one string key per (pipeline, stage) so prediction is a single vectorised map
        self._stage_lookup = pd.Series(
            {f"{p}\x1f{s}": r for (p, s), r in self.stage_rates_.items()}, dtype=np.float64
        )
        self._pipe_lookup = pd.Series(self.pipeline_rates_, dtype=np.float64)

    def predict_proba(self, frame: pd.DataFrame) -> NDArray[np.float64]:
        """P(label) for each row (1-D array; unlike sklearn, not the two-column form)."""
        pipeline, stage = context_keys(frame)
        keys = pipeline + "\x1f" + stage
        rate = keys.map(self._stage_lookup).astype("float64")
        rate = rate.fillna(pipeline.map(self._pipe_lookup).astype("float64")).fillna(self.global_rate_)
        return np.asarray(rate.to_numpy(dtype=np.float64), dtype=np.float64)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready state."""
        return {
            "kind": "stage_prior",
            "prior_weight": float(self.prior_weight),
            "global_rate": self.global_rate_,
            "pipeline_rates": dict(self.pipeline_rates_),
            "stage_rates": [
                {"pipeline": p, "stage": s, "rate": r, "count": self.stage_counts_.get((p, s), 0)}
                for (p, s), r in self.stage_rates_.items()
            ],
        }

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> StagePrior:
        """Rebuild from `to_dict()` output."""
        prior = cls(prior_weight=float(raw["prior_weight"]))
        prior.global_rate_ = float(raw["global_rate"])
        prior.pipeline_rates_ = {str(k): float(v) for k, v in raw["pipeline_rates"].items()}
        prior.stage_rates_ = {
            (str(r["pipeline"]), str(r["stage"])): float(r["rate"]) for r in raw["stage_rates"]
        }
        prior.stage_counts_ = {
            (str(r["pipeline"]), str(r["stage"])): int(r.get("count", 0)) for r in raw["stage_rates"]
        }
        prior._build_lookup()
        return prior
