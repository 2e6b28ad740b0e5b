"""Plan types: validation, normalisation, identity keys, JSON round trip (no kernel needed)."""

from __future__ import annotations

import hashlib
import ipaddress
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from terway_agent import datapath as dp
from terway_agent.errors import InvalidInput

POD = "/run/netns/twdp-pod"


def every_kind() -> list[dp.PlanObject]:
    return [
        dp.Veth(name="cali0123456789a", peer_name="eth0", peer_netns=POD, mtu=1500, mac="02:00:00:00:00:01"),
        dp.MovedLink(mac="00:16:3E:01:02:03", name="eth1", netns=POD, home_name="eth2"),
        dp.LinkState(name="eth0", netns=POD),
        dp.Address(dev="eth0", address="fd00::5/128", netns=POD, nodad=True),
        dp.Neighbour(dev="eth0", ip="169.254.1.1", lladdr="02:00:00:00:00:01", netns=POD),
        dp.Route(dst="default", gateway="169.254.1.1", dev="eth0", onlink=True, netns=POD),
        dp.Route(dst="10.0.0.5/32", dev="cali0123456789a"),
        dp.Rule(priority=2048, src="10.0.0.5/32", table=1003),
        dp.Sysctl(path="net/ipv6/conf/eth0/accept_ra", value=0, netns=POD),
        dp.Clsact(dev="eth1"),
        dp.Tbf.for_bandwidth(dev="eth0", netns=POD, bits_per_s=10_000_000),
        dp.BpfFilter(dev="eth1", direction="egress", priority=50001, slot="vlan"),
    ]


def test_json_round_trip_of_every_kind():
    plan = dp.Plan(tuple(every_kind()))
    text = plan.to_json()
    json.loads(text)  # plain JSON
    again = dp.Plan.from_json(text)
    assert again == plan
    assert [o.key for o in again] == [o.key for o in plan]
    assert hash(again) == hash(plan)
    assert {o.kind for o in plan} == set(dp.PlanObject._registry)  # every registered kind is covered


def test_normalisation():
    mv = dp.MovedLink(mac="00-16-3E-01-02-03", name="eth0", netns="twdp-pod", home_name="eth2")
    assert mv.mac == "00:16:3e:01:02:03"
    assert mv.netns == "/run/netns/twdp-pod"  # bare names become paths
    r = dp.Route(dst="default", gateway="fe80::1", dev="eth0")
    assert (r.dst, r.family, r.scope, r.effective_metric) == ("::/0", 6, "universe", 1024)
    r4 = dp.Route(dst="10.0.0.5/32", dev="cali0")
    assert (r4.family, r4.scope, r4.effective_metric, r4.proto) == (4, "link", 0, "boot")
    a = dp.Address(dev="eth0", address="10.0.0.5")
    assert a.address == "10.0.0.5/32" and a.prefixlen == 32
    assert dp.Address(dev="eth0", address="FD00::0005/64").address == "fd00::5/64"
    assert dp.Sysctl(path="net/ipv4/conf/all/forwarding", value=1).value == "1"
    assert dp.Rule(priority=100, table=10).family == 4


def test_identity_keys():
    a = dp.Address(dev="eth0", address="10.0.0.5/32", netns=POD)
    b = dp.Address(dev="eth0", address="10.0.0.5/24", netns=POD)
    assert a.key == b.key and a != b  # same IP on the same device: "different", not "another"
    r1 = dp.Route(dst="10.0.0.0/24", gateway="10.0.1.1", table=1003)
    r2 = dp.Route(dst="10.0.0.0/24", gateway="10.0.1.2", dev="eth1", table=1003)
    assert r1.key == r2.key
    assert dp.Route(dst="10.0.0.0/24", gateway="10.0.1.1", metric=5).key != r1.key
    rule1 = dp.Rule(priority=2048, src="10.0.0.5/32", table=1003)
    rule2 = dp.Rule(priority=2048, src="10.0.0.5/32", table=1004)
    assert rule1.key != rule2.key  # a rule is the whole rule
    v = dp.Veth(name="cali0", peer_name="eth0", peer_netns=POD)
    assert v.link_keys() == (("link", None, "cali0"), ("link", POD, "eth0"))


def test_plan_collapses_duplicates_and_rejects_conflicts():
    a = dp.Address(dev="eth0", address="10.0.0.5/32", netns=POD)
    assert len(dp.Plan((a, a))) == 1
    with pytest.raises(InvalidInput) as info:
        dp.Plan((a, dp.Address(dev="eth0", address="10.0.0.5/24", netns=POD)))
    assert "conflicts with address 10.0.0.5/32" in str(info.value)
    # a veth's peer occupies its name too
    with pytest.raises(InvalidInput):
        dp.Plan(
            (
                dp.Veth(name="cali0", peer_name="eth0", peer_netns=POD),
                dp.MovedLink(mac="02:00:00:00:00:09", name="eth0", netns=POD, home_name="eth3"),
            )
        )


