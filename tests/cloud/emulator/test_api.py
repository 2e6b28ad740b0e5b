"""Happy paths of every emulated API, through the real SDK, with response shapes
checked against the SDK's response models."""

from __future__ import annotations

import ipaddress

from alibabacloud_ecs20140526 import models as m
from twemu_helpers import assert_shape, attach, call_rpc, create_eni, describe_eni, detach


def test_create_network_interface_full(emulator):
    c = emulator.ecs_client()
    body = create_eni(
        c,
        emulator,
        security_group_ids=[emulator.sg, emulator.sg2],
        secondary_private_ip_address_count=3,
        ipv_6address_count=2,
        tag=[m.CreateNetworkInterfaceRequestTag(key="creator", value="terway")],
        description="interface create by terway",
        network_interface_name="twemu-eni",
        resource_group_id="rg-twemu",
    )
    assert_shape(body)
    assert body.network_interface_id.startswith("eni-bp")
    assert body.status == "Available"
    assert body.type == "Secondary"
    assert body.mac_address.startswith("00:16:3e:")
    assert body.v_switch_id == emulator.vsw_pod_a
    assert body.zone_id == "cn-hangzhou-k"
    assert body.security_group_ids.security_group_id == [emulator.sg, emulator.sg2]
    ips = body.private_ip_sets.private_ip_set
    assert len(ips) == 4
    assert [ip.primary for ip in ips] == [True, False, False, False]
    assert ips[0].private_ip_address == body.private_ip_address
    net = ipaddress.ip_network("172.17.0.0/20")
    assert all(ipaddress.ip_address(ip.private_ip_address) in net for ip in ips)
    assert len({ip.private_ip_address for ip in ips}) == 4
    v6 = [s.ipv_6address for s in body.ipv_6sets.ipv_6set]
    assert len(v6) == 2
    assert all(ipaddress.ip_address(a) in ipaddress.ip_network("2408:4005:300:8c01::/64") for a in v6)
    assert [(t.tag_key, t.tag_value) for t in body.tags.tag] == [("creator", "terway")]
    assert body.description == "interface create by terway"
    assert body.network_interface_name == "twemu-eni"
    assert body.resource_group_id == "rg-twemu"


def test_create_with_explicit_addresses_and_single_security_group(emulator):
    c = emulator.ecs_client()
    body = c.create_network_interface(
        m.CreateNetworkInterfaceRequest(
            region_id=emulator.region_id,
            v_switch_id=emulator.vsw_pod_a,
            security_group_id=emulator.sg,
            primary_ip_address="172.17.0.10",
            private_ip_address=["172.17.0.20", "172.17.0.21"],
            ipv_6address=["2408:4005:300:8c01::a"],
        )
    ).body
    assert body.private_ip_address == "172.17.0.10"
    assert [s.private_ip_address for s in body.private_ip_sets.private_ip_set] == [
        "172.17.0.10",
        "172.17.0.20",
        "172.17.0.21",
    ]
    assert [s.ipv_6address for s in body.ipv_6sets.ipv_6set] == ["2408:4005:300:8c01::a"]


def test_trunk_eni_is_created_with_type_trunk(emulator):
    c = emulator.ecs_client()
    body = create_eni(c, emulator, instance_type="Trunk")
    assert body.type == "Trunk"
    assert describe_eni(c, emulator, body.network_interface_id).type == "Trunk"


