"""The exclusive-ENI datapath as data (pure functions).

Kernel objects (terway-facts.md, "Exclusive ENI"; docs/modes/exclusive_eni.md),
built in :data:`STAGES` that are applied one after the other:

``nic_moved``
    the ENI's own NIC, found by MAC, taken down, moved into the pod and
    renamed ``<ifname>`` in one step (MTU set unless ``auto_mtu``).
``nic_addressed``
    ``lo`` and ``<ifname>`` up; in the pod ``all/rp_filter=0`` and
    ``<ifname>/rp_filter=0``; the ENI's primary IP with the vSwitch prefix,
    ``default via <vSwitch gateway> dev <ifname> onlink``; IPv6:
    ``accept_ra=0``, its address /128 nodad and ``default via <IPv6
    gateway>``; an egress TBF on it (burst from the ENI's real MTU).
``host_peer_created`` (unless ``disable_host_peer``)
    host veth ``cali`` + 11 hex of sha1(``namespace.name``) up, peer ``veth1``
    in the pod up (both MACs fixed, derived from the host veth's name);
    an ingress TBF on the host veth.  IPv4: ``rp_filter=0`` on ``veth1``, a
    PERMANENT neighbour 169.254.1.1 -> the host veth, routes for the IPv4
    Service CIDRs, the node's IP and ``host_stack_cidrs`` via 169.254.1.1
    onlink; on the node ``<podIP>/32 dev cali... scope link``,
    ``forwarding=1`` and ``rp_filter=0`` for all, default and the host veth.
    IPv6 (as shared mode does it): ``accept_ra=0`` on ``veth1``, a PERMANENT
    neighbour fe80::1 -> the host veth, routes for the IPv6 Service CIDRs,
    the node's IPv6 addresses and ``host_stack_cidrs`` via fe80::1 dev veth1;
    on the node ``<podIPv6>/128 dev cali...`` with a PERMANENT neighbour for
    the pod's IPv6 -> ``veth1``'s MAC (the pod answers no neighbour
    solicitation for its ENI's address on ``veth1``) and
    ``net.ipv6.conf.all.forwarding=1``.  Peer CIDRs of a family the pod has
    no address of are left out.  The nftables masquerade
    (:data:`MASQUERADE_RULESET`, family ``inet``: IPv4 and IPv6) is
    node-wide, outside the plan.

IPv6 DAD: ``accept_dad=0`` on the ENI is written in ``nic_moved``, after the
move and before ``nic_addressed`` brings it up (the VPC guarantees address
uniqueness; shared mode does the same on its ENIs); the pod's address is
added ``nodad``.
"""

from __future__ import annotations

import hashlib
import ipaddress

from terway_agent import datapath as dp

POD_GATEWAY4 = "169.254.1.1"
POD_GATEWAY6 = "fe80::1"
HOST_VETH_PREFIX = "cali"
HOST_PEER_IFNAME = "veth1"
NFT_TABLE = "terway_exclusive"


def host_veth_name(namespace: str, name: str) -> str:
    return HOST_VETH_PREFIX + hashlib.sha1(f"{namespace}.{name}".encode()).hexdigest()[:11]


def host_mac(host_veth: str) -> str:
    return dp.stable_mac(f"terway/{host_veth}")


def peer_mac(host_veth: str) -> str:
    """A stable MAC for ``veth1``: the node's PERMANENT IPv6 neighbour for the
    pod points at it, so a re-created pair needs no new neighbour."""
    return dp.stable_mac(f"terway/{host_veth}/pod")


#: The steps of the move, in order: the plan is applied one stage at a time
#: (the crash points of the test-only ``TERWAY_TEST_CRASH_AT`` hook follow them).
STAGES = ("nic_moved", "nic_addressed", "host_peer_created")


