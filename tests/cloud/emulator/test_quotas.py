"""vSwitch address accounting and exhaustion; per-instance-type quotas."""

from __future__ import annotations

import ipaddress

from alibabacloud_ecs20140526 import models as m
from twemu_helpers import api_error, attach, create_eni, describe_eni


def _available(c, emulator, vsw):
    body = c.describe_vswitches(
        m.DescribeVSwitchesRequest(region_id=emulator.region_id, v_switch_id=vsw)
    ).body
    return body.v_switches.v_switch[0].available_ip_address_count


def _assign(c, emulator, eni_id, n):
    return c.assign_private_ip_addresses(
        m.AssignPrivateIpAddressesRequest(
            region_id=emulator.region_id, network_interface_id=eni_id, secondary_private_ip_address_count=n
        )
    ).body.assigned_private_ip_addresses_set.private_ip_set.private_ip_address


def test_small_vswitch_exhaustion_and_accounting(emulator):
    c = emulator.ecs_client()
    tiny = emulator.vsw_tiny  # 172.18.0.0/29: 8 addresses, 4 reserved
    assert _available(c, emulator, tiny) == 4
    a = create_eni(c, emulator, v_switch_id=tiny, secondary_private_ip_address_count=1)
    assert _available(c, emulator, tiny) == 2
    usable = {str(ipaddress.ip_address("172.18.0.0") + i) for i in range(1, 5)}
    assert {s.private_ip_address for s in a.private_ip_sets.private_ip_set} <= usable
    err = api_error(lambda: create_eni(c, emulator, v_switch_id=tiny, secondary_private_ip_address_count=2))
    assert (err.code, err.status_code) == ("InvalidVSwitchId.IpNotEnough", 403)
    assert _available(c, emulator, tiny) == 2  # nothing was taken by the failed call
    _assign(c, emulator, a.network_interface_id, 2)
    assert _available(c, emulator, tiny) == 0
    err = api_error(lambda: _assign(c, emulator, a.network_interface_id, 1))
    assert err.code == "InvalidVSwitchId.IpNotEnough"
    have = [
        s.private_ip_address
        for s in describe_eni(c, emulator, a.network_interface_id).private_ip_sets.private_ip_set
    ]
    assert set(have) == usable
    c.unassign_private_ip_addresses(
        m.UnassignPrivateIpAddressesRequest(
            region_id=emulator.region_id,
            network_interface_id=a.network_interface_id,
            private_ip_address=have[1:3],
        )
    )
    assert _available(c, emulator, tiny) == 2
    c.delete_network_interface(
        m.DeleteNetworkInterfaceRequest(
            region_id=emulator.region_id, network_interface_id=a.network_interface_id
        )
    )
    assert _available(c, emulator, tiny) == 4


def test_addresses_are_unique_across_a_vswitch(emulator):
    c = emulator.ecs_client()
    seen = []
    for _ in range(20):
        eni = create_eni(c, emulator, v_switch_id=emulator.vsw_pod_b, secondary_private_ip_address_count=9)
        seen += [s.private_ip_address for s in eni.private_ip_sets.private_ip_set]
    assert len(seen) == len(set(seen)) == 200
    assert _available(c, emulator, emulator.vsw_pod_b) == 4092 - 200


def test_ipv6_exhaustion_on_a_small_ipv6_cidr(emulator):
    # /124: 16 addresses, the first and the last nine reserved -> 6 usable
    emulator.admin.add_vswitch(
        id="vsw-twemu-v6small",
        zone="cn-hangzhou-k",
        cidr="172.20.0.0/24",
        ipv6_cidr="2408:4005:300:8c10::/124",
    )
    c = emulator.ecs_client()
    eni = create_eni(c, emulator, v_switch_id="vsw-twemu-v6small", ipv_6address_count=6)
    got = [s.ipv_6address for s in eni.ipv_6sets.ipv_6set]
    base = int(ipaddress.IPv6Address("2408:4005:300:8c10::"))
    assert {int(ipaddress.IPv6Address(a)) - base for a in got} == {1, 2, 3, 4, 5, 6}
    err = api_error(lambda: create_eni(c, emulator, v_switch_id="vsw-twemu-v6small", ipv_6address_count=1))
    assert err.code == "InvalidVSwitchId.IpNotEnough"


