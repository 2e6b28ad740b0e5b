"""The pod watch survives a kube-apiserver restart and a 410 Gone without processing any pod twice."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from lane import ApiServer

from k8s.kit import Forwarder

pytestmark = [pytest.mark.slow]


@pytest.fixture
def private_api(twk8s_art) -> Iterator[ApiServer]:
    """An apiserver of this test alone (it is restarted)."""
    api = ApiServer.start(twk8s_art)
    try:
        yield api
    finally:
        api.stop()


def _per_pod(agent, event: str, namespace: str) -> dict[str, int]:
    counts: dict[str, int] = {}
    for rec in agent.lines(event):
        if rec["pod"].startswith(f"{namespace}/"):
            counts[rec["pod"].split("/", 1)[1]] = counts.get(rec["pod"].split("/", 1)[1], 0) + 1
    return counts


def test_watch_resumes_after_an_apiserver_restart_without_reprocessing(private_api, kenv_factory):
    env = kenv_factory(private_api)
    for i in range(3):
        env.pod(f"p{i}")
    agent = env.agent()
    agent.start(timeout=30)
    for i in range(3):
        agent.wait_line("k8s.pod.added", pod=f"{env.namespace}/p{i}")

    down = private_api.restart_apiserver(down_for=1.0)
    print(f"kube-apiserver was unavailable for {down:.1f}s")
    core = env.core()  # a fresh client: the old connections died with the apiserver
    env.pod("p3")
    core.delete_namespaced_pod("p0", env.namespace, grace_period_seconds=0)
    core.patch_namespaced_pod("p1", env.namespace, {"metadata": {"labels": {"touched": "yes"}}})
    agent.wait_line("k8s.pod.added", pod=f"{env.namespace}/p3", timeout=60)
    agent.wait_line("k8s.pod.deleted", pod=f"{env.namespace}/p0", timeout=60)

    # the watches noticed the restart and came back without a restart of the agent
    assert agent.lines("k8s.watch.resumed", resource="pods") or agent.lines(
        "k8s.relist.done", resource="pods"
    )
    assert _per_pod(agent, "k8s.pod.added", env.namespace) == {"p0": 1, "p1": 1, "p2": 1, "p3": 1}
    assert _per_pod(agent, "k8s.pod.deleted", env.namespace) == {"p0": 1}
    relisted = agent.lines("k8s.relist.done", resource="pods")
    assert all(r["changes"] <= 2 for r in relisted)  # a re-list delivers only the difference
    assert agent.accepts()
    assert agent.stop() == 0


def test_410_gone_relists_and_delivers_only_the_difference(twk8s_compacting_api, kenv_factory):
    api = twk8s_compacting_api
    env = kenv_factory(api)
    fwd = Forwarder(("127.0.0.1", api.port))
    try:
        env.pod("p0")
        env.pod("p1")
        agent = env.agent(kubeconfig=env.kubeconfig(port=fwd.port, name="via-forwarder"))
        agent.start(timeout=30)
        agent.wait_line("k8s.pod.added", pod=f"{env.namespace}/p1")

        # cut the agent off; the cluster moves on and etcd compacts past the agent's resourceVersion
        fwd.block()
        core = env.core()
        env.pod("p2")
        core.delete_namespaced_pod("p0", env.namespace, grace_period_seconds=0)
        for i in range(6):
            core.create_namespaced_config_map(env.namespace, {"metadata": {"name": f"churn-{i}"}})
            time.sleep(0.5)
        fwd.unblock()

        expired = agent.wait_line("k8s.watch.expired", resource="pods", timeout=60)
        assert "410" in expired[0]["error"]
        relist = agent.wait_line("k8s.relist.done", resource="pods", timeout=60)[0]
        assert relist["objects"] == 2  # p1, p2
        assert relist["changes"] == 2  # p2 added, p0 deleted -- p1 is not delivered again
        agent.wait_line("k8s.pod.deleted", pod=f"{env.namespace}/p0")
        assert _per_pod(agent, "k8s.pod.added", env.namespace) == {"p0": 1, "p1": 1, "p2": 1}
        assert _per_pod(agent, "k8s.pod.deleted", env.namespace) == {"p0": 1}
        # and it keeps watching from the new list
        env.pod("p3")
        agent.wait_line("k8s.pod.added", pod=f"{env.namespace}/p3")
        assert agent.stop() == 0
    finally:
        fwd.close()


def test_bookmarks_advance_the_resource_version_without_a_relist(twk8s_api, kenv_factory):
    """Writes the agent's pod watch filters out (another node's pods) still move its
    resourceVersion: the apiserver's bookmark (sent shortly before the watch's timeout) carries
    it, and the next watch resumes from there -- no re-list, no event delivered."""
    env = kenv_factory(twk8s_api)
    agent = env.agent(log_level="debug", plugin_config={"kubernetes": {"watch_timeout": 4}})
    agent.start(timeout=30)
    listed = int(agent.wait_line("k8s.list.done", resource="pods")[0]["rv"])
    other = f"{env.node}-other"
    env.core().create_node({"metadata": {"name": other}})
    try:
        latest = max(int(env.pod(f"elsewhere-{i}", node=other).metadata.resource_version) for i in range(3))
        assert latest > listed

        def resumed_past_them() -> list[int]:
            return [
                r
                for r in (int(x["rv"]) for x in agent.lines("k8s.watch.started", resource="pods"))
                if r >= latest
            ]

        deadline = time.monotonic() + 30
        while not resumed_past_them():
            assert time.monotonic() < deadline, (
                f"the pod watch never resumed from resourceVersion >= {latest}: "
                f"{[x['rv'] for x in agent.lines('k8s.watch.started', resource='pods')]}"
            )
            time.sleep(0.2)
        assert not agent.lines("k8s.relist.done", resource="pods")
        assert not agent.lines("k8s.watch.expired")
        assert not [r for r in agent.lines("k8s.pod.added") if "/elsewhere-" in r["pod"]]
        assert agent.stop() == 0
    finally:
        env.core().delete_node(other)
