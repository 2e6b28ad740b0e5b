"""Per-API latency, token-bucket throttling, scripted faults and call counters."""

from __future__ import annotations

import math
import random
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

from terway_agent.cloud.emulator._dist import ZERO, Distribution, parse_distribution
from terway_agent.cloud.emulator.topology import RateLimit, parse_rate_limit
from terway_agent.errors import ConfigError

#: fault kinds
#:   error               answer with an error instead of executing the call
#:   error_after_commit  execute (commit) the call, then answer with an error: the lost response
#:   drop                close the connection without answering
#:   drop_after_commit   execute the call, then close the connection without answering
#:   hang                do not answer for ``seconds`` (then proceed normally) or never (seconds null)
#:   latency             add a delay drawn from ``latency`` before executing
FAULT_KINDS = ("error", "error_after_commit", "drop", "drop_after_commit", "hang", "latency")

_DEFAULT_ERRORS = {
    500: (
        "InternalError",
        "The request processing has failed due to some unknown error, exception or failure.",
    ),
    503: ("ServiceUnavailable", "The request has failed due to a temporary failure of the server."),
    429: ("Throttling", "Request was denied due to request throttling."),
}


@dataclass
class FaultRule:
    """One scripted fault.  ``api`` is an action name, ``*`` (every RPC action),
    ``metadata`` (every metadata request) or ``metadata:token`` (token PUTs)."""

    id: int
    api: str
    kind: str
    code: str = ""
    message: str = ""
    status: int = 500
    times: int | None = None  # remaining firings; None = unlimited
    probability: float = 1.0
    after: int = 0  # let this many matching calls pass first
    seconds: float | None = None  # hang duration; None = never answer
    latency: Distribution = ZERO
    retry_after: int | None = None  # x-acs-retry-after header value, milliseconds (as the SDK reads it)
    fired: int = 0
    seen: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "api": self.api,
            "kind": self.kind,
            "code": self.code,
            "message": self.message,
            "status": self.status,
            "times": self.times,
            "probability": self.probability,
            "after": self.after,
            "seconds": self.seconds,
            "latency": self.latency.to_dict(),
            "retry_after": self.retry_after,
            "fired": self.fired,
        }


@dataclass
class _Bucket:
    limit: RateLimit
    tokens: float
    stamp: float

    def take(self, now: float) -> float:
        """Take a token; returns 0 on success or the seconds until one is available."""
        rate = self.limit.per_minute / 60.0
        self.tokens = min(self.limit.burst, self.tokens + (now - self.stamp) * rate)
        self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / rate


@dataclass
class Decision:
    """What the fault engine says about one request."""

    delay: float = 0.0
    throttled_for: float | None = None  # seconds until a token, when throttled
    pre: FaultRule | None = None  # error / drop / hang before executing
    post: FaultRule | None = None  # error_after_commit / drop_after_commit


@dataclass
class FaultEngine:
    """Thread-safe store of latencies, rate limits, fault rules and counters."""

    latency: dict[str, Distribution] = field(default_factory=dict)
    rate_limits: dict[str, RateLimit] = field(default_factory=dict)
    retry_after_header: bool = False
    rng: random.Random = field(default_factory=random.Random)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._rules: list[FaultRule] = []
        self._next_id = 1
        self._buckets: dict[str, _Bucket] = {}
        self.calls: Counter[str] = Counter()
        self.results: dict[str, Counter[str]] = defaultdict(Counter)

    # ------------------------------------------------------------------ configuration
    def configure(
        self,
        latency: dict[str, Distribution],
        rate_limits: dict[str, RateLimit],
        retry_after: bool,
        seed: int | None = None,
    ) -> None:
        with self._lock:
            self.rng = random.Random(seed)
            self.latency = dict(latency)
            self.rate_limits = dict(rate_limits)
            self.retry_after_header = retry_after
            self._buckets.clear()
            self._rules.clear()
            self.calls.clear()
            self.results.clear()

    def set_latency(self, api: str, value: Any) -> None:
        dist = None if value is None else parse_distribution(value, f"latency.{api}")
        with self._lock:
            if dist is None:
                self.latency.pop(api, None)
            else:
                self.latency[api] = dist

    def set_rate_limit(self, api: str, value: Any) -> None:
        limit = None if value is None else parse_rate_limit(value, f"rate_limits.{api}")
        with self._lock:
            if limit is None:
                self.rate_limits.pop(api, None)
            else:
                self.rate_limits[api] = limit
            self._buckets = {k: b for k, b in self._buckets.items() if k != api and api != "default"}

    def set_retry_after_header(self, on: bool) -> None:
        with self._lock:
            self.retry_after_header = bool(on)

    def add_rule(self, spec: dict[str, Any]) -> FaultRule:
        rule = _parse_rule(spec)
        with self._lock:
            rule.id = self._next_id
            self._next_id += 1
            self._rules.append(rule)
        return rule

    def remove_rule(self, rule_id: int) -> bool:
        with self._lock:
            before = len(self._rules)
            self._rules = [r for r in self._rules if r.id != rule_id]
            return len(self._rules) != before

    def clear_rules(self) -> None:
        with self._lock:
            self._rules.clear()

    def rules(self) -> list[dict[str, Any]]:
        with self._lock:
            return [r.to_dict() for r in self._rules]

    def reset_counters(self) -> None:
        with self._lock:
            self.calls.clear()
            self.results.clear()

    def counters(self) -> dict[str, Any]:
        with self._lock:
            return {"calls": dict(self.calls), "results": {k: dict(v) for k, v in self.results.items()}}

    def settings(self) -> dict[str, Any]:
        with self._lock:
            return {
                "latency": {k: d.to_dict() for k, d in self.latency.items()},
                "rate_limits": {
                    k: {"per_minute": r.per_minute, "burst": r.burst} for k, r in self.rate_limits.items()
                },
                "retry_after_header": self.retry_after_header,
            }

    # ------------------------------------------------------------------ per request
    def record_call(self, api: str) -> None:
        with self._lock:
            self.calls[api] += 1

    def record_result(self, api: str, code: str) -> None:
        with self._lock:
            self.results[api][code] += 1

    def decide(self, api: str, *, rpc: bool = True) -> Decision:
        now = time.monotonic()
        d = Decision()
        with self._lock:
            dist = self.latency.get(api) or (self.latency.get("default") if rpc else None)
            if dist is not None:
                d.delay += dist.sample(self.rng)
            if rpc:
                limit = self.rate_limits.get(api) or self.rate_limits.get("default")
                if limit is not None:
                    bucket = self._buckets.get(api)
                    if bucket is None or bucket.limit != limit:
                        bucket = self._buckets[api] = _Bucket(limit, limit.burst, now)
                    wait = bucket.take(now)
                    if wait > 0:
                        d.throttled_for = wait
                        return d
            for rule in self._rules:
                if not _matches(rule.api, api, rpc):
                    continue
                if rule.times is not None and rule.times <= 0:
                    continue
                rule.seen += 1
                if rule.seen <= rule.after:
                    continue
                if rule.probability < 1.0 and self.rng.random() >= rule.probability:
                    continue
                if rule.times is not None:
                    rule.times -= 1
                rule.fired += 1
                if rule.kind == "latency":
                    d.delay += rule.latency.sample(self.rng)
                    continue
                if rule.kind in ("error_after_commit", "drop_after_commit"):
                    if d.post is None:
                        d.post = rule
                    continue
                d.pre = rule
                break
            self._rules = [r for r in self._rules if r.times is None or r.times > 0]
        return d

    def retry_after_value(self, wait: float) -> str | None:
        if not self.retry_after_header:
            return None
        return str(max(1, math.ceil(wait * 1000)))


