"""Smoke tests of the e2e lane itself: a real kube-apiserver, and a real kubelet + containerd node
whose pods are networked by Debian's reference CNI plugins (no terway involved)."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest
from kubernetes import client, watch
from kubernetes.client.exceptions import ApiException
from lane import (
    ApiServer,
    Artifacts,
    Node,
    _cleanup,
    debian_bridge_conflist,
    host_local_dir,
    pause_pod,
    suffix,
    unused_subnet24,
    wait_pod_gone,
    wait_pod_running,
    wait_until,
)

pytestmark = pytest.mark.e2e


# --- apiserver-only mode --------------------------------------------------------------------------


def test_apiserver_configmap_and_pod_watch_from_resource_version(
    twe2e_apiserver: ApiServer, twe2e_namespace: str
) -> None:
    ns = twe2e_namespace
    with twe2e_apiserver.api_client() as api:
        core = client.CoreV1Api(api)
        cm = client.V1ConfigMap(metadata=client.V1ObjectMeta(name="eni-config"), data={"k": "v"})
        core.create_namespaced_config_map(ns, cm)
        assert core.read_namespaced_config_map("eni-config", ns).data == {"k": "v"}

        rv = core.list_namespaced_pod(ns).metadata.resource_version
        # A pod without nodeName stays Pending (no scheduler) and is deleted at once.
        core.create_namespaced_pod(ns, pause_pod("watched", None, "unused"))
        core.patch_namespaced_pod("watched", ns, {"metadata": {"labels": {"seen": "yes"}}})
        core.delete_namespaced_pod("watched", ns)

        events = []
        w = watch.Watch()
        for ev in w.stream(core.list_namespaced_pod, ns, resource_version=rv, timeout_seconds=10):
            meta = ev["object"].metadata
            events.append((ev["type"], meta.name, meta.labels, meta.deletion_timestamp))
            if ev["type"] == "DELETED":
                w.stop()
        assert [e[:2] for e in events[:2]] == [("ADDED", "watched"), ("MODIFIED", "watched")]
        assert events[1][2] == {"app": "twe2e", "seen": "yes"}
        assert events[-1][:2] == ("DELETED", "watched")
        # 1.20 deletes even an unscheduled pod in two steps: deletionTimestamp first (MODIFIED).
        assert all(e[0] == "MODIFIED" and e[3] is not None for e in events[2:-1]), events


def test_compacting_apiserver_answers_410_for_an_expired_resource_version(
    twe2e_compacting_apiserver: ApiServer,
) -> None:
    api_server = twe2e_compacting_apiserver
    with api_server.api_client() as api:
        core = client.CoreV1Api(api)
        ns = f"twe2e-{suffix(3)}"
        core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=ns)))
        old_rv = core.list_namespaced_config_map(ns).metadata.resource_version
        for i in range(5):
            core.create_namespaced_config_map(
                ns, client.V1ConfigMap(metadata=client.V1ObjectMeta(name=f"c{i}"))
            )

        def expired() -> ApiException | None:
            try:
                for _ in watch.Watch().stream(
                    core.list_namespaced_config_map, ns, resource_version=old_rv, timeout_seconds=1
                ):
                    pass
            except ApiException as exc:
                return exc
            return None

        # etcd compacts every second (to the revision seen one interval earlier): within a few s.
        exc = wait_until("410 for the old resourceVersion", expired, timeout=15, interval=0.5)
        assert exc.status == 410
        # A fresh list gives a resourceVersion that can be watched again.
        rv = core.list_namespaced_config_map(ns).metadata.resource_version
        core.create_namespaced_config_map(ns, client.V1ConfigMap(metadata=client.V1ObjectMeta(name="after")))
        w = watch.Watch()
        seen = []
        for ev in w.stream(core.list_namespaced_config_map, ns, resource_version=rv, timeout_seconds=5):
            seen.append((ev["type"], ev["object"].metadata.name))
            w.stop()
        assert seen == [("ADDED", "after")]


def test_apiserver_crd_with_status_subresource(twe2e_apiserver: ApiServer, twe2e_namespace: str) -> None:
    group, plural = f"{suffix(3)}.twe2e.io", "widgets"
    crd = {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{group}"},
        "spec": {
            "group": group,
            "scope": "Namespaced",
            "names": {"plural": plural, "singular": "widget", "kind": "Widget"},
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "properties": {
                                "spec": {"type": "object", "properties": {"size": {"type": "integer"}}},
                                "status": {"type": "object", "properties": {"phase": {"type": "string"}}},
                            },
                        }
                    },
                }
            ],
        },
    }
    with twe2e_apiserver.api_client() as api:
        ext = client.ApiextensionsV1Api(api)
        ext.create_custom_resource_definition(crd)
        try:

            def established() -> bool:
                got = ext.read_custom_resource_definition(f"{plural}.{group}")
                return any(
                    c.type == "Established" and c.status == "True" for c in got.status.conditions or []
                )

            wait_until("CRD Established", established, timeout=30)
            co = client.CustomObjectsApi(api)
            ns = twe2e_namespace
            body = {
                "apiVersion": f"{group}/v1",
                "kind": "Widget",
                "metadata": {"name": "w1"},
                "spec": {"size": 3},
            }
            # The first custom-resource create is what crashed the vendored reflect2 under Go 1.19.
            wait_until(
                "custom resource create",
                lambda: co.create_namespaced_custom_object(group, "v1", ns, plural, body),
                timeout=20,
            )
            # status is ignored on the main resource and written only through /status.
            co.patch_namespaced_custom_object(group, "v1", ns, plural, "w1", {"status": {"phase": "Ignored"}})
            assert "status" not in co.get_namespaced_custom_object(group, "v1", ns, plural, "w1")
            co.patch_namespaced_custom_object_status(
                group, "v1", ns, plural, "w1", {"status": {"phase": "Ready"}}
            )
            got = co.get_namespaced_custom_object(group, "v1", ns, plural, "w1")
            assert got["status"] == {"phase": "Ready"}
            assert got["spec"] == {"size": 3}
        finally:
            ext.delete_custom_resource_definition(f"{plural}.{group}")


def test_apiserver_service_account_token_with_least_privilege(
    twe2e_apiserver: ApiServer, twe2e_namespace: str
) -> None:
    ns = twe2e_namespace
    with twe2e_apiserver.api_client() as admin:
        core = client.CoreV1Api(admin)
        rbac = client.RbacAuthorizationV1Api(admin)
        core.create_namespaced_service_account(
            ns, client.V1ServiceAccount(metadata=client.V1ObjectMeta(name="agent"))
        )
        rbac.create_namespaced_role(
            ns,
            client.V1Role(
                metadata=client.V1ObjectMeta(name="cm-reader"),
                rules=[
                    client.V1PolicyRule(
                        api_groups=[""], resources=["configmaps"], verbs=["get", "list", "watch"]
                    )
                ],
            ),
        )
        rbac.create_namespaced_role_binding(
            ns,
            client.V1RoleBinding(
                metadata=client.V1ObjectMeta(name="agent-cm-reader"),
                role_ref=client.V1RoleRef(
                    api_group="rbac.authorization.k8s.io", kind="Role", name="cm-reader"
                ),
                subjects=[client.RbacV1Subject(kind="ServiceAccount", name="agent", namespace=ns)],
            ),
        )
        core.create_namespaced_config_map(ns, client.V1ConfigMap(metadata=client.V1ObjectMeta(name="c1")))

    token = twe2e_apiserver.create_service_account_token(ns, "agent", expiration_seconds=600)
    assert token.count(".") == 2  # a JWT
    with twe2e_apiserver.api_client(token) as sa:
        core = client.CoreV1Api(sa)
        # RBAC is evaluated immediately for new bindings; allow a moment for the authorizer cache.
        names = wait_until(
            "configmaps readable by the service account",
            lambda: [c.metadata.name for c in core.list_namespaced_config_map(ns).items],
            timeout=10,
        )
        assert names == ["c1"]
        with pytest.raises(ApiException) as denied:
            core.create_namespaced_config_map(ns, client.V1ConfigMap(metadata=client.V1ObjectMeta(name="c2")))
        assert denied.value.status == 403
        assert f"system:serviceaccount:{ns}:agent" in denied.value.body
        with pytest.raises(ApiException) as denied_pods:
            core.list_namespaced_pod(ns)
        assert denied_pods.value.status == 403
        review = client.AuthorizationV1Api(sa).create_self_subject_access_review(
            client.V1SelfSubjectAccessReview(
                spec=client.V1SelfSubjectAccessReviewSpec(
                    resource_attributes=client.V1ResourceAttributes(
                        namespace=ns, verb="delete", resource="configmaps"
                    )
                )
            )
        )
        assert review.status.allowed is False

    # The same token works from a kubeconfig file (what the agent will be given).
    kc = twe2e_apiserver.write_kubeconfig(
        twe2e_apiserver.workdir.path / f"sa-{suffix(2)}.kubeconfig", token=token
    )
    from kubernetes import config

    with config.new_client_from_config(config_file=str(kc)) as api:
        assert [c.metadata.name for c in client.CoreV1Api(api).list_namespaced_config_map(ns).items] == ["c1"]


# --- full node mode ---------------------------------------------------------------------------------


def _ping(netns: str, ip: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["nsenter", f"--net={netns}", "ping", "-c", "3", "-i", "0.2", "-W", "2", ip],
        capture_output=True,
        text=True,
        timeout=30,
    )


def _sandbox_of(node: Node, pod_uid: str) -> str:
    assert node.cri is not None
    items = node.cri.list_pod_sandboxes(**{"io.kubernetes.pod.uid": pod_uid})
    ready = [sb for sb in items if sb.state == node.cri.pb.SANDBOX_READY]
    assert len(ready) == 1, f"expected one ready sandbox for pod {pod_uid}, got {items}"
    return ready[0].id


@pytest.mark.slow
def test_two_pods_get_ips_ping_each_other_and_cni_del_releases_them(
    twe2e_apiserver: ApiServer, twe2e_bridge_node: Node, twe2e_namespace: str
) -> None:
    node, ns = twe2e_bridge_node, twe2e_namespace
    assert node.cri is not None
    assert node.cni_conflist is not None
    leases = host_local_dir(node.cni_conflist)
    image = node.art.pause_image
    with twe2e_apiserver.api_client() as api:
        core = client.CoreV1Api(api)
        t0 = time.monotonic()
        for name in ("pod-a", "pod-b"):
            core.create_namespaced_pod(ns, pause_pod(name, node.name, image))
        pods = {name: wait_pod_running(core, ns, name, timeout=60) for name in ("pod-a", "pod-b")}
        print(f"two pods Running in {time.monotonic() - t0:.1f}s")

        sandboxes, netns = {}, {}
        for name, pod in pods.items():
            sb = _sandbox_of(node, pod.metadata.uid)
            sandboxes[name] = sb
            netns[name] = node.cri.sandbox_netns(sb)
            status, info = node.cri.pod_sandbox_status(sb)
            # The CRI status, the Pod status and the netns of the pause process agree.
            assert status.network.ip == pod.status.pod_ip
            assert os.stat(netns[name]).st_ino == os.stat(f"/proc/{info['pid']}/ns/net").st_ino
            # host-local leased exactly this IP to exactly this sandbox.
            lease = leases / pod.status.pod_ip
            assert lease.read_text().splitlines()[0] == sb
        ip_a, ip_b = pods["pod-a"].status.pod_ip, pods["pod-b"].status.pod_ip
        assert ip_a != ip_b

        for src, dst_ip in (("pod-a", ip_b), ("pod-b", ip_a)):
            res = _ping(netns[src], dst_ip)
            assert res.returncode == 0, f"ping {src} -> {dst_ip} failed:\n{res.stdout}{res.stderr}"
            assert " 0% packet loss" in res.stdout

        adds = [
            c for c in node.cni_calls() if c["command"] == "ADD" and c["container_id"] in sandboxes.values()
        ]
        for name, sb in sandboxes.items():
            # containerd 1.6 passes these CNI_ARGS (in random order: a Go map).
            for c in adds:
                if c["container_id"] == sb:
                    assert dict(kv.split("=", 1) for kv in c["args"].split(";")) == {
                        "IgnoreUnknown": "1",
                        "K8S_POD_NAMESPACE": ns,
                        "K8S_POD_NAME": name,
                        "K8S_POD_INFRA_CONTAINER_ID": sb,
                        "K8S_POD_UID": pods[name].metadata.uid,
                    }, c
            mine = {(c["plugin"], c["ifname"], c["netns"]) for c in adds if c["container_id"] == sb}
            # The chain on eth0, plus containerd's own loopback network on lo.
            assert mine == {
                (p, i, netns[name])
                for p, i in (
                    ("bridge", "eth0"),
                    ("host-local", "eth0"),
                    ("portmap", "eth0"),
                    ("loopback", "lo"),
                )
            }

        for name in pods:
            core.delete_namespaced_pod(name, ns)
        for name in pods:
            wait_pod_gone(core, ns, name, timeout=60)

    def released(calls: list[dict[str, str]]) -> bool:
        dels = {(c["plugin"], c["container_id"]) for c in calls if c["command"] == "DEL"}
        return all(("bridge", sb) in dels and ("host-local", sb) in dels for sb in sandboxes.values())

    calls = node.wait_cni_calls(released, timeout=60, what="CNI DEL of both sandboxes")
    for ip in (ip_a, ip_b):
        assert not (leases / ip).exists(), f"host-local still leases {ip}"
    for sb in sandboxes.values():
        dels = [
            c for c in calls if c["command"] == "DEL" and c["plugin"] == "bridge" and c["container_id"] == sb
        ]
        # The first DEL carries the netns; later ones (kubelet stops the sandbox again) come with
        # an empty CNI_NETNS once containerd removed it: a plugin's DEL must be idempotent.
        assert dels[0]["netns"] == netns[[n for n, s in sandboxes.items() if s == sb][0]]
        print(
            f"bridge DEL calls for {sb[:12]}: {len(dels)} ({sum(1 for c in dels if not c['netns'])} without netns)"
        )
    # Chains run DEL in reverse order: portmap before bridge for each sandbox.
    for sb in sandboxes.values():
        order = [c["plugin"] for c in calls if c["command"] == "DEL" and c["container_id"] == sb]
        assert order.index("portmap") < order.index("bridge"), order


@pytest.mark.slow
def test_node_stop_with_a_running_pod_leaves_the_host_clean(
    twe2e_apiserver: ApiServer, twe2e_namespace: str, tmp_path: Path
) -> None:
    sysctls_before = {k: Path("/proc/sys", k).read_text() for k in _cleanup.KUBELET_SYSCTLS}
    chains_before = _cleanup.iptables_chains()
    conflist = debian_bridge_conflist(subnet=unused_subnet24(), data_dir=tmp_path)
    bridge = conflist["plugins"][0]["bridge"]
    node = Node.start(twe2e_apiserver, twe2e_apiserver.art, cni_conflist=conflist)
    stopped = False
    try:
        node.record_link(bridge)
        print(f"node Ready in {node.timings.summary()}")
        assert node.cri is not None and node.containerd is not None and node.kubelet is not None
        with twe2e_apiserver.api_client() as api:
            core = client.CoreV1Api(api)
            # One pod deleted before the stop (kubelet tears it down; its log dir may stay behind)...
            core.create_namespaced_pod(twe2e_namespace, pause_pod("deleted", node.name, node.art.pause_image))
            gone = wait_pod_running(core, twe2e_namespace, "deleted")
            core.delete_namespaced_pod("deleted", twe2e_namespace)
            wait_pod_gone(core, twe2e_namespace, "deleted")
            # ... and one still running when the node stops.
            core.create_namespaced_pod(
                twe2e_namespace, pause_pod("left-running", node.name, node.art.pause_image)
            )
            pod = wait_pod_running(core, twe2e_namespace, "left-running")
        sb = _sandbox_of(node, pod.metadata.uid)
        netns = node.cri.sandbox_netns(sb)
        _, info = node.cri.pod_sandbox_status(sb)
        pause_pid = info["pid"]
        assert Path(netns).exists() and str(node.workdir.path) in netns
        shims = _cleanup.pids_with_cmdline(str(node.containerd_socket))
        assert shims, "no containerd shim found for the running pod"
        pids = [node.containerd.pid, node.kubelet.pid, pause_pid] + [p for p, _ in shims]
        # While kubelet runs the sysctls carry its values.
        assert Path("/proc/sys/vm/overcommit_memory").read_text().strip() == "1"
        workdir = node.workdir.path

        report = node.stop()
        stopped = True
        print("\n".join(report))
    finally:
        if not stopped:
            node.stop()

    assert any(line.startswith("removed sandbox") for line in report)
    for pid in pids:
        assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text(), pid
    assert not Path(netns).exists()
    assert not workdir.exists()
    assert not _cleanup.mounts_under(workdir)
    assert not _cleanup.link_exists(bridge)
    assert not list(tmp_path.glob(f"{conflist['name']}/10.*")), "host-local lease left behind"
    for uid in (pod.metadata.uid, gone.metadata.uid):
        assert not list(Path("/var/log/pods").glob(f"*_{uid}")), f"log dir of pod {uid} left behind"
    assert not list(Path("/var/lib/cni/results").glob(f"{conflist['name']}-*"))
    uids = {pod.metadata.uid, gone.metadata.uid}
    cached = [f for f in Path("/var/lib/cni/results").iterdir() if any(u in f.read_text() for u in uids)]
    assert not cached, f"libcni results of the lane's pods left behind (cni-loopback included): {cached}"
    # Other sessions' kubelets may still hold the sysctls; otherwise they are back to what they were.
    if not Path("/run/twe2e-sysctl.json").exists():
        assert {k: Path("/proc/sys", k).read_text() for k in _cleanup.KUBELET_SYSCTLS} == sysctls_before
    chains_after = _cleanup.iptables_chains()
    new_chains = {t: sorted(c - chains_before.get(t, set())) for t, c in chains_after.items()}
    assert not any(c.startswith("KUBE-") for cs in new_chains.values() for c in cs), new_chains


def test_cri_client_runs_a_sandbox_directly(twe2e_bridge_node: Node) -> None:
    """RunPodSandbox/PodSandboxStatus/Stop/Remove through the generated CRI client (no kubelet)."""
    node = twe2e_bridge_node
    cri = node.cri
    assert cri is not None
    pb = cri.pb
    uid = suffix(8)
    cfg = pb.PodSandboxConfig(
        metadata=pb.PodSandboxMetadata(
            name=f"twe2e-cri-{uid[:6]}", namespace="twe2e-cri", uid=uid, attempt=0
        ),
        hostname="twe2e-cri",
        log_directory=str(node.workdir.sub("cri-logs")),
        labels={"twe2e.io/cri": uid},
        linux=pb.LinuxPodSandboxConfig(),
    )
    t0 = time.monotonic()
    sb = cri.run_pod_sandbox(cfg)
    try:
        status, info = cri.pod_sandbox_status(sb)
        assert status.state == pb.SANDBOX_READY
        assert status.network.ip
        assert [s.id for s in cri.list_pod_sandboxes(**{"twe2e.io/cri": uid})] == [sb]
        assert Path(f"/proc/{info['pid']}").exists()
    finally:
        cri.stop_pod_sandbox(sb)
        cri.remove_pod_sandbox(sb)
    print(f"runp/stopp/rmp cycle {time.monotonic() - t0:.2f}s")
    assert not cri.list_pod_sandboxes(**{"twe2e.io/cri": uid})
    assert node.cni_conflist is not None
    assert not (host_local_dir(node.cni_conflist) / status.network.ip).exists()


_KILLED_RUN = """
import json, sys, tempfile, pathlib
sys.path.insert(0, {lane_dir!r})
import lane
from kubernetes import client
art = lane.ensure_artifacts(build=False)
api = lane.ApiServer.start(art)
conf = lane.debian_bridge_conflist(subnet=lane.unused_subnet24(), data_dir=pathlib.Path({data_dir!r}))
node = lane.Node.start(api, art, cni_conflist=conf)
node.record_link(conf["plugins"][0]["bridge"])
with api.api_client() as c:
    core = client.CoreV1Api(c)
    core.create_namespaced_pod("default", lane.pause_pod("orphan", node.name, art.pause_image))
    pod = lane.wait_pod_running(core, "default", "orphan")
