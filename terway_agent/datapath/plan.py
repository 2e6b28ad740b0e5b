"""The datapath as data: what a mode wants the kernel to hold for a pod or a node.

A :class:`Plan` is an ordered tuple of frozen, hashable objects.  Each object
names the network namespace it lives in (``netns=None`` is the agent's own
namespace, i.e. the node) and has a stable identity :attr:`~PlanObject.key`:
two objects with the same key describe the same kernel object, so the executor
can tell "missing" from "present but different".  Plans round-trip through
JSON (:meth:`Plan.to_json` / :meth:`Plan.from_json`) so the plan applied on
CNI ADD can be stored and replayed on DEL/CHECK after an agent restart.

Planners are pure functions that return plans; :func:`terway_agent.datapath.apply`
makes the kernel match one, :func:`~terway_agent.datapath.check` reports the
differences and :func:`~terway_agent.datapath.remove` takes one away.

Every constructor validates its input and normalises it (lower-case MACs,
canonical addresses, namespace names turned into ``/run/netns/<name>`` paths);
bad input raises :class:`~terway_agent.errors.InvalidInput` naming the field,
the value and what was expected.

Units are explicit in field names: :class:`Tbf` takes ``rate_bytes_per_s``
(the kernel's and the original Terway's unit); :meth:`Tbf.for_bandwidth` takes
the CNI bandwidth capability's bits per second.
"""

from __future__ import annotations

import dataclasses
import hashlib
import ipaddress
import json
import math
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, ClassVar

from terway_agent.datapath.netns import netns_path
from terway_agent.errors import InvalidInput

__all__ = [
    "MAIN_TABLE",
    "Address",
    "ApplyReport",
    "BpfFilter",
    "Clsact",
    "LinkState",
    "MovedLink",
    "Neighbour",
    "Plan",
    "PlanObject",
    "Problem",
    "RemoveReport",
    "Route",
    "Rule",
    "Sysctl",
    "Tbf",
    "Veth",
    "stable_mac",
    "veth_name",
]

#: The kernel's main routing table.
MAIN_TABLE = 254

_SCOPES = {"universe": 0, "site": 200, "link": 253, "host": 254, "nowhere": 255}
_PROTOS = {"redirect": 1, "kernel": 2, "boot": 3, "static": 4}
_IFNAME_RE = re.compile(r"^[^/\s:]{1,15}$")
_MAC_RE = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")
_SYSCTL_RE = re.compile(r"^net/[A-Za-z0-9_./-]+$")


# --- validation helpers -------------------------------------------------------


def _where(obj: Any, name: str) -> str:
    return f"{type(obj).__name__}.{name}"


def _set(obj: Any, name: str, value: Any) -> None:
    object.__setattr__(obj, name, value)


def _check_ifname(obj: Any, name: str, optional: bool = False) -> None:
    value = getattr(obj, name)
    if value is None and optional:
        return
    if not isinstance(value, str) or not _IFNAME_RE.match(value) or value in (".", ".."):
        raise InvalidInput(
            _where(obj, name), value, "an interface name of 1-15 characters without '/', ':' or spaces"
        )


def _check_netns(obj: Any, name: str) -> None:
    value = getattr(obj, name)
    if value is None:
        return
    if not isinstance(value, str) or not value or "\0" in value:
        raise InvalidInput(_where(obj, name), value, "None (the agent's namespace) or a netns name or path")
    _set(obj, name, netns_path(value))


def _check_mac(obj: Any, name: str, optional: bool = True) -> None:
    value = getattr(obj, name)
    if value is None and optional:
        return
    if isinstance(value, str):
        norm = value.strip().lower().replace("-", ":")
        if _MAC_RE.match(norm):
            if int(norm[:2], 16) & 1:
                raise InvalidInput(
                    _where(obj, name), value, "a unicast MAC address (lowest bit of the first octet clear)"
                )
            _set(obj, name, norm)
            return
    raise InvalidInput(_where(obj, name), value, "a MAC address like 00:16:3e:12:34:56")


