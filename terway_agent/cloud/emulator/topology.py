"""The emulator's topology file: what the simulated cloud looks like at start.

A topology is YAML (or an equivalent dict)::

    region: cn-hangzhou
    seed: 7                          # optional: makes ids/MACs/IP order reproducible
    vpc: {id: vpc-bp1demo, cidr: 192.168.0.0/16, ipv6_cidr: "2408:4005:3a0::/56"}
    zones: [cn-hangzhou-k]           # optional, inferred from the vSwitches
    vswitches:
      - {id: vsw-node, zone: cn-hangzhou-k, cidr: 192.168.0.0/24, ipv6_cidr: "2408:4005:3a0::/64"}
    security_groups: [{id: sg-demo, name: demo}]
    access_keys: [{id: LTAIdemo, secret: demo-secret}]
    instances:
      - {id: i-node1, type: ecs.g7.xlarge, vswitch: vsw-node, netns: twnode-1,
         security_groups: [sg-demo], primary_ip: 192.168.0.10, ram_role: KubernetesWorkerRole}
    latency: {default: 0, AttachNetworkInterface: {kind: uniform, low: 0.01, high: 0.02}}
    attach_latency: 0.05             # Attaching -> InUse
    detach_latency: 0.05             # Detaching -> Available
    metadata: {delay: 0.1, tokens: optional}   # tokens: optional | required
    rate_limits:                     # token buckets, calls per minute (+ burst)
      default: {per_minute: 500}
      DescribeNetworkInterfaces: {per_minute: 800, burst: 100}
      retry_after_header: false
    node_side: {kind: "null"}        # or {kind: netns, vpc_netns: twvpc-demo}
    sts_lifetime: 3600               # seconds of validity of RAM-role STS credentials

Every delay accepts seconds or a distribution (``{kind: fixed|uniform|normal, ...}``).
:func:`load_topology` rejects a bad file with :class:`~terway_agent.errors.ConfigError`
naming the field (``vswitches[1].cidr``), the value and what was expected.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from terway_agent.cloud.emulator._dist import ZERO, Distribution, parse_distribution
from terway_agent.cloud.emulator._instance_types import INSTANCE_TYPES
from terway_agent.errors import ConfigError

__all__ = [
    "AccessKey",
    "InstanceSpec",
    "RateLimit",
    "SecurityGroupSpec",
    "Topology",
    "VSwitchSpec",
    "default_topology",
    "load_topology",
]


@dataclass(frozen=True)
class VSwitchSpec:
    """A vSwitch of the topology (``ipv6_cidr`` ``None``: IPv4 only)."""

    id: str
    zone: str
    cidr: str
    ipv6_cidr: str | None = None
    name: str = ""


@dataclass(frozen=True)
class SecurityGroupSpec:
    """A security group (only its existence matters to the emulator)."""

    id: str
    name: str = ""
    description: str = ""


@dataclass(frozen=True)
class AccessKey:
    """A long-lived AccessKey pair the API accepts."""

    id: str
    secret: str


@dataclass(frozen=True)
class InstanceSpec:
    """An ECS instance; ``netns`` names the node namespace a real node side creates."""

    id: str
    type: str
    vswitch: str
    zone: str
    security_groups: tuple[str, ...]
    netns: str | None = None
    primary_ip: str | None = None
    hostname: str | None = None
    ram_role: str | None = None


@dataclass(frozen=True)
class RateLimit:
    """A token bucket: ``per_minute`` tokens per minute, at most ``burst`` stored."""

    per_minute: float
    burst: float


@dataclass
class Topology:
    """A parsed, validated topology.  Build with :func:`load_topology` or :meth:`from_dict`."""

    region: str
    vpc_id: str
    vpc_cidr: str
    vpc_ipv6_cidr: str | None
    zones: tuple[str, ...]
    vswitches: tuple[VSwitchSpec, ...]
    security_groups: tuple[SecurityGroupSpec, ...]
    access_keys: tuple[AccessKey, ...]
    instances: tuple[InstanceSpec, ...]
    latency: dict[str, Distribution] = field(default_factory=dict)
    attach_latency: Distribution = ZERO
    detach_latency: Distribution = ZERO
    metadata_delay: Distribution = ZERO
    metadata_tokens: str = "optional"
    rate_limits: dict[str, RateLimit] = field(default_factory=dict)
    retry_after_header: bool = False
    node_side: str = "null"
    vpc_netns: str | None = None
    seed: int | None = None
    sts_lifetime: float = 3600.0
    source: str = "<dict>"

    @classmethod
    def from_dict(cls, data: Any, source: str = "<dict>") -> Topology:
        """Validate ``data`` (the YAML document) and build a topology."""
        return _parse(data, source)

    def to_dict(self) -> dict[str, Any]:
        """The topology back as a plain dict (loadable by :meth:`from_dict`)."""
        out: dict[str, Any] = {
            "region": self.region,
            "vpc": {"id": self.vpc_id, "cidr": self.vpc_cidr},
            "zones": list(self.zones),
            "vswitches": [
                {k: v for k, v in vars(vs).items() if v not in (None, "")} for vs in self.vswitches
            ],
            "security_groups": [vars(sg).copy() for sg in self.security_groups],
            "access_keys": [{"id": ak.id, "secret": ak.secret} for ak in self.access_keys],
            "instances": [
                {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(inst).items() if v is not None}
                for inst in self.instances
            ],
            "latency": {k: d.to_dict() for k, d in self.latency.items()},
            "attach_latency": self.attach_latency.to_dict(),
            "detach_latency": self.detach_latency.to_dict(),
            "metadata": {"delay": self.metadata_delay.to_dict(), "tokens": self.metadata_tokens},
            "rate_limits": {
                **{k: {"per_minute": r.per_minute, "burst": r.burst} for k, r in self.rate_limits.items()},
                "retry_after_header": self.retry_after_header,
            },
            "node_side": {"kind": self.node_side} | ({"vpc_netns": self.vpc_netns} if self.vpc_netns else {}),
        }
        if self.vpc_ipv6_cidr:
            out["vpc"]["ipv6_cidr"] = self.vpc_ipv6_cidr
        if self.seed is not None:
            out["seed"] = self.seed
        out["sts_lifetime"] = self.sts_lifetime
        return out


def load_topology(path: str | Path) -> Topology:
    """Read and validate a topology YAML file.

    Raises :class:`ConfigError` for a missing file, bad YAML or bad content.
    """
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError("topology", str(p), f"a readable YAML file ({exc.strerror})") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError("topology", str(p), f"valid YAML ({exc})") from exc
    return _parse(data, str(p))


def default_topology() -> Topology:
    """The packaged demo topology: cn-hangzhou, one zone, a node vSwitch, two pod
    vSwitches, two ``ecs.g7.xlarge`` instances."""
    text = resources.files("terway_agent.cloud.emulator").joinpath("default_topology.yaml").read_text("utf-8")
    return _parse(yaml.safe_load(text), "default_topology.yaml")


# --------------------------------------------------------------------------- parsing

_TOP_KEYS = {
    "region",
    "seed",
    "vpc",
    "zones",
    "vswitches",
    "security_groups",
    "access_keys",
    "instances",
    "latency",
    "attach_latency",
    "detach_latency",
    "metadata",
    "rate_limits",
    "node_side",
    "sts_lifetime",
}
#: the keys of an instance, in a topology and in the admin API's add-instance
_INSTANCE_KEYS = frozenset(
    {"id", "type", "zone", "vswitch", "netns", "security_groups", "primary_ip", "hostname", "ram_role"}
)


def _mapping(value: Any, fld: str, allowed: set[str], required: set[str] = frozenset()) -> dict:
    if not isinstance(value, dict):
        raise ConfigError(fld, value, "a mapping")
    unknown = set(value) - allowed
    if unknown:
        raise ConfigError(fld, sorted(unknown), f"only the keys {sorted(allowed)}")
    for key in sorted(required):
        if key not in value or value[key] in (None, ""):
            raise ConfigError(f"{fld}.{key}", value.get(key), "a value (required)")
    return value


def _str(value: Any, fld: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(fld, value, "a non-empty string")
    return value


def _list(value: Any, fld: str) -> list:
    if value is None:
        return []
    if not isinstance(value, list):
        raise ConfigError(fld, value, "a list")
    return value


def _net(value: Any, fld: str, version: int) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    try:
        net = ipaddress.ip_network(_str(value, fld), strict=True)
    except ValueError as exc:
        raise ConfigError(fld, value, f"an IPv{version} CIDR with no host bits set ({exc})") from None
    if net.version != version:
        raise ConfigError(fld, value, f"an IPv{version} CIDR")
    return net


def _parse(data: Any, source: str) -> Topology:
    top = _mapping(data, "topology", _TOP_KEYS, {"region", "vpc", "vswitches", "access_keys"})
    region = _str(top["region"], "region")
    seed = top.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise ConfigError("seed", seed, "an integer")

    vpc = _mapping(top["vpc"], "vpc", {"id", "cidr", "ipv6_cidr"}, {"id", "cidr"})
    vpc_id = _str(vpc["id"], "vpc.id")
    vpc_net = _net(vpc["cidr"], "vpc.cidr", 4)
    if not 8 <= vpc_net.prefixlen <= 28:
        raise ConfigError("vpc.cidr", vpc["cidr"], "a prefix length between /8 and /28")
    vpc6 = _net(vpc["ipv6_cidr"], "vpc.ipv6_cidr", 6) if vpc.get("ipv6_cidr") else None

    vswitches: list[VSwitchSpec] = []
    nets: list[tuple[str, Any]] = []
    ids: set[str] = set()
    for i, raw in enumerate(_list(top["vswitches"], "vswitches")):
        fld = f"vswitches[{i}]"
        vs = _mapping(raw, fld, {"id", "zone", "cidr", "ipv6_cidr", "name"}, {"id", "zone", "cidr"})
        vid = _str(vs["id"], f"{fld}.id")
        if vid in ids:
            raise ConfigError(f"{fld}.id", vid, "a vSwitch id not used before")
        ids.add(vid)
        net = _net(vs["cidr"], f"{fld}.cidr", 4)
        if not net.subnet_of(vpc_net):
            raise ConfigError(f"{fld}.cidr", vs["cidr"], f"a CIDR inside the VPC CIDR {vpc_net}")
        if not 16 <= net.prefixlen <= 29:
            raise ConfigError(f"{fld}.cidr", vs["cidr"], "a prefix length between /16 and /29")
        for other_id, other in nets:
            if net.overlaps(other):
                raise ConfigError(f"{fld}.cidr", vs["cidr"], f"a CIDR not overlapping {other_id} ({other})")
        nets.append((vid, net))
        ipv6 = None
        if vs.get("ipv6_cidr"):
            if vpc6 is None:
                raise ConfigError(
                    f"{fld}.ipv6_cidr", vs["ipv6_cidr"], "no IPv6 CIDR unless vpc.ipv6_cidr is set"
                )
            net6 = _net(vs["ipv6_cidr"], f"{fld}.ipv6_cidr", 6)
            if not net6.subnet_of(vpc6):
                raise ConfigError(
                    f"{fld}.ipv6_cidr", vs["ipv6_cidr"], f"a CIDR inside the VPC IPv6 CIDR {vpc6}"
                )
            if net6.prefixlen > 120:
                raise ConfigError(f"{fld}.ipv6_cidr", vs["ipv6_cidr"], "a prefix length of at most /120")
            ipv6 = str(net6)
        vswitches.append(
            VSwitchSpec(
                id=vid,
                zone=_str(vs["zone"], f"{fld}.zone"),
                cidr=str(net),
                ipv6_cidr=ipv6,
                name=str(vs.get("name", "")),
            )
        )
    if not vswitches:
        raise ConfigError("vswitches", [], "at least one vSwitch")

    zones = [_str(z, f"zones[{i}]") for i, z in enumerate(_list(top.get("zones"), "zones"))]
    for vs in vswitches:
        if zones and vs.zone not in zones:
            idx = [v.id for v in vswitches].index(vs.id)
            raise ConfigError(f"vswitches[{idx}].zone", vs.zone, f"one of the declared zones {zones}")
    if not zones:
        zones = sorted({vs.zone for vs in vswitches})

    sgs: list[SecurityGroupSpec] = []
    for i, raw in enumerate(_list(top.get("security_groups"), "security_groups")):
        fld = f"security_groups[{i}]"
        sg = _mapping(raw, fld, {"id", "name", "description"}, {"id"})
        sid = _str(sg["id"], f"{fld}.id")
        if any(s.id == sid for s in sgs):
            raise ConfigError(f"{fld}.id", sid, "a security group id not used before")
        sgs.append(SecurityGroupSpec(sid, str(sg.get("name", "")), str(sg.get("description", ""))))

    aks: list[AccessKey] = []
    for i, raw in enumerate(_list(top["access_keys"], "access_keys")):
        fld = f"access_keys[{i}]"
        ak = _mapping(raw, fld, {"id", "secret"}, {"id", "secret"})
        aks.append(AccessKey(_str(ak["id"], f"{fld}.id"), _str(ak["secret"], f"{fld}.secret")))
    if not aks:
        raise ConfigError("access_keys", [], "at least one access key")

    vs_by_id = {vs.id: vs for vs in vswitches}
    instances: list[InstanceSpec] = []
    for i, raw in enumerate(_list(top.get("instances"), "instances")):
        fld = f"instances[{i}]"
        inst = _mapping(raw, fld, _INSTANCE_KEYS, {"id", "type", "vswitch"})
        iid = _str(inst["id"], f"{fld}.id")
        if any(x.id == iid for x in instances):
            raise ConfigError(f"{fld}.id", iid, "an instance id not used before")
        itype = _str(inst["type"], f"{fld}.type")
        if itype not in INSTANCE_TYPES:
            raise ConfigError(
                f"{fld}.type", itype, f"a known instance type ({', '.join(sorted(INSTANCE_TYPES))})"
            )
        vsw = _str(inst["vswitch"], f"{fld}.vswitch")
        if vsw not in vs_by_id:
            raise ConfigError(f"{fld}.vswitch", vsw, f"one of the vSwitches {sorted(vs_by_id)}")
        zone = inst.get("zone") or vs_by_id[vsw].zone
        if zone != vs_by_id[vsw].zone:
            raise ConfigError(f"{fld}.zone", zone, f"the zone of vSwitch {vsw} ({vs_by_id[vsw].zone})")
        inst_sgs = [
            _str(s, f"{fld}.security_groups[{j}]")
            for j, s in enumerate(_list(inst.get("security_groups"), f"{fld}.security_groups"))
        ]
        if not inst_sgs:
            if not sgs:
                raise ConfigError(f"{fld}.security_groups", [], "at least one security group (none declared)")
            inst_sgs = [sgs[0].id]
        for j, s in enumerate(inst_sgs):
            if not any(x.id == s for x in sgs):
                raise ConfigError(
                    f"{fld}.security_groups[{j}]", s, f"one of the security groups {[x.id for x in sgs]}"
                )
        primary_ip = inst.get("primary_ip")
        if primary_ip is not None:
            try:
                addr = ipaddress.IPv4Address(_str(primary_ip, f"{fld}.primary_ip"))
            except ValueError:
                raise ConfigError(f"{fld}.primary_ip", primary_ip, "an IPv4 address") from None
            net = ipaddress.ip_network(vs_by_id[vsw].cidr)
            if addr not in net:
                raise ConfigError(f"{fld}.primary_ip", primary_ip, f"an address inside {vsw} ({net})")
            if any(x.primary_ip == primary_ip for x in instances):
                raise ConfigError(f"{fld}.primary_ip", primary_ip, "an address not used by another instance")
        netns = inst.get("netns")
        if netns is not None:
            netns = _str(netns, f"{fld}.netns")
            if "/" in netns or len(netns) > 64:
                raise ConfigError(
                    f"{fld}.netns", netns, "a namespace name without '/' (at most 64 characters)"
                )
        hostname = inst.get("hostname")
        ram_role = inst.get("ram_role")
        instances.append(
            InstanceSpec(
                id=iid,
                type=itype,
                vswitch=vsw,
                zone=zone,
                security_groups=tuple(inst_sgs),
                netns=netns,
                primary_ip=primary_ip,
                hostname=None if hostname is None else _str(hostname, f"{fld}.hostname"),
                ram_role=None if ram_role is None else _str(ram_role, f"{fld}.ram_role"),
            )
        )

    latency: dict[str, Distribution] = {}
    for name, value in _dict(top.get("latency"), "latency").items():
        latency[str(name)] = parse_distribution(value, f"latency.{name}")

    md = _mapping(top.get("metadata") or {}, "metadata", {"delay", "tokens"})
    tokens = md.get("tokens", "optional")
    if tokens not in ("optional", "required"):
        raise ConfigError("metadata.tokens", tokens, "optional or required")

    rate_limits: dict[str, RateLimit] = {}
    retry_after = False
    for name, value in _dict(top.get("rate_limits"), "rate_limits").items():
        if name == "retry_after_header":
            if not isinstance(value, bool):
                raise ConfigError("rate_limits.retry_after_header", value, "true or false")
            retry_after = value
            continue
        rate_limits[str(name)] = parse_rate_limit(value, f"rate_limits.{name}")

    ns = top.get("node_side") or {"kind": "null"}
    if isinstance(ns, str):
        ns = {"kind": ns}
    ns = _mapping(ns, "node_side", {"kind", "vpc_netns"})
    kind = ns.get("kind", "null")
    kind = "null" if kind is None else kind
    if kind not in ("null", "netns"):
        raise ConfigError("node_side.kind", kind, "null or netns")
    vpc_netns = ns.get("vpc_netns")
    if kind == "netns":
        vpc_netns = _str(vpc_netns, "node_side.vpc_netns")
        missing = [inst.id for inst in instances if not inst.netns]
        if missing:
            raise ConfigError(
                "instances", missing, "a netns name for every instance when node_side.kind is netns"
            )

    sts_lifetime = top.get("sts_lifetime", 3600)
    if (
        isinstance(sts_lifetime, bool)
        or not isinstance(sts_lifetime, int | float)
        or not 60 <= sts_lifetime <= 43200
    ):
        raise ConfigError("sts_lifetime", sts_lifetime, "seconds between 60 and 43200")

    return Topology(
        region=region,
        vpc_id=vpc_id,
        vpc_cidr=str(vpc_net),
        vpc_ipv6_cidr=str(vpc6) if vpc6 else None,
        zones=tuple(zones),
        vswitches=tuple(vswitches),
        security_groups=tuple(sgs),
        access_keys=tuple(aks),
        instances=tuple(instances),
        latency=latency,
        attach_latency=parse_distribution(top.get("attach_latency", 0), "attach_latency"),
        detach_latency=parse_distribution(top.get("detach_latency", 0), "detach_latency"),
        metadata_delay=parse_distribution(md.get("delay", 0), "metadata.delay"),
        metadata_tokens=tokens,
        rate_limits=rate_limits,
        retry_after_header=retry_after,
        node_side=kind,
        vpc_netns=vpc_netns,
        seed=seed,
        sts_lifetime=float(sts_lifetime),
        source=source,
    )


def _dict(value: Any, fld: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(fld, value, "a mapping")
    return value


def parse_rate_limit(value: Any, fld: str) -> RateLimit:
    """``{per_minute: N, burst: M}`` (burst defaults to N) or a bare number N."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        value = {"per_minute": value}
    rl = _mapping(value, fld, {"per_minute", "burst"}, {"per_minute"})
    per_minute = rl["per_minute"]
    if isinstance(per_minute, bool) or not isinstance(per_minute, int | float) or per_minute <= 0:
        raise ConfigError(f"{fld}.per_minute", per_minute, "a number of calls per minute > 0")
    burst = rl.get("burst", per_minute)
    if isinstance(burst, bool) or not isinstance(burst, int | float) or burst < 1:
        raise ConfigError(f"{fld}.burst", burst, "a number >= 1")
    return RateLimit(float(per_minute), float(burst))
