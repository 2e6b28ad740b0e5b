"""The shared-ENI pool against the emulator: fill and drain, bursts, reuse cooldown,
stickiness, reclaim, policies, dual stack, live reloads."""

from __future__ import annotations

import ipaddress
import math

import pytest
import trio
from twipam_helpers import FAST_TUNING
from twipam_topology import G6, SMALL, VSW_A, VSW_B, ZONE

from terway_agent.ipam import PoolCapacityReached, PoolTuning
from terway_agent.types import PodRef


def pod(name: str, ns: str = "default") -> PodRef:
    return PodRef(ns, name)


async def test_min_pool_fills_then_warm_allocations_make_no_cloud_call(make_pool) -> None:
    pool = await make_pool(min_pool_size=4, max_pool_size=6)
    await pool.wait(lambda: pool.ipam.snapshot()["usable"] >= 4, what="min_pool_size idle addresses")
    await pool.settle()
    before = await pool.calls()
    leases = []
    async with trio.open_nursery() as n:
        for i in range(4):
            n.start_soon(lambda i=i: _alloc(pool, f"c{i}/eth0", pod(f"p{i}"), leases))
    assert (await pool.calls()) == before, "a warm allocation called the cloud"
    assert len({lease.ipv4 for lease in leases}) == 4
    assert pool.ipam.stats()["allocations"] == 4
    # the pool tops itself up to min_pool_size again in the background
    await pool.wait(lambda: pool.ipam.snapshot()["usable"] >= 4, what="the top-up")
    await pool.settle()
    await pool.assert_consistent()


async def _alloc(pool, owner, p, out) -> None:
    out.append(await pool.ipam.allocate_ips(owner, p))


async def test_burst_of_25_on_a_cold_node_is_coalesced(make_pool) -> None:
    pool = await make_pool(max_pool_size=5)
    leases: list = []
    async with trio.open_nursery() as n:
        for i in range(25):
            n.start_soon(_alloc, pool, f"burst{i}/eth0", pod(f"b{i}"), leases)
    calls = await pool.calls()
    cap = pool.limits.eni_private_ip_quantity  # 15 on ecs.g7.xlarge
    assert len({lease.ipv4 for lease in leases}) == 25
    # 25 pods need ceil(25/15) = 2 ENIs; each is created with 1 + 10 addresses,
    # the rest come from AssignPrivateIpAddresses in calls of <= 10
    assert calls.get("CreateNetworkInterface", 0) == math.ceil(25 / cap)
    assert calls.get("AttachNetworkInterface", 0) == math.ceil(25 / cap)
    assert calls.get("AssignPrivateIpAddresses", 0) <= math.ceil(25 / 10)
    assert calls.get("CreateNetworkInterface", 0) + calls.get("AssignPrivateIpAddresses", 0) < 25 / 5
    # every lease carries its ENI's routing facts from the metadata service
    for lease in leases:
        net = ipaddress.ip_network(lease.eni.cidr4)
        assert ipaddress.ip_address(lease.ipv4) in net
        assert lease.eni.gateway4 == str(net.broadcast_address - 2)
        assert lease.eni.vswitch_id in (VSW_A, VSW_B)
    await pool.settle()
    await pool.assert_consistent()


async def test_allocate_and_release_are_idempotent(make_pool) -> None:
    pool = await make_pool()
    a = await pool.ipam.allocate_ips("idem/eth0", pod("idem"))
    b = await pool.ipam.allocate_ips("idem/eth0", pod("idem"))
    assert a == b
    assert await pool.ipam.lease_of("idem/eth0") == a
    await pool.ipam.release_ips("idem/eth0")
    await pool.ipam.release_ips("idem/eth0")
    assert await pool.ipam.lease_of("idem/eth0") is None
    with pytest.raises(Exception, match="owner"):
        await pool.ipam.allocate_ips("no-ifname", pod("x"))
    with pytest.raises(Exception, match="allocate_eni is not available in the shared ENI pool"):
        await pool.ipam.allocate_eni("x/eth0", pod("x"))


async def test_drain_gives_everything_back(make_pool) -> None:
    pool = await make_pool(max_pool_size=5)
    owners = [f"d{i}/eth0" for i in range(20)]
    async with trio.open_nursery() as n:
        for i, o in enumerate(owners):
            n.start_soon(_alloc, pool, o, pod(f"d{i}"), [])
    assert len(await pool.cloud_enis()) == 2
    for o in owners:
        await pool.ipam.release_ips(o)
    # idle above max_pool_size goes back: a whole idle ENI is deleted, the rest unassigned
    await pool.wait(lambda: pool.ipam.snapshot()["idle"] <= 5, what="release above max_pool_size")
    await pool.settle()
    await pool.assert_consistent()
    pool.reload(max_pool_size=0)
    await pool.wait(lambda: not pool.ipam.snapshot()["enis"], what="drain to zero ENIs")
    await pool.settle()
    assert await pool.cloud_enis() == []
    results = pool.env.admin.results()
    for api in ("UnassignPrivateIpAddresses", "DetachNetworkInterface", "DeleteNetworkInterface"):
        assert set(results.get(api, {"OK": 0})) <= {"OK"}, results[api]
    await pool.assert_consistent()


