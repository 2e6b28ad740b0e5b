"""ECS instance types the emulator knows, with their ENI quotas.

Provenance of every figure is in docs/cloud.md ("Instance types"); each row
also carries it in ``source`` (printed by ``terway-cloud-emulator
instance-types``) and ``confirmed`` (the fields checked against a public
source).  Status of the check:

* ``EniQuantity`` and ``EniPrivateIpAddressQuantity`` of **every** g6/g7/c7/r7
  row (large .. 8xlarge), and vCPUs and memory, are confirmed by the
  instance-family tables of the Alibaba Cloud ECS documentation
  (AlibabaCloudDocs/ecs: "General purpose instance families", "Compute
  optimized instance families", "Memory optimized instance families",
  "Instance families"; the ENI column counts the primary ENI).
* ``ecs.g7.xlarge`` is a complete DescribeInstanceTypes response captured in
  kubernetes-sigs/alibaba-cloud-csi-driver
  ``pkg/cloud/metadata/ecs_instance_type_test.go``: 4 ENIs, 15 IPv4 and 15
  IPv6 per ENI, EniTotalQuantity 20, trunking supported.
* ``ecs.g6.large`` is the sample response of the DescribeInstanceTypes API
  reference (AlibabaCloudDocs/ecs ``intl.en-US/API Reference/Instances/
  DescribeInstanceTypes.md``): 2 ENIs, 6 IPv4 and 1 IPv6 per ENI,
  EniTotalQuantity 2, no trunking, 1024000 kbit/s, 300000 pps.
* ``ecs.g7.4xlarge`` 8 ENIs x 30 IPv4 is also the example of the Terway
  pod-limit documentation.
* NOT confirmed for any other row: ``EniIpv6AddressQuantity``,
  ``EniTotalQuantity`` and ``EniTrunkSupported`` (these are API-only fields; no
  public response for those sizes was found).  7th-generation rows assume
  IPv6/ENI = IPv4/ENI and EniTotalQuantity = 5 x EniQuantity, the ratios of the
  one captured 7th-generation response (g7.xlarge); g6 rows assume 1 IPv6 per
  ENI and no trunking (EniTotalQuantity = EniQuantity), as the g6.large
  response and the g6nv.8xlarge sample (8 ENIs, 20 IPv4, 1 IPv6, 8 total, no
  trunk) show; note that an older version of the same API reference shows
  ``ecs.g6.16xlarge`` (not in this table) with trunking and 60 in total, so
  "no trunking" is not a family-wide fact.  Bandwidth and pps are scaled per vCPU from those two
  responses (not confirmed, and nothing in the project depends on them).
* ``ecs.twemu-*`` rows are synthetic, for tests.
"""

from __future__ import annotations

from dataclasses import dataclass

#: The ENI fields a row may have confirmed.
_ENI_FIELDS = (
    "EniQuantity",
    "EniPrivateIpAddressQuantity",
    "EniIpv6AddressQuantity",
    "EniTotalQuantity",
    "EniTrunkSupported",
)


@dataclass(frozen=True)
class InstanceType:
    """The parts of an ECS instance type that matter for networking."""

    instance_type_id: str
    family: str
    cpu: int
    memory_gib: float
    eni_quantity: int
    eni_private_ip_address_quantity: int
    eni_ipv6_address_quantity: int
    eni_total_quantity: int
    eni_trunk_supported: bool
    category: str = "General-purpose"
    bandwidth_kbps: int = 0
    pps: int = 0
    #: where the figures come from, short form: "api" (a captured or documented
    #: DescribeInstanceTypes response), "doc" (instance-family table),
    #: "synthetic"; followed by what is not confirmed.
    source: str = "doc"
    #: the DescribeInstanceTypes ENI fields confirmed against a public source.
    confirmed: frozenset[str] = frozenset()

    def to_api(self) -> dict:
        """The DescribeInstanceTypes ``InstanceType`` item."""
        return {
            "InstanceTypeId": self.instance_type_id,
            "InstanceTypeFamily": self.family,
            "InstanceCategory": self.category,
            "InstanceFamilyLevel": "EnterpriseLevel",
            "CpuCoreCount": self.cpu,
            "CpuArchitecture": "X86",
            "MemorySize": self.memory_gib,
            "EniQuantity": self.eni_quantity,
            "EniPrivateIpAddressQuantity": self.eni_private_ip_address_quantity,
            "EniIpv6AddressQuantity": self.eni_ipv6_address_quantity,
            "EniTotalQuantity": self.eni_total_quantity,
            "EniTrunkSupported": self.eni_trunk_supported,
            "InstanceBandwidthRx": self.bandwidth_kbps,
            "InstanceBandwidthTx": self.bandwidth_kbps,
            "InstancePpsRx": self.pps,
            "InstancePpsTx": self.pps,
            "GPUAmount": 0,
            "GPUSpec": "",
            "LocalStorageCategory": "",
            "DiskQuantity": 17,
            "NvmeSupport": "unsupported",
        }


