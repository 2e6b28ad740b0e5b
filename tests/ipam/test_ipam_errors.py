"""Every error path of the pool against the emulator: ENI quota, vSwitch exhaustion and
failover, private-IP quota, throttling, 5xx, lost responses, permanent refusals."""

from __future__ import annotations

import dataclasses

import pytest
import trio
from alibabacloud_ecs20140526 import models as ecs_models
from alibabacloud_ecs20140526.client import Client
from alibabacloud_tea_openapi.utils_models import Config
from twipam_helpers import FAST_TUNING
from twipam_topology import ACCESS_KEY, REGION, SG, SMALL, VSW_A, VSW_B, VSW_TINY, ZONE

from terway_agent.context import EventRecorder
from terway_agent.errors import AllocationError, TemporaryError
from terway_agent.ipam import AllocationInhibited, VSwitchesExhausted
from terway_agent.types import PodRef


def pod(name: str) -> PodRef:
    return PodRef("default", name)


def tuning(**over):
    return dataclasses.replace(FAST_TUNING, **over)


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


def attach_foreign_eni(cloud, instance: str) -> str:
    c = sdk(cloud)
    eni = c.create_network_interface(
        ecs_models.CreateNetworkInterfaceRequest(region_id=REGION, v_switch_id=VSW_B, security_group_id=SG)
    ).body.network_interface_id
    c.attach_network_interface(
        ecs_models.AttachNetworkInterfaceRequest(
            region_id=REGION, network_interface_id=eni, instance_id=instance
        )
    )
    cloud.admin.settle()
    return eni


async def test_eni_per_instance_limit_inhibits_new_enis(make_pool, cloud) -> None:
    # someone else filled the instance's ENI slots: the cloud refuses our attach for real
    foreign = [attach_foreign_eni(cloud, SMALL) for _ in range(2)]
    cloud.admin.reset_calls()
    pool = await make_pool(instance=SMALL, tuning=tuning(eni_inhibit=1.0), max_pool_size=0)
    with trio.fail_after(10), pytest.raises(AllocationInhibited) as info:
        await pool.ipam.allocate_ips("q1/eth0", pod("q1"))
    assert info.value.reason == "EniPerInstanceLimitExceeded"
    assert "eni_create" in pool.ipam.snapshot()["inhibits"]
    assert cloud.admin.results()["AttachNetworkInterface"].get("EniPerInstanceLimitExceeded") == 1
    # the half-made ENI was rolled back: only the foreign ones are left
    assert sorted(e["id"] for e in await pool.cloud_enis()) == sorted(foreign)
    assert [e["id"] for e in cloud.state()["enis"] if e["status"] == "Available"] == []
    # while inhibited nothing is tried again
    with pytest.raises(AllocationInhibited):
        await pool.ipam.allocate_ips("q2/eth0", pod("q2"))
    assert cloud.admin.call_count("CreateNetworkInterface") == 1
    # a slot frees up; after the inhibit the pool grows again
    c = sdk(cloud)
    c.detach_network_interface(
        ecs_models.DetachNetworkInterfaceRequest(
            region_id=REGION, network_interface_id=foreign[0], instance_id=SMALL
        )
    )
    cloud.admin.settle()
    await trio.sleep(1.1)
    with trio.fail_after(10):
        lease = await pool.ipam.allocate_ips("q3/eth0", pod("q3"))
    assert lease.eni.eni_id not in foreign
    await pool.settle()


