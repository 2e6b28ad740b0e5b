"""Every CNI verb and every error code, through the real ``terway`` executable
against a real agent process, with real pod network namespaces."""

from __future__ import annotations

import json
import subprocess
import threading
import time

import pytest

from terway_agent.datapath import netns

from .conftest import Agent, links_in, ns_run

pytestmark = pytest.mark.netns


def pod_addr(ns_path: str, ifname: str = "eth0") -> list[str]:
    name = ns_path.rsplit("/", 1)[-1]
    out = ns_run(name, "ip", "-j", "addr", "show", "dev", ifname).stdout
    if not out:
        return []
    return [a["local"] for link in json.loads(out) for a in link.get("addr_info", [])]


# -- VERSION -------------------------------------------------------------------


def test_version(agent: Agent) -> None:
    r = agent.cni("VERSION", conf={"cniVersion": "1.0.0"})
    assert r.rc == 0
    assert r.out == {"cniVersion": "1.0.0", "supportedVersions": ["0.4.0", "1.0.0", "1.1.0"]}
    r = agent.cni("VERSION", stdin=b"")
    assert r.rc == 0 and r.out["supportedVersions"][-1] == "1.1.0"


def test_version_works_without_the_agent(make_agent) -> None:
    a = make_agent()  # never started
    r = a.cni("VERSION", conf={"cniVersion": "1.1.0"})
    assert r.rc == 0 and r.out["cniVersion"] == "1.1.0"


# -- ADD / CHECK / DEL ---------------------------------------------------------------


def test_add_check_del(agent: Agent, make_pod_ns) -> None:
    ns = make_pod_ns()
    r = agent.cni("ADD", "c0ffee01", netns_path=ns, pod=("default", "web"))
    assert r.rc == 0, r.stdout + r.stderr
    res = r.out
    assert res["cniVersion"] == "1.0.0"
    eth0 = [i for i in res["interfaces"] if i["name"] == "eth0"]
    assert eth0 and eth0[0]["sandbox"] == ns
    ip = res["ips"][0]
    assert res["interfaces"][ip["interface"]]["name"] == "eth0"
    addr = ip["address"].split("/")[0]
    assert addr in pod_addr(ns)
    assert res["routes"] == [{"dst": "0.0.0.0/0", "gw": "169.254.1.1"}]
    # a real packet: pod -> node (the node holds the subnet's first address)
    ns_run(agent.node_ns, "ip", "addr", "add", "10.250.0.1/32", "dev", "lo", check=True)
    ping = ns_run(ns.rsplit("/", 1)[-1], "ping", "-c1", "-W2", "10.250.0.1")
    assert ping.returncode == 0, ping.stdout

    conf = agent.conf(prevResult=res)
    r = agent.cni("CHECK", "c0ffee01", netns_path=ns, conf=conf)
    assert r.rc == 0, r.stdout
    assert r.stdout == ""

    r = agent.cni("DEL", "c0ffee01", netns_path=ns, conf=conf)
    assert r.rc == 0, r.stdout
    assert pod_addr(ns) == []
    assert not [n for n in links_in(agent.node_ns) if n.startswith("exm")]
    assert agent.attachments() == []


def test_result_formats_per_version(agent: Agent, make_pod_ns) -> None:
    ns = make_pod_ns()
    r = agent.cni("ADD", "v040", netns_path=ns, conf=agent.conf("0.4.0"))
    assert r.rc == 0, r.stdout
    assert r.out["cniVersion"] == "0.4.0" and r.out["ips"][0]["version"] == "4"
    assert agent.cni("DEL", "v040", netns_path=ns, conf=agent.conf("0.4.0")).rc == 0
    r = agent.cni("ADD", "v110", netns_path=ns, conf=agent.conf("1.1.0"))
    assert r.rc == 0, r.stdout
    assert r.out["cniVersion"] == "1.1.0" and "version" not in r.out["ips"][0]
    assert [i.get("mtu") for i in r.out["interfaces"] if i["name"] == "eth0"] == [1500]


def test_retried_add_returns_the_same_result(agent: Agent, make_pod_ns) -> None:
    ns = make_pod_ns()
    first = agent.cni("ADD", "retry1", netns_path=ns, pod=("default", "r"))
    second = agent.cni("ADD", "retry1", netns_path=ns, pod=("default", "r"))
    assert first.rc == second.rc == 0
    assert first.out == second.out
    assert len(agent.attachments()) == 1


