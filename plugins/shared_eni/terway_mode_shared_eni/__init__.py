"""terway-agent mode ``shared_eni``: pods share the node's ENIs, one secondary IP
each, reached through a veth pair and policy routing (the original's default
mode).  Kernel objects: :mod:`terway_mode_shared_eni._plan` and
docs/modes/shared_eni.md.

The IPAM (``ctx.ipam``) hands out the addresses; this plugin turns an
allocation into kernel objects with the datapath library: plan as data,
observe, change only the difference.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import trio

from terway_agent import datapath as dp
from terway_agent.datapath import netns
from terway_agent.log import get_logger
from terway_agent.plugin import (
    CNIIP,
    Allocation,
    Attachment,
    CNIInterface,
    CNIRoute,
    InstanceLimits,
    LinkResult,
    ModeContext,
    ModeInfo,
    PodRequest,
    RepairReport,
    Status,
    hookimpl,
)
from terway_agent.podspec import wants_ip_reservation
from terway_mode_shared_eni import _gc, _plan

__version__ = "0.1.0"
MODE = "shared_eni"
log = get_logger(__name__)
STATEFUL_KINDS = ("StatefulSet",)


def _pod_limit(q: InstanceLimits) -> int:
    return q.shared_pods


@hookimpl
def terway_mode_info() -> ModeInfo:
    return ModeInfo(
        name=MODE,
        version=__version__,
        summary="shared ENI, veth + policy routing",
        exclusivity="shared",
        capabilities=frozenset({"ipv4", "ipv6", "dual_stack", "bandwidth", "hostport"}),
        pod_limit_formula="(EniQuantity - 1) x EniPrivateIpAddressQuantity",
        pod_limit=_pod_limit,
        min_pod_limit=11,
        needs_cloud=True,
    )




def _sticky(ctx: ModeContext, request: PodRequest) -> bool:
    """StatefulSet-like owners and pods annotated ``k8s.aliyun.com/pod-ip-reservation: "true"`` keep their IP."""
    kinds = set(STATEFUL_KINDS) | set(ctx.config.eni.custom_stateful_workload_kinds)
    return (bool(request.owner_kind) and request.owner_kind in kinds) or wants_ip_reservation(request.annotations)



@hookimpl
async def terway_allocate(ctx: ModeContext, request: PodRequest) -> Allocation:
    sticky = _sticky(ctx, request)
    lease = await ctx.require_ipam().allocate_ips(request.owner, request.pod, sticky=sticky)
    return lease.allocation("eni_ip", service_cidrs=tuple(ctx.config.eni.service_cidr), extra={"sticky": sticky})


@hookimpl
async def terway_release(ctx: ModeContext, request: PodRequest, allocation: Allocation | None) -> None:
    hold = bool(allocation is not None and allocation.extra.get("sticky"))
    await ctx.require_ipam().release_ips(request.owner, hold=hold)


#: ENI MAC -> its device name on the node, verified on every use (one link get
#: by name instead of a dump of every link, which grows with the pods).
_eni_names: dict[str, str] = {}


async def _find_eni(ctx: ModeContext, mac: str, *, timeout: float = dp.DEFAULT_LINK_TIMEOUT) -> dp.LinkInfo:
    """The ENI device with ``mac`` as it is now (waiting up to ``timeout`` s for a hot-plug)."""
    name = _eni_names.get(mac)
    if name is not None:
        link = await ctx.run_sync(dp.get_link, name)
        if link is not None and link.mac == mac:
            return link
    link = await dp.find_link_by_mac_async(mac, limiter=ctx.netlink_limiter, timeout=timeout)
    _eni_names[mac] = link.name
    return link


def _node_cidrs(ctx: ModeContext, allocation: Allocation | None = None) -> list[str]:
    """The CIDRs of the node-level prio-512 rules: Service CIDRs and host_stack_cidrs."""
    service = allocation.service_cidrs if allocation is not None else ctx.config.eni.service_cidr
    return [*service, *ctx.config.netconf.host_stack_cidrs]


def _node_plan(ctx: ModeContext, eni: dp.LinkInfo, allocation: Allocation) -> dp.Plan:
    """The per-ENI and node-level objects for ``allocation`` on the ENI device ``eni``."""
    return _plan.eni_plan(
        eni_dev=eni.name,
        eni_ifindex=eni.index,
        gateway4=allocation.ipv4.gateway if allocation.ipv4 else None,
        gateway6=allocation.ipv6.gateway if allocation.ipv6 else None,
    ) + _plan.node_plan(_node_cidrs(ctx, allocation))


async def _plans(ctx: ModeContext, request: PodRequest, allocation: Allocation) -> tuple[dp.Plan, dp.Plan, dict]:
    """(eni + node plan, pod plan, state) for an allocation; finds the ENI device by MAC."""
    eni = await _find_eni(ctx, allocation.mac)
    netconf = ctx.config.netconf
    mtu = eni.mtu if (netconf.auto_mtu and eni.mtu) else netconf.mtu
    host_veth = _plan.host_veth_name(request.pod.namespace, request.pod.name)
    pod = _plan.pod_plan(
        host_veth=host_veth,
        pod_netns=request.netns,
        ifname=request.ifname,
        pod_ip4=allocation.ipv4.address if allocation.ipv4 else None,
        pod_ip6=allocation.ipv6.address if allocation.ipv6 else None,
        eni_ifindex=eni.index,
        mtu=mtu,
        ingress_bps=request.bandwidth.ingress_bps,
        egress_bps=request.bandwidth.egress_bps,
    )
    node = _node_plan(ctx, eni, allocation)
    state = {"host_veth": host_veth, "eni_dev": eni.name, "eni_ifindex": eni.index, "mtu": mtu}
    return node, pod, state


@hookimpl
async def terway_setup_link(ctx: ModeContext, request: PodRequest, allocation: Allocation) -> LinkResult:
    node, pod, state = await _plans(ctx, request, allocation)
    if allocation.ipv6 is not None:
        await dp.apply_async(_plan.before_link_up(node), limiter=ctx.netlink_limiter)
    await dp.apply_async(node, limiter=ctx.netlink_limiter)
    try:
        await dp.apply_async(pod, limiter=ctx.netlink_limiter)
    except BaseException:
        await dp.remove_async(pod, limiter=ctx.netlink_limiter)
        raise
    ips = []
    routes = []
    if allocation.ipv4:
        ips.append(CNIIP(address=f"{allocation.ipv4.address}/32", gateway=_plan.POD_GATEWAY4, interface=1))
        routes.append(CNIRoute(dst="0.0.0.0/0", gw=_plan.POD_GATEWAY4))
    if allocation.ipv6:
        ips.append(CNIIP(address=f"{allocation.ipv6.address}/128", gateway=_plan.POD_GATEWAY6, interface=1))
        routes.append(CNIRoute(dst="::/0", gw=_plan.POD_GATEWAY6))
    return LinkResult(
        interfaces=(
            CNIInterface(name=state["host_veth"], mac=_plan.host_mac(state["host_veth"])),
            CNIInterface(name=request.ifname, mac=_plan.pod_mac(state["host_veth"]), sandbox=request.netns,
                         mtu=state["mtu"]),
        ),
        ips=tuple(ips),
        routes=tuple(routes),
        state={**state, "pod_plan": pod.to_json(), "node_plan": node.to_json()},
    )


def _stored_pod_plan(link: LinkResult | None) -> dp.Plan | None:
    if link is None or "pod_plan" not in link.state:
        return None
    return dp.Plan.from_json(link.state["pod_plan"])


async def _other_live_plan(ctx: ModeContext, request: PodRequest) -> dp.Plan | None:
    """The stored plan of another live attachment of the same pod (a newer sandbox)."""
    if not request.pod.namespace:
        return None
    for att in await ctx.store.acall(ctx.store.attachments_of_pod, request.pod):
        if att.container_id != request.container_id and att.state == "ready":
            plan = _stored_pod_plan(att.link)
            if plan is not None:
                return plan
    return None


@hookimpl
async def terway_teardown_link(
    ctx: ModeContext, request: PodRequest, allocation: Allocation, link: LinkResult | None
) -> None:
    plan = _stored_pod_plan(link)
    if plan is None:
        # The agent died before the link was recorded: rebuild what setup made.
        try:
            _node, plan, _state = await _plans(ctx, replace(request, netns=request.netns or "/nonexistent"), allocation)
        except Exception:
            # The ENI is gone too: remove what does not need its index.
            await ctx.run_sync(_gc.remove_pod_leftovers, request.pod.namespace, request.pod.name, allocation)
            return
    newer = await _other_live_plan(ctx, request)
    if newer is not None:
        # A newer sandbox of the same pod owns the host veth (and maybe the IP):
        # remove only what the old plan has and the new one does not.
        await dp.prune_async(plan, newer, limiter=ctx.netlink_limiter)
        return
    if _reaper is None:
        await dp.remove_async(plan, limiter=ctx.netlink_limiter)
        return
    # The pod's traffic stops once its rules and host route are gone: remove
    # those now.  Deleting a veth costs the kernel ~20 ms (an RCU grace period)
    # and takes everything on it along; the reaper does that right after the
    # answer.  The address is not handed out again before the reuse cooldown,
    # and the periodic GC removes a veth the reaper did not get to.
    routing = dp.Plan(tuple(o for o in plan.objects if isinstance(o, (dp.Rule, dp.Route)) and o.netns is None))
    await dp.remove_async(routing, limiter=ctx.netlink_limiter)
    # Only the veth itself: everything on it goes with it.  Rules, routes and
    # qdiscs are identified by what they are, not by sandbox, so a pod re-created
    # under the same name (same veth name, maybe the same IP) before the reaper
    # runs must not lose its own; the veth removal checks the peer's namespace.
    await _reaper.send(dp.Plan(tuple(o for o in plan.objects if isinstance(o, dp.Veth))))


class _Reaper:
    """Deletes the veths of deleted pods in the agent's service nursery (see terway_teardown_link)."""

    def __init__(self, ctx: ModeContext) -> None:
        self._ctx = ctx
        self._send, self._receive = trio.open_memory_channel[dp.Plan](1000)

    async def send(self, plan: dp.Plan) -> None:
        await self._send.send(plan)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        async for plan in self._receive:
            await self._remove(plan)

    async def _remove(self, plan: dp.Plan) -> None:
        try:
            await dp.remove_async(plan, limiter=self._ctx.netlink_limiter)
        except Exception as exc:  # the periodic GC removes what is left
            log.warning("shared_eni.reaper.failed", error=repr(exc))

    async def drain(self) -> None:
        """Finish what is queued (at shutdown)."""
        self._send.close()
        while True:
            try:
                plan = self._receive.receive_nowait()
            except (trio.WouldBlock, trio.EndOfChannel):
                return
            await self._remove(plan)


