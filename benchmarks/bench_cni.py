"""CNI latency: the ``terway`` executable against Debian's Go ``ptp`` + ``host-local``.

Both are exec'd exactly like a container runtime does (env + stdin, one process
per call), for N pods, ADD then DEL, from inside the same node namespace, in
the same run.  Prints p50/p99 of each and the ratios, the interpreter start-up
share, and the agent's RSS idle and with 250 pods.

    .venv/bin/python benchmarks/bench_cni.py [--pods 100] [--rss-pods 250] [--mode example]

Needs root.  The mode is ``example`` (the example third-party mode, veth + /32
routes, like ptp) until a cloud-backed mode is selected with ``--mode``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from terway_agent.cli import install_cni  # noqa: E402
from terway_agent.datapath import netns  # noqa: E402

GO_PLUGINS = Path("/usr/lib/cni")


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(round(q / 100 * (len(s) - 1))))]


def run_cni(binary: str, env: dict[str, str], conf: dict) -> float:
    t0 = time.perf_counter()
    p = subprocess.run([binary], input=json.dumps(conf).encode(), env=env, capture_output=True)
    dt = time.perf_counter() - t0
    if p.returncode != 0:
        raise SystemExit(f"{binary} {env['CNI_COMMAND']} failed: {p.stdout.decode()} {p.stderr.decode()}")
    return dt


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def inner(args: argparse.Namespace) -> None:
    work = Path(tempfile.mkdtemp(prefix="twbench-"))
    bindir = work / "bin"
    install_cni(str(bindir))
    (work / "eni_conf").write_text("{}")
    settings = {
        "node_name": "bench",
        "mode": args.mode,
        "eni_conf_path": str(work / "eni_conf"),
        "socket_path": str(work / "eni.socket"),
        "lock_path": str(work / "agent.lock"),
        "state_dir": str(work / "state"),
        "cni_conf_dir": str(work / "net.d"),
        "debug_listen": "",
        "log_level": os.environ.get("BENCH_LOG_LEVEL", "warning"),
        "plugin_config": {"example": {"subnet": "10.250.0.0/16"}},
    }
    (work / "settings.json").write_text(json.dumps(settings))
    agent = subprocess.Popen(
        [str(Path(sys.executable).parent / "terway-agent"), "run", "--config", str(work / "settings.json")],
        stdout=open(work / "agent.log", "wb"), stderr=subprocess.STDOUT,  # noqa: SIM115
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        s = socket.socket(socket.AF_UNIX)
        try:
            s.connect(settings["socket_path"])
            break
        except OSError:
            time.sleep(0.05)
        finally:
            s.close()
    else:
        raise SystemExit("agent did not start: " + (work / "agent.log").read_text())
    time.sleep(1.0)
    idle_rss = rss_kb(agent.pid)

    pods = []
    for _ in range(max(args.pods, args.rss_pods)):
        name = "twbp" + uuid.uuid4().hex[:8]
        netns.create(name)
        pods.append(name)

    base_env = {"PATH": os.environ["PATH"], "CNI_IFNAME": "eth0", "CNI_PATH": str(GO_PLUGINS)}
    terway_conf = {"cniVersion": "1.0.0", "name": "terway", "type": "terway", "socket_path": settings["socket_path"]}
    ptp_conf = {
        "cniVersion": "1.0.0",
        "name": "bench",
        "type": "ptp",
        "ipam": {"type": "host-local", "subnet": "10.251.0.0/16", "dataDir": str(work / "host-local")},
    }
    results: dict[str, dict[str, list[float]]] = {"terway": {"ADD": [], "DEL": []}, "ptp+host-local": {"ADD": [], "DEL": []}}
    try:
        # interleave the two plugins pod by pod so machine noise hits both alike
        for i, pod in enumerate(pods[: args.pods]):
            path = netns.netns_path(pod)
            for label, binary, conf, ifname in (
                ("terway", str(bindir / "terway"), terway_conf, "eth0"),
                ("ptp+host-local", str(GO_PLUGINS / "ptp"), ptp_conf, "eth1"),
            ):
                env = dict(base_env, CNI_CONTAINERID=f"bench{i}", CNI_NETNS=path, CNI_IFNAME=ifname,
                           CNI_ARGS=f"IgnoreUnknown=1;K8S_POD_NAMESPACE=bench;K8S_POD_NAME=pod{i}")
                results[label]["ADD"].append(run_cni(binary, dict(env, CNI_COMMAND="ADD"), conf))
        for i, pod in enumerate(pods[: args.pods]):
            path = netns.netns_path(pod)
            for label, binary, conf, ifname in (
                ("terway", str(bindir / "terway"), terway_conf, "eth0"),
                ("ptp+host-local", str(GO_PLUGINS / "ptp"), ptp_conf, "eth1"),
            ):
                env = dict(base_env, CNI_CONTAINERID=f"bench{i}", CNI_NETNS=path, CNI_IFNAME=ifname)
                results[label]["DEL"].append(run_cni(binary, dict(env, CNI_COMMAND="DEL"), conf))

        startup = []
        for _ in range(30):
            t0 = time.perf_counter()
            subprocess.run([str(bindir / "terway")], input=b"", env={"CNI_COMMAND": "VERSION"}, capture_output=True)
            startup.append(time.perf_counter() - t0)
        bare = []
        for _ in range(30):
            t0 = time.perf_counter()
            subprocess.run([sys.executable, "-IS", "-c", "pass"], capture_output=True)
            bare.append(time.perf_counter() - t0)

        # RSS with many pods allocated
        for i, pod in enumerate(pods[: args.rss_pods]):
            env = dict(base_env, CNI_CONTAINERID=f"rss{i}", CNI_NETNS=netns.netns_path(pod),
                       CNI_ARGS=f"K8S_POD_NAMESPACE=bench;K8S_POD_NAME=rss{i}", CNI_COMMAND="ADD")
            run_cni(str(bindir / "terway"), env, terway_conf)
        loaded_rss = rss_kb(agent.pid)
        for i, pod in enumerate(pods[: args.rss_pods]):
            env = dict(base_env, CNI_CONTAINERID=f"rss{i}", CNI_NETNS=netns.netns_path(pod), CNI_COMMAND="DEL")
            run_cni(str(bindir / "terway"), env, terway_conf)
    finally:
        agent.send_signal(signal.SIGTERM)
        agent.wait(30)
        for pod in pods:
            netns.remove(pod)
        if os.environ.get("BENCH_KEEP"):
            print("kept", work)
        else:
            shutil.rmtree(work, ignore_errors=True)

    print(f"CNI latency, {args.pods} pods, mode {args.mode}, exec'd like a runtime (ms)")
    print(f"{'plugin':16} {'verb':4} {'p50':>8} {'p99':>8} {'mean':>8}")
    for label, verbs in results.items():
        for verb, vals in verbs.items():
            ms = [v * 1000 for v in vals]
            print(f"{label:16} {verb:4} {pct(ms, 50):8.2f} {pct(ms, 99):8.2f} {statistics.mean(ms):8.2f}")
    for verb in ("ADD", "DEL"):
        for q in (50, 99):
            t = pct(results["terway"][verb], q)
            g = pct(results["ptp+host-local"][verb], q)
            print(f"ratio terway/ptp+host-local {verb} p{q}: {t / g:.2f}")
    print(f"terway VERSION exec (interpreter start-up + imports) p50: {pct(startup, 50) * 1000:.2f} ms; "
          f"bare 'python -IS -c pass' p50: {pct(bare, 50) * 1000:.2f} ms")
    print(f"agent RSS idle: {idle_rss / 1024:.1f} MiB; with {args.rss_pods} pods allocated: {loaded_rss / 1024:.1f} MiB")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pods", type=int, default=100)
    ap.add_argument("--rss-pods", type=int, default=250)
    ap.add_argument("--mode", default="example")
    ap.add_argument("--inner", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("run as root: the benchmark creates network namespaces")
    if not (GO_PLUGINS / "ptp").exists():
        raise SystemExit("Debian's containernetworking-plugins are missing: run scripts/setup.sh")
    if args.inner:
        inner(args)
        return
    # Run the whole benchmark inside a throwaway node namespace so nothing touches the host's.
    node = "twbn" + uuid.uuid4().hex[:6]
    netns.create(node)
    try:
        subprocess.run(["ip", "netns", "exec", node, "ip", "link", "set", "lo", "up"], check=True)
        cmd = ["ip", "netns", "exec", node, sys.executable, __file__, "--inner", "--pods", str(args.pods),
               "--rss-pods", str(args.rss_pods), "--mode", args.mode]
        sys.exit(subprocess.run(cmd).returncode)
    finally:
        netns.remove(node)


if __name__ == "__main__":
    main()
