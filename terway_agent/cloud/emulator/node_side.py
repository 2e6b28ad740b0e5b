"""The seam between the cloud emulator's state and the simulated nodes' kernels.

The emulator (``terway_agent.cloud.emulator``) keeps the cloud's state: VPCs,
vSwitches, instances, ENIs and their IPs.  A :class:`NodeSide` makes that state
physical: a simulated node is a network namespace, an attached ENI is a veth
end inside it (this kernel has no dummy device), and the other end sits in a
shared "VPC" namespace that routes every vSwitch CIDR and answers as each
vSwitch gateway.  Packets then really flow between simulated nodes.

The emulator calls these methods from its own threads, serialised (never two at
once), after the state change is committed and before the API call that caused
it completes (attach: once the ENI reaches InUse).  Every method is idempotent:
calling it again with the same data changes nothing.

``NullNodeSide`` does nothing (API-only tests); ``NetnsNodeSide`` in
``terway_agent.cloud.emulator.netns_node_side`` is the real one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True)
class VSwitchNet:
    vswitch_id: str
    cidr4: str  # "192.168.32.0/19"
    gateway4: str  # broadcast - 2 on Alibaba Cloud: "192.168.63.253" for 192.168.32.0/19; see docs/cloud.md
    cidr6: str | None = None
    gateway6: str | None = None


@dataclass(frozen=True)
class EniNet:
    eni_id: str
    mac: str  # lower-case "00:16:3e:xx:xx:xx"
    device_index: int  # 0 = primary ENI; the node-side device is named eth<device_index>
    vswitch: VSwitchNet
    primary_ip: str
    secondary_ipv4s: tuple[str, ...] = ()
    ipv6s: tuple[str, ...] = ()
    # Trunk/member ENIs: a member ENI has no device of its own; its traffic
    # rides the trunk ENI's device tagged with vlan_id.
    trunk_eni_id: str | None = None
    vlan_id: int | None = None


@dataclass(frozen=True)
class ServiceAddresses:
    """Addresses the emulator's HTTP servers listen on inside the VPC namespace,
    reachable from every node through its primary ENI (eth0) like the real
    100.100.100.200 metadata service."""

    metadata: str = "100.100.100.200"
    openapi: str = "100.100.100.201"
    extra: tuple[str, ...] = field(default_factory=tuple)


class NodeSide(Protocol):
    def start(self, vswitches: Sequence[VSwitchNet], services: ServiceAddresses) -> None:
        """Create the VPC namespace: forwarding on, each vSwitch gateway answering
        ARP/ND, the service addresses on its loopback."""

    def vswitch_added(self, vswitch: VSwitchNet) -> None: ...

    def add_instance(self, instance_id: str, netns: str, primary: EniNet) -> None:
        """Create (if missing) the node namespace ``netns`` and its primary ENI
        ``eth0`` holding ``primary.primary_ip`` with the vSwitch prefix and a
        default route via the vSwitch gateway."""

    def eni_attached(self, instance_id: str, eni: EniNet) -> None:
        """A device with ``eni.mac`` named ``eth<device_index>`` appears (down)
        in the instance's namespace; its IPs become reachable through it."""

    def eni_ips_changed(self, instance_id: str, eni: EniNet) -> None:
        """The VPC routes for ``eni``'s secondary IPv4/IPv6 addresses now match ``eni``."""

    def eni_detached(self, instance_id: str, eni: EniNet) -> None:
        """The device goes away wherever it is now (node or pod namespace) and its
        routes leave the VPC namespace."""

    def remove_instance(self, instance_id: str) -> None: ...

    def close(self) -> None:
        """Remove every namespace, device and route this node side created."""


class NullNodeSide:
    """A node side that does nothing: the emulator serves the API only."""

    def start(self, vswitches: Sequence[VSwitchNet], services: ServiceAddresses) -> None:
        return None

    def vswitch_added(self, vswitch: VSwitchNet) -> None:
        return None

    def add_instance(self, instance_id: str, netns: str, primary: EniNet) -> None:
        return None

    def eni_attached(self, instance_id: str, eni: EniNet) -> None:
        return None

    def eni_ips_changed(self, instance_id: str, eni: EniNet) -> None:
        return None

    def eni_detached(self, instance_id: str, eni: EniNet) -> None:
        return None

    def remove_instance(self, instance_id: str) -> None:
        return None

    def close(self) -> None:
        return None
