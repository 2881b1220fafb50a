"""Prometheus metrics of one app: requests, latency, scores by band, the model version served and its
monitor state.

Each app gets its own `CollectorRegistry` so several apps (tests, reloads) never clash on names.
With `--workers N` every worker exposes its own counters (no multiprocess aggregation).
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

__all__ = ["CONTENT_TYPE_LATEST", "ServiceMetrics"]


class ServiceMetrics:
    """The service's metric families in a private registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "dealrisk_http_requests_total", "HTTP requests by route template, method and status.",
            ["route", "method", "status"], registry=self.registry,
        )
        self.latency = Histogram(
            "dealrisk_http_request_duration_seconds", "Request latency by route template.",
            ["route", "method"], registry=self.registry,
            buckets=(0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
        )
        self.scores = Counter(
            "dealrisk_scores_total", "Deals scored, by risk band.", ["band"], registry=self.registry,
        )
        self.model_info = Gauge(
            "dealrisk_model_info", "The model version being served (value 1).", ["version"],
            registry=self.registry,
        )
        self.shed = Counter(
            "dealrisk_http_requests_shed_total", "Requests answered 503 because the service was at its "
            "concurrency limit.", registry=self.registry,
        )
        self.monitor_state = Gauge(
            "dealrisk_model_monitor_state", "The served model's monitor state from its latest report "
            "(value 1 for the current state, 0 for the others; unknown = not monitored yet).",
            ["model_version", "state"], registry=self.registry,
        )
        self._version: str | None = None
        self._monitored: str | None = None

    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        """Count one finished request."""
        self.requests.labels(route, method, str(status)).inc()
        self.latency.labels(route, method).observe(seconds)

    def observe_shed(self) -> None:
        """Count one request shed under load."""
        self.shed.inc()

    def observe_bands(self, bands: Iterable[str]) -> None:
        """Count scored deals by band."""
        counts: dict[str, int] = {}
        for band in bands:
            counts[band] = counts.get(band, 0) + 1
        for band, n in counts.items():
            self.scores.labels(str(band)).inc(n)

    def set_model_version(self, version: str) -> None:
        """Expose exactly one version label: the one being served."""
        if self._version is not None and self._version != version:
            self.model_info.remove(self._version)
        self._version = version
        self.model_info.labels(version).set(1)

    def set_monitor_state(self, model_version: str, state: str, states: Iterable[str]) -> None:
        """Expose one version's monitor state as an enum gauge (one series per possible state)."""
        if self._monitored is not None and self._monitored != model_version:
            for old in states:
                try:
                    self.monitor_state.remove(self._monitored, old)
                except KeyError:
                    pass
        self._monitored = model_version
        for value in states:
            self.monitor_state.labels(model_version, value).set(1.0 if value == state else 0.0)

    def render(self) -> bytes:
        """The exposition text."""
        return generate_latest(self.registry)
