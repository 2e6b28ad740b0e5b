"""Least privilege: the agent's RBAC (chart and plain manifests) grants exactly the requests
``terway_agent/k8s`` makes -- ``required_permissions()`` -- and the real apiserver refuses the
agent's ServiceAccount everything else it was asked about."""

from __future__ import annotations

import ast
import re

import pytest
import yaml

from k8s.kit import ROOT, chart, kind_docs
from terway_agent.k8s._access import required_permissions

K8S_PKG = ROOT / "terway_agent" / "k8s"
MANIFEST = ROOT / "deploy" / "manifests" / "terway-agent.yaml"

# (verb, "resource[/subresource]", namespace or "" for cluster-wide)
Grant = tuple[str, str, str]


def _required(namespace: str) -> set[Grant]:
    out = set()
    for p in required_permissions(namespace):
        res = f"{p.resource}/{p.subresource}" if p.subresource else p.resource
        out.add((p.verb, res, p.namespace))
    return out


def _granted(docs: list[dict], namespace: str) -> set[Grant]:
    """What the rendered ClusterRole(s) and Role(s) grant, expanded to single (verb, resource)
    pairs; anything but plain core-group rules (wildcards, other groups, resourceNames,
    nonResourceURLs) fails the test, since it cannot be compared -- and is more than needed."""
    out: set[Grant] = set()
    roles = kind_docs(docs, "ClusterRole", "Role")
    assert {r["kind"] for r in roles} == {"ClusterRole", "Role"}, roles
    for role in roles:
        scope = "" if role["kind"] == "ClusterRole" else role["metadata"]["namespace"]
        if scope:
            assert scope == namespace, role["metadata"]
        for rule in role["rules"]:
            assert set(rule) == {"apiGroups", "resources", "verbs"}, rule
            assert rule["apiGroups"] == [""], rule
            for res in rule["resources"]:
                for verb in rule["verbs"]:
                    assert "*" not in (res, verb), rule
                    out.add((verb, res, scope))
    return out


def _bindings_point_at_the_roles(docs: list[dict], namespace: str) -> None:
    sa = kind_docs(docs, "ServiceAccount")[0]["metadata"]["name"]
    for kind, role_kind in (("ClusterRoleBinding", "ClusterRole"), ("RoleBinding", "Role")):
        (binding,) = kind_docs(docs, kind)
        (role,) = kind_docs(docs, role_kind)
        assert binding["roleRef"] == {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": role_kind,
            "name": role["metadata"]["name"],
        }
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": sa, "namespace": namespace}]


def test_the_chart_and_the_manifests_grant_exactly_the_required_permissions():
    for namespace, release in (("kube-system", "terway-agent"), ("net", "tw")):
        docs = chart(namespace, release).documents()
        assert _granted(docs, namespace) == _required(namespace), (namespace, release)
        _bindings_point_at_the_roles(docs, namespace)
    docs = [d for d in yaml.safe_load_all(MANIFEST.read_text()) if d]
    assert _granted(docs, "kube-system") == _required("kube-system")
    _bindings_point_at_the_roles(docs, "kube-system")


_VERBS = {
    "read": "get",
    "list": "list",
    "patch": "patch",
    "create": "create",
    "replace": "update",
    "delete": "delete",
}


def _client_calls() -> set[str]:
    """Every ``<kube>.core.<method>`` / ``<kube>.authz.<method>`` named in terway_agent/k8s."""
    names = set()
    for path in sorted(K8S_PKG.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, (ast.Name, ast.Attribute))
                and (node.value.id if isinstance(node.value, ast.Name) else node.value.attr)
                in ("core", "authz")
                and not node.attr.startswith("_")
            ):
                names.add(node.attr)
    return names


def _as_grants(method: str, namespace: str) -> set[Grant]:
    m = re.fullmatch(
        r"(read|list|patch|create|replace|delete)_(namespaced_)?(\w+?)(_status)?(_for_all_namespaces)?",
        method,
    )
    assert m, f"cannot tell which permission {method} needs: extend this test"
    verb, kind, status = _VERBS[m.group(1)], m.group(3), m.group(4)
    resource = kind.replace("_", "") + "s"
    if status:
        resource += "/status"
    scope = namespace if resource == "configmaps" else ""
    # a list function is what the informers watch with too (Informer(list_fn) -> watch=True)
    verbs = (verb, "watch") if verb == "list" else (verb,)
    return {(v, resource, scope) for v in verbs}


