"""Small helpers shared by the emulator tests (real SDK calls only)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest
from alibabacloud_ecs20140526 import models as m
from alibabacloud_tea_openapi.exceptions import AlibabaCloudException
from alibabacloud_tea_openapi.utils_models import OpenApiRequest, Params
from darabonba.runtime import RuntimeOptions


def api_error(fn: Callable[[], Any]) -> AlibabaCloudException:
    """Run ``fn`` and return the SDK exception it must raise."""
    with pytest.raises(AlibabaCloudException) as info:
        fn()
    return info.value


def call_rpc(
    client: Any, action: str, query: dict[str, str], *, version: str, protocol: str = "HTTP"
) -> dict[str, Any]:
    """Call the RPC-style OpenAPI ``action`` of API ``version`` through the SDK's generic
    ``call_api`` (for what the typed ECS client has no method for)."""
    params = Params(
        action=action,
        version=version,
        protocol=protocol,
        pathname="/",
        method="POST",
        auth_type="AK",
        style="RPC",
        req_body_type="formData",
        body_type="json",
    )
    return client.call_api(params, OpenApiRequest(query=query), RuntimeOptions())


def assert_shape(body: Any) -> None:
    """The response body survives the SDK model round trip unchanged: every key
    the emulator sent is one the model knows, with the type it expects."""
    raw = body.to_map()
    again = type(body)().from_map(raw).to_map()
    assert again == raw


def create_eni(client: Any, fx: Any, **kw: Any) -> Any:
    req = m.CreateNetworkInterfaceRequest(
        region_id=fx.region_id,
        v_switch_id=kw.pop("v_switch_id", fx.vsw_pod_a),
        security_group_ids=kw.pop("security_group_ids", [fx.sg]),
        **kw,
    )
    return client.create_network_interface(req).body


def attach(client: Any, fx: Any, eni_id: str, instance_id: str, trunk: str | None = None) -> None:
    client.attach_network_interface(
        m.AttachNetworkInterfaceRequest(
            region_id=fx.region_id,
            network_interface_id=eni_id,
            instance_id=instance_id,
            trunk_network_instance_id=trunk,
        )
    )


def detach(client: Any, fx: Any, eni_id: str, instance_id: str, trunk: str | None = None) -> None:
    client.detach_network_interface(
        m.DetachNetworkInterfaceRequest(
            region_id=fx.region_id,
            network_interface_id=eni_id,
            instance_id=instance_id,
            trunk_network_instance_id=trunk,
        )
    )


def describe_eni(client: Any, fx: Any, eni_id: str) -> Any:
    body = client.describe_network_interfaces(
        m.DescribeNetworkInterfacesRequest(region_id=fx.region_id, network_interface_id=[eni_id])
    ).body
    sets = body.network_interface_sets.network_interface_set
    return sets[0] if sets else None


def wait_status(client: Any, fx: Any, eni_id: str, status: str, timeout: float = 5.0) -> list[str]:
    """Poll DescribeNetworkInterfaces until the ENI has ``status``; returns the
    statuses seen in order (deduplicated)."""
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    while True:
        eni = describe_eni(client, fx, eni_id)
        current = eni.status if eni else "Gone"
        if not seen or seen[-1] != current:
            seen.append(current)
        if current == status:
            return seen
        if time.monotonic() > deadline:
            raise AssertionError(f"ENI {eni_id} never reached {status}; saw {seen}")
        time.sleep(0.005)
