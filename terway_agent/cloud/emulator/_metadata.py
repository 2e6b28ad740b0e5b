"""The instance metadata service (100.100.100.200), IMDSv2-style tokens.

``PUT /latest/api/token`` with ``X-aliyun-ecs-metadata-token-ttl-seconds``
(1..21600) returns a token; ``GET`` requests carry it in
``X-aliyun-ecs-metadata-token``.  In ``required`` mode a GET without a valid
token is 401; in ``optional`` mode only an invalid/expired token is 401.

ENIs and their IPs appear here ``metadata_delay`` after the change (see
:meth:`CloudState.metadata_view`), as on the real service where attach and
assign results show up with a lag.
"""

from __future__ import annotations

import json
import secrets
import threading
import time
from dataclasses import dataclass

from terway_agent.cloud.emulator._model import CloudState, Instance
from terway_agent.cloud.emulator._sts import StsStore

TOKEN_TTL_HEADER = "x-aliyun-ecs-metadata-token-ttl-seconds"
TOKEN_HEADER = "x-aliyun-ecs-metadata-token"
MAX_TTL = 21600


@dataclass
class MdResponse:
    status: int
    body: str
    content_type: str = "text/plain"


_NOT_FOUND = MdResponse(404, "Not Found")


class TokenStore:
    def __init__(self) -> None:
        self._tokens: dict[str, tuple[str, float]] = {}
        self._lock = threading.Lock()

    def issue(self, instance_id: str, ttl: int) -> str:
        token = secrets.token_urlsafe(32)
        now = time.monotonic()
        with self._lock:
            self._tokens = {k: v for k, v in self._tokens.items() if v[1] > now}
            self._tokens[token] = (instance_id, now + ttl)
        return token

    def valid(self, instance_id: str, token: str) -> bool:
        with self._lock:
            entry = self._tokens.get(token)
        return entry is not None and entry[0] == instance_id and entry[1] > time.monotonic()

    def clear(self) -> None:
        with self._lock:
            self._tokens.clear()


def handle(
    state: CloudState,
    tokens: TokenStore,
    sts: StsStore,
    mode: str,
    instance_id: str | None,
    method: str,
    path: str,
    headers: dict[str, list[str]],
) -> MdResponse:
    """Answer one metadata request for ``instance_id`` (``None``: unknown caller)."""
    if instance_id is None:
        return MdResponse(403, "Forbidden: the caller is not an instance of this VPC")
    path = "/" + path.lstrip("/")
    if path == "/latest/api/token":
        if method != "PUT":
            return MdResponse(405, "Method Not Allowed")
        raw = (headers.get(TOKEN_TTL_HEADER) or [""])[0].strip()
        if not raw.isdigit() or not 1 <= int(raw) <= MAX_TTL:
            return MdResponse(
                400, f"Bad Request: {TOKEN_TTL_HEADER} must be an integer between 1 and {MAX_TTL}"
            )
        with state.lock:
            if instance_id not in state.instances:
                return _NOT_FOUND
        return MdResponse(200, tokens.issue(instance_id, int(raw)))
    if method != "GET":
        return MdResponse(405, "Method Not Allowed")
    token = (headers.get(TOKEN_HEADER) or [None])[0]
    if token is not None and not tokens.valid(instance_id, token):
        return MdResponse(401, "Unauthorized: the metadata token is invalid or expired")
    if token is None and mode == "required":
        return MdResponse(401, "Unauthorized: a metadata token is required")
    with state.lock:
        inst = state.instances.get(instance_id)
        if inst is None:
            return _NOT_FOUND
        role = inst.ram_role
        if role is None or not path.startswith("/latest/meta-data/ram/"):
            return _get(state, inst, path)
    # RAM role credentials (outside the state lock)
    rel = path[len("/latest/meta-data/ram/") :].strip("/")
    if rel == "":
        return _listing(["security-credentials/"])
    if rel == "security-credentials":
        return _listing([role])
    if rel == f"security-credentials/{role}":
        return MdResponse(
            200, json.dumps(sts.credentials(instance_id, role).document(), indent=2), "application/json"
        )
    return _NOT_FOUND


def _listing(items: list[str]) -> MdResponse:
    return MdResponse(200, "\n".join(items))


def _get(state: CloudState, inst: Instance, path: str) -> MdResponse:
    if path in ("/", ""):
        return _listing(["latest"])
    if path in ("/latest", "/latest/"):
        return _listing(["meta-data/"])
    prefix = "/latest/meta-data"
    if not path.startswith(prefix):
        return _NOT_FOUND
    rel = path[len(prefix) :].strip("/")
    primary = state.enis[inst.primary_eni_id]
    vs = state.vswitches[inst.vswitch_id]
    top = {
        "instance-id": inst.id,
        "region-id": state.region,
        "zone-id": inst.zone,
        "vswitch-id": inst.vswitch_id,
        "vpc-id": state.vpc_id,
        "vpc-cidr-block": str(state.vpc_cidr),
        "mac": primary.mac,
        "private-ipv4": primary.primary_ip,
        "hostname": inst.hostname,
        "network-type": "vpc",
        "owner-account-id": "1234567890123456",
        "vswitch-cidr-block": str(vs.net4),
    }
    if rel == "":
        return _listing(sorted([*top, "instance/", "network/"]))
    if rel in top:
        return MdResponse(200, top[rel])
    if rel == "instance":
        return _listing(["instance-type"])
    if rel == "instance/instance-type":
        return MdResponse(200, inst.itype.instance_type_id)
    if rel == "network":
        return _listing(["interfaces/"])
    if rel == "network/interfaces":
        return _listing(["macs/"])
    view = state.metadata_view(inst.id)
    if rel == "network/interfaces/macs":
        return _listing([e["mac"] + "/" for e in view])
    mac_prefix = "network/interfaces/macs/"
    if not rel.startswith(mac_prefix):
        return _NOT_FOUND
    mac, _, key = rel[len(mac_prefix) :].partition("/")
    eni = next((e for e in view if e["mac"] == mac.lower()), None)
    if eni is None:
        return _NOT_FOUND
    values: dict[str, str | None] = {
        "network-interface-id": eni["eni_id"],
        "primary-ip-address": eni["primary_ip"],
        "gateway": eni["gateway4"],
        "netmask": eni["netmask"],
        "private-ipv4s": json.dumps(eni["ipv4s"]),
        "ipv6s": "[" + ",".join(eni["ipv6s"]) + "]" if eni["ipv6s"] else None,
        "ipv6-gateway": eni["gateway6"],
        "vswitch-id": eni["vswitch_id"],
        "vswitch-cidr-block": eni["cidr4"],
        "vswitch-ipv6-cidr-block": eni["cidr6"],
        "vpc-id": state.vpc_id,
        "vpc-cidr-block": str(state.vpc_cidr),
        "vpc-ipv6-cidr-blocks": str(state.vpc_cidr6) if state.vpc_cidr6 and eni["cidr6"] else None,
    }
    if key == "":
        return _listing(sorted(k for k, v in values.items() if v is not None))
    value = values.get(key)
    if value is None:
        return _NOT_FOUND
    return MdResponse(200, value)
