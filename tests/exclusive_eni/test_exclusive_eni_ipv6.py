"""IPv6 on the exclusive ENI's host peer: dual stack through the emulated VPC
(real packets over the ENI and through ``veth1`` and the node), and an
IPv6-only plan applied to scratch namespaces (no IPv4 on the peer at all)."""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from agentkit import CNIRun, ns_run, unique, whoami, whoami_server
from cloudnodes import (
    HOST_STACK_CIDR,
    SERVICE_CIDR,
    SERVICE_CIDR6,
    CloudCluster,
    eni_conf,
)
from cloudnodes import start_cluster as _start_cluster

from terway_agent.datapath import _probe as probe
from terway_agent.datapath import netns
from terway_mode_exclusive_eni import _plan

pytestmark = pytest.mark.netns

HOST_STACK6 = "fd00:20::10"  # a host_stack_cidrs entry, held by the node's lo
NODE_IP6 = "2408:4005:3a0:5b00::a"  # the node's own IPv6 address, on its primary NIC


@pytest.fixture(scope="module")
def dual(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CloudCluster]:
    if os.geteuid() != 0:
        pytest.skip("exclusive-ENI tests create network namespaces and need root")
    c = _start_cluster(
        tmp_path_factory.mktemp("exclusive6"),
        modes=["exclusive_eni", "shared_eni"],
        instance_type="ecs.g7.4xlarge",
        eni=eni_conf(ip_stack="dual", service_cidr=f"{SERVICE_CIDR},{SERVICE_CIDR6}"),
        netconf={"host_stack_cidrs": [HOST_STACK_CIDR, f"{HOST_STACK6}/128"]},
    )
    try:
        n1 = c.nodes[0]
        # node-local IPv6 addresses the pod can only reach through the node (the VPC routes neither)
        ns_run(n1.netns, "ip", "-6", "addr", "replace", f"{HOST_STACK6}/128", "dev", "lo", "nodad", check=True)
        ns_run(n1.netns, "ip", "-6", "addr", "replace", f"{NODE_IP6}/128", "dev", "eth0", "nodad", check=True)
        yield c
    finally:
        c.stop()


def ip_of(r: CNIRun, family: int) -> str:
    (ip,) = [a["address"].split("/")[0] for a in r.out["ips"]
             if ipaddress.ip_interface(a["address"]).version == family]
    return ip


def jq(ns: str, *args: str) -> Any:
    return json.loads(ns_run(ns, "ip", "-j", *args, check=True).stdout or "[]")


def tx_packets(ns: str, dev: str) -> int:
    (link,) = jq(ns, "-s", "link", "show", "dev", dev)
    return int(link["stats64"]["tx"]["packets"])


