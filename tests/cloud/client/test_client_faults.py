"""Retries, throttling, injected faults, idempotency and rollback against the emulator."""

from __future__ import annotations

import time
from typing import Any

import pytest
import structlog
import trio
import trio.testing
from twcli_helpers import MakeClient

from terway_agent.cloud import errors as E
from terway_agent.cloud.client import CloudClient
from terway_agent.errors import TemporaryError


async def _tagged(client: CloudClient, value: str) -> list[Any]:
    return await client.describe_network_interfaces(tags={"twcli": value})


# --- throttling ---------------------------------------------------------------------------------
async def test_throttled_calls_wait_retry_after_and_succeed(emulator: Any, make_client: MakeClient) -> None:
    client = make_client()
    emulator.admin.set_rate_limit("DescribeVSwitches", per_minute=600, burst=1)  # one per 100 ms
    emulator.admin.set_retry_after_header(True)
    with structlog.testing.capture_logs() as logs:
        start = time.monotonic()
        for _ in range(4):
            assert len(await client.describe_vswitches()) == 5
        elapsed = time.monotonic() - start
    results = emulator.admin.results()["DescribeVSwitches"]
    assert results["OK"] == 4
    assert results.get("Throttling.User", 0) >= 1
    retries = [e for e in logs if e["event"] == "openapi.call.retry"]
    assert len(retries) == results["Throttling.User"]
    for event in retries:
        assert event["api"] == "DescribeVSwitches" and event["code"] == "Throttling.User"
        assert event["request_id"] and event["attempt"] >= 1
        assert event["delay"] >= 0.05  # the server's x-acs-retry-after (ms), not our 20 ms backoff
    assert elapsed >= 0.25  # 4 calls at 10/s with a burst of 1


async def test_throttled_without_retry_after_uses_backoff(emulator: Any, make_client: MakeClient) -> None:
    client = make_client()
    emulator.admin.set_rate_limit("DescribeInstanceTypes", per_minute=1200, burst=1)
    emulator.admin.set_retry_after_header(False)
    for _ in range(3):
        assert await client.describe_instance_types(["ecs.g6.large"])
    results = emulator.admin.results()["DescribeInstanceTypes"]
    assert results["OK"] == 3 and results.get("Throttling.User", 0) >= 1


async def test_throttling_exhausts_into_a_temporary_error(emulator: Any, make_client: MakeClient) -> None:
    client = make_client()
    emulator.admin.add_fault(
        "DescribeVSwitches", kind="error", status=400, code="Throttling.Api", retry_after=30
    )
    with pytest.raises(E.CloudThrottled) as info:
        await client.describe_vswitches()
    err = info.value
    assert isinstance(err, TemporaryError) and err.retryable
    assert err.retry_after == pytest.approx(0.03)
    assert emulator.admin.call_count("DescribeVSwitches") == 6  # the default policy's 6 attempts


async def test_retry_after_on_a_non_throttling_error_is_not_retried(
    emulator: Any, make_client: MakeClient
) -> None:
    # the SDK raises its ThrottlingException for any error answer with x-acs-retry-after:
    # the code decides, and InvalidParameter is not retried
    client = make_client()
    emulator.admin.add_fault(
        "DescribeVSwitches", kind="error", status=400, code="InvalidParameter", retry_after=30
    )
    with pytest.raises(E.CloudInvalidParameter) as info:
        await client.describe_vswitches()
    err = info.value
    assert not isinstance(err, E.CloudThrottled) and not err.retryable
    assert err.code == "InvalidParameter"
    assert err.retry_after == pytest.approx(0.03)  # still carried
    assert emulator.admin.call_count("DescribeVSwitches") == 1


# --- server errors, hangs, connection errors ----------------------------------------------------
@pytest.mark.parametrize(
    ("status", "code"), [(500, "InternalError"), (503, "ServiceUnavailable"), (502, "BadGateway")]
)
async def test_5xx_is_retried(emulator: Any, make_client: MakeClient, status: int, code: str) -> None:
    client = make_client()
    emulator.admin.add_fault("DescribeInstanceTypes", kind="error", status=status, code=code, times=2)
    got = await client.describe_instance_types(["ecs.g7.xlarge"])
    assert [t.instance_type for t in got] == ["ecs.g7.xlarge"]
    assert emulator.admin.results()["DescribeInstanceTypes"] == {code: 2, "OK": 1}


