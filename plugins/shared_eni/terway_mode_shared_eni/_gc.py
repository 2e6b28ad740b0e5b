"""Removing shared-ENI datapath leftovers that belong to no live attachment.

Runs rarely (CNI GC, the periodic pass), so it uses pyroute2's IPRoute for
its dumps.  Only objects with this mode's exact shape are touched:

* ``cali*`` veths (``cali`` + 11 hex digits);
* main-table host routes (``/32``, ``/128``) through a ``cali*`` device;
* prio-2048 rules ``from <host address> lookup 1000+N``;
* prio-512 rules ``to <host address> lookup main`` -- but only for an address
  that is visibly a pod's: it also has a prio-2048 rule or a host route through
  a ``cali*`` device.  The node-level prio-512 rules (Service CIDRs and
  ``host_stack_cidrs``, which may well be a single address such as node-local
  DNS' ``169.254.20.10/32``) have neither; they are also passed in as
  ``keep_dsts`` and never removed.

Everything else on the node -- other tools' rules and routes -- is left alone.
"""

from __future__ import annotations

import errno
import ipaddress
import socket
from collections.abc import Iterable

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from terway_agent.log import get_logger
from terway_agent.types import Allocation
from terway_mode_shared_eni._plan import (
    ENI_TABLE_BASE,
    HOST_VETH_PREFIX,
    RULE_FROM_POD,
    RULE_TO_POD,
    host_veth_name,
)

log = get_logger(__name__)
MAIN_TABLE = 254
_HOST_LEN = {socket.AF_INET: 32, socket.AF_INET6: 128}


def _rule_ip(rule: object, which: str) -> tuple[str | None, int]:
    attr = "FRA_DST" if which == "dst" else "FRA_SRC"
    return rule.get_attr(attr), rule[f"{which}_len"]  # type: ignore[attr-defined]


def _table(obj: object) -> int:
    return obj.get_attr("FRA_TABLE") or obj.get_attr("RTA_TABLE") or obj["table"]  # type: ignore[attr-defined]


def _is_host_veth(name: str) -> bool:
    return name.startswith(HOST_VETH_PREFIX) and len(name) == len(HOST_VETH_PREFIX) + 11


def _host_address(cidr: str) -> str | None:
    """The address of a single-host network (``a.b.c.d/32``, ``x::y/128``), else None."""
    try:
        net = ipaddress.ip_network(cidr, strict=False)
    except ValueError:
        return None
    return str(net.network_address) if net.prefixlen == net.max_prefixlen else None


def _pod_rules(ipr: IPRoute) -> list[tuple[object, str, int]]:
    """(rule, address, priority) of every rule shaped like this mode's per-pod rules."""
    out = []
    for family in (socket.AF_INET, socket.AF_INET6):
        for rule in ipr.get_rules(family=family):
            prio = rule.get_attr("FRA_PRIORITY")
            if prio == RULE_TO_POD and _table(rule) == MAIN_TABLE:
                ip, plen = _rule_ip(rule, "dst")
                if ip and plen == _HOST_LEN[family] and not rule.get_attr("FRA_SRC"):
                    out.append((rule, str(ipaddress.ip_address(ip)), prio))
            elif prio == RULE_FROM_POD and ENI_TABLE_BASE < _table(rule) < ENI_TABLE_BASE + 100000:
                ip, plen = _rule_ip(rule, "src")
                if ip and plen == _HOST_LEN[family] and not rule.get_attr("FRA_DST"):
                    out.append((rule, str(ipaddress.ip_address(ip)), prio))
    return out


def _pod_routes(ipr: IPRoute, veth_names: dict[int, str]) -> list[tuple[object, str, str]]:
    """(route, address, device) of every main-table host route through a ``cali*`` device."""
    out = []
    for family in (socket.AF_INET, socket.AF_INET6):
        for route in ipr.get_routes(family=family, table=MAIN_TABLE):
            dev = veth_names.get(route.get_attr("RTA_OIF"))
            dst = route.get_attr("RTA_DST")
            if dev is None or not dst or route["dst_len"] != _HOST_LEN[family] or _table(route) != MAIN_TABLE:
                continue
            out.append((route, str(ipaddress.ip_address(dst)), dev))
    return out


