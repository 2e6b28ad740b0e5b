"""The exclusive-ENI pool: whole ENIs per pod, warm ENIs, release policy, limits."""

from __future__ import annotations

import ipaddress

import pytest
import trio
from twipam_topology import SMALL

from terway_agent.errors import PermanentError
from terway_agent.ipam import EniLease, PoolCapacityReached
from terway_agent.types import PodRef


def pod(name: str) -> PodRef:
    return PodRef("default", name)


async def test_allocate_eni_cold_then_idempotent(make_pool) -> None:
    pool = await make_pool("exclusive", max_pool_size=0)
    lease = await pool.ipam.allocate_eni("e0/eth0", pod("e0"))
    assert isinstance(lease, EniLease)
    cloud = {e["id"]: e for e in await pool.cloud_enis()}
    assert list(cloud) == [lease.eni.eni_id]
    assert lease.ipv4 == cloud[lease.eni.eni_id]["primary_ip"]
    assert lease.eni.mac == cloud[lease.eni.eni_id]["mac"]
    assert lease.eni.device_index == 1
    assert ipaddress.ip_address(lease.ipv4) in ipaddress.ip_network(lease.eni.cidr4)
    assert await pool.ipam.allocate_eni("e0/eth0", pod("e0")) == lease
    assert await pool.ipam.lease_of("e0/eth0") == lease
    with pytest.raises(PermanentError, match="allocate_ips is not available in the exclusive ENI pool"):
        await pool.ipam.allocate_ips("e1/eth0", pod("e1"))
    await pool.assert_consistent()


async def test_released_eni_is_reused_or_deleted_per_max_pool_size(make_pool) -> None:
    pool = await make_pool("exclusive", max_pool_size=1)
    a = await pool.ipam.allocate_eni("a/eth0", pod("a"))
    b = await pool.ipam.allocate_eni("b/eth0", pod("b"))
    assert a.eni.eni_id != b.eni.eni_id
    await pool.ipam.release_eni("a/eth0")
    await pool.ipam.release_eni("a/eth0")  # idempotent
    await pool.ipam.release_eni("b/eth0")
    # two idle ENIs, max_pool_size 1: one is deleted, one stays warm
    await pool.wait(lambda: len(pool.ipam._ready_enis()) == 1, what="one ENI deleted")
    await pool.settle()
    assert len(await pool.cloud_enis()) == 1
    before = await pool.calls()
    c = await pool.ipam.allocate_eni("c/eth0", pod("c"))
    assert (await pool.calls()) == before, "the warm ENI was not used"
    assert c.eni.eni_id in (a.eni.eni_id, b.eni.eni_id)
    await pool.assert_consistent()


async def test_min_pool_size_keeps_warm_enis(make_pool) -> None:
    pool = await make_pool("exclusive", min_pool_size=2, max_pool_size=2)
    await pool.wait(lambda: pool.ipam.snapshot()["usable"] == 2, what="two warm ENIs")
    await pool.settle()
    before = await pool.calls()
    leases = []
    async with trio.open_nursery() as n:
        for i in range(2):
            n.start_soon(lambda i=i: _alloc_eni(pool, i, leases))
    assert (await pool.calls()) == before
    assert len({lease.eni.eni_id for lease in leases}) == 2
    # and it refills in the background
    await pool.wait(lambda: pool.ipam.snapshot()["usable"] == 1, what="refill (max 3 ENIs on g7.xlarge)")
    await pool.settle()
    await pool.assert_consistent()


async def _alloc_eni(pool, i, out) -> None:
    out.append(await pool.ipam.allocate_eni(f"w{i}/eth0", pod(f"w{i}")))


async def test_concurrent_cold_allocations_create_in_parallel(make_pool, cloud) -> None:
    cloud.admin.configure(attach_latency=0.3)
    pool = await make_pool("exclusive", max_pool_size=0)
    leases: list = []
    t0 = trio.current_time()
    async with trio.open_nursery() as n:
        for i in range(3):
            n.start_soon(_alloc_eni, pool, i, leases)
    elapsed = trio.current_time() - t0
    assert len({lease.eni.eni_id for lease in leases}) == 3
    assert cloud.admin.call_count("CreateNetworkInterface") == 3
    assert elapsed < 0.3 * 3, f"three ENIs took {elapsed:.2f}s: created one after the other"
    await pool.assert_consistent()


async def test_exclusive_capacity(make_pool) -> None:
    pool = await make_pool("exclusive", instance=SMALL, max_pool_size=0)
    for i in range(2):  # EniQuantity 3 -> 2 pods
        await pool.ipam.allocate_eni(f"k{i}/eth0", pod(f"k{i}"))
    with trio.fail_after(5), pytest.raises(PoolCapacityReached):
        await pool.ipam.allocate_eni("k2/eth0", pod("k2"))


async def test_exclusive_dual_stack(make_pool) -> None:
    pool = await make_pool("exclusive", ip_stack="dual", max_pool_size=0)
    lease = await pool.ipam.allocate_eni("d/eth0", pod("d"))
    assert lease.ipv4 and lease.ipv6
    assert ipaddress.ip_address(lease.ipv6) in ipaddress.ip_network(lease.eni.cidr6)
    cloud = await pool.cloud_enis()
    assert cloud[0]["ipv6s"] == [lease.ipv6]
    await pool.assert_consistent()


async def test_exclusive_reuse_cooldown(make_pool) -> None:
    pool = await make_pool("exclusive", max_pool_size=2, max_eni=1, ip_reuse_cooldown=1.0)
    a = await pool.ipam.allocate_eni("ca/eth0", pod("ca"))
    await pool.ipam.release_eni("ca/eth0")
    t0 = trio.current_time()
    with trio.fail_after(10):
        b = await pool.ipam.allocate_eni("cb/eth0", pod("cb"))
    assert b.eni.eni_id == a.eni.eni_id
    assert trio.current_time() - t0 >= 0.9
