"""``example``: a minimal third-party terway-agent mode (docs/plugin-guide.md).

Pods get addresses from a local subnet (no cloud), leased through the core's
store so an address is never handed to two pods, and a veth pair: the pod's
``eth0`` with the address /32 and a default route via 169.254.1.1 (a permanent
neighbour pointing at the host end), the host end with a /32 route back.

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


def _link(ipr: IPRoute, name: str):
    """The link named ``name``, or None.  One RTM_GETLINK by name: never a dump,
    which costs O(links on the node) in Python."""
    try:
        return ipr.link("get", ifname=name)[0]
    except NetlinkError as exc:
        if exc.code == errno.ENODEV:
            return None
        raise


def _setup(ns_path: str, ifname: str, host_if: str, address: str, mtu: int) -> tuple[str, str]:
    with IPRoute() as ipr:
        stale = _link(ipr, host_if)
        if stale is not None:  # a retried ADD after a crash: start from scratch
            ipr.link("del", index=stale["index"])
        import os

        fd = os.open(netns.netns_path(ns_path), os.O_RDONLY | os.O_CLOEXEC)
        try:
            ipr.link("add", ifname=host_if, kind="veth", mtu=mtu, peer={"ifname": ifname, "net_ns_fd": fd, "mtu": mtu})
        except NetlinkError as exc:
            if exc.code == errno.EEXIST:
                raise DatapathError(f"interface {ifname} already exists in {ns_path}", netns=ns_path, device=ifname) from None
            raise DatapathError(f"creating veth {host_if}: {exc}", device=host_if, errno=exc.code) from None
        finally:
            os.close(fd)
        host = _link(ipr, host_if)
        idx, host_mac = host["index"], host.get_attr("IFLA_ADDRESS")
        ipr.link("set", index=idx, state="up")
        ipr.route("replace", dst=f"{address}/32", oif=idx, scope="link")
    with netns.enter(ns_path), IPRoute() as ipr:
        pod = _link(ipr, ifname)
        idx, pod_mac = pod["index"], pod.get_attr("IFLA_ADDRESS")
        ipr.link("set", index=1, state="up")  # lo is always ifindex 1
        ipr.link("set", index=idx, state="up")
        ipr.addr("add", index=idx, address=address, prefixlen=32)
        ipr.neigh("replace", dst=GATEWAY, lladdr=host_mac, ifindex=idx, state="permanent")
        ipr.route("replace", dst="0.0.0.0/0", gateway=GATEWAY, oif=idx, flags=["onlink"])
    return host_mac, pod_mac


@hookimpl
async def terway_setup_link(ctx: ModeContext, request: PodRequest, allocation: Allocation) -> LinkResult:
    assert allocation.ipv4 is not None
    host_if = host_ifname(request.container_id, request.ifname)
    mtu = ctx.config.netconf.mtu
    try:
        _host_mac, pod_mac = await ctx.run_sync(_setup, request.netns, request.ifname, host_if, allocation.ipv4.address, mtu)
    except BaseException:
        await ctx.run_sync(_delete_link, host_if)
        raise
    return LinkResult(
        interfaces=(CNIInterface(name=host_if), CNIInterface(name=request.ifname, mac=pod_mac, sandbox=request.netns, mtu=mtu)),
        ips=(CNIIP(address=f"{allocation.ipv4.address}/32", gateway=GATEWAY, interface=1),),
        routes=(CNIRoute(dst="0.0.0.0/0", gw=GATEWAY),),
        state={"host_if": host_if},
    )


def _delete_link(name: str) -> None:
    with IPRoute() as ipr:
        try:
            ipr.link("del", ifname=name)
        except NetlinkError as exc:
            if exc.code != errno.ENODEV:
                raise DatapathError(f"deleting {name}: {exc}", device=name, errno=exc.code) from None


@hookimpl
async def terway_teardown_link(ctx: ModeContext, request: PodRequest, allocation: Allocation, link: LinkResult | None) -> None:
    host_if = link.state["host_if"] if link is not None else host_ifname(request.container_id, request.ifname)
    await ctx.run_sync(_delete_link, host_if)


def _check(ns_path: str, ifname: str, host_if: str, address: str) -> list[str]:
    problems = []
    with IPRoute() as ipr:
        if _link(ipr, host_if) is None:
            problems.append(f"host veth {host_if} is missing")
    if not netns.exists(ns_path):
        return problems + [f"network namespace {ns_path} is gone"]
    with netns.enter(ns_path), IPRoute() as ipr:
        link = _link(ipr, ifname)
        if link is None:
            return problems + [f"{ifname} is missing in {ns_path}"]
        addrs = {a.get_attr("IFA_ADDRESS") for a in ipr.get_addr(index=link["index"])}
        if address not in addrs:
            problems.append(f"{ifname} lacks address {address}")
        if not any(r.get_attr("RTA_GATEWAY") == GATEWAY for r in ipr.get_routes(family=2, table=254)):
            problems.append(f"default route via {GATEWAY} is missing")
    return problems


@hookimpl
async def terway_check_link(ctx: ModeContext, request: PodRequest, allocation: Allocation, link: LinkResult) -> list[str]:
    assert allocation.ipv4 is not None
    return await ctx.run_sync(_check, request.netns, request.ifname, link.state["host_if"], allocation.ipv4.address)


def _leftovers(keep: set[str]) -> list[str]:
    with IPRoute() as ipr:
        names = [link.get_attr("IFLA_IFNAME") for link in ipr.get_links()]
    return [n for n in names if n and n.startswith(HOST_PREFIX) and n not in keep]


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
