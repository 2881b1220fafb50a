"""The store: the system of record for deal history, pipelines, deal state and API keys.

SQLAlchemy over SQLite (default) or PostgreSQL; Alembic owns the schema (`serving/migrations/`,
`Store.upgrade`). Every public write runs in one transaction and is checked there against what is stored:

- **Pipelines are entities.** A deal in a pipeline the store has not seen creates the pipeline with an
  inferred spec (`inferred = true`), which stage changes to new stages extend in order of first
  appearance. A given spec (pipelines.yaml on import, or `PUT /v1/pipelines/{p}`) is authoritative: a
  stage outside it is refused, naming the allowed stages.
- **Events are keyed per deal**: `(deal_id, event_key)` is unique, where `event_key` is the `event_id`
  when the source gave one, else the SHA-256 of the whole row. Re-sending an id with the same content is
  a duplicate; with different content it is a conflict (`EventConflictError`, HTTP 409).
- **Integrity**: no event before its deal's `created_at`, no `created_at` moved after the deal's events;
  the touched deals' whole histories are re-validated inside the transaction, so a write that would make
  any read of them fail is refused (`WriteRejectedError`, HTTP 422) and nothing is written. A deal that
  only gained events that `features.deal_state.appended_state` accepts (values as validation reads them
  back, stage and field changes after its last event) is updated from its stored state instead.
- **Current state** (stage, outcome, owner, amount, expected close date, stage entry, last activity, ...)
  is kept in columns of `deals` and rewritten in the same transaction as the events that change it.
- **Bounded attributes**: at most `MAX_ATTRIBUTES_PER_DEAL` per deal and `max_attribute_names` distinct
  names per pipeline.
- **Concurrency**: inserts use `INSERT ... ON CONFLICT DO NOTHING RETURNING` (SQLite and PostgreSQL), and
  the deals a write touches are locked (`SELECT ... FOR UPDATE` on PostgreSQL; SQLite write transactions
  start with `BEGIN IMMEDIATE`), so concurrent writers of the same deal or event never fail and the
  counts they report are true.

Times are stored as naive UTC (SQLite has no time zone type) and re-localized to UTC on read.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import math
import secrets
import select
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import cached_property, partial
from importlib import resources
from operator import itemgetter
from typing import Any, cast

import numpy as np
import pandas as pd
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.dialects.sqlite.base import SQLiteCompiler
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.pool import StaticPool

from features.deal_state import (
    STATE_FIELDS,
    STATE_TIME_FIELDS,
    appended_state,
    created_state,
    current_deal_states,
)
from features.health import (
    NO_OWNER,
    NO_TEAM,
    GroupBy,
    LeftOut,
    learned_from_stage_changes,
    limits_of_visits,
    stage_limits,
    won_visits,
)
from features.history import (
    DEAL_OPTIONAL,
    DEAL_REQUIRED,
    DealHistory,
    HistoryValidationError,
    PipelineSpec,
)
from features.jsonable import loads_jsonable
from features.stages import stage_outcome
from features.timeindex import NAT_NS, frame_of, is_missing, to_ns
from features.validation import assemble_typed, stored_deals, stored_events
from models.at_risk import (
    AT_RISK_SORTS,
    DEFAULT_SORT,
    STALE_LIMIT_FACTOR,
    STALE_MAX_CLOSE_PROBABILITY,
)
from serving.limits import DEFAULT_MAX_ATTRIBUTE_NAMES, MAX_ATTRIBUTES_PER_DEAL
from serving.score_archive import append_score_history
from serving.tables import EVENT_TABLES, build_metadata

log = logging.getLogger(__name__)

ROLES = ("admin", "manager", "integration")
ALL_PIPELINES = "*"
KEY_PREFIX = "drk"
CHUNK_ROWS = 10_000  # rows per executemany batch: large enough to amortise round trips, small enough for RAM
_LIMITS_KEPT = 1_000  # pipelines whose stage limits `Store._checked_limits_read` keeps (then starts over)
_STATEMENTS_KEPT = 256  # at-risk list statements `Store.at_risk_rows` keeps by shape (then starts over)
_LIMITS_READS = 3  # reads of a live list whose pipeline's limits keep changing before ranking on demand
_IDLE_SINCE = "dealrisk_idle_since"  # a pooled PostgreSQL connection's info: when it was last returned
_IN_CHUNK = 5_000  # ids per IN (...) list, well under SQLite's and PostgreSQL's bound-parameter limits
HEAD_REVISION = "0012"
PLANNER_STATS_GROWTH = 0.2  # `refresh_planner_stats` runs again when deals or live scores moved by more
PLANNER_STATS_IMPORT_ROWS = 1000  # an import of at least this many rows refreshes the statistics
BASELINE_REVISION = "0001"  # the schema of the release before Alembic (created with create_all)
# PostgreSQL: how many of this process's writers are inside a write transaction at once (`_writer_turn`):
# one runs Python while the other waits on the database (its statements, its commit). With 16 writers of
# one service at once (100,000 deals, 2 cores) all 16 ran their transactions' Python together, and an
# at-risk read among them waited for the interpreter's lock behind them at each of its round trips to the
# database; pg_stat_activity showed no lock waits, ~6 connections idle in a transaction, ~1 active. At-risk
# amid 16 writers, p50/p99 ms (pool of 20, same session): no turns 900/1,865, one 402/1,558, two 458/954
# (writes 27.7, 9.4 and 17.8 a second). See bench/bench_amid_writes.py.
PG_WRITE_TURNS = 2
# PostgreSQL: connections the pool keeps open, by default (`Store(pool_size=...)`, the service's
# DEALRISK_PG_POOL_SIZE). SQLAlchemy's default of 5 closed every connection returned past the fifth, so with
# 16 writing clients the service opened about 1,000 database sessions (a server process each) in a 2-minute
# run; with 20 it opened 14-19.
PG_POOL_SIZE = 20
# PostgreSQL: a pooled connection is pinged (a round trip) before use only when it may be dead: idle this
# long, or with input waiting on its socket (a connection the server closed or terminated has the
# server's last message or end of stream there); see `_pg_checkout`.
PG_PING_IDLE_S = 10.0
# PostgreSQL: the tables every live read walks (the at-risk list's counts and page read the deals' index
# `ix_deals_at_risk` alone when the deals' pages are marked all-visible, the live scorer's look for due
# deals too), vacuumed by `refresh_planner_stats` once this many of their rows were inserted, updated or
# deleted since their last vacuum (PostgreSQL's own counters). An import and every live score leave new
# row versions in `deals`; until a vacuum marks their pages all-visible each index entry costs a visit
# to the table, and the old versions stay in every index. The store cannot count on autovacuum: it may be
# off (the CI's server has it off), and at its default it waits for a fifth of a table (20,000 deals of
# 100,000) to be dead. After the first live scoring of the 100,000-deal store (never vacuumed, autovacuum
# off) an at-risk page's SQL took 5.3 + 6.5 ms; after `VACUUM (ANALYZE) deals` (0.65 s, the vacuum alone
# 0.2 s) 1.5 + 0.8 ms.
PG_VACUUM_TABLES = ("deals", "deal_scores")
PG_VACUUM_CHANGED_ROWS = 1000
_RETRIES = 3  # PostgreSQL deadlock / serialization failures are retried this many times in all
# Up to this many deals gaining events in one write take the incremental state (one Python step per deal);
# beyond it the vectorised recompute from the whole histories is the cheaper way.
APPEND_STATE_MAX_DEALS = 1_000

DEAL_COLUMNS = DEAL_REQUIRED + DEAL_OPTIONAL
TABLE_ORDER = ("pipelines", "deals", *EVENT_TABLES)

ProgressCallback = Callable[[int], None]
# (the stored rows of the deals a request names, their pipelines' specs) -> the request's event rows by table
# (records with the table's columns and `event_id`: naive UTC times, missing values None)
EventsBuilder = Callable[
    [Sequence[Mapping[str, Any]], Mapping[str, PipelineSpec]], Mapping[str, Sequence[Mapping[str, Any]]]
]
# (deal_id -> stored pipeline of the request's deals that exist, the involved specs) -> typed deals frame
DealsBuilder = Callable[[Mapping[str, str], Mapping[str, PipelineSpec]], pd.DataFrame]

__all__ = [
    "ALL_PIPELINES",
    "EVENT_TABLES",
    "ApiKey",
    "DealsBuilder",
    "EventConflictError",
    "HealthState",
    "EventsBuilder",
    "ImportResult",
    "Store",
    "StoreProblem",
    "TableCounts",
    "UnknownDealError",
    "WriteRejectedError",
]


class UnknownDealError(ValueError):
    """Events refer to deals the store does not hold; nothing was written."""

    def __init__(self, deal_ids: Sequence[str]) -> None:
        self.deal_ids = list(deal_ids)
        shown = ", ".join(self.deal_ids[:10]) + (" …" if len(self.deal_ids) > 10 else "")
        super().__init__(
            f"{len(self.deal_ids)} unknown deal_id(s): {shown} (store the deals first, then their events)"
        )


@dataclass(frozen=True)
class StoreProblem:
    """Why a write was refused, naming the row: `loc` is `deals[D1].created_at`-like, by ids not index."""

    loc: str
    msg: str


class WriteRejectedError(ValueError):
    """A write contradicts what is stored (or a bound); the transaction was rolled back."""

    def __init__(self, problems: Sequence[StoreProblem]) -> None:
        self.problems = list(problems)
        shown = "; ".join(f"{p.loc}: {p.msg}" for p in self.problems[:20])
        more = f" … and {len(self.problems) - 20} more" if len(self.problems) > 20 else ""
        super().__init__(shown + more)


class EventConflictError(WriteRejectedError):
    """An event id already stored for the deal with different content (HTTP 409)."""


@dataclass(frozen=True)
class HealthState:
    """The inputs of `features.health.health_from_current_state` for one pipeline's window, read from the
    deals' state columns (`Store.health_state`)."""

    deals: pd.DataFrame
    window_changes: pd.DataFrame
    specs: dict[str, PipelineSpec]
    learned: dict[tuple[str, str], float]
    left_out: LeftOut


@dataclass
class _Appended:
    """A deal that gained events in a write: its stored row (locked, before the write) and, per event
    table, the rows this write inserted (as written: naive UTC times)."""

    deal: dict[str, Any]
    rows: dict[str, list[dict[str, Any]]] = field(default_factory=lambda: {t: [] for t in EVENT_TABLES})


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


def _sqlite_connect(dbapi_conn: Any, _record: Any) -> None:
    cursor = dbapi_conn.cursor()
    # WAL lets the service read while an import writes; foreign keys are off in SQLite unless asked for.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()
    # The driver's own transaction handling would BEGIN lazily (deferred) at the first write; a
    # read-then-write transaction could then fail with "database is locked" when another writer
    # committed in between. SQLAlchemy emits BEGIN itself instead (see _sqlite_begin).
    dbapi_conn.isolation_level = None


def _pg_idle_from_now(_dbapi_conn: Any, record: Any) -> None:
    record.info[_IDLE_SINCE] = time.monotonic()


def _pg_checkout(dialect: Any, dbapi_conn: Any, record: Any, _proxy: Any) -> None:
    """`pool_pre_ping`'s check of a pooled connection, made only when the connection may be dead: idle
    more than `PG_PING_IDLE_S` (a silent network drop), or with input waiting on its socket, which an idle
    connection in a session of ours never has unless the server closed it (restart, terminated backend,
    a relay cut: the server's last message or the end of stream). Pinging every checkout cost each
    request a round trip per connection it took. A failed ping invalidates the pool, as pre-ping does."""
    since = record.info.get(_IDLE_SINCE)
    if since is not None and time.monotonic() - since < PG_PING_IDLE_S and not _input_waiting(dbapi_conn):
        return
    try:
        dialect.do_ping(dbapi_conn)
    except dialect.loaded_dbapi.Error as exc:
        raise sa.exc.InvalidatePoolError(f"ping failed: {exc}") from exc


def _input_waiting(dbapi_conn: Any) -> bool:
    """Whether the connection's socket has something to read (True when it cannot be polled)."""
    try:
        readable, _, _ = select.select([dbapi_conn.fileno()], [], [], 0)
    except Exception:  # closed, or no socket: let the ping tell
        return True
    return bool(readable)


def _sqlite_begin(conn: Connection) -> None:
    # Writes take the write lock up front (IMMEDIATE): writers queue on the busy timeout instead of
    # failing, and a write's checks and its writes see the same database. Reads stay deferred.
    immediate = conn.get_execution_options().get("dealrisk_write", False)
    conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


class _SQLiteCompiler(SQLiteCompiler):
    """SQLite's statement compiler, rendering a FROM hint (`Select.with_hint(table, text, "sqlite")`)
    after its table, which SQLAlchemy leaves out on SQLite: `at_risk_rows` names its index."""

    def get_from_hint_text(self, table: Any, text: str | None) -> str | None:
        return text


def _is_retryable(exc: sa.exc.DBAPIError) -> bool:
    code = getattr(exc.orig, "sqlstate", None) or getattr(exc.orig, "pgcode", None)
    return code in ("40P01", "40001")  # deadlock detected, serialization failure


class WritersBusyError(Exception):
    """The database error behind a write that waited past the busy timeout for the process's other writers."""


class _Turns:
    """At most `n` threads at once; a thread that holds a turn takes it again without waiting."""

    def __init__(self, n: int) -> None:
        self.n = n
        self._slots = threading.BoundedSemaphore(n)
        self._held = threading.local()

    def acquire(self, timeout: float | None) -> bool:
        """Take a turn (waiting at most `timeout` seconds; None: as long as it takes); False if none came."""
        depth = getattr(self._held, "depth", 0)
        if not depth and not self._slots.acquire(timeout=timeout):
            return False
        self._held.depth = depth + 1
        return True

    def release(self) -> None:
        self._held.depth -= 1
        if not self._held.depth:
            self._slots.release()


