"""A simulated cluster on this machine: the README demo, the mode test suites and
the benchmarks share it.

* :class:`SimAgent` -- a real ``terway-agent run`` process inside a node network
  namespace; :meth:`SimAgent.cni` execs the installed ``terway`` executable exactly
  as a container runtime does (environment + stdin, one process per call).
* :func:`start_cluster` -- the cloud emulator with its netns node side (a VPC
  namespace routing every vSwitch and answering as their gateways; each
  instance a node namespace whose ``eth0`` is its primary ENI) and one agent per
  node.  The agents reach the emulated OpenAPI (100.100.100.201) and metadata
  service (100.100.100.200) through their ``eth0`` like real nodes do; ENIs the
  agents attach appear in the node namespaces as devices with the ENI's MAC.
* :func:`whoami_server` / :func:`whoami` -- a TCP probe that reports the
  address the server saw (shows NAT, or its absence).

Needs root.  Nothing here is used by the agent itself.
"""

from __future__ import annotations

import copy
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from terway_agent.cli import install_cni
from terway_agent.cloud.emulator import Emulator
from terway_agent.datapath import netns

VENV_BIN = Path(sys.executable).parent


def unique(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:6]}"


@dataclass
class CNIRun:
    rc: int
    out: Any
    stdout: str
    stderr: str

    @property
    def code(self) -> int | None:
        return self.out.get("code") if isinstance(self.out, dict) else None


@dataclass
class SimAgent:
    """A terway agent process inside a node network namespace, and the paths around it."""

    workdir: Path
    node_ns: str
    settings: dict[str, Any]
    #: run this command instead of ``terway-agent run`` (``--config <file>`` is appended)
    command_prefix: list[str] | None = None
    env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen | None = None
    log_path: Path = field(init=False)
    bin_dir: Path = field(init=False)

    def __post_init__(self) -> None:
        self.log_path = self.workdir / "agent.log"
        self.bin_dir = self.workdir / "bin"
        install_cni(str(self.bin_dir))

    @property
    def socket(self) -> str:
        return self.settings["socket_path"]

    @property
    def conflist(self) -> Path:
        return Path(self.settings["cni_conf_dir"]) / "10-terway.conflist"

    @property
    def eni_conf(self) -> Path:
        return Path(self.settings["eni_conf_path"])

    def write_settings(self) -> Path:
        p = self.workdir / "settings.yaml"
        p.write_text(yaml.safe_dump(self.settings))
        return p

    def command(self, *extra: str) -> list[str]:
        settings = str(self.write_settings())
        if self.command_prefix:
            base = [*self.command_prefix, "--config", settings]
        else:
            base = [str(VENV_BIN / "terway-agent"), "run", "--config", settings]
        return ["ip", "netns", "exec", self.node_ns, *base, *extra]

    def start(self, *extra: str, wait: bool = True, timeout: float = 20.0) -> None:
        assert self.proc is None or self.proc.poll() is not None, "agent already running"
        logf = open(self.log_path, "ab")  # noqa: SIM115 - owned by the process
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **self.env}
        self.proc = subprocess.Popen(self.command(*extra), stdout=logf, stderr=subprocess.STDOUT, env=env)
        logf.close()
        if wait:
            self.wait_serving(timeout)

    def wait_serving(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"agent exited with {self.proc.returncode}:\n{self.log()}")
            # ready = the socket accepts and the conflist is written (right after listen)
            if self.accepts() and self.conflist.exists():
                return
            time.sleep(0.02)
        raise AssertionError(f"agent did not serve within {timeout}s:\n{self.log()}")

    def accepts(self) -> bool:
        s = socket.socket(socket.AF_UNIX)
        try:
            s.connect(self.socket)
            return True
        except OSError:
            return False
        finally:
            s.close()

    def log(self) -> str:
        try:
            return self.log_path.read_text()[-6000:]
        except FileNotFoundError:
            return ""

    def events(self) -> list[dict[str, Any]]:
        out = []
        for line in self.log_path.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
        return out

    def stop(self, timeout: float = 20.0) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def run_cli(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            ["ip", "netns", "exec", self.node_ns, str(VENV_BIN / "terway-agent"), *args],
            capture_output=True, text=True, timeout=60,
        )

    def attachments(self) -> list[dict[str, Any]]:
        r = subprocess.run([str(VENV_BIN / "terway-agent"), "attachments", "--json", "--socket", self.socket],
                           capture_output=True, text=True, timeout=30)
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout)

    def leases(self) -> list[dict[str, Any]]:
        """The store's lease table, read through a second SQLite connection (WAL readers never block)."""
        import sqlite3

        db = sqlite3.connect(f"file:{self.settings['state_dir']}/state.db?mode=ro", uri=True)
        db.row_factory = sqlite3.Row
        try:
            return [dict(r) for r in db.execute("SELECT * FROM leases ORDER BY pool, address")]
        finally:
            db.close()

    def conf(self, version: str = "1.0.0", **extra: Any) -> dict[str, Any]:
        c = {"cniVersion": version, "name": "terway", "type": "terway", "socket_path": self.socket}
        c.update(extra)
        return c

    def cni(
        self,
        command: str,
        container_id: str = "",
        *,
        netns_path: str = "",
        ifname: str = "eth0",
        pod: tuple[str, str] | None = None,
        conf: dict[str, Any] | None = None,
        stdin: bytes | None = None,
        env: dict[str, str] | None = None,
        drop: tuple[str, ...] = (),
        timeout: float = 120,
    ) -> CNIRun:
        """Exec the real ``terway`` executable as a container runtime does."""
        e = {"PATH": os.environ.get("PATH", ""), "CNI_COMMAND": command, "CNI_PATH": str(self.bin_dir) + ":/usr/lib/cni"}
        if container_id:
            e["CNI_CONTAINERID"] = container_id
        if command in ("ADD", "CHECK", "DEL"):
            e["CNI_IFNAME"] = ifname
            e["CNI_NETNS"] = netns_path
        if pod is not None:
            e["CNI_ARGS"] = f"IgnoreUnknown=1;K8S_POD_NAMESPACE={pod[0]};K8S_POD_NAME={pod[1]};K8S_POD_INFRA_CONTAINER_ID={container_id}"
        e.update(env or {})
        for k in drop:
            e.pop(k, None)
        data = stdin if stdin is not None else json.dumps(conf if conf is not None else self.conf()).encode()
        p = subprocess.run([str(self.bin_dir / "terway")], input=data, capture_output=True, env=e, timeout=timeout)
        text = p.stdout.decode()
        try:
            out = json.loads(text) if text.strip() else None
        except ValueError:
            out = text
        return CNIRun(p.returncode, out, text, p.stderr.decode())


