"""The emulated cloud's state: VPC, vSwitches, security groups, instances, ENIs.

Every public method of :class:`CloudState` must be called with ``state.lock``
held.  Methods raise :class:`ApiError` with the real OpenAPI error codes.
Changes that the simulated nodes must see are queued in ``state.outbox`` as
node-side calls (computed at commit time, so they carry consistent data); the
caller drains the outbox while still holding the lock, which keeps node-side
calls in commit order.
"""

from __future__ import annotations

import ipaddress
import random
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from terway_agent.cloud.emulator._dist import Distribution
from terway_agent.cloud.emulator._instance_types import INSTANCE_TYPES, InstanceType
from terway_agent.cloud.emulator.node_side import EniNet, VSwitchNet
from terway_agent.cloud.emulator.topology import InstanceSpec, Topology, VSwitchSpec

# The most IPs one ENI can hold before it is attached (1 primary + 49 secondary,
# "you can assign up to 49 secondary private IP addresses" when creating).
MAX_SECONDARY_AT_CREATE = 49
# Assign/Unassign calls take at most this many addresses per call.
MAX_IPS_PER_CALL = 10
MAX_SECURITY_GROUPS_PER_ENI = 5
MAX_TAGS = 20
INSTANCE_STATUSES = ("Pending", "Running", "Starting", "Stopping", "Stopped")
OWNER_ID = "1234567890123456"

_REGION_PREFIX = {
    "cn-hangzhou": "bp",
    "cn-shanghai": "uf",
    "cn-beijing": "2z",
    "cn-shenzhen": "wz",
    "cn-zhangjiakou": "8v",
    "cn-hongkong": "j6",
    "ap-southeast-1": "t4",
}
_ID_ALPHABET = "0123456789abcdefghijklmnopqrstuvwxyz"


class ApiError(Exception):
    """An OpenAPI error answer: ``{"Code", "Message", ...}`` with an HTTP status."""

    def __init__(self, code: str, message: str, status: int = 400, headers: dict[str, str] | None = None):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.status = status
        self.headers = headers or {}


def missing(name: str) -> ApiError:
    return ApiError(
        "MissingParameter",
        f'The input parameter "{name}" that is mandatory for processing this request is not supplied.',
        400,
    )


def invalid(name: str, value: Any, expected: str) -> ApiError:
    return ApiError(
        "InvalidParameter", f'The specified parameter "{name}" ({value!r}) is not valid: {expected}.', 400
    )


def _now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# --------------------------------------------------------------------------- entities


