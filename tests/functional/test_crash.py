"""kill -9 of the agent between and during requests: after a restart the state is
intact and consistent, nothing is lost, and no address is ever held by two pods."""

from __future__ import annotations

import random
import threading
import time
from typing import Any

import pytest

from .conftest import Agent, links_in

pytestmark = [pytest.mark.netns, pytest.mark.slow]


def host_links(agent: Agent) -> list[str]:
    return sorted(n for n in links_in(agent.node_ns) if n.startswith("exm"))


def assert_consistent(agent: Agent) -> None:
    """Store invariants: every owned lease belongs to a stored attachment; no two
    attachments hold one address; every ready attachment has its host veth."""
    atts = agent.attachments()
    leases = agent.leases()
    owners = {lease["owner"] for lease in leases if lease["owner"]}
    keys = {f"{a['container_id']}/{a['ifname']}" for a in atts}
    assert owners <= keys, f"leases owned by unknown attachments: {owners - keys}"
    ips = [ip for a in atts for ip in a["ips"]]
    assert len(ips) == len(set(ips)), f"an address is held twice: {ips}"
    owned = [lease["address"] for lease in leases if lease["owner"]]
    assert len(owned) == len(set(owned))
    # every ready attachment has its datapath: the example mode's host veth
    from terway_mode_example import host_ifname

    present = set(links_in(agent.node_ns))
    for a in atts:
        if a["state"] == "ready":
            assert host_ifname(a["container_id"], a["ifname"]) in present, f"{a['container_id']} lost its veth"


def background_add(agent: Agent, cid: str, ns: str, out: dict[str, Any]) -> threading.Thread:
    t = threading.Thread(target=lambda: out.__setitem__(cid, agent.cni("ADD", cid, netns_path=ns, pod=("default", cid))))
    t.start()
    return t


def test_kill_between_requests_loses_nothing(agent: Agent, make_pod_ns) -> None:
    pods = {f"keep{i}": make_pod_ns() for i in range(3)}
    results = {cid: agent.cni("ADD", cid, netns_path=ns, pod=("default", cid)).out for cid, ns in pods.items()}
    before = agent.attachments()
    agent.kill9()
    agent.start()
    assert agent.attachments() == before
    for cid, ns in pods.items():
        r = agent.cni("CHECK", cid, netns_path=ns, conf=agent.conf(prevResult=results[cid]))
        assert r.rc == 0, r.stdout
    new = agent.cni("ADD", "fresh", netns_path=make_pod_ns(), pod=("default", "fresh"))
    held = {ip for a in before for ip in a["ips"]}
    assert new.out["ips"][0]["address"].split("/")[0] not in held
    assert_consistent(agent)


@pytest.mark.parametrize("step", ["TW_SLOW_ALLOCATE", "TW_SLOW_SETUP"])
def test_kill_during_add_then_runtime_del_leaves_nothing(make_agent, make_pod_ns, step: str) -> None:
    a = make_agent(inline="slow_example", env={step: "3"})
    a.start()
    ns = make_pod_ns()
    out: dict[str, Any] = {}
    t = background_add(a, "mid1", ns, out)
    time.sleep(1.0)
    a.kill9()
    t.join()
    assert out["mid1"].rc == 1 and out["mid1"].code == 11, out["mid1"].stdout
    a.env[step] = "0"
    a.start()
    # the half-made attachment survived the crash: nothing is forgotten
    atts = a.attachments()
    assert [x["container_id"] for x in atts] == ["mid1"]
    assert atts[0]["state"] in ("allocating", "allocated")
    assert_consistent(a)
    # the runtime always follows a failed ADD with DEL
    r = a.cni("DEL", "mid1", netns_path=ns)
    assert r.rc == 0, r.stdout
    assert a.attachments() == []
    assert all(lease["owner"] is None for lease in a.leases())
    assert host_links(a) == []


def test_kill_during_add_then_retried_add_succeeds(make_agent, make_pod_ns) -> None:
    a = make_agent(inline="slow_example", env={"TW_SLOW_SETUP": "3"})
    a.start()
    ns = make_pod_ns()
    out: dict[str, Any] = {}
    t = background_add(a, "again1", ns, out)
    time.sleep(1.0)
    a.kill9()
    t.join()
    a.env["TW_SLOW_SETUP"] = "0"
    a.start()
    r = a.cni("ADD", "again1", netns_path=ns, pod=("default", "again1"))
    assert r.rc == 0, r.stdout
    atts = a.attachments()
    assert [(x["container_id"], x["state"]) for x in atts] == [("again1", "ready")]
    assert len(host_links(a)) == 1
    assert_consistent(a)


