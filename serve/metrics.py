"""The service's Prometheus metrics."""

from __future__ import annotations

from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

if TYPE_CHECKING:
    from .model import Model


class Metrics:
    """The service's Prometheus metrics, in a registry of its own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "pinrank_requests", "HTTP requests", ["endpoint", "status"], registry=r
        )
        self.latency = Histogram(
            "pinrank_request_seconds",
            "request latency",
            ["endpoint"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=r,
        )
        self.paths = Counter("pinrank_feeds", "feeds served by path", ["path"], registry=r)
        self.fallbacks = Counter(
            "pinrank_fallbacks", "feeds not personalized, by reason", ["reason"], registry=r
        )
        self.reloads = Counter("pinrank_reloads", "reloads by outcome", ["outcome"], registry=r)
        self.shed = Counter(
            "pinrank_shed",
            "feed requests answered 503: refused by admission control (queue_full, deadline) or "
            "lost with a scoring process (worker_lost)",
            ["reason"],
            registry=r,
        )
        self.restarts = Counter(
            "pinrank_worker_restarts",
            "scoring processes restarted, by cause",
            ["cause"],
            registry=r,
        )
        self.model = Gauge("pinrank_model_info", "the model being served", ["version"], registry=r)
        self.loaded = Gauge(
            "pinrank_model_loaded_timestamp_seconds", "when it was loaded", registry=r
        )
        self.batch = Histogram(
            "pinrank_feed_batch_size",
            "feed requests scored together",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128),
            registry=r,
        )

    def serving(self, model: Model) -> None:
        self.model.clear()
        self.model.labels(model.version).set(1)
        self.loaded.set(model.loaded_at)

    def observe(self, endpoint: str, status: str, seconds: float) -> None:
        self.requests.labels(endpoint, status).inc()
        self.latency.labels(endpoint).observe(seconds)
