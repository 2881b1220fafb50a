"""The served model's monitor state, cached for `/metrics` and the page.

The monitor itself is heavy (`dealrisk monitor`, run from cron, scores and labels the store and keeps
its report with the model version in MLflow). The service only reads that report: on a timer off the
request path (`refresh`, every `monitor_refresh_s`), after a model swap, and whenever
`GET /v1/model/monitor` reads it anyway. A `/metrics` scrape reads the cached state, never MLflow.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from models.monitor import STATES

logger = logging.getLogger(__name__)

UNKNOWN = "unknown"  # no report for the served version yet
GAUGE_STATES = (*STATES, UNKNOWN)

ReportLoader = Callable[[str, str | None], dict[str, Any] | None]


def _default_loader(version: str, tracking_uri: str | None) -> dict[str, Any] | None:
    from models.loading import load_monitor_report

    return load_monitor_report(version, tracking_uri)


@dataclass(frozen=True)
class MonitorState:
    """The state of one model version as its latest report gives it."""

    model_version: str
    state: str  # ok / watch / retrain / unknown
    reasons: tuple[str, ...]
    report_until: str | None  # the end of the data the report checked
    read_at: datetime


class MonitorStateCache:
    """The latest monitor state of the served version; `refresh` reads it, `get` never does I/O."""

    def __init__(self, tracking_uri: str | None, loader: ReportLoader = _default_loader) -> None:
        self.tracking_uri = tracking_uri
        self.loader = loader
        self._lock = threading.Lock()
        self._state: MonitorState | None = None
        self.on_change: Callable[[MonitorState], None] | None = None

    def get(self) -> MonitorState | None:
        with self._lock:
            return self._state

    def update(
        self, version: str, report: dict[str, Any] | None,
        reason: str = "no monitor report yet; run `dealrisk monitor`",
    ) -> MonitorState:
        """Cache the state of `version` from its report (None: unknown, for `reason`)."""
        if report is None:
            state = MonitorState(version, UNKNOWN, (reason,), None, datetime.now(UTC))
        else:
            value = str(report.get("state"))
            state = MonitorState(
                version,
                value if value in STATES else UNKNOWN,
                tuple(str(r) for r in report.get("reasons") or ()),
                str(report["until"]) if report.get("until") is not None else None,
                datetime.now(UTC),
            )
        with self._lock:
            self._state = state
        if self.on_change is not None:
            self.on_change(state)
        return state

    def refresh(self, version: str | None) -> MonitorState | None:
        """Read the latest report of `version` (the served one) and cache its state; failures keep the
        previous state (logged)."""
        if version is None:
            return self.get()
        try:
            report = self.loader(version, self.tracking_uri)
        except Exception:  # noqa: BLE001 - an unreachable registry must not take the service down
            logger.warning("reading the monitor report of version %s failed", version, exc_info=True)
            return self.get()
        return self.update(version, report)
