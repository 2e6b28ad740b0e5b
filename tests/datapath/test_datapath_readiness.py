"""apply returns when what it brought up is usable: links operational, IPv6 addresses out of DAD.

The kernel finishes both after the netlink requests return (the link watch
activates a veth end whose carrier came on; the IPv6 address work item or DAD
clears the tentative flag).  These tests read the state with pyroute2's
IPRoute and iproute2 right after apply, without waiting.
"""

from __future__ import annotations

import json
import os
import subprocess

import pytest
from twdp_topology import snapshot  # tests/datapath is on sys.path

from terway_agent import datapath as dp
from terway_agent.datapath import netns
from terway_agent.errors import DatapathError

pytestmark = pytest.mark.netns

IFF_RUNNING = 0x40


def _flags(path: str, name: str) -> int:
    from pyroute2 import IPRoute

    with netns.enter(path):
        ipr = IPRoute()
    try:
        return ipr.link("get", ifname=name)[0]["flags"]
    finally:
        ipr.close()


def _addr6(path: str, dev: str) -> dict[str, list[str]]:
    """{address: flags} of dev's IPv6 addresses, read by iproute2."""
    out = subprocess.run(
        ["ip", "-n", os.path.basename(path), "-j", "-6", "addr", "show", "dev", dev],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return {
        a["local"]: [k for k in ("tentative", "dadfailed", "nodad") if a.get(k)]
        for link in json.loads(out)
        for a in link.get("addr_info", [])
    }


def test_links_are_operational_when_apply_returns(shared_eni):
    pod, plan = shared_eni.add_pod("rd", "192.168.0.60", ip6="2408:4000::60")
    dp.apply(plan)
    host = plan.objects[0].name
    assert _flags(shared_eni.node, host) & IFF_RUNNING
    assert _flags(pod, "eth0") & IFF_RUNNING
    flags = _addr6(pod, "eth0")
    assert flags["2408:4000::60"] == ["nodad"]  # not tentative: bindable at once
    assert _addr6(shared_eni.node, host)["fe80::1"] == ["nodad"]
    # the kernel's own work on the new links is done too: nothing changes afterwards
    before = {ns: snapshot(ns) for ns in (shared_eni.node, pod)}
    assert dp.apply(plan).unchanged == plan.objects
    assert {ns: snapshot(ns) for ns in (shared_eni.node, pod)} == before


def test_an_address_with_dad_is_waited_for_on_a_running_link(make_netns):
    a = make_netns("da")
    b = make_netns("db")
    plan = dp.Plan(
        (
            dp.Veth(name="twdpd0", netns=a, peer_name="twdpd1", peer_netns=b),
            dp.LinkState(name="twdpd0", netns=a),
            dp.LinkState(name="twdpd1", netns=b),
            dp.Address(dev="twdpd0", address="2001:db8:1::1/64", netns=a),  # with DAD
        )
    )
    assert dp.apply(plan).created == plan.objects
    # DAD takes at least a second (a probe, then a second without answer): apply waited for it
    assert _addr6(a, "twdpd0")["2001:db8:1::1"] == []


def test_an_address_on_a_link_without_carrier_is_not_waited_for(make_netns):
    a = make_netns("dn")
    b = make_netns("dm")
    plan = dp.Plan(
        (
            dp.Veth(name="twdpn0", netns=a, peer_name="twdpn1", peer_netns=b),
            dp.LinkState(name="twdpn0", netns=a),  # the peer stays down: no carrier
            dp.Address(dev="twdpn0", address="2001:db8:2::1/64", netns=a),
        )
    )
    assert dp.apply(plan).created == plan.objects  # no wait for a DAD that cannot start
    assert _addr6(a, "twdpn0")["2001:db8:2::1"] == ["tentative"]  # DAD starts with the carrier


def test_duplicate_address_detection_failure_is_an_error(make_netns):
    a = make_netns("fa")
    b = make_netns("fb")
    dup = "2001:db8:3::7"
    dp.apply(
        dp.Plan(
            (
                dp.Veth(name="twdpf0", netns=a, peer_name="twdpf1", peer_netns=b),
                dp.LinkState(name="twdpf0", netns=a),
                dp.LinkState(name="twdpf1", netns=b),
                dp.Address(dev="twdpf0", address=f"{dup}/64", netns=a, nodad=True),
            )
        )
    )
    taken = dp.Plan((dp.Address(dev="twdpf1", address=f"{dup}/64", netns=b),))
    with pytest.raises(DatapathError) as info:
        dp.apply(taken)
    assert info.value.details["errno_name"] == "EADDRINUSE"
    assert info.value.details["device"] == "twdpf1"
    assert dup in str(info.value) and "duplicate address detection failed" in str(info.value)
    assert "dadfailed" in _addr6(b, "twdpf1")[dup]
    problems = dp.check(taken)
    assert [p.state for p in problems] == ["different"]
    assert "failed duplicate address detection" in problems[0].description


def test_kernel_refusals_carry_the_extended_ack_text(make_netns):
    """A refusal is decoded by pyroute2's nlmsgerr, the kernel's own explanation included."""
    ns = make_netns("ea")
    # lo down: the namespace has no local table, so an onlink gateway is refused
    plan = dp.Plan(
        (
            dp.Veth(name="twdpe0", netns=ns, peer_name="twdpe1", peer_netns=ns),
            dp.LinkState(name="twdpe0", netns=ns),
            dp.Route(dst="default", gateway="169.254.1.1", dev="twdpe0", onlink=True, netns=ns),
        )
    )
    with pytest.raises(DatapathError) as info:
        dp.apply(plan)
    assert info.value.details["errno_name"] == "EINVAL"
    assert str(info.value).endswith("Invalid argument (Nexthop has invalid gateway)")
