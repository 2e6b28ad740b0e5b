"""terway-agent mode ``exclusive_eni``: each pod owns a whole ENI, moved into its
network namespace (VM-grade network performance, low density: EniQuantity - 1
pods per node).  Kernel objects: :mod:`terway_mode_exclusive_eni._plan` and
docs/modes/exclusive_eni.md.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import replace
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
    LinkResult,
    ModeContext,
    ModeInfo,
    NotFound,
    PermanentError,
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

#: TEST-ONLY crash hook.  ``TERWAY_TEST_CRASH_AT=<step>`` in the agent's
#: environment makes the agent process die with ``os._exit(137)`` (what kill -9
#: looks like to its supervisor) when an exclusive ADD or DEL reaches
#: ``<step>``, so tests/exclusive_eni can crash the agent deterministically at
#: each step of the move and check what the restarted agent does.  Never set it
#: in production; an unknown step stops the agent at start (a typo must not
#: make a crash test pass without crashing).
CRASH_ENV = "TERWAY_TEST_CRASH_AT"
#: The steps, in the order an ADD and then a DEL reach them.
CRASH_STEPS = (
    "home_stored",  # ADD: the ENI's node-side name is in the store, the NIC not touched yet
    *_plan.STAGES,  # ADD: nic_moved, nic_addressed, host_peer_created (each stage applied)
    "before_commit",  # ADD: the datapath is complete, the attachment not yet committed ready
    "del_nic_home",  # DEL: the NIC is back on the node, the ENI not yet released
)


def _crash_point(step: str) -> None:
    """Die here if the test-only :data:`CRASH_ENV` names ``step``."""
    if os.environ.get(CRASH_ENV) == step:
        log.critical("exclusive_eni.test_crash.exiting", step=step)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(137)


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
    return lease.allocation(
        "eni",
        service_cidrs=tuple(ctx.config.eni.service_cidr),
        extra={"cidr4": lease.eni.cidr4, "cidr6": lease.eni.cidr6},
    )


@hookimpl
async def terway_release(ctx: ModeContext, request: PodRequest, allocation: Allocation | None) -> None:
    lost_key = f"lost/{request.owner}"
    lost = await ctx.store.acall(ctx.store.kv_get, MODE, lost_key)
    await ctx.require_ipam().release_eni(request.owner, discard=lost is not None)
    if lost is not None:
        await ctx.store.acall(ctx.store.kv_put, MODE, lost_key, None)


def _locate(mac: str, pod_netns: str) -> tuple[str | None, int | None]:
    """The ENI's name in the node namespace (None when it is already inside the
    pod) and its current MTU.

    Waits for a hot-plugged ENI to appear in the node namespace, but first
    looks in the pod (a retried ADD after a crash finds it there at once)."""
    if pod_netns and netns.exists(pod_netns):
        try:
            return None, dp.find_link_by_mac(mac, pod_netns, timeout=0).mtu
        except (NotFound, DatapathError):  # not in the pod, or the namespace went meanwhile
            pass
    link = dp.find_link_by_mac(mac, timeout=10.0)
    return link.name, link.mtu


async def _home_name(ctx: ModeContext, mac: str, pod_netns: str, *, at_setup: bool) -> tuple[str, int | None]:
    """The ENI's name on the node and its current MTU.

    At setup the NIC normally sits on the node: its current name *is* its home
    (names change across reboots and hot-plugs) and is stored before the NIC
    moves, so a crash at any later step still returns it under that name.  On
    the teardown path (an attachment whose link was never recorded) the stored
    name wins over whatever name the NIC has now (a physical NIC returned by a
    deleted netns comes back under a kernel-chosen name)."""
    key = f"home/{mac}"
    remembered = await ctx.store.acall(ctx.store.kv_get, MODE, key)
    found, mtu = await ctx.run_sync(_locate, mac, pod_netns)
    if found is not None and (at_setup or not remembered):
        if found != remembered:
            await ctx.store.acall(ctx.store.kv_put, MODE, key, found)
        return found, mtu
    if remembered:
        if found is not None and found != remembered:
            log.info("exclusive_eni.home_name.kept", mac=mac, remembered=remembered, current=found)
        return remembered, mtu
    # In the pod already and never recorded (state from another agent version): a stable name.
    return _fallback_name(mac), mtu


def _fallback_name(mac: str) -> str:
    return "eni" + mac.replace(":", "")[-10:]


def _usable_home(mac: str, home: str) -> str:
    """``home``, unless another device (another MAC) holds that name on the node
    now -- after a reboot or a hot-plug the kernel may have given it away: then
    the NIC goes home under its stable fallback name instead of failing forever."""
    other = dp.get_link(home)
    if other is None or not other.mac or other.mac.lower() == mac.lower():
        return home
    fallback = _fallback_name(mac)
    log.warning("exclusive_eni.home_name.taken", mac=mac, home=home, holder_mac=other.mac, using=fallback)
    return fallback


def _with_home(plan: dp.Plan, home: str) -> dp.Plan:
    return dp.Plan(tuple(
        replace(o, home_name=home) if isinstance(o, dp.MovedLink) else o for o in plan.objects
    ))


def _node_ip6s(primary_mac: str) -> list[str]:
    """The global IPv6 addresses of the node's primary NIC (found by MAC), as
    the kernel holds them: the node's IPv6 address is not in its metadata-based
    :class:`NodeInfo`.  Empty when the NIC or an address is not there."""
    from pyroute2 import IPRoute

    try:
        link = dp.find_link_by_mac(primary_mac, timeout=0)
    except (NotFound, DatapathError):
        return []
    with IPRoute() as ipr:
        addrs = ipr.get_addr(family=socket.AF_INET6, index=link.index)
    return sorted({str(a.get_attr("IFA_ADDRESS")) for a in addrs if a["scope"] == 0})


async def _node_ip6(ctx: ModeContext, allocation: Allocation) -> list[str]:
    if allocation.ipv6 is None or ctx.config.netconf.disable_host_peer or not ctx.node.primary_mac:
        return []
    return await ctx.run_sync(_node_ip6s, ctx.node.primary_mac)


def _stages(
    ctx: ModeContext,
    request: PodRequest,
    allocation: Allocation,
    home_name: str,
    eni_mtu: int | None,
    node_ip6s: Sequence[str] = (),
) -> tuple[tuple[str, dp.Plan], ...]:
    netconf = ctx.config.netconf
    host_veth = _plan.host_veth_name(request.pod.namespace, request.pod.name)
    peer = [*allocation.service_cidrs, *netconf.host_stack_cidrs, *(f"{ip}/128" for ip in node_ip6s)]
    if ctx.node.primary_ip:
        peer.append(f"{ctx.node.primary_ip}/32")
    return _plan.pod_stages(
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
        eni_mtu=eni_mtu or 1500,
        host_peer=not netconf.disable_host_peer,
        host_veth=host_veth,
        peer_cidrs=peer,
        egress_bps=request.bandwidth.egress_bps,
        ingress_bps=request.bandwidth.ingress_bps,
    )


def _whole(stages: tuple[tuple[str, dp.Plan], ...]) -> dp.Plan:
    plan = dp.Plan()
    for _, part in stages:
        plan = plan + part
    return plan


async def _build(
    ctx: ModeContext, request: PodRequest, allocation: Allocation, home_name: str, eni_mtu: int | None
) -> dp.Plan:
    return _whole(_stages(ctx, request, allocation, home_name, eni_mtu, await _node_ip6(ctx, allocation)))


@hookimpl
async def terway_setup_link(ctx: ModeContext, request: PodRequest, allocation: Allocation) -> LinkResult:
    home, eni_mtu = await _home_name(ctx, allocation.mac, request.netns, at_setup=True)
    _crash_point("home_stored")
    stages = _stages(ctx, request, allocation, home, eni_mtu, await _node_ip6(ctx, allocation))
    plan = _whole(stages)
    global _masquerade_ensured
    if not ctx.config.netconf.disable_host_peer and not _masquerade_ensured:
        await ctx.run_sync(ensure_masquerade)  # once per agent; the repair pass re-checks it
        _masquerade_ensured = True
    try:
        # One stage at a time (the NIC moved in, configured, the host peer): each
        # is a real intermediate state a crash can leave, which DEL, a retried
        # ADD and the start-up roll-back (terway_start) all undo by MAC.
        for step, part in stages:
            if part.objects:
                await dp.apply_async(part, limiter=ctx.netlink_limiter)
            _crash_point(step)
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
    _crash_point("before_commit")
    return LinkResult(
        interfaces=(CNIInterface(name=request.ifname, mac=allocation.mac, sandbox=request.netns,
                                 mtu=link.mtu if link else None),),
        ips=tuple(ips),
        routes=tuple(routes),
        state={"plan": plan.to_json(), "home_name": home},
    )


@hookimpl
async def terway_start(ctx: ModeContext, nursery: Any) -> None:
    if ctx.mode != MODE:
        return
    step = os.environ.get(CRASH_ENV)
    if step:
        if step not in CRASH_STEPS:
            raise PermanentError(
                f"{CRASH_ENV}={step!r} names no crash point of mode {MODE}: expected one of "
                f"{', '.join(CRASH_STEPS)} (a test-only setting; unset it in production)"
            )
        log.warning("exclusive_eni.test_crash.armed", step=step)
    await _roll_back_half_made(ctx)


async def _roll_back_half_made(ctx: ModeContext) -> None:
    """At start: give back the NIC of every attachment the agent died setting up.

    An attachment still ``allocated`` (never committed ``ready``) may have its
    NIC anywhere between the node and the pod, half configured.  Its datapath
    is undone now -- the NIC back on the node under its original name, down; the
    host veth and route gone -- so no NIC is stranded in a namespace whatever
    the runtime does next.  The ENI stays the attachment's (the store and the
    pool agree) until the runtime's DEL, a retried ADD or GC releases it."""
    atts = await ctx.store.acall(ctx.store.attachments)
    for att in atts:
        if att.mode != MODE or att.state != "allocated" or att.allocation is None or att.link is not None:
            continue
        request = _request_of(att)
        try:
            await terway_teardown_link(ctx, request, att.allocation, None)
        except Exception as exc:  # the next DEL/GC retries; the agent must still start
            log.error("exclusive_eni.rollback.failed", container=att.container_id, error=repr(exc))
            continue
        log.warning("exclusive_eni.rollback.done", container=att.container_id, eni=att.allocation.eni_id,
                    mac=att.allocation.mac)


