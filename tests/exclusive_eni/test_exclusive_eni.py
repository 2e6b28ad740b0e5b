"""The exclusive-ENI mode: the pod owns a whole ENI (a veth end with the ENI's MAC
that the emulator hot-plugs into the node namespace), real packets through the VPC."""

from __future__ import annotations

import ipaddress
import json
import os
import random
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from agentkit import CNIRun, ns_run, unique, whoami, whoami_server
from cloudnodes import SERVICE_CIDR, CloudCluster, Node, start_cluster

import terway_mode_exclusive_eni as mode
from terway_agent.datapath import _probe as probe
from terway_agent.datapath import netns
from terway_mode_exclusive_eni import _plan

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


# --- crash at each step of the move (deterministic: the test-only TERWAY_TEST_CRASH_AT hook) ---


def _cli_json(node: Node, *args: str) -> Any:
    r = node.agent.run_cli(*args, "--json", "--socket", node.agent.socket)
    assert r.stdout.strip(), f"terway-agent {' '.join(args)} printed nothing: {r.stderr}"
    return json.loads(r.stdout)


def _pool_eni(node: Node, eni_id: str) -> dict:
    (row,) = [e for e in _cli_json(node, "pool")["enis"] if e["eni_id"] == eni_id]
    return row


def _assert_nic_home(cluster: CloudCluster, node: Node, eni_id: str, pod_ns: str, pod_name: str) -> dict:
    """The ENI's NIC is on the node under its original name (the emulator plugs
    ENI n in as eth<n>), down; nothing of the pod's datapath is left anywhere."""
    eni = enis(cluster)[eni_id]
    assert eni["status"] == "InUse" and eni["instance_id"] == node.instance_id, eni
    on_node = {x["address"]: x for x in links(node.netns)}
    assert eni["mac"] in on_node, f"the NIC of {eni_id} is not on the node: {sorted(on_node)}"
    nic = on_node[eni["mac"]]
    assert nic["ifname"] == f"eth{eni['device_index']}", f"{eni_id} came back as {nic['ifname']}"
    assert "UP" not in nic["flags"], f"{nic['ifname']} is up: {nic['flags']}"
    in_pod = {x["ifname"]: x["address"] for x in links(pod_ns)}
    assert eni["mac"] not in in_pod.values() and "veth1" not in in_pod, in_pod
    host_veth = _plan.host_veth_name("default", pod_name)
    assert host_veth not in {x["ifname"] for x in on_node.values()}, f"{host_veth} was left on the node"
    routes = json.loads(ns_run(node.netns, "ip", "-j", "route", "show").stdout or "[]")
    assert not [r for r in routes if r["dst"] in (eni["primary_ip"], f"{eni['primary_ip']}/32")], routes
    return eni


@pytest.fixture
def crash_agent(cluster: CloudCluster) -> Iterator[Node]:
    """Node 1's agent, restarted by the test with TERWAY_TEST_CRASH_AT; afterwards
    running again without it.  Cloud latencies at 0 (the crash is in the move)."""
    node = cluster.nodes[0]
    admin = cluster.emulator.admin()
    for api in ("CreateNetworkInterface", "AttachNetworkInterface"):
        admin.set_latency(api, 0)
    assert node.agent.stop() == 0
    try:
        yield node
    finally:
        node.agent.env.pop(mode.CRASH_ENV, None)
        if node.agent.proc is not None and node.agent.proc.poll() is None:
            node.agent.stop()
        node.agent.start(timeout=60)


