"""The exclusive-ENI mode: the pod owns a whole ENI (a veth end with the ENI's MAC
that the emulator hot-plugs into the node namespace), real packets through the VPC."""

from __future__ import annotations

import ipaddress
import json
import os
import random
import subprocess
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from agentkit import CNIRun, ns_run, unique, whoami, whoami_server
from cloudnodes import SERVICE_CIDR, CloudCluster, Node, PodSandboxes, start_cluster

from terway_agent.datapath import _probe as probe
from terway_agent.datapath import netns

pytestmark = pytest.mark.netns


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CloudCluster]:
    if os.geteuid() != 0:
        pytest.skip("exclusive-ENI tests create network namespaces and need root")
    # node 1 exclusive, node 2 shared: ecs.g7.4xlarge has 8 ENIs -> 7 exclusive pods (> 6 to join)
    c = start_cluster(
        tmp_path_factory.mktemp("exclusive"),
        modes=["exclusive_eni", "shared_eni"],
        instance_type="ecs.g7.4xlarge",
    )
    yield c
    c.stop()


class Pods(PodSandboxes):
    prefix = "twxp"

    def add(self, node: Node, name: str | None = None, **kw: Any) -> tuple[str, CNIRun, str]:
        ns, cid = self.sandbox(node)
        r = node.agent.cni("ADD", cid, netns_path=netns.netns_path(ns), pod=("default", name or unique("x-")), **kw)
        return ns, r, cid


@pytest.fixture
def pods() -> Iterator[Pods]:
    p = Pods()
    yield p
    p.cleanup()


def ip_of(r: CNIRun) -> str:
    return r.out["ips"][0]["address"].split("/")[0]


def enis(cluster: CloudCluster) -> dict[str, dict]:
    return {e["id"]: e for e in cluster.emulator.admin().state()["enis"]}


def links(ns: str) -> list[dict]:
    return json.loads(ns_run(ns, "ip", "-j", "link", "show").stdout or "[]")


def test_pod_owns_the_enis_nic(cluster, pods) -> None:
    node = cluster.nodes[0]
    ns, r, cid = pods.add(node, "db-0")
    assert r.rc == 0, r.stdout + r.stderr
    att = [a for a in node.agent.attachments() if a["container_id"] == cid][0]
    eni = enis(cluster)[att["eni"]]
    assert eni["primary_ip"] == ip_of(r) and eni["instance_id"] == node.instance_id
    (eth0,) = [x for x in links(ns) if x["ifname"] == "eth0"]
    assert eth0["address"] == eni["mac"]
    assert eni["mac"] not in {x["address"] for x in links(node.netns)}, "the NIC is still on the node"
    addr = json.loads(ns_run(ns, "ip", "-j", "addr", "show", "dev", "eth0").stdout)[0]["addr_info"]
    net = ipaddress.ip_interface(f"{ip_of(r)}/{[a['prefixlen'] for a in addr if a['family'] == 'inet'][0]}")
    assert net.network.prefixlen == 19  # the vSwitch's prefix
    (default,) = json.loads(ns_run(ns, "ip", "-j", "route", "show", "default").stdout)
    assert default["dev"] == "eth0" and default["gateway"] == str(list(net.network.hosts())[-2])
    assert "onlink" in default["flags"]
    routes = {x["dst"]: x for x in json.loads(ns_run(ns, "ip", "-j", "route", "show").stdout)}
    assert routes[SERVICE_CIDR]["dev"] == "veth1" and routes[SERVICE_CIDR]["gateway"] == "169.254.1.1"
    assert routes[node.primary_ip]["dev"] == "veth1"


def test_packets_to_a_pod_on_another_node_and_to_another_exclusive_pod(cluster, pods) -> None:
    n1, n2 = cluster.nodes
    a_ns, a, _ = pods.add(n1)
    b_ns, b, _ = pods.add(n1)
    c_ns, c, _ = pods.add(n2)  # shared ENI pod
    assert a.rc == b.rc == c.rc == 0, a.stdout + b.stdout + c.stdout
    for dst in (ip_of(b), ip_of(c), n1.primary_ip, n2.primary_ip):
        probe.ping(netns.netns_path(a_ns), dst)
    probe.ping(netns.netns_path(c_ns), ip_of(a))
    with whoami_server(netns.netns_path(c_ns), ip_of(c)) as (host, port):
        assert whoami(netns.netns_path(a_ns), host, port) == ip_of(a)  # VPC routing, no NAT


