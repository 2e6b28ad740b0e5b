"""Every OpenAPI the core uses, through CloudClient and the real SDK, against the emulator."""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest
import trio
from twcli_helpers import MakeClient

from terway_agent.cloud import errors as E
from terway_agent.cloud._metrics import OPENAPI_LATENCY
from terway_agent.cloud.client import EniInfo
from terway_agent.errors import AllocationError, NotFound, PermanentError


def _sample(api: str, error: str) -> float:
    return OPENAPI_LATENCY.labels(api=api, error=error)._sum.get() + sum(
        b.get() for b in OPENAPI_LATENCY.labels(api=api, error=error)._buckets
    )


async def test_eni_lifecycle_every_api(emulator: Any, make_client: MakeClient) -> None:
    client = make_client()
    before_ok = _sample("CreateNetworkInterface", "")

    eni = await client.create_network_interface(
        emulator.vsw_pod_a,
        [emulator.sg, emulator.sg2],
        secondary_ip_count=3,
        ipv6_count=2,
        tags={"twcli": "lifecycle"},
    )
    assert isinstance(eni, EniInfo)
    assert eni.eni_id.startswith("eni-")
    assert eni.status == "Available" and eni.type == "Secondary"
    assert eni.vswitch_id == emulator.vsw_pod_a and eni.zone == "cn-hangzhou-k"
    assert len(eni.private_ips) == 4 and eni.private_ips[0] == eni.primary_ip
    assert len(eni.secondary_ips) == 3
    assert len(eni.ipv6s) == 2
    assert all(ipaddress.ip_address(ip) in ipaddress.ip_network("172.17.0.0/20") for ip in eni.private_ips)
    assert eni.tag_map == {"creator": "terway", "twcli": "lifecycle"}
    assert set(eni.security_group_ids) == {emulator.sg, emulator.sg2}
    assert eni.instance_id is None and eni.device_index is None
    assert _sample("CreateNetworkInterface", "") > before_ok

    await client.attach_network_interface(eni.eni_id, emulator.node1)
    ready = await client.wait_eni_status(eni.eni_id, "InUse")
    assert ready.instance_id == emulator.node1
    assert ready.device_index == 1

    got4 = await client.assign_private_ip_addresses(eni.eni_id, count=2)
    assert len(got4) == 2
    got6 = await client.assign_ipv6_addresses(eni.eni_id, count=1)
    assert len(got6) == 1
    exact = str(ipaddress.ip_address("172.17.3.3"))
    assert await client.assign_private_ip_addresses(eni.eni_id, ips=[exact]) == (exact,)

    attr = await client.describe_network_interface_attribute(eni.eni_id)
    assert set(got4) | {exact} <= set(attr.private_ips)
    assert set(got6) <= set(attr.ipv6s)
    assert attr.mac == eni.mac

    await client.unassign_private_ip_addresses(eni.eni_id, [*got4, exact])
    await client.unassign_ipv6_addresses(eni.eni_id, list(got6))
    attr = await client.describe_network_interface_attribute(eni.eni_id)
    assert not (set(got4) | {exact}) & set(attr.private_ips)
    assert not set(got6) & set(attr.ipv6s)
    # unassigning what is already gone is success (idempotent)
    await client.unassign_private_ip_addresses(eni.eni_id, list(got4))
    await client.unassign_ipv6_addresses(eni.eni_id, list(got6))

    mine = await client.describe_network_interfaces(instance_id=emulator.node1)
    assert {e.eni_id for e in mine} >= {eni.eni_id}
    assert [e.type for e in mine if e.eni_id != eni.eni_id] == ["Primary"]
    tagged = await client.describe_network_interfaces(tags={"twcli": "lifecycle"}, status="InUse")
    assert [e.eni_id for e in tagged] == [eni.eni_id]

    await client.detach_network_interface(eni.eni_id, emulator.node1)
    await client.wait_eni_status(eni.eni_id, "Available")
    await client.delete_network_interface(eni.eni_id)
    assert await client.describe_network_interfaces(eni_ids=[eni.eni_id]) == []
    # deleting/detaching what is gone is success
    await client.delete_network_interface(eni.eni_id)
    await client.detach_network_interface(eni.eni_id, emulator.node1)
    with pytest.raises(E.CloudNotFound) as info:
        await client.describe_network_interface_attribute(eni.eni_id)
    assert info.value.code == "InvalidEniId.NotFound" and info.value.request_id


async def test_describe_paginates_and_filters(emulator: Any, make_client: MakeClient) -> None:
    client = make_client()
    created: list[EniInfo] = []

    async def one() -> None:
        created.append(
            await client.create_network_interface(emulator.vsw_pod_b, [emulator.sg], tags={"twcli": "page"})
        )

    async with trio.open_nursery() as nursery:
        for _ in range(130):
            nursery.start_soon(one)
    emulator.admin.reset_calls()
    found = await client.describe_network_interfaces(tags={"twcli": "page"})
    assert sorted(e.eni_id for e in found) == sorted(e.eni_id for e in created)
    assert emulator.admin.call_count("DescribeNetworkInterfaces") == 2  # 100 + 30

    ids = [e.eni_id for e in created]
    emulator.admin.reset_calls()
    by_id = await client.describe_network_interfaces(eni_ids=ids)
    assert sorted(e.eni_id for e in by_id) == sorted(ids)
    assert emulator.admin.call_count("DescribeNetworkInterfaces") == 2  # ids split 100 + 30

    by_vsw = await client.describe_network_interfaces(vswitch_id=emulator.vsw_pod_b, status="Available")
    assert len(by_vsw) == 130
    assert await client.describe_network_interfaces(vswitch_id=emulator.vsw_pod_b, status="InUse") == []
    assert await client.describe_network_interfaces(eni_ids=[]) == []


