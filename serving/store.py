"""The store: deal history and API keys in a SQL database (SQLite by default, PostgreSQL in production).

Writes are idempotent. Every event row carries an `event_key`: its `event_id` when the source gave one,
else the SHA-256 of the canonical whole row, so importing the same rows twice inserts nothing the second
time. Deals are keyed by `deal_id`; a deal sent again with different values is updated in place (we keep
a hash of each deal row to tell "same" from "changed" without comparing column by column in SQL).

Times are stored as naive UTC (SQLite has no time zone type) and re-localized to UTC on read. Every
public write runs in one transaction and is committed before it returns: all or nothing, and durable
once acknowledged.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import secrets
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, cast

import numpy as np
import pandas as pd
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.pool import StaticPool

from features.history import DEAL_OPTIONAL, DEAL_REQUIRED, DealHistory, PipelineSpec

log = logging.getLogger(__name__)

ROLES = ("admin", "manager", "integration")
ALL_PIPELINES = "*"
KEY_PREFIX = "drk"
CHUNK_ROWS = 10_000  # rows per executemany batch: large enough to amortise round trips, small enough for RAM
_IN_CHUNK = 5_000  # ids per IN (...) list, well under SQLite's and PostgreSQL's bound-parameter limits

DEAL_COLUMNS = DEAL_REQUIRED + DEAL_OPTIONAL
# table -> (value columns in canonical order, time column); event_id is kept apart from the row's content
EVENT_TABLES: dict[str, tuple[tuple[str, ...], str]] = {
    "stage_changes": (("deal_id", "stage", "changed_at"), "changed_at"),
    "activities": (("deal_id", "type", "direction", "occurred_at"), "occurred_at"),
    "field_changes": (("deal_id", "field", "value", "changed_at"), "changed_at"),
}
TABLE_ORDER = ("pipelines", "deals", *EVENT_TABLES)

ProgressCallback = Callable[[int], None]


class UnknownDealError(ValueError):
    """Events refer to deals the store does not hold; nothing was written."""

    def __init__(self, deal_ids: Sequence[str]) -> None:
        self.deal_ids = list(deal_ids)
        shown = ", ".join(self.deal_ids[:10]) + (" …" if len(self.deal_ids) > 10 else "")
        super().__init__(
            f"{len(self.deal_ids)} unknown deal_id(s): {shown} (store the deals first, then their events)"
        )


@dataclass
class TableCounts:
    """What one write did to one table."""

    inserted: int = 0
    duplicates: int = 0  # rows already present (same event key, or a deal with identical values)
    updated: int = 0  # deals (or pipeline specs) whose values changed


@dataclass
class ImportResult:
    """Per-table counts of a write."""

    tables: dict[str, TableCounts] = field(default_factory=lambda: {t: TableCounts() for t in TABLE_ORDER})

    @property
    def inserted(self) -> int:
        return sum(c.inserted for c in self.tables.values())

    @property
    def duplicates(self) -> int:
        return sum(c.duplicates for c in self.tables.values())

    @property
    def updated(self) -> int:
        return sum(c.updated for c in self.tables.values())

    @property
    def changed(self) -> bool:
        """True when the write changed anything in the store."""
        return self.inserted + self.updated > 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "inserted": self.inserted,
            "duplicates": self.duplicates,
            "updated": self.updated,
            "tables": {name: vars(c).copy() for name, c in self.tables.items()},
        }


@dataclass(frozen=True)
class ApiKey:
    """An API key's public record (never the secret)."""

    key_id: str
    name: str | None
    role: str
    pipelines: tuple[str, ...]
    created_at: datetime
    revoked_at: datetime | None = None

    @property
    def active(self) -> bool:
        return self.revoked_at is None

    @property
    def all_pipelines(self) -> bool:
        return ALL_PIPELINES in self.pipelines

    def can_see(self, pipeline: str) -> bool:
        """Whether this key may see the pipeline (and its deals)."""
        return self.all_pipelines or pipeline in self.pipelines

    def to_dict(self) -> dict[str, Any]:
        return {
            "key_id": self.key_id,
            "name": self.name,
            "role": self.role,
            "pipelines": list(self.pipelines),
            "created_at": self.created_at.isoformat(),
            "revoked_at": self.revoked_at.isoformat() if self.revoked_at else None,
        }


