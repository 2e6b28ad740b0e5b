"""The embeddable Alibaba Cloud emulator: ECS/VPC RPC API, instance metadata, admin.

Typical use (tests, the demo)::

    with Emulator(load_topology("topo.yaml")) as emu:
        client = Client(Config(access_key_id=emu.access_key_id,
                               access_key_secret=emu.access_key_secret,
                               endpoint=emu.endpoint, protocol="http", region_id=emu.region_id))
        emu.admin().add_fault("CreateNetworkInterface", kind="error_after_commit", times=1)

Resource handling: :meth:`start` opens the listeners and starts three daemon
threads (HTTP server per listener, a timer scheduler, the node-side runner);
:meth:`stop` closes all of them, releases hanging requests, calls
``NodeSide.close()`` and writes the state dump if one was asked for.

Error handling: API errors are answered as OpenAPI error JSON; node-side
failures are logged and listed by ``GET /__admin__/node_side``; a bug in a
handler answers 500 and the server keeps serving.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

from terway_agent.cloud.emulator import _admin, _metadata
from terway_agent.cloud.emulator._dist import Distribution
from terway_agent.cloud.emulator._faults import FaultEngine, FaultRule
from terway_agent.cloud.emulator._http import Drop, Listener, Request, Response
from terway_agent.cloud.emulator._instance_types import INSTANCE_TYPES
from terway_agent.cloud.emulator._model import ApiError, CloudState
from terway_agent.cloud.emulator._rpc import ACTIONS, VPC_VERSION, Params, run_idempotent
from terway_agent.cloud.emulator._signature import NonceCache, verify_acs3, verify_rpc_v2
from terway_agent.cloud.emulator._sts import StsStore
from terway_agent.cloud.emulator._workers import NodeSideRunner, Scheduler
from terway_agent.cloud.emulator.node_side import NodeSide, NullNodeSide, ServiceAddresses
from terway_agent.cloud.emulator.topology import (
    _INSTANCE_KEYS,
    InstanceSpec,
    Topology,
    VSwitchSpec,
    default_topology,
    load_topology,
)
from terway_agent.errors import ConfigError, PermanentError
from terway_agent.log import get_logger

log = get_logger(__name__)

__all__ = ["Emulator"]

TIMESTAMP_SKEW = 15 * 60
NODE_SIDE_WAIT = 120.0


def _parse_listen(listen: str) -> tuple[str, int]:
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise ConfigError("listen", listen, "HOST:PORT such as 127.0.0.1:0")
    return host.strip("[]"), int(port)


def _parse_timestamp(value: str) -> float | None:
    try:
        return time.mktime(time.strptime(value, "%Y-%m-%dT%H:%M:%SZ")) - time.timezone
    except (ValueError, OverflowError):
        return None


class Emulator:
    """The emulated cloud behind one HTTP listener.

    :param topology: a :class:`Topology`, a path to a topology YAML file, a
        topology dict, or ``None`` for the packaged default topology.
    :param listen: ``HOST:PORT`` of the loopback listener (port 0: any free port).
    :param node_side: the :class:`NodeSide` that makes the cloud physical; by
        default built from the topology (``NullNodeSide`` unless
        ``node_side.kind`` is ``netns``).
    :param vpc_netns: the VPC namespace in which to serve the metadata and
        OpenAPI service addresses (default: the topology's ``node_side.vpc_netns``).
        Only used with a real node side.
    :param services: the service addresses inside the VPC namespace.
    :param state_dump: write the state as JSON here when stopping.
    """

    def __init__(
        self,
        topology: Topology | str | Path | dict[str, Any] | None = None,
        *,
        listen: str = "127.0.0.1:0",
        node_side: NodeSide | None = None,
        vpc_netns: str | None = None,
        services: ServiceAddresses | None = None,
        state_dump: str | Path | None = None,
    ) -> None:
        if topology is None:
            topology = default_topology()
        elif isinstance(topology, str | Path):
            topology = load_topology(topology)
        elif isinstance(topology, dict):
            topology = Topology.from_dict(topology)
        self.topology: Topology = topology
        self._listen = _parse_listen(listen)
        self._services = services or ServiceAddresses()
        self._state_dump = str(state_dump) if state_dump else None
        self._access_keys: dict[str, str] = {ak.id: ak.secret for ak in topology.access_keys}
        self._faults = FaultEngine()
        self._faults.configure(
            topology.latency, topology.rate_limits, topology.retry_after_header, topology.seed
        )
        self._scheduler = Scheduler()
        self._epoch = 0
        self._state = CloudState(topology, schedule=self._schedule)
        if node_side is None:
            node_side = self._make_node_side(topology)
        self._node_side = node_side
        self._vpc_netns = vpc_netns or (topology.vpc_netns if topology.node_side == "netns" else None)
        self._runner = NodeSideRunner(node_side)
        self._tokens = _metadata.TokenStore()
        self._sts = StsStore(topology.sts_lifetime)
        self._md_mode = topology.metadata_tokens
        self._nonces = NonceCache()
        self._listeners: list[Listener] = []
        self._stop_event = threading.Event()
        # Set (and replaced) on reset and stop: releases requests held by
        # "hang" faults or latency, which are then dropped.
        self._release = threading.Event()
        self._started = False
        self._stopped = False

    @staticmethod
    def _make_node_side(topology: Topology) -> NodeSide:
        if topology.node_side != "netns":
            return NullNodeSide()
        from terway_agent.cloud.emulator.netns_node_side import NetnsNodeSide  # noqa: PLC0415

        return NetnsNodeSide(vpc_netns=topology.vpc_netns)

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> Emulator:
        """Open the listeners, start the workers and the node side.  Returns self."""
        if self._started:
            raise RuntimeError("Emulator.start() called twice")
        self._started = True
        self._scheduler.start()
        self._runner.start()
        try:
            host, port = self._listen
            main = Listener(host, port, self._dispatch_main, "main")
            self._listeners.append(main)
            main.start()
            vswitches = [vs.net() for vs in self._state.vswitches.values()]
            done = self._runner.submit("start", (vswitches, self._services))
            if not done.wait(NODE_SIDE_WAIT):
                raise PermanentError(f"the node side did not start within {NODE_SIDE_WAIT:.0f} s")
            failed = [e for e in self._runner.status()["errors"] if e["method"] == "start"]
            if failed:
                raise PermanentError(
                    f"the node side failed to start: {failed[0]['error']}", node_side=failed[0]
                )
            with self._state.lock:
                events = self._drain()
            self._wait(events)
            if self._vpc_netns is not None and not isinstance(self._node_side, NullNodeSide):
                self._open_vpc_listeners(self._vpc_netns)
        except BaseException:
            self.stop()
            raise
        log.info("emulator.started", endpoint=self.endpoint, instances=len(self._state.instances))
        return self

    def _open_vpc_listeners(self, vpc_netns: str) -> None:
        from terway_agent.datapath import netns  # noqa: PLC0415

        with netns.enter(vpc_netns):
            md = Listener(self._services.metadata, 80, self._dispatch_vpc_metadata, "vpc-metadata")
            api = Listener(self._services.openapi, 80, self._dispatch_vpc_openapi, "vpc-openapi")
        for listener in (md, api):
            self._listeners.append(listener)
            listener.start()

    def stop(self) -> None:
        """Stop serving; idempotent."""
        if self._stopped:
            return
        self._stopped = True
        self._stop_event.set()
        self._release.set()
        for listener in self._listeners:
            try:
                listener.stop()
            except Exception:
                log.exception("emulator.listener.stop_failed", listener=listener.name)
        self._scheduler.stop()
        if self._started:
            self._runner.submit("close", ()).wait(NODE_SIDE_WAIT)
            self._runner.stop()
        if self._state_dump:
            try:
                self.dump_state(self._state_dump)
            except OSError:
                log.exception("emulator.state_dump.failed", path=self._state_dump)
        log.info("emulator.stopped")

    def __enter__(self) -> Emulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ public info
    @property
    def host(self) -> str:
        return self._listeners[0].address[0]

    @property
    def port(self) -> int:
        return self._listeners[0].address[1]

    @property
    def endpoint(self) -> str:
        """``HOST:PORT`` for the SDK ``Config(endpoint=..., protocol="http")``."""
        return f"{self.host}:{self.port}"

    @property
    def admin_url(self) -> str:
        return f"http://{self.endpoint}{_admin.PREFIX}"

    @property
    def region_id(self) -> str:
        return self.topology.region

    @property
    def access_key_id(self) -> str:
        return self.topology.access_keys[0].id

    @property
    def access_key_secret(self) -> str:
        return self.topology.access_keys[0].secret

    @property
    def instance_ids(self) -> list[str]:
        with self._state.lock:
            return list(self._state.instances)

    def metadata_url(self, instance_id: str) -> str:
        """Base URL of ``instance_id``'s metadata service on the loopback
        listener; append ``/latest/meta-data/...``."""
        return f"http://{self.endpoint}/metadata/{instance_id}"

    def admin(self) -> Any:
        """An :class:`~terway_agent.cloud.emulator.admin_client.AdminClient` for this emulator."""
        from terway_agent.cloud.emulator.admin_client import AdminClient  # noqa: PLC0415

        return AdminClient(self.admin_url)

    def snapshot(self) -> dict[str, Any]:
        """The full state plus settings, counters and node-side status."""
        with self._state.lock:
            state = self._state.snapshot()
            state["settings"] = {
                "attach_latency": self._state.attach_latency.to_dict(),
                "detach_latency": self._state.detach_latency.to_dict(),
                "metadata_delay": self._state.metadata_delay.to_dict(),
                "metadata_tokens": self._md_mode,
                **self._faults.settings(),
            }
        state["counters"] = self._faults.counters()
        state["faults"] = self._faults.rules()
        state["node_side"] = self._runner.status()
        state["access_keys"] = sorted(self._access_keys)
        return state

    def dump_state(self, path: str | Path) -> None:
        data = json.dumps(self.snapshot(), indent=2, default=str)
        tmp = Path(f"{path}.tmp")
        tmp.write_text(data, encoding="utf-8")
        tmp.replace(path)

    def reset(self, topology: Topology | None = None) -> None:
        """Back to the topology's initial state (or a new topology): instances,
        ENIs, IPs, tokens, faults, counters, rate limits and latencies."""
        topology = topology or self.topology
        with self._state.lock:
            old_instances = list(self._state.instances)
            old_vswitches = set(self._state.vswitches)
            self._epoch += 1
            self._scheduler.clear()
            for iid in old_instances:
                self._state.outbox.append(("remove_instance", (iid,)))
            self._state.reset(topology)
            for vs in self._state.vswitches.values():
                if vs.id not in old_vswitches:
                    self._state.outbox.insert(0, ("vswitch_added", (vs.net(),)))
            self.topology = topology
            self._access_keys = {ak.id: ak.secret for ak in topology.access_keys}
            self._md_mode = topology.metadata_tokens
            self._faults.configure(
                topology.latency, topology.rate_limits, topology.retry_after_header, topology.seed
            )
            self._tokens.clear()
            self._sts.clear(topology.sts_lifetime)
            released, self._release = self._release, threading.Event()
            released.set()
            events = self._drain() if self._started else []
        self._wait(events)

    def settle(self) -> int:
        """Finish every pending attach/detach now; returns how many."""
        with self._state.lock:
            n = self._state.settle()
            events = self._drain()
        self._wait(events)
        return n

    # ------------------------------------------------------------------ internals used by admin
    def _apply_settings(self, dists: dict[str, Distribution], tokens: str | None) -> None:
        with self._state.lock:
            for key, dist in dists.items():
                setattr(self._state, key, dist)
            if tokens is not None:
                self._md_mode = tokens

    def _admin_add_instance(self, body: dict[str, Any]) -> dict[str, Any]:
        unknown = set(body) - _INSTANCE_KEYS
        if unknown:
            raise ConfigError("instance", sorted(unknown), f"only the keys {sorted(_INSTANCE_KEYS)}")
        for key in ("id", "type", "vswitch"):
            if not isinstance(body.get(key), str) or not body[key]:
                raise ConfigError(key, body.get(key), "a non-empty string")
        for key in ("zone", "netns", "primary_ip", "hostname", "ram_role"):
            if body.get(key) is not None and (not isinstance(body[key], str) or not body[key]):
                raise ConfigError(key, body[key], "a non-empty string or null")
        if body["type"] not in INSTANCE_TYPES:
            raise ConfigError(
                "type", body["type"], f"a known instance type ({', '.join(sorted(INSTANCE_TYPES))})"
            )
        sgs = body.get("security_groups")
        if sgs is not None and (not isinstance(sgs, list) or not all(isinstance(x, str) and x for x in sgs)):
            raise ConfigError("security_groups", sgs, "a list of security group ids")
        with self._state.lock:
            vs = self._state.vswitch(body["vswitch"])
            zone = body.get("zone") or vs.zone
            if zone != vs.zone:
                raise ConfigError("zone", zone, f"the zone of vSwitch {vs.id} ({vs.zone})")
            if not sgs:
                if not self._state.security_groups:
                    raise ConfigError("security_groups", sgs, "at least one security group (none exist)")
                sgs = [next(iter(self._state.security_groups))]
            spec = InstanceSpec(
                id=body["id"],
                type=body["type"],
                vswitch=vs.id,
                zone=vs.zone,
                security_groups=tuple(sgs),
                netns=body.get("netns"),
                primary_ip=body.get("primary_ip"),
                hostname=body.get("hostname"),
                ram_role=body.get("ram_role"),
            )
            inst = self._state.add_instance(spec)
            primary = self._state.enis[inst.primary_eni_id]
            result = {
                "id": inst.id,
                "primary_eni": primary.id,
                "primary_ip": primary.primary_ip,
                "mac": primary.mac,
            }
            events = self._drain()
        self._wait(events)
        return result

    def _admin_remove_instance(self, instance_id: str) -> None:
        with self._state.lock:
            self._state.remove_instance(instance_id)
            events = self._drain()
        self._wait(events)

    def _admin_add_vswitch(self, body: dict[str, Any]) -> dict[str, Any]:
        allowed = {"id", "zone", "cidr", "ipv6_cidr", "name"}
        unknown = set(body) - allowed
        if unknown:
            raise ConfigError("vswitch", sorted(unknown), f"only the keys {sorted(allowed)}")
        for key in ("id", "zone", "cidr"):
            if not isinstance(body.get(key), str) or not body[key]:
                raise ConfigError(key, body.get(key), "a non-empty string")
        import ipaddress  # noqa: PLC0415

        try:
            cidr = str(ipaddress.IPv4Network(body["cidr"]))
        except ValueError as exc:
            raise ConfigError("cidr", body["cidr"], f"an IPv4 CIDR ({exc})") from None
        ipv6 = None
        if body.get("ipv6_cidr"):
            try:
                ipv6 = str(ipaddress.IPv6Network(body["ipv6_cidr"]))
            except ValueError as exc:
                raise ConfigError("ipv6_cidr", body["ipv6_cidr"], f"an IPv6 CIDR ({exc})") from None
        with self._state.lock:
            vs = self._state.add_vswitch(
                VSwitchSpec(body["id"], body["zone"], cidr, ipv6, str(body.get("name", "")))
            )
            result = {"id": vs.id, "gateway": vs.gateway4, "available_ip_address_count": vs.available4}
            events = self._drain()
        self._wait(events)
        return result

    # ------------------------------------------------------------------ plumbing
    def _schedule(self, delay: float, fn: Any) -> None:
        epoch = self._epoch

        def run() -> None:
            with self._state.lock:
                if epoch != self._epoch:
                    return
                fn()
                self._drain()

        self._scheduler.call_later(delay, run)

    def _drain(self) -> list[threading.Event]:
        """Submit queued node-side calls (caller holds the state lock)."""
        events = [self._runner.submit(method, args) for method, args in self._state.outbox]
        self._state.outbox.clear()
        return events

    def _wait(self, events: list[threading.Event]) -> None:
        for ev in events:
            if not ev.wait(NODE_SIDE_WAIT):
                log.error("emulator.node_side.timeout", seconds=NODE_SIDE_WAIT)
                return

    # ------------------------------------------------------------------ dispatch
    def _dispatch_main(self, req: Request) -> Response:
        if req.path.startswith(_admin.PREFIX):
            return _admin.handle(self, req)
        if req.path.startswith("/metadata/"):
            rest = req.path[len("/metadata/") :]
            instance_id, _, sub = rest.partition("/")
            return self._metadata(req, instance_id or None, "/" + sub)
        return self._rpc(req)

    def _dispatch_vpc_metadata(self, req: Request) -> Response:
        with self._state.lock:
            inst = self._state.instance_by_ip(req.client_ip)
        return self._metadata(req, inst.id if inst else None, req.path)

    def _dispatch_vpc_openapi(self, req: Request) -> Response:
        return self._rpc(req)

    def _metadata(self, req: Request, instance_id: str | None, path: str) -> Response:
        api = "metadata:token" if path.rstrip("/") == "/latest/api/token" else "metadata:get"
        self._faults.record_call(api)
        decision = self._faults.decide(api, rpc=False)
        if decision.delay > 0 and self._release.wait(decision.delay):
            raise Drop
        rule = decision.pre
        if rule is not None:
            self._faults.record_result(api, rule.code)
            if rule.kind == "drop":
                raise Drop
            if rule.kind == "hang":
                self._hang(rule)
            else:
                return Response(rule.status, f"{rule.message}\n".encode(), "text/plain")
        resp = _metadata.handle(
            self._state, self._tokens, self._sts, self._md_mode, instance_id, req.method, path, req.headers
        )
        if decision.post is not None:  # the metadata service commits nothing: same as an error
            self._faults.record_result(api, decision.post.code)
            if decision.post.kind == "drop_after_commit":
                raise Drop
            return Response(decision.post.status, f"{decision.post.message}\n".encode(), "text/plain")
        self._faults.record_result(api, str(resp.status))
        return Response(resp.status, resp.body.encode(), resp.content_type)

    def _rpc(self, req: Request) -> Response:
        request_id = str(uuid.uuid4()).upper()
        action = "?"
        host_id = "ecs.aliyuncs.com"
        try:
            query = dict(parse_qsl(req.query, keep_blank_values=True))
            content_type = (req.headers.get("content-type") or [""])[0]
            form: dict[str, str] = {}
            if req.body and content_type.startswith("application/x-www-form-urlencoded"):
                form = dict(parse_qsl(req.body.decode(), keep_blank_values=True))
            auth = (req.headers.get("authorization") or [""])[0]
            acs3 = auth.startswith("ACS3-")
            if acs3:
                action = (req.headers.get("x-acs-action") or [""])[0]
                version = (req.headers.get("x-acs-version") or [""])[0]
            else:
                action = query.get("Action", "")
                version = query.get("Version", "")
            if version == VPC_VERSION:
                host_id = "vpc.aliyuncs.com"
            if not action:
                raise ApiError(
                    "MissingParameter",
                    'The input parameter "Action" that is mandatory for processing this request is not supplied.',
                    400,
                )
            if not version:
                raise ApiError(
                    "MissingParameter",
                    'The input parameter "Version" that is mandatory for processing this request is not supplied.',
                    400,
                )
            self._faults.record_call(action)
            secrets = {**self._access_keys, **self._sts.secrets()}
            if acs3:
                ak = verify_acs3(req.method, req.path, query, req.headers, req.body, secrets)
                nonce = (req.headers.get("x-acs-signature-nonce") or [""])[0]
                stamp = (req.headers.get("x-acs-date") or [""])[0]
                self._sts.check(ak, (req.headers.get("x-acs-security-token") or [None])[0])
            elif "Signature" in query:
                ak = verify_rpc_v2(req.method, {**query, **form}, secrets)
                nonce, stamp = query.get("SignatureNonce", ""), query.get("Timestamp", "")
                self._sts.check(ak, query.get("SecurityToken"))
            else:
                raise ApiError(
                    "IncompleteSignature",
                    "The request signature does not conform to Aliyun standards: no Authorization header and no Signature parameter.",
                    400,
                )
            ts = _parse_timestamp(stamp)
            if ts is None:
                raise ApiError(
                    "InvalidTimeStamp.Format", f"Specified time stamp {stamp!r} is not valid.", 400
                )
            if abs(time.time() - ts) > TIMESTAMP_SKEW:
                raise ApiError(
                    "InvalidTimeStamp.Expired",
                    f"Specified time stamp or date value is expired: {stamp}.",
                    400,
                )
            if not nonce:
                raise ApiError(
                    "MissingParameter",
                    'The input parameter "SignatureNonce" that is mandatory for processing this request is not supplied.',
                    400,
                )
            self._nonces.check(nonce)
            entry = ACTIONS.get((version, action))
            if entry is None:
                raise ApiError(
                    "InvalidAction.NotFound",
                    f"Specified api is not found, please check your url and method: {action} (version {version}).",
                    404,
                )
            handler, idempotent = entry
            decision = self._faults.decide(action)
            if decision.throttled_for is not None:
                headers = {}
                value = self._faults.retry_after_value(decision.throttled_for)
                if value is not None:
                    headers["x-acs-retry-after"] = value
                raise ApiError(
                    "Throttling.User", "Request was denied due to user flow control.", 400, headers
                )
            if decision.delay > 0 and self._release.wait(decision.delay):
                raise Drop
            if decision.pre is not None:
                self._pre_fault(decision.pre, action)
            params = Params({**query, **form})
            with self._state.lock:
                try:
                    if idempotent:
                        body = run_idempotent(self._state, action, params, handler, ak)
                    else:
                        body = handler(self._state, params)
                finally:
                    events = self._drain()
            self._wait(events)
            if decision.post is not None:
                if decision.post.kind == "drop_after_commit":
                    self._faults.record_result(action, "Dropped")
                    raise Drop
                raise _rule_error(decision.post)
            self._faults.record_result(action, "OK")
            return Response(200, json.dumps({"RequestId": request_id, **body}).encode())
        except ApiError as exc:
            self._faults.record_result(action, exc.code)
            return _error_response(exc, request_id, host_id)

    def _pre_fault(self, rule: FaultRule, action: str) -> None:
        if rule.kind == "drop":
            self._faults.record_result(action, "Dropped")
            raise Drop
        if rule.kind == "hang":
            self._hang(rule)
            return
        raise _rule_error(rule)

    def _hang(self, rule: FaultRule) -> None:
        """Hold the request ``rule.seconds`` (then continue) or until reset/stop
        (then drop the connection)."""
        release = self._release
        if rule.seconds is None:
            release.wait()
            raise Drop
        if release.wait(rule.seconds):
            raise Drop


def _rule_error(rule: FaultRule) -> ApiError:
    headers = {"x-acs-retry-after": str(rule.retry_after)} if rule.retry_after else {}
    return ApiError(rule.code, rule.message, rule.status, headers)


def _error_response(exc: ApiError, request_id: str, host_id: str) -> Response:
    product = "Vpc" if host_id.startswith("vpc") else "Ecs"
    body = {
        "RequestId": request_id,
        "HostId": host_id,
        "Code": exc.code,
        "Message": exc.message,
        "Recommend": f"https://api.aliyun.com/troubleshoot?q={exc.code}&product={product}&requestId={request_id}",
    }
    return Response(exc.status, json.dumps(body).encode(), headers=dict(exc.headers))
