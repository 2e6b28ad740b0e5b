"""The cloud the IPAM tests run against (one emulator per test session, reset per test)."""

from __future__ import annotations

from typing import Any

REGION = "cn-hangzhou"
ZONE = "cn-hangzhou-k"
OTHER_ZONE = "cn-hangzhou-j"
ACCESS_KEY = ("LTAItwipamTestKey", "twipam-test-secret")
SG = "sg-twipam-1"
VSW_NODE = "vsw-twipam-node"
VSW_A = "vsw-twipam-a"
VSW_B = "vsw-twipam-b"
VSW_TINY = "vsw-twipam-tiny"
VSW_OTHER_ZONE = "vsw-twipam-zone-j"
NODE = "i-twipam-node"  # ecs.g7.xlarge: 4 ENIs x 15 IPv4 / 15 IPv6
SMALL = "i-twipam-small"  # ecs.twemu-small.large: 3 ENIs x 4 IPv4 / 4 IPv6
BIG = "i-twipam-big"  # ecs.g7.4xlarge: 8 ENIs x 30
G6 = "i-twipam-g6"  # ecs.g6.large: 2 ENIs x 6 IPv4 / 1 IPv6

TOPOLOGY: dict[str, Any] = {
    "region": REGION,
    "seed": 4242,
    "vpc": {"id": "vpc-twipam000000000000", "cidr": "10.0.0.0/8", "ipv6_cidr": "2408:4005:400:1200::/56"},
    "zones": [ZONE, OTHER_ZONE],
    "vswitches": [
        {"id": VSW_NODE, "zone": ZONE, "cidr": "10.10.0.0/24", "ipv6_cidr": "2408:4005:400:1200::/64"},
        {"id": VSW_A, "zone": ZONE, "cidr": "10.20.0.0/20", "ipv6_cidr": "2408:4005:400:1201::/64"},
        {"id": VSW_B, "zone": ZONE, "cidr": "10.20.16.0/20", "ipv6_cidr": "2408:4005:400:1202::/64"},
        {"id": VSW_TINY, "zone": ZONE, "cidr": "10.30.0.0/29"},
        {"id": VSW_OTHER_ZONE, "zone": OTHER_ZONE, "cidr": "10.40.0.0/24"},
    ],
    "security_groups": [{"id": SG, "name": "nodes"}],
    "access_keys": [{"id": ACCESS_KEY[0], "secret": ACCESS_KEY[1]}],
    "instances": [
        {
            "id": NODE,
            "type": "ecs.g7.xlarge",
            "vswitch": VSW_NODE,
            "netns": "twipam-node",
            "primary_ip": "10.10.0.11",
            "security_groups": [SG],
        },
        {
            "id": SMALL,
            "type": "ecs.twemu-small.large",
            "vswitch": VSW_NODE,
            "netns": "twipam-small",
            "primary_ip": "10.10.0.12",
            "security_groups": [SG],
        },
        {
            "id": BIG,
            "type": "ecs.g7.4xlarge",
            "vswitch": VSW_NODE,
            "netns": "twipam-big",
            "primary_ip": "10.10.0.13",
            "security_groups": [SG],
        },
        {
            "id": G6,
            "type": "ecs.g6.large",
            "vswitch": VSW_NODE,
            "netns": "twipam-g6",
            "primary_ip": "10.10.0.14",
            "security_groups": [SG],
        },
    ],
    "attach_latency": 0,
    "detach_latency": 0,
    "metadata": {"delay": 0, "tokens": "optional"},
    "node_side": {"kind": "null"},
}

#: Backoffs scaled down so that waits and retries take milliseconds (a legitimate backoff_override).
FAST_BACKOFFS: dict[str, dict[str, Any]] = {
    "default": {"duration": 0.02, "jitter": 0},
    "eni_create": {"duration": 0.02, "steps": 3, "jitter": 0},
    "eni_ops": {"duration": 0.02, "jitter": 0},
    "eni_release": {"duration": 0.02, "jitter": 0},
    "eni_ip_ops": {"duration": 0.02, "jitter": 0},
    "wait_eni_status": {"duration": 0.02, "factor": 1, "jitter": 0, "steps": 200, "initial_delay": 0},
}
