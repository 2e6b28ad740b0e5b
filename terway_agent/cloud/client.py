"""The trio client of the Alibaba Cloud ECS OpenAPI.

:class:`CloudClient` wraps the official SDK (``alibabacloud-ecs20140526``): each
OpenAPI is an ``async`` method that waits for a token of the API's bucket,
calls the SDK's **sync** method in a worker thread
(``trio.to_thread.run_sync(..., limiter=...)``; the SDK's ``*_async`` methods
are asyncio-only), and returns small frozen dataclasses of our own
(:class:`EniInfo`, :class:`VSwitchInfo`, :class:`~terway_agent.cloud.limits.InstanceLimits`),
never SDK models.

Resource handling
    Worker threads are bounded by a :class:`trio.CapacityLimiter` of
    ``settings.max_concurrent_calls``.  Calls that change state are never
    abandoned on cancellation: the thread finishes (bounded by
    ``request_timeout``) before the cancellation is delivered.

Error handling
    SDK exceptions become :mod:`terway_agent.cloud.errors` classes.  Only
    transport errors, ``Throttling*``, ``InternalError``/``ServiceUnavailable``
    and HTTP 5xx are retried, with the backoff policy of the operation
    (``eni_create`` for CreateNetworkInterface, ``eni_ops`` for attach,
    ``eni_release`` for detach/delete, ``eni_ip_ops`` for IP assignment,
    ``default`` for the describes); ``x-acs-retry-after`` stretches the delay.
    Create/Assign calls carry one ``ClientToken`` (a uuid per logical
    operation, reused by every retry), so a retry after a lost response never
    creates twice.  Deleting what is already gone is success.  An answer
    ``InvalidSecurityToken.Expired`` makes the credentials provider fetch fresh
    credentials (``invalidate()``) and the call is repeated once.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from functools import partial
from typing import Any

import trio

from terway_agent.log import get_logger

from . import _backoff, _sdk
from ._metrics import OPENAPI_LATENCY
from ._ratelimit import RateLimiter
from .credentials import CredentialProvider, Credentials, credential_provider_for
from .errors import (
    INVALID_ECS_NOT_FOUND,
    INVALID_ENI_NOT_FOUND,
    INVALID_IP_UNASSIGNED,
    CloudError,
    CloudInvalidState,
    CloudNotFound,
    CloudThrottled,
    CloudTimeout,
    CloudTransportError,
)
from .limits import InstanceLimits
from .metadata import EniMetadata, MetadataClient, normalize_mac
from .settings import CREATOR_TAG, CloudSettings

log = get_logger(__name__)

# ENI states (Available -> Attaching -> InUse -> Detaching -> Available -> Deleting)
STATUS_AVAILABLE = "Available"
STATUS_ATTACHING = "Attaching"
STATUS_IN_USE = "InUse"
STATUS_DETACHING = "Detaching"
STATUS_DELETING = "Deleting"

# ENI types
TYPE_PRIMARY = "Primary"
TYPE_SECONDARY = "Secondary"
TYPE_TRUNK = "Trunk"
TYPE_MEMBER = "Member"

ENI_DESCRIPTION = "interface create by terway"
#: codes meaning "the STS credentials we used are no longer valid": refresh them once and retry
_STALE_CREDENTIAL_CODES = frozenset({"InvalidSecurityToken.Expired", "InvalidAccessKeyId.Inactive"})
PAGE_SIZE = 100
_MAX_IDS_PER_DESCRIBE = 100


@dataclass(frozen=True)
class EniInfo:
    """An elastic network interface as the cloud reports it.

    ``private_ips`` holds every IPv4 address, the primary first; ``secondary_ips``
    the others.  ``vlan_id`` is set for trunk member ENIs (their DeviceIndex).
    The ``vswitch_cidr*``/``gateway*`` fields are filled from the metadata
    service by :meth:`CloudClient.create_and_attach_eni` (``None`` otherwise).
    """

    eni_id: str
    mac: str
    status: str
    type: str
    vswitch_id: str
    zone: str
    instance_id: str | None = None
    device_index: int | None = None
    primary_ip: str = ""
    private_ips: tuple[str, ...] = ()
    ipv6s: tuple[str, ...] = ()
    tags: tuple[tuple[str, str], ...] = ()
    security_group_ids: tuple[str, ...] = ()
    trunk_eni_id: str | None = None
    vlan_id: int | None = None
    vpc_id: str = ""
    vswitch_cidr4: str | None = None
    gateway4: str | None = None
    vswitch_cidr6: str | None = None
    gateway6: str | None = None

    @property
    def secondary_ips(self) -> tuple[str, ...]:
        """IPv4 addresses other than the primary one."""
        return tuple(ip for ip in self.private_ips if ip != self.primary_ip)

    @property
    def tag_map(self) -> dict[str, str]:
        """The tags as a dict."""
        return dict(self.tags)


@dataclass(frozen=True)
class VSwitchInfo:
    """A vSwitch (ECS ``DescribeVSwitches``; ``cidr6`` only when the API reports one)."""

    id: str
    zone: str
    cidr4: str
    cidr6: str | None
    available_ip_count: int
    vpc_id: str = ""


# --- wire -> dataclasses ---------------------------------------------------------------------
def _items(container: Any, key: str) -> list[Any]:
    if isinstance(container, Mapping):
        value = container.get(key)
        if isinstance(value, list):
            return value
    return []


def _int_or_none(value: Any) -> int | None:
    try:
        return int(value) if value is not None and value != "" else None
    except (TypeError, ValueError):
        return None


def eni_from_api(d: Mapping[str, Any]) -> EniInfo:
    """An :class:`EniInfo` from a ``NetworkInterfaceSet`` entry, a CreateNetworkInterface or a
    DescribeNetworkInterfaceAttribute body (the same wire fields)."""
    att = d.get("Attachment") or {}
    ip_sets = _items(d.get("PrivateIpSets"), "PrivateIpSet")
    primary = str(d.get("PrivateIpAddress") or "")
    if not primary:
        primary = next((str(p.get("PrivateIpAddress")) for p in ip_sets if p.get("Primary")), "")
    ips = [str(p["PrivateIpAddress"]) for p in ip_sets if p.get("PrivateIpAddress")]
    ordered = ([primary] if primary else []) + [ip for ip in ips if ip != primary]
    ipv6s = tuple(str(x["Ipv6Address"]) for x in _items(d.get("Ipv6Sets"), "Ipv6Set") if x.get("Ipv6Address"))
    tags = []
    for t in _items(d.get("Tags"), "Tag"):
        key = t.get("TagKey") or t.get("Key")
        if key:
            tags.append((str(key), str(t.get("TagValue") or t.get("Value") or "")))
    sgs = tuple(str(s) for s in _items(d.get("SecurityGroupIds"), "SecurityGroupId"))
    eni_type = str(d.get("Type") or TYPE_SECONDARY)
    device_index = _int_or_none(att.get("DeviceIndex"))
    instance_id = d.get("InstanceId") or att.get("InstanceId") or None
    return EniInfo(
        eni_id=str(d.get("NetworkInterfaceId") or ""),
        mac=normalize_mac(str(d.get("MacAddress") or "")),
        status=str(d.get("Status") or ""),
        type=eni_type,
        vswitch_id=str(d.get("VSwitchId") or ""),
        zone=str(d.get("ZoneId") or ""),
        instance_id=str(instance_id) if instance_id else None,
        device_index=device_index,
        primary_ip=primary,
        private_ips=tuple(ordered),
        ipv6s=ipv6s,
        tags=tuple(sorted(tags)),
        security_group_ids=sgs,
        trunk_eni_id=str(att.get("TrunkNetworkInterfaceId") or "") or None,
        vlan_id=device_index if eni_type == TYPE_MEMBER else None,
        vpc_id=str(d.get("VpcId") or ""),
    )


def _vswitch_from_api(d: Mapping[str, Any]) -> VSwitchInfo:
    return VSwitchInfo(
        id=str(d.get("VSwitchId") or ""),
        zone=str(d.get("ZoneId") or ""),
        cidr4=str(d.get("CidrBlock") or ""),
        cidr6=str(d.get("Ipv6CidrBlock")) if d.get("Ipv6CidrBlock") else None,
        available_ip_count=int(d.get("AvailableIpAddressCount") or 0),
        vpc_id=str(d.get("VpcId") or ""),
    )


def _log_failed(api: str, err: CloudError, attempt: int, fields: Mapping[str, Any]) -> None:
    log.warning(
        "openapi.call.failed",
        api=api,
        code=err.code,
        request_id=err.request_id,
        http_status=err.http_status,
        attempt=attempt,
        error=err.message,
        **fields,
    )


def _tag_list(tags: Mapping[str, str], cls: type) -> list[Any]:
    return [cls(key=k, value=v) for k, v in tags.items()]


# --- the client ------------------------------------------------------------------------------
class CloudClient:
    """The Alibaba Cloud client of the agent core.

    :param settings: endpoint, region, credentials sources, rate limits, backoffs.
    :param metadata: the instance metadata client (default: one for ``settings.metadata_endpoint``).
    :param credentials: where credentials come from (default: the chain of
        :func:`~terway_agent.cloud.credentials.credential_provider_for`).
    :param instance_id: this node's instance (default: read from the metadata service when needed).
    """

    def __init__(
        self,
        settings: CloudSettings,
        *,
        metadata: MetadataClient | None = None,
        credentials: CredentialProvider | None = None,
        instance_id: str | None = None,
    ) -> None:
        self.settings = settings
        self.metadata = metadata or MetadataClient(settings.metadata_endpoint)
        self.credentials: CredentialProvider = credentials or credential_provider_for(settings, self.metadata)
        self.rate_limiter = RateLimiter(settings.rate_limit)
        self.backoffs = settings.backoffs
        self._limiter = trio.CapacityLimiter(settings.max_concurrent_calls)
        self._runtime = _sdk.runtime_options(settings)
        self._sdk_client: Any = None
        self._sdk_creds: Credentials | None = None
        self._instance_id = instance_id
        self._endpoint_label = settings.endpoint or f"the {settings.region_id} ECS endpoint"

    def __repr__(self) -> str:
        return f"CloudClient(region={self.settings.region_id!r}, endpoint={self.settings.endpoint!r})"

    def reconfigure(
        self,
        *,
        rate_limit: Mapping[str, int] | None = None,
        backoff_override: Mapping[str, Any] | None = None,
    ) -> None:
        """Apply new ``rate_limit`` / ``backoff_override`` values live (``None`` keeps the current one).

        The values are validated like :class:`CloudSettings` fields (:class:`ConfigError`
        names the bad entry) before anything changes.  New token buckets start full;
        calls already waiting on an old bucket finish their wait.
        """
        changes: dict[str, Any] = {}
        if rate_limit is not None:
            changes["rate_limit"] = dict(rate_limit)
        if backoff_override is not None:
            changes["backoff_override"] = dict(backoff_override)
        if not changes:
            return
        new = replace(self.settings, **changes)  # validates
        if rate_limit is not None:
            self.rate_limiter = RateLimiter(new.rate_limit)
        self.backoffs = new.backoffs
        self.settings = new

    # -- plumbing ------------------------------------------------------------------------------
    async def instance_id(self) -> str:
        """This node's instance id (given, or read once from the metadata service)."""
        if self._instance_id is None:
            self._instance_id = await self.metadata.instance_id()
        return self._instance_id

    def _client_for(self, creds: Credentials) -> Any:
        if self._sdk_client is None or creds != self._sdk_creds:
            if self._sdk_creds is not None:
                log.info("openapi.client.rebuilt", source=creds.source)
            self._sdk_client = _sdk.build_client(self.settings, creds)
            self._sdk_creds = creds
        return self._sdk_client

    async def _call_once(self, api: str, request: Any) -> dict[str, Any]:
        await self.rate_limiter.wait(api)
        creds = await self.credentials.get()
        client = self._client_for(creds)
        start = time.perf_counter()
        try:
            body = await trio.to_thread.run_sync(
                partial(_sdk.call, client, api, request, self._runtime), limiter=self._limiter
            )
        except Exception as exc:
            elapsed = (time.perf_counter() - start) * 1000.0
            err = _sdk.translate(exc, api, self._endpoint_label, creds.secrets)
            if err is None:
                OPENAPI_LATENCY.labels(api=api, error=type(exc).__name__).observe(elapsed)
                raise
            OPENAPI_LATENCY.labels(api=api, error=err.code or "transport").observe(elapsed)
            raise err from None
        OPENAPI_LATENCY.labels(api=api, error="").observe((time.perf_counter() - start) * 1000.0)
        return body

    async def _invoke(
        self,
        api: str,
        request: Any,
        *,
        backoff: str = _backoff.DEFAULT,
        settle: Callable[[CloudError], Awaitable[dict[str, Any] | None]] | None = None,
        **log_fields: Any,
    ) -> dict[str, Any]:
        """Call ``api`` with retries of retryable errors per the ``backoff`` policy.

        ``settle`` is asked, after a non-retryable error that follows an ambiguous
        failure (transport error or 5xx: the earlier attempt may have been executed), whether
        the operation actually took effect; a non-``None`` answer is returned as success.
        """
        policy = self.backoffs.get(backoff) or self.backoffs[_backoff.DEFAULT]
        delays = policy.delays()
        attempt = 0
        ambiguous = False
        reauthenticated = False
        while True:
            attempt += 1
            try:
                return await self._call_once(api, request)
            except CloudError as err:
                if err.code in _STALE_CREDENTIAL_CODES and not reauthenticated:
                    invalidate = getattr(self.credentials, "invalidate", None)
                    if invalidate is not None:
                        # our copy of rotating credentials is stale: fetch fresh ones, try once more
                        reauthenticated = True
                        invalidate()
                        log.info(
                            "openapi.call.reauth",
                            api=api,
                            code=err.code,
                            request_id=err.request_id,
                            **log_fields,
                        )
                        continue
                if not err.retryable:
                    if ambiguous and settle is not None:
                        settled = await settle(err)
                        if settled is not None:
                            log.info(
                                "openapi.call.settled",
                                api=api,
                                code=err.code,
                                request_id=err.request_id,
                                attempt=attempt,
                                **log_fields,
                            )
                            return settled
                    _log_failed(api, err, attempt, log_fields)
                    raise
                # a throttled call was not executed; after any other failure it may have been
                ambiguous = ambiguous or not isinstance(err, CloudThrottled)
                delay = next(delays, None)
                if delay is None:
                    _log_failed(api, err, attempt, {"reason": "retries exhausted", **log_fields})
                    raise
                if err.retry_after is not None and err.retry_after > delay:
                    delay = err.retry_after
                log.info(
                    "openapi.call.retry",
                    api=api,
                    code=err.code,
                    request_id=err.request_id,
                    attempt=attempt,
                    delay=round(delay, 3),
                    error=err.message,
                    **log_fields,
                )
                await trio.sleep(delay)

    # -- ENI lifecycle ---------------------------------------------------------------------------
    async def create_network_interface(
        self,
        vswitch_id: str,
        security_group_ids: Sequence[str],
        *,
        secondary_ip_count: int = 0,
        ipv6_count: int = 0,
        tags: Mapping[str, str] | None = None,
        trunk: bool = False,
        description: str = ENI_DESCRIPTION,
        client_token: str | None = None,
    ) -> EniInfo:
        """CreateNetworkInterface (``InstanceType`` Secondary or Trunk) with
        ``secondary_ip_count`` secondary IPv4 and ``ipv6_count`` IPv6 addresses.

        Tags: ``creator=terway`` + ``settings.eni_tags`` + ``tags``.  One
        ``ClientToken`` (``client_token`` or a new uuid) is used by every retry.
        """
        if not security_group_ids:
            raise ValueError("create_network_interface needs at least one security group id")
        token = client_token or str(uuid.uuid4())
        all_tags = {CREATOR_TAG[0]: CREATOR_TAG[1], **dict(self.settings.eni_tags), **dict(tags or {})}
        request = _sdk.make_request(
            "CreateNetworkInterface",
            region_id=self.settings.region_id,
            v_switch_id=vswitch_id,
            security_group_ids=list(security_group_ids),
            instance_type=TYPE_TRUNK if trunk else TYPE_SECONDARY,
            secondary_private_ip_address_count=secondary_ip_count or None,
            ipv_6address_count=ipv6_count or None,
            tag=_tag_list(all_tags, _sdk.ecs_models.CreateNetworkInterfaceRequestTag),
            description=description,
            resource_group_id=self.settings.resource_group_id or None,
            client_token=token,
        )
        body = await self._invoke(
            "CreateNetworkInterface", request, backoff=_backoff.ENI_CREATE, vswitch_id=vswitch_id
        )
        eni = eni_from_api(body)
        log.info(
            "eni.create.done",
            eni_id=eni.eni_id,
            mac=eni.mac,
            vswitch_id=vswitch_id,
            trunk=trunk,
            ipv4=len(eni.private_ips),
            ipv6=len(eni.ipv6s),
            request_id=body.get("RequestId"),
        )
        return eni

    def _attachment_request(self, api: str, eni_id: str, instance_id: str, trunk_eni_id: str | None) -> Any:
        """The request of Attach/DetachNetworkInterface (``trunk_eni_id``: a trunk member's)."""
        return _sdk.make_request(
            api,
            region_id=self.settings.region_id,
            network_interface_id=eni_id,
            instance_id=instance_id,
            trunk_network_instance_id=trunk_eni_id,
        )

    async def attach_network_interface(
        self, eni_id: str, instance_id: str, *, trunk_eni_id: str | None = None
    ) -> None:
        """AttachNetworkInterface (as a member of ``trunk_eni_id`` when given).

        Asynchronous on the cloud side: the ENI goes Attaching -> InUse; see
        :meth:`wait_eni_status`.
        """
        request = self._attachment_request("AttachNetworkInterface", eni_id, instance_id, trunk_eni_id)

        async def settle(err: CloudError) -> dict[str, Any] | None:
            # an earlier attempt may have been executed: attached to us already?
            eni = await self._describe_one(eni_id)
            if (
                eni is not None
                and eni.instance_id == instance_id
                and eni.status in (STATUS_ATTACHING, STATUS_IN_USE)
            ):
                return {}
            return None

        await self._invoke(
            "AttachNetworkInterface",
            request,
            backoff=_backoff.ENI_OPS,
            settle=settle,
            eni_id=eni_id,
            instance_id=instance_id,
        )
        log.info("eni.attach.requested", eni_id=eni_id, instance_id=instance_id, trunk_eni_id=trunk_eni_id)

    async def detach_network_interface(
        self, eni_id: str, instance_id: str, *, trunk_eni_id: str | None = None
    ) -> None:
        """DetachNetworkInterface; an ENI or instance that no longer exists is success."""
        request = self._attachment_request("DetachNetworkInterface", eni_id, instance_id, trunk_eni_id)

        async def settle(err: CloudError) -> dict[str, Any] | None:
            eni = await self._describe_one(eni_id)
            if eni is None or eni.status in (STATUS_DETACHING, STATUS_AVAILABLE):
                return {}
            return None

        try:
            await self._invoke(
                "DetachNetworkInterface",
                request,
                backoff=_backoff.ENI_RELEASE,
                settle=settle,
                eni_id=eni_id,
                instance_id=instance_id,
            )
        except CloudNotFound as err:
            if err.code in (INVALID_ENI_NOT_FOUND, INVALID_ECS_NOT_FOUND):
                log.info("eni.detach.gone", eni_id=eni_id, code=err.code, request_id=err.request_id)
                return
            raise
        log.info("eni.detach.requested", eni_id=eni_id, instance_id=instance_id)

    async def delete_network_interface(self, eni_id: str) -> None:
        """DeleteNetworkInterface; an ENI that no longer exists is success."""
        request = _sdk.make_request(
            "DeleteNetworkInterface", region_id=self.settings.region_id, network_interface_id=eni_id
        )
        try:
            await self._invoke("DeleteNetworkInterface", request, backoff=_backoff.ENI_RELEASE, eni_id=eni_id)
        except CloudNotFound as err:
            if err.code == INVALID_ENI_NOT_FOUND:
                log.info("eni.delete.gone", eni_id=eni_id, request_id=err.request_id)
                return
            raise
        log.info("eni.delete.done", eni_id=eni_id)

    async def describe_network_interfaces(
        self,
        *,
        eni_ids: Sequence[str] | None = None,
        instance_id: str | None = None,
        vpc_id: str | None = None,
        vswitch_id: str | None = None,
        status: str | None = None,
        eni_type: str | None = None,
        tags: Mapping[str, str] | None = None,
    ) -> list[EniInfo]:
        """DescribeNetworkInterfaces with filters, every page collected (NextToken).

        ``eni_ids`` is split into calls of at most 100 ids; ``tags`` must all match
        (also checked client-side).
        """
        if eni_ids is not None and not eni_ids:
            return []
        chunks: list[list[str] | None] = (
            [
                list(eni_ids[i : i + _MAX_IDS_PER_DESCRIBE])
                for i in range(0, len(eni_ids), _MAX_IDS_PER_DESCRIBE)
            ]
            if eni_ids
            else [None]
        )
        result: list[EniInfo] = []
        for chunk in chunks:
            next_token: str | None = None
            seen_tokens: set[str] = set()
            while True:
                request = _sdk.make_request(
                    "DescribeNetworkInterfaces",
                    region_id=self.settings.region_id,
                    network_interface_id=chunk,
                    instance_id=instance_id,
                    vpc_id=vpc_id,
                    v_switch_id=vswitch_id,
                    status=status,
                    type=eni_type,
                    tag=_tag_list(tags, _sdk.ecs_models.DescribeNetworkInterfacesRequestTag)
                    if tags
                    else None,
                    max_results=PAGE_SIZE,
                    next_token=next_token,
                )
                body = await self._invoke("DescribeNetworkInterfaces", request)
                for item in _items(body.get("NetworkInterfaceSets"), "NetworkInterfaceSet"):
                    result.append(eni_from_api(item))
                token = body.get("NextToken") or None
                if not token:
                    break
                if token in seen_tokens:
                    raise CloudTransportError(
                        f"DescribeNetworkInterfaces returned NextToken {token!r} twice",
                        api="DescribeNetworkInterfaces",
                    )
                seen_tokens.add(token)
                next_token = token
        if tags:
            want = dict(tags)
            result = [e for e in result if all(e.tag_map.get(k) == v for k, v in want.items())]
        return result

    async def describe_network_interface_attribute(self, eni_id: str) -> EniInfo:
        """DescribeNetworkInterfaceAttribute; :class:`CloudNotFound` if the ENI does not exist."""
        request = _sdk.make_request(
            "DescribeNetworkInterfaceAttribute",
            region_id=self.settings.region_id,
            network_interface_id=eni_id,
        )
        body = await self._invoke("DescribeNetworkInterfaceAttribute", request, eni_id=eni_id)
        if not body.get("NetworkInterfaceId"):
            raise CloudNotFound(
                f"DescribeNetworkInterfaceAttribute: ENI {eni_id} not found",
                api="DescribeNetworkInterfaceAttribute",
                code=INVALID_ENI_NOT_FOUND,
                request_id=str(body.get("RequestId") or ""),
            )
        return eni_from_api(body)

    async def _describe_one(self, eni_id: str) -> EniInfo | None:
        enis = await self.describe_network_interfaces(eni_ids=[eni_id])
        for eni in enis:
            if eni.eni_id == eni_id:
                return eni
        return None

    # -- IP addresses ----------------------------------------------------------------------------
    async def _assign_ips(
        self,
        api: str,
        eni_id: str,
        *,
        count_field: str,
        count: int | None,
        ips_field: str,
        ips: Sequence[str] | None,
        client_token: str | None,
        path: tuple[str, ...],
        event: str,
    ) -> tuple[str, ...]:
        """Call an Assign* ``api``; return the addresses its answer lists under ``path`` (the keys
        of the nested sets, the last one naming the list), logged as ``event``."""
        request = _sdk.make_request(
            api,
            region_id=self.settings.region_id,
            network_interface_id=eni_id,
            **{count_field: count or None, ips_field: list(ips) if ips else None},
            client_token=client_token or str(uuid.uuid4()),
        )
        body = await self._invoke(api, request, backoff=_backoff.ENI_IP_OPS, eni_id=eni_id)
        container: Any = body
        for key in path[:-2]:
            container = container.get(key) or {}
        got = tuple(str(ip) for ip in _items(container.get(path[-2]), path[-1]))
        log.info(event, eni_id=eni_id, ips=list(got), request_id=body.get("RequestId"))
        return got

    async def _unassign_ips(
        self, api: str, eni_id: str, ips: Sequence[str], *, ips_field: str, gone_event: str, done_event: str
    ) -> None:
        """Call an Unassign* ``api``; addresses or an ENI already gone are success (``gone_event``)."""
        if not ips:
            return
        request = _sdk.make_request(
            api, region_id=self.settings.region_id, network_interface_id=eni_id, **{ips_field: list(ips)}
        )
        try:
            await self._invoke(api, request, backoff=_backoff.ENI_IP_OPS, eni_id=eni_id)
        except CloudError as err:
            if err.code in (INVALID_IP_UNASSIGNED, INVALID_ENI_NOT_FOUND):
                log.info(gone_event, eni_id=eni_id, code=err.code, request_id=err.request_id)
                return
            raise
        log.info(done_event, eni_id=eni_id, ips=list(ips))

    async def assign_private_ip_addresses(
        self,
        eni_id: str,
        *,
        count: int | None = None,
        ips: Sequence[str] | None = None,
        client_token: str | None = None,
    ) -> tuple[str, ...]:
        """AssignPrivateIpAddresses: ``count`` new secondary IPv4 addresses (or exactly ``ips``).

        Returns the assigned addresses.  One ``ClientToken`` for every retry.
        """
        if bool(count) == bool(ips):
            raise ValueError("assign_private_ip_addresses needs either count > 0 or ips, not both")
        return await self._assign_ips(
            "AssignPrivateIpAddresses",
            eni_id,
            count_field="secondary_private_ip_address_count",
            count=count,
            ips_field="private_ip_address",
            ips=ips,
            client_token=client_token,
            path=("AssignedPrivateIpAddressesSet", "PrivateIpSet", "PrivateIpAddress"),
            event="eni.ipv4.assigned",
        )

    async def unassign_private_ip_addresses(self, eni_id: str, ips: Sequence[str]) -> None:
        """UnassignPrivateIpAddresses; addresses or an ENI already gone are success."""
        await self._unassign_ips(
            "UnassignPrivateIpAddresses",
            eni_id,
            ips,
            ips_field="private_ip_address",
            gone_event="eni.ipv4.unassign_gone",
            done_event="eni.ipv4.unassigned",
        )

    async def assign_ipv6_addresses(
        self,
        eni_id: str,
        *,
        count: int | None = None,
        ips: Sequence[str] | None = None,
        client_token: str | None = None,
    ) -> tuple[str, ...]:
        """AssignIpv6Addresses: ``count`` new IPv6 addresses (or exactly ``ips``)."""
        if bool(count) == bool(ips):
            raise ValueError("assign_ipv6_addresses needs either count > 0 or ips, not both")
        return await self._assign_ips(
            "AssignIpv6Addresses",
            eni_id,
            count_field="ipv_6address_count",
            count=count,
            ips_field="ipv_6address",
            ips=ips,
            client_token=client_token,
            path=("Ipv6Sets", "Ipv6Address"),
            event="eni.ipv6.assigned",
        )

    async def unassign_ipv6_addresses(self, eni_id: str, ips: Sequence[str]) -> None:
        """UnassignIpv6Addresses; addresses or an ENI already gone are success."""
        await self._unassign_ips(
            "UnassignIpv6Addresses",
            eni_id,
            ips,
            ips_field="ipv_6address",
            gone_event="eni.ipv6.unassign_gone",
            done_event="eni.ipv6.unassigned",
        )

    # -- describes -------------------------------------------------------------------------------
    async def describe_instance_types(
        self, instance_types: Sequence[str] | None = None
    ) -> list[InstanceLimits]:
        """DescribeInstanceTypes for ``instance_types`` (all when ``None``), every page collected."""
        result: list[InstanceLimits] = []
        next_token: str | None = None
        seen: set[str] = set()
        while True:
            request = _sdk.make_request(
                "DescribeInstanceTypes",
                instance_types=list(instance_types) if instance_types else None,
                max_results=PAGE_SIZE,
                next_token=next_token,
            )
            body = await self._invoke("DescribeInstanceTypes", request)
            for item in _items(body.get("InstanceTypes"), "InstanceType"):
                result.append(InstanceLimits.from_api(item))
            token = body.get("NextToken") or None
            if not token or token in seen:
                break
            seen.add(token)
            next_token = token
        return result

    async def describe_vswitches(
        self,
        *,
        vswitch_id: str | None = None,
        vpc_id: str | None = None,
        zone_id: str | None = None,
    ) -> list[VSwitchInfo]:
        """DescribeVSwitches (the ECS API's), filtered, every page collected."""
        result: list[VSwitchInfo] = []
        page = 1
        while True:
            request = _sdk.make_request(
                "DescribeVSwitches",
                region_id=self.settings.region_id,
                v_switch_id=vswitch_id,
                vpc_id=vpc_id,
                zone_id=zone_id,
                page_number=page,
                page_size=50,
            )
            body = await self._invoke("DescribeVSwitches", request)
            items = _items(body.get("VSwitches"), "VSwitch")
            result.extend(_vswitch_from_api(v) for v in items)
            total = _int_or_none(body.get("TotalCount"))
            if (
                not items
                or (total is not None and len(result) >= total)
                or (total is None and len(items) < 50)
            ):
                break
            page += 1
        return result

    async def describe_vswitch(self, vswitch_id: str) -> VSwitchInfo:
        """One vSwitch; :class:`CloudNotFound` (``InvalidVSwitchId.NotFound``) if unknown."""
        for vsw in await self.describe_vswitches(vswitch_id=vswitch_id):
            if vsw.id == vswitch_id:
                return vsw
        raise CloudNotFound(
            f"DescribeVSwitches: vSwitch {vswitch_id} not found",
            api="DescribeVSwitches",
            code="InvalidVSwitchId.NotFound",
        )

    # -- high-level operations -------------------------------------------------------------------
    async def wait_eni_status(
        self,
        eni_id: str,
        status: str,
        *,
        backoff: str = _backoff.WAIT_ENI_STATUS,
    ) -> EniInfo:
        """Poll DescribeNetworkInterfaces until ``eni_id`` is in ``status``.

        Uses the ``backoff`` policy (``wait_eni_status``: first look after 3 s).
        Transient describe errors count as "not yet".

        :raises CloudNotFound: the ENI disappeared.
        :raises CloudTimeout: the attempts ran out; names the last status seen.
        """
        policy = self.backoffs.get(backoff) or self.backoffs[_backoff.DEFAULT]
        last = "unknown"
        start = trio.current_time()

        async def check() -> EniInfo | None:
            nonlocal last
            try:
                eni = await self._describe_one(eni_id)
            except CloudError as err:
                if err.retryable:
                    last = f"describe failed: {err.code or 'transport'}"
                    return None
                raise
            if eni is None:
                raise CloudNotFound(
                    f"ENI {eni_id} disappeared while waiting for status {status}",
                    api="DescribeNetworkInterfaces",
                    code=INVALID_ENI_NOT_FOUND,
                )
            last = eni.status
            return eni if eni.status == status else None

        ok, eni = await _backoff.poll(policy, check)
        if ok and eni is not None:
            return eni
        elapsed = trio.current_time() - start
        raise CloudTimeout(
            f"ENI {eni_id} did not reach status {status} after {policy.steps} checks in {elapsed:.1f}s "
            f"(last seen: {last})",
            api="DescribeNetworkInterfaces",
        )

    async def _wait_gone(self, eni_id: str, backoff: str = _backoff.WAIT_ENI_STATUS) -> None:
        policy = replace(self.backoffs.get(backoff) or self.backoffs[_backoff.DEFAULT], initial_delay=0.0)

        async def check() -> bool | None:
            try:
                eni = await self._describe_one(eni_id)
            except CloudError as err:
                if err.retryable:
                    return None
                raise
            return True if eni is None else None

        ok, _ = await _backoff.poll(policy, check)
        if not ok:
            raise CloudTimeout(
                f"ENI {eni_id} still exists after DeleteNetworkInterface ({policy.steps} checks)",
                api="DescribeNetworkInterfaces",
            )

    async def create_and_attach_eni(
        self,
        vswitch_id: str,
        security_group_ids: Sequence[str],
        *,
        secondary_ip_count: int = 0,
        ipv6_count: int = 0,
        tags: Mapping[str, str] | None = None,
        trunk: bool = False,
        instance_id: str | None = None,
    ) -> EniInfo:
        """Create an ENI, attach it to ``instance_id`` (default: this node), wait until it is
        InUse and until the metadata service shows its MAC and addresses; return it with the
        vSwitch CIDR and gateway read from the metadata service.

        On any failure (or cancellation) after the create, the ENI is rolled back
        (detached if attached, deleted) under a shield and the original error is
        raised; a failed rollback is logged (``eni.rollback.failed``) and noted on
        the raised exception.
        """
        node = instance_id or await self.instance_id()
        eni = await self.create_network_interface(
            vswitch_id,
            security_group_ids,
            secondary_ip_count=secondary_ip_count,
            ipv6_count=ipv6_count,
            tags=tags,
            trunk=trunk,
        )
        try:
            log.info("eni.attach.started", eni_id=eni.eni_id, instance_id=node)
            await self.attach_network_interface(eni.eni_id, node)
            ready = await self.wait_eni_status(eni.eni_id, STATUS_IN_USE)
            md = await self._wait_metadata(ready, node)
            result = replace(
                ready,
                vswitch_cidr4=md.vswitch_cidr4 if md else None,
                gateway4=md.gateway if md else None,
                vswitch_cidr6=md.vswitch_cidr6 if md else None,
                gateway6=md.ipv6_gateway if md else None,
            )
            log.info(
                "eni.attach.done",
                eni_id=result.eni_id,
                mac=result.mac,
                instance_id=node,
                device_index=result.device_index,
                ipv4=list(result.private_ips),
                ipv6=list(result.ipv6s),
            )
            return result
        except BaseException as exc:
            # whatever the attach call answered, the cloud's view decides what to undo
            await self._rollback(eni.eni_id, node, exc)
            raise

    async def _wait_metadata(self, eni: EniInfo, node: str) -> EniMetadata | None:
        """Wait for the metadata service to show ``eni`` — only when ``node`` is the instance the
        metadata client describes (another instance's ENIs are not visible there)."""
        if node != await self.instance_id():
            return None
        return await self.metadata.wait_for_eni(
            eni.mac,
            ipv4s=eni.private_ips,
            ipv6s=eni.ipv6s,
            timeout=self.settings.metadata_wait_timeout,
            interval=self.settings.metadata_poll_interval,
        )

    async def _rollback(self, eni_id: str, node: str, cause: BaseException) -> None:
        timeout = max(60.0, self.backoffs[_backoff.WAIT_ENI_STATUS].max_total() * 2 + 30.0)
        log.warning(
            "eni.rollback.started",
            eni_id=eni_id,
            instance_id=node,
            cause=type(cause).__name__,
        )
        with trio.move_on_after(timeout, shield=True) as scope:
            try:
                await self.detach_and_delete_eni(eni_id, instance_id=node)
            except Exception as err:  # the original error is what the caller must see
                log.error("eni.rollback.failed", eni_id=eni_id, error=str(err), error_type=type(err).__name__)
                cause.add_note(f"rollback of {eni_id} failed: {type(err).__name__}: {err}")
                return
        if scope.cancelled_caught:
            log.error("eni.rollback.failed", eni_id=eni_id, error=f"timed out after {timeout:.0f}s")
            cause.add_note(f"rollback of {eni_id} timed out after {timeout:.0f}s")
            return
        log.info("eni.rollback.done", eni_id=eni_id)

    async def detach_and_delete_eni(self, eni_id: str, *, instance_id: str | None = None) -> None:
        """Detach (if attached), wait until Available, delete, confirm it is gone.

        Idempotent: an ENI that does not exist is success.  ``instance_id`` is only
        a hint; the ENI's attachment is read from the cloud.
        """
        eni = await self._describe_one(eni_id)
        if eni is None:
            log.info("eni.release.gone", eni_id=eni_id)
            return
        if eni.status != STATUS_DELETING:
            if eni.status == STATUS_ATTACHING:
                eni = await self._wait_status_or_gone(eni_id, (STATUS_IN_USE, STATUS_AVAILABLE))
                if eni is None:
                    return
            if eni.status == STATUS_IN_USE:
                node = eni.instance_id or instance_id
                if node is None:
                    raise CloudInvalidState(
                        f"ENI {eni_id} is InUse but the cloud reports no instance for it",
                        api="DetachNetworkInterface",
                    )
                await self.detach_network_interface(eni_id, node, trunk_eni_id=eni.trunk_eni_id)
                eni = await self._wait_status_or_gone(eni_id, (STATUS_AVAILABLE,))
            elif eni.status != STATUS_AVAILABLE:
                eni = await self._wait_status_or_gone(eni_id, (STATUS_AVAILABLE,))
            if eni is None:
                return
            await self.delete_network_interface(eni_id)
        await self._wait_gone(eni_id)
        log.info("eni.release.done", eni_id=eni_id)

    async def _wait_status_or_gone(self, eni_id: str, statuses: Iterable[str]) -> EniInfo | None:
        want = tuple(statuses)
        policy = replace(self.backoffs[_backoff.WAIT_ENI_STATUS], initial_delay=0.0)
        last = "unknown"

        async def check() -> tuple[EniInfo | None] | None:
            nonlocal last
            try:
                eni = await self._describe_one(eni_id)
            except CloudError as err:
                if err.retryable:
                    return None
                raise
            if eni is None:
                return (None,)
            last = eni.status
            return (eni,) if eni.status in want else None

        ok, found = await _backoff.poll(policy, check)
        if ok and found is not None:
            return found[0]
        raise CloudTimeout(
            f"ENI {eni_id} did not reach {'/'.join(want)} ({policy.steps} checks, last seen: {last})",
            api="DescribeNetworkInterfaces",
        )
