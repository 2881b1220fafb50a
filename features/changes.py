"""What changed in a pipeline between two times: close dates pushed, amounts changed, stage moves.

Each deal is compared as it stood at `since` and at `until` (`features.health.deal_states`, so every
value is as known then and a later event changes nothing). Only deals that existed at `since` can have
changed; deals created later are new, not changed. Stage moves use the pipeline's stage order
(`features.stages.stage_positions`): a later open stage is "forward", an earlier one "back", a won or
lost stage "won" / "lost", a reopened deal "reopened".
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from features.health import deal_states
from features.history import DealHistory, to_utc_timestamp
from features.jsonable import jsonable
from features.stages import stage_positions


def _records(frame: pd.DataFrame, columns: Sequence[str]) -> list[dict[str, Any]]:
    rows = frame[list(columns)].astype(object).where(frame[list(columns)].notna(), None)
    return [{str(k): jsonable(v) for k, v in r.items()} for r in rows.to_dict("records")]


def deal_changes(
    history: DealHistory, since: pd.Timestamp | str, until: pd.Timestamp | str
) -> dict[str, Any]:
    """Changes between `since` and `until` of every deal that existed at `since`.

    Returns `{"close_date_pushed": [...], "close_date_pulled_in": [...], "amount_changed": [...],
    "stage_moves": [...]}`; each item names deal_id, owner, team and the values before and after
    (`days_pushed` for close dates, `change` for amounts, `direction` for stage moves). Each list is
    ordered by the size of the change, largest first.
    """
    t0, t1 = to_utc_timestamp(since), to_utc_timestamp(until)
    if t0 > t1:
        raise ValueError(f"since ({t0.isoformat()}) is after until ({t1.isoformat()})")
    before = deal_states(history, t0).set_index("deal_id")
    after = deal_states(history, t1).set_index("deal_id")
    ids = before.index.intersection(after.index)
    b, a = before.loc[ids], after.loc[ids]
    both = pd.DataFrame({"deal_id": ids, "pipeline": a["pipeline"].to_numpy(), "owner": a["owner"].to_numpy(),
                         "team": a["team"].to_numpy()})

    close_before = pd.to_datetime(b["expected_close_date"], utc=True).to_numpy()
    close_after = pd.to_datetime(a["expected_close_date"], utc=True).to_numpy()
    shift_days = (close_after - close_before) / np.timedelta64(1, "D")
    dates = both.assign(close_date_before=close_before, close_date_after=close_after, days_pushed=shift_days)
    pushed = dates[dates["days_pushed"] > 0].sort_values(["days_pushed", "deal_id"], ascending=[False, True])
    pulled = dates[dates["days_pushed"] < 0].sort_values(["days_pushed", "deal_id"])
    date_cols = ["deal_id", "owner", "team", "close_date_before", "close_date_after", "days_pushed"]

    amount_before = pd.to_numeric(b["amount"], errors="coerce").to_numpy(dtype="float64")
    amount_after = pd.to_numeric(a["amount"], errors="coerce").to_numpy(dtype="float64")
    amounts = both.assign(amount_before=amount_before, amount_after=amount_after,
                          change=amount_after - amount_before)
    amounts = amounts[amounts["change"].fillna(0) != 0]
    amounts = amounts.assign(size=amounts["change"].abs()).sort_values(["size", "deal_id"],
                                                                       ascending=[False, True])

    pipe = both["pipeline"].to_numpy(dtype=object)
    stage_b = b["stage"].astype(object).where(b["stage"].notna(), None).to_numpy(dtype=object)
    stage_a = a["stage"].astype(object).where(a["stage"].notna(), None).to_numpy(dtype=object)
    status_b, status_a = b["status"].to_numpy(dtype=object), a["status"].to_numpy(dtype=object)
    pos_b = stage_positions(pipe, stage_b, history.pipelines)
    pos_a = stage_positions(pipe, stage_a, history.pipelines)
    moved = (stage_b != stage_a) | (status_b != status_a)
    direction = np.select(
        [status_a == "won", status_a == "lost", (status_b != "open") & (status_a == "open"), pos_a > pos_b,
         pos_a < pos_b],
        ["won", "lost", "reopened", "forward", "back"],
        default="moved",  # a stage the pipeline's order does not place
    )
    moves = both.assign(stage_before=stage_b, stage_after=stage_a, direction=direction,
                        steps=pos_a - pos_b)[moved & ~((status_b != "open") & (status_a == status_b))]
    moves = moves.sort_values("deal_id")
    return {
        "close_date_pushed": _records(pushed, date_cols),
        "close_date_pulled_in": _records(pulled, date_cols),
        "amount_changed": _records(amounts, ["deal_id", "owner", "team", "amount_before", "amount_after",
                                             "change"]),
        "stage_moves": _records(moves, ["deal_id", "owner", "team", "stage_before", "stage_after",
                                        "direction", "steps"]),
    }