def _request_of(att: Attachment) -> PodRequest:
    """The stored ADD request of ``att`` (what teardown needs: pod, netns, owner)."""
    try:
        base = PodRequest.from_dict(dict(att.request))
    except (KeyError, TypeError, ValueError):
        return PodRequest(verb="GC", container_id=att.container_id, ifname=att.ifname, netns=att.netns,
                          pod=att.pod, network=att.network)
    return replace(base, verb="GC", netns=att.netns or base.netns)


@hookimpl
async def terway_teardown_link(
    ctx: ModeContext, request: PodRequest, allocation: Allocation, link: LinkResult | None
) -> None:
    home: str | None = None
    if link is not None and "plan" in link.state:
        plan = dp.Plan.from_json(link.state["plan"])
        home = link.state.get("home_name")
    else:
        # The agent died before recording the link: the NIC may be anywhere; find it by MAC.
        try:
            home, eni_mtu = await _home_name(ctx, allocation.mac, request.netns, at_setup=False)
        except NotFound as exc:
            await _mark_lost(ctx, request, allocation, str(exc))
            return
        plan = await _build(ctx, request, allocation, home, eni_mtu)
    if home:
        usable = await ctx.run_sync(_usable_home, allocation.mac, home)
        if usable != home:
            home, plan = usable, _with_home(plan, usable)
    # remove() moves the NIC back to the node under its original name, down,
    # wherever it is (also when the pod's netns is already gone: the kernel
    # returns a physical NIC to the initial namespace, where we find it by MAC).
    await dp.remove_async(plan, limiter=ctx.netlink_limiter)
    await ctx.run_sync(_restore_name_after_netns_gone, allocation.mac, home)
    if not await ctx.run_sync(_on_node, allocation.mac):
        await _mark_lost(ctx, request, allocation, "the NIC did not come back to the node")
        return
    if request.verb == "DEL":
        _crash_point("del_nic_home")


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
    problems = [p.description for p in await dp.check_async(plan, limiter=ctx.netlink_limiter)]
    if any(isinstance(o, dp.Veth) for o in plan.objects):
        # the host peer's traffic needs the node's masquerade (repair restores it)
        why = await ctx.run_sync(masquerade_problem)
        if why is not None:
            problems.append(why)
    return problems


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
            # link_timeout=0: repair runs with every ADD/DEL held at the gate
            # (service.exclusive()); a NIC that is not there is reported at
            # once, never waited for as a hot-plug would be.
            report = await dp.apply_async(
                dp.Plan.from_json(att.link.state["plan"]), limiter=ctx.netlink_limiter, link_timeout=0
            )
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