async def test_release_above_max_pool_size_is_batched(make_pool) -> None:
    pool = await make_pool(
        "shared",
        tuning=PoolTuning(**{**FAST_TUNING.__dict__, "release_delay": 0.3}),
        max_pool_size=2,
        max_eni=1,
    )
    owners = [f"m{i}/eth0" for i in range(15)]
    async with trio.open_nursery() as n:
        for i, o in enumerate(owners):
            n.start_soon(_alloc, pool, o, pod(f"m{i}"), [])
    assert len(await pool.cloud_enis()) == 1
    pool.env.admin.reset_calls()
    for o in owners[:13]:
        await pool.ipam.release_ips(o)  # a burst of DELs
    await pool.wait(lambda: pool.ipam.snapshot()["idle"] == 2, what="idle down to max_pool_size")
    await pool.settle()
    calls = await pool.calls()
    # 11 addresses over the high watermark: two calls (10 + 1), the ENI stays (it has owners)
    assert calls.get("UnassignPrivateIpAddresses") == 2, calls
    assert "DeleteNetworkInterface" not in calls
    await pool.assert_consistent()


async def test_reuse_cooldown_keeps_a_released_address_from_the_next_pod(make_pool) -> None:
    pool = await make_pool(max_pool_size=10, max_eni=1, ip_reuse_cooldown=1.5)
    cap = pool.limits.eni_private_ip_quantity
    first = [await pool.ipam.allocate_ips(f"r{i}/eth0", pod(f"r{i}")) for i in range(cap - 1)]
    last = await pool.ipam.allocate_ips("rlast/eth0", pod("rlast"))
    assert pool.ipam.snapshot()["usable"] == 0
    released = first[0].ipv4
    await pool.ipam.release_ips("r0/eth0")
    # the ENI is full: the only idle address is cooling down, so the next pod waits for it
    with trio.fail_after(10):
        t0 = trio.current_time()
        nxt = await pool.ipam.allocate_ips("rnext/eth0", pod("rnext"))
        waited = trio.current_time() - t0
    assert nxt.ipv4 == released
    assert waited >= 1.0, f"the released address came back after {waited:.2f}s, within the cooldown"
    assert last.ipv4 != released
    await pool.assert_consistent()


async def test_cooldown_prefers_a_fresh_address(make_pool) -> None:
    pool = await make_pool(max_pool_size=5, ip_reuse_cooldown=30.0)
    a = await pool.ipam.allocate_ips("fa/eth0", pod("fa"))
    await pool.ipam.release_ips("fa/eth0")
    b = await pool.ipam.allocate_ips("fb/eth0", pod("fb"))
    assert b.ipv4 != a.ipv4
    snap = pool.ipam.snapshot()
    cooling = [ip for e in snap["enis"] for ip in e["ips"] if ip["address"] == a.ipv4]
    assert cooling and cooling[0]["cooldown_left"] > 25


async def test_statefulset_stickiness(make_pool) -> None:
    pool = await make_pool(max_pool_size=5, stateful_ip_hold=1.0)
    web0 = await pool.ipam.allocate_ips("s1/eth0", pod("web-0", "db"), sticky=True)
    await pool.ipam.release_ips("s1/eth0", hold=True)
    # another pod does not get the held address, even with no cooldown
    others = [await pool.ipam.allocate_ips(f"o{i}/eth0", pod(f"o{i}")) for i in range(4)]
    assert web0.ipv4 not in {o.ipv4 for o in others}
    snap = pool.ipam.snapshot()
    held = [ip for e in snap["enis"] for ip in e["ips"] if ip["hold_for"]]
    assert [(ip["address"], ip["hold_for"]) for ip in held] == [(web0.ipv4, "db/web-0")]
    # the successor (same namespace/name, new container) gets it back
    again = await pool.ipam.allocate_ips("s2/eth0", pod("web-0", "db"), sticky=True)
    assert again.ipv4 == web0.ipv4
    await pool.ipam.release_ips("s2/eth0", hold=True)
    # after stateful_ip_hold the address is an ordinary idle one
    await trio.sleep(1.1)
    snap = pool.ipam.snapshot()
    assert not [ip for e in snap["enis"] for ip in e["ips"] if ip["hold_for"]]
    await pool.assert_consistent()


