"""containerd + kubelet registered against an :class:`ApiServer`: the full-node mode of the lane."""

from __future__ import annotations

import json
import stat
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from . import _cleanup
from ._apiserver import KUBELET_USER, ApiServer
from ._artifacts import Artifacts
from ._cri import CRIClient
from ._procs import ManagedProcess, Workdir
from ._util import PREFIX, LaneError, Stopwatch, free_port, run, suffix, wait_until

_WRAPPER = """#!/bin/sh
# twe2e: record the call, then run the real plugin with the same stdin, args and environment.
printf '%s\\t%s\\t%s\\t%s\\t%s\\t%s\\t%s\\n' "$(date +%s.%N)" {plugin} "$CNI_COMMAND" "$CNI_CONTAINERID" \\
  "$CNI_IFNAME" "$CNI_NETNS" "$CNI_ARGS" >> {log}
exec {target} "$@"
"""


class Node:
    """A kubelet + containerd node registered to an :class:`ApiServer`.

    Use :meth:`start`; stop with :meth:`stop` or as a context manager. Attributes:

    - ``name``: the Node name; ``cri``: a :class:`CRIClient` on this node's containerd
    - ``cni_bin_dir`` / ``cni_conf_dir``: what containerd's CRI plugin uses (not the system's)
    - ``containerd_socket``, ``kubelet_root``, ``workdir`` (a :class:`Workdir`), ``timings``
    - ``cni_conflist``: the last conflist installed with :meth:`install_cni_conflist`

    CNI: containerd (not kubelet: with ``--container-runtime=remote`` kubelet 1.20 ignores
    ``--network-plugin``) runs the first conflist of ``cni_conf_dir`` with plugins from
    ``cni_bin_dir``. Every Debian plugin from /usr/lib/cni is installed there, wrapped by a script
    that records each call (see :meth:`cni_calls`) when ``record_cni_calls`` is true.
    """

    def __init__(self, api: ApiServer, art: Artifacts, name: str, record_cni_calls: bool) -> None:
        self.api = api
        self.art = art
        self.name = name
        self.record_cni_calls = record_cni_calls
        self.workdir = Workdir("node")
        self.timings = Stopwatch()
        wd = self.workdir
        self.cni_bin_dir = wd.sub("cni/bin")
        self.cni_conf_dir = wd.sub("cni/net.d")
        self.cni_call_log = wd.path / "cni-calls.tsv"
        self.cni_call_log.touch()
        self.containerd_root = wd.sub("containerd/root")
        self.containerd_state = wd.sub("containerd/state")
        self.containerd_socket = wd.path / "containerd" / "containerd.sock"
        self.kubelet_root = wd.sub("kubelet")
        self.containerd: ManagedProcess | None = None
        self.kubelet: ManagedProcess | None = None
        self.cri: CRIClient | None = None
        self._sysctl_owner = str(wd.path)
        self._links: list[str] = []
        self._network_names: set[str] = set()
        self.cni_conflist: dict[str, Any] | None = None
        self.stop_report: list[str] = []

    # -- lifecycle ------------------------------------------------------------------------------------

    @classmethod
    def start(
        cls,
        api: ApiServer,
        art: Artifacts,
        *,
        name: str | None = None,
        cni_conflist: Mapping[str, Any] | None = None,
        cni_plugins: Mapping[str, Path] | None = None,
        record_cni_calls: bool = True,
        wait_ready: bool = True,
        timeout: float = 120,
    ) -> Node:
        """Start containerd (pause image imported) and kubelet; wait for the Node to be Ready.

        ``cni_conflist`` is written to ``cni_conf_dir`` before containerd starts (without one the
        node stays NotReady: containerd reports NetworkReady=false). ``cni_plugins`` adds plugin
        binaries (name -> path) beside Debian's. ``wait_ready=False`` returns once kubelet runs.
        """
        self = cls(api, art, name or f"{PREFIX}-node-{suffix(3)}", record_cni_calls)
        try:
            for plugin in sorted(art.cni_plugin_dir.iterdir()):
                self.install_cni_plugin(plugin.name, plugin)
            for pname, path in (cni_plugins or {}).items():
                self.install_cni_plugin(pname, Path(path))
            if cni_conflist is not None:
                self.install_cni_conflist(cni_conflist)
            self.timings.mark("dirs")
            self._start_containerd(timeout)
            self._start_kubelet()
            if wait_ready:
                self.wait_ready(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _start_containerd(self, timeout: float) -> None:
        wd = self.workdir
        cfg = wd.path / "containerd" / "config.toml"
        runc_root = wd.sub("runc")
        cfg.write_text(
            _containerd_toml(
                root=self.containerd_root,
                state=self.containerd_state,
                socket=self.containerd_socket,
                opt=wd.sub("containerd/opt"),
                pause_image=self.art.pause_image,
                cni_bin=self.cni_bin_dir,
                cni_conf=self.cni_conf_dir,
                runc=self.art.runc,
                runc_root=runc_root,
            )
        )
        # shims outlive containerd: they carry our socket path on their command line.
        wd.record("shim", fragment=str(self.containerd_socket))
        self.containerd = wd.spawn("containerd", [str(self.art.containerd), "--config", str(cfg)])
        self.cri = CRIClient(self.containerd_socket, self.art.cri_stub_dir)
        cri = self.cri
        wait_until(
            "containerd CRI",
            lambda: cri.version().runtime_name,
            timeout=timeout,
            interval=0.1,
            alive=self.containerd.dead_message,
        )
        self.timings.mark("containerd")
        run(
            [str(self.art.ctr), "--address", str(self.containerd_socket), "--namespace", "k8s.io"]
            + ["images", "import", "--snapshotter", "overlayfs", str(self.art.pause_tar)],
            timeout=60,
        )
        self.timings.mark("pause-import")

    def _start_kubelet(self) -> None:
        wd = self.workdir
        root = self.kubelet_root
        kubeconfig = self.api.write_kubeconfig(
            wd.path / "kubelet.kubeconfig", token=self.api.kubelet_token, user=KUBELET_USER
        )
        config = {
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            "address": "127.0.0.1",
            "port": free_port(),
            "readOnlyPort": 0,
            "healthzBindAddress": "127.0.0.1",
            "healthzPort": free_port(),
            "authentication": {"anonymous": {"enabled": False}, "webhook": {"enabled": False}},
            "authorization": {"mode": "AlwaysAllow"},
            "cgroupDriver": "cgroupfs",
            "cgroupsPerQOS": False,
            "enforceNodeAllocatable": [],
            "failSwapOn": False,
            # No KUBE-MARK-*/KUBE-FIREWALL/KUBE-KUBELET-CANARY chains in the host's iptables.
            "makeIPTablesUtilChains": False,
            # Post status changes quickly: the node turns Ready ~1 s after containerd says so.
            "nodeStatusUpdateFrequency": "1s",
            "syncFrequency": "10s",
            "fileCheckFrequency": "10s",
            "evictionHard": {
                "memory.available": "100Mi",
                "nodefs.available": "1%",
                "imagefs.available": "1%",
                "nodefs.inodesFree": "1%",
            },
            "serializeImagePulls": False,
            "volumeStatsAggPeriod": "1h",
        }
        cfg_path = wd.path / "kubelet.yaml"
        cfg_path.write_text(yaml.safe_dump(config))
        # kubelet 1.20 sets 6 sysctls on start (setupKernelTunables): saved here, restored at stop.
        _cleanup.sysctl_acquire(self._sysctl_owner)
        wd.record("sysctl")
        argv = [
            str(self.art.kubelet),
            f"--config={cfg_path}",
            f"--kubeconfig={kubeconfig}",
            f"--root-dir={root}",
            f"--cert-dir={root / 'pki'}",
            f"--volume-plugin-dir={root / 'volume-plugins'}",
            f"--seccomp-profile-root={root / 'seccomp'}",
            "--container-runtime=remote",
            f"--container-runtime-endpoint=unix://{self.containerd_socket}",
            f"--pod-infra-container-image={self.art.pause_image}",
            f"--hostname-override={self.name}",
            f"--node-labels=twe2e.io/node={self.name}",
            # kubelet would lower its own oom_score_adj to -999: not permitted here (no CAP_SYS_RESOURCE).
            "--oom-score-adj=0",
            "--v=2",
        ]
        self.kubelet = wd.spawn("kubelet", argv)
        self.timings.mark("kubelet-spawn")

    def wait_ready(self, timeout: float = 120) -> None:
        """Wait until the Node object exists and its Ready condition is True."""
        from kubernetes import client

        assert self.kubelet is not None
        with self.api.api_client() as api:
            core = client.CoreV1Api(api)

            def ready() -> bool:
                node = core.read_node(self.name)
                return any(c.type == "Ready" and c.status == "True" for c in node.status.conditions or [])

            wait_until(f"node {self.name} Ready", ready, timeout=timeout, interval=0.25, alive=self._dead)
        self.timings.mark("node-ready")

    def _dead(self) -> str | None:
        for proc in (self.containerd, self.kubelet):
            if proc is not None and (msg := proc.dead_message()):
                return msg
        return None

    def stop(self) -> list[str]:
        """Stop everything and undo every host change. Idempotent; returns what was cleaned.

        Order: kubelet, then every sandbox through CRI (containerd runs CNI DEL, unmounts, deletes
        the netns), containerd, leftover shims, mounts, recorded links, CNI result cache and pod
        log directories, the sysctls kubelet changed, the work directory.
        """
        report = self.stop_report
        if self.kubelet is not None:
            self.kubelet.stop()
            report.append(f"kubelet exited {self.kubelet.exited()}")
        pod_uids: set[str] = set()
        if self.cri is not None and self.containerd is not None and self.containerd.exited() is None:
            try:
                for sb in self.cri.list_pod_sandboxes():
                    pod_uids.add(sb.metadata.uid)
                    try:
                        netns = self.cri.sandbox_netns(sb.id)
                    except Exception:  # noqa: BLE001 - best effort; removal below still runs
                        netns = ""
                    self.cri.stop_pod_sandbox(sb.id)
                    self.cri.remove_pod_sandbox(sb.id)
                    report.append(
                        f"removed sandbox {sb.id[:12]} ({sb.metadata.namespace}/{sb.metadata.name})"
                    )
                    if netns.startswith("/") and not netns.startswith("/proc/"):
                        _cleanup.remove_netns(netns)
            except Exception as exc:  # noqa: BLE001 - reported; the rest of the clean-up must run
                report.append(f"CRI clean-up failed: {exc!r}")
        if self.cri is not None:
            self.cri.close()
        if self.containerd is not None:
            self.containerd.stop()
            # Sandboxes removed earlier (deleted pods) are no longer listed; containerd logs each.
            pod_uids.update(_cleanup.pod_uids_in_containerd_log(self.containerd.log_path))
            report.append(f"containerd exited {self.containerd.exited()}")
        wd = self.workdir
        report.extend(_cleanup.release_resources([r for r in wd.resources if r["kind"] == "shim"], wd.path))
        report.extend(f"unmounted {p}" for p in _cleanup.unmount_under(wd.path))
        for link in self._links:
            if _cleanup.delete_link(link):
                report.append(f"deleted link {link}")
        for net in self._network_names:
            report.extend(f"removed {p}" for p in _cleanup.remove_paths([f"/var/lib/cni/results/{net}-*"]))
        # kubelet 1.20 hard-codes /var/log/pods/<ns>_<pod>_<uid>/ (+ symlinks in /var/log/containers).
        report.extend(_cleanup.remove_pod_logs(pod_uids))
        report.extend(_cleanup.remove_cni_results_of_pods(pod_uids))
        report.extend(_cleanup.sysctl_release(self._sysctl_owner))
        wd.remove()
        self.kubelet = self.containerd = self.cri = None
        return report

    def __enter__(self) -> Node:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- CNI ------------------------------------------------------------------------------------------

    def install_cni_plugin(self, name: str, path: Path) -> Path:
        """Put plugin ``name`` (running ``path``) into ``cni_bin_dir``; wrapped to record calls."""
        dest = self.cni_bin_dir / name
        dest.unlink(missing_ok=True)
        if self.record_cni_calls:
            dest.write_text(_WRAPPER.format(plugin=name, log=self.cni_call_log, target=path))
            dest.chmod(stat.S_IRWXU | stat.S_IRGRP | stat.S_IXGRP | stat.S_IROTH | stat.S_IXOTH)
        else:
            dest.symlink_to(path)
        return dest

    def install_cni_conflist(self, conflist: Mapping[str, Any], filename: str = "10-twe2e.conflist") -> Path:
        """Write a conflist into ``cni_conf_dir`` (containerd picks the first file by name)."""
        if "name" not in conflist or "plugins" not in conflist:
            raise LaneError(f"conflist needs 'name' and 'plugins', got keys {sorted(conflist)}")
        self._network_names.add(conflist["name"])
        self.cni_conflist = dict(conflist)
        path = self.cni_conf_dir / filename
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(conflist, indent=1))
        tmp.replace(path)
        return path

    def record_link(self, name: str) -> None:
        """Delete root-namespace link ``name`` when the node stops (e.g. a CNI bridge)."""
        self._links.append(name)
        self.workdir.record("link", name=name)

    def cni_calls(self) -> list[dict[str, str]]:
        """Recorded plugin calls, oldest first.

        Each is a dict with ``time, plugin, command, container_id, ifname, netns, args`` (``args`` is
        CNI_ARGS, e.g. ``K8S_POD_NAMESPACE=..;K8S_POD_NAME=..;K8S_POD_INFRA_CONTAINER_ID=..``).
        """
        calls = []
        for line in self.cni_call_log.read_text().splitlines():
            t, plugin, cmd, cid, ifname, netns, args = (line.split("\t") + [""] * 7)[:7]
            calls.append(
                {
                    "time": t,
                    "plugin": plugin,
                    "command": cmd,
                    "container_id": cid,
                    "ifname": ifname,
                    "netns": netns,
                    "args": args,
                }
            )
        return calls

    def wait_cni_calls(
        self, predicate: Any, *, timeout: float = 30, what: str = "CNI calls"
    ) -> list[dict[str, str]]:
        """Wait until ``predicate(calls)`` is true; returns the calls."""

        def probe() -> list[dict[str, str]] | None:
            calls = self.cni_calls()
            return calls if predicate(calls) else None

        return wait_until(what, probe, timeout=timeout)


