"""Benchmark of the IPAM against the local cloud emulator (figures only, no assertions).

Run: ``.venv/bin/python benchmarks/bench_ipam.py [--create 1.0] [--attach 3.0] [--assign 0.3] ...``

(a) **cold node**: 1, 10, 50, 100 pods request addresses at once on a node
    with no secondary ENI (ecs.g7.4xlarge: 7 usable ENIs x 30 addresses), with
    emulated latencies (CreateNetworkInterface ``--create`` s, attach
    ``--attach`` s, AssignPrivateIpAddresses ``--assign`` s; every other API
    ``--other`` s).  Printed: time until every pod is served, the cloud calls
    made, and the ratio to a lower bound (printed with its formula);
(b) **warm allocation latency**: ``allocate_ips`` + ``release_ips`` through a
    running pool with its real store (SQLite, ``synchronous=FULL``) and no
    cloud call, p50/p90/p99;
(c) **churn**: 1,000 allocate/release cycles at steady state (``--running``
    pods, one released and one allocated per cycle) -- cloud calls per cycle,
    without reuse cooldown (back to back) and with one (``--churn-cooldown``
    at ``--churn-rate`` cycles/s: the addresses cooling down at any time are
    cooldown x rate, as 30 s at 1 restart/s).

The emulator runs in this process (threads), so absolute figures include its cost.
By default the client polls the ENI status every 0.1 s (``--client-backoffs
fast``); ``default`` keeps the original's waits (first status look after 3 s,
metadata polled every 1 s) and shows what a production node sees.
"""

from __future__ import annotations

import argparse
import math
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import trio

from terway_agent.cloud._ratelimit import DEFAULT_RATE_LIMITS
from terway_agent.cloud.client import CloudClient
from terway_agent.cloud.emulator import Emulator, Topology
from terway_agent.cloud.settings import CloudSettings
from terway_agent.config import EniConf
from terway_agent.context import NodeInfo
from terway_agent.ipam import IPAM, PoolTuning, new_ipam
from terway_agent.store import Store
from terway_agent.types import PodRef

REGION = "cn-hangzhou"
ZONE = "cn-hangzhou-k"
NODE = "i-twbench-node"
KEY = ("LTAItwbenchKey", "twbench-secret")
SG = "sg-twbench"
VSWITCHES = ("vsw-twbench-a", "vsw-twbench-b")
#: APIs that change the cloud's state; every other call the emulator counted (DescribeNetworkInterfaces,
#: DescribeVSwitches, ..., metadata reads) is a read or a poll and is printed separately
MUTATING_APIS = (
    "CreateNetworkInterface",
    "AttachNetworkInterface",
    "AssignPrivateIpAddresses",
    "AssignIpv6Addresses",
    "UnassignPrivateIpAddresses",
    "UnassignIpv6Addresses",
    "DetachNetworkInterface",
    "DeleteNetworkInterface",
)


def short(api: str) -> str:
    return (
        api.replace("NetworkInterfaces", "ENIs")
        .replace("NetworkInterface", "ENI")
        .replace("PrivateIpAddresses", "IPs")
    )


def show(calls: dict[str, int]) -> str:
    return ", ".join(f"{short(k)} {v}" for k, v in sorted(calls.items())) or "none"


def topology(args: argparse.Namespace) -> Topology:
    latency: dict[str, Any] = {"default": args.other}
    if args.create:
        latency["CreateNetworkInterface"] = args.create
    if args.assign:
        latency["AssignPrivateIpAddresses"] = args.assign
    return Topology.from_dict(
        {
            "region": REGION,
            "seed": 11,
            "vpc": {"id": "vpc-twbench00000000000", "cidr": "10.0.0.0/8"},
            "zones": [ZONE],
            "vswitches": [
                {"id": "vsw-twbench-node", "zone": ZONE, "cidr": "10.1.0.0/24"},
                {"id": VSWITCHES[0], "zone": ZONE, "cidr": "10.16.0.0/16"},
                {"id": VSWITCHES[1], "zone": ZONE, "cidr": "10.17.0.0/16"},
            ],
            "security_groups": [{"id": SG, "name": "bench"}],
            "access_keys": [{"id": KEY[0], "secret": KEY[1]}],
            "instances": [
                {
                    "id": NODE,
                    "type": "ecs.g7.4xlarge",
                    "vswitch": "vsw-twbench-node",
                    "netns": "twbench-node",
                    "primary_ip": "10.1.0.10",
                    "security_groups": [SG],
                }
            ],
            "latency": latency,
            "attach_latency": args.attach,
            "detach_latency": args.other,
            "metadata": {"delay": 0, "tokens": "optional"},
            "node_side": {"kind": "null"},
        },
        "bench_ipam",
    )


