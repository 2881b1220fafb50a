"""A deal's stored current state is the features' state as of its latest event: one definition."""

from __future__ import annotations

import numpy as np
import pandas as pd

from features.build import FeatureBuilder
from features.deal_state import current_deal_states
from training.simulate import simulate_history


def test_current_state_equals_the_feature_context_after_the_last_event() -> None:
    history = simulate_history(120, seed=11)
    states = current_deal_states(history)
    end = history.end_time
    points = pd.DataFrame(
        {
            "deal_id": history.deals["deal_id"].astype("string"),
            "as_of": pd.Series([end] * history.n_deals(), dtype="datetime64[ns, UTC]"),
        }
    )
    features = FeatureBuilder().fit(history).transform(history, points).set_index("deal_id")
    features = features.loc[states.index]
    assert states["outcome"].tolist() == features["outcome"].astype(str).tolist()
    staged = states["current_stage"].notna()  # before any stage change the features name the first stage
    assert staged.sum() > 100
    assert (
        states.loc[staged, "current_stage"].tolist()
        == features.loc[staged, "stage"].astype("string").tolist()
    )
    assert states["current_owner"].tolist() == features["owner"].astype("string").tolist()
    np.testing.assert_allclose(states["current_amount"], features["amount"].astype(float))
    closed = states["outcome"] != "open"
    assert set(states["outcome"]) >= {"open", "won", "lost"}
    assert (states.loc[closed, "closed_at"] == states.loc[closed, "stage_entered_at"]).all()
    assert states.loc[~closed, "closed_at"].isna().all()
    counts = (
        history.stage_changes.groupby("deal_id").size().reindex(states.index, fill_value=0)
        + history.activities.groupby("deal_id").size().reindex(states.index, fill_value=0)
        + history.field_changes.groupby("deal_id").size().reindex(states.index, fill_value=0)
    )
    assert states["n_events"].tolist() == counts.tolist()
