"""The exclusive-ENI datapath as data (pure functions).

Kernel objects (terway-facts.md, "Exclusive ENI"; docs/modes/exclusive_eni.md):

pod namespace
    the ENI's own NIC, found by MAC, taken down, moved in and renamed
    ``<ifname>``: the ENI's primary IP with the vSwitch prefix, ``default via
    <vSwitch gateway> dev <ifname> onlink`` (IPv6: its address /128 nodad and
    ``default via <IPv6 gateway>``), egress TBF on it; unless
    ``disable_host_peer``: ``veth1`` (peer of the host's ``cali...``) with
    routes for the Service CIDRs, the node's IP and ``host_stack_cidrs`` via
    169.254.1.1 onlink and a PERMANENT neighbour 169.254.1.1 -> the host veth.
node namespace
    host veth ``cali`` + 11 hex of sha1(``namespace.name``) with ``<podIP>/32
    dev cali... scope link`` back to the pod; an nftables masquerade for pod
    traffic that entered through a ``cali`` veth and leaves through the node
    (Service backends elsewhere reply to the node, not straight to the pod's ENI).
"""

from __future__ import annotations

import hashlib
import ipaddress

from terway_agent import datapath as dp

POD_GATEWAY4 = "169.254.1.1"
HOST_VETH_PREFIX = "cali"
HOST_PEER_IFNAME = "veth1"
NFT_TABLE = "terway_exclusive"


def host_veth_name(namespace: str, name: str) -> str:
    return HOST_VETH_PREFIX + hashlib.sha1(f"{namespace}.{name}".encode()).hexdigest()[:11]


def host_mac(host_veth: str) -> str:
    return dp.stable_mac(f"terway/{host_veth}")


def pod_plan(
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
    host_peer: bool,
    host_veth: str,
    peer_cidrs: list[str],
    egress_bps: int = 0,
    ingress_bps: int = 0,
) -> dp.Plan:
    objs: list[dp.PlanObject] = [
        dp.MovedLink(mac=eni_mac, name=ifname, netns=pod_netns, home_name=eni_home_name, mtu=mtu),
        dp.LinkState(name="lo", netns=pod_netns),
        dp.LinkState(name=ifname, netns=pod_netns),
    ]
    if ip4:
        prefix = ipaddress.ip_network(cidr4).prefixlen if cidr4 else 32
        objs.append(dp.Address(dev=ifname, address=f"{ip4}/{prefix}", netns=pod_netns))
        if gateway4:
            objs.append(dp.Route(dst="0.0.0.0/0", gateway=gateway4, dev=ifname, onlink=True, netns=pod_netns))
    if ip6:
        objs += [
            dp.Sysctl(path=f"net/ipv6/conf/{ifname}/accept_ra", value="0", netns=pod_netns),
            dp.Address(dev=ifname, address=f"{ip6}/128", netns=pod_netns, nodad=True),
        ]
        if gateway6:
            objs.append(dp.Route(dst="::/0", gateway=gateway6, dev=ifname, onlink=True, netns=pod_netns))
    if host_peer and ip4:
        mac = host_mac(host_veth)
        objs += [
            dp.Veth(name=host_veth, peer_name=HOST_PEER_IFNAME, peer_netns=pod_netns, mtu=mtu, mac=mac),
            dp.LinkState(name=host_veth),
            dp.LinkState(name=HOST_PEER_IFNAME, netns=pod_netns),
            dp.Neighbour(dev=HOST_PEER_IFNAME, ip=POD_GATEWAY4, lladdr=mac, netns=pod_netns),
            dp.Route(dst=f"{ip4}/32", dev=host_veth, scope="link"),
            dp.Sysctl(path="net/ipv4/conf/all/forwarding", value="1"),
            dp.Sysctl(path=f"net/ipv4/conf/{host_veth}/rp_filter", value="0"),
            dp.Sysctl(path=f"net/ipv4/conf/{HOST_PEER_IFNAME}/rp_filter", value="0", netns=pod_netns),
        ]
        for cidr in sorted(set(peer_cidrs)):
            net = ipaddress.ip_network(cidr, strict=False)
            if net.version == 4:
                objs.append(
                    dp.Route(dst=str(net), gateway=POD_GATEWAY4, dev=HOST_PEER_IFNAME, onlink=True, netns=pod_netns)
                )
    if egress_bps:
        objs.append(dp.Tbf.for_bandwidth(dev=ifname, netns=pod_netns, bits_per_s=egress_bps, mtu=mtu or 1500))
    if ingress_bps and host_peer:
        # Only traffic through the host peer passes the node; shape what we can see.
        objs.append(dp.Tbf.for_bandwidth(dev=host_veth, bits_per_s=ingress_bps, mtu=mtu or 1500))
    return dp.Plan(tuple(objs))


MASQUERADE_RULESET = f"""table inet {NFT_TABLE} {{
	chain postrouting {{
		type nat hook postrouting priority srcnat; policy accept;
		iifname "{HOST_VETH_PREFIX}*" oifname != "{HOST_VETH_PREFIX}*" masquerade
	}}
}}
"""
