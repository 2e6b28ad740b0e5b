"""GC, repair and pod annotations of the shared-ENI mode: real leftovers (veths,
rules, routes, qdiscs) in real namespaces, real agents restarted and killed."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from agentkit import SimAgent, ns_run, unique
from cloudnodes import HOST_STACK_CIDR, SERVICE_CIDR, CloudCluster, start_cluster

from terway_agent.datapath import _probe as probe
from terway_agent.datapath import netns
from terway_mode_shared_eni import _gc

from .conftest import PodObjects, host_veth, jq, pod_ip, pod_objects, wait_for

pytestmark = pytest.mark.netns

HOST_STACK_IP = HOST_STACK_CIDR.split("/")[0]
#: the node-level rules of a node that has run a pod (service CIDR, host-stack /32)
NODE_RULES = {(512, "all", SERVICE_CIDR, "main"), (512, "all", HOST_STACK_IP, "main")}


@pytest.fixture(scope="module")
def lc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CloudCluster]:
    if os.geteuid() != 0:
        pytest.skip("shared-ENI tests create network namespaces and need root")
    c = start_cluster(
        tmp_path_factory.mktemp("sharedeni-lc"),
        netconf={"host_stack_cidrs": [HOST_STACK_CIDR]},
        settings_over={"repair_interval": 1.0},
    )
    yield c
    c.stop()


def restart(node, **settings) -> None:
    """Stop the node's agent gracefully and start it again with ``settings`` changed."""
    assert node.agent.stop() == 0, node.agent.log()
    node.agent.settings.update(settings)
    node.agent.start(timeout=60)


def table_of(node_ns: str, ip: str) -> str:
    (rule,) = [x for x in jq(node_ns, "rule", "show") if x.get("src") == ip and x["priority"] == 2048]
    return rule["table"]


def make_leftovers(node_ns: str, pod_ns: str, veth: str, ip: str, table: str) -> None:
    """What a shared-ENI pod leaves on a node when its attachment vanished: its
    veth (peer in the pod namespace) with an ingress TBF, its host route, its rules."""
    for cmd in (
        ("ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", pod_ns),
        ("ip", "link", "set", veth, "up"),
        ("ip", "route", "add", f"{ip}/32", "dev", veth, "scope", "link"),
        ("ip", "rule", "add", "priority", "512", "to", ip, "lookup", "main"),
        ("ip", "rule", "add", "priority", "2048", "from", ip, "lookup", table),
        ("tc", "qdisc", "add", "dev", veth, "root", "tbf", "rate", "8mbit", "burst", "16kb", "latency", "25ms"),
    ):
        ns_run(node_ns, *cmd, check=True)


# -- GC ---------------------------------------------------------------------------------


@pytest.fixture
def scratch() -> Iterator[tuple[str, str, str]]:
    """A node namespace and two pod namespaces, no agent."""
    if os.geteuid() != 0:
        pytest.skip("needs root")
    names = (unique("twsgn"), unique("twsgp"), unique("twsgp"))
    for n in names:
        netns.create(n)
    yield names
    for n in names:
        netns.remove(n)


