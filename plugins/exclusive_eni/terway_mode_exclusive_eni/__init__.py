"""terway-agent mode ``exclusive_eni``: each pod owns a whole ENI, moved into its
network namespace (VM-grade network performance, low density: EniQuantity - 1
pods per node).  Kernel objects: :mod:`terway_mode_exclusive_eni._plan` and
docs/modes/exclusive_eni.md.
"""

from __future__ import annotations

import subprocess
from collections.abc import Mapping, Sequence
from typing import Any

from terway_agent import datapath as dp
from terway_agent.datapath import netns
from terway_agent.log import get_logger
from terway_agent.plugin import (
    CNIIP,
    Allocation,
    Attachment,
    CNIInterface,
    CNIRoute,
    DatapathError,
    FeatureNotSupported,
    InstanceLimits,
    IPAssignment,
    LinkResult,
    ModeContext,
    ModeInfo,
    NotFound,
    PodRef,
    PodRequest,
    RepairReport,
    Status,
    hookimpl,
)
from terway_mode_exclusive_eni import _plan

__version__ = "0.1.0"
MODE = "exclusive_eni"
log = get_logger(__name__)


def _pod_limit(q: InstanceLimits) -> int:
    return q.exclusive_pods


@hookimpl
def terway_mode_info() -> ModeInfo:
    return ModeInfo(
        name=MODE,
        version=__version__,
        summary="exclusive ENI, the pod owns a whole ENI",
        exclusivity="exclusive",
        capabilities=frozenset({"ipv4", "ipv6", "dual_stack", "bandwidth", "host_peer", "fixed_ip"}),
        pod_limit_formula="EniQuantity - 1",
        pod_limit=_pod_limit,
        min_pod_limit=6,
        needs_cloud=True,
    )





@hookimpl
async def terway_allocate(ctx: ModeContext, request: PodRequest) -> Allocation:
    lease = await ctx.require_ipam().allocate_eni(request.owner, request.pod)
    eni = lease.eni
    return Allocation(
        kind="eni",
        ipv4=IPAssignment.in_subnet(lease.ipv4, eni.cidr4, eni.gateway4) if lease.ipv4 else None,
        ipv6=IPAssignment.in_subnet(lease.ipv6, eni.cidr6, eni.gateway6) if lease.ipv6 else None,
        eni_id=eni.eni_id,
        mac=eni.mac,
        vswitch_id=eni.vswitch_id,
        service_cidrs=tuple(ctx.config.eni.service_cidr),
        extra={"cidr4": eni.cidr4, "cidr6": eni.cidr6},
    )


@hookimpl
async def terway_release(ctx: ModeContext, request: PodRequest, allocation: Allocation | None) -> None:
    lost_key = f"lost/{request.owner}"
    lost = await ctx.store.acall(ctx.store.kv_get, MODE, lost_key)
    await ctx.require_ipam().release_eni(request.owner, discard=lost is not None)
    if lost is not None:
        await ctx.store.acall(ctx.store.kv_put, MODE, lost_key, None)


def _locate(mac: str, pod_netns: str) -> str | None:
    """The ENI's name in the node namespace, or None when it is already inside the pod.

    Waits for a hot-plugged ENI to appear in the node namespace, but first
    looks in the pod (a retried ADD after a crash finds it there at once)."""
    if pod_netns and netns.exists(pod_netns):
        try:
            dp.find_link_by_mac(mac, pod_netns, timeout=0)
            return None
        except Exception:
            pass
    return dp.find_link_by_mac(mac, timeout=10.0).name


async def _home_name(ctx: ModeContext, mac: str, pod_netns: str) -> str:
    """The ENI's name on the node, remembered in the store before the NIC moves
    so that a crash at any step can still return it under that name."""
    key = f"home/{mac}"
    remembered = await ctx.store.acall(ctx.store.kv_get, MODE, key)
    found = await ctx.run_sync(_locate, mac, pod_netns)
    if found is not None and found != remembered:
        await ctx.store.acall(ctx.store.kv_put, MODE, key, found)
        return found
    if remembered:
        return remembered
    # In the pod already and never recorded (state from another agent version): a stable name.
    return "eni" + mac.replace(":", "")[-10:]