def client_for(emu: Emulator, args: argparse.Namespace) -> CloudClient:
    over: dict[str, Any] = {}
    if args.client_backoffs == "fast":
        over = {
            "backoff_override": {
                "wait_eni_status": {
                    "duration": 0.1,
                    "factor": 1,
                    "jitter": 0,
                    "steps": 600,
                    "initial_delay": 0,
                }
            },
            "metadata_poll_interval": 0.1,
        }
    settings = CloudSettings(
        region_id=REGION,
        endpoint=emu.endpoint,
        protocol="http",
        access_key_id=KEY[0],
        access_key_secret=KEY[1],
        metadata_endpoint=emu.metadata_url(NODE),
        **over,
    )
    return CloudClient(settings, instance_id=NODE)


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.emu = Emulator(topology(args)).start()
        self.admin = self.emu.admin()
        self.tmp = Path(tempfile.mkdtemp(prefix="twipam-bench-"))
        self.n = 0

    def close(self) -> None:
        self.admin.close()
        self.emu.stop()

    async def pool(self, nursery: trio.Nursery, **conf: Any) -> tuple[IPAM, Store]:
        self.emu.reset()
        self.admin.reset_calls()
        client = client_for(self.emu, self.args)
        limits = (await client.describe_instance_types(["ecs.g7.4xlarge"]))[0]
        self.n += 1
        store = Store(self.tmp / f"state-{self.n}.db")
        eni = EniConf(
            vswitches={ZONE: VSWITCHES}, security_group=SG, vswitch_selection_policy="ordered", **conf
        )
        ipam = new_ipam(
            "shared",
            store=store,
            cloud=client,
            node=NodeInfo(
                name="bench",
                instance_id=NODE,
                instance_type=limits.instance_type,
                region_id=REGION,
                zone_id=ZONE,
                vswitch_id="vsw-twbench-node",
            ),
            quota=limits,
            eni_conf=lambda: eni,
            tuning=replace(PoolTuning(), release_delay=0.2),
        )
        await ipam.reconcile(set())
        await nursery.start(ipam.run)
        self.admin.reset_calls()
        return ipam, store

    def calls(self) -> tuple[dict[str, int], dict[str, int]]:
        """Every call the emulator counted since the last reset: (mutating, reads and polls)."""
        got = {k: v for k, v in self.admin.calls().items() if v}
        mutating = {k: v for k, v in got.items() if k in MUTATING_APIS}
        polls = {k: v for k, v in got.items() if k not in MUTATING_APIS}
        return mutating, polls


# ---------------------------------------------------------------------------------------------
# (a) cold node
# ---------------------------------------------------------------------------------------------


def lower_bound(n: int, args: argparse.Namespace, max_enis: int, per_eni: int) -> tuple[float, int, int]:
    """The fastest any pool could serve ``n`` pods under the APIs' rules, and the ENI count achieving it.

    An ENI's addresses are usable once CreateNetworkInterface (c) and the attach (a)
    are done; CreateNetworkInterface carries at most 10 secondaries (11 addresses),
    each further AssignPrivateIpAddresses at most 10 (s each, one after the other on
    one ENI, possibly overlapping the attach).  With e ENIs in parallel, each needs
    k = ceil(max(0, ceil(n/e) - 11) / 10) assigns:  T(e) = c + max(a, k*s).  The
    bound is min over e <= max ENIs of T(e), plus the time the rate limits force:
    every API's calls beyond its bucket (burst = calls per minute) cost 60/rate s.
    """
    best = (math.inf, 0, 0)
    for e in range(1, max_enis + 1):
        per = math.ceil(n / e)
        if per > per_eni:
            continue
        k = math.ceil(max(0, per - 11) / 10)
        t = args.create + max(args.attach, k * args.assign)
        calls = {"CreateNetworkInterface": e, "AttachNetworkInterface": e, "AssignPrivateIpAddresses": e * k}
        for api, count in calls.items():
            limit = DEFAULT_RATE_LIMITS.get(api, DEFAULT_RATE_LIMITS[""])
            if count > limit:
                t += (count - limit) * 60.0 / limit
        if t < best[0]:
            best = (t, e, k)
    return best