def test_remove_leftovers_takes_a_vanished_attachments_objects_and_nothing_else(scratch) -> None:
    node, gone_ns, live_ns = scratch
    gone, live = host_veth("default", "gone-0"), host_veth("default", "live-0")
    make_leftovers(node, gone_ns, gone, "10.0.0.5", "1003")
    for cmd in (  # the vanished pod's IPv6 half
        ("ip", "-6", "route", "add", "fd00::5/128", "dev", gone),
        ("ip", "-6", "rule", "add", "priority", "512", "to", "fd00::5", "lookup", "main"),
        ("ip", "-6", "rule", "add", "priority", "2048", "from", "fd00::5", "lookup", "1003"),
    ):
        ns_run(node, *cmd, check=True)
    make_leftovers(node, live_ns, live, "10.0.0.6", "1003")  # a live pod
    for cmd in (
        # the live pod's veth still routes its previous address: a leftover
        ("ip", "route", "add", "10.0.0.7/32", "dev", live, "scope", "link"),
        # rules of a pod whose veth is already gone
        ("ip", "rule", "add", "priority", "512", "to", "10.0.0.8", "lookup", "main"),
        ("ip", "rule", "add", "priority", "2048", "from", "10.0.0.8", "lookup", "1003"),
        # the node-level rules: host-stack address (a /32!) and Service CIDR
        ("ip", "rule", "add", "priority", "512", "to", HOST_STACK_CIDR, "lookup", "main"),
        ("ip", "rule", "add", "priority", "512", "to", SERVICE_CIDR, "lookup", "main"),
        # another tool's rule of the same shape, no pod of ours behind it
        ("ip", "rule", "add", "priority", "512", "to", "10.99.0.1", "lookup", "main"),
    ):
        ns_run(node, *cmd, check=True)

    with netns.enter(netns.netns_path(node)):
        errors = _gc.remove_leftovers({live}, {"10.0.0.6"}, [HOST_STACK_CIDR, SERVICE_CIDR])
    assert errors == []
    kept = PodObjects(
        rules=frozenset({
            (512, "all", "10.0.0.6", "main"), (2048, "10.0.0.6", None, "1003"),
            (512, "all", HOST_STACK_IP, "main"), (512, "all", SERVICE_CIDR, "main"),
            (512, "all", "10.99.0.1", "main"),
        }),
        routes=frozenset({("10.0.0.6", live)}),
        veths=frozenset({live}),
    )
    assert pod_objects(node) == kept, kept.diff(pod_objects(node))
    assert jq(gone_ns, "link", "show", "eth0") == [], "the vanished pod's veth peer went with it"
    assert [q["kind"] for q in json.loads(ns_run(node, "tc", "-j", "qdisc", "show", "dev", live).stdout)] == ["tbf"]
    # idempotent: nothing more to do
    with netns.enter(netns.netns_path(node)):
        assert _gc.remove_leftovers({live}, {"10.0.0.6"}, [HOST_STACK_CIDR, SERVICE_CIDR]) == []
    assert pod_objects(node) == kept


def _vanished_pod(lc_node, table: str) -> tuple[str, str, str]:
    """Leftovers of a pod whose attachment vanished (state lost), in the node's namespace."""
    pod_ns = unique("twsgp")
    netns.create(pod_ns)
    veth, ip = host_veth("default", unique("gone-")), "192.168.63.201"
    make_leftovers(lc_node.netns, pod_ns, veth, ip, table)
    return pod_ns, veth, ip


def _assert_gone(node_ns: str, veth: str, ip: str) -> None:
    objs = pod_objects(node_ns)
    assert veth not in objs.veths
    assert not [r for r in objs.rules if ip in (r[1], r[2])], objs.rules
    assert not [r for r in objs.routes if r[0] == ip], objs.routes


def test_cni_gc_keeps_the_host_stack_rule_and_removes_a_vanished_pods_leftovers(lc, pods) -> None:
    node = lc.nodes[0]
    ns, r, _cid = pods.add(node, "gc-live")
    assert r.rc == 0, r.stdout
    ip = pod_ip(r)
    table = table_of(node.netns, ip)
    pod_ns, veth, gone_ip = _vanished_pod(node, table)
    try:
        before = pod_objects(node.netns)
        assert NODE_RULES <= before.rules and veth in before.veths
        valid = [{"containerID": a["container_id"], "ifname": a["ifname"]} for a in node.agent.attachments()]
        g = node.agent.cni("GC", conf=node.agent.conf("1.1.0", **{"cni.dev/valid-attachments": valid}))
        assert g.rc == 0, g.stdout + g.stderr
        after = pod_objects(node.netns)
        # the node-level rules, the host-stack /32 among them, survive ...
        assert NODE_RULES <= after.rules, after.rules
        # ... so does the live pod ...
        assert {(512, "all", ip, "main"), (2048, ip, None, table)} <= after.rules
        assert (ip, host_veth("default", "gc-live")) in after.routes
        # ... while the vanished pod's veth (and its TBF, its peer), route and rules are gone
        _assert_gone(node.netns, veth, gone_ip)
        assert jq(pod_ns, "link", "show", "eth0") == []
        # the host-stack address is still reached through the node
        ns_run(node.netns, "ip", "addr", "replace", HOST_STACK_CIDR, "dev", "lo", check=True)
        probe.ping(netns.netns_path(ns), HOST_STACK_IP)
    finally:
        netns.remove(pod_ns)