def test_failed_add_leaves_nothing_behind(agent: Agent, make_pod_ns) -> None:
    ns = make_pod_ns()
    name = ns.rsplit("/", 1)[-1]
    ns_run(name, "ip", "link", "add", "eth0", "type", "veth", "peer", "name", "other", check=True)
    before = links_in(agent.node_ns)
    r = agent.cni("ADD", "clash1", netns_path=ns, pod=("default", "clash"))
    assert r.rc == 1 and r.code == 102
    assert "eth0 already exists" in r.out["msg"]
    assert links_in(agent.node_ns) == before
    assert agent.attachments() == []
    # the address was given back (and cools down before reuse)
    leases = agent.leases()
    assert [(lease["address"], lease["owner"]) for lease in leases] == [("10.250.0.2", None)]
    assert leases[0]["released_at"] is not None
    # and the runtime's DEL after the failed ADD succeeds
    assert agent.cni("DEL", "clash1", netns_path=ns).rc == 0


def test_del_is_idempotent_with_empty_or_gone_netns(agent: Agent, make_pod_ns) -> None:
    ns = make_pod_ns()
    assert agent.cni("ADD", "gone1", netns_path=ns, pod=("default", "g")).rc == 0
    netns.remove(ns.rsplit("/", 1)[-1])  # the runtime removed the sandbox first
    r = agent.cni("DEL", "gone1", netns_path=ns)
    assert r.rc == 0, r.stdout
    r = agent.cni("DEL", "gone1", netns_path="")  # containerd's second DEL: empty netns
    assert r.rc == 0, r.stdout
    assert agent.cni("DEL", "neverseen", netns_path="").rc == 0
    assert agent.attachments() == []
    assert not [n for n in links_in(agent.node_ns) if n.startswith("exm")]


def test_check_reports_what_is_missing(agent: Agent, make_pod_ns) -> None:
    ns = make_pod_ns()
    res = agent.cni("ADD", "chk1", netns_path=ns, pod=("default", "c")).out
    ns_run(ns.rsplit("/", 1)[-1], "ip", "route", "del", "default", check=True)
    r = agent.cni("CHECK", "chk1", netns_path=ns, conf=agent.conf(prevResult=res))
    assert r.rc == 1 and r.code == 102
    assert "route 0.0.0.0/0 via 169.254.1.1 dev eth0 onlink" in r.out["msg"] and "missing" in r.out["msg"]
    # a prevResult that does not match what the agent allocated is reported too
    wrong = dict(res, ips=[{"address": "10.9.9.9/32", "interface": 1}])
    r = agent.cni("CHECK", "chk1", netns_path=ns, conf=agent.conf(prevResult=wrong))
    assert "prevResult lacks the pod address" in r.out["msg"]


def test_check_of_unknown_container_is_code_3(agent: Agent, make_pod_ns) -> None:
    r = agent.cni("CHECK", "nobody", netns_path=make_pod_ns())
    assert r.rc == 1 and r.code == 3 and "nobody" in r.out["msg"]


# -- STATUS / GC ------------------------------------------------------------------------


def test_status(agent: Agent) -> None:
    r = agent.cni("STATUS", conf=agent.conf("1.1.0"))
    assert r.rc == 0 and r.stdout == ""


def test_status_when_agent_is_down_is_50(make_agent) -> None:
    a = make_agent()
    r = a.cni("STATUS", conf=a.conf("1.1.0"))
    assert r.rc == 1 and r.code == 50
    assert "not running" in r.out["msg"]



def test_a_pod_repair_cannot_restore_is_counted_but_leaves_the_node_available(make_agent, make_pod_ns) -> None:
    """A pod whose network namespace was torn down under its bind mount (the
    file stays, the namespace and its veth are gone): repair cannot re-create
    its datapath.  That is logged and counted, but STATUS stays 0 -- a runtime
    turns a STATUS error into a NotReady node, evicting every pod for one."""
    a = make_agent(repair_interval=1.0)
    a.start()
    ns = make_pod_ns()
    assert a.cni("ADD", "rep51", netns_path=ns, pod=("default", "rep51")).rc == 0
    subprocess.run(["umount", ns], check=True)  # the handle file remains; the namespace is destroyed

    def failed_objects() -> float:
        body = _metrics(a)
        return float(next(ln.split()[-1] for ln in body.splitlines() if ln.startswith("terway_repair_failed_objects ")))

    deadline = time.monotonic() + 10
    while failed_objects() != 1 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert failed_objects() == 1
    assert "repair.incomplete" in a.log() and "default/rep51" in a.log()
    assert a.cni("STATUS", conf=a.conf("1.1.0")).rc == 0
    # the runtime deletes the pod: nothing is left to repair
    assert a.cni("DEL", "rep51", netns_path=ns).rc == 0
    deadline = time.monotonic() + 10
    while failed_objects() != 0 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert failed_objects() == 0


