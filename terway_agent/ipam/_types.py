"""Public data types and errors of the IPAM (re-exported by :mod:`terway_agent.ipam`)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

from terway_agent.errors import AllocationError, ConfigError
from terway_agent.types import Allocation, IPAssignment


@dataclass(frozen=True)
class EniRef:
    """The ENI an address lives on, with what a datapath needs to route through it.

    :ivar eni_id: the cloud id (``eni-...``).
    :ivar mac: lower-case MAC; the device is found by it.
    :ivar vswitch_id: the ENI's vSwitch.
    :ivar cidr4: the vSwitch's IPv4 CIDR (from the metadata service), or ``None``.
    :ivar gateway4: the vSwitch's IPv4 gateway, or ``None``.
    :ivar cidr6: the vSwitch's IPv6 CIDR, or ``None``.
    :ivar gateway6: the vSwitch's IPv6 gateway, or ``None``.
    :ivar device_index: the ENI's DeviceIndex on the instance, when known.
    :ivar trunk: a trunk ENI.
    """

    eni_id: str
    mac: str
    vswitch_id: str
    cidr4: str | None
    gateway4: str | None
    cidr6: str | None
    gateway6: str | None
    device_index: int | None = None
    trunk: bool = False

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON (for ``Allocation.extra`` and the ``pool`` command)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EniRef:
        """Inverse of :meth:`to_dict`; unknown keys are ignored."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


@dataclass(frozen=True)
class IPLease:
    """Addresses held by one attachment (``owner`` = ``"<container id>/<ifname>"``).

    ``ipv4``/``ipv6`` follow ``eni_conf.ip_stack``: ``ipv4`` only, both (``dual``,
    always on the same ENI), or ``ipv6`` only.
    """

    owner: str
    ipv4: str | None
    ipv6: str | None
    eni: EniRef

    def allocation(
        self, kind: str, *, service_cidrs: tuple[str, ...] = (), extra: Mapping[str, Any] | None = None
    ) -> Allocation:
        """The :class:`~terway_agent.types.Allocation` a mode returns for this lease: the
        addresses with their vSwitch prefix and gateway, and the ENI to route through."""
        return _allocation(self.ipv4, self.ipv6, self.eni, kind, service_cidrs, extra)


@dataclass(frozen=True)
class EniLease:
    """A whole ENI held by one attachment (exclusive ENI mode).

    ``ipv4`` is the ENI's primary IPv4 address; ``ipv6`` its IPv6 address when
    the stack is dual or IPv6.
    """

    owner: str
    eni: EniRef
    ipv4: str | None
    ipv6: str | None

    def allocation(
        self, kind: str, *, service_cidrs: tuple[str, ...] = (), extra: Mapping[str, Any] | None = None
    ) -> Allocation:
        """The :class:`~terway_agent.types.Allocation` a mode returns for this lease: the
        addresses with their vSwitch prefix and gateway, and the ENI to route through."""
        return _allocation(self.ipv4, self.ipv6, self.eni, kind, service_cidrs, extra)


@dataclass(frozen=True)
class ReconcileReport:
    """What :meth:`IPAM.reconcile` found and did.

    :ivar adopted_enis: ENIs of this node (tagged ``creator=terway`` and this
        instance) attached but unknown to the store, now in the pool.
    :ivar adopted_ips: addresses found on our ENIs but unknown to the store, now idle.
    :ivar released: ``owner=address`` pairs whose owner is not live; the address is idle again.
    :ivar dropped: store rows the cloud no longer has (idle addresses, ENIs gone).
    :ivar lost: ``owner=address`` pairs still owned whose address the cloud no
        longer has on this node (a disagreement ``terway-agent mapping`` shows).
    :ivar resumed: half-done operations a crash left and this pass finished.
    :ivar orphans_marked: our unattached ENIs seen for the first time (deleted
        after ``orphan_grace``).
    :ivar orphans_deleted: our unattached ENIs deleted.
    :ivar errors: problems met (the pass keeps going).
    """

    adopted_enis: tuple[str, ...] = ()
    adopted_ips: tuple[str, ...] = ()
    released: tuple[str, ...] = ()
    dropped: tuple[str, ...] = ()
    lost: tuple[str, ...] = ()
    resumed: tuple[str, ...] = ()
    orphans_marked: tuple[str, ...] = ()
    orphans_deleted: tuple[str, ...] = ()
    errors: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, list[str]]:
        return {k: list(v) for k, v in asdict(self).items()}

    @property
    def changed(self) -> bool:
        """Whether the pass changed anything."""
        return any(getattr(self, f.name) for f in fields(self) if f.name != "errors")


