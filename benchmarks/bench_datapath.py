"""Per-pod datapath latency: the plan executor vs Debian's Go ptp + host-local.

Builds the shared-ENI topology of terway-facts.md in namespaces (a "node"
namespace whose ENI is a veth to a "VPC" namespace -- the root namespace is
never touched), then for N pods measures:

* ``apply``        -- a fresh shared-ENI pod plan (veth, addresses, neighbour,
                      routes, rules), what CNI ADD's datapath part does;
* ``apply again``  -- the same plan once more (observes, changes nothing);
* ``check``        -- compare the plan with the kernel;
* ``remove``       -- CNI DEL's datapath part (dominated by the kernel's veth
                      deletion, ~16 ms of synchronize_net);
* ``ptp ADD/DEL``  -- /usr/lib/cni/ptp + host-local exec'd like a runtime
                      (stdin config, CNI_* environment) inside the node
                      namespace, for a ratio.

The pod namespaces exist before each ADD and are not part of any timing
(the runtime creates them).  Run as root::

    .venv/bin/python benchmarks/bench_datapath.py [-n 100]
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

from terway_agent import datapath as dp
from terway_agent import log as _log
from terway_agent.datapath import _probe, netns
from terway_agent.datapath import _reference as ref

CNI_DIR = "/usr/lib/cni"
GATEWAY = "192.168.0.253"
ENI_MAC = "02:16:3e:20:00:01"


def pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def line(label: str, samples: list[float]) -> str:
    ms = [s * 1000 for s in samples]
    return (
        f"  {label:<28} p50 {pct(ms, 0.5):7.2f} ms   p99 {pct(ms, 0.99):7.2f} ms   "
        f"mean {statistics.fmean(ms):7.2f} ms   (n={len(ms)})"
    )


def timed(fn: Callable[[], object]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def build_node(tag: str) -> tuple[str, str, int]:
    vpc = netns.create(f"twdp-{tag}-vpc")
    node = netns.create(f"twdp-{tag}-node")
    dp.apply(
        dp.Plan(
            (
                dp.LinkState(name="lo", netns=vpc),
                dp.Sysctl(path="net/ipv4/conf/all/forwarding", value="1", netns=vpc),
                dp.Address(dev="lo", address=f"{GATEWAY}/32", netns=vpc),
                dp.Veth(name="twdpvpc1", netns=vpc, peer_name="eth1", peer_netns=node, peer_mac=ENI_MAC),
                dp.LinkState(name="twdpvpc1", netns=vpc),
                dp.LinkState(name="lo", netns=node),
            )
        )
    )
    eni = dp.find_link_by_mac(ENI_MAC, node, timeout=2)
    dp.apply(ref.eni_node_plan(eni_dev="eth1", eni_ifindex=eni.index, gateway4=GATEWAY, node_netns=node))
    return vpc, node, eni.index


def bench_executor(tag: str, n: int, node: str, vpc: str, eni_index: int) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {"apply": [], "apply again": [], "check": [], "remove": []}
    pods = [netns.create(f"twdp-{tag}-p{i}") for i in range(n)]
    plans = []
    for i, pod in enumerate(pods):
        ip = f"192.168.{1 + i // 250}.{1 + i % 250}"
        plans.append(
            ref.shared_eni_pod_plan(
                host_veth=dp.veth_name("bench", f"{tag}-{i}"),
                pod_netns=pod,
                pod_ip4=ip,
                eni_ifindex=eni_index,
                node_netns=node,
            )
        )
        dp.apply(
            dp.Plan(
                (
                    dp.Route(dst=f"{ip}/32", dev="twdpvpc1", netns=vpc),
                    dp.Neighbour(dev="twdpvpc1", ip=ip, lladdr=ENI_MAC, netns=vpc),
                )
            )
        )
    try:
        for plan in plans:
            out["apply"].append(timed(lambda plan=plan: dp.apply(plan)))
        # sanity: the last pod really reaches the gateway through the ENI
        _probe.ping(pods[-1], GATEWAY)
        for plan in plans:
            report = dp.apply(plan)
            assert not report.changed_anything
            out["apply again"].append(report.duration_s)
        for plan in plans:
            out["check"].append(timed(lambda plan=plan: dp.check(plan)))
        for plan in plans:
            out["remove"].append(timed(lambda plan=plan: dp.remove(plan)))
    finally:
        for i in range(n):
            netns.remove(f"twdp-{tag}-p{i}")
    return out


_libc = ctypes.CDLL(None, use_errno=True)


def bench_ptp(tag: str, n: int, node: str) -> dict[str, list[float]]:
    """Debian's Go plugins exec'd like a runtime, inside the node namespace."""
    data_dir = f"/tmp/twdp-{tag}-ipam"
    conf = json.dumps(
        {
            "cniVersion": "1.0.0",
            "name": f"twdp-{tag}",
            "type": "ptp",
            "ipMasq": False,
            "mtu": 1500,
            "ipam": {"type": "host-local", "subnet": "10.244.0.0/16", "dataDir": data_dir},
        }
    ).encode()
    node_fd = os.open(node, os.O_RDONLY | os.O_CLOEXEC)

    def enter_node() -> None:  # runs in the child between fork and exec
        if _libc.setns(node_fd, 0x40000000) != 0:
            os._exit(99)

    def run(command: str, pod: str, cid: str) -> None:
        env = {
            "CNI_COMMAND": command,
            "CNI_CONTAINERID": cid,
            "CNI_NETNS": pod,
            "CNI_IFNAME": "eth0",
            "CNI_PATH": CNI_DIR,
            "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
        }
        proc = subprocess.run(
            [f"{CNI_DIR}/ptp"],
            input=conf,
            env=env,
            capture_output=True,
            preexec_fn=enter_node,
            pass_fds=(node_fd,),
        )
        if proc.returncode != 0:
            raise RuntimeError(f"ptp {command} failed: {proc.stdout.decode()} {proc.stderr.decode()}")

    out: dict[str, list[float]] = {"ptp+host-local ADD": [], "ptp+host-local DEL": []}
    pods = [netns.create(f"twdp-{tag}-g{i}") for i in range(n)]
    try:
        for i, pod in enumerate(pods):
            out["ptp+host-local ADD"].append(timed(lambda pod=pod, i=i: run("ADD", pod, f"twdp{tag}{i}")))
        for i, pod in enumerate(pods):
            out["ptp+host-local DEL"].append(timed(lambda pod=pod, i=i: run("DEL", pod, f"twdp{tag}{i}")))
    finally:
        for i in range(n):
            netns.remove(f"twdp-{tag}-g{i}")
        os.close(node_fd)
        shutil.rmtree(data_dir, ignore_errors=True)
    return out


def bench_spawn(n: int) -> list[float]:
    """The cost of exec'ing the venv's Python with only the standard library (a CNI client's floor)."""
    return [
        timed(lambda: subprocess.run([sys.executable, "-S", "-c", "import json, socket"], check=True))
        for _ in range(n)
    ]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("-n", type=int, default=100, help="pods per measurement (default 100)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("run as root: the benchmark creates network namespaces")
    _log.configure(level="warning")
    tag = "b" + secrets.token_hex(2)
    try:
        vpc, node, eni_index = build_node(tag)
        ours = bench_executor(tag, args.n, node, vpc, eni_index)
        have_ptp = os.path.exists(f"{CNI_DIR}/ptp") and os.path.exists(f"{CNI_DIR}/host-local")
        theirs = bench_ptp(tag, args.n, node) if have_ptp else {}
    finally:
        netns.remove(f"twdp-{tag}-node")
        netns.remove(f"twdp-{tag}-vpc")
    spawn = bench_spawn(20)

    print(f"datapath benchmark: shared-ENI pod plan, N={args.n}, kernel {os.uname().release}")
    print("plan executor (in process, pod namespace entered with setns in the calling thread):")
    for label, samples in ours.items():
        print(line(label, samples))
    if theirs:
        print("Debian Go plugins exec'd like a runtime (containernetworking-plugins):")
        for label, samples in theirs.items():
            print(line(label, samples))
        add_ratio = pct(ours["apply"], 0.5) / pct(theirs["ptp+host-local ADD"], 0.5)
        del_ratio = pct(ours["remove"], 0.5) / pct(theirs["ptp+host-local DEL"], 0.5)
        print(f"  ratio apply / ptp ADD (p50)       {add_ratio:5.2f}")
        print(f"  ratio remove / ptp DEL (p50)      {del_ratio:5.2f}")
    else:
        print("(ptp/host-local not found under /usr/lib/cni: no comparison)")
    print("for scale:")
    print(line("exec python -S (json,socket)", spawn))


if __name__ == "__main__":
    main()
