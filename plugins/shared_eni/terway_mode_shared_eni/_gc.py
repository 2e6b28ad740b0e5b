"""Removing shared-ENI datapath leftovers that belong to no live attachment.

Runs rarely (CNI GC, the periodic pass), so it uses pyroute2's IPRoute for
its dumps.  Only objects with this mode's exact shape are touched: ``cali*``
veths, prio-512 rules ``to <host address> lookup main`` and prio-2048 rules
``from <host address> lookup 1000+N``.  Everything else on the node -- other
tools' rules, the Service/host-stack CIDR rules -- is left alone.
"""

from __future__ import annotations

import errno
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


def _table(rule: object) -> int:
    return rule.get_attr("FRA_TABLE") or rule["table"]  # type: ignore[attr-defined]


def _pod_rules(ipr: IPRoute) -> list[tuple[object, str]]:
    """(rule, pod address) of every rule shaped like this mode's per-pod rules."""
    out = []
    for family in (socket.AF_INET, socket.AF_INET6):
        for rule in ipr.get_rules(family=family):
            prio = rule.get_attr("FRA_PRIORITY")
            if prio == RULE_TO_POD and _table(rule) == MAIN_TABLE:
                ip, plen = _rule_ip(rule, "dst")
                if ip and plen == _HOST_LEN[family] and not rule.get_attr("FRA_SRC"):
                    out.append((rule, ip))
            elif prio == RULE_FROM_POD and ENI_TABLE_BASE < _table(rule) < ENI_TABLE_BASE + 100000:
                ip, plen = _rule_ip(rule, "src")
                if ip and plen == _HOST_LEN[family] and not rule.get_attr("FRA_DST"):
                    out.append((rule, ip))
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


def remove_leftovers(keep_veths: Iterable[str | None], keep_ips: Iterable[str]) -> list[str]:
    """Delete ``cali*`` veths and per-pod rules of no live attachment; returns errors."""
    keep_v = {v for v in keep_veths if v}
    keep_i = set(keep_ips)
    errors: list[str] = []
    with IPRoute() as ipr:
        for link in ipr.get_links():
            name = link.get_attr("IFLA_IFNAME") or ""
            info = link.get_attr("IFLA_LINKINFO")
            kind = info.get_attr("IFLA_INFO_KIND") if info is not None else None
            if name.startswith(HOST_VETH_PREFIX) and len(name) == 15 and kind == "veth" and name not in keep_v:
                try:
                    ipr.link("del", index=link["index"])
                    log.info("shared_eni.gc.veth_removed", device=name)
                except NetlinkError as exc:
                    if exc.code != errno.ENODEV:
                        errors.append(f"deleting {name}: {exc}")
        for rule, ip in _pod_rules(ipr):
            if ip in keep_i:
                continue
            try:
                _delete_rule(ipr, rule)
                log.info("shared_eni.gc.rule_removed", address=ip, priority=rule.get_attr("FRA_PRIORITY"))
            except NetlinkError as exc:
                errors.append(f"deleting rule for {ip}: {exc}")
    return errors


def remove_pod_leftovers(namespace: str, name: str, allocation: Allocation) -> None:
    """Remove a pod's node-side objects without knowing its ENI (the ENI is gone
    and the agent died before recording the link)."""
    ips = {a.address for a in allocation.addresses}
    with IPRoute() as ipr:
        try:
            ipr.link("del", ifname=host_veth_name(namespace, name))
        except NetlinkError as exc:
            if exc.code != errno.ENODEV:
                raise
        for rule, ip in _pod_rules(ipr):
            if ip in ips:
                _delete_rule(ipr, rule)
