"""``example``: a minimal third-party terway-agent mode (docs/plugin-guide.md).

Pods get addresses from a local subnet (no cloud), leased through the core's
store so an address is never handed to two pods, and a veth pair: the pod's
``eth0`` with the address /32 and a default route via 169.254.1.1 (a permanent
neighbour pointing at the host end), the host end with a /32 route back --
described as a plan and applied by the project's datapath library.

Configure it in the agent settings::

    mode: example
    plugin_config:
      example:
        subnet: 10.250.0.0/24

It implements every hook a mode needs, and nothing else.
"""

from __future__ import annotations

import errno
import hashlib
import ipaddress
import itertools
from collections.abc import Sequence

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from terway_agent import datapath as dp
from terway_agent.datapath import netns
from terway_agent.plugin import (
    CNIIP,
    Allocation,
    AllocationError,
    Attachment,
    CNIInterface,
    CNIRoute,
    ConfigError,
    DatapathError,
    IPAssignment,
    LinkResult,
    ModeContext,
    ModeInfo,
    PodRequest,
    RepairReport,
    hookimpl,
)

__version__ = "0.1.0"
GATEWAY = "169.254.1.1"
HOST_PREFIX = "exm"
DEFAULT_SUBNET = "10.250.0.0/24"


def _subnet(ctx: ModeContext) -> ipaddress.IPv4Network:
    raw = ctx.plugin_config.get("subnet", DEFAULT_SUBNET)
    try:
        net = ipaddress.IPv4Network(raw)
    except ValueError:
        raise ConfigError("plugin_config.example.subnet", raw, "an IPv4 CIDR such as 10.250.0.0/24") from None
    if net.prefixlen > 30:
        raise ConfigError("plugin_config.example.subnet", raw, "a subnet of /30 or larger")
    return net


def host_ifname(container_id: str, ifname: str) -> str:
    return HOST_PREFIX + hashlib.sha1(f"{container_id}/{ifname}".encode()).hexdigest()[:11]


@hookimpl
def terway_mode_info() -> ModeInfo:
    return ModeInfo(
        name="example",
        version=__version__,
        summary="example third-party mode: host-local addresses on a veth",
        capabilities=frozenset({"ipv4"}),
        pod_limit_formula="addresses in plugin_config.example.subnet",
        needs_cloud=False,
    )


@hookimpl
def terway_validate_config(config, mode: str) -> list[str]:
    raw = config.settings.plugin_config.get("example", {}).get("subnet", DEFAULT_SUBNET)
    try:
        ipaddress.IPv4Network(raw)
    except ValueError:
        return [f"plugin_config.example.subnet: got {raw!r}, expected an IPv4 CIDR such as 10.250.0.0/24"]
    return []


@hookimpl
async def terway_allocate(ctx: ModeContext, request: PodRequest) -> Allocation:
    net = _subnet(ctx)
    hosts = (str(h) for h in itertools.islice(net.hosts(), 1, None))  # the first host is kept for the node
    pool = f"example:{net}"
    cooldown = ctx.config.eni.ip_reuse_cooldown
    address = await ctx.store.acall(
        lambda: ctx.store.lease(pool, hosts, request.owner, pod=request.pod.key, cooldown=cooldown)
    )
    if address is None:
        raise AllocationError(f"no free address in {net}", subnet=str(net))
    return Allocation(kind="local", ipv4=IPAssignment(address, 32, GATEWAY), extra={"pool": pool})


@hookimpl
async def terway_release(ctx: ModeContext, request: PodRequest, allocation: Allocation | None) -> None:
    pool = allocation.extra["pool"] if allocation is not None else f"example:{_subnet(ctx)}"
    await ctx.store.acall(ctx.store.release_lease, pool, request.owner)


def _plan(ns_path: str, ifname: str, host_if: str, address: str, mtu: int) -> dp.Plan:
    """The kernel objects of one pod, as data (applied by the datapath library,
    which observes first and changes only the difference)."""
    host_mac = dp.stable_mac(f"example/{host_if}")
    return dp.Plan((
        dp.Veth(name=host_if, peer_name=ifname, peer_netns=ns_path, mtu=mtu, mac=host_mac),
        dp.LinkState(name=host_if),
        dp.LinkState(name="lo", netns=ns_path),
        dp.LinkState(name=ifname, netns=ns_path),
        dp.Address(dev=ifname, address=f"{address}/32", netns=ns_path),
        dp.Neighbour(dev=ifname, ip=GATEWAY, lladdr=host_mac, netns=ns_path),
        dp.Route(dst="0.0.0.0/0", gateway=GATEWAY, dev=ifname, onlink=True, netns=ns_path),
        dp.Route(dst=f"{address}/32", dev=host_if, scope="link"),
    ))


