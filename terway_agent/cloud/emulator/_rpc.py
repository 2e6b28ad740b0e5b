"""The RPC actions: parameter parsing, validation and response shapes.

Response bodies are shaped exactly as the SDK's response models read them
(``alibabacloud_ecs20140526.models.*ResponseBody.from_map``).
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable
from typing import Any

from terway_agent.cloud.emulator._instance_types import INSTANCE_TYPES
from terway_agent.cloud.emulator._model import (
    MAX_IPS_PER_CALL,
    MAX_SECURITY_GROUPS_PER_ENI,
    MAX_TAGS,
    OWNER_ID,
    ApiError,
    CloudState,
    Eni,
    Instance,
    VSwitch,
    invalid,
    missing,
)

ECS_VERSION = "2014-05-26"
VPC_VERSION = "2016-04-28"

#: Parameters every RPC request may carry that are not part of the API itself.
COMMON_PARAMS = frozenset(
    {
        "Action",
        "Version",
        "Format",
        "Timestamp",
        "SignatureNonce",
        "SignatureMethod",
        "SignatureVersion",
        "Signature",
        "SignatureType",
        "AccessKeyId",
        "SecurityToken",
        "BearerToken",
        "ClientToken",
        "OwnerId",
        "OwnerAccount",
        "ResourceOwnerId",
        "ResourceOwnerAccount",
    }
)


class Params:
    """Typed access to the flat query parameters of one call."""

    def __init__(self, raw: dict[str, str]):
        self.raw = raw

    def str(self, name: str, *, required: bool = False, default: str | None = None) -> str | None:
        value = self.raw.get(name)
        if value is None or value == "":
            if required:
                raise missing(name)
            return default
        return value

    def req(self, name: str) -> str:
        value = self.str(name, required=True)
        assert value is not None
        return value

    def int(
        self, name: str, *, default: int | None = None, lo: int | None = None, hi: int | None = None
    ) -> int | None:
        value = self.raw.get(name)
        if value is None or value == "":
            return default
        try:
            n = int(value)
        except ValueError:
            raise invalid(name, value, "an integer") from None
        if (lo is not None and n < lo) or (hi is not None and n > hi):
            raise invalid(name, value, f"an integer between {lo} and {hi}")
        return n

    def bool(self, name: str) -> bool | None:
        value = self.raw.get(name)
        if value is None or value == "":
            return None
        if value.lower() in ("true", "false"):
            return value.lower() == "true"
        raise invalid(name, value, "true or false")

    def list(self, name: str) -> list[str]:
        """``Name.1``, ``Name.2``, ... in index order."""
        items: list[tuple[int, str]] = []
        prefix = name + "."
        for key, value in self.raw.items():
            if key.startswith(prefix) and key[len(prefix) :].isdigit():
                items.append((int(key[len(prefix) :]), value))
        items.sort()
        return [v for _, v in items if v != ""]

    def json_list(self, name: str) -> list[str]:
        value = self.raw.get(name)
        if value is None or value == "":
            return []
        try:
            parsed = json.loads(value)
        except ValueError:
            raise invalid(name, value, 'a JSON array of strings such as ["id-1","id-2"]') from None
        if not isinstance(parsed, list) or not all(isinstance(x, str) for x in parsed):
            raise invalid(name, value, 'a JSON array of strings such as ["id-1","id-2"]')
        return parsed

    def tags(self, name: str = "Tag") -> list[tuple[str, str]]:
        idx: dict[int, dict[str, str]] = {}
        prefix = name + "."
        for key, value in self.raw.items():
            if not key.startswith(prefix):
                continue
            n, dot, field = key[len(prefix) :].partition(".")
            if not n.isdigit() or not dot:
                continue
            if field not in ("Key", "Value"):
                raise invalid(key, value, f"{name}.N.Key or {name}.N.Value")
            idx.setdefault(int(n), {})[field] = value
        out = []
        for n in sorted(idx):
            key = idx[n].get("Key")
            if not key:
                raise missing(f"{name}.{n}.Key")
            out.append((key, idx[n].get("Value", "")))
        if len(out) > MAX_TAGS:
            raise invalid(name, len(out), f"at most {MAX_TAGS} tags")
        return out

    def business(self) -> tuple:
        """The parameters that define the request (for ClientToken matching)."""
        return tuple(sorted((k, v) for k, v in self.raw.items() if k not in COMMON_PARAMS))


def _check_region(state: CloudState, p: Params, *, required: bool = True) -> None:
    region = p.str("RegionId", required=required)
    if region is not None and region != state.region:
        raise ApiError("InvalidRegionId.NotFound", f"The specified RegionId {region} does not exist.", 404)


# --------------------------------------------------------------------------- shapes


def _tags(eni: Eni) -> dict[str, Any]:
    return {"Tag": [{"TagKey": k, "TagValue": v} for k, v in eni.tags.items()]}


def _ip_sets(eni: Eni) -> dict[str, Any]:
    return {"PrivateIpSet": [{"PrivateIpAddress": ip, "Primary": ip == eni.primary_ip} for ip in eni.ipv4s]}


def _ipv6_sets(eni: Eni) -> dict[str, Any]:
    return {"Ipv6Set": [{"Ipv6Address": ip} for ip in eni.ipv6s]}


def eni_set(eni: Eni) -> dict[str, Any]:
    """A DescribeNetworkInterfaces ``NetworkInterfaceSet`` item."""
    out: dict[str, Any] = {
        "NetworkInterfaceId": eni.id,
        "NetworkInterfaceName": eni.name,
        "Description": eni.description,
        "Status": eni.status,
        "Type": eni.type,
        "VpcId": eni.vpc_id,
        "VSwitchId": eni.vswitch_id,
        "ZoneId": eni.zone,
        "PrivateIpAddress": eni.primary_ip,
        "MacAddress": eni.mac,
        "InstanceId": eni.instance_id or "",
        "CreationTime": eni.created,
        "ResourceGroupId": eni.resource_group_id,
        "OwnerId": OWNER_ID,
        "ServiceManaged": False,
        "DeleteOnRelease": eni.created_type == "Primary",
        "NetworkInterfaceTrafficMode": "Standard",
        "QueueNumber": 1,
        "SourceDestCheck": False,
        "SecurityGroupIds": {"SecurityGroupId": list(eni.security_groups)},
        "PrivateIpSets": _ip_sets(eni),
        "Ipv6Sets": _ipv6_sets(eni),
        "Ipv4PrefixSets": {"Ipv4PrefixSet": []},
        "Ipv6PrefixSets": {"Ipv6PrefixSet": []},
        "Tags": _tags(eni),
    }
    if eni.instance_id is not None:
        att: dict[str, Any] = {"InstanceId": eni.instance_id, "DeviceIndex": eni.device_index}
        if eni.trunk_eni_id is not None:
            att["TrunkNetworkInterfaceId"] = eni.trunk_eni_id
        out["Attachment"] = att
    return out


def eni_attribute(state: CloudState, eni: Eni) -> dict[str, Any]:
    out = eni_set(eni)
    att = out.get("Attachment")
    if eni.created_type == "Trunk":
        members = sorted((e for e in state.enis.values() if e.trunk_eni_id == eni.id), key=lambda e: e.seq)
        att = att or {}
        att["MemberNetworkInterfaceIds"] = {"MemberNetworkInterfaceId": [e.id for e in members]}
        out["Attachment"] = att
    return out


def eni_created(eni: Eni) -> dict[str, Any]:
    return {
        "NetworkInterfaceId": eni.id,
        "NetworkInterfaceName": eni.name,
        "Description": eni.description,
        "Status": eni.status,
        "Type": eni.type,
        "VpcId": eni.vpc_id,
        "VSwitchId": eni.vswitch_id,
        "ZoneId": eni.zone,
        "PrivateIpAddress": eni.primary_ip,
        "MacAddress": eni.mac,
        "ResourceGroupId": eni.resource_group_id,
        "OwnerId": OWNER_ID,
        "ServiceManaged": False,
        "SourceDestCheck": False,
        "SecurityGroupIds": {"SecurityGroupId": list(eni.security_groups)},
        "PrivateIpSets": _ip_sets(eni),
        "Ipv6Sets": _ipv6_sets(eni),
        "Ipv4PrefixSets": {"Ipv4PrefixSet": []},
        "Ipv6PrefixSets": {"Ipv6PrefixSet": []},
        "Tags": _tags(eni),
    }


def vswitch_ecs(vs: VSwitch) -> dict[str, Any]:
    return {
        "VSwitchId": vs.id,
        "VSwitchName": vs.name,
        "VpcId": vs.vpc_id,
        "ZoneId": vs.zone,
        "CidrBlock": str(vs.net4),
        "AvailableIpAddressCount": vs.available4,
        "Status": "Available",
        "IsDefault": False,
        "Description": "",
        "ResourceGroupId": "",
        "CreationTime": vs.created,
    }


def vswitch_vpc(state: CloudState, vs: VSwitch) -> dict[str, Any]:
    """The VPC API (2016-04-28) shape: adds the IPv6 CIDR and more."""
    out = vswitch_ecs(vs)
    out.update(
        {
            "Ipv6CidrBlock": str(vs.net6) if vs.net6 else "",
            "EnabledIpv6": vs.net6 is not None,
            "OwnerId": int(OWNER_ID),
            "RegionId": state.region,
            "NetworkAclId": "",
            "ShareType": "",
            "RouteTable": {
                "RouteTableId": f"vtb-{vs.vpc_id.removeprefix('vpc-')}",
                "RouteTableType": "System",
            },
            "Tags": {"Tag": []},
        }
    )
    return out


def _instance(state: CloudState, inst: Instance) -> dict[str, Any]:
    primary = state.enis[inst.primary_eni_id]
    enis = sorted(
        (e for e in state.enis.values() if e.instance_id == inst.id and e.trunk_eni_id is None),
        key=lambda e: e.device_index or 0,
    )
    return {
        "InstanceId": inst.id,
        "InstanceName": inst.id,
        "HostName": inst.hostname,
        "InstanceType": inst.itype.instance_type_id,
        "InstanceTypeFamily": inst.itype.family,
        "Cpu": inst.itype.cpu,
        "Memory": int(inst.itype.memory_gib * 1024),
        "Status": inst.status,
        "RegionId": state.region,
        "ZoneId": inst.zone,
        "CreationTime": inst.created,
        "InstanceNetworkType": "vpc",
        "InstanceChargeType": "PostPaid",
        "InternetChargeType": "PayByTraffic",
        "OSType": "linux",
        "ImageId": "aliyun_3_x64_20G_alibase_20240819.vhd",
        "SecurityGroupIds": {"SecurityGroupId": list(inst.security_groups)},
        "VpcAttributes": {
            "VpcId": state.vpc_id,
            "VSwitchId": inst.vswitch_id,
            "PrivateIpAddress": {"IpAddress": [primary.primary_ip]},
            "NatIpAddress": "",
        },
        "InnerIpAddress": {"IpAddress": []},
        "PublicIpAddress": {"IpAddress": []},
        "NetworkInterfaces": {
            "NetworkInterface": [
                {
                    "NetworkInterfaceId": e.id,
                    "MacAddress": e.mac,
                    "PrimaryIpAddress": e.primary_ip,
                    "Type": e.type,
                    "PrivateIpSets": {
                        "PrivateIpSet": [
                            {"PrivateIpAddress": ip, "Primary": ip == e.primary_ip} for ip in e.ipv4s
                        ]
                    },
                    "Ipv6Sets": {"Ipv6Set": [{"Ipv6Address": ip} for ip in e.ipv6s]},
                }
                for e in enis
            ]
        },
        "Tags": {"Tag": []},
    }


# --------------------------------------------------------------------------- pagination


def _token_encode(offset: int) -> str:
    return base64.urlsafe_b64encode(f"twemu:{offset}".encode()).decode().rstrip("=")


def _token_decode(token: str) -> int:
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
        tag, _, n = raw.partition(":")
        if tag != "twemu" or not n.isdigit():
            raise ValueError
        return int(n)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise invalid("NextToken", token, "a token returned by a previous call") from None


def _paginate(
    p: Params,
    items: list[Any],
    *,
    page_max: int,
    results_max: int,
    results_default: int = 10,
    allow_token: bool = True,
    token_only: bool = False,
) -> tuple[list[Any], dict[str, Any]]:
    """Either NextToken/MaxResults (when either is given) or PageNumber/PageSize."""
    if token_only or (allow_token and (p.str("NextToken") is not None or p.str("MaxResults") is not None)):
        size = p.int("MaxResults", default=results_default, lo=1, hi=results_max)
        assert size is not None
        start = _token_decode(p.req("NextToken")) if p.str("NextToken") else 0
        page = items[start : start + size]
        nxt = _token_encode(start + size) if start + size < len(items) else ""
        return page, {"NextToken": nxt, "TotalCount": len(items)}
    number = p.int("PageNumber", default=1, lo=1, hi=10**9)
    size = p.int("PageSize", default=10, lo=1, hi=page_max)
    assert number is not None and size is not None
    start = (number - 1) * size
    return items[start : start + size], {"PageNumber": number, "PageSize": size, "TotalCount": len(items)}


# --------------------------------------------------------------------------- actions


def _security_groups(p: Params) -> list[str]:
    single = p.str("SecurityGroupId")
    many = p.list("SecurityGroupIds")
    if single and many:
        raise invalid("SecurityGroupIds", many, "either SecurityGroupId or SecurityGroupIds.N, not both")
    sgs = [single] if single else many
    if not sgs:
        raise missing("SecurityGroupId")
    if len(sgs) > MAX_SECURITY_GROUPS_PER_ENI:
        raise invalid("SecurityGroupIds", sgs, f"at most {MAX_SECURITY_GROUPS_PER_ENI} security groups")
    if len(set(sgs)) != len(sgs):
        raise invalid("SecurityGroupIds", sgs, "no repeated security group")
    return sgs


def create_network_interface(state: CloudState, p: Params) -> dict[str, Any]:
    _check_region(state, p)
    vsw = p.req("VSwitchId")
    sgs = _security_groups(p)
    eni_type = p.str("InstanceType", default="Secondary")
    if eni_type not in ("Secondary", "Trunk"):
        raise invalid("InstanceType", eni_type, "Secondary or Trunk")
    secondary_count = p.int("SecondaryPrivateIpAddressCount", default=0, lo=0, hi=10**6) or 0
    ipv6_count = p.int("Ipv6AddressCount", default=0, lo=0, hi=10**6) or 0
    name = p.str("NetworkInterfaceName", default="") or ""
    description = p.str("Description", default="") or ""
    for fld, value in (("NetworkInterfaceName", name), ("Description", description)):
        if value.startswith(("http://", "https://")):
            raise invalid(fld, value, "a text that does not start with http:// or https://")
    eni = state.create_eni(
        vswitch_id=vsw,
        security_groups=sgs,
        eni_type=eni_type,
        primary_ip=p.str("PrimaryIpAddress"),
        secondary_count=secondary_count,
        secondary_ips=p.list("PrivateIpAddress"),
        ipv6_count=ipv6_count,
        ipv6_ips=p.list("Ipv6Address"),
        tags=p.tags(),
        description=description,
        name=name,
        resource_group_id=p.str("ResourceGroupId", default="") or "",
    )
    return eni_created(eni)


def attach_network_interface(state: CloudState, p: Params) -> dict[str, Any]:
    _check_region(state, p)
    state.attach(p.req("NetworkInterfaceId"), p.req("InstanceId"), p.str("TrunkNetworkInstanceId"))
    return {}


def detach_network_interface(state: CloudState, p: Params) -> dict[str, Any]:
    _check_region(state, p)
    state.detach(p.req("NetworkInterfaceId"), p.req("InstanceId"), p.str("TrunkNetworkInstanceId"))
    return {}


def delete_network_interface(state: CloudState, p: Params) -> dict[str, Any]:
    _check_region(state, p)
    state.delete_eni(p.req("NetworkInterfaceId"))
    return {}


_ENI_TYPES = ("Primary", "Secondary", "Trunk", "Member")
_ENI_STATUSES = ("Available", "Attaching", "InUse", "Detaching", "Deleting")


def describe_network_interfaces(state: CloudState, p: Params) -> dict[str, Any]:
    _check_region(state, p)
    ids = p.list("NetworkInterfaceId")
    if len(ids) > 100:
        raise invalid("NetworkInterfaceId", len(ids), "at most 100 ids")
    status = p.str("Status")
    if status is not None and status not in _ENI_STATUSES:
        raise invalid("Status", status, f"one of {', '.join(_ENI_STATUSES)}")
    eni_type = p.str("Type")
    if eni_type is not None and eni_type not in _ENI_TYPES:
        raise invalid("Type", eni_type, f"one of {', '.join(_ENI_TYPES)}")
    instance_id = p.str("InstanceId")
    vsw = p.str("VSwitchId")
    vpc = p.str("VpcId")
    primary_ip = p.str("PrimaryIpAddress")
    private_ips = set(p.list("PrivateIpAddress"))
    ipv6s = set(p.list("Ipv6Address"))
    tags = p.tags()
    name = p.str("NetworkInterfaceName")
    sg = p.str("SecurityGroupId")
    rg = p.str("ResourceGroupId")
    matched = []
    for eni in sorted(state.enis.values(), key=lambda e: e.seq):
        if ids and eni.id not in ids:
            continue
        if status and eni.status != status:
            continue
        if eni_type and eni.type != eni_type:
            continue
        if instance_id and eni.instance_id != instance_id:
            continue
        if vsw and eni.vswitch_id != vsw:
            continue
        if vpc and eni.vpc_id != vpc:
            continue
        if primary_ip and eni.primary_ip != primary_ip:
            continue
        if private_ips and not private_ips & set(eni.ipv4s):
            continue
        if ipv6s and not ipv6s & set(eni.ipv6s):
            continue
        if tags and any(eni.tags.get(k) != v for k, v in tags):
            continue
        if name and eni.name != name:
            continue
        if sg and sg not in eni.security_groups:
            continue
        if rg and eni.resource_group_id != rg:
            continue
        matched.append(eni)
    page, meta = _paginate(p, matched, page_max=1000, results_max=500)
    return {"NetworkInterfaceSets": {"NetworkInterfaceSet": [eni_set(e) for e in page]}, **meta}


def describe_network_interface_attribute(state: CloudState, p: Params) -> dict[str, Any]:
    _check_region(state, p)
    eni = state.eni(p.req("NetworkInterfaceId"))
    return eni_attribute(state, eni)


def _ip_list(p: Params, name: str) -> list[str]:
    ips = p.list(name)
    if len(ips) > MAX_IPS_PER_CALL:
        raise invalid(f"{name}.N", len(ips), f"at most {MAX_IPS_PER_CALL} addresses per call")
    return ips


def _assign_params(
    state: CloudState, p: Params, count_name: str, ips_name: str
) -> tuple[str, int, list[str]]:
    """The ENI id, count and addresses of an Assign* call: a count or addresses, not both."""
    _check_region(state, p)
    eni_id = p.req("NetworkInterfaceId")
    count = p.int(count_name, default=0, lo=0, hi=MAX_IPS_PER_CALL) or 0
    ips = _ip_list(p, ips_name)
    if count and ips:
        raise invalid(count_name, count, f"do not combine it with {ips_name}.N")
    if not count and not ips:
        raise missing(count_name)
    return eni_id, count, ips


def _unassign_params(state: CloudState, p: Params, ips_name: str) -> tuple[str, list[str]]:
    """The ENI id and the (at least one) addresses of an Unassign* call."""
    _check_region(state, p)
    eni_id = p.req("NetworkInterfaceId")
    ips = _ip_list(p, ips_name)
    if not ips:
        raise missing(f"{ips_name}.1")
    return eni_id, ips


def assign_private_ip_addresses(state: CloudState, p: Params) -> dict[str, Any]:
    eni_id, count, ips = _assign_params(state, p, "SecondaryPrivateIpAddressCount", "PrivateIpAddress")
    new = state.assign_ipv4(eni_id, count, ips)
    return {
        "AssignedPrivateIpAddressesSet": {
            "NetworkInterfaceId": eni_id,
            "PrivateIpSet": {"PrivateIpAddress": new},
        }
    }


def unassign_private_ip_addresses(state: CloudState, p: Params) -> dict[str, Any]:
    state.unassign_ipv4(*_unassign_params(state, p, "PrivateIpAddress"))
    return {}


def assign_ipv6_addresses(state: CloudState, p: Params) -> dict[str, Any]:
    eni_id, count, ips = _assign_params(state, p, "Ipv6AddressCount", "Ipv6Address")
    new = state.assign_ipv6(eni_id, count, ips)
    return {"NetworkInterfaceId": eni_id, "Ipv6Sets": {"Ipv6Address": new}}


def unassign_ipv6_addresses(state: CloudState, p: Params) -> dict[str, Any]:
    state.unassign_ipv6(*_unassign_params(state, p, "Ipv6Address"))
    return {}


def describe_instance_types(state: CloudState, p: Params) -> dict[str, Any]:
    wanted = p.list("InstanceTypes")
    if len(wanted) > 10:
        raise invalid("InstanceTypes.N", len(wanted), "at most 10 instance types")
    family = p.str("InstanceTypeFamily")
    items = [
        it
        for tid, it in sorted(INSTANCE_TYPES.items())
        if (not wanted or tid in wanted) and (not family or it.family == family)
    ]
    page, meta = _paginate(p, items, page_max=1600, results_max=1600, results_default=1600, token_only=True)
    return {"InstanceTypes": {"InstanceType": [it.to_api() for it in page]}, "NextToken": meta["NextToken"]}


def _vswitches_matching(state: CloudState, p: Params) -> list[VSwitch]:
    vpc = p.str("VpcId")
    vsw_id = p.str("VSwitchId")
    if vsw_id and "," in vsw_id:
        # VSwitchId is one id: the real API looks up "a,b" as a single (unknown) vSwitch
        raise ApiError("InvalidVSwitchId.NotFound", f"The specified VSwitchId {vsw_id} does not exist.", 404)
    zone = p.str("ZoneId")
    is_default = p.bool("IsDefault")
    out = []
    for vs in state.vswitches.values():
        if vpc and vs.vpc_id != vpc:
            continue
        if vsw_id and vs.id != vsw_id:
            continue
        if zone and vs.zone != zone:
            continue
        if is_default:
            continue  # no default vSwitches in the emulator
        out.append(vs)
    return out


def describe_vswitches(state: CloudState, p: Params) -> dict[str, Any]:
    _check_region(state, p)
    page, meta = _paginate(p, _vswitches_matching(state, p), page_max=50, results_max=50, allow_token=False)
    return {"VSwitches": {"VSwitch": [vswitch_ecs(vs) for vs in page]}, **meta}


def describe_vswitches_vpc(state: CloudState, p: Params) -> dict[str, Any]:
    _check_region(state, p)
    page, meta = _paginate(p, _vswitches_matching(state, p), page_max=50, results_max=50, allow_token=False)
    return {"VSwitches": {"VSwitch": [vswitch_vpc(state, vs) for vs in page]}, **meta}


def describe_security_groups(state: CloudState, p: Params) -> dict[str, Any]:
    _check_region(state, p)
    vpc = p.str("VpcId")
    ids = set(p.json_list("SecurityGroupIds"))
    single = p.str("SecurityGroupId")
    if single:
        ids.add(single)
    name = p.str("SecurityGroupName")
    items = [
        sg
        for sg in state.security_groups.values()
        if (not vpc or sg.vpc_id == vpc) and (not ids or sg.id in ids) and (not name or sg.name == name)
    ]
    page, meta = _paginate(p, items, page_max=50, results_max=100)
    members: dict[str, int] = {}
    for eni in state.enis.values():
        for sg in eni.security_groups:
            members[sg] = members.get(sg, 0) + 1
    return {
        "RegionId": state.region,
        "SecurityGroups": {
            "SecurityGroup": [
                {
                    "SecurityGroupId": sg.id,
                    "SecurityGroupName": sg.name,
                    "Description": sg.description,
                    "VpcId": sg.vpc_id,
                    "SecurityGroupType": "normal",
                    "CreationTime": sg.created,
                    "ResourceGroupId": "",
                    "ServiceManaged": False,
                    "EcsCount": members.get(sg.id, 0),
                    "AvailableInstanceAmount": 2000 - members.get(sg.id, 0),
                    "Tags": {"Tag": []},
                }
                for sg in page
            ]
        },
        **meta,
    }


def describe_instances(state: CloudState, p: Params) -> dict[str, Any]:
    _check_region(state, p)
    ids = p.json_list("InstanceIds")
    if len(ids) > 100:
        raise invalid("InstanceIds", len(ids), "at most 100 ids")
    ips = set(p.json_list("PrivateIpAddresses"))
    vpc, vsw, zone = p.str("VpcId"), p.str("VSwitchId"), p.str("ZoneId")
    itype, status = p.str("InstanceType"), p.str("Status")
    items = []
    for inst in state.instances.values():
        primary = state.enis[inst.primary_eni_id]
        if ids and inst.id not in ids:
            continue
        if ips and primary.primary_ip not in ips:
            continue
        if vpc and vpc != state.vpc_id:
            continue
        if vsw and inst.vswitch_id != vsw:
            continue
        if zone and inst.zone != zone:
            continue
        if itype and inst.itype.instance_type_id != itype:
            continue
        if status and inst.status != status:
            continue
        items.append(inst)
    page, meta = _paginate(p, items, page_max=100, results_max=100)
    return {"Instances": {"Instance": [_instance(state, i) for i in page]}, **meta}


def describe_instance_attribute(state: CloudState, p: Params) -> dict[str, Any]:
    inst = state.instance(p.req("InstanceId"))
    full = _instance(state, inst)
    keep = (
        "InstanceId",
        "InstanceName",
        "HostName",
        "InstanceType",
        "Cpu",
        "Memory",
        "Status",
        "RegionId",
        "ZoneId",
        "CreationTime",
        "InstanceNetworkType",
        "InstanceChargeType",
        "InternetChargeType",
        "ImageId",
        "SecurityGroupIds",
        "VpcAttributes",
        "InnerIpAddress",
        "PublicIpAddress",
    )
    return {k: full[k] for k in keep}


Handler = Callable[[CloudState, Params], dict[str, Any]]

#: (version, action) -> (handler, idempotent with ClientToken)
ACTIONS: dict[tuple[str, str], tuple[Handler, bool]] = {
    (ECS_VERSION, "CreateNetworkInterface"): (create_network_interface, True),
    (ECS_VERSION, "AttachNetworkInterface"): (attach_network_interface, False),
    (ECS_VERSION, "DetachNetworkInterface"): (detach_network_interface, False),
    (ECS_VERSION, "DeleteNetworkInterface"): (delete_network_interface, False),
    (ECS_VERSION, "DescribeNetworkInterfaces"): (describe_network_interfaces, False),
    (ECS_VERSION, "DescribeNetworkInterfaceAttribute"): (describe_network_interface_attribute, False),
    (ECS_VERSION, "AssignPrivateIpAddresses"): (assign_private_ip_addresses, True),
    (ECS_VERSION, "UnassignPrivateIpAddresses"): (unassign_private_ip_addresses, False),
    (ECS_VERSION, "AssignIpv6Addresses"): (assign_ipv6_addresses, True),
    (ECS_VERSION, "UnassignIpv6Addresses"): (unassign_ipv6_addresses, False),
    (ECS_VERSION, "DescribeInstanceTypes"): (describe_instance_types, False),
    (ECS_VERSION, "DescribeVSwitches"): (describe_vswitches, False),
    (ECS_VERSION, "DescribeSecurityGroups"): (describe_security_groups, False),
    (ECS_VERSION, "DescribeInstances"): (describe_instances, False),
    (ECS_VERSION, "DescribeInstanceAttribute"): (describe_instance_attribute, False),
    (VPC_VERSION, "DescribeVSwitches"): (describe_vswitches_vpc, False),
}


def run_idempotent(
    state: CloudState, action: str, p: Params, handler: Handler, access_key: str
) -> dict[str, Any]:
    """Run ``handler`` honouring ``ClientToken``: the same token with the same
    parameters returns the first result without doing anything again; the same
    token with other parameters is ``IdempotentParameterMismatch``."""
    token = p.str("ClientToken")
    if token is None:
        return handler(state, p)
    if len(token) > 64 or not token.isascii():
        raise invalid("ClientToken", token, "at most 64 ASCII characters")
    key = (action, access_key, token)
    fingerprint = p.business()
    seen = state.client_tokens.get(key)
    if seen is not None:
        if seen[0] != fingerprint:
            raise ApiError(
                "IdempotentParameterMismatch",
                "Request uses a client token in a previous request but is not identical to that request.",
                400,
            )
        return json.loads(json.dumps(seen[1]))
    body = handler(state, p)
    state.client_tokens[key] = (fingerprint, json.loads(json.dumps(body)))
    return body
