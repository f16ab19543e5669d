"""Prometheus metrics of the server: requests and latency by endpoint, banks, queues, hashing rate.

With several serving processes (``--workers N``) the request counters and latency histograms
are those of all workers together (prometheus_client's multiprocess mode: each worker writes its
own memory-mapped file in a folder the supervisor owns, a scrape sums them); the gauges (bank
sizes, queue depths, hashing rate and totals) are those of the worker that answers the scrape.
"""
from __future__ import annotations

import os
from typing import Any, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest, values
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

    def __init__(self, multiprocess_dir: str | None = None) -> None:
        self.registry = CollectorRegistry()
        self._render_registry = self.registry
        if multiprocess_dir:           # one process of several (a forked worker): shared files
            from prometheus_client.multiprocess import MultiProcessCollector

            os.environ["PROMETHEUS_MULTIPROC_DIR"] = multiprocess_dir
            values.ValueClass = values.MultiProcessValue()
            self._render_registry = CollectorRegistry()
            MultiProcessCollector(self._render_registry, multiprocess_dir)
        self.requests = Counter("vmatch_requests", "HTTP requests", ["endpoint", "method", "status"],
                                registry=self.registry)
        self.latency = Histogram("vmatch_request_seconds", "HTTP request latency", ["endpoint", "method"],
                                 buckets=BUCKETS, registry=self.registry)
        self._gauges = _Gauges()
        self._render_registry.register(self._gauges)

    def observe(self, endpoint: str, method: str, status: int, seconds: float) -> None:
        self.requests.labels(endpoint, method, str(status)).inc()
        self.latency.labels(endpoint, method).observe(seconds)

    def render(self, gauges: dict[str, Any]) -> bytes:
        self._gauges.values = gauges
        return generate_latest(self._render_registry)