def test_attach_detach_delete_lifecycle(emulator):
    c = emulator.ecs_client()
    eni = create_eni(c, emulator, secondary_private_ip_address_count=1)
    attach(c, emulator, eni.network_interface_id, emulator.node1)
    got = describe_eni(c, emulator, eni.network_interface_id)
    assert_shape(
        c.describe_network_interfaces(
            m.DescribeNetworkInterfacesRequest(region_id=emulator.region_id, instance_id=emulator.node1)
        ).body
    )
    assert got.status == "InUse"
    assert got.instance_id == emulator.node1
    assert got.attachment.instance_id == emulator.node1
    assert got.attachment.device_index == 1
    detach(c, emulator, eni.network_interface_id, emulator.node1)
    got = describe_eni(c, emulator, eni.network_interface_id)
    assert got.status == "Available"
    assert got.instance_id == ""
    assert got.attachment is None
    c.delete_network_interface(
        m.DeleteNetworkInterfaceRequest(
            region_id=emulator.region_id, network_interface_id=eni.network_interface_id
        )
    )
    assert describe_eni(c, emulator, eni.network_interface_id) is None


def test_device_indexes_fill_the_lowest_free_slot(emulator):
    c = emulator.ecs_client()
    enis = [create_eni(c, emulator).network_interface_id for _ in range(3)]
    for e in enis:
        attach(c, emulator, e, emulator.node1)
    assert [describe_eni(c, emulator, e).attachment.device_index for e in enis] == [1, 2, 3]
    detach(c, emulator, enis[0], emulator.node1)
    again = create_eni(c, emulator).network_interface_id
    # node1 (g7.xlarge) has 4 ENI slots; the one freed by the detach is reused
    attach(c, emulator, again, emulator.node1)
    assert describe_eni(c, emulator, again).attachment.device_index == 1


def test_describe_network_interface_attribute(emulator):
    c = emulator.ecs_client()
    eni = create_eni(c, emulator, tag=[m.CreateNetworkInterfaceRequestTag(key="k", value="v")])
    attach(c, emulator, eni.network_interface_id, emulator.node1)
    body = c.describe_network_interface_attribute(
        m.DescribeNetworkInterfaceAttributeRequest(
            region_id=emulator.region_id, network_interface_id=eni.network_interface_id
        )
    ).body
    assert_shape(body)
    assert body.network_interface_id == eni.network_interface_id
    assert body.status == "InUse"
    assert body.attachment.instance_id == emulator.node1
    assert body.mac_address == eni.mac_address
    assert body.tags.tag[0].tag_key == "k"


def test_primary_eni_is_listed_for_each_instance(emulator):
    c = emulator.ecs_client()
    body = c.describe_network_interfaces(
        m.DescribeNetworkInterfacesRequest(region_id=emulator.region_id, instance_id=emulator.node1)
    ).body
    [primary] = body.network_interface_sets.network_interface_set
    assert primary.type == "Primary"
    assert primary.status == "InUse"
    assert primary.private_ip_address == "172.16.0.11"
    assert primary.attachment.device_index == 0


def test_assign_and_unassign_private_ips(emulator):
    c = emulator.ecs_client()
    eni = create_eni(c, emulator)
    attach(c, emulator, eni.network_interface_id, emulator.node1)
    body = c.assign_private_ip_addresses(
        m.AssignPrivateIpAddressesRequest(
            region_id=emulator.region_id,
            network_interface_id=eni.network_interface_id,
            secondary_private_ip_address_count=3,
        )
    ).body
    assert_shape(body)
    new = body.assigned_private_ip_addresses_set.private_ip_set.private_ip_address
    assert body.assigned_private_ip_addresses_set.network_interface_id == eni.network_interface_id
    assert len(new) == 3
    explicit = c.assign_private_ip_addresses(
        m.AssignPrivateIpAddressesRequest(
            region_id=emulator.region_id,
            network_interface_id=eni.network_interface_id,
            private_ip_address=["172.17.15.200"],
        )
    ).body
    assert explicit.assigned_private_ip_addresses_set.private_ip_set.private_ip_address == ["172.17.15.200"]
    have = [
        s.private_ip_address
        for s in describe_eni(c, emulator, eni.network_interface_id).private_ip_sets.private_ip_set
    ]
    assert have == [eni.private_ip_address, *new, "172.17.15.200"]
    c.unassign_private_ip_addresses(
        m.UnassignPrivateIpAddressesRequest(
            region_id=emulator.region_id,
            network_interface_id=eni.network_interface_id,
            private_ip_address=[new[0], "172.17.15.200"],
        )
    )
    have = [
        s.private_ip_address
        for s in describe_eni(c, emulator, eni.network_interface_id).private_ip_sets.private_ip_set
    ]
    assert have == [eni.private_ip_address, new[1], new[2]]