def _build_metadata(schema: str | None) -> sa.MetaData:
    md = sa.MetaData(schema=schema)
    prefix = f"{schema}." if schema else ""
    sa.Table(
        "pipelines",
        md,
        sa.Column("name", sa.String(200), primary_key=True),
        sa.Column("spec", sa.JSON, nullable=False),
    )
    sa.Table(
        "deals",
        md,
        # A surrogate key keeps insertion order, so a history read back comes out in the order it went in.
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("deal_id", sa.String(200), nullable=False, unique=True),
        sa.Column("pipeline", sa.String(200), nullable=False, index=True),
        sa.Column("owner", sa.String(200), nullable=False),
        sa.Column("team", sa.String(200)),
        sa.Column("account", sa.String(500)),
        sa.Column("amount", sa.Float, nullable=False),
        sa.Column("created_at", sa.DateTime, nullable=False),  # naive UTC
        sa.Column("expected_close_date", sa.DateTime),  # naive UTC
        sa.Column("currency", sa.String(10)),
        sa.Column("attributes", sa.JSON, nullable=False),
        sa.Column("row_hash", sa.String(64), nullable=False),
    )
    event_columns: dict[str, list[sa.Column[Any]]] = {
        "stage_changes": [sa.Column("stage", sa.String(200), nullable=False)],
        "activities": [
            sa.Column("type", sa.String(20), nullable=False),
            sa.Column("direction", sa.String(20)),
        ],
        "field_changes": [
            sa.Column("field", sa.String(50), nullable=False),
            sa.Column("value", sa.Text),
        ],
    }
    for table, (_, time_col) in EVENT_TABLES.items():
        sa.Table(
            table,
            md,
            sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
            sa.Column("event_key", sa.String(200), nullable=False, unique=True),
            sa.Column(
                "deal_id", sa.String(200), sa.ForeignKey(f"{prefix}deals.deal_id"), nullable=False, index=True
            ),
            *event_columns[table],
            sa.Column(time_col, sa.DateTime, nullable=False),  # naive UTC
            sa.Column("event_id", sa.String(200)),
        )
    sa.Table(
        "api_keys",
        md,
        sa.Column("key_id", sa.String(16), primary_key=True),
        sa.Column("name", sa.String(200)),
        sa.Column("role", sa.String(20), nullable=False),
        sa.Column("pipelines", sa.JSON, nullable=False),
        sa.Column("key_hash", sa.String(64), nullable=False),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.Column("revoked_at", sa.DateTime),
    )
    return md


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cursor = dbapi_conn.cursor()
    # WAL lets the service read while an import writes; foreign keys are off in SQLite unless asked for.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


