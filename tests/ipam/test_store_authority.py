"""The store is the authority over ownership: when the pool's in-memory view disagrees with
it (a conditional update is refused), the view is rebuilt from the rows, and nothing the
store says is owned is ever unassigned or deleted in the cloud."""

from __future__ import annotations

import time

import trio
from twipam_topology import SG, VSW_A

from terway_agent.ipam import TAG_INSTANCE, _db
from terway_agent.types import PodRef


def pod(name: str) -> PodRef:
    return PodRef("default", name)


async def _rows(pool) -> dict[str, dict]:
    _, ips = await pool.rows()
    return {ip["address"]: ip for ip in ips}


async def test_a_take_the_store_refuses_rebuilds_the_view_and_keeps_the_address(make_pool) -> None:
    pool = await make_pool(max_pool_size=3)
    n = 0
    while True:  # until the address the next allocation would pick is a secondary one
        await pool.ipam.allocate_ips(f"a{n}/eth0", pod(f"a{n}"))
        await pool.settle()
        eni, [target] = pool.ipam._pick("default/victim", False)
        if not target.primary:
            break
        n += 1
    x = target.address
    # someone commits an owner for x behind the pool's back: its view says x is idle
    await pool.store.acall(_db.take_ips, pool.store, [x], "intruder/eth0", "default/intruder", time.time())
    lease = await pool.ipam.allocate_ips("victim/eth0", pod("victim"))
    assert lease.ipv4 != x
    # the view was rebuilt from the store: x is the intruder's
    assert (await pool.ipam.lease_of("intruder/eth0")).ipv4 == x
    assert eni.ips[x].owner == "intruder/eth0" and eni.ips[x].state == "ready"
    # maintenance passes (excess release included) leave it alone
    pool.reload(max_pool_size=0)
    pool.ipam._kick_maint()
    await trio.sleep(1.2)
    await pool.settle()
    cloud = {e["id"]: e for e in await pool.cloud_enis()}
    assert x in cloud[eni.eni_id]["secondary_ips"], "an address the store says is owned was unassigned"
    assert (await _rows(pool))[x]["owner"] == "intruder/eth0"
    await pool.assert_consistent()


async def test_an_eni_take_the_store_refuses_keeps_the_eni(make_pool) -> None:
    pool = await make_pool("exclusive", min_pool_size=1, max_pool_size=1)
    await pool.wait(lambda: pool.ipam.snapshot()["usable"] == 1, what="a warm ENI")
    await pool.settle()
    [warm] = pool.ipam._ready_enis()
    await pool.store.acall(
        _db.take_eni, pool.store, warm.eni_id, "intruder/eth0", "default/intruder", time.time()
    )
    lease = await pool.ipam.allocate_eni("victim/eth0", pod("victim"))
    assert lease.eni.eni_id != warm.eni_id
    assert (await pool.ipam.lease_of("intruder/eth0")).eni.eni_id == warm.eni_id
    assert warm.state == "ready" and warm.owner == "intruder/eth0"
    pool.reload(min_pool_size=0, max_pool_size=0)
    pool.ipam._kick_maint()
    await trio.sleep(1.2)
    await pool.settle()
    cloud = {e["id"]: e for e in await pool.cloud_enis()}
    assert cloud[warm.eni_id]["status"] == "InUse", "an ENI the store says is owned was deleted"
    enis, _ = await pool.rows()
    assert {e["eni_id"]: e["owner"] for e in enis}[warm.eni_id] == "intruder/eth0"
    await pool.assert_consistent()