async def test_idle_reclaim_down_to_min_pool_size(make_pool) -> None:
    pool = await make_pool(
        min_pool_size=2,
        max_pool_size=20,
        max_eni=1,
        idle_ip_reclaim_after=0.5,
        idle_ip_reclaim_interval=0.3,
        idle_ip_reclaim_batch_size=3,
        idle_ip_reclaim_jitter_factor=0.0,
    )
    owners = [f"i{i}/eth0" for i in range(11)]
    for i, o in enumerate(owners):
        await pool.ipam.allocate_ips(o, pod(f"i{i}"))
    for o in owners:
        await pool.ipam.release_ips(o)
    idle_before = pool.ipam.snapshot()["idle"]
    assert idle_before >= 11
    seen: list[int] = []
    with trio.fail_after(15):
        while pool.ipam.snapshot()["idle"] > 2:
            seen.append(pool.ipam.snapshot()["idle"])
            await trio.sleep(0.05)
    await pool.settle()
    assert pool.ipam.snapshot()["idle"] == 2  # min_pool_size is kept
    # at most idle_ip_reclaim_batch_size per pass: the count went down in steps of <= 3
    steps = [a - b for a, b in zip(seen, seen[1:], strict=False) if a != b]
    assert steps and max(steps) <= 3, steps
    await pool.assert_consistent()


@pytest.mark.parametrize("policy", ["most_ips", "least_ips"])
async def test_eni_selection_policy(make_pool, policy: str) -> None:
    pool = await make_pool(max_pool_size=30, max_eni=2, eni_selection_policy=policy)
    leases: list = []
    async with trio.open_nursery() as n:
        for i in range(20):
            n.start_soon(_alloc, pool, f"sel{i}/eth0", pod(f"sel{i}"), leases)
    by_eni: dict[str, list] = {}
    for lease in leases:
        by_eni.setdefault(lease.eni.eni_id, []).append(lease)
    assert len(by_eni) == 2 and all(len(v) >= 5 for v in by_eni.values())
    (a, on_a), (b, on_b) = sorted(by_eni.items())
    for lease in on_a[4:] + on_b[1:]:  # 4 pods stay on ENI a, 1 on ENI b
        await pool.ipam.release_ips(lease.owner)
    probe = await pool.ipam.allocate_ips("probe/eth0", pod("probe"))
    assert probe.eni.eni_id == (a if policy == "most_ips" else b)


async def test_vswitch_policy_most_picks_the_emptier_vswitch(make_pool, cloud) -> None:
    # fill vSwitch A a little from another client so that B has more free addresses
    other = cloud.client(SMALL)
    await other.create_network_interface(VSW_A, ["sg-twipam-1"], secondary_ip_count=20)
    pool = await make_pool(vswitch_selection_policy="most", max_pool_size=0)
    lease = await pool.ipam.allocate_ips("v/eth0", pod("v"))
    assert lease.eni.vswitch_id == VSW_B
    pool2 = await make_pool(
        instance=G6, vswitch_selection_policy="ordered", max_pool_size=0, vswitches={ZONE: (VSW_A, VSW_B)}
    )
    lease2 = await pool2.ipam.allocate_ips("v2/eth0", pod("v2"))
    assert lease2.eni.vswitch_id == VSW_A


async def test_dual_stack_addresses_come_in_pairs_on_one_eni(make_pool) -> None:
    pool = await make_pool(ip_stack="dual", max_pool_size=2)
    leases: list = []
    async with trio.open_nursery() as n:
        for i in range(12):
            n.start_soon(_alloc, pool, f"ds{i}/eth0", pod(f"ds{i}"), leases)
    for lease in leases:
        assert lease.ipv4 and lease.ipv6
        assert ipaddress.ip_address(lease.ipv6) in ipaddress.ip_network(lease.eni.cidr6)
        assert lease.eni.gateway6
        eni = pool.ipam._enis[lease.eni.eni_id]
        assert lease.ipv4 in eni.ips and lease.ipv6 in eni.ips
    assert len({lease.ipv6 for lease in leases}) == 12
    await pool.settle()
    await pool.assert_consistent()
    for lease in leases:
        await pool.ipam.release_ips(lease.owner)
    await pool.wait(lambda: pool.ipam.snapshot()["idle"] <= 2, what="dual-stack release")
    await pool.settle()
    await pool.assert_consistent()


