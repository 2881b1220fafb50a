"""The scoring bundle: both heads, their calibrators, the feature spec, band thresholds and reasons data.

The close head is normally a competing-risks timing model (`models.timing`): besides the close
probability it gives the 90-day probability, the slip risk and the likely close date. A stage-prior
close head (thin data) gives only the close probability; the timing scores are then null.

On disk it is a folder of plain files, never a pickle: LightGBM boosters as their native text model,
everything else JSON, and `manifest.json` with the SHA-256 of every file. `ScoringBundle.load` checks
each hash against bytes it then parses (no second read), so what was verified is what gets used.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import lightgbm as lgb
import numpy as np
import pandas as pd
from numpy.typing import NDArray

from features.timeindex import (
    DAY_NS,
    NAT_NS,
    KeyCodes,
    column,
    frame_of,
    from_ns,
    object_values,
    string_array,
    to_ns,
)
from models.bands import assign_bands
from models.baselines import StagePrior
from models.calibration import Calibrator
from models.reasons import ReasonWriter, stage_prior_reasons
from models.single_row import PredictType, SingleRowPredictor
from models.timing import (
    PERIOD_FEATURE,
    TimingCurves,
    TimingModel,
    curves_to_json,
    likely_close_days,
)

log = logging.getLogger(__name__)

FORMAT_VERSION = 3
# 1: before the timing model; still loads, with null timing scores. 2: before the slip model; still loads,
# with slip from the close curves. A release that reads only 1-2 refuses a 3 instead of scoring slip the
# old way without saying so.
READABLE_FORMAT_VERSIONS = (1, 2, 3)
MANIFEST = "manifest.json"
BUNDLE_JSON = "bundle.json"
REFERENCE_JSON = "reasons_reference.json"
HEAD_NAMES = ("cold", "close")
SCORE_COLUMNS = [
    "deal_id",
    "as_of",
    "cold_risk",
    "close_probability",
    "close_probability_90d",
    "slip_risk",
    "likely_close_date",
    "risk_band",
    "expected_value",
    "reasons",
    "counter_reasons",
]

# pandas' "str" dtype (missing values as NaN), which the text score columns have
TEXT = pd.StringDtype(na_value=np.nan)

# a feature frame (`features.build.build_features`), or its columns by name as unframed arrays
# (`features.build.feature_arrays`): scoring reads either the same way
Features = pd.DataFrame | Mapping[str, Any]

HeadKind = Literal["lightgbm", "stage_prior", "competing_risks"]


class BundleIntegrityError(RuntimeError):
    """A bundle file is missing, altered or malformed; `path` names it."""

    def __init__(self, path: str | os.PathLike[str], problem: str) -> None:
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


@dataclass
class Head:
    """One head: a LightGBM booster, a stage-prior fallback or (close head) a competing-risks timing
    model, plus an optional calibrator (the timing model calibrates its own hazards)."""

    kind: HeadKind
    booster: lgb.Booster | None = None
    prior: StagePrior | None = None
    calibrator: Calibrator | None = None
    timing: TimingModel | None = None
    # the booster's one-row predictors (`models.single_row`), set up on first use
    _single_rows: dict[str, SingleRowPredictor] = field(default_factory=dict, init=False, repr=False,
                                                        compare=False)
    _single_rows_lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False,
                                              compare=False)

    @classmethod
    def lightgbm(
        cls, booster: lgb.Booster | lgb.LGBMClassifier, calibrator: Calibrator | None = None
    ) -> Head:
        """A LightGBM head (a fitted `LGBMClassifier` is accepted and its booster taken)."""
        if isinstance(booster, lgb.LGBMClassifier):
            booster = booster.booster_
        return cls(kind="lightgbm", booster=booster, calibrator=calibrator)

    @classmethod
    def stage_prior(cls, prior: StagePrior, calibrator: Calibrator | None = None) -> Head:
        """A fallback head for data too thin for LightGBM."""
        return cls(kind="stage_prior", prior=prior, calibrator=calibrator)

    @classmethod
    def competing_risks(cls, timing: TimingModel) -> Head:
        """A close head whose P(eventually won) comes from per-period hazards of winning and losing."""
        return cls(kind="competing_risks", booster=timing.booster, timing=timing)

    def curves(self, x: NDArray[np.float64]) -> TimingCurves:
        """The timing model's per-deal curves (competing-risks heads only)."""
        assert self.timing is not None
        # threads by the booster's rows: n_periods per deal
        return self.timing.curves(x, num_threads=_threads_for)

    def slip_risk(
        self, x: NDArray[np.float64], days_to_close: NDArray[np.float64], curves: TimingCurves
    ) -> NDArray[np.float64]:
        """P(still open at the expected close date), from the timing model's slip model when it has one
        (bundles since round 13's adoption), else from `curves`, its close curves of `x`."""
        assert self.timing is not None
        # threads by the rows scored: the slip model scores each deal's periods up to its date only
        return self.timing.slip_risk(x, days_to_close, curves, num_threads=_threads_for)

    def raw_proba(self, x: NDArray[np.float64], frame: Features) -> NDArray[np.float64]:
        """Uncalibrated P(positive)."""
        if self.kind == "competing_risks":
            return self.curves(x).p_won()
        if self.kind == "lightgbm":
            assert self.booster is not None
            if len(x) == 1:
                return self._single_row("normal")(x)
            return np.asarray(self.booster.predict(x, num_threads=_threads_for(len(x))), dtype=np.float64)
        assert self.prior is not None
        return self.prior.predict_proba(_as_frame(frame))

    def contributions(self, x: NDArray[np.float64]) -> NDArray[np.float64]:
        """LightGBM's per-feature contributions to the raw score, bias last: (n, n_features + 1)
        (LightGBM heads only)."""
        assert self.kind == "lightgbm" and self.booster is not None
        if len(x) == 1:
            return self._single_row("contrib")(x)
        contrib = self.booster.predict(x, pred_contrib=True, num_threads=_threads_for(len(x)))
        return np.asarray(contrib, dtype=np.float64)

    def _single_row(self, predict_type: PredictType) -> SingleRowPredictor:
        """One row through LightGBM's single-row API (the same numbers as `booster.predict`, without
        its per-call set-up, which costs more than one deal's trees)."""
        with self._single_rows_lock:
            predictor = self._single_rows.get(predict_type)
            if predictor is None:
                assert self.booster is not None
                predictor = self._single_rows[predict_type] = SingleRowPredictor(self.booster, predict_type)
            return predictor

    def proba(self, x: NDArray[np.float64], frame: Features) -> NDArray[np.float64]:
        """Calibrated P(positive), clipped to [0, 1]."""
        raw = self.raw_proba(x, frame)
        out = self.calibrator.transform(raw) if self.calibrator is not None else raw
        return np.clip(out, 0.0, 1.0)


