"""One settings object, read from the environment once (`get_settings` is cached; tests clear it)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from serving.limits import DEFAULT_MAX_ATTRIBUTE_NAMES

REGISTERED_MODEL = "deal-risk"
CHAMPION_ALIAS = "champion"


@dataclass(frozen=True)
class Settings:
    home: Path
    database_url: str
    tracking_uri: str
    model_uri: str
    reload_interval_s: float
    max_body_bytes: int
    max_batch_deals: int
    max_events_per_deal: int
    # distinct custom-attribute names one pipeline may hold (DEALRISK_MAX_ATTRIBUTE_NAMES)
    max_attribute_names: int = DEFAULT_MAX_ATTRIBUTE_NAMES
    # live scores older than this are recomputed (DEALRISK_LIVE_SCORE_MAX_AGE_S; 0 turns the worker off)
    live_score_max_age_s: float = 3600.0

    @property
    def data_dir(self) -> Path:
        return self.home


def default_home() -> Path:
    return Path(os.environ.get("DEALRISK_HOME", ".dealrisk")).resolve()


def default_database_url(home: Path | None = None) -> str:
    home = home or default_home()
    return os.environ.get("DEALRISK_DATABASE_URL") or f"sqlite:///{home / 'dealrisk.db'}"


def default_tracking_uri(home: Path | None = None) -> str:
    home = home or default_home()
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{home / 'mlflow.db'}"


@lru_cache
def get_settings() -> Settings:
    home = default_home()
    home.mkdir(parents=True, exist_ok=True)
    return Settings(
        home=home,
        database_url=default_database_url(home),
        tracking_uri=default_tracking_uri(home),
        model_uri=os.environ.get("DEALRISK_MODEL_URI", f"models:/{REGISTERED_MODEL}@{CHAMPION_ALIAS}"),
        reload_interval_s=float(os.environ.get("DEALRISK_RELOAD_INTERVAL_S", "60")),
        max_body_bytes=int(os.environ.get("DEALRISK_MAX_BODY_BYTES", str(8 * 1024 * 1024))),
        max_batch_deals=int(os.environ.get("DEALRISK_MAX_BATCH_DEALS", "1000")),
        max_events_per_deal=int(os.environ.get("DEALRISK_MAX_EVENTS_PER_DEAL", "5000")),
        max_attribute_names=int(
            os.environ.get("DEALRISK_MAX_ATTRIBUTE_NAMES", str(DEFAULT_MAX_ATTRIBUTE_NAMES))
        ),
        live_score_max_age_s=float(os.environ.get("DEALRISK_LIVE_SCORE_MAX_AGE_S", "3600")),
    )
