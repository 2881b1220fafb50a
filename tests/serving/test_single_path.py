"""The single-deal path scores exactly as the batch path.

`POST /v1/score` with one inline deal and `GET /v1/deals/{id}/score` score one deal at a time through
the same code as batch scoring (`models.scoring.score_points` over the whole history), with the fixed
costs of tiny inputs cut. These tests hold the two equal to the last bit: every score, band, date,
reason and context column, on thousands of deals at several times, open and closed.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient

from features.build import FeatureBuilder
from features.history import DealHistory
from features.validation.parsing import format_utc_iso
from models.bundle import ScoringBundle
from models.scoring import score_points
from serving.mapping import inline_frames, validated_history
from serving.routes.scoring import score_inline_deals
from serving.schemas import ScoreRequest
from tests.serving.conftest import World, inline_deal

N_DEALS = 2_000
N_TIMES = 4


@pytest.fixture(scope="module")
def scored_world() -> Iterator[tuple[DealHistory, ScoringBundle, FeatureBuilder]]:
    from training.simulate import simulate_history
    from training.train import TrainConfig, train

    history = simulate_history(n_deals=N_DEALS, seed=11)
    run = train(history, TrainConfig(seed=0, lightgbm_params={"n_estimators": 30}), register=False)
    yield history, run.bundle, FeatureBuilder().fit(history)


def _points(history: DealHistory, n_times: int) -> pd.DataFrame:
    """One point per deal: as of one of `n_times` times spread over the history (round robin over the
    deals), the first of them not before the deal's creation (its creation time when none is)."""
    deals = history.deals
    start, end = deals["created_at"].min(), history.end_time
    times = [start + (end - start) * (k + 1) / (n_times + 1) for k in range(n_times)]
    as_of = []
    for i, created in enumerate(deals["created_at"]):
        later = [t for t in times[i % n_times:] + times[: i % n_times] if t >= created]
        as_of.append(later[0] if later else created)
    return pd.DataFrame({"deal_id": deals["deal_id"].astype("string").reset_index(drop=True),
                         "as_of": pd.Series(as_of, dtype="datetime64[ns, UTC]")})


def test_one_deal_at_a_time_equals_the_batch_on_thousands_of_deals(
    scored_world: tuple[DealHistory, ScoringBundle, FeatureBuilder],
) -> None:
    history, bundle, builder = scored_world
    points = _points(history, N_TIMES)
    batch = score_points(bundle, history, points, builder)
    assert len(batch) == N_DEALS
    # open and closed deals, at several times
    assert {"open", "won", "lost"} <= set(batch["outcome"])
    assert points["as_of"].nunique() >= N_TIMES

    single = []
    for deal_id, as_of in zip(points["deal_id"], points["as_of"], strict=True):
        body = ScoreRequest.model_validate({"deals": [inline_deal(history, str(deal_id))]})
        single.append(score_inline_deals(body.deals, [0], as_of, history.pipelines, bundle, builder))
    one_by_one = pd.concat(single, ignore_index=True)
    pd.testing.assert_frame_equal(one_by_one, batch, check_exact=True)


def _batch_of(world: World, client: TestClient, deal_ids: list[str], as_of: pd.Timestamp) -> pd.DataFrame:
    holder = client.app.state.model_holder  # type: ignore[attr-defined]
    builder = client.app.state.population.get()  # type: ignore[attr-defined]
    points = pd.DataFrame({"deal_id": pd.Series(deal_ids, dtype="string"),
                           "as_of": pd.Series([as_of] * len(deal_ids), dtype="datetime64[ns, UTC]")})
    return score_points(holder.require().bundle, world.history, points, builder)


def _same_as_batch(answer: dict[str, Any], row: pd.Series) -> None:
    """The API's score of one deal equals the batch row, number for number."""
    (score,) = answer["scores"]
    assert score["deal_id"] == row["deal_id"]
    for column in ("cold_risk", "close_probability", "close_probability_90d", "slip_risk", "expected_value"):
        got, want = score[column], row[column]
        assert (got is None and np.isnan(want)) or got == want, (row["deal_id"], column, got, want)
    # a deal won or lost by then has no band (docs/scores.md): null in the answer, missing in the batch
    assert score["risk_band"] == (None if pd.isna(row["risk_band"]) else row["risk_band"])
    assert score["outcome"] == row["outcome"]
    likely = row["likely_close_date"]
    assert score["likely_close_date"] == (None if pd.isna(likely) else likely.date().isoformat())
    assert score["reasons"] == row["reasons"]
    assert score["counter_reasons"] == row["counter_reasons"]
    assert score["stage"] == row["stage"] and score["pipeline"] == row["pipeline"]


def test_inline_and_stored_answers_equal_the_batch(world: World, client: TestClient) -> None:
    ids = [str(d) for d in world.history.deals["deal_id"]]
    as_of = world.history.end_time
    batch = _batch_of(world, client, ids, as_of).set_index("deal_id", drop=False)
    assert {"open", "won", "lost"} <= set(batch["outcome"])
    for deal_id in ids[::3]:
        body = {"as_of": as_of.isoformat(), "deals": [world.inline_deal(deal_id)]}
        inline = client.post("/v1/score", json=body, headers=world.auth("integration"))
        stored = client.get(f"/v1/deals/{deal_id}/score", params={"as_of": as_of.isoformat()},
                            headers=world.auth("manager"))
        assert inline.status_code == 200, inline.text
        assert stored.status_code == 200, stored.text
        row = batch.loc[deal_id]
        assert isinstance(row, pd.Series)  # one row per deal
        _same_as_batch(inline.json(), row)
        _same_as_batch(stored.json(), row)


def test_a_requests_history_is_sorted_and_its_close_dates_canonical() -> None:
    """A request that lists its events out of order and writes close dates otherwise (date only, another
    offset) gives a history sorted by deal and time whose close-date values are the canonical UTC texts of
    the instants written."""
    from training.simulate import simulate_history

    history = simulate_history(n_deals=200, seed=3)
    changed = history.field_changes[history.field_changes["field"] == "expected_close_date"]
    ids = list(dict.fromkeys(str(d) for d in changed["deal_id"]))[:12]
    deals = []
    for k, deal_id in enumerate(ids):
        deal = inline_deal(history, deal_id)
        for table in ("stage_changes", "activities", "field_changes"):
            deal[table].reverse()
        for change in deal["field_changes"][::2]:
            if change["field"] == "expected_close_date":  # date only, or another offset
                change["value"] = change["value"][:10] if k % 2 else change["value"][:19] + "+02:00"
        deals.append(deal)
    body = ScoreRequest.model_validate({"deals": deals})
    got = validated_history(inline_frames(body.deals), history.pipelines)

    for table, time in (("activities", "occurred_at"), ("field_changes", "changed_at")):
        events = getattr(got, table)  # sorted by deal and time, though the request listed them reversed
        pd.testing.assert_frame_equal(events, events.sort_values(["deal_id", time]).reset_index(drop=True))
    frame = got.field_changes
    close = (frame["field"] == "expected_close_date").to_numpy(dtype=bool)
    assert close.sum() >= 20
    written = pd.to_datetime(frame["value"].to_numpy(dtype=object)[close], utc=True, format="ISO8601")
    assert list(frame["value"][close]) == list(format_utc_iso(pd.Series(written)))
