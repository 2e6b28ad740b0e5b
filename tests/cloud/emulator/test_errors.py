"""Every error code the emulator answers, with its HTTP status, through the SDK."""

from __future__ import annotations

import pytest
from alibabacloud_ecs20140526 import models as m
from alibabacloud_tea_openapi.exceptions import ClientException
from twemu_helpers import api_error, attach, call_rpc, create_eni, describe_eni, detach


def _check(err, code, status):
    assert isinstance(err, ClientException), err
    assert (err.code, err.status_code) == (code, status), err
    assert err.request_id and err.request_id != "None"
    assert err.data["HostId"]
    assert err.data["Recommend"]
    assert err.data["Message"]


def test_missing_parameter(emulator):
    c = emulator.ecs_client()
    err = api_error(
        lambda: c.create_network_interface(
            m.CreateNetworkInterfaceRequest(region_id=emulator.region_id, security_group_id=emulator.sg)
        )
    )
    _check(err, "MissingParameter", 400)
    assert "VSwitchId" in err.data["Message"]
    err = api_error(lambda: c.describe_network_interfaces(m.DescribeNetworkInterfacesRequest()))
    _check(err, "MissingParameter", 400)
    assert "RegionId" in err.data["Message"]
    err = api_error(
        lambda: c.create_network_interface(
            m.CreateNetworkInterfaceRequest(region_id=emulator.region_id, v_switch_id=emulator.vsw_pod_a)
        )
    )
    _check(err, "MissingParameter", 400)
    assert "SecurityGroupId" in err.data["Message"]


def test_invalid_parameter(emulator):
    c = emulator.ecs_client()
    err = api_error(lambda: create_eni(c, emulator, instance_type="Fancy"))
    _check(err, "InvalidParameter", 400)
    assert "InstanceType" in err.data["Message"]
    err = api_error(
        lambda: c.describe_network_interfaces(
            m.DescribeNetworkInterfacesRequest(region_id=emulator.region_id, status="Sleeping")
        )
    )
    _check(err, "InvalidParameter", 400)
    eni = create_eni(c, emulator)
    err = api_error(
        lambda: c.assign_private_ip_addresses(
            m.AssignPrivateIpAddressesRequest(
                region_id=emulator.region_id,
                network_interface_id=eni.network_interface_id,
                private_ip_address=[f"172.17.1.{i}" for i in range(1, 12)],
            )
        )
    )
    _check(err, "InvalidParameter", 400)
    assert "at most 10" in err.data["Message"]
    err = api_error(
        lambda: c.describe_network_interfaces(
            m.DescribeNetworkInterfacesRequest(region_id=emulator.region_id, max_results=501)
        )
    )
    _check(err, "InvalidParameter", 400)


def test_unknown_action_and_region(emulator):
    c = emulator.ecs_client()
    err = api_error(
        lambda: call_rpc(c, "DescribeUnicorns", {"RegionId": "cn-hangzhou"}, version="2014-05-26")
    )
    _check(err, "InvalidAction.NotFound", 404)
    err = api_error(
        lambda: c.describe_network_interfaces(m.DescribeNetworkInterfacesRequest(region_id="mars-1"))
    )
    _check(err, "InvalidRegionId.NotFound", 404)


def test_not_found_codes(emulator):
    c = emulator.ecs_client()
    _check(
        api_error(lambda: create_eni(c, emulator, v_switch_id="vsw-nope")), "InvalidVSwitchId.NotFound", 404
    )
    _check(
        api_error(lambda: create_eni(c, emulator, security_group_ids=["sg-nope"])),
        "InvalidSecurityGroupId.NotFound",
        404,
    )
    _check(api_error(lambda: attach(c, emulator, "eni-nope", emulator.node1)), "InvalidEniId.NotFound", 404)
    eni = create_eni(c, emulator)
    _check(
        api_error(lambda: attach(c, emulator, eni.network_interface_id, "i-nope")),
        "InvalidEcsId.NotFound",
        404,
    )
    _check(
        api_error(
            lambda: c.delete_network_interface(
                m.DeleteNetworkInterfaceRequest(region_id=emulator.region_id, network_interface_id="eni-nope")
            )
        ),
        "InvalidEniId.NotFound",
        404,
    )
    _check(
        api_error(
            lambda: c.describe_network_interface_attribute(
                m.DescribeNetworkInterfaceAttributeRequest(
                    region_id=emulator.region_id, network_interface_id="eni-x"
                )
            )
        ),
        "InvalidEniId.NotFound",
        404,
    )
    _check(
        api_error(
            lambda: c.describe_instance_attribute(m.DescribeInstanceAttributeRequest(instance_id="i-nope"))
        ),
        "InvalidInstanceId.NotFound",
        404,
    )


def test_invalid_eni_state(emulator):
    c = emulator.ecs_client()
    eni = create_eni(c, emulator)
    attach(c, emulator, eni.network_interface_id, emulator.node1)
    err = api_error(
        lambda: c.delete_network_interface(
            m.DeleteNetworkInterfaceRequest(
                region_id=emulator.region_id, network_interface_id=eni.network_interface_id
            )
        )
    )
    _check(err, "InvalidOperation.InvalidEniState", 403)
    _check(
        api_error(lambda: attach(c, emulator, eni.network_interface_id, emulator.g6)),
        "InvalidOperation.InvalidEniState",
        403,
    )
    other = create_eni(c, emulator)
    err = api_error(lambda: detach(c, emulator, other.network_interface_id, emulator.node1))
    _check(err, "InvalidOperation.InvalidEniState", 403)


