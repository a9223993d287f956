"""What ``xaisdk serve`` tells its operators: Prometheus metrics (requests by route and status,
latency, rows per backend call, requests per backend call, queue depth, rejections) in a registry of
its own, and one JSON access-log line per request on the ``xaisdk.serve.access`` logger.

>>> metrics = ServerMetrics()
>>> metrics.observe_request("/v2/health/live", 200, 0.001)
>>> b'xaisdk_requests_total{route="/v2/health/live",status="200"} 1.0' in metrics.exposition()
True
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

__all__ = ["ACCESS_LOG", "ServerMetrics", "access_line"]

ACCESS_LOG = logging.getLogger("xaisdk.serve.access")
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_ROW_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)


class ServerMetrics:
    """The server's Prometheus collectors, in their own registry (several servers in one process do
    not share counters)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("xaisdk_requests", "HTTP requests by route template and status code",
                                ["route", "status"], registry=self.registry)
        self.latency = Histogram("xaisdk_request_seconds", "Request latency by route template", ["route"],
                                 buckets=_LATENCY_BUCKETS, registry=self.registry)
        self.batch_rows = Histogram("xaisdk_batch_rows", "Rows per backend call", ["primitive"],
                                    buckets=_ROW_BUCKETS, registry=self.registry)
        self.batch_requests = Histogram("xaisdk_batch_requests", "Request calls merged into one backend call",
                                        ["primitive"], buckets=_ROW_BUCKETS[:8], registry=self.registry)
        self.queue_depth = Gauge("xaisdk_queue_depth", "Requests admitted and not yet answered", registry=self.registry)
        self.rejected = Counter("xaisdk_rejected", "Requests refused before running, by reason", ["reason"],
                                registry=self.registry)

    def observe_request(self, route: str, status: int, seconds: float) -> None:
        self.requests.labels(route=route, status=str(status)).inc()
        self.latency.labels(route=route).observe(seconds)

    def observe_batch(self, primitive: str, rows: int, calls: int) -> None:
        self.batch_rows.labels(primitive=primitive).observe(rows)
        self.batch_requests.labels(primitive=primitive).observe(calls)

    def exposition(self) -> bytes:
        """The Prometheus text format of every collector."""
        return generate_latest(self.registry)


def access_line(**fields: Any) -> str:
    """One access-log record as a JSON line (UTC time first).

    >>> json.loads(access_line(method="GET", status=200))["status"]
    200
    """
    record = {"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **fields}
    return json.dumps(record, separators=(",", ":"))