def test_required_permissions_are_the_requests_the_code_makes():
    calls = _client_calls()
    # found by the same walk: a sanity check that it sees the calls at all
    assert {"list_node", "patch_node_status", "read_namespaced_pod", "create_namespaced_event"} <= calls
    calls.discard("create_self_subject_access_review")  # every identity may (system:basic-user)
    needed: set[Grant] = set()
    for method in calls:
        needed |= _as_grants(method, "ns")
    assert needed == _required("ns")


# Asked as the agent's ServiceAccount; every one must be refused.
DENIED = [
    {"verb": "get", "resource": "secrets"},
    {"verb": "list", "resource": "secrets"},
    {"verb": "get", "resource": "secrets", "namespace": "@NS@"},
    {"verb": "delete", "resource": "pods"},
    {"verb": "delete", "resource": "pods", "namespace": "@NS@"},
    {"verb": "create", "resource": "pods", "namespace": "@NS@"},
    {"verb": "update", "resource": "pods", "namespace": "@NS@"},
    {"verb": "create", "resource": "pods", "subresource": "exec", "namespace": "@NS@"},
    {"verb": "patch", "resource": "pods", "subresource": "status", "namespace": "@NS@"},
    {"verb": "get", "resource": "nodes"},
    {"verb": "update", "resource": "nodes"},
    {"verb": "delete", "resource": "nodes"},
    {"verb": "create", "resource": "nodes"},
    {"verb": "update", "resource": "nodes", "subresource": "status"},
    {"verb": "get", "resource": "configmaps", "namespace": "@NS@"},
    {"verb": "update", "resource": "configmaps", "namespace": "@NS@"},
    {"verb": "patch", "resource": "configmaps", "namespace": "@NS@"},
    {"verb": "create", "resource": "configmaps", "namespace": "@NS@"},
    {"verb": "delete", "resource": "configmaps", "namespace": "@NS@"},
    {"verb": "list", "resource": "configmaps"},
    {"verb": "list", "resource": "configmaps", "namespace": "default"},
    {"verb": "watch", "resource": "configmaps", "namespace": "kube-system"},
    {"verb": "delete", "resource": "events", "namespace": "@NS@"},
    {"verb": "list", "resource": "events"},
    {"verb": "create", "resource": "serviceaccounts", "subresource": "token", "namespace": "@NS@"},
    {"verb": "list", "resource": "podnetworkings", "group": "network.alibabacloud.com"},
    {"verb": "update", "resource": "clusterroles", "group": "rbac.authorization.k8s.io"},
    {"verb": "bind", "resource": "clusterroles", "group": "rbac.authorization.k8s.io"},
    {"verb": "impersonate", "resource": "users"},
    {"verb": "list", "resource": "daemonsets", "group": "apps"},
]


@pytest.mark.slow
def test_the_agents_service_account_may_do_what_is_required_and_nothing_else(twk8s_api, kenv_factory):
    from kubernetes import client

    env = kenv_factory(twk8s_api)
    authz = client.AuthorizationV1Api(env.api.api_client(token=env.token))

    def allowed(attrs: dict[str, str]) -> bool:
        review = authz.create_self_subject_access_review({"spec": {"resourceAttributes": attrs}})
        return bool(review.status.allowed)

    for p in required_permissions(env.namespace):
        attrs = {"verb": p.verb, "resource": p.resource, "group": ""}
        if p.subresource:
            attrs["subresource"] = p.subresource
        if p.namespace:
            attrs["namespace"] = p.namespace
        assert allowed(attrs), f"the chart's RBAC does not grant {p.describe()}"

    granted = [
        a
        for a in ({k: (v.replace("@NS@", env.namespace)) for k, v in attrs.items()} for attrs in DENIED)
        if allowed(a)
    ]
    assert granted == [], f"the agent's ServiceAccount may do more than it needs: {granted}"
