"""rtnetlink for the datapath executor: pyroute2's message classes over a plain socket.

Private to :mod:`terway_agent.datapath`.  Every request is built by pyroute2's
rtnetlink message classes (``ifinfmsg``, ``ifaddrmsg``, ``rtmsg``, ``fibmsg``,
``ndmsg``, ``tcmsg``, ``nsidmsg``) and every reply is decoded by them; a
refusal is decoded by ``nlmsgerr``, which carries the kernel's extended-ack
text.  This module owns only the transport: one blocking ``AF_NETLINK``
socket, sequence numbers, matching replies to requests and reading the error
code of an acknowledgement.

Why not ``pyroute2.IPRoute``: its synchronous API runs an asyncio loop turn and
a generic request processor per call (~300-460 us per request here).  The same
messages on a plain socket cost what pyroute2's codec costs (20-150 us to
encode, ~20-30 us to decode a route or rule, ~140 us a link), and three things
keep that low (docs/datapath.md, "Why not IPRoute", has the figures):

* encoding is a pure function of the request: each request builder is memoised
  and the transport patches the sequence number into the cached bytes;
* decoding is a pure function of the message: replies are memoised by their
  payload bytes (a rule or route dump repeats the same messages), and
  pyroute2 decodes an attribute only when it is read, so only the attributes
  the executor compares are decoded;
* :meth:`Rtnl.link_head` has pyroute2 decode only ``struct ifinfomsg`` (index
  and flags) of a link reply, for the many lookups that need nothing else.

A socket is bound to the network namespace of the thread that created it and
stays there: create it inside :func:`terway_agent.datapath.netns.enter` to act
on a pod's namespace from any thread afterwards.

Errors are raised as :class:`NetlinkError` (an ``OSError`` with the kernel's
extended-ack message when there is one); the executor translates them into the
project's error taxonomy with device and namespace.
"""

from __future__ import annotations

import errno as _errno
import functools
import os
import socket
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, NamedTuple, TypeVar

from pyroute2.netlink import (
    NLM_F_ACK,
    NLM_F_CREATE,
    NLM_F_DUMP,
    NLM_F_EXCL,
    NLM_F_REPLACE,
    NLM_F_REQUEST,
    NLMSG_DONE,
    NLMSG_ERROR,
    nla,
    nlmsg,
    nlmsgerr,
)
from pyroute2.netlink.rtnl import (
    RTM_DELADDR,
    RTM_DELLINK,
    RTM_DELNEIGH,
    RTM_DELQDISC,
    RTM_DELROUTE,
    RTM_DELRULE,
    RTM_DELTFILTER,
    RTM_GETADDR,
    RTM_GETLINK,
    RTM_GETNEIGH,
    RTM_GETNSID,
    RTM_GETQDISC,
    RTM_GETROUTE,
    RTM_GETRULE,
    RTM_GETTFILTER,
    RTM_NEWADDR,
    RTM_NEWLINK,
    RTM_NEWNEIGH,
    RTM_NEWQDISC,
    RTM_NEWROUTE,
    RTM_NEWRULE,
    RTM_NEWTFILTER,
)
from pyroute2.netlink.rtnl.fibmsg import fibmsg
from pyroute2.netlink.rtnl.ifaddrmsg import ifaddrmsg
from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg
from pyroute2.netlink.rtnl.ndmsg import ndmsg
from pyroute2.netlink.rtnl.nsidmsg import nsidmsg
from pyroute2.netlink.rtnl.rtmsg import rtmsg
from pyroute2.netlink.rtnl.tcmsg import sched_tbf, tcmsg

# --- constants the executor shares --------------------------------------------------

NLM_F_DUMP_INTR = 0x10

SOL_NETLINK = 270
NETLINK_EXT_ACK = 11
NETLINK_GET_STRICT_CHK = 12
# NETLINK_CAP_ACK is deliberately not set: pyroute2's nlmsgerr finds the
# extended-ack attributes behind the echoed request, which a capped error
# message does not carry in full.

IFF_UP = 0x1
IFF_LOOPBACK = 0x8
IFF_RUNNING = 0x40  # operationally up: the kernel's link watch has processed the carrier
IFF_LOWER_UP = 0x10000  # carrier
RTEXT_FILTER_SKIP_STATS = 1 << 3
IFA_F_NODAD = 0x02
IFA_F_DADFAILED = 0x08
IFA_F_TENTATIVE = 0x40
IFA_F_NOPREFIXROUTE = 0x200
RTN_UNICAST = 1
RTNH_F_ONLINK = 4
RT_TABLE_UNSPEC = 0
FR_ACT_TO_TBL = 1
NUD_PERMANENT = 0x80

TC_H_ROOT = 0xFFFFFFFF
TC_H_CLSACT = 0xFFFFFFF1
TC_H_MIN_INGRESS = 0xFFF2
TC_H_MIN_EGRESS = 0xFFF3
TC_LINKLAYER_ETHERNET = 1
TCA_BPF_FLAG_ACT_DIRECT = 1
ETH_P_ALL = 0x0003