sb = node.cri.list_pod_sandboxes()[0]
print(json.dumps({{
    "pids": [api.etcd.pid, api.apiserver.pid, node.containerd.pid, node.kubelet.pid,
             node.cri.pod_sandbox_status(sb.id)[1]["pid"]],
    "dirs": [str(api.workdir.path), str(node.workdir.path)],
    "bridge": conf["plugins"][0]["bridge"], "uid": pod.metadata.uid,
}}), flush=True)
sys.stdin.read()
"""


@pytest.mark.slow
def test_reap_stale_cleans_up_after_a_killed_test_process(twe2e_artifacts: object, tmp_path: Path) -> None:
    """A test process killed with SIGKILL leaves everything running; the next run's reaper
    (called by the twe2e_artifacts fixture) kills and removes all of it."""
    import signal
    import sys

    from lane import reap_stale

    script = _KILLED_RUN.format(lane_dir=str(Path(__file__).parent), data_dir=str(tmp_path))
    proc = subprocess.Popen(
        [sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line, f"the child run failed (exit {proc.wait(30)})"
        state = json.loads(line)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    assert all(Path(f"/proc/{pid}").exists() for pid in state["pids"])  # orphaned, still running

    done = reap_stale()
    print("\n".join(done))

    for pid in state["pids"]:
        assert not Path(f"/proc/{pid}").exists(), f"pid {pid} survived the reaper"
    for d in state["dirs"]:
        assert not Path(d).exists() and not _cleanup.mounts_under(d)
    assert not _cleanup.link_exists(state["bridge"])
    assert not list(Path("/var/log/pods").glob(f"*_{state['uid']}"))


def test_cnitool_add_check_del_with_debian_ptp(twe2e_artifacts: Artifacts, tmp_path: Path) -> None:
    """The cached cnitool drives Debian's ptp + host-local in a fresh network namespace."""
    art = twe2e_artifacts
    netns = f"twe2e-ct-{suffix(3)}"
    net = f"twe2e-ptp-{suffix(2)}"
    confdir = tmp_path / "net.d"
    confdir.mkdir()
    (confdir / "10.conflist").write_text(
        json.dumps(
            {
                "cniVersion": "0.4.0",
                "name": net,
                "plugins": [
                    {
                        "type": "ptp",
                        "ipam": {
                            "type": "host-local",
                            "ranges": [[{"subnet": unused_subnet24()}]],
                            "dataDir": str(tmp_path / "ipam"),
                        },
                    }
                ],
            }
        )
    )
    env = dict(os.environ, NETCONFPATH=str(confdir), CNI_PATH=str(art.cni_plugin_dir))
    subprocess.run(["ip", "netns", "add", netns], check=True)
    try:
        path = f"/var/run/netns/{netns}"
        add = subprocess.run([str(art.cnitool), "add", net, path], env=env, capture_output=True, text=True)
        assert add.returncode == 0, add.stderr
        result = json.loads(add.stdout)
        ip = result["ips"][0]["address"].split("/")[0]
        shown = subprocess.run(
            ["ip", "-n", netns, "-4", "-o", "addr", "show", "dev", "eth0"], capture_output=True, text=True
        )
        assert f"inet {ip}/" in shown.stdout
        check = subprocess.run(
            [str(art.cnitool), "check", net, path], env=env, capture_output=True, text=True
        )
        assert check.returncode == 0, check.stderr
        dele = subprocess.run([str(art.cnitool), "del", net, path], env=env, capture_output=True, text=True)
        assert dele.returncode == 0, dele.stderr
        assert not (tmp_path / "ipam" / net / ip).exists()
    finally:
        subprocess.run(["ip", "netns", "del", netns], check=False)
        _cleanup.remove_paths([f"/var/lib/cni/results/{net}-*"])
