"""Reference plans for the shared-ENI (veth + policy routing) datapath.

Private: used by the datapath tests and benchmark, and a starting point for the
shared-ENI mode's planner (docs/datapath.md).  The shape follows the original
Terway (terway-facts "Datapath"):

* pod: veth ``eth0`` with the pod IP /32, ``default via 169.254.1.1 dev eth0
  onlink`` and a PERMANENT neighbour 169.254.1.1 -> the host veth's MAC (IPv6:
  fe80::1 the same way, accept_ra=0, nodad; the host veth holds fe80::1/128
  nodad, as the original does with extra routes, so the node can resolve the
  pod without waiting for DAD of its own link-local address);
* node: host veth ``cali<sha1(ns.name)[:11]>``, ``<podIP>/32 dev cali... scope link``,
  rules prio 512 ``to <podIP> lookup main`` and prio 2048 ``from <podIP> lookup
  1000+<ENI ifindex>``;
* per ENI (node plan, shared by the pods on it): forwarding/rp_filter sysctls,
  the ENI up, table 1000+ifindex ``default via <vSwitch gateway> dev ethN onlink``.
"""

from __future__ import annotations

from terway_agent.datapath.plan import (
    MAIN_TABLE,
    Address,
    LinkState,
    Neighbour,
    Plan,
    PlanObject,
    Route,
    Rule,
    Sysctl,
    Tbf,
    Veth,
    stable_mac,
)

POD_GATEWAY4 = "169.254.1.1"
POD_GATEWAY6 = "fe80::1"
ENI_TABLE_BASE = 1000


def eni_table(eni_ifindex: int) -> int:
    return ENI_TABLE_BASE + eni_ifindex


def eni_node_plan(
    *,
    eni_dev: str,
    eni_ifindex: int,
    gateway4: str,
    gateway6: str | None = None,
    node_netns: str | None = None,
) -> Plan:
    """Node-level objects for one ENI used by shared-ENI pods."""
    objs: list[PlanObject] = [
        Sysctl(path="net/ipv4/conf/all/forwarding", value="1", netns=node_netns),
        Sysctl(path="net/ipv4/conf/default/forwarding", value="1", netns=node_netns),
        Sysctl(path="net/ipv4/conf/all/rp_filter", value="0", netns=node_netns),
        Sysctl(path="net/ipv4/conf/default/rp_filter", value="0", netns=node_netns),
        Sysctl(path=f"net/ipv4/conf/{eni_dev}/rp_filter", value="0", netns=node_netns),
        LinkState(name=eni_dev, netns=node_netns),
        Route(
            dst="0.0.0.0/0",
            gateway=gateway4,
            dev=eni_dev,
            onlink=True,
            table=eni_table(eni_ifindex),
            netns=node_netns,
        ),
    ]
    if gateway6 is not None:
        objs += [
            Sysctl(path="net/ipv6/conf/all/forwarding", value="1", netns=node_netns),
            Route(
                dst="::/0",
                gateway=gateway6,
                dev=eni_dev,
                onlink=True,
                table=eni_table(eni_ifindex),
                netns=node_netns,
            ),
        ]
    return Plan(tuple(objs))


def shared_eni_pod_plan(
    *,
    host_veth: str,
    pod_netns: str,
    pod_ip4: str | None,
    eni_ifindex: int,
    pod_ip6: str | None = None,
    node_netns: str | None = None,
    mtu: int = 1500,
    ingress_bits_per_s: int | None = None,
    egress_bits_per_s: int | None = None,
) -> Plan:
    """The per-pod objects of the shared-ENI datapath."""
    host_mac = stable_mac(f"{node_netns}/{host_veth}")
    table = eni_table(eni_ifindex)
    objs: list[PlanObject] = [
        Veth(name=host_veth, netns=node_netns, peer_name="eth0", peer_netns=pod_netns, mtu=mtu, mac=host_mac),
        LinkState(name=host_veth, netns=node_netns),
        LinkState(name="eth0", netns=pod_netns),
        LinkState(name="lo", netns=pod_netns),
    ]
    if pod_ip4 is not None:
        objs += [
            Address(dev="eth0", address=f"{pod_ip4}/32", netns=pod_netns),
            Neighbour(dev="eth0", ip=POD_GATEWAY4, lladdr=host_mac, netns=pod_netns),
            Route(dst="0.0.0.0/0", gateway=POD_GATEWAY4, dev="eth0", onlink=True, netns=pod_netns),
            Route(dst=f"{pod_ip4}/32", dev=host_veth, netns=node_netns),
            Rule(priority=512, dst=f"{pod_ip4}/32", table=MAIN_TABLE, netns=node_netns),
            Rule(priority=2048, src=f"{pod_ip4}/32", table=table, netns=node_netns),
        ]
    if pod_ip6 is not None:
        objs += [
            Sysctl(path="net/ipv6/conf/eth0/accept_ra", value="0", netns=pod_netns),
            Address(dev="eth0", address=f"{pod_ip6}/128", netns=pod_netns, nodad=True),
            Neighbour(dev="eth0", ip=POD_GATEWAY6, lladdr=host_mac, netns=pod_netns),
            Route(dst="::/0", gateway=POD_GATEWAY6, dev="eth0", netns=pod_netns),
            # The node finds the pod by neighbour discovery, which needs a usable
            # link-local source on the host veth: the kernel's own is tentative
            # for 1-2 s (DAD), so the gateway address goes there too, nodad.
            Address(dev=host_veth, address=f"{POD_GATEWAY6}/128", netns=node_netns, nodad=True),
            Route(dst=f"{pod_ip6}/128", dev=host_veth, netns=node_netns),
            Rule(priority=512, dst=f"{pod_ip6}/128", table=MAIN_TABLE, netns=node_netns),
            Rule(priority=2048, src=f"{pod_ip6}/128", table=table, netns=node_netns),
        ]
    if egress_bits_per_s is not None:
        objs.append(Tbf.for_bandwidth(dev="eth0", netns=pod_netns, bits_per_s=egress_bits_per_s, mtu=mtu))
    if ingress_bits_per_s is not None:
        objs.append(
            Tbf.for_bandwidth(dev=host_veth, netns=node_netns, bits_per_s=ingress_bits_per_s, mtu=mtu)
        )
    return Plan(tuple(objs))