async def _build(ctx: ModeContext, request: PodRequest, allocation: Allocation, home_name: str) -> dp.Plan:
    netconf = ctx.config.netconf
    host_veth = _plan.host_veth_name(request.pod.namespace, request.pod.name)
    peer = [*allocation.service_cidrs, *netconf.host_stack_cidrs]
    if ctx.node.primary_ip:
        peer.append(f"{ctx.node.primary_ip}/32")
    return _plan.pod_plan(
        pod_netns=request.netns,
        ifname=request.ifname,
        eni_mac=allocation.mac,
        eni_home_name=home_name,
        ip4=allocation.ipv4.address if allocation.ipv4 else None,
        cidr4=allocation.extra.get("cidr4"),
        gateway4=allocation.ipv4.gateway if allocation.ipv4 else None,
        ip6=allocation.ipv6.address if allocation.ipv6 else None,
        gateway6=allocation.ipv6.gateway if allocation.ipv6 else None,
        mtu=None if netconf.auto_mtu else netconf.mtu,
        host_peer=not netconf.disable_host_peer,
        host_veth=host_veth,
        peer_cidrs=peer,
        egress_bps=request.bandwidth.egress_bps,
        ingress_bps=request.bandwidth.ingress_bps,
    )


@hookimpl
async def terway_setup_link(ctx: ModeContext, request: PodRequest, allocation: Allocation) -> LinkResult:
    home = await _home_name(ctx, allocation.mac, request.netns)
    plan = await _build(ctx, request, allocation, home)
    global _masquerade_ensured
    if not ctx.config.netconf.disable_host_peer and not _masquerade_ensured:
        await ctx.run_sync(ensure_masquerade)  # once per agent; the repair pass re-checks it
        _masquerade_ensured = True
    try:
        await dp.apply_async(plan, limiter=ctx.netlink_limiter)
    except BaseException:
        # Give the NIC back to the node before the error is answered.
        await dp.remove_async(plan, limiter=ctx.netlink_limiter)
        raise
    link = await ctx.run_sync(dp.get_link, request.ifname, request.netns)
    ips, routes = [], []
    if allocation.ipv4:
        ips.append(CNIIP(address=f"{allocation.ipv4.address}/{allocation.ipv4.prefix_len}",
                         gateway=allocation.ipv4.gateway, interface=0))
        routes.append(CNIRoute(dst="0.0.0.0/0", gw=allocation.ipv4.gateway))
    if allocation.ipv6:
        ips.append(CNIIP(address=f"{allocation.ipv6.address}/128", gateway=allocation.ipv6.gateway, interface=0))
        routes.append(CNIRoute(dst="::/0", gw=allocation.ipv6.gateway))
    return LinkResult(
        interfaces=(CNIInterface(name=request.ifname, mac=allocation.mac, sandbox=request.netns,
                                 mtu=link.mtu if link else None),),
        ips=tuple(ips),
        routes=tuple(routes),
        state={"plan": plan.to_json(), "home_name": home},
    )


@hookimpl
async def terway_teardown_link(
    ctx: ModeContext, request: PodRequest, allocation: Allocation, link: LinkResult | None
) -> None:
    if link is not None and "plan" in link.state:
        plan = dp.Plan.from_json(link.state["plan"])
    else:
        # The agent died before recording the link: the NIC may be anywhere; find it by MAC.
        try:
            home = await _home_name(ctx, allocation.mac, request.netns)
        except NotFound as exc:
            await _mark_lost(ctx, request, allocation, str(exc))
            return
        plan = await _build(ctx, request, allocation, home)
    # remove() moves the NIC back to the node under its original name, down,
    # wherever it is (also when the pod's netns is already gone: the kernel
    # returns a physical NIC to the initial namespace, where we find it by MAC).
    await dp.remove_async(plan, limiter=ctx.netlink_limiter)
    await ctx.run_sync(_restore_name_after_netns_gone, allocation.mac, link.state.get("home_name") if link else None)
    if not await ctx.run_sync(_on_node, allocation.mac):
        await _mark_lost(ctx, request, allocation, "the NIC did not come back to the node")


def _on_node(mac: str) -> bool:
    try:
        dp.find_link_by_mac(mac, timeout=1.0)
        return True
    except NotFound:
        return False


