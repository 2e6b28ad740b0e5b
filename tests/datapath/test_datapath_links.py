"""Links: an existing device found by MAC moved into a pod and back (exclusive ENI),
waiting for hot-plugged devices, veth attribute changes."""

from __future__ import annotations

import os
import threading
import time

import pytest
from twdp_topology import GATEWAY4, VSWITCH_PREFIX  # tests/datapath is on sys.path

from terway_agent import datapath as dp
from terway_agent.datapath import _probe
from terway_agent.errors import InvalidInput, NotFound

pytestmark = pytest.mark.netns

ENI2_MAC = "02:16:3e:10:00:02"
EXCLUSIVE_IP = "192.168.0.20"


def _attach_eni(shared_eni, mac: str, vpc_name: str, node_name: str, ip: str | None = None) -> None:
    """Hot-plug an "ENI": a veth from the VPC namespace whose node end has ``mac``."""
    objs: list[dp.PlanObject] = [
        dp.Veth(
            name=vpc_name, netns=shared_eni.vpc, peer_name=node_name, peer_netns=shared_eni.node, peer_mac=mac
        ),
        dp.LinkState(name=vpc_name, netns=shared_eni.vpc),
    ]
    if ip is not None:
        objs += [
            dp.Route(dst=f"{ip}/32", dev=vpc_name, netns=shared_eni.vpc),
            dp.Neighbour(dev=vpc_name, ip=ip, lladdr=mac, netns=shared_eni.vpc),
        ]
    dp.apply(dp.Plan(tuple(objs)))


def _exclusive_plan(pod: str, node: str) -> dp.Plan:
    return dp.Plan(
        (
            dp.MovedLink(mac=ENI2_MAC, name="eth0", netns=pod, home_name="eth2", home_netns=node),
            dp.LinkState(name="eth0", netns=pod),
            dp.Address(dev="eth0", address=f"{EXCLUSIVE_IP}/{VSWITCH_PREFIX}", netns=pod),
            dp.Route(dst="default", gateway=GATEWAY4, dev="eth0", onlink=True, netns=pod),
        )
    )


def test_exclusive_eni_moves_in_carries_packets_and_goes_home(shared_eni, snapshot):
    _attach_eni(shared_eni, ENI2_MAC, "twdpvpc2", "eth2", EXCLUSIVE_IP)
    node_before = snapshot(shared_eni.node)
    pod = shared_eni.make_netns("ex")
    plan = _exclusive_plan(pod, shared_eni.node)

    first = dp.apply(plan)
    assert [o.kind for o in first.created] == ["moved_link", "link_state", "address", "route"]
    eth0 = dp.get_link("eth0", pod)
    assert eth0 is not None and eth0.mac == ENI2_MAC and eth0.up
    assert dp.get_link("eth2", shared_eni.node) is None
    assert _probe.ping(pod, GATEWAY4, src=EXCLUSIVE_IP) > 0

    assert dp.apply(plan).unchanged == plan.objects
    assert dp.check(plan) == []

    removed = dp.remove(plan)
    assert [o.kind for o in removed.removed] == ["moved_link"]
    assert {o.kind for o in removed.implied} == {"address", "route"}
    back = dp.get_link("eth2", shared_eni.node)
    assert back is not None and back.mac == ENI2_MAC and not back.up  # like a freshly plugged NIC
    assert dp.get_link("eth0", pod) is None
    assert snapshot(shared_eni.node) == node_before  # no address or route left on it

    again = dp.remove(plan)
    assert not again.removed and again.absent
    # and it can go into a pod again
    assert dp.apply(plan).created
    assert _probe.ping(pod, GATEWAY4) > 0


def test_moved_link_waits_for_a_hot_plugged_device(shared_eni):
    pod = shared_eni.make_netns("hp")
    plan = _exclusive_plan(pod, shared_eni.node)

    def plug_later() -> None:
        time.sleep(0.3)
        _attach_eni(shared_eni, ENI2_MAC, "twdpvpc2", "eth2")

    t = threading.Thread(target=plug_later)
    t.start()
    try:
        started = time.monotonic()
        report = dp.apply(plan, link_timeout=10)
        waited = time.monotonic() - started
    finally:
        t.join()
    assert report.created[0].kind == "moved_link"
    assert waited >= 0.25
    assert dp.get_link("eth0", pod).mac == ENI2_MAC


def test_missing_mac_is_not_found_after_the_timeout(shared_eni):
    pod = shared_eni.make_netns("nf")
    plan = _exclusive_plan(pod, shared_eni.node)
    with pytest.raises(NotFound) as info:
        dp.apply(plan, link_timeout=0.2)
    assert ENI2_MAC in str(info.value) and info.value.details["mac"] == ENI2_MAC
    with pytest.raises(NotFound):
        dp.find_link_by_mac(ENI2_MAC, shared_eni.node, timeout=0.1)


def test_rename_in_place_and_back(shared_eni):
    _attach_eni(shared_eni, ENI2_MAC, "twdpvpc2", "eth2")
    plan = dp.Plan(
        (
            dp.MovedLink(
                mac=ENI2_MAC,
                name="twdpeni",
                netns=shared_eni.node,
                home_name="eth2",
                home_netns=shared_eni.node,
            ),
        )
    )
    assert dp.apply(plan).created == plan.objects
    assert dp.find_link_by_mac(ENI2_MAC, shared_eni.node, timeout=0).name == "twdpeni"
    assert dp.apply(plan).unchanged == plan.objects
    assert dp.remove(plan).removed == plan.objects
    assert dp.find_link_by_mac(ENI2_MAC, shared_eni.node, timeout=0).name == "eth2"


def test_remove_after_the_pod_namespace_is_gone_finds_the_nic_at_home(shared_eni):
    """A real NIC returns to its home when the pod namespace dies; an emulated
    one (a veth) dies with it.  Either way remove succeeds."""
    _attach_eni(shared_eni, ENI2_MAC, "twdpvpc2", "eth2")
    pod = shared_eni.make_netns("dead")
    plan = _exclusive_plan(pod, shared_eni.node)
    dp.apply(plan)
    from terway_agent.datapath import netns

    netns.remove(os.path.basename(pod))
    report = dp.remove(plan)
    assert not report.removed
    assert dp.remove(plan).absent


def test_veth_attributes_change_in_place(make_netns, snapshot):
    a = make_netns("va")
    b = make_netns("vb")
    plan = dp.Plan((dp.Veth(name="twdpv0", netns=a, peer_name="eth0", peer_netns=b, mtu=1500),))
    dp.apply(plan)
    index_before = dp.get_link("twdpv0", a).index
    bigger = dp.Plan(
        (dp.Veth(name="twdpv0", netns=a, peer_name="eth0", peer_netns=b, mtu=9000, mac="02:aa:00:00:00:01"),)
    )
    problems = dp.check(bigger)
    assert len(problems) == 3 and all(p.state == "different" for p in problems)
    assert dp.apply(bigger).changed == bigger.objects
    link = dp.get_link("twdpv0", a)
    assert link.index == index_before  # changed in place, not recreated
    assert (link.mtu, link.mac) == (9000, "02:aa:00:00:00:01")
    assert dp.get_link("eth0", b).mtu == 9000
    assert dp.apply(bigger).unchanged == bigger.objects


def test_get_link_reads_the_agent_namespace():
    lo = dp.get_link("lo")
    assert lo is not None and lo.index == 1 and lo.netns is None
    assert dp.get_link("twdp-nodev") is None
    with pytest.raises(InvalidInput) as info:
        dp.get_link("twdp-name-too-long")
    assert info.value.field == "LinkState.name"
