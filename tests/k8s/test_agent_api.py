"""terway-agent against a real kube-apiserver with its own ServiceAccount and the chart's RBAC:
start-up, mode selection from the Node's labels, the pod watch, permissions, shutdown."""

from __future__ import annotations

import time

import pytest

from k8s.kit import kind_docs, wait_for
from terway_agent.k8s._access import required_permissions

pytestmark = [pytest.mark.slow]


def test_agent_runs_with_its_service_account_and_least_privilege_rbac(twk8s_api, kenv_factory):
    env = kenv_factory(twk8s_api)
    env.pod("before-start")
    agent = env.agent()
    agent.start(timeout=30)
    # every permission of the chart's RBAC was checked, and nothing more was needed
    assert agent.lines("k8s.access.ok")[0]["checked"] == len(required_permissions(env.namespace)) == 12
    sel = agent.wait_line("mode.selected")[0]
    assert sel["mode"] == "example"
    assert sel["reason"] == "label terway.alibabacloud.com/network-mode=example"
    assert agent.conflist.exists()
    assert agent.lines("k8s.pod.added", pod=f"{env.namespace}/before-start")
    env.pod("after-start")
    agent.wait_line("k8s.pod.added", pod=f"{env.namespace}/after-start")
    env.core().delete_namespaced_pod("after-start", env.namespace, grace_period_seconds=0)
    agent.wait_line("k8s.pod.deleted", pod=f"{env.namespace}/after-start")
    # a pod of another node is not watched
    other = f"{env.node}-other"
    env.core().create_node({"metadata": {"name": other}})
    try:
        env.pod("elsewhere", node=other)
        env.pod("marker")
        agent.wait_line("k8s.pod.added", pod=f"{env.namespace}/marker")
        assert not agent.lines("k8s.pod.added", pod=f"{env.namespace}/elsewhere")
    finally:
        env.core().delete_node(other)
    started = time.monotonic()
    assert agent.stop(timeout=15) == 0
    took = time.monotonic() - started
    assert agent.lines("agent.shutdown.done")
    print(f"agent stopped {took:.2f}s after SIGTERM with idle watches")


def test_a_removed_permission_is_named_and_stops_the_agent(twk8s_api, kenv_factory):
    from kubernetes import client

    env = kenv_factory(twk8s_api)
    rbac = client.RbacAuthorizationV1Api(env.client())
    role = kind_docs(env.identity_docs, "ClusterRole")[0]
    name = role["metadata"]["name"]
    rules = [r for r in role["rules"] if r["resources"] != ["nodes/status"]]
    assert len(rules) == len(role["rules"]) - 1
    rbac.patch_cluster_role(name, {"rules": rules})
    authz = client.AuthorizationV1Api(env.api.api_client(token=env.token))

    def denied() -> bool:
        review = authz.create_self_subject_access_review(
            {"spec": {"resourceAttributes": {"verb": "patch", "resource": "nodes", "subresource": "status"}}}
        )
        return not review.status.allowed

    wait_for("the RBAC change to apply", denied)
    agent = env.agent()
    agent.start(wait=False)
    assert agent.exit_code(30) == 2
    log = agent.log()
    sa = f"system:serviceaccount:{env.namespace}:{env.release}"
    assert f"the Kubernetes API does not allow {sa} to: patch nodes/status" in log
    assert "rbac.yaml" in log
    assert not agent.accepts()

    # without the up-front check the first refused request names what was refused
    rules = [r for r in role["rules"] if r["resources"] != ["pods"]]
    rbac.patch_cluster_role(name, {"rules": rules})
    agent2 = env.agent(name="agent2", plugin_config={"kubernetes": {"check_permissions": False}})
    wait_for(
        "pods RBAC removed",
        lambda: (
            not authz.create_self_subject_access_review(
                {"spec": {"resourceAttributes": {"verb": "list", "resource": "pods"}}}
            ).status.allowed
        ),
    )
    agent2.start(wait=False)
    assert agent2.exit_code(30) == 2
    log2 = agent2.log()
    assert "the Kubernetes API refused to let terway-agent list pods (403 Forbidden)" in log2
    assert f'User "{sa}" cannot list resource "pods"' in log2


def test_an_ignored_node_is_not_managed(twk8s_api, kenv_factory):
    env = kenv_factory(twk8s_api, node_labels={"k8s.aliyun.com/ignore-by-terway": "true"})
    agent = env.agent()
    agent.start(wait=False)
    assert agent.exit_code(30) == 2
    assert f"node {env.node} is labelled k8s.aliyun.com/ignore-by-terway=true" in agent.log()
    assert not agent.conflist.exists()


def test_a_missing_node_fails_clearly(twk8s_api, kenv_factory):
    env = kenv_factory(twk8s_api)
    agent = env.agent(node_name="no-such-node", plugin_config={"kubernetes": {"start_timeout": 1}})
    agent.start(wait=False)
    assert agent.exit_code(30) == 2
    assert "node no-such-node does not exist in the Kubernetes API" in agent.log()