def workdir_settings(workdir: Path) -> dict[str, Any]:
    """The settings that put an agent's files under ``workdir`` (socket, lock, state,
    conflist), with a debug endpoint on a free port and a fast config reload."""
    return {
        "socket_path": str(workdir / "run" / "eni.socket"),
        "lock_path": str(workdir / "run" / "terwayd.lock"),
        "state_dir": str(workdir / "state"),
        "cni_conf_dir": str(workdir / "net.d"),
        "debug_listen": "127.0.0.1:0",
        "reload_interval": 0.2,
    }


def base_settings(workdir: Path, **over: Any) -> dict[str, Any]:
    eni = workdir / "eni_conf"
    if not eni.exists():
        eni.write_text(json.dumps({"max_pool_size": 5}))
    s = {
        "node_name": "functional",
        "mode": "example",
        "eni_conf_path": str(eni),
        **workdir_settings(workdir),
        "plugin_config": {"example": {"subnet": "10.250.0.0/24"}},
    }
    s.update(over)
    return s



def ns_run(ns: str, *cmd: str, check: bool = False) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", "netns", "exec", ns, *cmd], capture_output=True, text=True, check=check, timeout=30)


def links_in(ns: str) -> list[str]:
    out = ns_run(ns, "ip", "-j", "link", "show").stdout
    return [link["ifname"] for link in json.loads(out or "[]")]


@contextmanager
def whoami_server(netns_path: str, ip: str, port: int = 0):
    """A TCP server inside ``netns_path`` that answers each connection with the
    peer address it sees, then closes; yields (host, port).  Shows NAT (or its
    absence) on the path."""
    from terway_agent.datapath._probe import tcp_server

    def tell(conn: socket.socket, peer: tuple[str, int]) -> None:
        conn.sendall(f"{peer[0]}\n".encode())

    with tcp_server(netns_path, ip, port, tell) as address:
        yield address