def test_dual_stack_pod_reaches_the_node_over_ipv6_through_veth1(dual, pods) -> None:
    n1, _ = dual.nodes
    name = unique("six-")
    ns, r, cid = pods.add(n1, name)
    assert r.rc == 0, r.stdout + r.stderr
    ip6 = ip_of(r, 6)
    host_veth = _plan.host_veth_name("default", name)
    host_mac = _plan.host_mac(host_veth)

    # pod: IPv6 Service CIDR, host_stack IPv6 CIDR and the node's IPv6 address via fe80::1 dev veth1
    routes = {x["dst"]: x for x in jq(ns, "-6", "route", "show")}
    for dst in (SERVICE_CIDR6, HOST_STACK6, NODE_IP6):
        assert routes[dst]["dev"] == "veth1" and routes[dst]["gateway"] == "fe80::1", (dst, routes)
    assert routes["default"]["dev"] == "eth0", routes  # the rest of IPv6 leaves through the ENI
    (gw,) = jq(ns, "-6", "neigh", "show", "dev", "veth1", "fe80::1")
    assert gw["lladdr"] == host_mac and "PERMANENT" in gw["state"], gw
    assert ns_run(ns, "sysctl", "-n", "net.ipv6.conf.veth1.accept_ra").stdout.strip() == "0"
    assert ns_run(ns, "sysctl", "-n", "net.ipv6.conf.eth0.accept_dad").stdout.strip() == "0"
    # node: the way back to the pod, with a PERMANENT neighbour for it; IPv6 forwarding
    (back,) = jq(n1.netns, "-6", "route", "show", f"{ip6}/128")
    assert back["dev"] == host_veth, back
    (nb,) = jq(n1.netns, "-6", "neigh", "show", "dev", host_veth, ip6)
    assert nb["lladdr"] == _plan.peer_mac(host_veth) and "PERMANENT" in nb["state"], nb
    assert ns_run(n1.netns, "sysctl", "-n", "net.ipv6.conf.all.forwarding").stdout.strip() == "1"

    # real packets: pod -> host_stack address on the node's lo and -> the node's own IPv6 address,
    # through veth1 (its counter moves), answered over the host /128 route; the node sees the pod's IPv6
    path = netns.netns_path(ns)
    before = tx_packets(ns, "veth1")
    for dst in (HOST_STACK6, NODE_IP6):
        probe.ping(path, dst)
        with whoami_server(n1.netns_path, dst) as (host, port):
            assert whoami(path, host, port) == ip6, dst
    assert tx_packets(ns, "veth1") >= before + 2 + 2 * 3, "the IPv6 packets did not use veth1"

    # CHECK covers the new objects; DEL takes the node's side away
    conf = n1.agent.conf(prevResult=r.out)
    assert n1.agent.cni("CHECK", cid, netns_path=path, conf=conf).rc == 0
    ns_run(ns, "ip", "-6", "neigh", "del", "fe80::1", "dev", "veth1", check=True)
    ns_run(n1.netns, "ip", "-6", "route", "del", f"{ip6}/128", "dev", host_veth, check=True)
    bad = n1.agent.cni("CHECK", cid, netns_path=path, conf=conf)
    assert bad.rc != 0 and bad.code == 102, bad.stdout
    assert "fe80::1" in bad.out["msg"] and f"{ip6}/128" in bad.out["msg"], bad.out["msg"]
    assert n1.agent.cni("DEL", cid, netns_path=path).rc == 0
    assert jq(n1.netns, "-6", "route", "show", f"{ip6}/128") == []
    assert jq(n1.netns, "-6", "neigh", "show", ip6) == []
    assert host_veth not in {x["ifname"] for x in jq(n1.netns, "link", "show")}


def test_dual_stack_pod_talks_to_a_pod_on_another_node_over_the_eni(dual, pods) -> None:
    n1, n2 = dual.nodes
    a_ns, a, _ = pods.add(n1)
    b_ns, b, _ = pods.add(n2)  # a shared-ENI dual-stack pod
    assert a.rc == 0 and b.rc == 0, a.stdout + b.stdout
    a_path, b_path = netns.netns_path(a_ns), netns.netns_path(b_ns)
    before = tx_packets(a_ns, "eth0")
    probe.ping(a_path, ip_of(b, 6))
    probe.ping(b_path, ip_of(a, 6))
    with whoami_server(b_path, ip_of(b, 6)) as (host, port):
        assert whoami(a_path, host, port) == ip_of(a, 6)  # VPC routing, no NAT
    with whoami_server(a_path, ip_of(a, 6)) as (host, port):
        assert whoami(b_path, host, port) == ip_of(b, 6)
    assert tx_packets(a_ns, "eth0") > before, "the IPv6 packets did not leave through the ENI"
    probe.ping(a_path, ip_of(b, 4))  # IPv4 still works beside it


