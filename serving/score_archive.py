"""What the service keeps about its own scores beyond the current one: the score history, the shadow
challenger's scores and the run-time settings (the challenger's name). A repository over the store's
tables (revision 0006); `Store.save_scores` appends the champion's scores here in its own transaction.

Retention of `score_history`: one row per deal, model version and role (champion / challenger) per UTC
day of the score's `as_of`, holding the day's last score; rows whose `as_of` is older than
`DEFAULT_RETENTION_DAYS` are pruned (`prune`, run by the service on its monitor cadence). Scores are
refreshed hourly, so a deal open for a year leaves at most 365 rows per model serving it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import pandas as pd
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection

if TYPE_CHECKING:
    from serving.store import Store

ROLES = ("champion", "challenger")
DEFAULT_RETENTION_DAYS = 400  # a year of scores, plus time for their outcomes to become known
CHALLENGER_SETTING = "challenger"
HISTORY_COLUMNS = ["deal_id", "as_of", "computed_at", "cold_risk", "close_probability"]
_CHUNK_ROWS = 10_000


def _upsert(store: Store, table: sa.Table, keys: Sequence[str]) -> Any:
    insert = postgresql.insert(table) if store.dialect == "postgresql" else sqlite.insert(table)
    return insert.on_conflict_do_update(
        index_elements=list(keys),
        set_={c.name: insert.excluded[c.name] for c in table.columns if c.name not in keys},
    )


def _naive(value: Any) -> datetime:
    if type(value) is datetime and value.tzinfo is None:  # what the store's records hold: no conversion
        return value
    ts = pd.Timestamp(value)
    ts = ts.tz_convert("UTC").tz_localize(None) if ts.tzinfo is not None else ts
    return ts.to_pydatetime()


def append_score_history(
    store: Store, conn: Connection, records: Sequence[Mapping[str, Any]], model_version: str, role: str
) -> int:
    """Append saved live scores (`deal_id`, `as_of`, `computed_at`, `cold_risk`, `close_probability`)
    to the score history inside the caller's transaction; the day's last score of a deal wins."""
    if role not in ROLES:
        raise ValueError(f"role must be one of {ROLES}, not {role!r}")
    if not records:
        return 0
    table = store.table("score_history")
    stmt = _upsert(store, table, [c.name for c in table.primary_key.columns])
    rows = []
    for rec in records:
        as_of = _naive(rec["as_of"])
        rows.append({
            "deal_id": rec["deal_id"], "role": role, "model_version": model_version, "day": as_of.date(),
            "as_of": as_of, "computed_at": _naive(rec["computed_at"]),
            "cold_risk": float(rec["cold_risk"]), "close_probability": float(rec["close_probability"]),
        })
    for start in range(0, len(rows), _CHUNK_ROWS):
        conn.execute(stmt, rows[start : start + _CHUNK_ROWS])
    return len(rows)


class ScoreArchive:
    """Score history, challenger scores and service settings of one store."""

    def __init__(self, store: Store) -> None:
        self.store = store

    # ------------------------------------------------------------------ challenger scores
    def save_challenger_scores(self, scores: pd.DataFrame, model_version: str) -> int:
        """Store the challenger's live scores (columns as `bundle.score` gives them) and append them to the
        score history, in one transaction."""
        if not len(scores):
            return 0
        now = datetime.now(UTC).replace(tzinfo=None)
        records: list[dict[str, Any]] = []
        optional = [c for c in ("close_probability_90d", "slip_risk") if c in scores.columns]
        columns = ["deal_id", "as_of", "cold_risk", "close_probability", "risk_band", *optional]
        for row in scores[columns].to_dict("records"):
            rec = {
                "deal_id": str(row["deal_id"]), "model_version": model_version, "as_of": _naive(row["as_of"]),
                "computed_at": now, "cold_risk": float(row["cold_risk"]),
                "close_probability": float(row["close_probability"]), "risk_band": str(row["risk_band"]),
                "close_probability_90d": None, "slip_risk": None,
            }
            for column in optional:
                value = row[column]
                rec[column] = None if value is None or pd.isna(value) else float(value)
            records.append(rec)
        table = self.store.table("challenger_scores")
        stmt = _upsert(self.store, table, ["deal_id"])
        def work(conn: Connection) -> int:
            for start in range(0, len(records), _CHUNK_ROWS):
                conn.execute(stmt, records[start : start + _CHUNK_ROWS])
            return append_score_history(self.store, conn, records, model_version, "challenger")

        return int(self.store._retrying(work))

    def challenger_scores(self, model_version: str) -> pd.DataFrame:
        """The challenger's current score of each deal it scored (for checks and reports)."""
        table = self.store.table("challenger_scores")
        query = sa.select(table).where(table.c.model_version == model_version)
        with self.store._read() as conn:
            rows = conn.execute(query).mappings().all()
        return pd.DataFrame([dict(r) for r in rows], columns=[c.name for c in table.columns])

    # ------------------------------------------------------------------ score history
    def history(
        self, model_version: str, role: str = "champion", since: datetime | None = None
    ) -> pd.DataFrame:
        """Stored scores of one model in one role (as_of after `since` when given), oldest first."""
        table = self.store.table("score_history")
        query = sa.select(*(table.c[c] for c in HISTORY_COLUMNS)).where(
            table.c.model_version == model_version, table.c.role == role
        )
        if since is not None:
            query = query.where(table.c.as_of > _naive(since))
        with self.store._read() as conn:
            rows = conn.execute(query.order_by(table.c.as_of, table.c.deal_id)).fetchall()
        frame = pd.DataFrame([tuple(r) for r in rows], columns=HISTORY_COLUMNS)
        for column in ("as_of", "computed_at"):
            frame[column] = pd.to_datetime(frame[column]).dt.tz_localize("UTC")
        frame["deal_id"] = frame["deal_id"].astype("string")
        return frame.astype({"cold_risk": "float64", "close_probability": "float64"})

    def paired_history(self, champion: str, challenger: str) -> pd.DataFrame:
        """Score-history rows where the champion and the challenger scored the same deal as of the same
        time (the same live round): deal_id, as_of, and `{role}_{score}` columns."""
        table = self.store.table("score_history")
        a, b = table.alias("a"), table.alias("b")
        query = (
            sa.select(
                a.c.deal_id, a.c.as_of, a.c.cold_risk, a.c.close_probability, b.c.cold_risk,
                b.c.close_probability,
            )
            .select_from(
                a.join(b, sa.and_(a.c.deal_id == b.c.deal_id, a.c.day == b.c.day, a.c.as_of == b.c.as_of))
            )
            .where(
                a.c.role == "champion", a.c.model_version == champion,
                b.c.role == "challenger", b.c.model_version == challenger,
            )
            .order_by(a.c.as_of, a.c.deal_id)
        )
        with self.store._read() as conn:
            rows = conn.execute(query).fetchall()
        names = ["deal_id", "as_of", "champion_cold_risk", "champion_close_probability",
                 "challenger_cold_risk", "challenger_close_probability"]
        frame = pd.DataFrame([tuple(r) for r in rows], columns=names)
        frame["as_of"] = pd.to_datetime(frame["as_of"]).dt.tz_localize("UTC")
        frame["deal_id"] = frame["deal_id"].astype("string")
        return frame.astype({c: "float64" for c in names[2:]})

    def paired_stamp(self, champion: str, challenger: str) -> tuple[Any, ...]:
        """A cheap token that moves whenever `paired_history(champion, challenger)` or the stored state of
        a paired deal may have changed: per role, the count and latest `computed_at` of the two models'
        score-history rows that could pair (the champion's from the challenger's first `as_of` on), and
        the latest `state_updated_at` of the deals the challenger scored (any write of a deal's events,
        or a spec change of its pipeline, moves it). Reads indexed ranges, never the scores themselves."""
        table, deals = self.store.table("score_history"), self.store.table("deals")
        shadow = sa.and_(table.c.role == "challenger", table.c.model_version == challenger)
        first = sa.select(sa.func.min(table.c.as_of)).where(shadow).scalar_subquery()
        champion_rows = sa.and_(table.c.role == "champion", table.c.model_version == champion,
                                table.c.as_of >= first)
        counts = [sa.select(sa.func.count(), sa.func.max(table.c.computed_at)).where(rows)
                  for rows in (champion_rows, shadow)]
        written = sa.select(sa.func.max(deals.c.state_updated_at)).where(
            deals.c.deal_id.in_(sa.select(table.c.deal_id).where(shadow))
        )
        with self.store._read() as conn:
            stamp = [tuple(conn.execute(query).one()) for query in counts]
            return (*stamp, conn.execute(written).scalar_one())

    def prune(self, retention_days: float = DEFAULT_RETENTION_DAYS, now: datetime | None = None) -> int:
        """Delete score-history rows whose `as_of` is older than the retention; how many."""
        cutoff = _naive(now or datetime.now(UTC)) - timedelta(days=retention_days)
        table = self.store.table("score_history")
        stmt = table.delete().where(table.c.as_of < cutoff)
        return int(self.store._retrying(lambda conn: conn.execute(stmt).rowcount or 0))

    # ------------------------------------------------------------------ settings
    def get_setting(self, name: str) -> dict[str, Any] | None:
        table = self.store.table("service_settings")
        with self.store._read() as conn:
            value = conn.execute(sa.select(table.c.value).where(table.c.name == name)).scalar_one_or_none()
        return dict(value) if isinstance(value, dict) else None

    def set_setting(self, name: str, value: Mapping[str, Any]) -> None:
        table = self.store.table("service_settings")
        stmt = _upsert(self.store, table, ["name"])
        row = {"name": name, "value": dict(value), "updated_at": datetime.now(UTC).replace(tzinfo=None)}
        self.store._retrying(lambda conn: conn.execute(stmt, [row]))

    def delete_setting(self, name: str) -> bool:
        table = self.store.table("service_settings")
        stmt = table.delete().where(table.c.name == name)
        return bool(self.store._retrying(lambda conn: conn.execute(stmt).rowcount))
