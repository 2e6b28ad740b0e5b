"""The shared-ENI mode on two simulated nodes: real ENIs (veths with the ENI's
MAC) from the emulator, real pods (namespaces), real packets through the VPC."""

from __future__ import annotations

import hashlib
import ipaddress
import json
import subprocess
import threading
import time

import pytest
from agentkit import ns_run, unique, whoami, whoami_server
from cloudnodes import HOST_STACK_CIDR, SERVICE_CIDR, start_cluster

from terway_agent.datapath import _probe as probe
from terway_agent.datapath import netns

from .conftest import host_veth, jq, pod_ip, pod_objects, wait_for

pytestmark = pytest.mark.netns

POD_NETS = [ipaddress.ip_network("192.168.32.0/19"), ipaddress.ip_network("192.168.64.0/19")]


def eni_of(node_ns: str, mac: str) -> dict:
    for link in jq(node_ns, "link", "show"):
        if link.get("address") == mac:
            return link
    raise AssertionError(f"no device with MAC {mac} in {node_ns}")


def test_pod_gets_a_vpc_address_and_exactly_the_originals_kernel_objects(cluster, pods) -> None:
    node = cluster.nodes[0]
    ns, r, _cid = pods.add(node, "web-0")
    assert r.rc == 0, r.stdout + r.stderr
    ip = pod_ip(r)
    assert any(ipaddress.ip_address(ip) in net for net in POD_NETS), ip
    att = [a for a in node.agent.attachments() if a["pod"] == "default/web-0"][0]
    eni = eni_of(node.netns, eni_mac(cluster, att["eni"]))
    table = 1000 + eni["ifindex"]
    host_veth = "cali" + hashlib.sha1(b"default.web-0").hexdigest()[:11]

    # node side: host veth, /32 route scope link, rules 512 and 2048, the ENI table
    assert host_veth in [link["ifname"] for link in jq(node.netns, "link", "show")]
    routes = jq(node.netns, "route", "show", f"{ip}/32")
    assert routes and routes[0]["dev"] == host_veth and routes[0]["scope"] == "link"
    rules = jq(node.netns, "rule", "show")
    assert {"priority": 512, "dst": ip, "table": "main"} in [
        {k: x.get(k) for k in ("priority", "dst", "table")} for x in rules if x.get("dst") == ip
    ]
    assert [x for x in rules if x.get("src") == ip and x["priority"] == 2048 and x["table"] == str(table)]
    default = jq(node.netns, "route", "show", "table", str(table))
    gw = str(list(ipaddress.ip_network(_vsw_cidr(ip)).hosts())[-2])  # broadcast - 2, the vSwitch gateway
    assert default == [{"dst": "default", "gateway": gw, "dev": eni["ifname"], "flags": ["onlink"]}]

    # pod side: eth0 with the /32, default via 169.254.1.1 onlink, a PERMANENT neighbour to the host veth's MAC
    addrs = jq(ns, "addr", "show", "dev", "eth0")[0]["addr_info"]
    assert {"family": "inet", "local": ip, "prefixlen": 32} in [
        {k: a[k] for k in ("family", "local", "prefixlen")} for a in addrs
    ]
    (default_route,) = jq(ns, "route", "show", "default")
    assert (default_route["gateway"], default_route["dev"], default_route["flags"]) == ("169.254.1.1", "eth0", ["onlink"])
    neigh = jq(ns, "neigh", "show", "169.254.1.1")[0]
    host_mac = jq(node.netns, "link", "show", host_veth)[0]["address"]
    assert neigh["lladdr"] == host_mac and "PERMANENT" in neigh["state"]

    # sysctls (terway-facts.md, "Datapath"): forwarding on, rp_filter off for all, default and the links
    for link in ("all", "default", eni["ifname"], host_veth):
        for key, want in (("forwarding", "1"), ("rp_filter", "0")):
            got = ns_run(node.netns, "sysctl", "-n", f"net.ipv4.conf.{link}.{key}").stdout.strip()
            assert got == want, (link, key, got)


def eni_mac(cluster, eni_id: str) -> str:
    """The ENI's MAC as the cloud (the emulator's state) knows it."""
    for eni in cluster.emulator.admin().state()["enis"]:
        if eni["id"] == eni_id:
            return eni["mac"]
    raise AssertionError(f"the cloud does not know {eni_id}")