class Store:
    """Deal history and API keys behind SQLAlchemy. `schema` puts every table in a PostgreSQL schema."""

    def __init__(self, url: str, schema: str | None = None, engine: Engine | None = None) -> None:
        self.url = url
        self.schema = schema
        self.engine = engine or self._make_engine(url)
        self.metadata = _build_metadata(schema)
        self.tables = self.metadata.tables
        self._t = {name.split(".")[-1]: table for name, table in self.metadata.tables.items()}

    @staticmethod
    def _make_engine(url: str) -> Engine:
        if url.startswith("sqlite"):
            kwargs: dict[str, Any] = {"connect_args": {"timeout": 30}}
            if url in ("sqlite://", "sqlite:///:memory:"):
                kwargs["poolclass"] = StaticPool  # one shared in-memory database, not one per connection
                kwargs["connect_args"]["check_same_thread"] = False
            engine = sa.create_engine(url, **kwargs)
            sa.event.listen(engine, "connect", _sqlite_pragmas)
            return engine
        return sa.create_engine(url, pool_pre_ping=True)

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    def table(self, name: str) -> sa.Table:
        return self._t[name]

    def close(self) -> None:
        self.engine.dispose()

    # ------------------------------------------------------------------ schema and health
    def create_schema(self) -> None:
        """Create the tables (and the PostgreSQL schema) if missing; safe to call on every start."""
        with self.engine.begin() as conn:
            if self.schema and self.dialect == "postgresql":
                conn.execute(sa.text(f'CREATE SCHEMA IF NOT EXISTS "{self.schema}"'))
            self.metadata.create_all(conn)

    def ping(self) -> bool:
        """True when the database answers; the failure is logged."""
        try:
            with self.engine.connect() as conn:
                conn.execute(sa.text("SELECT 1"))
            return True
        except sa.exc.SQLAlchemyError as exc:
            log.warning("store unreachable: %s", exc)
            return False

    def count_rows(self) -> dict[str, int]:
        """Rows per table (for checks and reports)."""
        with self.engine.connect() as conn:
            return {
                name: int(conn.execute(sa.select(sa.func.count()).select_from(self.table(name))).scalar_one())
                for name in (*TABLE_ORDER, "api_keys")
            }

    # ------------------------------------------------------------------ writes
    def import_history(self, history: DealHistory, progress: ProgressCallback | None = None) -> ImportResult:
        """Write a whole validated history in one transaction; rows already present are skipped.

        `progress(n)` is called after each chunk with the number of rows that chunk handled (written or
        skipped), so it plugs straight into a progress bar whose total is the history's row count.
        """
        result = ImportResult()
        frames = {name: getattr(history, name) for name in EVENT_TABLES}
        prepared = {name: _prepare_events(name, frame) for name, frame in frames.items()}
        deals = _prepare_deals(history.deals, history.attribute_columns)
        with self.engine.begin() as conn:
            self._write_pipelines(conn, history.pipelines, result)
            self._write_deals(conn, deals, result, progress)
            for name, rows in prepared.items():
                self._write_events(conn, name, rows, result, progress)
        log.info("imported history: %s", result.to_dict())
        return result

    def upsert_deals(self, deals: pd.DataFrame) -> ImportResult:
        """Insert new deals and update changed ones (typed frame as `DealHistory.deals`), in one transaction.

        Columns beyond the standard ones are the deals' custom attributes.
        """
        attributes = tuple(c for c in deals.columns if c not in DEAL_COLUMNS)
        prepared = _prepare_deals(deals, attributes)
        result = ImportResult()
        with self.engine.begin() as conn:
            self._write_deals(conn, prepared, result, None)
        return result

    def add_events(
        self,
        stage_changes: pd.DataFrame | None = None,
        activities: pd.DataFrame | None = None,
        field_changes: pd.DataFrame | None = None,
    ) -> ImportResult:
        """Store history events (typed frames as in DealHistory) in one transaction, idempotently.

        Raises UnknownDealError, before writing anything, if any event names a deal the store lacks.
        """
        given = {"stage_changes": stage_changes, "activities": activities, "field_changes": field_changes}
        prepared = {name: _prepare_events(name, f) for name, f in given.items() if f is not None and len(f)}
        result = ImportResult()
        if not prepared:
            return result
        wanted = pd.unique(pd.concat([rows["deal_id"] for rows in prepared.values()], ignore_index=True))
        with self.engine.begin() as conn:
            known = self._existing(conn, self.table("deals").c.deal_id, [str(d) for d in wanted])
            missing = sorted(set(map(str, wanted)) - known)
            if missing:
                raise UnknownDealError(missing)
            for name, rows in prepared.items():
                self._write_events(conn, name, rows, result, None)
        return result

    def _write_pipelines(
        self, conn: Connection, specs: Mapping[str, PipelineSpec], result: ImportResult
    ) -> None:
        table = self.table("pipelines")
        existing = {row.name: row.spec for row in conn.execute(sa.select(table.c.name, table.c.spec))}
        counts = result.tables["pipelines"]
        for name, spec in specs.items():
            raw = spec.to_dict()
            if name not in existing:
                conn.execute(table.insert().values(name=name, spec=raw))
                counts.inserted += 1
            elif _canonical_json(existing[name]) != _canonical_json(raw):
                conn.execute(table.update().where(table.c.name == name).values(spec=raw))
                counts.updated += 1
            else:
                counts.duplicates += 1

    def _write_deals(
        self, conn: Connection, deals: pd.DataFrame, result: ImportResult, progress: ProgressCallback | None
    ) -> None:
        table = self.table("deals")
        counts = result.tables["deals"]
        # A deal listed twice in one write: the last one wins, as if the rows had been sent one by one.
        unique = deals.drop_duplicates("deal_id", keep="last")
        counts.duplicates += len(deals) - len(unique)
        stored = self._existing_hashes(conn, unique["deal_id"].tolist())
        old_hash = unique["deal_id"].map(stored)
        is_new = old_hash.isna().to_numpy()
        is_changed = ~is_new & (old_hash != unique["row_hash"]).to_numpy()
        counts.inserted += int(is_new.sum())
        counts.updated += int(is_changed.sum())
        counts.duplicates += int((~is_new & ~is_changed).sum())
        for chunk in _chunks(unique[is_new]):
            conn.execute(table.insert(), _records(chunk))
            _report(progress, len(chunk))
        update = (
            table.update()
            .where(table.c.deal_id == sa.bindparam("b_deal_id"))
            .values({c: sa.bindparam(c) for c in unique.columns if c != "deal_id"})
        )
        for chunk in _chunks(unique[is_changed]):
            records = _records(chunk)
            for rec in records:
                rec["b_deal_id"] = rec.pop("deal_id")
            conn.execute(update, records)
            _report(progress, len(chunk))
        _report(progress, int((~is_new & ~is_changed).sum()) + len(deals) - len(unique))

    def _write_events(
        self,
        conn: Connection,
        name: str,
        rows: pd.DataFrame,
        result: ImportResult,
        progress: ProgressCallback | None,
    ) -> None:
        table = self.table(name)
        counts = result.tables[name]
        unique = rows.drop_duplicates("event_key", keep="first")
        present = self._existing(conn, table.c.event_key, unique["event_key"].tolist())
        new = unique[~unique["event_key"].isin(present)] if present else unique
        counts.inserted += len(new)
        counts.duplicates += len(rows) - len(new)
        # The keys were filtered above; ON CONFLICT DO NOTHING only guards against a concurrent writer.
        stmt = self._insert_ignore(table, "event_key")
        for chunk in _chunks(new):
            conn.execute(stmt, _records(chunk))
            _report(progress, len(chunk))
        _report(progress, len(rows) - len(new))

    def _insert_ignore(self, table: sa.Table, key: str) -> Any:
        if self.dialect == "postgresql":
            return postgresql.insert(table).on_conflict_do_nothing(index_elements=[key])
        if self.dialect == "sqlite":
            return sqlite.insert(table).on_conflict_do_nothing(index_elements=[key])
        return table.insert()

    def _existing(self, conn: Connection, column: sa.Column[Any], values: Sequence[str]) -> set[str]:
        found: set[str] = set()
        for start in range(0, len(values), _IN_CHUNK):
            batch = values[start : start + _IN_CHUNK]
            found.update(conn.execute(sa.select(column).where(_among(self.dialect, column, batch))).scalars())
        return found

    def _existing_hashes(self, conn: Connection, deal_ids: Sequence[str]) -> dict[str, str]:
        table = self.table("deals")
        out: dict[str, str] = {}
        for start in range(0, len(deal_ids), _IN_CHUNK):
            batch = deal_ids[start : start + _IN_CHUNK]
            query = sa.select(table.c.deal_id, table.c.row_hash).where(
                _among(self.dialect, table.c.deal_id, batch)
            )
            out.update({row.deal_id: row.row_hash for row in conn.execute(query)})
        return out

    # ------------------------------------------------------------------ reads
    def load_history(
        self, pipelines: Iterable[str] | None = None, deal_ids: Iterable[str] | None = None
    ) -> DealHistory:
        """The stored history (optionally only some pipelines and/or deals), validated as a DealHistory."""
        deals_t = self.table("deals")
        wanted_pipes = None if pipelines is None else sorted({str(p) for p in pipelines})
        wanted_ids = None if deal_ids is None else list(dict.fromkeys(str(d) for d in deal_ids))
        deal_cols = [deals_t.c[c] for c in ("id", *DEAL_COLUMNS, "attributes")]
        with self.engine.connect() as conn:
            specs = self._pipeline_specs(conn)
            query = sa.select(*deal_cols)
            if wanted_pipes is not None:
                query = query.where(deals_t.c.pipeline.in_(wanted_pipes))
            deals = _deals_frame(_read_frame(conn, query, deals_t.c.deal_id, wanted_ids))
            ids = None if wanted_ids is None and wanted_pipes is None else deals["deal_id"].tolist()
            events: dict[str, pd.DataFrame] = {}
            for name, (columns, time_col) in EVENT_TABLES.items():
                table = self.table(name)
                query = sa.select(table.c.id, *(table.c[c] for c in (*columns, "event_id")))
                events[name] = _events_frame(_read_frame(conn, query, table.c.deal_id, ids), time_col)
        if wanted_pipes is not None or wanted_ids is not None:
            present = set(deals["pipeline"].tolist()) | set(wanted_pipes or ())
            specs = {k: v for k, v in specs.items() if k in present}
        return DealHistory.from_frames(
            deals,
            events["stage_changes"],
            events["activities"],
            events["field_changes"],
            pipelines=specs,
            source="store",
        )

    def deal_pipelines(self, deal_ids: Iterable[str]) -> dict[str, str]:
        """deal_id -> pipeline for the given ids that exist (unknown ids are simply absent)."""
        table = self.table("deals")
        ids = list(dict.fromkeys(str(d) for d in deal_ids))
        out: dict[str, str] = {}
        with self.engine.connect() as conn:
            for start in range(0, len(ids), _IN_CHUNK):
                query = sa.select(table.c.deal_id, table.c.pipeline).where(
                    _among(self.dialect, table.c.deal_id, ids[start : start + _IN_CHUNK])
                )
                out.update({row.deal_id: row.pipeline for row in conn.execute(query)})
        return out

    def list_pipelines(self) -> list[str]:
        """Every pipeline the store knows: with a stored spec or with at least one deal."""
        deals = self.table("deals")
        pipes = self.table("pipelines")
        with self.engine.connect() as conn:
            names = set(conn.execute(sa.select(pipes.c.name)).scalars())
            names.update(conn.execute(sa.select(deals.c.pipeline).distinct()).scalars())
        return sorted(names)

    def pipeline_specs(self) -> dict[str, PipelineSpec]:
        """The stored pipeline definitions by name."""
        with self.engine.connect() as conn:
            return self._pipeline_specs(conn)

    def _pipeline_specs(self, conn: Connection) -> dict[str, PipelineSpec]:
        table = self.table("pipelines")
        rows = conn.execute(sa.select(table.c.name, table.c.spec).order_by(table.c.name))
        return {row.name: PipelineSpec.from_dict(row.name, row.spec) for row in rows}

    # ------------------------------------------------------------------ API keys
    def create_api_key(
        self, role: str, pipelines: Iterable[str], name: str | None = None
    ) -> tuple[str, ApiKey]:
        """Create a key; returns the plaintext (shown once, never stored) and its public record."""
        if role not in ROLES:
            raise ValueError(f"unknown role {role!r}: use one of {', '.join(ROLES)}")
        pipes = tuple(dict.fromkeys(p.strip() for p in pipelines if p and p.strip()))
        if not pipes:
            raise ValueError("a key needs at least one pipeline (or '*' for all)")
        if ALL_PIPELINES in pipes:
            pipes = (ALL_PIPELINES,)
        key_id = secrets.token_hex(4)
        plaintext = f"{KEY_PREFIX}_{key_id}_{secrets.token_urlsafe(32)}"
        now = datetime.now(UTC).replace(microsecond=0)
        with self.engine.begin() as conn:
            conn.execute(
                self.table("api_keys")
                .insert()
                .values(
                    key_id=key_id,
                    name=name,
                    role=role,
                    pipelines=list(pipes),
                    key_hash=_sha256(plaintext),
                    created_at=now.replace(tzinfo=None),
                )
            )
        return plaintext, ApiKey(key_id, name, role, pipes, now, None)

    def verify_api_key(self, plaintext: str) -> ApiKey | None:
        """The key's record if `plaintext` is a valid, unrevoked key; else None."""
        parts = plaintext.strip().split("_", 2)
        if len(parts) != 3 or parts[0] != KEY_PREFIX or not parts[1] or not parts[2]:
            return None
        table = self.table("api_keys")
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(table).where(table.c.key_id == parts[1])).mappings().first()
        if row is None or not hmac.compare_digest(row["key_hash"], _sha256(plaintext.strip())):
            return None
        key = _api_key(row)
        return key if key.active else None

    def list_api_keys(self) -> list[ApiKey]:
        """Every key's public record, oldest first (revoked ones included)."""
        table = self.table("api_keys")
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(table).order_by(table.c.created_at, table.c.key_id)).mappings()
            return [_api_key(row) for row in rows]

    def revoke_api_key(self, key_id: str) -> ApiKey | None:
        """Revoke a key (idempotent: revoking again keeps the first time); None if there is no such key."""
        table = self.table("api_keys")
        now = datetime.now(UTC).replace(tzinfo=None, microsecond=0)
        with self.engine.begin() as conn:
            conn.execute(
                table.update()
                .where(table.c.key_id == key_id, table.c.revoked_at.is_(None))
                .values(revoked_at=now)
            )
            row = conn.execute(sa.select(table).where(table.c.key_id == key_id)).mappings().first()
        return None if row is None else _api_key(row)


