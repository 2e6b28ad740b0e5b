"""ECS instance types the emulator knows, with their ENI quotas.

Provenance of every figure is in docs/cloud.md ("Instance types").  In short:

* ``ecs.g7.xlarge`` is a real DescribeInstanceTypes response (captured in a
  public test fixture): 4 ENIs, 15 IPv4 and 15 IPv6 per ENI, 20 network
  interfaces in total, trunking supported.
* ``ecs.g6.large`` is the DescribeInstanceTypes example of the ECS API
  reference: 2 ENIs, 6 IPv4 and 1 IPv6 per ENI, 2 in total, no trunking.
* ``ecs.g7.4xlarge`` (8 ENIs x 30 IPv4) is the example of the Terway pod-limit
  documentation.
* The other rows follow the instance-family tables (ENIs and addresses per
  ENI per size); ``EniTotalQuantity`` is not in those tables and is an
  estimate for every 7th-generation row except ``ecs.g7.xlarge``.
* ``ecs.twemu-*`` rows are synthetic, for tests.
"""

from __future__ import annotations

from dataclasses import dataclass


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
    #: where the figures come from: "api" (captured API response), "doc"
    #: (family table / documentation), "estimate", "synthetic".
    source: str = "doc"

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


_SIZES = {  # size -> vCPUs
    "large": 2,
    "xlarge": 4,
    "2xlarge": 8,
    "3xlarge": 12,
    "4xlarge": 16,
    "6xlarge": 24,
    "8xlarge": 32,
}

# 7th generation (g7/c7/r7 share the per-size ENI figures):
# size -> (EniQuantity, IPv4 per ENI, IPv6 per ENI, EniTotalQuantity)
_GEN7 = {
    "large": (3, 6, 6, 15),
    "xlarge": (4, 15, 15, 20),
    "2xlarge": (4, 15, 15, 20),
    "3xlarge": (8, 15, 15, 40),
    "4xlarge": (8, 30, 30, 40),
    "6xlarge": (8, 30, 30, 40),
    "8xlarge": (8, 30, 30, 40),
}
# 6th generation g6: one IPv6 address per ENI, no trunking.
_GEN6 = {
    "large": (2, 6, 1, 2),
    "xlarge": (3, 10, 1, 3),
    "2xlarge": (4, 10, 1, 4),
    "3xlarge": (6, 10, 1, 6),
    "4xlarge": (8, 20, 1, 8),
    "6xlarge": (8, 20, 1, 8),
    "8xlarge": (8, 20, 1, 8),
}
_FAMILIES = {
    # family: (generation table, GiB per vCPU, category, trunk)
    "g6": (_GEN6, 4, "General-purpose", False),
    "g7": (_GEN7, 4, "General-purpose", True),
    "c7": (_GEN7, 2, "Compute-optimized", True),
    "r7": (_GEN7, 8, "Memory-optimized", True),
}
_API_VERIFIED = {"ecs.g7.xlarge", "ecs.g6.large"}


def _build() -> dict[str, InstanceType]:
    table: dict[str, InstanceType] = {}
    for fam, (gen, gib, category, trunk) in _FAMILIES.items():
        for size, cpu in _SIZES.items():
            enis, v4, v6, total = gen[size]
            type_id = f"ecs.{fam}.{size}"
            if type_id in _API_VERIFIED:
                source = "api"
            elif gen is _GEN7 and size != "xlarge":
                source = "doc; EniTotalQuantity estimate"
            else:
                source = "doc"
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
                bandwidth_kbps=cpu * 768_000 // 4,
                pps=cpu * 275_000 // 4,
                source=source,
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