_V6ONLY_SCRIPT = """
import json, sys
from terway_agent import datapath as dp
from terway_mode_exclusive_eni import _plan

verb, pod, mac, host_veth = sys.argv[1:5]
stages = _plan.pod_stages(
    pod_netns=pod, ifname="eth0", eni_mac=mac, eni_home_name="twxe0", ip4=None, cidr4=None, gateway4=None,
    ip6="2408:4005:3a0:5b01::77", gateway6="2408:4005:3a0:5b01::1", mtu=1500, host_peer=True,
    host_veth=host_veth, peer_cidrs=["fd00:21::/112", "fd00:20::10/128", "169.254.20.10/32", "172.21.0.0/20"],
)
out = []
if verb == "apply":
    for _ in range(2):
        reports = [dp.apply(part) for _, part in stages]
        out.append(sum(len(r.created) + len(r.changed) for r in reports))
else:
    whole = dp.Plan()
    for _, part in stages:
        whole = whole + part
    dp.remove(whole)
    out = [p.description for p in dp.check(whole)]
print(json.dumps(out))
"""


def _v6only(verb: str, node_ns: str, pod_ns: str, mac: str, host_veth: str) -> Any:
    r = subprocess.run(["ip", "netns", "exec", node_ns, sys.executable, "-c", _V6ONLY_SCRIPT, verb,
                        netns.netns_path(pod_ns), mac, host_veth], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.splitlines()[-1])


def test_ipv6_only_pod_gets_a_host_peer(tmp_path) -> None:
    """IPv6 only (no IPv4 address): the host peer exists, with the IPv6 side
    only (no 169.254.1.1, no IPv4 routes); applying twice changes nothing; a
    packet to a host_stack IPv6 address on the node goes through veth1 and the
    node answers over the /128 route; remove takes the node's side away.  Runs
    in scratch namespaces: ``node`` holds the "ENI" (a veth end with a MAC)."""
    if os.geteuid() != 0:
        pytest.skip("needs root for network namespaces")
    node_ns, pod_ns = unique("twx6n"), unique("twx6p")
    netns.create(node_ns)
    netns.create(pod_ns)
    mac = "02:7e:6a:00:00:01"
    host_veth = _plan.host_veth_name("default", "v6only")
    try:
        ns_run(node_ns, "ip", "link", "add", "twxe0", "address", mac, "type", "veth", "peer", "name", "twxv0",
               check=True)
        ns_run(node_ns, "ip", "link", "set", "twxv0", "up", check=True)
        ns_run(node_ns, "ip", "link", "set", "lo", "up", check=True)
        ns_run(node_ns, "ip", "-6", "addr", "add", "fd00:20::10/128", "dev", "lo", "nodad", check=True)
        assert _v6only("apply", node_ns, pod_ns, mac, host_veth) != [0, 0]
        assert _v6only("apply", node_ns, pod_ns, mac, host_veth) == [0, 0]  # applying again changes nothing

        assert "veth1" in {x["ifname"] for x in jq(pod_ns, "link", "show")}
        assert jq(pod_ns, "-4", "route", "show") == [] and jq(pod_ns, "-4", "neigh", "show") == []
        routes = {x["dst"]: x for x in jq(pod_ns, "-6", "route", "show")}
        for dst in ("fd00:21::/112", "fd00:20::10"):
            assert routes[dst]["dev"] == "veth1" and routes[dst]["gateway"] == "fe80::1", routes
        (back,) = jq(node_ns, "-6", "route", "show", "2408:4005:3a0:5b01::77/128")
        assert back["dev"] == host_veth
        probe.ping(netns.netns_path(pod_ns), "fd00:20::10")
        with whoami_server(netns.netns_path(node_ns), "fd00:20::10") as (host, port):
            assert whoami(netns.netns_path(pod_ns), host, port) == "2408:4005:3a0:5b01::77"

        problems = _v6only("remove", node_ns, pod_ns, mac, host_veth)
        assert any("veth" in p for p in problems), problems  # everything is reported missing now
        assert host_veth not in {x["ifname"] for x in jq(node_ns, "link", "show")}
        assert jq(node_ns, "-6", "route", "show", "2408:4005:3a0:5b01::77/128") == []
        (eni,) = [x for x in jq(node_ns, "link", "show") if x["address"] == mac]
        assert eni["ifname"] == "twxe0" and "UP" not in eni["flags"]
    finally:
        netns.remove(pod_ns)
        netns.remove(node_ns)
