"""Fixtures shared by every test: an isolated data folder, and a store on SQLite and on PostgreSQL.

Store tests take `store` (or `database_url`) and run once per backend. PostgreSQL is the server on this
machine; each test gets its own schema, dropped afterwards, so parallel runs never collide. Where the
server is unreachable those tests skip with the reason, unless DEALRISK_REQUIRE_POSTGRES=1 (CI), where
a missing server is a failure.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import pytest

from serving.store import Store

# The live scorer runs as threads of the app under test (no process spawned per app); the tests of the
# scorer process (tests/serving/test_scorer_process.py) ask for `process`. Exporting
# DEALRISK_LIVE_SCORER=process runs the whole suite with it.
os.environ.setdefault("DEALRISK_LIVE_SCORER", "thread")
# A scorer process at the service's own priority: the suite's workers keep both cores busy, and a child 10
# below them got almost no CPU (tests/serving/test_scorer_process.py took 800 s of a 1,750 s run instead
# of 130 s alone). That test checks that the setting lowers the child's priority.
os.environ.setdefault("DEALRISK_SCORER_NICE", "0")

POSTGRES_URL = os.environ.get(
    "DEALRISK_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No test reads or writes ./.dealrisk or a real MLflow store."""
    from serving import settings

    home = tmp_path / "dealrisk-home"
    monkeypatch.setenv("DEALRISK_HOME", str(home))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.delenv("DEALRISK_DATABASE_URL", raising=False)
    settings.get_settings.cache_clear()
    yield
    settings.get_settings.cache_clear()


@lru_cache(maxsize=1)
def _postgres_problem() -> str | None:
    """Why PostgreSQL cannot be used, or None when it answers."""
    import sqlalchemy as sa

    try:
        engine = sa.create_engine(POSTGRES_URL, connect_args={"connect_timeout": 3})
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
        engine.dispose()
    except Exception as exc:  # any failure to connect means "no server", whatever the driver raised
        return f"PostgreSQL at {POSTGRES_URL} unreachable: {type(exc).__name__}: {exc}".splitlines()[0]
    return None


@dataclass(frozen=True)
class Database:
    """Where a test's store lives: a URL and, on PostgreSQL, the schema that is the test's own."""

    url: str
    schema: str | None = None

    @property
    def scoped_url(self) -> str:
        """The URL alone, with PostgreSQL's search_path pinned to the schema (for code that takes a URL)."""
        if self.schema is None:
            return self.url
        return f"{self.url}?options=-csearch_path%3D{self.schema}"

    @property
    def backend(self) -> str:
        return "postgresql" if self.url.startswith("postgresql") else "sqlite"


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    """A fresh, empty database per test, on each backend."""
    if request.param == "sqlite":
        yield Database(f"sqlite:///{tmp_path / 'store.db'}")
        return
    problem = _postgres_problem()
    if problem is not None:
        if os.environ.get("DEALRISK_REQUIRE_POSTGRES") == "1":
            pytest.fail(f"{problem} (DEALRISK_REQUIRE_POSTGRES=1: start the server, e.g. .ci/run does)")
        pytest.skip(problem)
    import sqlalchemy as sa

    schema = f"t_{uuid.uuid4().hex[:12]}"
    engine = sa.create_engine(POSTGRES_URL)
    with engine.begin() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    try:
        yield Database(POSTGRES_URL, schema)
    finally:
        with engine.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        engine.dispose()


@pytest.fixture
def database_url(database: Database) -> str:
    """A URL to the test's own database; on PostgreSQL it pins search_path to the test's schema."""
    return database.scoped_url


@pytest.fixture
def store(database: Database) -> Iterator[Store]:
    """An empty `serving.store.Store` with its tables created, on each backend."""
    st = Store(database.url, schema=database.schema)
    st.create_schema()
    try:
        yield st
    finally:
        st.close()