def test_status_is_51_while_the_repair_pass_fails(make_agent, make_pod_ns, tmp_path) -> None:
    flag = tmp_path / "repair-broken"
    a = make_agent(inline="slow_example", env={"TW_REPAIR_FAIL_FILE": str(flag)}, repair_interval=1.0)
    a.start()
    assert a.cni("ADD", "rp1", netns_path=make_pod_ns(), pod=("default", "rp1")).rc == 0
    flag.touch()
    deadline = time.monotonic() + 10
    while (r := a.cni("STATUS", conf=a.conf("1.1.0"))).rc == 0 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert r.rc == 1 and r.code == 51, r.stdout
    assert "limited connectivity" in r.out["msg"] and "repair pass failed" in r.out["msg"]
    flag.unlink()
    deadline = time.monotonic() + 10
    while (r := a.cni("STATUS", conf=a.conf("1.1.0"))).rc != 0 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert r.rc == 0, r.stdout
    assert "repair.recovered" in a.log()


def _metrics(agent: Agent) -> str:
    addr = json.loads(agent.run_cli("info", "--socket", agent.socket).stdout)["debug"]
    code = f"import urllib.request; print(urllib.request.urlopen('http://{addr}/metrics', timeout=5).read().decode())"
    return ns_run(agent.node_ns, "python3", "-c", code).stdout


def test_gc_removes_attachments_not_listed(agent: Agent, make_pod_ns) -> None:
    pods = [(f"gc{i}", make_pod_ns()) for i in range(3)]
    for cid, ns in pods:
        assert agent.cni("ADD", cid, netns_path=ns, pod=("default", cid)).rc == 0
    keep = [{"containerID": "gc0", "ifname": "eth0"}]
    r = agent.cni("GC", conf=agent.conf("1.1.0", **{"cni.dev/valid-attachments": keep}))
    assert r.rc == 0, r.stdout
    assert [a["container_id"] for a in agent.attachments()] == ["gc0"]
    host_links = [n for n in links_in(agent.node_ns) if n.startswith("exm")]
    assert len(host_links) == 1
    # the older key used by libcni < 1.2
    r = agent.cni("GC", conf=agent.conf("1.1.0", **{"cni.dev/attachments": []}))
    assert r.rc == 0 and agent.attachments() == []
    assert not [n for n in links_in(agent.node_ns) if n.startswith("exm")]


def test_gc_removes_datapath_leftovers_of_no_attachment(agent: Agent) -> None:
    ns_run(agent.node_ns, "ip", "link", "add", "exmdeadbeef00", "type", "veth", "peer", "name", "exmpeer", check=True)
    r = agent.cni("GC", conf=agent.conf("1.1.0", **{"cni.dev/valid-attachments": []}))
    assert r.rc == 0
    assert not [n for n in links_in(agent.node_ns) if n.startswith("exm")]


def test_gc_rejects_malformed_attachment_list(agent: Agent) -> None:
    r = agent.cni("GC", conf=agent.conf("1.1.0", **{"cni.dev/valid-attachments": [{"containerID": 5}]}))
    assert r.rc == 1 and r.code == 7
    assert "cni.dev/valid-attachments[0]" in r.out["msg"]



def test_gc_without_an_attachment_list_removes_nothing_and_says_why(agent: Agent, make_pod_ns) -> None:
    ns = make_pod_ns()
    assert agent.cni("ADD", "gckeep", netns_path=ns, pod=("default", "gckeep")).rc == 0
    r = agent.cni("GC", conf=agent.conf("1.1.0"))
    assert r.rc == 1 and r.code == 7
    assert "cni.dev/valid-attachments" in r.out["msg"]
    assert [a["container_id"] for a in agent.attachments()] == ["gckeep"]
    assert pod_addr(ns), "the pod's interface must survive a GC that named no attachments"


# -- chaining ----------------------------------------------------------------------------


def test_prev_result_is_extended_when_chained(agent: Agent, make_pod_ns) -> None:
    ns = make_pod_ns()
    prev = {"cniVersion": "1.0.0", "interfaces": [{"name": "lo0"}], "ips": [], "dns": {"nameservers": ["1.1.1.1"]}}
    r = agent.cni("ADD", "chain1", netns_path=ns, conf=agent.conf(prevResult=prev))
    assert r.rc == 0, r.stdout
    assert r.out["interfaces"][0] == {"name": "lo0"}
    assert r.out["interfaces"][r.out["ips"][0]["interface"]]["name"] == "eth0"