# Below this many rows LightGBM's thread start-up costs more than the work (and on a loaded machine
# OpenMP spin-waits make a one-row predict tens of times slower), so small batches run on one thread.
SMALL_BATCH_ROWS = 256


def _threads_for(n_rows: int) -> int:
    return 1 if n_rows < SMALL_BATCH_ROWS else 0  # 0 = LightGBM's default (all cores / n_jobs)


def categorical_levels_of(frame: pd.DataFrame, columns: Sequence[str]) -> dict[str, list[str]]:
    """The category levels of the training frame, in code order (what LightGBM's codes refer to)."""
    out: dict[str, list[str]] = {}
    for c in columns:
        if not isinstance(frame[c].dtype, pd.CategoricalDtype):
            raise TypeError(f"feature {c!r} must have pandas 'category' dtype, got {frame[c].dtype}")
        out[c] = [str(v) for v in frame[c].cat.categories]
    return out


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class ScoringBundle:
    """Everything needed to score a feature frame: both heads, feature spec, bands, reasons data."""

    # the score columns holding Python objects (lists of reasons, curves)
    OBJECT_COLUMNS = ("reasons", "counter_reasons", "timing_curve")

    def __init__(
        self,
        cold: Head,
        close: Head,
        feature_columns: Sequence[str],
        categorical_levels: Mapping[str, Sequence[str]],
        band_thresholds: Mapping[str, float],
        reference: Mapping[str, Any] | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> None:
        self.cold = cold
        self.close = close
        self.feature_columns = list(feature_columns)
        self.categorical_levels = {str(k): [str(v) for v in vals] for k, vals in categorical_levels.items()}
        self.band_thresholds = {
            "high": float(band_thresholds["high"]),
            "medium": float(band_thresholds["medium"]),
        }
        self.reference: dict[str, Any] = dict(
            reference or {"features": [], "by_stage": {}, "by_pipeline": {}}
        )
        self.metadata: dict[str, Any] = dict(metadata or {})
        for name, head in (("cold", cold), ("close", close)):
            if head.kind in ("lightgbm", "competing_risks"):
                assert head.booster is not None
                got = head.booster.feature_name()
                want = self.feature_columns + ([PERIOD_FEATURE] if head.kind == "competing_risks" else [])
                if got != want:
                    raise ValueError(
                        f"{name} head was trained on features {got}, bundle says {self.feature_columns}"
                    )
                if head.timing is not None and head.timing.slip is not None:
                    got = head.timing.slip.booster.feature_name()
                    if got != want:
                        raise ValueError(
                            f"{name} head's slip model was trained on features {got}, bundle says "
                            f"{self.feature_columns}"
                        )
        unknown = set(self.categorical_levels) - set(self.feature_columns)
        if unknown:
            raise ValueError(f"categorical levels given for non-features: {sorted(unknown)}")
        self._prepare()

    # ---- precomputation, so scoring one row has no per-call setup -----------------------------------
    def _prepare(self) -> None:
        cols = self.feature_columns
        self._cat_idx = [i for i, c in enumerate(cols) if c in self.categorical_levels]
        self._num_idx = [i for i, c in enumerate(cols) if c not in self.categorical_levels]
        self._num_cols = [cols[i] for i in self._num_idx]
        self._cat_cols = [cols[i] for i in self._cat_idx]
        self._cat_index = {
            c: KeyCodes(pd.Index(self.categorical_levels[c], dtype=object)) for c in self._cat_cols
        }
        self._reasons = ReasonWriter(cols, self.reference, self.categorical_levels)

    # ---- scoring -------------------------------------------------------------------------------------
    def encode(self, features: Features) -> NDArray[np.float64]:
        """The float matrix LightGBM was trained on: numerics as floats, categoricals as training codes
        (levels unseen at training become missing)."""
        missing = [c for c in self.feature_columns if c not in features]
        if missing:
            raise KeyError(f"feature frame lacks columns the model needs: {missing}")
        x = np.empty((_n_rows(features), len(self.feature_columns)), dtype=np.float64)
        # column by column: selecting a sub-frame of a mixed (arrow-string + numeric) frame copies blocks
        # and costs milliseconds per call, which a one-deal request cannot afford
        for i, c in zip(self._num_idx, self._num_cols, strict=True):
            x[:, i] = _float_column(features, c)
        for i, c in zip(self._cat_idx, self._cat_cols, strict=True):
            values = column(features, c)
            if isinstance(values.dtype, pd.CategoricalDtype):
                # translate the frame's categories to training codes once, then index by the row codes
                # (the appended -1 is what a missing value's code -1 picks, even with no categories at all)
                to_train = self._cat_index[c].codes(object_values(values.categories))
                # a missing value's code is -1, which picks the appended -1; this holds when the frame
                # has no categories at all (one deal with no stage yet), where to_train is empty
                codes = np.append(to_train, -1)[np.asarray(values.codes)].astype(np.float64)
            else:
                raw = object_values(values)  # missing values match no level: -1
                codes = self._cat_index[c].codes(raw).astype(np.float64)
            codes[codes < 0] = np.nan
            x[:, i] = codes
        return x

    def score(self, features: pd.DataFrame, top_reasons: int = 3, with_curves: bool = False) -> pd.DataFrame:
        """Score a feature frame (as from `features.build.build_features`): `score_columns` as a frame
        with a fresh RangeIndex.
        """
        return frame_of(self.score_columns(features, top_reasons, with_curves), pd.RangeIndex(len(features)),
                        objects=self.OBJECT_COLUMNS)

    def score_columns(
        self, features: Features, top_reasons: int = 3, with_curves: bool = False
    ) -> dict[str, Any]:
        """The score columns of a feature frame (or of its columns by name, `Features`) by name, as the
        arrays `score`'s frame holds (for a caller that adds columns of its own and builds one frame).

        Returns deal_id, as_of, cold_risk, close_probability (calibrated, in [0, 1]),
        close_probability_90d (won within 90 days of as_of), slip_risk (still open at the expected close
        date; NaN without one or when it is not after as_of), likely_close_date (UTC midnight of the day
        by which P(won or lost) reaches 0.5; NaT past two years), risk_band, expected_value
        (amount × close_probability; NaN without an amount) and reasons (the cold-risk head's top
        contributions that raise the risk, each {feature, value, effect, text}) and counter_reasons (those
        that lower it). The three timing scores are NaN/NaT when the close head is not a timing model.
        With `with_curves`, also `timing_curve`: per deal `{"period_days", "hazards"}` (the calibrated
        (K, 3) open/won/lost hazards as lists, `models.timing.curves_from_json` reads them back), None
        when the close head is not a timing model.
        """
        x = self.encode(features)
        cold = self.cold.proba(x, features)
        n = len(x)
        # the frame's arrays keep their dtypes (string ids, tz-aware UTC times) without an object round trip
        as_of = column(features, "as_of") if "as_of" in features else from_ns(np.full(n, NAT_NS))
        p90 = np.full(n, np.nan)
        slip = np.full(n, np.nan)
        likely = from_ns(np.full(n, NAT_NS))
        stored_curves: list[Any] = [None] * n
        if self.close.kind == "competing_risks":
            curves = self.close.curves(x)
            if with_curves:
                stored_curves = curves_to_json(curves)
            close = curves.p_won()
            p90 = curves.won_within(np.full(n, 90.0))
            if "days_to_close" in features:
                slip = self.close.slip_risk(x, _float_column(features, "days_to_close"), curves)
            days = likely_close_days(curves)
            if "as_of" in features:
                likely = from_ns(_floor_day(to_ns(as_of), days_ns(days)))
        else:
            close = self.close.proba(x, features)
        amount = (
            _float_column(features, "amount") if "amount" in features else np.full(len(x), np.nan)
        )
        if top_reasons > 0:
            reasons, counter = self.reasons(x, features, top_reasons)
        else:
            reasons, counter = [[] for _ in range(n)], [[] for _ in range(n)]
        deal_id = column(features, "deal_id") if "deal_id" in features else np.arange(n).astype(str)
        out = {
            "deal_id": deal_id.copy() if isinstance(deal_id, pd.api.extensions.ExtensionArray)
            else string_array(deal_id, TEXT),
            "as_of": as_of.copy(),
            "cold_risk": np.asarray(cold),
            "close_probability": np.asarray(close),
            "close_probability_90d": np.asarray(p90),
            "slip_risk": np.asarray(slip),
            "likely_close_date": likely,
            "risk_band": string_array(assign_bands(cold, self.band_thresholds), TEXT),
            "expected_value": np.asarray(amount * close),
            "reasons": _objects(reasons),
            "counter_reasons": _objects(counter),
        }
        if with_curves:
            out["timing_curve"] = _objects(stored_curves)
        return out

    def timing_curves(self, features: pd.DataFrame) -> TimingCurves | None:
        """Per-deal hazard curves of the close head (None when it is not a timing model)."""
        if self.close.kind != "competing_risks":
            return None
        return self.close.curves(self.encode(features))

    def reasons(
        self, x: NDArray[np.float64], features: Features, top_k: int = 3
    ) -> tuple[list[list[dict[str, Any]]], list[list[dict[str, Any]]]]:
        """(reasons, counter_reasons) of the cold-risk head (the one a manager acts on): up to `top_k`
        contributions that raise the risk, and apart, up to `top_k` that lower it."""
        if len(x) == 0:
            return [], []
        pipeline, stage = _keys_or_blank(features)
        head = self.cold
        if head.kind == "lightgbm":
            contrib = head.contributions(x)
            return self._reasons.explain(contrib, x, pipeline, stage, top_k)
        assert head.prior is not None
        rates = head.prior.predict_proba(_as_frame(features))
        prior = stage_prior_reasons(rates, head.prior.global_rate_, pipeline, stage, "went cold")
        # the stage's rate against the overall one: a reason when above it, a counter-reason when below
        return (
            [[r for r in row if r["effect"] > 0] for row in prior],
            [[r for r in row if r["effect"] < 0] for row in prior],
        )

    # ---- persistence -------------------------------------------------------------------------------
    def save(self, directory: str | os.PathLike[str]) -> Path:
        """Write the bundle as plain files plus `manifest.json` (SHA-256 of each); returns the folder."""
        root = Path(directory)
        root.mkdir(parents=True, exist_ok=True)
        files: dict[str, bytes] = {}
        heads: dict[str, Any] = {}
        for name, head in (("cold", self.cold), ("close", self.close)):
            if head.kind in ("lightgbm", "competing_risks"):
                assert head.booster is not None
                fname = f"{name}_head.txt"
                files[fname] = head.booster.model_to_string().encode("utf-8")
            else:
                assert head.prior is not None
                fname = f"{name}_head.json"
                files[fname] = _dump(head.prior.to_dict())
            heads[name] = {
                "kind": head.kind,
                "file": fname,
                "calibrator": head.calibrator.to_dict() if head.calibrator is not None else None,
            }
            if head.timing is not None:
                heads[name]["timing"] = head.timing.spec()
                if head.timing.slip is not None:
                    slip_file = f"{name}_slip_head.txt"
                    files[slip_file] = head.timing.slip.booster.model_to_string().encode("utf-8")
                    heads[name]["slip_file"] = slip_file
        files[REFERENCE_JSON] = _dump(self.reference)
        spec = {
            "format_version": FORMAT_VERSION,
            "feature_columns": self.feature_columns,
            "categorical_levels": self.categorical_levels,
            "band_thresholds": self.band_thresholds,
            "heads": heads,
            "reference_file": REFERENCE_JSON,
            "metadata": self.metadata,
        }
        files[BUNDLE_JSON] = _dump(spec)
        for fname, data in files.items():
            (root / fname).write_bytes(data)
        manifest = {
            "format_version": FORMAT_VERSION,
            "files": {fname: _sha256(data) for fname, data in sorted(files.items())},
        }
        (root / MANIFEST).write_bytes(_dump(manifest))
        return root

    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> ScoringBundle:
        """Load a saved bundle, checking every file's SHA-256 first; raises `BundleIntegrityError`."""
        root = Path(directory)
        manifest_path = root / MANIFEST
        if not manifest_path.is_file():
            raise BundleIntegrityError(manifest_path, "missing: not a scoring bundle folder (no manifest)")
        manifest = _parse_json(manifest_path, manifest_path.read_bytes())
        expected = manifest.get("files")
        if not isinstance(expected, dict) or BUNDLE_JSON not in expected:
            raise BundleIntegrityError(manifest_path, f"malformed: no 'files' entry listing {BUNDLE_JSON}")
        verified: dict[str, bytes] = {}
        for fname, digest in expected.items():
            path = root / fname
            if Path(fname).name != fname:
                raise BundleIntegrityError(
                    manifest_path, f"lists a path outside the bundle folder: {fname!r}"
                )
            if not path.is_file():
                raise BundleIntegrityError(path, "missing (listed in manifest.json)")
            data = path.read_bytes()
            if _sha256(data) != digest:
                raise BundleIntegrityError(path, "SHA-256 does not match manifest.json: the file was altered")
            verified[fname] = data

        def get(fname: str) -> bytes:
            if fname not in verified:
                raise BundleIntegrityError(
                    root / fname, "needed by bundle.json but not listed in manifest.json"
                )
            return verified[fname]

        spec = _parse_json(root / BUNDLE_JSON, verified[BUNDLE_JSON])
        if spec.get("format_version") not in READABLE_FORMAT_VERSIONS:
            raise BundleIntegrityError(
                root / BUNDLE_JSON, f"unsupported format_version {spec.get('format_version')!r}"
            )
        heads: dict[str, Head] = {}
        for name in HEAD_NAMES:
            h = spec["heads"][name]
            data = get(h["file"])
            cal = Calibrator.from_dict(h["calibrator"]) if h.get("calibrator") else None
            if h["kind"] in ("lightgbm", "competing_risks"):
                booster = _booster(root / h["file"], data)
                if h["kind"] == "lightgbm":
                    heads[name] = Head.lightgbm(booster, cal)
                else:
                    # the slip model's booster (bundles since round 13's adoption; none before)
                    slip_booster = (_booster(root / h["slip_file"], get(h["slip_file"]))
                                    if h.get("slip_file") else None)
                    try:
                        heads[name] = Head.competing_risks(
                            TimingModel.from_spec(booster, h["timing"], slip_booster))
                    except (KeyError, TypeError, ValueError) as exc:
                        raise BundleIntegrityError(
                            root / BUNDLE_JSON, f"malformed timing spec of the {name} head: {exc}"
                        ) from exc
            elif h["kind"] == "stage_prior":
                heads[name] = Head.stage_prior(StagePrior.from_dict(_parse_json(root / h["file"], data)), cal)
            else:
                raise BundleIntegrityError(root / BUNDLE_JSON, f"unknown head kind {h['kind']!r}")
        reference = _parse_json(root / spec["reference_file"], get(spec["reference_file"]))
        return cls(
            cold=heads["cold"],
            close=heads["close"],
            feature_columns=spec["feature_columns"],
            categorical_levels=spec["categorical_levels"],
            band_thresholds=spec["band_thresholds"],
            reference=reference,
            metadata=spec.get("metadata") or {},
        )

    def describe(self) -> dict[str, Any]:
        """A JSON-ready summary (heads' kinds, features, thresholds, metadata) for `GET /v1/model`."""
        return {
            "heads": {"cold": self.cold.kind, "close": self.close.kind},
            "feature_columns": self.feature_columns,
            "band_thresholds": self.band_thresholds,
            "metadata": self.metadata,
        }


def _booster(path: Path, data: bytes) -> lgb.Booster:
    """A LightGBM booster from its verified text file; `BundleIntegrityError` naming it when it is not one."""
    try:
        return lgb.Booster(model_str=data.decode("utf-8"))
    except Exception as exc:  # LightGBM raises its own error type on a corrupt model
        raise BundleIntegrityError(path, f"not a LightGBM model: {exc}") from exc


def _n_rows(features: Features) -> int:
    """Rows of a feature frame, or the length of its columns given by name."""
    if isinstance(features, pd.DataFrame):
        return len(features)
    return len(next(iter(features.values()))) if features else 0


def _as_frame(features: Features) -> pd.DataFrame:
    """The feature frame (built from the columns when given by name), for heads that read a frame."""
    if isinstance(features, pd.DataFrame):
        return features
    return frame_of(features, pd.RangeIndex(_n_rows(features)))


def _float_column(frame: Features, name: str) -> NDArray[np.float64]:
    values = column(frame, name)
    if isinstance(values, np.ndarray) and values.dtype.kind in "fiub":
        return values.astype(np.float64, copy=False)
    return np.asarray(pd.array(values).to_numpy(dtype=np.float64, na_value=np.nan), dtype=np.float64)


def days_ns(days: NDArray[np.float64]) -> NDArray[np.int64]:
    """Days (floats, NaN for none) as int64 ns (NAT_NS for NaN): `pd.to_timedelta(days, unit="D")` in
    nanoseconds, computed as pandas computes it (whole days and the fraction rounded to 13 decimals,
    each times the day's ns), without its fixed cost. Whole days are days times DAY_NS: pandas' own
    answer for them is in microseconds, which `.asi8` would have read as nanoseconds."""
    values = np.asarray(days, dtype=np.float64)
    missing = np.isnan(values)
    with np.errstate(invalid="ignore"):
        whole = np.where(missing, 0.0, values).astype(np.int64)
    frac = np.round(np.where(missing, 0.0, values) - whole, 13)
    return np.where(missing, NAT_NS, whole * DAY_NS + (frac * DAY_NS).astype(np.int64))


def _floor_day(t_ns: NDArray[np.int64], delta_ns: NDArray[np.int64]) -> NDArray[np.int64]:
    """UTC midnight of the day of `t + delta` (both int64 ns, NaT where either is), as pandas'
    `(t + delta).floor("D")` gives it, without its Series and index round trips."""
    valid = (t_ns != NAT_NS) & (delta_ns != NAT_NS)
    total = np.where(valid, t_ns + np.where(valid, delta_ns, 0), 0)
    return np.where(valid, total - total % DAY_NS, NAT_NS)


def _objects(values: Sequence[Any]) -> NDArray[np.object_]:
    """A list of lists, dicts or None as a 1-d object array (one element per item, as a frame holds it)."""
    out = np.empty(len(values), dtype=object)
    for i, value in enumerate(values):
        out[i] = value
    return out


def _keys_or_blank(features: Features) -> tuple[NDArray[np.object_], NDArray[np.object_]]:
    """(pipeline, stage) per row as plain object arrays ('' when unknown), cheap for one row."""
    out = []
    for names in (("pipeline", "pipeline_cat"), ("stage", "stage_cat")):
        col = next((c for c in names if c in features), None)
        if col is None:
            out.append(np.full(_n_rows(features), "", dtype=object))
            continue
        values = object_values(column(features, col), na_value="")
        out.append(
            values.astype(str).astype(object) if len(values) and not isinstance(values[0], str) else values
        )
    return out[0], out[1]


def _dump(obj: Any) -> bytes:
    return json.dumps(_finite(obj), indent=1, sort_keys=True, default=_json_default, allow_nan=False).encode(
        "utf-8"
    )


def _finite(obj: Any) -> Any:
    """NaN/inf become null so the files are strict JSON (metrics can be NaN on a one-class window)."""
    if isinstance(obj, float | np.floating):
        return float(obj) if np.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): _finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _finite(obj.tolist())
    return obj


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, pd.Timestamp):
        return obj.isoformat()
    return str(obj)


def _parse_json(path: Path, data: bytes) -> Any:
    try:
        return json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleIntegrityError(path, f"not valid JSON: {exc}") from exc
