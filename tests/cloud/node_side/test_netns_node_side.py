"""NetnsNodeSide driven directly: devices appear and leave, packets cross the VPC namespace."""

from __future__ import annotations

import dataclasses

import pytest
from twdp_nodeside_env import SERVICES, VSW, eni  # tests/cloud/node_side is on sys.path

from terway_agent import datapath as dp
from terway_agent.datapath import _probe, netns

pytestmark = pytest.mark.netns


def _addresses(ns: str, dev: str) -> list[str]:
    from pyroute2 import IPRoute

    with netns.enter(ns):
        ipr = IPRoute()
    try:
        idx = ipr.link_lookup(ifname=dev)
        if not idx:
            return []
        return [
            f"{a.get('address')}/{a['prefixlen']}" for a in ipr.addr("dump", index=idx[0]) if a["family"] == 2
        ]
    finally:
        ipr.close()


def _ipv6_flags(ns: str, dev: str) -> dict[str, int]:
    """{address: IFA flags} of dev's IPv6 addresses, read with pyroute2."""
    from pyroute2 import IPRoute

    with netns.enter(ns):
        ipr = IPRoute()
    try:
        idx = ipr.link_lookup(ifname=dev)[0]
        return {
            a.get("address"): a.get("IFA_FLAGS", a["flags"])
            for a in ipr.addr("dump", index=idx)
            if a["family"] == 10
        }
    finally:
        ipr.close()


def _link_flags(ns: str, dev: str) -> int:
    from pyroute2 import IPRoute

    with netns.enter(ns):
        ipr = IPRoute()
    try:
        return ipr.link("get", ifname=dev)[0]["flags"]
    finally:
        ipr.close()


def test_attach_makes_a_device_detach_takes_it_away(node_side, node_name):
    node = node_name("n1")
    node_side.add_instance("i-1", node, eni(1, device_index=0, primary_ip="192.168.32.10"))
    path = node_side.node_netns("i-1")
    eth0 = dp.get_link("eth0", path)
    assert eth0 is not None and eth0.mac == "00:16:3e:00:00:01" and eth0.up
    assert _addresses(path, "eth0") == ["192.168.32.10/19"]

    second = eni(2, device_index=1, primary_ip="192.168.32.20", secondary=("192.168.32.21",))
    node_side.eni_attached("i-1", second)
    eth1 = dp.get_link("eth1", path)
    assert eth1 is not None and eth1.mac == second.mac
    assert not eth1.up and _addresses(path, "eth1") == []  # like a freshly hot-plugged NIC
    node_side.eni_attached("i-1", second)  # idempotent
    assert dp.get_link("eth1", path).index == eth1.index

    node_side.eni_detached("i-1", second)
    assert dp.get_link("eth1", path) is None
    assert dp.get_link(node_side.vpc_link(second.eni_id), node_side.vpc_netns) is None
    node_side.eni_detached("i-1", second)  # idempotent


def test_detach_finds_the_device_inside_a_pod(node_side, node_name):
    node = node_name("n2")
    node_side.add_instance("i-2", node, eni(3, device_index=0, primary_ip="192.168.32.30"))
    path = node_side.node_netns("i-2")
    exclusive = eni(4, device_index=1, primary_ip="192.168.32.40")
    node_side.eni_attached("i-2", exclusive)
    pod = netns.create(node_name("pod"))
    # exclusive-ENI mode moves the NIC into a pod
    dp.apply(
        dp.Plan((dp.MovedLink(mac=exclusive.mac, name="eth0", netns=pod, home_name="eth1", home_netns=path),))
    )
    assert dp.get_link("eth0", pod).mac == exclusive.mac
    node_side.eni_attached("i-2", exclusive)  # a repeated attach does not disturb it
    assert dp.get_link("eth0", pod).mac == exclusive.mac

    node_side.eni_detached("i-2", exclusive)
    assert dp.get_link("eth0", pod) is None
    assert dp.get_link("eth1", path) is None


def test_node_reaches_the_gateway_and_the_services(node_side, node_name):
    node = node_name("n3")
    node_side.add_instance("i-3", node, eni(5, device_index=0, primary_ip="192.168.32.50"))
    path = node_side.node_netns("i-3")
    assert _probe.ping(path, VSW.gateway4, src="192.168.32.50") > 0
    for service in (SERVICES.metadata, SERVICES.openapi, *SERVICES.extra):
        assert _probe.ping(path, service) > 0
    # a service listening in the VPC namespace answers TCP from the node, like 100.100.100.200
    with _probe.tcp_echo_server(node_side.vpc_netns, SERVICES.metadata, 0) as (_ip, port):
        assert _probe.tcp_echo(path, SERVICES.metadata, port) == "hello from 192.168.32.50\n"