def test_assign_and_unassign_ipv6(emulator):
    c = emulator.ecs_client()
    eni = create_eni(c, emulator)
    attach(c, emulator, eni.network_interface_id, emulator.node1)
    body = c.assign_ipv_6addresses(
        m.AssignIpv6AddressesRequest(
            region_id=emulator.region_id, network_interface_id=eni.network_interface_id, ipv_6address_count=2
        )
    ).body
    assert_shape(body)
    assert body.network_interface_id == eni.network_interface_id
    new = body.ipv_6sets.ipv_6address
    assert len(new) == 2
    c.unassign_ipv_6addresses(
        m.UnassignIpv6AddressesRequest(
            region_id=emulator.region_id, network_interface_id=eni.network_interface_id, ipv_6address=[new[0]]
        )
    )
    have = [s.ipv_6address for s in describe_eni(c, emulator, eni.network_interface_id).ipv_6sets.ipv_6set]
    assert have == [new[1]]


def test_describe_instance_types(emulator):
    c = emulator.ecs_client()
    body = c.describe_instance_types(
        m.DescribeInstanceTypesRequest(instance_types=["ecs.g7.xlarge", "ecs.g7.4xlarge", "ecs.g6.large"])
    ).body
    assert_shape(body)
    got = {t.instance_type_id: t for t in body.instance_types.instance_type}
    assert set(got) == {"ecs.g7.xlarge", "ecs.g7.4xlarge", "ecs.g6.large"}
    x = got["ecs.g7.xlarge"]
    assert (x.eni_quantity, x.eni_private_ip_address_quantity, x.eni_ipv_6address_quantity) == (4, 15, 15)
    assert (x.eni_total_quantity, x.eni_trunk_supported) == (20, True)
    assert (got["ecs.g7.4xlarge"].eni_quantity, got["ecs.g7.4xlarge"].eni_private_ip_address_quantity) == (
        8,
        30,
    )
    g6 = got["ecs.g6.large"]
    assert (g6.eni_quantity, g6.eni_private_ip_address_quantity, g6.eni_trunk_supported) == (2, 6, False)


def test_describe_instance_types_covers_the_required_families(emulator):
    c = emulator.ecs_client()
    body = c.describe_instance_types(m.DescribeInstanceTypesRequest()).body
    ids = {t.instance_type_id for t in body.instance_types.instance_type}
    for fam in ("g6", "g7", "c7", "r7"):
        for size in ("large", "xlarge", "2xlarge", "4xlarge", "8xlarge"):
            assert f"ecs.{fam}.{size}" in ids


def test_describe_vswitches_ecs_and_vpc_versions(emulator):
    c = emulator.ecs_client()
    body = c.describe_vswitches(
        m.DescribeVSwitchesRequest(region_id=emulator.region_id, v_switch_id=emulator.vsw_pod_a)
    ).body
    assert_shape(body)
    [vs] = body.v_switches.v_switch
    assert vs.cidr_block == "172.17.0.0/20"
    # 4096 addresses minus the first and the last three
    assert vs.available_ip_address_count == 4092
    assert vs.zone_id == "cn-hangzhou-k"
    assert vs.vpc_id == "vpc-bp1twemutest0000000"
    everything = c.describe_vswitches(
        m.DescribeVSwitchesRequest(
            region_id=emulator.region_id, vpc_id="vpc-bp1twemutest0000000", page_size=50
        )
    ).body
    assert everything.total_count == 5
    # The VPC API version of DescribeVSwitches (2016-04-28) adds the IPv6 CIDR.
    vpc_body = call_rpc(
        c,
        "DescribeVSwitches",
        {"RegionId": emulator.region_id, "VSwitchId": emulator.vsw_pod_a},
        version="2016-04-28",
        protocol="HTTPS",
    )["body"]
    [vpc_vs] = vpc_body["VSwitches"]["VSwitch"]
    assert vpc_vs["Ipv6CidrBlock"] == "2408:4005:300:8c01::/64"
    assert vpc_vs["AvailableIpAddressCount"] == 4092