@hookimpl
async def terway_setup_link(ctx: ModeContext, request: PodRequest, allocation: Allocation) -> LinkResult:
    assert allocation.ipv4 is not None
    host_if = host_ifname(request.container_id, request.ifname)
    mtu = ctx.config.netconf.mtu
    plan = _plan(request.netns, request.ifname, host_if, allocation.ipv4.address, mtu)
    try:
        await dp.apply_async(plan, limiter=ctx.netlink_limiter)
    except BaseException:
        await dp.remove_async(plan, limiter=ctx.netlink_limiter)
        raise
    pod = await ctx.run_sync(dp.get_link, request.ifname, request.netns)
    return LinkResult(
        interfaces=(CNIInterface(name=host_if),
                    CNIInterface(name=request.ifname, mac=pod.mac if pod else "", sandbox=request.netns, mtu=mtu)),
        ips=(CNIIP(address=f"{allocation.ipv4.address}/32", gateway=GATEWAY, interface=1),),
        routes=(CNIRoute(dst="0.0.0.0/0", gw=GATEWAY),),
        state={"host_if": host_if, "plan": plan.to_json()},
    )


def _stored_plan(ctx: ModeContext, request: PodRequest, allocation: Allocation, link: LinkResult | None) -> dp.Plan:
    if link is not None and "plan" in link.state:
        return dp.Plan.from_json(link.state["plan"])
    assert allocation.ipv4 is not None
    host_if = host_ifname(request.container_id, request.ifname)
    return _plan(request.netns or "/nonexistent", request.ifname, host_if, allocation.ipv4.address, ctx.config.netconf.mtu)


@hookimpl
async def terway_teardown_link(ctx: ModeContext, request: PodRequest, allocation: Allocation, link: LinkResult | None) -> None:
    await dp.remove_async(_stored_plan(ctx, request, allocation, link), limiter=ctx.netlink_limiter)


@hookimpl
async def terway_check_link(ctx: ModeContext, request: PodRequest, allocation: Allocation, link: LinkResult) -> list[str]:
    plan = _stored_plan(ctx, request, allocation, link)
    return [p.description for p in await dp.check_async(plan, limiter=ctx.netlink_limiter)]


def _leftovers(keep: set[str]) -> list[str]:
    with IPRoute() as ipr:
        names = [link.get_attr("IFLA_IFNAME") for link in ipr.get_links()]
    return [n for n in names if n and n.startswith(HOST_PREFIX) and n not in keep]


def _delete_link(name: str) -> None:
    with IPRoute() as ipr:
        try:
            ipr.link("del", ifname=name)
        except NetlinkError as exc:
            if exc.code != errno.ENODEV:
                raise DatapathError(f"deleting {name}: {exc}", device=name, errno=exc.code) from None


@hookimpl
async def terway_gc(ctx: ModeContext, live: Sequence[Attachment]) -> list[str]:
    keep = {a.link.state.get("host_if", "") for a in live if a.link is not None}
    keep |= {host_ifname(a.container_id, a.ifname) for a in live}
    errors = []
    for name in await ctx.run_sync(_leftovers, keep):
        try:
            await ctx.run_sync(_delete_link, name)
        except DatapathError as exc:
            errors.append(str(exc))
    return errors


@hookimpl
async def terway_repair(ctx: ModeContext, live: Sequence[Attachment]) -> RepairReport:
    """Re-apply the stored plan of every live pod whose netns is still there:
    only missing or changed objects are touched.  A pod whose plan cannot be
    applied is reported as failed (the agent's STATUS answers 51 meanwhile)."""
    repaired: list[str] = []
    failed: list[str] = []
    checked = 0
    for att in live:
        if att.link is None or "plan" not in att.link.state or not att.netns or not netns.exists(att.netns):
            continue
        checked += 1
        try:
            report = await dp.apply_async(dp.Plan.from_json(att.link.state["plan"]), limiter=ctx.netlink_limiter)
        except Exception as exc:  # reported, not swallowed: the core logs it and answers STATUS 51
            failed.append(f"{att.pod.key or att.container_id}: {exc}")
            continue
        repaired += [f"{att.pod.key}: {o.describe()}" for o in (*report.created, *report.changed)]
    return RepairReport(checked=checked, repaired=tuple(repaired), failed=tuple(failed))