_HDR = struct.Struct("=IHHII")
_SEQ = struct.Struct("=I")
_ERR = struct.Struct("=i")
_NSID_NOT_ASSIGNED = 0xFFFFFFFF  # NETNSA_NSID_NOT_ASSIGNED (-1) as pyroute2's uint32 decodes it

#: Bounds of the memos (entries): encoded requests per builder, decoded replies.
ENCODED_CACHE = 1024
DECODED_CACHE = 8192


class NetlinkError(OSError):
    """The kernel refused a request; ``errno`` and, when given, the extended-ack text."""

    def __init__(self, err: int, ext_msg: str = "") -> None:
        text = os.strerror(err)
        if ext_msg:
            text = f"{text} ({ext_msg})"
        super().__init__(err, text)
        self.ext_msg = ext_msg


# --- pyroute2 message classes for what pyroute2 0.9.7 does not map ----------------------
#
# pyroute2 compiles an NLA table per class and a subclass inherits its
# parent's "compiled" flag, so a subclass with its own nla_map must reset the
# flag or it silently uses the parent's table.


class _tbf_options(nla):
    """TCA_OPTIONS of a tbf qdisc, with TCA_TBF_RATE64 and TCA_TBF_BURST (sched_tbf lacks them)."""

    _nlmsg_base__compiled_nla = False
    nla_map = (
        ("TCA_TBF_UNSPEC", "none"),
        ("TCA_TBF_PARMS", "tbf_parms"),
        ("TCA_TBF_RTAB", "hex"),
        ("TCA_TBF_PTAB", "hex"),
        ("TCA_TBF_RATE64", "uint64"),
        ("TCA_TBF_PRATE64", "uint64"),
        ("TCA_TBF_BURST", "uint32"),
        ("TCA_TBF_PBURST", "uint32"),
        ("TCA_TBF_PAD", "hex"),
    )

    class tbf_parms(nla):
        # struct tc_tbf_qopt laid out as pyroute2's sched_tbf has it, minus its
        # rate-table computation: the kernel derives everything from the rate,
        # the link layer and TCA_TBF_BURST.
        fields = sched_tbf.options.tbf_parms.fields


class _bpf_options(nla):
    """TCA_OPTIONS of a cls_bpf filter, with the program id and tag (sched_bpf lacks them)."""

    _nlmsg_base__compiled_nla = False
    nla_map = (
        ("TCA_BPF_UNSPEC", "none"),
        ("TCA_BPF_ACT", "hex"),
        ("TCA_BPF_POLICE", "hex"),
        ("TCA_BPF_CLASSID", "uint32"),
        ("TCA_BPF_OPS_LEN", "uint32"),
        ("TCA_BPF_OPS", "hex"),
        ("TCA_BPF_FD", "uint32"),
        ("TCA_BPF_NAME", "asciiz"),
        ("TCA_BPF_FLAGS", "uint32"),
        ("TCA_BPF_FLAGS_GEN", "uint32"),
        ("TCA_BPF_TAG", "hex"),
        ("TCA_BPF_ID", "uint32"),
    )


class _tcmsg(tcmsg):
    """pyroute2's tcmsg with the tbf/bpf option classes above; other kinds as pyroute2 has them."""

    _nlmsg_base__compiled_nla = False
    nla_map = tcmsg.nla_map

    @staticmethod
    def get_options(self: Any, *argv: Any, **kwarg: Any) -> Any:
        kind = self.get_attr("TCA_KIND")
        if kind == "tbf":
            return _tbf_options
        if kind == "bpf":
            return _bpf_options
        return tcmsg.get_options(self, *argv, **kwarg)


# --- encoding ---------------------------------------------------------------------------
#
# One builder per request: a pure function of its (hashable) arguments that
# fills a pyroute2 message and returns ``msg.encode()``'s bytes with sequence
# number 0.  Builders are memoised, so a request the agent sends again -- a
# lookup of ``eth0``, the dump of a table, a plan applied again -- is encoded
# once.

_F = TypeVar("_F", bound=Callable[..., bytes])


def _memo(fn: _F) -> _F:
    return functools.lru_cache(maxsize=ENCODED_CACHE)(fn)  # type: ignore[return-value]


def _build(cls: type[nlmsg], mtype: int, flags: int, fields: dict[str, Any], attrs: list[Any]) -> bytes:
    msg = cls()
    for name, value in fields.items():
        msg[name] = value
    msg["attrs"] = attrs
    msg["header"]["type"] = mtype
    msg["header"]["flags"] = flags | NLM_F_REQUEST
    msg["header"]["sequence_number"] = 0
    msg.encode()
    return bytes(msg.data)


def _present(*attrs: tuple[str, Any]) -> list[Any]:
    """The ``(name, value)`` attributes whose value is not ``None``, in order."""
    return [a for a in attrs if a[1] is not None]


_CREATE = NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL
_REPLACE = NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE


