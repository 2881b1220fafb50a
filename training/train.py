"""`train(history, config, tracking_uri)`: snapshots → features → labels → split → both heads → one
MLflow run that logs everything and registers a new version of `deal-risk`.

The first version becomes `@champion`; later versions are tagged `status=candidate` and wait for
`promote`. On thin data the heads get fewer, shallower trees; a cold head whose LightGBM does not beat
the stage prior on the calibration window is served as the stage prior itself, while the close head's
competing-risks model is kept (see `_fit_close_head`).
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from features.build import FeatureBuilder
from features.history import DealHistory
from features.jsonable import jsonable
from features.labels import won_label
from models.bands import choose_thresholds
from models.baselines import StagePrior
from models.calibration import Calibrator, reliability_bins
from models.heads import make_lightgbm, make_logistic
from models.loading import CHAMPION_ALIAS, REGISTERED_MODEL, local_artifact_root
from models.monitor import feature_reference
from training.metrics import binary_metrics, flatten, side_by_side
from training.snapshots import TimeSplit, make_snapshots, make_time_split, time_split

logger = logging.getLogger(__name__)

EXPERIMENT = "deal-risk"
# head name -> label column produced by `time_split`
HEADS = {"cold": "cold", "close": "won"}
MODELS = ("lightgbm", "stage_prior", "logistic")
# Run tag holding `TrainConfig.to_json()`: what `compare` retrains a registered version's recipe from.
TRAIN_CONFIG_TAG = "train_config"

Progress = Callable[[str, float], None]


@dataclass
class TrainConfig:
    """Everything that shapes a training run (all logged as MLflow parameters)."""

    horizon_days: float = 14
    cadence_days: float = 7
    at_events: bool = False
    test_days: float = 90
    calibration_days: float = 60
    seed: int = 0
    # One thread per fit: LightGBM's OpenMP threads spin-wait and slow down by an order of magnitude
    # when the cores are shared (test workers, the service); measured 1.6 s vs 56 s on a loaded box.
    n_jobs: int = 1
    lightgbm_params: dict[str, Any] = field(default_factory=dict)
    # The cold head's calibration map: Platt (two parameters) unless the calibration window holds at
    # least this many labelled rows, then isotonic. Weekly snapshots of one deal are far from
    # independent: on bench_timing a 60-day window held 3,000-6,000 rows from under 1,000 deals, and
    # isotonic steps fitted on them gave a cold ECE of 0.026 on later snapshots where Platt gave 0.017
    # (and kept the raw ranking instead of tying scores on plateaus).
    min_isotonic_rows: int = 50_000
    # Below either, the data is "thin" and the run says so.
    thin_closed_deals: int = 200
    thin_positives: int = 50
    # LightGBM parameters of the close head's competing-risks model (over `models.timing` defaults)
    timing_params: dict[str, Any] = field(default_factory=dict)
    # Feature columns the heads must not see (ablations, or a feature known to be broken at the source).
    drop_features: tuple[str, ...] = ()
    # The close head's outcome split (c, d) applies to the first this many 30-day periods ahead only,
    # later ones keeping the booster's own won share; None: every period, as since round 5 (rounds
    # 17-18 of docs/models.md). The slip model's map always applies to every period.
    split_first_periods: int | None = None

    def __post_init__(self) -> None:
        from features.build import FEATURE_COLUMNS

        self.drop_features = tuple(self.drop_features)
        unknown = sorted(set(self.drop_features) - set(FEATURE_COLUMNS))
        if unknown:
            raise ValueError(f"drop_features names unknown feature columns: {unknown}")
        if self.split_first_periods is not None and self.split_first_periods < 1:
            raise ValueError(f"split_first_periods must be None (every period) or at least 1, "
                             f"not {self.split_first_periods}")

    def params(self) -> dict[str, Any]:
        flat = {k: v for k, v in asdict(self).items() if k not in ("lightgbm_params", "timing_params")}
        flat["drop_features"] = ",".join(self.drop_features)
        flat.update({f"lightgbm.{k}": v for k, v in self.lightgbm_params.items()})
        flat.update({f"timing.{k}": v for k, v in self.timing_params.items()})
        return flat

    def feature_columns(self) -> tuple[list[str], list[str]]:
        """The feature columns the heads are fitted on, and which of them are categorical."""
        from features.build import CATEGORICAL_FEATURES, FEATURE_COLUMNS

        drop = set(self.drop_features)
        columns = [c for c in FEATURE_COLUMNS if c not in drop]
        return columns, [c for c in CATEGORICAL_FEATURES if c not in drop]

    def to_json(self) -> str:
        """The whole configuration as JSON, logged with every run so `compare` can rebuild it."""
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> TrainConfig:
        """The configuration a run was trained with (fields unknown to this version are ignored)."""
        raw = json.loads(text)
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in raw.items() if k in known})


@dataclass
class HeadFit:
    """One head after fitting: what is served and how every model did on the test window."""

    name: str
    served: str  # "lightgbm" or "stage_prior"
    model: Any
    calibrator: Calibrator | None
    stage_prior: StagePrior
    metrics: dict[str, dict[str, float]]  # model -> metric -> value (test window)
    test_predictions: dict[str, np.ndarray]
    test_y: np.ndarray
    importance: dict[str, float]


@dataclass
class RunResult:
    """What a training run produced."""

    run_id: str | None
    model_version: str | None
    is_champion: bool
    metrics: dict[str, dict[str, dict[str, float]]]  # head -> model -> metric -> value
    data_note: str
    thin_data: bool
    served: dict[str, str]
    n_snapshots: int
    n_closed_deals: int
    split: TimeSplit
    fingerprint: str
    seconds: float
    bundle: Any = None

    def metrics_table(self) -> pd.DataFrame:
        """Rows head x model; columns ROC AUC, PR AUC, Brier, log loss, ECE, n."""
        return side_by_side(self.metrics)

    def flat_metrics(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for head, models in self.metrics.items():
            for model, values in models.items():
                out.update(flatten(f"{head}.{model}", values))
        return out


@dataclass
class TrainingData:
    """Labelled snapshots with their features, shared by both heads."""

    frame: pd.DataFrame  # deal_id, as_of, window, cold, won, features and context columns
    split: TimeSplit
    feature_columns: list[str]
    categorical: list[str]


def positive_proba(model: Any, x: pd.DataFrame) -> np.ndarray:
    """P(positive) from an sklearn-style classifier (the second column of `predict_proba`)."""
    return np.asarray(model.predict_proba(x), dtype=np.float64)[:, 1]


def _noop(stage: str, fraction: float) -> None:
    return None


def prepare_training_data(
    history: DealHistory, config: TrainConfig, split: TimeSplit | None = None,
    builder: FeatureBuilder | None = None,
) -> TrainingData:
    """Snapshots, both labels censored per window, and features built once for both heads.

    Features come from `builder` (fitted on `history` when not given). Its statistics are time-indexed,
    so fitting on the whole history leaks nothing into earlier snapshots.
    """
    points = make_snapshots(history, cadence_days=config.cadence_days, at_events=config.at_events)
    if split is None:
        split = make_time_split(
            history.end_time, history.deals["created_at"].min(), config.test_days, config.calibration_days
        )
    labelled = time_split(history, points, split, horizon_days=config.horizon_days)
    labelled = labelled[labelled["window"].notna()].reset_index(drop=True)
    if builder is None:
        builder = FeatureBuilder().fit(history)
    feats = builder.transform(history, labelled[["deal_id", "as_of"]])
    extra = [c for c in feats.columns if c not in ("deal_id", "as_of")]
    frame = pd.concat([labelled.reset_index(drop=True), feats[extra].reset_index(drop=True)], axis=1)
    columns, categorical = config.feature_columns()
    return TrainingData(frame, split, columns, categorical)


def closed_deal_count(history: DealHistory) -> int:
    """Deals whose latest stage is a close (won or lost), as of the end of the data."""
    deals = history.deals[["deal_id"]].assign(as_of=history.end_time)
    return int(won_label(history, deals).notna().sum())


def _calibrate(raw: np.ndarray, y: np.ndarray, min_isotonic_rows: int) -> Calibrator:
    method = "isotonic" if len(y) >= min_isotonic_rows else "platt"
    return Calibrator(method).fit(raw, y)  # type: ignore[arg-type]


def fit_timing(
    train: pd.DataFrame, cal: pd.DataFrame, cols: list[str], config: TrainConfig, slip: bool = True
) -> Any:
    """The close head: a competing-risks hazard model (`models.timing`) fitted on the training window's
    person-period rows; the share won among its closes is recalibrated on the calibration window's closes
    (`OutcomeSplitCalibrator`: when deals close stays the booster's, see docs/models.md, round 5; its
    stretch alone, round 20), on every period ahead or, with `config.split_first_periods`, on the first
    periods only. It carries a
    second booster and map, fitted the same way on the fine grid (`FINE_EARLY_EDGES`), that slip risk
    alone is read from (round 13's `slip_fine`, adopted; its map on every period). With `slip=False`
    that second booster (on ~2.5x the rows, a third of a comparison's time) is not fitted and slip risk
    is read from the 30-day curves, as for a model without one: for fits whose slip risk nobody reads."""
    from models.timing import FINE_EARLY_EDGES, TimingModel, grid_person_periods

    if np.unique(grid_person_periods(train, None).target).size < 3:
        raise ValueError(
            "not enough closed deals to train the close head: the training window needs both won and "
            "lost deals; import more closed deals or a longer history"
        )
    params = {"n_jobs": config.n_jobs, "random_state": config.seed, **config.timing_params}
    booster, calibrator = _fit_hazards(train, cal, cols, params, None, config.split_first_periods)
    slip_model = None
    # (on the fine grid a class can go missing on very little data: slip then stays the 30-day curves')
    if slip and np.unique(grid_person_periods(train, FINE_EARLY_EDGES).target).size == 3:
        slip_booster, slip_calibrator = _fit_hazards(train, cal, cols, params, FINE_EARLY_EDGES)
        slip_model = TimingModel(slip_booster, slip_calibrator, edges=FINE_EARLY_EDGES)
    return TimingModel(booster, calibrator, slip=slip_model)


def _fit_hazards(
    train: pd.DataFrame, cal: pd.DataFrame, cols: list[str], params: dict[str, Any], edges: Any,
    split_first_periods: int | None = None,
) -> tuple[Any, Any]:
    """A hazard booster on the training window's person-period rows of the grid `edges` (the 30-day one
    when None) and its `OutcomeSplitCalibrator` on the calibration window's rows of the same grid,
    applied to the first `split_first_periods` periods of that grid only when given."""
    from models.timing import OutcomeSplitCalibrator, expand_frame, fit_hazard_booster, grid_person_periods

    pp = grid_person_periods(train, edges)
    booster = fit_hazard_booster(expand_frame(train, cols, pp), pp.target, params)
    # the stretch c alone: the shift d carried the calibration window's own won share (round 20, adopted)
    calibrator = OutcomeSplitCalibrator(n_first=split_first_periods, fit_shift=False)
    pp_cal = grid_person_periods(cal, edges)
    if len(pp_cal.row):
        raw = np.asarray(booster.predict(expand_frame(cal, cols, pp_cal)), dtype=np.float64)
        calibrator.fit(raw, pp_cal.target, groups=cal["deal_id"].to_numpy(dtype=object)[pp_cal.row])
    return booster, calibrator


def head_rows(frame: pd.DataFrame, label: str) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """The snapshots with `label` known that a head is fitted on, calibrated on and judged on.

    With too little history before the split point (no row, or a single outcome, in the train window)
    the head trains on every labelled row outside the test window.
    """
    has_label = frame[label].notna()
    train = frame[has_label & (frame["window"] == "train")]
    cal = frame[has_label & (frame["window"] == "calibration")]
    test = frame[has_label & (frame["window"] == "test")]
    if len(train) == 0 or train[label].nunique() < 2:
        train = frame[has_label & (frame["window"] != "test")]
    return train, cal, test


def fit_head(name: str, data: TrainingData, config: TrainConfig, thin: bool, slip: bool = True) -> HeadFit:
    """Fit LightGBM, calibrate it on the calibration window, fit both baselines, score the test window.

    The close head's LightGBM is the competing-risks timing model (`fit_timing`, its slip booster only
    with `slip`): it learns from every snapshot, closed or still open, while the baselines see only
    snapshots whose outcome is known.
    """
    if name == "close":
        return _fit_close_head(data, config, slip)
    label = HEADS[name]
    train, cal, test = head_rows(data.frame, label)
    if len(train) == 0 or train[label].nunique() < 2:
        raise ValueError(
            f"not enough labelled history to train the {name} head: {len(train)} labelled snapshots "
            "with a single outcome; import more closed deals or a longer history"
        )
    cols = data.feature_columns
    y_train = train[label].to_numpy(dtype=float)
    params = {"n_jobs": config.n_jobs, **config.lightgbm_params}
    model = make_lightgbm(len(train), int(y_train.sum()), params)
    model.set_params(random_state=config.seed)
    model.fit(train[cols], y_train)

    prior = StagePrior().fit(train, y_train)
    logistic = make_logistic().fit(train[cols], y_train.astype(int))

    # Calibrate on the calibration window; with too few rows (or one class) there fall back to the
    # training rows, which is optimistic but better than an uncalibrated head.
    calib_rows = cal if len(cal) >= 30 and cal[label].nunique() == 2 else train
    raw_cal = positive_proba(model, calib_rows[cols])
    y_cal = calib_rows[label].to_numpy(dtype=float)
    calibrator = _calibrate(raw_cal, y_cal, config.min_isotonic_rows)

    served = "lightgbm"
    if thin and len(calib_rows) > 0 and calib_rows is cal:
        lgb_cal = binary_metrics(y_cal, calibrator.transform(raw_cal))
        prior_cal = binary_metrics(y_cal, prior.predict_proba(calib_rows))
        if not prior_cal["brier"] > lgb_cal["brier"]:
            served = "stage_prior"
    elif thin:
        served = "stage_prior"

    predictions: dict[str, np.ndarray] = {}
    if len(test):
        lgb_test = calibrator.transform(positive_proba(model, test[cols]))
        predictions = {
            "lightgbm": lgb_test,
            "stage_prior": prior.predict_proba(test),
            "logistic": positive_proba(logistic, test[cols]),
        }
    y_test = test[label].to_numpy(dtype=float)
    cal_scores = calibrator.transform(raw_cal)
    thresholds = choose_thresholds(cal_scores)
    metrics = {m: binary_metrics(y_test, predictions.get(m, np.array([])), thresholds) for m in MODELS}
    if served == "stage_prior":
        metrics["served"] = metrics["stage_prior"]
    gain = model.booster_.feature_importance(importance_type="gain")
    importance = {c: float(g) for c, g in zip(cols, gain, strict=True)}
    return HeadFit(name, served, model, calibrator, prior, metrics, predictions, y_test, importance)


def _fit_close_head(data: TrainingData, config: TrainConfig, slip: bool = True) -> HeadFit:
    """The competing-risks close head with both baselines, judged on the test window's closed deals.

    It is served even on thin data: it learns from every snapshot, open deals included, where the stage
    prior sees only the closed ones (a biased subset, and a small one); with 30 closed deals it ranked
    better than the stage prior on every simulated history tried (`bench/bench_little_data.py`), and the
    run's data note still says the scores are rough. Only when no model can be fitted (no won or no lost
    close in the training data) is the stage prior served, with null timing scores.
    """
    frame = data.frame
    in_train = frame["window"] == "train"
    if frame.loc[in_train, "event"].nunique() < 2:
        in_train = frame["window"] != "test"
    train = frame[in_train]
    cal = frame[frame["window"] == "calibration"]
    cols = data.feature_columns

    labelled = frame["won"].notna()
    train_l = frame[labelled & in_train]
    test = frame[labelled & (frame["window"] == "test")]
    y_train = train_l["won"].to_numpy(dtype=float)
    if len(train_l) == 0 or np.unique(y_train).size < 2:
        raise ValueError(
            f"not enough labelled history to train the close head: {len(train_l)} snapshots of closed "
            "deals with a single outcome; import more closed deals or a longer history"
        )
    prior = StagePrior().fit(train_l, y_train)
    logistic = make_logistic().fit(train_l[cols], y_train.astype(int))
    try:
        timing: Any = fit_timing(train, cal, cols, config, slip)
        served = "lightgbm"
    except ValueError as exc:
        logger.warning("close head served as the stage prior: %s", exc)
        timing, served = None, "stage_prior"

    predictions: dict[str, np.ndarray] = {}
    if len(test):
        predictions = {
            "stage_prior": prior.predict_proba(test),
            "logistic": positive_proba(logistic, test[cols]),
        }
        if timing is not None:
            predictions["lightgbm"] = timing.curves(test[cols]).p_won()
    y_test = test["won"].to_numpy(dtype=float)
    none = np.array([])
    metrics = {
        m: binary_metrics(y_test, predictions[m]) if m in predictions else binary_metrics(none, none)
        for m in MODELS
    }
    importance: dict[str, float] = {}
    if timing is None:
        metrics["served"] = metrics["stage_prior"]
    else:
        gain = timing.booster.feature_importance(importance_type="gain")
        importance = {c: float(g) for c, g in zip(timing.booster.feature_name(), gain, strict=True)}
    return HeadFit("close", served, timing, None, prior, metrics, predictions, y_test, importance)


def data_note_for(n_closed: int, n_positive: dict[str, int], config: TrainConfig) -> tuple[bool, str]:
    """Plain-words verdict on how much the scores are worth given the amount of history."""
    scarce = {h: n for h, n in n_positive.items() if n < config.thin_positives}
    thin = n_closed < config.thin_closed_deals or bool(scarce)
    if not thin:
        return False, f"{n_closed} closed deals: enough history for a full model."
    parts = [f"Only {n_closed} closed deals"]
    if scarce:
        parts.append(", ".join(f"{n} positive {h} labels" for h, n in scarce.items()))
    return True, "; ".join(parts) + ": scores lean on stage priors; treat them as rough."


def train(
    history: DealHistory,
    config: TrainConfig | None = None,
    tracking_uri: str | None = None,
    register: bool = True,
    progress: Progress | None = None,
) -> RunResult:
    """Train both heads, log one MLflow run in experiment `deal-risk` and register a model version."""
    config = config or TrainConfig()
    report = progress or _noop
    started = time.perf_counter()
    from training.data import history_fingerprint

    report("snapshots and features", 0.05)
    data = prepare_training_data(history, config)
    n_closed = closed_deal_count(history)
    labelled = data.frame[data.frame["window"] != "test"]
    n_pos = {
        head: int(min((labelled[col] == 1).sum(), (labelled[col] == 0).sum())) for head, col in HEADS.items()
    }
    thin, note = data_note_for(n_closed, n_pos, config)
    if thin:
        logger.warning(note)

    heads: dict[str, HeadFit] = {}
    for i, head in enumerate(HEADS):
        report(f"fitting {head} head", 0.3 + 0.3 * i)
        heads[head] = fit_head(head, data, config, thin)

    report("bundle", 0.85)
    bundle = build_bundle(heads, data, config, history, note, thin)
    metrics = {h: fit.metrics for h, fit in heads.items()}
    fingerprint = history_fingerprint(history)
    result = RunResult(
        run_id=None,
        model_version=None,
        is_champion=False,
        metrics=metrics,
        data_note=note,
        thin_data=thin,
        served={h: fit.served for h, fit in heads.items()},
        n_snapshots=len(data.frame),
        n_closed_deals=n_closed,
        split=data.split,
        fingerprint=fingerprint,
        seconds=0.0,
        bundle=bundle,
    )
    if tracking_uri is not None:
        report("logging to MLflow", 0.9)
        _log_run(result, heads, data, config, tracking_uri, register)
    result.seconds = time.perf_counter() - started
    report("done", 1.0)
    return result


def build_bundle(
    heads: dict[str, HeadFit],
    data: TrainingData,
    config: TrainConfig,
    history: DealHistory,
    note: str,
    thin: bool,
) -> Any:
    """The ScoringBundle with both served heads, their calibrators, bands and reasons reference."""
    from models.bundle import Head, ScoringBundle, categorical_levels_of
    from models.reasons import build_reference

    served: dict[str, Any] = {}
    for name, fit in heads.items():
        if fit.served == "stage_prior":
            served[name] = Head.stage_prior(fit.stage_prior)
        elif name == "close":
            served[name] = Head.competing_risks(fit.model)
        else:
            served[name] = Head.lightgbm(fit.model, fit.calibrator)
    frame = data.frame
    fitting = frame[frame["window"] != "test"]
    # Bands from the served cold head's scores on the calibration window (training rows when empty).
    cal = frame[frame["window"] == "calibration"]
    basis = cal if len(cal) else fitting
    cold_head = heads["cold"]
    if cold_head.served == "stage_prior":
        cold_scores = cold_head.stage_prior.predict_proba(basis)
    else:
        assert cold_head.calibrator is not None
        raw = positive_proba(cold_head.model, basis[data.feature_columns])
        cold_scores = cold_head.calibrator.transform(raw)
    thresholds = choose_thresholds(cold_scores)
    # Drift is judged against the latest snapshots the run saw (calibration and test windows): the
    # population nearest to live deals, so slow benign trends do not read as drift.
    recent = frame[frame["window"] != "train"] if (frame["window"] != "train").any() else fitting
    reference = build_reference(fitting, (fitting["won"] == 1).to_numpy(), data.feature_columns)
    from training.data import history_fingerprint

    metadata = {
        "horizon_days": config.horizon_days,
        "trained_at": pd.Timestamp.now(tz="UTC").isoformat(),
        "data_end": history.end_time.isoformat(),
        "data_fingerprint": history_fingerprint(history),
        "thin_data": thin,
        "data_note": note,
        "served": {h: f.served for h, f in heads.items()},
        "metrics": {h: f.metrics.get(f.served, {}) for h, f in heads.items()},
        # For the model card: every model's test metrics side by side (the served one beside the
        # baselines), and the served head's calibration curve on the test window.
        # (undefined metrics, e.g. the observed rate of an empty band, are None as JSON will hold them)
        "metrics_by_model": {
            h: {m: {k: jsonable(v) for k, v in values.items()} for m, values in f.metrics.items()}
            for h, f in heads.items()
        },
        "calibration": {
            h: reliability_bins(f.test_predictions.get(f.served, np.array([])), f.test_y)
            for h, f in heads.items()
        },
        "train_config": json.loads(config.to_json()),
        # What live deals are checked against for drift (`models.monitor`).
        "feature_reference": feature_reference(recent, data.feature_columns, data.categorical),
    }
    return ScoringBundle(
        cold=served["cold"],
        close=served["close"],
        feature_columns=data.feature_columns,
        categorical_levels=categorical_levels_of(frame, data.categorical),
        band_thresholds=thresholds,
        reference=reference,
        metadata=metadata,
    )


def _log_run(
    result: RunResult,
    heads: dict[str, HeadFit],
    data: TrainingData,
    config: TrainConfig,
    tracking_uri: str,
    register: bool,
) -> None:
    import mlflow
    from mlflow import MlflowClient

    from models.loading import log_bundle
    from training.plots import plot_calibration, plot_importance, plot_roc

    # The fluent API (needed by log_model) reads a process-wide URI; set it here, at call time, never
    # at import, so tests and the CLI each point at their own store.
    mlflow.set_tracking_uri(tracking_uri)
    client = MlflowClient(tracking_uri=tracking_uri)
    experiment_id = ensure_experiment(tracking_uri)
    with mlflow.start_run(experiment_id=experiment_id) as run:
        params = config.params() | {
            "n_snapshots": result.n_snapshots,
            "n_closed_deals": result.n_closed_deals,
            "data_fingerprint": result.fingerprint,
            **{f"split.{k}": v for k, v in result.split.to_dict().items()},
            **{f"{h}.served": s for h, s in result.served.items()},
        }
        mlflow.log_params({k: str(v)[:500] for k, v in params.items()})
        mlflow.set_tags({"data_note": result.data_note, "thin_data": str(result.thin_data).lower(),
                         "data_fingerprint": result.fingerprint, TRAIN_CONFIG_TAG: config.to_json()})
        finite = {k: v for k, v in result.flat_metrics().items() if np.isfinite(v)}
        mlflow.log_metrics(finite)
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            for head, fit in heads.items():
                if fit.test_predictions:
                    plot_calibration(fit.test_y, fit.test_predictions, folder / f"{head}_calibration.png",
                                     f"{head}: calibration (test window)")
                    plot_roc(fit.test_y, fit.test_predictions, folder / f"{head}_roc.png",
                             f"{head}: ROC (test window)")
                plot_importance(fit.importance, folder / f"{head}_importance.png", f"{head}: importance")
            mlflow.log_artifacts(str(folder), artifact_path="plots")
        example = data.frame[["deal_id", "as_of", *data.feature_columns, *_context(data.frame)]].head(5)
        with warnings.catch_warnings():
            # MLflow's schema hints (integer columns, no input example) are about its own serving path;
            # the service loads the bundle files directly, so they are noise on the CLI.
            warnings.simplefilter("ignore", UserWarning)
            info = log_bundle(
                result.bundle, "model", example, registered_model_name=REGISTERED_MODEL if register else None
            )
        result.run_id = run.info.run_id
    if not register:
        return
    version = str(info.registered_model_version)
    result.model_version = version
    client.set_model_version_tag(REGISTERED_MODEL, version, "data_note", result.data_note)
    if _champion_version(client) is None:
        client.set_registered_model_alias(REGISTERED_MODEL, CHAMPION_ALIAS, version)
        client.set_model_version_tag(REGISTERED_MODEL, version, "status", "champion")
        result.is_champion = True
    else:
        client.set_model_version_tag(REGISTERED_MODEL, version, "status", "candidate")


def artifact_location(tracking_uri: str) -> str | None:
    """For a local SQLite store, artifacts go next to the database file (MLflow's default is ./mlruns
    under whatever the current directory is); a tracking server decides for itself."""
    root = local_artifact_root(tracking_uri)
    return root.resolve().as_uri() if root is not None else None


def ensure_experiment(tracking_uri: str) -> str:
    """The id of experiment `deal-risk`, created on first use."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    if experiment is not None:
        return str(experiment.experiment_id)
    return str(client.create_experiment(EXPERIMENT, artifact_location=artifact_location(tracking_uri)))


def _context(frame: pd.DataFrame) -> list[str]:
    from features.build import CONTEXT_COLUMNS

    return [c for c in CONTEXT_COLUMNS if c in frame.columns]


def _champion_version(client: Any) -> str | None:
    from mlflow.exceptions import MlflowException

    try:
        return str(client.get_model_version_by_alias(REGISTERED_MODEL, CHAMPION_ALIAS).version)
    except MlflowException:
        return None
