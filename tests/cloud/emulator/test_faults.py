"""Throttling, injected faults, latency and ClientToken idempotency."""

from __future__ import annotations

import time

import pytest
from alibabacloud_ecs20140526 import models as m
from alibabacloud_tea_openapi.exceptions import ClientException, ServerException, ThrottlingException
from darabonba.exceptions import UnretryableException
from twemu_helpers import api_error, create_eni

from terway_agent.cloud.emulator import AdminError


def _describe(c, emulator):
    return c.describe_network_interfaces(m.DescribeNetworkInterfacesRequest(region_id=emulator.region_id))


def _secondary_enis(emulator):
    return [e for e in emulator.admin.state()["enis"] if e["type"] != "Primary"]


def test_throttling_user_without_retry_after(emulator):
    emulator.admin.set_rate_limit("DescribeNetworkInterfaces", per_minute=60, burst=2)
    c = emulator.ecs_client()
    _describe(c, emulator)
    _describe(c, emulator)
    err = api_error(lambda: _describe(c, emulator))
    assert type(err) is ClientException
    assert (err.code, err.status_code) == ("Throttling.User", 400)
    assert err.retry_after is None
    # other APIs have their own bucket
    c.describe_security_groups(m.DescribeSecurityGroupsRequest(region_id=emulator.region_id))
    assert emulator.admin.results()["DescribeNetworkInterfaces"] == {"OK": 2, "Throttling.User": 1}


def test_throttling_with_retry_after_header(emulator):
    emulator.admin.set_rate_limit("DescribeNetworkInterfaces", per_minute=60, burst=1)
    emulator.admin.set_retry_after_header(True)
    c = emulator.ecs_client()
    _describe(c, emulator)
    err = api_error(lambda: _describe(c, emulator))
    assert isinstance(err, ThrottlingException)
    assert err.code == "Throttling.User"
    # milliseconds until the next token: at most one second at 60 per minute
    assert 0 < err.retry_after <= 1000


def test_throttling_tokens_refill(emulator):
    emulator.admin.set_rate_limit("default", per_minute=600, burst=1)
    c = emulator.ecs_client()
    _describe(c, emulator)
    assert api_error(lambda: _describe(c, emulator)).code == "Throttling.User"
    time.sleep(0.15)  # 10 tokens per second
    _describe(c, emulator)
    emulator.admin.set_rate_limit("default", per_minute=None)
    for _ in range(5):
        _describe(c, emulator)


@pytest.mark.parametrize(("status", "code"), [(500, "InternalError"), (503, "ServiceUnavailable")])
def test_server_errors(emulator, status, code):
    emulator.admin.add_fault("DescribeNetworkInterfaces", status=status, times=1)
    c = emulator.ecs_client()
    err = api_error(lambda: _describe(c, emulator))
    assert isinstance(err, ServerException)
    assert (err.code, err.status_code) == (code, status)
    _describe(c, emulator)  # only once


def test_error_code_n_times_after_skipping(emulator):
    fid = emulator.admin.add_fault(
        "AssignPrivateIpAddresses", code="InvalidVSwitchId.IpNotEnough", status=403, times=2, after=1
    )
    c = emulator.ecs_client()
    eni = create_eni(c, emulator)

    def assign():
        return c.assign_private_ip_addresses(
            m.AssignPrivateIpAddressesRequest(
                region_id=emulator.region_id,
                network_interface_id=eni.network_interface_id,
                secondary_private_ip_address_count=1,
            )
        )

    assign()
    for _ in range(2):
        err = api_error(assign)
        assert (err.code, err.status_code) == ("InvalidVSwitchId.IpNotEnough", 403)
    assign()
    assert emulator.admin.results()["AssignPrivateIpAddresses"] == {
        "OK": 2,
        "InvalidVSwitchId.IpNotEnough": 2,
    }
    # a rule that has fired its last time is gone
    assert all(f["id"] != fid for f in emulator.admin.faults())


def test_error_with_probability(emulator):
    emulator.admin.add_fault("*", status=500, probability=0.5)
    c = emulator.ecs_client()
    failures = 0
    for _ in range(100):
        try:
            _describe(c, emulator)
        except ServerException:
            failures += 1
    assert 25 <= failures <= 75
    assert emulator.admin.call_count("DescribeNetworkInterfaces") == 100


def test_fault_with_retry_after_is_a_throttling_exception(emulator):
    emulator.admin.add_fault(
        "DescribeNetworkInterfaces", code="Throttling", status=400, retry_after=1500, times=1
    )
    err = api_error(lambda: _describe(emulator.ecs_client(), emulator))
    assert isinstance(err, ThrottlingException)
    assert (err.code, err.retry_after) == ("Throttling", 1500)


def test_hang_forever_times_out_the_client(emulator):
    emulator.admin.add_fault("DescribeNetworkInterfaces", kind="hang", seconds=None, times=1)
    c = emulator.ecs_client(read_timeout=300)
    with pytest.raises(UnretryableException) as info:
        _describe(c, emulator)
    assert "Read timed out" in str(info.value.inner_exception)
    _describe(c, emulator)  # the next call is answered


def test_hang_then_answer(emulator):
    emulator.admin.add_fault("DescribeNetworkInterfaces", kind="hang", seconds=0.3, times=1)
    c = emulator.ecs_client(read_timeout=5000)
    start = time.monotonic()
    assert _describe(c, emulator).body.total_count == 5
    assert time.monotonic() - start >= 0.3


