"""Per-API token buckets with the original Terway's defaults.

Rates are configured in calls per minute ``N``: the bucket refills at ``N/60``
tokens per second and holds at most ``N`` (the burst), starting full, like
``golang.org/x/time/rate`` used by the original.  Waiting callers reserve
their token in arrival order and sleep with ``trio.sleep`` (so tests can drive
the clock with :class:`trio.testing.MockClock`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import trio

from terway_agent.errors import ConfigError
from terway_agent.log import get_logger

from ._metrics import RATE_LIMITER_LATENCY

log = get_logger(__name__)

#: calls per minute; "" is the fallback for any API not listed (pkg/aliyun/client/ratelimit.go).
DEFAULT_RATE_LIMITS: Mapping[str, int] = {
    "": 500,
    "CreateNetworkInterface": 500,
    "AttachNetworkInterface": 500,
    "DeleteNetworkInterface": 500,
    "DetachNetworkInterface": 400,
    "DescribeNetworkInterfaces": 800,
    "DescribeNetworkInterfaceAttribute": 2000,
    "AssignPrivateIpAddresses": 400,
    "UnassignPrivateIpAddresses": 400,
    "AssignIpv6Addresses": 400,
    "UnassignIpv6Addresses": 400,
    "DescribeInstanceTypes": 400,
    "DescribeVSwitches": 300,
}

#: a wait longer than this is logged (the original's longThrottleLatency).
LONG_WAIT = 5.0


class TokenBucket:
    """A token bucket: ``rate`` tokens per second, at most ``burst`` stored, starts full."""

    def __init__(self, rate: float, burst: int) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError(f"token bucket needs rate > 0 and burst >= 1, got rate={rate} burst={burst}")
        self.rate = float(rate)
        self.burst = int(burst)
        self._tokens = float(burst)
        self._last: float | None = None

    def _refill(self, now: float) -> None:
        if self._last is not None and now > self._last:
            self._tokens = min(float(self.burst), self._tokens + (now - self._last) * self.rate)
        if self._last is None or now > self._last:
            self._last = now

    async def acquire(self) -> float:
        """Take one token, sleeping until it is available; returns the seconds waited.

        A cancelled wait gives its reservation back.
        """
        now = trio.current_time()
        self._refill(now)
        self._tokens -= 1.0
        if self._tokens >= 0:
            await trio.lowlevel.checkpoint()
            return 0.0
        wait = -self._tokens / self.rate
        try:
            await trio.sleep_until(now + wait)
        except BaseException:
            self._tokens += 1.0
            raise
        return trio.current_time() - now

    def statistics(self) -> dict[str, float]:
        """Current token count (negative = reserved by waiters), rate and burst."""
        if self._last is not None:
            self._refill(trio.current_time())
        return {"tokens": self._tokens, "rate": self.rate, "burst": float(self.burst)}


def validate_rate_limits(overrides: Mapping[str, Any] | None, field: str = "rate_limit") -> dict[str, int]:
    """Check ``{API: calls per minute}`` overrides; raises :class:`ConfigError` naming the entry."""
    result: dict[str, int] = {}
    if overrides is None:
        return result
    if not isinstance(overrides, Mapping):
        raise ConfigError(field, overrides, "an object {API name: calls per minute}")
    for api, value in overrides.items():
        name = "" if api in ("", "default") else api
        if name not in DEFAULT_RATE_LIMITS:
            known = sorted(k for k in DEFAULT_RATE_LIMITS if k)
            raise ConfigError(f"{field}.{api}", value, f"an OpenAPI name, one of {known} or 'default'")
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{field}.{api}", value, "a positive integer (calls per minute)")
        result[name] = value
    return result


class RateLimiter:
    """One :class:`TokenBucket` per OpenAPI name, defaults overridden by ``overrides``.

    :param overrides: ``{API: calls per minute}``; the key ``""`` or ``"default"``
        changes the fallback bucket used for APIs without their own entry.
    """

    def __init__(self, overrides: Mapping[str, int] | None = None) -> None:
        limits = dict(DEFAULT_RATE_LIMITS)
        limits.update(validate_rate_limits(overrides))
        self.limits: Mapping[str, int] = limits
        self._buckets = {api: TokenBucket(n / 60.0, n) for api, n in limits.items()}

    def bucket(self, api: str) -> TokenBucket:
        """The bucket used for ``api`` (the fallback bucket for unlisted APIs)."""
        return self._buckets.get(api) or self._buckets[""]

    async def wait(self, api: str) -> float:
        """Wait for a token for ``api``; records ``rate_limiter_latency{api}``; returns seconds waited."""
        waited = await self.bucket(api).acquire()
        RATE_LIMITER_LATENCY.labels(api=api).observe(waited * 1000.0)
        if waited >= LONG_WAIT:
            log.info("openapi.ratelimit.long_wait", api=api, waited=round(waited, 3))
        return waited
