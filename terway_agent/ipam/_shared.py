"""The shared-ENI pool: secondary addresses of the node's secondary ENIs.

A *slot* is what one pod gets: an IPv4 address (``ip_stack: ipv4``), an IPv6
address (``ipv6``), or one of each on the same ENI (``dual``).  Every address
of a secondary ENI is a slot, its primary IPv4 included (which is why the pod
limit is ``(EniQuantity - 1) x EniPrivateIpAddressQuantity``); the node's
primary ENI is never used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import trio

from terway_agent.log import get_logger

from . import _db, _metrics
from ._base import (
    IPAM,
    STORE_REFUSED,
    _owner_ok,
    ceil_div,
    is_eni_quota,
    is_ip_not_enough_vswitch,
    is_ip_quota,
)
from ._model import Eni, Ip
from ._types import IPLease

if TYPE_CHECKING:  # pragma: no cover
    from terway_agent.types import PodRef

log = get_logger(__name__)


class SharedPool(IPAM):
    """Secondary IPs of shared ENIs (see :class:`terway_agent.ipam.IPAM` for the API)."""

    kind = "shared"

    def __init__(self, **kw: object) -> None:
        super().__init__(**kw)  # type: ignore[arg-type]
        self._create_future = 0  # slots in-flight ENI creations will offer beyond their first batch

    # ------------------------------------------------------------------ slot accounting
    def _families_needed(self) -> tuple[int, ...]:
        return {"ipv4": (4,), "ipv6": (6,), "dual": (4, 6)}[self.stack]

    def _slot_capacity(self) -> int:
        q = self._quota
        caps = {4: q.eni_private_ip_quantity, 6: q.eni_ipv6_quantity}
        return min(caps[f] for f in self._families_needed())

    def _count(self, eni: Eni, pred: object) -> int:
        counts = []
        for fam in self._families_needed():
            counts.append(sum(1 for ip in eni.ips.values() if ip.family == fam and pred(ip)))  # type: ignore[operator]
        return min(counts)

    def _slots_total(self, eni: Eni) -> int:
        return self._count(eni, lambda ip: True)

    def _room(self, eni: Eni) -> int:
        return max(self._slot_capacity() - self._slots_total(eni), 0)

    def _usable_slots(self, now: float) -> int:
        cooldown = self.conf.ip_reuse_cooldown
        return sum(self._count(e, lambda ip: ip.usable_by("", now, cooldown)) for e in self._ready_enis())

    def _idle_slots(self, now: float) -> int:
        return sum(self._count(e, lambda ip: ip.idle(now)) for e in self._ready_enis())

    def _next_usable(self, now: float) -> float | None:
        cooldown = self.conf.ip_reuse_cooldown
        times = [
            ip.usable_at(now, cooldown)
            for e in self._ready_enis()
            for ip in e.ips.values()
            if ip.owner is None
            and ip.state == "ready"
            and not ip.lost_for
            and ip.family in self._families_needed()
            and not ip.usable_by("", now, cooldown)
        ]
        return min(times) if times else None

    def _growable(self, eni: Eni, now: float) -> bool:
        return (
            eni.state == "ready"
            and self._room(eni) > 0
            and not eni.ip_inhibited(now)
            and self._vsw.aside_until(eni.vswitch_id) is None
        )

    def _can_grow(self, now: float) -> bool:
        if any(self._growable(e, now) for e in self._enis.values()):
            return True
        return (
            self._live_eni_count() < self.max_enis()
            and not self._eni_inhibited(now)
            and bool(self._vsw.usable())
        )

    def _first_slots(self) -> int:
        """Slots a new ENI brings at creation (its primary IPv4 counts; <= 10 secondaries)."""
        q = self._quota
        per_call = self._tuning.max_ips_per_call
        if self.stack == "ipv4":
            return min(q.eni_private_ip_quantity, per_call + 1)
        if self.stack == "ipv6":
            return min(q.eni_ipv6_quantity, per_call)
        return min(q.eni_private_ip_quantity, per_call + 1, q.eni_ipv6_quantity, per_call)

    def _policy_key(self, eni: Eni) -> tuple[int, int]:
        owned = eni.owned_count()
        if self.conf.eni_selection_policy == "least_ips":
            return (owned, eni.device_index or 0)
        return (-owned, eni.device_index or 0)

    # ------------------------------------------------------------------ allocation
    def _lease_now(self, owner: str) -> IPLease | None:
        ips = self._by_owner.get(owner)
        if not ips:
            return None
        eni = self._enis.get(ips[0].eni_id)
        if eni is None:
            return None
        v4 = next((ip.address for ip in ips if ip.family == 4), None)
        v6 = next((ip.address for ip in ips if ip.family == 6), None)
        return IPLease(owner=owner, ipv4=v4, ipv6=v6, eni=eni.ref())

    def _pick(self, pod: str, sticky: bool) -> tuple[Eni, list[Ip]] | None:
        now = self._now()
        cooldown = self.conf.ip_reuse_cooldown
        fams = self._families_needed()

        def held_here(ip: Ip) -> bool:
            return bool(pod) and ip.held(now) and ip.hold_for == pod

        def best(eni: Eni, fam: int) -> Ip | None:
            cands = [ip for ip in eni.ips.values() if ip.family == fam and ip.usable_by(pod, now, cooldown)]
            if not cands:
                return None
            cands.sort(
                key=lambda ip: (
                    0 if sticky and held_here(ip) else 1,
                    ip.released_at is not None,
                    ip.released_at or 0.0,
                    ip.address,
                )
            )
            return cands[0]

        def complete(eni: Eni) -> list[Ip] | None:
            chosen = [best(eni, f) for f in fams]
            if any(c is None for c in chosen):
                return None
            return [c for c in chosen if c is not None]

        enis = self._ready_enis()
        if sticky and pod:
            for eni in enis:
                if any(held_here(ip) and ip.owner is None and ip.state == "ready" for ip in eni.ips.values()):
                    chosen = complete(eni)
                    if chosen is not None:
                        return eni, chosen
        for eni in sorted(enis, key=self._policy_key):
            chosen = complete(eni)
            if chosen is not None:
                return eni, chosen
        return None

    async def allocate_ips(self, owner: str, pod: PodRef, *, sticky: bool = False) -> IPLease:
        _owner_ok(owner)
        await self._ensure_loaded()
        pod_key = pod.key

        async def attempt() -> IPLease | object | None:
            lease = self._lease_now(owner)
            if lease is not None:
                return lease
            pick = self._pick(pod_key, sticky)
            if pick is None:
                return None
            eni, chosen = pick
            if await self._commit_take(owner, pod_key, chosen):
                return self._taken(owner, pod_key, eni, chosen)
            return STORE_REFUSED

        return await self._take(owner, attempt)

    async def _commit_take(self, owner: str, pod_key: str, chosen: list[Ip]) -> bool:
        """Commit ``owner``'s take of ``chosen``; ``False`` when the store refused (the view
        of those addresses is then rebuilt from the store's rows: they win)."""
        now = self._now()
        for ip in chosen:  # reserve in memory before the commit: no other task picks them
            ip.owner, ip.pod = owner, pod_key
        self._unwait(owner)
        try:
            with trio.CancelScope(shield=True):
                await self._store.acall(
                    _db.take_ips, self._store, [ip.address for ip in chosen], owner, pod_key, now
                )
        except _db.OwnershipConflict as exc:
            log.error("ipam.allocate.conflict", owner=owner, error=str(exc))
            try:
                # still reserved for `owner` in memory while the rows are read: nobody picks them
                with trio.CancelScope(shield=True):
                    await self._resync_ips([ip.address for ip in chosen])
            except BaseException:
                for ip in chosen:
                    if ip.owner == owner:
                        ip.owner, ip.pod = None, ""
                raise
            return False
        except BaseException:
            for ip in chosen:
                ip.owner, ip.pod = None, ""
            self._reindex()
            raise
        for ip in chosen:
            ip.assigned_at = now
        return True

    def _taken(self, owner: str, pod_key: str, eni: Eni, chosen: list[Ip]) -> IPLease:
        for ip in chosen:
            ip.hold_for, ip.hold_until = "", None
        self._by_owner[owner] = list(chosen)
        self._update_gauges()
        lease = IPLease(
            owner=owner,
            ipv4=next((ip.address for ip in chosen if ip.family == 4), None),
            ipv6=next((ip.address for ip in chosen if ip.family == 6), None),
            eni=eni.ref(),
        )
        log.info(
            "ipam.ip.allocated",
            owner=owner,
            pod=pod_key,
            ipv4=lease.ipv4,
            ipv6=lease.ipv6,
            eni_id=eni.eni_id,
        )
        return lease

    async def release_ips(self, owner: str, *, hold: bool = False) -> None:
        _owner_ok(owner)
        await self._ensure_loaded()
        ips = self._by_owner.get(owner) or []
        lost = self._lost_of(owner)
        if not ips and not lost:
            return
        now = self._now()
        pod = ips[0].pod if ips else ""
        hold_for = pod if hold and pod else ""
        hold_until = now + self.conf.stateful_ip_hold if hold_for else None
        with trio.CancelScope(shield=True):
            await self._store.acall(_db.release_ips, self._store, owner, now, hold_for, hold_until)
        self._clear_lost(lost, now)
        if lost:
            log.warning("ipam.ip.tombstones_released", owner=owner, ips=lost)
        for ip in ips:
            ip.owner, ip.pod, ip.released_at = None, "", now
            ip.hold_for, ip.hold_until = hold_for, hold_until
        self._by_owner.pop(owner, None)
        log.info(
            "ipam.ip.released_by_owner",
            owner=owner,
            ips=[ip.address for ip in ips],
            hold_for=hold_for or None,
        )
        self._update_gauges()
        self._kick_maint()
        self._notify()

    async def lease_of(self, owner: str) -> IPLease | None:
        await self._ensure_loaded()
        return self._lease_now(owner)

    # ------------------------------------------------------------------ refill
    async def _plan(self, ops: trio.Nursery) -> None:
        now = self._now()
        conf = self.conf
        cap = self._slot_capacity()
        if cap <= 0:
            return
        per_call = self._tuning.max_ips_per_call
        usable = self._usable_slots(now)
        idle = self._idle_slots(now)
        need = self._pending + conf.min_pool_size - usable - self._promised
        want_enis = self.min_enis() - self._live_eni_count()
        if need <= 0 and want_enis <= 0:
            return
        # a refill that calls the cloud anyway brings the usable idle slots up to max_pool_size
        # (addresses cooling down after a release do not count: they cannot serve anyone yet)
        new = max(need, self._pending + conf.max_pool_size - usable - self._promised) if need > 0 else 0
        growable = sorted(
            (e for e in self._enis.values() if not e.busy and self._growable(e, now)),
            key=lambda e: (
                (-self._slots_total(e), e.device_index or 0)
                if conf.eni_selection_policy == "most_ips"
                else (self._slots_total(e), e.device_index or 0)
            ),
        )
        for eni in growable:
            if new <= 0:
                break
            k = min(self._room(eni), per_call, new)
            new -= k
            self._begin_op(eni, k)
            ops.start_soon(self._op_assign, eni, k)
        future = self._create_future + sum(
            max(self._room(e) - e.inflight, 0)
            for e in self._enis.values()
            if e.busy and e.state == "ready" and self._growable(e, now)
        )
        remaining = new - future
        free_enis = self.max_enis() - self._live_eni_count()
        if free_enis <= 0 or self._eni_inhibited(now) or not self._vsw.usable():
            return
        count = min(max(ceil_div(max(remaining, 0), cap), want_enis), free_enis)
        log.debug(
            "ipam.plan",
            pending=self._pending,
            usable=usable,
            idle=idle,
            promised=self._promised,
            need=need,
            new=new,
            future=future,
            create=count,
        )
        first_cap = self._first_slots()
        for _ in range(count):
            first = min(first_cap, max(remaining, 1))
            remaining -= first
            self._creating += 1
            self._promised += first
            self._create_future += cap - first
            self._ops += 1
            ops.start_soon(self._op_create, first)

    def _begin_op(self, eni: Eni, k: int) -> None:
        eni.busy += 1
        eni.gen += 1
        eni.inflight += k
        self._promised += k
        self._ops += 1

    def _classify(self, exc: BaseException, *, op: str, eni: Eni | None = None, vswitch: str = "") -> None:
        code = getattr(exc, "code", "")
        if is_ip_not_enough_vswitch(exc):
            self._set_vswitch_aside(vswitch or (eni.vswitch_id if eni else ""), code)
            self._last_error = f"{op}: {getattr(exc, 'message', exc)}"
            self._fail_gen += 1
        elif is_ip_quota(exc) and eni is not None:
            self._inhibit_eni_ips(eni, code)
            self._last_error = f"{op}: {getattr(exc, 'message', exc)}"
            self._fail_gen += 1
        elif is_eni_quota(exc):
            self._inhibit_enis(code)
            self._last_error = f"{op}: {getattr(exc, 'message', exc)}"
            self._fail_gen += 1
        else:
            self._failed(exc, op=op, eni_id=eni.eni_id if eni else None, vswitch_id=vswitch or None)

    async def _op_assign(self, eni: Eni, k: int) -> None:
        errors: list[Exception] = []
        try:
            target = self._slots_total(eni) + k
            per_call = self._tuning.max_ips_per_call
            wanted = {
                fam: min(max(target - len(eni.family(fam)), 0), per_call) for fam in self._families_needed()
            }
            got: dict[int, tuple[str, ...]] = {}

            async def one(fam: int, n: int) -> None:
                try:
                    if fam == 4:
                        self._count_call("AssignPrivateIpAddresses")
                        got[4] = await self._cloud.assign_private_ip_addresses(eni.eni_id, count=n)
                    else:
                        self._count_call("AssignIpv6Addresses")
                        got[6] = await self._cloud.assign_ipv6_addresses(eni.eni_id, count=n)
                except Exception as exc:  # classified below, never dropped
                    errors.append(exc)

            async with trio.open_nursery() as nursery:
                for fam, n in wanted.items():
                    if n > 0:
                        nursery.start_soon(one, fam, n)
            now = self._now()
            rows = [
                Ip(address=a, family=fam, eni_id=eni.eni_id, created_at=now)
                for fam, addrs in got.items()
                for a in addrs
                if a not in eni.ips
            ]
            if rows:
                with trio.CancelScope(shield=True):
                    await self._store.acall(_db.add_ips, self._store, [r.row() for r in rows])
                for r in rows:
                    eni.ips[r.address] = r
                self._apply_lost(rows)
                self._vsw.took(eni.vswitch_id, len(got.get(4, ())))
                log.info("ipam.ip.assigned", eni_id=eni.eni_id, ips=[r.address for r in rows])
            for exc in errors:
                self._classify(exc, op="assign", eni=eni)
            if not errors:
                self._succeeded()
        finally:
            eni.busy -= 1
            eni.gen += 1
            eni.inflight -= k
            self._promised -= k
            self._ops -= 1
            self._update_gauges()
            self._kick()
            self._notify()

    async def _op_create(self, first: int) -> None:
        cap = self._slot_capacity()
        try:
            vswitches = await self._vsw.choose()
            if not vswitches:
                self._last_error = "create ENI: no usable vSwitch (every candidate is set aside or full)"
                self._fail_gen += 1
                log.warning("ipam.vswitch.none_usable", candidates=list(self._vsw.configured()))
                return
            n4 = first - 1 if self.need4 else 0
            n6 = first if self.need6 else 0
            for vsw in vswitches:
                k4 = n4
                free = self._vsw.available(vsw)
                if free is not None and self.need4 and free < 1 + n4:
                    k4 = max(free - 1, 0)  # what the vSwitch still has (DescribeVSwitches, cached)
                try:
                    await self._create_eni(vsw, k4, n6)
                except Exception as exc:
                    self._classify(exc, op="create_eni", vswitch=vsw)
                    if is_ip_not_enough_vswitch(exc):
                        continue  # set aside: try the next vSwitch
                    return
                self._succeeded()
                return
        except Exception as exc:
            self._classify(exc, op="create_eni")
        finally:
            self._creating -= 1
            self._promised -= first
            self._create_future -= cap - first
            self._ops -= 1
            self._update_gauges()
            self._kick()
            self._notify()

    # ------------------------------------------------------------------ release
    def _idle_since(self, ip: Ip) -> float:
        return ip.released_at if ip.released_at is not None else ip.created_at

    async def _release_idle(
        self, count: int, ops: trio.Nursery, *, older_than: float | None, why: str
    ) -> None:
        """Give ``count`` usable idle slots back: whole idle ENIs first (above ``min_eni``),
        then secondary addresses (on the ENIs with the fewest pods, longest idle first).
        Addresses in their reuse cooldown or held for a pod are kept."""
        now = self._now()
        cooldown = self.conf.ip_reuse_cooldown

        def old_enough(ip: Ip) -> bool:
            return not ip.cooling(now, cooldown) and (
                older_than is None or self._idle_since(ip) <= older_than
            )

        live = self._live_eni_count()
        candidates = [e for e in self._ready_enis() if not e.busy]
        whole = [
            e for e in candidates if e.ips and all(ip.idle(now) and old_enough(ip) for ip in e.ips.values())
        ]
        whole.sort(key=lambda e: (self._slots_total(e), e.device_index or 0))
        retired: set[str] = set()
        for eni in whole:
            if count <= 0 or live <= self.min_enis():
                break
            slots = self._slots_total(eni)
            if slots > count:
                continue
            if await self._retire_eni(eni, ops):
                retired.add(eni.eni_id)
                count -= slots
                live -= 1
                log.info("ipam.eni.retiring", eni_id=eni.eni_id, slots=slots, why=why)
        if count <= 0:
            return
        fams = self._families_needed()
        slots: list[tuple[tuple[bool, int, float], Eni, list[Ip]]] = []
        for eni in candidates:
            if eni.eni_id in retired or eni.state != "ready":
                continue
            per_fam = []
            for fam in fams:
                ips = [
                    ip
                    for ip in eni.ips.values()
                    if ip.family == fam and not ip.primary and ip.idle(now) and old_enough(ip)
                ]
                ips.sort(key=lambda ip: self._idle_since(ip))
                per_fam.append(ips)
            for group in zip(*per_fam, strict=False):
                first = group[0]
                key = (False, eni.owned_count(), self._idle_since(first))
                slots.append((key, eni, list(group)))
        slots.sort(key=lambda s: s[0])
        chosen: dict[str, tuple[Eni, list[Ip]]] = {}
        for _key, eni, group in slots[:count]:
            chosen.setdefault(eni.eni_id, (eni, []))[1].extend(group)
        for eni, ips in chosen.values():
            log.info("ipam.ip.releasing", eni_id=eni.eni_id, ips=[ip.address for ip in ips], why=why)
            ops.start_soon(self._unassign, eni, ips)

    # ------------------------------------------------------------------ observability
    def _update_gauges(self) -> None:
        for fam in (4, 6):
            ips = [
                ip
                for e in self._enis.values()
                if e.state == "ready"
                for ip in e.ips.values()
                if ip.family == fam
            ]
            now = self._now()
            label = f"ipv{fam}"
            _metrics.POOL_TOTAL.labels(type=label).set(len(ips))
            _metrics.POOL_IDLE.labels(type=label).set(sum(1 for ip in ips if ip.idle(now)))
            _metrics.POOL_ALLOCATED.labels(type=label).set(sum(1 for ip in ips if ip.owner is not None))
        insufficient, _ = self.insufficient()
        _metrics.INSUFFICIENT.set(1 if insufficient else 0)
        self._update_inhibit_gauges()
