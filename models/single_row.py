"""One row through LightGBM's single-row prediction C API, set up once per booster and prediction type.

For one row, `Booster.predict` spends more on Python than on the trees: every call builds a predictor
object, formats and parses its parameters, asks the library how long the answer is and converts the
input. LightGBM's C API has a path for this case: `LGBM_BoosterPredictForMatSingleRowFastInit` parses
the parameters and sets up the booster's one-row predictor once, and `LGBM_BoosterPredictForMatSingleRowFast`
then scores one row-major float64 row. It runs the same predictor `Booster.predict` runs (the tree walk
and the output transform, or TreeSHAP for contributions), so the numbers are the same to the last bit
(tests/models/test_single_row.py holds them equal on many rows). The calls go through the library
lightgbm itself loaded (`lightgbm.basic._LIB`), so there is one LightGBM in the process.

No parameters are passed at set-up: a `num_threads` there would set the process-wide OpenMP thread
count, and one row is scored on the calling thread anyway. LightGBM serialises one-row calls on the
same booster with its own lock, so one predictor serves every request thread.
"""

from __future__ import annotations

import ctypes
from typing import Literal

import lightgbm as lgb
import numpy as np
from lightgbm.basic import _LIB, _safe_call
from numpy.typing import NDArray

# LightGBM's c_api.h
_PREDICT_TYPES = {"normal": 0, "contrib": 3}  # C_API_PREDICT_NORMAL, C_API_PREDICT_CONTRIB
_FLOAT64 = 1  # C_API_DTYPE_FLOAT64

PredictType = Literal["normal", "contrib"]


class SingleRowPredictor:
    """`booster.predict(x, pred_contrib=...)` of a one-row `x`, without the per-call set-up."""

    def __init__(self, booster: lgb.Booster, predict_type: PredictType) -> None:
        self._booster = booster  # the library's predictor points into it: keep it alive as long as this
        self._handle = ctypes.c_void_p()
        self.n_features = booster.num_feature()
        # Booster.predict's default: the best iteration when one is recorded, else every tree
        num_iteration = ctypes.c_int(booster.best_iteration)
        kind = ctypes.c_int(_PREDICT_TYPES[predict_type])
        n_out = ctypes.c_int64(0)
        _safe_call(_LIB.LGBM_BoosterCalcNumPredict(
            booster._handle, ctypes.c_int(1), kind, ctypes.c_int(0), num_iteration, ctypes.byref(n_out)
        ))
        self.n_outputs = int(n_out.value)
        _safe_call(_LIB.LGBM_BoosterPredictForMatSingleRowFastInit(
            booster._handle, kind, ctypes.c_int(0), num_iteration, ctypes.c_int(_FLOAT64),
            ctypes.c_int32(self.n_features), ctypes.c_char_p(b""), ctypes.byref(self._handle),
        ))

    def __call__(self, x: NDArray[np.float64]) -> NDArray[np.float64]:
        """The prediction of the one row of `x` (shape (1, n_features)), shaped as `Booster.predict`
        shapes it for one row: (1,) for a binary probability, (1, n_features + 1) for contributions."""
        row = np.ascontiguousarray(x, dtype=np.float64)
        if row.shape != (1, self.n_features):
            raise ValueError(f"expected one row of {self.n_features} features, got shape {row.shape}")
        out = np.empty(self.n_outputs, dtype=np.float64)  # per call: request threads share this object
        written = ctypes.c_int64(0)
        _safe_call(_LIB.LGBM_BoosterPredictForMatSingleRowFast(
            self._handle, row.ctypes.data_as(ctypes.c_void_p), ctypes.byref(written),
            out.ctypes.data_as(ctypes.POINTER(ctypes.c_double)),
        ))
        if written.value != self.n_outputs:
            raise ValueError(f"LightGBM wrote {written.value} values, expected {self.n_outputs}")
        return out if self.n_outputs == 1 else out.reshape(1, -1)

    def __del__(self) -> None:
        handle = getattr(self, "_handle", None)
        if handle is not None and handle.value is not None:
            _LIB.LGBM_FastConfigFree(handle)
            handle.value = None