_reaper: _Reaper | None = None


@hookimpl
async def terway_start(ctx: ModeContext, nursery: trio.Nursery) -> None:
    global _reaper
    _reaper = _Reaper(ctx)
    await nursery.start(_reaper.run)


@hookimpl
async def terway_stop(ctx: ModeContext) -> None:
    global _reaper
    if _reaper is not None:
        reaper, _reaper = _reaper, None
        await reaper.drain()


@hookimpl
async def terway_check_link(
    ctx: ModeContext, request: PodRequest, allocation: Allocation, link: LinkResult
) -> list[str]:
    problems = []
    for key in ("node_plan", "pod_plan"):
        if key in link.state:
            plan = dp.Plan.from_json(link.state[key])
            problems += [p.description for p in await dp.check_async(plan, limiter=ctx.netlink_limiter)]
    eni = await ctx.run_sync(_eni_present, allocation.mac, link.state.get("eni_ifindex"))
    if eni:
        problems.append(eni)
    return problems


def _eni_present(mac: str, ifindex: int | None) -> str | None:
    try:
        found = dp.find_link_by_mac(mac, timeout=0)
    except Exception:
        return f"the ENI with MAC {mac} is not on this node"
    if ifindex is not None and found.index != ifindex:
        return f"the ENI with MAC {mac} is now ifindex {found.index}, the pod's rules use table {1000 + ifindex}"
    return None


