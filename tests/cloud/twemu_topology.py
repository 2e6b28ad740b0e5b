"""The topology every cloud test runs against (see conftest.py)."""

from __future__ import annotations

from typing import Any

REGION = "cn-hangzhou"
ZONE = "cn-hangzhou-k"
OTHER_ZONE = "cn-hangzhou-j"

TEST_TOPOLOGY: dict[str, Any] = {
    "region": REGION,
    "seed": 20240601,
    "vpc": {"id": "vpc-bp1twemutest0000000", "cidr": "172.16.0.0/12", "ipv6_cidr": "2408:4005:300:8c00::/56"},
    "zones": [ZONE, OTHER_ZONE],
    "vswitches": [
        {
            "id": "vsw-twemu-node",
            "zone": ZONE,
            "cidr": "172.16.0.0/24",
            "ipv6_cidr": "2408:4005:300:8c00::/64",
        },
        {
            "id": "vsw-twemu-pod-a",
            "zone": ZONE,
            "cidr": "172.17.0.0/20",
            "ipv6_cidr": "2408:4005:300:8c01::/64",
        },
        {
            "id": "vsw-twemu-pod-b",
            "zone": ZONE,
            "cidr": "172.17.16.0/20",
            "ipv6_cidr": "2408:4005:300:8c02::/64",
        },
        {"id": "vsw-twemu-tiny", "zone": ZONE, "cidr": "172.18.0.0/29"},
        {"id": "vsw-twemu-zone-j", "zone": OTHER_ZONE, "cidr": "172.19.0.0/24"},
    ],
    "security_groups": [{"id": "sg-twemu-1", "name": "nodes"}, {"id": "sg-twemu-2", "name": "pods"}],
    "access_keys": [{"id": "LTAItwemuTestKey", "secret": "twemu-test-secret"}],
    "instances": [
        {
            "id": "i-twemu-node1",
            "type": "ecs.g7.xlarge",
            "vswitch": "vsw-twemu-node",
            "netns": "twemu-node1",
            "primary_ip": "172.16.0.11",
            "ram_role": "KubernetesWorkerRole-twemu",
        },
        {
            "id": "i-twemu-small",
            "type": "ecs.twemu-small.large",
            "vswitch": "vsw-twemu-node",
            "netns": "twemu-small",
            "primary_ip": "172.16.0.12",
        },
        {
            "id": "i-twemu-g6",
            "type": "ecs.g6.large",
            "vswitch": "vsw-twemu-node",
            "netns": "twemu-g6",
            "primary_ip": "172.16.0.13",
        },
        {
            "id": "i-twemu-tiny",
            "type": "ecs.twemu-tiny.small",
            "vswitch": "vsw-twemu-node",
            "netns": "twemu-tiny",
            "primary_ip": "172.16.0.14",
        },
        {
            "id": "i-twemu-zone-j",
            "type": "ecs.g7.xlarge",
            "vswitch": "vsw-twemu-zone-j",
            "netns": "twemu-zonej",
            "primary_ip": "172.19.0.11",
        },
    ],
    "attach_latency": 0,
    "detach_latency": 0,
    "metadata": {"delay": 0, "tokens": "optional"},
    "node_side": {"kind": "null"},
}
