"""The scoring bundle as an MLflow model from code (no pickle of any Python object).

MLflow runs this file when the model is loaded (`mlflow.pyfunc.load_model`, `mlflow models serve`);
`set_model` tells it which object is the model. The bundle itself comes from the logged artifact folder
and is verified by `ScoringBundle.load`. Our own service does not go through pyfunc at all
(`models.loading.load_bundle`); this exists so the model is a standard MLflow model.
"""

from __future__ import annotations

import json
from typing import Any

import mlflow
import pandas as pd
from mlflow.pyfunc import PythonModel, PythonModelContext

from models.bundle import ScoringBundle


class DealRiskModel(PythonModel):
    """Feature frame in, scores out (reasons as a JSON string per row, so the output is tabular)."""

    def load_context(self, context: PythonModelContext) -> None:
        self.bundle = ScoringBundle.load(context.artifacts["bundle"])

    def predict(
        self,
        context: PythonModelContext | None,
        model_input: pd.DataFrame,
        params: dict[str, Any] | None = None,
    ) -> pd.DataFrame:
        top = int((params or {}).get("top_reasons", 3))
        scores = self.bundle.score(model_input, top_reasons=top)
        for column in ("reasons", "counter_reasons"):
            scores[column] = [json.dumps(r) for r in scores[column]]
        scores["as_of"] = scores["as_of"].astype("string")
        scores["risk_band"] = scores["risk_band"].astype(str)
        return scores


mlflow.models.set_model(DealRiskModel())
