"""The admin endpoint: JSON over HTTP under ``/__admin__/`` (not signed).

=========================================  =====================================================
``GET  /__admin__/state``                  full state (vSwitches, instances, ENIs, settings...)
``POST /__admin__/reset``                  back to the topology (body ``{"topology": {...}}`` replaces it)
``GET  /__admin__/calls``                  ``{"calls": {api: n}, "results": {api: {code: n}}}``
``POST /__admin__/calls/reset``            zero the counters
``GET  /__admin__/faults``                 the fault rules
``POST /__admin__/faults``                 add a rule (see ``_faults.FaultRule``) -> ``{"id": n}``
``DELETE /__admin__/faults/<id>``          remove one rule
``POST /__admin__/faults/clear``           remove every rule
``POST /__admin__/latency``                ``{"api": name|"default", "latency": seconds|distribution|null}``
``POST /__admin__/rate_limits``            ``{"api": name|"default", "per_minute": n|null, "burst": m}``
                                           or ``{"retry_after_header": bool}``
``POST /__admin__/settings``               ``{"attach_latency", "detach_latency", "metadata_delay",
                                           "metadata_tokens"}`` (any subset)
``POST /__admin__/instances``              add an instance (topology instance keys)
``DELETE /__admin__/instances/<id>``       remove an instance (its ENIs are detached)
``POST /__admin__/instances/<id>/status``  ``{"status": "Running"|"Stopped"|"Stopping"|...}``
``POST /__admin__/vswitches``              add a vSwitch (topology vSwitch keys)
``POST /__admin__/access_keys``            ``{"id", "secret"}``
``POST /__admin__/settle``                 finish pending attach/detach transitions now
``POST /__admin__/sts``                    register STS credentials ``{"access_key_id", "access_key_secret",
                                           "security_token", "lifetime"}`` (all optional) -> the
                                           credentials document (AccessKeyId, ..., Expiration)
``POST /__admin__/sts/expire``             expire every STS credential issued so far
``GET  /__admin__/node_side``              node-side kind, call count, recorded failures
``POST /__admin__/dump``                   ``{"path": ...}``: write the state as JSON
=========================================  =====================================================
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from terway_agent.cloud.emulator._dist import parse_distribution
from terway_agent.cloud.emulator._http import Request, Response
from terway_agent.cloud.emulator._model import ApiError
from terway_agent.cloud.emulator.topology import AccessKey, Topology
from terway_agent.errors import ConfigError, InvalidInput

if TYPE_CHECKING:
    from terway_agent.cloud.emulator.emulator import Emulator

PREFIX = "/__admin__"


def _json(status: int, data: Any) -> Response:
    return Response(status, json.dumps(data, default=str).encode())


def _body(req: Request) -> dict[str, Any]:
    if not req.body:
        return {}
    try:
        data = json.loads(req.body)
    except ValueError as exc:
        raise ConfigError("body", req.body[:80].decode(errors="replace"), f"a JSON object ({exc})") from None
    if not isinstance(data, dict):
        raise ConfigError("body", data, "a JSON object")
    return data


def handle(emu: Emulator, req: Request) -> Response:
    route = req.path[len(PREFIX) :].strip("/")
    try:
        return _route(emu, req.method, route, req)
    except InvalidInput as exc:
        return _json(
            400,
            {
                "error": exc.message,
                "field": exc.field,
                "value": exc.details.get("value"),
                "expected": exc.expected,
            },
        )
    except ApiError as exc:
        return _json(exc.status, {"error": exc.message, "code": exc.code})
    except KeyError as exc:
        return _json(404, {"error": f"not found: {exc.args[0]}"})


def _route(emu: Emulator, method: str, route: str, req: Request) -> Response:
    parts = route.split("/") if route else []
    head = parts[0] if parts else ""
    if method == "GET" and head == "state":
        return _json(200, emu.snapshot())
    if method == "POST" and head == "reset":
        body = _body(req)
        topo = (
            Topology.from_dict(body["topology"], "admin reset") if body.get("topology") is not None else None
        )
        emu.reset(topo)
        return _json(200, {"ok": True})
    if head == "calls":
        if method == "GET" and len(parts) == 1:
            return _json(200, emu._faults.counters())
        if method == "POST" and parts[1:] == ["reset"]:
            emu._faults.reset_counters()
            return _json(200, {"ok": True})
    if head == "faults":
        if method == "GET" and len(parts) == 1:
            return _json(200, {"faults": emu._faults.rules()})
        if method == "POST" and len(parts) == 1:
            rule = emu._faults.add_rule(_body(req))
            return _json(200, {"id": rule.id})
        if method == "POST" and parts[1:] == ["clear"]:
            emu._faults.clear_rules()
            return _json(200, {"ok": True})
        if method == "DELETE" and len(parts) == 2:
            if not parts[1].isdigit() or not emu._faults.remove_rule(int(parts[1])):
                raise KeyError(f"fault {parts[1]}")
            return _json(200, {"ok": True})
    if method == "POST" and head == "latency":
        body = _body(req)
        api = body.get("api")
        if not isinstance(api, str) or not api:
            raise ConfigError("api", api, "an API action name or 'default'")
        emu._faults.set_latency(api, body.get("latency"))
        return _json(200, {"ok": True})
    if method == "POST" and head == "rate_limits":
        body = _body(req)
        if "retry_after_header" in body:
            value = body["retry_after_header"]
            if not isinstance(value, bool):
                raise ConfigError("retry_after_header", value, "true or false")
            emu._faults.set_retry_after_header(value)
        if "api" in body:
            api = body["api"]
            if not isinstance(api, str) or not api:
                raise ConfigError("api", api, "an API action name or 'default'")
            if body.get("per_minute") is None:
                emu._faults.set_rate_limit(api, None)
            else:
                spec = {"per_minute": body["per_minute"]}
                if body.get("burst") is not None:
                    spec["burst"] = body["burst"]
                emu._faults.set_rate_limit(api, spec)
        return _json(200, {"ok": True})
    if method == "POST" and head == "settings":
        body = _body(req)
        allowed = {"attach_latency", "detach_latency", "metadata_delay", "metadata_tokens"}
        unknown = set(body) - allowed
        if unknown:
            raise ConfigError("settings", sorted(unknown), f"only the keys {sorted(allowed)}")
        parsed = {k: parse_distribution(v, k) for k, v in body.items() if k != "metadata_tokens"}
        if "metadata_tokens" in body and body["metadata_tokens"] not in ("optional", "required"):
            raise ConfigError("metadata_tokens", body["metadata_tokens"], "optional or required")
        emu._apply_settings(parsed, body.get("metadata_tokens"))
        return _json(200, {"ok": True})
    if head == "instances":
        if method == "POST" and len(parts) == 1:
            return _json(200, emu._admin_add_instance(_body(req)))
        if method == "DELETE" and len(parts) == 2:
            emu._admin_remove_instance(parts[1])
            return _json(200, {"ok": True})
        if method == "POST" and len(parts) == 3 and parts[2] == "status":
            status = _body(req).get("status")
            with emu._state.lock:
                emu._state.set_instance_status(parts[1], status)
            return _json(200, {"ok": True})
    if method == "POST" and head == "vswitches":
        return _json(200, emu._admin_add_vswitch(_body(req)))
    if method == "POST" and head == "access_keys":
        body = _body(req)
        for key in ("id", "secret"):
            if not isinstance(body.get(key), str) or not body[key]:
                raise ConfigError(key, body.get(key), "a non-empty string")
        emu._access_keys[body["id"]] = AccessKey(body["id"], body["secret"]).secret
        return _json(200, {"ok": True})
    if method == "POST" and head == "sts" and parts[1:] == ["expire"]:
        return _json(200, {"expired": emu._sts.expire_all()})
    if method == "POST" and head == "sts" and len(parts) == 1:
        body = _body(req)
        allowed = {"access_key_id", "access_key_secret", "security_token", "lifetime"}
        unknown = set(body) - allowed
        if unknown:
            raise ConfigError("sts", sorted(unknown), f"only the keys {sorted(allowed)}")
        for key in ("access_key_id", "access_key_secret", "security_token"):
            if body.get(key) is not None and (not isinstance(body[key], str) or not body[key]):
                raise ConfigError(key, body[key], "a non-empty string or null")
        lifetime = body.get("lifetime")
        if lifetime is not None and (isinstance(lifetime, bool) or not isinstance(lifetime, int | float)):
            raise ConfigError("lifetime", lifetime, "seconds (negative: already expired)")
        cred = emu._sts.issue(
            lifetime=lifetime,
            access_key_id=body.get("access_key_id"),
            secret=body.get("access_key_secret"),
            token=body.get("security_token"),
        )
        return _json(200, cred.document())
    if method == "POST" and head == "settle":
        return _json(200, {"settled": emu.settle()})
    if method == "GET" and head == "node_side":
        return _json(200, emu._runner.status())
    if method == "POST" and head == "dump":
        body = _body(req)
        path = body.get("path") or emu._state_dump
        if not isinstance(path, str) or not path:
            raise ConfigError("path", path, "a file path (or start the emulator with --state-dump)")
        emu.dump_state(path)
        return _json(200, {"path": path})
    return _json(404, {"error": f"no admin route {method} {PREFIX}/{route}"})