# ---------------------------------------------------------------------- helpers (frames <-> rows)
def _among(dialect: str, column: sa.Column[Any], values: Sequence[str]) -> sa.ColumnElement[bool]:
    """`column IN values`, as `= ANY(array)` on PostgreSQL.

    With thousands of bound parameters in an IN list, or `= ANY($1)` once psycopg prepares the statement
    (a generic plan), PostgreSQL compares every row with every value: seconds per query on a big table.
    `IN (SELECT unnest($1))` is planned as a join (index or hash lookups) whatever the plan.
    """
    if dialect == "postgresql":
        keys = sa.select(sa.func.unnest(sa.bindparam(None, list(values), type_=postgresql.ARRAY(sa.String))))
        return column.in_(keys.scalar_subquery())
    return column.in_(values)


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def _utc(value: datetime | None) -> datetime | None:
    return None if value is None else value.replace(tzinfo=UTC)


def _api_key(row: sa.RowMapping) -> ApiKey:
    created = _utc(row["created_at"])
    assert created is not None  # NOT NULL column
    return ApiKey(
        key_id=row["key_id"],
        name=row["name"],
        role=row["role"],
        pipelines=tuple(row["pipelines"]),
        created_at=created,
        revoked_at=_utc(row["revoked_at"]),
    )


