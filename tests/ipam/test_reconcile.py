"""Crash safety and resync: what a crash (or someone else) leaves in the store and the
cloud is brought back into agreement by reconcile and the periodic GC."""

from __future__ import annotations

import dataclasses
import ipaddress
import time

import pytest
import trio
from alibabacloud_ecs20140526 import models as ecs_models
from alibabacloud_ecs20140526.client import Client
from alibabacloud_tea_openapi.utils_models import Config
from twipam_helpers import FAST_TUNING
from twipam_topology import ACCESS_KEY, NODE, REGION, SG, VSW_A, VSW_TINY, ZONE

from terway_agent.ipam import TAG_INSTANCE, VSwitchesExhausted, _db
from terway_agent.ipam._mapping import mapping_report
from terway_agent.types import PodRef


def pod(name: str) -> PodRef:
    return PodRef("default", name)


def sdk(cloud) -> Client:
    """A plain SDK client (no creator tag): ENIs made with it are not the pool's."""
    return Client(
        Config(
            access_key_id=ACCESS_KEY[0],
            access_key_secret=ACCESS_KEY[1],
            endpoint=cloud.emulator.endpoint,
            protocol="http",
            region_id=REGION,
        )
    )


async def test_restart_keeps_live_owners_and_frees_dead_ones(make_pool, tmp_path) -> None:
    path = tmp_path / "restart.db"
    pool1 = await make_pool(store_path=path, max_pool_size=10)
    leases = {
        o: await pool1.ipam.allocate_ips(o, pod(o.split("/")[0])) for o in ("a/eth0", "b/eth0", "c/eth0")
    }
    await pool1.settle()
    await pool1.stop()
    pool2 = await make_pool(store_path=path, live={"a/eth0", "c/eth0"}, max_pool_size=10)
    assert pool2.report.released == (f"b/eth0={leases['b/eth0'].ipv4}",)
    assert await pool2.ipam.lease_of("a/eth0") == leases["a/eth0"]
    assert await pool2.ipam.lease_of("b/eth0") is None
    assert await pool2.ipam.allocate_ips("c/eth0", pod("c")) == leases["c/eth0"]
    await pool2.settle()
    await pool2.assert_consistent()


async def test_unknown_addresses_on_our_eni_are_adopted(make_pool) -> None:
    pool = await make_pool(max_pool_size=0)
    lease = await pool.ipam.allocate_ips("u/eth0", pod("u"))
    extra = await pool.client.assign_private_ip_addresses(lease.eni.eni_id, count=2)  # e.g. a lost answer
    report = await pool.ipam.reconcile({"u/eth0"})
    assert sorted(report.adopted_ips) == sorted(extra)
    assert report.released == ()
    await pool.assert_consistent()


async def test_attached_eni_of_this_node_unknown_to_the_store_is_adopted(make_pool) -> None:
    pool = await make_pool(max_pool_size=5)
    eni = await pool.client.create_and_attach_eni(
        VSW_A, [SG], secondary_ip_count=2, tags={TAG_INSTANCE: NODE}
    )
    report = await pool.ipam.reconcile(set())
    assert report.adopted_enis == (eni.eni_id,)
    assert sorted(report.adopted_ips) == sorted(eni.private_ips)
    before = await pool.calls()
    lease = await pool.ipam.allocate_ips("ad/eth0", pod("ad"))
    assert lease.eni.eni_id == eni.eni_id and lease.eni.gateway4
    assert (await pool.calls()) == before
    await pool.assert_consistent()