@hookimpl
async def terway_repair(ctx: ModeContext, live: Sequence[Attachment]) -> RepairReport:
    """Re-create what is missing of live attachments (rules flushed by a reboot or
    another tool, a flushed ENI table).  The node plan is rebuilt from the ENI as it
    is now (found by MAC: its ifindex, name and table may have changed since ADD),
    the stored pod plan gets that ENI's table; an attachment whose netns is gone is
    skipped whole (GC removes it)."""
    repaired: list[str] = []
    failed: list[str] = []
    checked = 0
    enis: dict[str, dp.LinkInfo | Exception] = {}
    for att in live:
        if att.mode != MODE or att.link is None or att.allocation is None:
            continue
        if att.netns and not netns.exists(att.netns):
            continue  # the sandbox is gone; GC removes the attachment
        checked += 1
        mac = att.allocation.mac
        if mac not in enis:
            try:
                enis[mac] = await _find_eni(ctx, mac, timeout=0)  # no waiting in a repair pass
            except Exception as exc:
                enis[mac] = exc
        eni = enis[mac]
        if isinstance(eni, Exception):
            failed.append(f"{att.pod.key}: {eni}")
            continue
        try:
            repaired += await _repair_one(ctx, att, eni)
        except Exception as exc:
            failed.append(f"{att.pod.key}: {exc}")
    return RepairReport(checked=checked, repaired=tuple(repaired), failed=tuple(failed))