def whoami(netns_path: str, dst: str, port: int, timeout: float = 5.0) -> str:
    """Connect from ``netns_path`` and return the address the server saw us as."""
    from terway_agent.datapath._probe import socket_in

    family = socket.AF_INET6 if ":" in dst else socket.AF_INET
    sock = socket_in(netns_path, family, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        sock.connect((dst, port))
        data = b""
        while not data.endswith(b"\n"):
            chunk = sock.recv(256)
            if not chunk:
                break
            data += chunk
        return data.decode().strip()
    finally:
        sock.close()


# ---------------------------------------------------------------------------
# a cluster on the emulator
# ---------------------------------------------------------------------------

REGION = "cn-hangzhou"
ZONE = "cn-hangzhou-k"
ACCESS_KEY = ("LTAItwcnClusterKey", "twcn-cluster-secret")
SERVICE_CIDR = "172.21.0.0/20"
SERVICE_CIDR6 = "fd00:21::/112"
HOST_STACK_CIDR = "169.254.20.10/32"
POD_VSWITCHES = ("vsw-twcn-pod-a", "vsw-twcn-pod-b")
SECURITY_GROUP = "sg-twcn-1"


def topology(suffix: str, nodes: int = 2, instance_type: str = "ecs.g7.xlarge") -> dict[str, Any]:
    return {
        "region": REGION,
        "seed": 20261125,
        "vpc": {"id": "vpc-twcn0000000000000", "cidr": "192.168.0.0/16", "ipv6_cidr": "2408:4005:3a0:5b00::/56"},
        "zones": [ZONE],
        "vswitches": [
            {"id": "vsw-twcn-node", "zone": ZONE, "cidr": "192.168.0.0/24", "ipv6_cidr": "2408:4005:3a0:5b00::/64"},
            {"id": POD_VSWITCHES[0], "zone": ZONE, "cidr": "192.168.32.0/19", "ipv6_cidr": "2408:4005:3a0:5b01::/64"},
            {"id": POD_VSWITCHES[1], "zone": ZONE, "cidr": "192.168.64.0/19", "ipv6_cidr": "2408:4005:3a0:5b02::/64"},
        ],
        "security_groups": [{"id": SECURITY_GROUP, "name": "nodes"}],
        "access_keys": [{"id": ACCESS_KEY[0], "secret": ACCESS_KEY[1]}],
        "instances": [
            {
                "id": f"i-twcn{suffix}node{i}",
                "type": instance_type,
                "vswitch": "vsw-twcn-node",
                "netns": f"twcn{suffix}n{i}",
                "primary_ip": f"192.168.0.{10 + i}",
                "hostname": f"node-{i}",
            }
            for i in range(1, nodes + 1)
        ],
        "attach_latency": 0.05,
        "detach_latency": 0.05,
        "metadata": {"delay": 0.05, "tokens": "optional"},
        "node_side": {"kind": "netns", "vpc_netns": f"twcn{suffix}vpc"},
    }


def eni_conf(**over: Any) -> dict[str, Any]:
    conf = {
        "access_key": ACCESS_KEY[0],
        "access_secret": ACCESS_KEY[1],
        "vswitches": {ZONE: list(POD_VSWITCHES)},
        "security_group": SECURITY_GROUP,
        "service_cidr": SERVICE_CIDR,
        "max_pool_size": 5,
        "min_pool_size": 0,
        "ip_reuse_cooldown": "0s",
    }
    conf.update(over)
    return conf


@dataclass
class Node:
    name: str
    instance_id: str
    netns: str
    primary_ip: str
    agent: SimAgent

    @property
    def netns_path(self) -> str:
        return netns.netns_path(self.netns)


@dataclass
class CloudCluster:
    emulator: Emulator
    workdir: Path
    nodes: list[Node] = field(default_factory=list)
    vpc_netns: str = ""

    def stop(self) -> None:
        for n in self.nodes:
            if n.agent.proc is not None and n.agent.proc.poll() is None:
                n.agent.stop()
        self.emulator.stop()


def start_cluster(
    workdir: Path,
    *,
    mode: str = "shared_eni",
    modes: list[str] | None = None,
    nodes: int = 2,
    instance_type: str = "ecs.g7.xlarge",
    eni: dict[str, Any] | None = None,
    netconf: dict[str, Any] | None = None,
    topology_over: dict[str, Any] | None = None,
    settings_over: dict[str, Any] | None = None,
    start_agents: bool = True,
) -> CloudCluster:
    suffix = uuid.uuid4().hex[:4]
    topo = topology(suffix, nodes, instance_type)
    if topology_over:
        topo.update(copy.deepcopy(topology_over))
    emu = Emulator(topo).start()
    cluster = CloudCluster(emulator=emu, workdir=workdir, vpc_netns=topo["node_side"]["vpc_netns"])
    try:
        for idx, inst in enumerate(topo["instances"]):
            node_mode = modes[idx] if modes else mode
            ns = inst["netns"]
            wd = workdir / ns
            wd.mkdir(parents=True, exist_ok=True)
            (wd / "eni_conf").write_text(json.dumps(eni if eni is not None else eni_conf()))
            settings: dict[str, Any] = {
                "node_name": inst["hostname"],
                "node_labels": {"terway.alibabacloud.com/network-mode": node_mode},
                "eni_conf_path": str(wd / "eni_conf"),
                "socket_path": str(wd / "run" / "eni.socket"),
                "lock_path": str(wd / "run" / "terwayd.lock"),
                "state_dir": str(wd / "state"),
                "cni_conf_dir": str(wd / "net.d"),
                "debug_listen": "127.0.0.1:0",
                "reload_interval": 0.5,
                "cloud": {
                    "endpoint": "100.100.100.201:80",
                    "protocol": "http",
                    "region_id": REGION,
                    "metadata_endpoint": "http://100.100.100.200",
                },
            }
            if netconf is not None:
                (wd / "netconf.json").write_text(json.dumps({"cniVersion": "1.0.0", "type": "terway", **netconf}))
                settings["netconf_path"] = str(wd / "netconf.json")
            settings.update(settings_over or {})
            agent = SimAgent(wd, ns, settings)
            cluster.nodes.append(Node(inst["hostname"], inst["id"], ns, inst["primary_ip"], agent))
        if start_agents:
            for n in cluster.nodes:
                n.agent.start(timeout=60)
    except BaseException:
        cluster.stop()
        raise
    return cluster
