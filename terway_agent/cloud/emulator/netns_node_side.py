"""The emulator's state made physical in network namespaces.

Layout (all of it built with :mod:`terway_agent.datapath` plans):

* one **VPC namespace** (named by the constructor) plays the VPC fabric: IPv4
  and IPv6 forwarding on, rp_filter off; every vSwitch gateway and every
  :class:`ServiceAddresses` address sits on its loopback (ARP answers for any
  local address, arp_ignore=0); an IPv6 gateway sits on each ENI's link
  (``nodad``) because neighbour discovery only answers for addresses on the
  receiving link;
* each **instance** is a namespace (created if missing, named by the
  topology) whose primary ENI ``eth0`` is a veth with the ENI's MAC, holding
  the primary IP with the vSwitch prefix and a default route via the gateway --
  like a VM after DHCP (its first IPv6 address as a /128 with a default route
  via the IPv6 gateway; no duplicate address detection pending, like a NIC
  that has been up for long);
* the VPC ends answer ARP for every routed address (proxy ARP, no delay),
  like Alibaba's vSwitch ARP proxy, so hosts of one subnet reach each other
  through the VPC;
* each attached **ENI** is a veth whose node end carries the ENI MAC and is
  named ``eth<device_index>`` (down, no address: a freshly hot-plugged NIC);
  the other end sits in the VPC namespace under a name derived from the ENI id;
* the VPC knows where every address lives, like the real SDN: for the primary
  and every secondary IPv4 (and IPv6) of an ENI a route ``<ip>/32 dev <peer>``
  and a PERMANENT neighbour ``<ip> -> <ENI MAC>`` (an ENI does not answer ARP
  for secondary IPs that only a pod holds).

Detaching deletes the VPC end, which takes the node end with it wherever it
is (in the node, or moved into a pod by exclusive-ENI mode).  Trunk member
ENIs get no device: their VLAN id is recorded (:meth:`NetnsNodeSide.member_vlans`)
for the eBPF VLAN tagging a later trunk mode brings.

The emulator calls these methods serialised; a lock makes that a guarantee.
Every method is idempotent.
"""

from __future__ import annotations

import errno
import hashlib
import ipaddress
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field

from terway_agent import datapath as dp
from terway_agent.cloud.emulator.node_side import EniNet, ServiceAddresses, VSwitchNet
from terway_agent.datapath import netns as _netns
from terway_agent.datapath._rtnl import NetlinkError, Rtnl
from terway_agent.errors import DatapathError, NotFound
from terway_agent.log import get_logger

log = get_logger(__name__)

__all__ = ["NetnsNodeSide"]


@dataclass
class _Eni:
    net: EniNet
    vpc_link: str | None  # None: trunk member, no device
    routes: dp.Plan = field(default_factory=dp.Plan)


@dataclass
class _Instance:
    instance_id: str
    netns: str  # path
    created: bool
    enis: dict[str, _Eni] = field(default_factory=dict)
    member_vlans: dict[str, int] = field(default_factory=dict)


def _vpc_link_name(eni_id: str) -> str:
    """The VPC end of an ENI: ``v`` + 12 hex of sha1(eni id) -- stable and unique per ENI."""
    return "v" + hashlib.sha1(eni_id.encode()).hexdigest()[:12]