def test_the_periodic_gc_pass_keeps_the_host_stack_rule(lc, pods) -> None:
    node = lc.nodes[1]
    _ns, r, _cid = pods.add(node, "pgc-live")
    assert r.rc == 0, r.stdout
    ip = pod_ip(r)
    table = table_of(node.netns, ip)
    restart(node, gc_interval=1.0)
    pod_ns, veth, gone_ip = _vanished_pod(node, table)
    try:
        def cleaned() -> bool:  # the pass removes the veth, then the rules and the route: wait for all
            objs = pod_objects(node.netns)
            return veth not in objs.veths and not [r for r in objs.rules if gone_ip in (r[1], r[2])] and not [
                r for r in objs.routes if r[0] == gone_ip]

        wait_for(cleaned, timeout=15, what="the periodic GC pass")
        _assert_gone(node.netns, veth, gone_ip)
        after = pod_objects(node.netns)
        assert NODE_RULES <= after.rules, after.rules
        assert {(512, "all", ip, "main"), (2048, ip, None, table)} <= after.rules
    finally:
        netns.remove(pod_ns)
        restart(node, gc_interval=300.0)


# -- repair -----------------------------------------------------------------------------


def _eni_default(node_ns: str, table: str) -> list:
    return jq(node_ns, "route", "show", "table", table)


def test_repair_restores_a_flushed_eni_route_table(lc, pods) -> None:
    n1, n2 = lc.nodes
    ns, r, _ = pods.add(n1)
    assert r.rc == 0, r.stdout
    table = table_of(n1.netns, pod_ip(r))
    (default,) = _eni_default(n1.netns, table)
    ns_run(n1.netns, "ip", "route", "flush", "table", table, check=True)
    assert _eni_default(n1.netns, table) == []
    wait_for(lambda: _eni_default(n1.netns, table) == [default], timeout=15, what="the repair pass")
    probe.ping(netns.netns_path(ns), n2.primary_ip)


def test_repair_at_agent_start_before_serving(lc, pods) -> None:
    """Rules and the ENI table flushed while the agent is down (a reboot) are back
    when the agent serves again; the periodic pass is an hour away."""
    n1, n2 = lc.nodes
    ns, r, _ = pods.add(n1)
    assert r.rc == 0, r.stdout
    ip = pod_ip(r)
    table = table_of(n1.netns, ip)
    before = pod_objects(n1.netns)
    (default,) = _eni_default(n1.netns, table)
    assert n1.agent.stop() == 0
    try:
        for prio, which in (("512", "to"), ("2048", "from")):
            ns_run(n1.netns, "ip", "rule", "del", "priority", prio, which, ip, check=True)
        ns_run(n1.netns, "ip", "rule", "del", "priority", "512", "to", HOST_STACK_CIDR, check=True)
        ns_run(n1.netns, "ip", "route", "flush", "table", table, check=True)
        n1.agent.settings["repair_interval"] = 3600.0
        n1.agent.start(timeout=60)
        assert pod_objects(n1.netns) == before, before.diff(pod_objects(n1.netns))
        assert _eni_default(n1.netns, table) == [default]
        probe.ping(netns.netns_path(ns), n2.primary_ip)
    finally:
        restart(n1, repair_interval=1.0)