def test_service_traffic_goes_through_the_host_peer_and_is_masqueraded(cluster, pods) -> None:
    """A Service IP DNATed on the node (as kube-proxy does) to a backend on the
    other node: the reply must come back through the node, which only the
    masquerade of host-peer traffic makes happen."""
    n1, n2 = cluster.nodes
    a_ns, a, _ = pods.add(n1)
    backend_ns, backend, _ = pods.add(n2)
    svc_ip = str(list(ipaddress.ip_network(SERVICE_CIDR).hosts())[19])
    table = "twx_svc"
    rules = (f"table ip {table} {{\n chain pre {{\n  type nat hook prerouting priority dstnat; policy accept;\n"
             f"  ip daddr {svc_ip} tcp dport 80 dnat to {ip_of(backend)}:8080\n }}\n}}\n")
    subprocess.run(["ip", "netns", "exec", n1.netns, "nft", "-f", "-"], input=rules, text=True, check=True)
    try:
        nft = ns_run(n1.netns, "nft", "list", "table", "inet", "terway_exclusive").stdout
        assert 'iifname "cali*" oifname != "cali*" masquerade' in nft
        with whoami_server(netns.netns_path(backend_ns), ip_of(backend), 8080):
            # the backend sees the node's address: the pod's traffic was masqueraded
            assert whoami(netns.netns_path(a_ns), svc_ip, 80) == n1.primary_ip
    finally:
        ns_run(n1.netns, "nft", "delete", "table", "ip", table)


def test_del_returns_the_nic_to_the_node_under_its_name_down(cluster, pods) -> None:
    node = cluster.nodes[0]
    before = {x["address"]: x["ifname"] for x in links(node.netns)}
    ns, r, cid = pods.add(node)
    att = [a for a in node.agent.attachments() if a["container_id"] == cid][0]
    mac = enis(cluster)[att["eni"]]["mac"]
    assert node.agent.cni("DEL", cid, netns_path=netns.netns_path(ns)).rc == 0
    assert node.agent.cni("DEL", cid, netns_path="").rc == 0
    back = {x["address"]: x for x in links(node.netns)}
    assert mac in back, "the NIC did not come back to the node"
    if mac in before:
        assert back[mac]["ifname"] == before[mac]
    assert "UP" not in back[mac]["flags"]
    assert "eth0" not in {x["ifname"] for x in links(ns)}


