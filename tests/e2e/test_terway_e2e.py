"""terway-agent in a real cluster: kube-apiserver, containerd and kubelet v1.20.2, the cloud
emulator, and the agent run the way its DaemonSet runs it.

How the pieces fit (docs/e2e.md, "terway-agent in the lane"):

* The cloud emulator's netns node side makes the instance: a network namespace whose ``eth0``
  is the primary ENI; attached ENIs appear there. That namespace is the node's *host network*.
* The agent runs in it (``nsenter --net``: the host's mount namespace stays, so the network
  namespaces containerd mounts for pods are visible) with the DaemonSet container's command line
  (``terway-agent run --config ... --node-name $(NODE_NAME)``), its environment (NODE_NAME,
  POD_NAMESPACE), the chart's settings file and ConfigMaps, its ServiceAccount and RBAC; only the
  host paths are remapped into the lane's directories (the machine's own /etc/cni/net.d and
  /opt/cni/bin are never touched). It reaches the API through a relay on the namespace's
  loopback and the cloud at 100.100.100.200/201 through eth0, like a real node.
* The DaemonSet's init command ``terway-agent install-cni --standalone ...`` installs the ``terway``
  executable into containerd's CNI bin dir; the agent writes the conflist into containerd's conf
  dir once it serves -- which is what turns the kubelet's node Ready.
* containerd and kubelet run in the root namespace (as the harness starts them); for CNI that is
  only where the pod namespaces are created; pods' veths end in the node namespace.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from lane import ApiServer, Artifacts, Node, pause_pod, wait_pod_gone, wait_pod_running, wait_until

from terway_agent.datapath import netns

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from k8s.kit import (  # noqa: E402
    VENV_BIN,
    Forwarder,
    KubeAgent,
    apply_docs,
    chart,
    delete_docs,
    events_for,
    kind_docs,
    write_kubeconfig,
)

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.netns]

MAX_AVAILABLE_IP = "k8s.aliyun.com/max-available-ip"
POD_IPS = "k8s.aliyun.com/pod-ips"
#: seconds an exhausted vSwitch is set aside (the agent's plugin_config.ipam.ip_inhibit)
IP_INHIBIT = 15


@dataclass
class TerwayNode:
    api: ApiServer
    node: Node
    agent: KubeAgent
    emulator: Any
    forwarder: Forwarder
    node_ns: str
    system_ns: str
    pods_ns: str
    pod_cidrs: list[ipaddress.IPv4Network]
    docs: list[dict[str, Any]]
    daemonset: dict[str, Any]

    def core(self) -> Any:
        from kubernetes import client

        return client.CoreV1Api(self.api.api_client())

    def pool(self) -> dict[str, Any]:
        r = subprocess.run(
            [str(VENV_BIN / "terway-agent"), "pool", "--json", "--socket", self.agent.socket],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout)

    def ip_state(self, address: str) -> dict[str, Any] | None:
        for eni in self.pool()["enis"]:
            for ip in eni["ips"]:
                if ip["address"] == address:
                    return ip
        return None

    def sandbox_netns(self, pod: Any) -> str:
        assert self.node.cri is not None
        for sb in self.node.cri.list_pod_sandboxes():
            if sb.metadata.uid == pod.metadata.uid:
                return self.node.cri.sandbox_netns(sb.id)
        raise AssertionError(f"no sandbox for pod {pod.metadata.name}")


def _remap(argv: list[str], mapping: dict[str, str]) -> list[str]:
    return [mapping.get(a, a) for a in argv]


@pytest.fixture(scope="module")
def terway_node(
    twe2e_apiserver: ApiServer, twe2e_artifacts: Artifacts, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TerwayNode]:
    from kubernetes import client

    from terway_agent.cloud.emulator import Emulator
    from terway_agent.sim import POD_VSWITCHES, REGION, eni_conf, topology

    api = twe2e_apiserver
    sfx = uuid.uuid4().hex[:4]
    wd = tmp_path_factory.mktemp("twk8s-e2e")
    topo = topology(sfx, nodes=1)
    # this suite's prefix for the namespaces the emulator's node side makes
    topo["instances"][0]["netns"] = f"twk8s{sfx}n1"
    topo["node_side"]["vpc_netns"] = f"twk8s{sfx}vpc"
    pod_cidrs = [ipaddress.ip_network(v["cidr"]) for v in topo["vswitches"] if v["id"] in POD_VSWITCHES]
    node_ns = topo["instances"][0]["netns"]
    system_ns, pods_ns, release = f"twk8s-sys-{sfx}", f"twk8s-pods-{sfx}", f"twk8s-e2e-{sfx}"
    emu = Emulator(topo).start()
    cleanups: list[Any] = [emu.stop]
    node: Node | None = None
    agent: KubeAgent | None = None
    docs: list[dict[str, Any]] = []
    try:
        netns.create(node_ns)  # made by the node side; idempotent
        subprocess.run(["ip", "-n", node_ns, "link", "set", "lo", "up"], check=True)
        fwd = Forwarder(("127.0.0.1", api.port), netns=node_ns)
        cleanups.insert(0, fwd.close)

        # what `helm install` (or `kubectl apply -f deploy/manifests`) creates, minus the DaemonSet
        with api.api_client() as c:
            core = client.CoreV1Api(c)
            core.create_namespace({"metadata": {"name": system_ns}})
            core.create_namespace({"metadata": {"name": pods_ns}})
            # ip_inhibit (docs/ipam.md; 600 s by default) through the chart's agent.pluginConfig,
            # so that the SufficientIP test sees the condition come back within seconds
            rendered = chart(
                system_ns,
                release,
                eniConf=eni_conf(),
                agent={"pluginConfig": {"ipam": {"ip_inhibit": IP_INHIBIT}}},
            ).documents()
            docs = [d for d in rendered if d["kind"] != "DaemonSet"]
            apply_docs(c, docs)
        daemonset = kind_docs(rendered, "DaemonSet")[0]
        sa = kind_docs(docs, "ServiceAccount")[0]["metadata"]["name"]
        token = api.create_service_account_token(system_ns, sa)
        kubeconfig = write_kubeconfig(api, wd / "kubeconfig", token, port=fwd.port)

        node = Node.start(api, twe2e_artifacts, wait_ready=False)
        cleanups.insert(0, node.stop)

        # the host paths of the DaemonSet, remapped into the lane's directories
        paths = {
            "/opt/cni/bin": str(node.cni_bin_dir),
            "/etc/cni/net.d": str(node.cni_conf_dir),
            "/var/run/eni": str(wd / "run"),
            "/var/lib/terway-agent": str(wd / "state"),
            "/etc/terway-agent/agent.yaml": "@SETTINGS@",
        }
        pod = daemonset["spec"]["template"]["spec"]
        init = pod["initContainers"][0]["command"]
        r = subprocess.run(
            _remap([str(VENV_BIN / init[0]), *init[1:]], paths), capture_output=True, text=True, timeout=60
        )
        assert r.returncode == 0, r.stderr
        assert (node.cni_bin_dir / "terway").exists()

        container = pod["containers"][0]
        settings_cm = next(d for d in kind_docs(docs, "ConfigMap") if d["metadata"]["name"] == release)
        settings = yaml.safe_load(settings_cm["data"]["agent.yaml"])
        assert settings["use_kubernetes"] is True
        for key in ("socket_path", "lock_path", "state_dir", "cni_conf_dir", "cni_bin_dir"):
            for host, lane in paths.items():
                if settings[key].startswith(host):
                    settings[key] = lane + settings[key][len(host) :]
        settings.update(
            kubeconfig=str(kubeconfig),  # in a pod: the ServiceAccount token, in-cluster
            debug_listen="127.0.0.1:0",  # the node namespace is shared with nothing else, but keep ports free
            # the emulated cloud instead of the real endpoints (reached through eth0 like a real node)
            cloud={
                "endpoint": "100.100.100.201:80",
                "protocol": "http",
                "region_id": REGION,
                "metadata_endpoint": "http://100.100.100.200",
            },
            reload_interval=0.5,
        )
        settings["plugin_config"]["kubernetes"] = {"ipam_poll_interval": 0.5}
        env = {c["name"]: "" for c in container["env"]}
        env.update(NODE_NAME=node.name, POD_NAMESPACE=system_ns)
        argv = [a.replace("$(NODE_NAME)", node.name) for a in container["command"]]
        agent = KubeAgent(wd / "agent", node_ns, settings, env=env)
        agent.argv = _remap([str(VENV_BIN / argv[0]), *argv[1:]], paths)
        agent.start(timeout=90)
        cleanups.insert(1, agent.stop)  # after the node: containerd's DELs need the agent
        node.wait_ready(120)
        yield TerwayNode(api, node, agent, emu, fwd, node_ns, system_ns, pods_ns, pod_cidrs, docs, daemonset)
    finally:
        if node is not None and agent is not None and agent.proc is not None and agent.proc.poll() is None:
            # let kubelet tear the pods down through the agent while both still run
            with api.api_client() as c:
                core = client.CoreV1Api(c)
                for p in core.list_namespaced_pod(pods_ns).items:
                    core.delete_namespaced_pod(p.metadata.name, pods_ns)
                wait_until("e2e pods gone", lambda: not core.list_namespaced_pod(pods_ns).items, timeout=90)
        errors = []
        for fn in cleanups:
            try:
                fn()
            except Exception as exc:  # noqa: BLE001 - every clean-up step runs; re-raised below
                errors.append(exc)
        with api.api_client() as c:
            delete_docs(c, [d for d in docs if d["kind"] in ("ClusterRole", "ClusterRoleBinding")])
        if errors:
            raise errors[0]


def _pod(
    tn: TerwayNode, name: str, *, annotations: dict[str, str] | None = None, owner_kind: str = ""
) -> Any:
    body = pause_pod(name, tn.node.name, tn.node.art.pause_image)
    if annotations:
        body.metadata.annotations = annotations
    if owner_kind:
        from kubernetes import client

        body.metadata.owner_references = [
            client.V1OwnerReference(
                api_version="apps/v1", kind=owner_kind, name="web", uid=str(uuid.uuid4()), controller=True
            )
        ]
    return tn.core().create_namespaced_pod(tn.pods_ns, body)


def _running(tn: TerwayNode, name: str) -> Any:
    return wait_pod_running(tn.core(), tn.pods_ns, name, timeout=90)


def _delete(tn: TerwayNode, name: str) -> None:
    core = tn.core()
    core.delete_namespaced_pod(name, tn.pods_ns)
    wait_pod_gone(core, tn.pods_ns, name, timeout=90)


def _in_pod(netns_path: str, *cmd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["nsenter", f"--net={netns_path}", *cmd], capture_output=True, text=True, timeout=30
    )


def test_the_node_turns_ready_once_the_agent_serves(terway_node: TerwayNode):
    tn = terway_node
    conflist = json.loads((tn.node.cni_conf_dir / "10-terway.conflist").read_text())
    assert conflist["plugins"][0]["type"] == "terway"
    assert conflist["plugins"][0]["socket_path"] == tn.agent.socket
    sel = tn.agent.lines("mode.selected")[0]
    assert (sel["mode"], sel["reason"]) == ("shared_eni", "default")
    assert tn.agent.lines("k8s.access.ok")  # its own ServiceAccount, the chart's RBAC
    core = tn.core()

    def published() -> Any:
        n = core.read_node(tn.node.name)
        cond = [c for c in n.status.conditions or [] if c.type == "SufficientIP"]
        return (n, cond[0]) if cond and (n.metadata.annotations or {}).get(MAX_AVAILABLE_IP) else None

    n, cond = wait_until("node facts published", published, timeout=30)
    assert n.metadata.annotations[MAX_AVAILABLE_IP] == "45"  # ecs.g7.xlarge: (4 - 1) x 15
    assert (cond.status, cond.reason) == ("True", "SufficientIP")
    assert any(c.type == "Ready" and c.status == "True" for c in n.status.conditions)


def test_pods_get_vpc_addresses_talk_to_each_other_and_give_them_back(terway_node: TerwayNode):
    tn = terway_node
    core = tn.core()
    names = [f"web-{i}" for i in range(2)]
    created = time.monotonic()
    for name in names:
        _pod(tn, name)
    pods = [_running(tn, name) for name in names]
    print(f"2 pods Running {time.monotonic() - created:.1f}s after create")
    ips = [p.status.pod_ip for p in pods]
    for ip in ips:
        assert any(ipaddress.ip_address(ip) in net for net in tn.pod_cidrs), (ip, tn.pod_cidrs)
    assert len(set(ips)) == 2

    for pod, ip in zip(pods, ips, strict=True):
        wait_until(
            f"pod-ips of {pod.metadata.name}",
            lambda p=pod, ip=ip: (
                (core.read_namespaced_pod(p.metadata.name, tn.pods_ns).metadata.annotations or {}).get(
                    POD_IPS
                )
                == ip
            ),
            timeout=30,
        )
        ev = wait_until(
            f"AllocIPSucceed of {pod.metadata.name}",
            lambda p=pod: events_for(core, tn.pods_ns, p.metadata.name, "AllocIPSucceed"),
            timeout=30,
        )
        assert ev[0].message.startswith(f"Alloc IP {ip} took ")
        assert ev[0].involved_object.uid == pod.metadata.uid
        state = tn.ip_state(ip)
        assert state is not None and state["owner"], state

    # connectivity: into each pod's namespace, ping the other pod and the node
    a_ns, b_ns = (tn.sandbox_netns(p) for p in pods)
    for src, dst in ((a_ns, ips[1]), (b_ns, ips[0])):
        r = _in_pod(src, "ping", "-c", "2", "-W", "2", dst)
        assert r.returncode == 0, r.stdout + r.stderr
    r = _in_pod(a_ns, "ip", "-j", "addr", "show", "dev", "eth0")
    assert ips[0] in r.stdout

    for name in names:
        _delete(tn, name)
    # back in the pool: idle on the node's ENIs, or (beyond max_pool_size) given back to the vSwitch
    for ip in ips:
        where = wait_until(
            f"{ip} released",
            lambda ip=ip: (
                "idle on the node"
                if (s := tn.ip_state(ip)) is not None and not s["owner"]
                else "returned to the vSwitch"
                if s is None
                else None
            ),
            timeout=30,
        )
        print(f"{ip}: {where}")
    assert not [a for a in tn.agent.attachments() if a["pod"].startswith(f"{tn.pods_ns}/")]


def test_a_statefulset_pod_recreated_keeps_its_address(terway_node: TerwayNode):
    tn = terway_node
    first = _running(tn, _pod(tn, "db-0", owner_kind="StatefulSet").metadata.name)
    ip = first.status.pod_ip
    _delete(tn, "db-0")
    held = tn.ip_state(ip)
    assert held is not None and held["owner"] is None and held["hold_for"] == f"{tn.pods_ns}/db-0", held
    # a plain pod created meanwhile does not get the held address
    other = _running(tn, _pod(tn, "plain").metadata.name)
    assert other.status.pod_ip != ip
    again = _running(tn, _pod(tn, "db-0", owner_kind="StatefulSet").metadata.name)
    assert again.metadata.uid != first.metadata.uid
    assert again.status.pod_ip == ip
    for name in ("db-0", "plain"):
        _delete(tn, name)


def test_a_pod_annotated_for_ip_reservation_recreated_keeps_its_address(terway_node: TerwayNode):
    """A plain pod (no owner) with ``k8s.aliyun.com/pod-ip-reservation: "true"`` is sticky like
    a StatefulSet's: its address is held for the pod of the same name."""
    tn = terway_node
    reserve = {"k8s.aliyun.com/pod-ip-reservation": "true"}
    first = _running(tn, _pod(tn, "reserved", annotations=reserve).metadata.name)
    assert not first.metadata.owner_references
    ip = first.status.pod_ip
    _delete(tn, "reserved")
    held = tn.ip_state(ip)
    assert held is not None and held["owner"] is None and held["hold_for"] == f"{tn.pods_ns}/reserved", held
    again = _running(tn, _pod(tn, "reserved", annotations=reserve).metadata.name)
    assert again.metadata.uid != first.metadata.uid
    assert again.status.pod_ip == ip
    _delete(tn, "reserved")


