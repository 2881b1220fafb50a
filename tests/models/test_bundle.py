"""The scoring bundle: scores, save/load without pickle, integrity checks, and the MLflow round trip."""

from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient
from sklearn.metrics import roc_auc_score

from models.baselines import StagePrior
from models.bundle import SCORE_COLUMNS, BundleIntegrityError, Head, ScoringBundle, categorical_levels_of
from models.calibration import Calibrator
from models.heads import make_lightgbm, make_logistic
from models.loading import (
    CHAMPION_ALIAS,
    REGISTERED_MODEL,
    ModelNotFoundError,
    load_bundle,
    log_bundle,
    pyfunc_frame,
)

NUMERIC = ["days_since_activity", "stage_age_days", "n_activity_30d", "owner_win_rate", "log_amount"]
CATEGORICAL = ["pipeline_cat", "stage_cat"]
FEATURES = NUMERIC + CATEGORICAL


def synthetic_features(n: int, seed: int) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """A feature frame shaped like build_features' output, with cold and won labels driven by it."""
    rng = np.random.default_rng(seed)
    pipelines = rng.choice(["Enterprise", "Mid-Market"], n)
    stages = rng.choice(["Lead In", "Qualified", "Demo", "Proposal"], n)
    frame = pd.DataFrame(
        {
            "deal_id": pd.array([f"D{seed}-{i}" for i in range(n)], dtype="string"),
            "as_of": pd.Timestamp("2024-01-01", tz="UTC")
            + pd.to_timedelta(rng.integers(0, 300, n), unit="D"),
            "days_since_activity": rng.exponential(10, n),
            "stage_age_days": rng.exponential(20, n),
            "n_activity_30d": rng.poisson(4, n),
            "owner_win_rate": rng.uniform(0.1, 0.6, n),
            "log_amount": np.log1p(rng.lognormal(9, 1, n)),
            "pipeline_cat": pd.Categorical(pipelines, categories=["Enterprise", "Mid-Market"]),
            "stage_cat": pd.Categorical(stages, categories=["Lead In", "Qualified", "Demo", "Proposal"]),
            "pipeline": pd.array(pipelines, dtype="string"),
            "stage": pd.array(stages, dtype="string"),
        }
    )
    frame["amount"] = np.expm1(frame["log_amount"])
    frame.loc[rng.random(n) < 0.1, "days_since_activity"] = np.nan  # deals with no activity are valid
    silence = frame["days_since_activity"].fillna(60)
    z_cold = 0.15 * silence - 0.3 * frame["n_activity_30d"] + (stages == "Lead In") - 1
    z_won = -0.08 * silence + 4 * frame["owner_win_rate"] - 1
    cold = rng.random(n) < 1 / (1 + np.exp(-z_cold))
    won = rng.random(n) < 1 / (1 + np.exp(-z_won))
    return frame, cold.to_numpy(), won.to_numpy()


