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
                      namespace, for a ratio;
* ``codec``        -- what pyroute2's message classes cost per message type
                      (encode, decode of a real kernel reply), and the same
                      requests through pyroute2's synchronous IPRoute, the
                      figures behind docs/datapath.md "Why not IPRoute".

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
from terway_agent.datapath import _probe, _rtnl, netns
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


def per_call(fn: Callable[[], object], n: int) -> list[float]:
    fn()  # warm
    return [timed(fn) for _ in range(n)]


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


def bench_codec(tag: str, node: str, n: int) -> dict[str, list[float]]:
    """pyroute2's codec per message type, our socket path, and pyroute2's IPRoute, in the node namespace."""
    from pyroute2 import IPRoute
    from pyroute2.netlink.rtnl.fibmsg import fibmsg
    from pyroute2.netlink.rtnl.ifaddrmsg import ifaddrmsg
    from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg
    from pyroute2.netlink.rtnl.ndmsg import ndmsg
    from pyroute2.netlink.rtnl.rtmsg import rtmsg

    out: dict[str, list[float]] = {}
    with netns.enter(node):
        nl = _rtnl.Rtnl()
        ipr = IPRoute()
    try:
        eni = nl.link_get(name="eth1")
        assert eni is not None
        idx = eni.index
        # encode, memo bypassed: what a request costs the first time
        enc = {
            "veth add": lambda: _rtnl._veth_msg.__wrapped__(
                "cali0123456789a", "eth0", 7, 1500, "02:00:00:00:00:01", None, True, False
            ),
            "link set up": lambda: _rtnl._linkset_msg.__wrapped__(idx, True, None, None, None, None),
            "link get": lambda: _rtnl._getlink_msg.__wrapped__("cali0123456789a", 0, None),
            "addr add": lambda: _rtnl._addr_msg.__wrapped__(20, 0x605, 2, "10.9.0.5", 32, idx, 0),
            "neigh add": lambda: _rtnl._neigh_msg.__wrapped__(28, 0x605, 2, idx, "169.254.1.1", ENI_MAC),
            "route add": lambda: _rtnl._route_msg.__wrapped__(
                24, 0x605, 2, "10.9.0.5", 32, 254, None, idx, 253, 3, None, False, None, 1
            ),
            "rule add": lambda: _rtnl._rule_msg.__wrapped__(
                32, 0x605, 2, 2048, 1003, "10.9.0.5", 32, None, 0, None, None, None, None
            ),
        }
        for label, fn in enc.items():
            out[f"encode {label}"] = per_call(fn, n)
        # decode real replies, memo bypassed
        replies: dict[str, tuple[type, Callable[..., object], bytes]] = {}

        def grab(label: str, cls: type, convert: Callable[..., object], request: bytes, dump: bool) -> None:
            seq = nl._send(request)
            for data, off, mlen, mtype, _flags in nl._replies(seq):
                if mtype in (2, 3):
                    break
                replies.setdefault(label, (cls, convert, data[off + 16 : off + mlen]))
                if not dump:
                    break  # a dump is read to its end

        grab("link (38 attributes)", ifinfmsg, _rtnl._link, _rtnl._getlink_msg("eth1", 0, None), False)
        grab("link index+flags only", ifinfmsg, _rtnl._head, _rtnl._getlink_msg("eth1", 0, None), False)
        grab("addr", ifaddrmsg, _rtnl._addr, _rtnl._addrdump_msg(0, idx), True)
        grab("route", rtmsg, _rtnl._route, _rtnl._routedump_msg(2, ref.eni_table(idx), None), True)
        grab("rule", fibmsg, _rtnl._rule, _rtnl._ruledump_msg(2), True)
        grab("neigh", ndmsg, _rtnl._neigh, _rtnl._neighdump_msg(0, idx), True)
        for label, (cls, convert, payload) in replies.items():
            if label == "link index+flags only":
                payload = payload[: cls.get_size()]
            out[f"decode {label}"] = per_call(
                lambda cls=cls, convert=convert, payload=payload: _rtnl._decoded.__wrapped__(
                    cls, convert, payload
                ),
                n,
            )
        # whole requests: our socket path (encode memo cold and warm) vs IPRoute, same kernel work
        route = {"family": 2, "dst": "10.9.0.9", "dst_len": 32, "table": 254, "oif": idx, "scope": 253}
        rule = {
            "family": 2,
            "priority": 2048,
            "table": 1003,
            "src": "10.9.0.9",
            "src_len": 32,
            "dst": None,
            "dst_len": 0,
            "iifname": None,
            "oifname": None,
            "fwmark": None,
            "fwmask": None,
        }

        def cold(fn: Callable[[], object]) -> Callable[[], object]:
            def run() -> object:
                for builder in (_rtnl._getlink_msg, _rtnl._route_msg, _rtnl._rule_msg, _rtnl._decoded):
                    builder.cache_clear()
                return fn()

            return run

        def ours_link() -> None:
            nl.link_get(name="eth1")

        def ours_route() -> None:
            nl.route_add(proto=3, **route)
            nl.route_del(**route)

        def ours_rule() -> None:
            nl.rule_add(**rule)
            nl.rule_del(**rule)

        requests = {
            "link get": (ours_link, lambda: ipr.link("get", ifname="eth1")),
            "route add+del": (
                ours_route,
                lambda: (
                    ipr.route("add", dst="10.9.0.9/32", oif=idx, scope=253, proto=3),
                    ipr.route("del", dst="10.9.0.9/32", oif=idx, scope=253),
                ),
            ),
            "rule add+del": (
                ours_rule,
                lambda: (
                    ipr.rule("add", priority=2048, table=1003, src="10.9.0.9", src_len=32),
                    ipr.rule("del", priority=2048, table=1003, src="10.9.0.9", src_len=32),
                ),
            ),
        }
        for label, (ours, theirs) in requests.items():
            out[f"Rtnl {label} (memo cold)"] = per_call(cold(ours), n)
            out[f"Rtnl {label} (memo warm)"] = per_call(ours, n)
            out[f"IPRoute {label}"] = per_call(theirs, n)
    finally:
        nl.close()
        ipr.close()
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
        memo_before = _rtnl.memo_stats()
        ours = bench_executor(tag, args.n, node, vpc, eni_index)
        memo = {k: v - memo_before[k] for k, v in _rtnl.memo_stats().items()}
        codec = bench_codec(tag, node, 200)
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
    print(
        f"  memos: {memo['encode_hits']} encodes and {memo['decode_hits']} decodes reused, "
        f"{memo['encode_misses']} and {memo['decode_misses']} done by pyroute2"
    )
    print("pyroute2 codec per message (memo bypassed) and whole requests, in microseconds:")
    for label, samples in codec.items():
        us = [x * 1e6 for x in samples]
        print(f"  {label:<28} p50 {pct(us, 0.5):7.1f} us   p99 {pct(us, 0.99):7.1f} us")
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