async def test_ip_not_enough_sets_the_vswitch_aside_and_fails_over(make_pool, cloud) -> None:
    pool = await make_pool(vswitches={ZONE: (VSW_A, VSW_B)}, max_pool_size=0)
    cloud.admin.add_fault(
        "CreateNetworkInterface", "error", code="InvalidVSwitchId.IpNotEnough", status=403, times=1
    )
    lease = await pool.ipam.allocate_ips("f1/eth0", pod("f1"))
    assert lease.eni.vswitch_id == VSW_B  # A answered IpNotEnough: the next vSwitch served
    snap = pool.ipam.snapshot()
    assert (
        snap["vswitches"][VSW_A]["aside_until"]
        and snap["vswitches"][VSW_A]["reason"] == "InvalidVSwitchId.IpNotEnough"
    )
    assert f"vswitch:{VSW_A}" in snap["inhibits"]
    assert not snap["insufficient"]
    assert pool.ipam.status().ok
    await pool.assert_consistent()


async def test_every_vswitch_exhausted(make_pool, cloud) -> None:
    # the tiny vSwitch has 4 usable addresses in all
    pool = await make_pool(vswitches={ZONE: (VSW_TINY,)}, max_pool_size=0, tuning=tuning(ip_inhibit=30.0))
    events: list[dict] = []
    pool.ipam._events = EventRecorder(events.append)
    leases = [await pool.ipam.allocate_ips(f"t{i}/eth0", pod(f"t{i}")) for i in range(4)]
    assert {lease.eni.vswitch_id for lease in leases} == {VSW_TINY}
    with trio.fail_after(10), pytest.raises(VSwitchesExhausted, match=VSW_TINY) as info:
        await pool.ipam.allocate_ips("t4/eth0", pod("t4"))
    assert info.value.reason == "InvalidVSwitchId.IpNotEnough"
    assert cloud.admin.results()["AssignPrivateIpAddresses"].get("InvalidVSwitchId.IpNotEnough") == 1
    insufficient, why = pool.ipam.insufficient()
    assert insufficient and VSW_TINY in why
    status = pool.ipam.status()
    assert status.code == 50 and "IpNotEnough" in status.message
    assert [(e["object"], e["reason"], e["type"]) for e in events] == [
        (f"Node/twipam-{pool.instance}", "AllocIPFailed", "Warning")
    ]
    assert VSW_TINY in events[0]["message"]
    # an address comes back: the node can serve ADD again although it cannot grow
    await pool.ipam.release_ips("t0/eth0")
    assert pool.ipam.status().ok
    assert pool.ipam.insufficient()[0]
    again = await pool.ipam.allocate_ips("t5/eth0", pod("t5"))
    assert again.ipv4 == leases[0].ipv4
    await pool.assert_consistent()


async def test_private_ip_quota_inhibits_the_eni(make_pool, cloud) -> None:
    pool = await make_pool(max_pool_size=0, max_eni=1)
    await pool.ipam.allocate_ips("p0/eth0", pod("p0"))
    cloud.admin.add_fault(
        "AssignPrivateIpAddresses", "error", code="QuotaExceeded.PrivateIpAddress", status=403
    )
    with trio.fail_after(10), pytest.raises(AllocationInhibited, match="QuotaExceeded.PrivateIpAddress"):
        await pool.ipam.allocate_ips("p1/eth0", pod("p1"))
    assert pool.ipam.insufficient()[0]
    assert pool.ipam.status().code == 50
    assert any(k.startswith("ip:") for k in pool.ipam.snapshot()["inhibits"])
    await pool.assert_consistent()


async def test_private_ip_quota_on_one_eni_grows_another(make_pool, cloud) -> None:
    pool = await make_pool(max_pool_size=0)
    first = await pool.ipam.allocate_ips("g0/eth0", pod("g0"))
    cloud.admin.add_fault(
        "AssignPrivateIpAddresses", "error", code="QuotaExceeded.PrivateIpAddress", status=403
    )
    second = await pool.ipam.allocate_ips("g1/eth0", pod("g1"))
    assert second.eni.eni_id != first.eni.eni_id  # a new ENI instead
    assert not pool.ipam.insufficient()[0]
    await pool.assert_consistent()


