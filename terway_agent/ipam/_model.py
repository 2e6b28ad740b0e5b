"""The in-memory view of the pool: ENIs and their addresses (a cache of the store's rows)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ._types import EniRef


@dataclass(eq=False)
class Ip:
    """One address on one of our ENIs."""

    address: str
    family: int
    eni_id: str
    primary: bool = False
    state: str = "ready"  # ready | releasing
    owner: str | None = None
    pod: str = ""
    assigned_at: float | None = None
    released_at: float | None = None
    hold_for: str = ""
    hold_until: float | None = None
    created_at: float = 0.0
    #: the owner of a tombstone on this address (memory only, from the store's tombstones):
    #: the address came back to one of our ENIs while the pod that lost it still uses it;
    #: it is never handed out, released or counted as idle until that owner is released
    lost_for: str = ""

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Ip:
        return cls(
            address=row["address"],
            family=int(row["family"]),
            eni_id=row["eni_id"],
            primary=bool(row["is_primary"]),
            state=row["state"],
            owner=row["owner"],
            pod=row["pod"] or "",
            assigned_at=row["assigned_at"],
            released_at=row["released_at"],
            hold_for=row["hold_for"] or "",
            hold_until=row["hold_until"],
            created_at=float(row["created_at"]),
        )

    def row(self) -> dict[str, Any]:
        return {
            "address": self.address,
            "family": self.family,
            "eni_id": self.eni_id,
            "is_primary": int(self.primary),
            "state": self.state,
            "owner": self.owner,
            "pod": self.pod,
            "assigned_at": self.assigned_at,
            "released_at": self.released_at,
            "hold_for": self.hold_for,
            "hold_until": self.hold_until,
            "created_at": self.created_at,
        }

    def held(self, now: float) -> bool:
        """Held for a named pod (StatefulSet stickiness) right now."""
        return bool(self.hold_for) and self.hold_until is not None and self.hold_until > now

    def idle(self, now: float) -> bool:
        """Free and in the pool: ready, unowned, not held (may be cooling down)."""
        return self.owner is None and self.state == "ready" and not self.lost_for and not self.held(now)

    def cooling(self, now: float, cooldown: float) -> bool:
        return self.released_at is not None and now - self.released_at < cooldown

    def usable_by(self, pod: str, now: float, cooldown: float) -> bool:
        """Can be handed to ``pod`` now (a hold for ``pod`` itself skips the cooldown)."""
        if self.owner is not None or self.state != "ready" or self.lost_for:
            return False
        if self.held(now):
            return self.hold_for == pod
        return not self.cooling(now, cooldown)

    def usable_at(self, now: float, cooldown: float) -> float:
        """When this idle address becomes usable by any pod (wall clock)."""
        t = now
        if self.held(now) and self.hold_until is not None:
            t = max(t, self.hold_until)
        if self.released_at is not None:
            t = max(t, self.released_at + cooldown)
        return t

    def snapshot(self, now: float, cooldown: float) -> dict[str, Any]:
        return {
            "address": self.address,
            "family": self.family,
            "primary": self.primary,
            "state": self.state,
            "owner": self.owner,
            "pod": self.pod or None,
            "cooldown_left": round(max(self.released_at + cooldown - now, 0.0), 3)
            if self.released_at is not None and self.owner is None
            else 0.0,
            "hold_for": self.hold_for if self.held(now) else None,
            "hold_left": round(self.hold_until - now, 3) if self.held(now) and self.hold_until else 0.0,
            "lost_for": self.lost_for or None,
        }


@dataclass(eq=False)
class Eni:
    """One secondary ENI of this node managed by the pool."""

    eni_id: str
    pool: str
    mac: str
    vswitch_id: str
    state: str  # attaching | ready | releasing
    device_index: int | None = None
    primary_ip: str = ""
    cidr4: str | None = None
    gateway4: str | None = None
    cidr6: str | None = None
    gateway6: str | None = None
    trunk: bool = False
    owner: str | None = None
    pod: str = ""
    assigned_at: float | None = None
    released_at: float | None = None
    created_at: float = 0.0
    ips: dict[str, Ip] = field(default_factory=dict)
    #: cloud operations in flight on this ENI (the sync pass leaves it alone)
    busy: int = 0
    #: slots an in-flight operation will add
    inflight: int = 0
    #: QuotaExceeded.PrivateIpAddress: no Assign on this ENI before this (wall clock)
    ip_inhibit_until: float = 0.0
    ip_inhibit_reason: str = ""
    #: bumped whenever an operation starts or ends on this ENI (the sync pass
    #: ignores an ENI whose generation moved while it looked at the cloud)
    gen: int = 0
    #: trio time before which a failed release is not retried
    next_try: float = 0.0
    fail_count: int = 0

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Eni:
        return cls(
            eni_id=row["eni_id"],
            pool=row["pool"],
            mac=row["mac"],
            vswitch_id=row["vswitch_id"],
            state=row["state"],
            device_index=row["device_index"],
            primary_ip=row["primary_ip"] or "",
            cidr4=row["cidr4"],
            gateway4=row["gateway4"],
            cidr6=row["cidr6"],
            gateway6=row["gateway6"],
            trunk=bool(row["trunk"]),
            owner=row["owner"],
            pod=row["pod"] or "",
            assigned_at=row["assigned_at"],
            released_at=row["released_at"],
            created_at=float(row["created_at"]),
        )

    def row(self, now: float) -> dict[str, Any]:
        return {
            "eni_id": self.eni_id,
            "pool": self.pool,
            "mac": self.mac,
            "vswitch_id": self.vswitch_id,
            "state": self.state,
            "device_index": self.device_index,
            "primary_ip": self.primary_ip,
            "cidr4": self.cidr4,
            "gateway4": self.gateway4,
            "cidr6": self.cidr6,
            "gateway6": self.gateway6,
            "trunk": int(self.trunk),
            "owner": self.owner,
            "pod": self.pod,
            "assigned_at": self.assigned_at,
            "released_at": self.released_at,
            "created_at": self.created_at,
            "updated_at": now,
        }

    def ref(self) -> EniRef:
        return EniRef(
            eni_id=self.eni_id,
            mac=self.mac,
            vswitch_id=self.vswitch_id,
            cidr4=self.cidr4,
            gateway4=self.gateway4,
            cidr6=self.cidr6,
            gateway6=self.gateway6,
            device_index=self.device_index,
            trunk=self.trunk,
        )

    def family(self, family: int) -> list[Ip]:
        return [ip for ip in self.ips.values() if ip.family == family]

    def owned_count(self) -> int:
        return sum(1 for ip in self.ips.values() if ip.owner is not None)

    def quarantined(self) -> bool:
        """One of its addresses is tombstoned for a pod that lost it (see :attr:`Ip.lost_for`)."""
        return any(ip.lost_for for ip in self.ips.values())

    def ip_inhibited(self, now: float) -> bool:
        return self.ip_inhibit_until > now