def test_detach_primary_not_allowed(emulator):
    c = emulator.ecs_client()
    primary = c.describe_network_interfaces(
        m.DescribeNetworkInterfacesRequest(
            region_id=emulator.region_id, instance_id=emulator.node1, type="Primary"
        )
    ).body.network_interface_sets.network_interface_set[0]
    err = api_error(lambda: detach(c, emulator, primary.network_interface_id, emulator.node1))
    _check(err, "InvalidOperation.DetachPrimaryEniNotAllowed", 403)


def test_incorrect_instance_status(emulator):
    c = emulator.ecs_client()
    eni = create_eni(c, emulator)
    emulator.admin.set_instance_status(emulator.node1, "Stopping")
    err = api_error(lambda: attach(c, emulator, eni.network_interface_id, emulator.node1))
    _check(err, "IncorrectInstanceStatus", 403)
    emulator.admin.set_instance_status(emulator.node1, "Stopped")
    attach(c, emulator, eni.network_interface_id, emulator.node1)
    assert describe_eni(c, emulator, eni.network_interface_id).status == "InUse"


def test_zone_mismatch(emulator):
    c = emulator.ecs_client()
    eni = create_eni(c, emulator)
    err = api_error(lambda: attach(c, emulator, eni.network_interface_id, emulator.other_zone))
    _check(err, "InvalidOperation.AvailabilityZoneMismatch", 403)


def test_explicit_address_errors(emulator):
    c = emulator.ecs_client()
    err = api_error(
        lambda: create_eni(c, emulator, primary_ip_address="172.16.0.11", v_switch_id=emulator.vsw_node)
    )
    _check(err, "InvalidPrivateIpAddress.Duplicated", 400)
    err = api_error(lambda: create_eni(c, emulator, primary_ip_address="10.9.9.9"))
    _check(err, "InvalidPrivateIpAddress.Malformed", 400)
    # the first address and the last three of a vSwitch are reserved
    for reserved in ("172.17.0.0", "172.17.15.253", "172.17.15.254", "172.17.15.255"):
        err = api_error(lambda r=reserved: create_eni(c, emulator, primary_ip_address=r))
        _check(err, "InvalidPrivateIpAddress.Malformed", 400)
    eni = create_eni(c, emulator)
    err = api_error(
        lambda: c.unassign_private_ip_addresses(
            m.UnassignPrivateIpAddressesRequest(
                region_id=emulator.region_id,
                network_interface_id=eni.network_interface_id,
                private_ip_address=["172.17.3.3"],
            )
        )
    )
    _check(err, "InvalidIp.IpUnassigned", 403)
    err = api_error(
        lambda: c.unassign_private_ip_addresses(
            m.UnassignPrivateIpAddressesRequest(
                region_id=emulator.region_id,
                network_interface_id=eni.network_interface_id,
                private_ip_address=[eni.private_ip_address],
            )
        )
    )
    _check(err, "InvalidIp.IpUnassigned", 403)


def test_ipv6_not_enabled_on_vswitch(emulator):
    c = emulator.ecs_client()
    err = api_error(lambda: create_eni(c, emulator, v_switch_id=emulator.vsw_tiny, ipv_6address_count=1))
    _check(err, "InvalidVSwitchId.Ipv6NotTurnOn", 403)


def test_trunk_not_supported_by_instance_type(emulator):
    c = emulator.ecs_client()
    trunk = create_eni(c, emulator, instance_type="Trunk")
    err = api_error(lambda: attach(c, emulator, trunk.network_interface_id, emulator.g6))
    _check(err, "InvalidOperation.EniTrunkNotSupported", 403)


@pytest.mark.parametrize("signature_algorithm", [None, "v2"])
def test_errors_are_the_same_with_both_signature_versions(emulator, signature_algorithm):
    overrides = {"signature_algorithm": signature_algorithm} if signature_algorithm else {}
    c = emulator.ecs_client(**overrides)
    err = api_error(lambda: attach(c, emulator, "eni-nope", emulator.node1))
    _check(err, "InvalidEniId.NotFound", 404)


def test_describe_vswitches_takes_one_vswitch_id(emulator):
    # VSwitchId is a single id: "a,b" is looked up as one vSwitch that does not exist
    c = emulator.ecs_client()
    both = f"{emulator.vsw_pod_a},{emulator.vsw_pod_b}"
    err = api_error(
        lambda: c.describe_vswitches(
            m.DescribeVSwitchesRequest(region_id=emulator.region_id, v_switch_id=both)
        )
    )
    _check(err, "InvalidVSwitchId.NotFound", 404)
    assert both in err.data["Message"]
    # the VPC API version as well
    err = api_error(
        lambda: call_rpc(
            c,
            "DescribeVSwitches",
            {"RegionId": emulator.region_id, "VSwitchId": both},
            version="2016-04-28",
            protocol="HTTPS",
        )
    )
    _check(err, "InvalidVSwitchId.NotFound", 404)
    # one id still works
    [vs] = c.describe_vswitches(
        m.DescribeVSwitchesRequest(region_id=emulator.region_id, v_switch_id=emulator.vsw_pod_b)
    ).body.v_switches.v_switch
    assert vs.v_switch_id == emulator.vsw_pod_b