def _containerd_toml(
    *,
    root: Path,
    state: Path,
    socket: Path,
    opt: Path,
    pause_image: str,
    cni_bin: Path,
    cni_conf: Path,
    runc: Path,
    runc_root: Path,
) -> str:
    cri = 'plugins."io.containerd.grpc.v1.cri"'
    return f"""version = 2
root = "{root}"
state = "{state}"
disabled_plugins = [
  "io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.zfs",
]

[grpc]
  address = "{socket}"

[ttrpc]
  address = "{socket}.ttrpc"

[debug]
  level = "info"

[metrics]
  address = ""

[plugins."io.containerd.internal.v1.opt"]
  path = "{opt}"

[{cri}]
  sandbox_image = "{pause_image}"
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  enable_selinux = false
  # network namespaces under our state dir instead of the hard-coded /var/run/netns
  netns_mounts_under_state_dir = true
  tolerate_missing_hugetlb_controller = true
  disable_apparmor = true
  # Sandboxes ask for oom_score_adj -998; lowering it needs CAP_SYS_RESOURCE, which this machine's
  # root lacks (runc: "can't get final child's PID from pipe: EOF"). Clamp to containerd's own score.
  restrict_oom_score_adj = true

[{cri}.cni]
  bin_dir = "{cni_bin}"
  conf_dir = "{cni_conf}"
  max_conf_num = 1

[{cri}.containerd]
  snapshotter = "overlayfs"
  default_runtime_name = "runc"

[{cri}.containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"

[{cri}.containerd.runtimes.runc.options]
  BinaryName = "{runc}"
  Root = "{runc_root}"
  SystemdCgroup = false
"""