def _vsw_cidr(ip: str) -> str:
    for net in POD_NETS:
        if ipaddress.ip_address(ip) in net:
            return str(net)
    raise AssertionError(ip)


def test_pod_to_pod_on_one_node_and_across_nodes_icmp_and_tcp(cluster, pods) -> None:
    n1, n2 = cluster.nodes
    a_ns, a, _ = pods.add(n1)
    b_ns, b, _ = pods.add(n1)
    c_ns, c, _ = pods.add(n2)
    assert a.rc == b.rc == c.rc == 0
    for src_ns, dst in ((a_ns, pod_ip(b)), (a_ns, pod_ip(c)), (c_ns, pod_ip(a))):
        probe.ping(netns.netns_path(src_ns), dst)
    # the peer sees the pod's own VPC address: no overlay, no NAT
    with whoami_server(netns.netns_path(c_ns), pod_ip(c)) as (host, port):
        assert whoami(netns.netns_path(a_ns), host, port) == pod_ip(a)
    with whoami_server(netns.netns_path(b_ns), pod_ip(b)) as (host, port):
        assert whoami(netns.netns_path(a_ns), host, port) == pod_ip(a)


def test_pod_reaches_the_vswitch_gateway_its_node_and_the_other_node(cluster, pods) -> None:
    n1, n2 = cluster.nodes
    ns, r, _ = pods.add(n1)
    ip = pod_ip(r)
    gw = str(list(ipaddress.ip_network(_vsw_cidr(ip)).hosts())[-2])
    for dst in (gw, n1.primary_ip, n2.primary_ip):
        probe.ping(netns.netns_path(ns), dst)
    # TCP too; each end sees the pod's own address (no NAT on the way).  The
    # vSwitch gateway answers in the emulator's VPC namespace.
    for where, dst in ((netns.netns_path(cluster.vpc_netns), gw), (n1.netns_path, n1.primary_ip),
                       (n2.netns_path, n2.primary_ip)):
        with whoami_server(where, dst) as (host, port):
            assert whoami(netns.netns_path(ns), host, port) == ip, dst


def test_service_and_host_stack_cidrs_go_through_the_node(cluster, pods) -> None:
    node = cluster.nodes[0]
    svc_ip = str(list(ipaddress.ip_network(SERVICE_CIDR).hosts())[9])
    local = HOST_STACK_CIDR.split("/")[0]
    for addr in (svc_ip, local):
        ns_run(node.netns, "ip", "addr", "replace", f"{addr}/32", "dev", "lo", check=True)
    ns, r, _ = pods.add(node)
    assert r.rc == 0
    # Without the prio-512 rules these would leave through the ENI into the VPC, which has no route for them.
    for addr in (svc_ip, local):
        probe.ping(netns.netns_path(ns), addr)


def test_check_detects_a_deleted_route_and_rule_and_del_twice_succeeds(cluster, pods) -> None:
    node = cluster.nodes[0]
    ns, r, cid = pods.add(node)
    ip = pod_ip(r)
    conf = node.agent.conf(prevResult=r.out)
    assert node.agent.cni("CHECK", cid, netns_path=netns.netns_path(ns), conf=conf).rc == 0
    ns_run(ns, "ip", "route", "del", "default", check=True)
    ns_run(node.netns, "ip", "rule", "del", "priority", "2048", "from", ip, check=True)
    bad = node.agent.cni("CHECK", cid, netns_path=netns.netns_path(ns), conf=conf)
    assert bad.rc == 1 and bad.code == 102
    assert "0.0.0.0/0" in bad.out["msg"] or "default" in bad.out["msg"]
    assert "2048" in bad.out["msg"]
    assert node.agent.cni("DEL", cid, netns_path=netns.netns_path(ns)).rc == 0
    assert node.agent.cni("DEL", cid, netns_path="").rc == 0
    assert not [x for x in jq(node.netns, "rule", "show") if ip in (x.get("src"), x.get("dst"))]
    assert jq(node.netns, "route", "show", f"{ip}/32") == []


