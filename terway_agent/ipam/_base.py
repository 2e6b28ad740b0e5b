"""What both pools share: loading and reconciling the store with the cloud, ENI
creation and deletion, alloc inhibits, the planner and maintenance loops,
waiting for a refill, status and snapshot.

Concurrency model (one trio task tree, no locks needed for the in-memory view):

* ``allocate_*``/``release_*`` run in the CNI request's task; a warm
  allocation picks an idle address in memory, marks it taken, and commits the
  ownership in one store transaction before returning -- no cloud call;
* a short pool registers the request as *pending* and wakes the **planner**,
  which waits ``batch_window`` so that concurrent shortages coalesce, then
  starts cloud operations (one per ENI at a time, ENI creations in parallel)
  in its nursery; each finished operation commits its addresses, wakes the
  waiters and the planner again;
* the **maintenance** task gives idle addresses above ``max_pool_size`` back,
  reclaims long-idle ones, retries half-done releases and runs the periodic
  sync with the cloud (``ip_pool_sync_period``): orphans, leaked owners,
  unknown addresses.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

import trio

from terway_agent.cloud.errors import (
    ENI_PER_INSTANCE_LIMIT_EXCEEDED,
    INVALID_VSWITCH_IP_NOT_ENOUGH,
    CloudError,
    IpCountExceeded,
    IpNotEnough,
)
from terway_agent.errors import AllocationError, PermanentError, TemporaryError, TerwayError
from terway_agent.log import get_logger
from terway_agent.types import Status

from . import _db, _metrics
from ._model import Eni, Ip
from ._types import (
    AllocationInhibited,
    EniLease,
    IPLease,
    PoolCapacityReached,
    PoolTuning,
    ReconcileReport,
    VSwitchesExhausted,
)
from ._vswitch import VSwitchPicker

if TYPE_CHECKING:  # pragma: no cover
    from terway_agent.config import EniConf
    from terway_agent.context import NodeInfo
    from terway_agent.store import Store
    from terway_agent.types import InstanceLimits, PodRef

log = get_logger(__name__)

#: a take the store refuses is retried this often (with the view rebuilt from the store) per call
TAKE_ATTEMPTS = 3
#: what a take attempt returns when the store refused it (see :meth:`IPAM._take`)
STORE_REFUSED = object()

#: Tags put on every ENI a pool creates, besides the client's ``creator=terway``.
TAG_INSTANCE = "instance-id"
TAG_NODE = "node-name"
CREATOR = ("creator", "terway")

_IN_USE = "InUse"
_ATTACHING = "Attaching"
_AVAILABLE = "Available"
_TYPE_SECONDARY = "Secondary"


def _owner_ok(owner: str) -> None:
    if not isinstance(owner, str) or "/" not in owner or owner.startswith("/") or owner.endswith("/"):
        from terway_agent.errors import InvalidInput

        raise InvalidInput("owner", owner, '"<container id>/<ifname>"')


class _Report:
    """A mutable ReconcileReport under construction."""

    def __init__(self) -> None:
        self.d: dict[str, list[str]] = {
            k: []
            for k in (
                "adopted_enis",
                "adopted_ips",
                "released",
                "dropped",
                "lost",
                "resumed",
                "orphans_marked",
                "orphans_deleted",
                "errors",
            )
        }

    def add(self, key: str, item: str) -> None:
        self.d[key].append(item)

    def freeze(self) -> ReconcileReport:
        return ReconcileReport(**{k: tuple(v) for k, v in self.d.items()})


class IPAM:
    """The node's warm pool (base of the shared-IP and the whole-ENI pools).

    Build one with :func:`terway_agent.ipam.new_ipam`; the agent does it in
    :func:`terway_agent.ipam.ipam_service`.  Call :meth:`reconcile` once, then
    run :meth:`run` in a nursery (``await nursery.start(ipam.run)``).
    """

    #: ``shared`` (secondary IPs of shared ENIs) or ``exclusive`` (whole ENIs).
    kind: str = ""

    def __init__(
        self,
        *,
        store: Store,
        cloud: Any,
        node: NodeInfo,
        quota: InstanceLimits,
        eni_conf: Callable[[], EniConf],
        tuning: PoolTuning | None = None,
        clock: Callable[[], float] = time.time,
        live_owners: Callable[[], Awaitable[set[str]]] | None = None,
        rng: random.Random | None = None,
        events: Any = None,
    ) -> None:
        if not node.instance_id:
            raise PermanentError("the IPAM needs the node's instance id (NodeInfo.instance_id is empty)")
        self._store = store
        self._cloud = cloud
        self._node = node
        self._quota = quota
        self._conf = eni_conf
        self._tuning = tuning or PoolTuning()
        self._clock = clock
        self._live_owners = live_owners
        self._events = events
        self._rng = rng or random.Random()
        self._vsw = VSwitchPicker(
            cloud, node, eni_conf, ttl=self._tuning.vswitch_cache_ttl, clock=clock, rng=self._rng
        )
        self._enis: dict[str, Eni] = {}
        self._by_owner: dict[str, list[Ip]] = {}
        self._orphans: dict[str, float] = {}
        #: orphan ENIs whose deletion runs in the maintenance nursery
        self._orphans_deleting: set[str] = set()
        #: tombstones: address -> {owner, pod, family, eni_id, assigned_at, lost_at} (see _db)
        self._lost: dict[str, dict[str, Any]] = {}
        self._loaded = False
        self._sgs: tuple[str, ...] = ()
        # planner / waiting
        #: owners waiting for a refill (not counting those whose take is being committed)
        self._waiting: set[str] = set()
        self._promised = 0
        self._ops = 0
        self._creating = 0
        self._creating_ids: set[str] = set()
        self._wake = trio.Event()
        self._maint_wake = trio.Event()
        self._changed = trio.Event()
        self._retry_at = 0.0  # trio clock
        self._fail_streak = 0
        self._fail_gen = 0
        self._last_error = ""
        self._last_error_permanent = False
        self._eni_inhibit: tuple[float, str] | None = None
        self._allocating: dict[str, trio.Event] = {}
        #: ENIs this pool deleted or rolled back, with the wall time (the sync pass must not adopt them)
        self._gone: dict[str, float] = {}
        self._running = False
        self._excess_since: float | None = None
        #: trio time the maintenance loop must look again (a delayed release)
        self._maint_at: float | None = None
        self._next_reclaim: float | None = None
        self._next_sync: float | None = None
        # counters
        self._cloud_calls = 0
        self._allocations = 0

    # ------------------------------------------------------------------ configuration
    @property
    def conf(self) -> EniConf:
        """The current eni_conf (read per use: reloads apply live)."""
        return self._conf()

    @property
    def stack(self) -> str:
        return self.conf.ip_stack

    @property
    def need4(self) -> bool:
        return self.stack in ("ipv4", "dual")

    @property
    def need6(self) -> bool:
        return self.stack in ("ipv6", "dual")

    def _tracked(self, family: int) -> bool:
        """Addresses of ``family`` are tracked (IPv4 always: the ENI's primary)."""
        return family == 4 or self.need6

    def max_enis(self) -> int:
        """Secondary ENIs this pool may use: ``int(EniQuantity x eni_cap_ratio) + eni_cap_shift - 1``,
        capped by ``max_eni`` (when set) and by ``EniQuantity - 1``."""
        c = self.conf
        q = self._quota
        n = int(q.eni_quantity * c.eni_cap_ratio) + c.eni_cap_shift - 1
        if c.max_eni:
            n = min(n, c.max_eni)
        return max(min(n, q.eni_quantity - 1), 0)

    def min_enis(self) -> int:
        return min(self.conf.min_eni, self.max_enis())

    def _now(self) -> float:
        return self._clock()

    @property
    def _pending(self) -> int:
        return len(self._waiting)

    def _unwait(self, owner: str) -> None:
        """``owner`` has reserved its addresses: it no longer counts as demand."""
        if owner in self._waiting:
            self._waiting.discard(owner)
            _metrics.PENDING.set(len(self._waiting))

    # ------------------------------------------------------------------ pool-specific (overridden)
    def _usable_slots(self, now: float) -> int:
        raise NotImplementedError

    def _idle_slots(self, now: float) -> int:
        raise NotImplementedError

    def _next_usable(self, now: float) -> float | None:
        """Wall time the next idle-but-cooling/held slot becomes usable, if any."""
        raise NotImplementedError

    def _can_grow(self, now: float) -> bool:
        raise NotImplementedError

    async def _plan(self, ops: trio.Nursery) -> None:
        raise NotImplementedError

    async def _release_idle(
        self, count: int, ops: trio.Nursery, *, older_than: float | None, why: str
    ) -> None:
        """Give ``count`` usable idle slots back (idle since ``older_than`` at the latest)."""
        raise NotImplementedError

    async def _release_excess(self, ops: trio.Nursery) -> None:
        # an idle slot is subject to max_pool_size once its reuse cooldown is over
        now = self._now()
        excess = self._usable_slots(now) - self.conf.max_pool_size
        if excess <= 0:
            self._excess_since = None
            return
        t = trio.current_time()
        if self._excess_since is None:
            self._excess_since = t
        if t - self._excess_since < self._tuning.release_delay:
            self._maint_at = self._excess_since + self._tuning.release_delay
            return
        self._excess_since = None
        await self._release_idle(excess, ops, older_than=None, why="max_pool_size")

    async def _reclaim_idle(self, ops: trio.Nursery) -> None:
        conf = self.conf
        if conf.idle_ip_reclaim_after is None:
            return
        now = self._now()
        allowed = min(conf.idle_ip_reclaim_batch_size, self._usable_slots(now) - conf.min_pool_size)
        if allowed > 0:
            await self._release_idle(
                allowed, ops, older_than=now - conf.idle_ip_reclaim_after, why="idle_reclaim"
            )

    def _update_gauges(self) -> None:
        raise NotImplementedError

    # ------------------------------------------------------------------ public API (both pools)
    async def allocate_ips(self, owner: str, pod: PodRef, *, sticky: bool = False) -> IPLease:
        """Addresses for ``owner`` (``"<container id>/<ifname>"``) of ``pod``.

        Idempotent per owner; committed to the store before it returns; served
        from the warm pool without any cloud call when an idle address exists,
        otherwise waits for the coalesced refill (at most ``alloc_timeout``).
        ``sticky=True`` (StatefulSet-like pods) returns first an address held
        for this pod's ``namespace/name``.

        :raises TemporaryError: no address after ``alloc_timeout`` (retry later).
        :raises AllocationInhibited: the cloud refused recently (``IpNotEnough``,
            ``QuotaExceeded.PrivateIpAddress``, ``EniPerInstanceLimitExceeded``)
            and nothing else can be tried; :class:`VSwitchesExhausted` when every
            vSwitch is out of addresses.
        :raises PoolCapacityReached: every address the node may have is in use.
        """
        raise PermanentError(f"allocate_ips is not available in the {self.kind} ENI pool; use allocate_eni")

    async def release_ips(self, owner: str, *, hold: bool = False) -> None:
        """Give back the addresses of ``owner`` (idempotent).

        ``hold=True`` keeps them for the same pod name for ``stateful_ip_hold``
        seconds; otherwise they are idle again after ``ip_reuse_cooldown``.
        """
        raise PermanentError(f"release_ips is not available in the {self.kind} ENI pool; use release_eni")

    async def allocate_eni(self, owner: str, pod: PodRef) -> EniLease:
        """A whole ENI for ``owner`` (exclusive pool); same guarantees as :meth:`allocate_ips`."""
        raise PermanentError(f"allocate_eni is not available in the {self.kind} ENI pool; use allocate_ips")

    async def release_eni(self, owner: str, *, discard: bool = False) -> None:
        """Give back the ENI of ``owner`` (idempotent): idle in the pool, or deleted per policy."""
        raise PermanentError(f"release_eni is not available in the {self.kind} ENI pool; use release_ips")

    async def lease_of(self, owner: str) -> IPLease | EniLease | None:
        """What ``owner`` holds, or ``None``."""
        raise NotImplementedError

    def status(self) -> Status:
        """Code 50 while allocation is inhibited by IpNotEnough/QuotaExceeded and no idle
        address exists; code 0 otherwise.  No cloud call."""
        now = self._now()
        insufficient, why = self.insufficient()
        if insufficient and self._usable_slots(now) == 0:
            return Status(50, f"no IP address can be allocated on this node: {why}")
        return Status()

    def insufficient(self) -> tuple[bool, str]:
        """The node-level "insufficient IP" state (the SufficientIP condition is its negation).

        True while the pool cannot grow because the cloud answered
        ``InvalidVSwitchId.IpNotEnough`` (every vSwitch set aside) or
        ``QuotaExceeded.PrivateIpAddress`` (every ENI that could grow) and no
        new ENI can be made.
        """
        now = self._now()
        if self._can_grow(now):
            return False, ""
        ends = self._vsw.exhausted_until()
        if ends is not None:
            return True, (
                f"every vSwitch ({', '.join(self._vsw.configured())}) answered {INVALID_VSWITCH_IP_NOT_ENOUGH}; "
                f"retrying in {max(ends - now, 0):.0f}s"
            )
        quota = [e for e in self._enis.values() if e.ip_inhibited(now)]
        if quota:
            reasons = sorted({e.ip_inhibit_reason for e in quota})
            return True, f"{', '.join(reasons)} on {', '.join(e.eni_id for e in quota)}"
        return False, ""

    # ------------------------------------------------------------------ loading
    async def _ensure_loaded(self) -> None:
        if self._loaded:
            return
        enis, ips, orphans = await self._store.acall(_db.load, self._store)
        self._enis = {}
        for row in enis:
            eni = Eni.from_row(row)
            if eni.pool != self.kind:
                log.warning("ipam.eni.other_pool", eni_id=eni.eni_id, pool=eni.pool, now=self.kind)
                eni.pool = self.kind
                await self._store.acall(_db.update_eni, self._store, eni.eni_id, {"pool": self.kind})
            self._enis[eni.eni_id] = eni
        for row in ips:
            ip = Ip.from_row(row)
            eni = self._enis.get(ip.eni_id)
            if eni is not None:
                eni.ips[ip.address] = ip
        self._orphans = dict(orphans)
        self._lost = await self._store.acall(_db.load_lost, self._store)
        self._reindex()
        self._loaded = True

    def _reindex(self) -> None:
        self._by_owner = {}
        for eni in self._enis.values():
            for ip in eni.ips.values():
                if ip.owner is not None:
                    self._by_owner.setdefault(ip.owner, []).append(ip)
        self._apply_lost(ip for eni in self._enis.values() for ip in eni.ips.values())

    def _apply_lost(self, ips: Iterable[Ip]) -> None:
        """Quarantine addresses that have a tombstone (a pod that lost them still uses them)."""
        for ip in ips:
            tomb = self._lost.get(ip.address)
            lost_for = (tomb.get("owner") or "") if tomb is not None else ""
            if lost_for and not ip.lost_for:
                log.error("ipam.ip.quarantined", address=ip.address, eni_id=ip.eni_id, lost_by=lost_for)
            ip.lost_for = lost_for

    def _add_lost(self, lost: dict[str, dict[str, Any]], report: _Report | None = None) -> None:
        """Tombstones the store just wrote: remember them (and report them ``lost``)."""
        for address, tomb in lost.items():
            self._lost[address] = tomb
            if report is not None:
                report.add("lost", f"{tomb.get('owner')}={address}")
            log.error(
                "ipam.ip.lost",
                address=address,
                owner=tomb.get("owner"),
                eni_id=tomb.get("eni_id"),
                note="kept as a tombstone until the owner is released",
            )

    def _clear_lost(self, addresses: Iterable[str], now: float) -> None:
        """Tombstones the store dropped (their owner was released): the addresses, if back on
        one of our ENIs, become idle after the reuse cooldown."""
        for address in addresses:
            if self._lost.pop(address, None) is None:
                continue
            ip = self._find_ip(address)
            if ip is not None and ip.lost_for:
                ip.lost_for = ""
                if ip.owner is None:
                    ip.released_at = now

    def _lost_of(self, owner: str) -> list[str]:
        return [a for a, t in self._lost.items() if t.get("owner") == owner]

    async def _resync_ips(self, addresses: Sequence[str]) -> None:
        """The store refused a change to ``addresses``: rebuild their in-memory view from the rows
        (the rows win; an address the store does not have leaves the pool's view)."""
        rows = await self._store.acall(_db.get_ips, self._store, list(addresses))
        self._lost = await self._store.acall(_db.load_lost, self._store)
        for address in addresses:
            ip = self._find_ip(address)
            row = rows.get(address)
            if row is None:
                if ip is not None:
                    eni = self._enis.get(ip.eni_id)
                    if eni is not None:
                        eni.ips.pop(address, None)
                continue
            fresh = Ip.from_row(row)
            eni = self._enis.get(fresh.eni_id)
            if ip is not None and ip.eni_id != fresh.eni_id:
                old = self._enis.get(ip.eni_id)
                if old is not None:
                    old.ips.pop(address, None)
                ip = None
            if ip is None:
                if eni is not None:
                    eni.ips[address] = fresh
                continue
            ip.state, ip.owner, ip.pod = fresh.state, fresh.owner, fresh.pod
            ip.assigned_at, ip.released_at = fresh.assigned_at, fresh.released_at
            ip.hold_for, ip.hold_until = fresh.hold_for, fresh.hold_until
        self._reindex()
        self._update_gauges()
        self._notify()
        log.warning("ipam.resynced", ips=list(addresses))

    async def _resync_eni(self, eni: Eni) -> None:
        """The store refused a change to ``eni``: rebuild its in-memory view from its rows."""
        row, ips = await self._store.acall(_db.get_eni, self._store, eni.eni_id)
        self._lost = await self._store.acall(_db.load_lost, self._store)
        if row is None:
            self._enis.pop(eni.eni_id, None)
        else:
            fresh = Eni.from_row(row)
            eni.state, eni.owner, eni.pod = fresh.state, fresh.owner, fresh.pod
            eni.assigned_at, eni.released_at = fresh.assigned_at, fresh.released_at
            eni.ips = {r["address"]: Ip.from_row(r) for r in ips}
        self._reindex()
        self._update_gauges()
        self._notify()
        log.warning("ipam.resynced", eni_id=eni.eni_id, state=eni.state if row else "gone", owner=eni.owner)

    # ------------------------------------------------------------------ notifications
    def _kick(self) -> None:
        """Wake the planner."""
        self._wake.set()

    def _kick_maint(self) -> None:
        self._maint_wake.set()

    def _notify(self) -> None:
        """Wake every waiter (the pool changed)."""
        self._changed.set()
        self._changed = trio.Event()

    def _count_call(self, api: str) -> None:
        self._cloud_calls += 1
        _metrics.CLOUD_CALLS.labels(api=api).inc()
        if self._allocations:
            _metrics.CLOUD_CALLS_PER_ALLOCATION.set(self._cloud_calls / self._allocations)

    def _record_allocation(self, path: str, seconds: float) -> None:
        self._allocations += 1
        _metrics.ALLOCATIONS.labels(path=path).inc()
        _metrics.ALLOC_LATENCY.labels(path=path).observe(seconds)
        _metrics.CLOUD_CALLS_PER_ALLOCATION.set(self._cloud_calls / self._allocations)

    def stats(self) -> dict[str, int]:
        """State-changing cloud operations started and allocations served since creation."""
        return {"cloud_calls": self._cloud_calls, "allocations": self._allocations}

    # ------------------------------------------------------------------ failures and inhibits
    def _eni_inhibited(self, now: float) -> bool:
        if self._eni_inhibit is None:
            return False
        if self._eni_inhibit[0] <= now:
            self._eni_inhibit = None
            _metrics.INHIBITED.labels(kind="eni").set(0)
            return False
        return True

    def _update_inhibit_gauges(self) -> None:
        """``terway_ipam_inhibited{kind}`` from the current state (an expired inhibit clears it)."""
        now = self._now()
        _metrics.INHIBITED.labels(kind="eni").set(1 if self._eni_inhibited(now) else 0)
        ip = any(e.ip_inhibited(now) for e in self._enis.values()) or any(
            self._vsw.aside_until(v) is not None for v in self._vsw.configured()
        )
        _metrics.INHIBITED.labels(kind="ip").set(1 if ip else 0)

    def _node_event(self, message: str) -> None:
        """A Warning event ``AllocIPFailed`` on the node (the original's), when an event recorder is set."""
        if self._events is not None:
            self._events.record(f"Node/{self._node.name}", "Node", "AllocIPFailed", message, warning=True)

    def _inhibit_enis(self, code: str) -> None:
        until = self._now() + self._tuning.eni_inhibit
        self._eni_inhibit = (until, code)
        _metrics.INHIBITED.labels(kind="eni").set(1)
        log.warning("ipam.inhibit.eni", reason=code, seconds=self._tuning.eni_inhibit)
        self._node_event(f"{code}: no new ENI for {self._tuning.eni_inhibit:.0f}s")

    def _inhibit_eni_ips(self, eni: Eni, code: str) -> None:
        eni.ip_inhibit_until = self._now() + self._tuning.ip_inhibit
        eni.ip_inhibit_reason = code
        _metrics.INHIBITED.labels(kind="ip").set(1)
        log.warning("ipam.inhibit.ip", eni_id=eni.eni_id, reason=code, seconds=self._tuning.ip_inhibit)
        self._node_event(
            f"{code} on {eni.eni_id}: no more addresses on it for {self._tuning.ip_inhibit:.0f}s"
        )

    def _set_vswitch_aside(self, vswitch_id: str, code: str) -> None:
        self._vsw.set_aside(vswitch_id, self._now() + self._tuning.ip_inhibit, code)
        _metrics.INHIBITED.labels(kind="ip").set(1)
        self._node_event(f"{code} on {vswitch_id}: vSwitch set aside for {self._tuning.ip_inhibit:.0f}s")

    def _succeeded(self) -> None:
        self._fail_streak = 0
        self._retry_at = 0.0

    def _failed(self, exc: BaseException, *, op: str, **fields: Any) -> None:
        """Classify a failed cloud operation: inhibit, transient back-off, or permanent."""
        code = getattr(exc, "code", "") or ""
        message = getattr(exc, "message", None) or repr(exc)
        self._last_error = f"{op}: {message}"
        self._fail_gen += 1
        self._fail_streak += 1
        delay = min(self._tuning.retry_backoff_max, 0.5 * 2 ** (self._fail_streak - 1))
        if isinstance(exc, TemporaryError):
            self._last_error_permanent = False
            self._retry_at = trio.current_time() + max(delay, getattr(exc, "retry_after", None) or 0.0)
            log.warning("ipam.op.failed", op=op, error=message, code=code, retry_in=round(delay, 2), **fields)
            return
        self._last_error_permanent = not isinstance(exc, AllocationError)
        if self._last_error_permanent:
            self._retry_at = trio.current_time() + delay
        log.error("ipam.op.failed", op=op, error=message, code=code, error_type=type(exc).__name__, **fields)

    def _hopeless(self, wall_deadline: float, fail_gen: int) -> TerwayError | None:
        """Why waiting is pointless now, or ``None`` while a refill may still come."""
        now = self._now()
        if self._ops or self._promised:
            return None
        if self._fail_gen != fail_gen and self._last_error_permanent:
            return AllocationError(
                f"the pool could not be refilled: {self._last_error}", last_error=self._last_error
            )
        if self._retry_at > trio.current_time():
            return None
        if self._can_grow(now):
            return None
        soon = self._next_usable(now)
        if soon is not None and soon < wall_deadline:
            return None
        ends = self._vsw.exhausted_until()
        if ends is not None:
            return VSwitchesExhausted(
                f"no IP address can be allocated: every vSwitch ({', '.join(self._vsw.configured())}) answered "
                f"{INVALID_VSWITCH_IP_NOT_ENOUGH}; retrying after {max(ends - now, 0):.0f}s",
                reason=INVALID_VSWITCH_IP_NOT_ENOUGH,
                until=ends,
            )
        quota = [e for e in self._enis.values() if e.ip_inhibited(now)]
        if quota:
            until = min(e.ip_inhibit_until for e in quota)
            return AllocationInhibited(
                f"no IP address can be allocated: {quota[0].ip_inhibit_reason} on "
                f"{', '.join(e.eni_id for e in quota)}, and no other ENI can grow; retrying after {until - now:.0f}s",
                reason=quota[0].ip_inhibit_reason,
                until=until,
            )
        if self._eni_inhibited(now) and self._eni_inhibit is not None:
            until, code = self._eni_inhibit
            return AllocationInhibited(
                f"no IP address can be allocated: new ENIs are inhibited after {code} for {until - now:.0f}s "
                "and the existing ENIs are full",
                reason=code,
                until=until,
            )
        return PoolCapacityReached(
            f"every address this node may hold is in use: {self.max_enis()} ENIs "
            f"(instance type {self._quota.instance_type}: EniQuantity {self._quota.eni_quantity}, "
            f"eni_cap_ratio {self.conf.eni_cap_ratio}, eni_cap_shift {self.conf.eni_cap_shift}, "
            f"max_eni {self.conf.max_eni or 'unset'}) x {self._slot_capacity()} per ENI",
            max_enis=self.max_enis(),
        )

    def _slot_capacity(self) -> int:
        raise NotImplementedError

    async def _take(self, owner: str, attempt: Callable[[], Awaitable[Any]]) -> Any:
        """Serve ``owner``: ``attempt`` returns a lease, ``None`` (nothing idle: wait for a
        refill) or :data:`STORE_REFUSED` (the store refused the take and the view was rebuilt
        from its rows: pick again, a few times).  Refills below ``min_pool_size`` afterwards."""

        async def take() -> Any:
            for _attempt in range(TAKE_ATTEMPTS):
                got = await attempt()
                if got is not STORE_REFUSED:
                    return got
            raise TemporaryError(
                f"the pool's view disagreed with the store {TAKE_ATTEMPTS} times in a row; try again"
            )

        lease = await self._acquire(owner, take)
        if self._usable_slots(self._now()) + self._promised < self.conf.min_pool_size:
            self._kick()
        return lease

    async def _acquire(self, owner: str, take: Callable[[], Awaitable[Any]]) -> Any:
        """Run ``take`` until it returns a lease, waiting for refills in between."""
        existing = self._allocating.get(owner)
        if existing is not None:  # the same owner concurrently: wait for the first call
            await existing.wait()
        done = trio.Event()
        self._allocating[owner] = done
        started = trio.current_time()
        deadline = started + self._tuning.alloc_timeout
        waited = False
        fail_gen = self._fail_gen
        try:
            while True:
                event = self._changed
                lease = await take()
                if lease is not None:
                    self._record_allocation("cold" if waited else "warm", trio.current_time() - started)
                    return lease
                now_t = trio.current_time()
                wall_deadline = self._now() + (deadline - now_t)
                err = self._hopeless(wall_deadline, fail_gen)
                if err is not None:
                    log.warning("ipam.allocate.refused", owner=owner, error=err.message)
                    raise err
                if owner not in self._waiting:
                    self._waiting.add(owner)
                    _metrics.PENDING.set(len(self._waiting))
                if not waited:
                    waited = True
                    self._kick()
                if now_t >= deadline:
                    raise TemporaryError(
                        f"no idle address and the pool was not refilled within {self._tuning.alloc_timeout:.0f}s"
                        + (f" (last cloud error: {self._last_error})" if self._last_error else ""),
                        retry_after=5.0,
                    )
                wake_at = deadline
                soon = self._next_usable(self._now())
                if soon is not None:
                    wake_at = min(wake_at, now_t + max(soon - self._now(), 0.0) + 0.001)
                if self._retry_at > now_t:
                    wake_at = min(wake_at, self._retry_at + 0.001)
                with trio.move_on_at(wake_at):
                    await event.wait()
        finally:
            self._unwait(owner)
            if self._allocating.get(owner) is done:
                del self._allocating[owner]
            done.set()

    # ------------------------------------------------------------------ running
    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run the planner and the maintenance loop until cancelled.

        ``task_status.started()`` once both run (use ``nursery.start``).
        """
        await self._ensure_loaded()
        self._running = True
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(self._planner)
                await nursery.start(self._maintenance)
                self._kick()  # top up to min_pool_size / min_eni
                self._update_gauges()
                task_status.started()
        finally:
            self._running = False

    async def _planner(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as ops:
            task_status.started()
            while True:
                await self._wake.wait()
                if self._ops == 0 and self._tuning.batch_window > 0:
                    await trio.sleep(self._tuning.batch_window)  # coalesce a burst
                self._wake = trio.Event()
                pause = self._retry_at - trio.current_time()
                if pause > 0:
                    await trio.sleep(pause)
                try:
                    await self._plan(ops)
                except Exception as exc:
                    log.error("ipam.planner.failed", error=repr(exc), error_type=type(exc).__name__)
                    self._retry_at = trio.current_time() + 1.0
                    self._wake.set()
                self._update_gauges()
                self._notify()

    async def _maintenance(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as ops:
            task_status.started()
            while True:
                timeout = 1.0
                if self._maint_at is not None:
                    timeout = min(timeout, max(self._maint_at - trio.current_time(), 0.0))
                    self._maint_at = None
                with trio.move_on_after(timeout):
                    await self._maint_wake.wait()
                self._maint_wake = trio.Event()
                try:
                    await self._maintain(ops)
                except Exception as exc:
                    log.error("ipam.maintenance.failed", error=repr(exc), error_type=type(exc).__name__)
                self._update_gauges()

    async def _maintain(self, ops: trio.Nursery) -> None:
        now = self._now()
        conf = self.conf
        # retry half-done releases
        for eni in list(self._enis.values()):
            if eni.busy or eni.next_try > trio.current_time():
                continue
            if eni.state == "releasing":
                ops.start_soon(self._delete_eni, eni)
            elif eni.state == "ready":
                stuck = [ip for ip in eni.ips.values() if ip.state == "releasing"]
                if stuck:
                    ops.start_soon(self._unassign, eni, stuck)
        if self._pending == 0:
            await self._release_excess(ops)
            if conf.idle_ip_reclaim_after is not None:
                if self._next_reclaim is None:
                    self._next_reclaim = now + self._jittered(conf.idle_ip_reclaim_interval)
                elif now >= self._next_reclaim:
                    self._next_reclaim = now + self._jittered(conf.idle_ip_reclaim_interval)
                    await self._reclaim_idle(ops)
            else:
                self._next_reclaim = None
        if self._usable_slots(now) + self._promised < conf.min_pool_size or (
            len([e for e in self._enis.values() if e.state != "releasing"]) + self._creating < self.min_enis()
        ):
            self._kick()
        if self._next_sync is None:
            self._next_sync = now + conf.ip_pool_sync_period
        elif now >= self._next_sync:
            self._next_sync = now + conf.ip_pool_sync_period
            await self.gc(ops)
        due = [t for t in (self._next_reclaim, self._next_sync) if t is not None]
        if due:
            at = trio.current_time() + max(min(due) - self._now(), 0.0)
            self._maint_at = at if self._maint_at is None else min(self._maint_at, at)

    def _jittered(self, interval: float) -> float:
        return interval * (1.0 + self.conf.idle_ip_reclaim_jitter_factor * self._rng.random())

    # ------------------------------------------------------------------ reconcile / GC
    async def reconcile(
        self, live_owners: set[str], *, as_of: float | None = None, ops: trio.Nursery | None = None
    ) -> ReconcileReport:
        """Bring the store, the cloud and the live owners into agreement (crash safety).

        * addresses owned by an owner not in ``live_owners`` (and assigned before
          ``as_of``, a wall-clock time, when given) return to the pool (after the
          reuse cooldown);
        * ENIs half-created or half-deleted by a previous run are finished;
        * addresses on our ENIs unknown to the store are adopted as idle; store
          rows the cloud no longer has are dropped; owned ones are reported ``lost``
          and kept as *tombstones* until their owner is released (the pod still uses
          the address: if the cloud hands it to one of our ENIs again, it is not
          handed out meanwhile);
        * attached ENIs tagged ``creator=terway`` and this instance but unknown to
          the store are adopted; unattached ones are orphans: marked the first
          time, deleted once still orphaned after ``orphan_grace``.

        ENIs with a cloud operation in flight are left alone.  Safe to call at
        any time; the agent calls it at start with the store's attachments and
        the periodic GC pass calls it again.  With ``ops`` (the maintenance pass's
        nursery) the ENI deletions it decides run there instead of inline, so a slow
        detach does not stall the pass; without, they are done before it returns.
        """
        await self._ensure_loaded()
        report = _Report()
        await self._release_dead(live_owners, as_of, report)
        try:
            await self._sync_cloud(report, ops)
        except CloudError as exc:
            report.add("errors", f"cloud view unavailable: {exc.message}")
            log.warning("ipam.reconcile.cloud_failed", error=exc.message, code=exc.code)
        self._reindex()
        self._update_gauges()
        self._notify()
        self._kick()
        frozen = report.freeze()
        if frozen.changed or frozen.errors:
            log.info("ipam.reconcile.done", **{k: v for k, v in frozen.to_dict().items() if v})
        return frozen

    async def gc(self, ops: trio.Nursery | None = None) -> ReconcileReport:
        """One periodic GC pass: :meth:`reconcile` with the live owners from the agent's store."""
        if self._live_owners is None:
            return await self.reconcile_cloud_only(ops)
        as_of = self._now()
        live = await self._live_owners()
        return await self.reconcile(live, as_of=as_of, ops=ops)

    async def reconcile_cloud_only(self, ops: trio.Nursery | None = None) -> ReconcileReport:
        """:meth:`reconcile` without touching ownership (no live-owner source)."""
        await self._ensure_loaded()
        report = _Report()
        try:
            await self._sync_cloud(report, ops)
        except CloudError as exc:
            report.add("errors", f"cloud view unavailable: {exc.message}")
        self._reindex()
        self._update_gauges()
        self._notify()
        return report.freeze()

    async def _release_dead(self, live: set[str], as_of: float | None, report: _Report) -> None:
        now = self._now()
        freed = await self._store.acall(_db.release_dead_owners, self._store, set(live), as_of, now)
        for owner, key in freed:
            report.add("released", f"{owner}={key}")
            if key in self._lost and self._lost[key].get("owner") == owner:
                self._clear_lost([key], now)
                continue
            eni = self._enis.get(key)
            if eni is not None:
                eni.owner, eni.pod, eni.released_at = None, "", now
                continue
            ip = self._find_ip(key)
            if ip is not None and ip.owner == owner:
                ip.owner, ip.pod, ip.released_at = None, "", now
                ip.hold_for, ip.hold_until = "", None
        if freed:
            log.warning("ipam.owners.released", count=len(freed), items=[f"{o}={k}" for o, k in freed])
            self._reindex()
            self._kick_maint()

    def _find_ip(self, address: str) -> Ip | None:
        for eni in self._enis.values():
            ip = eni.ips.get(address)
            if ip is not None:
                return ip
        return None

    async def _security_groups(self) -> tuple[str, ...]:
        conf_sgs = self.conf.all_security_groups
        if conf_sgs:
            return conf_sgs
        if not self._sgs:
            enis = await self._cloud.describe_network_interfaces(
                instance_id=self._node.instance_id, eni_type="Primary"
            )
            for e in enis:
                if e.security_group_ids:
                    self._sgs = tuple(e.security_group_ids)
                    break
            if not self._sgs:
                raise PermanentError(
                    "no security group for new ENIs: eni_conf.security_group(s) is empty and the primary ENI "
                    f"of {self._node.instance_id} reports none"
                )
        return self._sgs

    def _ours(self, info: Any) -> bool:
        tags = info.tag_map
        return tags.get(CREATOR[0]) == CREATOR[1] and tags.get(TAG_INSTANCE) == self._node.instance_id

    def _managed(self, info: Any) -> bool:
        """An attached ENI the pool may adopt: created by terway, matching ``eni_tag_filter``."""
        tags = info.tag_map
        if tags.get(CREATOR[0]) != CREATOR[1]:
            return False
        if tags.get(TAG_INSTANCE) not in (None, self._node.instance_id):
            return False
        return all(tags.get(k) == v for k, v in self.conf.eni_tag_filter.items())

    async def _cloud_view(self) -> dict[str, Any]:
        iid = self._node.instance_id
        attached = await self._cloud.describe_network_interfaces(instance_id=iid)
        tagged = await self._cloud.describe_network_interfaces(
            tags={CREATOR[0]: CREATOR[1], TAG_INSTANCE: iid}
        )
        view = {e.eni_id: e for e in attached}
        for e in tagged:
            view.setdefault(e.eni_id, e)
        for e in attached:
            if e.type == "Primary" and e.security_group_ids and not self._sgs:
                self._sgs = tuple(e.security_group_ids)
        return view

    def _families(self, info: Any) -> dict[str, tuple[int, bool]]:
        """Addresses of a cloud ENI the pool tracks: address -> (family, primary)."""
        out: dict[str, tuple[int, bool]] = {}
        for ip in info.private_ips:
            out[ip] = (4, ip == info.primary_ip)
        if self.need6:
            for ip in info.ipv6s:
                out[ip] = (6, False)
        return out

    async def _start_delete(self, eni: Eni, ops: trio.Nursery | None) -> None:
        """Delete an ENI marked ``releasing``: in ``ops`` when given, else now."""
        if ops is not None:
            ops.start_soon(self._delete_eni, eni)
        else:
            await self._delete_eni(eni)

    async def _sync_cloud(self, report: _Report, ops: trio.Nursery | None = None) -> None:
        started = self._now()
        gens = {e.eni_id: e.gen for e in self._enis.values()}
        view = await self._cloud_view()
        iid = self._node.instance_id
        # -- ENIs the store knows
        for eni in list(self._enis.values()):
            if eni.busy or eni.eni_id in self._creating_ids or gens.get(eni.eni_id) != eni.gen:
                continue  # an operation is changing it: its own flow keeps the store right
            info = view.get(eni.eni_id)
            on_us = info is not None and info.instance_id == iid and info.status in (_IN_USE, _ATTACHING)
            if eni.state == "releasing":
                report.add("resumed", f"delete {eni.eni_id}")
                await self._start_delete(eni, ops)
                continue
            if info is None:
                if eni.owner is not None:
                    report.add("lost", f"{eni.owner}={eni.eni_id}")
                eni.state = "releasing"  # out of the pool before the store is touched
                for ip in eni.ips.values():
                    if ip.owner is None:
                        ip.state = "releasing"
                lost = await self._store.acall(_db.drop_vanished_eni, self._store, eni.eni_id, self._now())
                self._enis.pop(eni.eni_id, None)
                self._add_lost(lost, report)
                report.add("dropped", eni.eni_id)
                log.warning("ipam.eni.vanished", eni_id=eni.eni_id, tombstones=sorted(lost))
                continue
            if not on_us:
                owned = [ip for ip in eni.ips.values() if ip.owner is not None]
                if eni.state == "attaching" or (not owned and eni.owner is None and not eni.quarantined()):
                    # ours (recorded before attach) but not attached to us: delete it
                    # (_delete_eni asks the store first: an owned row stops it)
                    report.add("resumed" if eni.state == "attaching" else "dropped", f"delete {eni.eni_id}")
                    eni.state = "releasing"
                    for ip in eni.ips.values():
                        ip.state = "releasing"
                    await self._start_delete(eni, ops)
                else:
                    for ip in owned:
                        report.add("lost", f"{ip.owner}={ip.address}")
                    log.error(
                        "ipam.eni.detached_while_owned",
                        eni_id=eni.eni_id,
                        status=info.status,
                        instance_id=info.instance_id,
                    )
                continue
            if eni.state == "attaching":
                try:
                    await self._finish_attach(eni, info)
                    report.add("resumed", f"attach {eni.eni_id}")
                except TerwayError as exc:
                    report.add("errors", f"finishing attach of {eni.eni_id}: {exc.message}")
                continue
            await self._sync_ips(eni, info, started, report)
        # -- cloud ENIs the store does not know
        for info in view.values():
            if info.eni_id in self._enis or info.eni_id in self._creating_ids:
                continue
            if self._gone.get(info.eni_id, -1.0) >= started:
                continue  # deleted by us after the cloud was described
            if info.type != _TYPE_SECONDARY:
                continue
            if info.instance_id == iid and info.status == _IN_USE:
                if self._managed(info):
                    try:
                        await self._adopt(info, report)
                    except TerwayError as exc:
                        report.add("errors", f"adopting {info.eni_id}: {exc.message}")
                continue
            if self._ours(info) and info.status == _AVAILABLE and not info.instance_id:
                await self._orphan(info, report, ops)
        gone = [e for e in self._orphans if e not in view or view[e].status != _AVAILABLE]
        for eni_id in gone:
            self._orphans.pop(eni_id, None)  # a delete task may have dropped it during an await
            await self._store.acall(_db.set_orphan, self._store, eni_id, None)

    async def _orphan(self, info: Any, report: _Report, ops: trio.Nursery | None = None) -> None:
        now = self._now()
        first = self._orphans.get(info.eni_id)
        if first is None:
            self._orphans[info.eni_id] = now
            await self._store.acall(_db.set_orphan, self._store, info.eni_id, now, "unattached")
            report.add("orphans_marked", info.eni_id)
            log.warning("ipam.orphan.marked", eni_id=info.eni_id, grace=self._tuning.orphan_grace)
            return
        if now - first < self._tuning.orphan_grace or info.eni_id in self._orphans_deleting:
            return
        if ops is not None:
            self._orphans_deleting.add(info.eni_id)
            ops.start_soon(self._delete_orphan, info.eni_id, None)
        else:
            await self._delete_orphan(info.eni_id, report)

    async def _delete_orphan(self, eni_id: str, report: _Report | None) -> None:
        """Detach and delete an orphan ENI (a cloud error is reported/logged; a later pass retries)."""
        try:
            try:
                self._count_call("DeleteNetworkInterface")
                await self._cloud.detach_and_delete_eni(eni_id, instance_id=self._node.instance_id)
            except CloudError as exc:
                if report is not None:
                    report.add("errors", f"deleting orphan {eni_id}: {exc.message}")
                log.warning("ipam.orphan.delete_failed", eni_id=eni_id, error=exc.message, code=exc.code)
                return
            self._orphans.pop(eni_id, None)
            with trio.CancelScope(shield=True):
                await self._store.acall(_db.set_orphan, self._store, eni_id, None)
            if report is not None:
                report.add("orphans_deleted", eni_id)
            _metrics.POOL_DISPOSED.labels(type="eni").inc()
            log.warning("ipam.orphan.deleted", eni_id=eni_id)
        finally:
            self._orphans_deleting.discard(eni_id)

    async def _sync_ips(self, eni: Eni, info: Any, started: float, report: _Report) -> None:
        cloud = self._families(info)
        now = self._now()
        stale = [ip for ip in eni.ips.values() if ip.address not in cloud and ip.created_at < started]
        if stale:
            for ip in stale:
                if ip.owner is None:
                    ip.state = "releasing"  # out of the pool *before* the await: nobody takes it meanwhile
            # unowned rows are deleted; owned ones (the store decides) become tombstones
            lost = await self._store.acall(
                _db.drop_stale_ips, self._store, [ip.address for ip in stale], self._now()
            )
            for ip in stale:
                eni.ips.pop(ip.address, None)
                if ip.address not in lost:
                    report.add("dropped", ip.address)
            self._add_lost(lost, report)
        unknown = [a for a in cloud if a not in eni.ips]
        if unknown:
            rows = [
                Ip(address=a, family=cloud[a][0], eni_id=eni.eni_id, primary=cloud[a][1], created_at=now)
                for a in unknown
            ]
            await self._store.acall(_db.add_ips, self._store, [r.row() for r in rows])
            for r in rows:
                eni.ips[r.address] = r
                report.add("adopted_ips", r.address)
            self._apply_lost(rows)
            log.warning("ipam.ip.adopted", eni_id=eni.eni_id, ips=unknown)
        if info.device_index is not None and info.device_index != eni.device_index:
            eni.device_index = info.device_index
            await self._store.acall(
                _db.update_eni, self._store, eni.eni_id, {"device_index": info.device_index}
            )

    async def _eni_facts(self, mac: str, ipv4s: Sequence[str], ipv6s: Sequence[str], *, wait: bool) -> Any:
        md = self._cloud.metadata
        if wait:
            settings = self._cloud.settings
            return await md.wait_for_eni(
                mac,
                ipv4s=tuple(ipv4s),
                ipv6s=tuple(ipv6s),
                timeout=settings.metadata_wait_timeout,
                interval=settings.metadata_poll_interval,
            )
        return await md.eni(mac, ipv6=self.need6)

    async def _adopt(self, info: Any, report: _Report) -> None:
        md = await self._eni_facts(info.mac, (), (), wait=False)
        now = self._now()
        eni = Eni(
            eni_id=info.eni_id,
            pool=self.kind,
            mac=info.mac,
            vswitch_id=info.vswitch_id,
            state="ready",
            device_index=info.device_index,
            primary_ip=info.primary_ip,
            cidr4=md.vswitch_cidr4 or None,
            gateway4=md.gateway or None,
            cidr6=md.vswitch_cidr6 if self.need6 else None,
            gateway6=md.ipv6_gateway if self.need6 else None,
            trunk=info.type == "Trunk",
            created_at=now,
        )
        fams = self._families(info)
        for a, (fam, primary) in fams.items():
            eni.ips[a] = Ip(address=a, family=fam, eni_id=eni.eni_id, primary=primary, created_at=now)
        await self._store.acall(_db.insert_eni, self._store, eni.row(now))
        await self._store.acall(_db.add_ips, self._store, [ip.row() for ip in eni.ips.values()])
        self._apply_lost(eni.ips.values())
        self._enis[eni.eni_id] = eni
        report.add("adopted_enis", eni.eni_id)
        for a in fams:
            report.add("adopted_ips", a)
        log.warning("ipam.eni.adopted", eni_id=eni.eni_id, ips=list(fams))

    async def _finish_attach(self, eni: Eni, info: Any) -> None:
        """An ENI recorded as attaching is InUse on us: complete its record."""
        md = await self._eni_facts(info.mac, info.private_ips, info.ipv6s if self.need6 else (), wait=True)
        now = self._now()
        fams = self._families(info)
        ips = [
            Ip(address=a, family=f, eni_id=eni.eni_id, primary=p, created_at=now)
            for a, (f, p) in fams.items()
        ]
        fields = {
            "mac": info.mac,
            "device_index": info.device_index,
            "primary_ip": info.primary_ip,
            "cidr4": md.vswitch_cidr4 or None,
            "gateway4": md.gateway or None,
            "cidr6": (md.vswitch_cidr6 or None) if self.need6 else None,
            "gateway6": (md.ipv6_gateway or None) if self.need6 else None,
            "updated_at": now,
        }
        with trio.CancelScope(shield=True):
            await self._store.acall(_db.eni_ready, self._store, eni.eni_id, fields, [ip.row() for ip in ips])
        for k, v in fields.items():
            if k != "updated_at":
                setattr(eni, k, v)
        eni.ips = {ip.address: ip for ip in ips}
        self._apply_lost(ips)
        eni.state = "ready"

    # ------------------------------------------------------------------ ENI lifecycle
    async def _create_eni(self, vswitch_id: str, n4: int, n6: int) -> Eni:
        """Create an ENI with ``n4`` secondary IPv4 and ``n6`` IPv6 addresses, record it,
        attach it, wait until it is InUse and visible in the metadata service,
        then record its addresses (idle).  Rolled back (shielded) on failure."""
        cloud = self._cloud
        iid = self._node.instance_id
        sgs = await self._security_groups()
        self._count_call("CreateNetworkInterface")
        info = await cloud.create_network_interface(
            vswitch_id,
            list(sgs),
            secondary_ip_count=n4,
            ipv6_count=n6,
            tags={TAG_INSTANCE: iid, TAG_NODE: self._node.name},
        )
        self._vsw.took(vswitch_id, 1 + n4)
        self._creating_ids.add(info.eni_id)
        now = self._now()
        eni = Eni(
            eni_id=info.eni_id,
            pool=self.kind,
            mac=info.mac,
            vswitch_id=vswitch_id,
            state="attaching",
            primary_ip=info.primary_ip,
            created_at=now,
            busy=1,
        )
        try:
            with trio.CancelScope(shield=True):
                await self._store.acall(_db.insert_eni, self._store, eni.row(now))
            self._enis[eni.eni_id] = eni
            try:
                self._count_call("AttachNetworkInterface")
                await cloud.attach_network_interface(info.eni_id, iid)
                ready = await cloud.wait_eni_status(info.eni_id, _IN_USE)
                await self._finish_attach(eni, ready)
            except BaseException as exc:
                await self._rollback(eni, exc)
                raise
            log.info(
                "ipam.eni.created",
                eni_id=eni.eni_id,
                mac=eni.mac,
                vswitch_id=vswitch_id,
                ipv4=len(eni.family(4)),
                ipv6=len(eni.family(6)),
            )
            return eni
        finally:
            eni.busy -= 1
            self._creating_ids.discard(info.eni_id)

    async def _rollback(self, eni: Eni, cause: BaseException) -> None:
        with trio.move_on_after(self._tuning.rollback_timeout, shield=True) as scope:
            try:
                self._count_call("DeleteNetworkInterface")
                await self._cloud.detach_and_delete_eni(eni.eni_id, instance_id=self._node.instance_id)
                await self._store.acall(_db.delete_eni, self._store, eni.eni_id)
                self._forget(eni)
                log.info("ipam.eni.rolled_back", eni_id=eni.eni_id, cause=type(cause).__name__)
                return
            except Exception as exc:
                log.error("ipam.eni.rollback_failed", eni_id=eni.eni_id, error=repr(exc))
                cause.add_note(f"rollback of {eni.eni_id} failed: {exc!r}; the sync pass retries")
        if scope.cancelled_caught:
            log.error("ipam.eni.rollback_failed", eni_id=eni.eni_id, error="timed out")
            cause.add_note(f"rollback of {eni.eni_id} timed out; the sync pass retries")
        # the row stays 'attaching': the next sync pass resolves it against the cloud

    def _forget(self, eni: Eni) -> None:
        self._enis.pop(eni.eni_id, None)
        now = self._now()
        self._gone[eni.eni_id] = now
        for k in [k for k, t in self._gone.items() if now - t > 3600]:
            del self._gone[k]

    def _retry_later(self, eni: Eni) -> None:
        eni.fail_count += 1
        eni.next_try = trio.current_time() + min(self._tuning.retry_backoff_max, 2.0**eni.fail_count)

    async def _delete_eni(self, eni: Eni) -> None:
        """Detach and delete an ENI already marked ``releasing`` (idempotent, retried by maintenance)."""
        if eni.busy:
            return
        eni.busy += 1
        eni.gen += 1
        try:
            # the store decides, not the in-memory view: an ENI (or address) owned there is not deleted
            try:
                await self._store.acall(_db.mark_eni_releasing, self._store, eni.eni_id, self._now())
            except _db.OwnershipConflict as exc:
                log.error("ipam.eni.delete_refused", eni_id=eni.eni_id, error=str(exc))
                await self._resync_eni(eni)
                return
            self._count_call("DeleteNetworkInterface")
            await self._cloud.detach_and_delete_eni(eni.eni_id, instance_id=self._node.instance_id)
            with trio.CancelScope(shield=True):
                await self._store.acall(_db.delete_eni, self._store, eni.eni_id)
            self._forget(eni)
            _metrics.POOL_DISPOSED.labels(type="eni").inc()
            log.info("ipam.eni.deleted", eni_id=eni.eni_id)
        except CloudError as exc:
            self._retry_later(eni)
            log.warning("ipam.eni.delete_failed", eni_id=eni.eni_id, error=exc.message, code=exc.code)
        finally:
            eni.busy -= 1
            eni.gen += 1
            self._notify()

    async def _retire_eni(self, eni: Eni, ops: trio.Nursery) -> bool:
        """Mark an idle ENI ``releasing`` (memory first, then the store) and start deleting it."""
        if not await self._mark_retiring(eni):
            return False
        ops.start_soon(self._delete_eni, eni)
        return True

    async def _mark_retiring(self, eni: Eni) -> bool:
        """Mark an idle ENI ``releasing``, memory first, then the store (the
        maintenance pass deletes ``releasing`` ENIs it finds)."""
        if (
            eni.busy
            or eni.owner is not None
            or eni.quarantined()
            or any(ip.owner is not None for ip in eni.ips.values())
        ):
            return False
        now = self._now()
        before = {ip.address: ip.state for ip in eni.ips.values()}
        eni.state = "releasing"
        for ip in eni.ips.values():
            ip.state = "releasing"
        try:
            await self._store.acall(_db.mark_eni_releasing, self._store, eni.eni_id, now)
        except _db.OwnershipConflict as exc:
            log.error("ipam.eni.retire_conflict", eni_id=eni.eni_id, error=str(exc))
            eni.state = "ready"
            for ip in eni.ips.values():
                ip.state = before.get(ip.address, "ready")
            return False
        return True

    async def _unassign(self, eni: Eni, ips: Sequence[Ip]) -> None:
        """Give idle addresses back to the cloud in calls of <= ``max_ips_per_call``.

        They leave the pool first (memory, then the store: ``releasing``); a
        failed call leaves them ``releasing`` and a later pass retries.
        """
        if eni.busy:
            return
        eni.busy += 1
        eni.gen += 1
        try:
            todo = [
                ip
                for ip in ips
                if ip.owner is None and not ip.lost_for and not ip.primary and ip.eni_id == eni.eni_id
            ]
            if not todo:
                return
            for ip in todo:
                ip.state = "releasing"
            # every time, retries included: the store (not this view) says whether they are free
            try:
                await self._store.acall(_db.mark_ips_releasing, self._store, [ip.address for ip in todo])
            except _db.OwnershipConflict as exc:
                log.error("ipam.unassign.conflict", eni_id=eni.eni_id, error=str(exc))
                await self._resync_ips([ip.address for ip in todo])
                return
            per_call = self._tuning.max_ips_per_call
            for family in (4, 6):
                batch = [ip for ip in todo if ip.family == family]
                for i in range(0, len(batch), per_call):
                    chunk = batch[i : i + per_call]
                    addresses = [ip.address for ip in chunk]
                    try:
                        if family == 4:
                            self._count_call("UnassignPrivateIpAddresses")
                            await self._cloud.unassign_private_ip_addresses(eni.eni_id, addresses)
                        else:
                            self._count_call("UnassignIpv6Addresses")
                            await self._cloud.unassign_ipv6_addresses(eni.eni_id, addresses)
                    except CloudError as exc:
                        # they stay 'releasing' (out of the pool); a later pass retries
                        self._retry_later(eni)
                        log.warning(
                            "ipam.unassign.failed", eni_id=eni.eni_id, ips=addresses, error=exc.message
                        )
                        return
                    with trio.CancelScope(shield=True):
                        kept = await self._store.acall(_db.delete_ips, self._store, addresses)
                    for a in addresses:
                        if a not in kept:
                            eni.ips.pop(a, None)
                    if kept:  # cannot happen while marking is conditional; the rows win if it does
                        log.error("ipam.unassign.row_owned", eni_id=eni.eni_id, ips=kept)
                        await self._resync_ips(kept)
                    _metrics.POOL_DISPOSED.labels(type=f"ipv{family}").inc(len(addresses))
                    log.info("ipam.ip.released", eni_id=eni.eni_id, ips=addresses)
            eni.fail_count = 0
        finally:
            eni.busy -= 1
            eni.gen += 1
            self._notify()

    # ------------------------------------------------------------------ observability
    def _inhibits(self) -> dict[str, Any]:
        now = self._now()
        out: dict[str, Any] = {}
        if self._eni_inhibited(now) and self._eni_inhibit is not None:
            out["eni_create"] = {"reason": self._eni_inhibit[1], "left": round(self._eni_inhibit[0] - now, 1)}
        for eni in self._enis.values():
            if eni.ip_inhibited(now):
                out[f"ip:{eni.eni_id}"] = {
                    "reason": eni.ip_inhibit_reason,
                    "left": round(eni.ip_inhibit_until - now, 1),
                }
        for v, st in self._vsw.snapshot().items():
            if st["aside_until"]:
                out[f"vswitch:{v}"] = {"reason": st["reason"], "left": round(st["aside_until"] - now, 1)}
        return out

    def snapshot(self) -> dict[str, Any]:
        """The pool for ``terway-agent pool``, ``mapping`` and tests: plain JSON."""
        now = self._now()
        conf = self.conf
        insufficient, why = self.insufficient()
        return {
            "kind": self.kind,
            "instance_id": self._node.instance_id,
            "instance_type": self._quota.instance_type,
            "ip_stack": conf.ip_stack,
            "max_enis": self.max_enis(),
            "min_enis": self.min_enis(),
            "slot_capacity_per_eni": self._slot_capacity(),
            "min_pool_size": conf.min_pool_size,
            "max_pool_size": conf.max_pool_size,
            "usable": self._usable_slots(now),
            "idle": self._idle_slots(now),
            "pending": self._pending,
            "in_flight": self._ops,
            "inhibits": self._inhibits(),
            "insufficient": insufficient,
            "insufficient_reason": why,
            "last_error": self._last_error,
            "vswitches": self._vsw.snapshot(),
            "orphans": {k: round(now - v, 1) for k, v in self._orphans.items()},
            "lost": {a: dict(t) for a, t in sorted(self._lost.items())},
            "stats": self.stats(),
            "enis": [
                {
                    "eni_id": e.eni_id,
                    "mac": e.mac,
                    "vswitch_id": e.vswitch_id,
                    "state": e.state,
                    "device_index": e.device_index,
                    "primary_ip": e.primary_ip,
                    "owner": e.owner,
                    "pod": e.pod or None,
                    "busy": bool(e.busy),
                    "ips": [
                        ip.snapshot(now, conf.ip_reuse_cooldown)
                        for ip in sorted(e.ips.values(), key=lambda i: (i.family, not i.primary, i.address))
                    ],
                }
                for e in sorted(self._enis.values(), key=lambda e: (e.device_index or 0, e.eni_id))
            ],
        }

    # helpers for subclasses
    def _ready_enis(self) -> list[Eni]:
        return [e for e in self._enis.values() if e.state == "ready"]

    def _live_eni_count(self) -> int:
        """ENIs counted against max_enis: every one not being deleted, plus creations in flight
        whose id is not known yet."""
        known = sum(1 for e in self._enis.values() if e.state != "releasing")
        unknown = self._creating - len([i for i in self._creating_ids if i in self._enis])
        return known + max(unknown, 0)


def is_ip_not_enough_vswitch(exc: BaseException) -> bool:
    return isinstance(exc, IpNotEnough) and getattr(exc, "code", "").startswith("InvalidVSwitchId.")


def is_eni_quota(exc: BaseException) -> bool:
    return isinstance(exc, CloudError) and exc.code == ENI_PER_INSTANCE_LIMIT_EXCEEDED


def is_ip_quota(exc: BaseException) -> bool:
    return (isinstance(exc, IpNotEnough) and not is_ip_not_enough_vswitch(exc)) or isinstance(
        exc, IpCountExceeded
    )


def ceil_div(a: int, b: int) -> int:
    return math.ceil(a / b) if b > 0 else 0