async def test_the_store_refuses_to_forget_owned_rows(make_pool) -> None:
    pool = await make_pool(max_pool_size=2)
    lease = await pool.ipam.allocate_ips("o/eth0", pod("o"))
    await pool.settle()
    store = pool.store
    idle = next(a for a, ip in pool.ipam._enis[lease.eni.eni_id].ips.items() if ip.owner is None)
    # delete_ips deletes only unowned rows that are 'releasing'
    assert await store.acall(_db.delete_ips, store, [lease.ipv4, idle]) == [lease.ipv4, idle]
    await store.acall(_db.mark_ips_releasing, store, [idle])
    assert await store.acall(_db.delete_ips, store, [lease.ipv4, idle]) == [lease.ipv4]
    rows = await _rows(pool)
    assert rows[lease.ipv4]["owner"] == "o/eth0" and idle not in rows
    # an ENI with an owned address is neither marked for deletion nor forgotten
    for fn, args in (
        (_db.mark_eni_releasing, (lease.eni.eni_id, time.time())),
        (_db.delete_eni, (lease.eni.eni_id,)),
    ):
        try:
            await store.acall(fn, store, *args)
        except _db.OwnershipConflict:
            pass
        else:
            raise AssertionError(f"{fn.__name__} accepted an owned ENI")
    enis, _ = await pool.rows()
    assert [e["eni_id"] for e in enis] == [lease.eni.eni_id]


async def test_stale_idle_addresses_leave_the_pool_before_the_store_is_touched(
    make_pool, monkeypatch
) -> None:
    pool = await make_pool(max_pool_size=3)
    a = await pool.ipam.allocate_ips("a/eth0", pod("a"))
    await pool.settle()
    eni = pool.ipam._enis[a.eni.eni_id]
    stale = sorted(ip.address for ip in eni.ips.values() if ip.owner is None and not ip.primary)
    assert stale
    await pool.client.unassign_private_ip_addresses(eni.eni_id, stale)  # behind the pool's back
    seen: dict = {}
    real = pool.store.acall
    armed = True

    async def acall(fn, *args):
        nonlocal armed
        if armed and fn in (_db.delete_ips, getattr(_db, "drop_stale_ips", None)):
            armed = False
            # the reconcile is awaiting the store: what does a warm allocation see now?
            seen["states"] = {x: eni.ips[x].state for x in stale}
            seen["lease"] = await pool.ipam.allocate_ips("mid/eth0", pod("mid"))
        return await real(fn, *args)

    monkeypatch.setattr(pool.store, "acall", acall)
    report = await pool.ipam.reconcile({"a/eth0"})
    assert seen["states"] == {x: "releasing" for x in stale}
    assert seen["lease"].ipv4 not in stale, "an address the cloud no longer has was handed out"
    assert sorted(report.dropped) == stale and report.lost == ()
    await pool.settle()
    await pool.assert_consistent()


async def test_gc_deletions_do_not_stall_maintenance(make_pool, cloud) -> None:
    import dataclasses

    from twipam_helpers import FAST_TUNING

    pool = await make_pool(
        max_pool_size=0, ip_pool_sync_period=0.2, tuning=dataclasses.replace(FAST_TUNING, orphan_grace=0.0)
    )
    async with trio.open_nursery() as n:
        for i in range(4):
            n.start_soon(pool.ipam.allocate_ips, f"g{i}/eth0", pod(f"g{i}"))
    await pool.settle()
    orphan = await pool.client.create_network_interface(VSW_A, [SG], tags={TAG_INSTANCE: pool.instance})
    # the orphan's deletion by the periodic GC pass will take 3 s
    await trio.to_thread.run_sync(cloud.admin.set_latency, "DeleteNetworkInterface", 3.0)
    await pool.wait(
        lambda: cloud.admin.call_count("DeleteNetworkInterface") >= 1, what="the GC pass deleting the orphan"
    )
    t0 = trio.current_time()
    for i in range(1, 4):
        await pool.ipam.release_ips(f"g{i}/eth0")
    # the excess is given back while the deletion is still in flight
    await pool.wait(
        lambda: cloud.admin.call_count("UnassignPrivateIpAddresses") >= 1,
        timeout=2.0,
        what="the excess release",
    )
    assert trio.current_time() - t0 < 2.5
    assert orphan.eni_id in {e["id"] for e in cloud.state()["enis"]}, "the slow deletion finished first"
    await trio.to_thread.run_sync(cloud.admin.set_latency, "DeleteNetworkInterface", None)
    await pool.wait(
        lambda: orphan.eni_id not in {e["id"] for e in cloud.state()["enis"]},
        timeout=8.0,
        what="the orphan deleted",
    )
    await pool.settle()
    await pool.assert_consistent()
