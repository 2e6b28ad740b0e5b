"""The shared_eni and exclusive_eni modes on simulated ECS nodes: CNI latency
against Debian's Go ptp + host-local (same run, same exec path), a burst of
concurrent ADDs, and the datapath's TCP throughput and round-trip time next to
the node-to-node path.

    .venv/bin/python benchmarks/bench_modes.py [--pods 100] [--burst 100] [--seconds 3]

Needs root.  Each plugin is exec'd like a runtime does (env + stdin, one
process per call) from a child that enters the node's namespace first, so
both pay the same fork/exec/setns.  Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from terway_agent import log, sim  # noqa: E402
from terway_agent.datapath import netns  # noqa: E402

GO = Path("/usr/lib/cni")
_libc = ctypes.CDLL(None, use_errno=True)


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(round(q / 100 * (len(s) - 1))))]


def in_netns(path: str):
    def enter() -> None:
        fd = os.open(path, os.O_RDONLY)
        _libc.setns(fd, 0x40000000)
        os.close(fd)

    return enter


def exec_cni(binary: str, node_ns: str, env: dict[str, str], conf: dict) -> float:
    t0 = time.perf_counter()
    p = subprocess.run([binary], input=json.dumps(conf).encode(), env=env, capture_output=True,
                       preexec_fn=in_netns(netns.netns_path(node_ns)))
    dt = time.perf_counter() - t0
    if p.returncode != 0:
        raise SystemExit(f"{binary} {env['CNI_COMMAND']} failed: {p.stdout.decode()} {p.stderr.decode()}")
    return dt


def row(label: str, verb: str, vals: list[float]) -> None:
    ms = [v * 1000 for v in vals]
    print(f"  {label:26} {verb:4} p50 {pct(ms, 50):8.2f}  p99 {pct(ms, 99):8.2f}  mean {statistics.mean(ms):8.2f} ms")


def cni_latency(cluster: sim.CloudCluster, pods: int) -> None:
    node = cluster.nodes[0]
    work = Path(tempfile.mkdtemp(prefix="twbm-"))
    names = []
    for _ in range(pods):
        n = "twbm" + uuid.uuid4().hex[:8]
        netns.create(n)
        names.append(n)
    # Warm the pool: the IPs of N pods stay idle (max_pool_size is raised for the run).
    for i, n in enumerate(names):
        r = node.agent.cni("ADD", f"warm{i}", netns_path=netns.netns_path(n), pod=("bench", f"warm{i}"))
        assert r.rc == 0, r.stdout
    for i, n in enumerate(names):
        node.agent.cni("DEL", f"warm{i}", netns_path=netns.netns_path(n))
    terway_conf = node.agent.conf()
    ptp_conf = {"cniVersion": "1.0.0", "name": "bench", "type": "ptp",
                "ipam": {"type": "host-local", "subnet": "10.251.0.0/16", "dataDir": str(work / "hl")}}
    base = {"PATH": os.environ["PATH"], "CNI_PATH": str(GO)}
    res: dict[str, dict[str, list[float]]] = {"terway shared_eni": {"ADD": [], "DEL": []},
                                              "Go ptp+host-local": {"ADD": [], "DEL": []}}
    plugins = (("terway shared_eni", str(node.agent.bin_dir / "terway"), terway_conf, "eth0"),
               ("Go ptp+host-local", str(GO / "ptp"), ptp_conf, "eth1"))
    for verb in ("ADD", "DEL"):
        for i, n in enumerate(names):  # interleaved, so machine noise hits both alike
            for label, binary, conf, ifname in plugins:
                env = dict(base, CNI_COMMAND=verb, CNI_CONTAINERID=f"b{i}", CNI_NETNS=netns.netns_path(n),
                           CNI_IFNAME=ifname, CNI_ARGS=f"IgnoreUnknown=1;K8S_POD_NAMESPACE=bench;K8S_POD_NAME=p{i}")
                res[label][verb].append(exec_cni(binary, node.netns, env, conf))
    print(f"\nCNI latency, {pods} pods one after another, warm pool (ms)")
    for label, verbs in res.items():
        for verb, vals in verbs.items():
            row(label, verb, vals)
    for verb in ("ADD", "DEL"):
        for q in (50, 99):
            t, g = pct(res["terway shared_eni"][verb], q), pct(res["Go ptp+host-local"][verb], q)
            print(f"  ratio terway/Go {verb} p{q}: {t / g:.2f}")
    for n in names:
        netns.remove(n)


def burst(cluster: sim.CloudCluster, count: int, label: str, node_index: int) -> None:
    node = cluster.nodes[node_index]
    admin = cluster.emulator.admin()
    names = []
    for _ in range(count):
        n = "twbb" + uuid.uuid4().hex[:8]
        netns.create(n)
        names.append(n)
    admin.reset_calls()
    results: dict[int, sim.CNIRun] = {}
    lat: dict[int, float] = {}

    def add(i: int) -> None:
        t0 = time.perf_counter()
        results[i] = node.agent.cni("ADD", f"burst{i}", netns_path=netns.netns_path(names[i]), pod=("bench", f"b{i}"))
        lat[i] = time.perf_counter() - t0

    t0 = time.perf_counter()
    threads = [threading.Thread(target=add, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    ok = sum(1 for r in results.values() if r.rc == 0)
    calls = {k: v for k, v in admin.calls().items() if v and not k.startswith("metadata")}
    print(f"\n{label}: {count} ADDs at once -> {ok} ok in {wall:.2f} s = {ok / wall:.1f} pods/s; "
          f"per-ADD p50 {pct(list(lat.values()), 50) * 1000:.0f} ms, p99 {pct(list(lat.values()), 99) * 1000:.0f} ms")
    print("  cloud calls: " + (", ".join(f"{k} x{v}" for k, v in sorted(calls.items())) or "none"))
    for i, n in enumerate(names):
        node.agent.cni("DEL", f"burst{i}", netns_path=netns.netns_path(n))
        netns.remove(n)


def iperf(src_ns: str, dst_ns: str, dst_ip: str, seconds: float) -> float:
    server = subprocess.Popen(["ip", "netns", "exec", dst_ns, "iperf3", "-s", "-1", "-B", dst_ip],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.3)
    try:
        out = subprocess.run(["ip", "netns", "exec", src_ns, "iperf3", "-c", dst_ip, "-t", str(seconds), "-J"],
                             capture_output=True, text=True, timeout=seconds + 30)
        data = json.loads(out.stdout)
        return data["end"]["sum_received"]["bits_per_second"]
    finally:
        server.kill()
        server.wait()


def rtt(src_ns: str, dst_ip: str) -> float:
    out = subprocess.run(["ip", "netns", "exec", src_ns, "ping", "-c", "200", "-i", "0.002", "-q", dst_ip],
                         capture_output=True, text=True).stdout
    return float(out.strip().splitlines()[-1].split("=")[1].split("/")[1])


def datapath(cluster: sim.CloudCluster, seconds: float) -> None:
    n1, n2 = cluster.nodes[:2]
    made = []

    def pod(node: sim.Node, name: str) -> tuple[str, str]:
        n = "twbd" + uuid.uuid4().hex[:8]
        netns.create(n)
        made.append((node, n, name))
        r = node.agent.cni("ADD", name, netns_path=netns.netns_path(n), pod=("bench", name))
        assert r.rc == 0, r.stdout
        return n, r.out["ips"][0]["address"].split("/")[0]

    a, a_ip = pod(n1, "tp-a")
    b, b_ip = pod(n2, "tp-b")
    c, c_ip = pod(n1, "tp-c")
    paths = {
        "node -> node (eth0, primary ENIs)": (n1.netns, n2.netns, n2.primary_ip),
        "shared pod -> shared pod, across nodes": (a, b, b_ip),
        "shared pod -> shared pod, same node": (a, c, c_ip),
    }
    excl = cluster.nodes[2] if len(cluster.nodes) > 2 else None
    if excl is not None:
        x, x_ip = pod(excl, "tp-x")
        paths["exclusive pod -> shared pod, across nodes"] = (x, b, b_ip)
    print(f"\nDatapath: TCP throughput (iperf3, {seconds:.0f} s) and round-trip time (ping, 200 x); "
          "median of 3 rounds, paths interleaved")
    tps: dict[str, list[float]] = {label: [] for label in paths}
    rtts: dict[str, list[float]] = {label: [] for label in paths}
    for _ in range(3):
        for label, (src, dst, ip) in paths.items():
            tps[label].append(iperf(src, dst, ip, seconds))
            rtts[label].append(rtt(src, ip))
    base_tp = base_rtt = None
    for label in paths:
        tp, r = statistics.median(tps[label]), statistics.median(rtts[label])
        if base_tp is None:
            base_tp, base_rtt = tp, r
        print(f"  {label:42} {tp / 1e9:7.2f} Gbit/s ({tp / base_tp:4.2f} of node-node)   "
              f"rtt {r * 1000:7.1f} us ({r / base_rtt:4.2f}x)")
    for node, n, name in made:
        node.agent.cni("DEL", name, netns_path=netns.netns_path(n))
        netns.remove(n)


def exclusive_add(cluster: sim.CloudCluster) -> None:
    node = cluster.nodes[2]
    admin = cluster.emulator.admin()
    n = "twbx" + uuid.uuid4().hex[:8]
    netns.create(n)
    try:
        # warm: an ENI released by the previous pod is still attached and idle in the pool
        r = node.agent.cni("ADD", "xw0", netns_path=netns.netns_path(n), pod=("bench", "xw0"))
        assert r.rc == 0, r.stdout
        node.agent.cni("DEL", "xw0", netns_path=netns.netns_path(n))
        warm = []
        for i in range(10):
            t0 = time.perf_counter()
            r = node.agent.cni("ADD", f"xw{i + 1}", netns_path=netns.netns_path(n), pod=("bench", f"xw{i + 1}"))
            warm.append(time.perf_counter() - t0)
            assert r.rc == 0, r.stdout
            node.agent.cni("DEL", f"xw{i + 1}", netns_path=netns.netns_path(n))
        print("\nexclusive_eni ADD")
        row("warm ENI in the pool", "ADD", warm)
        # cold: emulated CreateNetworkInterface 1 s and attach 3 s; pods are kept, so
        # once the pool's idle ENIs are used up every ADD must create and attach one.
        admin.set_latency("CreateNetworkInterface", 1.0)
        admin.configure(attach_latency=3.0)
        held = []
        for i in range(4):
            m = "twbx" + uuid.uuid4().hex[:8]
            netns.create(m)
            held.append((m, f"xc{i}"))
            t0 = time.perf_counter()
            r = node.agent.cni("ADD", f"xc{i}", netns_path=netns.netns_path(m), pod=("bench", f"xc{i}"))
            print(f"  ADD {i} while holding {i} pod(s): {time.perf_counter() - t0:.2f} s (rc {r.rc}); "
                  "a cold ADD's lower bound is 1 s create + 3 s attach = 4 s")
        for m, cid in held:
            node.agent.cni("DEL", cid, netns_path=netns.netns_path(m))
            netns.remove(m)
    finally:
        admin.set_latency("CreateNetworkInterface", 0)
        admin.configure(attach_latency=0.05)
        netns.remove(n)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pods", type=int, default=100)
    ap.add_argument("--burst", type=int, default=100)
    ap.add_argument("--seconds", type=float, default=3.0)
    args = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("run as root: the benchmark creates network namespaces")
    log.configure("warning", json=False)
    work = Path(tempfile.mkdtemp(prefix="twbench-modes-"))
    eni = sim.eni_conf(max_pool_size=max(args.pods, args.burst) + 10, min_pool_size=0)
    cluster = sim.start_cluster(work, modes=["shared_eni", "shared_eni", "exclusive_eni"], nodes=3,
                                instance_type="ecs.g7.4xlarge", eni=eni, settings_over={"log_level": "warning"})
    try:
        cni_latency(cluster, args.pods)
        burst(cluster, args.burst, "shared_eni, warm pool", 0)
        burst(cluster, min(args.burst, 100), "shared_eni, cold node", 1)
        datapath(cluster, args.seconds)
        exclusive_add(cluster)
    finally:
        cluster.stop()


if __name__ == "__main__":
    main()