def masquerade_problem() -> str | None:
    """What is wrong with the node's nftables masquerade (``nft list table``
    compared with the table as :func:`ensure_masquerade` writes it), or None."""
    current = subprocess.run(
        ["nft", "list", "table", "inet", _plan.NFT_TABLE], capture_output=True, text=True, timeout=10
    )
    if current.returncode != 0:
        return (f"nftables table inet {_plan.NFT_TABLE} (masquerade of host-peer traffic): missing: "
                f"{current.stderr.strip() or 'nft exited ' + str(current.returncode)}")
    if _normalise(current.stdout) != _normalise(_plan.MASQUERADE_RULESET):
        return (f"nftables table inet {_plan.NFT_TABLE} (masquerade of host-peer traffic): different: "
                f"{_normalise(current.stdout)!r}, expected {_normalise(_plan.MASQUERADE_RULESET)!r}")
    return None


def ensure_masquerade() -> bool:
    """Converge the nftables masquerade table; True when it had to be (re)written."""
    if masquerade_problem() is None:
        return False
    script = f"table inet {_plan.NFT_TABLE}\nflush table inet {_plan.NFT_TABLE}\n{_plan.MASQUERADE_RULESET}"
    done = subprocess.run(["nft", "-f", "-"], input=script, capture_output=True, text=True, timeout=10)
    if done.returncode != 0:
        raise DatapathError(f"cannot install the nftables masquerade: {done.stderr.strip()}", table=_plan.NFT_TABLE)
    return True


def _normalise(text: str) -> str:
    return " ".join(text.split())