def _check_int(obj: Any, name: str, lo: int, hi: int, optional: bool = False) -> None:
    value = getattr(obj, name)
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise InvalidInput(_where(obj, name), value, f"an integer from {lo} to {hi}")


def _check_bool(obj: Any, name: str) -> None:
    if not isinstance(getattr(obj, name), bool):
        raise InvalidInput(_where(obj, name), getattr(obj, name), "true or false")


def _ip(obj: Any, name: str, optional: bool = False) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    value = getattr(obj, name)
    if value is None and optional:
        return None
    try:
        ip = ipaddress.ip_address(value)
    except (ValueError, TypeError):
        raise InvalidInput(_where(obj, name), value, "an IPv4 or IPv6 address") from None
    _set(obj, name, str(ip))
    return ip


def _net(obj: Any, name: str, optional: bool = False) -> ipaddress.IPv4Network | ipaddress.IPv6Network | None:
    value = getattr(obj, name)
    if value is None and optional:
        return None
    try:
        net = ipaddress.ip_network(value, strict=True)
    except (ValueError, TypeError):
        raise InvalidInput(
            _where(obj, name),
            value,
            "a network in CIDR notation without host bits, like 10.0.0.5/32 or fd00::/64",
        ) from None
    _set(obj, name, net.with_prefixlen)
    return net


def _family_of(*values: Any) -> int | None:
    for v in values:
        if v is not None:
            return v.version
    return None


# --- the object base ------------------------------------------------------------