@pytest.mark.parametrize("step", mode.CRASH_STEPS)
def test_crash_at_each_step_of_the_move_loses_no_nic(cluster, pods, crash_agent, step) -> None:
    """The agent dies (os._exit(137), as kill -9) at ``step``.  After the restart
    the NIC is on the node under its original name, down, with no host veth or
    route left, and the ENI is accounted for: still the attachment's when the
    ADD never committed (the start-up roll-back gave the NIC back, the
    runtime's DEL or retried ADD releases it), idle in the pool when DEL died
    after the NIC came home (resync finished the DEL).  The node serves again."""
    node = crash_agent
    node.agent.env[mode.CRASH_ENV] = step
    node.agent.start(timeout=60)
    ns, cid = pods.sandbox(node)
    path = netns.netns_path(ns)
    pod = ("default", unique("crash-"))
    if step == "del_nic_home":
        r = node.agent.cni("ADD", cid, netns_path=path, pod=pod)
        assert r.rc == 0, r.stdout + r.stderr
        eni_id = [a for a in node.agent.attachments() if a["container_id"] == cid][0]["eni"]
        r = node.agent.cni("DEL", cid, netns_path=path)
    else:
        r = node.agent.cni("ADD", cid, netns_path=path, pod=pod)
    assert r.rc != 0, f"{step}: the CNI call succeeded although the agent died: {r.stdout}"
    assert node.agent.proc.wait(10) == 137, f"the agent did not die at {step}:\n{node.agent.log()}"

    node.agent.env.pop(mode.CRASH_ENV)
    node.agent.start(timeout=60)
    mine = [a for a in node.agent.attachments() if a["container_id"] == cid]
    if step == "del_nic_home":
        assert mine == [], f"resync did not finish the DEL: {mine}"
    else:
        assert [a["state"] for a in mine] == ["allocated"], mine
        eni_id = mine[0]["eni"]
    _assert_nic_home(cluster, node, eni_id, ns, pod[1])
    row = _pool_eni(node, eni_id)
    assert row["state"] == "ready", row
    assert row["owner"] == (None if step == "del_nic_home" else f"{cid}/eth0"), row
    mapping = _cli_json(node, "mapping")
    assert mapping["consistent"], mapping["problems"]

    # the runtime retries (a retried ADD cleans the half-made attachment up first), then DELs
    r = node.agent.cni("ADD", cid, netns_path=path, pod=pod)
    assert r.rc == 0, r.stdout + r.stderr
    (att,) = [a for a in node.agent.attachments() if a["container_id"] == cid]
    assert att["state"] == "ready"
    (eth0,) = [x for x in links(ns) if x["ifname"] == "eth0"]
    assert eth0["address"] == enis(cluster)[att["eni"]]["mac"]
    assert node.agent.cni("DEL", cid, netns_path=path).rc == 0
    _assert_nic_home(cluster, node, att["eni"], ns, pod[1])
    assert _pool_eni(node, att["eni"])["owner"] is None


# --- repair, home name, CHECK of the masquerade, sysctls, TBF -----------------------------


def _random_mac() -> str:
    return "02:7e:" + ":".join(f"{random.randrange(256):02x}" for _ in range(4))


def _bare_ctx(tmp_path, *, host_peer: bool = False) -> Any:
    """A real ModeContext (real store) for calling the mode's hooks in-process."""
    from types import SimpleNamespace

    from terway_agent.context import ModeContext, NodeInfo
    from terway_agent.store import Store

    cfg = SimpleNamespace(netconf=SimpleNamespace(disable_host_peer=not host_peer))
    return ModeContext(mode=mode.MODE, node=NodeInfo(name="n1"), store=Store(tmp_path / "state.db"),
                       state_dir=tmp_path, config_getter=lambda: cfg)


def test_repair_with_a_missing_nic_does_not_wait(tmp_path) -> None:
    """Repair runs with every ADD/DEL held at the gate: a stored NIC that is
    nowhere is reported at once, not waited for as a hot-plug (10 s) would be."""
    import trio

    from terway_agent.types import Attachment, LinkResult, PodRef

    if os.geteuid() != 0:
        pytest.skip("needs root for a network namespace")
    ns = unique("twxr")
    netns.create(ns)
    try:
        mac = _random_mac()
        plan = _plan.pod_plan(
            pod_netns=netns.netns_path(ns), ifname="eth0", eni_mac=mac, eni_home_name="eth7",
            ip4="192.168.40.7", cidr4="192.168.32.0/19", gateway4="192.168.63.253", ip6=None, gateway6=None,
            mtu=1500, host_peer=False, host_veth=_plan.host_veth_name("default", "r"), peer_cidrs=[],
        )
        att = Attachment(container_id="c1", ifname="eth0", network="terway", pod=PodRef("default", "r"),
                         netns=netns.netns_path(ns), mode=mode.MODE, state="ready", allocation=None,
                         link=LinkResult(state={"plan": plan.to_json(), "home_name": "eth7"}))
        ctx = _bare_ctx(tmp_path)
        started = time.monotonic()
        report = trio.run(mode.terway_repair, ctx, [att])
        took = time.monotonic() - started
    finally:
        netns.remove(ns)
    assert report.checked == 1 and not report.repaired
    assert len(report.failed) == 1 and f"no device with MAC {mac}" in report.failed[0], report.failed
    assert took < 2.0, f"repair waited {took:.1f}s for a missing NIC"