async def _repair_one(ctx: ModeContext, att: Attachment, eni: dp.LinkInfo) -> list[str]:
    assert att.link is not None and att.allocation is not None
    state = dict(att.link.state)
    node = _node_plan(ctx, eni, att.allocation)
    if att.allocation.ipv6 is not None:
        await dp.apply_async(_plan.before_link_up(node), limiter=ctx.netlink_limiter)
    report = await dp.apply_async(node, limiter=ctx.netlink_limiter)
    objects = [*report.created, *report.changed]
    moved = state.get("eni_ifindex") != eni.index or state.get("eni_dev") != eni.name
    if "pod_plan" in state:
        stored = dp.Plan.from_json(state["pod_plan"])
        pod = _plan.with_eni_table(stored, eni.index)
        if pod != stored:
            # the ENI's ifindex changed: its rules must look up the new table
            await dp.prune_async(stored, pod, limiter=ctx.netlink_limiter)
        report = await dp.apply_async(pod, limiter=ctx.netlink_limiter)
        objects += [*report.created, *report.changed]
        state["pod_plan"] = pod.to_json()
    if moved or state.get("node_plan") != node.to_json():
        state.update(node_plan=node.to_json(), eni_dev=eni.name, eni_ifindex=eni.index)
        link = replace(att.link, state=state)
        await ctx.store.acall(ctx.store.set_link, att.container_id, att.ifname, link)
        log.info("shared_eni.repair.plan_updated", eni_dev=eni.name, eni_ifindex=eni.index, pod=att.pod.key)
    return [f"{att.pod.key}: {o.describe()}" for o in objects]


@hookimpl
async def terway_gc(ctx: ModeContext, live: Sequence[Attachment]) -> list[str]:
    # Every stored attachment, whatever its state: one being ADDed right now has
    # its veth before its link result is recorded.
    keep_veths = {_plan.host_veth_name(att.pod.namespace, att.pod.name) for att in live}
    keep_veths |= {att.link.state.get("host_veth") for att in live if att.link is not None}
    keep_ips = {a.address for att in live if att.allocation for a in att.allocation.addresses}
    # The node-level rules (Service CIDRs, host_stack_cidrs) are never a pod's,
    # also when a CIDR is a single address (node-local DNS): the configured ones
    # and those of the stored node plans.
    keep_dsts = set(_node_cidrs(ctx))
    for att in live:
        if att.link is not None and "node_plan" in att.link.state:
            plan = dp.Plan.from_json(att.link.state["node_plan"])
            keep_dsts |= {o.dst for o in plan.objects if isinstance(o, dp.Rule) and o.dst}
    return await ctx.run_sync(_gc.remove_leftovers, keep_veths, keep_ips, keep_dsts)


@hookimpl
async def terway_status(ctx: ModeContext) -> Status:
    if ctx.ipam is None:
        return Status(50, "the IPAM is not running")
    return ctx.ipam.status()
