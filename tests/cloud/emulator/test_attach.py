"""Asynchronous attach/detach state transitions; trunk and member ENIs."""

from __future__ import annotations

from alibabacloud_ecs20140526 import models as m
from twemu_helpers import api_error, attach, create_eni, describe_eni, detach, wait_status


def test_attach_and_detach_go_through_transient_states(emulator):
    emulator.admin.configure(attach_latency=0.15, detach_latency=0.15)
    c = emulator.ecs_client()
    eni = create_eni(c, emulator).network_interface_id
    attach(c, emulator, eni, emulator.node1)
    got = describe_eni(c, emulator, eni)
    assert got.status == "Attaching"
    assert got.attachment.instance_id == emulator.node1
    listed = c.describe_network_interfaces(
        m.DescribeNetworkInterfacesRequest(region_id=emulator.region_id, status="Attaching")
    ).body.network_interface_sets.network_interface_set
    assert [e.network_interface_id for e in listed] == [eni]
    assert wait_status(c, emulator, eni, "InUse") == ["Attaching", "InUse"]
    detach(c, emulator, eni, emulator.node1)
    assert describe_eni(c, emulator, eni).status == "Detaching"
    detach(c, emulator, eni, emulator.node1)  # asking again while Detaching is accepted
    assert wait_status(c, emulator, eni, "Available") == ["Detaching", "Available"]


def test_operations_refused_in_transient_states(emulator):
    emulator.admin.configure(attach_latency=5, detach_latency=5)
    c = emulator.ecs_client()
    eni = create_eni(c, emulator).network_interface_id
    attach(c, emulator, eni, emulator.node1)
    for call in (
        lambda: detach(c, emulator, eni, emulator.node1),
        lambda: c.delete_network_interface(
            m.DeleteNetworkInterfaceRequest(region_id=emulator.region_id, network_interface_id=eni)
        ),
        lambda: attach(c, emulator, eni, emulator.node1),
    ):
        assert api_error(call).code == "InvalidOperation.InvalidEniState"
    assert emulator.admin.settle() == 1
    assert describe_eni(c, emulator, eni).status == "InUse"
    detach(c, emulator, eni, emulator.node1)
    err = api_error(
        lambda: c.delete_network_interface(
            m.DeleteNetworkInterfaceRequest(region_id=emulator.region_id, network_interface_id=eni)
        )
    )
    assert err.code == "InvalidOperation.InvalidEniState"
    assert emulator.admin.state()["pending_transitions"] == {eni: "Available"}
    emulator.admin.settle()
    assert describe_eni(c, emulator, eni).status == "Available"


def test_reset_cancels_pending_transitions(emulator):
    emulator.admin.configure(attach_latency=0.2)
    c = emulator.ecs_client()
    eni = create_eni(c, emulator).network_interface_id
    attach(c, emulator, eni, emulator.node1)
    emulator.admin.reset()
    assert describe_eni(c, emulator, eni) is None
    assert emulator.admin.state()["pending_transitions"] == {}


def _trunk_on(c, emulator, instance_id):
    trunk = create_eni(c, emulator, instance_type="Trunk").network_interface_id
    attach(c, emulator, trunk, instance_id)
    return trunk


def test_member_enis_ride_the_trunk(emulator):
    c = emulator.ecs_client()
    trunk = _trunk_on(c, emulator, emulator.node1)
    members = [create_eni(c, emulator, v_switch_id=emulator.vsw_pod_b).network_interface_id for _ in range(2)]
    for member in members:
        attach(c, emulator, member, emulator.node1, trunk=trunk)
    got = [describe_eni(c, emulator, e) for e in members]
    assert [e.type for e in got] == ["Member", "Member"]
    assert [e.status for e in got] == ["InUse", "InUse"]
    assert [e.attachment.trunk_network_interface_id for e in got] == [trunk, trunk]
    # the VLAN id of a member is reported as its DeviceIndex, allocated per trunk from 1
    assert [e.attachment.device_index for e in got] == [1, 2]
    attr = c.describe_network_interface_attribute(
        m.DescribeNetworkInterfaceAttributeRequest(region_id=emulator.region_id, network_interface_id=trunk)
    ).body
    assert attr.type == "Trunk"
    assert attr.attachment.member_network_interface_ids.member_network_interface_id == members
    listed = c.describe_network_interfaces(
        m.DescribeNetworkInterfacesRequest(region_id=emulator.region_id, type="Member")
    ).body.network_interface_sets.network_interface_set
    assert {e.network_interface_id for e in listed} == set(members)
    err = api_error(lambda: detach(c, emulator, trunk, emulator.node1))
    assert err.code == "InvalidOperation.InvalidEniState"
    detach(c, emulator, members[0], emulator.node1, trunk=trunk)
    back = describe_eni(c, emulator, members[0])
    assert (back.type, back.status, back.attachment) == ("Secondary", "Available", None)
    # the freed VLAN id is reused
    attach(c, emulator, members[0], emulator.node1, trunk=trunk)
    assert describe_eni(c, emulator, members[0]).attachment.device_index == 1


def test_member_enis_are_bounded_by_eni_total_quantity(emulator):
    c = emulator.ecs_client()  # "small": EniTotalQuantity 6 - EniQuantity 3 = 3 member ENIs
    trunk = _trunk_on(c, emulator, emulator.small)
    for _ in range(3):
        attach(c, emulator, create_eni(c, emulator).network_interface_id, emulator.small, trunk=trunk)
    extra = create_eni(c, emulator).network_interface_id
    err = api_error(lambda: attach(c, emulator, extra, emulator.small, trunk=trunk))
    assert (err.code, err.status_code) == ("EniPerInstanceLimitExceeded", 403)
    # members do not take ENI slots: primary + trunk + one secondary still fit in 3
    attach(c, emulator, extra, emulator.small)
    assert describe_eni(c, emulator, extra).status == "InUse"


def test_member_needs_an_in_use_trunk_on_that_instance(emulator):
    c = emulator.ecs_client()
    trunk = create_eni(c, emulator, instance_type="Trunk").network_interface_id
    member = create_eni(c, emulator).network_interface_id
    err = api_error(lambda: attach(c, emulator, member, emulator.node1, trunk=trunk))
    assert (err.code, err.status_code) == ("InvalidOperation.InvalidTrunkEni", 403)
    plain = create_eni(c, emulator).network_interface_id
    attach(c, emulator, plain, emulator.node1)
    err = api_error(lambda: attach(c, emulator, member, emulator.node1, trunk=plain))
    assert err.code == "InvalidOperation.InvalidTrunkEni"


def test_member_attach_is_asynchronous_too(emulator):
    c = emulator.ecs_client()
    trunk = _trunk_on(c, emulator, emulator.node1)
    emulator.admin.configure(attach_latency=0.1)
    member = create_eni(c, emulator).network_interface_id
    attach(c, emulator, member, emulator.node1, trunk=trunk)
    assert wait_status(c, emulator, member, "InUse") == ["Attaching", "InUse"]