@_memo
def _getlink_msg(name: str | None, index: int, target_nsid: int | None) -> bytes:
    attrs = [
        ("IFLA_EXT_MASK", RTEXT_FILTER_SKIP_STATS),
        *_present(("IFLA_IFNAME", name), ("IFLA_IF_NETNSID", target_nsid)),  # IFLA_TARGET_NETNSID
    ]
    return _build(ifinfmsg, RTM_GETLINK, 0, {"index": index}, attrs)


@_memo
def _linkdump_msg() -> bytes:
    return _build(ifinfmsg, RTM_GETLINK, NLM_F_DUMP, {}, [("IFLA_EXT_MASK", RTEXT_FILTER_SKIP_STATS)])


@_memo
def _veth_msg(
    name: str,
    peer_name: str,
    peer_netns_fd: int | None,
    mtu: int | None,
    mac: str | None,
    peer_mac: str | None,
    up: bool,
    peer_up: bool,
) -> bytes:
    peer = [
        ("IFLA_IFNAME", peer_name),
        *_present(
            ("IFLA_MTU", mtu or None), ("IFLA_ADDRESS", peer_mac or None), ("IFLA_NET_NS_FD", peer_netns_fd)
        ),
    ]
    peer_flags = IFF_UP if peer_up else 0
    info = {
        "attrs": [
            ("IFLA_INFO_KIND", "veth"),
            (
                "IFLA_INFO_DATA",
                {"attrs": [("VETH_INFO_PEER", {"flags": peer_flags, "change": peer_flags, "attrs": peer})]},
            ),
        ]
    }
    attrs = [
        ("IFLA_IFNAME", name),
        *_present(("IFLA_MTU", mtu or None), ("IFLA_ADDRESS", mac or None)),
        ("IFLA_LINKINFO", info),
    ]
    flags = IFF_UP if up else 0
    return _build(ifinfmsg, RTM_NEWLINK, _CREATE, {"flags": flags, "change": flags}, attrs)


@_memo
def _linkset_msg(
    index: int, up: bool | None, name: str | None, mtu: int | None, mac: str | None, netns_fd: int | None
) -> bytes:
    flags = change = 0
    if up is not None:
        change = IFF_UP
        flags = IFF_UP if up else 0
    attrs = _present(
        ("IFLA_IFNAME", name), ("IFLA_MTU", mtu), ("IFLA_ADDRESS", mac), ("IFLA_NET_NS_FD", netns_fd)
    )
    fields = {"index": index, "flags": flags, "change": change}
    return _build(ifinfmsg, RTM_NEWLINK, NLM_F_ACK, fields, attrs)


@_memo
def _linkdel_msg(index: int) -> bytes:
    return _build(ifinfmsg, RTM_DELLINK, NLM_F_ACK, {"index": index}, [])


@_memo
def _nsid_msg(netns_fd: int) -> bytes:
    return _build(nsidmsg, RTM_GETNSID, 0, {}, [("NETNSA_FD", netns_fd)])


@_memo
def _addrdump_msg(family: int, index: int) -> bytes:
    return _build(ifaddrmsg, RTM_GETADDR, NLM_F_DUMP, {"family": family, "index": index}, [])


@_memo
def _addr_msg(mtype: int, flags: int, family: int, ip: str, prefixlen: int, index: int, ifa: int) -> bytes:
    attrs: list[Any] = [("IFA_LOCAL", ip), ("IFA_ADDRESS", ip)]
    if ifa > 0xFF:
        attrs.append(("IFA_FLAGS", ifa))
    fields = {"family": family, "prefixlen": prefixlen, "flags": ifa & 0xFF, "scope": 0, "index": index}
    return _build(ifaddrmsg, mtype, flags, fields, attrs)


@_memo
def _routedump_msg(family: int, table: int, oif: int | None) -> bytes:
    attrs = [("RTA_TABLE", table), *_present(("RTA_OIF", oif))]
    fields = {"family": family, "table": table if table < 256 else RT_TABLE_UNSPEC}
    return _build(rtmsg, RTM_GETROUTE, NLM_F_DUMP, fields, attrs)


@_memo
def _route_msg(
    mtype: int,
    flags: int,
    family: int,
    dst: str,
    dst_len: int,
    table: int,
    gateway: str | None,
    oif: int | None,
    scope: int,
    proto: int,
    priority: int | None,
    onlink: bool,
    prefsrc: str | None,
    rtype: int,
) -> bytes:
    fields = {
        "family": family,
        "dst_len": dst_len,
        "table": table if table < 256 else RT_TABLE_UNSPEC,
        "proto": proto,
        "scope": scope,
        "type": rtype,
        "flags": RTNH_F_ONLINK if onlink else 0,
    }
    attrs = [
        ("RTA_TABLE", table),
        *_present(
            ("RTA_DST", dst if dst_len else None),
            ("RTA_GATEWAY", gateway),
            ("RTA_OIF", oif),
            ("RTA_PRIORITY", priority),
            ("RTA_PREFSRC", prefsrc),
        ),
    ]
    return _build(rtmsg, mtype, flags, fields, attrs)


