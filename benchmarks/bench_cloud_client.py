"""Benchmark of the cloud client against the local emulator (figures only, no assertions).

Run: ``.venv/bin/python benchmarks/bench_cloud_client.py [--calls N] [--window S]``

Starts an in-process emulator (the packaged demo topology with its server-side
latency and throttling removed, so the client's own cost shows), then prints:

1. sequential calls through :class:`CloudClient` (DescribeVSwitches): calls/s, p50/p99;
2. the same with N concurrent trio tasks (bounded by ``max_concurrent_calls``);
3. create_and_attach_eni + detach_and_delete_eni cycles (5 OpenAPI calls + metadata polls each);
4. rate-limiter accuracy: observed vs configured calls/s over a window after the burst
   is drained.

The emulator shares the process (and the GIL) with the client, so absolute
figures are pessimistic for the client.
"""

from __future__ import annotations

import argparse
import statistics
import time

import trio

from terway_agent.cloud.client import CloudClient
from terway_agent.cloud.emulator import Emulator, Topology, default_topology
from terway_agent.cloud.settings import CloudSettings

FAST = {
    "wait_eni_status": {"duration": 0.01, "factor": 1, "jitter": 0, "steps": 500, "initial_delay": 0},
    "default": {"duration": 0.05},
}


def _topology() -> Topology:
    data = default_topology().to_dict()
    data["latency"] = {}
    data["rate_limits"] = {}
    data["attach_latency"] = 0
    data["detach_latency"] = 0
    data["metadata"] = {"delay": 0, "tokens": "optional"}
    return Topology.from_dict(data, "bench")


def _client(emu: Emulator, **overrides: object) -> CloudClient:
    iid = emu.instance_ids[0]
    kwargs: dict[str, object] = {
        "region_id": emu.region_id,
        "endpoint": emu.endpoint,
        "protocol": "http",
        "access_key_id": emu.access_key_id,
        "access_key_secret": emu.access_key_secret,
        "metadata_endpoint": emu.metadata_url(iid),
        "rate_limit": {"DescribeVSwitches": 10**7, "default": 10**7},
        "backoff_override": FAST,
        "metadata_poll_interval": 0.01,
    }
    kwargs.update(overrides)
    return CloudClient(CloudSettings(**kwargs), instance_id=iid)  # type: ignore[arg-type]


def _pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _report(name: str, samples: list[float], wall: float, unit: str = "calls/s") -> None:
    print(
        f"{name:<42} n={len(samples):<6} {len(samples) / wall:9.1f} {unit:<9}"
        f"p50 {statistics.median(samples) * 1000:7.2f} ms   p99 {_pct(samples, 0.99) * 1000:7.2f} ms"
    )


async def _sequential(client: CloudClient, n: int) -> None:
    await client.describe_vswitches()  # warm up: connection, SDK client
    samples: list[float] = []
    start = time.perf_counter()
    for _ in range(n):
        t0 = time.perf_counter()
        await client.describe_vswitches()
        samples.append(time.perf_counter() - t0)
    _report("sequential DescribeVSwitches", samples, time.perf_counter() - start)


async def _concurrent(client: CloudClient, n: int, tasks: int) -> None:
    samples: list[float] = []
    per_task = max(1, n // tasks)

    async def worker() -> None:
        for _ in range(per_task):
            t0 = time.perf_counter()
            await client.describe_vswitches()
            samples.append(time.perf_counter() - t0)

    start = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for _ in range(tasks):
            nursery.start_soon(worker)
    _report(f"{tasks:>3} concurrent tasks DescribeVSwitches", samples, time.perf_counter() - start)


async def _eni_cycles(client: CloudClient, vswitch: str, sg: str, n: int) -> None:
    create: list[float] = []
    release: list[float] = []
    start = time.perf_counter()
    for _ in range(n):
        t0 = time.perf_counter()
        eni = await client.create_and_attach_eni(vswitch, [sg], secondary_ip_count=4)
        t1 = time.perf_counter()
        await client.detach_and_delete_eni(eni.eni_id)
        create.append(t1 - t0)
        release.append(time.perf_counter() - t1)
    wall = time.perf_counter() - start
    _report("create_and_attach_eni (zero cloud latency)", create, wall, "cycles/s")
    _report("detach_and_delete_eni (zero cloud latency)", release, wall, "cycles/s")


async def _rate_accuracy(emu: Emulator, per_minute: int, window: float, tasks: int) -> None:
    client = _client(emu, rate_limit={"DescribeVSwitches": per_minute})
    # drain the burst (= per_minute tokens) first
    async with trio.open_nursery() as nursery:
        for _ in range(tasks):

            async def drain() -> None:
                while client.rate_limiter.bucket("DescribeVSwitches").statistics()["tokens"] >= 1:
                    await client.describe_vswitches()

            nursery.start_soon(drain)
    count = 0

    async def hammer() -> None:
        nonlocal count
        while True:
            await client.describe_vswitches()
            count += 1

    start = time.perf_counter()
    with trio.move_on_after(window):
        async with trio.open_nursery() as nursery:
            for _ in range(tasks):
                nursery.start_soon(hammer)
    wall = time.perf_counter() - start
    configured = per_minute / 60.0
    observed = count / wall
    print(
        f"rate limiter {per_minute}/min ({configured:.2f}/s) over {wall:.1f}s, {tasks} tasks: "
        f"observed {observed:.2f} calls/s ({(observed / configured - 1) * 100:+.1f}%)"
    )


async def main(calls: int, window: float) -> None:
    emu = Emulator(_topology())
    emu.start()
    try:
        topo = emu.topology
        client = _client(emu)
        print(f"emulator at {emu.endpoint}; {calls} calls per figure\n")
        await _sequential(client, calls)
        for tasks in (4, 16, 64):
            await _concurrent(client, calls, tasks)
        await _eni_cycles(client, topo.vswitches[1].id, topo.security_groups[0].id, max(10, calls // 40))
        print()
        for per_minute in (600, 3000):
            await _rate_accuracy(emu, per_minute, window, tasks=8)
    finally:
        emu.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000, help="calls per latency figure")
    parser.add_argument("--window", type=float, default=5.0, help="seconds of the rate-limiter window")
    args = parser.parse_args()
    from terway_agent import log

    log.configure("warning", json=False)  # the figures, not the per-call logs
    trio.run(main, args.calls, args.window)
