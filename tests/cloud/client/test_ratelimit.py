"""Token buckets and backoff policies under trio's MockClock (virtual time)."""

from __future__ import annotations

import random

import pytest
import trio
import trio.testing

from terway_agent.cloud import _backoff
from terway_agent.cloud._metrics import RATE_LIMITER_LATENCY
from terway_agent.cloud._ratelimit import DEFAULT_RATE_LIMITS, RateLimiter, TokenBucket
from terway_agent.errors import ConfigError


async def test_sequential_calls_burst_then_rate(autojump_clock: trio.testing.MockClock) -> None:
    # 60 calls/minute with burst 5: five at once, then one per second.
    bucket = TokenBucket(rate=60 / 60, burst=5)
    start = trio.current_time()
    stamps = []
    for _ in range(10):
        await bucket.acquire()
        stamps.append(trio.current_time() - start)
    assert stamps[:5] == [0.0] * 5
    assert stamps[5:] == pytest.approx([1.0, 2.0, 3.0, 4.0, 5.0])


async def test_concurrent_callers_are_spaced(autojump_clock: trio.testing.MockClock) -> None:
    bucket = TokenBucket(rate=2.0, burst=3)  # 120/min
    start = trio.current_time()
    done: list[float] = []

    async def one() -> None:
        await bucket.acquire()
        done.append(trio.current_time() - start)

    async with trio.open_nursery() as nursery:
        for _ in range(9):
            nursery.start_soon(one)
    done.sort()
    # 3 immediately, then one every 0.5 s
    assert done == pytest.approx([0, 0, 0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0])


async def test_idle_bucket_refills_up_to_burst_only(autojump_clock: trio.testing.MockClock) -> None:
    bucket = TokenBucket(rate=1.0, burst=2)
    for _ in range(2):
        await bucket.acquire()
    await trio.sleep(100)  # far longer than needed: tokens capped at the burst
    start = trio.current_time()
    for _ in range(3):
        await bucket.acquire()
    assert trio.current_time() - start == pytest.approx(1.0)


async def test_cancelled_wait_returns_its_reservation(autojump_clock: trio.testing.MockClock) -> None:
    bucket = TokenBucket(rate=1.0, burst=1)
    await bucket.acquire()
    with trio.move_on_after(0.25):
        await bucket.acquire()  # would wait 1 s
    assert bucket.statistics()["tokens"] == pytest.approx(0.25)
    start = trio.current_time()
    await bucket.acquire()
    assert trio.current_time() - start == pytest.approx(0.75)


async def test_rate_limiter_defaults_and_overrides(autojump_clock: trio.testing.MockClock) -> None:
    limiter = RateLimiter({"DescribeVSwitches": 6, "default": 120})
    assert limiter.limits["CreateNetworkInterface"] == 500
    assert limiter.limits["DescribeNetworkInterfaces"] == 800
    assert limiter.limits["DetachNetworkInterface"] == 400
    assert limiter.limits["DescribeVSwitches"] == 6
    assert limiter.limits[""] == 120
    assert limiter.bucket("SomethingElse") is limiter.bucket("")
    assert limiter.bucket("DescribeVSwitches").rate == pytest.approx(0.1)

    before = RATE_LIMITER_LATENCY.labels(api="DescribeVSwitches")._sum.get()
    start = trio.current_time()
    for _ in range(8):
        await limiter.wait("DescribeVSwitches")
    # burst 6, then 10 s per call
    assert trio.current_time() - start == pytest.approx(20.0)
    waited_ms = RATE_LIMITER_LATENCY.labels(api="DescribeVSwitches")._sum.get() - before
    assert waited_ms == pytest.approx(10_000 + 10_000)


def test_every_default_rate_is_the_originals() -> None:
    assert DEFAULT_RATE_LIMITS == {
        "": 500,
        "CreateNetworkInterface": 500,
        "AttachNetworkInterface": 500,
        "DeleteNetworkInterface": 500,
        "DetachNetworkInterface": 400,
        "DescribeNetworkInterfaces": 800,
        "DescribeNetworkInterfaceAttribute": 2000,
        "AssignPrivateIpAddresses": 400,
        "UnassignPrivateIpAddresses": 400,
        "AssignIpv6Addresses": 400,
        "UnassignIpv6Addresses": 400,
        "DescribeInstanceTypes": 400,
        "DescribeVSwitches": 300,
    }


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"DescribeNetworkInterface": 10}, "rate_limit.DescribeNetworkInterface"),
        ({"CreateNetworkInterface": 0}, "rate_limit.CreateNetworkInterface"),
        ({"CreateNetworkInterface": "10"}, "rate_limit.CreateNetworkInterface"),
        ({"CreateNetworkInterface": True}, "rate_limit.CreateNetworkInterface"),
    ],
)
def test_bad_rate_limit_names_the_field(overrides: dict, field: str) -> None:
    with pytest.raises(ConfigError) as info:
        RateLimiter(overrides)
    assert info.value.field == field