@_memo
def _ruledump_msg(family: int) -> bytes:
    return _build(fibmsg, RTM_GETRULE, NLM_F_DUMP, {"family": family}, [])


@_memo
def _rule_msg(
    mtype: int,
    flags: int,
    family: int,
    priority: int,
    table: int,
    src: str | None,
    src_len: int,
    dst: str | None,
    dst_len: int,
    iifname: str | None,
    oifname: str | None,
    fwmark: int | None,
    fwmask: int | None,
) -> bytes:
    fields = {
        "family": family,
        "dst_len": dst_len,
        "src_len": src_len,
        "table": table if table < 256 else 0,
        "action": FR_ACT_TO_TBL,
    }
    attrs = [
        ("FRA_PRIORITY", priority),
        ("FRA_TABLE", table),
        *_present(
            ("FRA_SRC", src),
            ("FRA_DST", dst),
            ("FRA_IIFNAME", iifname),
            ("FRA_OIFNAME", oifname),
            ("FRA_FWMARK", fwmark),
            ("FRA_FWMASK", fwmask),
        ),
    ]
    return _build(fibmsg, mtype, flags, fields, attrs)


@_memo
def _neighdump_msg(family: int, index: int) -> bytes:
    return _build(ndmsg, RTM_GETNEIGH, NLM_F_DUMP, {"family": family}, [("NDA_IFINDEX", index)])


@_memo
def _neigh_msg(mtype: int, flags: int, family: int, index: int, ip: str, lladdr: str | None) -> bytes:
    attrs = [("NDA_DST", ip), *_present(("NDA_LLADDR", lladdr))]
    fields = {"family": family, "ifindex": index}
    if mtype == RTM_NEWNEIGH:
        fields["state"] = NUD_PERMANENT
    return _build(ndmsg, mtype, flags, fields, attrs)


class TbfOptions(NamedTuple):
    """What a TBF qdisc is set with: ``rate`` bytes/s, ``burst`` bytes, queue ``limit`` bytes."""

    rate: int
    burst: int
    limit: int


@_memo
def _qdiscdump_msg(index: int) -> bytes:
    return _build(_tcmsg, RTM_GETQDISC, NLM_F_DUMP, {"index": index}, [])


@_memo
def _qdisc_msg(
    mtype: int, flags: int, index: int, handle: int, parent: int, kind: str | None, tbf: TbfOptions | None
) -> bytes:
    attrs: list[Any] = []
    if kind is not None:
        attrs.append(("TCA_KIND", kind))
    if tbf is not None:
        parms = {
            "rate___reserved": TC_LINKLAYER_ETHERNET,  # struct tc_ratespec.linklayer
            "rate": min(tbf.rate, 0xFFFFFFFF),
            "limit": tbf.limit,
        }
        opts: list[Any] = [("TCA_TBF_PARMS", parms), ("TCA_TBF_BURST", tbf.burst)]
        if tbf.rate >= 1 << 32:
            opts.append(("TCA_TBF_RATE64", tbf.rate))
        attrs.append(("TCA_OPTIONS", {"attrs": opts}))
    return _build(_tcmsg, mtype, flags, {"index": index, "handle": handle, "parent": parent}, attrs)


@_memo
def _filterdump_msg(index: int, parent: int) -> bytes:
    return _build(_tcmsg, RTM_GETTFILTER, NLM_F_DUMP, {"index": index, "parent": parent}, [])


@_memo
def _filter_msg(
    mtype: int,
    flags: int,
    index: int,
    parent: int,
    priority: int,
    protocol: int,
    kind: str | None,
    prog_fd: int | None,
    name: str | None,
) -> bytes:
    attrs: list[Any] = []
    if kind is not None:
        attrs.append(("TCA_KIND", kind))
    if prog_fd is not None:
        opts = [("TCA_BPF_FD", prog_fd), ("TCA_BPF_NAME", name), ("TCA_BPF_FLAGS", TCA_BPF_FLAG_ACT_DIRECT)]
        attrs.append(("TCA_OPTIONS", {"attrs": opts}))
    fields = {
        "index": index,
        "handle": 1 if prog_fd is not None else 0,
        "parent": parent,
        "info": (priority << 16) | socket.htons(protocol),
    }
    return _build(_tcmsg, mtype, flags, fields, attrs)


# --- decoded messages ------------------------------------------------------------------
#
# The executor reads small frozen records, converted from pyroute2's decoded
# messages.  A record is a pure function of the message payload, so decoded
# replies are memoised by payload (records are immutable and may be shared).


def _nlas(msg: nlmsg) -> dict[str, Any]:
    """A message's attributes by name (first occurrence), not decoded yet (pyroute2 decodes on read)."""
    out: dict[str, Any] = {}
    for slot in msg["attrs"]:
        name = slot.cell[0]
        if name not in out:
            out[name] = slot
    return out


def _val(nlas: dict[str, Any], name: str) -> Any:
    slot = nlas.get(name)
    return None if slot is None else slot.get_value()