def _report(progress: ProgressCallback | None, n: int) -> None:
    if progress is not None and n > 0:
        progress(n)


def _chunks(frame: pd.DataFrame, size: int = CHUNK_ROWS) -> Iterator[pd.DataFrame]:
    for start in range(0, len(frame), size):
        yield frame.iloc[start : start + size]


def _naive_utc(series: pd.Series) -> pd.Series:
    """UTC times as naive datetime64[us] (the database has no zone; microseconds is what it keeps)."""
    times = pd.to_datetime(series, utc=True)
    return times.dt.tz_convert(None).astype("datetime64[us]")


def _python_values(series: pd.Series) -> list[Any]:
    """Column values as plain Python objects the DB drivers accept, missing values as None."""
    if pd.api.types.is_datetime64_any_dtype(series.dtype):
        # numpy turns datetime64[us] into datetime.datetime and NaT into None
        return series.to_numpy(dtype="datetime64[us]").astype(object).tolist()
    values = series.astype(object)
    return values.where(series.notna(), None).tolist()


def _records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    # The drivers take one dict per row: building them is the one unavoidable per-row step of a bulk write.
    columns = {c: _python_values(frame[c]) for c in frame.columns}
    names = list(columns)
    return [dict(zip(names, row, strict=True)) for row in zip(*columns.values(), strict=True)]