def test_kill_9_during_adds_then_del_loses_no_nic(cluster, pods) -> None:
    node = cluster.nodes[0]
    admin = cluster.emulator.admin()
    rng = random.Random(7)
    for round_no in range(3):
        admin.set_latency("CreateNetworkInterface", 0.5)
        admin.set_latency("AttachNetworkInterface", 0.5)
        made: list[tuple[str, str]] = []
        results: dict[str, CNIRun] = {}

        def add(i: int, made: list = made, results: dict = results, prefix: str = f"k{round_no}-") -> None:
            ns = unique("twxk")
            netns.create(ns)
            cid = unique("k")
            made.append((ns, cid))
            results[cid] = node.agent.cni("ADD", cid, netns_path=netns.netns_path(ns), pod=("default", f"{prefix}{i}"))

        threads = [threading.Thread(target=add, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        time.sleep(rng.uniform(0.2, 2.0))
        node.agent.kill9()
        for t in threads:
            t.join()
        admin.set_latency("CreateNetworkInterface", 0)
        admin.set_latency("AttachNetworkInterface", 0)
        node.agent.start(timeout=60)
        for ns, cid in made:
            assert node.agent.cni("DEL", cid, netns_path=netns.netns_path(ns)).rc == 0
            netns.remove(ns)
        # every ENI attached to this node that is not the primary is back on the node
        node_macs = {x["address"] for x in links(node.netns)}
        mine = [e for e in enis(cluster).values() if e["instance_id"] == node.instance_id and e["status"] == "InUse"]
        missing = [e["id"] for e in mine if e["mac"] not in node_macs]
        assert not missing, f"round {round_no}: ENIs whose NIC is lost: {missing}"
        assert not [a for a in node.agent.attachments() if a["container_id"] in {c for _, c in made}]


def test_a_node_that_ran_exclusive_pods_refuses_a_changed_mode_label(cluster, pods, tmp_path) -> None:
    node = cluster.nodes[0]
    ns, r, cid = pods.add(node)
    assert r.rc == 0
    assert node.agent.cni("DEL", cid, netns_path=netns.netns_path(ns)).rc == 0
    assert node.agent.stop() == 0
    node.agent.settings["node_labels"] = {"terway.alibabacloud.com/network-mode": "shared_eni"}
    try:
        node.agent.start(wait=False)
        assert node.agent.proc.wait(60) == 2
        assert "this node ran pods in exclusive ENI mode (exclusive_eni)" in node.agent.log()
    finally:
        node.agent.settings["node_labels"] = {"terway.alibabacloud.com/network-mode": "exclusive_eni"}
        node.agent.start(timeout=60)


def test_network_policy_is_refused_with_an_event() -> None:
    """The hook itself: a non-empty policy set is refused, never ignored."""
    import trio

    import terway_mode_exclusive_eni as mode
    from terway_agent.context import EventRecorder, NodeInfo
    from terway_agent.errors import FeatureNotSupported
    from terway_agent.types import Allocation, IPAssignment, PodRef

    seen: list[dict] = []

    class Ctx:
        node = NodeInfo(name="n1")
        events = EventRecorder(seen.append)

    alloc = Allocation(kind="eni", ipv4=IPAssignment("10.0.0.5", 24, "10.0.0.253"))

    async def run() -> None:
        await mode.terway_policy(Ctx(), PodRef("ns", "p"), alloc, [])
        with pytest.raises(FeatureNotSupported, match="NetworkPolicy is not supported in exclusive ENI mode"):
            await mode.terway_policy(Ctx(), PodRef("ns", "p"), alloc, [{"podSelector": {}}])

    trio.run(run)
    assert [e["reason"] for e in seen] == ["NetworkPolicyUnsupported"]
    assert seen[0]["object"] == "Node/n1" and seen[0]["type"] == "Warning"


def test_egress_bandwidth_is_shaped_on_the_pods_eni(cluster, pods) -> None:
    node = cluster.nodes[0]
    conf = node.agent.conf(runtimeConfig={"bandwidth": {"egressRate": 16_000_000}})
    ns, r, _ = pods.add(node, conf=conf)
    assert r.rc == 0, r.stdout
    qdisc = json.loads(ns_run(ns, "tc", "-j", "qdisc", "show", "dev", "eth0").stdout)
    assert qdisc and qdisc[0]["kind"] == "tbf"
    b_ns, b, _ = pods.add(cluster.nodes[1])
    rate = probe.measure_throughput(netns.netns_path(ns), netns.netns_path(b_ns), ip_of(b), seconds=2.0) * 8
    assert 0.75 * 16e6 <= rate <= 1.25 * 16e6, f"measured {rate / 1e6:.1f} Mbit/s"


def test_a_nic_lost_with_its_namespace_is_discarded_not_reused(cluster, pods) -> None:
    """The namespace is deleted behind the agent's back with the ENI inside (the
    emulated ENI, a veth end, dies with it): DEL succeeds, and the ENI is
    detached and deleted instead of going back to the pool."""
    node = cluster.nodes[0]
    ns, r, cid = pods.add(node)
    assert r.rc == 0, r.stdout
    eni_id = [a for a in node.agent.attachments() if a["container_id"] == cid][0]["eni"]
    netns.remove(ns)
    assert node.agent.cni("DEL", cid, netns_path=netns.netns_path(ns)).rc == 0

    def gone() -> bool:
        e = enis(cluster).get(eni_id)
        return e is None or e["status"] in ("Available", "Deleting")

    deadline = time.monotonic() + 30
    while not gone() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert gone(), f"{eni_id} is still attached: {enis(cluster).get(eni_id)}"
    # the next pod gets a working ENI at once
    ns2, r2, _ = pods.add(node)
    assert r2.rc == 0, r2.stdout
    probe.ping(netns.netns_path(ns2), cluster.nodes[1].primary_ip)
