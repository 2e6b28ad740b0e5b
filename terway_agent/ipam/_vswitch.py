"""vSwitch choice for new ENIs: candidates of the node's zone, the selection
policy, a DescribeVSwitches cache, and vSwitches set aside after IpNotEnough."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import trio

from terway_agent.cloud.errors import CloudError, CloudNotFound
from terway_agent.log import get_logger

if TYPE_CHECKING:  # pragma: no cover
    from terway_agent.config import EniConf
    from terway_agent.context import NodeInfo

log = get_logger(__name__)


@dataclass
class _Cached:
    available: int
    zone: str
    cidr4: str
    cidr6: str | None


class VSwitchPicker:
    """Chooses the vSwitch of each new ENI.

    The cache is filled with one DescribeVSwitches per candidate (the API's
    ``VSwitchId`` is a single id).

    Candidates: ``eni_conf.vswitches[<node zone>]`` in the configured order, or
    the node's own vSwitch when none is configured for the zone.  Policies:
    ``ordered`` (the configured order), ``most`` (most free addresses first, per
    DescribeVSwitches), ``random``.  A vSwitch that answered ``IpNotEnough`` is
    set aside until :meth:`set_aside`'s deadline; one reported with no free
    address by DescribeVSwitches is skipped until the cache refreshes.
    """

    def __init__(
        self,
        cloud: Any,
        node: NodeInfo,
        conf: Callable[[], EniConf],
        *,
        ttl: float,
        clock: Callable[[], float],
        rng: random.Random | None = None,
    ) -> None:
        self._cloud = cloud
        self._node = node
        self._conf = conf
        self._ttl = ttl
        self._clock = clock
        self._rng = rng or random.Random()
        self._cache: dict[str, _Cached] = {}
        self._cached_at: float | None = None
        self._cached_for: tuple[str, ...] = ()
        self._aside: dict[str, tuple[float, str]] = {}
        self._refresh_lock = trio.Lock()

    def configured(self) -> tuple[str, ...]:
        """The candidate vSwitch ids, in configured order."""
        zone_list = self._conf().vswitches.get(self._node.zone_id, ()) if self._node.zone_id else ()
        if zone_list:
            return tuple(dict.fromkeys(zone_list))
        return (self._node.vswitch_id,) if self._node.vswitch_id else ()

    def set_aside(self, vswitch_id: str, until: float, reason: str) -> None:
        self._aside[vswitch_id] = (until, reason)
        entry = self._cache.get(vswitch_id)
        if entry is not None:
            entry.available = 0
        log.warning(
            "ipam.vswitch.set_aside",
            vswitch_id=vswitch_id,
            reason=reason,
            seconds=round(until - self._clock()),
        )

    def aside_until(self, vswitch_id: str) -> float | None:
        entry = self._aside.get(vswitch_id)
        if entry is None:
            return None
        if entry[0] <= self._clock():
            del self._aside[vswitch_id]
            return None
        return entry[0]

    def usable(self) -> list[str]:
        """Configured vSwitches not set aside (no cloud call)."""
        return [v for v in self.configured() if self.aside_until(v) is None]

    def exhausted_until(self) -> float | None:
        """When every candidate is set aside: the earliest end of those set-asides."""
        ids = self.configured()
        if not ids:
            return None
        ends = [self.aside_until(v) for v in ids]
        if any(e is None for e in ends):
            return None
        return min(e for e in ends if e is not None)

    async def _refresh(self) -> None:
        async with self._refresh_lock:  # concurrent ENI creations share one DescribeVSwitches
            await self._refresh_locked()

    async def _refresh_locked(self) -> None:
        ids = self.configured()
        now = self._clock()
        if self._cached_at is not None and self._cached_for == ids and now - self._cached_at < self._ttl:
            return
        # DescribeVSwitches takes one VSwitchId (as the original, one call per candidate; the
        # client's token bucket paces them)
        found = []
        for vsw_id in ids:
            try:
                found.extend(await self._cloud.describe_vswitches(vswitch_id=vsw_id))
            except CloudNotFound:
                continue  # reported below as unknown
            except CloudError as exc:
                log.warning(
                    "ipam.vswitch.describe_failed", vswitch_id=vsw_id, error=exc.message, code=exc.code
                )
                return
        cache = {}
        for v in found:
            if v.id in ids:
                cache[v.id] = _Cached(v.available_ip_count, v.zone, v.cidr4, v.cidr6)
                if self._node.zone_id and v.zone != self._node.zone_id:
                    log.warning(
                        "ipam.vswitch.other_zone", vswitch_id=v.id, zone=v.zone, node_zone=self._node.zone_id
                    )
        missing = [v for v in ids if v not in cache]
        if missing:
            log.warning("ipam.vswitch.unknown", vswitch_ids=missing)
        self._cache = cache
        self._cached_at = now
        self._cached_for = ids

    async def choose(self) -> list[str]:
        """Usable candidates in policy order (refreshing the DescribeVSwitches cache if stale)."""
        await self._refresh()
        policy = self._conf().vswitch_selection_policy
        out = []
        for v in self.usable():
            entry = self._cache.get(v)
            if entry is not None and (
                entry.available <= 0 or (self._node.zone_id and entry.zone != self._node.zone_id)
            ):
                continue
            out.append(v)
        if policy == "most":
            out.sort(key=lambda v: -(self._cache[v].available if v in self._cache else 0))
        elif policy == "random":
            self._rng.shuffle(out)
        return out

    def available(self, vswitch_id: str) -> int | None:
        """Free addresses of ``vswitch_id`` per the cache (``None`` when unknown)."""
        entry = self._cache.get(vswitch_id)
        return None if entry is None else entry.available

    def took(self, vswitch_id: str, count: int) -> None:
        """Account ``count`` addresses taken from ``vswitch_id`` in the cached free count."""
        entry = self._cache.get(vswitch_id)
        if entry is not None:
            entry.available = max(entry.available - count, 0)

    def snapshot(self) -> dict[str, Any]:
        out = {}
        for v in self.configured():
            entry = self._cache.get(v)
            out[v] = {
                "available": entry.available if entry else None,
                "aside_until": self.aside_until(v),
                "reason": self._aside.get(v, (0, ""))[1] if self.aside_until(v) else "",
            }
        return out
