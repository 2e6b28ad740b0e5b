"""Per-namespace sysctls, and how /proc resolves for a thread that entered a namespace."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import Any

import pytest

from terway_agent import datapath as dp
from terway_agent.datapath import netns
from terway_agent.errors import InvalidInput, NotFound

pytestmark = pytest.mark.netns


def _in_thread(fn: Callable[[], Any]) -> Any:
    """Run ``fn`` in a fresh thread (so the test's main thread never changes namespace)."""
    out: dict[str, Any] = {}

    def run() -> None:
        try:
            out["value"] = fn()
        except BaseException as exc:  # re-raised in the caller
            out["error"] = exc

    t = threading.Thread(target=run)
    t.start()
    t.join()
    if "error" in out:
        raise out["error"]
    return out["value"]


def _read(path: str) -> str:
    with open(path) as f:
        return f.read().strip()


def test_proc_sys_net_follows_the_calling_thread(make_netns):
    a = make_netns("sa")
    b = make_netns("sb")
    dp.apply(dp.Plan((dp.Veth(name="twdps0", netns=a, peer_name="twdps1", peer_netns=a),)))
    # New namespaces inherit IPv4 devconf from the root namespace
    # (net.core.devconf_inherit_init_net=0): write the opposite in A.
    root_forwarding = _read("/proc/sys/net/ipv4/conf/all/forwarding")
    flipped = "0" if root_forwarding == "1" else "1"

    def probe() -> dict[str, Any]:
        seen: dict[str, Any] = {}
        with netns.enter(a):
            seen["a_has_dev"] = os.path.isdir("/proc/sys/net/ipv4/conf/twdps0")
            with open("/proc/sys/net/ipv4/conf/all/forwarding", "w") as f:
                f.write(flipped)
            seen["a_forwarding"] = _read("/proc/sys/net/ipv4/conf/all/forwarding")
            # /proc/self is the thread group leader (still in the root namespace);
            # /proc/thread-self is this thread.
            seen["self_net_has_dev"] = "twdps0" in _read("/proc/self/net/dev")
            seen["thread_self_net_has_dev"] = "twdps0" in _read("/proc/thread-self/net/dev")
        with netns.enter(b):
            seen["b_has_dev"] = os.path.isdir("/proc/sys/net/ipv4/conf/twdps0")
            seen["b_forwarding"] = _read("/proc/sys/net/ipv4/conf/all/forwarding")
        seen["back_has_dev"] = os.path.isdir("/proc/sys/net/ipv4/conf/twdps0")
        return seen

    seen = _in_thread(probe)
    assert seen == {
        "a_has_dev": True,
        "a_forwarding": flipped,
        "self_net_has_dev": False,
        "thread_self_net_has_dev": True,
        "b_has_dev": False,
        "b_forwarding": root_forwarding,
        "back_has_dev": False,
    }
    assert _read("/proc/sys/net/ipv4/conf/all/forwarding") == root_forwarding


def test_sysctl_objects_land_in_their_namespace(make_netns):
    a = make_netns("sc")
    b = make_netns("sd")
    dp.apply(dp.Plan((dp.Veth(name="twdpc0", netns=a, peer_name="eth0", peer_netns=b),)))
    root_rp = _read("/proc/sys/net/ipv4/conf/all/rp_filter")
    plan = dp.Plan(
        (
            dp.Sysctl(path="net/ipv4/conf/twdpc0/rp_filter", value="2", netns=a),
            dp.Sysctl(path="net/ipv4/conf/all/rp_filter", value=2, netns=a),
            dp.Sysctl(path="net/ipv6/conf/eth0/accept_ra", value="0", netns=b),
            dp.Sysctl(path="net/ipv4/conf/eth0/forwarding", value="1", netns=b),
        )
    )
    first = dp.apply(plan)
    # sysctls always exist: setting one is a change, one already right is unchanged
    assert first.changed + first.unchanged == plan.objects and not first.created
    assert plan.objects[0] in first.changed  # rp_filter 2 is nobody's default
    assert dp.apply(plan).unchanged == plan.objects
    assert dp.check(plan) == []
    assert _in_thread(lambda: _enter_read(a, "net/ipv4/conf/twdpc0/rp_filter")) == "2"
    assert _in_thread(lambda: _enter_read(b, "net/ipv4/conf/eth0/forwarding")) == "1"
    assert _in_thread(lambda: _enter_read(b, "net/ipv4/conf/all/rp_filter")) == root_rp  # only A changed
    assert _read("/proc/sys/net/ipv4/conf/all/rp_filter") == root_rp

    _in_thread(lambda: _enter_write(b, "net/ipv6/conf/eth0/accept_ra", "2"))
    problems = dp.check(plan)
    assert [p.description for p in problems] == [
        f"sysctl net/ipv6/conf/eth0/accept_ra=0 in netns {b}: value is 2"
    ]
    assert dp.remove(plan).kept == plan.objects  # never undone


def _enter_read(ns: str, key: str) -> str:
    with netns.enter(ns):
        return _read(f"/proc/sys/{key}")


def _enter_write(ns: str, key: str, value: str) -> None:
    with netns.enter(ns):
        with open(f"/proc/sys/{key}", "w") as f:
            f.write(value)


def test_sysctl_errors(make_netns):
    a = make_netns("se")
    with pytest.raises(NotFound) as info:
        dp.apply(dp.Plan((dp.Sysctl(path="net/ipv4/conf/twdpnone/forwarding", value="1", netns=a),)))
    assert "net/ipv4/conf/twdpnone/forwarding" in str(info.value)
    for bad in ("kernel/hostname", "net/../kernel/x", "/proc/sys/net/ipv4/ip_forward"):
        with pytest.raises(InvalidInput) as err:
            dp.Sysctl(path=bad, value="1", netns=a)
        assert err.value.field == "Sysctl.path"