class Store:
    """Deal history, pipelines, deal state and API keys behind SQLAlchemy.

    `schema` puts every table in a PostgreSQL schema. `max_attribute_names` bounds the distinct custom
    attribute names of one pipeline.
    """

    def __init__(
        self,
        url: str,
        schema: str | None = None,
        engine: Engine | None = None,
        max_attribute_names: int = DEFAULT_MAX_ATTRIBUTE_NAMES,
        busy_timeout_s: float = 30.0,
        pool_size: int = PG_POOL_SIZE,
    ) -> None:
        self.url = url
        self.schema = schema
        self._own_engine = engine is None  # made here (`_write_engine` then makes the writers' pool too)
        self.engine = engine or self._make_engine(url, busy_timeout_s, pool_size)
        self.metadata = build_metadata(schema)
        self.tables = self.metadata.tables
        self._t = {name.split(".")[-1]: table for name, table in self.metadata.tables.items()}
        self.max_attribute_names = max_attribute_names
        # this process's writers take turns here (see `_write`): one at a time on SQLite rather than on
        # SQLite's lock, `PG_WRITE_TURNS` at a time on PostgreSQL
        self._writers = _Turns(1 if self.engine.dialect.name == "sqlite" else PG_WRITE_TURNS)
        self._busy_timeout_s = busy_timeout_s
        self._planned_counts: tuple[int, ...] | None = None  # deals, live scores at the last ANALYZE
        # pipeline -> (its spec and learned limits as stored, the stage limits of them): the live lists'
        # stale split, checked against the row in the list's own statement (`_checked_limits_read`)
        self._limits_kept: dict[str, tuple[tuple[str, bool, str | None], dict[tuple[str, str], float]]] = {}
        # per pipeline: (spec, inferred, updated_at), each won deal's n_events, their visits
        self._visits_kept: dict[str, tuple[tuple[Any, bool, Any], dict[str, int], pd.DataFrame]] = {}
        # `at_risk_rows`' statements by shape (filters given, sort, list, stalled stages): built and keyed
        # once, each read binds its values (building and keying one cost more than running it on SQLite)
        self._list_statements: dict[tuple[Any, ...], sa.Select[Any]] = {}
        # PostgreSQL: each table's rows changed in all (inserted + updated + deleted, as the statistics
        # count them) and the server's clock when this store last vacuumed it (`vacuum_changed_tables`)
        self._vacuumed_at: dict[str, tuple[int, datetime]] = {}

    @staticmethod
    def _make_engine(
        url: str, busy_timeout_s: float = 30.0, pool_size: int = PG_POOL_SIZE, prepared: bool = False
    ) -> Engine:
        if url.startswith("sqlite"):
            # a writer waits this long for another writer (SQLite has one at a time), then fails "locked"
            kwargs: dict[str, Any] = {"connect_args": {"timeout": busy_timeout_s}}
            if url in ("sqlite://", "sqlite:///:memory:"):
                kwargs["poolclass"] = StaticPool  # one shared in-memory database, not one per connection
                kwargs["connect_args"]["check_same_thread"] = False
            engine = sa.create_engine(url, **kwargs)
            engine.dialect.statement_compiler = _SQLiteCompiler
            sa.event.listen(engine, "connect", _sqlite_connect)
            sa.event.listen(engine, "begin", _sqlite_begin)
            return engine
        # psycopg 3 prepares a statement on the server after its 5th run on a connection, and forgets them
        # all at every rollback (each read's connection returned to the pool) with one more round trip,
        # `DEALLOCATE ALL`: off, each statement is planned with its parameters, in its one round trip.
        # `prepared`: left on (psycopg's default), for the writers' own pool (`_write_engine`), whose
        # transactions end in a commit unless refused
        psycopg3 = sa.engine.make_url(url).get_driver_name() == "psycopg"
        connect_args = {"prepare_threshold": None} if psycopg3 and not prepared else {}
        engine = sa.create_engine(url, pool_size=pool_size, connect_args=connect_args)
        sa.event.listen(engine, "connect", _pg_idle_from_now)
        sa.event.listen(engine, "checkin", _pg_idle_from_now)
        sa.event.listen(engine, "checkout", partial(_pg_checkout, engine.dialect))
        return engine

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    def table(self, name: str) -> sa.Table:
        return self._t[name]

    def close(self) -> None:
        self.engine.dispose()
        writers = self.__dict__.get("_write_engine")
        if writers is not None and writers.pool is not self.engine.pool:  # the writers' own pool
            writers.dispose()

    @contextmanager
    def _write(self) -> Iterator[Connection]:
        """One write transaction (SQLite: BEGIN IMMEDIATE), after this thread's turn (`_writer_turn`).

        On SQLite the threads of one process take turns one at a time: SQLite has one writer at a time,
        and a writer that finds the database locked sleeps in growing steps (up to 100 ms) before it
        tries again, so writers of one process queued on SQLite's own lock left it idle between them.
        Writers of other processes (the scorer process, the CLI) still meet SQLite's lock. On PostgreSQL
        `PG_WRITE_TURNS` writers of the process are in a transaction at once; row locks and ON CONFLICT
        still decide between them and other processes' writers, as before. A turn is re-entrant."""
        with self._writer_turn():
            with self._write_engine.begin() as conn:
                yield conn

    @cached_property
    def _write_engine(self) -> Engine:
        """The engine of write transactions (`_write`), made once rather than per write: with the write
        option (`_sqlite_begin` reads it); on PostgreSQL through psycopg 3, a pool of its own
        (`PG_WRITE_TURNS` connections kept: that many writers of the process are in a transaction at
        once) whose statements psycopg prepares on the server once run 5 times on a connection. A prepared
        statement is not parsed and analysed again, and once PostgreSQL settles on its generic plan (it
        does for a statement whose plan its parameters do not change, as the deals' lock of one deal,
        `_lock_deals_and_key`) not planned again either. Reads keep the shared pool, unprepared: a read
        transaction ends in a rollback, and psycopg forgets a connection's prepared statements at each
        (one more round trip)."""
        engine = self.engine
        if self._own_engine and self.dialect == "postgresql" and self.engine.dialect.driver == "psycopg":
            engine = self._make_engine(self.url, self._busy_timeout_s, PG_WRITE_TURNS, prepared=True)
        return engine.execution_options(dealrisk_write=True)

    @contextmanager
    def _writer_turn(self) -> Iterator[None]:
        """This thread's turn to write among the process's writers. A writer that waits longer than the
        busy timeout (the service's DEALRISK_WRITE_WAIT_S) fails as SQLite fails then, "database is locked"
        (503 "the store is busy"), on both backends: on PostgreSQL a stuck writer would otherwise hold up
        every other writer of the process for as long as it lasts."""
        if not self._writers.acquire(self._busy_timeout_s):
            raise sa.exc.OperationalError(
                "BEGIN", None, WritersBusyError(
                    f"database is locked: waited {self._busy_timeout_s:g} s for this process's other writers"
                ),
            )
        try:
            yield
        finally:
            self._writers.release()

    @contextmanager
    def _read(self) -> Iterator[Connection]:
        """One read transaction that sees one consistent snapshot (its statements agree with each other).

        SQLite's deferred transaction already reads one snapshot; PostgreSQL needs REPEATABLE READ, since
        under its default each statement would see the writes committed in between.
        """
        with self.engine.connect() as conn:
            if self.dialect == "postgresql":
                conn = conn.execution_options(isolation_level="REPEATABLE READ", postgresql_readonly=True)
            with conn.begin():
                yield conn

    @contextmanager
    def _read_one(self) -> Iterator[Connection]:
        """A connection for one read statement, its own snapshot. On PostgreSQL in autocommit: no BEGIN
        before it and no ROLLBACK when the connection goes back to the pool, two round trips of the four
        (with the pool's ping) that each key check and pipeline look-up of a request cost; amid busy
        writer threads each round trip also waits for the interpreter's lock again."""
        with self.engine.connect() as conn:
            if self.dialect == "postgresql":
                conn.execution_options(isolation_level="AUTOCOMMIT")
            yield conn

    def _retrying(self, work: Callable[[Connection], Any]) -> Any:
        """Run `work` in a write transaction, again if PostgreSQL aborted it for a deadlock."""
        for attempt in range(_RETRIES):
            try:
                with self._write() as conn:
                    return work(conn)
            except sa.exc.DBAPIError as exc:
                if not _is_retryable(exc) or attempt == _RETRIES - 1:
                    raise
                log.info("write retried after %s", type(exc.orig).__name__)
                time.sleep(0.05 * (attempt + 1))
        raise AssertionError("unreachable")

    def refresh_planner_stats(self, force: bool = False) -> bool:
        """Give the database's query planner the store's current statistics (`ANALYZE`), when this Store
        never did (`force`: always) or the number of deals or of live scores moved by more than
        `PLANNER_STATS_GROWTH` since. True when it ran.

        Without statistics SQLite joins a deal to its live score through the primary key and reads the
        score's whole row, where the covering index `ix_deal_scores_rank` reads the few columns needed: at
        100,000 deals the at-risk ranking took 38 ms instead of 12 ms, the live scorer's look for due
        deals 40 ms instead of 9-15 ms. PostgreSQL's autovacuum analyzes on its own, but only some time
        after a bulk import. ANALYZE reads the tables and indexes once (about 1 s at 100,000 deals on
        SQLite, a sample on PostgreSQL); it changes no row, and plans only, never answers.

        On PostgreSQL it then vacuums the tables of `PG_VACUUM_TABLES` that changed enough since their
        last vacuum (`vacuum_changed_tables`), whether or not ANALYZE was due.
        """
        analyzed = self._analyze_if_moved(force)
        self.vacuum_changed_tables()
        return analyzed

    def _analyze_if_moved(self, force: bool) -> bool:
        with self._read() as conn:
            counts = tuple(
                int(conn.execute(sa.select(sa.func.count()).select_from(self.table(name))).scalar_one())
                for name in ("deals", "deal_scores")
            )
        last = self._planned_counts
        if not force and last is not None and all(
            abs(now - then) <= PLANNER_STATS_GROWTH * max(then, 1)
            for now, then in zip(counts, last, strict=True)
        ):
            return False
        with self._write() as conn:
            if self.dialect == "sqlite":
                conn.exec_driver_sql("ANALYZE")
            else:
                quote = self.engine.dialect.identifier_preparer.format_table
                conn.exec_driver_sql("ANALYZE " + ", ".join(quote(t) for t in self.metadata.sorted_tables))
        self._planned_counts = counts
        log.info("planner statistics taken at %d deals and %d live scores", *counts)
        return True

    def vacuum_changed_tables(self) -> list[str]:
        """PostgreSQL: `VACUUM` each table of `PG_VACUUM_TABLES` with `PG_VACUUM_CHANGED_ROWS` or more
        rows inserted, updated or deleted since its last vacuum (by the store or autovacuum), or never
        vacuumed as far as the statistics tell (a database copied from a template starts without them),
        skipping one another vacuum holds; the names of the tables vacuumed (none on SQLite, where a read
        finds the live rows without it). A vacuum changes no row: it removes dead row versions and marks pages
        all-visible, so an index-only scan needs no visit to the table. It takes no lock that reads or
        writes wait for, and runs outside a transaction (its own connection, in autocommit).

        Dead row versions that a transaction open elsewhere in the database still sees (a long report,
        another client) outlive a vacuum, and the statistics go on counting them. So a table this store
        vacuumed is due again only once as many more rows changed since, or once every transaction open
        at that vacuum has ended (then the next vacuum can remove them): not at every round meanwhile."""
        if self.dialect != "postgresql":
            return []
        query = sa.text(
            "SELECT relname, n_tup_ins + n_tup_upd + n_tup_del FROM pg_stat_user_tables"
            " WHERE schemaname = coalesce(:schema, current_schema()) AND relname = ANY(:names)"
            " AND (n_dead_tup + n_ins_since_vacuum >= :rows"
            " OR (last_vacuum IS NULL AND last_autovacuum IS NULL)) ORDER BY relname"
        )
        oldest = sa.text(  # the start of the oldest transaction holding a snapshot here, but this one
            "SELECT min(xact_start) FROM pg_stat_activity WHERE datname = current_database()"
            " AND backend_xmin IS NOT NULL AND pid <> pg_backend_pid()"
        )
        quote = self.engine.dialect.identifier_preparer.format_table
        with self.engine.connect() as conn:
            conn.execution_options(isolation_level="AUTOCOMMIT")
            found = conn.execute(query, {"schema": self.schema, "names": list(PG_VACUUM_TABLES),
                                         "rows": PG_VACUUM_CHANGED_ROWS}).all()
            held_since = conn.execute(oldest).scalar_one() if found else None
            due = []
            for name, changed in found:
                last = self._vacuumed_at.get(name)
                if (last is not None and int(changed) - last[0] < PG_VACUUM_CHANGED_ROWS
                        and held_since is not None and held_since <= last[1]):
                    continue
                started = time.perf_counter()
                at = conn.execute(sa.text("SELECT clock_timestamp()")).scalar_one()
                conn.exec_driver_sql(f"VACUUM (SKIP_LOCKED) {quote(self.table(name))}")
                log.info("vacuumed %s in %.2f s", name, time.perf_counter() - started)
                self._vacuumed_at[name] = (int(changed), at)
                due.append(str(name))
        return due

    # ------------------------------------------------------------------ schema and health
    def create_schema(self) -> None:
        """Bring the schema to the newest revision (creating it if missing); safe on every start."""
        self.upgrade()

    def upgrade(self, revision: str = "head") -> None:
        """Run the Alembic migrations up to `revision`, then fill in what new columns need.

        A store made by the release before Alembic (tables but no `alembic_version`) is stamped at the
        baseline first, so it upgrades in place.
        """
        from alembic import command
        from alembic.config import Config

        config = Config()
        config.set_main_option("script_location", str(resources.files("serving") / "migrations"))
        config.attributes["schema"] = self.schema
        with self._write() as conn:
            if self.schema and self.dialect == "postgresql":
                conn.execute(sa.text(f'CREATE SCHEMA IF NOT EXISTS "{self.schema}"'))
                # migrations name tables without a schema; this transaction resolves them in ours
                conn.execute(sa.text(f'SET LOCAL search_path TO "{self.schema}"'))
            config.attributes["connection"] = conn
            inspector = sa.inspect(conn)
            has_version = inspector.has_table("alembic_version", schema=self.schema)
            if not has_version and inspector.has_table("deals", schema=self.schema):
                log.info("store without a schema version: stamping it as revision %s", BASELINE_REVISION)
                command.stamp(config, BASELINE_REVISION)
            command.upgrade(config, revision)
        if revision == "head":
            self._complete_upgrade()

    def schema_revision(self) -> str | None:
        """The Alembic revision the store is at (None before any migration)."""
        version = sa.Table("alembic_version", sa.MetaData(schema=self.schema), sa.Column("version_num"))
        with self.engine.connect() as conn:
            if not sa.inspect(conn).has_table("alembic_version", schema=self.schema):
                return None
            return conn.execute(sa.select(version.c.version_num)).scalar_one_or_none()

    def _complete_upgrade(self) -> None:
        """After a migration: specs for pipelines that had none, attribute names, and deals' state.

        Cheap when there is nothing to do (one indexed query); idempotent.
        """
        deals = self.table("deals")
        with self.engine.connect() as conn:
            pending = conn.execute(
                sa.select(deals.c.deal_id).where(deals.c.state_updated_at.is_(None)).limit(1)
            ).first()
        if pending is None:
            return

        def complete(conn: Connection) -> int:
            pipes = self.table("pipelines")
            known = set(conn.execute(sa.select(pipes.c.name)).scalars())
            present = set(conn.execute(sa.select(deals.c.pipeline).distinct()).scalars())
            missing = sorted(present - known)
            if missing:
                inferred = self._read_history(conn, pipelines=missing).pipelines
                for name in missing:
                    spec = inferred.get(name) or PipelineSpec(name, ())
                    conn.execute(pipes.insert().values(name=name, spec=spec.to_dict(), inferred=True))
            rows = conn.execute(
                sa.select(deals.c.deal_id, deals.c.pipeline, deals.c.attributes).where(
                    deals.c.state_updated_at.is_(None)
                )
            ).fetchall()
            pairs = {(r.pipeline, k) for r in rows for k, v in (r.attributes or {}).items() if v is not None}
            self._insert_ignore_many(
                conn,
                self.table("pipeline_attributes"),
                [{"pipeline": p, "name": n} for p, n in sorted(pairs)],
            )
            ids = [r.deal_id for r in rows]
            for start in range(0, len(ids), CHUNK_ROWS):
                self._refresh_state(conn, ids[start : start + CHUNK_ROWS])
            return len(ids)

        n = self._retrying(complete)
        log.info("computed the current state of %d deal(s) after the upgrade", n)

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
                for name in (*TABLE_ORDER, "pipeline_attributes", "api_keys")
            }

    def change_stamp(self) -> tuple[Any, ...]:
        """A cheap token that moves whenever stored history or a spec changes (deal count, the last
        deal-state update, the last spec update): the population refresher compares it between rounds,
        so writes by other processes are noticed too."""
        deals, pipes = self.table("deals"), self.table("pipelines")
        with self._read() as conn:
            count, updated = conn.execute(
                sa.select(sa.func.count(), sa.func.max(deals.c.state_updated_at))
            ).one()
            spec_updated = conn.execute(sa.select(sa.func.max(pipes.c.updated_at))).scalar_one()
        return int(count), updated, spec_updated

    # ------------------------------------------------------------------ writes
    def import_history(self, history: DealHistory, progress: ProgressCallback | None = None) -> ImportResult:
        """Write a whole validated history in one transaction; rows already present are skipped.

        Specs marked `inferred` (validation inferred them) create or extend inferred pipelines; the others
        (from pipelines.yaml) replace the stored spec. `progress(n)` is called after each chunk with the
        number of rows that chunk handled, so it plugs into a progress bar whose total is the row count.
        Raises WriteRejectedError / EventConflictError (nothing written) when the history contradicts
        the store.
        """
        deals = _prepare_deals(history.deals, history.attribute_columns)
        events = {name: _prepare_events(name, getattr(history, name)) for name in EVENT_TABLES}
        given = {n: s for n, s in history.pipelines.items() if not s.inferred}
        inferred = {n: s for n, s in history.pipelines.items() if s.inferred}

        def work(conn: Connection) -> ImportResult:
            result = ImportResult()
            self._write_all(conn, result, deals, events, given, inferred, progress)
            return result

        result = cast(ImportResult, self._retrying(work))
        log.info("imported history: %s", result.to_dict())
        if result.inserted >= PLANNER_STATS_IMPORT_ROWS:
            self.refresh_planner_stats(force=True)
        return result

    def upsert_deals(self, deals: pd.DataFrame) -> ImportResult:
        """Insert new deals and update changed ones (typed frame as `DealHistory.deals`), in one transaction.

        Columns beyond the standard ones are the deals' custom attributes. A deal in a pipeline the store
        has not seen creates the pipeline with an inferred spec.
        """
        attributes = tuple(c for c in deals.columns if c not in DEAL_COLUMNS)
        prepared = _prepare_deals(deals, attributes)

        def work(conn: Connection) -> ImportResult:
            result = ImportResult()
            self._write_all(conn, result, prepared, {}, {}, {}, None)
            return result

        return cast(ImportResult, self._retrying(work))

    def add_events(
        self,
        stage_changes: pd.DataFrame | None = None,
        activities: pd.DataFrame | None = None,
        field_changes: pd.DataFrame | None = None,
    ) -> ImportResult:
        """Store history events (typed frames as in DealHistory) in one transaction, idempotently.

        Raises UnknownDealError, before writing anything, if any event names a deal the store lacks;
        WriteRejectedError (an event before its deal's creation, a stage outside a given spec) or
        EventConflictError (an event id stored with other content) with nothing written.
        """
        given = {"stage_changes": stage_changes, "activities": activities, "field_changes": field_changes}
        prepared = {name: _prepare_events(name, f) for name, f in given.items() if f is not None and len(f)}
        if not prepared:
            return ImportResult()

        def work(conn: Connection) -> ImportResult:
            result = ImportResult()
            self._write_all(conn, result, None, prepared, {}, {}, None)
            return result

        return cast(ImportResult, self._retrying(work))

    def write_deals(self, pipelines: Mapping[str, str], build: DealsBuilder) -> ImportResult:
        """Store a request's deals (`pipelines`: deal_id -> the pipeline it names) in one transaction that
        also holds the request's reads.

        Reads the pipeline each of these deals is stored in (locked on PostgreSQL) and the specs of every
        pipeline involved, and passes them to `build`, which checks the request against them (it raises
        to refuse the request: nothing is written) and returns the typed deals frame, stored as
        `upsert_deals` stores it. One snapshot, retried as a whole after a PostgreSQL deadlock.
        """
        ids = sorted(pipelines)

        def work(conn: Connection) -> ImportResult:
            existing = {d: str(r["pipeline"]) for d, r in self._lock_deals(conn, ids).items()}
            specs = self._pipeline_specs(conn, sorted(set(pipelines.values()) | set(existing.values())))
            deals = build(existing, specs)
            attributes = tuple(c for c in deals.columns if c not in DEAL_COLUMNS)
            result = ImportResult()
            self._write_all(conn, result, _prepare_deals(deals, attributes), {}, {}, {}, None)
            return result

        return cast(ImportResult, self._retrying(work))

    def write_events(
        self,
        deal_ids: Iterable[str],
        build: EventsBuilder,
        with_specs: bool = True,
        first: Callable[[Connection, Mapping[str, Any] | None], object] | None = None,
        key_id: str | None = None,
    ) -> ImportResult:
        """Store a request's events in one transaction that also holds the request's reads.

        Reads the stored deals among `deal_ids` (their rows as `_lock_deals` returns them: columns as
        created, without custom attributes, and state; locked on PostgreSQL) and, `with_specs`, their
        pipelines' specs (else `build` gets none: events without stage changes are checked against no
        spec), and passes them to `build`, which checks the request against them (it raises to refuse the
        request: nothing is written) and returns the event rows by table; those are stored as `add_events`
        stores them. Everything happens in one snapshot, retried as a whole after a PostgreSQL deadlock.
        The rows read once here serve the checks, the write and the deals' new state. `first(conn, row)`
        runs first in the transaction (the caller's key check: its read is part of the write's
        transaction, not a transaction of its own; it raises to refuse the request): with `key_id`, the
        key's row is read with the deals' lock, in one statement, and handed to it as `row` (None when
        that statement found no row: no such key, or none of the deals; `first` then reads the key
        itself). So a key that exists has the deals locked before its check refuses the request,
        which then rolls back having read and written nothing else.
        """
        ids = sorted({str(d) for d in deal_ids})

        def work(conn: Connection) -> ImportResult:
            if first is not None and key_id is not None and len(ids) <= _IN_CHUNK:
                found, key_row = self._lock_deals_and_key(conn, ids, key_id)
                first(conn, key_row)
                locked = found
            else:
                if first is not None:
                    first(conn, None)
                locked = self._lock_deals(conn, ids)
            names = sorted({str(r["pipeline"]) for r in locked.values()})
            specs = self._pipeline_specs(conn, names) if with_specs else {}
            rows = build(list(locked.values()), specs)
            prepared = {n: _event_rows(n, recs) for n, recs in rows.items() if recs}
            result = ImportResult()
            if prepared:
                self._write_all(conn, result, None, prepared, {}, {}, None, locked)
            return result

        return cast(ImportResult, self._retrying(work))

    def set_pipeline_spec(self, spec: PipelineSpec) -> ImportResult:
        """Make `spec` the pipeline's authoritative spec (creating the pipeline if new), in one transaction.

        Refused (WriteRejectedError, nothing changed) when stored stage changes of the pipeline use a
        stage the spec does not have. The state of the pipeline's deals is recomputed with it.
        """

        def work(conn: Connection) -> ImportResult:
            result = ImportResult()
            self._write_all(conn, result, None, {}, {spec.name: spec}, {}, None)
            return result

        return cast(ImportResult, self._retrying(work))

    def _write_all(
        self,
        conn: Connection,
        result: ImportResult,
        deals: pd.DataFrame | None,
        events: Mapping[str, _EventRows],
        given_specs: Mapping[str, PipelineSpec],
        inferred_specs: Mapping[str, PipelineSpec],
        progress: ProgressCallback | None,
        locked: Mapping[str, dict[str, Any]] | None = None,
    ) -> None:
        """The one write path: every check and change of one write, inside the caller's transaction.
        `locked`: deals the caller already locked with `_lock_deals` in this transaction (not read again)."""
        problems: list[StoreProblem] = []
        touched: set[str] = set()
        for name, spec in given_specs.items():
            if self._write_given_spec(conn, spec, result, problems):
                touched |= self._deals_of_pipeline(conn, name)
        eventless: dict[str, dict[str, Any]] = {}  # deals written that have no events: row as written
        won_before: dict[str, str] = {}  # deals this write changes that were stored as won: their pipeline
        left: set[str] = set()  # pipelines a deal of this write moved out of
        if deals is not None and len(deals):
            names = [str(p) for p in pd.unique(deals["pipeline"])]
            self._ensure_pipelines(conn, names, inferred_specs, result)
            written = self._write_deals(conn, deals, result, progress, problems, won_before, left)
            eventless = {d: rec for d, rec in written.items() if rec is not None and d not in touched}
            touched |= set(written)
            self._check_attributes(conn, deals, problems)
        appended: dict[str, _Appended] = {}
        if any(len(rows) for rows in events.values()):
            appended = self._write_events(conn, events, result, progress, problems, locked)
            won_before.update({d: str(a.deal["pipeline"]) for d, a in appended.items()
                               if a.deal["outcome"] == "won"})
        if problems:
            raise WriteRejectedError(problems)
        staged = {d for d, a in appended.items() if a.rows["stage_changes"]}
        stage_specs = self._apply_stages(conn, sorted(touched | staged), problems)
        if problems:
            raise WriteRejectedError(problems)
        # Deals that only gained events take the incremental state when their events qualify, and deals
        # written without events the state of their row alone; every other touched deal is re-validated
        # and recomputed from its whole history.
        only_appended = {d: a for d, a in appended.items() if d not in touched}
        states = self._appended_states(conn, only_appended, stage_specs)
        states.update(_created_states({d: rec for d, rec in eventless.items() if d not in appended}))
        self._refresh_state(conn, sorted((touched | set(appended)) - set(states)))
        self._write_states(conn, states)
        self._unwon(conn, won_before)
        # a deal leaving moves no stamp of the deals still there: the pipeline row's tells readers
        # (`health_stamp`) that the pipeline changed, as a spec change does
        self._stamp_pipelines(conn, left)

    def _write_given_spec(
        self, conn: Connection, spec: PipelineSpec, result: ImportResult, problems: list[StoreProblem]
    ) -> bool:
        """Upsert an authoritative spec; True when it changed (its deals' state must be recomputed)."""
        table = self.table("pipelines")
        raw = spec.to_dict()
        row = conn.execute(
            self._for_update(sa.select(table.c.spec, table.c.inferred).where(table.c.name == spec.name))
        ).first()
        now = _now_naive()
        counts = result.tables["pipelines"]
        if row is None:
            inserted = conn.execute(
                self._insert_ignore(table, ["name"]).values(
                    name=spec.name, spec=raw, inferred=False, updated_at=now
                )
            ).rowcount
            if inserted:
                counts.inserted += 1
                return True
            return self._write_given_spec(conn, spec, result, problems)  # a concurrent writer created it
        if _canonical_json(row.spec) == _canonical_json(raw) and not row.inferred:
            counts.duplicates += 1
            return False
        conn.execute(
            table.update().where(table.c.name == spec.name).values(spec=raw, inferred=False, updated_at=now)
        )
        counts.updated += 1
        for stage, deal_id, event_id in self._stages_outside(conn, spec):
            problems.append(
                StoreProblem(
                    f"pipelines[{spec.name}].stages",
                    f"stored deal {deal_id} has stage {stage!r}"
                    + (f" (event {event_id})" if event_id else "")
                    + f", which the spec lacks; allowed stages: {_allowed(spec)}",
                )
            )
        return True

    def _stages_outside(self, conn: Connection, spec: PipelineSpec) -> list[tuple[str, str, str | None]]:
        """(stage, a deal using it, its event_id) for stored stages of the pipeline outside `spec`."""
        sc, deals = self.table("stage_changes"), self.table("deals")
        query = (
            sa.select(sc.c.stage, sa.func.min(sc.c.deal_id), sa.func.min(sc.c.event_id))
            .join(deals, deals.c.deal_id == sc.c.deal_id)
            .where(deals.c.pipeline == spec.name)
            .group_by(sc.c.stage)
        )
        return [(s, d, e) for s, d, e in conn.execute(query) if not _stage_known(spec, s)]

    def _deals_of_pipeline(self, conn: Connection, pipeline: str) -> set[str]:
        deals = self.table("deals")
        return set(conn.execute(sa.select(deals.c.deal_id).where(deals.c.pipeline == pipeline)).scalars())

    def _ensure_pipelines(
        self,
        conn: Connection,
        names: Sequence[str],
        inferred_specs: Mapping[str, PipelineSpec],
        result: ImportResult,
    ) -> None:
        """Create the pipelines the store has not seen, each with an inferred spec."""
        table = self.table("pipelines")
        now = _now_naive()
        rows = [
            {
                "name": n,
                "spec": (inferred_specs.get(n) or PipelineSpec(n, ())).to_dict(),
                "inferred": True,
                "updated_at": now,
            }
            for n in sorted(names)
        ]
        inserted = self._insert_ignore_many(conn, table, rows)
        result.tables["pipelines"].inserted += inserted

    def _write_deals(
        self,
        conn: Connection,
        deals: pd.DataFrame,
        result: ImportResult,
        progress: ProgressCallback | None,
        problems: list[StoreProblem],
        won_before: dict[str, str],
        left: set[str],
    ) -> dict[str, dict[str, Any] | None]:
        """Insert new deals and update changed ones; returns each deal inserted or changed, with its row as
        written when the deal has no stored events (inserted, or whose stored state counts none), else
        None. Each changed deal stored as won goes into `won_before` (deal -> its stored pipeline), and
        the stored pipeline of each deal moved to another into `left`."""
        table = self.table("deals")
        counts = result.tables["deals"]
        # A deal listed twice in one write: the last one wins, as if the rows had been sent one by one.
        unique = deals.drop_duplicates("deal_id", keep="last").sort_values("deal_id", kind="stable")
        counts.duplicates += len(deals) - len(unique)
        ids = unique["deal_id"].astype(str).tolist()
        stored = self._lock_deals(conn, ids)
        fresh = unique[~unique["deal_id"].isin(list(stored))]
        inserted: set[str] = set()
        out: dict[str, dict[str, Any] | None] = {}
        stmt = self._insert_ignore(table, ["deal_id"]).returning(table.c.deal_id)
        for chunk in _chunks(fresh):
            records = _records(chunk)
            new = set(conn.execute(stmt, records).scalars())
            inserted |= new
            out.update({rec["deal_id"]: rec for rec in records if rec["deal_id"] in new})
            _report(progress, len(chunk))
        counts.inserted += len(inserted)
        raced = [d for d in fresh["deal_id"].astype(str) if d not in inserted]
        if raced:  # another writer created them after our lock query: compare with what it stored
            stored.update(self._lock_deals(conn, raced))
        existing = unique[unique["deal_id"].isin(list(stored))]
        old_hash = existing["deal_id"].map({d: r["row_hash"] for d, r in stored.items()})
        changed = existing[(old_hash != existing["row_hash"]).to_numpy()]
        counts.duplicates += len(existing) - len(changed)
        counts.updated += len(changed)
        if len(changed):
            self._check_created_at(conn, changed, problems)
        update = (
            table.update()
            .where(table.c.deal_id == sa.bindparam("b_deal_id"))
            .values({c: sa.bindparam(c) for c in unique.columns if c != "deal_id"})
        )
        for chunk in _chunks(changed):
            records = _records(chunk)
            for rec in records:
                deal_id = rec["deal_id"]
                before = stored[deal_id]
                eventless = before["state_updated_at"] is not None and before["n_events"] == 0
                if before["outcome"] == "won":
                    won_before[deal_id] = str(before["pipeline"])
                if str(before["pipeline"]) != str(rec["pipeline"]):
                    left.add(str(before["pipeline"]))
                out[deal_id] = dict(rec) if eventless else None
                rec["b_deal_id"] = rec.pop("deal_id")
            conn.execute(update, records)
            _report(progress, len(chunk))
        _report(progress, len(existing) - len(changed) + len(deals) - len(unique) - len(raced))
        return out

    def _check_created_at(
        self, conn: Connection, changed: pd.DataFrame, problems: list[StoreProblem]
    ) -> None:
        """No deal's created_at may move after one of its stored events."""
        created = dict(zip(changed["deal_id"].astype(str), changed["created_at"].tolist(), strict=True))
        ids = list(created)
        for name, (_, time_col) in EVENT_TABLES.items():
            table = self.table(name)
            for start in range(0, len(ids), _IN_CHUNK):
                batch = ids[start : start + _IN_CHUNK]
                query = (
                    sa.select(table.c.deal_id, sa.func.min(table.c[time_col]))
                    .where(_among(self.dialect, table.c.deal_id, batch))
                    .group_by(table.c.deal_id)
                )
                for deal_id, first in conn.execute(query):
                    new_created = pd.Timestamp(created[deal_id])
                    if first is not None and pd.Timestamp(first) < new_created:
                        row = conn.execute(
                            sa.select(table.c.event_id)
                            .where(table.c.deal_id == deal_id, table.c[time_col] == first)
                            .limit(1)
                        ).scalar_one_or_none()
                        event = f"event {row} " if row else "an event "
                        problems.append(
                            StoreProblem(
                                f"deals[{deal_id}].created_at",
                                f"{_iso(new_created)} is after the deal's stored {name} {event}"
                                f"at {_iso(pd.Timestamp(first))}; a deal cannot be created after its events",
                            )
                        )

    def _check_attributes(self, conn: Connection, deals: pd.DataFrame, problems: list[StoreProblem]) -> None:
        """At most MAX_ATTRIBUTES_PER_DEAL per deal, and `max_attribute_names` names per pipeline."""
        pairs: set[tuple[str, str]] = set()
        for deal_id, pipeline, attrs in zip(
            deals["deal_id"].astype(str), deals["pipeline"].astype(str), deals["attributes"], strict=True
        ):
            names = [k for k, v in (attrs or {}).items() if v is not None]
            if len(names) > MAX_ATTRIBUTES_PER_DEAL:
                problems.append(
                    StoreProblem(
                        f"deals[{deal_id}].attributes",
                        f"{len(names)} custom attributes; a deal may have at most {MAX_ATTRIBUTES_PER_DEAL}",
                    )
                )
            pairs.update((pipeline, n) for n in names)
        if not pairs or problems:
            return
        table = self.table("pipeline_attributes")
        pipelines = sorted({p for p, _ in pairs})
        known = {
            (r.pipeline, r.name)
            for r in conn.execute(
                sa.select(table.c.pipeline, table.c.name).where(table.c.pipeline.in_(pipelines))
            )
        }
        new = sorted(pairs - known)
        if not new:
            return
        grown = sorted({p for p, _ in new})
        pipes = self.table("pipelines")
        # Lock the pipelines first so two writers adding names cannot both pass the bound.
        conn.execute(
            self._for_update(sa.select(pipes.c.name).where(pipes.c.name.in_(grown)).order_by(pipes.c.name))
        )
        self._insert_ignore_many(conn, table, [{"pipeline": p, "name": n} for p, n in new])
        counts = conn.execute(
            sa.select(table.c.pipeline, sa.func.count())
            .where(table.c.pipeline.in_(grown))
            .group_by(table.c.pipeline)
        )
        for pipeline, n in counts:
            if n > self.max_attribute_names:
                problems.append(
                    StoreProblem(
                        f"pipelines[{pipeline}].attributes",
                        f"this write would give pipeline {pipeline!r} {n} distinct custom attribute names; "
                        f"the limit is {self.max_attribute_names}",
                    )
                )

    def _write_events(
        self,
        conn: Connection,
        events: Mapping[str, _EventRows],
        result: ImportResult,
        progress: ProgressCallback | None,
        problems: list[StoreProblem],
        locked: Mapping[str, dict[str, Any]] | None = None,
    ) -> dict[str, _Appended]:
        """Insert new events (duplicates skipped, conflicts refused); returns each deal that gained events,
        with its stored row as locked before the write and the rows this write inserted.

        `locked`: deals the caller already locked in this transaction (as `_lock_deals` returns them); only
        the others are read. Each chunk of rows is turned into records once and checked row by row (the
        one per-row step a write cannot avoid), so a request of one event pays no frame operations."""
        wanted = sorted({d for rows in events.values() for d in rows.deal_ids()})
        deals = dict(locked or {})
        deals.update(self._lock_deals(conn, [d for d in wanted if d not in deals]))
        missing = [d for d in wanted if d not in deals]
        if missing:
            raise UnknownDealError(missing)
        touched: dict[str, _Appended] = {}
        conflicts: list[StoreProblem] = []
        for name, rows in events.items():
            if not len(rows):
                continue
            _, time_col = EVENT_TABLES[name]
            stmt = self._event_inserts[name]
            seen: set[tuple[str, str]] = set()  # keys of this write's rows: a repeat is a duplicate
            inserted = 0
            repeated: list[dict[str, Any]] = []  # rows already stored: compared for conflicts below
            for records in rows.record_chunks():
                fresh: list[dict[str, Any]] = []
                for rec in records:
                    created = deals[rec["deal_id"]]["created_at"]
                    if rec[time_col] is not None and rec[time_col] < created:
                        problems.append(
                            StoreProblem(
                                _event_loc(name, rec, time_col),
                                f"{_iso(pd.Timestamp(rec[time_col]))} is before the deal was created "
                                f"({_iso(pd.Timestamp(created))}); "
                                "events cannot predate the deal's created_at",
                            )
                        )
                    key = (rec["deal_id"], rec["event_key"])
                    if key not in seen:
                        seen.add(key)
                        fresh.append(rec)
                new = {(r.deal_id, r.event_key) for r in conn.execute(stmt, fresh)} if fresh else set()
                inserted += len(new)
                for rec in fresh:
                    deal_id = rec["deal_id"]
                    if (deal_id, rec["event_key"]) not in new:
                        repeated.append(rec)
                        continue
                    if deal_id not in touched:
                        touched[deal_id] = _Appended(deals[deal_id])
                    touched[deal_id].rows[name].append(rec)
                _report(progress, len(records))
            counts = result.tables[name]
            counts.inserted += inserted
            counts.duplicates += len(rows) - inserted
            conflicts += self._content_conflicts(conn, name, repeated)
        if conflicts:
            raise EventConflictError(conflicts)
        return touched

    def _content_conflicts(
        self, conn: Connection, name: str, repeated: Sequence[Mapping[str, Any]]
    ) -> list[StoreProblem]:
        """Events (rows as records) whose (deal, event_id) is stored with other content."""
        keyed = [rec for rec in repeated if rec["event_id"] is not None]
        if not keyed:
            return []
        columns, time_col = EVENT_TABLES[name]
        table = self.table(name)
        compared = [c for c in columns if c != "deal_id"]
        stored: dict[tuple[str, str], tuple[Any, ...]] = {}
        ids = sorted({str(rec["deal_id"]) for rec in keyed})
        for start in range(0, len(ids), _IN_CHUNK):
            query = sa.select(table.c.deal_id, table.c.event_key, *(table.c[c] for c in compared)).where(
                _among(self.dialect, table.c.deal_id, ids[start : start + _IN_CHUNK]),
                table.c.event_id.is_not(None),
            )
            for row in conn.execute(query):
                stored[(row[0], row[1])] = tuple(_comparable(v) for v in row[2:])
        out = []
        for rec in keyed:
            old = stored.get((rec["deal_id"], rec["event_key"]))
            new = tuple(_comparable(rec[c]) for c in compared)
            if old is not None and old != new:
                diff = ", ".join(
                    f"{c} stored {a!r}, sent {b!r}"
                    for c, a, b in zip(compared, old, new, strict=True)
                    if a != b
                )
                out.append(
                    StoreProblem(
                        _event_loc(name, rec, time_col),
                        f"event_id {rec['event_id']!r} of deal {rec['deal_id']} is already stored with other "
                        f"content ({diff}); send a new event_id for a new event",
                    )
                )
        return out

    def _apply_stages(
        self, conn: Connection, deal_ids: Sequence[str], problems: list[StoreProblem]
    ) -> dict[str, PipelineSpec]:
        """Stages of the touched deals: extend inferred specs in order of first appearance; refuse stages
        outside a given spec, naming the allowed ones. Returns the specs of the pipelines of the deals'
        stages as this write leaves them."""
        if not deal_ids:
            return {}
        sc, deals = self.table("stage_changes"), self.table("deals")
        first_seen: dict[tuple[str, str], tuple[Any, int]] = {}
        for start in range(0, len(deal_ids), _IN_CHUNK):
            query = (
                sa.select(deals.c.pipeline, sc.c.stage, sa.func.min(sc.c.changed_at), sa.func.min(sc.c.id))
                .join(deals, deals.c.deal_id == sc.c.deal_id)
                .where(_among(self.dialect, sc.c.deal_id, deal_ids[start : start + _IN_CHUNK]))
                .group_by(deals.c.pipeline, sc.c.stage)
            )
            for pipeline, stage, first_at, first_id in conn.execute(query):
                key = (pipeline, stage)
                first_seen[key] = min(first_seen.get(key, (first_at, first_id)), (first_at, first_id))
        if not first_seen:
            return {}
        pipes = self.table("pipelines")
        names = sorted({p for p, _ in first_seen})
        specs = self._pipeline_specs(conn, names)
        unknown = {
            k: v for k, v in first_seen.items() if k[0] not in specs or not _stage_known(specs[k[0]], k[1])
        }
        if not unknown:
            return specs
        grown = sorted({p for p, _ in unknown})
        conn.execute(
            self._for_update(sa.select(pipes.c.name).where(pipes.c.name.in_(grown)).order_by(pipes.c.name))
        )
        specs.update(self._pipeline_specs(conn, grown))  # again, under the lock
        for name in grown:
            spec = specs.get(name) or PipelineSpec(name, (), inferred=True)
            new = sorted((v, s) for (p, s), v in unknown.items() if p == name and not _stage_known(spec, s))
            if not new:
                continue
            if not spec.inferred:
                for _, stage in new:
                    problems.append(
                        StoreProblem(
                            f"stage_changes[pipeline {name}].stage",
                            f"stage {stage!r} is not a stage of pipeline {name!r}; allowed stages: "
                            f"{_allowed(spec)}",
                        )
                    )
                continue
            extended = _extend_spec(spec, [s for _, s in new])
            conn.execute(
                pipes.update()
                .where(pipes.c.name == name)
                .values(spec=extended.to_dict(), updated_at=_now_naive())
            )
            specs[name] = extended
        return specs

    def _refresh_state(self, conn: Connection, deal_ids: Sequence[str]) -> None:
        """Re-validate the deals' stored histories and rewrite their current-state columns.

        Validation here is what every read of these deals runs, so a write that would make one fail is
        refused now (the caller's transaction rolls back) instead of breaking reads later.
        """
        if not deal_ids:
            return
        try:
            history = self._read_history(conn, deal_ids=deal_ids)
        except HistoryValidationError as exc:
            raise WriteRejectedError(
                [
                    StoreProblem(f"{p.table}" + (f".{p.column}" if p.column else ""), p.message)
                    for p in exc.problems
                ]
            ) from exc
        states = current_deal_states(history)
        frame = states.reset_index().rename(columns={"deal_id": "b_deal_id"})
        for col in STATE_TIME_FIELDS:
            frame[col] = _naive_utc(frame[col])
        frame["state_updated_at"] = pd.Series([_now_naive()] * len(frame), dtype="datetime64[us]")
        for chunk in _chunks(frame):
            conn.execute(self._state_update, _records(chunk))

    @cached_property
    def _state_update(self) -> Any:
        """UPDATE of one deal's state columns (and stamp) by `b_deal_id`, for executemany (built once)."""
        table = self.table("deals")
        return (
            table.update()
            .where(table.c.deal_id == sa.bindparam("b_deal_id"))
            .values({c: sa.bindparam(c) for c in (*STATE_FIELDS, "state_updated_at")})
        )

    def _appended_states(
        self, conn: Connection, appended: Mapping[str, _Appended], specs: Mapping[str, PipelineSpec]
    ) -> dict[str, dict[str, Any]]:
        """The new state of each deal that only gained events, by `features.deal_state.appended_state`
        from its stored state (no history read), for the deals whose events qualify; the others are left
        out (their state is recomputed from the whole history). A write touching more than
        `APPEND_STATE_MAX_DEALS` deals recomputes them all: for many deals the batch is cheaper."""
        if not appended or len(appended) > APPEND_STATE_MAX_DEALS:
            return {}
        # `specs`: as _apply_stages left them, which read the pipelines of every deal that gained stages
        now = _now_naive()
        out: dict[str, dict[str, Any]] = {}
        for deal_id, item in appended.items():
            stored = item.deal
            if stored["state_updated_at"] is None:  # never computed (a store just upgraded)
                continue
            state = {c: _aware(stored[c]) if c in STATE_TIME_FIELDS else stored[c] for c in STATE_FIELDS}
            deal = {"pipeline": stored["pipeline"], "owner": stored["owner"], "amount": stored["amount"],
                    "expected_close_date": _aware(stored["expected_close_date"])}
            rows = {
                name: [{**rec, time_col: _aware(rec[time_col])} for rec in item.rows[name]]
                for name, (_, time_col) in EVENT_TABLES.items()
            }
            new = appended_state(state, deal, specs, rows["stage_changes"], rows["activities"],
                                 rows["field_changes"])
            if new is not None:
                out[deal_id] = {
                    **{c: _stored_time(new[c]) if c in STATE_TIME_FIELDS else new[c] for c in STATE_FIELDS},
                    "state_updated_at": now,
                }
        return out

    def _write_states(self, conn: Connection, states: Mapping[str, Mapping[str, Any]]) -> None:
        if states:
            conn.execute(self._state_update, [{**s, "b_deal_id": d} for d, s in sorted(states.items())])

    def _unwon(self, conn: Connection, won_before: Mapping[str, str]) -> None:
        """Make the learned stage limits due of each pipeline a deal stored as won left in this write
        (reopened, lost, or moved to another pipeline): they counted it, and `stage_limits_due` sees
        only deals that count now. `pipelines.updated_at` is stamped (as a spec change stamps it) last in
        the write's transaction, so limits whose refresh started before that are due (as with every
        write stamp, a refresh starting in the instant between the stamp and the commit is left to the
        hourly clock). One query, only when such a deal was written."""
        if not won_before:
            return
        deals = self.table("deals")
        ids = sorted(won_before)
        still: set[tuple[str, str]] = set()
        for start in range(0, len(ids), _IN_CHUNK):
            chunk = ids[start : start + _IN_CHUNK]
            query = sa.select(deals.c.deal_id, deals.c.pipeline).where(
                _among(self.dialect, deals.c.deal_id, chunk), deals.c.outcome == "won"
            )
            still |= {(str(d), str(p)) for d, p in conn.execute(query)}
        self._stamp_pipelines(conn, {p for d, p in won_before.items() if (d, p) not in still})

    def _stamp_pipelines(self, conn: Connection, names: Iterable[str]) -> None:
        """Stamp `pipelines.updated_at` of these pipelines with the time now, in the write's transaction:
        what their learned limits (`stage_limits_due`) and health answers (`health_stamp`) compare with."""
        if names := sorted(names):
            pipes = self.table("pipelines")
            conn.execute(pipes.update().where(pipes.c.name.in_(names)).values(updated_at=_now_naive()))

    def _lock_deals(self, conn: Connection, deal_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        """The stored deals among `deal_ids` (their columns as created, row_hash, and the state columns),
        locked for this transaction, in deal_id order."""
        out: dict[str, dict[str, Any]] = {}
        ids = sorted(set(deal_ids))  # one lock order for every writer: no deadlock between two of them
        for start in range(0, len(ids), _IN_CHUNK):
            for row in conn.execute(self._deal_lock_query, {"ids": ids[start : start + _IN_CHUNK]}):
                out[row.deal_id] = dict(row._mapping)
        return out

    def _lock_deals_and_key(
        self, conn: Connection, deal_ids: Sequence[str], key_id: str
    ) -> tuple[dict[str, dict[str, Any]], dict[str, Any] | None]:
        """`_lock_deals` of at most `_IN_CHUNK` deals and the API key `key_id`'s row, in one statement (the
        key's columns on every deal's row): the deals and the key's row, or ({}, None) when the key or
        every deal is missing."""
        out: dict[str, dict[str, Any]] = {}
        key_row: dict[str, Any] | None = None
        keys = self.table("api_keys")
        ids = sorted(set(deal_ids))
        params: dict[str, Any] = {"key_id": key_id}
        if len(ids) == 1:
            query, params["deal_id"] = self._one_deal_and_key_lock_query, ids[0]
        else:
            query, params["ids"] = self._deal_and_key_lock_query, ids
        for row in conn.execute(query, params):
            values = row._mapping
            out[values["deal_id"]] = {c: values[c] for c in self._deal_lock_columns}
            if key_row is None:
                key_row = {c.name: values[f"key__{c.name}"] for c in keys.columns}
        return out, key_row

    @cached_property
    def _deal_lock_columns(self) -> tuple[str, ...]:
        return (*DEAL_COLUMNS, "row_hash", *STATE_FIELDS, "state_updated_at")

    @cached_property
    def _deal_and_key_lock_query(self) -> Any:
        """`_deal_lock_query` joined to the API key bound as `key_id` (`_with_key_locked`)."""
        return self._with_key_locked(self._deal_select)

    @cached_property
    def _one_deal_and_key_lock_query(self) -> Any:
        """`_deal_and_key_lock_query` of the one deal bound as `deal_id`. Prepared by a writer's connection
        (`_write_engine`), it is planned once: PostgreSQL keeps the generic plan of a statement whose row
        estimates its parameters do not change, and plans the ids' array of `_among` at every run (its
        estimate follows the array's length): 0.16 ms of a 0.23 ms statement, for every event written."""
        deals = self.table("deals")
        return self._with_key_locked(self._deal_rows.where(deals.c.deal_id == sa.bindparam("deal_id")))

    def _with_key_locked(self, query: sa.Select[Any]) -> Any:
        """The deals' select joined to the API key bound as `key_id` (its columns as `key__<column>`),
        locked for update; on PostgreSQL only the deals' rows are locked."""
        deals, keys = self.table("deals"), self.table("api_keys")
        query = (
            query.add_columns(*(c.label(f"key__{c.name}") for c in keys.columns))
            .join(keys, keys.c.key_id == sa.bindparam("key_id"))
        )
        return self._for_update(query, of=deals)

    @cached_property
    def _deal_lock_query(self) -> Any:
        """`_lock_deals`' query of the deals whose ids are bound as `ids` (built once: a write of one event
        paid more for building and keying the statement than for running it)."""
        return self._for_update(self._deal_select)

    @cached_property
    def _deal_rows(self) -> sa.Select[Any]:
        """The deals' `_deal_lock_columns`, of every deal (the lock queries add which deals)."""
        table = self.table("deals")
        return sa.select(*(table.c[c] for c in self._deal_lock_columns))

    @cached_property
    def _deal_select(self) -> sa.Select[Any]:
        """The deals whose ids are bound as `ids`, their `_deal_lock_columns`, by deal_id (not locked)."""
        table = self.table("deals")
        among = _among(self.dialect, table.c.deal_id, _ids_param(self.dialect, "ids"))
        return self._deal_rows.where(among).order_by(table.c.deal_id)

    @cached_property
    def _event_inserts(self) -> dict[str, Any]:
        """Per event table, the insert of new rows (conflicts on (deal_id, event_key) skipped) returning the
        keys inserted; built once."""
        out = {}
        for name in EVENT_TABLES:
            table = self.table(name)
            out[name] = self._insert_ignore(table, ["deal_id", "event_key"]).returning(
                table.c.deal_id, table.c.event_key
            )
        return out

    def _for_update(self, query: sa.Select[Any], of: sa.Table | None = None) -> sa.Select[Any]:
        # SQLite has no row locks (its write transaction holds the database lock); PostgreSQL does (only
        # those of `of` when given)
        return query.with_for_update(of=of) if self.dialect == "postgresql" else query

    def _insert_ignore(self, table: sa.Table, keys: Sequence[str]) -> Any:
        if self.dialect == "postgresql":
            return postgresql.insert(table).on_conflict_do_nothing(index_elements=list(keys))
        if self.dialect == "sqlite":
            return sqlite.insert(table).on_conflict_do_nothing(index_elements=list(keys))
        raise NotImplementedError(f"the store supports SQLite and PostgreSQL, not {self.dialect}")

    def _insert_ignore_many(self, conn: Connection, table: sa.Table, rows: list[dict[str, Any]]) -> int:
        """Insert rows that are not there yet (by primary key); returns how many were new."""
        if not rows:
            return 0
        keys = [c.name for c in table.primary_key.columns]
        stmt = self._insert_ignore(table, keys).returning(*table.primary_key.columns)
        n = 0
        for start in range(0, len(rows), CHUNK_ROWS):
            n += len(conn.execute(stmt, rows[start : start + CHUNK_ROWS]).fetchall())
        return n

    # ------------------------------------------------------------------ reads
    def load_history(
        self, pipelines: Iterable[str] | None = None, deal_ids: Iterable[str] | None = None,
        tables: Sequence[str] = tuple(EVENT_TABLES), trusted: bool = False,
    ) -> DealHistory:
        """The stored history (optionally only some pipelines and/or deals, and only the event `tables`
        named: the others come back with their columns and no rows), validated as a DealHistory.

        `trusted=True` (with `deal_ids`) types the named deals' rows without validating them again: the
        same `DealHistory`, for the reads of a few deals on a request's or the live scorer's path
        (docs/storage.md, "Trusted reads")."""
        with self._read() as conn:
            return self._read_history(conn, pipelines, deal_ids, tables=tables, trusted=trusted)

    def health_history(self, pipeline: str, since: datetime, until: datetime) -> tuple[DealHistory, LeftOut]:
        """What `features.health.pipeline_health` needs for one pipeline's window [since, until], read by
        the deals' state columns instead of the whole history: the deals created by `until` except those
        closed before `since` with no event after `until` (their deals, stage and field changes; health
        reads no activities), and what it still needs of those left out (`LeftOut`: the groups they
        belong to, and the won ones' stage changes for the stalled limits). One snapshot."""
        deals = self.table("deals")
        t0, t1 = (v.astimezone(UTC).replace(tzinfo=None) if v.tzinfo else v for v in (since, until))
        idle = sa.and_(
            deals.c.outcome.is_not(None),
            deals.c.outcome.in_(("won", "lost")),
            deals.c.closed_at.is_not(None),
            deals.c.closed_at < t0,
            sa.or_(deals.c.last_event_at.is_(None), deals.c.last_event_at <= t1),
        )
        mine = sa.and_(deals.c.pipeline == pipeline, deals.c.created_at <= t1)
        with self._read() as conn:
            wanted = list(conn.execute(sa.select(deals.c.deal_id).where(mine, sa.not_(idle))).scalars())
            left = conn.execute(
                sa.select(deals.c.team, deals.c.current_owner).where(mine, idle).distinct()
            ).fetchall()
            won_ids = list(
                conn.execute(sa.select(deals.c.deal_id).where(mine, idle, deals.c.outcome == "won")).scalars()
            )
            # one read (and one validation) for both; the left-out won deals' field changes go unused
            both = self._read_history(conn, pipelines=[pipeline], deal_ids=wanted + won_ids,
                                      tables=("stage_changes", "field_changes"))
        history, won = both.subset(wanted), both.subset(won_ids)
        left_out = LeftOut(
            pipelines=frozenset([pipeline]) if left else frozenset(),
            teams=frozenset(NO_TEAM if r.team is None else str(r.team) for r in left),
            owners=frozenset(NO_OWNER if r.current_owner is None else str(r.current_owner) for r in left),
            won=won,
        )
        return history, left_out

    def health_state(self, pipeline: str, since: datetime, until: datetime,
                     by: GroupBy | None = None) -> HealthState | None:
        """What `features.health.health_from_current_state` needs for one pipeline's window [since, until],
        from the deals' state columns and the window's stage changes (no history read), or None when the
        stored state cannot give `pipeline_health`'s figures exactly (the caller uses `health_history`):
        `until` is before an event of the pipeline (a deal's state at `until` is then not its current
        state; deals created after `until` are simply not read), or a deal's state is not computed yet (a
        store just upgraded).

        The learned stalled limits are the stored ones when they are those as of `until`: computed after
        `pipelines.updated_at` (its spec changed, or a deal stored as won left it), with no deal of the
        pipeline that is or was won (a stage change to a won stage) written, or changed stage, since
        (other deals were in the same stage at both times, so the won deals and the visits the limits
        count are the same). Otherwise (never computed, or a deal won or un-won since: the background
        refresh has not caught up yet) they are learned as of `until` in this snapshot from the won
        deals' stage changes alone (`_learning_changes`), not from any history.

        `since` and `until` are naive or aware UTC, at microsecond precision (the store's). One snapshot.
        Of the deals left out (closed before `since`) it reads whether there is one, and the groups they
        belong to only for the grouping `by` the report lists (the only one of `LeftOut`'s sets it reads).
        """
        deals, sc = self.table("deals"), self.table("stage_changes")
        t0, t1 = _naive(since), _naive(until)
        mine = sa.and_(deals.c.pipeline == pipeline, deals.c.created_at <= t1)
        idle = sa.and_(deals.c.outcome.in_(("won", "lost")), deals.c.closed_at < t0)
        state_columns = {
            "deal_id": deals.c.deal_id, "pipeline": deals.c.pipeline, "team": deals.c.team,
            "owner": deals.c.current_owner, "amount": deals.c.current_amount,
            "created_at": deals.c.created_at, "stage": deals.c.current_stage,
            "stage_entered_at": deals.c.stage_entered_at, "status": deals.c.outcome,
            "closed_at": deals.c.closed_at,
        }
        with self._read() as conn:
            row = self._health_row(conn, pipeline)
            if row is None or row.uncomputed or (row.last_event is not None and row.last_event > t1):
                return None
            specs = {pipeline: PipelineSpec.from_dict(pipeline, row.spec, inferred=bool(row.inferred))}
            if self._stored_limits_hold(conn, pipeline, row, specs):
                learned = {(pipeline, str(stage)): float(v) for stage, v in row.learned_stale_days.items()}
            else:  # learned here, as the refresh will: every event of the pipeline is dated by `until`
                learned = self._learned_in_read(conn, pipeline, row, specs, until)
            # The deals the window sees: open ones, and closed ones closed in it (or with no close time),
            # each read by its own range of `ix_deals_pipeline_state`, rather than every deal of the
            # pipeline. In no set order: no figure depends on the deals' order (means are exact sums,
            # lists are sorted by unique keys). The pipeline and, for the open deals, the outcome and the
            # close time (none while open) are what the query selects by, so they are not read.
            seen = sa.select(*(c.label(k) for k, c in state_columns.items() if k != "pipeline"))
            open_rows = conn.execute(
                sa.select(*(c.label(k) for k, c in state_columns.items() if k in _OPEN_READ))
                .where(mine, deals.c.outcome == "open")
            ).fetchall()
            other_rows = [
                *conn.execute(seen.where(mine, deals.c.outcome.in_(("won", "lost")),
                                         sa.or_(deals.c.closed_at >= t0, deals.c.closed_at.is_(None)))),
                *conn.execute(seen.where(mine, deals.c.outcome.is_(None))),  # none: kept, as `not idle` did
            ]
            # The deals left out: the report lists their pipeline when there is one, and their teams or
            # owners only when it groups by them (distinct values of a scan of every closed deal).
            groups = {"team": deals.c.team, "owner": deals.c.current_owner}
            left: Sequence[Any] = (
                conn.execute(sa.select(groups[by]).where(mine, idle).distinct()).scalars().all() if by
                else conn.execute(sa.select(deals.c.id).where(mine, idle).limit(1)).scalars().all()
            )
            changes = (
                sa.select(sc.c.deal_id, sc.c.stage, sc.c.changed_at, sc.c.event_id)
                .join(deals, deals.c.deal_id == sc.c.deal_id)
                .where(deals.c.pipeline == pipeline, deals.c.stage_entered_at >= t0, sc.c.changed_at >= t0)
            )
            window = _rows_frame(conn.execute(changes).fetchall(), list(changes.selected_columns.keys()))
        # the open deals' columns, then the others', with the values selected by filled in
        read = [k for k in state_columns if k != "pipeline"]
        open_columns, other_columns = _row_columns(open_rows, _OPEN_READ), _row_columns(other_rows, read)
        given = {"pipeline": pipeline, "status": "open", "closed_at": None}
        open_columns.update({k: (v,) * len(open_rows) for k, v in given.items()})
        other_columns["pipeline"] = (pipeline,) * len(other_rows)
        frame = pd.DataFrame(
            {k: pd.Series([*open_columns[k], *other_columns[k]], dtype=object) for k in state_columns}
        )
        for col in ("created_at", "stage_entered_at", "closed_at"):
            frame[col] = _localize(frame[col])
        for col in ("deal_id", "pipeline", "team", "owner", "stage", "status"):
            frame[col] = frame[col].astype("string")
        frame["amount"] = pd.to_numeric(frame["amount"], errors="coerce").astype("float64")
        window["changed_at"] = _localize(window["changed_at"])
        window.insert(1, "pipeline", pipeline)
        missing = NO_TEAM if by == "team" else NO_OWNER
        named = {missing if v is None else str(v) for v in left} if by else set()
        left_out = LeftOut(pipelines=frozenset([pipeline]) if left else frozenset(),
                           teams=frozenset(named if by == "team" else ()),
                           owners=frozenset(named if by == "owner" else ()))
        return HealthState(frame, window, specs, learned, left_out)

    def _health_row(self, conn: Connection, pipeline: str) -> Any:
        """What `health_state` reads of a pipeline before its deals (None when it has no stored spec): its
        spec (`spec`, `inferred`), `updated_at`, stored learned limits (`learned_stale_days`,
        `stale_learned_at`), the latest event of its deals (`last_event`) and whether a deal's state is
        not computed yet (`uncomputed`)."""
        deals, pipes = self.table("deals"), self.table("pipelines")
        last_event = sa.select(sa.func.max(deals.c.last_event_at)).where(deals.c.pipeline == pipeline)
        uncomputed = sa.select(deals.c.id).where(deals.c.pipeline == pipeline,
                                                 deals.c.state_updated_at.is_(None)).exists()
        return conn.execute(
            sa.select(pipes.c.spec, pipes.c.inferred, pipes.c.updated_at, pipes.c.learned_stale_days,
                      pipes.c.stale_learned_at, last_event.scalar_subquery().label("last_event"),
                      uncomputed.label("uncomputed")).where(pipes.c.name == pipeline)
        ).first()

    def keep_won_visits(self, stopping: Callable[[], bool] = lambda: False) -> list[str]:
        """Learn and keep (`_visits_kept`) the won deals' visits of every pipeline with a stored spec that
        has none kept under its current spec and `updated_at`, each in one snapshot as of its latest event
        or now, whichever is later, as a health read after a win would learn them (`_learned_in_read`):
        the first such read then reads only the stage changes of the deals won (or changed) since, not
        those of every won deal. The service runs it in the background from its start
        (`serving.app`); a read that comes first learns them itself, as without it. Pipelines whose deals'
        state is not computed yet (health reads their history) are left out, and no more than
        `_LIMITS_KEPT` are kept. Returns the pipelines learned; stops before the next pipeline once
        `stopping()` (the service stopping).

        A read that learns the visits meanwhile may be overwritten by these, learned from an earlier
        snapshot: still right (the deals won or changed since are read by the next read), only less
        current."""
        pipes = self.table("pipelines")
        with self._read_one() as conn:
            rows = conn.execute(
                sa.select(pipes.c.name, pipes.c.spec, pipes.c.inferred, pipes.c.updated_at)
                .order_by(pipes.c.name).limit(_LIMITS_KEPT)
            ).fetchall()
        learned = []
        for name, spec, inferred, updated_at in rows:
            kept = self._visits_kept.get(name)
            if kept is not None and kept[0] == (spec, bool(inferred), updated_at):
                continue
            if stopping():
                break
            with self._read() as conn:
                row = self._health_row(conn, name)
                if row is None or row.uncomputed:
                    continue
                now, last = datetime.now(UTC), _utc(row.last_event)
                until = now if last is None else max(now, last)
                specs = {name: PipelineSpec.from_dict(name, row.spec, inferred=bool(row.inferred))}
                self._learned_in_read(conn, name, row, specs, until)
            learned.append(name)
        return learned

    def _stored_limits_hold(self, conn: Connection, pipeline: str, row: Any,
                            specs: Mapping[str, PipelineSpec]) -> bool:
        """Whether the pipeline's stored learned limits (`row`: its `learned_stale_days`,
        `stale_learned_at` and `updated_at`) are those of its deals as stored: computed, after its last
        spec change (or a won deal leaving it), and no deal of it that is or was won (a stage change to a
        won stage) written, or changed stage, since (`health_state`)."""
        learned_at = row.stale_learned_at
        if row.learned_stale_days is None or learned_at is None:
            return False
        if row.updated_at is not None and row.updated_at >= learned_at:
            return False
        deals, sc = self.table("deals"), self.table("stage_changes")
        since_learned = sa.or_(deals.c.state_updated_at >= learned_at, deals.c.stage_entered_at >= learned_at)
        stages = conn.execute(
            sa.select(sc.c.stage).distinct().join(deals, deals.c.deal_id == sc.c.deal_id)
            .where(deals.c.pipeline == pipeline, since_learned)
        ).scalars()
        return not any(stage_outcome(pipeline, stage, specs) == "won" for stage in stages)

    def _learned_in_read(self, conn: Connection, pipeline: str, row: Any, specs: Mapping[str, PipelineSpec],
                         until: datetime) -> dict[tuple[str, str], float]:
        """The pipeline's learned limits as of `until`, every event of it dated by then (`health_state`):
        `features.health.limits_of_visits` of its won deals' visits.

        The visits this process last learned them from are kept (`_visits_kept`) with the spec and
        `pipelines.updated_at` they were learned under and each won deal's `n_events`. A deal's visits
        depend on its own stage changes alone, and events are only ever added (each one counted in
        `n_events`), so only the stage changes of the won deals that are new or have new events are read;
        the other won deals' visits are reused, and those of deals no longer won dropped. A spec change or
        a won deal leaving the pipeline (both stamp `updated_at`) reads them all again."""
        deals = self.table("deals")
        t = _naive(until)
        won: dict[str, int] = dict(conn.execute(
            sa.select(deals.c.deal_id, deals.c.n_events)
            .where(deals.c.pipeline == pipeline, deals.c.outcome == "won", deals.c.created_at <= t)
        ).fetchall())
        under = (row.spec, bool(row.inferred), row.updated_at)
        kept = self._visits_kept.get(pipeline)
        if kept is not None and kept[0] == under:
            ids: list[str] | None = sorted(d for d, n in won.items() if kept[1].get(d) != n)
            # the visits of deals won then whose events changed since, or no longer won, are dropped
            gone = [d for d, n in kept[1].items() if won.get(d) != n]
            reused = kept[2]
            if gone:
                keep = ~pd.Index(reused["deal_id"].to_numpy(dtype=object), dtype=object).isin(gone)
                reused = reused[keep]
        else:
            reused, ids = None, None  # every won deal's, by the pipeline
        visits = won_visits(self._learning_changes(conn, pipeline, t, ids), specs, pd.Timestamp(until))
        if reused is not None:
            visits = pd.concat([reused, visits], ignore_index=True) if len(visits) else reused
        if pipeline not in self._visits_kept and len(self._visits_kept) >= _LIMITS_KEPT:
            self._visits_kept.clear()
        self._visits_kept[pipeline] = (under, won, visits)
        return limits_of_visits(visits)

    def _learning_changes(self, conn: Connection, pipeline: str, now: datetime,
                          deal_ids: Sequence[str] | None = None) -> pd.DataFrame:
        """What the pipeline's learned limits as of `now` need (`features.health.learned_from_stage_changes`):
        the stage changes (deal_id, pipeline, stage, changed_at, event_id), dated by `now`, of its deals
        created by `now` that may be won then (`_counts_for_limits`: won now, or with events after `now`,
        whose state as of `now` is not the stored one), or of the deals `deal_ids` (of the pipeline). Read
        from `ix_stage_changes_deal_time` alone."""
        deals, sc = self.table("deals"), self.table("stage_changes")
        t = _naive(now)
        columns = [sc.c.deal_id, sc.c.stage, sc.c.changed_at, sc.c.event_id]
        query = sa.select(*columns).where(sc.c.changed_at <= t)
        if deal_ids is None:
            query = query.join(deals, deals.c.deal_id == sc.c.deal_id).where(
                deals.c.pipeline == pipeline, deals.c.created_at <= t, _counts_for_limits(deals, t))
        changes = _rows_frame(_read_rows(conn, query, sc.c.deal_id, deal_ids), [c.name for c in columns])
        changes["changed_at"] = _localize(changes["changed_at"])
        changes.insert(1, "pipeline", pipeline)
        return changes

    def health_stamp(self, pipeline: str) -> tuple[Any, ...]:
        """A token that moves whenever anything pipeline health reads of `pipeline` changes, read by one
        query: the last state stamp of its deals (the top of `ix_deals_pipeline_state_updated`, one index
        entry) and the pipeline's `updated_at` and `stale_learned_at`.

        Every write of a deal (created, updated, moved between pipelines) or of one of its events
        rewrites its state columns and stamps `state_updated_at` (`_write_all`); a spec change stamps
        `updated_at` and restamps all its deals; a deal moving out of the pipeline stamps its
        `updated_at` (the deals still there are not restamped); a learned-limits refresh stamps
        `stale_learned_at`. No deal is ever deleted. Writes stamp wall-clock time inside their
        transaction: on PostgreSQL a write that commits after another one stamped later may go unnoticed
        here (the health cache's age bounds that)."""
        deals, pipes = self.table("deals"), self.table("pipelines")
        last = (sa.select(sa.func.max(deals.c.state_updated_at))
                .where(deals.c.pipeline == pipeline).scalar_subquery())
        query = sa.select(last, pipes.c.updated_at, pipes.c.stale_learned_at).where(pipes.c.name == pipeline)
        with self._read() as conn:
            row = conn.execute(query).one_or_none()
        return tuple(row) if row is not None else (None, None, None)

    def _read_history(
        self, conn: Connection, pipelines: Iterable[str] | None = None, deal_ids: Iterable[str] | None = None,
        tables: Sequence[str] = tuple(EVENT_TABLES), trusted: bool = False,
    ) -> DealHistory:
        """The stored history, validated (`DealHistory.from_frames`); with `trusted` and `deal_ids`, those
        deals' rows typed without validating them again (`_read_trusted`), the same `DealHistory`."""
        deals_t = self.table("deals")
        wanted_pipes = None if pipelines is None else sorted({str(p) for p in pipelines})
        wanted_ids = None if deal_ids is None else list(dict.fromkeys(str(d) for d in deal_ids))
        if trusted and wanted_ids is not None:
            history = self._read_trusted(conn, wanted_pipes, wanted_ids, tables)
            if history is not None:
                return history
        deal_cols = [deals_t.c[c] for c in ("id", *DEAL_COLUMNS, "attributes")]
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
            # a table not wanted: its columns, no rows
            rows = _read_frame(conn, query, table.c.deal_id, ids if name in tables else [])
            events[name] = _events_frame(rows, time_col)
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

    def _read_trusted(
        self, conn: Connection, wanted_pipes: Sequence[str] | None, wanted_ids: Sequence[str],
        tables: Sequence[str],
    ) -> DealHistory | None:
        """The deals among `wanted_ids` (of `wanted_pipes`, when given) and their events, typed by the
        validation's per-value rules without its checks (`features.validation.assemble_typed`): the
        `DealHistory` the validated read returns, since every write validated these rows in its
        transaction. None when a deal's state was never computed (a store just upgraded, whose rows no
        write has validated yet): the caller validates then."""
        deals_t = self.table("deals")
        names = ("id", *DEAL_COLUMNS, "attributes", "state_updated_at")
        query = sa.select(*(deals_t.c[c] for c in names))
        if wanted_pipes is not None:
            query = query.where(deals_t.c.pipeline.in_(wanted_pipes))
        rows = sorted(_read_rows(conn, query, deals_t.c.deal_id, wanted_ids), key=itemgetter(0))  # by `id`
        if any(row.state_updated_at is None for row in rows):
            return None
        columns = {name: [row[i] for row in rows] for i, name in enumerate(names)}
        deals = stored_deals(columns, columns["attributes"])
        events: dict[str, pd.DataFrame] = {}
        for name, (value_columns, time_col) in EVENT_TABLES.items():
            table = self.table(name)
            selected = ("id", *value_columns, "event_id")
            # a table not wanted: its columns, no rows
            found = _read_rows(conn, sa.select(*(table.c[c] for c in selected)), table.c.deal_id,
                               columns["deal_id"] if name in tables else [])
            # the validated read's order: by deal and time, ties in insertion (`id`) order
            found.sort(key=itemgetter(selected.index("deal_id"), selected.index(time_col), 0))
            events[name] = stored_events(name, {c: [row[i] for row in found] for i, c in enumerate(selected)})
        present = sorted(set(columns["pipeline"]) | set(wanted_pipes or ()))
        return assemble_typed(deals, events["stage_changes"], events["activities"], events["field_changes"],
                              self._pipeline_specs(conn, present))

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

    def deal_states(
        self, pipeline: str | None = None, deal_ids: Iterable[str] | None = None, outcome: str | None = None,
        fields: Sequence[str] | None = None,
    ) -> pd.DataFrame:
        """Current state of stored deals (one row per deal: deal_id, pipeline, the state columns, or only
        the state columns in `fields`), filtered in SQL by pipeline, ids and outcome ('open', 'won',
        'lost')."""
        table = self.table("deals")
        state = STATE_FIELDS if fields is None else tuple(f for f in STATE_FIELDS if f in fields)
        cols = ["id", "deal_id", "pipeline", "created_at", *state, "state_updated_at"]
        query = sa.select(*(table.c[c] for c in cols))
        if pipeline is not None:
            query = query.where(table.c.pipeline == pipeline)
        if outcome is not None:
            query = query.where(table.c.outcome == outcome)
        ids = None if deal_ids is None else list(dict.fromkeys(str(d) for d in deal_ids))
        with self._read() as conn:
            frame = _read_frame(conn, query, table.c.deal_id, ids)
        for col in ("created_at", *(f for f in STATE_TIME_FIELDS if f in state), "state_updated_at"):
            frame[col] = _localize(frame[col])
        if "current_amount" in state:
            amounts = pd.to_numeric(frame["current_amount"], errors="coerce")
            frame["current_amount"] = amounts.astype("float64")
        return frame

    def list_pipelines(self) -> list[str]:
        """Every pipeline the store knows: with a stored spec or with at least one deal."""
        deals = self.table("deals")
        pipes = self.table("pipelines")
        with self.engine.connect() as conn:
            names = set(conn.execute(sa.select(pipes.c.name)).scalars())
            names.update(conn.execute(sa.select(deals.c.pipeline).distinct()).scalars())
        return sorted(names)

    def has_pipeline(self, name: str) -> bool:
        """Whether the store knows the pipeline (as `list_pipelines` would list it), reading only it."""
        deals = self.table("deals")
        pipes = self.table("pipelines")
        query = sa.select(sa.or_(sa.exists().where(pipes.c.name == name),
                                 sa.exists().where(deals.c.pipeline == name)))
        with self._read_one() as conn:
            return bool(conn.execute(query).scalar())

    def pipeline_specs(self, names: Iterable[str] | None = None) -> dict[str, PipelineSpec]:
        """The stored pipeline definitions by name (`spec.inferred` tells inferred from given); with
        `names`, only those (the unknown ones are absent)."""
        with self.engine.connect() as conn:
            return self._pipeline_specs(conn, None if names is None else sorted(set(names)))

    def pipeline_spec(self, name: str) -> PipelineSpec | None:
        """One pipeline's stored spec, or None when the store does not know the pipeline."""
        with self.engine.connect() as conn:
            return self._pipeline_specs(conn, [name]).get(name)

    def _pipeline_specs(
        self, conn: Connection, names: Sequence[str] | None = None
    ) -> dict[str, PipelineSpec]:
        if names is None:
            rows = conn.execute(self._specs_query)
        else:
            rows = conn.execute(self._named_specs_query, {"names": list(names)})
        return {
            row.name: PipelineSpec.from_dict(row.name, row.spec, inferred=bool(row.inferred)) for row in rows
        }

    @cached_property
    def _specs_query(self) -> sa.Select[Any]:
        """Every pipeline's name, spec and inferred flag, by name (built once, as `_key_query`)."""
        table = self.table("pipelines")
        return sa.select(table.c.name, table.c.spec, table.c.inferred).order_by(table.c.name)

    @cached_property
    def _named_specs_query(self) -> sa.Select[Any]:
        """`_specs_query` of the pipelines whose names are bound as `names` (a list)."""
        names = self.table("pipelines").c.name
        return self._specs_query.where(names.in_(sa.bindparam("names", expanding=True)))

    # ------------------------------------------------------------------ live scores
    def pending_scores(self, model_version: str, stale_before: datetime, limit: int,
                       aged_limit: int | None = None) -> dict[str, datetime]:
        """Open deals whose live score must be (re)computed, with the state stamp to score them at.

        First the deals a write touched since their score (or never scored), newest writes first; then
        those scored by another model version or before `stale_before` (naive or aware UTC), oldest first,
        at most `aged_limit` of them. At most `limit` in all.
        """
        deals, scores = self.table("deals"), self.table("deal_scores")
        stale = stale_before.astimezone(UTC).replace(tzinfo=None) if stale_before.tzinfo else stale_before
        base = (
            sa.select(deals.c.deal_id, deals.c.state_updated_at)
            .select_from(deals.outerjoin(scores, scores.c.deal_id == deals.c.deal_id))
            .where(deals.c.outcome == "open")
        )
        moved = sa.or_(
            scores.c.deal_id.is_(None),
            scores.c.state_updated_at.is_(None),
            scores.c.state_updated_at != deals.c.state_updated_at,
        )
        aged = sa.or_(scores.c.model_version != model_version, scores.c.as_of < stale)
        with self._read() as conn:
            rows: list[Any] = list(
                conn.execute(base.where(moved).order_by(deals.c.state_updated_at.desc()).limit(limit))
            )
            room = limit - len(rows) if aged_limit is None else min(limit - len(rows), aged_limit)
            if room > 0:
                query = base.where(sa.not_(moved), aged).order_by(scores.c.as_of).limit(room)
                rows += list(conn.execute(query))
        return {r.deal_id: r.state_updated_at for r in rows}

    def save_scores(
        self, scores: pd.DataFrame, model_version: str, states: Mapping[str, datetime | None]
    ) -> int:
        """Store live scores (columns as `bundle.score` gives them) computed from the given deal states.

        A deal whose state moved on while it was being scored keeps the older stamp here, so it stays
        pending and is scored again. The same transaction copies each score's close probability and cold
        risk to its deal's row (`deals.live_close_probability`, `live_cold_risk`: what the at-risk list
        ranks by, revision 0010), first and in deal_id order, as every writer locks deals.
        """
        if not len(scores):
            return 0
        table = self.table("deal_scores")
        now = _now_naive()
        columns = ["deal_id", "as_of", "cold_risk", "close_probability", "risk_band", "expected_value"]
        timing = [c for c in ("close_probability_90d", "slip_risk") if c in scores.columns]
        frame = scores[columns + timing].assign(as_of=_naive_utc(scores["as_of"]))
        if "likely_close_date" in scores.columns:
            frame = frame.assign(likely_close_date=_naive_utc(scores["likely_close_date"]))
        records = _records(frame)
        counter = scores["counter_reasons"].tolist() if "counter_reasons" in scores.columns else None
        # {} (not NULL) when the model has no timing curve: NULL marks a score stored before revision 0005
        curves = scores["timing_curve"].tolist() if "timing_curve" in scores.columns else [None] * len(scores)
        for i, (rec, reasons) in enumerate(zip(records, scores["reasons"].tolist(), strict=True)):
            rec.update(
                model_version=model_version,
                computed_at=now,
                state_updated_at=states.get(rec["deal_id"]),
                reasons=_plain(reasons),
                counter_reasons=_plain(counter[i]) if counter is not None else None,
                timing_curve=curves[i] if curves[i] is not None else {},
            )
        insert = postgresql.insert(table) if self.dialect == "postgresql" else sqlite.insert(table)
        stmt = insert.on_conflict_do_update(
            index_elements=["deal_id"],
            set_={c.name: insert.excluded[c.name] for c in table.columns if c.name != "deal_id"},
        )
        copies = sorted(
            ({"b_deal_id": r["deal_id"], "b_close": r["close_probability"], "b_cold": r["cold_risk"]}
             for r in records),
            key=itemgetter("b_deal_id"),
        )
        with self._write() as conn:
            for start in range(0, len(copies), CHUNK_ROWS):
                conn.execute(self._live_copy_update, copies[start : start + CHUNK_ROWS])
            for start in range(0, len(records), CHUNK_ROWS):
                conn.execute(stmt, records[start : start + CHUNK_ROWS])
            append_score_history(self, conn, records, model_version, "champion")
        return len(records)

    @cached_property
    def _live_copy_update(self) -> Any:
        """UPDATE of a deal's copy of its live score's two ranking numbers by `b_deal_id` (built once)."""
        table = self.table("deals")
        return (
            table.update()
            .where(table.c.deal_id == sa.bindparam("b_deal_id"))
            .values(live_close_probability=sa.bindparam("b_close"), live_cold_risk=sa.bindparam("b_cold"))
        )

    def at_risk_page(self, *args: Any, **kwargs: Any) -> tuple[int, pd.DataFrame] | None:
        """`at_risk_rows` (same arguments) as a frame (times as UTC timestamps, numbers as float64, missing
        values NaN/NaT), for the CLI and for comparing with `models.at_risk.rank_at_risk`."""
        live = self.at_risk_rows(*args, **kwargs)
        if live is None:
            return None
        total, rows = live
        frame = pd.DataFrame.from_records(rows, columns=AT_RISK_ROW_COLUMNS)
        for col in ("expected_close_date", "stage_entered_at", "scored_at", "likely_close_date"):
            frame[col] = pd.to_datetime(frame[col], utc=True).astype("datetime64[ns, UTC]")
        for col in ("amount", "cold_risk", "close_probability", "value_at_risk", "days_in_stage",
                    "stage_limit_days"):
            frame[col] = pd.to_numeric(frame[col], errors="coerce").astype("float64")
        frame["pending"] = frame["pending"].astype(bool)
        return total, frame

    def _unscored_open_deals(self, pipeline: str | None) -> sa.Select[Any]:
        """How many open deals of the pipeline (every pipeline when None) have no live score yet: no copy
        of one on the deal's row (`save_scores` writes both in one transaction)."""
        deals = self.table("deals")
        return sa.select(sa.func.count()).where(*self._open_deals(pipeline), _unscored(deals))

    def _open_deals(self, pipeline: str | None) -> list[sa.ColumnElement[bool]]:
        deals = self.table("deals")
        return [deals.c.outcome == "open", *([deals.c.pipeline == pipeline] if pipeline is not None else [])]

    def unscored_open_deals(self, pipeline: str | None) -> int:
        """The number of open deals of the pipeline (every pipeline when None) with no live score yet:
        while it is not 0 the live lists and forecast cannot be read from the live scores."""
        with self._read() as conn:
            return int(conn.execute(self._unscored_open_deals(pipeline)).scalar_one())

    def at_risk_rows(
        self,
        pipeline: str | None,
        now: datetime | None = None,
        sort: str = DEFAULT_SORT,
        stale: bool = False,
        owner: str | None = None,
        team: str | None = None,
        min_amount: float | None = None,
        close_before: datetime | None = None,
        limit: int | None = 50,
        offset: int = 0,
        first: Callable[[Connection], object] | None = None,
    ) -> tuple[int, list[dict[str, Any]]] | None:
        """One page of the live at-risk list (`stale=False`) or clean-up list (`stale=True`) of a pipeline
        (every pipeline when None), from the stored state and scores: filtered, split, ordered and paged
        by the database, as `models.at_risk.rank_at_risk` does on demand.

        `value_at_risk` is `models.at_risk.value_at_risk` of the deal's current amount and its live score
        (`deals.value_at_risk`, computed by the database; a deal changed after its score ranks with its
        new amount, as on demand); a deal is stale as `models.at_risk` defines it, with its days in stage
        counted to `now` (default: the current time) and its stage's limit from `stage_limits`
        (configured, else the stored learned one).
        Order: `AT_RISK_SORTS[sort]`, missing values last, ties by deal_id (code-point order on both
        backends). Returns (total matching, the page) from one snapshot, or None while an open deal has no
        stored score yet or the pipeline's learned limits were never computed (the caller ranks on
        demand then). Each row is a dict of `AT_RISK_ROW_COLUMNS`: deal_id, pipeline, owner, team, stage,
        amount, expected_close_date, stage_entered_at, the score columns, value_at_risk, model_version,
        scored_at (its `as_of`), pending (the deal changed after its score), days_in_stage and
        stage_limit_days; times are aware UTC datetimes and a missing or non-finite number is None.

        The deals' index `ix_deals_at_risk` holds every column the list filters, splits and sorts by
        (the live score's two numbers copied to the deal, revision 0010): the count of unscored and of
        matching deals is one scan of it, and a page in the default order is its first rows.

        With a `pipeline` the read is one statement (counts, page, and the pipeline's row to check the
        stage limits it was built with: `_checked_limits_read`), on PostgreSQL in autocommit; None too
        when the pipeline has no row. `first` runs first on the read's connection (the caller's key
        check: one more statement there, not a connection of its own; it raises to refuse the request).
        """
        if sort not in AT_RISK_SORTS:
            raise ValueError(f"sort must be one of {sorted(AT_RISK_SORTS)}, not {sort!r}")
        t = _naive(now) if now is not None else _now_naive()
        given = {"owner": owner, "team": team,
                 "min_amount": None if min_amount is None else float(min_amount),
                 "close_before": None if close_before is None else _naive(close_before)}
        values: dict[str, Any] = {k: v for k, v in given.items() if v is not None}
        values.update(page_limit=limit, page_offset=offset)
        shape = (pipeline, sort, stale, tuple(k for k in given if k in values), limit is not None)

        def statement(limits: Mapping[tuple[str, str], float]) -> tuple[sa.Select[Any], dict[str, Any]]:
            """The list's statement for these stage limits (built once per shape and set of stalled
            stages, `_list_statement`) and its parameters: the filters', the page's and each stage's
            stalled-since time as of `t`."""
            stalled = [(stage, t - timedelta(days=STALE_LIMIT_FACTOR * days))
                       for stage, days in sorted(limits.items()) if np.isfinite(days)]
            key = (shape, tuple(stage for stage, _ in stalled))
            query = self._list_statements.get(key)
            if query is None:
                if len(self._list_statements) >= _STATEMENTS_KEPT:
                    self._list_statements.clear()
                query = self._list_statement(pipeline, sort, stale, shape[3], limit is not None, key[1])
                self._list_statements[key] = query
            return query, {**values, **{f"stalled_{i}": since for i, (_, since) in enumerate(stalled)}}

        if pipeline is None:
            with self._read() as conn:
                if first is not None:
                    first(conn)
                limits = self._stage_limits(conn, None)
                if limits is None:
                    return None
                rows = conn.execute(*statement(limits)).fetchall()
        else:
            read = self._checked_limits_read(pipeline, statement, first)
            if read is None:
                return None
            rows, limits = read
        if not rows or rows[0].n_unscored:
            return None
        total = rows[0].n_total
        # Plain Python rows, no frame: a page is 50 rows, where pandas' fixed costs outweighed the query.
        out: list[dict[str, Any]] = []
        page_names = AT_RISK_ROW_COLUMNS[:-2]  # the statement's page columns; the last two are computed
        skip = len(rows[0]) - len(page_names)
        for row in rows:
            if row.deal_id is None:  # the empty page's one row
                continue
            r = dict(zip(page_names, row[skip:], strict=True))
            for col in ("expected_close_date", "stage_entered_at", "scored_at", "likely_close_date"):
                r[col] = _utc(r[col])
            for col in ("amount", "cold_risk", "close_probability", "value_at_risk"):
                r[col] = _finite(r[col])
            r["pending"] = bool(r["pending"])
            r["reasons"] = loads_jsonable(r["reasons"])  # stored JSON may carry NaN, JSON answers cannot
            counter = None if r["counter_reasons"] is None else loads_jsonable(r["counter_reasons"])
            r["counter_reasons"] = counter if isinstance(counter, list) else []
            entered = r["stage_entered_at"]
            r["days_in_stage"] = None if entered is None else (
                (t - entered.replace(tzinfo=None)).total_seconds() / 86400.0
            )
            limit_days = limits.get((r["pipeline"], r["stage"])) if r["stage"] is not None else None
            r["stage_limit_days"] = _finite(limit_days)
            out.append(r)
        return int(total), out

    def _list_statement(
        self, pipeline: str | None, sort: str, stale: bool, filtered: Sequence[str], paged: bool,
        stalled: Sequence[tuple[str, str]],
    ) -> sa.Select[Any]:
        """`at_risk_rows`' one statement (one snapshot, one round trip): the counts of unscored and of
        matching open deals, the page, and with a `pipeline` its row's spec, inferred flag and learned
        limits as stored text (the caller checks them against the limits the statement was split by).
        Bound parameters: each of `filtered` by name (owner, team, min_amount, close_before),
        `page_limit` when `paged`, `page_offset`, and `stalled_<i>` for the i-th of the `stalled`
        (pipeline, stage) pairs: the time before which a deal entering it is stalled."""
        deals, scores = self.table("deals"), self.table("deal_scores")
        in_scope = self._open_deals(pipeline)
        conditions = {
            "owner": lambda p: deals.c.current_owner == p,
            "team": lambda p: deals.c.team == p,
            "min_amount": lambda p: deals.c.current_amount >= p,
            "close_before": lambda p: deals.c.current_expected_close_date < p,
        }
        filters = [conditions[f](sa.bindparam(f)) for f in filtered]  # typed as the column compared
        page_columns = (
            deals.c.deal_id,
            deals.c.pipeline,
            deals.c.current_owner.label("owner"),
            deals.c.team,
            deals.c.current_stage.label("stage"),
            deals.c.current_amount.label("amount"),
            deals.c.current_expected_close_date.label("expected_close_date"),
            deals.c.stage_entered_at,
            scores.c.cold_risk,
            scores.c.close_probability,
            scores.c.risk_band,
            scores.c.expected_value,
            deals.c.value_at_risk,
            # as stored text, parsed below in one step (the JSON type's parse, then `jsonable`, took longer)
            sa.cast(scores.c.reasons, sa.Text).label("reasons"),
            scores.c.close_probability_90d,
            scores.c.slip_risk,
            scores.c.likely_close_date,
            sa.cast(scores.c.counter_reasons, sa.Text).label("counter_reasons"),
            scores.c.model_version,
            scores.c.as_of.label("scored_at"),
            sa.or_(
                scores.c.state_updated_at.is_(None), scores.c.state_updated_at != deals.c.state_updated_at
            ).label("pending"),
        )
        # the sort keys, all on the deal's row; days in stage, highest first, is stage entry, earliest first
        sort_columns: dict[str, tuple[Any, bool]] = {
            "value_at_risk": (deals.c.value_at_risk, False),
            "cold_risk": (deals.c.live_cold_risk, False),
            "amount": (deals.c.current_amount, False),
            "expected_close_date": (deals.c.current_expected_close_date, False),
            "days_in_stage": (deals.c.stage_entered_at, True),
        }
        name, ascending = AT_RISK_SORTS[sort]
        column, flipped = sort_columns[name]

        def ordered(key: Any, deal_id: Any) -> tuple[Any, Any]:
            # Missing values last. A deal's value at risk is never missing here (the list is read only
            # when every open deal in scope has a live score, and a current amount is never NULL): it is
            # ordered as `ix_deals_at_risk` holds it (DESC), so that PostgreSQL, whose DESC puts NULLs
            # first, walks that index too; SQLite's DESC puts them last.
            leading = key.asc() if ascending != flipped else key.desc()
            leading = leading if name == "value_at_risk" else leading.nulls_last()
            return leading, deal_id.collate("C") if self.dialect == "postgresql" else deal_id

        # `IS TRUE` / `IS NOT TRUE` (a deal whose condition is unknown is not stale): PostgreSQL
        # estimates them from the condition's own columns, where it took `CASE ... END = 0` for 0.5%
        # of the open deals, thought the default order's index walk would read them all, and sorted
        # the pipeline's open deals instead
        is_stale = _stale_condition(deals, stalled)
        where = [*filters, is_stale.is_(sa.true()) if stale else is_stale.is_not(sa.true())]
        counts = sa.select(
            sa.func.count().filter(_unscored(deals)).label("n_unscored"),
            sa.func.count().filter(sa.and_(*where)).label("n_total"),
        ).where(*in_scope).subquery("counts")
        # Ranked narrow (deal ids), then only the page's rows are read wide, joined to their scores.
        ranking = (
            sa.select(deals.c.deal_id.label("ranked_id")).where(*in_scope, *where)
            .order_by(*ordered(column, deals.c.deal_id))
            .limit(sa.bindparam("page_limit", type_=sa.Integer()) if paged else None)
            .offset(sa.bindparam("page_offset", type_=sa.Integer()))
        )
        if pipeline is not None:
            # SQLite ranked by days in stage (the stale list's default) through the pipeline's
            # stage-entry index, reading every deal of the pipeline, closed ones too: 45 ms at
            # 100,000 deals, against 1.5 ms through the covering index of its open deals and a sort
            ranking = ranking.with_hint(deals, "INDEXED BY ix_deals_at_risk", "sqlite")
        ranked = ranking.subquery("ranked")
        page = (
            sa.select(*page_columns, column.label("sort_key"))
            .select_from(ranked.join(deals, deals.c.deal_id == ranked.c.ranked_id)
                         .join(scores, scores.c.deal_id == deals.c.deal_id))
            .subquery("page")
        )
        heads: list[Any] = [counts.c.n_unscored, counts.c.n_total]
        source: Any = counts
        if pipeline is not None:
            pipes = self.table("pipelines")
            row = sa.select(
                sa.cast(pipes.c.spec, sa.Text).label("spec"), pipes.c.inferred,
                sa.cast(pipes.c.learned_stale_days, sa.Text).label("learned_stale_days"),
            ).where(pipes.c.name == pipeline).subquery("pipe")
            heads += [row.c.spec, row.c.inferred, row.c.learned_stale_days]
            source = row.join(counts, sa.true())
        # the page's rows again in the ranking's order (one row of NULLs when the page is empty)
        return (
            sa.select(*heads, *(page.c[str(c.name)] for c in page_columns))
            .select_from(source.outerjoin(page, sa.true()))
            .order_by(*ordered(page.c.sort_key, page.c.deal_id))
        )

    # ------------------------------------------------------------------ stage limits
    def _stage_limits(self, conn: Connection, pipeline: str | None) -> dict[tuple[str, str], float] | None:
        """The stalled limit per (pipeline, stage) of one pipeline (all when None): `features.health.
        stage_limits` of the stored learned limits and the specs; None while one was never learned."""
        table = self.table("pipelines")
        query = sa.select(table.c.name, table.c.spec, table.c.inferred, table.c.learned_stale_days)
        if pipeline is not None:
            query = query.where(table.c.name == pipeline)
        rows = conn.execute(query).fetchall()
        if not rows:  # an unknown pipeline, or an empty store
            return None
        return _limits_of([(row.name, row.spec, row.inferred, row.learned_stale_days) for row in rows])

    def _checked_limits_read(
        self, pipeline: str,
        query: Callable[[Mapping[tuple[str, str], float]], tuple[sa.Select[Any], dict[str, Any]]],
        first: Callable[[Connection], object] | None = None,
    ) -> tuple[Sequence[sa.Row[Any]], dict[tuple[str, str], float]] | None:
        """Run `query(limits)` (one statement: its own snapshot, on PostgreSQL in autocommit, no BEGIN and
        ROLLBACK round trips) with the pipeline's stage limits as last read, and check them against the
        pipeline's row the statement returns (spec, inferred, learned_stale_days: its first rows' columns
        after the two counts): the page was split with the limits of its own snapshot, or it is read
        again with those. The rows and the limits, or None when the pipeline has no row (unknown, or
        created by a store older than pipeline rows) or its limits were never learned. `first(conn)` runs
        before."""
        with self._read_one() as conn:
            if first is not None:
                first(conn)
            for _ in range(_LIMITS_READS):
                kept = self._limits_kept.get(pipeline)
                rows = conn.execute(*query(kept[1] if kept else {})).fetchall()
                if not rows:
                    return None
                spec, inferred, learned = rows[0][2:5]  # as stored text: compared, parsed only when new
                stamp = (spec, bool(inferred), learned)
                if kept is not None and kept[0] == stamp:
                    return rows, kept[1]
                limits = _limits_of([(pipeline, json.loads(spec), inferred,
                                      None if learned is None else json.loads(learned))])
                if limits is None:
                    return None
                if len(self._limits_kept) >= _LIMITS_KEPT:
                    self._limits_kept.clear()
                self._limits_kept[pipeline] = (stamp, limits)
        return None  # the pipeline's limits changed under every read: ranked on demand this time

    def stage_limits_due(self, now: datetime, stale_before: datetime) -> list[str]:
        """Pipelines whose learned stage limits must be (re)computed as of `now`: never computed, computed
        before `stale_before` (wall clock, as `stale_learned_at` is), spec changed or a deal stored as won
        taken out of them since (both stamp `pipelines.updated_at`), or a deal that counts for them
        (`won_deal_ids`) written since. Cheap: one indexed query per call."""
        pipes, deals = self.table("pipelines"), self.table("deals")
        learned_at = pipes.c.stale_learned_at
        counted_since = (
            sa.select(deals.c.deal_id)
            .where(deals.c.pipeline == pipes.c.name, _counts_for_limits(deals, _naive(now)),
                   deals.c.state_updated_at >= learned_at)
            .exists()
        )
        query = sa.select(pipes.c.name).where(
            sa.or_(
                learned_at.is_(None),
                pipes.c.learned_stale_days.is_(None),
                learned_at < _naive(stale_before),
                pipes.c.updated_at >= learned_at,
                counted_since,
            )
        ).order_by(pipes.c.name)
        with self._read() as conn:
            return list(conn.execute(query).scalars())

    def learned_limits(self, pipeline: str, now: datetime) -> dict[str, float]:
        """The pipeline's learned stage limits as of `now` (stage -> days): `features.health.
        learned_stale_thresholds` of its deals, from the stage changes of those that may be won then
        (`_learning_changes`) and its spec, in one snapshot; no history is read."""
        with self._read() as conn:
            specs = self._pipeline_specs(conn, [pipeline])
            changes = self._learning_changes(conn, pipeline, now)
        learned = learned_from_stage_changes(changes, specs, pd.Timestamp(now))
        return {stage: days for (pipe, stage), days in learned.items() if pipe == pipeline}

    def save_learned_limits(self, pipeline: str, learned: Mapping[str, float], learned_at: datetime) -> None:
        """Store a pipeline's learned stage limits (stage -> days), computed from what was stored at
        `learned_at`: the wall-clock time taken before reading, whatever time they were learned as of,
        since writes are stamped in wall-clock time (`serving.stage_limits`)."""
        table = self.table("pipelines")
        with self._write() as conn:
            conn.execute(
                table.update()
                .where(table.c.name == pipeline)
                .values(learned_stale_days={str(k): float(v) for k, v in learned.items()},
                        stale_learned_at=_naive(learned_at))
            )

    def forecast_scores(self, pipeline: str, as_of: datetime) -> pd.DataFrame | None:
        """The open deals of a pipeline (created by `as_of`) with what the forecast needs from their live
        scores, in insertion order: deal_id, amount, expected_close_date (current values),
        close_probability, model_version, scored_at (the score's `as_of`) and timing_curve (None for a
        model without one). None while an open deal has no live score, or one from before revision 0005
        (the caller forecasts on demand then). One snapshot."""
        deals, scores = self.table("deals"), self.table("deal_scores")
        cutoff = as_of.astimezone(UTC).replace(tzinfo=None) if as_of.tzinfo else as_of
        query = (
            sa.select(
                deals.c.id,
                deals.c.deal_id,
                deals.c.current_amount.label("amount"),
                deals.c.current_expected_close_date.label("expected_close_date"),
                scores.c.close_probability,
                scores.c.model_version,
                scores.c.as_of.label("scored_at"),
                scores.c.timing_curve,
            )
            .select_from(deals.outerjoin(scores, scores.c.deal_id == deals.c.deal_id))
            .where(deals.c.pipeline == pipeline, deals.c.outcome == "open", deals.c.created_at <= cutoff)
            .order_by(deals.c.id)
        )
        with self._read() as conn:
            rows = conn.execute(query).fetchall()
        frame = _rows_frame(rows, list(query.selected_columns.keys())).drop(columns="id")
        if frame["model_version"].isna().any() or frame["timing_curve"].isna().any():
            return None
        for col in ("expected_close_date", "scored_at"):
            frame[col] = _localize(frame[col])
        frame["amount"] = pd.to_numeric(frame["amount"], errors="coerce").astype("float64")
        frame["close_probability"] = frame["close_probability"].astype("float64")
        frame["timing_curve"] = [c if c else None for c in frame["timing_curve"]]
        return frame

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
        if ALL_PIPELINES in pipes and len(pipes) > 1:
            named = ", ".join(p for p in pipes if p != ALL_PIPELINES)
            raise ValueError(
                f"'{ALL_PIPELINES}' means every pipeline and cannot be listed with names ({named}): give "
                f"'{ALL_PIPELINES}' alone, or only the pipelines' names"
            )
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

    @staticmethod
    def key_id_of(plaintext: str) -> str | None:
        """The key id a plaintext key names (`drk_<key_id>_<secret>`), None when it is not of that form."""
        parts = plaintext.strip().split("_", 2)
        if len(parts) != 3 or parts[0] != KEY_PREFIX or not parts[1] or not parts[2]:
            return None
        return parts[1]

    def verify_api_key(
        self, plaintext: str, conn: Connection | None = None, stored: Mapping[str, Any] | None = None
    ) -> ApiKey | None:
        """The key's record if `plaintext` is a valid, unrevoked key; else None. `conn`: read in that
        connection's transaction (a write's: one transaction for the key and the write). `stored`: the
        key's row as a statement of that transaction already read it (`write_events`), not read again."""
        key_id = self.key_id_of(plaintext)
        if key_id is None:
            return None
        params = {"key_id": key_id}
        if stored is not None and stored.get("key_id") == key_id:
            row: Mapping[Any, Any] | None = stored
        elif conn is not None:
            row = conn.execute(self._key_query, params).mappings().first()
        else:
            with self._read_one() as own:
                row = own.execute(self._key_query, params).mappings().first()
        if row is None or not hmac.compare_digest(row["key_hash"], _sha256(plaintext.strip())):
            return None
        key = _api_key(row)
        return key if key.active else None

    @cached_property
    def _key_query(self) -> sa.Select[Any]:
        """The API key bound as `key_id` (built once: building and keying the statement cost more than
        running it, for the key check of every request)."""
        table = self.table("api_keys")
        return sa.select(table).where(table.c.key_id == sa.bindparam("key_id"))

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
def _among(
    dialect: str, column: sa.Column[Any], values: Sequence[str] | sa.BindParameter[Any]
) -> sa.ColumnElement[bool]:
    """`column IN values`, as `= ANY(array)` on PostgreSQL; `values` the values, or a parameter bound at
    execution (`_ids_param`: a statement built once).

    With thousands of bound parameters in an IN list, or `= ANY($1)` once psycopg prepares the statement
    (a generic plan), PostgreSQL compares every row with every value: seconds per query on a big table.
    `IN (SELECT unnest($1))` is planned as a join (index or hash lookups) whatever the plan.
    """
    if dialect == "postgresql":
        if not isinstance(values, sa.BindParameter):
            values = sa.bindparam(None, list(values), type_=postgresql.ARRAY(sa.String))
        keys = sa.select(sa.func.unnest(values))
        return column.in_(keys.scalar_subquery())
    return column.in_(values)


def _ids_param(dialect: str, name: str) -> sa.BindParameter[Any]:
    """A parameter `name` bound to a list of ids at execution, for `_among`."""
    if dialect == "postgresql":
        return sa.bindparam(name, type_=postgresql.ARRAY(sa.String))
    return sa.bindparam(name, expanding=True)


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def _utc(value: datetime | None) -> datetime | None:
    return None if value is None else value.replace(tzinfo=UTC)


def _created_states(rows: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """The state of each deal without events, from its row as written (`features.deal_state.
    created_state`), for the rows that qualify and at most `APPEND_STATE_MAX_DEALS` of them."""
    if len(rows) > APPEND_STATE_MAX_DEALS:
        return {}
    now = _now_naive()
    out: dict[str, dict[str, Any]] = {}
    for deal_id, rec in rows.items():
        deal = {**rec, "created_at": _aware(rec["created_at"]),
                "expected_close_date": _aware(rec["expected_close_date"])}
        state = created_state(deal)
        if state is not None:
            out[deal_id] = {
                **{c: _stored_time(state[c]) if c in STATE_TIME_FIELDS else state[c] for c in STATE_FIELDS},
                "state_updated_at": now,
            }
    return out


def _aware(value: datetime | None) -> pd.Timestamp | None:
    """A stored (naive UTC) time as a UTC Timestamp; None stays None."""
    return None if value is None else pd.Timestamp(value).tz_localize("UTC")


def _stored_time(value: Any) -> datetime | None:
    """A UTC time as the store writes it (naive, microseconds, as `_naive_utc` and `_python_values`)."""
    if value is None or pd.isna(value):
        return None
    ts = pd.Timestamp(value)
    naive = ts.tz_convert("UTC").tz_localize(None) if ts.tzinfo is not None else ts
    return cast(datetime, naive.to_datetime64().astype("datetime64[us]").item())


def _api_key(row: Mapping[Any, Any]) -> ApiKey:
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
    if pd.api.types.is_datetime64_any_dtype(series.dtype):
        ns = to_ns(series)
        present = ns != NAT_NS
        if not (ns[present] % 1000).any():  # whole microseconds (as every API time): exact integer division
            us = np.where(present, ns // 1000, NAT_NS).view("datetime64[us]")
            return pd.Series(us, index=series.index)
    times = pd.to_datetime(series, utc=True)
    return times.dt.tz_convert(None).astype("datetime64[us]")


def _python_values(series: pd.Series) -> list[Any]:
    """Column values as plain Python objects the DB drivers accept, missing values as None."""
    if pd.api.types.is_datetime64_any_dtype(series.dtype):
        # numpy turns datetime64[us] into datetime.datetime and NaT into None
        return series.to_numpy(dtype="datetime64[us]").astype(object).tolist()
    values = series.to_numpy(dtype=object, copy=True)
    values[pd.isna(values)] = None
    return cast(list[Any], values.tolist())


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


@dataclass(frozen=True)
class _EventRows:
    """One event table's rows as the store writes them: the table's columns, `event_id` (an empty id is
    no id) and `event_key` (the id, or the row's content hash when it has none). Either a typed frame,
    kept as given and turned into the drivers' records a chunk at a time (`record_chunks`), or the
    records themselves (`_event_rows`: a request's few events, which never were a frame)."""

    name: str
    frame: pd.DataFrame | None
    ids: list[str | None]
    keys: list[str]
    records: list[dict[str, Any]] | None = None

    def __len__(self) -> int:
        return len(self.keys)

    def deal_ids(self) -> list[str]:
        if self.records is not None:
            return [str(r["deal_id"]) for r in self.records]
        assert self.frame is not None
        return [str(d) for d in self.frame["deal_id"].tolist()]

    def record_chunks(self, size: int = CHUNK_ROWS) -> Iterator[list[dict[str, Any]]]:
        """The rows as records (naive UTC times, missing values None), at most `size` at a time."""
        n = len(self)
        if self.records is not None:
            for start in range(0, n, size):
                yield self.records[start : start + size]
            return
        assert self.frame is not None
        columns, time_col = EVENT_TABLES[self.name]
        for start in range(0, n, size):
            chunk = self.frame if n <= size else self.frame.iloc[start : start + size]
            m = len(chunk)
            values = {c: _python_values(chunk[c]) if c in chunk.columns else [None] * m for c in columns}
            values[time_col] = _python_values(_naive_utc(chunk[time_col]))
            values["event_id"] = self.ids[start : start + m]
            values["event_key"] = self.keys[start : start + m]
            names = list(values)
            yield [dict(zip(names, row, strict=True)) for row in zip(*values.values(), strict=True)]


def _event_ids(given: Iterable[Any]) -> list[str | None]:
    # an empty event_id is no id at all: fall back to the row hash rather than colliding on ""
    return [None if is_missing(v) or str(v) == "" else str(v) for v in given]


def _prepare_events(name: str, frame: pd.DataFrame) -> _EventRows:
    """An event frame (typed, as `DealHistory` holds it) as the rows the store writes, keyed.

    Reads the frame's columns once and copies nothing: a write of one event pays microseconds here."""
    columns, _ = EVENT_TABLES[name]
    n = len(frame)
    given = frame["event_id"].to_numpy(dtype=object).tolist() if "event_id" in frame.columns else [None] * n
    ids = _event_ids(given)
    keys = list(ids)
    # the row hash is the key only of rows without an id (hashing costs: skip it when every row has one)
    keyless = [i for i, v in enumerate(ids) if v is None]
    if keyless:
        absent = pd.array([pd.NA] * n, dtype="string")
        table = frame_of({c: frame[c].array if c in frame.columns else absent for c in columns},
                         pd.RangeIndex(n))
        for i, key in zip(keyless, _row_hashes(table.iloc[keyless], columns).tolist(), strict=True):
            keys[i] = key
    return _EventRows(name, frame, ids, cast(list[str], keys))


def _event_rows(name: str, records: Sequence[Mapping[str, Any]]) -> _EventRows:
    """Event records (the table's columns and `event_id`, as the drivers take them: naive UTC times,
    missing values None) as the rows the store writes, keyed as `_prepare_events` keys a frame: the
    content hash of a row without an id reads the same values (times by their instant, missing values
    by the same marker)."""
    columns, _ = EVENT_TABLES[name]
    ids = _event_ids(r.get("event_id") for r in records)
    keys = list(ids)
    keyless = [i for i, v in enumerate(ids) if v is None]
    if keyless:
        picked = {c: pd.Series([records[i].get(c) for i in keyless], dtype=object) for c in columns}
        table = pd.DataFrame(picked)
        time_col = EVENT_TABLES[name][1]
        table[time_col] = pd.to_datetime(table[time_col])
        for i, key in zip(keyless, _row_hashes(table, columns).tolist(), strict=True):
            keys[i] = key
    rows = [
        {**{c: rec.get(c) for c in columns}, "event_id": i, "event_key": k}
        for rec, i, k in zip(records, ids, keys, strict=True)
    ]
    return _EventRows(name, None, ids, cast(list[str], keys), rows)


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


# The state columns `Store.health_state` reads of an open deal (its pipeline, outcome and close time are
# those it selects by)
_OPEN_READ = ("deal_id", "team", "owner", "amount", "created_at", "stage", "stage_entered_at")


def _row_columns(rows: Sequence[Any], names: Sequence[str]) -> dict[str, tuple[Any, ...]]:
    """Rows as their columns' values, by name."""
    columns = list(zip(*rows, strict=True)) if rows else [() for _ in names]
    return dict(zip(names, columns, strict=True))


def _rows_frame(rows: Sequence[Any], names: list[str]) -> pd.DataFrame:
    # Column-wise: pandas probes each SQLAlchemy Row for namedtuple fields, which costs seconds per 100k rows
    return pd.DataFrame(
        {name: pd.Series(list(col), dtype=object) for name, col in _row_columns(rows, names).items()}
    )


def _read_rows(
    conn: Connection, query: sa.Select[Any], id_column: sa.Column[Any], ids: Sequence[str] | None
) -> list[Any]:
    """Run a select, restricted to `ids` in chunks when given, into a list of rows (in no set order)."""
    if ids is None:
        return list(conn.execute(query).fetchall())
    rows: list[Any] = []
    for i in range(0, len(ids), _IN_CHUNK):
        chunk = _among(conn.dialect.name, id_column, ids[i : i + _IN_CHUNK])
        rows += conn.execute(query.where(chunk)).fetchall()
    return rows


def _read_frame(
    conn: Connection, query: sa.Select[Any], id_column: sa.Column[Any], ids: Sequence[str] | None
) -> pd.DataFrame:
    """Run a select (restricted to `ids` in chunks when given) into a frame in insertion (`id`) order."""
    names = list(query.selected_columns.keys())
    frame = _rows_frame(_read_rows(conn, query, id_column, ids), names)
    return frame.sort_values("id", kind="stable").drop(columns="id").reset_index(drop=True)


def _localize(values: pd.Series) -> pd.Series:
    times = pd.to_datetime(values.astype(object).where(values.notna(), None))
    return times.dt.tz_localize("UTC").astype("datetime64[ns, UTC]")


def _deals_frame(rows: pd.DataFrame) -> pd.DataFrame:
    """Deal rows as `DealHistory.deals` (times UTC; the attributes as columns, when they were read)."""
    frame = rows.drop(columns="attributes", errors="ignore")
    for col in ("created_at", "expected_close_date"):
        frame[col] = _localize(frame[col])
    if "attributes" not in rows.columns:
        return frame
    attrs = pd.DataFrame(rows["attributes"].map(lambda a: a or {}).tolist(), index=frame.index)
    if len(attrs.columns):
        frame = pd.concat([frame, attrs], axis=1)
    return frame


def _events_frame(rows: pd.DataFrame, time_col: str) -> pd.DataFrame:
    frame = rows.copy()
    frame[time_col] = _localize(frame[time_col])
    # DealHistory sorts events by (deal_id, time); ties keep their insertion order
    return frame.sort_values(["deal_id", time_col], kind="stable").reset_index(drop=True)


# ---------------------------------------------------------------------- helpers (rules and messages)
def _plain(value: Any) -> Any:
    """Reasons as plain JSON values: numpy scalars to Python, NaN and infinities to null."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple | np.ndarray):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return None
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return None if pd.isna(value) else str(value)


def _limits_of(rows: Iterable[tuple[str, Any, Any, Any]]) -> dict[tuple[str, str], float] | None:
    """`features.health.stage_limits` of pipeline rows (name, spec, inferred, learned_stale_days as stored);
    None when one's limits were never learned."""
    learned: dict[tuple[str, str], float] = {}
    specs: dict[str, PipelineSpec] = {}
    for name, spec, inferred, learned_days in rows:
        if learned_days is None:
            return None
        learned.update({(name, str(stage)): float(v) for stage, v in learned_days.items()})
        specs[name] = PipelineSpec.from_dict(name, spec, inferred=bool(inferred))
    return stage_limits(learned, specs)


def _naive(value: datetime) -> datetime:
    """A time as the store keeps it: naive UTC (an aware time is converted, a naive one taken as UTC)."""
    return value.astimezone(UTC).replace(tzinfo=None) if value.tzinfo else value


def _counts_for_limits(deals: sa.Table, now: datetime) -> sa.ColumnElement[bool]:
    return sa.or_(deals.c.outcome == "won", deals.c.last_event_at > now)


def _unscored(deals: sa.Table) -> sa.ColumnElement[bool]:
    return deals.c.live_close_probability.is_(None)


def _stale_condition(deals: sa.Table, stalled: Sequence[tuple[str, str]]) -> sa.ColumnElement[bool]:
    """`models.at_risk`'s stale, in SQL: close probability under the bound and the stage entered before
    its bound parameter `stalled_<i>` (the i-th of the `stalled` (pipeline, stage) pairs: `STALE_LIMIT_FACTOR`
    x its limit before now; a stage without a finite limit is not among them, and never stale)."""
    if not stalled:
        return sa.false()
    return sa.and_(deals.c.live_close_probability < STALE_MAX_CLOSE_PROBABILITY, sa.or_(*(
        sa.and_(deals.c.pipeline == pipe, deals.c.current_stage == stage,
                deals.c.stage_entered_at < sa.bindparam(f"stalled_{i}", type_=sa.DateTime()))
        for i, (pipe, stage) in enumerate(stalled)
    )))


AT_RISK_ROW_COLUMNS = [
    "deal_id", "pipeline", "owner", "team", "stage", "amount", "expected_close_date", "stage_entered_at",
    "cold_risk", "close_probability", "risk_band", "expected_value", "value_at_risk", "reasons",
    "close_probability_90d", "slip_risk", "likely_close_date", "counter_reasons", "model_version",
    "scored_at", "pending", "days_in_stage", "stage_limit_days",
]


def _finite(value: Any) -> float | None:
    """A stored number as a float, None when missing or not finite (JSON has no NaN or infinity)."""
    if value is None:
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def _now_naive() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def _iso(value: pd.Timestamp) -> str:
    ts = value.tz_localize("UTC") if value.tzinfo is None else value
    return ts.isoformat()


def _event_loc(table: str, row: Mapping[str, Any], time_col: str) -> str:
    """`activities[deal D1, event e7]` (or the event's time when it has no id)."""
    event_id = row.get("event_id")
    if (
        event_id is not None
        and not (isinstance(event_id, float) and np.isnan(event_id))
        and event_id is not pd.NA
    ):
        return f"{table}[deal {row['deal_id']}, event {event_id}]"
    return f"{table}[deal {row['deal_id']}, at {_iso(pd.Timestamp(row[time_col]))}]"


def _comparable(value: Any) -> Any:
    """An event value as compared for conflicts: times to the microsecond, missing as None."""
    if value is None or value is pd.NA or value is pd.NaT:
        return None
    if isinstance(value, float) and np.isnan(value):
        return None
    if isinstance(value, datetime | pd.Timestamp):
        return pd.Timestamp(value).tz_localize(None) if pd.Timestamp(value).tzinfo else pd.Timestamp(value)
    return str(value)


def _stage_known(spec: PipelineSpec, stage: str) -> bool:
    """Whether a stage belongs to the spec. A given spec without won (lost) stages closes by the name
    rule, as validation does; an inferred spec lists every stage it has seen, closing ones included."""
    if stage in spec.stages or stage in spec.won or stage in spec.lost:
        return True
    if spec.inferred:
        return False
    lower = stage.lower()
    return (not spec.won and "won" in lower) or (not spec.lost and "lost" in lower)


def _extend_spec(spec: PipelineSpec, stages: Sequence[str]) -> PipelineSpec:
    """An inferred spec with new stages appended (closing ones, by name, to won / lost)."""
    open_, won, lost = list(spec.stages), list(spec.won), list(spec.lost)
    for stage in stages:
        lower = stage.lower()
        target = won if "won" in lower else lost if "lost" in lower else open_
        if stage not in target:
            target.append(stage)
    return PipelineSpec(
        spec.name, tuple(open_), tuple(won), tuple(lost), dict(spec.stale_after_days), inferred=True
    )


def _allowed(spec: PipelineSpec) -> str:
    listed = ", ".join(spec.stages + spec.won + spec.lost) or "(none listed)"
    rules = []
    if not spec.won:
        rules.append("any stage named '…won…' closes as won")
    if not spec.lost:
        rules.append("any stage named '…lost…' closes as lost")
    return listed + (f" ({'; '.join(rules)})" if rules else "")