@dataclass(frozen=True, slots=True)
class LinkHead:
    """What ``struct ifinfomsg`` says of a link: enough to address it and know its state."""

    index: int
    flags: int

    @property
    def up(self) -> bool:
        return bool(self.flags & IFF_UP)


@dataclass(frozen=True, slots=True)
class Link:
    index: int
    name: str
    flags: int
    mtu: int | None
    mac: str | None
    kind: str | None
    peer_index: int | None  # IFLA_LINK: the veth peer's ifindex (in link_netnsid's namespace)
    link_netnsid: int | None
    master: int | None
    operstate: str | None = None  # IFLA_OPERSTATE as pyroute2 names it ("UP", "DOWN", ...)

    @property
    def up(self) -> bool:
        return bool(self.flags & IFF_UP)


@dataclass(frozen=True, slots=True)
class Addr:
    family: int
    prefixlen: int
    flags: int
    scope: int
    index: int
    address: str


@dataclass(frozen=True, slots=True)
class Route:
    family: int
    dst_len: int
    tos: int
    table: int
    proto: int
    scope: int
    type: int
    flags: int
    dst: str | None
    gateway: str | None
    oif: int | None
    priority: int
    prefsrc: str | None


@dataclass(frozen=True, slots=True)
class Rule:
    family: int
    dst_len: int
    src_len: int
    table: int
    action: int
    priority: int
    src: str | None
    dst: str | None
    iifname: str | None
    oifname: str | None
    fwmark: int | None
    fwmask: int | None


@dataclass(frozen=True, slots=True)
class Neigh:
    family: int
    index: int
    state: int
    flags: int
    dst: str | None
    lladdr: str | None


@dataclass(frozen=True, slots=True)
class Tc:
    index: int
    handle: int
    parent: int
    info: int
    kind: str | None
    options: tuple[tuple[str, Any], ...]  # pyroute2's decoded TCA_OPTIONS attributes (name, value)


def _link(msg: nlmsg) -> Link:
    a = _nlas(msg)
    info = _val(a, "IFLA_LINKINFO")
    return Link(
        index=msg["index"],
        name=_val(a, "IFLA_IFNAME") or "",
        flags=msg["flags"],
        mtu=_val(a, "IFLA_MTU"),
        mac=_val(a, "IFLA_ADDRESS"),
        kind=None if info is None else info.get_attr("IFLA_INFO_KIND"),
        peer_index=_val(a, "IFLA_LINK"),
        link_netnsid=_val(a, "IFLA_LINK_NETNSID"),
        master=_val(a, "IFLA_MASTER"),
        operstate=_val(a, "IFLA_OPERSTATE"),
    )


def _addr(msg: nlmsg) -> Addr:
    a = _nlas(msg)
    family = msg["family"]
    flags = _val(a, "IFA_FLAGS")
    ip = _val(a, "IFA_LOCAL") if family == socket.AF_INET else None
    if ip is None:
        ip = _val(a, "IFA_ADDRESS")
    return Addr(
        family=family,
        prefixlen=msg["prefixlen"],
        flags=msg["flags"] if flags is None else flags,
        scope=msg["scope"],
        index=msg["index"],
        address=ip or "",
    )


def _route(msg: nlmsg) -> Route:
    a = _nlas(msg)
    table = _val(a, "RTA_TABLE")
    return Route(
        family=msg["family"],
        dst_len=msg["dst_len"],
        tos=msg["tos"],
        table=msg["table"] if table is None else table,
        proto=msg["proto"],
        scope=msg["scope"],
        type=msg["type"],
        flags=msg["flags"],
        dst=_val(a, "RTA_DST"),
        gateway=_val(a, "RTA_GATEWAY"),
        oif=_val(a, "RTA_OIF"),
        priority=_val(a, "RTA_PRIORITY") or 0,
        prefsrc=_val(a, "RTA_PREFSRC"),
    )


def _rule(msg: nlmsg) -> Rule:
    a = _nlas(msg)
    table = _val(a, "FRA_TABLE")
    return Rule(
        family=msg["family"],
        dst_len=msg["dst_len"],
        src_len=msg["src_len"],
        table=msg["table"] if table is None else table,
        action=msg["action"],
        priority=_val(a, "FRA_PRIORITY") or 0,
        src=_val(a, "FRA_SRC"),
        dst=_val(a, "FRA_DST"),
        iifname=_val(a, "FRA_IIFNAME"),
        oifname=_val(a, "FRA_OIFNAME"),
        fwmark=_val(a, "FRA_FWMARK"),
        fwmask=_val(a, "FRA_FWMASK"),
    )


def _neigh(msg: nlmsg) -> Neigh:
    a = _nlas(msg)
    return Neigh(
        family=msg["family"],
        index=msg["ifindex"],
        state=msg["state"],
        flags=msg["flags"],
        dst=_val(a, "NDA_DST"),
        lladdr=_val(a, "NDA_LLADDR"),
    )


