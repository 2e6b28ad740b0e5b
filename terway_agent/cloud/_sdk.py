"""The thin layer over the official SDK (``alibabacloud-ecs20140526``).

Builds SDK clients for a set of credentials, calls the **sync** ``*_with_options``
methods (run in worker threads by the caller) and translates the SDK's
exceptions into :mod:`terway_agent.cloud.errors`.  Nothing here retries: the
SDK's own retry is left off and :class:`~terway_agent.cloud.client.CloudClient`
owns the retry policy.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from typing import Any

from alibabacloud_ecs20140526 import models as ecs_models
from alibabacloud_ecs20140526.client import Client as EcsClient
from alibabacloud_tea_openapi import utils_models as openapi_models
from alibabacloud_tea_openapi.exceptions import AlibabaCloudException, ThrottlingException
from darabonba.exceptions import RetryError
from darabonba.runtime import RuntimeOptions
from Tea.exceptions import UnretryableException

from .credentials import Credentials
from .errors import (
    CloudError,
    CloudThrottled,
    CloudTransportError,
    error_class_for,
)
from .settings import CloudSettings

USER_AGENT = "terway-agent"

#: OpenAPI action -> (SDK method, request model)
SDK_METHODS: dict[str, tuple[str, type]] = {
    "CreateNetworkInterface": (
        "create_network_interface_with_options",
        ecs_models.CreateNetworkInterfaceRequest,
    ),
    "AttachNetworkInterface": (
        "attach_network_interface_with_options",
        ecs_models.AttachNetworkInterfaceRequest,
    ),
    "DetachNetworkInterface": (
        "detach_network_interface_with_options",
        ecs_models.DetachNetworkInterfaceRequest,
    ),
    "DeleteNetworkInterface": (
        "delete_network_interface_with_options",
        ecs_models.DeleteNetworkInterfaceRequest,
    ),
    "DescribeNetworkInterfaces": (
        "describe_network_interfaces_with_options",
        ecs_models.DescribeNetworkInterfacesRequest,
    ),
    "DescribeNetworkInterfaceAttribute": (
        "describe_network_interface_attribute_with_options",
        ecs_models.DescribeNetworkInterfaceAttributeRequest,
    ),
    "AssignPrivateIpAddresses": (
        "assign_private_ip_addresses_with_options",
        ecs_models.AssignPrivateIpAddressesRequest,
    ),
    "UnassignPrivateIpAddresses": (
        "unassign_private_ip_addresses_with_options",
        ecs_models.UnassignPrivateIpAddressesRequest,
    ),
    "AssignIpv6Addresses": (
        "assign_ipv_6addresses_with_options",
        ecs_models.AssignIpv6AddressesRequest,
    ),
    "UnassignIpv6Addresses": (
        "unassign_ipv_6addresses_with_options",
        ecs_models.UnassignIpv6AddressesRequest,
    ),
    "DescribeInstanceTypes": (
        "describe_instance_types_with_options",
        ecs_models.DescribeInstanceTypesRequest,
    ),
    "DescribeVSwitches": (
        "describe_vswitches_with_options",
        ecs_models.DescribeVSwitchesRequest,
    ),
}


def make_request(api: str, **fields: Any) -> Any:
    """The SDK request model of ``api`` with ``fields`` (snake_case SDK names); ``None`` skipped."""
    _, cls = SDK_METHODS[api]
    return cls(**{k: v for k, v in fields.items() if v is not None})


def build_client(settings: CloudSettings, creds: Credentials) -> EcsClient:
    """An SDK client for ``settings`` authenticated with ``creds`` (STS token included)."""
    config = openapi_models.Config(
        access_key_id=creds.access_key_id,
        access_key_secret=creds.access_key_secret,
        security_token=creds.security_token or None,
        region_id=settings.region_id,
        endpoint=settings.endpoint,
        network=settings.network if settings.endpoint is None else None,
        protocol=settings.protocol,
        read_timeout=int(settings.request_timeout * 1000),
        connect_timeout=int(settings.connect_timeout * 1000),
        user_agent=USER_AGENT,
    )
    return EcsClient(config)


def runtime_options(settings: CloudSettings) -> RuntimeOptions:
    """Per-call options: our timeouts, no SDK-side retries."""
    return RuntimeOptions(
        autoretry=False,
        read_timeout=int(settings.request_timeout * 1000),
        connect_timeout=int(settings.connect_timeout * 1000),
    )


def call(client: EcsClient, api: str, request: Any, runtime: RuntimeOptions) -> dict[str, Any]:
    """Blocking: call ``api`` and return the response body as the wire-level dict."""
    method_name, _ = SDK_METHODS[api]
    response = getattr(client, method_name)(request, runtime)
    body = response.body
    return body.to_map() if body is not None else {}


# --- exception translation -------------------------------------------------------------------
_URL_RE = re.compile(r"(url: )?/\?\S*|https?://\S+")


def scrub(text: str, secrets: Iterable[str]) -> str:
    """``text`` without any of ``secrets`` and without request URLs (query strings carry parameters)."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "<redacted>")
    return _URL_RE.sub("<url>", text)


