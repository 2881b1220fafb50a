"""The at-risk list: which open deals a manager should act on first, and which are already dead.

`rank_at_risk` takes the scored open deals (`models.forecast.score_open_deals`) and adds:
- `value_at_risk` (`value_at_risk` below: amount × close_probability × cold_risk);
- `stage_limit_days`: the stage's stalled threshold (`features.health.stale_thresholds`: configured
  `stale_after_days`, else the 80th percentile of days won deals spent in the stage);
- `stale`: effectively dead, for clean-up rather than for rescue: close probability under
  `STALE_MAX_CLOSE_PROBABILITY` AND days in stage over `STALE_LIMIT_FACTOR` × the stage's limit. A deal
  in a stage without a known limit is never stale (nothing to compare with).
It then orders the deals by one of `AT_RISK_SORTS`. The going-cold list is the rows with `stale` False,
the clean-up list the rows with `stale` True; both keep the same order.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any, Literal

import numpy as np
import pandas as pd

from features.health import stale_thresholds
from features.history import DealHistory, to_utc_timestamp
from features.jsonable import jsonable
from features.spreadsheet import spreadsheet_safe

STALE_MAX_CLOSE_PROBABILITY = 0.02
# The furthest row a page of these lists may reach (the API's offset, the CLI's limit): far past any
# store's deals, and within every database's integer (10**20 overflowed SQLite's).
MAX_LIST_POSITION = 1_000_000_000
STALE_LIMIT_FACTOR = 2.0

AtRiskSort = Literal["value_at_risk", "cold_risk", "amount", "close_date", "days_in_stage"]
# Each sort: (column, ascending). Ties always fall back to deal_id so pages never overlap.
AT_RISK_SORTS: dict[str, tuple[str, bool]] = {
    "value_at_risk": ("value_at_risk", False),
    "cold_risk": ("cold_risk", False),
    "amount": ("amount", False),
    "close_date": ("expected_close_date", True),  # soonest first; deals without a date last
    "days_in_stage": ("days_in_stage", False),
}
DEFAULT_SORT: AtRiskSort = "value_at_risk"


def value_at_risk(amount: Any, close_probability: Any, cold_risk: Any) -> Any:
    """What a manager's action can save on a deal: amount × close_probability × cold_risk.

    The expected value of the deal (amount × P(won)) times the chance it goes cold in the horizon: a big
    deal that is likely to be won and losing momentum ranks first, a dead deal (P(won) near 0) or a
    healthy one (cold risk near 0) last. Works on scalars, arrays and Series alike (NaN stays NaN).
    Defined in docs/scores.md; the at-risk list (API, CSV and CLI) ranks by it by default.
    """
    return amount * close_probability * cold_risk


def rank_at_risk(
    scored: pd.DataFrame, history: DealHistory, as_of: pd.Timestamp | str, sort: str = DEFAULT_SORT
) -> pd.DataFrame:
    """`scored` (from `score_open_deals`) with value_at_risk, stage_limit_days and stale, ordered by `sort`.

    `history` supplies the stages' learned limits as known at `as_of` (only stages of deals in `scored`
    matter). Raises ValueError for an unknown `sort`.
    """
    if sort not in AT_RISK_SORTS:
        raise ValueError(f"sort must be one of {sorted(AT_RISK_SORTS)}, not {sort!r}")
    out = scored.copy()
    amount = pd.to_numeric(out["amount"], errors="coerce").astype("float64")
    close = pd.to_numeric(out["close_probability"], errors="coerce").astype("float64")
    cold = pd.to_numeric(out["cold_risk"], errors="coerce").astype("float64")
    out["value_at_risk"] = value_at_risk(amount, close, cold)
    limits = pd.Series(stale_thresholds(history, to_utc_timestamp(as_of)) if len(out) else {},
                       dtype="float64")
    if len(out) and not limits.empty:
        keys = pd.MultiIndex.from_arrays([out["pipeline"].astype(str), out["stage"].astype(str)])
        out["stage_limit_days"] = limits.reindex(keys).to_numpy(dtype="float64")
    else:
        out["stage_limit_days"] = np.nan
    days = pd.to_numeric(out["days_in_stage"], errors="coerce").astype("float64")
    out["stale"] = ((close < STALE_MAX_CLOSE_PROBABILITY)
                    & (days > STALE_LIMIT_FACTOR * out["stage_limit_days"])).fillna(False).astype(bool)
    column, ascending = AT_RISK_SORTS[sort]
    return out.sort_values([column, "deal_id"], ascending=[ascending, True], na_position="last",
                           kind="stable").reset_index(drop=True)


# The CSV of the at-risk and stale lists, as `GET /v1/pipelines/{p}/at-risk` (Accept: text/csv) and
# `dealrisk at-risk --csv` both write it.
CSV_COLUMNS = ["rank", "deal_id", "pipeline", "owner", "team", "stage", "amount", "expected_close_date",
               "days_in_stage", "cold_risk", "close_probability", "close_probability_90d", "slip_risk",
               "likely_close_date", "risk_band", "expected_value", "value_at_risk", "reasons",
               "counter_reasons", "model_version"]


def deal_list_csv(records: Iterable[Mapping[str, Any]], version: str) -> str:
    """A ranked deal list (rows with `rank` and the list's columns) as CSV text: the reasons' sentences
    in one cell each (strongest first, joined with ' | '), the expected close date as an ISO 8601 time,
    the likely close date as a date, missing values as empty cells, and `model_version` the row's own
    (a live score names the version that made it), else `version`."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for r in records:
        row = {str(k): jsonable(v) for k, v in r.items()}
        for column in ("reasons", "counter_reasons"):
            row[column] = " | ".join(str(x.get("text", "")) for x in row.get(column) or [])
        if isinstance(row.get("expected_close_date"), datetime):
            row["expected_close_date"] = row["expected_close_date"].isoformat()
        if isinstance(row.get("likely_close_date"), datetime):
            row["likely_close_date"] = row["likely_close_date"].date().isoformat()
        row["model_version"] = row.get("model_version") or version
        # Owners, teams, ids and stages come from integrations: no cell may run as a formula.
        writer.writerow({k: spreadsheet_safe(v) for k, v in row.items()})
    return buffer.getvalue()