async def test_ipv6_only_stack(make_pool) -> None:
    pool = await make_pool(ip_stack="ipv6", max_pool_size=0)
    lease = await pool.ipam.allocate_ips("v6/eth0", pod("v6"))
    assert lease.ipv4 is None and lease.ipv6 is not None
    assert ipaddress.ip_address(lease.ipv6).version == 6
    await pool.assert_consistent()


async def test_capacity_limit_and_eni_cap_formula(make_pool) -> None:
    # ecs.twemu-small.large: 3 ENIs x 4 addresses -> (3 - 1) x 4 = 8 pods
    pool = await make_pool(instance=SMALL, max_pool_size=0)
    assert pool.ipam.max_enis() == 2
    for i in range(8):
        await pool.ipam.allocate_ips(f"cap{i}/eth0", pod(f"cap{i}"))
    with trio.fail_after(5), pytest.raises(PoolCapacityReached, match="2 ENIs"):
        await pool.ipam.allocate_ips("cap8/eth0", pod("cap8"))
    pool.reload(eni_cap_ratio=0.5)  # int(3 x 0.5) + 0 - 1 = 0
    assert pool.ipam.max_enis() == 0
    pool.reload(eni_cap_ratio=1.0, eni_cap_shift=-1)
    assert pool.ipam.max_enis() == 1
    pool.reload(eni_cap_shift=0, max_eni=1)
    assert pool.ipam.max_enis() == 1
    await pool.assert_consistent()


async def test_min_eni_keeps_enis(make_pool) -> None:
    pool = await make_pool(min_eni=2, max_pool_size=0)
    await pool.wait(lambda: len(pool.ipam._ready_enis()) == 2, what="min_eni ENIs")
    await pool.settle()
    await trio.sleep(0.5)  # max_pool_size 0 does not delete them
    assert len(await pool.cloud_enis()) == 2
    await pool.assert_consistent()


async def test_live_reload_of_pool_sizes(make_pool) -> None:
    pool = await make_pool(min_pool_size=0, max_pool_size=0)
    await trio.sleep(0.3)
    assert await pool.cloud_enis() == []
    pool.reload(min_pool_size=7, max_pool_size=8)
    await pool.wait(lambda: pool.ipam.snapshot()["usable"] >= 7, what="min_pool_size after a reload")
    pool.reload(min_pool_size=0, max_pool_size=3)
    await pool.wait(lambda: pool.ipam.snapshot()["idle"] <= 3, what="max_pool_size after a reload")
    await pool.settle()
    await pool.assert_consistent()


async def test_pool_metrics(make_pool) -> None:
    from prometheus_client import REGISTRY

    pool = await make_pool(max_pool_size=3)
    await pool.ipam.allocate_ips("met/eth0", pod("met"))
    await pool.ipam.allocate_ips("met2/eth0", pod("met2"))
    total = REGISTRY.get_sample_value("terway_resource_pool_total_count", {"type": "ipv4"})
    allocated = REGISTRY.get_sample_value("terway_resource_pool_allocated_count", {"type": "ipv4"})
    idle = REGISTRY.get_sample_value("terway_resource_pool_idle_count", {"type": "ipv4"})
    assert allocated == 2 and total == allocated + idle
    assert REGISTRY.get_sample_value("terway_ipam_allocations_total", {"path": "cold"}) >= 1
    assert REGISTRY.get_sample_value("terway_ipam_allocations_total", {"path": "warm"}) >= 1
    assert REGISTRY.get_sample_value("terway_ipam_allocation_latency_seconds_count", {"path": "warm"}) >= 1
    assert REGISTRY.get_sample_value("terway_ipam_cloud_calls_total", {"api": "CreateNetworkInterface"}) >= 1
    assert REGISTRY.get_sample_value("terway_ipam_cloud_calls_per_allocation") > 0
    assert pool.ipam.stats() == {"cloud_calls": 2, "allocations": 2}  # create + attach


async def test_cooling_addresses_meet_max_pool_size_only_after_the_cooldown(make_pool) -> None:
    pool = await make_pool(max_pool_size=0, ip_reuse_cooldown=1.0)
    leases = [await pool.ipam.allocate_ips(f"cw{i}/eth0", pod(f"cw{i}")) for i in range(3)]
    for lease in leases:
        await pool.ipam.release_ips(lease.owner)
    await trio.sleep(0.5)  # > release_delay: still cooling, so still on the ENI
    eni = (await pool.cloud_enis())[0]
    assert {lease.ipv4 for lease in leases} <= {eni["primary_ip"], *eni["secondary_ips"]}
    # once cooled they are ordinary idle addresses above max_pool_size 0: given back (the ENI with them)
    await pool.wait(lambda: not pool.ipam.snapshot()["enis"], timeout=10, what="release after the cooldown")
    await pool.settle()
    assert await pool.cloud_enis() == []