def test_repair_follows_an_eni_whose_ifindex_changed(lc, pods) -> None:
    """The ENI device re-appears with another ifindex (re-plugged): repair finds it
    by MAC, fills table 1000+<new ifindex>, points the pod's rule at it and
    updates the stored plans so that CHECK agrees."""
    n1, n2 = lc.nodes
    ns, r, cid = pods.add(n1)
    assert r.rc == 0, r.stdout
    ip = pod_ip(r)
    old_table = table_of(n1.netns, ip)
    old_index = int(old_table) - 1000
    (eni,) = [x for x in jq(n1.netns, "link", "show") if x["ifindex"] == old_index]
    # Move the ENI to a namespace where its ifindex is taken, and back: the kernel
    # gives it a new one (and drops its routes, like a re-plug).
    tmp = unique("twsgx")
    netns.create(tmp)
    try:
        ns_run(tmp, "ip", "link", "add", "taken", "index", str(old_index), "type", "veth", "peer", "name", "taken1",
               check=True)
        ns_run(n1.netns, "ip", "link", "set", eni["ifname"], "netns", tmp, check=True)
        ns_run(tmp, "ip", "link", "set", eni["ifname"], "netns", n1.netns, check=True)
    finally:
        netns.remove(tmp)
    (moved,) = [x for x in jq(n1.netns, "link", "show") if x.get("address") == eni["address"]]
    assert moved["ifindex"] != old_index
    new_table = str(1000 + moved["ifindex"])
    wait_for(lambda: [x["table"] for x in jq(n1.netns, "rule", "show") if x.get("src") == ip] == [new_table],
             timeout=15, what="the pod's rule to look up the new ENI table")
    wait_for(lambda: len(_eni_default(n1.netns, new_table)) == 1, timeout=15, what="the new ENI table")
    (default,) = _eni_default(n1.netns, new_table)
    assert default["dev"] == eni["ifname"] and default["flags"] == ["onlink"]
    probe.ping(netns.netns_path(ns), n2.primary_ip)
    check = n1.agent.cni("CHECK", cid, netns_path=netns.netns_path(ns), conf=n1.agent.conf(prevResult=r.out))
    assert check.rc == 0, check.stdout


# -- pod annotations --------------------------------------------------------------------

ANNOTATED_RUNNER = Path(__file__).resolve().parent / "_annotated_agent.py"


def test_legacy_bandwidth_annotations_are_applied_and_invalid_ones_refused_by_name(lc, pods, tmp_path) -> None:
    """Pod annotations come from the Kubernetes API; here from a file, read by the
    real agent (tests/shared_eni/_annotated_agent.py) in place of the node's agent."""
    node = lc.nodes[1]
    pods_file = tmp_path / "pods.json"
    pods_file.write_text(json.dumps({
        "default/ann-bad": {"k8s.aliyun.com/ingress-bandwidth": "fast"},
        "default/ann-ok": {"k8s.aliyun.com/egress-bandwidth": "16M"},
    }))
    assert node.agent.stop() == 0
    annotated = SimAgent(node.agent.workdir, node.netns, dict(node.agent.settings),
                         command_prefix=[sys.executable, str(ANNOTATED_RUNNER), str(pods_file)])
    try:
        annotated.start(timeout=60)
        bad_ns, bad_cid = pods.sandbox(node)
        bad = annotated.cni("ADD", bad_cid, netns_path=netns.netns_path(bad_ns), pod=("default", "ann-bad"))
        assert bad.rc == 1 and bad.code == 7, bad.stdout
        assert "annotation k8s.aliyun.com/ingress-bandwidth" in bad.out["msg"] and "fast" in bad.out["msg"]
        assert not [a for a in annotated.attachments() if a["container_id"] == bad_cid]
        assert host_veth("default", "ann-bad") not in pod_objects(node.netns).veths

        ok_ns, ok_cid = pods.sandbox(node)
        ok = annotated.cni("ADD", ok_cid, netns_path=netns.netns_path(ok_ns), pod=("default", "ann-ok"))
        assert ok.rc == 0, ok.stdout
        (qdisc,) = json.loads(ns_run(ok_ns, "tc", "-j", "qdisc", "show", "dev", "eth0").stdout)
        assert qdisc["kind"] == "tbf" and qdisc["options"]["rate"] == 2_000_000  # bytes/s
        assert annotated.cni("DEL", ok_cid, netns_path=netns.netns_path(ok_ns)).rc == 0
    finally:
        annotated.stop()
        node.agent.start(timeout=60)
