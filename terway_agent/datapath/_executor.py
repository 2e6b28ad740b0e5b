"""The plan executor: observe the kernel, compute the difference, change only that.

Private; the public entry points are re-exported by :mod:`terway_agent.datapath`.

How each kind is observed (one request per group, never one per object):

* links -- ``RTM_GETLINK`` by name (a veth's peer is verified through its
  ifindex and the namespace id of the peer's namespace); where only the index
  and state matter, only ``struct ifinfomsg`` is decoded;
* addresses / neighbours -- one dump filtered by the kernel to the device;
* routes -- one dump per (namespace, family, table[, device]) filtered by the
  kernel (``NETLINK_GET_STRICT_CHK``);
* rules -- ``check`` dumps them; ``apply`` relies on the kernel's exact
  duplicate test: a rule added with ``NLM_F_EXCL`` fails with EEXIST only when
  an identical rule (every attribute) exists, which is the observation;
* qdiscs / filters -- one dump per device;
* sysctls -- read through ``/proc/sys`` from inside the namespace.

Objects on a device this very call created (a new veth, a link just moved into
a namespace) cannot exist yet, so they are created without observing; an
EEXIST then means something raced us and is resolved by observing and
comparing (Neutron's "EEXIST is success after verifying it matches").

Apply returns when what it brought up is usable: links it brought up are
operational (the kernel's link watch has run) and IPv6 addresses it added have
left the tentative state (``_Apply.settle``).
"""

from __future__ import annotations

import dataclasses
import errno
import functools
import os
import socket
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any, TypeVar

import trio

from terway_agent.datapath import netns as _netns
from terway_agent.datapath._rtnl import (
    IFA_F_NODAD,
    IFA_F_NOPREFIXROUTE,
    IFA_F_TENTATIVE,
    IFF_LOOPBACK,
    IFF_LOWER_UP,
    IFF_RUNNING,
    IFF_UP,
    NUD_PERMANENT,
    RTNH_F_ONLINK,
    TC_H_CLSACT,
    TC_H_MIN_EGRESS,
    TC_H_MIN_INGRESS,
    TC_H_ROOT,
    TCA_BPF_FLAG_ACT_DIRECT,
    Link,
    LinkHead,
    NetlinkError,
    Rtnl,
    bpf_filter_info,
    decode_tbf,
)
from terway_agent.datapath.plan import (
    _PROTOS,
    _SCOPES,
    Address,
    ApplyReport,
    BpfFilter,
    Clsact,
    LinkState,
    MovedLink,
    Neighbour,
    Plan,
    PlanObject,
    Problem,
    RemoveReport,
    Route,
    Rule,
    Sysctl,
    Tbf,
    Veth,
)
from terway_agent.errors import DatapathError, InvalidInput, NotFound, TerwayError
from terway_agent.log import get_logger

_log = get_logger(__name__)

_AF = {4: socket.AF_INET, 6: socket.AF_INET6}
# "The agent's own namespace" (netns=None) is the one the process was in when
# this module was imported, pinned by an fd so a thread that is inside a pod's
# namespace at the moment cannot change what None means.
_AGENT_NS_FD = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
_AGENT_NS_INO = os.fstat(_AGENT_NS_FD).st_ino
_MAIN_NS = f"/proc/self/fd/{_AGENT_NS_FD}"
_IFA_F_DADFAILED = 0x08
_PSCHED_TICK_NS = 64  # PSCHED_SHIFT = 6
_CHILD_KINDS = frozenset({"vlan", "macvlan", "macvtap", "ipvlan", "ipvtap", "bridge", "bond", "team"})
_TBF_HANDLE = 0x10000  # 1:
_CLSACT_HANDLE = 0xFFFF0000
_tls = threading.local()
# How long apply waits for the kernel to make what it brought up usable (see _Apply.settle).
_SETTLE_TIMEOUT = 10.0

#: Default time to wait for a device with a given MAC to appear.
DEFAULT_LINK_TIMEOUT = 10.0


@dataclass(frozen=True)
class LinkInfo:
    """A network device as observed: name, ifindex, MAC, MTU, state, kind and namespace."""

    name: str
    index: int
    mac: str | None
    mtu: int | None
    up: bool
    kind: str | None
    netns: str | None


def _info(link: Link, netns: str | None) -> LinkInfo:
    return LinkInfo(link.name, link.index, link.mac, link.mtu, link.up, link.kind, netns)


def _where(netns: str | None) -> str:
    return "the node" if netns is None else f"netns {netns}"


def _translate(exc: NetlinkError, what: str, *, netns: str | None, device: str | None = None) -> TerwayError:
    details: dict[str, Any] = {
        "netns": netns or "host",
        "errno": exc.errno,
        "errno_name": errno.errorcode.get(exc.errno or 0, "?"),
    }
    if device is not None:
        details["device"] = device
    where = _where(netns)
    message = f"{what}: {exc.strerror}" if where in what else f"{what} in {where}: {exc.strerror}"
    if exc.errno == errno.ENODEV:
        return NotFound(message, **details)
    return DatapathError(message, **details)


def _host_socket() -> Rtnl:
    sock: Rtnl | None = getattr(_tls, "host", None)
    if sock is None or sock.closed:
        if os.stat("/proc/thread-self/ns/net").st_ino == _AGENT_NS_INO:
            sock = Rtnl()
        else:
            with _netns.enter(_MAIN_NS):
                sock = Rtnl()
        _tls.host = sock
    return sock


