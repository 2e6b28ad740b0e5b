"""The shared-ENI datapath as data (pure functions, no I/O).

Kernel objects, exactly as the original Terway makes them (terway-facts.md,
"Shared ENI"; seed 003 "Data plane configuration"):

pod namespace
    ``<ifname>`` (veth) with the pod IP /32 (and /128, nodad), ``default via
    169.254.1.1 dev <ifname> onlink`` with a PERMANENT neighbour 169.254.1.1 ->
    the host veth's MAC; IPv6: ``default via fe80::1`` the same way, accept_ra=0.
node namespace, per pod
    host veth ``cali`` + 11 hex of sha1(``namespace.name``); ``<podIP>/32 dev
    cali... scope link`` (IPv6: also a PERMANENT neighbour for the pod); rules prio 512 ``to <podIP> lookup main`` and prio 2048
    ``from <podIP> lookup 1000+<ENI ifindex>``; TBF for bandwidth (ingress on the
    host veth, egress on the pod side).
    The host veth gets forwarding on and rp_filter off (``net.ipv4.conf.<link>``).
node namespace, per ENI (shared by its pods)
    forwarding on and rp_filter off for all, default and the ENI, the ENI up
    (IPv6: accept_dad=0 on it, applied before it goes up: :func:`before_link_up`),
    table 1000+ifindex ``default via <vSwitch gateway> dev <ENI> onlink``.
node namespace, once
    rules prio 512 ``to <service CIDR / host_stack_cidr> lookup main`` so that
    Services (also IPVS, which DNATs after routing) and host-stack addresses
    (node-local DNS) are reached through the node's stack, not the VPC.
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Iterable
from dataclasses import replace

from terway_agent import datapath as dp

POD_GATEWAY4 = "169.254.1.1"
POD_GATEWAY6 = "fe80::1"
ENI_TABLE_BASE = 1000
RULE_TO_POD = 512
RULE_FROM_POD = 2048
HOST_VETH_PREFIX = "cali"


def host_veth_name(namespace: str, name: str) -> str:
    """``cali`` + the first 11 hex digits of sha1("namespace.name"), as the original."""
    return HOST_VETH_PREFIX + hashlib.sha1(f"{namespace}.{name}".encode()).hexdigest()[:11]


def eni_table(eni_ifindex: int) -> int:
    return ENI_TABLE_BASE + eni_ifindex


def host_mac(host_veth: str) -> str:
    """A stable, locally administered MAC for the host veth, so a re-created veth
    keeps the MAC the pod's permanent neighbour points at."""
    return dp.stable_mac(f"terway/{host_veth}")


def pod_mac(host_veth: str) -> str:
    """A stable MAC for the pod's end too: the node keeps a PERMANENT IPv6
    neighbour for the pod, so no neighbour discovery (and no wait for the new
    veth's link-local DAD) is needed before the pod's first packets."""
    return dp.stable_mac(f"terway/{host_veth}/pod")


def before_link_up(node: dp.Plan) -> dp.Plan:
    """The sysctls of an ENI plan, to apply before the plan itself (the executor
    brings links up before it writes sysctls): IPv6 DAD must be off before the
    ENI goes up the first time -- the VPC guarantees address uniqueness, so DAD
    on the ENI only delays the first packets by a second."""
    return dp.Plan(tuple(o for o in node.objects if isinstance(o, dp.Sysctl) and o.path.endswith("/accept_dad")))


def eni_plan(*, eni_dev: str, eni_ifindex: int, gateway4: str | None, gateway6: str | None) -> dp.Plan:
    """Node-level objects for one ENI that carries shared-ENI pods."""
    table = eni_table(eni_ifindex)
    objs: list[dp.PlanObject] = [
        # terway-facts.md, "Datapath": net.ipv4.conf.{all,default,<link>}.forwarding=1 and rp_filter=0
        dp.Sysctl(path="net/ipv4/conf/all/forwarding", value="1"),
        dp.Sysctl(path="net/ipv4/conf/default/forwarding", value="1"),
        dp.Sysctl(path=f"net/ipv4/conf/{eni_dev}/forwarding", value="1"),
        dp.Sysctl(path="net/ipv4/conf/all/rp_filter", value="0"),
        dp.Sysctl(path="net/ipv4/conf/default/rp_filter", value="0"),
        dp.Sysctl(path=f"net/ipv4/conf/{eni_dev}/rp_filter", value="0"),
        dp.LinkState(name=eni_dev),
    ]
    if gateway4:
        objs.append(dp.Route(dst="0.0.0.0/0", gateway=gateway4, dev=eni_dev, onlink=True, table=table))
    if gateway6:
        objs += [
            dp.Sysctl(path=f"net/ipv6/conf/{eni_dev}/accept_dad", value="0"),
            dp.Sysctl(path="net/ipv6/conf/all/forwarding", value="1"),
            dp.Route(dst="::/0", gateway=gateway6, dev=eni_dev, onlink=True, table=table),
        ]
    return dp.Plan(tuple(objs))


