"""Prometheus metrics of the core (names follow the original where one exists).

Served by the debug endpoint (``/metrics``).  Plugins and other modules
define their own metrics on the default registry.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram, Info

_LATENCY_BUCKETS = (0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 30, 60, 120)

#: CNI requests served, by verb and result ("ok" or the CNI error code).
RPC_LATENCY = Histogram(
    "terway_rpc_latency_seconds",
    "Latency of CNI requests served by the agent",
    ("rpc_api", "error"),
    buckets=_LATENCY_BUCKETS,
)
IN_FLIGHT = Gauge("terway_rpc_in_flight", "CNI requests being served")
ATTACHMENTS = Gauge("terway_attachments", "Attachments in the store by state", ("state",))
MODE_INFO = Info("terway_mode", "The network mode this agent runs")
CONFIG_RELOADS = Counter("terway_config_reloads_total", "Configuration reloads", ("result",))
GC_REMOVED = Counter("terway_gc_removed_total", "Attachments removed by GC", ("trigger",))
REPAIRS = Counter("terway_repairs_total", "Datapath objects re-created by repair")
REPAIR_FAILED = Gauge(
    "terway_repair_failed_objects", "Objects of live pods the last repair pass could not restore"
)