def test_rules_flushed_behind_the_agents_back_are_repaired(cluster, pods) -> None:
    node = cluster.nodes[1]
    ns, r, _ = pods.add(node)
    ip = pod_ip(r)
    ns_run(node.netns, "ip", "rule", "del", "priority", "512", "to", ip, check=True)
    ns_run(node.netns, "ip", "rule", "del", "priority", "2048", "from", ip, check=True)
    wait_for(
        lambda: len([x for x in jq(node.netns, "rule", "show") if ip in (x.get("src"), x.get("dst"))]) == 2,
        timeout=15, what="the repair pass",
    )
    probe.ping(netns.netns_path(ns), cluster.nodes[0].primary_ip)


@pytest.mark.parametrize("direction", ["egress", "ingress"])
def test_bandwidth_is_shaped(cluster, pods, direction: str) -> None:
    """Egress is shaped on the sender pod's eth0, ingress on the receiver's host veth."""
    n1, n2 = cluster.nodes
    limit = 16_000_000  # bits/s
    shaped = {"runtimeConfig": {"bandwidth": {f"{direction}Rate": limit}}}
    src_ns, src, _ = pods.add(n1, conf_extra=shaped if direction == "egress" else None)
    dst_ns, dst, _ = pods.add(n2, conf_extra=shaped if direction == "ingress" else None)
    assert src.rc == 0 and dst.rc == 0, src.stdout + dst.stdout
    if direction == "egress":
        qdisc = json.loads(ns_run(src_ns, "tc", "-j", "qdisc", "show", "dev", "eth0").stdout)
    else:
        host_veth = dst.out["interfaces"][0]["name"]
        qdisc = json.loads(ns_run(n2.netns, "tc", "-j", "qdisc", "show", "dev", host_veth).stdout)
    assert qdisc and qdisc[0]["kind"] == "tbf"
    bytes_per_s = probe.measure_throughput(
        netns.netns_path(src_ns), netns.netns_path(dst_ns), pod_ip(dst), seconds=2.0
    )
    rate = bytes_per_s * 8
    assert 0.75 * limit <= rate <= 1.25 * limit, f"measured {rate / 1e6:.1f} Mbit/s for a {limit / 1e6:.0f} Mbit/s limit"


def _settled_pod_objects(node, timeout: float = 15.0):
    """The node's per-pod objects once only live attachments' veths are left
    (earlier tests' DELs have their veths reaped right after the answer)."""
    deadline = time.monotonic() + timeout
    while True:
        live = {host_veth(*a["pod"].split("/", 1)) for a in node.agent.attachments()}
        snap = pod_objects(node.netns)
        if snap.veths <= live:
            time.sleep(0.3)
            if pod_objects(node.netns) == snap:
                return snap
        if time.monotonic() > deadline:
            raise AssertionError(f"the node's datapath did not settle: veths {sorted(snap.veths)}, live {sorted(live)}")
        time.sleep(0.2)


def test_kill_9_mid_add_then_del_leaves_nothing(cluster, pods) -> None:
    """Also the interrupted ADDs: after DEL of every pod the node's prio 512/2048
    rules, host routes and cali veths are exactly what they were before."""
    node = cluster.nodes[1]
    _ns, live, _ = pods.add(node)  # a live pod (and the node-level rules) stay through it all
    assert live.rc == 0, live.stdout
    before = _settled_pod_objects(node)
    admin = cluster.emulator.admin()
    admin.set_latency("AssignPrivateIpAddresses", 2.0)
    admin.set_latency("CreateNetworkInterface", 2.0)
    try:
        made = []
        results = {}

        def add(i: int) -> None:
            ns = unique("twsk")
            netns.create(ns)
            cid = unique("kill")
            made.append((ns, cid))
            results[cid] = node.agent.cni("ADD", cid, netns_path=netns.netns_path(ns), pod=("default", f"kill-{i}"))

        threads = [threading.Thread(target=add, args=(i,)) for i in range(12)]  # more than the warm pool holds
        for t in threads:
            t.start()
        time.sleep(1.0)
        node.agent.kill9()
        for t in threads:
            t.join()
    finally:
        admin.set_latency("AssignPrivateIpAddresses", 0)
        admin.set_latency("CreateNetworkInterface", 0)
    node.agent.start(timeout=60)
    for ns, cid in made:
        assert node.agent.cni("DEL", cid, netns_path=netns.netns_path(ns)).rc == 0
        netns.remove(ns)
    mine = {cid for _, cid in made}
    assert not [a for a in node.agent.attachments() if a["container_id"] in mine]
    assert any(r.rc != 0 for r in results.values()), "some ADDs must have been interrupted"
    # traffic stops at DEL; the veths are reaped right after the answer
    try:
        wait_for(lambda: pod_objects(node.netns) == before, what="the node's datapath as before")
    except AssertionError:
        raise AssertionError(f"leftovers: {before.diff(pod_objects(node.netns))}") from None


