"""``terway-agent demo``: the README's first command.

Runs everything on this machine, in network namespaces, and prints what it
does: a simulated node, the agent serving it, pods as network namespaces, and
the real ``terway`` CNI executable driven through every CNI verb exactly as a
container runtime would.  Cleans up after itself (also on Ctrl-C).
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

    # -- presentation -----------------------------------------------------------

    def step(self, text: str) -> None:
        self.step_no += 1
        print(f"\n[{self.step_no}] {text}", flush=True)

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

    def cni(self, command: str, conf: dict[str, Any], **env: str) -> tuple[int, Any]:
        e = {"PATH": os.environ["PATH"], "CNI_COMMAND": command, "CNI_PATH": str(self.work / "bin"), **env}
        p = subprocess.run([str(self.work / "bin" / "terway")], input=json.dumps(conf).encode(), env=e,
                           capture_output=True, timeout=120)
        out = p.stdout.decode().strip()
        shown = " ".join(f"{k}={v}" for k, v in env.items() if k != "CNI_ARGS")
        print(f"    $ CNI_COMMAND={command} {shown} terway  ->  exit {p.returncode}", flush=True)
        if out:
            self.show(out if len(out) < 400 else out[:400] + " ...")
        return p.returncode, json.loads(out) if out else None

    def cleanup(self) -> None:
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

    def run(self, keep: bool) -> int:
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
        self.cni("CHECK", dict(terway, prevResult=res), CNI_CONTAINERID=cid, CNI_NETNS=netns.netns_path(pod_ns),
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
        self.cni("ADD", terway, CNI_CONTAINERID="bad1", CNI_NETNS=netns.netns_path(pod_ns),
                 CNI_IFNAME="this-is-far-too-long")

        if keep:
            print(f"\nThe demo keeps running (work dir {self.work}); Ctrl-C to stop.", flush=True)
            signal.sigwait({signal.SIGINT, signal.SIGTERM})
        print("\nDone. Everything the demo created is being removed.", flush=True)
        return 0


def main(args: argparse.Namespace) -> int:
    if os.geteuid() != 0:
        print("terway-agent demo: run as root (it creates network namespaces)", file=sys.stderr)
        return 2
    demo = Demo(Path(args.workdir) / uuid.uuid4().hex[:6])
    try:
        return demo.run(args.keep)
    except KeyboardInterrupt:
        return 130
    finally:
        demo.cleanup()