async def test_orphans_are_marked_then_deleted_after_the_grace(make_pool, cloud) -> None:
    pool = await make_pool(tuning=dataclasses.replace(FAST_TUNING, orphan_grace=0.3))
    orphan = await pool.client.create_network_interface(VSW_A, [SG], tags={TAG_INSTANCE: NODE})
    foreign = await pool.client.create_network_interface(VSW_A, [SG], tags={TAG_INSTANCE: "i-other"})
    first = await pool.ipam.reconcile(set())
    assert first.orphans_marked == (orphan.eni_id,)
    assert orphan.eni_id in pool.ipam.snapshot()["orphans"]
    second = await pool.ipam.reconcile(set())
    assert second.orphans_deleted == ()  # still within the grace
    await trio.sleep(0.35)
    third = await pool.ipam.reconcile(set())
    assert third.orphans_deleted == (orphan.eni_id,)
    ids = {e["id"] for e in cloud.state()["enis"]}
    assert orphan.eni_id not in ids and foreign.eni_id in ids  # another node's ENI is not ours to delete
    assert pool.ipam.snapshot()["orphans"] == {}


async def test_half_created_enis_are_finished_or_removed(make_pool, cloud, tmp_path) -> None:
    path = tmp_path / "half.db"
    pool1 = await make_pool(store_path=path, start=False)
    attached = await pool1.client.create_and_attach_eni(
        VSW_A, [SG], secondary_ip_count=1, tags={TAG_INSTANCE: NODE}
    )
    created = await pool1.client.create_network_interface(VSW_A, [SG], tags={TAG_INSTANCE: NODE})
    now = time.time()
    for info in (attached, created):  # what a crash between our steps leaves: rows in 'attaching'
        await pool1.store.acall(
            _db.insert_eni,
            pool1.store,
            {
                "eni_id": info.eni_id,
                "pool": "shared",
                "mac": info.mac,
                "vswitch_id": VSW_A,
                "state": "attaching",
                "primary_ip": info.primary_ip,
                "created_at": now,
                "updated_at": now,
            },
        )
    pool1.store.close()
    pool2 = await make_pool(store_path=path)
    assert sorted(pool2.report.resumed) == sorted([f"attach {attached.eni_id}", f"delete {created.eni_id}"])
    assert [e["id"] for e in await pool2.cloud_enis()] == [attached.eni_id]
    assert created.eni_id not in {e["id"] for e in cloud.state()["enis"]}
    eni = pool2.ipam._enis[attached.eni_id]
    assert eni.state == "ready" and eni.gateway4 and len(eni.ips) == 2
    await pool2.assert_consistent()


async def test_half_released_addresses_and_enis_are_finished(make_pool, cloud, tmp_path) -> None:
    path = tmp_path / "rel.db"
    pool1 = await make_pool(store_path=path, max_pool_size=30, max_eni=2)
    async with trio.open_nursery() as n:
        for i in range(20):
            n.start_soon(pool1.ipam.allocate_ips, f"h{i}/eth0", pod(f"h{i}"))
    await pool1.settle()
    await pool1.stop()
    enis = sorted(pool1.ipam._ready_enis(), key=lambda e: e.device_index)
    first, second = enis
    keep = [ip.address for ip in first.ips.values() if ip.owner and not ip.primary][:3]
    # crash in the middle of an unassign: rows 'releasing' (owners were freed first)
    owners = [first.ips[a].owner for a in keep]
    for o in owners:
        await pool1.store.acall(_db.release_ips, pool1.store, o, time.time(), "", None)
    await pool1.store.acall(_db.mark_ips_releasing, pool1.store, keep)
    # and in the middle of deleting the second ENI
    for ip in second.ips.values():
        if ip.owner:
            await pool1.store.acall(_db.release_ips, pool1.store, ip.owner, time.time(), "", None)
    await pool1.store.acall(_db.mark_eni_releasing, pool1.store, second.eni_id, time.time())
    live = {ip.owner for ip in first.ips.values() if ip.owner and ip.address not in keep}
    pool2 = await make_pool(store_path=path, live=live, max_pool_size=30, max_eni=2)
    assert f"delete {second.eni_id}" in pool2.report.resumed
    await pool2.wait(
        lambda: all(a not in pool2.ipam._enis[first.eni_id].ips for a in keep), what="the unassign"
    )
    await pool2.settle()
    cloud_enis = {e["id"]: e for e in await pool2.cloud_enis()}
    assert list(cloud_enis) == [first.eni_id]
    assert not set(keep) & set(cloud_enis[first.eni_id]["secondary_ips"])
    await pool2.assert_consistent()


