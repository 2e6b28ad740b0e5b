"""Prometheus metrics of the IPAM (default registry; the original's names where one exists)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

#: ``type`` is ``ipv4``, ``ipv6`` or ``eni`` (whole ENIs of the exclusive pool).
POOL_TOTAL = Gauge("terway_resource_pool_total_count", "Resources in the pool (idle + allocated)", ("type",))
POOL_IDLE = Gauge("terway_resource_pool_idle_count", "Idle resources in the pool", ("type",))
POOL_ALLOCATED = Gauge("terway_resource_pool_allocated_count", "Resources held by pods", ("type",))
POOL_DISPOSED = Counter("terway_resource_pool_disposed_count", "Resources given back to the cloud", ("type",))

ALLOC_LATENCY = Histogram(
    "terway_ipam_allocation_latency_seconds",
    "Time to allocate a pod's addresses; path=warm (from the pool) or cold (waited for the cloud)",
    ("path",),
    buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 30, 60, 120),
)
ALLOCATIONS = Counter("terway_ipam_allocations_total", "Allocations served, by path", ("path",))
CLOUD_CALLS = Counter(
    "terway_ipam_cloud_calls_total", "State-changing cloud operations the pools started, by API", ("api",)
)
CLOUD_CALLS_PER_ALLOCATION = Gauge(
    "terway_ipam_cloud_calls_per_allocation",
    "State-changing cloud operations per allocation since the agent started",
)
INHIBITED = Gauge(
    "terway_ipam_inhibited",
    "1 while allocation is inhibited: kind=eni (EniPerInstanceLimitExceeded), ip (IpNotEnough/QuotaExceeded)",
    ("kind",),
)
PENDING = Gauge("terway_ipam_pending_requests", "Allocations waiting for the cloud")
INSUFFICIENT = Gauge("terway_ipam_insufficient_ip", "1 while the node cannot get more IP addresses")