def test_secondary_ip_on_node_a_is_reachable_from_node_b(node_side, node_name):
    a = node_name("na")
    b = node_name("nb")
    node_side.add_instance("i-a", a, eni(6, device_index=0, primary_ip="192.168.32.60"))
    node_side.add_instance("i-b", b, eni(7, device_index=0, primary_ip="192.168.32.70"))
    path_a, path_b = node_side.node_netns("i-a"), node_side.node_netns("i-b")
    secondary = "192.168.32.81"
    second = eni(8, device_index=1, primary_ip="192.168.32.80", secondary=(secondary,))
    node_side.eni_attached("i-a", second)
    eth1 = dp.find_link_by_mac(second.mac, path_a, timeout=2)
    # configured by hand on node A's ENI device, the way a pod-facing datapath would
    table = 1000 + eth1.index
    dp.apply(
        dp.Plan(
            (
                dp.LinkState(name="eth1", netns=path_a),
                dp.Address(dev="eth1", address=f"{secondary}/32", netns=path_a),
                dp.Route(
                    dst="default", gateway=VSW.gateway4, dev="eth1", onlink=True, table=table, netns=path_a
                ),
                dp.Rule(priority=2048, src=f"{secondary}/32", table=table, netns=path_a),
            )
        )
    )
    assert _probe.ping(path_b, secondary, src="192.168.32.70") > 0
    with _probe.tcp_echo_server(path_a, secondary) as (_ip, port):
        assert _probe.tcp_echo(path_b, secondary, port) == "hello from 192.168.32.70\n"

    # the cloud takes the secondary IP away: the VPC forgets where it lives
    node_side.eni_ips_changed("i-a", dataclasses.replace(second, secondary_ipv4s=()))
    with pytest.raises(_probe.ProbeFailed):
        _probe.ping(path_b, secondary, timeout=0.5)
    node_side.eni_ips_changed("i-a", second)
    assert _probe.ping(path_b, secondary) > 0


def test_ipv6_node_reaches_its_gateway_and_the_other_node(node_side, node_name):
    a = node_name("v6a")
    b = node_name("v6b")
    node_side.add_instance(
        "i-6a", a, eni(9, device_index=0, primary_ip="192.168.32.90", ipv6s=("2408:4005:300::90",))
    )
    node_side.add_instance(
        "i-6b", b, eni(10, device_index=0, primary_ip="192.168.32.91", ipv6s=("2408:4005:300::91",))
    )
    path_a = node_side.node_netns("i-6a")
    path_b = node_side.node_netns("i-6b")
    # add_instance returns with the links operational and the addresses out of
    # DAD (a tentative address receives nothing; an inactive veth queue drops)
    for path, ip in ((path_a, "2408:4005:300::90"), (path_b, "2408:4005:300::91")):
        assert _ipv6_flags(path, "eth0")[ip] & 0x40 == 0  # IFA_F_TENTATIVE
        assert _link_flags(path, "eth0") & 0x40  # IFF_RUNNING
    vpc_ends = [node_side.vpc_link(f"eni-twdp{n:04d}") for n in (9, 10)]
    for end in vpc_ends:
        assert _link_flags(node_side.vpc_netns, end) & 0x40
        assert _ipv6_flags(node_side.vpc_netns, end)[VSW.gateway6] & 0x40 == 0
    assert _probe.ping(path_a, VSW.gateway6, timeout=3) > 0
    assert _probe.ping(path_a, "2408:4005:300::91", timeout=3) > 0


def test_trunk_member_eni_gets_no_device_but_its_vlan_is_recorded(node_side, node_name):
    node = node_name("tr")
    node_side.add_instance("i-t", node, eni(11, device_index=0, primary_ip="192.168.32.100"))
    trunk = eni(12, device_index=1, primary_ip="192.168.32.110")
    node_side.eni_attached("i-t", trunk)
    member = eni(13, device_index=5, primary_ip="192.168.32.120", trunk_eni_id=trunk.eni_id, vlan_id=5)
    node_side.eni_attached("i-t", member)
    assert node_side.member_vlans("i-t") == {member.eni_id: 5}
    assert dp.get_link(node_side.vpc_link(member.eni_id), node_side.vpc_netns) is None
    assert dp.get_link("eth5", node_side.node_netns("i-t")) is None
    node_side.eni_detached("i-t", member)
    assert node_side.member_vlans("i-t") == {}


def test_close_removes_what_it_made_and_leaves_the_rest(suffix, node_name):
    from terway_agent.cloud.emulator.netns_node_side import NetnsNodeSide

    existing = netns.create(node_name("pre"))  # an instance namespace that already existed
    side = NetnsNodeSide(vpc_netns=node_name("vpc2"))  # node_name: removed after the test in any case
    side.start([VSW], SERVICES)
    side.start([VSW], SERVICES)  # idempotent
    side.add_instance(
        "i-pre", "twdp-" + suffix + "-pre", eni(14, device_index=0, primary_ip="192.168.32.140")
    )
    side.add_instance("i-new", node_name("new"), eni(15, device_index=0, primary_ip="192.168.32.150"))
    side.add_instance("i-new", node_name("new"), eni(15, device_index=0, primary_ip="192.168.32.150"))
    created = side.node_netns("i-new")
    side.close()
    side.close()
    assert not netns.exists(side.vpc_netns)
    assert not netns.exists(created)
    assert netns.exists(existing)  # not ours: kept, but its ENI went with the VPC
    assert dp.get_link("eth0", existing) is None