async def test_an_eni_deleted_behind_our_back_leaves_tombstones(make_pool, cloud) -> None:
    pool = await make_pool(
        vswitches={ZONE: (VSW_TINY,)},
        max_pool_size=0,
        tuning=dataclasses.replace(FAST_TUNING, ip_inhibit=30.0),
    )
    lease = await pool.ipam.allocate_ips("gone/eth0", pod("gone"))
    await pool.settle()
    await pool.client.detach_and_delete_eni(lease.eni.eni_id)
    report = await pool.ipam.reconcile({"gone/eth0"})
    assert report.dropped == (lease.eni.eni_id,)
    assert report.lost == (f"gone/eth0={lease.ipv4}",)
    assert await pool.ipam.lease_of("gone/eth0") is None
    # the pod still uses the address: a tombstone keeps it until the owner is released
    assert pool.ipam.snapshot()["lost"][lease.ipv4]["owner"] == "gone/eth0"
    assert (await pool.store.acall(_db.load_lost, pool.store))[lease.ipv4]["owner"] == "gone/eth0"
    await pool.assert_consistent()
    # fill the tiny vSwitch (4 usable addresses) so that the lost address is the only free one
    others = [str(a) for a in ipaddress.ip_network("10.30.0.0/29").hosts() if str(a) != lease.ipv4][:3]
    assert len(others) == 3 and all(a.split(".")[-1] in "1234" for a in others)
    await trio.to_thread.run_sync(
        lambda: sdk(cloud).create_network_interface(
            ecs_models.CreateNetworkInterfaceRequest(
                region_id=REGION,
                v_switch_id=VSW_TINY,
                security_group_id=SG,
                primary_ip_address=others[0],
                private_ip_address=others[1:],
            )
        )
    )
    # the pool's next ENI gets it from the cloud as its primary: it is not handed out
    with trio.fail_after(10), pytest.raises(VSwitchesExhausted):
        await pool.ipam.allocate_ips("next/eth0", pod("next"))
    [eni] = pool.ipam._enis.values()
    assert eni.primary_ip == lease.ipv4
    assert eni.ips[lease.ipv4].lost_for == "gone/eth0" and eni.ips[lease.ipv4].owner is None
    assert await pool.ipam.lease_of("next/eth0") is None
    await pool.assert_consistent()
    # the owner is released: the address serves again
    await pool.ipam.release_ips("gone/eth0")
    assert pool.ipam.snapshot()["lost"] == {}
    assert await pool.store.acall(_db.load_lost, pool.store) == {}
    again = await pool.ipam.allocate_ips("next/eth0", pod("next"))
    assert again.ipv4 == lease.ipv4
    await pool.assert_consistent()


async def test_a_lost_address_back_on_our_eni_is_not_handed_out(make_pool) -> None:
    pool = await make_pool(max_pool_size=0)
    leases = {o: await pool.ipam.allocate_ips(o, pod(o[0])) for o in ("a/eth0", "b/eth0")}
    await pool.settle()
    eni_id = leases["a/eth0"].eni.eni_id
    eni = pool.ipam._enis[eni_id]
    owner, lost = next((o, lz.ipv4) for o, lz in leases.items() if lz.ipv4 != eni.primary_ip)
    await pool.client.unassign_private_ip_addresses(eni_id, [lost])  # the cloud "loses" it
    report = await pool.ipam.reconcile(set(leases))
    assert report.lost == (f"{owner}={lost}",) and report.dropped == ()
    assert lost not in eni.ips and pool.ipam.snapshot()["lost"][lost]["owner"] == owner
    # it comes back to our ENI: adopted, but quarantined for the pod that lost it
    await pool.client.assign_private_ip_addresses(eni_id, ips=[lost])
    report = await pool.ipam.reconcile(set(leases))
    assert report.adopted_ips == (lost,)
    assert eni.ips[lost].lost_for == owner and eni.ips[lost].owner is None
    before = (await pool.calls()).get("AssignPrivateIpAddresses", 0)
    c = await pool.ipam.allocate_ips("c/eth0", pod("c"))
    assert c.ipv4 != lost, "a tombstoned address was handed to a second pod"
    assert (await pool.calls()).get("AssignPrivateIpAddresses", 0) == before + 1  # the pool grew instead
    # nor is it given back as excess (max_pool_size 0) while the tombstone lives
    pool.ipam._kick_maint()
    await trio.sleep(0.5)
    await pool.settle()
    cloud_eni = next(e for e in await pool.cloud_enis() if e["id"] == eni_id)
    assert lost in cloud_eni["secondary_ips"]
    await pool.assert_consistent()
    await pool.ipam.release_ips(owner)
    d = await pool.ipam.allocate_ips("d/eth0", pod("d"))
    assert d.ipv4 == lost


