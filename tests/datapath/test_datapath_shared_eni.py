"""The shared-ENI topology of terway-facts.md built with plan types, with real packets.

pod (eth0 /32, default via 169.254.1.1 onlink, PERMANENT neighbour) -> host veth
-> node (rules 512/2048, table 1000+ENI ifindex: default via the vSwitch gateway onlink)
-> "ENI" eth1 -> VPC namespace (gateway address, /32 routes back to each pod IP).
"""

from __future__ import annotations

import os
import subprocess
import time

import pytest
import trio
from twdp_topology import GATEWAY4  # tests/datapath is on sys.path

from terway_agent import datapath as dp
from terway_agent.datapath import _probe, netns
from terway_agent.datapath._reference import eni_table
from terway_agent.errors import DatapathError, NotFound

pytestmark = pytest.mark.netns

POD1 = "192.168.0.10"
POD2 = "192.168.0.11"


def _ip(*args: str) -> None:
    """Change the kernel behind the executor's back with iproute2."""
    subprocess.run(["ip", *args], check=True, capture_output=True)


def test_pod_reaches_gateway_and_other_pod(shared_eni):
    pod1, plan1 = shared_eni.add_pod("p1", POD1)
    pod2, plan2 = shared_eni.add_pod("p2", POD2)
    r1 = dp.apply(plan1)
    r2 = dp.apply(plan2)
    for report in (r1, r2):
        assert not report.unchanged
        # everything is new except the pod's loopback, which existed (down)
        assert [o.describe().split(" in ")[0] for o in report.changed] == ["link lo up"]

    # pod -> vSwitch gateway (leaves through the ENI, answered by the VPC namespace)
    assert _probe.ping(pod1, GATEWAY4, src=POD1) > 0
    with _probe.tcp_echo_server(shared_eni.vpc, GATEWAY4) as (_ip, port):
        assert _probe.tcp_echo(pod1, GATEWAY4, port) == f"hello from {POD1}\n"
    # pod -> pod on the same node (rule 512 -> main -> /32 dev cali...)
    assert _probe.ping(pod1, POD2) > 0
    assert _probe.ping(pod2, POD1) > 0
    with _probe.tcp_echo_server(pod2, POD2) as (_ip, port):
        assert _probe.tcp_echo(pod1, POD2, port) == f"hello from {POD1}\n"


def test_apply_twice_changes_nothing(shared_eni, snapshot):
    pod, plan = shared_eni.add_pod("tw", POD1)
    first = dp.apply(plan)
    assert first.changed_anything
    before = {ns: snapshot(ns) for ns in (shared_eni.node, pod)}
    second = dp.apply(plan)
    after = {ns: snapshot(ns) for ns in (shared_eni.node, pod)}
    assert second.unchanged == plan.objects
    assert not second.created and not second.changed and not second.changed_anything
    assert after == before
    assert dp.check(plan) == []
    # the node plan was applied by the fixture: applying it again changes nothing either
    assert dp.apply(shared_eni.node_plan).unchanged == shared_eni.node_plan.objects


def test_check_reports_exactly_what_was_deleted(shared_eni):
    pod, plan = shared_eni.add_pod("ck", POD1)
    dp.apply(plan)
    node = os.path.basename(shared_eni.node)
    table = eni_table(shared_eni.eni_index)
    _ip("-n", node, "route", "del", f"{POD1}/32", "table", "main")
    _ip("-n", node, "rule", "del", "pref", "2048", "from", POD1, "lookup", str(table))
    problems = dp.check(plan)
    assert sorted(p.object.kind for p in problems) == ["route", "rule"]
    assert all(p.state == "missing" for p in problems)
    texts = " | ".join(p.description for p in problems)
    assert f"route {POD1}/32 dev" in texts and "rule 2048: from 192.168.0.10/32" in texts

    repaired = dp.apply(plan)
    assert sorted(o.kind for o in repaired.created) == ["route", "rule"]
    assert not repaired.changed
    assert dp.check(plan) == []
    assert _probe.ping(pod, GATEWAY4) > 0


def test_check_reports_different_objects(shared_eni):
    pod, plan = shared_eni.add_pod("df", POD1)
    dp.apply(plan)
    name = os.path.basename(pod)
    _ip(
        "-n",
        name,
        "neigh",
        "replace",
        "169.254.1.1",
        "lladdr",
        "02:00:00:00:00:99",
        "dev",
        "eth0",
        "nud",
        "permanent",
    )
    _ip("-n", name, "route", "replace", "default", "via", "169.254.1.2", "dev", "eth0", "onlink")
    problems = dp.check(plan)
    assert {p.object.kind for p in problems} == {"neighbour", "route"}
    assert all(p.state == "different" for p in problems)
    assert any("gateway is 169.254.1.2, expected 169.254.1.1" in p.description for p in problems)
    assert any("has lladdr 02:00:00:00:00:99" in p.description for p in problems)
    fixed = dp.apply(plan)
    assert {o.kind for o in fixed.changed} == {"neighbour", "route"}
    assert dp.check(plan) == []
    assert _probe.ping(pod, GATEWAY4) > 0