def _delete_rule(ipr: IPRoute, rule: object) -> None:
    r = rule  # type: ignore[assignment]
    kwargs = {
        "family": r["family"],  # type: ignore[index]
        "priority": r.get_attr("FRA_PRIORITY"),  # type: ignore[attr-defined]
        "table": _table(r),
    }
    for which in ("src", "dst"):
        ip, plen = _rule_ip(r, which)
        if ip:
            kwargs[which] = ip
            kwargs[f"{which}_len"] = plen
    try:
        ipr.rule("del", **kwargs)
    except NetlinkError as exc:
        if exc.code != errno.ENOENT:
            raise


def _delete_route(ipr: IPRoute, route: object, address: str) -> None:
    r = route  # type: ignore[assignment]
    try:
        # proto/scope/type as observed: pyroute2's defaults would match nothing
        ipr.route(
            "del",
            family=r["family"],  # type: ignore[index]
            dst=address,
            dst_len=r["dst_len"],  # type: ignore[index]
            oif=r.get_attr("RTA_OIF"),  # type: ignore[attr-defined]
            table=MAIN_TABLE,
            proto=r["proto"],  # type: ignore[index]
            scope=r["scope"],  # type: ignore[index]
            type=r["type"],  # type: ignore[index]
        )
    except NetlinkError as exc:
        if exc.code not in (errno.ESRCH, errno.ENOENT, errno.ENODEV):
            raise


def remove_leftovers(
    keep_veths: Iterable[str | None], keep_ips: Iterable[str], keep_dsts: Iterable[str] = ()
) -> list[str]:
    """Delete ``cali*`` veths, their host routes and per-pod rules of no live attachment.

    :param keep_veths: host veths of stored attachments.
    :param keep_ips: addresses of stored attachments.
    :param keep_dsts: node-level rule destinations (Service CIDRs,
        ``host_stack_cidrs``); a prio-512 rule to one of them is never removed.
    :returns: the errors (every leftover is attempted).
    """
    keep_v = {v for v in keep_veths if v}
    keep_i = {str(ipaddress.ip_address(i)) for i in keep_ips}
    protected = {a for a in map(_host_address, keep_dsts) if a is not None}
    errors: list[str] = []
    with IPRoute() as ipr:
        veths: dict[int, str] = {}
        for link in ipr.get_links():
            name = link.get_attr("IFLA_IFNAME") or ""
            info = link.get_attr("IFLA_LINKINFO")
            kind = info.get_attr("IFLA_INFO_KIND") if info is not None else None
            if _is_host_veth(name) and kind == "veth":
                veths[link["index"]] = name
        # Observe everything before deleting: a veth takes its routes along,
        # and those routes are what marks a prio-512 rule as a pod's.
        routes = _pod_routes(ipr, veths)
        rules = _pod_rules(ipr)
        pod_ips = {ip for _r, ip, _d in routes} | {ip for _r, ip, prio in rules if prio == RULE_FROM_POD}

        for index, name in veths.items():
            if name in keep_v:
                continue
            try:
                ipr.link("del", index=index)
                log.info("shared_eni.gc.veth_removed", device=name)
            except NetlinkError as exc:
                if exc.code != errno.ENODEV:
                    errors.append(f"deleting {name}: {exc}")
        for route, ip, dev in routes:
            if ip in keep_i or dev not in keep_v:
                continue  # a kept address, or gone with its veth
            try:
                _delete_route(ipr, route, ip)
                log.info("shared_eni.gc.route_removed", address=ip, device=dev)
            except NetlinkError as exc:
                errors.append(f"deleting the route to {ip} via {dev}: {exc}")
        for rule, ip, prio in rules:
            if ip in keep_i:
                continue
            if prio == RULE_TO_POD and (ip in protected or ip not in pod_ips):
                continue  # a node-level rule (Service / host-stack address), not a pod's
            try:
                _delete_rule(ipr, rule)
                log.info("shared_eni.gc.rule_removed", address=ip, priority=prio)
            except NetlinkError as exc:
                errors.append(f"deleting rule {prio} for {ip}: {exc}")
    return errors


def remove_pod_leftovers(namespace: str, name: str, allocation: Allocation) -> None:
    """Remove a pod's node-side objects without knowing its ENI (the ENI is gone
    and the agent died before recording the link)."""
    ips = {str(ipaddress.ip_address(a.address)) for a in allocation.addresses}
    with IPRoute() as ipr:
        try:
            ipr.link("del", ifname=host_veth_name(namespace, name))
        except NetlinkError as exc:
            if exc.code != errno.ENODEV:
                raise
        for rule, ip, _prio in _pod_rules(ipr):
            if ip in ips:
                _delete_rule(ipr, rule)