def _tbf_rates_bps(tn: TerwayNode, pod: Any) -> tuple[int, int]:
    """(ingress, egress) rates of the pod's TBF qdiscs in bits/s: ingress (towards the pod) on
    the host veth, egress on the pod's eth0."""
    # docs/modes/shared_eni.md: the host veth is cali + 11 hex of sha1("<namespace>.<name>")
    host_veth = "cali" + hashlib.sha1(f"{tn.pods_ns}.{pod.metadata.name}".encode()).hexdigest()[:11]
    host = subprocess.run(
        ["ip", "netns", "exec", tn.node_ns, "tc", "-j", "qdisc", "show", "dev", host_veth],
        capture_output=True,
        text=True,
        timeout=30,
    )
    pod_side = _in_pod(tn.sandbox_netns(pod), "tc", "-j", "qdisc", "show", "dev", "eth0")

    def tbf_rate(r: subprocess.CompletedProcess[str]) -> int:
        assert r.returncode == 0, r.stderr
        q = [x for x in json.loads(r.stdout) if x.get("kind") == "tbf"]
        assert q, f"no tbf qdisc: {r.stdout}"
        return int(q[0]["options"]["rate"]) * 8  # tc -j reports bytes per second

    return tbf_rate(host), tbf_rate(pod_side)


