"""Prometheus metrics of the server: requests and latency by endpoint, banks, queues, hashing rate."""
from __future__ import annotations

from typing import Any, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST

BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class _Gauges:
    """Bank sizes, queue depths and the hashing rate, read from the service at scrape time."""

    def __init__(self) -> None:
        self.values: dict[str, Any] = {}

    def collect(self) -> Iterator[Any]:
        v = self.values
        sizes = GaugeMetricFamily("vmatch_bank_size", "signals in each bank", labels=["bank"])
        for bank, n in sorted(v.get("bank_sizes", {}).items()):
            sizes.add_metric([bank], n)
        yield sizes
        yield GaugeMetricFamily("vmatch_hash_queue_depth", "videos being hashed or waiting",
                                value=v.get("hash_queue", 0))
        yield GaugeMetricFamily("vmatch_write_queue_depth", "writes waiting for the writer thread",
                                value=v.get("write_queue", 0))
        yield GaugeMetricFamily("vmatch_hash_frames_per_second",
                                "frames hashed per hashing second over the last minute",
                                value=v.get("hash_frames_per_second", 0.0))
        yield CounterMetricFamily("vmatch_hashed_frames", "frames hashed", value=v.get("hash_frames_total", 0))
        yield CounterMetricFamily("vmatch_hash_seconds", "seconds spent hashing",
                                  value=v.get("hash_seconds_total", 0.0))


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("vmatch_requests", "HTTP requests", ["endpoint", "method", "status"],
                                registry=self.registry)
        self.latency = Histogram("vmatch_request_seconds", "HTTP request latency", ["endpoint", "method"],
                                 buckets=BUCKETS, registry=self.registry)
        self._gauges = _Gauges()
        self.registry.register(self._gauges)

    def observe(self, endpoint: str, method: str, status: int, seconds: float) -> None:
        self.requests.labels(endpoint, method, str(status)).inc()
        self.latency.labels(endpoint, method).observe(seconds)

    def render(self, gauges: dict[str, Any]) -> bytes:
        self._gauges.values = gauges
        return generate_latest(self.registry)
