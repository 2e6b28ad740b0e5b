"""The instance-type figures DescribeInstanceTypes reports, against the public sources they were
confirmed from (docs/cloud.md, "Instance types"), through the real SDK."""

from __future__ import annotations

from alibabacloud_ecs20140526 import models as m

from terway_agent.cloud.emulator._instance_types import INSTANCE_TYPES

# (F) Alibaba Cloud instance-family tables: size -> (vCPUs, ENIs incl. primary, private IPs per ENI).
# g7, c7 and r7 share the per-size ENI columns.
FAMILY_TABLE_GEN7 = {
    "large": (2, 3, 6),
    "xlarge": (4, 4, 15),
    "2xlarge": (8, 4, 15),
    "3xlarge": (12, 8, 15),
    "4xlarge": (16, 8, 30),
    "6xlarge": (24, 8, 30),
    "8xlarge": (32, 8, 30),
}
FAMILY_TABLE_G6 = {
    "large": (2, 2, 6),
    "xlarge": (4, 3, 10),
    "2xlarge": (8, 4, 10),
    "3xlarge": (12, 6, 10),
    "4xlarge": (16, 8, 20),
    "6xlarge": (24, 8, 20),
    "8xlarge": (32, 8, 20),
}
GIB_PER_VCPU = {"g6": 4, "g7": 4, "c7": 2, "r7": 8}

# (A1) captured response for ecs.g7.xlarge; (A2) API-reference sample for ecs.g6.large:
# (EniQuantity, IPv4/ENI, IPv6/ENI, EniTotalQuantity, trunk, kbit/s, pps)
API_RESPONSES = {
    "ecs.g7.xlarge": (4, 15, 15, 20, True, 3_072_000, 1_100_000),
    "ecs.g6.large": (2, 6, 1, 2, False, 1_024_000, 300_000),
}


def _describe_all(emulator) -> dict:
    c = emulator.ecs_client()
    got, token = {}, None
    while True:
        body = c.describe_instance_types(m.DescribeInstanceTypesRequest(next_token=token)).body
        got.update({t.instance_type_id: t for t in body.instance_types.instance_type})
        token = body.next_token
        if not token:
            return got


def test_family_table_figures(emulator):
    got = _describe_all(emulator)
    for fam, table in [("g6", FAMILY_TABLE_G6)] + [(f, FAMILY_TABLE_GEN7) for f in ("g7", "c7", "r7")]:
        for size, (cpu, enis, v4) in table.items():
            t = got[f"ecs.{fam}.{size}"]
            have = (t.cpu_core_count, t.memory_size, t.eni_quantity, t.eni_private_ip_address_quantity)
            assert have == (cpu, cpu * GIB_PER_VCPU[fam], enis, v4), t.instance_type_id


def test_captured_api_responses(emulator):
    got = _describe_all(emulator)
    for type_id, want in API_RESPONSES.items():
        t = got[type_id]
        have = (
            t.eni_quantity,
            t.eni_private_ip_address_quantity,
            t.eni_ipv_6address_quantity,
            t.eni_total_quantity,
            t.eni_trunk_supported,
            t.instance_bandwidth_rx,
            t.instance_pps_rx,
        )
        assert have == want, type_id


def test_every_real_row_says_what_is_confirmed():
    for type_id, it in INSTANCE_TYPES.items():
        if it.source == "synthetic":
            assert not it.confirmed, type_id
            continue
        assert {"EniQuantity", "EniPrivateIpAddressQuantity"} <= it.confirmed, type_id
        full = type_id in API_RESPONSES
        assert (len(it.confirmed) == 5) == full, type_id
        assert ("UNCONFIRMED" in it.source) != full, (type_id, it.source)