def test_eni_per_instance_limit(emulator):
    c = emulator.ecs_client()  # "small": EniQuantity 3, the primary counts
    enis = [create_eni(c, emulator).network_interface_id for _ in range(3)]
    attach(c, emulator, enis[0], emulator.small)
    attach(c, emulator, enis[1], emulator.small)
    err = api_error(lambda: attach(c, emulator, enis[2], emulator.small))
    assert (err.code, err.status_code) == ("EniPerInstanceLimitExceeded", 403)
    assert describe_eni(c, emulator, enis[2]).status == "Available"


def test_private_ip_quota_per_eni(emulator):
    c = emulator.ecs_client()  # "small": 4 private IPv4 per ENI, primary included
    eni = create_eni(c, emulator).network_interface_id
    attach(c, emulator, eni, emulator.small)
    _assign(c, emulator, eni, 3)
    err = api_error(lambda: _assign(c, emulator, eni, 1))
    assert (err.code, err.status_code) == ("QuotaExceeded.PrivateIpAddress", 403)


def test_ipv6_quota_per_eni(emulator):
    c = emulator.ecs_client()  # "small": 4 IPv6 per ENI
    eni = create_eni(c, emulator).network_interface_id
    attach(c, emulator, eni, emulator.small)

    def assign6(n):
        return c.assign_ipv_6addresses(
            m.AssignIpv6AddressesRequest(
                region_id=emulator.region_id, network_interface_id=eni, ipv_6address_count=n
            )
        )

    assign6(4)
    err = api_error(lambda: assign6(1))
    assert (err.code, err.status_code) == ("InvalidOperation.Ipv6CountExceeded", 403)


def test_attach_checks_the_ip_count_against_the_instance_type(emulator):
    c = emulator.ecs_client()
    v4 = create_eni(c, emulator, secondary_private_ip_address_count=4).network_interface_id  # 5 > 4
    err = api_error(lambda: attach(c, emulator, v4, emulator.small))
    assert (err.code, err.status_code) == ("InvalidOperation.Ipv4CountExceeded", 403)
    v6 = create_eni(c, emulator, ipv_6address_count=2).network_interface_id
    err = api_error(lambda: attach(c, emulator, v6, emulator.g6))  # g6.large: 1 IPv6 per ENI
    assert (err.code, err.status_code) == ("InvalidOperation.Ipv6CountExceeded", 403)
    attach(c, emulator, v4, emulator.node1)  # g7.xlarge: 15 per ENI


def test_at_most_49_secondary_addresses_at_create(emulator):
    c = emulator.ecs_client()
    err = api_error(lambda: create_eni(c, emulator, secondary_private_ip_address_count=50))
    assert (err.code, err.status_code) == ("QuotaExceeded.PrivateIpAddress", 403)
    eni = create_eni(c, emulator, secondary_private_ip_address_count=49)
    assert len(eni.private_ip_sets.private_ip_set) == 50


def test_instance_type_quotas_match_describe_instance_types(emulator):
    """The quotas enforced are the ones DescribeInstanceTypes reports (g6.large: 2 ENIs)."""
    c = emulator.ecs_client()
    it = c.describe_instance_types(m.DescribeInstanceTypesRequest(instance_types=["ecs.g6.large"])).body
    quota = it.instance_types.instance_type[0].eni_quantity
    enis = [create_eni(c, emulator).network_interface_id for _ in range(quota)]
    for e in enis[: quota - 1]:
        attach(c, emulator, e, emulator.g6)
    assert api_error(lambda: attach(c, emulator, enis[-1], emulator.g6)).code == "EniPerInstanceLimitExceeded"