def test_remove_twice_is_success(shared_eni, snapshot):
    node_before = snapshot(shared_eni.node)
    pod, plan = shared_eni.add_pod("rm", POD1)
    dp.apply(plan)
    first = dp.remove(plan)
    assert {o.kind for o in first.removed} == {"veth", "rule"}
    assert {o.kind for o in first.implied} == {"address", "neighbour", "route"}
    assert {o.kind for o in first.kept} == {"link_state"}
    assert snapshot(shared_eni.node) == node_before
    assert [lk[1] for lk in snapshot(pod)["links"]] == ["lo"]

    second = dp.remove(plan)
    assert not second.removed and not second.implied
    assert len(second.absent) + len(second.kept) == len(plan)
    assert snapshot(shared_eni.node) == node_before


def test_remove_after_pod_netns_is_gone(shared_eni, snapshot):
    node_before = snapshot(shared_eni.node)
    pod, plan = shared_eni.add_pod("gone", POD1)
    dp.apply(plan)
    netns.remove(pod)  # the runtime deleted the sandbox first: the veth dies with it
    host_veth = plan.objects[0].name
    deadline = time.monotonic() + 10
    while dp.get_link(host_veth, shared_eni.node) is not None:  # namespace teardown is asynchronous
        assert time.monotonic() < deadline, "the kernel did not destroy the namespace's veth"
        time.sleep(0.02)
    report = dp.remove(plan)
    assert {o.kind for o in report.removed} == {"rule"}  # the rules stay on the node until we remove them
    assert snapshot(shared_eni.node) == node_before
    assert not dp.remove(plan).removed


def test_veth_of_a_newer_sandbox_is_left_alone(shared_eni):
    old_pod, old_plan = shared_eni.add_pod("old", POD1)
    dp.apply(old_plan)
    new_pod = shared_eni.make_netns("new")
    # same pod name -> same host veth name, new sandbox namespace
    new_plan = dp.Plan(tuple(_replace_netns(o, old_pod, new_pod) for o in old_plan.objects))
    report = dp.apply(new_plan)
    # the stale pair was replaced; the new sandbox's loopback was brought up
    assert [(o.kind, getattr(o, "name", None)) for o in report.changed] == [
        ("veth", old_plan.objects[0].name),
        ("link_state", "lo"),
    ]
    assert _probe.ping(new_pod, GATEWAY4) > 0

    # A late DEL of the old sandbox, done right: only what the new plan lacks.
    pruned = dp.prune(old_plan, new_plan)
    assert {o.kind for o in pruned.removed} == set()  # the old pod namespace's objects went with it
    assert dp.check(new_plan) == []
    assert _probe.ping(new_pod, GATEWAY4) > 0

    # Even a blunt remove of the old plan leaves the new sandbox's veth alone...
    late_del = dp.remove(old_plan)
    assert "veth" in {o.kind for o in late_del.absent}
    assert ("link", shared_eni.node, old_plan.objects[0].name) not in {o.key for o in late_del.removed}
    # ...but the rules have the same identity in both plans, so they went: that
    # is why a DEL superseded by a newer plan must prune, not remove.
    assert {p.object.kind for p in dp.check(new_plan)} == {"rule", "route"}
    assert {o.kind for o in dp.apply(new_plan).created} == {"rule", "route"}
    assert _probe.ping(new_pod, GATEWAY4) > 0


def _replace_netns(o: dp.PlanObject, old: str, new: str) -> dp.PlanObject:
    data = o.to_dict()
    for key in ("netns", "peer_netns"):
        if data.get(key) == old:
            data[key] = new
    return dp.PlanObject.from_dict(data)


def test_prune_drops_only_what_the_new_plan_lacks(shared_eni, snapshot):
    pod, old = shared_eni.add_pod("pr", POD1)
    dp.apply(old)
    new = dp.Plan(tuple(_replace_ip(o, POD1, POD2) for o in old.objects))
    shared_eni.add_pod("unused", POD2)  # teaches the VPC the new IP
    dp.apply(new)
    report = dp.prune(old, new)
    assert {o.kind for o in report.removed} == {"rule", "route", "address"}
    assert not report.implied  # the veth stays (same identity in both plans)
    assert dp.check(new) == []
    rules = snapshot(shared_eni.node)["rules"]
    assert not any(POD1 in (r[2], r[4]) for r in rules)
    assert _probe.ping(pod, GATEWAY4, src=POD2) > 0


def _replace_ip(o: dp.PlanObject, old: str, new: str) -> dp.PlanObject:
    data = o.to_dict()
    for key in ("address", "dst", "src"):
        if isinstance(data.get(key), str) and data[key].startswith(old + "/"):
            data[key] = new + data[key][len(old) :]
    return dp.PlanObject.from_dict(data)