def test_plan_without_and_add():
    objs = every_kind()
    full = dp.Plan(tuple(objs))
    half = dp.Plan(tuple(objs[:5]))
    rest = full.without(half)
    assert rest.objects == tuple(objs[5:])
    assert half + rest == full


@pytest.mark.parametrize(
    ("build", "field"),
    [
        (lambda: dp.Veth(name="this-name-is-too-long", peer_name="eth0", peer_netns=POD), "Veth.name"),
        (lambda: dp.Veth(name="cali0", peer_name="eth/0", peer_netns=POD), "Veth.peer_name"),
        (lambda: dp.Veth(name="cali0", peer_name="eth0", peer_netns=POD, mtu=10), "Veth.mtu"),
        (
            lambda: dp.Veth(name="cali0", peer_name="eth0", peer_netns=POD, mac="01:00:5e:00:00:01"),
            "Veth.mac",
        ),
        (
            lambda: dp.MovedLink(mac="zz:16:3e:01:02:03", name="eth0", netns=POD, home_name="e"),
            "MovedLink.mac",
        ),
        (lambda: dp.Address(dev="eth0", address="10.0.0.300/32"), "Address.address"),
        (lambda: dp.Route(dst="10.0.0.5/24", dev="eth0"), "Route.dst"),
        (lambda: dp.Route(dst="10.0.0.0/24"), "Route.dev"),
        (lambda: dp.Route(dst="10.0.0.0/24", gateway="fd00::1"), "Route.gateway"),
        (lambda: dp.Route(dst="10.0.0.0/24", dev="eth0", table=255), "Route.table"),
        (lambda: dp.Route(dst="10.0.0.0/24", dev="eth0", scope="galaxy"), "Route.scope"),
        (lambda: dp.Route(dst="10.0.0.0/24", dev="eth0", onlink=True), "Route.onlink"),
        (lambda: dp.Rule(priority=0, table=254), "Rule.priority"),
        (lambda: dp.Rule(priority=10, table=254, src="10.0.0.0/8", dst="fd00::/8"), "Rule.dst"),
        (lambda: dp.Neighbour(dev="eth0", ip="169.254.1.1", lladdr="nope"), "Neighbour.lladdr"),
        (lambda: dp.Sysctl(path="vm/swappiness", value="1"), "Sysctl.path"),
        (lambda: dp.Tbf(dev="eth0", rate_bytes_per_s=0, burst_bytes=1), "Tbf.rate_bytes_per_s"),
        (lambda: dp.BpfFilter(dev="eth0", direction="sideways", priority=1, slot="x"), "BpfFilter.direction"),
        (lambda: dp.LinkState(name="eth0", up="yes"), "LinkState.up"),
    ],
)
def test_bad_input_names_field_value_and_expectation(build, field):
    with pytest.raises(InvalidInput) as info:
        build()
    assert info.value.field == field
    assert info.value.expected
    assert field in str(info.value) and "expected" in str(info.value)


def test_bad_json():
    with pytest.raises(InvalidInput) as info:
        dp.Plan.from_json('{"version": 1, "objects": [{"kind": "tunnel"}]}')
    assert info.value.field == "plan object kind"
    with pytest.raises(InvalidInput) as info:
        dp.Plan.from_json(
            '{"version": 1, "objects": [{"kind": "link_state", "name": "eth0", "colour": "red"}]}'
        )
    assert "colour" in str(info.value)
    with pytest.raises(InvalidInput):
        dp.Plan.from_json('{"version": 2, "objects": []}')
    with pytest.raises(InvalidInput):
        dp.Plan.from_json("not json")


def test_naming_helpers():
    name = dp.veth_name("default", "nginx-0")
    assert name == "cali" + hashlib.sha1(b"default.nginx-0").hexdigest()[:11]
    assert len(name) == 15
    mac = dp.stable_mac("x")
    assert mac == dp.stable_mac("x") != dp.stable_mac("y")
    first = int(mac[:2], 16)
    assert first & 0x02 and not first & 0x01  # locally administered unicast


@given(
    ip=st.one_of(st.ip_addresses(v=4), st.ip_addresses(v=6)),
    table=st.integers(min_value=1, max_value=2**32 - 1).filter(lambda t: t != 255),
    metric=st.one_of(st.none(), st.integers(min_value=0, max_value=2**32 - 1)),
    onlink=st.booleans(),
)
def test_route_round_trip_property(ip, table, metric, onlink):
    net = ipaddress.ip_network(f"{ip}/{ip.max_prefixlen}")
    gw = "169.254.1.1" if ip.version == 4 else "fe80::1"
    route = dp.Route(dst=str(net), gateway=gw, dev="eth0", table=table, metric=metric, onlink=onlink)
    again = dp.PlanObject.from_dict(json.loads(json.dumps(route.to_dict())))
    assert again == route and again.key == route.key