@dataclass
class VSwitch:
    id: str
    zone: str
    vpc_id: str
    net4: ipaddress.IPv4Network
    net6: ipaddress.IPv6Network | None
    name: str
    created: str
    used4: set[int] = field(default_factory=set)
    used6: set[int] = field(default_factory=set)

    # Alibaba Cloud reserves the first and the last three IPv4 addresses of a
    # vSwitch (the gateway is the first of the last three: x.x.x.253 in a /24),
    # and the first and the last nine IPv6 addresses.
    @property
    def first4(self) -> int:
        return int(self.net4.network_address) + 1

    @property
    def last4(self) -> int:
        return int(self.net4.broadcast_address) - 3

    @property
    def gateway4(self) -> str:
        return str(ipaddress.IPv4Address(int(self.net4.broadcast_address) - 2))

    @property
    def gateway6(self) -> str | None:
        if self.net6 is None:
            return None
        return str(ipaddress.IPv6Address(int(self.net6.broadcast_address) - 2))

    @property
    def total4(self) -> int:
        return self.last4 - self.first4 + 1

    @property
    def available4(self) -> int:
        return self.total4 - len(self.used4)

    def _pick(self, lo: int, hi: int, used: set[int], rng: random.Random) -> int | None:
        if hi < lo or len(used) >= hi - lo + 1:
            return None
        for _ in range(32):
            cand = rng.randint(lo, hi)
            if cand not in used:
                return cand
        start = rng.randint(lo, hi)
        for cand in list(range(start, hi + 1)) + list(range(lo, start)):
            if cand not in used:
                return cand
        return None  # pragma: no cover - guarded by the count check above

    def alloc4(self, n: int, rng: random.Random) -> list[str]:
        if n > self.available4:
            raise ApiError(
                "InvalidVSwitchId.IpNotEnough",
                f"The specified VSwitch {self.id} does not have enough IP addresses "
                f"(requested {n}, available {self.available4}).",
                403,
            )
        out = []
        for _ in range(n):
            v = self._pick(self.first4, self.last4, self.used4, rng)
            assert v is not None
            self.used4.add(v)
            out.append(str(ipaddress.IPv4Address(v)))
        return out

    def check4(self, ip: str, param: str) -> int:
        try:
            addr = ipaddress.IPv4Address(ip)
        except ValueError:
            raise ApiError(
                "InvalidPrivateIpAddress.Malformed",
                f"The specified {param} {ip!r} is not a valid IPv4 address.",
                400,
            ) from None
        v = int(addr)
        if addr not in self.net4:
            raise ApiError(
                "InvalidPrivateIpAddress.Malformed",
                f"The specified {param} {ip} is not in the CIDR block {self.net4} of VSwitch {self.id}.",
                400,
            )
        if not self.first4 <= v <= self.last4:
            raise ApiError(
                "InvalidPrivateIpAddress.Malformed",
                f"The specified {param} {ip} is reserved by the system in VSwitch {self.id}.",
                400,
            )
        if v in self.used4:
            raise ApiError(
                "InvalidPrivateIpAddress.Duplicated", f"The specified {param} {ip} is already in use.", 400
            )
        return v

    def claim4(self, ips: Iterable[str], param: str) -> list[str]:
        vals = []
        for ip in ips:
            v = self.check4(ip, param)
            if v in vals:
                raise ApiError(
                    "InvalidPrivateIpAddress.Duplicated", f"The specified {param} {ip} is repeated.", 400
                )
            vals.append(v)
        self.used4.update(vals)
        return [str(ipaddress.IPv4Address(v)) for v in vals]

    def release4(self, ips: Iterable[str]) -> None:
        for ip in ips:
            self.used4.discard(int(ipaddress.IPv4Address(ip)))

    def _range6(self) -> tuple[int, int]:
        assert self.net6 is not None
        return int(self.net6.network_address) + 1, int(self.net6.broadcast_address) - 9

    def alloc6(self, n: int, rng: random.Random) -> list[str]:
        self._need6()
        lo, hi = self._range6()
        if n > (hi - lo + 1) - len(self.used6):
            raise ApiError(
                "InvalidVSwitchId.IpNotEnough",
                f"The specified VSwitch {self.id} does not have enough IPv6 addresses.",
                403,
            )
        out = []
        for _ in range(n):
            v = self._pick(lo, hi, self.used6, rng)
            assert v is not None
            self.used6.add(v)
            out.append(str(ipaddress.IPv6Address(v)))
        return out

    def claim6(self, ips: Iterable[str], param: str) -> list[str]:
        self._need6()
        lo, hi = self._range6()
        vals = []
        for ip in ips:
            try:
                addr = ipaddress.IPv6Address(ip)
            except ValueError:
                raise ApiError(
                    "InvalidIpv6Address.Malformed",
                    f"The specified {param} {ip!r} is not an IPv6 address.",
                    400,
                ) from None
            v = int(addr)
            if addr not in self.net6 or not lo <= v <= hi:
                raise ApiError(
                    "InvalidIpv6Address.Malformed",
                    f"The specified {param} {ip} is not an assignable address of {self.net6} (VSwitch {self.id}).",
                    400,
                )
            if v in self.used6 or v in vals:
                raise ApiError(
                    "InvalidIpv6Address.Duplicated", f"The specified {param} {ip} is already in use.", 400
                )
            vals.append(v)
        self.used6.update(vals)
        return [str(ipaddress.IPv6Address(v)) for v in vals]

    def release6(self, ips: Iterable[str]) -> None:
        for ip in ips:
            self.used6.discard(int(ipaddress.IPv6Address(ip)))

    def _need6(self) -> None:
        if self.net6 is None:
            raise ApiError(
                "InvalidVSwitchId.Ipv6NotTurnOn",
                f"The specified VSwitch {self.id} does not have IPv6 enabled.",
                403,
            )

    def net(self) -> VSwitchNet:
        return VSwitchNet(
            vswitch_id=self.id,
            cidr4=str(self.net4),
            gateway4=self.gateway4,
            cidr6=str(self.net6) if self.net6 else None,
            gateway6=self.gateway6,
        )


@dataclass
class SecurityGroup:
    id: str
    vpc_id: str
    name: str
    description: str
    created: str


@dataclass
class Instance:
    id: str
    itype: InstanceType
    zone: str
    vswitch_id: str
    security_groups: list[str]
    netns: str | None
    hostname: str
    created: str
    primary_eni_id: str = ""
    status: str = "Running"
    ram_role: str | None = None


@dataclass
class Eni:
    id: str
    created_type: str  # "Primary" | "Secondary" | "Trunk"
    vswitch_id: str
    zone: str
    vpc_id: str
    mac: str
    primary_ip: str
    security_groups: list[str]
    created: str
    seq: int
    secondary_ips: list[str] = field(default_factory=list)
    ipv6s: list[str] = field(default_factory=list)
    tags: dict[str, str] = field(default_factory=dict)
    description: str = ""
    name: str = ""
    resource_group_id: str = ""
    status: str = "Available"
    instance_id: str | None = None
    device_index: int | None = None
    trunk_eni_id: str | None = None
    vlan_id: int | None = None
    gen: int = 0  # bumps on every attach/detach so stale timers do nothing

    @property
    def type(self) -> str:
        if self.trunk_eni_id is not None:
            return "Member"
        return self.created_type

    @property
    def ipv4s(self) -> list[str]:
        return [self.primary_ip, *self.secondary_ips]