async def test_periodic_gc_frees_owners_without_attachment(make_pool) -> None:
    live = {"keep/eth0"}

    async def live_owners() -> set[str]:
        return set(live)

    pool = await make_pool(live_owners=live_owners, max_pool_size=5)
    keep = await pool.ipam.allocate_ips("keep/eth0", pod("keep"))
    leak = await pool.ipam.allocate_ips("leak/eth0", pod("leak"))
    report = await pool.ipam.gc()
    assert report.released == (f"leak/eth0={leak.ipv4}",)
    assert await pool.ipam.lease_of("keep/eth0") == keep
    # an owner that took its address after the GC looked at the attachments is left alone
    as_of = time.time()
    await trio.sleep(0.01)
    fresh = await pool.ipam.allocate_ips("fresh/eth0", pod("fresh"))
    report = await pool.ipam.reconcile(set(live), as_of=as_of)
    assert report.released == ()
    assert await pool.ipam.lease_of("fresh/eth0") == fresh
    await pool.assert_consistent()


async def test_periodic_sync_runs_by_itself(make_pool) -> None:
    pool = await make_pool(ip_pool_sync_period=0.2, max_pool_size=0)
    lease = await pool.ipam.allocate_ips("s/eth0", pod("s"))
    extra = await pool.client.assign_private_ip_addresses(lease.eni.eni_id, count=1)
    await pool.wait(lambda: extra[0] in pool.ipam._enis[lease.eni.eni_id].ips, what="the periodic sync")
    await pool.settle()
    await pool.assert_consistent()


async def test_mapping_report_finds_disagreements(make_pool) -> None:
    pool = await make_pool(max_pool_size=3)
    store = pool.store
    lease = await pool.ipam.allocate_ips("cid1/eth0", pod("m"))
    store.begin_attachment(
        request={"container_id": "cid1", "ifname": "eth0"},
        network="terway",
        pod=pod("m"),
        netns="/n",
        mode="t",
    )
    await pool.settle()
    report = await mapping_report(pool.ipam, store, kernel=False)
    assert report["consistent"], report["problems"]
    assert report["owners"] == {"cid1/eth0": [lease.ipv4]}
    # an idle address removed behind the pool's back, an owner without attachment, an orphan ENI
    eni = pool.ipam._enis[lease.eni.eni_id]
    idle = next(a for a, ip in eni.ips.items() if ip.owner is None and not ip.primary)
    await pool.client.unassign_private_ip_addresses(eni.eni_id, [idle])
    other = await pool.ipam.allocate_ips("ghost/eth0", pod("ghost"))
    orphan = await pool.client.create_network_interface(VSW_A, [SG], tags={TAG_INSTANCE: NODE})
    report = await mapping_report(pool.ipam, store, kernel=False)
    assert not report["consistent"]
    text = "\n".join(report["problems"])
    assert f"address {idle} is on ENI {eni.eni_id} in the store but not in the cloud" in text
    assert f"{other.ipv4} held by ghost/eth0, which is not an attachment of the agent" in text
    assert f"ENI {orphan.eni_id} of this node is unattached" in text