def _text_key(series: pd.Series) -> pd.Series:
    """A column as text for hashing; missing values get a marker no real value has."""
    if pd.api.types.is_datetime64_any_dtype(series.dtype):
        # integer nanoseconds: exact, and identical however the time was written in the source
        ns = pd.to_datetime(series, utc=True).dt.as_unit("ns")
        text = pd.Series(ns.to_numpy(dtype="datetime64[ns]").astype("int64"), index=series.index).astype(str)
        return text.where(ns.notna(), "\x00")
    if pd.api.types.is_float_dtype(series.dtype):
        text = pd.Series([repr(float(v)) for v in series.to_numpy(dtype=float)], index=series.index)
        return text.where(series.notna(), "\x00")
    return series.astype(object).where(series.notna(), "\x00").astype(str)


def _row_hashes(frame: pd.DataFrame, columns: Sequence[str]) -> pd.Series:
    parts = [_text_key(frame[c]) for c in columns]
    joined = parts[0].str.cat(cast(Any, parts[1:]), sep="\x1f") if len(parts) > 1 else parts[0]
    # hashlib has no vectorised form; one C call per row is the cheapest way to a SHA-256 per row
    return pd.Series([_sha256(s) for s in joined.tolist()], index=frame.index, dtype=object)


def _prepare_events(name: str, frame: pd.DataFrame) -> pd.DataFrame:
    """An event frame as table rows with their idempotency key."""
    columns, time_col = EVENT_TABLES[name]
    out = pd.DataFrame(index=frame.index)
    for col in columns:
        out[col] = frame[col] if col in frame.columns else pd.Series(pd.NA, index=frame.index, dtype="string")
    event_id = (
        frame["event_id"].astype("string")
        if "event_id" in frame.columns
        else pd.Series(pd.NA, index=frame.index, dtype="string")
    )
    # an empty event_id is no id at all: fall back to the row hash rather than colliding on ""
    event_id = event_id.mask(event_id.str.len().fillna(0) == 0)
    hashes = _row_hashes(out, columns) if len(out) else pd.Series([], dtype=object)
    out["event_key"] = event_id.astype(object).where(event_id.notna(), hashes)
    out["event_id"] = event_id
    out[time_col] = _naive_utc(out[time_col])
    return out.reset_index(drop=True)