def _tc(msg: nlmsg) -> Tc:
    a = _nlas(msg)
    opts = _val(a, "TCA_OPTIONS")
    options: tuple[tuple[str, Any], ...] = ()
    if isinstance(opts, nla):
        options = tuple((name, slot.get_value()) for name, slot in _nlas(opts).items())
    return Tc(
        index=msg["index"],
        handle=msg["handle"],
        parent=msg["parent"],
        info=msg["info"],
        kind=_val(a, "TCA_KIND"),
        options=options,
    )


def _head(msg: nlmsg) -> LinkHead:
    return LinkHead(msg["index"], msg["flags"])


def _nsid(msg: nlmsg) -> int:
    nsid = msg.get_attr("NETNSA_NSID")
    return -1 if nsid is None or nsid == _NSID_NOT_ASSIGNED else nsid


_R = TypeVar("_R")


@functools.lru_cache(maxsize=DECODED_CACHE)
def _decoded(cls: type[nlmsg], convert: Callable[[nlmsg], _R], payload: bytes) -> _R:
    """``convert`` of the message with ``payload``, as pyroute2's ``cls`` decodes it (memoised)."""
    msg = cls(_HDR.pack(_HDR.size + len(payload), 0, 0, 0, 0) + payload)
    msg.decode()
    return convert(msg)


def decode_tbf(options: tuple[tuple[str, Any], ...]) -> dict[str, int] | None:
    """rate (bytes/s), limit (bytes) and buffer (psched ticks) from a TBF qdisc's decoded options."""
    opts = dict(options)
    parms = opts.get("TCA_TBF_PARMS")
    if parms is None:
        return None
    rate = opts.get("TCA_TBF_RATE64") or parms["rate"]
    return {"rate": rate, "limit": parms["limit"], "buffer": parms["buffer"], "mtu": parms["mtu"]}


def bpf_filter_info(options: tuple[tuple[str, Any], ...]) -> dict[str, Any]:
    """name, program id and flags from a cls_bpf filter's decoded options."""
    opts = dict(options)
    return {
        "name": opts.get("TCA_BPF_NAME"),
        "id": opts.get("TCA_BPF_ID"),
        "flags": opts.get("TCA_BPF_FLAGS") or 0,
    }


# --- the socket -------------------------------------------------------------------------


def _error(data: bytes, off: int) -> NetlinkError:
    """A refusal (non-zero NLMSG_ERROR) decoded by pyroute2's nlmsgerr, extended-ack text included."""
    msg = nlmsgerr(data, offset=off)
    msg.decode()
    return NetlinkError(abs(msg["error"]), msg.get_attr("NLMSGERR_ATTR_MSG") or "")