_HOME_NAME_SCRIPT = """
import json, subprocess, sys
from pathlib import Path
from types import SimpleNamespace
import trio
import terway_mode_exclusive_eni as mode
from terway_agent.context import ModeContext, NodeInfo
from terway_agent.store import Store

db, mac, first, other = sys.argv[1:5]
ctx = ModeContext(mode=mode.MODE, node=NodeInfo(name="n1"), store=Store(Path(db)), state_dir=Path(db).parent,
                  config_getter=lambda: SimpleNamespace())
home = lambda at_setup: trio.run(lambda: mode._home_name(ctx, mac, "", at_setup=at_setup))[0]
out = {"setup": home(True)}
subprocess.run(["ip", "link", "set", first, "name", other], check=True)
out["teardown_after_rename"] = home(False)
out["stored_then"] = ctx.store.kv_get(mode.MODE, "home/" + mac)
out["setup_again"] = home(True)
out["stored_last"] = ctx.store.kv_get(mode.MODE, "home/" + mac)
print(json.dumps(out))
"""


def test_the_home_name_is_the_nics_name_at_setup_and_the_stored_one_at_teardown(tmp_path) -> None:
    """At setup the NIC's current name on the node is its home (stored); on the
    teardown path the stored name wins over a kernel-chosen one (a NIC returned
    by a deleted namespace); the next setup stores the name it then has.
    Runs in a scratch namespace standing in for the node."""
    if os.geteuid() != 0:
        pytest.skip("needs root for a network namespace")
    ns = unique("twxh")
    netns.create(ns)
    mac = _random_mac()
    try:
        ns_run(ns, "ip", "link", "add", "twxa0", "address", mac, "type", "veth", "peer", "name", "twxp0", check=True)
        r = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", _HOME_NAME_SCRIPT,
                            str(tmp_path / "state.db"), mac, "twxa0", "dev7"],
                           capture_output=True, text=True, timeout=60)
    finally:
        netns.remove(ns)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout.splitlines()[-1]) == {
        "setup": "twxa0", "teardown_after_rename": "twxa0", "stored_then": "twxa0",
        "setup_again": "dev7", "stored_last": "dev7",
    }


def test_del_with_the_home_name_taken_by_another_device_goes_home_under_the_fallback_name(cluster, pods) -> None:
    """After a reboot or a hot-plug the kernel may give the ENI's old name to
    another NIC: DEL must still bring the NIC home (under its stable fallback
    name), not fail forever on EEXIST."""
    node = cluster.nodes[0]
    ns, r, cid = pods.add(node)
    assert r.rc == 0, r.stdout
    mac = ns_run(ns, "cat", "/sys/class/net/eth0/address", check=True).stdout.strip()
    db = sqlite3.connect(Path(node.agent.settings["state_dir"]) / "state.db")
    (row,) = db.execute("SELECT value FROM kv WHERE plugin = 'exclusive_eni' AND key = ?", (f"home/{mac}",))
    db.close()
    home = json.loads(row[0])
    ns_run(node.netns, "ip", "link", "add", home, "type", "veth", "peer", "name", unique("twxo"), check=True)
    try:
        d = node.agent.cni("DEL", cid, netns_path=netns.netns_path(ns))
        assert d.rc == 0, d.stdout + d.stderr
        fallback = "eni" + mac.replace(":", "")[-10:]
        back = json.loads(ns_run(node.netns, "ip", "-j", "link", "show", "dev", fallback, check=True).stdout)[0]
        assert back["address"] == mac and "UP" not in back["flags"]
        assert cid not in {a["container_id"] for a in node.agent.attachments()}
        assert "exclusive_eni.home_name.taken" in node.agent.log()
        # the ENI serves the next pod: its home is now the name it has on the node
        ns2, r2, cid2 = pods.add(node)
        assert r2.rc == 0, r2.stdout
        assert node.agent.cni("DEL", cid2, netns_path=netns.netns_path(ns2)).rc == 0
    finally:
        ns_run(node.netns, "ip", "link", "del", home)