def _json_value(value: Any) -> Any:
    if value is None or value is pd.NA or value is pd.NaT:
        return None
    if isinstance(value, float) and np.isnan(value):
        return None
    if isinstance(value, pd.Timestamp | datetime):
        return value.isoformat()
    if isinstance(value, str | int | float | bool):
        return value
    return str(value)


def _prepare_deals(deals: pd.DataFrame, attribute_columns: Sequence[str]) -> pd.DataFrame:
    """A deals frame as table rows: standard columns, attributes as one JSON object, a content hash."""
    out = pd.DataFrame(index=deals.index)
    for col in DEAL_COLUMNS:
        out[col] = deals[col] if col in deals.columns else pd.Series(pd.NA, index=deals.index, dtype="string")
    attrs = [c for c in attribute_columns if c in deals.columns]
    if attrs:
        values = {c: [_json_value(v) for v in deals[c].astype(object).tolist()] for c in attrs}
        dicts = [dict(zip(attrs, row, strict=True)) for row in zip(*values.values(), strict=True)]
        out["attributes"] = pd.Series(dicts, index=deals.index, dtype=object)
        attr_text = pd.Series([_canonical_json(a) for a in out["attributes"]], index=deals.index)
    else:
        out["attributes"] = pd.Series([{} for _ in range(len(deals))], index=deals.index, dtype=object)
        attr_text = pd.Series("{}", index=deals.index)
    keyed = out[list(DEAL_COLUMNS)].assign(attributes=attr_text)
    out["row_hash"] = _row_hashes(keyed, [*DEAL_COLUMNS, "attributes"]) if len(out) else []
    for col in ("created_at", "expected_close_date"):
        out[col] = _naive_utc(out[col])
    return out.reset_index(drop=True)