def test_the_bandwidth_annotations_shape_the_pod(terway_node: TerwayNode):
    tn = terway_node
    pod = _running(
        tn,
        _pod(
            tn,
            "limited",
            annotations={"k8s.aliyun.com/ingress-bandwidth": "10M", "k8s.aliyun.com/egress-bandwidth": "5M"},
        ).metadata.name,
    )
    assert _tbf_rates_bps(tn, pod) == (10_000_000, 5_000_000)
    _delete(tn, "limited")


def test_the_standard_bandwidth_annotations_arrive_as_runtime_config(terway_node: TerwayNode):
    """``kubernetes.io/{ingress,egress}-bandwidth`` are not read by the agent: kubelet passes the
    pod's annotations in the sandbox config, containerd's CRI turns them into the CNI
    ``bandwidth`` capability (``runtimeConfig.bandwidth``, bits/s) because the conflist declares
    ``capabilities: {bandwidth: true}``, and the terway plugin forwards runtimeConfig to the
    agent. A TBF with these rates proves the whole path."""
    tn = terway_node
    conflist = json.loads((tn.node.cni_conf_dir / "10-terway.conflist").read_text())
    assert conflist["plugins"][0]["capabilities"] == {"bandwidth": True}
    try:
        pod = _running(
            tn,
            _pod(
                tn,
                "limited-std",
                annotations={"kubernetes.io/ingress-bandwidth": "20M", "kubernetes.io/egress-bandwidth": "8M"},
            ).metadata.name,
        )
        assert _tbf_rates_bps(tn, pod) == (20_000_000, 8_000_000)
    finally:
        _delete(tn, "limited-std")