class Rtnl:
    """One NETLINK_ROUTE socket bound to the creating thread's network namespace.

    Not thread-safe: use one per thread (the executor keeps a per-thread cache
    for the agent's own namespace and opens short-lived ones for pods).
    """

    def __init__(self) -> None:
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, socket.NETLINK_ROUTE)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
            sock.setsockopt(SOL_NETLINK, NETLINK_EXT_ACK, 1)
            sock.setsockopt(SOL_NETLINK, NETLINK_GET_STRICT_CHK, 1)
            sock.bind((0, 0))
        except BaseException:
            sock.close()
            raise
        self._sock = sock
        self._seq = 0
        self._buf = bytearray(1 << 16)
        self.closed = False

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._sock.close()

    def __enter__(self) -> Rtnl:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- transport

    def _send(self, request: bytes) -> int:
        self._seq = (self._seq + 1) & 0xFFFFFFFF or 1
        buf = bytearray(request)
        _SEQ.pack_into(buf, 8, self._seq)
        self._sock.send(buf)
        return self._seq

    def _recv(self) -> bytes:
        sock = self._sock
        while True:
            n = sock.recvmsg_into([self._buf], 0, socket.MSG_PEEK | socket.MSG_TRUNC)[0]
            if n > len(self._buf):
                self._buf = bytearray(n + 4096)
                continue
            n = sock.recv_into(self._buf)
            return bytes(self._buf[:n])

    def _replies(self, seq: int) -> Iterator[tuple[bytes, int, int, int, int]]:
        """(buffer, offset, length, type, flags) of each message answering ``seq``; never ends."""
        while True:
            data = self._recv()
            off = 0
            end = len(data)
            while off + _HDR.size <= end:
                mlen, mtype, mflags, mseq, _pid = _HDR.unpack_from(data, off)
                if mlen < _HDR.size:
                    break
                if mseq == seq:
                    yield data, off, mlen, mtype, mflags
                off += (mlen + 3) & ~3

    def request(self, request: bytes) -> None:
        """Send one request (built with NLM_F_ACK) and wait for its acknowledgement."""
        seq = self._send(request)
        for data, off, _mlen, mtype, _flags in self._replies(seq):
            if mtype == NLMSG_ERROR:
                if _ERR.unpack_from(data, off + _HDR.size)[0]:
                    raise _error(data, off)
                return

    def get(
        self, request: bytes, cls: type[nlmsg], convert: Callable[[nlmsg], _R], *, fixed_part: bool = False
    ) -> _R | None:
        """Send a non-dump GET; ``convert`` of the answer decoded by ``cls`` (None: no answer).

        ``fixed_part``: pyroute2 decodes only the fixed structure after the
        netlink header (e.g. ``struct ifinfomsg``), not the attributes.
        """
        seq = self._send(request)
        for data, off, mlen, mtype, _flags in self._replies(seq):
            if mtype == NLMSG_ERROR:
                if _ERR.unpack_from(data, off + _HDR.size)[0]:
                    raise _error(data, off)
                return None
            end = min(off + mlen, off + _HDR.size + cls.get_size()) if fixed_part else off + mlen
            return _decoded(cls, convert, data[off + _HDR.size : end])
        return None  # pragma: no cover - _replies never ends

    def dump(self, request: bytes, cls: type[nlmsg], convert: Callable[[nlmsg], _R]) -> list[_R]:
        """Send a dump request; ``convert`` of every answer decoded by ``cls``.

        An interrupted dump (the table changed meanwhile) is restarted.
        """
        for _attempt in range(10):
            seq = self._send(request)
            out: list[_R] = []
            interrupted = False
            for data, off, mlen, mtype, mflags in self._replies(seq):
                if mflags & NLM_F_DUMP_INTR:
                    interrupted = True
                if mtype == NLMSG_DONE or mtype == NLMSG_ERROR:
                    if _ERR.unpack_from(data, off + _HDR.size)[0]:
                        raise _error(data, off)
                    break
                out.append(_decoded(cls, convert, data[off + _HDR.size : off + mlen]))
            if not interrupted:
                return out
        raise NetlinkError(_errno.EINTR, "dump interrupted ten times in a row")

    # -- links

    def link_get(
        self, *, name: str | None = None, index: int = 0, target_nsid: int | None = None
    ) -> Link | None:
        """The link by name or index, or None when it does not exist (ENODEV)."""
        try:
            return self.get(_getlink_msg(name, index, target_nsid), ifinfmsg, _link)
        except NetlinkError as exc:
            if exc.errno == _errno.ENODEV:
                return None
            raise

    def link_head(
        self, *, name: str | None = None, index: int = 0, target_nsid: int | None = None
    ) -> LinkHead | None:
        """Index and flags of the link (by name or index), or None when it does not exist.

        Only the fixed ``ifinfomsg`` of the answer is decoded: the cheap
        lookup for what needs no attribute (an index to address, IFF_UP,
        IFF_RUNNING, IFF_LOWER_UP).  ``target_nsid``: the link is in the
        namespace this one knows by that id (a veth peer's ``link_netnsid``).
        """
        try:
            return self.get(_getlink_msg(name, index, target_nsid), ifinfmsg, _head, fixed_part=True)
        except NetlinkError as exc:
            if exc.errno == _errno.ENODEV:
                return None
            raise

    def link_dump(self) -> list[Link]:
        return self.dump(_linkdump_msg(), ifinfmsg, _link)

    def veth_add(
        self,
        name: str,
        peer_name: str,
        *,
        peer_netns_fd: int | None,
        mtu: int | None,
        mac: str | None,
        peer_mac: str | None,
        up: bool,
        peer_up: bool,
    ) -> None:
        self.request(_veth_msg(name, peer_name, peer_netns_fd, mtu, mac, peer_mac, up, peer_up))

    def link_set(
        self,
        index: int,
        *,
        up: bool | None = None,
        name: str | None = None,
        mtu: int | None = None,
        mac: str | None = None,
        netns_fd: int | None = None,
    ) -> None:
        self.request(_linkset_msg(index, up, name, mtu, mac, netns_fd))

    def link_del(self, index: int) -> None:
        self.request(_linkdel_msg(index))

    def nsid_of(self, netns_fd: int) -> int:
        """The id this namespace gives the namespace behind ``netns_fd`` (-1: none assigned)."""
        got = self.get(_nsid_msg(netns_fd), nsidmsg, _nsid)
        return -1 if got is None else got

    # -- addresses

    def addr_dump(self, index: int, family: int = socket.AF_UNSPEC) -> list[Addr]:
        return self.dump(_addrdump_msg(family, index), ifaddrmsg, _addr)

    def addr_add(self, family: int, ip: str, prefixlen: int, index: int, flags: int = 0) -> None:
        self.request(_addr_msg(RTM_NEWADDR, _CREATE, family, ip, prefixlen, index, flags))

    def addr_del(self, family: int, ip: str, prefixlen: int, index: int) -> None:
        self.request(_addr_msg(RTM_DELADDR, NLM_F_ACK, family, ip, prefixlen, index, 0))

    # -- routes

    def route_dump(self, family: int, table: int, oif: int | None = None) -> list[Route]:
        try:
            out = self.dump(_routedump_msg(family, table, oif), rtmsg, _route)
        except NetlinkError as exc:
            if exc.errno == _errno.ENOENT:  # ipv4: "FIB table does not exist"
                return []
            raise
        return [r for r in out if r.table == table]

    @staticmethod
    def _route_spec(
        *,
        family: int,
        dst: str,
        dst_len: int,
        table: int,
        gateway: str | None = None,
        oif: int | None = None,
        scope: int = 0,
        proto: int = 0,
        priority: int | None = None,
        onlink: bool = False,
        prefsrc: str | None = None,
        rtype: int = RTN_UNICAST,
    ) -> tuple[Any, ...]:
        return (family, dst, dst_len, table, gateway, oif, scope, proto, priority, onlink, prefsrc, rtype)

    def route_add(self, *, replace: bool = False, **spec: Any) -> None:
        self.request(_route_msg(RTM_NEWROUTE, _REPLACE if replace else _CREATE, *self._route_spec(**spec)))

    def route_del(self, **spec: Any) -> None:
        self.request(_route_msg(RTM_DELROUTE, NLM_F_ACK, *self._route_spec(**spec)))

    # -- rules

    def rule_dump(self, family: int) -> list[Rule]:
        return self.dump(_ruledump_msg(family), fibmsg, _rule)

    @staticmethod
    def _rule_spec(
        *,
        family: int,
        priority: int,
        table: int,
        src: str | None,
        src_len: int,
        dst: str | None,
        dst_len: int,
        iifname: str | None,
        oifname: str | None,
        fwmark: int | None,
        fwmask: int | None,
    ) -> tuple[Any, ...]:
        return (family, priority, table, src, src_len, dst, dst_len, iifname, oifname, fwmark, fwmask)

    def rule_add(self, **spec: Any) -> None:
        """Add a rule; EEXIST when an identical rule exists (the kernel compares every attribute)."""
        self.request(_rule_msg(RTM_NEWRULE, _CREATE, *self._rule_spec(**spec)))

    def rule_del(self, **spec: Any) -> None:
        self.request(_rule_msg(RTM_DELRULE, NLM_F_ACK, *self._rule_spec(**spec)))

    # -- neighbours

    def neigh_dump(self, index: int, family: int = socket.AF_UNSPEC) -> list[Neigh]:
        return self.dump(_neighdump_msg(family, index), ndmsg, _neigh)

    def neigh_set(self, family: int, index: int, ip: str, lladdr: str | None, *, replace: bool) -> None:
        self.request(_neigh_msg(RTM_NEWNEIGH, _REPLACE if replace else _CREATE, family, index, ip, lladdr))

    def neigh_del(self, family: int, index: int, ip: str) -> None:
        self.request(_neigh_msg(RTM_DELNEIGH, NLM_F_ACK, family, index, ip, None))

    # -- traffic control

    def qdisc_dump(self, index: int) -> list[Tc]:
        return [q for q in self.dump(_qdiscdump_msg(index), _tcmsg, _tc) if q.index == index]

    def qdisc_add(
        self,
        index: int,
        handle: int,
        parent: int,
        kind: str,
        options: TbfOptions | None = None,
        *,
        replace: bool = False,
    ) -> None:
        flags = _REPLACE if replace else _CREATE
        self.request(_qdisc_msg(RTM_NEWQDISC, flags, index, handle, parent, kind, options))

    def qdisc_del(self, index: int, handle: int, parent: int, *, kind: str | None = None) -> None:
        """Delete a qdisc; with ``kind`` the kernel refuses (EINVAL) if it is another kind."""
        self.request(_qdisc_msg(RTM_DELQDISC, NLM_F_ACK, index, handle, parent, kind, None))

    @staticmethod
    def tbf_options(rate: int, burst: int, limit: int) -> TbfOptions:
        """The options of a TBF qdisc: ``rate`` bytes/s, ``burst`` bytes, ``limit`` bytes."""
        return TbfOptions(rate, burst, limit)

    def filter_dump(self, index: int, parent: int) -> list[Tc]:
        return [
            f for f in self.dump(_filterdump_msg(index, parent), _tcmsg, _tc) if f.index == index and f.kind
        ]

    def bpf_filter_add(
        self, index: int, parent: int, priority: int, prog_fd: int, name: str, *, protocol: int = ETH_P_ALL
    ) -> None:
        self.request(
            _filter_msg(RTM_NEWTFILTER, _REPLACE, index, parent, priority, protocol, "bpf", prog_fd, name)
        )

    def filter_del(
        self, index: int, parent: int, priority: int, *, protocol: int = ETH_P_ALL, kind: str | None = None
    ) -> None:
        self.request(
            _filter_msg(RTM_DELTFILTER, NLM_F_ACK, index, parent, priority, protocol, kind, None, None)
        )


def memo_stats() -> dict[str, int]:
    """Hit/miss counters of the request and reply memos (for benchmarks and diagnostics)."""
    builders = [
        v for v in globals().values() if callable(v) and hasattr(v, "cache_info") and v is not _decoded
    ]
    enc = [b.cache_info() for b in builders]
    dec = _decoded.cache_info()
    return {
        "encode_hits": sum(i.hits for i in enc),
        "encode_misses": sum(i.misses for i in enc),
        "decode_hits": dec.hits,
        "decode_misses": dec.misses,
    }