class PlanObject:
    """Base of every plan object.

    Subclasses are frozen keyword-only dataclasses with a ``netns`` field and a
    class-level ``kind`` used in the JSON form.
    """

    kind: ClassVar[str]
    netns: str | None
    _registry: ClassVar[dict[str, type[PlanObject]]] = {}

    def __init_subclass__(cls, **kw: Any) -> None:
        super().__init_subclass__(**kw)
        if "kind" in cls.__dict__:
            PlanObject._registry[cls.kind] = cls

    @property
    def key(self) -> tuple[Any, ...]:
        """The identity of the kernel object this describes (hashable, stable across runs)."""
        raise NotImplementedError

    def link_keys(self) -> tuple[tuple[Any, ...], ...]:
        """Keys of the links this object creates (both ends of a veth)."""
        return ()

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict: ``{"kind": ..., <fields>}``."""
        out: dict[str, Any] = {"kind": self.kind}
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            out[f.name] = getattr(self, f.name)
        return out

    @staticmethod
    def from_dict(data: dict[str, Any]) -> PlanObject:
        """Rebuild an object from :meth:`to_dict` output; unknown kinds or fields are errors."""
        if not isinstance(data, dict):
            raise InvalidInput("plan object", data, "a JSON object with a 'kind'")
        kind = data.get("kind")
        cls = PlanObject._registry.get(kind)  # type: ignore[arg-type]
        if cls is None:
            raise InvalidInput("plan object kind", kind, f"one of {sorted(PlanObject._registry)}")
        names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        extra = set(data) - names - {"kind"}
        if extra:
            raise InvalidInput(f"{cls.__name__} fields", sorted(extra), f"only {sorted(names)}")
        try:
            return cls(**{k: v for k, v in data.items() if k != "kind"})
        except TypeError as exc:
            raise InvalidInput(f"{cls.__name__}", data, f"the fields {sorted(names)} ({exc})") from None

    def describe(self) -> str:
        """A short human-readable description (used in problems and logs)."""
        raise NotImplementedError

    def _where_ns(self) -> str:
        return "the node" if self.netns is None else f"netns {self.netns}"


# --- links -------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Veth(PlanObject):
    """A veth pair: ``name`` in ``netns``, its peer ``peer_name`` in ``peer_netns``.

    The peer is created directly in ``peer_netns`` under its final name (e.g.
    ``eth0``) -- no temporary name and no move.  ``mac``/``peer_mac`` pin the
    MAC addresses (planners use them to write the pod's PERMANENT neighbour
    for the gateway); ``mtu`` applies to both ends.

    On remove, the pair is deleted only when the existing ``name`` is a veth
    whose peer sits in ``peer_netns``: a same-named veth of a newer sandbox is
    left alone.
    """

    kind: ClassVar[str] = "veth"
    name: str
    peer_name: str
    peer_netns: str | None
    netns: str | None = None
    mtu: int | None = None
    mac: str | None = None
    peer_mac: str | None = None

    def __post_init__(self) -> None:
        _check_ifname(self, "name")
        _check_ifname(self, "peer_name")
        _check_netns(self, "netns")
        _check_netns(self, "peer_netns")
        _check_int(self, "mtu", 68, 65535, optional=True)
        _check_mac(self, "mac")
        _check_mac(self, "peer_mac")
        if self.netns == self.peer_netns and self.name == self.peer_name:
            raise InvalidInput(
                _where(self, "peer_name"), self.peer_name, "a name different from the host end's"
            )

    @property
    def key(self) -> tuple[Any, ...]:
        return ("link", self.netns, self.name)

    def link_keys(self) -> tuple[tuple[Any, ...], ...]:
        return (("link", self.netns, self.name), ("link", self.peer_netns, self.peer_name))

    def describe(self) -> str:
        peer_ns = "the node" if self.peer_netns is None else self.peer_netns
        return f"veth {self.name} in {self._where_ns()} (peer {self.peer_name} in {peer_ns})"


@dataclass(frozen=True, kw_only=True)
class MovedLink(PlanObject):
    """An existing device, found by MAC, moved into ``netns`` and renamed ``name``.

    The exclusive-ENI case: the NIC with ``mac`` is looked up in
    ``home_netns`` (waiting up to the executor's ``link_timeout`` for it to
    appear -- ENIs are hot-plugged asynchronously), taken down, moved and
    renamed in one step.  Remove moves it back to ``home_netns`` under
    ``home_name`` (down, like a freshly plugged NIC).  With ``netns ==
    home_netns`` it is a plain rename.
    """

    kind: ClassVar[str] = "moved_link"
    mac: str
    name: str
    netns: str | None
    home_name: str
    home_netns: str | None = None
    mtu: int | None = None

    def __post_init__(self) -> None:
        _check_mac(self, "mac", optional=False)
        _check_ifname(self, "name")
        _check_ifname(self, "home_name")
        _check_netns(self, "netns")
        _check_netns(self, "home_netns")
        _check_int(self, "mtu", 68, 65535, optional=True)

    @property
    def key(self) -> tuple[Any, ...]:
        return ("link", self.netns, self.name)

    def link_keys(self) -> tuple[tuple[Any, ...], ...]:
        return (("link", self.netns, self.name),)

    def describe(self) -> str:
        return f"link {self.mac} as {self.name} in {self._where_ns()}"


@dataclass(frozen=True, kw_only=True)
class LinkState(PlanObject):
    """Administrative state of link ``name`` (up or down).  Not undone on remove."""

    kind: ClassVar[str] = "link_state"
    name: str
    netns: str | None = None
    up: bool = True

    def __post_init__(self) -> None:
        _check_ifname(self, "name")
        _check_netns(self, "netns")
        _check_bool(self, "up")

    @property
    def key(self) -> tuple[Any, ...]:
        return ("link_state", self.netns, self.name)

    def describe(self) -> str:
        return f"link {self.name} {'up' if self.up else 'down'} in {self._where_ns()}"


# --- addresses, neighbours, routes, rules ------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Address(PlanObject):
    """``address`` (``ip/prefixlen``; a bare IP means a host prefix) on ``dev``.

    ``nodad`` skips IPv6 duplicate address detection (pods use it so the
    address is usable at once); ``noprefixroute`` suppresses the connected
    route.  Identity is the IP on the device: the same IP with another prefix
    is "different" and gets replaced.
    """

    kind: ClassVar[str] = "address"
    dev: str
    address: str
    netns: str | None = None
    nodad: bool = False
    noprefixroute: bool = False

    def __post_init__(self) -> None:
        _check_ifname(self, "dev")
        _check_netns(self, "netns")
        _check_bool(self, "nodad")
        _check_bool(self, "noprefixroute")
        try:
            iface = ipaddress.ip_interface(self.address)
        except (ValueError, TypeError):
            raise InvalidInput(
                _where(self, "address"), self.address, "ip/prefixlen, like 10.0.0.5/32"
            ) from None
        _set(self, "address", iface.with_prefixlen)

    @property
    def ip(self) -> str:
        return self.address.split("/")[0]

    @property
    def prefixlen(self) -> int:
        return int(self.address.split("/")[1])

    @property
    def family(self) -> int:
        return 6 if ":" in self.address else 4

    @property
    def key(self) -> tuple[Any, ...]:
        return ("address", self.netns, self.dev, self.ip)

    def describe(self) -> str:
        return f"address {self.address} on {self.dev} in {self._where_ns()}"


@dataclass(frozen=True, kw_only=True)
class Neighbour(PlanObject):
    """A PERMANENT neighbour entry ``ip -> lladdr`` on ``dev`` (no proxy ARP needed)."""

    kind: ClassVar[str] = "neighbour"
    dev: str
    ip: str
    lladdr: str
    netns: str | None = None

    def __post_init__(self) -> None:
        _check_ifname(self, "dev")
        _check_netns(self, "netns")
        _ip(self, "ip")
        _check_mac(self, "lladdr", optional=False)

    @property
    def family(self) -> int:
        return 6 if ":" in self.ip else 4

    @property
    def key(self) -> tuple[Any, ...]:
        return ("neighbour", self.netns, self.dev, self.ip)

    def describe(self) -> str:
        return f"neighbour {self.ip} lladdr {self.lladdr} on {self.dev} in {self._where_ns()}"


@dataclass(frozen=True, kw_only=True)
class Route(PlanObject):
    """A unicast route.

    ``dst`` is a CIDR or ``"default"``; ``family`` (4 or 6) is derived from
    ``dst``/``gateway`` and only needed for a gateway-less default route.
    ``scope`` defaults like iproute2: ``link`` for an IPv4 route without a
    gateway, ``universe`` otherwise (IPv6 routes have no scope).  ``metric``
    None means the kernel's default (0 for IPv4, 1024 for IPv6).  ``proto``
    defaults to ``boot`` like ``ip route add``.  Identity: namespace, family,
    table, dst and metric -- what the kernel itself uses.
    """

    kind: ClassVar[str] = "route"
    dst: str
    netns: str | None = None
    dev: str | None = None
    gateway: str | None = None
    table: int = MAIN_TABLE
    scope: str | None = None
    onlink: bool = False
    proto: str = "boot"
    metric: int | None = None
    prefsrc: str | None = None
    family: int | None = None

    def __post_init__(self) -> None:
        _check_netns(self, "netns")
        _check_ifname(self, "dev", optional=True)
        gw = _ip(self, "gateway", optional=True)
        src = _ip(self, "prefsrc", optional=True)
        if self.family is not None and self.family not in (4, 6):
            raise InvalidInput(_where(self, "family"), self.family, "4, 6 or None (derived)")
        if self.dst == "default":
            fam = self.family or _family_of(gw, src) or 4
            _set(self, "dst", "0.0.0.0/0" if fam == 4 else "::/0")
        dst = _net(self, "dst")
        assert dst is not None
        fam = dst.version
        if self.family is not None and self.family != fam:
            raise InvalidInput(_where(self, "family"), self.family, f"{fam} (the family of dst {self.dst})")
        _set(self, "family", fam)
        for name, v in (("gateway", gw), ("prefsrc", src)):
            if v is not None and v.version != fam:
                raise InvalidInput(_where(self, name), str(v), f"an IPv{fam} address like dst {self.dst}")
        if self.dev is None and self.gateway is None:
            raise InvalidInput(_where(self, "dev"), None, "a device name (the route has no gateway)")
        _check_int(self, "table", 1, 0xFFFFFFFF)
        if self.table in (0, 255):
            raise InvalidInput(
                _where(self, "table"), self.table, "a table other than 0 (unspec) and 255 (local)"
            )
        if self.scope is None:
            _set(self, "scope", "link" if (fam == 4 and self.gateway is None) else "universe")
        if self.scope not in _SCOPES:
            raise InvalidInput(_where(self, "scope"), self.scope, f"one of {sorted(_SCOPES)}")
        if self.proto not in _PROTOS:
            raise InvalidInput(_where(self, "proto"), self.proto, f"one of {sorted(_PROTOS)}")
        _check_bool(self, "onlink")
        if self.onlink and (self.gateway is None or self.dev is None):
            raise InvalidInput(
                _where(self, "onlink"), True, "a gateway and a dev (onlink qualifies a gateway)"
            )
        _check_int(self, "metric", 0, 0xFFFFFFFF, optional=True)

    @property
    def effective_metric(self) -> int:
        if self.metric is not None:
            return self.metric
        return 0 if self.family == 4 else 1024

    @property
    def key(self) -> tuple[Any, ...]:
        return ("route", self.netns, self.family, self.table, self.dst, self.effective_metric)

    def describe(self) -> str:
        text = f"route {self.dst}"
        if self.gateway:
            text += f" via {self.gateway}"
        if self.dev:
            text += f" dev {self.dev}"
        if self.onlink:
            text += " onlink"
        if self.table != MAIN_TABLE:
            text += f" table {self.table}"
        return f"{text} in {self._where_ns()}"


@dataclass(frozen=True, kw_only=True)
class Rule(PlanObject):
    """A policy routing rule ``priority: [from src] [to dst] [iif] [oif] [fwmark] lookup table``.

    Identity is the whole rule (the kernel allows several rules per
    priority), so a rule is either present or missing, never "different".
    """

    kind: ClassVar[str] = "rule"
    priority: int
    table: int
    netns: str | None = None
    src: str | None = None
    dst: str | None = None
    iif: str | None = None
    oif: str | None = None
    fwmark: int | None = None
    fwmask: int | None = None
    family: int | None = None

    def __post_init__(self) -> None:
        _check_netns(self, "netns")
        _check_int(self, "priority", 1, 32765)
        _check_int(self, "table", 1, 0xFFFFFFFF)
        src = _net(self, "src", optional=True)
        dst = _net(self, "dst", optional=True)
        _check_ifname(self, "iif", optional=True)
        _check_ifname(self, "oif", optional=True)
        _check_int(self, "fwmark", 0, 0xFFFFFFFF, optional=True)
        _check_int(self, "fwmask", 0, 0xFFFFFFFF, optional=True)
        fam = _family_of(src, dst)
        if self.family is not None and self.family not in (4, 6):
            raise InvalidInput(_where(self, "family"), self.family, "4, 6 or None (derived)")
        if src is not None and dst is not None and src.version != dst.version:
            raise InvalidInput(
                _where(self, "dst"), self.dst, f"an IPv{src.version} network like src {self.src}"
            )
        if fam is not None and self.family is not None and fam != self.family:
            raise InvalidInput(_where(self, "family"), self.family, f"{fam} (the family of src/dst)")
        _set(self, "family", self.family or fam or 4)

    @property
    def key(self) -> tuple[Any, ...]:
        return (
            "rule",
            self.netns,
            self.family,
            self.priority,
            self.src,
            self.dst,
            self.iif,
            self.oif,
            self.fwmark,
            self.fwmask,
            self.table,
        )

    def describe(self) -> str:
        parts = [f"rule {self.priority}:"]
        parts.append(f"from {self.src or 'all'}")
        if self.dst:
            parts.append(f"to {self.dst}")
        if self.iif:
            parts.append(f"iif {self.iif}")
        if self.oif:
            parts.append(f"oif {self.oif}")
        if self.fwmark is not None:
            parts.append(f"fwmark {self.fwmark:#x}")
        parts.append(f"lookup {self.table}")
        return " ".join(parts) + f" (IPv{self.family}) in {self._where_ns()}"


# --- sysctls -----------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Sysctl(PlanObject):
    """A per-namespace sysctl under ``/proc/sys`` (``net/ipv4/conf/eth0/rp_filter``).

    Only ``net/...`` keys: those are per network namespace, anything else
    would change the whole machine.  Written through ``/proc/sys`` opened by a
    thread inside the namespace (``/proc/sys/net`` resolves against the calling
    thread's namespace at open time).  Not undone on remove.
    """

    kind: ClassVar[str] = "sysctl"
    path: str
    value: str
    netns: str | None = None

    def __post_init__(self) -> None:
        _check_netns(self, "netns")
        if not isinstance(self.path, str) or not _SYSCTL_RE.match(self.path) or ".." in self.path.split("/"):
            raise InvalidInput(
                _where(self, "path"), self.path, "a per-namespace key like net/ipv4/conf/eth0/forwarding"
            )
        if isinstance(self.value, bool) or not isinstance(self.value, (str, int)):
            raise InvalidInput(_where(self, "value"), self.value, "a string or integer")
        _set(self, "value", " ".join(str(self.value).split()))

    @property
    def key(self) -> tuple[Any, ...]:
        return ("sysctl", self.netns, self.path)

    def describe(self) -> str:
        return f"sysctl {self.path}={self.value} in {self._where_ns()}"


# --- traffic control ------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Clsact(PlanObject):
    """The clsact qdisc on ``dev`` (hook for ingress/egress eBPF filters)."""

    kind: ClassVar[str] = "clsact"
    dev: str
    netns: str | None = None

    def __post_init__(self) -> None:
        _check_ifname(self, "dev")
        _check_netns(self, "netns")

    @property
    def key(self) -> tuple[Any, ...]:
        return ("qdisc", self.netns, self.dev, "clsact")

    def describe(self) -> str:
        return f"clsact qdisc on {self.dev} in {self._where_ns()}"


@dataclass(frozen=True, kw_only=True)
class Tbf(PlanObject):
    """A token bucket filter as ``dev``'s root qdisc.

    ``rate_bytes_per_s`` is in **bytes** per second (the kernel's unit and the
    original Terway's ``bandwidthInBytes``), ``burst_bytes`` the bucket size,
    ``latency_us`` how long a packet may wait; the queue limit is
    ``rate * latency + burst`` bytes as in the original.  Use
    :meth:`for_bandwidth` to build one from the CNI bandwidth capability's
    bits per second.
    """

    kind: ClassVar[str] = "tbf"
    dev: str
    rate_bytes_per_s: int
    burst_bytes: int
    latency_us: int = 25_000
    netns: str | None = None

    def __post_init__(self) -> None:
        _check_ifname(self, "dev")
        _check_netns(self, "netns")
        _check_int(self, "rate_bytes_per_s", 1, (1 << 64) - 1)
        _check_int(self, "burst_bytes", 1, 0xFFFFFFFF)
        _check_int(self, "latency_us", 1, 60_000_000)
        if self.limit_bytes > 0xFFFFFFFF:
            raise InvalidInput(
                _where(self, "latency_us"), self.latency_us, "a latency whose queue fits in 4 GiB"
            )

    @property
    def limit_bytes(self) -> int:
        return self.rate_bytes_per_s * self.latency_us // 1_000_000 + self.burst_bytes

    @classmethod
    def for_bandwidth(
        cls, *, dev: str, bits_per_s: int, mtu: int = 1500, netns: str | None = None, latency_ms: int = 25
    ) -> Tbf:
        """The original Terway's shaping for a bandwidth limit in **bits** per second.

        rate = bits/8 bytes/s; burst = ceil(max(rate/1000, mtu + 1500)) bytes
        (a millisecond's worth of traffic, at least one MTU plus 1500 bytes of
        headroom); latency 25 ms.
        """
        if isinstance(bits_per_s, bool) or not isinstance(bits_per_s, int) or bits_per_s < 8:
            raise InvalidInput("bandwidth", bits_per_s, "an integer number of bits per second, at least 8")
        rate = bits_per_s // 8
        burst = math.ceil(max(rate / 1000, mtu + 1500))
        return cls(
            dev=dev, netns=netns, rate_bytes_per_s=rate, burst_bytes=burst, latency_us=latency_ms * 1000
        )

    @property
    def key(self) -> tuple[Any, ...]:
        return ("qdisc", self.netns, self.dev, "root")

    def describe(self) -> str:
        return (
            f"tbf on {self.dev} rate {self.rate_bytes_per_s} B/s burst {self.burst_bytes} B "
            f"latency {self.latency_us} us in {self._where_ns()}"
        )


@dataclass(frozen=True, kw_only=True)
class BpfFilter(PlanObject):
    """A direct-action eBPF classifier on ``dev``'s clsact ``direction`` hook.

    The program is not part of the data: ``slot`` names it and the caller
    passes ``bpf_fds={slot: prog_fd}`` to apply.  Identity: device, direction
    and priority.  Needs a :class:`Clsact` on the same device.
    """

    kind: ClassVar[str] = "bpf_filter"
    dev: str
    direction: str
    priority: int
    slot: str
    name: str = ""
    netns: str | None = None

    def __post_init__(self) -> None:
        _check_ifname(self, "dev")
        _check_netns(self, "netns")
        if self.direction not in ("ingress", "egress"):
            raise InvalidInput(_where(self, "direction"), self.direction, "'ingress' or 'egress'")
        _check_int(self, "priority", 1, 0xFFFF)
        if not isinstance(self.slot, str) or not self.slot:
            raise InvalidInput(_where(self, "slot"), self.slot, "a non-empty name for the program slot")
        if not isinstance(self.name, str):
            raise InvalidInput(_where(self, "name"), self.name, "a string")
        if not self.name:
            _set(self, "name", self.slot)

    @property
    def key(self) -> tuple[Any, ...]:
        return ("filter", self.netns, self.dev, self.direction, self.priority)

    def describe(self) -> str:
        return f"bpf filter {self.name} ({self.direction} prio {self.priority}) on {self.dev} in {self._where_ns()}"


# --- the plan ---------------------------------------------------------------------

PLAN_FORMAT_VERSION = 1


@dataclass(frozen=True)
class Plan:
    """An ordered collection of plan objects with unique identities.

    The executor orders work itself (links, link state, sysctls, addresses,
    neighbours, routes, rules, qdiscs, filters), so the order here matters only
    within one kind.  The same object twice is collapsed; two different
    objects with the same key are an error.
    """

    objects: tuple[PlanObject, ...] = ()

    def __post_init__(self) -> None:
        seen: dict[tuple[Any, ...], PlanObject] = {}
        out: list[PlanObject] = []
        for obj in tuple(self.objects):
            if not isinstance(obj, PlanObject):
                raise InvalidInput("Plan.objects", obj, "plan objects (Veth, Address, Route, ...)")
            keys = tuple(dict.fromkeys((obj.key, *obj.link_keys())))
            dup = next((seen[k] for k in keys if k in seen), None)
            if dup is not None:
                if dup == obj:
                    continue  # the same object twice
                raise InvalidInput(
                    "Plan.objects", obj.describe(), f"a single definition; it conflicts with {dup.describe()}"
                )
            for k in keys:
                seen[k] = obj
            out.append(obj)
        object.__setattr__(self, "objects", tuple(out))

    def __iter__(self) -> Iterator[PlanObject]:
        return iter(self.objects)

    def __len__(self) -> int:
        return len(self.objects)

    def __add__(self, other: Plan | Iterable[PlanObject]) -> Plan:
        return Plan(self.objects + tuple(other))

    def keys(self) -> frozenset[tuple[Any, ...]]:
        return frozenset(o.key for o in self.objects)

    def without(self, other: Plan) -> Plan:
        """The objects of this plan whose identity is not in ``other``."""
        keys = other.keys()
        return Plan(tuple(o for o in self.objects if o.key not in keys))

    def to_dict(self) -> dict[str, Any]:
        return {"version": PLAN_FORMAT_VERSION, "objects": [o.to_dict() for o in self.objects]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Plan:
        if not isinstance(data, dict) or not isinstance(data.get("objects"), list):
            raise InvalidInput("plan", data, "a JSON object with 'version' and a list 'objects'")
        if data.get("version") != PLAN_FORMAT_VERSION:
            raise InvalidInput("plan.version", data.get("version"), f"{PLAN_FORMAT_VERSION}")
        return cls(tuple(PlanObject.from_dict(o) for o in data["objects"]))

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | bytes) -> Plan:
        try:
            data = json.loads(text)
        except (ValueError, TypeError) as exc:
            raise InvalidInput("plan", text, f"JSON ({exc})") from None
        return cls.from_dict(data)


# --- reports ----------------------------------------------------------------------


@dataclass(frozen=True)
class ApplyReport:
    """What :func:`~terway_agent.datapath.apply` did, object by object (plan order)."""

    created: tuple[PlanObject, ...] = ()
    changed: tuple[PlanObject, ...] = ()
    unchanged: tuple[PlanObject, ...] = ()
    duration_s: float = 0.0

    @property
    def changed_anything(self) -> bool:
        return bool(self.created or self.changed)


@dataclass(frozen=True)
class RemoveReport:
    """What :func:`~terway_agent.datapath.remove` did.

    * ``removed`` -- deleted by this call (a moved link: moved back);
    * ``absent`` -- already gone (or its namespace is gone);
    * ``implied`` -- went away with a link this call deleted or moved
      (addresses, routes, neighbours, qdiscs, filters on it);
    * ``kept`` -- not undone by design (sysctls, link state).
    """

    removed: tuple[PlanObject, ...] = ()
    absent: tuple[PlanObject, ...] = ()
    implied: tuple[PlanObject, ...] = ()
    kept: tuple[PlanObject, ...] = ()
    duration_s: float = 0.0


@dataclass(frozen=True)
class Problem:
    """One difference between a plan and the kernel, found by :func:`~terway_agent.datapath.check`.

    ``state`` is ``"missing"`` or ``"different"``; ``description`` is a
    sentence for humans (and the CNI CHECK error message).
    """

    object: PlanObject
    state: str
    description: str

    def __str__(self) -> str:
        return self.description


# --- naming helpers -----------------------------------------------------------------


def veth_name(namespace: str, name: str, prefix: str = "cali") -> str:
    """The original Terway's host veth name: ``prefix`` + first 11 hex of sha1(``namespace.name``)."""
    if not 1 <= len(prefix) <= 10:
        raise InvalidInput("veth_name.prefix", prefix, "1 to 10 characters")
    digest = hashlib.sha1(f"{namespace}.{name}".encode()).hexdigest()
    return prefix + digest[: min(11, 15 - len(prefix))]


def stable_mac(seed: str) -> str:
    """A locally administered unicast MAC derived from ``seed`` (same seed, same MAC)."""
    digest = bytearray(hashlib.sha1(seed.encode()).digest()[:6])
    digest[0] = (digest[0] & 0xFE) | 0x02
    return ":".join(f"{b:02x}" for b in digest)
