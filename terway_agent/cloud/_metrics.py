"""Prometheus metrics of the cloud client (default registry, names of the original).

Latencies are in **milliseconds**, as the original's (``Help: ... in ms``), so
dashboards written for Terway keep working.
"""

from __future__ import annotations

from prometheus_client import Histogram

_MS_BUCKETS = (1, 2.5, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000)

OPENAPI_LATENCY = Histogram(
    "aliyun_openapi_latency",
    "Alibaba Cloud OpenAPI call latency in ms, per attempt; error is '' on success, else the error code",
    ["api", "error"],
    buckets=_MS_BUCKETS,
)
METADATA_LATENCY = Histogram(
    "aliyun_metadata_latency",
    "Instance metadata request latency in ms; url is the path with the MAC replaced by <mac>",
    ["url", "error"],
    buckets=(0.5, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 5000),
)
RATE_LIMITER_LATENCY = Histogram(
    "rate_limiter_latency",
    "Time spent waiting for an OpenAPI rate-limiter token in ms",
    ["api"],
    buckets=(0.5, 1, 10, 100, 500, 1000, 2500, 5000, 10000, 30000, 60000),
)