_SIZES = {  # size -> vCPUs (confirmed by the family tables)
    "large": 2,
    "xlarge": 4,
    "2xlarge": 8,
    "3xlarge": 12,
    "4xlarge": 16,
    "6xlarge": 24,
    "8xlarge": 32,
}

# 7th generation: g7, c7 and r7 have the same per-size ENI columns in the
# family tables (all three confirmed, size by size).
# size -> (EniQuantity, IPv4 per ENI)   [confirmed]
_GEN7 = {
    "large": (3, 6),
    "xlarge": (4, 15),
    "2xlarge": (4, 15),
    "3xlarge": (8, 15),
    "4xlarge": (8, 30),
    "6xlarge": (8, 30),
    "8xlarge": (8, 30),
}
# 6th generation g6: size -> (EniQuantity, IPv4 per ENI)   [confirmed by the g6 family table]
_GEN6 = {
    "large": (2, 6),
    "xlarge": (3, 10),
    "2xlarge": (4, 10),
    "3xlarge": (6, 10),
    "4xlarge": (8, 20),
    "6xlarge": (8, 20),
    "8xlarge": (8, 20),
}
_FAMILIES = {
    # family: (generation table, GiB per vCPU, category)
    "g6": (_GEN6, 4, "General-purpose"),
    "g7": (_GEN7, 4, "General-purpose"),
    "c7": (_GEN7, 2, "Compute-optimized"),
    "r7": (_GEN7, 8, "Memory-optimized"),
}

# Complete API responses: type -> (IPv6 per ENI, EniTotalQuantity, trunk, kbit/s, pps).
_API = {
    # kubernetes-sigs/alibaba-cloud-csi-driver pkg/cloud/metadata/ecs_instance_type_test.go
    "ecs.g7.xlarge": (15, 20, True, 3_072_000, 1_100_000),
    # AlibabaCloudDocs/ecs intl.en-US/API Reference/Instances/DescribeInstanceTypes.md (sample response)
    "ecs.g6.large": (1, 2, False, 1_024_000, 300_000),
}
_DOC_ONLY = frozenset({"EniQuantity", "EniPrivateIpAddressQuantity"})


def _build() -> dict[str, InstanceType]:
    table: dict[str, InstanceType] = {}
    for fam, (gen, gib, category) in _FAMILIES.items():
        for size, cpu in _SIZES.items():
            enis, v4 = gen[size]
            type_id = f"ecs.{fam}.{size}"
            if type_id in _API:
                v6, total, trunk, kbps, pps = _API[type_id]
                source = "api: all fields confirmed"
                confirmed = frozenset(_ENI_FIELDS)
            else:
                if gen is _GEN7:
                    # Ratios of the one captured 7th-generation response (g7.xlarge).
                    v6, total, trunk = v4, 5 * enis, True
                    source = "doc: ENIs+IPv4 confirmed; IPv6, total (5 x ENIs), trunk UNCONFIRMED"
                else:
                    # As g6.large (API) and the g6nv.8xlarge API sample.
                    v6, total, trunk = 1, enis, False
                    source = "doc: ENIs+IPv4 confirmed; IPv6 (1), total (= ENIs), no-trunk UNCONFIRMED"
                # Not confirmed: scaled per vCPU from the generation's captured response.
                ref = _API["ecs.g7.xlarge" if gen is _GEN7 else "ecs.g6.large"]
                ref_cpu = _SIZES["xlarge" if gen is _GEN7 else "large"]
                kbps, pps = cpu * ref[3] // ref_cpu, cpu * ref[4] // ref_cpu
                confirmed = _DOC_ONLY
            table[type_id] = InstanceType(
                instance_type_id=type_id,
                family=f"ecs.{fam}",
                cpu=cpu,
                memory_gib=float(cpu * gib),
                eni_quantity=enis,
                eni_private_ip_address_quantity=v4,
                eni_ipv6_address_quantity=v6,
                eni_total_quantity=total,
                eni_trunk_supported=trunk,
                category=category,
                bandwidth_kbps=kbps,
                pps=pps,
                source=source,
                confirmed=confirmed,
            )
    synthetic = [
        # Below the node minimums: (2-1) x 2 = 2 shared-ENI pods (a node needs > 11),
        # 2-1 = 1 exclusive-ENI pod (a node needs > 6).
        InstanceType("ecs.twemu-tiny.small", "ecs.twemu-tiny", 1, 1.0, 2, 2, 1, 2, False, source="synthetic"),
        # Small quotas for fast quota tests; trunking with 3 member ENIs.
        InstanceType(
            "ecs.twemu-small.large", "ecs.twemu-small", 2, 4.0, 3, 4, 4, 6, True, source="synthetic"
        ),
    ]
    for it in synthetic:
        table[it.instance_type_id] = it
    return table


#: Every known instance type by id.
INSTANCE_TYPES: dict[str, InstanceType] = _build()