def test_half_made_attachment_whose_sandbox_is_gone_is_finished_at_start(make_agent, make_pod_ns) -> None:
    from terway_agent.datapath import netns

    a = make_agent(inline="slow_example", env={"TW_SLOW_SETUP": "3"})
    a.start()
    ns = make_pod_ns()
    out: dict[str, Any] = {}
    t = background_add(a, "orphan1", ns, out)
    time.sleep(1.0)
    a.kill9()
    t.join()
    netns.remove(ns.rsplit("/", 1)[-1])  # the runtime gave up on the sandbox
    a.env["TW_SLOW_SETUP"] = "0"
    a.start()
    assert a.attachments() == []
    assert all(lease["owner"] is None for lease in a.leases())
    assert host_links(a) == []


def test_random_kills_under_concurrent_adds_keep_every_invariant(make_agent, make_pod_ns) -> None:
    rng = random.Random(20261125)
    a = make_agent(inline="slow_example", env={"TW_SLOW_ALLOCATE": "0.2", "TW_SLOW_SETUP": "0.2"})
    a.start()
    all_pods: dict[str, str] = {}
    for rnd in range(3):
        pods = {f"r{rnd}p{i}": make_pod_ns() for i in range(6)}
        all_pods.update(pods)
        out: dict[str, Any] = {}
        threads = [background_add(a, cid, ns, out) for cid, ns in pods.items()]
        time.sleep(rng.uniform(0.05, 0.6))
        a.kill9()
        for t in threads:
            t.join()
        a.start()
        assert_consistent(a)
        for cid, ns in pods.items():
            if out[cid].rc != 0:
                assert a.cni("DEL", cid, netns_path=ns).rc == 0  # what the runtime does
        assert_consistent(a)
        ready = {x["container_id"] for x in a.attachments() if x["state"] == "ready"}
        succeeded = {cid for cid in pods if out[cid].rc == 0}
        assert succeeded <= ready, "an ADD answered OK was lost"
    for cid, ns in all_pods.items():
        assert a.cni("DEL", cid, netns_path=ns).rc == 0
    assert a.attachments() == []
    assert all(lease["owner"] is None for lease in a.leases())
    assert host_links(a) == []


def background(agent: Agent, out: dict[str, Any], key: str, *args: Any, **kw: Any) -> threading.Thread:
    t = threading.Thread(target=lambda: out.__setitem__(key, agent.cni(*args, **kw)))
    t.start()
    return t


@pytest.mark.parametrize("step", ["TW_SLOW_TEARDOWN", "TW_SLOW_RELEASE"])
def test_kill_during_del_then_repeated_del_finishes_it(make_agent, make_pod_ns, step: str) -> None:
    a = make_agent(inline="slow_example", env={step: "3"})
    a.start()
    keep_ns, ns = make_pod_ns(), make_pod_ns()
    assert a.cni("ADD", "stay1", netns_path=keep_ns, pod=("default", "stay1")).rc == 0
    assert a.cni("ADD", "gone1", netns_path=ns, pod=("default", "gone1")).rc == 0
    out: dict[str, Any] = {}
    t = background(a, out, "del", "DEL", "gone1", netns_path=ns)
    time.sleep(1.0)
    a.kill9()
    t.join()
    assert out["del"].rc == 1 and out["del"].code == 11, out["del"].stdout
    a.env[step] = "0"
    a.start()
    assert_consistent(a)
    # whatever the restart finished, the runtime's repeated DEL completes it and frees the address
    assert a.cni("DEL", "gone1", netns_path=ns).rc == 0
    atts = a.attachments()
    assert [(x["container_id"], x["state"]) for x in atts] == [("stay1", "ready")]
    assert [lease["owner"] for lease in a.leases() if lease["owner"]] == ["stay1/eth0"]
    from terway_mode_example import host_ifname

    assert host_links(a) == [host_ifname("stay1", "eth0")]
    assert_consistent(a)


def test_kill_during_gc_then_gc_again_finishes_it(make_agent, make_pod_ns) -> None:
    a = make_agent(inline="slow_example", env={"TW_SLOW_RELEASE": "3"})
    a.start()
    pods = {f"gck{i}": make_pod_ns() for i in range(3)}
    for cid, ns in pods.items():
        assert a.cni("ADD", cid, netns_path=ns, pod=("default", cid)).rc == 0
    valid = {"cni.dev/valid-attachments": [{"containerID": "gck0", "ifname": "eth0"}]}
    out: dict[str, Any] = {}
    t = background(a, out, "gc", "GC", conf=a.conf("1.1.0", **valid))
    time.sleep(1.0)
    a.kill9()
    t.join()
    assert out["gc"].rc == 1
    a.env["TW_SLOW_RELEASE"] = "0"
    a.start()
    assert_consistent(a)
    assert a.cni("GC", conf=a.conf("1.1.0", **valid)).rc == 0
    assert [x["container_id"] for x in a.attachments()] == ["gck0"]
    assert [lease["owner"] for lease in a.leases() if lease["owner"]] == ["gck0/eth0"]
    from terway_mode_example import host_ifname

    assert host_links(a) == [host_ifname("gck0", "eth0")]
    assert_consistent(a)