async def test_non_retryable_error_is_raised_at_once(emulator: Any, make_client: MakeClient) -> None:
    client = make_client()
    emulator.admin.add_fault("DescribeVSwitches", kind="error", status=400, code="InvalidParameter.Conflict")
    with structlog.testing.capture_logs() as logs:
        with pytest.raises(E.CloudInvalidParameter):
            await client.describe_vswitches()
    assert emulator.admin.call_count("DescribeVSwitches") == 1
    failed = [e for e in logs if e["event"] == "openapi.call.failed"]
    assert len(failed) == 1
    assert failed[0]["code"] == "InvalidParameter.Conflict" and failed[0]["attempt"] == 1
    assert not [e for e in logs if e["event"] == "openapi.call.retry"]


async def test_hang_times_out_and_is_retried(emulator: Any, make_client: MakeClient) -> None:
    client = make_client(request_timeout=0.3)
    emulator.admin.add_fault("DescribeVSwitches", kind="hang", seconds=5, times=1)
    start = time.monotonic()
    assert len(await client.describe_vswitches()) == 5
    assert time.monotonic() - start < 4  # did not wait for the hang
    assert emulator.admin.call_count("DescribeVSwitches") == 2


async def test_connection_refused_is_a_transport_error(emulator: Any, make_client: MakeClient) -> None:
    # A port nothing listens on: bind, note, close.
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    client = make_client(endpoint=f"127.0.0.1:{port}")
    with pytest.raises(E.CloudTransportError) as info:
        await client.describe_vswitches()
    err = info.value
    assert err.retryable and isinstance(err, TemporaryError)
    assert "connection refused" in str(err)
    assert emulator.access_key_secret not in str(err)
    assert "RegionId" not in str(err)  # the request URL (parameters) is not echoed


# --- idempotency: a lost response never creates twice -------------------------------------------
@pytest.mark.parametrize("kind", ["error_after_commit", "drop_after_commit"])
async def test_create_retried_after_lost_response_creates_once(
    emulator: Any, make_client: MakeClient, kind: str
) -> None:
    client = make_client()
    emulator.admin.add_fault("CreateNetworkInterface", kind=kind, status=500, times=1)
    eni = await client.create_network_interface(emulator.vsw_pod_a, [emulator.sg], tags={"twcli": kind})
    assert emulator.admin.call_count("CreateNetworkInterface") == 2
    found = await _tagged(client, kind)
    assert [e.eni_id for e in found] == [eni.eni_id]


async def test_create_after_hang_creates_once(emulator: Any, make_client: MakeClient) -> None:
    # The first request hangs past our timeout, then executes anyway on the server.
    client = make_client(request_timeout=0.3)
    emulator.admin.add_fault("CreateNetworkInterface", kind="hang", seconds=0.8, times=1)
    eni = await client.create_network_interface(emulator.vsw_pod_a, [emulator.sg], tags={"twcli": "hang"})
    await trio.sleep(1.2)  # let the hung request finish on the server
    assert emulator.admin.call_count("CreateNetworkInterface") == 2
    found = await _tagged(client, "hang")
    assert [e.eni_id for e in found] == [eni.eni_id]


async def test_assign_retried_after_lost_response_assigns_once(
    emulator: Any, make_client: MakeClient
) -> None:
    client = make_client()
    eni = await client.create_network_interface(emulator.vsw_pod_a, [emulator.sg])
    emulator.admin.add_fault("AssignPrivateIpAddresses", kind="error_after_commit", status=503, times=1)
    emulator.admin.add_fault("AssignIpv6Addresses", kind="drop_after_commit", times=1)
    got4 = await client.assign_private_ip_addresses(eni.eni_id, count=3)
    got6 = await client.assign_ipv6_addresses(eni.eni_id, count=2)
    attr = await client.describe_network_interface_attribute(eni.eni_id)
    assert len(attr.private_ips) == 1 + 3 and set(got4) <= set(attr.private_ips)
    assert len(attr.ipv6s) == 2 and set(got6) == set(attr.ipv6s)


@pytest.mark.parametrize("kind", ["drop_after_commit", "error_after_commit"])
async def test_attach_retried_after_lost_response_settles(
    emulator: Any, make_client: MakeClient, kind: str
) -> None:
    client = make_client()
    eni = await client.create_network_interface(emulator.vsw_pod_a, [emulator.sg])
    # executed, answer lost; the retry is refused (already attached) -> the client checks and succeeds
    emulator.admin.add_fault("AttachNetworkInterface", kind=kind, status=500, times=1)
    with structlog.testing.capture_logs() as logs:
        await client.attach_network_interface(eni.eni_id, emulator.node1)
    assert (await client.wait_eni_status(eni.eni_id, "InUse")).instance_id == emulator.node1
    assert emulator.admin.call_count("AttachNetworkInterface") == 2
    assert [e["event"] for e in logs if e["event"].startswith("openapi.call.")] == [
        "openapi.call.retry",
        "openapi.call.settled",
    ]