async def _mark_lost(ctx: ModeContext, request: PodRequest, allocation: Allocation, why: str) -> None:
    """The NIC is neither on the node nor in the pod (its namespace was deleted
    with it inside, say): nothing of ours is left to remove, but the ENI must
    never be handed out again -- release discards it (detached and deleted)."""
    log.error("exclusive_eni.nic.lost", mac=allocation.mac, eni=allocation.eni_id, why=why)
    ctx.events.record(
        f"Node/{ctx.node.name}", "Node", "ENILost",
        f"the NIC of ENI {allocation.eni_id} ({allocation.mac}) of pod {request.pod.key} is gone; "
        "the ENI is detached and deleted instead of being reused",
        warning=True,
    )
    await ctx.store.acall(ctx.store.kv_put, MODE, f"lost/{request.owner}", allocation.eni_id)


def _restore_name_after_netns_gone(mac: str, home_name: str | None) -> None:
    """A veth-backed ENI dies with a deleted netns; a real NIC returns to the
    initial namespace under its in-pod name.  Either way, rename it home if found."""
    if not home_name:
        return
    try:
        link = dp.find_link_by_mac(mac, timeout=0)
    except Exception:
        return
    if link.name != home_name and link.netns is None:
        dp.apply(dp.Plan((dp.MovedLink(mac=mac, name=home_name, netns=None, home_name=home_name),)))


@hookimpl
async def terway_check_link(
    ctx: ModeContext, request: PodRequest, allocation: Allocation, link: LinkResult
) -> list[str]:
    if "plan" not in link.state:
        return ["no stored datapath plan for this attachment"]
    plan = dp.Plan.from_json(link.state["plan"])
    return [p.description for p in await dp.check_async(plan, limiter=ctx.netlink_limiter)]


@hookimpl
async def terway_policy(
    ctx: ModeContext, pod: PodRef, allocation: Allocation, policies: Sequence[Mapping[str, Any]]
) -> None:
    if policies:
        msg = (f"NetworkPolicy is not supported in exclusive ENI mode: {len(policies)} policy(ies) select "
               f"pod {pod.key} but cannot be enforced on node {ctx.node.name}")
        ctx.events.record(f"Node/{ctx.node.name}", "Node", "NetworkPolicyUnsupported", msg, warning=True)
        raise FeatureNotSupported(msg, pod=pod.key)


@hookimpl
async def terway_repair(ctx: ModeContext, live: Sequence[Attachment]) -> RepairReport:
    repaired, failed, checked = [], [], 0
    if any(a.mode == MODE for a in live) and not ctx.config.netconf.disable_host_peer:
        try:
            if await ctx.run_sync(ensure_masquerade):
                repaired.append(f"nftables table {_plan.NFT_TABLE}")
        except DatapathError as exc:
            failed.append(str(exc))
    for att in live:
        if att.mode != MODE or att.link is None or "plan" not in att.link.state:
            continue
        if att.netns and not netns.exists(att.netns):
            continue
        checked += 1
        try:
            report = await dp.apply_async(dp.Plan.from_json(att.link.state["plan"]), limiter=ctx.netlink_limiter)
        except Exception as exc:
            failed.append(f"{att.pod.key}: {exc}")
            continue
        repaired += [f"{att.pod.key}: {o.describe()}" for o in (*report.created, *report.changed)]
    return RepairReport(checked=checked, repaired=tuple(repaired), failed=tuple(failed))


@hookimpl
async def terway_status(ctx: ModeContext) -> Status:
    if ctx.ipam is None:
        return Status(50, "the IPAM is not running")
    return ctx.ipam.status()


_masquerade_ensured = False


def ensure_masquerade() -> bool:
    """Converge the nftables masquerade table; True when it had to be (re)written."""
    current = subprocess.run(
        ["nft", "list", "table", "inet", _plan.NFT_TABLE], capture_output=True, text=True, timeout=10
    )
    if current.returncode == 0 and _normalise(current.stdout) == _normalise(_plan.MASQUERADE_RULESET):
        return False
    script = f"table inet {_plan.NFT_TABLE}\nflush table inet {_plan.NFT_TABLE}\n{_plan.MASQUERADE_RULESET}"
    done = subprocess.run(["nft", "-f", "-"], input=script, capture_output=True, text=True, timeout=10)
    if done.returncode != 0:
        raise DatapathError(f"cannot install the nftables masquerade: {done.stderr.strip()}", table=_plan.NFT_TABLE)
    return True


def _normalise(text: str) -> str:
    return " ".join(text.split())