def test_debian_tuning_plugin_chains_after_terway(agent: Agent, make_pod_ns) -> None:
    """A reference plugin consumes our result as its prevResult, as libcni chains them."""
    ns = make_pod_ns()
    res = agent.cni("ADD", "tune1", netns_path=ns).out
    conf = {
        "cniVersion": "1.0.0",
        "name": "terway",
        "type": "tuning",
        "sysctl": {"net.ipv4.conf.eth0.accept_local": "1"},
        "prevResult": res,
    }
    env = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "tune1", "CNI_NETNS": ns, "CNI_IFNAME": "eth0", "CNI_PATH": "/usr/lib/cni"}
    p = subprocess.run(["/usr/lib/cni/tuning"], input=json.dumps(conf).encode(), env=env, capture_output=True)
    assert p.returncode == 0, p.stdout + p.stderr
    assert json.loads(p.stdout)["ips"] == res["ips"]
    got = ns_run(ns.rsplit("/", 1)[-1], "sysctl", "-n", "net.ipv4.conf.eth0.accept_local").stdout.strip()
    assert got == "1"


# -- error codes ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("command", "drop", "env", "var"),
    [
        ("ADD", ("CNI_COMMAND",), {}, "CNI_COMMAND"),
        ("FROB", (), {}, "CNI_COMMAND"),
        ("ADD", ("CNI_NETNS",), {}, "CNI_NETNS"),
        ("ADD", ("CNI_IFNAME",), {}, "CNI_IFNAME"),
        ("DEL", ("CNI_CONTAINERID",), {}, "CNI_CONTAINERID"),
        ("ADD", ("CNI_PATH",), {}, "CNI_PATH"),
        ("ADD", (), {"CNI_PATH": ""}, "CNI_PATH"),
        ("ADD", (), {"CNI_CONTAINERID": "-bad id"}, "CNI_CONTAINERID"),
        ("ADD", (), {"CNI_IFNAME": "a-very-long-interface-name"}, "CNI_IFNAME"),
        ("ADD", (), {"CNI_IFNAME": "eth/0"}, "CNI_IFNAME"),
        ("ADD", (), {"CNI_NETNS": "relative/path"}, "CNI_NETNS"),
        ("ADD", (), {"CNI_ARGS": "K8S_POD_NAME"}, "CNI_ARGS"),
    ],
)
def test_bad_environment_is_code_4_naming_the_variable(
    agent: Agent, make_pod_ns, command: str, drop: tuple, env: dict, var: str
) -> None:
    r = agent.cni(command, "envtest", netns_path=make_pod_ns(), drop=drop, env=env)
    assert r.rc == 1 and r.code == 4, r.stdout
    assert var in r.out["msg"]
    assert agent.attachments() == []


@pytest.mark.parametrize("stdin", [b"", b"{not json", b"[1, 2]", b"\xff\xfe"])
def test_undecodable_stdin_is_code_6(agent: Agent, make_pod_ns, stdin: bytes) -> None:
    r = agent.cni("ADD", "dec1", netns_path=make_pod_ns(), stdin=stdin)
    assert r.rc == 1 and r.code == 6, r.stdout


@pytest.mark.parametrize(
    ("conf", "code", "needle"),
    [
        ({"name": "terway", "type": "terway"}, 7, "cniVersion"),
        ({"cniVersion": "0.3.1", "name": "terway", "type": "terway"}, 1, "incompatible CNI version 0.3.1"),
        ({"cniVersion": "1.0.0", "name": "terway", "type": "terway", "mtu": 10}, 7, "mtu"),
        ({"cniVersion": "1.0.0", "name": "terway", "type": "terway", "vlan_strip_type": "x"}, 7, "vlan_strip_type"),
        ({"cniVersion": "1.0.0", "name": "terway", "type": "terway", "runtimeConfig": {"bandwidth": {"ingressRate": "fast"}}},
         7, "runtimeConfig.bandwidth.ingressRate"),
    ],
)
def test_bad_network_config(agent: Agent, make_pod_ns, conf: dict, code: int, needle: str) -> None:
    conf = dict(conf, socket_path=agent.socket)
    r = agent.cni("ADD", "conf1", netns_path=make_pod_ns(), conf=conf)
    assert r.rc == 1 and r.code == code, r.stdout
    assert needle in r.out["msg"]
    assert agent.attachments() == []


def test_gc_and_status_need_cni_1_1(agent: Agent) -> None:
    for verb in ("GC", "STATUS"):
        r = agent.cni(verb, conf=agent.conf("1.0.0"))
        assert r.rc == 1 and r.code == 1 and "1.1.0" in r.out["msg"]