class _Session:
    """Per-call state: sockets and fds per namespace, a link cache."""

    def __init__(self, link_timeout: float = DEFAULT_LINK_TIMEOUT) -> None:
        self._socks: dict[str, Rtnl] = {}
        self._fds: dict[str | None, int] = {}
        self._links: dict[tuple[str | None, str], Link | None] = {}
        self._nsids: dict[tuple[str | None, str | None], int] = {}
        self._exists: dict[str, bool] = {}
        self._in_main: bool | None = None
        # index and flags of links whose attributes nothing compared (a cheaper lookup)
        self._heads: dict[tuple[str | None, str], LinkHead | None] = {}
        # links created (or moved in) by this call: nothing can be on them yet
        self.fresh: set[tuple[str | None, str]] = set()
        # links this call brought up, and IPv6 addresses it added: apply waits for both to be usable
        self.raised: dict[tuple[str | None, str], None] = {}
        self.added6: list[Address] = []
        self.link_timeout = link_timeout

    def close(self) -> None:
        for sock in self._socks.values():
            sock.close()
        for fd in self._fds.values():
            os.close(fd)
        self._socks.clear()
        self._fds.clear()

    # -- namespaces

    def exists(self, netns: str | None) -> bool:
        if netns is None:
            return True
        known = self._exists.get(netns)
        if known is None:
            known = self._exists[netns] = _netns.exists(netns) and _netns.is_netns(netns)
        return known

    def require(self, netns: str | None) -> None:
        if not self.exists(netns):
            raise NotFound(f"network namespace {netns} does not exist", netns=netns)

    def nl(self, netns: str | None) -> Rtnl:
        if netns is None:
            return _host_socket()
        sock = self._socks.get(netns)
        if sock is None:
            with _netns.enter(netns):
                sock = Rtnl()
            self._socks[netns] = sock
        return sock

    def fd(self, netns: str | None) -> int:
        if netns is None:
            return _AGENT_NS_FD
        fd = self._fds.get(netns)
        if fd is None:
            try:
                fd = os.open(netns, os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                raise NotFound(f"network namespace {netns} does not exist", netns=netns) from None
            self._fds[netns] = fd
        return fd

    def inside(self, netns: str | None) -> AbstractContextManager[None]:
        """Run the body with this thread in ``netns`` (for /proc/sys)."""
        if netns is None:
            if self._in_main is None:
                self._in_main = os.stat("/proc/thread-self/ns/net").st_ino == _AGENT_NS_INO
            return nullcontext() if self._in_main else _netns.enter(_MAIN_NS)
        return _netns.enter(netns)

    def nsid(self, from_netns: str | None, of_netns: str | None) -> int:
        key = (from_netns, of_netns)
        got = self._nsids.get(key)
        if got is None:
            got = self._nsids[key] = self.nl(from_netns).nsid_of(self.fd(of_netns))
        return got

    # -- links

    def link(self, netns: str | None, name: str) -> Link | None:
        """The link with every attribute the executor compares (kind, peer, MTU, MAC)."""
        key = (netns, name)
        if key not in self._links:
            try:
                self._links[key] = self.nl(netns).link_get(name=name)
            except NetlinkError as exc:
                raise _translate(exc, f"cannot look up link {name}", netns=netns, device=name) from exc
        return self._links[key]

    def head(self, netns: str | None, name: str) -> Link | LinkHead | None:
        """The link's index and flags; a full observation if there is one already."""
        key = (netns, name)
        if key in self._links:
            return self._links[key]
        if key not in self._heads:
            try:
                self._heads[key] = self.nl(netns).link_head(name=name)
            except NetlinkError as exc:
                raise _translate(exc, f"cannot look up link {name}", netns=netns, device=name) from exc
        return self._heads[key]

    def created_veth(self, o: Veth) -> None:
        """``o`` was just created: both ends are fresh (nothing can be on them yet)."""
        for ns, name in ((o.netns, o.name), (o.peer_netns, o.peer_name)):
            self.forget(ns, name)
            self.fresh.add((ns, name))

    def changed(self, netns: str | None, device: str, /, **kw: Any) -> None:
        """Link ``device`` was changed by ``link_set(**kw)``: keep the cache true without a lookup."""
        key = (netns, device)
        if "name" in kw or "netns_fd" in kw:
            self.forget(netns, device)
            return
        up = kw.get("up")
        for cache in (self._links, self._heads):
            link = cache.get(key)
            if link is None:
                continue
            flags = link.flags
            if up is not None:
                # IFF_RUNNING and IFF_LOWER_UP follow later: settle() asks the kernel
                flags = (flags | IFF_UP) if up else (flags & ~(IFF_UP | IFF_RUNNING | IFF_LOWER_UP))
            if isinstance(link, Link):
                cache[key] = dataclasses.replace(
                    link, flags=flags, mtu=kw.get("mtu") or link.mtu, mac=kw.get("mac") or link.mac
                )
            else:
                cache[key] = dataclasses.replace(link, flags=flags)

    def forget(self, netns: str | None, name: str) -> None:
        self._links.pop((netns, name), None)
        self._heads.pop((netns, name), None)

    def dev(self, netns: str | None, name: str) -> Link | LinkHead:
        """The link's index and flags; NotFound if there is no such device."""
        link = self.head(netns, name)
        if link is None:
            raise NotFound(f"device {name} not found in {_where(netns)}", netns=netns or "host", device=name)
        return link

    def find_mac(
        self, mac: str, where: Sequence[str | None], timeout: float
    ) -> tuple[str | None, Link] | None:
        deadline = time.monotonic() + timeout
        delay = 0.005
        while True:
            for ns in where:
                if not self.exists(ns):
                    continue
                try:
                    links = self.nl(ns).link_dump()
                except NetlinkError as exc:
                    raise _translate(exc, f"cannot list links looking for {mac}", netns=ns) from exc
                hits = [lk for lk in links if lk.mac == mac and lk.kind not in _CHILD_KINDS]
                if hits:
                    return ns, hits[0]
            if time.monotonic() >= deadline:
                return None
            time.sleep(min(delay, max(0.0, deadline - time.monotonic())))
            delay = min(delay * 2, 0.2)


# --- comparisons shared by apply and check --------------------------------------------


def _veth_structure(s: _Session, o: Veth, host: Link) -> str | None:
    """Why ``host`` is not the veth ``o`` describes (None: it is)."""
    if host.kind != "veth":
        return f"{o.name} in {_where(o.netns)} is a {host.kind or 'physical'} device, not a veth"
    peer_where = _where(o.peer_netns)
    if not s.exists(o.peer_netns):
        return f"the peer namespace {o.peer_netns} of {o.name} does not exist"
    if o.peer_netns == o.netns:
        if host.link_netnsid is not None:
            return f"the peer of {o.name} is in another namespace, not {peer_where}"
    elif host.link_netnsid is None or host.link_netnsid != s.nsid(o.netns, o.peer_netns):
        return f"the peer of {o.name} is not in {peer_where}"
    peer = s.link(o.peer_netns, o.peer_name)
    if peer is None or peer.kind != "veth" or peer.index != host.peer_index or peer.peer_index != host.index:
        return f"the peer of {o.name} is not {o.peer_name} in {peer_where}"
    return None


def _veth_attr_diffs(s: _Session, o: Veth, host: Link) -> list[str]:
    peer = s.link(o.peer_netns, o.peer_name)
    assert peer is not None
    out = []
    if o.mtu is not None and host.mtu != o.mtu:
        out.append(f"{o.name} has mtu {host.mtu}, expected {o.mtu}")
    if o.mtu is not None and peer.mtu != o.mtu:
        out.append(f"{o.peer_name} has mtu {peer.mtu}, expected {o.mtu}")
    if o.mac is not None and host.mac != o.mac:
        out.append(f"{o.name} has MAC {host.mac}, expected {o.mac}")
    if o.peer_mac is not None and peer.mac != o.peer_mac:
        out.append(f"{o.peer_name} has MAC {peer.mac}, expected {o.peer_mac}")
    return out


def _addr_state(o: Address, observed: Iterable[Any]) -> tuple[Any, str | None]:
    fam = _AF[o.family]
    for a in observed:
        if a.family == fam and a.address == o.ip:
            if a.prefixlen != o.prefixlen:
                return a, f"{o.ip} on {o.dev} has prefix /{a.prefixlen}, expected /{o.prefixlen}"
            if a.flags & _IFA_F_DADFAILED:
                return a, f"{o.ip} on {o.dev} failed duplicate address detection"
            if bool(a.flags & IFA_F_NOPREFIXROUTE) != o.noprefixroute:
                return (
                    a,
                    f"{o.ip} on {o.dev} noprefixroute is {not o.noprefixroute}, expected {o.noprefixroute}",
                )
            return a, None
    return None, "missing"


def _neigh_state(o: Neighbour, observed: Iterable[Any]) -> tuple[Any, str | None]:
    fam = _AF[o.family]
    for n in observed:
        if n.family == fam and n.dst == o.ip:
            if n.lladdr != o.lladdr:
                return n, f"neighbour {o.ip} on {o.dev} has lladdr {n.lladdr}, expected {o.lladdr}"
            if not n.state & NUD_PERMANENT:
                return n, f"neighbour {o.ip} on {o.dev} is not PERMANENT (state {n.state:#x})"
            return n, None
    return None, "missing"


def _route_matches_key(o: Route, r: Any) -> bool:
    dst, plen = o.dst.split("/")
    return (
        r.dst_len == int(plen)
        and (r.dst if r.dst is not None else ("0.0.0.0" if o.family == 4 else "::")) == dst
        and r.tos == 0
        and r.priority == o.effective_metric
        and r.type == 1
    )


def _route_diffs(o: Route, r: Any, oif: int | None) -> list[str]:
    out = []
    if r.gateway != o.gateway:
        out.append(f"gateway is {r.gateway or 'none'}, expected {o.gateway or 'none'}")
    if oif is not None and r.oif != oif:
        out.append(f"device index is {r.oif}, expected {oif} ({o.dev})")
    if o.family == 4 and r.scope != _SCOPES[o.scope or "universe"]:
        names = {v: k for k, v in _SCOPES.items()}
        out.append(f"scope is {names.get(r.scope, r.scope)}, expected {o.scope}")
    if bool(r.flags & RTNH_F_ONLINK) != o.onlink:
        out.append(f"onlink is {not o.onlink}, expected {o.onlink}")
    if r.proto != _PROTOS[o.proto]:
        names = {v: k for k, v in _PROTOS.items()}
        out.append(f"proto is {names.get(r.proto, r.proto)}, expected {o.proto}")
    if r.prefsrc != o.prefsrc:
        out.append(f"prefsrc is {r.prefsrc or 'none'}, expected {o.prefsrc or 'none'}")
    return out


def _rule_matches(o: Rule, r: Any) -> bool:
    def net(addr: str | None, plen: int) -> str | None:
        return None if addr is None else f"{addr}/{plen}"

    return (
        r.family == _AF[o.family]
        and r.priority == o.priority
        and r.table == o.table
        and r.action == 1
        and net(r.src, r.src_len) == o.src
        and net(r.dst, r.dst_len) == o.dst
        and r.iifname == o.iif
        and r.oifname == o.oif
        and r.fwmark == o.fwmark
        and (r.fwmask == o.fwmask or (o.fwmask is None and r.fwmask in (None, 0xFFFFFFFF)))
    )


def _tbf_diffs(o: Tbf, q: Any) -> list[str]:
    if q.kind != "tbf":
        return [f"root qdisc of {o.dev} is {q.kind}, expected tbf"]
    got = decode_tbf(q.options)
    if got is None:
        return [f"tbf on {o.dev} has no parameters"]
    out = []
    if got["rate"] != o.rate_bytes_per_s:
        out.append(f"tbf rate is {got['rate']} B/s, expected {o.rate_bytes_per_s}")
    if got["limit"] != o.limit_bytes:
        out.append(f"tbf limit is {got['limit']} B, expected {o.limit_bytes}")
    burst = got["buffer"] * _PSCHED_TICK_NS * got["rate"] / 1e9
    if abs(burst - o.burst_bytes) > max(8.0, o.burst_bytes * 0.01):
        out.append(f"tbf burst is about {burst:.0f} B, expected {o.burst_bytes}")
    return out


def _prog_id(fd: int) -> int | None:
    try:
        with open(f"/proc/self/fdinfo/{fd}") as f:
            for line in f:
                if line.startswith("prog_id:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _hook(direction: str) -> int:
    return (TC_H_CLSACT & 0xFFFF0000) | (TC_H_MIN_INGRESS if direction == "ingress" else TC_H_MIN_EGRESS)


def _bpf_state(o: BpfFilter, filters: Iterable[Any], fd: int | None) -> tuple[Any, str | None]:
    for f in filters:
        if f.kind == "bpf" and (f.info >> 16) == o.priority and f.handle:
            info = bpf_filter_info(f.options)
            if not info["flags"] & TCA_BPF_FLAG_ACT_DIRECT:
                return f, f"bpf filter prio {o.priority} on {o.dev} is not direct-action"
            if fd is not None:
                want = _prog_id(fd)
                if want is not None and info["id"] != want:
                    return (
                        f,
                        f"bpf filter prio {o.priority} on {o.dev} runs program {info['id']}, expected {want}",
                    )
            elif info["name"] != o.name:
                return f, f"bpf filter prio {o.priority} on {o.dev} is {info['name']}, expected {o.name}"
            return f, None
    return None, "missing"


def _sysctl_read(path: str) -> str | None:
    try:
        with open(f"/proc/sys/{path}") as f:
            return " ".join(f.read().split())
    except FileNotFoundError:
        return None


def _sysctl_write(path: str, value: str) -> None:
    with open(f"/proc/sys/{path}", "w") as f:
        f.write(value)


# --- apply ----------------------------------------------------------------------------

_O = TypeVar("_O", bound=PlanObject)


def _of(plan: Plan, cls: type[_O]) -> list[_O]:
    return [o for o in plan.objects if type(o) is cls]


class _Apply:
    def __init__(self, plan: Plan, s: _Session, bpf_fds: dict[str, int]) -> None:
        self.plan = plan
        self.s = s
        self.bpf_fds = bpf_fds
        self.outcome: dict[tuple[Any, ...], str] = {}
        self.up_wanted = {(o.netns, o.name): o.up for o in _of(plan, LinkState)}

    def mark(self, o: PlanObject, outcome: str) -> None:
        self.outcome[o.key] = outcome
        if outcome != "unchanged":
            _log.debug("datapath.object.applied", outcome=outcome, object=o.describe())

    def run(self) -> None:
        for o in self.plan.objects:
            if isinstance(o, Veth):
                self.veth(o)
            elif isinstance(o, MovedLink):
                self.moved(o)
        for ls in _of(self.plan, LinkState):
            self.link_state(ls)
        self.sysctls(_of(self.plan, Sysctl))
        self.addresses(_of(self.plan, Address))
        self.neighbours(_of(self.plan, Neighbour))
        routes = _of(self.plan, Route)
        self.routes([r for r in routes if r.gateway is None] + [r for r in routes if r.gateway is not None])
        for rule in _of(self.plan, Rule):
            self.rule(rule)
        for q in self.plan.objects:
            if isinstance(q, (Clsact, Tbf)):
                self.qdisc(q)
        for f in _of(self.plan, BpfFilter):
            self.bpf(f)
        self.settle()

    # -- readiness

    def settle(self) -> None:
        """Wait until what this call brought up is usable.

        The kernel finishes some work after the requests return: a link whose
        carrier just came on is made operational by its link watch (until then
        its queue drops packets and IPv6 has not configured it), and an IPv6
        address stays tentative until duplicate address detection is done
        (``nodad``: until the address work item has run).  Apply returns when
        both are done, so a pod can send and bind at once; a link without
        carrier and an address that cannot finish DAD yet (DAD needs the link
        operational) are not waited for.
        """
        s = self.s
        if not s.raised and not s.added6:
            return
        # Opening one end of a veth puts the carrier on both: the other end's
        # queue is activated by the same asynchronous link watch, so it is
        # waited for too -- also when it is not in the plan (an emulated ENI's
        # far end), through the namespace id the kernel gives it.
        covered: set[tuple[str | None, str]] = set()
        for o in _of(self.plan, Veth):
            ends = ((o.netns, o.name), (o.peer_netns, o.peer_name))
            covered.update(ends)
            if any(end in s.raised for end in ends):
                s.raised.update(dict.fromkeys(ends))
        deadline = time.monotonic() + _SETTLE_TIMEOUT
        running: dict[tuple[str | None, str], bool] = {}
        far_ends: list[tuple[str | None, str, Link]] = []
        for ns, name in s.raised:
            link = s.head(ns, name)
            if link is None:
                continue
            running[(ns, name)] = up = self._wait_running(ns, name, link.index, deadline)
            if up and (ns, name) not in covered and not link.flags & IFF_LOOPBACK:
                full = s.link(ns, name)
                if full is not None and full.kind == "veth" and full.peer_index:
                    far_ends.append((ns, name, full))
        for ns, name, full in far_ends:
            self._wait_running(
                ns, f"the peer of {name}", full.peer_index or 0, deadline, target_nsid=full.link_netnsid
            )
        for o in s.added6:
            key = (o.netns, o.dev)
            link = s.dev(*key)
            if not o.nodad:  # DAD runs only on an operational link
                if key not in running:
                    running[key] = self._wait_running(o.netns, o.dev, link.index, deadline)
                if not running[key]:
                    continue
            self._wait_address(o, link.index, deadline)

    def _wait_running(
        self, netns: str | None, name: str, index: int, deadline: float, *, target_nsid: int | None = None
    ) -> bool:
        """Wait for IFF_RUNNING if the link is up with carrier; whether it is running."""
        nl = self.s.nl(netns)
        delay = 0.0002
        while True:
            try:
                head = nl.link_head(index=index, target_nsid=target_nsid)
            except NetlinkError as exc:
                raise _translate(exc, f"cannot observe {name}", netns=netns, device=name) from exc
            if head is None:
                raise NotFound(
                    f"device {name} disappeared from {_where(netns)}", netns=netns or "host", device=name
                )
            flags = head.flags
            if flags & IFF_RUNNING:
                return True
            if not flags & IFF_UP or not flags & IFF_LOWER_UP:
                return False  # down or no carrier: nothing is pending
            if time.monotonic() >= deadline:
                raise DatapathError(
                    f"{name} in {_where(netns)} has carrier but the kernel did not make it "
                    f"operational within {_SETTLE_TIMEOUT:g} s",
                    netns=netns or "host",
                    device=name,
                    errno=errno.ETIMEDOUT,
                    errno_name="ETIMEDOUT",
                )
            time.sleep(delay)
            delay = min(delay * 2, 0.05)

    def _wait_address(self, o: Address, index: int, deadline: float) -> None:
        """Wait for an IPv6 address this call added to leave the tentative state."""
        delay = 0.0002
        while True:
            found, _why = _addr_state(o, self._addr_dump(o, index))
            if found is None:
                return  # removed meanwhile by someone else: nothing to wait for
            if found.flags & _IFA_F_DADFAILED:
                raise DatapathError(
                    f"cannot use {o.describe()}: duplicate address detection failed "
                    "(another host on the link has it)",
                    netns=o.netns or "host",
                    device=o.dev,
                    errno=errno.EADDRINUSE,
                    errno_name="EADDRINUSE",
                )
            if not found.flags & IFA_F_TENTATIVE:
                return
            if time.monotonic() >= deadline:
                raise DatapathError(
                    f"{o.describe()} is still tentative after {_SETTLE_TIMEOUT:g} s",
                    netns=o.netns or "host",
                    device=o.dev,
                    errno=errno.ETIMEDOUT,
                    errno_name="ETIMEDOUT",
                )
            time.sleep(delay)
            delay = min(delay * 2, 0.05)

    # -- links

    def veth(self, o: Veth) -> None:
        s = self.s
        s.require(o.netns)
        s.require(o.peer_netns)
        host = s.link(o.netns, o.name)
        outcome = "created"
        if host is not None:
            why = _veth_structure(s, o, host)
            if why is None:
                diffs = _veth_attr_diffs(s, o, host)
                if not diffs:
                    self.mark(o, "unchanged")
                    return
                self._fix_veth(o, host)
                self.mark(o, "changed")
                return
            _log.info("datapath.veth.replaced", device=o.name, netns=o.netns or "host", reason=why)
            try:
                s.nl(o.netns).link_del(host.index)
            except NetlinkError as exc:
                raise _translate(exc, f"cannot delete stale {o.name}", netns=o.netns, device=o.name) from exc
            s.forget(o.netns, o.name)
            outcome = "changed"
        try:
            s.nl(o.netns).veth_add(
                o.name,
                o.peer_name,
                peer_netns_fd=None if o.peer_netns == o.netns else s.fd(o.peer_netns),
                mtu=o.mtu,
                mac=o.mac,
                peer_mac=o.peer_mac,
                up=bool(self.up_wanted.get((o.netns, o.name))),
                # The kernel cannot open the peer during creation (veth_open:
                # ENOTCONN, the pair is not linked yet): its LinkState is a
                # separate request.
                peer_up=False,
            )
        except NetlinkError as exc:
            if exc.errno == errno.EEXIST:
                s.forget(o.netns, o.name)
                s.forget(o.peer_netns, o.peer_name)
                taken = o.peer_name if s.link(o.peer_netns, o.peer_name) is not None else o.name
                where = o.peer_netns if taken == o.peer_name else o.netns
                raise DatapathError(
                    f"cannot create {o.describe()}: {taken} already exists in {_where(where)}",
                    netns=where or "host",
                    device=taken,
                    errno=errno.EEXIST,
                ) from exc
            raise _translate(exc, f"cannot create {o.describe()}", netns=o.netns, device=o.name) from exc
        s.created_veth(o)
        self.mark(o, outcome)

    def _fix_veth(self, o: Veth, host: Link) -> None:
        s = self.s
        peer = s.link(o.peer_netns, o.peer_name)
        assert peer is not None
        for ns, name, link, mac in (
            (o.netns, o.name, host, o.mac),
            (o.peer_netns, o.peer_name, peer, o.peer_mac),
        ):
            mtu = o.mtu if (o.mtu is not None and link.mtu != o.mtu) else None
            new_mac = mac if (mac is not None and link.mac != mac) else None
            if mtu is None and new_mac is None:
                continue
            try:
                s.nl(ns).link_set(link.index, mtu=mtu, mac=new_mac)
            except NetlinkError as exc:
                raise _translate(exc, f"cannot update {name}", netns=ns, device=name) from exc
            s.forget(ns, name)

    def moved(self, o: MovedLink) -> None:
        s = self.s
        s.require(o.netns)
        cur = s.link(o.netns, o.name)
        if cur is not None and cur.mac == o.mac:
            if o.mtu is not None and cur.mtu != o.mtu:
                self._set(o.netns, o.name, cur.index, mtu=o.mtu)
                self.mark(o, "changed")
            else:
                self.mark(o, "unchanged")
            return
        if cur is not None:
            raise DatapathError(
                f"cannot move {o.mac} in as {o.name}: {_where(o.netns)} already has {o.name} with MAC {cur.mac}",
                netns=o.netns or "host",
                device=o.name,
                errno=errno.EEXIST,
            )
        where = [o.netns] if o.home_netns == o.netns else [o.netns, o.home_netns]
        found = s.find_mac(o.mac, where, s.link_timeout)
        if found is None:
            raise NotFound(
                f"no device with MAC {o.mac} in {' or '.join(_where(w) for w in where)} "
                f"after {s.link_timeout:g} s",
                mac=o.mac,
                netns=o.home_netns or "host",
            )
        ns, link = found
        if ns == o.netns:
            # Same namespace under another name: rename (the kernel wants it down).
            if link.up:
                self._set(ns, link.name, link.index, up=False)
            self._set(ns, link.name, link.index, name=o.name)
        else:
            try:
                s.nl(ns).link_set(link.index, netns_fd=s.fd(o.netns), name=o.name)
            except NetlinkError as exc:
                raise _translate(
                    exc,
                    f"cannot move {link.name} ({o.mac}) to {_where(o.netns)} as {o.name}",
                    netns=ns,
                    device=link.name,
                ) from exc
            s.forget(ns, link.name)
            s.fresh.add((o.netns, o.name))
        s.forget(o.netns, o.name)
        if o.mtu is not None:
            moved = s.link(o.netns, o.name)
            if moved is None:
                raise NotFound(
                    f"device {o.name} not found in {_where(o.netns)}", netns=o.netns or "host", device=o.name
                )
            if moved.mtu != o.mtu:
                self._set(o.netns, o.name, moved.index, mtu=o.mtu)
        self.mark(o, "created")

    def _set(self, netns: str | None, device: str, index: int, **kw: Any) -> None:
        try:
            self.s.nl(netns).link_set(index, **kw)
        except NetlinkError as exc:
            raise _translate(exc, f"cannot change {device}", netns=netns, device=device) from exc
        self.s.changed(netns, device, **kw)

    def link_state(self, o: LinkState) -> None:
        link = self.s.dev(o.netns, o.name)
        fresh = (o.netns, o.name) in self.s.fresh
        if link.up == o.up:
            # folded into the creation of the link (veth host end) or already so
            if fresh and o.up:
                self.s.raised[(o.netns, o.name)] = None
                self.mark(o, "created")
            else:
                self.mark(o, "unchanged")
            return
        self._set(o.netns, o.name, link.index, up=o.up)
        if o.up:
            self.s.raised[(o.netns, o.name)] = None
        self.mark(o, "created" if fresh else "changed")

    # -- sysctls

    def sysctls(self, objs: list[Sysctl]) -> None:
        by_ns: dict[str | None, list[Sysctl]] = {}
        for o in objs:
            by_ns.setdefault(o.netns, []).append(o)
        for ns, group in by_ns.items():
            self.s.require(ns)
            with self.s.inside(ns):
                for o in group:
                    current = _sysctl_read(o.path)
                    if current is None:
                        raise NotFound(
                            f"sysctl {o.path} does not exist in {_where(ns)}",
                            netns=ns or "host",
                            sysctl=o.path,
                        )
                    if current == o.value:
                        self.mark(o, "unchanged")
                        continue
                    try:
                        _sysctl_write(o.path, o.value)
                    except OSError as exc:
                        raise DatapathError(
                            f"cannot set sysctl {o.path}={o.value} in {_where(ns)}: {exc.strerror}",
                            netns=ns or "host",
                            sysctl=o.path,
                            errno=exc.errno,
                        ) from exc
                    self.mark(o, "changed")

    # -- addresses and neighbours

    def addresses(self, objs: list[Address]) -> None:
        s = self.s
        cache: dict[tuple[str | None, str], list[Any]] = {}
        for o in objs:
            link = s.dev(o.netns, o.dev)
            nl = s.nl(o.netns)
            gk = (o.netns, o.dev)
            fresh = gk in s.fresh
            if not fresh and gk not in cache:
                cache[gk] = self._addr_dump(o, link.index)
            if not fresh:
                found, why = _addr_state(o, cache[gk])
                if why is None:
                    self.mark(o, "unchanged")
                    continue
                if found is not None:
                    self._addr_del(o, found.address, found.prefixlen, link.index)
            flags = (IFA_F_NODAD if o.nodad else 0) | (IFA_F_NOPREFIXROUTE if o.noprefixroute else 0)
            try:
                nl.addr_add(_AF[o.family], o.ip, o.prefixlen, link.index, flags)
            except NetlinkError as exc:
                if exc.errno != errno.EEXIST:
                    raise _translate(exc, f"cannot add {o.describe()}", netns=o.netns, device=o.dev) from exc
                observed = self._addr_dump(o, link.index)
                found, why = _addr_state(o, observed)
                if why is None:
                    self.mark(o, "unchanged")
                    continue
                raise DatapathError(
                    f"cannot add {o.describe()}: {why}",
                    netns=o.netns or "host",
                    device=o.dev,
                    errno=errno.EEXIST,
                ) from exc
            if o.family == 6:
                s.added6.append(o)
            self.mark(o, "created" if fresh or found is None else "changed")

    def _addr_dump(self, o: Address, index: int) -> list[Any]:
        try:
            return self.s.nl(o.netns).addr_dump(index)
        except NetlinkError as exc:
            raise _translate(exc, f"cannot list addresses of {o.dev}", netns=o.netns, device=o.dev) from exc

    def _addr_del(self, o: Address, ip: str, prefixlen: int, index: int) -> None:
        try:
            self.s.nl(o.netns).addr_del(_AF[o.family], ip, prefixlen, index)
        except NetlinkError as exc:
            raise _translate(
                exc, f"cannot delete {ip}/{prefixlen} from {o.dev}", netns=o.netns, device=o.dev
            ) from exc

    def neighbours(self, objs: list[Neighbour]) -> None:
        s = self.s
        cache: dict[tuple[str | None, str], list[Any]] = {}
        for o in objs:
            link = s.dev(o.netns, o.dev)
            nl = s.nl(o.netns)
            gk = (o.netns, o.dev)
            fresh = gk in s.fresh
            found = None
            if not fresh:
                if gk not in cache:
                    cache[gk] = self._neigh_dump(o, link.index)
                found, why = _neigh_state(o, cache[gk])
                if why is None:
                    self.mark(o, "unchanged")
                    continue
            try:
                nl.neigh_set(_AF[o.family], link.index, o.ip, o.lladdr, replace=found is not None)
            except NetlinkError as exc:
                if exc.errno != errno.EEXIST:
                    raise _translate(exc, f"cannot add {o.describe()}", netns=o.netns, device=o.dev) from exc
                found, why = _neigh_state(o, self._neigh_dump(o, link.index))
                if why is None:
                    self.mark(o, "unchanged")
                    continue
                try:
                    nl.neigh_set(_AF[o.family], link.index, o.ip, o.lladdr, replace=True)
                except NetlinkError as exc2:
                    raise _translate(
                        exc2, f"cannot replace {o.describe()}", netns=o.netns, device=o.dev
                    ) from exc2
            self.mark(o, "changed" if found is not None else "created")

    def _neigh_dump(self, o: Neighbour, index: int) -> list[Any]:
        try:
            return self.s.nl(o.netns).neigh_dump(index)
        except NetlinkError as exc:
            raise _translate(exc, f"cannot list neighbours of {o.dev}", netns=o.netns, device=o.dev) from exc

    # -- routes and rules

    def routes(self, objs: list[Route]) -> None:
        s = self.s
        cache: dict[tuple[Any, ...], list[Any]] = {}
        for o in objs:
            oif = s.dev(o.netns, o.dev).index if o.dev is not None else None
            fresh = o.dev is not None and (o.netns, o.dev) in s.fresh
            found = None
            if not fresh:
                gk = (o.netns, o.family, o.table, oif)
                if gk not in cache:
                    cache[gk] = self._route_dump(o, oif)
                found = next((r for r in cache[gk] if _route_matches_key(o, r)), None)
                if found is not None and not _route_diffs(o, found, oif):
                    self.mark(o, "unchanged")
                    continue
            spec = self._route_spec(o, oif)
            existed = found is not None
            try:
                s.nl(o.netns).route_add(replace=existed, **spec)
            except NetlinkError as exc:
                if exc.errno != errno.EEXIST:
                    raise _translate(exc, f"cannot add {o.describe()}", netns=o.netns, device=o.dev) from exc
                # Something holds this route's key (another device, another gateway).
                found = next((r for r in self._route_dump(o, None) if _route_matches_key(o, r)), None)
                if found is not None and not _route_diffs(o, found, oif):
                    self.mark(o, "unchanged")
                    continue
                try:
                    s.nl(o.netns).route_add(replace=True, **spec)
                except NetlinkError as exc2:
                    raise _translate(
                        exc2, f"cannot replace {o.describe()}", netns=o.netns, device=o.dev
                    ) from exc2
                existed = True
            self.mark(o, "changed" if existed else "created")

    @staticmethod
    def _route_spec(o: Route, oif: int | None) -> dict[str, Any]:
        dst, plen = o.dst.split("/")
        return {
            "family": _AF[o.family],
            "dst": dst,
            "dst_len": int(plen),
            "table": o.table,
            "gateway": o.gateway,
            "oif": oif,
            "scope": _SCOPES[o.scope or "universe"] if o.family == 4 else 0,
            "proto": _PROTOS[o.proto],
            "priority": o.metric,
            "onlink": o.onlink,
            "prefsrc": o.prefsrc,
        }

    def _route_dump(self, o: Route, oif: int | None) -> list[Any]:
        try:
            return self.s.nl(o.netns).route_dump(_AF[o.family], o.table, oif)
        except NetlinkError as exc:
            raise _translate(
                exc, f"cannot list routes of table {o.table}", netns=o.netns, device=o.dev
            ) from exc

    def rule(self, o: Rule) -> None:
        self.s.require(o.netns)
        try:
            self.s.nl(o.netns).rule_add(**_rule_spec(o))
        except NetlinkError as exc:
            if exc.errno == errno.EEXIST:  # the kernel found an identical rule
                self.mark(o, "unchanged")
                return
            raise _translate(exc, f"cannot add {o.describe()}", netns=o.netns) from exc
        self.mark(o, "created")

    # -- traffic control

    def qdisc(self, o: Clsact | Tbf) -> None:
        s = self.s
        link = s.dev(o.netns, o.dev)
        nl = s.nl(o.netns)
        qdiscs = [] if (o.netns, o.dev) in s.fresh else self._qdisc_dump(o, link.index)
        if isinstance(o, Clsact):
            if any(q.kind == "clsact" for q in qdiscs):
                self.mark(o, "unchanged")
                return
            try:
                nl.qdisc_add(link.index, _CLSACT_HANDLE, TC_H_CLSACT, "clsact")
            except NetlinkError as exc:
                if exc.errno == errno.EEXIST and any(
                    q.kind == "clsact" for q in self._qdisc_dump(o, link.index)
                ):
                    self.mark(o, "unchanged")
                    return
                raise _translate(exc, f"cannot add {o.describe()}", netns=o.netns, device=o.dev) from exc
            self.mark(o, "created")
            return
        root = next((q for q in qdiscs if q.parent == TC_H_ROOT), None)
        if root is not None and not _tbf_diffs(o, root):
            self.mark(o, "unchanged")
            return
        opts = Rtnl.tbf_options(o.rate_bytes_per_s, o.burst_bytes, o.limit_bytes)
        try:
            nl.qdisc_add(link.index, _TBF_HANDLE, TC_H_ROOT, "tbf", opts, replace=True)
        except NetlinkError as exc:
            raise _translate(exc, f"cannot set {o.describe()}", netns=o.netns, device=o.dev) from exc
        self.mark(o, "changed" if root is not None and root.kind == "tbf" else "created")

    def _qdisc_dump(self, o: Clsact | Tbf | BpfFilter, index: int) -> list[Any]:
        try:
            return self.s.nl(o.netns).qdisc_dump(index)
        except NetlinkError as exc:
            raise _translate(exc, f"cannot list qdiscs of {o.dev}", netns=o.netns, device=o.dev) from exc

    def bpf(self, o: BpfFilter) -> None:
        fd = self.bpf_fds.get(o.slot)
        if fd is None:
            raise InvalidInput(
                f"bpf_fds[{o.slot!r}]", None, f"a loaded SCHED_CLS program fd for {o.describe()}"
            )
        s = self.s
        link = s.dev(o.netns, o.dev)
        parent = _hook(o.direction)
        found = None
        if (o.netns, o.dev) not in s.fresh:
            try:
                filters = s.nl(o.netns).filter_dump(link.index, parent)
            except NetlinkError as exc:
                raise _translate(exc, f"cannot list filters of {o.dev}", netns=o.netns, device=o.dev) from exc
            found, why = _bpf_state(o, filters, fd)
            if why is None:
                self.mark(o, "unchanged")
                return
        try:
            s.nl(o.netns).bpf_filter_add(link.index, parent, o.priority, fd, o.name)
        except NetlinkError as exc:
            raise _translate(exc, f"cannot attach {o.describe()}", netns=o.netns, device=o.dev) from exc
        self.mark(o, "changed" if found is not None else "created")


def _rule_spec(o: Rule) -> dict[str, Any]:
    def split(net: str | None) -> tuple[str | None, int]:
        if net is None:
            return None, 0
        ip, plen = net.split("/")
        return ip, int(plen)

    src, src_len = split(o.src)
    dst, dst_len = split(o.dst)
    return {
        "family": _AF[o.family],
        "priority": o.priority,
        "table": o.table,
        "src": src,
        "src_len": src_len,
        "dst": dst,
        "dst_len": dst_len,
        "iifname": o.iif,
        "oifname": o.oif,
        "fwmark": o.fwmark,
        "fwmask": o.fwmask,
    }


def apply(
    plan: Plan,
    *,
    bpf_fds: dict[str, int] | None = None,
    link_timeout: float = DEFAULT_LINK_TIMEOUT,
) -> ApplyReport:
    """Make the kernel hold ``plan``: observe, compute the difference, change only that.

    Applying the same plan twice changes nothing the second time (every
    object is reported ``unchanged``).  Objects not in the plan are never
    touched (use :func:`prune` to drop what an older plan had).

    Returns when the result is usable: every link it brought up is
    operational (``IFF_RUNNING``; links without carrier are not waited for)
    and every IPv6 address it added has left the tentative state (``nodad``:
    microseconds; with DAD on an operational link: 1-2 s).

    :param bpf_fds: program fds for :class:`BpfFilter` slots.
    :param link_timeout: seconds to wait for a :class:`MovedLink`'s device to appear.
    :raises NotFound: a namespace, device or MAC the plan relies on is missing.
    :raises DatapathError: the kernel refused a change (details: device, netns, errno),
        duplicate address detection failed (``EADDRINUSE``) or the kernel did not
        finish bringing something up within 10 s (``ETIMEDOUT``).
    :raises InvalidInput: a BpfFilter slot without an fd.

    Blocking; call it from a worker thread (:func:`apply_async`).  On error
    the objects handled so far stay in place: apply again, or remove.
    """
    started = time.perf_counter()
    fds = dict(bpf_fds or {})
    for f in _of(plan, BpfFilter):  # before touching anything
        if not isinstance(fds.get(f.slot), int):
            raise InvalidInput(
                f"bpf_fds[{f.slot!r}]", fds.get(f.slot), f"a loaded SCHED_CLS program fd for {f.describe()}"
            )
    s = _Session(link_timeout)
    run = _Apply(plan, s, fds)
    try:
        run.run()
    except (NetlinkError, OSError) as exc:  # socket trouble; kernel refusals are translated where they happen
        raise DatapathError(f"datapath apply failed: {exc}", errno=getattr(exc, "errno", None)) from exc
    finally:
        s.close()
    groups: dict[str, list[PlanObject]] = {"created": [], "changed": [], "unchanged": []}
    for o in plan.objects:
        groups[run.outcome[o.key]].append(o)
    report = ApplyReport(
        created=tuple(groups["created"]),
        changed=tuple(groups["changed"]),
        unchanged=tuple(groups["unchanged"]),
        duration_s=time.perf_counter() - started,
    )
    _log.debug(
        "datapath.apply.done",
        created=len(report.created),
        changed=len(report.changed),
        unchanged=len(report.unchanged),
        duration_ms=round(report.duration_s * 1000, 3),
    )
    return report


# --- check ----------------------------------------------------------------------------


def check(plan: Plan, *, bpf_fds: dict[str, int] | None = None) -> list[Problem]:
    """Compare ``plan`` with the kernel without changing anything.

    Returns one :class:`Problem` per missing or different object (empty list:
    the kernel holds the plan).  Sysctls and link states are compared too.
    Without ``bpf_fds`` a filter's program is identified by its name.
    """
    s = _Session(0.0)
    problems: list[Problem] = []
    fds = dict(bpf_fds or {})

    def problem(o: PlanObject, state: str, text: str) -> None:
        problems.append(Problem(o, state, text))

    def missing(o: PlanObject, why: str = "") -> None:
        problem(o, "missing", f"{o.describe()}: missing{': ' + why if why else ''}")

    def dev(o: PlanObject, name: str) -> Link | LinkHead | None:
        link = s.head(o.netns, name)
        if link is None:
            missing(o, f"device {name} does not exist")
        return link

    caches: dict[tuple[Any, ...], Any] = {}

    def cached(key: tuple[Any, ...], fn: Callable[[], Any]) -> Any:
        if key not in caches:
            caches[key] = fn()
        return caches[key]

    try:
        for o in plan.objects:
            if not s.exists(o.netns):
                missing(o, f"network namespace {o.netns} does not exist")
                continue
            try:
                _check_one(o, s, problem, missing, dev, cached, fds)
            except NetlinkError as exc:
                raise _translate(exc, f"cannot observe {o.describe()}", netns=o.netns) from exc
    finally:
        s.close()
    return problems


def _check_one(
    o: PlanObject,
    s: _Session,
    problem: Callable[[PlanObject, str, str], None],
    missing: Callable[..., None],
    dev: Callable[[PlanObject, str], Link | LinkHead | None],
    cached: Callable[[tuple[Any, ...], Callable[[], Any]], Any],
    fds: dict[str, int],
) -> None:
    nl = s.nl(o.netns)
    if isinstance(o, Veth):
        host = s.link(o.netns, o.name)
        if host is None:
            missing(o)
            return
        why = _veth_structure(s, o, host)
        if why is not None:
            problem(o, "different", f"{o.describe()}: {why}")
            return
        for d in _veth_attr_diffs(s, o, host):
            problem(o, "different", f"{o.describe()}: {d}")
    elif isinstance(o, MovedLink):
        link = s.link(o.netns, o.name)
        if link is None:
            missing(o)
        elif link.mac != o.mac:
            problem(o, "different", f"{o.describe()}: {o.name} has MAC {link.mac}")
        elif o.mtu is not None and link.mtu != o.mtu:
            problem(o, "different", f"{o.describe()}: mtu is {link.mtu}, expected {o.mtu}")
    elif isinstance(o, LinkState):
        link = dev(o, o.name)
        if link is not None and link.up != o.up:
            problem(o, "different", f"{o.describe()}: it is {'up' if link.up else 'down'}")
    elif isinstance(o, Sysctl):
        with s.inside(o.netns):
            current = _sysctl_read(o.path)
        if current is None:
            missing(o, "no such sysctl")
        elif current != o.value:
            problem(o, "different", f"{o.describe()}: value is {current}")
    elif isinstance(o, Address):
        link = dev(o, o.dev)
        if link is not None:
            addrs = cached(("addr", o.netns, link.index), lambda: nl.addr_dump(link.index))
            _report_state(o, _addr_state(o, addrs)[1], problem, missing)
    elif isinstance(o, Neighbour):
        link = dev(o, o.dev)
        if link is not None:
            neighs = cached(("neigh", o.netns, link.index), lambda: nl.neigh_dump(link.index))
            _report_state(o, _neigh_state(o, neighs)[1], problem, missing)
    elif isinstance(o, Route):
        oif = None
        if o.dev is not None:
            link = dev(o, o.dev)
            if link is None:
                return
            oif = link.index
        routes = cached(("route", o.netns, o.family, o.table), lambda: nl.route_dump(_AF[o.family], o.table))
        found = next((r for r in routes if _route_matches_key(o, r)), None)
        if found is None:
            missing(o)
        else:
            diffs = _route_diffs(o, found, oif)
            if diffs:
                problem(o, "different", f"{o.describe()}: {'; '.join(diffs)}")
    elif isinstance(o, Rule):
        rules = cached(("rule", o.netns, o.family), lambda: nl.rule_dump(_AF[o.family]))
        if not any(_rule_matches(o, r) for r in rules):
            missing(o)
    elif isinstance(o, (Clsact, Tbf)):
        link = dev(o, o.dev)
        if link is None:
            return
        qdiscs = cached(("qdisc", o.netns, link.index), lambda: nl.qdisc_dump(link.index))
        if isinstance(o, Clsact):
            if not any(q.kind == "clsact" for q in qdiscs):
                missing(o)
            return
        root = next((q for q in qdiscs if q.parent == TC_H_ROOT), None)
        if root is None or root.kind != "tbf":
            missing(o, f"root qdisc is {root.kind if root else 'none'}")
            return
        diffs = _tbf_diffs(o, root)
        if diffs:
            problem(o, "different", f"{o.describe()}: {'; '.join(diffs)}")
    elif isinstance(o, BpfFilter):
        link = dev(o, o.dev)
        if link is None:
            return
        filters = nl.filter_dump(link.index, _hook(o.direction))
        _report_state(o, _bpf_state(o, filters, fds.get(o.slot))[1], problem, missing)
    else:  # pragma: no cover - every kind is handled above
        raise TypeError(f"unknown plan object {o!r}")


def _report_state(
    o: PlanObject,
    why: str | None,
    problem: Callable[[PlanObject, str, str], None],
    missing: Callable[..., None],
) -> None:
    """Report what an ``_*_state`` function found wrong with ``o`` ("missing" or a difference)."""
    if why == "missing":
        missing(o)
    elif why:
        problem(o, "different", f"{o.describe()}: {why}")


# --- remove ---------------------------------------------------------------------------

_ABSENT_ERRNOS = {
    "rule": {errno.ENOENT},
    "route": {errno.ESRCH, errno.ENOENT},
    "neighbour": {errno.ENOENT},
    "address": {errno.EADDRNOTAVAIL, errno.ENOENT},
    "qdisc": {errno.ENOENT, errno.EINVAL},
    "filter": {errno.ENOENT, errno.EINVAL},
    "link": {errno.ENODEV},
}


def remove(plan: Plan) -> RemoveReport:
    """Take ``plan`` out of the kernel; idempotent: what is already gone is success.

    Links are deleted (a veth) or moved back home (a :class:`MovedLink`); what
    lives on them goes with them and is reported ``implied``.  A veth whose
    peer is no longer in the plan's ``peer_netns`` belongs to someone else
    (a newer sandbox) and is left alone.  Sysctls and link states are
    ``kept``.  Rules and routes are deleted by their full description, so a
    route for the same prefix that now points elsewhere is not touched.

    Every object is attempted; if some deletions failed, a
    :class:`DatapathError` listing them is raised at the end.
    """
    started = time.perf_counter()
    s = _Session(0.0)
    out: dict[str, list[PlanObject]] = {"removed": [], "absent": [], "implied": [], "kept": []}
    errors: list[tuple[PlanObject, TerwayError]] = []
    try:
        # 1. decide which links are ours to delete or move back
        link_jobs: list[tuple[PlanObject, Callable[[], None]]] = []
        doomed: set[tuple[str | None, str]] = set()
        for o in plan.objects:
            if not isinstance(o, (Veth, MovedLink)):
                continue
            try:
                job = _plan_link_removal(s, o)
            except TerwayError as exc:
                errors.append((o, exc))
                continue
            except NetlinkError as exc:
                errors.append((o, _translate(exc, f"cannot observe {o.describe()}", netns=o.netns)))
                continue
            if job is None:
                out["absent"].append(o)
                continue
            link_jobs.append((o, job))
            doomed.update((k[1], k[2]) for k in o.link_keys())
            if isinstance(o, Veth):
                doomed.add((o.peer_netns, o.peer_name))

        # 2. everything else, most dependent first
        order = (BpfFilter, Tbf, Clsact, Rule, Route, Neighbour, Address)
        for cls in order:
            for o in reversed([x for x in plan.objects if type(x) is cls]):
                dev = getattr(o, "dev", None)
                if dev is not None and (o.netns, dev) in doomed:
                    out["implied"].append(o)
                    continue
                if not s.exists(o.netns):
                    out["absent"].append(o)
                    continue
                try:
                    gone = _remove_one(s, o)
                except TerwayError as exc:
                    errors.append((o, exc))
                    continue
                out["removed" if gone else "absent"].append(o)
        for o in plan.objects:
            if isinstance(o, (Sysctl, LinkState)):
                out["kept"].append(o)

        # 3. the links themselves, last first
        for o, job in reversed(link_jobs):
            try:
                job()
            except TerwayError as exc:
                errors.append((o, exc))
                continue
            out["removed"].append(o)
    finally:
        s.close()
    if errors:
        text = "; ".join(f"{o.describe()}: {exc}" for o, exc in errors)
        raise DatapathError(
            f"{len(errors)} datapath removals failed: {text}", failures=len(errors)
        ) from errors[0][1]
    order_index = {o.key: i for i, o in enumerate(plan.objects)}
    report = RemoveReport(
        **{k: tuple(sorted(v, key=lambda o: order_index[o.key])) for k, v in out.items()},
        duration_s=time.perf_counter() - started,
    )
    _log.debug(
        "datapath.remove.done",
        removed=len(report.removed),
        absent=len(report.absent),
        implied=len(report.implied),
        duration_ms=round(report.duration_s * 1000, 3),
    )
    return report


def _plan_link_removal(s: _Session, o: Veth | MovedLink) -> Callable[[], None] | None:
    if isinstance(o, Veth):
        if not s.exists(o.netns):
            return None
        host = s.link(o.netns, o.name)
        if host is None or _veth_structure(s, o, host) is not None:
            return None
        index = host.index

        def delete() -> None:
            try:
                s.nl(o.netns).link_del(index)
            except NetlinkError as exc:
                if exc.errno == errno.ENODEV:
                    return
                raise _translate(exc, f"cannot delete {o.name}", netns=o.netns, device=o.name) from exc

        return delete

    # MovedLink: move it back home (or rename it back) if we find it.
    link = s.link(o.netns, o.name) if s.exists(o.netns) else None
    if link is not None and link.mac == o.mac:
        ns: str | None = o.netns
    else:
        found = s.find_mac(o.mac, [o.home_netns], 0.0) if s.exists(o.home_netns) else None
        if found is None:
            return None
        ns, link = found
        if link.name == o.home_name:
            return None
    index, name, up = link.index, link.name, link.up

    def move_back() -> None:
        nl = s.nl(ns)
        try:
            if ns == o.home_netns:
                if up:
                    nl.link_set(index, up=False)
                nl.link_set(index, name=o.home_name)
            else:
                nl.link_set(index, netns_fd=s.fd(o.home_netns), name=o.home_name)
        except NetlinkError as exc:
            raise _translate(
                exc,
                f"cannot return {name} ({o.mac}) to {_where(o.home_netns)} as {o.home_name}",
                netns=ns,
                device=name,
            ) from exc

    return move_back


def _remove_one(s: _Session, o: PlanObject) -> bool:
    """Delete one non-link object; False when it was already gone."""
    nl = s.nl(o.netns)
    dev_name = getattr(o, "dev", None)
    index = None
    if dev_name is not None:
        link = s.head(o.netns, dev_name)
        if link is None:
            return False
        index = link.index
    try:
        if isinstance(o, Rule):
            kind = "rule"
            nl.rule_del(**_rule_spec(o))
        elif isinstance(o, Route):
            kind = "route"
            spec = _Apply._route_spec(o, index)
            spec.pop("proto")  # any protocol
            if o.family == 4:
                spec["scope"] = 255  # RT_SCOPE_NOWHERE: any scope, like `ip route del`
            nl.route_del(**spec)
        elif isinstance(o, Neighbour):
            kind = "neighbour"
            assert index is not None
            nl.neigh_del(_AF[o.family], index, o.ip)
        elif isinstance(o, Address):
            kind = "address"
            assert index is not None
            nl.addr_del(_AF[o.family], o.ip, o.prefixlen, index)
        elif isinstance(o, Clsact):
            kind = "qdisc"
            assert index is not None
            nl.qdisc_del(index, _CLSACT_HANDLE, TC_H_CLSACT, kind="clsact")
        elif isinstance(o, Tbf):
            kind = "qdisc"
            assert index is not None
            nl.qdisc_del(index, 0, TC_H_ROOT, kind="tbf")
        elif isinstance(o, BpfFilter):
            kind = "filter"
            assert index is not None
            nl.filter_del(index, _hook(o.direction), o.priority, kind="bpf")
        else:  # pragma: no cover
            raise TypeError(f"unknown plan object {o!r}")
    except NetlinkError as exc:
        if exc.errno in _ABSENT_ERRNOS[kind]:
            return False
        raise _translate(exc, f"cannot delete {o.describe()}", netns=o.netns, device=dev_name) from exc
    return True


def prune(old: Plan, new: Plan) -> RemoveReport:
    """Remove what ``old`` had and ``new`` does not (by identity), e.g. after a pod's IP changed.

    Objects present in both (same key) are left to :func:`apply` of ``new``.
    """
    return remove(old.without(new))


# --- observation helpers for planners --------------------------------------------------


def get_link(name: str, netns: str | None = None) -> LinkInfo | None:
    """The device ``name`` in ``netns`` (None: the agent's namespace), or None."""
    probe = LinkState(name=name, netns=netns)  # validates and normalises
    name, netns = probe.name, probe.netns
    s = _Session(0.0)
    try:
        if not s.exists(netns):
            raise NotFound(f"network namespace {netns} does not exist", netns=netns)
        link = s.link(netns, name)
        return None if link is None else _info(link, netns)
    finally:
        s.close()


def find_link_by_mac(
    mac: str, netns: str | None = None, *, timeout: float = DEFAULT_LINK_TIMEOUT
) -> LinkInfo:
    """The device with ``mac`` in ``netns``, waiting up to ``timeout`` s for it to appear.

    ENIs are hot-plugged asynchronously: after the cloud says "attached" the
    device may take a moment to show up.  VLAN/macvlan/bridge children that
    share the MAC are skipped.

    :raises NotFound: no such device after ``timeout`` seconds.
    """
    probe = MovedLink(mac=mac, name="x", netns=netns, home_name="x")  # validates and normalises
    norm, netns = probe.mac, probe.netns
    s = _Session(timeout)
    try:
        found = s.find_mac(norm, [netns], timeout)
    finally:
        s.close()
    if found is None:
        raise NotFound(
            f"no device with MAC {norm} in {_where(netns)} after {timeout:g} s",
            mac=norm,
            netns=netns or "host",
        )
    return _info(found[1], netns)


# --- async wrappers ---------------------------------------------------------------------

_R = TypeVar("_R")


async def _run(limiter: trio.CapacityLimiter, fn: Callable[..., _R], *args: Any, **kw: Any) -> _R:
    return await trio.to_thread.run_sync(functools.partial(fn, *args, **kw), limiter=limiter)


async def apply_async(
    plan: Plan,
    *,
    limiter: trio.CapacityLimiter,
    bpf_fds: dict[str, int] | None = None,
    link_timeout: float = DEFAULT_LINK_TIMEOUT,
) -> ApplyReport:
    """:func:`apply` in a trio worker thread bounded by ``limiter`` (a ``trio.CapacityLimiter``).

    The worker is not abandoned on cancellation: a half-applied plan is never
    left behind by a cancelled caller.
    """
    return await _run(limiter, apply, plan, bpf_fds=bpf_fds, link_timeout=link_timeout)


async def check_async(
    plan: Plan, *, limiter: trio.CapacityLimiter, bpf_fds: dict[str, int] | None = None
) -> list[Problem]:
    """:func:`check` in a trio worker thread bounded by ``limiter``."""
    return await _run(limiter, check, plan, bpf_fds=bpf_fds)


async def remove_async(plan: Plan, *, limiter: trio.CapacityLimiter) -> RemoveReport:
    """:func:`remove` in a trio worker thread bounded by ``limiter``."""
    return await _run(limiter, remove, plan)


async def prune_async(old: Plan, new: Plan, *, limiter: trio.CapacityLimiter) -> RemoveReport:
    """:func:`prune` in a trio worker thread bounded by ``limiter``."""
    return await _run(limiter, prune, old, new)


async def find_link_by_mac_async(
    mac: str,
    netns: str | None = None,
    *,
    limiter: trio.CapacityLimiter,
    timeout: float = DEFAULT_LINK_TIMEOUT,
) -> LinkInfo:
    """:func:`find_link_by_mac` in a trio worker thread bounded by ``limiter``."""
    return await _run(limiter, find_link_by_mac, mac, netns, timeout=timeout)