def fit_bundle(frame: pd.DataFrame, cold: np.ndarray, won: np.ndarray, seed: int = 0) -> ScoringBundle:
    """Both heads fitted, calibrated and bundled by training's own functions (first half of the rows
    trains, the next quarter calibrates, the last quarter tests)."""
    from training.simulate import simulate_history
    from training.snapshots import make_time_split
    from training.train import TrainConfig, TrainingData, build_bundle, fit_head

    n = len(frame)
    row = np.arange(n)
    window = np.where(row < n // 2, "train", np.where(row < 3 * n // 4, "calibration", "test"))
    # the close head's timing label: each deal closes (won or lost) 5 to 200 days after its snapshot
    close_days = np.random.default_rng(seed).uniform(5.0, 200.0, n)
    labelled = frame.assign(
        window=window, cold=cold.astype(float), won=won.astype(float),
        event=pd.array(np.where(won, "won", "lost"), dtype="string"), event_days=close_days,
        observed_days=np.full(n, 400.0),
    )
    start = pd.Timestamp("2024-01-01", tz="UTC")
    split = make_time_split(start + pd.Timedelta(days=300), start, 75, 75)
    data = TrainingData(labelled, split, FEATURES, CATEGORICAL)
    config = TrainConfig(seed=seed, lightgbm_params={"n_estimators": 60})
    heads = {name: fit_head(name, data, config, thin=False) for name in ("cold", "close")}
    # the history only feeds the metadata (data end and fingerprint)
    history = simulate_history(20, seed=seed)
    return build_bundle(heads, data, config, history, "synthetic features", thin=False)


@pytest.fixture(scope="module")
def data() -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    return synthetic_features(3000, seed=11)


@pytest.fixture(scope="module")
def bundle(data: tuple[pd.DataFrame, np.ndarray, np.ndarray]) -> ScoringBundle:
    return fit_bundle(*data)


def test_scores_have_the_contract_columns_and_ranges(bundle: ScoringBundle) -> None:
    frame, _, _ = synthetic_features(500, seed=12)
    scores = bundle.score(frame, top_reasons=3)
    assert list(scores.columns) == SCORE_COLUMNS
    assert scores["deal_id"].tolist() == frame["deal_id"].tolist()
    for column in ("cold_risk", "close_probability"):
        assert scores[column].between(0, 1).all()
    assert set(scores["risk_band"]) <= {"high", "medium", "low"}
    np.testing.assert_allclose(scores["expected_value"], frame["amount"] * scores["close_probability"])
    # up to 3 of each; a reason raises the cold risk, a counter-reason lowers it
    assert all(len(r) <= 3 for r in scores["reasons"]) and max(len(r) for r in scores["reasons"]) == 3
    assert all(r["effect"] > 0 for row in scores["reasons"] for r in row)
    assert all(r["effect"] < 0 for row in scores["counter_reasons"] for r in row)
    assert sum(len(r) for r in scores["counter_reasons"]) > 0
    assert list(bundle.score(frame.head(0)).columns) == SCORE_COLUMNS  # an empty request is not an error
    # bands follow cold risk: every high-band deal is riskier than every low-band one
    assert (
        scores.loc[scores.risk_band == "high", "cold_risk"].min()
        > scores.loc[scores.risk_band == "low", "cold_risk"].max()
    )


def test_heads_learn_the_signal(bundle: ScoringBundle) -> None:
    from sklearn.metrics import roc_auc_score

    frame, cold, won = synthetic_features(2000, seed=13)
    scores = bundle.score(frame, top_reasons=0)
    assert roc_auc_score(cold, scores["cold_risk"]) > 0.75
    assert roc_auc_score(won, scores["close_probability"]) > 0.7
    # a silent deal's top reason is its silence, and it raises the risk
    silent = frame.assign(days_since_activity=45.0, n_activity_30d=0).head(1)
    top = bundle.score(silent)["reasons"][0][0]
    assert top["feature"] == "days_since_activity" and top["effect"] > 0
    assert "45 days" in top["text"]


def test_categories_are_matched_by_name_not_code(bundle: ScoringBundle) -> None:
    frame, _, _ = synthetic_features(200, seed=14)
    reordered = frame.assign(
        stage_cat=frame["stage_cat"].cat.reorder_categories(["Proposal", "Demo", "Qualified", "Lead In"]),
        pipeline_cat=frame["pipeline"].astype(str),  # plain strings work too
    )
    pd.testing.assert_frame_equal(bundle.score(frame), bundle.score(reordered))



def test_unseen_categories_score_like_missing_ones(bundle: ScoringBundle) -> None:
    """A stage or pipeline never seen at training is encoded as missing, not as some trained level."""
    frame, _, _ = synthetic_features(200, seed=14)
    unseen = frame.assign(stage_cat=pd.Categorical(["Brand New Stage"] * len(frame)),
                          pipeline_cat=pd.Categorical(["Partners"] * len(frame)))
    missing = frame.assign(stage_cat=pd.Categorical([None] * len(frame), categories=["Demo"]),
                           pipeline_cat=pd.Categorical([None] * len(frame), categories=["Enterprise"]))
    x = bundle.encode(unseen)
    cat_idx = [FEATURES.index(c) for c in CATEGORICAL]
    assert np.isnan(x[:, cat_idx]).all()
    np.testing.assert_array_equal(x, bundle.encode(missing))
    pd.testing.assert_frame_equal(bundle.score(unseen), bundle.score(missing))
    # and the stage does matter to this model, so "scores like missing" is not "scores like anything"
    assert not bundle.score(frame)["cold_risk"].equals(bundle.score(missing)["cold_risk"])


def test_save_load_round_trip_gives_identical_scores(bundle: ScoringBundle, tmp_path: Path) -> None:
    frame, _, _ = synthetic_features(300, seed=15)
    bundle.save(tmp_path / "b")
    again = ScoringBundle.load(tmp_path / "b")
    pd.testing.assert_frame_equal(bundle.score(frame), again.score(frame))
    assert again.metadata == bundle.metadata and again.metadata["horizon_days"] == 14
    assert not list((tmp_path / "b").glob("*.pkl")) and not list((tmp_path / "b").glob("*.joblib"))


@pytest.mark.parametrize("name", ["cold_head.txt", "close_head.txt", "bundle.json", "reasons_reference.json"])
def test_a_changed_byte_fails_to_load_naming_the_file(
    bundle: ScoringBundle, tmp_path: Path, name: str
) -> None:
    folder = bundle.save(tmp_path / "b")
    data = bytearray((folder / name).read_bytes())
    data[len(data) // 2] ^= 0x01
    (folder / name).write_bytes(bytes(data))
    with pytest.raises(BundleIntegrityError, match=name) as info:
        ScoringBundle.load(folder)
    assert info.value.path.endswith(name)


@pytest.mark.parametrize("name", ["cold_head.txt", "manifest.json"])
def test_a_missing_file_fails_to_load_naming_it(bundle: ScoringBundle, tmp_path: Path, name: str) -> None:
    folder = bundle.save(tmp_path / "b")
    (folder / name).unlink()
    with pytest.raises(BundleIntegrityError, match=name):
        ScoringBundle.load(folder)


def test_stage_prior_heads_for_thin_data(
    data: tuple[pd.DataFrame, np.ndarray, np.ndarray], tmp_path: Path
) -> None:
    frame, cold, won = data
    thin = ScoringBundle(
        cold=Head.stage_prior(StagePrior().fit(frame, cold)),
        close=Head.stage_prior(
            StagePrior().fit(frame, won), Calibrator("platt").fit(np.full(len(won), 0.3), won)
        ),
        feature_columns=FEATURES,
        categorical_levels=categorical_levels_of(frame, CATEGORICAL),
        band_thresholds={"high": 0.6, "medium": 0.4},
        metadata={"thin_data": True},
    )
    thin.save(tmp_path / "thin")
    again = ScoringBundle.load(tmp_path / "thin")
    scores = again.score(frame.head(50))
    pd.testing.assert_frame_equal(thin.score(frame.head(50)), scores)
    # no timing model: the timing scores are null, not made up
    assert scores["close_probability_90d"].isna().all() and scores["slip_risk"].isna().all()
    assert scores["likely_close_date"].isna().all()
    # the columns by name (as `score_points` gives them) score as the frame does
    head = frame.head(50)
    by_name = {c: head[c].array for c in head.columns}
    pd.testing.assert_frame_equal(
        pd.DataFrame(thin.score_columns(by_name)), pd.DataFrame(thin.score_columns(head)), check_exact=True
    )
    # the stage is the only reason: for the risk when its rate is above the overall one, else against it
    for i in range(len(scores)):
        (stage_reason,) = scores.loc[i, "reasons"] + scores.loc[i, "counter_reasons"]
        assert stage_reason["feature"] == "stage"
        assert str(frame.loc[i, "stage"]) in stage_reason["text"]
        assert (stage_reason in scores.loc[i, "reasons"]) == (stage_reason["effect"] > 0)


def test_heads_shrink_on_little_data() -> None:
    big = make_lightgbm(300_000, 60_000).get_params()
    thin = make_lightgbm(400, 30).get_params()
    assert thin["n_estimators"] < big["n_estimators"]
    assert thin["num_leaves"] < big["num_leaves"]
    assert thin["reg_lambda"] > big["reg_lambda"]
    assert make_lightgbm(400, 30, {"n_estimators": 7}).get_params()["n_estimators"] == 7


def test_logistic_baseline_handles_categories_and_missing_values(
    data: tuple[pd.DataFrame, np.ndarray, np.ndarray],
) -> None:
    """The data's cold risk rises with silence and in "Lead In" (see synthetic_features): the baseline
    learns both directions, and rows with a missing value or an unseen stage still get a probability."""
    frame, cold, _ = data
    model = make_logistic().fit(frame[FEATURES], cold)
    base = frame[FEATURES].head(1).assign(days_since_activity=5.0, stage_cat=pd.Categorical(
        ["Proposal"], categories=frame["stage_cat"].cat.categories))

    def p(**changes: object) -> float:
        return float(model.predict_proba(base.assign(**changes))[0, 1])

    assert p(days_since_activity=40.0) > p() + 0.2  # 0.15 per silent day in the generator's logit
    lead_in = pd.Categorical(["Lead In"], categories=frame["stage_cat"].cat.categories)
    assert p(stage_cat=lead_in) > p()
    for odd in (p(days_since_activity=np.nan), p(stage_cat=pd.Categorical(["Never Seen"]))):
        assert 0 < odd < 1
    auc = roc_auc_score(cold, model.predict_proba(frame[FEATURES])[:, 1])
    assert auc > 0.75


def test_mlflow_round_trip_by_alias_and_version(
    bundle: ScoringBundle, data: tuple[pd.DataFrame, np.ndarray, np.ndarray], tmp_path: Path
) -> None:
    frame, _, _ = data
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    try:
        experiment = mlflow.create_experiment("deal-risk-test", artifact_location=(tmp_path / "art").as_uri())
        with mlflow.start_run(experiment_id=experiment):
            info = log_bundle(
                bundle, "model", frame[FEATURES + ["deal_id", "as_of"]].head(20), REGISTERED_MODEL
            )
        # it is a standard MLflow model too: pyfunc loads it from code and scores the same
        pyfunc = mlflow.pyfunc.load_model(info.model_uri)
        sent = pyfunc_frame(frame[FEATURES + ["deal_id", "as_of"]].head(10))
        served = pyfunc.predict(sent)
    finally:
        mlflow.set_tracking_uri(previous)
    np.testing.assert_allclose(served["cold_risk"], bundle.score(frame.head(10))["cold_risk"])
    assert info.signature is not None
    version = str(info.registered_model_version)
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    client.set_registered_model_alias(REGISTERED_MODEL, CHAMPION_ALIAS, version)

    loaded, label = load_bundle(f"models:/{REGISTERED_MODEL}@{CHAMPION_ALIAS}", tracking_uri=uri)
    assert label == version
    sample = frame.head(100)
    pd.testing.assert_frame_equal(bundle.score(sample), loaded.score(sample))
    by_version, label2 = load_bundle(f"models:/{REGISTERED_MODEL}/{version}", tracking_uri=uri)
    assert label2 == version
    np.testing.assert_array_equal(by_version.score(sample)["cold_risk"], bundle.score(sample)["cold_risk"])
    with pytest.raises(ModelNotFoundError):
        load_bundle(f"models:/{REGISTERED_MODEL}@nobody", tracking_uri=uri)


def test_days_to_likely_close_convert_to_nanoseconds_as_pandas_converts_them() -> None:
    """Days until the likely close date, fractional or whole, are pandas' nanoseconds to the last one
    (whole days too, which pandas itself holds in microseconds)."""
    from models.bundle import days_ns

    rng = np.random.default_rng(0)
    days = np.concatenate([rng.uniform(0, 730, 20_000), np.arange(731.0), [np.nan, 1 / 3, 0.5]])
    want = pd.to_timedelta(days, unit="D").as_unit("ns").asi8
    assert days_ns(days).tolist() == want.tolist()
    assert days_ns(np.array([3.0, np.nan])).tolist() == [3 * 86_400 * 10**9, np.iinfo(np.int64).min]
    assert days_ns(np.array([0.5]))[0] == 12 * 3_600 * 10**9