async def cold(bench: Bench) -> None:
    args = bench.args
    print("\n(a) cold node: N pods request addresses at once")
    print(
        f"    latencies: CreateNetworkInterface {args.create}s, attach {args.attach}s, "
        f"AssignPrivateIpAddresses {args.assign}s, other APIs {args.other}s; client backoffs: {args.client_backoffs}"
    )
    print(
        "    lower bound: min over e <= maxENI of "
        "c + max(a, k*s), k = ceil(max(0, ceil(N/e) - 11)/10), + rate-limit excess (none below 400 calls)"
    )
    print(
        f"    {'pods':>5} {'served in':>10} {'bound':>7} {'ratio':>6}  {'ENIs(bound)':>11}  "
        "mutating calls | reads and polls"
    )
    for n in args.sizes:
        async with trio.open_nursery() as nursery:
            ipam, store = await bench.pool(nursery, max_pool_size=5)
            done: list[float] = []
            t0 = trio.current_time()

            async def one(i: int, ipam: IPAM = ipam, t0: float = t0, done: list[float] = done) -> None:
                await ipam.allocate_ips(f"cold{i}/eth0", PodRef("bench", f"p{i}"))
                done.append(trio.current_time() - t0)

            async with trio.open_nursery() as pods:
                for i in range(n):
                    pods.start_soon(one, i)
            elapsed = max(done)
            mutating, polls = bench.calls()
            bound, enis, k = lower_bound(n, args, ipam.max_enis(), bench_per_eni(ipam))
            print(
                f"    {n:>5} {elapsed:>9.2f}s {bound:>6.2f}s {elapsed / bound:>6.2f}  {enis:>5} x {k} asg  "
                f"{show(mutating)} | {show(polls)}"
            )
            nursery.cancel_scope.cancel()
        store.close()


def bench_per_eni(ipam: IPAM) -> int:
    return ipam._slot_capacity()


# ---------------------------------------------------------------------------------------------
# (b) warm latency
# ---------------------------------------------------------------------------------------------


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


async def warm(bench: Bench) -> None:
    args = bench.args
    print(
        f"\n(b) warm allocation inside the pool ({args.warm} allocate + release, store synchronous=FULL, "
        "ip_reuse_cooldown 0)"
    )
    async with trio.open_nursery() as nursery:
        # no reuse cooldown here: this measures the warm path itself ((c) shows the cooldown's cost)
        ipam, store = await bench.pool(nursery, min_pool_size=10, max_pool_size=20, ip_reuse_cooldown=0.0)
        while ipam.snapshot()["usable"] < 10:  # noqa: ASYNC110 - polling the pool's state
            await trio.sleep(0.05)
        bench.admin.reset_calls()
        alloc: list[float] = []
        free: list[float] = []
        for i in range(args.warm):
            t = time.perf_counter()
            await ipam.allocate_ips(f"warm{i}/eth0", PodRef("bench", f"w{i}"))
            alloc.append((time.perf_counter() - t) * 1000)
            t = time.perf_counter()
            await ipam.release_ips(f"warm{i}/eth0")
            free.append((time.perf_counter() - t) * 1000)
        for name, vals in (("allocate_ips", alloc), ("release_ips", free)):
            print(
                f"    {name:13} p50 {pct(vals, 50):6.2f} ms  p90 {pct(vals, 90):6.2f} ms  "
                f"p99 {pct(vals, 99):6.2f} ms  mean {statistics.fmean(vals):6.2f} ms"
            )
        mutating, polls = bench.calls()
        print(f"    cloud calls during the loop: mutating: {show(mutating)}; reads and polls: {show(polls)}")
        nursery.cancel_scope.cancel()
    store.close()


# ---------------------------------------------------------------------------------------------
# (c) churn
# ---------------------------------------------------------------------------------------------