async def test_describe_instance_types_and_vswitches(emulator: Any, make_client: MakeClient) -> None:
    client = make_client()
    types = await client.describe_instance_types(["ecs.g7.xlarge", "ecs.twemu-small.large"])
    by_name = {t.instance_type: t for t in types}
    assert by_name["ecs.twemu-small.large"].eni_quantity == 3
    assert by_name["ecs.twemu-small.large"].eni_private_ip_quantity == 4
    assert by_name["ecs.twemu-small.large"].eni_total_quantity == 6
    assert by_name["ecs.twemu-small.large"].trunk_supported is True
    assert by_name["ecs.g7.xlarge"].eni_quantity == 4
    everything = await client.describe_instance_types()
    assert len(everything) == len({t.instance_type for t in everything}) >= 5
    assert {"ecs.g7.xlarge", "ecs.g6.large", "ecs.twemu-tiny.small"} <= {t.instance_type for t in everything}

    vsws = await client.describe_vswitches()
    assert {v.id for v in vsws} == {
        emulator.vsw_node,
        emulator.vsw_pod_a,
        emulator.vsw_pod_b,
        emulator.vsw_tiny,
        emulator.vsw_other_zone,
    }
    tiny = await client.describe_vswitch(emulator.vsw_tiny)
    assert (tiny.cidr4, tiny.zone, tiny.available_ip_count) == ("172.18.0.0/29", "cn-hangzhou-k", 4)
    zone_j = await client.describe_vswitches(zone_id="cn-hangzhou-j")
    assert [v.id for v in zone_j] == [emulator.vsw_other_zone]
    with pytest.raises(E.CloudNotFound):
        await client.describe_vswitch("vsw-twcli-nope")


async def test_typed_errors_and_no_retry(emulator: Any, make_client: MakeClient) -> None:
    client = make_client()

    # the /29 vSwitch has 4 usable addresses
    emulator.admin.reset_calls()
    with pytest.raises(E.IpNotEnough) as info:
        await client.create_network_interface(emulator.vsw_tiny, [emulator.sg], secondary_ip_count=9)
    err = info.value
    assert isinstance(err, AllocationError) and E.is_ip_not_enough(err)
    assert err.code == "InvalidVSwitchId.IpNotEnough"
    assert err.api == "CreateNetworkInterface" and err.request_id and err.http_status == 403
    assert emulator.admin.call_count("CreateNetworkInterface") == 1  # never retried

    with pytest.raises(E.CloudNotFound) as nf:
        await client.create_network_interface("vsw-twcli-missing", [emulator.sg])
    assert E.is_invalid_vswitch(nf.value) and isinstance(nf.value, NotFound)

    emulator.admin.reset_calls()
    with pytest.raises(E.CloudInvalidParameter) as bad:
        await client.create_network_interface(emulator.vsw_pod_a, [f"sg-twcli-{i}" for i in range(6)])
    assert bad.value.code.startswith("InvalidParameter") and isinstance(bad.value, PermanentError)
    assert emulator.admin.call_count("CreateNetworkInterface") == 1

    # ecs.twemu-small.large: 4 IPv4 per ENI
    eni = await client.create_network_interface(emulator.vsw_pod_a, [emulator.sg], secondary_ip_count=3)
    await client.attach_network_interface(eni.eni_id, emulator.small)
    await client.wait_eni_status(eni.eni_id, "InUse")
    with pytest.raises(E.IpNotEnough) as quota:
        await client.assign_private_ip_addresses(eni.eni_id, count=1)
    assert quota.value.code == "QuotaExceeded.PrivateIpAddress"
    assert isinstance(quota.value, AllocationError)
    with pytest.raises(E.IpCountExceeded) as v6quota:
        await client.assign_ipv6_addresses(eni.eni_id, count=5)
    assert v6quota.value.code == "InvalidOperation.Ipv6CountExceeded"

    # an ENI holding more addresses than the instance type allows cannot be attached
    big = await client.create_network_interface(emulator.vsw_pod_a, [emulator.sg], secondary_ip_count=5)
    with pytest.raises(E.IpCountExceeded) as count:
        await client.attach_network_interface(big.eni_id, emulator.small)
    assert count.value.code == "InvalidOperation.Ipv4CountExceeded"

    # ecs.twemu-small.large: 3 ENIs incl. the primary
    extra = await client.create_network_interface(emulator.vsw_pod_a, [emulator.sg])
    await client.attach_network_interface(extra.eni_id, emulator.small)
    third = await client.create_network_interface(emulator.vsw_pod_a, [emulator.sg])
    with pytest.raises(E.EniPerInstanceLimitExceeded) as limit:
        await client.attach_network_interface(third.eni_id, emulator.small)
    assert isinstance(limit.value, AllocationError)

    with pytest.raises(E.CloudInvalidState) as state:
        await client.delete_network_interface(extra.eni_id)  # still attached
    assert state.value.code == "InvalidOperation.InvalidEniState"
