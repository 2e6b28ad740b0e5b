"""The emulator calls the NodeSide protocol at the documented moments, one call
at a time, and survives a failing node side."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from alibabacloud_ecs20140526 import models as m
from twemu_helpers import attach, create_eni, detach, wait_status

from terway_agent.cloud.emulator.node_side import EniNet, ServiceAddresses, VSwitchNet


class RecordingNodeSide:
    """A NodeSide that records every call (and can be told to fail one method)."""

    def __init__(self, fail: str | None = None, slow: float = 0.0):
        self.calls: list[tuple] = []
        self.fail = fail
        self.slow = slow
        self.active = 0
        self.overlap = False
        self._lock = threading.Lock()

    def _record(self, name, *args):
        with self._lock:
            self.active += 1
            if self.active > 1:
                self.overlap = True
        try:
            if self.slow:
                time.sleep(self.slow)
            self.calls.append((name, *args))
            if name == self.fail:
                raise RuntimeError(f"{name} failed on purpose")
        finally:
            with self._lock:
                self.active -= 1

    def start(self, vswitches, services):
        self._record("start", tuple(vswitches), services)

    def vswitch_added(self, vswitch):
        self._record("vswitch_added", vswitch)

    def add_instance(self, instance_id, netns, primary):
        self._record("add_instance", instance_id, netns, primary)

    def eni_attached(self, instance_id, eni):
        self._record("eni_attached", instance_id, eni)

    def eni_ips_changed(self, instance_id, eni):
        self._record("eni_ips_changed", instance_id, eni)

    def eni_detached(self, instance_id, eni):
        self._record("eni_detached", instance_id, eni)

    def remove_instance(self, instance_id):
        self._record("remove_instance", instance_id)

    def close(self):
        self._record("close")

    def names(self):
        return [c[0] for c in self.calls]


@pytest.fixture
def recorded(make_emulator):
    def make(**kw):
        side = RecordingNodeSide(**kw)
        return make_emulator(node_side=side), side

    return make


def test_start_and_instances(recorded):
    fx, side = recorded()
    start = side.calls[0]
    assert start[0] == "start"
    nets = {v.vswitch_id: v for v in start[1]}
    assert nets[fx.vsw_pod_a] == VSwitchNet(
        "vsw-twemu-pod-a",
        "172.17.0.0/20",
        "172.17.15.253",
        "2408:4005:300:8c01::/64",
        "2408:4005:300:8c01:ffff:ffff:ffff:fffd",
    )
    assert start[2] == ServiceAddresses()
    adds = [c for c in side.calls if c[0] == "add_instance"]
    assert [(c[1], c[2]) for c in adds] == [
        ("i-twemu-node1", "twemu-node1"),
        ("i-twemu-small", "twemu-small"),
        ("i-twemu-g6", "twemu-g6"),
        ("i-twemu-tiny", "twemu-tiny"),
        ("i-twemu-zone-j", "twemu-zonej"),
    ]
    primary: EniNet = adds[0][3]
    assert (primary.device_index, primary.primary_ip, primary.vswitch.gateway4) == (
        0,
        "172.16.0.11",
        "172.16.0.253",
    )
    assert primary.mac.startswith("00:16:3e:")


def test_eni_lifecycle_calls(recorded):
    fx, side = recorded()
    fx.admin.configure(attach_latency=0.2, detach_latency=0.1)
    c = fx.ecs_client()
    eni = create_eni(c, fx, secondary_private_ip_address_count=1)
    eni_id = eni.network_interface_id
    attach(c, fx, eni_id, fx.node1)
    assert "eni_attached" not in side.names()  # still Attaching
    wait_status(c, fx, eni_id, "InUse")
    deadline = time.monotonic() + 2
    while "eni_attached" not in side.names():
        assert time.monotonic() < deadline
        time.sleep(0.01)
    attached = next(cl for cl in side.calls if cl[0] == "eni_attached")
    net: EniNet = attached[2]
    assert (attached[1], net.eni_id, net.device_index, net.mac) == (fx.node1, eni_id, 1, eni.mac_address)
    assert net.secondary_ipv4s == (eni.private_ip_sets.private_ip_set[1].private_ip_address,)
    new = c.assign_private_ip_addresses(
        m.AssignPrivateIpAddressesRequest(
            region_id=fx.region_id, network_interface_id=eni_id, secondary_private_ip_address_count=2
        )
    ).body.assigned_private_ip_addresses_set.private_ip_set.private_ip_address
    # called before the API call returned
    changed = [cl for cl in side.calls if cl[0] == "eni_ips_changed"]
    assert changed[-1][2].secondary_ipv4s[-2:] == tuple(new)
    detach(c, fx, eni_id, fx.node1)
    wait_status(c, fx, eni_id, "Available")
    deadline = time.monotonic() + 2
    while "eni_detached" not in side.names():
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert next(cl for cl in side.calls if cl[0] == "eni_detached")[2].eni_id == eni_id
    fx.admin.add_vswitch(id="vsw-twemu-late", zone="cn-hangzhou-k", cidr="172.21.0.0/24")
    assert side.calls[-1][0] == "vswitch_added"
    fx.admin.remove_instance(fx.tiny)
    assert side.calls[-1] == ("remove_instance", fx.tiny)
    fx.emulator.stop()
    assert side.calls[-1] == ("close",)


def test_member_eni_rides_the_trunk_device(recorded):
    fx, side = recorded()
    c = fx.ecs_client()
    trunk = create_eni(c, fx, instance_type="Trunk").network_interface_id
    attach(c, fx, trunk, fx.node1)
    member = create_eni(c, fx).network_interface_id
    attach(c, fx, member, fx.node1, trunk=trunk)
    net = [cl for cl in side.calls if cl[0] == "eni_attached"][-1][2]
    assert (net.eni_id, net.trunk_eni_id, net.vlan_id, net.device_index) == (member, trunk, 1, 1)


def test_node_side_failures_are_surfaced_not_fatal(recorded):
    fx, side = recorded(fail="eni_attached")
    c = fx.ecs_client()
    eni = create_eni(c, fx).network_interface_id
    attach(c, fx, eni, fx.node1)
    wait_status(c, fx, eni, "InUse")
    status = fx.admin.node_side()
    assert status["kind"] == "RecordingNodeSide"
    [err] = status["errors"]
    assert err["method"] == "eni_attached"
    assert "failed on purpose" in err["error"]
    # the API keeps working
    assert create_eni(c, fx).status == "Available"


def test_node_side_calls_never_overlap(recorded):
    fx, side = recorded(slow=0.002)
    c = fx.ecs_client()
    enis = [create_eni(c, fx).network_interface_id for _ in range(3)]
    for e in enis:
        attach(c, fx, e, fx.node1)

    def work(eni_id):
        client = fx.ecs_client()
        for _ in range(3):
            client.assign_private_ip_addresses(
                m.AssignPrivateIpAddressesRequest(
                    region_id=fx.region_id, network_interface_id=eni_id, secondary_private_ip_address_count=1
                )
            )

    with ThreadPoolExecutor(3) as pool:
        list(pool.map(work, enis))
    assert len([cl for cl in side.calls if cl[0] == "eni_ips_changed"]) == 9
    assert not side.overlap
    # commit order: each ENI's successive snapshots only grow
    for e in enis:
        counts = [
            len(cl[2].secondary_ipv4s)
            for cl in side.calls
            if cl[0] == "eni_ips_changed" and cl[2].eni_id == e
        ]
        assert counts == [1, 2, 3]


def test_a_node_side_that_cannot_start_stops_the_emulator(make_emulator):
    from terway_agent.errors import PermanentError

    with pytest.raises(PermanentError) as info:
        make_emulator(node_side=RecordingNodeSide(fail="start"))
    assert "start failed on purpose" in str(info.value)
