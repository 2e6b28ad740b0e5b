"""NextToken/MaxResults and PageNumber/PageSize pagination."""

from __future__ import annotations

from alibabacloud_ecs20140526 import models as m
from twemu_helpers import api_error, create_eni


def test_describe_network_interfaces_next_token(emulator):
    c = emulator.ecs_client()
    created = {create_eni(c, emulator).network_interface_id for _ in range(25)}
    seen, token, pages = [], None, []
    while True:
        body = c.describe_network_interfaces(
            m.DescribeNetworkInterfacesRequest(
                region_id=emulator.region_id, type="Secondary", max_results=10, next_token=token
            )
        ).body
        got = [e.network_interface_id for e in body.network_interface_sets.network_interface_set]
        pages.append(len(got))
        seen += got
        token = body.next_token
        if not token:
            break
    assert pages == [10, 10, 5]
    assert len(seen) == len(set(seen)) == 25
    assert set(seen) == created


def test_describe_network_interfaces_page_number(emulator):
    c = emulator.ecs_client()
    created = [create_eni(c, emulator).network_interface_id for _ in range(12)]

    def page(n):
        return c.describe_network_interfaces(
            m.DescribeNetworkInterfacesRequest(
                region_id=emulator.region_id, type="Secondary", page_number=n, page_size=5
            )
        ).body

    bodies = [page(n) for n in (1, 2, 3, 4)]
    assert [b.total_count for b in bodies] == [12] * 4
    assert [b.page_number for b in bodies] == [1, 2, 3, 4]
    ids = [[e.network_interface_id for e in b.network_interface_sets.network_interface_set] for b in bodies]
    assert ids == [created[0:5], created[5:10], created[10:12], []]


def test_bad_next_token(emulator):
    c = emulator.ecs_client()
    err = api_error(
        lambda: c.describe_network_interfaces(
            m.DescribeNetworkInterfacesRequest(region_id=emulator.region_id, next_token="garbage!")
        )
    )
    assert (err.code, err.status_code) == ("InvalidParameter", 400)


def test_describe_instance_types_pages(emulator):
    c = emulator.ecs_client()
    everything = c.describe_instance_types(m.DescribeInstanceTypesRequest()).body
    assert everything.next_token == ""
    total = len(everything.instance_types.instance_type)
    seen, token = [], None
    while True:
        body = c.describe_instance_types(m.DescribeInstanceTypesRequest(max_results=7, next_token=token)).body
        seen += [t.instance_type_id for t in body.instance_types.instance_type]
        token = body.next_token
        if not token:
            break
    assert len(seen) == total == len(set(seen))


def test_vswitches_and_security_groups_pages(emulator):
    c = emulator.ecs_client()
    first = c.describe_vswitches(m.DescribeVSwitchesRequest(region_id=emulator.region_id, page_size=2)).body
    last = c.describe_vswitches(
        m.DescribeVSwitchesRequest(region_id=emulator.region_id, page_size=2, page_number=3)
    ).body
    assert (first.total_count, len(first.v_switches.v_switch), len(last.v_switches.v_switch)) == (5, 2, 1)
    sg1 = c.describe_security_groups(
        m.DescribeSecurityGroupsRequest(region_id=emulator.region_id, max_results=1)
    ).body
    sg2 = c.describe_security_groups(
        m.DescribeSecurityGroupsRequest(
            region_id=emulator.region_id, max_results=1, next_token=sg1.next_token
        )
    ).body
    assert sg2.next_token == ""
    assert {
        sg1.security_groups.security_group[0].security_group_id,
        sg2.security_groups.security_group[0].security_group_id,
    } == {
        emulator.sg,
        emulator.sg2,
    }