def test_describe_security_groups(emulator):
    c = emulator.ecs_client()
    body = c.describe_security_groups(m.DescribeSecurityGroupsRequest(region_id=emulator.region_id)).body
    assert_shape(body)
    assert {g.security_group_id for g in body.security_groups.security_group} == {emulator.sg, emulator.sg2}
    one = c.describe_security_groups(
        m.DescribeSecurityGroupsRequest(
            region_id=emulator.region_id, security_group_ids=f'["{emulator.sg2}"]'
        )
    ).body
    assert [g.security_group_name for g in one.security_groups.security_group] == ["pods"]


def test_describe_instances_and_attribute(emulator):
    c = emulator.ecs_client()
    body = c.describe_instances(
        m.DescribeInstancesRequest(region_id=emulator.region_id, instance_ids=f'["{emulator.node1}"]')
    ).body
    assert_shape(body)
    [inst] = body.instances.instance
    assert inst.instance_type == "ecs.g7.xlarge"
    assert inst.vpc_attributes.private_ip_address.ip_address == ["172.16.0.11"]
    assert inst.network_interfaces.network_interface[0].type == "Primary"
    attr = c.describe_instance_attribute(m.DescribeInstanceAttributeRequest(instance_id=emulator.small)).body
    assert_shape(attr)
    assert attr.instance_type == "ecs.twemu-small.large"
    assert attr.status == "Running"
    all_instances = c.describe_instances(
        m.DescribeInstancesRequest(region_id=emulator.region_id, page_size=100)
    ).body
    assert all_instances.total_count == 5


def test_describe_filters(emulator):
    c = emulator.ecs_client()
    a = create_eni(c, emulator, tag=[m.DescribeNetworkInterfacesRequestTag(key="pool", value="a")])
    b = create_eni(
        c,
        emulator,
        v_switch_id=emulator.vsw_pod_b,
        tag=[m.CreateNetworkInterfaceRequestTag(key="pool", value="b")],
    )
    attach(c, emulator, b.network_interface_id, emulator.node1)

    def ids(**kw):
        body = c.describe_network_interfaces(
            m.DescribeNetworkInterfacesRequest(region_id=emulator.region_id, page_size=100, **kw)
        ).body
        return {e.network_interface_id for e in body.network_interface_sets.network_interface_set}

    assert ids(v_switch_id=emulator.vsw_pod_b) == {b.network_interface_id}
    assert ids(status="Available") == {a.network_interface_id}
    assert ids(type="Secondary") == {a.network_interface_id, b.network_interface_id}
    assert ids(tag=[m.DescribeNetworkInterfacesRequestTag(key="pool", value="a")]) == {a.network_interface_id}
    assert ids(primary_ip_address=b.private_ip_address) == {b.network_interface_id}
    assert ids(private_ip_address=[a.private_ip_address]) == {a.network_interface_id}
    assert ids(vpc_id="vpc-bp1twemutest0000000") >= {a.network_interface_id, b.network_interface_id}
    assert len(ids(instance_id=emulator.node1)) == 2  # primary + b
    assert ids(type="Primary") == {
        e.network_interface_id
        for e in c.describe_network_interfaces(
            m.DescribeNetworkInterfacesRequest(region_id=emulator.region_id, status="InUse", page_size=100)
        ).body.network_interface_sets.network_interface_set
        if e.type == "Primary"
    }