# --- create_and_attach and its rollback -----------------------------------------------------------
async def test_create_and_attach_returns_metadata_view(emulator: Any, make_client: MakeClient) -> None:
    client = make_client()
    emulator.admin.configure(attach_latency=0.1, metadata_delay=0.2)
    eni = await client.create_and_attach_eni(
        emulator.vsw_pod_a, [emulator.sg], secondary_ip_count=2, ipv6_count=1, tags={"twcli": "ok"}
    )
    assert eni.status == "InUse" and eni.instance_id == emulator.node1 and eni.device_index == 1
    assert (eni.vswitch_cidr4, eni.gateway4) == ("172.17.0.0/20", "172.17.15.253")
    assert eni.vswitch_cidr6 == "2408:4005:300:8c01::/64" and eni.gateway6
    md = await client.metadata.eni(eni.mac)
    assert set(md.private_ipv4s) == set(eni.private_ips) and md.eni_id == eni.eni_id
    await client.detach_and_delete_eni(eni.eni_id)
    assert await _tagged(client, "ok") == []
    await client.detach_and_delete_eni(eni.eni_id)  # idempotent


async def test_rollback_when_attach_fails(emulator: Any, make_client: MakeClient) -> None:
    client = make_client()
    emulator.admin.add_fault(
        "AttachNetworkInterface", kind="error", status=400, code="InvalidParameter", times=1
    )
    with pytest.raises(E.CloudInvalidParameter):
        await client.create_and_attach_eni(emulator.vsw_pod_a, [emulator.sg], tags={"twcli": "rb1"})
    assert await _tagged(client, "rb1") == []
    assert emulator.admin.results()["DeleteNetworkInterface"] == {"OK": 1}


async def test_rollback_detaches_an_attach_that_happened(emulator: Any, make_client: MakeClient) -> None:
    client = make_client()
    # the attach is executed but answered with a non-retryable error
    emulator.admin.add_fault(
        "AttachNetworkInterface", kind="error_after_commit", status=403, code="Forbidden.RAM", times=1
    )
    with structlog.testing.capture_logs() as logs:
        with pytest.raises(E.CloudAuthError) as info:
            await client.create_and_attach_eni(emulator.vsw_pod_a, [emulator.sg], tags={"twcli": "rb2"})
    assert info.value.code == "Forbidden.RAM"
    assert await _tagged(client, "rb2") == []
    assert emulator.admin.results()["DetachNetworkInterface"] == {"OK": 1}
    left = await client.describe_network_interfaces(instance_id=emulator.node1)
    assert [e.type for e in left] == ["Primary"]
    events = [e["event"] for e in logs]
    assert "eni.rollback.started" in events and "eni.rollback.done" in events


async def test_rollback_when_metadata_never_shows_the_eni(emulator: Any, make_client: MakeClient) -> None:
    client = make_client(metadata_wait_timeout=0.4)
    emulator.admin.configure(metadata_delay=60)
    with pytest.raises(E.MetadataTimeout) as info:
        await client.create_and_attach_eni(emulator.vsw_pod_a, [emulator.sg], tags={"twcli": "rb3"})
    assert "did not show ENI" in str(info.value)
    assert await _tagged(client, "rb3") == []


async def test_rollback_on_cancellation(emulator: Any, make_client: MakeClient) -> None:
    client = make_client()
    emulator.admin.configure(attach_latency=1.0)
    with trio.move_on_after(0.3) as scope:
        await client.create_and_attach_eni(emulator.vsw_pod_a, [emulator.sg], tags={"twcli": "rb4"})
    assert scope.cancelled_caught
    # the shielded rollback finished before the cancellation was delivered
    assert await _tagged(client, "rb4") == []


async def test_rollback_failure_is_noted_on_the_original_error(
    emulator: Any, make_client: MakeClient
) -> None:
    client = make_client()
    emulator.admin.add_fault(
        "AttachNetworkInterface", kind="error", status=400, code="InvalidParameter", times=1
    )
    emulator.admin.add_fault(
        "DeleteNetworkInterface", kind="error", status=400, code="InvalidParameter.Locked"
    )
    with structlog.testing.capture_logs() as logs:
        with pytest.raises(E.CloudInvalidParameter) as info:
            await client.create_and_attach_eni(emulator.vsw_pod_a, [emulator.sg], tags={"twcli": "rb5"})
    assert info.value.api == "AttachNetworkInterface"  # the original error, not the rollback's
    assert any("rollback of eni-" in note for note in getattr(info.value, "__notes__", []))
    assert [e for e in logs if e["event"] == "eni.rollback.failed"]


