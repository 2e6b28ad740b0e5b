"""The ECS instance metadata service (``100.100.100.200``) for trio.

:class:`MetadataClient` speaks plain HTTP (``http.client`` in worker threads)
with the IMDSv2 token flow of Alibaba Cloud: ``PUT /latest/api/token`` with
header ``X-aliyun-ecs-metadata-token-ttl-seconds: 21600``, then the token in
``X-aliyun-ecs-metadata-token`` on each GET; a 401 drops the token, fetches a
new one and repeats the request once.  A token endpoint answering 404/405 (an
old service) switches to token-less requests.

Transport errors, 429 and 5xx are retried (``attempts`` times, exponential
delay from ``retry_delay``); 404 raises :class:`MetadataNotFound` at once.
Every request is observed in ``aliyun_metadata_latency{url,error}`` (ms).
"""

from __future__ import annotations

import http.client
import json
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import trio

from terway_agent.log import get_logger

from ._metrics import METADATA_LATENCY
from .errors import MetadataError, MetadataNotFound, MetadataTimeout, MetadataUnavailable

log = get_logger(__name__)

TOKEN_PATH = "/latest/api/token"
TOKEN_TTL_HEADER = "X-aliyun-ecs-metadata-token-ttl-seconds"
TOKEN_HEADER = "X-aliyun-ecs-metadata-token"
META_PREFIX = "/latest/meta-data/"

_MAC_RE = re.compile(r"(?i)\b([0-9a-f]{2}:){5}[0-9a-f]{2}\b")
_ROLE_RE = re.compile(r"(ram/security-credentials/)[^/]+$")


@dataclass(frozen=True)
class EniMetadata:
    """What the metadata service says about one ENI (by MAC).

    ``ipv6s``/``ipv6_gateway``/``vswitch_cidr6`` are empty/``None`` when the ENI has no IPv6.
    """

    mac: str
    eni_id: str
    primary_ip: str
    gateway: str
    private_ipv4s: tuple[str, ...]
    vswitch_id: str
    vswitch_cidr4: str
    ipv6s: tuple[str, ...] = ()
    ipv6_gateway: str | None = None
    vswitch_cidr6: str | None = None


def normalize_mac(mac: str) -> str:
    """Lower-case ``aa:bb:cc:dd:ee:ff``."""
    return mac.strip().lower()


def _parse_list(text: str) -> list[str]:
    """A list from the metadata service: a JSON array or one item per line (``mac/`` entries)."""
    text = text.strip()
    if not text:
        return []
    if text.startswith("[") and text.endswith("]"):
        try:
            value = json.loads(text)
        except ValueError:
            # the real service lists IPv6 addresses unquoted: [2408:4000::1,2408:4000::2]
            value = [v.strip().strip('"') for v in text[1:-1].split(",")]
        if isinstance(value, list):
            return [str(v).strip() for v in value if str(v).strip()]
    return [line.strip().rstrip("/") for line in text.splitlines() if line.strip()]


def _url_label(path: str) -> str:
    return _ROLE_RE.sub(r"\1<role>", _MAC_RE.sub("<mac>", path))