def _matches(pattern: str, api: str, rpc: bool) -> bool:
    if pattern == "*":
        return rpc
    if pattern == "metadata":
        return api.startswith("metadata")
    return pattern == api


def _parse_rule(spec: Any) -> FaultRule:
    if not isinstance(spec, dict):
        raise ConfigError("fault", spec, "a mapping")
    allowed = {
        "api",
        "kind",
        "code",
        "message",
        "status",
        "times",
        "probability",
        "after",
        "seconds",
        "latency",
        "retry_after",
    }
    unknown = set(spec) - allowed
    if unknown:
        raise ConfigError("fault", sorted(unknown), f"only the keys {sorted(allowed)}")
    api = spec.get("api")
    if not isinstance(api, str) or not api:
        raise ConfigError("fault.api", api, "an API action name, '*', 'metadata' or 'metadata:token'")
    kind = spec.get("kind", "error")
    if kind not in FAULT_KINDS:
        raise ConfigError("fault.kind", kind, f"one of {', '.join(FAULT_KINDS)}")
    status = spec.get("status", 500)
    if isinstance(status, bool) or not isinstance(status, int) or not 400 <= status <= 599:
        raise ConfigError("fault.status", status, "an HTTP status between 400 and 599")
    code = spec.get("code")
    message = spec.get("message")
    default_code, default_msg = _DEFAULT_ERRORS.get(status, ("InternalError", "Injected fault."))
    times = spec.get("times")
    if times is not None and (isinstance(times, bool) or not isinstance(times, int) or times < 1):
        raise ConfigError("fault.times", times, "a positive integer or null (unlimited)")
    prob = spec.get("probability", 1.0)
    if isinstance(prob, bool) or not isinstance(prob, int | float) or not 0.0 < prob <= 1.0:
        raise ConfigError("fault.probability", prob, "a number in (0, 1]")
    after = spec.get("after", 0)
    if isinstance(after, bool) or not isinstance(after, int) or after < 0:
        raise ConfigError("fault.after", after, "an integer >= 0")
    seconds = spec.get("seconds")
    if seconds is not None and (
        isinstance(seconds, bool) or not isinstance(seconds, int | float) or seconds < 0
    ):
        raise ConfigError("fault.seconds", seconds, "seconds >= 0 or null (never answer)")
    latency = parse_distribution(spec["latency"], "fault.latency") if "latency" in spec else ZERO
    if kind == "latency" and "latency" not in spec:
        raise ConfigError("fault.latency", None, "a delay (seconds or distribution) for kind latency")
    retry_after = spec.get("retry_after")
    if retry_after is not None and (
        isinstance(retry_after, bool) or not isinstance(retry_after, int) or retry_after < 1
    ):
        raise ConfigError("fault.retry_after", retry_after, "an integer number of milliseconds >= 1")
    return FaultRule(
        id=0,
        api=api,
        kind=kind,
        code=str(code or default_code),
        message=str(message or default_msg),
        status=status,
        times=times,
        probability=float(prob),
        after=after,
        seconds=None if seconds is None else float(seconds),
        latency=latency,
        retry_after=retry_after,
    )