async def test_throttling_and_5xx_are_retried(make_pool, cloud) -> None:
    pool = await make_pool(max_pool_size=0)
    cloud.admin.add_fault("CreateNetworkInterface", "error", code="Throttling.User", status=400, times=1)
    cloud.admin.add_fault("AttachNetworkInterface", "error", code="ServiceUnavailable", status=503, times=1)
    cloud.admin.add_fault("AssignPrivateIpAddresses", "error", code="InternalError", status=500, times=2)
    leases = [await pool.ipam.allocate_ips(f"r{i}/eth0", pod(f"r{i}")) for i in range(3)]
    assert len({lease.ipv4 for lease in leases}) == 3
    results = cloud.admin.results()
    assert results["CreateNetworkInterface"] == {"Throttling.User": 1, "OK": 1}
    assert results["AttachNetworkInterface"].get("ServiceUnavailable") == 1
    assert results["AssignPrivateIpAddresses"].get("InternalError") == 2
    assert len(await pool.cloud_enis()) == 1
    await pool.assert_consistent()


async def test_rate_limited_cloud_still_serves_a_burst(make_pool, cloud) -> None:
    cloud.admin.set_rate_limit("AssignPrivateIpAddresses", per_minute=600, burst=1)
    pool = await make_pool(max_pool_size=0, max_eni=1)
    leases: list = []

    async def one(i: int) -> None:
        leases.append(await pool.ipam.allocate_ips(f"rl{i}/eth0", pod(f"rl{i}")))

    async with trio.open_nursery() as n:
        n.start_soon(one, 0)
    for batch in range(3):
        async with trio.open_nursery() as n:
            for i in range(4):
                n.start_soon(one, 1 + batch * 4 + i)
    assert len({lease.ipv4 for lease in leases}) == 13
    await pool.assert_consistent()


async def test_lost_responses_create_nothing_twice(make_pool, cloud) -> None:
    pool = await make_pool(max_pool_size=0)
    cloud.admin.add_fault("CreateNetworkInterface", "drop_after_commit", times=1)
    cloud.admin.add_fault("AssignPrivateIpAddresses", "error_after_commit", times=1)
    a = await pool.ipam.allocate_ips("l0/eth0", pod("l0"))
    b = await pool.ipam.allocate_ips("l1/eth0", pod("l1"))
    assert a.eni.eni_id == b.eni.eni_id
    enis = await pool.cloud_enis()
    assert len(enis) == 1  # the retried create returned the first ENI (ClientToken)
    assert len(enis[0]["secondary_ips"]) == 1  # and the retried assign the first address
    assert cloud.admin.results()["CreateNetworkInterface"].get("Dropped") == 1
    await pool.assert_consistent()


async def test_failures_beyond_the_retries_time_out_then_recover(make_pool, cloud) -> None:
    pool = await make_pool(max_pool_size=0, tuning=tuning(alloc_timeout=1.5))
    fid = cloud.admin.add_fault("CreateNetworkInterface", "error", code="InternalError", status=500)
    with trio.fail_after(10), pytest.raises(TemporaryError, match="InternalError|not refilled"):
        await pool.ipam.allocate_ips("x0/eth0", pod("x0"))
    assert pool.ipam.snapshot()["pending"] == 0
    cloud.admin.remove_fault(fid)
    with trio.fail_after(10):
        await pool.ipam.allocate_ips("x1/eth0", pod("x1"))
    await pool.settle()
    await pool.assert_consistent()


async def test_permanent_refusal_fails_fast(make_pool, cloud) -> None:
    pool = await make_pool(max_pool_size=0, tuning=tuning(alloc_timeout=60))
    cloud.admin.add_fault("CreateNetworkInterface", "error", code="InvalidParameter", status=400)
    with trio.fail_after(10), pytest.raises(AllocationError, match="InvalidParameter"):
        await pool.ipam.allocate_ips("y0/eth0", pod("y0"))
    assert await pool.cloud_enis() == []


