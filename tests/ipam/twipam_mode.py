"""A mode for the IPAM tests: addresses from ``ctx.ipam``, nothing in the kernel.

Exclusivity from ``TWIPAM_EXCLUSIVITY`` (shared | exclusive).  The datapath
hooks build nothing, so the agent, its store, the CNI protocol and the IPAM
are exercised without pod namespaces.
"""

from __future__ import annotations

import ipaddress
import os

from terway_agent.plugin import (
    CNIIP,
    Allocation,
    CNIInterface,
    InstanceLimits,
    IPAssignment,
    LinkResult,
    ModeContext,
    ModeInfo,
    PodRequest,
    Status,
    hookimpl,
)

EXCLUSIVITY = os.environ.get("TWIPAM_EXCLUSIVITY", "shared")


def _limit(q: InstanceLimits) -> int:
    return q.shared_pods if EXCLUSIVITY == "shared" else q.exclusive_pods


@hookimpl
def terway_mode_info() -> ModeInfo:
    return ModeInfo(
        name="twipam",
        version="0.0.1",
        summary="IPAM test mode (no datapath)",
        exclusivity=EXCLUSIVITY,  # type: ignore[arg-type]
        capabilities=frozenset({"ipv4", "ipv6", "dual_stack"}),
        pod_limit_formula="(EniQuantity - 1) x EniPrivateIpAddressQuantity"
        if EXCLUSIVITY == "shared"
        else "EniQuantity - 1",
        pod_limit=_limit,
        min_pod_limit=11 if EXCLUSIVITY == "shared" else 6,
        needs_cloud=True,
    )


def _owner(request: PodRequest) -> str:
    return f"{request.container_id}/{request.ifname}"


def _assign(address: str | None, cidr: str | None, gateway: str | None) -> IPAssignment | None:
    if not address:
        return None
    prefix = ipaddress.ip_network(cidr).prefixlen if cidr else (32 if ":" not in address else 128)
    return IPAssignment(address, prefix, gateway or "")


@hookimpl
async def terway_allocate(ctx: ModeContext, request: PodRequest) -> Allocation:
    if EXCLUSIVITY == "exclusive":
        lease = await ctx.ipam.allocate_eni(_owner(request), request.pod)
        kind = "eni"
    else:
        lease = await ctx.ipam.allocate_ips(
            _owner(request), request.pod, sticky=request.owner_kind == "StatefulSet"
        )
        kind = "eni_ip"
    eni = lease.eni
    return Allocation(
        kind=kind,  # type: ignore[arg-type]
        ipv4=_assign(lease.ipv4, eni.cidr4, eni.gateway4),
        ipv6=_assign(lease.ipv6, eni.cidr6, eni.gateway6),
        eni_id=eni.eni_id,
        mac=eni.mac,
        vswitch_id=eni.vswitch_id,
    )


@hookimpl
async def terway_release(ctx: ModeContext, request: PodRequest, allocation: Allocation | None) -> None:
    if EXCLUSIVITY == "exclusive":
        await ctx.ipam.release_eni(_owner(request))
    else:
        await ctx.ipam.release_ips(_owner(request))


@hookimpl
async def terway_setup_link(ctx: ModeContext, request: PodRequest, allocation: Allocation) -> LinkResult:
    ips = tuple(CNIIP(f"{a.address}/{a.prefix_len}", a.gateway, 0) for a in allocation.addresses)
    return LinkResult(interfaces=(CNIInterface(request.ifname),), ips=ips)


@hookimpl
async def terway_teardown_link(ctx: ModeContext, request: PodRequest, allocation: Allocation, link) -> None:
    return None


@hookimpl
async def terway_check_link(ctx: ModeContext, request: PodRequest, allocation: Allocation, link) -> list[str]:
    return []


@hookimpl
async def terway_status(ctx: ModeContext) -> Status | None:
    return None if ctx.ipam is None else ctx.ipam.status()
