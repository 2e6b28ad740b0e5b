"""What ADD asks of and tells the API: pod lookups, the pod-ips annotation, pod events, ignored
pods, and releasing attachments of pods that vanished from the API without a DEL.

The agent runs the example mode in a node network namespace and reaches the apiserver through a
relay on that namespace's loopback; ADD and DEL go through the real ``terway`` executable.
"""

from __future__ import annotations

import re
import subprocess
import time
from collections.abc import Iterator

import pytest

from k8s.kit import Forwarder, events_for, sfx, wait_for
from terway_agent.datapath import netns

pytestmark = [pytest.mark.slow, pytest.mark.netns]


@pytest.fixture
def node_ns() -> Iterator[str]:
    name = f"twk8sn{sfx()}"
    netns.create(name)
    subprocess.run(["ip", "netns", "exec", name, "ip", "link", "set", "lo", "up"], check=True)
    yield name
    netns.remove(name)


@pytest.fixture
def pod_netns() -> Iterator:
    made: list[str] = []

    def make() -> str:
        name = f"twk8sp{sfx()}"
        netns.create(name)
        made.append(name)
        return netns.netns_path(name)

    yield make
    for name in made:
        netns.remove(name)


def _args(namespace: str, pod, cid: str) -> dict[str, str]:
    return {
        "CNI_ARGS": f"IgnoreUnknown=1;K8S_POD_NAMESPACE={namespace};K8S_POD_NAME={pod.metadata.name};"
        f"K8S_POD_INFRA_CONTAINER_ID={cid};K8S_POD_UID={pod.metadata.uid}"
    }


def test_add_annotates_the_pod_records_events_and_vanished_pods_are_released(
    twk8s_api, kenv_factory, node_ns, pod_netns
):
    # one usable address (a /30 keeps its first host for the node): a second pod must wait for it
    env = kenv_factory(twk8s_api, eni_conf={"max_pool_size": 5, "ip_reuse_cooldown": "0s"})
    fwd = Forwarder(("127.0.0.1", twk8s_api.port), netns=node_ns)
    try:
        agent = env.agent(
            node_ns=node_ns,
            kubeconfig=env.kubeconfig(port=fwd.port, name="in-node"),
            gc_interval=1.0,
            plugin_config={"example": {"subnet": "10.251.7.0/30"}},
        )
        agent.start(timeout=30)
        core = env.core()
        ns = env.namespace

        # ADD: the pod-ips annotation and an AllocIPSucceed event with the time it took
        web = env.pod("web", annotations={"k8s.aliyun.com/pod-networking": "plane-a"})
        r = agent.cni("ADD", "cid-web", netns_path=pod_netns(), env=_args(ns, web, "cid-web"))
        assert r.rc == 0, r.stderr
        ip = r.out["ips"][0]["address"].split("/")[0]
        assert ip == "10.251.7.2"
        got = wait_for(
            "the pod-ips annotation",
            lambda: (core.read_namespaced_pod("web", ns).metadata.annotations or {}).get(
                "k8s.aliyun.com/pod-ips"
            ),
        )
        assert got == ip
        ev = wait_for("AllocIPSucceed", lambda: events_for(core, ns, "web", "AllocIPSucceed"))[0]
        assert ev.type == "Normal"
        assert re.fullmatch(rf"Alloc IP {re.escape(ip)} took \d+\.\d{{3}}s", ev.message), ev.message
        assert ev.involved_object.uid == web.metadata.uid
        assert ev.source.host == env.node

        # an ignored pod is refused with the label named, and nothing is written about it
        ign = env.pod("ignored", labels={"k8s.aliyun.com/ignore-by-terway": "true"})
        r = agent.cni("ADD", "cid-ign", netns_path=pod_netns(), env=_args(ns, ign, "cid-ign"))
        assert r.rc != 0 and r.out["code"] == 104, r.out
        assert "labelled k8s.aliyun.com/ignore-by-terway=true" in r.out["msg"]
        assert not events_for(core, ns, "ignored")

        # the only address is taken: AllocIPFailed on the second pod
        second = env.pod("second")
        second_ns = pod_netns()
        r = agent.cni("ADD", "cid-second", netns_path=second_ns, env=_args(ns, second, "cid-second"))
        assert r.rc != 0 and r.out["code"] == 101, r.out
        failed = wait_for("AllocIPFailed", lambda: events_for(core, ns, "second", "AllocIPFailed"))[0]
        assert failed.type == "Warning" and "no free address in 10.251.7.0/30" in failed.message

        # "web" vanishes from the API without a DEL (its node was lost, say): the periodic GC
        # releases its attachment once the pod is gone on two passes -- and the address is free again
        core.delete_namespaced_pod("web", ns, grace_period_seconds=0)
        removed = agent.wait_line("gc.attachment.removed", timeout=30)
        assert removed[0]["container"] == "cid-web"
        assert not [a for a in agent.attachments() if a["container_id"] == "cid-web"]
        r = agent.cni("ADD", "cid-second", netns_path=second_ns, env=_args(ns, second, "cid-second"))
        assert r.rc == 0, r.out
        assert r.out["ips"][0]["address"] == "10.251.7.2/32"

        # a pod that still exists keeps its attachment through GC passes (gc_interval is 1 s)
        time.sleep(3.5)
        assert [a for a in agent.attachments() if a["container_id"] == "cid-second"]
        assert len(agent.lines("gc.attachment.removed")) == 1
        assert agent.cni("DEL", "cid-second", netns_path=second_ns, env=_args(ns, second, "cid-second")).rc == 0

        # a static pod: its sandbox carries the kubelet's config hash as K8S_POD_UID, the
        # API's mirror pod has its own UID and the hash in kubernetes.io/config.mirror --
        # it is alive, not "re-created under a new UID"
        env.pod("static-0", annotations={"kubernetes.io/config.mirror": "0f1e2d3c4b5a69788796a5b4c3d2e1f0"})
        static_ns = pod_netns()
        static_args = {"CNI_ARGS": f"IgnoreUnknown=1;K8S_POD_NAMESPACE={ns};K8S_POD_NAME=static-0;"
                       "K8S_POD_UID=0f1e2d3c4b5a69788796a5b4c3d2e1f0"}
        r = agent.cni("ADD", "cid-static", netns_path=static_ns, env=static_args)
        assert r.rc == 0, r.out
        time.sleep(3.5)
        assert [a for a in agent.attachments() if a["container_id"] == "cid-static"]
        assert len(agent.lines("gc.attachment.removed")) == 1
        assert not agent.lines("agent.periodic.failed")
        r = agent.cni("DEL", "cid-static", netns_path=static_ns, env=static_args)
        assert r.rc == 0, r.stderr
        assert agent.stop() == 0
    finally:
        fwd.close()
