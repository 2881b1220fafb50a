"""A simulated history written as each CRM's export and imported back gives the same history, the same
health figures and the same features (after the losses each CRM's format imposes, listed in
`crm_exports.expected_after_round_trip` and docs/importers.md)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from crm_exports import EXPORTERS, expected_after_round_trip

from features.build import FeatureBuilder
from features.health import pipeline_health
from features.history import DealHistory
from training.importers import convert_export
from training.importers.common import DEAL_COLUMNS
from training.simulate import simulate_history
from training.snapshots import make_snapshots


@pytest.fixture(scope="module")
def simulated() -> DealHistory:
    return simulate_history(60, seed=7, start="2024-01-01", end="2024-09-01")


def _frames(history: DealHistory) -> dict[str, pd.DataFrame]:
    out = {
        "deals": history.deals[list(DEAL_COLUMNS)].sort_values("deal_id"),
        "stage_changes": history.stage_changes[["deal_id", "stage", "changed_at"]],
        "activities": history.activities[["deal_id", "type", "direction", "occurred_at"]],
        "field_changes": history.field_changes[["deal_id", "field", "value", "changed_at"]],
    }
    for name, frame in out.items():
        out[name] = (
            frame.sort_values(list(frame.columns), kind="stable")
            .reset_index(drop=True)
            .astype({c: "string" for c in frame.columns if frame[c].dtype == object})
        )
    return out


@pytest.mark.parametrize("crm", sorted(EXPORTERS))
def test_round_trip_gives_the_same_history_health_and_features(
    crm: str, simulated: DealHistory, tmp_path: Path
) -> None:
    ids = EXPORTERS[crm](simulated, tmp_path / crm)
    converted = convert_export(crm, tmp_path / crm)
    imported = converted.labelled()
    if ids:  # CRMs with their own id format: back to the simulated ids
        renamed = {
            name: frame.assign(deal_id=frame["deal_id"].map(ids))
            for name, frame in (
                ("deals", imported.deals),
                ("stage_changes", imported.stage_changes),
                ("activities", imported.activities),
                ("field_changes", imported.field_changes),
            )
        }
        imported = DealHistory.from_frames(
            renamed["deals"],
            renamed["stage_changes"],
            renamed["activities"],
            renamed["field_changes"],
            pipelines=imported.pipelines,
        )
    expected = expected_after_round_trip(simulated, crm)

    got, want = _frames(imported), _frames(expected)
    assert len(got["deals"]) == simulated.n_deals()
    for table in want:
        pd.testing.assert_frame_equal(got[table], want[table], check_dtype=False, obj=f"{crm} {table}")
    assert {n: s.to_dict() for n, s in imported.pipelines.items()} == {
        n: s.to_dict() for n, s in expected.pipelines.items()
    }
    assert converted.report.dropped == []
    # Histories written from the first day: nothing untracked, except Odoo's close date, never tracked.
    untracked = {n.what: n.count for n in converted.report.untracked}
    assert untracked == ({"expected close date": simulated.n_deals()} if crm == "odoo" else {})

    since, until = "2024-03-01", "2024-09-01"
    assert pipeline_health(imported, since, until, by="owner") == pipeline_health(
        expected, since, until, by="owner"
    )
    points = make_snapshots(expected, cadence_days=14)
    assert len(points) > 100
    # each history fitted on itself: the population statistics must round-trip too
    pd.testing.assert_frame_equal(
        FeatureBuilder().fit(imported).transform(imported, points),
        FeatureBuilder().fit(expected).transform(expected, points),
    )
