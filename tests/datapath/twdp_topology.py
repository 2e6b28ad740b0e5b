"""Shared pieces of the datapath tests (imported by conftest.py and the test modules):
the shared-ENI topology built with the datapath's own plan types, and a kernel
snapshot read with pyroute2.  Nothing here touches the root namespace: the
"node" is a namespace too.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

from terway_agent import datapath as dp
from terway_agent.datapath import _reference as ref
from terway_agent.datapath import netns

GATEWAY4 = "192.168.0.253"
VSWITCH_PREFIX = 24
ENI_MAC = "02:16:3e:10:00:01"
VPC_PEER = "twdpvpc1"


@dataclass
class SharedEni:
    """A node namespace whose "ENI" eth1 is a veth to a VPC namespace acting as the vSwitch gateway."""

    vpc: str
    node: str
    eni_index: int
    vpc_plan: dp.Plan
    node_plan: dp.Plan
    make_netns: Callable[[str], str]

    def add_pod(
        self, label: str, ip4: str | None, ip6: str | None = None, **kw: object
    ) -> tuple[str, dp.Plan]:
        """A pod namespace and its shared-ENI plan (not applied); the VPC learns the pod IPs."""
        pod = self.make_netns(label)
        plan = ref.shared_eni_pod_plan(
            host_veth=dp.veth_name("default", f"{label}-{os.path.basename(pod)}"),
            pod_netns=pod,
            pod_ip4=ip4,
            pod_ip6=ip6,
            eni_ifindex=self.eni_index,
            node_netns=self.node,
            **kw,  # type: ignore[arg-type]
        )
        vpc_objs: list[dp.PlanObject] = []
        for ip, plen in ((ip4, 32), (ip6, 128)):
            if ip is not None:
                vpc_objs += [
                    dp.Route(dst=f"{ip}/{plen}", dev=VPC_PEER, netns=self.vpc),
                    dp.Neighbour(dev=VPC_PEER, ip=ip, lladdr=ENI_MAC, netns=self.vpc),
                ]
        dp.apply(dp.Plan(tuple(vpc_objs)))
        return pod, plan


def snapshot(path: str) -> dict[str, object]:
    """What the kernel holds in namespace ``path``, read with pyroute2 (an
    independent netlink implementation), for before/after comparisons.

    Dynamic state is left out: address flags (IPv6 DAD finishes on its own),
    non-PERMANENT neighbours and link operstate.
    """
    from pyroute2 import IPRoute

    with netns.enter(path):
        ipr = IPRoute()
    try:
        links = sorted(
            (lk["index"], lk.get("ifname"), lk.get("address"), lk.get("mtu"), lk["flags"] & 1)
            for lk in ipr.link("dump")
        )
        addrs = sorted((a["index"], a["family"], a.get("address"), a["prefixlen"]) for a in ipr.addr("dump"))
        routes = sorted(
            (
                r["family"],
                r.get("table"),
                r.get("dst") or "",
                r["dst_len"],
                r.get("gateway") or "",
                r.get("oif") or 0,
                r["scope"],
                r["flags"] & 4,
                r["proto"],
                r.get("priority") or 0,
            )
            for fam in (2, 10)
            for r in ipr.route("dump", family=fam, table=0)
        )
        rules = sorted(
            (
                r["family"],
                r.get("priority") or 0,
                r.get("src") or "",
                r["src_len"],
                r.get("dst") or "",
                r["dst_len"],
                r.get("table"),
            )
            for fam in (2, 10)
            for r in ipr.rule("dump", family=fam)
        )
        neighbours = sorted(
            (n["ifindex"], n.get("dst"), n.get("lladdr")) for n in ipr.neigh("dump") if n["state"] & 0x80
        )
        qdiscs = sorted((q["index"], q["handle"], q["parent"], q.get("kind")) for q in ipr.get_qdiscs())
    finally:
        ipr.close()
    return {
        "links": links,
        "addrs": addrs,
        "routes": routes,
        "rules": rules,
        "neighbours": neighbours,
        "qdiscs": qdiscs,
    }


def build_shared_eni(make_netns: Callable[[str], str]) -> SharedEni:
    """The VPC and node namespaces with one ENI, its node plan applied."""
    vpc = make_netns("vpc")
    node = make_netns("node")
    vpc_plan = dp.Plan(
        (
            dp.LinkState(name="lo", netns=vpc),
            dp.Sysctl(path="net/ipv4/conf/all/forwarding", value="1", netns=vpc),
            dp.Sysctl(path="net/ipv6/conf/all/forwarding", value="1", netns=vpc),
            dp.Address(dev="lo", address=f"{GATEWAY4}/32", netns=vpc),
            dp.Veth(name=VPC_PEER, netns=vpc, peer_name="eth1", peer_netns=node, peer_mac=ENI_MAC),
            dp.LinkState(name=VPC_PEER, netns=vpc),
            # IPv6: the gateway fe80::1 answers neighbour discovery on the ENI's link
            dp.Address(dev=VPC_PEER, address="fe80::1/64", netns=vpc, nodad=True),
        )
    )
    dp.apply(vpc_plan)
    # A node always has lo up (the kernel needs its local table to accept an onlink gateway).
    # Its ENI has been up for long: no duplicate address detection is pending on it
    # (IPv6 neighbour discovery for forwarded packets needs a settled link-local
    # address), so DAD is off before the emulated ENI comes up.
    dp.apply(
        dp.Plan(
            (
                dp.LinkState(name="lo", netns=node),
                dp.Sysctl(path="net/ipv6/conf/eth1/accept_dad", value="0", netns=node),
            )
        )
    )
    eni = dp.find_link_by_mac(ENI_MAC, node, timeout=2)
    node_plan = ref.eni_node_plan(
        eni_dev=eni.name, eni_ifindex=eni.index, gateway4=GATEWAY4, gateway6="fe80::1", node_netns=node
    )
    dp.apply(node_plan)
    return SharedEni(vpc, node, eni.index, vpc_plan, node_plan, make_netns)
