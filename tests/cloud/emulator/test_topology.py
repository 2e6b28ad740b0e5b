"""The topology loader: good files load, bad files fail naming field, value and expectation."""

from __future__ import annotations

import copy

import pytest
import yaml

from terway_agent.cloud.emulator import Topology, default_topology, load_topology
from terway_agent.errors import ConfigError

BASE = {
    "region": "cn-hangzhou",
    "vpc": {"id": "vpc-1", "cidr": "10.0.0.0/16", "ipv6_cidr": "2408:4005:3a0::/56"},
    "vswitches": [
        {"id": "vsw-a", "zone": "cn-hangzhou-k", "cidr": "10.0.0.0/24", "ipv6_cidr": "2408:4005:3a0::/64"},
        {"id": "vsw-b", "zone": "cn-hangzhou-k", "cidr": "10.0.1.0/24"},
    ],
    "security_groups": [{"id": "sg-1"}],
    "access_keys": [{"id": "ak", "secret": "sk"}],
    "instances": [{"id": "i-1", "type": "ecs.g7.xlarge", "vswitch": "vsw-a", "primary_ip": "10.0.0.5"}],
}


def _bad(mutate):
    data = copy.deepcopy(BASE)
    mutate(data)
    with pytest.raises(ConfigError) as info:
        Topology.from_dict(data)
    return info.value


def test_default_topology_is_valid():
    topo = default_topology()
    assert topo.region == "cn-hangzhou"
    assert len(topo.vswitches) == 3
    assert [i.type for i in topo.instances] == ["ecs.g7.xlarge", "ecs.g7.xlarge"]
    assert topo.zones == ("cn-hangzhou-k",)


def test_round_trip():
    topo = Topology.from_dict(BASE)
    again = Topology.from_dict(topo.to_dict())
    assert again.to_dict() == topo.to_dict()
    assert topo.instances[0].security_groups == ("sg-1",)  # the first group by default
    assert topo.instances[0].zone == "cn-hangzhou-k"  # from the vSwitch


def test_load_from_file(tmp_path):
    path = tmp_path / "twemu-topo.yaml"
    path.write_text(yaml.safe_dump(BASE))
    assert load_topology(path).vswitches[1].id == "vsw-b"


def test_missing_and_unparsable_files(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_topology(tmp_path / "nope.yaml")
    assert info.value.field == "topology"
    path = tmp_path / "twemu-broken.yaml"
    path.write_text("region: [unclosed\n")
    with pytest.raises(ConfigError) as info:
        load_topology(path)
    assert "valid YAML" in info.value.expected


@pytest.mark.parametrize(
    ("mutate", "field", "expected_fragment"),
    [
        (lambda d: d.pop("region"), "topology.region", "required"),
        (lambda d: d.update(surprise=1), "topology", "only the keys"),
        (lambda d: d["vpc"].update(cidr="10.0.0.0/33"), "vpc.cidr", "IPv4 CIDR"),
        (lambda d: d["vpc"].update(cidr="10.0.0.1/16"), "vpc.cidr", "no host bits"),
        (lambda d: d["vswitches"][1].update(cidr="192.168.0.0/24"), "vswitches[1].cidr", "inside the VPC"),
        (
            lambda d: d["vswitches"][1].update(cidr="10.0.0.128/25"),
            "vswitches[1].cidr",
            "not overlapping vsw-a",
        ),
        (lambda d: d["vswitches"][1].update(id="vsw-a"), "vswitches[1].id", "not used before"),
        (
            lambda d: d["vswitches"][1].update(ipv6_cidr="2408:1::/64"),
            "vswitches[1].ipv6_cidr",
            "inside the VPC IPv6",
        ),
        (lambda d: d["vpc"].pop("ipv6_cidr"), "vswitches[0].ipv6_cidr", "vpc.ipv6_cidr"),
        (lambda d: d["vswitches"][0].pop("zone"), "vswitches[0].zone", "required"),
        (lambda d: d.update(zones=["cn-hangzhou-j"]), "vswitches[0].zone", "declared zones"),
        (
            lambda d: d["instances"][0].update(type="ecs.nope.large"),
            "instances[0].type",
            "known instance type",
        ),
        (lambda d: d["instances"][0].update(vswitch="vsw-z"), "instances[0].vswitch", "one of the vSwitches"),
        (
            lambda d: d["instances"][0].update(primary_ip="10.0.1.5"),
            "instances[0].primary_ip",
            "inside vsw-a",
        ),
        (
            lambda d: d["instances"][0].update(security_groups=["sg-z"]),
            "instances[0].security_groups[0]",
            "security groups",
        ),
        (lambda d: d["instances"][0].update(zone="cn-hangzhou-j"), "instances[0].zone", "zone of vSwitch"),
        (lambda d: d["instances"].append(dict(d["instances"][0])), "instances[1].id", "not used before"),
        (lambda d: d.update(access_keys=[]), "access_keys", "at least one"),
        (lambda d: d["access_keys"][0].pop("secret"), "access_keys[0].secret", "required"),
        (
            lambda d: d.update(latency={"default": {"kind": "poisson"}}),
            "latency.default.kind",
            "fixed, uniform, normal",
        ),
        (lambda d: d.update(attach_latency=-1), "attach_latency", ">= 0"),
        (lambda d: d.update(attach_latency={"kind": "normal", "mean": 1}), "attach_latency", "stddev"),
        (lambda d: d.update(metadata={"tokens": "sometimes"}), "metadata.tokens", "optional or required"),
        (
            lambda d: d.update(rate_limits={"default": {"per_minute": 0}}),
            "rate_limits.default.per_minute",
            "> 0",
        ),
        (
            lambda d: d.update(rate_limits={"retry_after_header": "yes"}),
            "rate_limits.retry_after_header",
            "true or false",
        ),
        (lambda d: d.update(node_side={"kind": "vm"}), "node_side.kind", "null or netns"),
        (lambda d: d.update(node_side={"kind": "netns"}), "node_side.vpc_netns", "non-empty"),
        (
            lambda d: d.update(node_side={"kind": "netns", "vpc_netns": "twemu-vpc"}),
            "instances",
            "netns name",
        ),
        (lambda d: d.update(seed="x"), "seed", "integer"),
    ],
)
def test_bad_topologies(mutate, field, expected_fragment):
    err = _bad(mutate)
    assert err.field == field, err
    assert expected_fragment in err.expected or expected_fragment in str(err), err
    assert field in str(err)