def test_hostport_through_chained_debian_portmap(cluster, pods) -> None:
    n1, n2 = cluster.nodes
    ns, r, cid = pods.add(n1)
    assert r.rc == 0
    conf = {
        "cniVersion": "1.0.0",
        "name": "terway",
        "type": "portmap",
        "capabilities": {"portMappings": True},
        "runtimeConfig": {"portMappings": [{"hostPort": 18080, "containerPort": 8080, "protocol": "tcp"}]},
        "prevResult": r.out,
    }
    env = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": cid, "CNI_NETNS": netns.netns_path(ns), "CNI_IFNAME": "eth0",
           "CNI_PATH": "/usr/lib/cni", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
    p = subprocess.run(["ip", "netns", "exec", n1.netns, "/usr/lib/cni/portmap"], input=json.dumps(conf).encode(),
                       env=env, capture_output=True, timeout=60)
    assert p.returncode == 0, p.stdout + p.stderr
    try:
        with whoami_server(netns.netns_path(ns), pod_ip(r), 8080):
            assert whoami(n2.netns_path, n1.primary_ip, 18080) == n2.primary_ip
    finally:
        subprocess.run(["ip", "netns", "exec", n1.netns, "/usr/lib/cni/portmap"],
                       input=json.dumps(conf).encode(), env=dict(env, CNI_COMMAND="DEL"), capture_output=True)


@pytest.fixture(scope="module")
def dual_cluster(tmp_path_factory):
    from cloudnodes import SERVICE_CIDR6, eni_conf

    c = start_cluster(
        tmp_path_factory.mktemp("dual"),
        eni=eni_conf(ip_stack="dual", service_cidr=f"{SERVICE_CIDR},{SERVICE_CIDR6}"),
    )
    yield c
    c.stop()


def test_dual_stack_pods_talk_over_ipv4_and_ipv6_across_nodes(dual_cluster, pods) -> None:
    n1, n2 = dual_cluster.nodes
    a_ns, a, a_cid = pods.add(n1)
    b_ns, b, _ = pods.add(n2)
    assert a.rc == 0 and b.rc == 0, a.stdout + b.stdout
    assert pod_ip(a, 6) and pod_ip(b, 6)
    probe.ping(netns.netns_path(a_ns), pod_ip(b, 4))
    probe.ping(netns.netns_path(a_ns), pod_ip(b, 6))
    with whoami_server(netns.netns_path(b_ns), pod_ip(b, 6)) as (host, port):
        assert whoami(netns.netns_path(a_ns), host, port) == pod_ip(a, 6)

    # accept_dad=0 on the ENI is part of the checked plan
    att = [x for x in n1.agent.attachments() if x["container_id"] == a_cid][0]
    eni = eni_of(n1.netns, eni_mac(dual_cluster, att["eni"]))["ifname"]
    dad = f"net.ipv6.conf.{eni}.accept_dad"
    assert ns_run(n1.netns, "sysctl", "-n", dad).stdout.strip() == "0"
    conf = n1.agent.conf(prevResult=a.out)
    ns_run(n1.netns, "sysctl", "-qw", f"{dad}=1", check=True)
    try:
        bad = n1.agent.cni("CHECK", a_cid, netns_path=netns.netns_path(a_ns), conf=conf)
        assert bad.rc == 1 and "accept_dad" in bad.out["msg"], bad.stdout
    finally:
        ns_run(n1.netns, "sysctl", "-qw", f"{dad}=0", check=True)
    assert n1.agent.cni("CHECK", a_cid, netns_path=netns.netns_path(a_ns), conf=conf).rc == 0