@dataclass
class _MdSnapshot:
    due: float
    enis: tuple[dict[str, Any], ...]


# --------------------------------------------------------------------------- the state


class CloudState:
    """The mutable cloud.  Hold :attr:`lock` around every call."""

    def __init__(self, topology: Topology, *, schedule: Callable[[float, Callable[[], None]], None]):
        self.lock = threading.RLock()
        self.topology = topology
        self._schedule = schedule
        self.outbox: list[tuple[str, tuple[Any, ...]]] = []
        self.reset(topology)

    # ------------------------------------------------------------------ setup
    def reset(self, topology: Topology) -> None:
        self.topology = topology
        self.rng = random.Random(topology.seed)
        self.region = topology.region
        self.prefix = _REGION_PREFIX.get(topology.region, "xx")
        self.vpc_id = topology.vpc_id
        self.vpc_cidr = ipaddress.IPv4Network(topology.vpc_cidr)
        self.vpc_cidr6 = ipaddress.IPv6Network(topology.vpc_ipv6_cidr) if topology.vpc_ipv6_cidr else None
        self.zones = list(topology.zones)
        self.vswitches: dict[str, VSwitch] = {}
        self.security_groups: dict[str, SecurityGroup] = {}
        self.instances: dict[str, Instance] = {}
        self.enis: dict[str, Eni] = {}
        self.macs: set[str] = set()
        self.client_tokens: dict[tuple[str, str, str], tuple[tuple, dict[str, Any]]] = {}
        self.metadata: dict[str, list[_MdSnapshot]] = {}
        self.attach_latency: Distribution = topology.attach_latency
        self.detach_latency: Distribution = topology.detach_latency
        self.metadata_delay: Distribution = topology.metadata_delay
        self._seq = 0
        self.pending: dict[str, tuple[str, float]] = {}  # eni id -> (target status, due)
        for vs in topology.vswitches:
            self.add_vswitch(vs, notify=False)
        for sg in topology.security_groups:
            self.security_groups[sg.id] = SecurityGroup(
                sg.id, self.vpc_id, sg.name, sg.description, _now_iso()
            )
        for inst in topology.instances:
            self.add_instance(inst)

    def new_id(self, prefix: str) -> str:
        return f"{prefix}-{self.prefix}" + "".join(self.rng.choice(_ID_ALPHABET) for _ in range(18))

    def new_mac(self) -> str:
        while True:
            mac = "00:16:3e:" + ":".join(f"{self.rng.randrange(256):02x}" for _ in range(3))
            if mac not in self.macs:
                self.macs.add(mac)
                return mac

    def add_vswitch(self, spec: VSwitchSpec, *, notify: bool = True) -> VSwitch:
        if spec.id in self.vswitches:
            raise ApiError("InvalidVSwitchId.Duplicated", f"VSwitch {spec.id} already exists.", 400)
        net4 = ipaddress.IPv4Network(spec.cidr)
        if not net4.subnet_of(self.vpc_cidr):
            raise ApiError(
                "InvalidCidrBlock.Malformed", f"{spec.cidr} is not inside the VPC CIDR {self.vpc_cidr}.", 400
            )
        for other in self.vswitches.values():
            if net4.overlaps(other.net4):
                raise ApiError(
                    "InvalidCidrBlock.Overlapped", f"{spec.cidr} overlaps {other.id} ({other.net4}).", 400
                )
        net6 = ipaddress.IPv6Network(spec.ipv6_cidr) if spec.ipv6_cidr else None
        if net6 is not None and (self.vpc_cidr6 is None or not net6.subnet_of(self.vpc_cidr6)):
            raise ApiError(
                "InvalidCidrBlock.Malformed", f"{spec.ipv6_cidr} is not inside the VPC IPv6 CIDR.", 400
            )
        if spec.zone not in self.zones:
            self.zones.append(spec.zone)
        vs = VSwitch(spec.id, spec.zone, self.vpc_id, net4, net6, spec.name or spec.id, _now_iso())
        self.vswitches[spec.id] = vs
        if notify:
            self.outbox.append(("vswitch_added", (vs.net(),)))
        return vs

    def add_instance(self, spec: InstanceSpec) -> Instance:
        if spec.id in self.instances:
            raise ApiError("InvalidInstanceId.Duplicated", f"Instance {spec.id} already exists.", 400)
        if spec.type not in INSTANCE_TYPES:
            raise ApiError("InvalidInstanceType.NotFound", f"Instance type {spec.type} is not known.", 404)
        vs = self._vswitch(spec.vswitch)
        for sg in spec.security_groups:
            self._sg(sg)
        if spec.primary_ip:
            [ip] = vs.claim4([spec.primary_ip], "primary_ip")
        else:
            [ip] = vs.alloc4(1, self.rng)
        inst = Instance(
            id=spec.id,
            itype=INSTANCE_TYPES[spec.type],
            zone=vs.zone,
            vswitch_id=vs.id,
            security_groups=list(spec.security_groups),
            netns=spec.netns,
            hostname=spec.hostname or f"iZ{spec.id.removeprefix('i-')}Z",
            created=_now_iso(),
            ram_role=spec.ram_role,
        )
        eni = self._new_eni("Primary", vs, ip, list(spec.security_groups))
        eni.status = "InUse"
        eni.instance_id = inst.id
        eni.device_index = 0
        inst.primary_eni_id = eni.id
        self.instances[inst.id] = inst
        self.metadata[inst.id] = []
        self._md_touch(inst.id, immediate=True)
        self.outbox.append(("add_instance", (inst.id, inst.netns or "", self.eni_net(eni))))
        return inst

    def remove_instance(self, instance_id: str) -> None:
        inst = self.instance(instance_id)
        for eni in sorted(self._attached(instance_id, members=True), key=lambda e: e.trunk_eni_id is None):
            if eni.id == inst.primary_eni_id:
                continue
            self._finish_detach(eni, notify=False)
        primary = self.enis.pop(inst.primary_eni_id)
        self._release_ips(primary)
        del self.instances[instance_id]
        self.metadata.pop(instance_id, None)
        self.outbox.append(("remove_instance", (instance_id,)))

    # ------------------------------------------------------------------ lookups
    def _vswitch(self, vsw_id: str) -> VSwitch:
        vs = self.vswitches.get(vsw_id)
        if vs is None:
            raise ApiError(
                "InvalidVSwitchId.NotFound", f"The specified VSwitchId {vsw_id} does not exist.", 404
            )
        return vs

    def vswitch(self, vsw_id: str) -> VSwitch:
        return self._vswitch(vsw_id)

    def _sg(self, sg_id: str) -> SecurityGroup:
        sg = self.security_groups.get(sg_id)
        if sg is None:
            raise ApiError(
                "InvalidSecurityGroupId.NotFound",
                f"The specified SecurityGroupId {sg_id} does not exist.",
                404,
            )
        return sg

    def eni(self, eni_id: str) -> Eni:
        eni = self.enis.get(eni_id)
        if eni is None:
            raise ApiError(
                "InvalidEniId.NotFound", f"The specified NetworkInterfaceId {eni_id} does not exist.", 404
            )
        return eni

    def instance(self, instance_id: str, code: str = "InvalidInstanceId.NotFound") -> Instance:
        inst = self.instances.get(instance_id)
        if inst is None:
            raise ApiError(code, f"The specified InstanceId {instance_id} does not exist.", 404)
        return inst

    def _attached(self, instance_id: str, *, members: bool) -> list[Eni]:
        return [
            e
            for e in self.enis.values()
            if e.instance_id == instance_id and (members or e.trunk_eni_id is None)
        ]

    # ------------------------------------------------------------------ ENIs
    def _new_eni(self, created_type: str, vs: VSwitch, primary_ip: str, sgs: list[str]) -> Eni:
        self._seq += 1
        eni = Eni(
            id=self.new_id("eni"),
            created_type=created_type,
            vswitch_id=vs.id,
            zone=vs.zone,
            vpc_id=vs.vpc_id,
            mac=self.new_mac(),
            primary_ip=primary_ip,
            security_groups=sgs,
            created=_now_iso(),
            seq=self._seq,
        )
        self.enis[eni.id] = eni
        return eni

    def create_eni(
        self,
        *,
        vswitch_id: str,
        security_groups: list[str],
        eni_type: str = "Secondary",
        primary_ip: str | None = None,
        secondary_count: int = 0,
        secondary_ips: list[str] | None = None,
        ipv6_count: int = 0,
        ipv6_ips: list[str] | None = None,
        tags: list[tuple[str, str]] | None = None,
        description: str = "",
        name: str = "",
        resource_group_id: str = "",
    ) -> Eni:
        vs = self._vswitch(vswitch_id)
        for sg in security_groups:
            self._sg(sg)
        secondary_ips = secondary_ips or []
        ipv6_ips = ipv6_ips or []
        if secondary_count and secondary_ips:
            raise invalid(
                "SecondaryPrivateIpAddressCount", secondary_count, "do not combine it with PrivateIpAddress.N"
            )
        if ipv6_count and ipv6_ips:
            raise invalid("Ipv6AddressCount", ipv6_count, "do not combine it with Ipv6Address.N")
        n_secondary = secondary_count or len(secondary_ips)
        if n_secondary > MAX_SECONDARY_AT_CREATE:
            raise ApiError(
                "QuotaExceeded.PrivateIpAddress",
                f"At most {MAX_SECONDARY_AT_CREATE} secondary private IP addresses can be assigned when an ENI is "
                f"created (requested {n_secondary}).",
                403,
            )
        n_v6 = ipv6_count or len(ipv6_ips)
        if n_v6 and vs.net6 is None:
            vs._need6()
        # Validate everything before allocating anything: all or nothing.
        wanted4 = (1 if primary_ip is None else 0) + (secondary_count or 0)
        if wanted4 > vs.available4:
            vs.alloc4(wanted4, self.rng)  # raises IpNotEnough
        claimed4: list[str] = []
        claimed6: list[str] = []
        try:
            if primary_ip is not None:
                claimed4 += vs.claim4([primary_ip], "PrimaryIpAddress")
            if secondary_ips:
                claimed4 += vs.claim4(secondary_ips, "PrivateIpAddress")
            auto = vs.alloc4(wanted4, self.rng)
            claimed4 += auto
            if ipv6_ips:
                claimed6 += vs.claim6(ipv6_ips, "Ipv6Address")
            if ipv6_count:
                claimed6 += vs.alloc6(ipv6_count, self.rng)
        except ApiError:
            vs.release4(claimed4)
            vs.release6(claimed6)
            raise
        if primary_ip is not None:
            prim, rest = claimed4[0], claimed4[1:]
        else:
            # auto-allocated primary comes first among the automatic ones
            explicit = claimed4[: len(secondary_ips)]
            auto_part = claimed4[len(secondary_ips) :]
            prim, rest = auto_part[0], explicit + auto_part[1:]
        eni = self._new_eni(eni_type, vs, prim, list(security_groups))
        eni.secondary_ips = rest
        eni.ipv6s = claimed6
        eni.tags = dict(tags or [])
        eni.description = description
        eni.name = name
        eni.resource_group_id = resource_group_id
        return eni

    def delete_eni(self, eni_id: str) -> None:
        eni = self.eni(eni_id)
        if eni.created_type == "Primary":
            raise ApiError(
                "InvalidOperation.InvalidEniState",
                f"The primary ENI {eni_id} cannot be deleted; it is released with its instance.",
                403,
            )
        if eni.status != "Available":
            raise ApiError(
                "InvalidOperation.InvalidEniState",
                f"The operation is not allowed in the current ENI state ({eni.status}); the ENI must be Available.",
                403,
            )
        self._release_ips(eni)
        del self.enis[eni_id]
        self.pending.pop(eni_id, None)

    def _release_ips(self, eni: Eni) -> None:
        vs = self.vswitches.get(eni.vswitch_id)
        if vs is not None:
            vs.release4(eni.ipv4s)
            vs.release6(eni.ipv6s)
        self.macs.discard(eni.mac)

    # ------------------------------------------------------------------ attach / detach
    def attach(self, eni_id: str, instance_id: str, trunk_id: str | None) -> None:
        eni = self.eni(eni_id)
        inst = self.instance(instance_id, "InvalidEcsId.NotFound")
        self._check_instance_status(inst)
        if eni.status != "Available":
            raise ApiError(
                "InvalidOperation.InvalidEniState",
                f"The operation is not allowed in the current ENI state ({eni.status}); the ENI must be Available.",
                403,
            )
        if eni.zone != inst.zone:
            raise ApiError(
                "InvalidOperation.AvailabilityZoneMismatch",
                f"ENI {eni_id} is in zone {eni.zone} but instance {instance_id} is in zone {inst.zone}.",
                403,
            )
        it = inst.itype
        if trunk_id:
            trunk = self.eni(trunk_id)
            if trunk.created_type != "Trunk" or trunk.instance_id != instance_id or trunk.status != "InUse":
                raise ApiError(
                    "InvalidOperation.InvalidTrunkEni",
                    f"ENI {trunk_id} is not a Trunk ENI in the InUse state on instance {instance_id}.",
                    403,
                )
            if eni.created_type != "Secondary":
                raise ApiError(
                    "InvalidOperation.InvalidEniType",
                    f"Only a Secondary ENI can be attached to a trunk ENI; {eni_id} is {eni.created_type}.",
                    403,
                )
            members = [e for e in self._attached(instance_id, members=True) if e.trunk_eni_id is not None]
            limit = it.eni_total_quantity - it.eni_quantity
            if len(members) >= limit:
                raise ApiError(
                    "EniPerInstanceLimitExceeded",
                    f"Number of member ENIs of instance {instance_id} ({it.instance_type_id}) exceeds the limit "
                    f"EniTotalQuantity - EniQuantity = {limit}.",
                    403,
                )
            used_vlans = {e.vlan_id for e in members if e.trunk_eni_id == trunk_id}
            vlan = next(v for v in range(1, 4095) if v not in used_vlans)
            self._check_ip_quota(eni, it)
            eni.trunk_eni_id = trunk_id
            eni.vlan_id = vlan
            eni.device_index = vlan
        else:
            if eni.created_type == "Trunk" and not it.eni_trunk_supported:
                raise ApiError(
                    "InvalidOperation.EniTrunkNotSupported",
                    f"Instance type {it.instance_type_id} does not support trunk ENIs (EniTrunkSupported=false).",
                    403,
                )
            attached = self._attached(instance_id, members=False)
            if len(attached) >= it.eni_quantity:
                raise ApiError(
                    "EniPerInstanceLimitExceeded",
                    f"Number of ENIs of instance {instance_id} ({it.instance_type_id}) exceeds the limit "
                    f"EniQuantity = {it.eni_quantity}.",
                    403,
                )
            self._check_ip_quota(eni, it)
            used = {e.device_index for e in attached}
            eni.device_index = next(i for i in range(1, 1 + it.eni_quantity + len(used)) if i not in used)
        eni.status = "Attaching"
        eni.instance_id = instance_id
        eni.gen += 1
        gen = eni.gen
        delay = self.attach_latency.sample(self.rng)
        if delay <= 0:
            self._finish_attach(eni)
        else:
            self.pending[eni.id] = ("InUse", time.monotonic() + delay)
            self._schedule(delay, lambda: self._timer(eni_id, gen, self._finish_attach))

    @staticmethod
    def _check_instance_status(inst: Instance) -> None:
        if inst.status not in ("Running", "Stopped"):
            raise ApiError(
                "IncorrectInstanceStatus",
                f"The current status of the resource does not support this operation: instance {inst.id} is "
                f"{inst.status} (Running or Stopped needed).",
                403,
            )

    def set_instance_status(self, instance_id: str, status: str) -> None:
        if status not in INSTANCE_STATUSES:
            raise invalid("status", status, f"one of {', '.join(INSTANCE_STATUSES)}")
        self.instance(instance_id).status = status

    def _check_ip_quota(self, eni: Eni, it: InstanceType) -> None:
        if len(eni.ipv4s) > it.eni_private_ip_address_quantity:
            raise ApiError(
                "InvalidOperation.Ipv4CountExceeded",
                f"ENI {eni.id} has {len(eni.ipv4s)} private IPv4 addresses; instance type {it.instance_type_id} "
                f"allows {it.eni_private_ip_address_quantity} per ENI.",
                403,
            )
        if len(eni.ipv6s) > it.eni_ipv6_address_quantity:
            raise ApiError(
                "InvalidOperation.Ipv6CountExceeded",
                f"ENI {eni.id} has {len(eni.ipv6s)} IPv6 addresses; instance type {it.instance_type_id} "
                f"allows {it.eni_ipv6_address_quantity} per ENI.",
                403,
            )

    def _timer(self, eni_id: str, gen: int, fn: Callable[[Eni], None]) -> None:
        eni = self.enis.get(eni_id)
        if eni is None or eni.gen != gen:
            return
        self.pending.pop(eni_id, None)
        fn(eni)

    def _finish_attach(self, eni: Eni) -> None:
        if eni.status != "Attaching":
            return
        eni.status = "InUse"
        self.pending.pop(eni.id, None)
        assert eni.instance_id is not None
        self._md_touch(eni.instance_id)
        self.outbox.append(("eni_attached", (eni.instance_id, self.eni_net(eni))))

    def detach(self, eni_id: str, instance_id: str | None, trunk_id: str | None) -> None:
        eni = self.eni(eni_id)
        if eni.created_type == "Primary":
            raise ApiError(
                "InvalidOperation.DetachPrimaryEniNotAllowed",
                f"The primary ENI {eni_id} cannot be detached.",
                403,
            )
        if instance_id is not None:
            self._check_instance_status(self.instance(instance_id, "InvalidEcsId.NotFound"))
        if eni.status == "Detaching":
            return  # re-requesting a detach is allowed and changes nothing
        if eni.status != "InUse":
            raise ApiError(
                "InvalidOperation.InvalidEniState",
                f"The operation is not allowed in the current ENI state ({eni.status}); the ENI must be InUse.",
                403,
            )
        if instance_id is not None and eni.instance_id != instance_id:
            raise ApiError(
                "InvalidOperation.InvalidEniState",
                f"ENI {eni_id} is not attached to instance {instance_id} (attached to {eni.instance_id}).",
                403,
            )
        if trunk_id and eni.trunk_eni_id != trunk_id:
            raise ApiError(
                "InvalidOperation.InvalidEniState",
                f"ENI {eni_id} is not a member of trunk ENI {trunk_id}.",
                403,
            )
        if eni.created_type == "Trunk":
            members = [e.id for e in self.enis.values() if e.trunk_eni_id == eni_id]
            if members:
                raise ApiError(
                    "InvalidOperation.InvalidEniState",
                    f"Trunk ENI {eni_id} still has member ENIs attached: {', '.join(members)}.",
                    403,
                )
        eni.status = "Detaching"
        eni.gen += 1
        gen = eni.gen
        delay = self.detach_latency.sample(self.rng)
        if delay <= 0:
            self._finish_detach(eni)
        else:
            self.pending[eni.id] = ("Available", time.monotonic() + delay)
            self._schedule(delay, lambda: self._timer(eni_id, gen, self._finish_detach))

    def _finish_detach(self, eni: Eni, *, notify: bool = True) -> None:
        instance_id = eni.instance_id
        net = self.eni_net(eni)
        eni.status = "Available"
        eni.instance_id = None
        eni.device_index = None
        eni.trunk_eni_id = None
        eni.vlan_id = None
        eni.gen += 1
        self.pending.pop(eni.id, None)
        if instance_id is not None and instance_id in self.instances:
            self._md_touch(instance_id)
            if notify:
                self.outbox.append(("eni_detached", (instance_id, net)))

    def settle(self) -> int:
        """Complete every pending attach/detach now.  Returns how many."""
        done = 0
        for eni_id, (target, _due) in list(self.pending.items()):
            eni = self.enis.get(eni_id)
            if eni is None:
                continue
            if target == "InUse":
                self._finish_attach(eni)
            else:
                self._finish_detach(eni)
            done += 1
        self.pending.clear()
        return done

    # ------------------------------------------------------------------ IPs
    def _ip_limits(self, eni: Eni) -> tuple[int, int] | None:
        if eni.instance_id is None:
            return None
        inst = self.instances.get(eni.instance_id)
        if inst is None:
            return None
        return inst.itype.eni_private_ip_address_quantity, inst.itype.eni_ipv6_address_quantity

    def _eni_for_ips(self, eni_id: str) -> Eni:
        """The ENI ``eni_id``; its addresses change only while it is Available or InUse."""
        eni = self.eni(eni_id)
        if eni.status not in ("Available", "InUse"):
            raise ApiError(
                "InvalidOperation.InvalidEniState",
                f"The operation is not allowed in the current ENI state ({eni.status}).",
                403,
            )
        return eni

    @staticmethod
    def _check_assign_quota(eni_id: str, have: int, n: int, limit: int | None, code: str, what: str) -> None:
        """``code`` unless ``n`` more ``what`` fit in ``limit`` (``None``: the ENI is not attached)."""
        if limit is None:
            limit = 1 + MAX_SECONDARY_AT_CREATE
        if have + n > limit:
            raise ApiError(
                code,
                f"ENI {eni_id} has {have} {what}; {n} more would exceed the quota of {limit} per ENI.",
                403,
            )

    def assign_ipv4(self, eni_id: str, count: int, ips: list[str]) -> list[str]:
        eni = self._eni_for_ips(eni_id)
        limits = self._ip_limits(eni)
        self._check_assign_quota(
            eni_id,
            len(eni.ipv4s),
            count or len(ips),
            limits[0] if limits else None,
            "QuotaExceeded.PrivateIpAddress",
            "private IP addresses",
        )
        vs = self._vswitch(eni.vswitch_id)
        new = vs.claim4(ips, "PrivateIpAddress") if ips else vs.alloc4(count, self.rng)
        eni.secondary_ips.extend(new)
        self._ips_changed(eni)
        return new

    def unassign_ipv4(self, eni_id: str, ips: list[str]) -> None:
        eni = self._eni_for_ips(eni_id)
        for ip in ips:
            if ip == eni.primary_ip:
                raise ApiError(
                    "InvalidIp.IpUnassigned",
                    f"The primary private IP address {ip} of ENI {eni_id} cannot be unassigned.",
                    403,
                )
            if ip not in eni.secondary_ips:
                raise ApiError(
                    "InvalidIp.IpUnassigned",
                    f"The private IP address {ip} is not assigned to ENI {eni_id}.",
                    403,
                )
        for ip in ips:
            eni.secondary_ips.remove(ip)
        self._vswitch(eni.vswitch_id).release4(ips)
        self._ips_changed(eni)

    def assign_ipv6(self, eni_id: str, count: int, ips: list[str]) -> list[str]:
        eni = self._eni_for_ips(eni_id)
        limits = self._ip_limits(eni)
        self._check_assign_quota(
            eni_id,
            len(eni.ipv6s),
            count or len(ips),
            limits[1] if limits else None,
            "InvalidOperation.Ipv6CountExceeded",
            "IPv6 addresses",
        )
        vs = self._vswitch(eni.vswitch_id)
        new = vs.claim6(ips, "Ipv6Address") if ips else vs.alloc6(count, self.rng)
        eni.ipv6s.extend(new)
        self._ips_changed(eni)
        return new

    def unassign_ipv6(self, eni_id: str, ips: list[str]) -> None:
        eni = self._eni_for_ips(eni_id)
        norm = []
        for ip in ips:
            try:
                canon = str(ipaddress.IPv6Address(ip))
            except ValueError:
                raise ApiError(
                    "InvalidIpv6Address.Malformed", f"{ip!r} is not an IPv6 address.", 400
                ) from None
            if canon not in eni.ipv6s:
                raise ApiError(
                    "InvalidIp.IpUnassigned", f"The IPv6 address {ip} is not assigned to ENI {eni_id}.", 403
                )
            norm.append(canon)
        for ip in norm:
            eni.ipv6s.remove(ip)
        self._vswitch(eni.vswitch_id).release6(norm)
        self._ips_changed(eni)

    def _ips_changed(self, eni: Eni) -> None:
        if eni.status == "InUse" and eni.instance_id is not None:
            self._md_touch(eni.instance_id)
            self.outbox.append(("eni_ips_changed", (eni.instance_id, self.eni_net(eni))))

    # ------------------------------------------------------------------ node-side view
    def eni_net(self, eni: Eni) -> EniNet:
        vs = self.vswitches[eni.vswitch_id]
        device_index = eni.device_index if eni.device_index is not None else -1
        if eni.trunk_eni_id is not None:
            trunk = self.enis.get(eni.trunk_eni_id)
            device_index = trunk.device_index if trunk and trunk.device_index is not None else -1
        return EniNet(
            eni_id=eni.id,
            mac=eni.mac,
            device_index=device_index,
            vswitch=vs.net(),
            primary_ip=eni.primary_ip,
            secondary_ipv4s=tuple(eni.secondary_ips),
            ipv6s=tuple(eni.ipv6s),
            trunk_eni_id=eni.trunk_eni_id,
            vlan_id=eni.vlan_id,
        )

    # ------------------------------------------------------------------ metadata
    def _md_touch(self, instance_id: str, *, immediate: bool = False) -> None:
        """Record what the metadata service will show for ``instance_id`` once
        the metadata delay has passed."""
        snaps = self.metadata.setdefault(instance_id, [])
        enis = []
        for e in sorted(self._attached(instance_id, members=False), key=lambda x: x.device_index or 0):
            if e.status not in ("InUse", "Detaching"):
                continue
            vs = self.vswitches[e.vswitch_id]
            enis.append(
                {
                    "eni_id": e.id,
                    "mac": e.mac,
                    "device_index": e.device_index,
                    "primary_ip": e.primary_ip,
                    "ipv4s": list(e.ipv4s),
                    "ipv6s": list(e.ipv6s),
                    "vswitch_id": vs.id,
                    "cidr4": str(vs.net4),
                    "cidr6": str(vs.net6) if vs.net6 else None,
                    "gateway4": vs.gateway4,
                    "gateway6": vs.gateway6,
                    "netmask": str(vs.net4.netmask),
                }
            )
        now = time.monotonic()
        delay = 0.0 if immediate else self.metadata_delay.sample(self.rng)
        snaps.append(_MdSnapshot(now + delay, tuple(enis)))
        # Keep the newest snapshot already visible and everything after it.
        visible = [i for i, snap in enumerate(snaps) if snap.due <= now]
        if visible and visible[-1] > 0:
            del snaps[: visible[-1]]

    def metadata_view(self, instance_id: str) -> list[dict[str, Any]]:
        """The ENIs the metadata service shows now (changes appear after the delay)."""
        snaps = self.metadata.get(instance_id, [])
        now = time.monotonic()
        best = -1
        for i, s in enumerate(snaps):
            if s.due <= now:
                best = i
        if best < 0:
            return []
        if best > 0:
            del snaps[:best]
        return [dict(e) for e in snaps[0].enis]

    def instance_by_ip(self, ip: str) -> Instance | None:
        for inst in self.instances.values():
            eni = self.enis.get(inst.primary_eni_id)
            if eni is not None and eni.primary_ip == ip:
                return inst
        return None

    # ------------------------------------------------------------------ snapshot
    def snapshot(self) -> dict[str, Any]:
        return {
            "region": self.region,
            "vpc": {
                "id": self.vpc_id,
                "cidr": str(self.vpc_cidr),
                "ipv6_cidr": str(self.vpc_cidr6) if self.vpc_cidr6 else None,
            },
            "zones": list(self.zones),
            "vswitches": [
                {
                    "id": vs.id,
                    "zone": vs.zone,
                    "cidr": str(vs.net4),
                    "ipv6_cidr": str(vs.net6) if vs.net6 else None,
                    "gateway": vs.gateway4,
                    "ipv6_gateway": vs.gateway6,
                    "available_ip_address_count": vs.available4,
                    "used_ipv4": len(vs.used4),
                    "used_ipv6": len(vs.used6),
                }
                for vs in self.vswitches.values()
            ],
            "security_groups": [{"id": sg.id, "name": sg.name} for sg in self.security_groups.values()],
            "instances": [
                {
                    "id": inst.id,
                    "type": inst.itype.instance_type_id,
                    "zone": inst.zone,
                    "vswitch": inst.vswitch_id,
                    "netns": inst.netns,
                    "status": inst.status,
                    "primary_eni": inst.primary_eni_id,
                    "primary_ip": self.enis[inst.primary_eni_id].primary_ip,
                    "security_groups": list(inst.security_groups),
                }
                for inst in self.instances.values()
            ],
            "enis": [
                {
                    "id": e.id,
                    "type": e.type,
                    "status": e.status,
                    "vswitch": e.vswitch_id,
                    "mac": e.mac,
                    "primary_ip": e.primary_ip,
                    "secondary_ips": list(e.secondary_ips),
                    "ipv6s": list(e.ipv6s),
                    "instance_id": e.instance_id,
                    "device_index": e.device_index,
                    "trunk_eni_id": e.trunk_eni_id,
                    "vlan_id": e.vlan_id,
                    "tags": dict(e.tags),
                    "security_groups": list(e.security_groups),
                }
                for e in sorted(self.enis.values(), key=lambda x: x.seq)
            ],
            "pending_transitions": {k: v[0] for k, v in self.pending.items()},
        }
