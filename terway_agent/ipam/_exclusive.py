"""The exclusive-ENI pool: whole ENIs, one per pod.

A slot is an ENI.  ``min_pool_size``/``max_pool_size`` count idle ENIs; an ENI
given back is idle again after ``ip_reuse_cooldown`` (its primary address
would otherwise be reused at once) and is deleted when the idle ENIs exceed
``max_pool_size``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import trio

from terway_agent.log import get_logger

from . import _db, _metrics
from ._base import IPAM, STORE_REFUSED, _owner_ok, is_eni_quota, is_ip_not_enough_vswitch
from ._model import Eni
from ._types import EniLease

if TYPE_CHECKING:  # pragma: no cover
    from terway_agent.types import PodRef

log = get_logger(__name__)


class ExclusivePool(IPAM):
    """Whole ENIs (see :class:`terway_agent.ipam.IPAM` for the API)."""

    kind = "exclusive"

    def _slot_capacity(self) -> int:
        return 1

    def _cooling(self, eni: Eni, now: float) -> bool:
        return eni.released_at is not None and now - eni.released_at < self.conf.ip_reuse_cooldown

    def _idle(self) -> list[Eni]:
        return [e for e in self._ready_enis() if e.owner is None and not e.busy and not e.quarantined()]

    def _usable_slots(self, now: float) -> int:
        return sum(1 for e in self._idle() if not self._cooling(e, now))

    def _idle_slots(self, now: float) -> int:
        return len(self._idle())

    def _next_usable(self, now: float) -> float | None:
        times = [
            (e.released_at or now) + self.conf.ip_reuse_cooldown
            for e in self._idle()
            if self._cooling(e, now)
        ]
        return min(times) if times else None

    def _can_grow(self, now: float) -> bool:
        return (
            self._live_eni_count() < self.max_enis()
            and not self._eni_inhibited(now)
            and bool(self._vsw.usable())
        )

    # ------------------------------------------------------------------ allocation
    def _lease_of(self, eni: Eni) -> EniLease:
        v6 = next((ip.address for ip in eni.ips.values() if ip.family == 6), None)
        return EniLease(
            owner=eni.owner or "",
            eni=eni.ref(),
            ipv4=eni.primary_ip if self.need4 else None,
            ipv6=v6 if self.need6 else None,
        )

    def _owned_eni(self, owner: str) -> Eni | None:
        return next((e for e in self._enis.values() if e.owner == owner), None)

    async def allocate_eni(self, owner: str, pod: PodRef) -> EniLease:
        _owner_ok(owner)
        await self._ensure_loaded()
        pod_key = pod.key

        async def attempt() -> EniLease | object | None:
            eni = self._owned_eni(owner)
            if eni is not None:
                return self._lease_of(eni)
            now = self._now()
            cands = [e for e in self._idle() if not self._cooling(e, now)]
            if self.need6:
                cands = [e for e in cands if e.family(6)]
            if not cands:
                return None
            cands.sort(key=lambda e: (e.released_at is not None, e.released_at or 0.0, e.device_index or 0))
            eni = cands[0]
            if await self._commit_take(eni, owner, pod_key, now):
                return self._taken(eni, owner, pod_key, now)
            return STORE_REFUSED

        return await self._take(owner, attempt)

    async def _commit_take(self, eni: Eni, owner: str, pod_key: str, now: float) -> bool:
        """Commit ``owner``'s take of ``eni``; ``False`` when the store refused (the ENI's view
        is then rebuilt from its rows: they win)."""
        eni.owner, eni.pod = owner, pod_key  # reserved in memory before the commit
        for ip in eni.ips.values():
            ip.owner, ip.pod = owner, pod_key
        self._unwait(owner)

        def revert() -> None:
            if eni.owner == owner:
                eni.owner, eni.pod = None, ""
            for ip in eni.ips.values():
                if ip.owner == owner:
                    ip.owner, ip.pod = None, ""

        try:
            with trio.CancelScope(shield=True):
                await self._store.acall(_db.take_eni, self._store, eni.eni_id, owner, pod_key, now)
        except _db.OwnershipConflict as exc:
            log.error("ipam.allocate.conflict", owner=owner, eni_id=eni.eni_id, error=str(exc))
            try:
                with trio.CancelScope(shield=True):
                    await self._resync_eni(eni)
            except BaseException:
                revert()
                raise
            return False
        except BaseException:
            revert()
            raise
        return True

    def _taken(self, eni: Eni, owner: str, pod_key: str, now: float) -> EniLease:
        eni.assigned_at = now
        for ip in eni.ips.values():
            ip.assigned_at = now
        self._reindex()
        self._update_gauges()
        log.info("ipam.eni.allocated", owner=owner, pod=pod_key, eni_id=eni.eni_id, mac=eni.mac)
        return self._lease_of(eni)

    async def release_eni(self, owner: str, *, discard: bool = False) -> None:
        """Give ``owner``'s ENI back to the pool; with ``discard`` it is detached and
        deleted instead (its NIC was lost: it must never be handed out again)."""
        _owner_ok(owner)
        await self._ensure_loaded()
        eni = self._owned_eni(owner)
        lost = self._lost_of(owner)
        if eni is None:
            if lost:  # its ENI vanished: only the tombstones are left
                now = self._now()
                with trio.CancelScope(shield=True):
                    await self._store.acall(_db.release_eni_owner, self._store, owner, now)
                self._clear_lost(lost, now)
                log.warning("ipam.ip.tombstones_released", owner=owner, ips=lost)
                self._update_gauges()
                self._notify()
            return
        now = self._now()
        with trio.CancelScope(shield=True):
            await self._store.acall(_db.release_eni_owner, self._store, owner, now)
            self._clear_lost(lost, now)
            eni.owner, eni.pod, eni.released_at = None, "", now
            for ip in eni.ips.values():
                ip.owner, ip.pod, ip.released_at = None, "", now
            self._reindex()
            if discard and await self._mark_retiring(eni):
                log.warning("ipam.eni.discarded", owner=owner, eni_id=eni.eni_id)
        log.info("ipam.eni.released_by_owner", owner=owner, eni_id=eni.eni_id, discard=discard)
        self._update_gauges()
        self._kick_maint()
        self._notify()

    async def lease_of(self, owner: str) -> EniLease | None:
        await self._ensure_loaded()
        eni = self._owned_eni(owner)
        return None if eni is None else self._lease_of(eni)

    # ------------------------------------------------------------------ refill
    async def _plan(self, ops: trio.Nursery) -> None:
        now = self._now()
        conf = self.conf
        need = self._pending + conf.min_pool_size - self._usable_slots(now) - self._promised
        want = max(need, self.min_enis() - self._live_eni_count())
        free = self.max_enis() - self._live_eni_count()
        if want <= 0 or free <= 0 or self._eni_inhibited(now) or not self._vsw.usable():
            return
        for _ in range(min(want, free)):
            self._creating += 1
            self._promised += 1
            self._ops += 1
            ops.start_soon(self._op_create)

    async def _op_create(self) -> None:
        try:
            vswitches = await self._vsw.choose()
            if not vswitches:
                self._last_error = "create ENI: no usable vSwitch (every candidate is set aside or full)"
                self._fail_gen += 1
                return
            for vsw in vswitches:
                try:
                    await self._create_eni(vsw, 0, 1 if self.need6 else 0)
                except Exception as exc:
                    code = getattr(exc, "code", "")
                    if is_ip_not_enough_vswitch(exc):
                        self._set_vswitch_aside(vsw, code)
                        self._last_error = f"create_eni: {getattr(exc, 'message', exc)}"
                        self._fail_gen += 1
                        continue
                    if is_eni_quota(exc):
                        self._inhibit_enis(code)
                        self._last_error = f"create_eni: {getattr(exc, 'message', exc)}"
                        self._fail_gen += 1
                        return
                    self._failed(exc, op="create_eni", vswitch_id=vsw)
                    return
                self._succeeded()
                return
        except Exception as exc:
            self._failed(exc, op="create_eni")
        finally:
            self._creating -= 1
            self._promised -= 1
            self._ops -= 1
            self._update_gauges()
            self._kick()
            self._notify()

    # ------------------------------------------------------------------ release
    async def _release_idle(
        self, count: int, ops: trio.Nursery, *, older_than: float | None, why: str
    ) -> None:
        """Retire ``count`` idle ENIs out of their reuse cooldown (above ``min_eni``), longest
        idle first; an ENI given back is subject to max_pool_size once its cooldown is over."""
        now = self._now()
        idle = [
            e
            for e in self._idle()
            if not self._cooling(e, now)
            and (
                older_than is None
                or (e.released_at if e.released_at is not None else e.created_at) <= older_than
            )
        ]
        idle.sort(key=lambda e: e.released_at or e.created_at)  # longest idle first
        live = self._live_eni_count()
        for eni in idle:
            if count <= 0 or live <= self.min_enis():
                break
            if await self._retire_eni(eni, ops):
                count -= 1
                live -= 1
                log.info("ipam.eni.retiring", eni_id=eni.eni_id)

    # ------------------------------------------------------------------ observability
    def _update_gauges(self) -> None:
        ready = self._ready_enis()
        _metrics.POOL_TOTAL.labels(type="eni").set(len(ready))
        _metrics.POOL_IDLE.labels(type="eni").set(sum(1 for e in ready if e.owner is None))
        _metrics.POOL_ALLOCATED.labels(type="eni").set(sum(1 for e in ready if e.owner is not None))
        insufficient, _ = self.insufficient()
        _metrics.INSUFFICIENT.set(1 if insufficient else 0)
        self._update_inhibit_gauges()