class MetadataClient:
    """Client of the instance metadata service.

    :param endpoint: base URL, ``http://100.100.100.200`` on ECS; may carry a path prefix
        (``http://127.0.0.1:8080/i-abc``): ``/latest/...`` is appended to it.
    :param timeout: per-request socket timeout, seconds.
    :param attempts: tries per request for transport errors, 429 and 5xx.
    :param retry_delay: first delay between those tries (doubles each time, at most 2 s).
    :param token_ttl: requested IMDSv2 token lifetime, seconds.
    :param limiter: thread limiter for the blocking HTTP calls (default: 4 threads).
    """

    def __init__(
        self,
        endpoint: str = "http://100.100.100.200",
        *,
        timeout: float = 2.0,
        attempts: int = 5,
        retry_delay: float = 0.1,
        token_ttl: int = 21600,
        limiter: trio.CapacityLimiter | None = None,
    ) -> None:
        parts = urlsplit(endpoint)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"metadata endpoint must be a http(s) base URL, got {endpoint!r}")
        self.endpoint = endpoint
        self._https = parts.scheme == "https"
        self._host = parts.hostname
        self._port = parts.port
        self._prefix = parts.path.rstrip("/")
        self._timeout = timeout
        self._attempts = max(1, attempts)
        self._retry_delay = retry_delay
        self._token_ttl = token_ttl
        self._limiter = limiter or trio.CapacityLimiter(4)
        self._token: str | None = None
        self._token_deadline = 0.0
        self._token_supported = True
        self._token_lock = trio.Lock()
        self.token_fetches = 0  #: how many tokens were fetched (observability, tests)

    def __repr__(self) -> str:
        return f"MetadataClient(endpoint={self.endpoint!r})"

    # -- transport ---------------------------------------------------------------------------
    def _http(self, method: str, path: str, headers: dict[str, str]) -> tuple[int, bytes]:
        cls = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
        conn = cls(self._host, self._port, timeout=self._timeout)
        try:
            conn.request(method, self._prefix + path, headers=headers)
            resp = conn.getresponse()
            return resp.status, resp.read()
        finally:
            conn.close()

    async def _send(self, method: str, path: str, headers: dict[str, str]) -> tuple[int, bytes]:
        """One request with retries on transport errors, 429 and 5xx; returns the last status/body."""
        label = _url_label(path)
        delay = self._retry_delay
        last_error = ""
        for attempt in range(1, self._attempts + 1):
            start = time.perf_counter()
            try:
                status, body = await trio.to_thread.run_sync(
                    self._http, method, path, headers, limiter=self._limiter
                )
            except (OSError, http.client.HTTPException) as exc:
                METADATA_LATENCY.labels(url=label, error="transport").observe(
                    (time.perf_counter() - start) * 1000
                )
                last_error = f"{type(exc).__name__}: {exc}"
                status, body = 0, b""
            else:
                METADATA_LATENCY.labels(url=label, error="" if status < 400 else str(status)).observe(
                    (time.perf_counter() - start) * 1000
                )
                if status != 429 and status < 500:
                    return status, body
                last_error = f"HTTP {status}"
            if attempt < self._attempts:
                log.debug("metadata.request.retry", url=label, attempt=attempt, error=last_error)
                await trio.sleep(delay)
                delay = min(delay * 2, 2.0)
        raise MetadataUnavailable(
            f"metadata service {self.endpoint}: {method} {label} failed after {self._attempts} attempts: {last_error}",
            path=path,
            http_status=status or None,
        )

    async def _ensure_token(self) -> str | None:
        if not self._token_supported:
            return None
        async with self._token_lock:
            if self._token is not None and trio.current_time() < self._token_deadline:
                return self._token
            status, body = await self._send("PUT", TOKEN_PATH, {TOKEN_TTL_HEADER: str(self._token_ttl)})
            if status in (404, 405):
                log.info("metadata.token.unsupported", endpoint=self.endpoint, http_status=status)
                self._token_supported = False
                return None
            if status != 200 or not body.strip():
                raise MetadataError(
                    f"metadata service {self.endpoint}: token request answered HTTP {status}",
                    path=TOKEN_PATH,
                    http_status=status,
                )
            self._token = body.decode().strip()
            # renew a minute before the service would expire it
            self._token_deadline = trio.current_time() + max(1.0, self._token_ttl - 60)
            self.token_fetches += 1
            return self._token

    def invalidate_token(self) -> None:
        """Forget the current token; the next request fetches a new one."""
        self._token = None
        self._token_deadline = 0.0

    async def request(self, path: str) -> str:
        """GET ``path`` (absolute ``/latest/...`` or relative to ``/latest/meta-data/``) as text."""
        if not path.startswith("/"):
            path = META_PREFIX + path
        refreshed = False
        while True:
            token = await self._ensure_token()
            headers = {TOKEN_HEADER: token} if token else {}
            status, body = await self._send("GET", path, headers)
            if status == 200:
                return body.decode()
            if status == 401 and not refreshed and self._token_supported:
                log.info("metadata.token.rejected", url=_url_label(path))
                self.invalidate_token()
                refreshed = True
                continue
            if status == 404:
                raise MetadataNotFound(f"metadata path {path} not found", path=path, http_status=404)
            raise MetadataError(
                f"metadata service {self.endpoint}: GET {_url_label(path)} answered HTTP {status}",
                path=path,
                http_status=status,
            )

    async def _text(self, path: str) -> str:
        return (await self.request(path)).strip()

    async def _optional(self, path: str) -> str | None:
        try:
            value = await self._text(path)
        except MetadataNotFound:
            return None
        return value or None

    # -- instance ------------------------------------------------------------------------------
    async def instance_id(self) -> str:
        """``instance-id``."""
        return await self._text("instance-id")

    async def instance_type(self) -> str:
        """``instance/instance-type``."""
        return await self._text("instance/instance-type")

    async def region_id(self) -> str:
        """``region-id``."""
        return await self._text("region-id")

    async def zone_id(self) -> str:
        """``zone-id``."""
        return await self._text("zone-id")

    async def vswitch_id(self) -> str:
        """``vswitch-id`` (of the primary ENI)."""
        return await self._text("vswitch-id")

    async def vpc_id(self) -> str:
        """``vpc-id``."""
        return await self._text("vpc-id")

    async def vpc_cidr_block(self) -> str:
        """``vpc-cidr-block``."""
        return await self._text("vpc-cidr-block")

    async def primary_mac(self) -> str:
        """``mac`` (of the primary ENI)."""
        return normalize_mac(await self._text("mac"))

    # -- ENIs ----------------------------------------------------------------------------------
    async def macs(self) -> list[str]:
        """MACs under ``network/interfaces/macs/``."""
        return [normalize_mac(m) for m in _parse_list(await self.request("network/interfaces/macs/"))]

    def _mac_path(self, mac: str, leaf: str) -> str:
        return f"network/interfaces/macs/{normalize_mac(mac)}/{leaf}"

    async def eni_id(self, mac: str) -> str:
        """``.../macs/<mac>/network-interface-id``."""
        return await self._text(self._mac_path(mac, "network-interface-id"))

    async def primary_ip(self, mac: str) -> str:
        """``.../macs/<mac>/primary-ip-address``."""
        return await self._text(self._mac_path(mac, "primary-ip-address"))

    async def gateway(self, mac: str) -> str:
        """``.../macs/<mac>/gateway``."""
        return await self._text(self._mac_path(mac, "gateway"))

    async def private_ipv4s(self, mac: str) -> list[str]:
        """``.../macs/<mac>/private-ipv4s``."""
        return _parse_list(await self.request(self._mac_path(mac, "private-ipv4s")))

    async def ipv6s(self, mac: str) -> list[str]:
        """``.../macs/<mac>/ipv6s`` (empty when the ENI has none)."""
        try:
            return _parse_list(await self.request(self._mac_path(mac, "ipv6s")))
        except MetadataNotFound:
            return []

    async def ipv6_gateway(self, mac: str) -> str | None:
        """``.../macs/<mac>/ipv6-gateway`` or ``None``."""
        return await self._optional(self._mac_path(mac, "ipv6-gateway"))

    async def eni_vswitch_id(self, mac: str) -> str:
        """``.../macs/<mac>/vswitch-id``."""
        return await self._text(self._mac_path(mac, "vswitch-id"))

    async def vswitch_cidr_block(self, mac: str) -> str:
        """``.../macs/<mac>/vswitch-cidr-block``."""
        return await self._text(self._mac_path(mac, "vswitch-cidr-block"))

    async def vswitch_ipv6_cidr_block(self, mac: str) -> str | None:
        """``.../macs/<mac>/vswitch-ipv6-cidr-block`` or ``None``."""
        return await self._optional(self._mac_path(mac, "vswitch-ipv6-cidr-block"))

    async def eni(self, mac: str, *, ipv6: bool = True) -> EniMetadata:
        """Everything about the ENI with ``mac``; :class:`MetadataNotFound` if unknown."""
        mac = normalize_mac(mac)
        v6s: list[str] = []
        gw6 = cidr6 = None
        if ipv6:
            v6s = await self.ipv6s(mac)
            gw6 = await self.ipv6_gateway(mac)
            cidr6 = await self.vswitch_ipv6_cidr_block(mac)
        return EniMetadata(
            mac=mac,
            eni_id=await self.eni_id(mac),
            primary_ip=await self.primary_ip(mac),
            gateway=await self.gateway(mac),
            private_ipv4s=tuple(await self.private_ipv4s(mac)),
            vswitch_id=await self.eni_vswitch_id(mac),
            vswitch_cidr4=await self.vswitch_cidr_block(mac),
            ipv6s=tuple(v6s),
            ipv6_gateway=gw6,
            vswitch_cidr6=cidr6,
        )

    async def wait_for_eni(
        self,
        mac: str,
        *,
        ipv4s: Iterable[str] = (),
        ipv6s: Iterable[str] = (),
        timeout: float = 10.0,
        interval: float = 1.0,
    ) -> EniMetadata:
        """Poll until the service lists ``mac`` with at least ``ipv4s`` and ``ipv6s``.

        :raises MetadataTimeout: naming what was still missing after ``timeout`` seconds.
        """
        mac = normalize_mac(mac)
        want4 = set(ipv4s)
        want6 = set(ipv6s)
        missing: str = "the MAC is not listed"
        with trio.move_on_after(timeout):
            while True:
                if mac in await self.macs():
                    try:
                        info = await self.eni(mac)
                    except MetadataNotFound as exc:
                        missing = f"{exc.path} is not served yet"
                    else:
                        lack4 = want4 - set(info.private_ipv4s)
                        lack6 = want6 - set(info.ipv6s)
                        if not lack4 and not lack6:
                            return info
                        missing = f"addresses not shown yet: {sorted(lack4 | lack6)}"
                await trio.sleep(interval)
        raise MetadataTimeout(
            f"metadata service did not show ENI {mac} within {timeout}s: {missing}",
            path=f"{META_PREFIX}network/interfaces/macs/{mac}/",
            mac=mac,
        )

    # -- RAM role --------------------------------------------------------------------------------
    async def ram_roles(self) -> list[str]:
        """Role names under ``ram/security-credentials/`` (empty when the instance has none)."""
        try:
            return _parse_list(await self.request("ram/security-credentials/"))
        except MetadataNotFound:
            return []

    async def ram_role_credentials(self, role: str) -> dict[str, Any]:
        """The STS credentials JSON of ``role`` (AccessKeyId, AccessKeySecret, SecurityToken,
        Expiration, ...).  The caller must not log it."""
        text = await self.request(f"ram/security-credentials/{role}")
        try:
            value = json.loads(text)
        except ValueError:
            value = None
        if not isinstance(value, dict):
            raise MetadataError(
                "metadata service returned malformed RAM role credentials (not a JSON object)",
                path=f"{META_PREFIX}ram/security-credentials/<role>",
            )
        return value