@dataclass(frozen=True)
class PoolTuning:
    """Internal timing knobs of the pools (not in ``eni_conf``).

    The agent reads them from its settings, ``plugin_config: {ipam: {...}}``;
    the defaults suit production.  docs/ipam.md lists them.

    :param batch_window: a shortage waits this long before calling the cloud so
        that concurrent requests are served by the same calls, seconds.
    :param alloc_timeout: how long an allocation waits for a refill before
        ``TemporaryError``, seconds.
    :param release_delay: idle addresses above ``max_pool_size`` are given back
        after this long (so that a burst of DELs is one call), seconds.
    :param eni_inhibit: ENI creation pauses this long after
        ``EniPerInstanceLimitExceeded`` (the original: 1 min), seconds.
    :param ip_inhibit: a vSwitch answering ``IpNotEnough`` / an ENI answering
        ``QuotaExceeded.PrivateIpAddress`` is set aside this long (10 min), seconds.
    :param vswitch_cache_ttl: DescribeVSwitches results are reused this long (10 min), seconds.
    :param orphan_grace: an unattached ENI of this node unknown to the store is
        deleted when still orphaned this long after it was first seen, seconds.
    :param retry_backoff_max: cap of the pause after failed refills, seconds.
    :param max_ips_per_call: addresses per Assign/Unassign call and secondary
        addresses per CreateNetworkInterface (the APIs' limit is 10).
    :param rollback_timeout: how long the shielded rollback of a half-created ENI may take, seconds.
    """

    batch_window: float = 0.1
    alloc_timeout: float = 60.0
    release_delay: float = 1.0
    eni_inhibit: float = 60.0
    ip_inhibit: float = 600.0
    vswitch_cache_ttl: float = 600.0
    orphan_grace: float = 300.0
    retry_backoff_max: float = 30.0
    max_ips_per_call: int = 10
    rollback_timeout: float = 60.0

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "max_ips_per_call":
                if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 10:
                    raise ConfigError(f"ipam.{f.name}", value, "an integer between 1 and 10")
            elif (
                isinstance(value, bool)
                or not isinstance(value, int | float)
                or value < 0
                or math.isnan(value)
            ):
                raise ConfigError(f"ipam.{f.name}", value, "a number of seconds >= 0")

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any] | None, *, field: str = "plugin_config.ipam") -> PoolTuning:
        """Validate ``data`` (``{knob: value}``); unknown knobs raise :class:`ConfigError`.

        Durations may be numbers of seconds or Go-style strings (``"500ms"``, ``"5m"``).
        """
        from terway_agent.config import parse_duration

        if data is None:
            return cls()
        if not isinstance(data, Mapping):
            raise ConfigError(field, data, "an object of IPAM tuning knobs")
        names = {f.name for f in fields(cls)}
        kw: dict[str, Any] = {}
        for key, value in data.items():
            if key not in names:
                raise ConfigError(f"{field}.{key}", value, "one of " + ", ".join(sorted(names)))
            if key == "max_ips_per_call":
                kw[key] = value
            else:
                kw[key] = parse_duration(f"{field}.{key}", value)
        try:
            return cls(**kw)
        except ConfigError as exc:
            raise ConfigError(f"{field}.{exc.field.removeprefix('ipam.')}", exc.value, exc.expected) from None


# ---------------------------------------------------------------------------------------------
# errors
# ---------------------------------------------------------------------------------------------


class AllocationInhibited(AllocationError):
    """The pool cannot grow for a while after the cloud refused (the original's "alloc inhibit").

    :ivar reason: the cloud's error code (``EniPerInstanceLimitExceeded``,
        ``InvalidVSwitchId.IpNotEnough``, ``QuotaExceeded.PrivateIpAddress``).
    :ivar until: wall-clock time (seconds since the epoch) the inhibit ends.
    """

    def __init__(self, message: str, *, reason: str, until: float, **details: Any) -> None:
        super().__init__(message, reason=reason, until=until, **details)
        self.reason = reason
        self.until = until


class VSwitchesExhausted(AllocationInhibited):
    """Every candidate vSwitch answered ``IpNotEnough`` recently: no address can be had."""


class PoolCapacityReached(AllocationError):
    """Every address this node's instance type allows (or ``max_eni`` permits) is in use."""


def _allocation(
    ipv4: str | None, ipv6: str | None, eni: EniRef, kind: str,
    service_cidrs: tuple[str, ...], extra: Mapping[str, Any] | None,
) -> Allocation:
    return Allocation(
        kind=kind,
        ipv4=IPAssignment.in_subnet(ipv4, eni.cidr4, eni.gateway4) if ipv4 else None,
        ipv6=IPAssignment.in_subnet(ipv6, eni.cidr6, eni.gateway6) if ipv6 else None,
        eni_id=eni.eni_id,
        mac=eni.mac,
        vswitch_id=eni.vswitch_id,
        service_cidrs=tuple(service_cidrs),
        extra=dict(extra or {}),
    )