def test_check_reports_a_missing_masquerade_and_repair_restores_it(cluster, pods) -> None:
    node = cluster.nodes[0]
    ns, r, cid = pods.add(node)
    assert r.rc == 0, r.stdout
    path = netns.netns_path(ns)
    assert node.agent.cni("CHECK", cid, netns_path=path).rc == 0
    ns_run(node.netns, "nft", "delete", "table", "inet", _plan.NFT_TABLE, check=True)
    c = node.agent.cni("CHECK", cid, netns_path=path)
    assert c.rc != 0 and c.code == 102, c.stdout
    assert f"nftables table inet {_plan.NFT_TABLE} (masquerade of host-peer traffic): missing" in c.out["msg"]
    # a different table (the rule gone) is reported too
    ns_run(node.netns, "nft", "add", "table", "inet", _plan.NFT_TABLE, check=True)
    c = node.agent.cni("CHECK", cid, netns_path=path)
    assert c.code == 102 and "masquerade of host-peer traffic): different" in c.out["msg"], c.stdout
    # the repair pass (at start) rewrites it
    assert node.agent.stop() == 0
    node.agent.start(timeout=60)
    nft = ns_run(node.netns, "nft", "list", "table", "inet", _plan.NFT_TABLE).stdout
    assert 'iifname "cali*" oifname != "cali*" masquerade' in nft
    assert node.agent.cni("CHECK", cid, netns_path=path).rc == 0


def test_rp_filter_and_forwarding_as_terway_facts_ask(cluster, pods) -> None:
    """rp_filter 0 for all, default and the link on the node (host veth) and in
    the pod (the ENI and veth1); forwarding on the node."""
    node = cluster.nodes[0]
    ns, r, _ = pods.add(node, name := unique("sysctl-"))
    assert r.rc == 0, r.stdout
    host_veth = _plan.host_veth_name("default", name)

    def sysctl(where: str, key: str) -> str:
        return ns_run(where, "cat", f"/proc/sys/net/ipv4/conf/{key}", check=True).stdout.strip()

    for key in ("all/rp_filter", "default/rp_filter", f"{host_veth}/rp_filter"):
        assert sysctl(node.netns, key) == "0", key
    for key in ("all/forwarding", "default/forwarding", f"{host_veth}/forwarding"):
        assert sysctl(node.netns, key) == "1", key
    for key in ("all/rp_filter", "eth0/rp_filter", "veth1/rp_filter"):
        assert sysctl(ns, key) == "0", key


def test_tbf_bursts_use_the_enis_real_mtu_with_auto_mtu() -> None:
    """auto_mtu (mtu None: the ENI keeps its MTU): the egress TBF on the ENI, the
    ingress TBF on the host veth and the host peer use the ENI's MTU (9000), not 1500."""
    stages = dict(_plan.pod_stages(
        pod_netns="/var/run/netns/p", ifname="eth0", eni_mac="02:7e:00:00:00:01", eni_home_name="eth3",
        ip4="192.168.40.7", cidr4="192.168.32.0/19", gateway4="192.168.63.253", ip6=None, gateway6=None,
        mtu=None, eni_mtu=9000, host_peer=True, host_veth="cali0123456789a", peer_cidrs=[SERVICE_CIDR],
        egress_bps=8_000_000, ingress_bps=8_000_000,
    ))
    assert list(stages) == list(_plan.STAGES)
    from terway_agent import datapath as dp

    (moved,) = stages["nic_moved"].objects
    assert isinstance(moved, dp.MovedLink) and moved.mtu is None
    (egress,) = [o for o in stages["nic_addressed"] if isinstance(o, dp.Tbf)]
    (ingress,) = [o for o in stages["host_peer_created"] if isinstance(o, dp.Tbf)]
    (veth,) = [o for o in stages["host_peer_created"] if isinstance(o, dp.Veth)]
    assert (egress.dev, egress.burst_bytes) == ("eth0", 9000 + 1500)
    assert (ingress.dev, ingress.burst_bytes) == ("cali0123456789a", 9000 + 1500)
    assert veth.mtu == 9000