async def test_detach_and_delete_while_attaching(emulator: Any, make_client: MakeClient) -> None:
    client = make_client()
    emulator.admin.configure(attach_latency=0.3, detach_latency=0.2)
    eni = await client.create_network_interface(emulator.vsw_pod_a, [emulator.sg])
    await client.attach_network_interface(eni.eni_id, emulator.node1)
    await client.detach_and_delete_eni(eni.eni_id)
    assert await client.describe_network_interfaces(eni_ids=[eni.eni_id]) == []
    await client.detach_and_delete_eni("eni-twcli-neverexisted")


async def test_trunk_and_member_enis(emulator: Any, make_client: MakeClient) -> None:
    client = make_client()
    trunk = await client.create_and_attach_eni(emulator.vsw_pod_a, [emulator.sg], trunk=True)
    assert trunk.type == "Trunk"
    member = await client.create_network_interface(
        emulator.vsw_pod_b, [emulator.sg2], tags={"twcli": "member"}
    )
    await client.attach_network_interface(member.eni_id, emulator.node1, trunk_eni_id=trunk.eni_id)
    ready = await client.wait_eni_status(member.eni_id, "InUse")
    assert ready.type == "Member"
    assert ready.trunk_eni_id == trunk.eni_id
    assert ready.vlan_id is not None and ready.vlan_id == ready.device_index
    await client.detach_and_delete_eni(member.eni_id)
    await client.detach_and_delete_eni(trunk.eni_id)
    assert await client.describe_network_interfaces(eni_ids=[member.eni_id, trunk.eni_id]) == []


# --- authentication ------------------------------------------------------------------------------
async def test_wrong_secret_is_a_clear_non_retryable_error(emulator: Any, make_client: MakeClient) -> None:
    wrong = "twcli-WRONG-secret-" + "x" * 16
    client = make_client(access_key_secret=wrong)
    with structlog.testing.capture_logs() as logs:
        with pytest.raises(E.CloudAuthError) as info:
            await client.describe_vswitches()
    err = info.value
    assert err.code == "SignatureDoesNotMatch" and not err.retryable
    assert emulator.admin.call_count("DescribeVSwitches") == 1
    for text in (str(err), repr(err), repr(err.details), repr(logs), repr(client), repr(client.settings)):
        assert wrong not in text
        assert emulator.access_key_secret not in text


# --- virtual time: the original's default backoffs, driven by MockClock -----------------------------
async def test_default_backoffs_in_virtual_time(
    emulator: Any, autojump_clock: trio.testing.MockClock
) -> None:
    from twcli_helpers import settings_for

    client = CloudClient(settings_for(emulator, backoff_override={}))
    # eni_create: 10 s (x1.3 jitter max) before the one retry
    emulator.admin.add_fault("CreateNetworkInterface", kind="error", status=500, times=1)
    start = trio.current_time()
    await client.create_network_interface(emulator.vsw_pod_a, [emulator.sg])
    assert 10.0 <= trio.current_time() - start <= 13.0

    # x-acs-retry-after (3000 ms) beats the default policy's first delay (2 s .. 2.6 s)
    emulator.admin.add_fault(
        "DescribeVSwitches", kind="error", status=400, code="Throttling.User", retry_after=3000, times=1
    )
    start = trio.current_time()
    await client.describe_vswitches()
    assert trio.current_time() - start == pytest.approx(3.0)

    # a non-retryable error costs no time at all
    start = trio.current_time()
    with pytest.raises(E.IpNotEnough):
        await client.create_network_interface(emulator.vsw_tiny, [emulator.sg], secondary_ip_count=20)
    assert trio.current_time() - start == 0.0


async def test_client_rate_limit_in_virtual_time(
    emulator: Any, autojump_clock: trio.testing.MockClock
) -> None:
    from twcli_helpers import settings_for

    client = CloudClient(settings_for(emulator, rate_limit={"DescribeInstanceTypes": 60}))
    start = trio.current_time()
    for _ in range(70):
        await client.describe_instance_types(["ecs.g6.large"])
    # burst 60 at once, then one per second
    assert trio.current_time() - start == pytest.approx(10.0)
    assert emulator.admin.call_count("DescribeInstanceTypes") == 70