def test_drop_is_a_transport_error(emulator):
    emulator.admin.add_fault("DescribeNetworkInterfaces", kind="drop", times=1)
    c = emulator.ecs_client()
    with pytest.raises(UnretryableException):
        _describe(c, emulator)
    _describe(c, emulator)


def test_latency_rule_and_api_latency(emulator):
    c = emulator.ecs_client()
    emulator.admin.set_latency("DescribeNetworkInterfaces", 0.2)
    start = time.monotonic()
    _describe(c, emulator)
    assert time.monotonic() - start >= 0.2
    emulator.admin.set_latency("DescribeNetworkInterfaces", None)
    emulator.admin.add_fault(
        "DescribeNetworkInterfaces",
        kind="latency",
        latency={"kind": "uniform", "low": 0.1, "high": 0.15},
        times=1,
    )
    start = time.monotonic()
    _describe(c, emulator)
    assert time.monotonic() - start >= 0.1
    emulator.admin.set_latency("default", {"kind": "normal", "mean": 0.0, "stddev": 0.0, "floor": 0.05})
    start = time.monotonic()
    _describe(c, emulator)
    assert time.monotonic() - start >= 0.05


def test_bad_fault_specs_are_refused_clearly(emulator):
    with pytest.raises(AdminError) as info:
        emulator.admin.add_fault("DescribeNetworkInterfaces", kind="explode")
    assert info.value.payload["field"] == "fault.kind"
    assert "error_after_commit" in info.value.payload["expected"]
    with pytest.raises(AdminError) as info:
        emulator.admin.set_latency("X", {"kind": "uniform", "low": 2, "high": 1})
    assert info.value.payload["field"] == "latency.X.high"
    with pytest.raises(AdminError) as info:
        emulator.admin.set_rate_limit("X", per_minute=-1)
    assert info.value.payload["field"] == "rate_limits.X.per_minute"


def test_client_token_lost_response_creates_exactly_one_eni(emulator):
    """The create is committed but its answer is an error (the lost response):
    a retry with the same ClientToken gets the first ENI back."""
    emulator.admin.add_fault("CreateNetworkInterface", kind="error_after_commit", status=503, times=1)
    c = emulator.ecs_client()
    err = api_error(
        lambda: create_eni(c, emulator, client_token="tok-1", secondary_private_ip_address_count=2)
    )
    assert err.code == "ServiceUnavailable"
    [committed] = _secondary_enis(emulator)
    again = create_eni(c, emulator, client_token="tok-1", secondary_private_ip_address_count=2)
    assert again.network_interface_id == committed["id"]
    assert len(_secondary_enis(emulator)) == 1
    assert [s.private_ip_address for s in again.private_ip_sets.private_ip_set] == [
        committed["primary_ip"],
        *committed["secondary_ips"],
    ]


def test_client_token_dropped_connection_after_commit(emulator):
    emulator.admin.add_fault("AssignPrivateIpAddresses", kind="drop_after_commit", times=1)
    c = emulator.ecs_client()
    eni = create_eni(c, emulator)
    req = m.AssignPrivateIpAddressesRequest(
        region_id=emulator.region_id,
        network_interface_id=eni.network_interface_id,
        secondary_private_ip_address_count=2,
        client_token="assign-1",
    )
    with pytest.raises(UnretryableException):
        c.assign_private_ip_addresses(req)
    body = c.assign_private_ip_addresses(req).body
    got = body.assigned_private_ip_addresses_set.private_ip_set.private_ip_address
    [state] = _secondary_enis(emulator)
    assert state["secondary_ips"] == got
    assert emulator.admin.results()["AssignPrivateIpAddresses"] == {"Dropped": 1, "OK": 1}


def test_client_token_mismatch_and_without_token(emulator):
    c = emulator.ecs_client()
    first = create_eni(c, emulator, client_token="tok-2")
    same = create_eni(c, emulator, client_token="tok-2")
    assert same.network_interface_id == first.network_interface_id
    err = api_error(lambda: create_eni(c, emulator, client_token="tok-2", v_switch_id=emulator.vsw_pod_b))
    assert (err.code, err.status_code) == ("IdempotentParameterMismatch", 400)
    create_eni(c, emulator)
    create_eni(c, emulator)
    assert len(_secondary_enis(emulator)) == 3


def test_ipv6_assign_client_token(emulator):
    c = emulator.ecs_client()
    eni = create_eni(c, emulator)
    req = m.AssignIpv6AddressesRequest(
        region_id=emulator.region_id,
        network_interface_id=eni.network_interface_id,
        ipv_6address_count=1,
        client_token="v6-1",
    )
    a = c.assign_ipv_6addresses(req).body.ipv_6sets.ipv_6address
    b = c.assign_ipv_6addresses(req).body.ipv_6sets.ipv_6address
    assert a == b
    assert _secondary_enis(emulator)[0]["ipv6s"] == a


def test_counters_and_reset(emulator):
    c = emulator.ecs_client()
    _describe(c, emulator)
    _describe(c, emulator)
    assert emulator.admin.call_count("DescribeNetworkInterfaces") == 2
    emulator.admin.reset_calls()
    assert emulator.admin.calls() == {}