# --- backoff -----------------------------------------------------------------------------------
def test_default_backoffs_are_the_originals() -> None:
    b = _backoff.DEFAULT_BACKOFFS
    assert b["default"] == _backoff.Backoff(2.0, 1.5, 0.3, 6)
    assert b["eni_create"] == _backoff.Backoff(10.0, 2.0, 0.3, 2)
    assert b["eni_ops"] == _backoff.Backoff(5.0, 2.0, 0.3, 6)
    assert b["eni_release"] == _backoff.Backoff(4.0, 2.0, 0.5, 8)
    assert b["eni_ip_ops"] == _backoff.Backoff(5.0, 1.0, 1.3, 6)
    assert b["wait_eni_status"] == _backoff.Backoff(3.0, 1.5, 0.5, 8, initial_delay=3.0)
    assert b["wait_member_eni_status"] == _backoff.Backoff(1.0, 1.5, 0.5, 8, initial_delay=2.0)
    assert b["wait_podeni_status"].steps == 100


def test_delays_without_jitter_follow_factor_and_cap() -> None:
    policy = _backoff.Backoff(duration=1.0, factor=2.0, jitter=0.0, steps=6, cap=5.0)
    assert list(policy.delays()) == [1.0, 2.0, 4.0, 5.0, 5.0]
    assert list(_backoff.Backoff(duration=3.0, steps=1).delays()) == []


def test_jitter_stays_within_bounds() -> None:
    policy = _backoff.DEFAULT_BACKOFFS["eni_ip_ops"]  # 5 s, factor 1, jitter 1.3
    rng = random.Random(7)
    for _ in range(200):
        for d in policy.delays(rng):
            assert 5.0 <= d <= 5.0 * 2.3


def test_overrides_merge_onto_defaults() -> None:
    resolved = _backoff.resolve_backoffs(
        {"eni_create": {"duration": "500ms", "steps": 4}, "": {"Factor": 3, "Jitter": 0}}
    )
    assert resolved["eni_create"] == _backoff.Backoff(0.5, 2.0, 0.3, 4)
    assert resolved["default"] == _backoff.Backoff(2.0, 3.0, 0.0, 6)
    assert resolved["eni_ops"] == _backoff.DEFAULT_BACKOFFS["eni_ops"]
    assert _backoff.parse_duration("1m30s", "x") == 90.0
    assert _backoff.parse_duration(0.25, "x") == 0.25


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"eni_creat": {"steps": 1}}, "backoff_override.eni_creat"),
        ({"eni_create": {"steps": 0}}, "backoff_override.eni_create.steps"),
        ({"eni_create": {"duration": "10 seconds"}}, "backoff_override.eni_create.duration"),
        ({"eni_create": {"durations": 1}}, "backoff_override.eni_create.durations"),
        ({"eni_create": 5}, "backoff_override.eni_create"),
        ({"eni_ops": {"factor": -1}}, "backoff_override.eni_ops.factor"),
    ],
)
def test_bad_backoff_override_names_the_field(overrides: dict, field: str) -> None:
    with pytest.raises(ConfigError) as info:
        _backoff.resolve_backoffs(overrides)
    assert info.value.field == field


async def test_poll_takes_the_policy_time(autojump_clock: trio.testing.MockClock) -> None:
    policy = _backoff.Backoff(duration=3.0, factor=1.5, jitter=0.0, steps=4, initial_delay=3.0)
    calls: list[float] = []
    start = trio.current_time()

    async def never() -> None:
        calls.append(trio.current_time() - start)
        return None

    ok, value = await _backoff.poll(policy, never)
    assert (ok, value) == (False, None)
    # initial 3, then 3, 4.5, 6.75 between the four attempts
    assert calls == pytest.approx([3.0, 6.0, 10.5, 17.25])


async def test_poll_returns_first_value(autojump_clock: trio.testing.MockClock) -> None:
    policy = _backoff.Backoff(duration=1.0, steps=10)
    n = 0

    async def third() -> str | None:
        nonlocal n
        n += 1
        return "ready" if n == 3 else None

    start = trio.current_time()
    assert await _backoff.poll(policy, third) == (True, "ready")
    assert trio.current_time() - start == pytest.approx(2.0)
