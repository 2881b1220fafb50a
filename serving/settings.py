"""One typed settings class, read from the environment (`get_settings` is cached; tests clear it).

Every variable is `DEALRISK_<FIELD>` (DEALRISK_HOME, DEALRISK_DATABASE_URL, DEALRISK_MODEL_URI, ...),
except the MLflow tracking URI, which also answers to MLflow's own MLFLOW_TRACKING_URI, and the write timeout,
DEALRISK_WRITE_WAIT_S, also read as DEALRISK_SQLITE_BUSY_TIMEOUT_S. The database and
the tracking store default to SQLite files inside the home. Importing this module reads nothing and
creates nothing; `get_settings()` reads the environment and creates the home folder.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from models.loading import CHAMPION_URI
from serving.limits import DEFAULT_MAX_ATTRIBUTE_NAMES

ENV_PREFIX = "DEALRISK_"
# The MLflow client reads MLFLOW_TRACKING_URI itself, so the service accepts the same name.
TRACKING_URI_ENV = ("DEALRISK_TRACKING_URI", "MLFLOW_TRACKING_URI")
# The write timeout was SQLite's alone in earlier releases, under the name it is still read by.
WRITE_WAIT_ENV = ("DEALRISK_WRITE_WAIT_S", "DEALRISK_SQLITE_BUSY_TIMEOUT_S")


class SettingsError(ValueError):
    """An environment variable holds a value the service cannot use; the message names it."""


class Settings(BaseSettings):
    """The service's settings. Construct directly in tests; `get_settings()` reads the environment."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", populate_by_name=True)

    home: Path = Path(".dealrisk")
    database_url: str = Field(default="", description="default: SQLite file dealrisk.db in the home")
    tracking_uri: str = Field(
        default="", validation_alias=AliasChoices(*TRACKING_URI_ENV),
        description="default: SQLite file mlflow.db in the home",
    )
    model_uri: str = CHAMPION_URI
    reload_interval_s: float = Field(default=60.0, ge=0, description="0 turns the registry watcher off")
    max_body_bytes: int = Field(default=8 * 1024 * 1024, gt=0)
    max_batch_deals: int = Field(default=1000, ge=1)
    max_events_per_deal: int = Field(default=5000, ge=1)
    max_attribute_names: int = Field(
        default=DEFAULT_MAX_ATTRIBUTE_NAMES, ge=1, description="distinct custom-attribute names per pipeline"
    )
    write_wait_s: float = Field(
        default=30.0, gt=0,
        validation_alias=AliasChoices(*WRITE_WAIT_ENV),
        description="how long a write waits for the service's other writers (and, on SQLite, for another "
        "process's write lock) before the request answers 503 (store busy); DEALRISK_SQLITE_BUSY_TIMEOUT_S "
        "is read too, as before",
    )
    pg_pool_size: int = Field(
        default=20, ge=1, le=1000,
        description="PostgreSQL: connections each process of the service keeps open for reads (the "
        "service's own and its scorer process's pools each keep this many, and each a writers' pool of 2 "
        "more; keep workers x 2 x (this + 2) under the server's max_connections)",
    )
    live_score_max_age_s: float = Field(
        default=3600.0, ge=0, description="live scores older than this are recomputed; 0 turns them off"
    )
    live_scorer: Literal["process", "thread"] = Field(
        default="process", description="where the live scorer, the learned stage limits and the scorer's "
        "feature population run: `process`, a child process of the service (its CPU work never competes "
        "with requests), or `thread`, threads of the service's own process",
    )
    scorer_nice: int = Field(
        default=10, ge=0, le=19,
        description="how much lower the scorer process's CPU priority is than the service's (an os.nice "
        "increment): on busy cores requests come first and live scores wait; 0 gives both the same",
    )
    population_refresh_s: float = Field(
        default=60.0, gt=0,
        description="the feature population is refitted in the background at most this often, when the "
        "store changed; requests never wait for a refit",
    )
    health_max_age_s: float = Field(
        default=30.0, ge=0, description="pipeline health as of now is reused for this long at most, while "
        "no write touched the pipeline (the first read after a write recomputes it); 0 turns reuse off",
    )
    request_threads: int = Field(
        default_factory=lambda: max(2, os.cpu_count() or 1), ge=1,
        description="threads that run requests' blocking work at once (plain `def` routes and dependencies: "
        "scoring, reads, key checks); more requests wait for a thread in the event loop. Default: the CPU "
        "count, at least 2. Writes (`POST /v1/deals`, `/v1/events`) wait for their turn at the store on "
        "threads of their own",
    )
    max_concurrent_requests: int = Field(
        default=64, ge=1, description="requests in flight at once; past it the service answers 503 at once"
    )
    retry_after_s: int = Field(default=1, ge=1, description="Retry-After of a 503 shed under load")
    public_metrics: bool = Field(default=False, description="serve /metrics without an API key")
    monitor_refresh_s: float = Field(
        default=300.0, ge=0, description="how often the monitor state is re-read and old score history "
        "pruned; 0 turns it off"
    )
    score_history_days: float = Field(
        default=400.0, gt=0, description="stored score history older than this many days is pruned"
    )

    @model_validator(mode="after")
    def _defaults_in_home(self) -> Settings:
        self.home = self.home.resolve()
        if not self.database_url:
            self.database_url = f"sqlite:///{self.home / 'dealrisk.db'}"
        if not self.tracking_uri:
            self.tracking_uri = f"sqlite:///{self.home / 'mlflow.db'}"
        return self

    @property
    def data_dir(self) -> Path:
        return self.home


def env_name(field: str) -> str:
    """The environment variable a settings field is read from (`field`: a field's name, or one of its
    variables' names, as pydantic names a field read through an alias): of a field's several names, the
    one set in the environment."""
    names = next((n for n in (TRACKING_URI_ENV, WRITE_WAIT_ENV) if field.upper() in n), None)
    if names is None:
        return field.upper() if field.upper().startswith(ENV_PREFIX) else f"{ENV_PREFIX}{field.upper()}"
    return next((name for name in names if name in os.environ), names[0])


def read_settings() -> Settings:
    """Settings from the environment; `SettingsError` naming each bad variable and its value."""
    try:
        return Settings()
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            field = str(err["loc"][0]) if err.get("loc") else "?"
            lines.append(f"{env_name(field)}={err.get('input')!r}: {err['msg']}")
        raise SettingsError("bad setting in the environment: " + "; ".join(lines)) from None


@lru_cache
def get_settings() -> Settings:
    """The process's settings, read once; creates the home folder (the SQLite files live there)."""
    settings = read_settings()
    settings.home.mkdir(parents=True, exist_ok=True)
    return settings