def debian_bridge_conflist(
    *, name: str | None = None, bridge: str | None = None, subnet: str, data_dir: Path
) -> dict[str, Any]:
    """A conflist of Debian's reference plugins: bridge + host-local, then portmap.

    ``data_dir``: host-local's lease directory (so a test can see IPs being released).
    No masquerade (``ipMasq`` false): nothing leaves the host. No ``loopback`` in the chain:
    containerd runs Debian's loopback plugin itself for ``lo`` of every sandbox (a chained loopback
    would be called a second time with ``CNI_IFNAME=eth0`` and only bring ``lo`` up again).
    """
    sfx = suffix(2)
    return {
        "cniVersion": "0.4.0",
        "name": name or f"{PREFIX}-net-{sfx}",
        "plugins": [
            {
                "type": "bridge",
                "bridge": bridge or f"{PREFIX}br{sfx}",
                "isGateway": True,
                "ipMasq": False,
                "hairpinMode": True,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": subnet}]],
                    "dataDir": str(data_dir),
                },
            },
            {"type": "portmap", "capabilities": {"portMappings": True}},
        ],
    }


def host_local_dir(conflist: Mapping[str, Any]) -> Path:
    """Where host-local keeps the leases of a :func:`debian_bridge_conflist` network
    (one file per IP holding the container id)."""
    return Path(conflist["plugins"][0]["ipam"]["dataDir"]) / conflist["name"]


def unused_subnet24() -> str:
    """A 10.x.y.0/24 that no route of the root namespace covers (for a test bridge)."""
    import ipaddress
    import random

    routes = run(["ip", "-4", "route", "show", "table", "all"]).stdout
    taken = []
    for line in routes.splitlines():
        first = line.split()[1] if line.startswith(("local", "broadcast")) else line.split()[0]
        if first == "default":
            continue
        try:
            taken.append(ipaddress.ip_network(first, strict=False))
        except ValueError:
            continue
    rng = random.Random(time.time_ns())
    for _ in range(200):
        net = ipaddress.ip_network(f"10.{rng.randint(200, 250)}.{rng.randint(0, 255)}.0/24")
        if not any(net.overlaps(t) for t in taken):
            return str(net)
    raise LaneError("no free 10.x.y.0/24 found among the root namespace's routes")
