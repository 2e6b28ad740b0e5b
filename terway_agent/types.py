"""Public data types shared by the core and mode plugins.

Everything here is a frozen dataclass that converts to and from plain JSON
(``to_dict`` / ``from_dict``), because the core persists allocations and link
results in its store and replays them on DEL, CHECK, GC and repair -- possibly
after an agent restart, possibly by a newer version of the plugin.  Plugins
must therefore keep anything they need for teardown in ``Allocation.extra`` or
``LinkResult.state`` (JSON values only).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal

#: Kinds of allocation a mode can hand out.
AllocationKind = Literal["eni_ip", "eni", "member_eni", "local"]

#: Capability names a mode may declare in :class:`ModeInfo`.
KNOWN_CAPABILITIES = frozenset(
    {
        "ipv4",
        "ipv6",
        "dual_stack",
        "bandwidth",
        "network_policy",
        "trunk",
        "fixed_ip",
        "per_pod_vswitch",
        "per_pod_security_group",
        "host_peer",
        "ebpf",
        "service_acceleration",
        "hostport",
    }
)


def _clean(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, frozenset, set)):
        return [_clean(v) for v in value]
    return value


class _JSONMixin:
    def to_dict(self) -> dict[str, Any]:
        return _clean(asdict(self))  # type: ignore[call-overload]

    @classmethod
    def _known(cls, data: Mapping[str, Any]) -> dict[str, Any]:
        names = {f.name for f in fields(cls)}  # type: ignore[arg-type]
        return {k: v for k, v in data.items() if k in names}


# --------------------------------------------------------------------------
# Requests
# --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PodRef(_JSONMixin):
    """Who a request is for.  ``namespace``/``name`` come from CNI_ARGS
    (``K8S_POD_NAMESPACE``/``K8S_POD_NAME``); outside Kubernetes the namespace
    is empty and the name is the container id."""

    namespace: str
    name: str
    uid: str = ""

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PodRef:
        return cls(**cls._known(data))


@dataclass(frozen=True, slots=True)
class Bandwidth(_JSONMixin):
    """Traffic shaping for a pod, in **bits per second** (0 = unlimited).

    Comes from the CNI ``bandwidth`` capability (runtimeConfig) or the legacy
    ``k8s.aliyun.com/ingress-bandwidth`` / ``egress-bandwidth`` annotations.
    """

    ingress_bps: int = 0
    egress_bps: int = 0

    def __bool__(self) -> bool:
        return bool(self.ingress_bps or self.egress_bps)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Bandwidth:
        return cls(**cls._known(data))


@dataclass(frozen=True)
class PodRequest(_JSONMixin):
    """One CNI operation for one attachment (container id + interface name).

    :ivar verb: ``ADD``, ``DEL``, ``CHECK`` (``GC`` and ``STATUS`` are not per pod).
    :ivar netns: path of the pod's network namespace; may be ``""`` on DEL.
    :ivar network: the CNI network name (``name`` of the conflist).
    :ivar netconf: the plugin's own network configuration (the conflist entry
        for ``type: terway``), validated by the core.
    :ivar runtime_config: the runtime's ``runtimeConfig`` (declared capabilities).
    :ivar annotations: pod annotations when the agent knows the pod (Kubernetes).
    :ivar owner_kind: the kind of the pod's controller (``StatefulSet``...), if known.
    """

    verb: str
    container_id: str
    ifname: str
    netns: str
    pod: PodRef
    network: str = "terway"
    cni_version: str = "1.0.0"
    netconf: Mapping[str, Any] = field(default_factory=dict)
    runtime_config: Mapping[str, Any] = field(default_factory=dict)
    cni_args: Mapping[str, str] = field(default_factory=dict)
    annotations: Mapping[str, str] = field(default_factory=dict)
    owner_kind: str = ""
    bandwidth: Bandwidth = field(default_factory=Bandwidth)
    prev_result: Mapping[str, Any] | None = None

    @property
    def attachment(self) -> tuple[str, str]:
        return (self.container_id, self.ifname)

    @property
    def owner(self) -> str:
        """``"<container id>/<ifname>"``: the key that owns what this attachment
        reserves (leases, IPAM addresses), stable across agent restarts."""
        return f"{self.container_id}/{self.ifname}"

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PodRequest:
        kw = cls._known(data)
        kw["pod"] = PodRef.from_dict(kw["pod"])
        if "bandwidth" in kw:
            kw["bandwidth"] = Bandwidth.from_dict(kw["bandwidth"] or {})
        return cls(**kw)


# --------------------------------------------------------------------------
# Allocation (what the IPAM side hands out)
# --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class IPAssignment(_JSONMixin):
    """One pod address with its subnet (the vSwitch CIDR) and gateway."""

    address: str
    prefix_len: int
    gateway: str = ""

    def __post_init__(self) -> None:
        ip = ipaddress.ip_address(self.address)
        if not 0 <= self.prefix_len <= ip.max_prefixlen:
            raise ValueError(f"prefix_len {self.prefix_len} out of range for {self.address}")
        if self.gateway:
            ipaddress.ip_address(self.gateway)

    @classmethod
    def in_subnet(cls, address: str, cidr: str | None, gateway: str | None = None) -> IPAssignment:
        """``address`` with the prefix of ``cidr`` (a host prefix when the subnet is unknown)."""
        if cidr:
            prefix = ipaddress.ip_network(cidr, strict=False).prefixlen
        else:
            prefix = ipaddress.ip_address(address).max_prefixlen
        return cls(address, prefix, gateway or "")

    @property
    def family(self) -> int:
        return ipaddress.ip_address(self.address).version

    @property
    def interface(self) -> ipaddress.IPv4Interface | ipaddress.IPv6Interface:
        return ipaddress.ip_interface(f"{self.address}/{self.prefix_len}")

    @property
    def network(self) -> str:
        return str(self.interface.network)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> IPAssignment:
        return cls(**cls._known(data))


@dataclass(frozen=True)
class Allocation(_JSONMixin):
    """Network resources held by one attachment.

    The core commits this to its store before the CNI gets an answer, and hands
    the stored copy back to ``release``, ``teardown_link`` and ``check_link``.

    :ivar kind: ``eni_ip`` (a secondary IP of a shared ENI), ``eni`` (a whole
        ENI), ``member_eni`` (a trunk member ENI), ``local`` (not from the cloud).
    :ivar eni_id: the ENI the address lives on (cloud id), if any.
    :ivar mac: that ENI's MAC address, lower-case.
    :ivar vid: VLAN id of a trunk member ENI.
    :ivar extra: mode-private JSON data.
    """

    kind: AllocationKind
    ipv4: IPAssignment | None = None
    ipv6: IPAssignment | None = None
    eni_id: str = ""
    mac: str = ""
    vswitch_id: str = ""
    trunk_eni_id: str = ""
    vid: int | None = None
    service_cidrs: tuple[str, ...] = ()
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.ipv4 is None and self.ipv6 is None:
            raise ValueError("an Allocation needs an IPv4 or an IPv6 address")
        if self.ipv4 is not None and self.ipv4.family != 4:
            raise ValueError(f"ipv4 holds {self.ipv4.address}")
        if self.ipv6 is not None and self.ipv6.family != 6:
            raise ValueError(f"ipv6 holds {self.ipv6.address}")

    @property
    def addresses(self) -> tuple[IPAssignment, ...]:
        return tuple(a for a in (self.ipv4, self.ipv6) if a is not None)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Allocation:
        kw = cls._known(data)
        for fam in ("ipv4", "ipv6"):
            if kw.get(fam) is not None:
                kw[fam] = IPAssignment.from_dict(kw[fam])
        if "service_cidrs" in kw:
            kw["service_cidrs"] = tuple(kw["service_cidrs"])
        return cls(**kw)


# --------------------------------------------------------------------------
# Link result (what setup_link made: the CNI result plus teardown state)
# --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CNIInterface(_JSONMixin):
    name: str
    mac: str = ""
    sandbox: str = ""
    mtu: int | None = None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CNIInterface:
        return cls(**cls._known(data))


@dataclass(frozen=True, slots=True)
class CNIIP(_JSONMixin):
    address: str  # CIDR notation
    gateway: str = ""
    interface: int | None = None  # index into LinkResult.interfaces

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CNIIP:
        return cls(**cls._known(data))


@dataclass(frozen=True, slots=True)
class CNIRoute(_JSONMixin):
    dst: str
    gw: str = ""
    mtu: int | None = None
    advmss: int | None = None
    priority: int | None = None
    table: int | None = None
    scope: int | None = None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CNIRoute:
        return cls(**cls._known(data))


@dataclass(frozen=True)
class LinkResult(_JSONMixin):
    """What ``setup_link`` made.

    ``interfaces``/``ips``/``routes``/``dns`` become the CNI result.  ``state``
    is mode-private JSON the core stores and hands back to ``teardown_link``,
    ``check_link``, ``gc`` and ``repair`` (e.g. the host veth name, the plan).
    """

    interfaces: tuple[CNIInterface, ...] = ()
    ips: tuple[CNIIP, ...] = ()
    routes: tuple[CNIRoute, ...] = ()
    dns: Mapping[str, Any] = field(default_factory=dict)
    state: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LinkResult:
        kw = cls._known(data)
        kw["interfaces"] = tuple(CNIInterface.from_dict(i) for i in kw.get("interfaces", ()))
        kw["ips"] = tuple(CNIIP.from_dict(i) for i in kw.get("ips", ()))
        kw["routes"] = tuple(CNIRoute.from_dict(i) for i in kw.get("routes", ()))
        return cls(**kw)


@dataclass(frozen=True, slots=True)
class Attachment(_JSONMixin):
    """A stored attachment, as handed to ``gc`` and ``repair``."""

    container_id: str
    ifname: str
    network: str
    pod: PodRef
    netns: str
    mode: str
    state: str
    allocation: Allocation | None
    link: LinkResult | None
    request: Mapping[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> tuple[str, str]:
        return (self.container_id, self.ifname)


# --------------------------------------------------------------------------
# Describing a mode
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class InstanceLimits:
    """ENI limits of an instance type (fields of ``DescribeInstanceTypes``); pod
    limits are computed from them (seed 003).

    :param instance_type: ``ecs.g7.4xlarge``.
    :param eni_quantity: ``EniQuantity``, ENIs incl. the primary one.
    :param eni_private_ip_quantity: ``EniPrivateIpAddressQuantity``, IPv4 addresses per ENI.
    :param eni_ipv6_quantity: ``EniIpv6AddressQuantity``, IPv6 addresses per ENI.
    :param eni_total_quantity: ``EniTotalQuantity``, ENIs incl. trunk members.
    :param trunk_supported: ``EniTrunkSupported``.
    """

    instance_type: str
    eni_quantity: int
    eni_private_ip_quantity: int
    eni_ipv6_quantity: int = 0
    eni_total_quantity: int = 0
    trunk_supported: bool = False

    @classmethod
    def from_api(cls, item: Mapping[str, Any]) -> InstanceLimits:
        """From one ``InstanceTypes.InstanceType[]`` entry of ``DescribeInstanceTypes``."""

        def num(key: str) -> int:
            value = item.get(key)
            try:
                return max(int(value or 0), 0)
            except (TypeError, ValueError):
                return 0

        eni = num("EniQuantity")
        return cls(
            instance_type=str(item.get("InstanceTypeId") or ""),
            eni_quantity=eni,
            eni_private_ip_quantity=num("EniPrivateIpAddressQuantity"),
            eni_ipv6_quantity=num("EniIpv6AddressQuantity"),
            eni_total_quantity=num("EniTotalQuantity") or eni,
            trunk_supported=bool(item.get("EniTrunkSupported")),
        )

    @property
    def shared_pods(self) -> int:
        """Shared-ENI pods: ``(EniQuantity - 1) x EniPrivateIpAddressQuantity``."""
        return max(self.eni_quantity - 1, 0) * self.eni_private_ip_quantity

    @property
    def trunk_member_pods(self) -> int:
        """Trunk member-ENI pods: ``EniTotalQuantity - EniQuantity`` (0 without trunk support)."""
        if not self.trunk_supported:
            return 0
        return max(self.eni_total_quantity - self.eni_quantity, 0)

    @property
    def exclusive_pods(self) -> int:
        """Exclusive-ENI pods: ``EniQuantity - 1``."""
        return max(self.eni_quantity - 1, 0)

    @property
    def supports_ipv6(self) -> bool:
        return self.eni_ipv6_quantity > 0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> InstanceLimits:
        """Inverse of :meth:`to_json`; raises ``KeyError``/``TypeError`` on malformed data."""
        return cls(
            instance_type=str(data["instance_type"]),
            eni_quantity=int(data["eni_quantity"]),
            eni_private_ip_quantity=int(data["eni_private_ip_quantity"]),
            eni_ipv6_quantity=int(data["eni_ipv6_quantity"]),
            eni_total_quantity=int(data["eni_total_quantity"]),
            trunk_supported=bool(data["trunk_supported"]),
        )


@dataclass(frozen=True)
class ModeInfo:
    """What a mode plugin says about itself (hook ``terway_mode_info``).

    :ivar name: the entry-point name (``shared_eni``).
    :ivar implemented: False for a registered mode that refuses to serve yet;
        the agent then stops with "mode X is not implemented yet".
    :ivar exclusivity: ``shared`` or ``exclusive``; the agent refuses to start
        when a node that ran pods switches between the two.
    :ivar capabilities: names from :data:`KNOWN_CAPABILITIES`.
    :ivar pod_limit_formula: human-readable formula (docs, ``terway-agent plugins``).
    :ivar pod_limit: computes the node's pod limit from the instance type's limits.
    :ivar min_pod_limit: a node must have *more* than this many pods to join.
    """

    name: str
    version: str
    summary: str
    implemented: bool = True
    exclusivity: Literal["shared", "exclusive"] = "shared"
    capabilities: frozenset[str] = frozenset()
    pod_limit_formula: str = ""
    pod_limit: Callable[[InstanceLimits], int] | None = None
    min_pod_limit: int = 0
    needs_cloud: bool = True

    def __post_init__(self) -> None:
        unknown = set(self.capabilities) - KNOWN_CAPABILITIES
        if unknown:
            raise ValueError(
                f"mode {self.name}: unknown capabilities {sorted(unknown)}; known: {sorted(KNOWN_CAPABILITIES)}"
            )


@dataclass(frozen=True, slots=True)
class Status:
    """Answer of ``terway_status``: can this node serve ADD right now?

    ``code`` 0 = available, 50 = unavailable (e.g. no IPs can be allocated),
    51 = unavailable and existing pods may have limited connectivity.
    """

    code: int = 0
    message: str = ""

    @property
    def ok(self) -> bool:
        return self.code == 0


@dataclass(frozen=True, slots=True)
class RepairReport:
    """What ``terway_repair`` found and fixed."""

    checked: int = 0
    repaired: tuple[str, ...] = ()
    failed: tuple[str, ...] = ()