async def test_failed_attach_is_rolled_back(make_pool, cloud) -> None:
    pool = await make_pool(max_pool_size=0, tuning=tuning(alloc_timeout=60))
    cloud.admin.add_fault(
        "AttachNetworkInterface", "error", code="IncorrectInstanceStatus", status=403, times=1
    )
    with trio.fail_after(10), pytest.raises(AllocationError, match="IncorrectInstanceStatus"):
        await pool.ipam.allocate_ips("z0/eth0", pod("z0"))
    state = cloud.state()
    assert [e for e in state["enis"] if e["type"] != "Primary"] == []  # created, then deleted again
    assert cloud.admin.call_count("DeleteNetworkInterface") == 1
    enis, ips = await pool.rows()
    assert enis == [] and ips == []
    with trio.fail_after(10):
        await pool.ipam.allocate_ips("z1/eth0", pod("z1"))
    await pool.assert_consistent()


async def test_metadata_that_never_shows_the_eni_rolls_back(make_pool, cloud) -> None:
    pool = await make_pool(
        max_pool_size=0, tuning=tuning(alloc_timeout=2.0), client_over={"metadata_wait_timeout": 0.5}
    )
    cloud.admin.configure(metadata_delay=30)
    with trio.fail_after(10), pytest.raises(TemporaryError, match="metadata service did not show"):
        await pool.ipam.allocate_ips("md/eth0", pod("md"))
    assert cloud.admin.call_count("DeleteNetworkInterface") >= 1
    cloud.admin.configure(metadata_delay=0)
    await pool.settle()
    await pool.assert_consistent()  # every ENI the attempts made is gone again


def _inhibited(kind: str) -> float | None:
    from prometheus_client import REGISTRY

    return REGISTRY.get_sample_value("terway_ipam_inhibited", {"kind": kind})


async def test_the_inhibited_metric_clears_when_the_inhibits_expire(make_pool, cloud) -> None:
    pool = await make_pool(
        vswitches={ZONE: (VSW_A, VSW_B)}, max_pool_size=0, tuning=tuning(eni_inhibit=0.5, ip_inhibit=0.5)
    )
    cloud.admin.add_fault(
        "CreateNetworkInterface", "error", code="InvalidVSwitchId.IpNotEnough", status=403, times=1
    )
    cloud.admin.add_fault(
        "AttachNetworkInterface", "error", code="EniPerInstanceLimitExceeded", status=403, times=1
    )
    # A answers IpNotEnough (set aside), B's ENI cannot be attached (no new ENI for a while)
    with trio.fail_after(10), pytest.raises(AllocationInhibited):
        await pool.ipam.allocate_ips("m/eth0", pod("m"))
    assert (_inhibited("ip"), _inhibited("eni")) == (1.0, 1.0)
    # nobody asks for a snapshot: the pool's own gauge updates clear both once they expire
    with trio.fail_after(5):
        while (_inhibited("ip"), _inhibited("eni")) != (0.0, 0.0):  # noqa: ASYNC110 - a metric emits no event
            await trio.sleep(0.05)
    await pool.settle()


async def test_vswitches_are_described_one_by_one(make_pool, cloud) -> None:
    pool = await make_pool(vswitches={ZONE: (VSW_A, VSW_B)}, vswitch_selection_policy="most", max_pool_size=0)
    cloud.admin.reset_calls()
    lease = await pool.ipam.allocate_ips("v/eth0", pod("v"))
    assert lease.eni.vswitch_id in (VSW_A, VSW_B)
    # DescribeVSwitches takes one VSwitchId: one call per candidate, both cached
    assert cloud.admin.call_count("DescribeVSwitches") == 2
    assert cloud.admin.results()["DescribeVSwitches"] == {"OK": 2}
    vsw = pool.ipam.snapshot()["vswitches"]
    assert vsw[VSW_A]["available"] is not None and vsw[VSW_B]["available"] is not None
    await pool.settle()
    await pool.assert_consistent()