def test_plan_survives_json_and_a_restart(shared_eni):
    pod, plan = shared_eni.add_pod("js", POD1)
    dp.apply(plan)
    stored = plan.to_json()
    replayed = dp.Plan.from_json(stored)
    assert replayed == plan
    assert dp.check(replayed) == []
    assert dp.apply(replayed).unchanged == plan.objects
    assert dp.remove(replayed).removed


def test_ipv6_dual_stack(shared_eni):
    vpc_v6 = "2408:4000::1"
    dp.apply(dp.Plan((dp.Address(dev="lo", address=f"{vpc_v6}/128", netns=shared_eni.vpc),)))
    pod1, plan1 = shared_eni.add_pod("v61", POD1, ip6="2408:4000::10")
    pod2, plan2 = shared_eni.add_pod("v62", POD2, ip6="2408:4000::11")
    dp.apply(plan1)
    dp.apply(plan2)
    assert dp.apply(plan1).unchanged == plan1.objects
    assert _probe.ping(pod1, "2408:4000::11", timeout=3) > 0
    assert _probe.ping(pod1, vpc_v6, src="2408:4000::10", timeout=3) > 0
    with _probe.tcp_echo_server(pod2, "2408:4000::11") as (_ip, port):
        assert _probe.tcp_echo(pod1, "2408:4000::11", port) == "hello from 2408:4000::10\n"
    assert dp.check(plan1) == []


async def test_async_wrappers(shared_eni):
    pod, plan = shared_eni.add_pod("as", POD1)
    limiter = trio.CapacityLimiter(2)
    report = await dp.apply_async(plan, limiter=limiter)
    assert report.created
    assert await dp.check_async(plan, limiter=limiter) == []
    removed = await dp.remove_async(plan, limiter=limiter)
    assert removed.removed


def test_errors_name_device_netns_and_errno(shared_eni):
    pod = shared_eni.make_netns("err")
    missing_dev = dp.Plan((dp.Address(dev="eth9", address="10.1.1.1/32", netns=pod),))
    with pytest.raises(NotFound) as info:
        dp.apply(missing_dev)
    assert info.value.details["device"] == "eth9"
    assert "eth9" in str(info.value) and pod in str(info.value)

    # the peer name is taken in the pod namespace by something that is not our veth
    dp.apply(dp.Plan((dp.Veth(name="twdpx0", peer_name="twdpx1", peer_netns=pod, netns=pod),)))
    clash = dp.Plan((dp.Veth(name="twdpclash", netns=shared_eni.node, peer_name="twdpx1", peer_netns=pod),))
    with pytest.raises(DatapathError) as err:
        dp.apply(clash)
    assert err.value.details["errno"] == 17
    assert err.value.details["device"] == "twdpx1"
    assert "already exists" in str(err.value)

    gone = dp.Plan((dp.Address(dev="eth0", address="10.1.1.1/32", netns="/run/netns/twdp-does-not-exist"),))
    with pytest.raises(NotFound):
        dp.apply(gone)
    assert dp.remove(gone).absent == gone.objects


async def test_concurrent_pods_from_worker_threads(shared_eni):
    """Eight pods applied and removed concurrently through a limiter of four worker threads."""
    pods = [shared_eni.add_pod(f"c{i}", f"192.168.0.{40 + i}") for i in range(8)]
    limiter = trio.CapacityLimiter(4)
    reports: list[dp.ApplyReport] = []

    async def one(plan: dp.Plan) -> None:
        reports.append(await dp.apply_async(plan, limiter=limiter))

    async with trio.open_nursery() as nursery:
        for _pod, plan in pods:
            nursery.start_soon(one, plan)
    assert len(reports) == 8 and all(r.created and not r.unchanged for r in reports)
    for _pod, plan in pods:
        assert dp.check(plan) == []
    assert _probe.ping(pods[0][0], "192.168.0.47") > 0
    assert _probe.ping(pods[7][0], GATEWAY4) > 0

    async def gone(plan: dp.Plan) -> None:
        await dp.remove_async(plan, limiter=limiter)

    async with trio.open_nursery() as nursery:
        for _pod, plan in pods:
            nursery.start_soon(gone, plan)
    assert all(dp.remove(plan).removed == () for _pod, plan in pods)


def test_a_stale_route_for_a_reused_ip_is_taken_over(shared_eni):
    """A leftover host route for the pod IP on another device (an old pod's) is replaced, not duplicated."""
    pod, plan = shared_eni.add_pod("st", POD1)
    node = os.path.basename(shared_eni.node)
    _ip("-n", node, "route", "add", f"{POD1}/32", "dev", "eth1", "scope", "link")
    report = dp.apply(plan)
    host_route = next(o for o in plan if o.kind == "route" and o.netns == shared_eni.node)
    assert host_route in report.changed  # EEXIST on the fresh veth -> observed -> replaced
    assert dp.check(plan) == []
    assert _probe.ping(pod, GATEWAY4) > 0