def test_an_exhausted_vswitch_turns_sufficient_ip_false_and_back(terway_node: TerwayNode):
    """Runs last: it leaves the node's pool drained. The vSwitches answering
    ``InvalidVSwitchId.IpNotEnough`` are set aside for ``ip_inhibit`` (IP_INHIBIT here); once the
    fault is gone and the set-aside is over, the condition returns to True."""
    tn = terway_node
    admin = tn.emulator.admin()
    core = tn.core()
    for api in ("AssignPrivateIpAddresses", "CreateNetworkInterface"):
        admin.add_fault(
            api,
            "error",
            code="InvalidVSwitchId.IpNotEnough",
            status=403,
            message="The specified VSwitch has not enough IpAddress.",
        )
    try:
        # drain the warm pool (max_pool_size 5), then ask for more than it holds
        names = [f"hungry-{i}" for i in range(8)]
        for name in names:
            _pod(tn, name)

        def condition() -> Any:
            n = core.read_node(tn.node.name)
            c = [c for c in n.status.conditions or [] if c.type == "SufficientIP"]
            return c[0] if c and c[0].status == "False" else None

        cond = wait_until("SufficientIP False", condition, timeout=120)
        assert cond.reason == "InsufficientIP"
        assert "InvalidVSwitchId.IpNotEnough" in cond.message
        ev = wait_until(
            "node AllocIPFailed",
            lambda: events_for(core, "default", tn.node.name, "AllocIPFailed"),
            timeout=30,
        )
        assert ev[0].type == "Warning"
        failed_at = time.monotonic()
        admin.clear_faults()

        def recovered() -> Any:
            n = core.read_node(tn.node.name)
            c = [c for c in n.status.conditions or [] if c.type == "SufficientIP"]
            return c[0] if c and c[0].status == "True" else None

        back = wait_until("SufficientIP True again", recovered, timeout=IP_INHIBIT + 60)
        print(f"SufficientIP True {time.monotonic() - failed_at:.1f}s after the fault was cleared")
        assert back.reason == "SufficientIP"
        assert back.last_transition_time > cond.last_transition_time
        # the log records the recovery (the still-pending pods may drive the node to its own
        # instance limits afterwards, a later flip the API read above may precede)
        records = tn.agent.lines("k8s.node.condition")
        flips = [r["sufficient_ip"] for r in records]
        assert "False" in flips and "True" in flips[flips.index("False") + 1:], records
    finally:
        admin.clear_faults()
        for p in core.list_namespaced_pod(tn.pods_ns).items:
            core.delete_namespaced_pod(p.metadata.name, tn.pods_ns, grace_period_seconds=0)
        wait_until("hungry pods gone", lambda: not core.list_namespaced_pod(tn.pods_ns).items, timeout=90)
    assert os.path.exists(tn.agent.socket)
