"""``terway-agent demo``: the README's first command.

Runs everything on this machine, in network namespaces, and prints what it
does.  By default: the cloud emulator with a VPC and two ECS instances (node
namespaces), the agent on each node in shared_eni mode, pods as network
namespaces getting VPC addresses through the real ``terway`` executable, and
packets between them across the VPC.  ``--standalone``: one node without a
cloud (the example mode), every CNI verb.  Cleans up after itself (also on Ctrl-C).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from terway_agent.cli import install_cni
from terway_agent.datapath import netns


class Demo:
    def __init__(self, workdir: Path) -> None:
        self.suffix = uuid.uuid4().hex[:4]
        self.work = workdir
        self.namespaces: list[str] = []
        self.procs: list[subprocess.Popen] = []
        self.step_no = 0
        self.cluster: Any = None
        self.failures: list[str] = []

    # -- presentation -----------------------------------------------------------

    def step(self, text: str) -> None:
        self.step_no += 1
        print(f"\n[{self.step_no}] {text}", flush=True)

    def expect(self, what: str, got: int, want: int) -> None:
        """Record a step whose exit code is not the expected one; the demo then exits 1."""
        if got != want:
            self.failures.append(f"step {self.step_no}: {what} exited {got}, expected {want}")
            print(f"    !! unexpected: {what} exited {got}, expected {want}", flush=True)

    def show(self, text: str) -> None:
        for line in text.rstrip().splitlines():
            print(f"    {line}", flush=True)

    # -- plumbing ------------------------------------------------------------------

    def ns(self, role: str) -> str:
        name = f"twdemo-{role}-{self.suffix}"
        netns.create(name)
        self.namespaces.append(name)
        return name

    def sh(self, *cmd: str, ns: str | None = None, check: bool = True) -> str:
        full = ["ip", "netns", "exec", ns, *cmd] if ns else list(cmd)
        p = subprocess.run(full, capture_output=True, text=True, timeout=60)
        if check and p.returncode != 0:
            raise RuntimeError(f"{' '.join(full)} failed: {p.stdout}{p.stderr}")
        return p.stdout

    def cni(self, command: str, conf: dict[str, Any], expect: int = 0, **env: str) -> tuple[int, Any]:
        e = {"PATH": os.environ["PATH"], "CNI_COMMAND": command, "CNI_PATH": str(self.work / "bin"), **env}
        p = subprocess.run([str(self.work / "bin" / "terway")], input=json.dumps(conf).encode(), env=e,
                           capture_output=True, timeout=120)
        out = p.stdout.decode().strip()
        shown = " ".join(f"{k}={v}" for k, v in env.items() if k != "CNI_ARGS")
        print(f"    $ CNI_COMMAND={command} {shown} terway  ->  exit {p.returncode}", flush=True)
        if out:
            self.show(out if len(out) < 400 else out[:400] + " ...")
        self.expect(f"terway {command}", p.returncode, expect)
        return p.returncode, json.loads(out) if out else None

    def cleanup(self) -> None:
        if self.cluster is not None:
            self.cluster.stop()
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(15)
                except subprocess.TimeoutExpired:
                    p.kill()
        for name in reversed(self.namespaces):
            netns.remove(name)
        shutil.rmtree(self.work, ignore_errors=True)

    # -- the demo --------------------------------------------------------------------

    def run_standalone(self, keep: bool) -> int:
        """The agent without a cloud (the example mode): every CNI verb, exactly as a runtime calls them."""
        self.work.mkdir(parents=True, exist_ok=True)
        node = self.ns("node")
        self.sh("ip", "link", "set", "lo", "up", ns=node)
        self.sh("sysctl", "-qw", "net.ipv4.ip_forward=1", ns=node)

        self.step(f"A simulated node: network namespace {node}; the agent runs inside it")
        (self.work / "eni_conf").write_text(json.dumps({"max_pool_size": 5, "min_pool_size": 0}))
        settings = {
            "node_name": f"demo-node-{self.suffix}",
            "node_labels": {"terway.alibabacloud.com/network-mode": "example"},
            "eni_conf_path": str(self.work / "eni_conf"),
            "socket_path": str(self.work / "run" / "eni.socket"),
            "lock_path": str(self.work / "run" / "terwayd.lock"),
            "state_dir": str(self.work / "state"),
            "cni_conf_dir": str(self.work / "net.d"),
            "debug_listen": "127.0.0.1:0",
            "log_level": "info",
            "plugin_config": {"example": {"subnet": "10.250.0.0/24"}},
        }
        (self.work / "settings.json").write_text(json.dumps(settings, indent=2))
        install_cni(str(self.work / "bin"))
        log = open(self.work / "agent.log", "wb")  # noqa: SIM115 - owned by the agent process
        agent = subprocess.Popen(
            ["ip", "netns", "exec", node, str(Path(sys.executable).parent / "terway-agent"), "run",
             "--config", str(self.work / "settings.json")],
            stdout=log, stderr=subprocess.STDOUT,
        )
        self.procs.append(agent)
        conflist = Path(settings["cni_conf_dir"]) / "10-terway.conflist"
        deadline = time.monotonic() + 30
        while not conflist.exists():
            if agent.poll() is not None or time.monotonic() > deadline:
                print((self.work / "agent.log").read_text(), file=sys.stderr)
                raise RuntimeError("the agent did not start")
            time.sleep(0.05)
        info = json.loads(self.sh(str(Path(sys.executable).parent / "terway-agent"), "info", "--socket",
                                  settings["socket_path"]))
        self.show(f"mode {info['mode']} ({info['reason']}), pid {info['pid']}, socket {info['socket']}")
        self.show(f"the agent wrote its CNI config once it served: {conflist}")
        self.show(conflist.read_text())
        self.sh("ip", "addr", "add", "10.250.0.1/32", "dev", "lo", ns=node)

        conf = json.loads(conflist.read_text())
        terway = {"cniVersion": "1.1.0", "name": conf["name"], **conf["plugins"][0]}

        self.step("VERSION: which CNI versions the executable speaks")
        self.cni("VERSION", terway)

        self.step("STATUS: can this node take pods?")
        self.cni("STATUS", terway)

        pods = {}
        for name in ("web-0", "web-1"):
            pod_ns = self.ns(name)
            cid = uuid.uuid4().hex[:16]
            self.step(f"ADD: pod default/{name} (network namespace {pod_ns})")
            rc, res = self.cni("ADD", terway, CNI_CONTAINERID=cid, CNI_NETNS=netns.netns_path(pod_ns),
                               CNI_IFNAME="eth0", CNI_ARGS=f"K8S_POD_NAMESPACE=default;K8S_POD_NAME={name}")
            if rc != 0:
                raise RuntimeError(f"ADD failed: {res}")
            pods[name] = (cid, pod_ns, res)
            self.show(self.sh("ip", "-br", "addr", "show", "dev", "eth0", ns=pod_ns))
            self.show(self.sh("ip", "route", ns=pod_ns))

        ip1 = pods["web-1"][2]["ips"][0]["address"].split("/")[0]
        self.step(f"Packets: web-0 pings web-1 ({ip1}) through the node")
        self.show(self.sh("ping", "-c", "2", "-W", "2", ip1, ns=pods["web-0"][1]))

        cid, pod_ns, res = pods["web-0"]
        self.step("CHECK: the datapath of web-0 is intact")
        self.cni("CHECK", dict(terway, prevResult=res), CNI_CONTAINERID=cid, CNI_NETNS=netns.netns_path(pod_ns),
                 CNI_IFNAME="eth0")
        self.step("CHECK after someone deleted web-0's default route")
        self.sh("ip", "route", "del", "default", ns=pod_ns)
        self.cni("CHECK", dict(terway, prevResult=res), expect=1, CNI_CONTAINERID=cid, CNI_NETNS=netns.netns_path(pod_ns),
                 CNI_IFNAME="eth0")

        self.step("Attachments the agent holds (terway-agent attachments)")
        self.show(self.sh(str(Path(sys.executable).parent / "terway-agent"), "attachments", "--socket",
                          settings["socket_path"]))

        self.step("kill -9 the agent, start it again: nothing is lost")
        agent.send_signal(signal.SIGKILL)
        agent.wait()
        agent2 = subprocess.Popen(
            ["ip", "netns", "exec", node, str(Path(sys.executable).parent / "terway-agent"), "run",
             "--config", str(self.work / "settings.json")],
            stdout=log, stderr=subprocess.STDOUT,
        )
        self.procs.append(agent2)
        for _ in range(300):
            if Path(settings["socket_path"]).exists() and agent2.poll() is None:
                try:
                    self.sh(str(Path(sys.executable).parent / "terway-agent"), "info", "--socket",
                            settings["socket_path"])
                    break
                except RuntimeError:
                    pass
            time.sleep(0.05)
        self.show(self.sh(str(Path(sys.executable).parent / "terway-agent"), "attachments", "--socket",
                          settings["socket_path"]))

        self.step("GC: the runtime says only web-1 is still valid")
        gc = dict(terway, **{"cni.dev/valid-attachments": [{"containerID": pods["web-1"][0], "ifname": "eth0"}]})
        self.cni("GC", gc)
        self.show(self.sh(str(Path(sys.executable).parent / "terway-agent"), "attachments", "--socket",
                          settings["socket_path"]))

        cid, pod_ns, _ = pods["web-1"]
        self.step("DEL web-1, twice (containerd does, the second time without a netns)")
        self.cni("DEL", terway, CNI_CONTAINERID=cid, CNI_NETNS=netns.netns_path(pod_ns), CNI_IFNAME="eth0")
        self.cni("DEL", terway, CNI_CONTAINERID=cid, CNI_NETNS="", CNI_IFNAME="eth0")

        self.step("Bad input gets a clear error: an interface name that cannot exist")
        self.cni("ADD", terway, expect=1, CNI_CONTAINERID="bad1", CNI_NETNS=netns.netns_path(pod_ns),
                 CNI_IFNAME="this-is-far-too-long")

        return self.finish(keep)

    def finish(self, keep: bool) -> int:
        if keep:
            print(f"\nThe demo keeps running (work dir {self.work}); Ctrl-C to stop.", flush=True)
            signal.sigwait({signal.SIGINT, signal.SIGTERM})
        if self.failures:
            print(f"\nThe demo FAILED ({len(self.failures)} unexpected result(s)):", flush=True)
            for f in self.failures:
                print(f"  - {f}", flush=True)
            return 1
        print("\nDone: every step gave the expected result. Everything the demo created is being removed.", flush=True)
        return 0

    # -- the cloud demo --------------------------------------------------------------

    def run_cloud(self, keep: bool) -> int:
        """Two simulated ECS nodes on the emulated VPC, each running the agent in
        shared_eni mode; pods get VPC addresses and talk across the VPC."""
        from terway_agent import sim

        self.work.mkdir(parents=True, exist_ok=True)
        self.step("The cloud: the ECS/VPC/metadata emulator, a VPC namespace and two ECS instances")
        cluster = sim.start_cluster(
            self.work / "cluster", nodes=2, start_agents=False, settings_over={"repair_interval": 2.0}
        )
        self.cluster = cluster
        admin = cluster.emulator.admin()
        state = admin.state()
        for v in state["vswitches"]:
            self.show(f"vSwitch {v['id']:18} {v['cidr']:17} zone {v['zone']}, {v['available_ip_address_count']} free IPs, gateway {v['gateway']}")
        for n in cluster.nodes:
            self.show(f"node {n.name}: instance {n.instance_id}, network namespace {n.netns}, eth0 {n.primary_ip}")

        self.step("An agent per node (shared_eni mode), reaching the OpenAPI and metadata through eth0")
        for n in cluster.nodes:
            n.agent.start(timeout=90)
            info = json.loads(self.sh(str(sim.VENV_BIN / "terway-agent"), "info", "--socket", n.agent.socket))
            self.show(f"{n.name}: mode {info['mode']} ({info['reason']}), pid {info['pid']}")
        n1, n2 = cluster.nodes
        admin.reset_calls()

        pods: dict[str, tuple[sim.Node, str, str, str]] = {}
        for name, node in (("web-0", n1), ("web-1", n1), ("db-0", n2)):
            pod_ns = self.ns(name)
            cid = uuid.uuid4().hex[:16]
            self.step(f"ADD pod default/{name} on {node.name}")
            r = node.agent.cni("ADD", cid, netns_path=netns.netns_path(pod_ns), pod=("default", name))
            print(f"    $ CNI_COMMAND=ADD CNI_CONTAINERID={cid} CNI_NETNS={netns.netns_path(pod_ns)} terway  ->  exit {r.rc}")
            if r.rc != 0:
                raise RuntimeError(f"ADD failed: {r.stdout}{r.stderr}")
            ip = r.out["ips"][0]["address"].split("/")[0]
            pods[name] = (node, pod_ns, cid, ip)
            self.show(f"pod IP {ip} (from the VPC), eth0 in the pod:")
            self.show(self.sh("ip", "-br", "addr", "show", "dev", "eth0", ns=pod_ns))
        calls = {k: v for k, v in admin.calls().items() if v}
        self.show("cloud calls the three ADDs cost: " + ", ".join(f"{k} x{v}" for k, v in sorted(calls.items())))

        self.step(f"Kernel objects on {n1.name}: the ENI the agent attached, policy routing as the original")
        self.show(self.sh("ip", "-br", "link", "show", ns=n1.netns))
        self.show(self.sh("ip", "rule", "show", ns=n1.netns))

        _, web0_ns, _, web0_ip = pods["web-0"]
        self.step("Packets: web-0 -> web-1 on the same node, web-0 -> db-0 across the VPC")
        for target in ("web-1", "db-0"):
            ip = pods[target][3]
            out = self.sh("ping", "-c", "1", "-W", "2", ip, ns=web0_ns)
            self.show(f"ping {target} ({ip}): " + out.strip().splitlines()[-1])
        _, db_ns, _, db_ip = pods["db-0"]
        with sim.whoami_server(netns.netns_path(db_ns), db_ip, 8080):
            seen = sim.whoami(netns.netns_path(web0_ns), db_ip, 8080)
        self.show(f"db-0 sees the TCP connection from {seen}: web-0's own VPC address, no overlay, no NAT")

        self.step(f"The warm pool on {n1.name} (terway-agent pool)")
        self.show(self.sh(str(sim.VENV_BIN / "terway-agent"), "pool", "--socket", n1.agent.socket))

        self.step(f"kill -9 the agent on {n1.name} and start it again: pods keep their network, nothing is lost")
        n1.agent.kill9()
        self.show("ping db-0 while the agent is down: " +
                  self.sh("ping", "-c", "1", "-W", "2", db_ip, ns=web0_ns).strip().splitlines()[-1])
        n1.agent.start(timeout=90)
        self.show(self.sh(str(sim.VENV_BIN / "terway-agent"), "attachments", "--socket", n1.agent.socket))

        node, ns, cid, ip = pods["web-0"]
        self.step("Another tool flushes web-0's rules; CHECK reports it and the agent repairs it")
        self.sh("ip", "rule", "del", "priority", "2048", "from", ip, ns=node.netns)
        r = node.agent.cni("CHECK", cid, netns_path=netns.netns_path(ns))
        self.show(f"CHECK -> exit {r.rc}: {r.out['msg'] if r.out else ''}")
        self.expect("CHECK with a rule missing", r.rc, 1)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and f"from {ip}" not in self.sh("ip", "rule", "show", ns=node.netns):
            time.sleep(0.2)
        self.show("after the repair pass: " + [ln for ln in self.sh("ip", "rule", "show", ns=node.netns).splitlines()
                                             if f"from {ip}" in ln][0].strip())
        r = node.agent.cni("CHECK", cid, netns_path=netns.netns_path(ns))
        self.show(f"CHECK -> exit {r.rc}")
        self.expect("CHECK after the repair", r.rc, 0)

        self.step("DEL every pod (twice, as containerd does); the IPs go back to the warm pool")
        for name, (node, ns, cid, _ip) in pods.items():
            a = node.agent.cni("DEL", cid, netns_path=netns.netns_path(ns))
            b = node.agent.cni("DEL", cid, netns_path="")
            self.show(f"DEL {name} -> exit {a.rc}, again without a netns -> exit {b.rc}")
            self.expect(f"DEL {name}", a.rc, 0)
            self.expect(f"DEL {name} again", b.rc, 0)
        self.show(self.sh(str(sim.VENV_BIN / "terway-agent"), "pool", "--socket", n1.agent.socket))
        return self.finish(keep)


def main(args: argparse.Namespace) -> int:
    if os.geteuid() != 0:
        print("terway-agent demo: run as root (it creates network namespaces)", file=sys.stderr)
        return 2
    from terway_agent import log

    log.configure("warning", json=False)  # the in-process emulator logs; keep the demo's output readable
    demo = Demo(Path(args.workdir) / uuid.uuid4().hex[:6])
    try:
        if args.standalone:
            return demo.run_standalone(args.keep)
        return demo.run_cloud(args.keep)
    except KeyboardInterrupt:
        return 130
    finally:
        demo.cleanup()
