"""Feature building splits the field changes once; each field's rows equal `field_rows` for that field."""

from __future__ import annotations

import numpy as np

from features.build import _field_rows_by_field
from features.timeindex import DealIndex, field_rows
from training.simulate import simulate_history


def test_feature_building_reads_field_changes_as_field_rows_does() -> None:
    store = simulate_history(n_deals=200, seed=5)
    deals = DealIndex(store.deals)
    shared = _field_rows_by_field(store, deals)
    for field, rows in shared.items():
        alone = field_rows(store, deals, field)
        assert len(rows.stream) > 0
        np.testing.assert_array_equal(rows.stream.order, alone.stream.order)
        np.testing.assert_array_equal(rows.stream.keys, alone.stream.keys)
        np.testing.assert_array_equal(rows.stream.starts, alone.stream.starts)
        assert rows.value.tolist() == alone.value.tolist()