def pod_stages(
    *,
    pod_netns: str,
    ifname: str,
    eni_mac: str,
    eni_home_name: str,
    ip4: str | None,
    cidr4: str | None,
    gateway4: str | None,
    ip6: str | None,
    gateway6: str | None,
    mtu: int | None,
    eni_mtu: int = 1500,
    host_peer: bool,
    host_veth: str,
    peer_cidrs: list[str],
    egress_bps: int = 0,
    ingress_bps: int = 0,
) -> tuple[tuple[str, dp.Plan], ...]:
    """The pod's datapath as :data:`STAGES`: the NIC moved in and renamed; the
    NIC configured (state, sysctls, addresses, routes, egress TBF); the host peer
    and the node's side.  ``mtu`` is the MTU to set (``None``: keep the ENI's,
    ``auto_mtu``); ``eni_mtu`` the MTU the ENI ends up with, for the TBF bursts."""
    real_mtu = mtu or eni_mtu
    move: list[dp.PlanObject] = [
        dp.MovedLink(mac=eni_mac, name=ifname, netns=pod_netns, home_name=eni_home_name, mtu=mtu),
    ]
    if ip6:
        # before nic_addressed brings the ENI up: no DAD on its link-local address
        move.append(dp.Sysctl(path=f"net/ipv6/conf/{ifname}/accept_dad", value="0", netns=pod_netns))
    eni: list[dp.PlanObject] = [
        dp.LinkState(name="lo", netns=pod_netns),
        dp.LinkState(name=ifname, netns=pod_netns),
    ]
    if ip4:
        prefix = ipaddress.ip_network(cidr4).prefixlen if cidr4 else 32
        eni += [
            # terway-facts.md: rp_filter 0 for all and the link (the effective value is the maximum)
            dp.Sysctl(path="net/ipv4/conf/all/rp_filter", value="0", netns=pod_netns),
            dp.Sysctl(path=f"net/ipv4/conf/{ifname}/rp_filter", value="0", netns=pod_netns),
            dp.Address(dev=ifname, address=f"{ip4}/{prefix}", netns=pod_netns),
        ]
        if gateway4:
            eni.append(dp.Route(dst="0.0.0.0/0", gateway=gateway4, dev=ifname, onlink=True, netns=pod_netns))
    if ip6:
        eni += [
            dp.Sysctl(path=f"net/ipv6/conf/{ifname}/accept_ra", value="0", netns=pod_netns),
            dp.Address(dev=ifname, address=f"{ip6}/128", netns=pod_netns, nodad=True),
        ]
        if gateway6:
            eni.append(dp.Route(dst="::/0", gateway=gateway6, dev=ifname, onlink=True, netns=pod_netns))
    if egress_bps:
        eni.append(dp.Tbf.for_bandwidth(dev=ifname, netns=pod_netns, bits_per_s=egress_bps, mtu=real_mtu))
    peer: list[dp.PlanObject] = []
    if host_peer and (ip4 or ip6):
        mac = host_mac(host_veth)
        cidrs = [ipaddress.ip_network(c, strict=False) for c in peer_cidrs]
        peer += [
            dp.Veth(name=host_veth, peer_name=HOST_PEER_IFNAME, peer_netns=pod_netns, mtu=real_mtu, mac=mac,
                    peer_mac=peer_mac(host_veth)),
            dp.LinkState(name=host_veth),
            dp.LinkState(name=HOST_PEER_IFNAME, netns=pod_netns),
        ]
        if ip4:
            peer += [
                dp.Neighbour(dev=HOST_PEER_IFNAME, ip=POD_GATEWAY4, lladdr=mac, netns=pod_netns),
                dp.Route(dst=f"{ip4}/32", dev=host_veth, scope="link"),
                # node side, terway-facts.md: forwarding 1 and rp_filter 0 for all, default and the link
                dp.Sysctl(path="net/ipv4/conf/all/forwarding", value="1"),
                dp.Sysctl(path="net/ipv4/conf/default/forwarding", value="1"),
                dp.Sysctl(path="net/ipv4/conf/all/rp_filter", value="0"),
                dp.Sysctl(path="net/ipv4/conf/default/rp_filter", value="0"),
                dp.Sysctl(path=f"net/ipv4/conf/{host_veth}/forwarding", value="1"),
                dp.Sysctl(path=f"net/ipv4/conf/{host_veth}/rp_filter", value="0"),
                dp.Sysctl(path=f"net/ipv4/conf/{HOST_PEER_IFNAME}/rp_filter", value="0", netns=pod_netns),
            ]
            for net in sorted({n for n in cidrs if n.version == 4}):
                peer.append(
                    dp.Route(dst=str(net), gateway=POD_GATEWAY4, dev=HOST_PEER_IFNAME, onlink=True, netns=pod_netns)
                )
        if ip6:
            peer += [
                dp.Sysctl(path=f"net/ipv6/conf/{HOST_PEER_IFNAME}/accept_ra", value="0", netns=pod_netns),
                dp.Neighbour(dev=HOST_PEER_IFNAME, ip=POD_GATEWAY6, lladdr=mac, netns=pod_netns),
                # node side: the way back to the pod, and IPv6 forwarding (shared mode's eni_plan)
                dp.Route(dst=f"{ip6}/128", dev=host_veth),
                dp.Neighbour(dev=host_veth, ip=ip6, lladdr=peer_mac(host_veth)),
                dp.Sysctl(path="net/ipv6/conf/all/forwarding", value="1"),
            ]
            for net in sorted({n for n in cidrs if n.version == 6}):
                peer.append(dp.Route(dst=str(net), gateway=POD_GATEWAY6, dev=HOST_PEER_IFNAME, netns=pod_netns))
        if ingress_bps:
            # Only traffic through the host peer passes the node; shape what we can see.
            peer.append(dp.Tbf.for_bandwidth(dev=host_veth, bits_per_s=ingress_bps, mtu=real_mtu))
    return tuple(zip(STAGES, (dp.Plan(tuple(move)), dp.Plan(tuple(eni)), dp.Plan(tuple(peer))), strict=True))


def pod_plan(**kw: object) -> dp.Plan:
    """The whole pod datapath (every stage of :func:`pod_stages`), as stored for
    CHECK, repair and DEL."""
    plan = dp.Plan()
    for _, part in pod_stages(**kw):  # type: ignore[arg-type]
        plan = plan + part
    return plan


MASQUERADE_RULESET = f"""table inet {NFT_TABLE} {{
	chain postrouting {{
		type nat hook postrouting priority srcnat; policy accept;
		iifname "{HOST_VETH_PREFIX}*" oifname != "{HOST_VETH_PREFIX}*" masquerade
	}}
}}
"""
