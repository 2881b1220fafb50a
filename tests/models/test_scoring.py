"""The one scoring path: open deals at t, features as of t, both heads, bands and reasons."""

import numpy as np
import pandas as pd
import pytest

from features.build import FeatureBuilder
from features.history import DealHistory
from models.bundle import SCORE_COLUMNS, ScoringBundle
from models.scoring import open_deal_points, score_points

T = pd.Timestamp("2024-03-01", tz="UTC")


def _hand_written_history() -> DealHistory:
    deals = pd.DataFrame(
        {
            "deal_id": [
                "open-no-stage",
                "won-before",
                "created-after",
                "reopened",
                "won-after",
                "lost-before",
            ],
            "pipeline": ["Sales"] * 6,
            "owner": ["ann"] * 6,
            "amount": [100.0] * 6,
            "created_at": [
                "2024-01-01",
                "2024-01-01",
                "2024-03-02",
                "2024-01-01",
                "2024-01-01",
                "2024-01-01",
            ],
        }
    )
    stage_changes = pd.DataFrame(
        [
            ("won-before", "Qualified", "2024-01-05"),
            ("won-before", "Closed Won", "2024-02-01"),
            ("reopened", "Closed Lost", "2024-02-01"),
            ("reopened", "Qualified", "2024-02-15"),
            ("won-after", "Qualified", "2024-02-01"),
            ("won-after", "Closed Won", "2024-03-01T00:00:01"),
            ("lost-before", "Closed Lost", "2024-03-01"),  # at exactly t: already lost as of t
        ],
        columns=["deal_id", "stage", "changed_at"],
    )
    activities = pd.DataFrame({"deal_id": ["open-no-stage"], "type": ["call"], "occurred_at": ["2024-01-02"]})
    return DealHistory.from_frames(deals, stage_changes, activities)


def test_open_deal_points_are_deals_created_and_not_closed_by_t() -> None:
    points = open_deal_points(_hand_written_history(), T)
    assert sorted(points["deal_id"]) == ["open-no-stage", "reopened", "won-after"]
    assert (points["as_of"] == T).all()
    assert str(points["as_of"].dtype) == "datetime64[ns, UTC]"


@pytest.fixture(scope="module")
def history() -> DealHistory:
    from training.simulate import simulate_history

    return simulate_history(n_deals=600, seed=3)


@pytest.fixture(scope="module")
def bundle(history: DealHistory) -> ScoringBundle:
    """A small bundle from training's own `train` (the scoring path, not model quality, is under test)."""
    from training.train import TrainConfig, train

    result = train(history, TrainConfig(seed=0, lightgbm_params={"n_estimators": 40}))
    bundle: ScoringBundle = result.bundle
    return bundle


def test_open_deals_match_the_feature_builders_outcome(history: DealHistory) -> None:
    t = history.end_time - pd.Timedelta(days=100)
    points = open_deal_points(history, t)
    assert len(points) > 20
    builder = FeatureBuilder().fit(history)
    features = builder.transform(history, points)
    assert (features["outcome"] == "open").all()
    everyone = history.deals.loc[history.deals["created_at"] <= t, ["deal_id"]].assign(
        as_of=points["as_of"].iloc[0]
    )
    all_outcomes = builder.transform(history, everyone.reset_index(drop=True))["outcome"]
    assert int((all_outcomes == "open").sum()) == len(points)


def test_score_points_gives_scores_with_context(history: DealHistory, bundle: ScoringBundle) -> None:
    t = history.end_time - pd.Timedelta(days=60)
    points = open_deal_points(history, t)
    scores = score_points(bundle, history, points, FeatureBuilder().fit(history))
    assert list(scores.columns[: len(SCORE_COLUMNS)]) == SCORE_COLUMNS
    for column in ("pipeline", "owner", "team", "stage", "amount", "expected_close_date"):
        assert column in scores.columns
    assert scores["deal_id"].tolist() == points["deal_id"].tolist()
    assert scores["cold_risk"].between(0, 1).all() and scores["close_probability"].between(0, 1).all()
    np.testing.assert_allclose(scores["expected_value"], scores["amount"] * scores["close_probability"])
    first = scores["reasons"].iloc[0][0]
    assert set(first) == {"feature", "value", "effect", "text"}


def test_scores_as_of_t_ignore_everything_after_t(history: DealHistory, bundle: ScoringBundle) -> None:
    t = history.end_time - pd.Timedelta(days=120)
    points = open_deal_points(history, t)
    from_full = score_points(bundle, history, points, FeatureBuilder().fit(history))
    cut = history.cut(t)
    from_cut = score_points(bundle, cut, points, FeatureBuilder().fit(cut))
    pd.testing.assert_frame_equal(from_full, from_cut)


def test_a_history_without_deals_has_no_open_points_rather_than_an_error(history: DealHistory) -> None:
    # A pipeline whose deals are all gone or not created yet: the fuzzer's /changes 500 came from here.
    points = open_deal_points(history.subset([]), "2025-01-01")
    assert len(points) == 0
    assert str(points["as_of"].dtype) == "datetime64[ns, UTC]"


def test_score_points_equals_the_bundle_scoring_the_feature_frame(
    history: DealHistory, bundle: ScoringBundle
) -> None:
    """score_points scores the feature columns unframed; to the last bit what the bundle gives for the
    feature frame, with the frame's context columns beside the scores."""
    t = history.end_time - pd.Timedelta(days=30)
    points = open_deal_points(history, t)
    builder = FeatureBuilder().fit(history)
    features = builder.transform(history, points)
    framed = bundle.score(features, with_curves=True)
    for c in ("pipeline", "owner", "team", "stage", "amount", "expected_close_date", "outcome"):
        framed[c] = features[c].array
    for i in (0, 1, len(points) - 1):  # one deal at a time too
        alone = score_points(bundle, history.subset([points["deal_id"].iloc[i]]), points.iloc[[i]], builder,
                             with_curves=True)
        pd.testing.assert_frame_equal(alone, framed.iloc[[i]].reset_index(drop=True), check_exact=True)
    pd.testing.assert_frame_equal(score_points(bundle, history, points, builder, with_curves=True), framed,
                                  check_exact=True)