def test_debian_bandwidth_and_tuning_plugins_chain_after_terway(cluster, pods) -> None:
    """libcni runs chained plugins with our result as prevResult: the reference
    bandwidth plugin finds the host veth in it, tuning finds eth0."""
    n1, _ = cluster.nodes
    ns, r, cid = pods.add(n1)
    assert r.rc == 0
    env = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": cid, "CNI_NETNS": netns.netns_path(ns), "CNI_IFNAME": "eth0",
           "CNI_PATH": "/usr/lib/cni", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
    bw = {"cniVersion": "1.0.0", "name": "terway", "type": "bandwidth", "capabilities": {"bandwidth": True},
          "runtimeConfig": {"bandwidth": {"ingressRate": 8_000_000, "ingressBurst": 80_000,
                                          "egressRate": 8_000_000, "egressBurst": 80_000}},
          "prevResult": r.out}
    tuning = {"cniVersion": "1.0.0", "name": "terway", "type": "tuning",
              "sysctl": {"net.ipv4.conf.eth0.accept_local": "1"}}
    prev = r.out
    try:
        for conf in (bw, tuning):
            conf["prevResult"] = prev
            p = subprocess.run(["ip", "netns", "exec", n1.netns, f"/usr/lib/cni/{conf['type']}"],
                               input=json.dumps(conf).encode(), env=env, capture_output=True, timeout=60)
            assert p.returncode == 0, (conf["type"], p.stdout + p.stderr)
            prev = json.loads(p.stdout)
            assert prev["ips"] == r.out["ips"]
        host_veth = r.out["interfaces"][0]["name"]
        qdiscs = json.loads(ns_run(n1.netns, "tc", "-j", "qdisc", "show", "dev", host_veth).stdout)
        assert "tbf" in {q["kind"] for q in qdiscs}
        assert ns_run(ns, "sysctl", "-n", "net.ipv4.conf.eth0.accept_local").stdout.strip() == "1"
        probe.ping(netns.netns_path(ns), n1.primary_ip)
    finally:
        for conf in (tuning, bw):
            subprocess.run(["ip", "netns", "exec", n1.netns, f"/usr/lib/cni/{conf['type']}"],
                           input=json.dumps(conf).encode(), env=dict(env, CNI_COMMAND="DEL"), capture_output=True)


def test_del_cuts_traffic_at_once_and_a_recreated_pod_works_right_after(cluster, pods) -> None:
    """DEL removes the pod's rules and route before answering and reaps its veth
    right after; the same pod name re-created at once (a StatefulSet restart)
    gets a working datapath of its own."""
    node = cluster.nodes[0]
    ns, r, cid = pods.add(node, "same-0")
    ip = pod_ip(r)
    assert node.agent.cni("DEL", cid, netns_path=netns.netns_path(ns)).rc == 0
    assert not [x for x in jq(node.netns, "rule", "show") if ip in (x.get("src"), x.get("dst"))]
    assert jq(node.netns, "route", "show", f"{ip}/32") == []
    ns2, r2, _ = pods.add(node, "same-0")
    assert r2.rc == 0, r2.stdout
    probe.ping(netns.netns_path(ns2), cluster.nodes[1].primary_ip)
    host_veth = "cali" + hashlib.sha1(b"default.same-0").hexdigest()[:11]
    wait_for(lambda: len([x for x in jq(node.netns, "link", "show") if x["ifname"] == host_veth]) == 1,
             what="one host veth for the pod")
    (veth,) = [x for x in jq(node.netns, "link", "show") if x["ifname"] == host_veth]
    pod_side = jq(ns2, "link", "show", "eth0")[0]
    assert veth["ifindex"] == pod_side["link_index"], "the host veth is the new sandbox's peer"
    # the old sandbox's reaping took nothing of the new one's (same veth name,
    # and with no reuse cooldown here possibly the same IP)
    check = node.agent.cni("CHECK", _cid_of(node, "same-0"), netns_path=netns.netns_path(ns2),
                           conf=node.agent.conf(prevResult=r2.out))
    assert check.rc == 0, check.stdout
    probe.ping(netns.netns_path(ns2), cluster.nodes[1].primary_ip)


def _cid_of(node, pod_name: str) -> str:
    (att,) = [a for a in node.agent.attachments() if a["pod"] == f"default/{pod_name}"]
    return att["container_id"]