class NetnsNodeSide:
    """A :class:`~terway_agent.cloud.emulator.node_side.NodeSide` backed by real namespaces.

    :param vpc_netns: name (or path) of the VPC namespace; created by
        :meth:`start` if missing and removed by :meth:`close` if this object
        created it.
    :param link_mtu: MTU of every ENI veth (1500 like an ECS ENI).
    """

    def __init__(self, vpc_netns: str, *, link_mtu: int = 1500) -> None:
        self._vpc_name = vpc_netns
        self.vpc_netns = _netns.netns_path(vpc_netns)
        self._mtu = link_mtu
        self._lock = threading.RLock()
        self._vpc_created = False
        self._started = False
        self._vswitches: dict[str, VSwitchNet] = {}
        self._services = ServiceAddresses()
        self._base = dp.Plan()
        self._instances: dict[str, _Instance] = {}

    # ------------------------------------------------------------ inspection

    def node_netns(self, instance_id: str) -> str:
        """The path of an instance's namespace."""
        with self._lock:
            return self._instances[instance_id].netns

    def vpc_link(self, eni_id: str) -> str:
        """The name of an ENI's end in the VPC namespace."""
        return _vpc_link_name(eni_id)

    def member_vlans(self, instance_id: str) -> dict[str, int]:
        """Trunk member ENIs of an instance: ``{eni_id: vlan_id}``."""
        with self._lock:
            inst = self._instances.get(instance_id)
            return dict(inst.member_vlans) if inst else {}

    # ------------------------------------------------------------ the VPC

    def start(self, vswitches: Sequence[VSwitchNet], services: ServiceAddresses) -> None:
        with self._lock:
            if not _netns.exists(self.vpc_netns):
                _netns.create(self._vpc_name)
                self._vpc_created = True
            self._services = services
            for vs in vswitches:
                self._vswitches[vs.vswitch_id] = vs
            try:
                self._apply_base()
            except BaseException:
                self.close()  # leave nothing half-built behind
                raise
            self._started = True
            log.info("node_side.vpc.ready", netns=self.vpc_netns, vswitches=len(self._vswitches))

    def vswitch_added(self, vswitch: VSwitchNet) -> None:
        with self._lock:
            self._vswitches[vswitch.vswitch_id] = vswitch
            if self._started:
                self._apply_base()

    def _apply_base(self) -> None:
        vpc = self.vpc_netns
        objs: list[dp.PlanObject] = [
            dp.LinkState(name="lo", netns=vpc),
            dp.Sysctl(path="net/ipv4/conf/all/forwarding", value="1", netns=vpc),
            dp.Sysctl(path="net/ipv4/conf/default/forwarding", value="1", netns=vpc),
            dp.Sysctl(path="net/ipv4/conf/all/rp_filter", value="0", netns=vpc),
            dp.Sysctl(path="net/ipv4/conf/default/rp_filter", value="0", netns=vpc),
            dp.Sysctl(path="net/ipv6/conf/all/forwarding", value="1", netns=vpc),
            # The vSwitch answers ARP for every address of the VPC (Alibaba's
            # ARP proxy): a node asking for a neighbour in its subnet gets the
            # VPC end's MAC and the packet is routed.  New links inherit these.
            dp.Sysctl(path="net/ipv4/conf/default/proxy_arp", value="1", netns=vpc),
            dp.Sysctl(path="net/ipv4/conf/default/proxy_arp_pvlan", value="1", netns=vpc),
            # (proxy_delay is per link: a child namespace has no neigh/default)
        ]
        addresses = [self._services.metadata, self._services.openapi, *self._services.extra]
        addresses += [vs.gateway4 for vs in self._vswitches.values()]
        for ip in dict.fromkeys(addresses):
            plen = 32 if ipaddress.ip_address(ip).version == 4 else 128
            objs.append(dp.Address(dev="lo", address=f"{ip}/{plen}", netns=vpc, nodad=plen == 128))
        new = dp.Plan(tuple(objs))
        dp.apply(new)
        dp.prune(self._base, new)
        self._base = new

    # ------------------------------------------------------------ instances

    def add_instance(self, instance_id: str, netns: str, primary: EniNet) -> None:
        with self._lock:
            inst = self._instances.get(instance_id)
            if inst is None:
                path = _netns.netns_path(netns)
                created = False
                if not _netns.exists(path):
                    _netns.create(netns)
                    created = True
                inst = _Instance(instance_id, path, created)
                self._instances[instance_id] = inst
            node = inst.netns
            vs = primary.vswitch
            prefix4 = ipaddress.ip_network(vs.cidr4).prefixlen
            # The primary ENI of a running VM finished duplicate address
            # detection long ago: DAD is off before it comes up, so IPv6
            # neighbour discovery from it (which needs a settled link-local
            # address) works at once, like on a real node.
            dp.apply(
                dp.Plan(
                    (
                        *self._eni_device(primary, inst, name="eth0"),
                        dp.Sysctl(path="net/ipv6/conf/eth0/accept_dad", value="0", netns=node),
                    )
                )
            )
            objs: list[dp.PlanObject] = [
                dp.LinkState(name="lo", netns=node),
                *self._eni_device(primary, inst, name="eth0"),
                dp.LinkState(name="eth0", netns=node),
                dp.Address(dev="eth0", address=f"{primary.primary_ip}/{prefix4}", netns=node),
                dp.Route(dst="default", gateway=vs.gateway4, dev="eth0", netns=node),
            ]
            if vs.cidr6 and vs.gateway6 and primary.ipv6s:
                # IPv6 as a /128 (as DHCPv6 hands it out): every destination,
                # on-link or not, goes through the gateway, so the VPC needs no
                # per-address neighbour-discovery proxy.
                objs += [
                    dp.Sysctl(path="net/ipv6/conf/eth0/accept_ra", value="0", netns=node),
                    dp.Address(dev="eth0", address=f"{primary.ipv6s[0]}/128", netns=node, nodad=True),
                    dp.Route(dst="default", gateway=vs.gateway6, dev="eth0", onlink=True, netns=node),
                ]
            dp.apply(dp.Plan(tuple(objs)))
            self._converge_routes(inst, primary)
            log.info(
                "node_side.instance.added", instance_id=instance_id, netns=node, primary_ip=primary.primary_ip
            )

    def _eni_device(self, eni: EniNet, inst: _Instance, *, name: str) -> list[dp.PlanObject]:
        """The veth of an ENI (node end ``name`` with the ENI MAC, VPC end up)."""
        vpc_link = _vpc_link_name(eni.eni_id)
        inst.enis.setdefault(eni.eni_id, _Eni(eni, vpc_link)).net = eni
        return [
            dp.Veth(
                name=vpc_link,
                netns=self.vpc_netns,
                peer_name=name,
                peer_netns=inst.netns,
                peer_mac=eni.mac,
                mtu=self._mtu,
            ),
            dp.LinkState(name=vpc_link, netns=self.vpc_netns),
            dp.Sysctl(path=f"net/ipv4/conf/{vpc_link}/proxy_arp", value="1", netns=self.vpc_netns),
            dp.Sysctl(path=f"net/ipv4/conf/{vpc_link}/proxy_arp_pvlan", value="1", netns=self.vpc_netns),
            dp.Sysctl(path=f"net/ipv4/neigh/{vpc_link}/proxy_delay", value="0", netns=self.vpc_netns),
        ]

    def remove_instance(self, instance_id: str) -> None:
        with self._lock:
            inst = self._instances.pop(instance_id, None)
            if inst is None:
                return
            for eni in list(inst.enis.values()):
                self._delete_vpc_link(eni.vpc_link)
            if inst.created:
                _netns.remove(inst.netns)
            log.info("node_side.instance.removed", instance_id=instance_id)

    # ------------------------------------------------------------ ENIs

    def _instance(self, instance_id: str) -> _Instance:
        inst = self._instances.get(instance_id)
        if inst is None:
            raise NotFound(
                f"instance {instance_id} was never added to the node side", instance_id=instance_id
            )
        return inst

    def eni_attached(self, instance_id: str, eni: EniNet) -> None:
        with self._lock:
            inst = self._instance(instance_id)
            if eni.trunk_eni_id is not None or eni.vlan_id is not None:
                inst.member_vlans[eni.eni_id] = eni.vlan_id if eni.vlan_id is not None else eni.device_index
                inst.enis[eni.eni_id] = _Eni(eni, None)
                log.info(
                    "node_side.member_eni.recorded", eni_id=eni.eni_id, vlan_id=inst.member_vlans[eni.eni_id]
                )
                return
            vpc_link = _vpc_link_name(eni.eni_id)
            if dp.get_link(vpc_link, self.vpc_netns) is None:
                # Only when absent: the node end may have moved into a pod since.
                dp.apply(dp.Plan(tuple(self._eni_device(eni, inst, name=f"eth{eni.device_index}"))))
            else:
                inst.enis.setdefault(eni.eni_id, _Eni(eni, vpc_link)).net = eni
            self._converge_routes(inst, eni)
            log.info("node_side.eni.attached", instance_id=instance_id, eni_id=eni.eni_id, mac=eni.mac)

    def eni_ips_changed(self, instance_id: str, eni: EniNet) -> None:
        with self._lock:
            inst = self._instance(instance_id)
            known = inst.enis.get(eni.eni_id)
            if known is None or known.vpc_link is None:
                if known is not None:
                    known.net = eni
                return
            known.net = eni
            self._converge_routes(inst, eni)

    def eni_detached(self, instance_id: str, eni: EniNet) -> None:
        with self._lock:
            inst = self._instances.get(instance_id)
            known = inst.enis.pop(eni.eni_id, None) if inst else None
            if inst is not None:
                inst.member_vlans.pop(eni.eni_id, None)
            vpc_link = known.vpc_link if known is not None else _vpc_link_name(eni.eni_id)
            if vpc_link is not None:
                # Deleting the VPC end deletes the node end wherever it is now,
                # and the VPC routes and neighbours through it.
                self._delete_vpc_link(vpc_link)
            log.info("node_side.eni.detached", instance_id=instance_id, eni_id=eni.eni_id)

    def _converge_routes(self, inst: _Instance, eni: EniNet) -> None:
        known = inst.enis[eni.eni_id]
        link = known.vpc_link
        assert link is not None
        vpc = self.vpc_netns
        objs: list[dp.PlanObject] = []
        for ip in (eni.primary_ip, *eni.secondary_ipv4s, *eni.ipv6s):
            plen = 32 if ipaddress.ip_address(ip).version == 4 else 128
            objs += [
                dp.Route(dst=f"{ip}/{plen}", dev=link, netns=vpc),
                dp.Neighbour(dev=link, ip=ip, lladdr=eni.mac, netns=vpc),
            ]
        if eni.vswitch.gateway6:
            objs.append(dp.Address(dev=link, address=f"{eni.vswitch.gateway6}/128", netns=vpc, nodad=True))
        new = dp.Plan(tuple(objs))
        dp.apply(new)
        dp.prune(known.routes, new)
        known.routes = new

    def _delete_vpc_link(self, name: str | None) -> None:
        if name is None or not _netns.exists(self.vpc_netns):
            return
        with _netns.enter(self.vpc_netns):
            nl = Rtnl()
        with nl:
            link = nl.link_get(name=name)
            if link is None:
                return
            try:
                nl.link_del(link.index)
            except NetlinkError as exc:
                if exc.errno != errno.ENODEV:  # gone meanwhile
                    raise DatapathError(
                        f"cannot delete {name} in {self.vpc_netns}: {exc.strerror}",
                        netns=self.vpc_netns,
                        device=name,
                        errno=exc.errno,
                    ) from exc

    # ------------------------------------------------------------ teardown

    def close(self) -> None:
        with self._lock:
            for instance_id in list(self._instances):
                self.remove_instance(instance_id)
            if self._vpc_created:
                _netns.remove(self._vpc_name)
                self._vpc_created = False
            self._base = dp.Plan()
            self._started = False
            log.info("node_side.closed", netns=self.vpc_netns)