def node_plan(cidrs: Iterable[str]) -> dp.Plan:
    """Rules sending Service CIDRs and host_stack_cidrs to the main table."""
    objs: list[dp.PlanObject] = []
    for cidr in sorted(set(cidrs)):
        net = ipaddress.ip_network(cidr)
        objs.append(dp.Rule(priority=RULE_TO_POD, dst=str(net), table=dp.MAIN_TABLE))
    return dp.Plan(tuple(objs))


def pod_plan(
    *,
    host_veth: str,
    pod_netns: str,
    ifname: str,
    pod_ip4: str | None,
    pod_ip6: str | None,
    eni_ifindex: int,
    mtu: int,
    ingress_bps: int = 0,
    egress_bps: int = 0,
) -> dp.Plan:
    """The per-pod objects."""
    mac = host_mac(host_veth)
    table = eni_table(eni_ifindex)
    objs: list[dp.PlanObject] = [
        dp.Veth(
            name=host_veth, peer_name=ifname, peer_netns=pod_netns, mtu=mtu, mac=mac, peer_mac=pod_mac(host_veth)
        ),
        dp.LinkState(name=host_veth),
        dp.LinkState(name="lo", netns=pod_netns),
        dp.LinkState(name=ifname, netns=pod_netns),
    ]
    if pod_ip4:
        objs += [
            dp.Address(dev=ifname, address=f"{pod_ip4}/32", netns=pod_netns),
            dp.Neighbour(dev=ifname, ip=POD_GATEWAY4, lladdr=mac, netns=pod_netns),
            dp.Route(dst="0.0.0.0/0", gateway=POD_GATEWAY4, dev=ifname, onlink=True, netns=pod_netns),
            dp.Sysctl(path=f"net/ipv4/conf/{host_veth}/forwarding", value="1"),
            dp.Sysctl(path=f"net/ipv4/conf/{host_veth}/rp_filter", value="0"),
            dp.Route(dst=f"{pod_ip4}/32", dev=host_veth, scope="link"),
            dp.Rule(priority=RULE_TO_POD, dst=f"{pod_ip4}/32", table=dp.MAIN_TABLE),
            dp.Rule(priority=RULE_FROM_POD, src=f"{pod_ip4}/32", table=table),
        ]
    if pod_ip6:
        objs += [
            dp.Sysctl(path=f"net/ipv6/conf/{ifname}/accept_ra", value="0", netns=pod_netns),
            dp.Address(dev=ifname, address=f"{pod_ip6}/128", netns=pod_netns, nodad=True),
            dp.Neighbour(dev=ifname, ip=POD_GATEWAY6, lladdr=mac, netns=pod_netns),
            dp.Route(dst="::/0", gateway=POD_GATEWAY6, dev=ifname, netns=pod_netns),
            dp.Route(dst=f"{pod_ip6}/128", dev=host_veth),
            dp.Neighbour(dev=host_veth, ip=pod_ip6, lladdr=pod_mac(host_veth)),
            dp.Rule(priority=RULE_TO_POD, dst=f"{pod_ip6}/128", table=dp.MAIN_TABLE),
            dp.Rule(priority=RULE_FROM_POD, src=f"{pod_ip6}/128", table=table),
        ]
    if egress_bps:
        objs.append(dp.Tbf.for_bandwidth(dev=ifname, netns=pod_netns, bits_per_s=egress_bps, mtu=mtu))
    if ingress_bps:
        objs.append(dp.Tbf.for_bandwidth(dev=host_veth, bits_per_s=ingress_bps, mtu=mtu))
    return dp.Plan(tuple(objs))


def with_eni_table(plan: dp.Plan, eni_ifindex: int) -> dp.Plan:
    """``plan`` (a pod plan) with its prio-2048 rules looking up the table of ENI
    ``eni_ifindex`` (the ENI's ifindex changed, e.g. it was re-plugged)."""
    table = eni_table(eni_ifindex)
    return dp.Plan(tuple(
        replace(o, table=table) if isinstance(o, dp.Rule) and o.priority == RULE_FROM_POD else o
        for o in plan.objects
    ))


def node_side_only(plan: dp.Plan) -> dp.Plan:
    """The objects of ``plan`` that live in the node namespace (for a DEL whose
    pod netns is already gone)."""
    return dp.Plan(tuple(o for o in plan.objects if getattr(o, "netns", None) is None))