async def churn(bench: Bench) -> None:
    args = bench.args
    print(
        f"\n(c) churn: {args.churn} cycles (release one pod, allocate one) with {args.running} pods running, "
        "max_pool_size 5"
    )
    runs = [(0.0, 0.0), (args.churn_cooldown, args.churn_rate)]
    for cooldown, rate in runs:
        async with trio.open_nursery() as nursery:
            ipam, store = await bench.pool(nursery, max_pool_size=5, ip_reuse_cooldown=cooldown)
            running: list[str] = []
            for i in range(args.running):
                owner = f"base{i}/eth0"
                await ipam.allocate_ips(owner, PodRef("bench", f"b{i}"))
                running.append(owner)
            while ipam._ops or any(e.busy for e in ipam._enis.values()):  # noqa: ASYNC110
                await trio.sleep(0.05)
            await trio.sleep(0.5)
            bench.admin.reset_calls()
            waits: list[float] = []
            t0 = trio.current_time()
            for i in range(args.churn):
                if rate:
                    await trio.sleep_until(t0 + i / rate)
                await ipam.release_ips(running.pop(0))
                owner = f"churn{i}/eth0"
                t = trio.current_time()
                await ipam.allocate_ips(owner, PodRef("bench", f"c{i}"))
                waits.append(trio.current_time() - t)
                running.append(owner)
            elapsed = trio.current_time() - t0
            await trio.sleep(0.5)
            mutating, polls = bench.calls()
            total, reads = sum(mutating.values()), sum(polls.values())
            pace = f"{rate:.0f} cycles/s" if rate else "back to back"
            cold = sum(1 for w in waits if w > 0.05)
            print(
                f"    ip_reuse_cooldown {cooldown:>4.1f}s, {pace:>13}: {total / args.churn:.3f} mutating calls "
                f"per cycle ({total} in {elapsed:.1f}s: {show(mutating)}), {reads / args.churn:.3f} reads and "
                f"polls per cycle ({show(polls)}); {cold} allocations waited for the cloud"
            )
            nursery.cancel_scope.cancel()
        store.close()
    print(
        "    (a cooldown of C s at R pod restarts/s keeps about C x R addresses cooling; the second run is "
        "scaled down in time:\n     30 s at 1 restart/s holds 30 addresses like 2 s at 15/s)"
    )


async def main_async(args: argparse.Namespace) -> None:
    bench = Bench(args)
    try:
        if "cold" in args.parts:
            await cold(bench)
        if "warm" in args.parts:
            await warm(bench)
        if "churn" in args.parts:
            # churn measures calls, not latency: no emulated latency
            bench.close()
            fast = argparse.Namespace(**{**vars(args), "create": 0, "attach": 0, "assign": 0, "other": 0})
            bench = Bench(fast)
            await churn(bench)
    finally:
        bench.close()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--create", type=float, default=1.0, help="CreateNetworkInterface latency, s")
    p.add_argument("--attach", type=float, default=3.0, help="attach latency (Attaching -> InUse), s")
    p.add_argument("--assign", type=float, default=0.3, help="AssignPrivateIpAddresses latency, s")
    p.add_argument("--other", type=float, default=0.02, help="latency of every other API, s")
    p.add_argument("--sizes", type=lambda s: [int(x) for x in s.split(",")], default=[1, 10, 50, 100])
    p.add_argument("--warm", type=int, default=2000, help="warm allocate/release iterations")
    p.add_argument("--churn", type=int, default=1000, help="churn cycles")
    p.add_argument("--running", type=int, default=30, help="pods running during churn")
    p.add_argument(
        "--churn-cooldown", type=float, default=2.0, help="reuse cooldown of the second churn run, s"
    )
    p.add_argument("--churn-rate", type=float, default=15.0, help="cycles per second of the second churn run")
    p.add_argument("--client-backoffs", choices=("fast", "default"), default="fast")
    p.add_argument("--log-level", default="error", help="the pool's log level (debug shows every plan)")
    p.add_argument("--parts", type=lambda s: s.split(","), default=["cold", "warm", "churn"])
    args = p.parse_args()
    import logging

    import structlog

    structlog.configure(
        wrapper_class=structlog.make_filtering_bound_logger(getattr(logging, args.log_level.upper()))
    )
    trio.run(main_async, args)


if __name__ == "__main__":
    main()