def _rows_frame(rows: Sequence[Any], names: list[str]) -> pd.DataFrame:
    # Column-wise: pandas probes each SQLAlchemy Row for namedtuple fields, which costs seconds per 100k rows
    columns = list(zip(*rows, strict=True)) if rows else [() for _ in names]
    return pd.DataFrame(
        {name: pd.Series(list(col), dtype=object) for name, col in zip(names, columns, strict=True)}
    )


def _read_frame(
    conn: Connection, query: sa.Select[Any], id_column: sa.Column[Any], ids: Sequence[str] | None
) -> pd.DataFrame:
    """Run a select (restricted to `ids` in chunks when given) into a frame in insertion (`id`) order."""
    names = list(query.selected_columns.keys())
    if ids is None:
        frame = _rows_frame(conn.execute(query).fetchall(), names)
    else:
        parts = [
            _rows_frame(
                conn.execute(
                    query.where(_among(conn.dialect.name, id_column, ids[i : i + _IN_CHUNK]))
                ).fetchall(),
                names,
            )
            for i in range(0, len(ids), _IN_CHUNK)
        ]
        frame = pd.concat(parts, ignore_index=True) if parts else _rows_frame([], names)
    return frame.sort_values("id", kind="stable").drop(columns="id").reset_index(drop=True)


def _localize(values: pd.Series) -> pd.Series:
    times = pd.to_datetime(values.astype(object).where(values.notna(), None))
    return times.dt.tz_localize("UTC").astype("datetime64[ns, UTC]")


def _deals_frame(rows: pd.DataFrame) -> pd.DataFrame:
    frame = rows.drop(columns="attributes")
    for col in ("created_at", "expected_close_date"):
        frame[col] = _localize(frame[col])
    attrs = pd.DataFrame(rows["attributes"].map(lambda a: a or {}).tolist(), index=frame.index)
    if len(attrs.columns):
        frame = pd.concat([frame, attrs], axis=1)
    return frame


def _events_frame(rows: pd.DataFrame, time_col: str) -> pd.DataFrame:
    frame = rows.copy()
    frame[time_col] = _localize(frame[time_col])
    # DealHistory sorts events by (deal_id, time); ties keep their insertion order
    return frame.sort_values(["deal_id", time_col], kind="stable").reset_index(drop=True)