def _transport_kind(text: str) -> str:
    low = text.lower()
    if "timed out" in low or "timeout" in low:
        return "timeout"
    if "refused" in low:
        return "connection refused"
    if "reset" in low:
        return "connection reset"
    if "remotedisconnected" in low or "aborted" in low or "closed" in low:
        return "connection closed by the server"
    if "name or service not known" in low or "nodename nor servname" in low or "resolve" in low:
        return "name resolution failed"
    return "transport error"


def _server_message(exc: AlibabaCloudException) -> str:
    data = exc.data if isinstance(exc.data, dict) else {}
    msg = data.get("Message") or data.get("message")
    if msg:
        return str(msg)
    return str(exc.message or "")


def translate(exc: BaseException, api: str, endpoint: str, secrets: Iterable[str] = ()) -> CloudError | None:
    """The :class:`CloudError` for an SDK exception, or ``None`` if ``exc`` is not one of the SDK's
    (a programming error, to be propagated as is).  ``secrets`` are scrubbed from every text."""
    secrets = tuple(secrets)
    if isinstance(exc, AlibabaCloudException):
        code = str(exc.code or "")
        if code == "None":
            code = ""
        status = exc.status_code
        request_id = str(exc.request_id or "")
        if request_id == "None":
            request_id = ""
        retry_after = None
        if exc.retry_after is not None:
            try:
                retry_after = max(float(exc.retry_after) / 1000.0, 0.0)  # the SDK's unit: ms
            except (TypeError, ValueError):
                retry_after = None
        # By the code, not by the SDK's exception class: the SDK raises ThrottlingException for
        # *any* error answer carrying x-acs-retry-after (an InvalidParameter too), and only
        # Throttling* codes (or a code-less 429) may be retried as throttling.
        cls = error_class_for(code, status)
        if not code and status == 429 and isinstance(exc, ThrottlingException):
            cls = CloudThrottled
        text = scrub(_server_message(exc), secrets)
        message = f"{api} failed: {code or 'HTTP ' + str(status)}: {text}"
        if request_id:
            message += f" (request id {request_id})"
        return cls(
            message, api=api, code=code, request_id=request_id, http_status=status, retry_after=retry_after
        )
    if isinstance(exc, UnretryableException):
        inner = exc.inner_exception
        if isinstance(inner, RetryError | OSError):
            raw = str(getattr(inner, "message", None) or inner)
            kind = _transport_kind(raw)
            detail = scrub(raw, secrets)
            if len(detail) > 300:
                detail = detail[:297] + "..."
            return CloudTransportError(f"{api}: {kind} talking to {endpoint}: {detail}", api=api)
        if isinstance(inner, ValueError | json.JSONDecodeError | UnicodeDecodeError):
            return CloudTransportError(
                f"{api}: malformed response from {endpoint}: {type(inner).__name__}", api=api
            )
        if isinstance(inner, AlibabaCloudException):
            return translate(inner, api, endpoint, secrets)
        return CloudTransportError(
            f"{api}: request to {endpoint} failed: {type(inner).__name__}: {scrub(str(inner), secrets)[:300]}",
            api=api,
        )
    if isinstance(exc, RetryError):
        raw = str(exc.message or exc)
        return CloudTransportError(
            f"{api}: {_transport_kind(raw)} talking to {endpoint}: {scrub(raw, secrets)[:300]}", api=api
        )
    return None
