"""Prometheus metrics of the Kubernetes integration (default registry, served on /metrics)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

REQUESTS = Counter(
    "terway_k8s_requests_total",
    "Kubernetes API requests, by operation and result (ok, HTTP status, error)",
    ("op", "result"),
)
LATENCY = Histogram(
    "terway_k8s_request_latency_seconds",
    "Latency of Kubernetes API requests",
    ("op",),
    buckets=(0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 30),
)
THROTTLED = Counter(
    "terway_k8s_client_throttled_total",
    "Requests that waited for the client-side rate limit (kube_client_qps)",
)
WATCH_RESTARTS = Counter(
    "terway_k8s_watch_restarts_total",
    "Watches re-established, by resource and reason (timeout: the server ended it; error; expired: 410, re-listed)",
    ("resource", "reason"),
)
RELISTS = Counter("terway_k8s_relists_total", "Full re-lists after a 410 Gone, by resource", ("resource",))
CACHED = Gauge("terway_k8s_cached_objects", "Objects in the agent's watch caches, by resource", ("resource",))
EVENTS = Counter(
    "terway_k8s_events_total",
    "Kubernetes Events written, by reason and result (created, aggregated, failed)",
    ("reason", "result"),
)
EVENTS_DROPPED = Counter(
    "terway_k8s_events_dropped_total", "Events dropped because the queue was full or the object is unknown"
)
POD_IPS_PATCHES = Counter(
    "terway_k8s_pod_ips_patches_total", "k8s.aliyun.com/pod-ips annotations written, by result", ("result",)
)
NODE_PATCHES = Counter(
    "terway_k8s_node_patches_total",
    "Patches of this node (annotations, status), by part and result",
    ("part", "result"),
)
SUFFICIENT_IP = Gauge(
    "terway_k8s_sufficient_ip", "The node's SufficientIP condition as published (1 True, 0 False)"
)