def test_agent_down_is_try_again(make_agent, make_pod_ns) -> None:
    a = make_agent()
    for verb in ("ADD", "DEL", "CHECK"):
        r = a.cni(verb, "down1", netns_path=make_pod_ns())
        assert r.rc == 1 and r.code == 11, r.stdout
        assert "not reachable" in r.out["msg"]


def test_concurrent_request_for_the_same_pod_is_try_again(make_agent, make_pod_ns) -> None:
    a = make_agent(inline="slow_example", env={"TW_SLOW_ALLOCATE": "1.5"})
    a.start()
    ns1, ns2 = make_pod_ns(), make_pod_ns()
    results = {}

    def first() -> None:
        results["first"] = a.cni("ADD", "busy1", netns_path=ns1, pod=("default", "same"))

    t = threading.Thread(target=first)
    t.start()
    import time

    time.sleep(0.5)
    second = a.cni("ADD", "busy2", netns_path=ns2, pod=("default", "same"))
    t.join()
    assert results["first"].rc == 0
    assert second.rc == 1 and second.code == 11
    assert "being processed" in second.out["msg"]


def test_bandwidth_annotation_values_are_validated_by_name(agent: Agent, make_pod_ns) -> None:
    conf = agent.conf(runtimeConfig={"bandwidth": {"ingressRate": 10, "egressRate": 1000000}})
    r = agent.cni("ADD", "bw1", netns_path=make_pod_ns(), conf=conf)
    assert r.rc == 1 and r.code == 7
    assert "runtimeConfig.bandwidth.ingressRate: got 10" in r.out["msg"]


def test_standalone_executable_for_the_hosts_python(agent: Agent, make_pod_ns, tmp_path) -> None:
    """What the DaemonSet's init container installs from the image: a zip
    application for the host's own interpreter, nothing of this project needed."""
    import os

    from terway_agent.cli import install_cni

    host_python = "/usr/bin/python3"
    if not os.path.exists(host_python):
        pytest.skip(f"{host_python} is not on this machine")
    path = install_cni(str(tmp_path / "hostbin"), standalone_python=host_python)
    ns = make_pod_ns()
    env = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "standalone1", "CNI_NETNS": ns, "CNI_IFNAME": "eth0",
           "CNI_PATH": str(tmp_path / "hostbin"), "CNI_ARGS": "K8S_POD_NAMESPACE=default;K8S_POD_NAME=sa"}
    conf = json.dumps(agent.conf()).encode()
    p = subprocess.run([path], input=conf, env=env, capture_output=True, timeout=60)
    assert p.returncode == 0, p.stdout + p.stderr
    assert json.loads(p.stdout)["ips"][0]["address"].endswith("/32")
    p = subprocess.run([path], input=conf, env=dict(env, CNI_COMMAND="DEL"), capture_output=True, timeout=60)
    assert p.returncode == 0, p.stdout + p.stderr
    assert agent.attachments() == []


# -- the executable's own log -------------------------------------------------------------


def test_executable_logs_to_its_file_and_stderr_never_stdout(agent: Agent, make_pod_ns, tmp_path) -> None:
    log = tmp_path / "cni.log"
    ns = make_pod_ns()
    r = agent.cni("ADD", "logok1", netns_path=ns, pod=("default", "l"), conf=agent.conf(log_file=str(log)))
    assert r.rc == 0 and r.stderr == ""
    assert json.loads(r.stdout)["ips"], "stdout carries exactly the CNI result"
    lines = [json.loads(x) for x in log.read_text().splitlines()]
    assert [(x["level"], x["event"], x["command"], x["container"]) for x in lines] == [
        ("info", "cni.done", "ADD", "logok1")]
    # an error: the result on stdout, the log line on stderr and in the file
    r = agent.cni("ADD", "logbad1", netns_path=ns, conf=agent.conf(log_file=str(log)), env={"CNI_IFNAME": "eth/0"})
    assert r.rc == 1 and json.loads(r.stdout)["code"] == 4
    err = json.loads(r.stderr)
    assert (err["level"], err["event"], err["code"]) == ("error", "cni.failed", 4)
    assert json.loads(log.read_text().splitlines()[-1]) == err
    # log_level from the network config filters the file (errors still go to stderr)
    quiet = tmp_path / "quiet.log"
    r = agent.cni("DEL", "logok1", netns_path=ns, conf=agent.conf(log_file=str(quiet), log_level="error"))
    assert r.rc == 0 and r.stdout == "" and not quiet.exists()
