"""A small client for the emulator's admin endpoint (JSON over HTTP, unsigned).

Usage::

    admin = AdminClient("http://127.0.0.1:PORT/__admin__")   # or emulator.admin()
    fid = admin.add_fault("CreateNetworkInterface", kind="error_after_commit", times=1)
    admin.set_rate_limit("AssignPrivateIpAddresses", per_minute=60, burst=2)
    admin.call_count("CreateNetworkInterface")

Every method raises :class:`AdminError` when the emulator refuses the request
(the message names the field, the value and what was expected).
"""

from __future__ import annotations

import http.client
import json
import threading
from typing import Any
from urllib.parse import urlsplit

from terway_agent.errors import TerwayError

__all__ = ["AdminClient", "AdminError"]


class AdminError(TerwayError):
    """The admin endpoint answered with an error.

    ``status`` is the HTTP status; ``payload`` the decoded JSON answer.
    """

    def __init__(self, message: str, *, status: int, payload: Any) -> None:
        super().__init__(message, status=status)
        self.status = status
        self.payload = payload


class AdminClient:
    """Talks to ``/__admin__`` of one emulator; safe to share between threads.

    :param base_url: ``http://HOST:PORT/__admin__``.
    :param timeout: seconds per request.
    """

    def __init__(self, base_url: str, timeout: float = 30.0) -> None:
        parts = urlsplit(base_url)
        if parts.scheme != "http" or not parts.hostname or not parts.port:
            raise ValueError(f"base_url: got {base_url!r}, expected http://HOST:PORT/__admin__")
        self._host = parts.hostname
        self._port = parts.port
        self._prefix = parts.path.rstrip("/") or "/__admin__"
        self._timeout = timeout
        self._local = threading.local()

    # ------------------------------------------------------------------ transport
    def _conn(self) -> http.client.HTTPConnection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = http.client.HTTPConnection(self._host, self._port, timeout=self._timeout)
            self._local.conn = conn
        return conn

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"} if data is not None else {}
        for attempt in (1, 2):
            conn = self._conn()
            try:
                conn.request(method, f"{self._prefix}/{path}", body=data, headers=headers)
                resp = conn.getresponse()
                raw = resp.read()
                break
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                conn.close()
                self._local.conn = None
                if attempt == 2:
                    raise
        payload = json.loads(raw) if raw else None
        if resp.status >= 400:
            msg = payload.get("error") if isinstance(payload, dict) else raw.decode(errors="replace")
            raise AdminError(f"emulator admin {method} {path}: {msg}", status=resp.status, payload=payload)
        return payload

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    # ------------------------------------------------------------------ state
    def state(self) -> dict[str, Any]:
        """The full state: vSwitches, instances, ENIs, settings, counters, faults, node side."""
        return self._call("GET", "state")

    def reset(self, topology: dict[str, Any] | None = None) -> None:
        """Back to the initial topology (or replace it with ``topology``)."""
        self._call("POST", "reset", {"topology": topology} if topology is not None else {})

    def settle(self) -> int:
        """Complete every pending attach/detach now; returns how many."""
        return self._call("POST", "settle", {})["settled"]

    def issue_sts(
        self,
        *,
        access_key_id: str | None = None,
        access_key_secret: str | None = None,
        security_token: str | None = None,
        lifetime: float | None = None,
    ) -> dict[str, str]:
        """Register STS credentials the API will accept (with their security
        token) until ``lifetime`` seconds from now (default: the topology's
        ``sts_lifetime``); unset parts are generated.  Returns the credentials
        document (``AccessKeyId``, ``AccessKeySecret``, ``SecurityToken``,
        ``Expiration``, ``LastUpdated``, ``Code``)."""
        body = {
            "access_key_id": access_key_id,
            "access_key_secret": access_key_secret,
            "security_token": security_token,
            "lifetime": lifetime,
        }
        return self._call("POST", "sts", {k: v for k, v in body.items() if v is not None})

    def expire_sts(self) -> int:
        """Expire every RAM-role STS credential issued so far (the next metadata
        read issues new ones); returns how many."""
        return self._call("POST", "sts/expire", {})["expired"]

    def dump(self, path: str | None = None) -> str:
        return self._call("POST", "dump", {"path": path} if path else {})["path"]

    def node_side(self) -> dict[str, Any]:
        """``{"kind", "calls", "errors": [...]}`` of the node side."""
        return self._call("GET", "node_side")

    # ------------------------------------------------------------------ counters
    def calls(self) -> dict[str, int]:
        """Calls received per API action (including failed ones)."""
        return self._call("GET", "calls")["calls"]

    def results(self) -> dict[str, dict[str, int]]:
        """Per API action: ``{"OK": n, "<ErrorCode>": m, "Dropped": k}``."""
        return self._call("GET", "calls")["results"]

    def call_count(self, api: str) -> int:
        return self.calls().get(api, 0)

    def reset_calls(self) -> None:
        self._call("POST", "calls/reset", {})

    # ------------------------------------------------------------------ faults
    def add_fault(self, api: str, kind: str = "error", **spec: Any) -> int:
        """Add a fault rule; returns its id.

        :param api: an action name, ``"*"`` (every RPC action), ``"metadata"``,
            ``"metadata:get"`` or ``"metadata:token"``.
        :param kind: ``error``, ``error_after_commit``, ``drop``,
            ``drop_after_commit``, ``hang`` or ``latency``.
        :param spec: ``code``, ``message``, ``status`` (default 500),
            ``times`` (default unlimited), ``probability``, ``after``,
            ``seconds`` (hang; ``None`` = never answer), ``latency``,
            ``retry_after`` (x-acs-retry-after, milliseconds).
        """
        return self._call("POST", "faults", {"api": api, "kind": kind, **spec})["id"]

    def remove_fault(self, fault_id: int) -> None:
        self._call("DELETE", f"faults/{fault_id}")

    def clear_faults(self) -> None:
        self._call("POST", "faults/clear", {})

    def faults(self) -> list[dict[str, Any]]:
        return self._call("GET", "faults")["faults"]

    # ------------------------------------------------------------------ latency, limits, settings
    def set_latency(self, api: str, latency: Any) -> None:
        """Server-side latency for ``api`` (or ``"default"``): seconds, a
        distribution dict, or ``None`` to remove."""
        self._call("POST", "latency", {"api": api, "latency": latency})

    def set_rate_limit(self, api: str, per_minute: float | None, burst: float | None = None) -> None:
        """Token bucket for ``api`` (or ``"default"``); ``per_minute=None`` removes it."""
        self._call("POST", "rate_limits", {"api": api, "per_minute": per_minute, "burst": burst})

    def set_retry_after_header(self, enabled: bool) -> None:
        """Whether ``Throttling.User`` answers carry ``x-acs-retry-after``."""
        self._call("POST", "rate_limits", {"retry_after_header": enabled})

    def configure(
        self,
        *,
        attach_latency: Any = None,
        detach_latency: Any = None,
        metadata_delay: Any = None,
        metadata_tokens: str | None = None,
    ) -> None:
        """Change attach/detach latency, the metadata delay or the token mode
        (``optional``/``required``); ``None`` leaves a setting alone."""
        body = {
            k: v
            for k, v in {
                "attach_latency": attach_latency,
                "detach_latency": detach_latency,
                "metadata_delay": metadata_delay,
                "metadata_tokens": metadata_tokens,
            }.items()
            if v is not None
        }
        self._call("POST", "settings", body)

    # ------------------------------------------------------------------ resources
    def add_instance(self, **spec: Any) -> dict[str, Any]:
        """Add an instance (keys as in the topology: ``id``, ``type``, ``vswitch``,
        ``netns``, ``security_groups``, ``primary_ip``...).  Returns
        ``{"id", "primary_eni", "primary_ip", "mac"}``."""
        return self._call("POST", "instances", spec)

    def remove_instance(self, instance_id: str) -> None:
        self._call("DELETE", f"instances/{instance_id}")

    def set_instance_status(self, instance_id: str, status: str) -> None:
        """``Running``, ``Stopped``, ``Pending``, ``Starting`` or ``Stopping``
        (attach/detach need Running or Stopped)."""
        self._call("POST", f"instances/{instance_id}/status", {"status": status})

    def add_vswitch(self, **spec: Any) -> dict[str, Any]:
        """Add a vSwitch (``id``, ``zone``, ``cidr``, optional ``ipv6_cidr``)."""
        return self._call("POST", "vswitches", spec)

    def add_access_key(self, key_id: str, secret: str) -> None:
        self._call("POST", "access_keys", {"id": key_id, "secret": secret})
