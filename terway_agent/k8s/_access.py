"""The permissions the agent needs, checked at start with SelfSubjectAccessReviews.

Every authenticated identity may create SelfSubjectAccessReviews (the
``system:basic-user`` ClusterRole), so the agent can list what its RBAC is
missing before it starts -- one clear error instead of a failure later.
"""

from __future__ import annotations

from dataclasses import dataclass

import trio

from terway_agent.k8s._client import RBAC_HINT, Kube, KubeError, KubeForbidden
from terway_agent.log import get_logger

log = get_logger(__name__)


@dataclass(frozen=True)
class Permission:
    verb: str
    resource: str
    subresource: str = ""
    #: "" = cluster-wide (all namespaces); the agent's namespace for ConfigMaps
    namespace: str = ""
    why: str = ""

    def describe(self) -> str:
        res = f"{self.resource}/{self.subresource}" if self.subresource else self.resource
        where = f" in namespace {self.namespace}" if self.namespace else ""
        return f"{self.verb} {res}{where}"


def required_permissions(namespace: str) -> list[Permission]:
    """Everything the agent does with the API (docs/deploy.md, "RBAC") and nothing more.

    Each entry is a request the code makes (``core.list_node`` ..., see ``_agent.py``,
    ``_node.py``, ``_pods.py``, ``_events.py``); the chart's ``rbac.yaml`` grants exactly
    these (``tests/k8s/test_rbac.py``).  Its Node and the ConfigMaps are read from watch
    caches (list + watch), never with a single GET.
    """
    return [
        Permission("list", "nodes", why="its Node (field selector metadata.name): labels select the mode"),
        Permission("watch", "nodes", why="label changes"),
        Permission("patch", "nodes", why="annotations k8s.aliyun.com/max-available-ip ..."),
        Permission("patch", "nodes", "status", why="SufficientIP condition, aliyun/eni resources"),
        Permission("get", "pods", why="a pod not yet delivered by the watch"),
        Permission("list", "pods", why="pods on this node (field selector spec.nodeName)"),
        Permission("watch", "pods", why="pods on this node"),
        Permission("patch", "pods", why="annotation k8s.aliyun.com/pod-ips"),
        Permission("create", "events", why="AllocIPSucceed, AllocIPFailed, ConfigError events"),
        Permission("patch", "events", why="repeated events are aggregated"),
        Permission("list", "configmaps", namespace=namespace, why="eni-config, terway-config"),
        Permission("watch", "configmaps", namespace=namespace, why="live configuration changes"),
    ]


async def missing_permissions(kube: Kube, perms: list[Permission]) -> list[Permission] | None:
    """The permissions the API denies, or None when the API would not answer the question."""
    results: dict[int, bool] = {}
    failed: list[KubeError] = []

    async def check(i: int, p: Permission) -> None:
        attrs = {"verb": p.verb, "resource": p.resource, "group": ""}
        if p.subresource:
            attrs["subresource"] = p.subresource
        if p.namespace:
            attrs["namespace"] = p.namespace
        try:
            doc = await kube.call(
                "create selfsubjectaccessreviews",
                kube.authz.create_self_subject_access_review,
                {
                    "apiVersion": "authorization.k8s.io/v1",
                    "kind": "SelfSubjectAccessReview",
                    "spec": {"resourceAttributes": attrs},
                },
            )
        except KubeError as exc:
            failed.append(exc)
            return
        results[i] = bool(((doc or {}).get("status") or {}).get("allowed"))

    async with trio.open_nursery() as nursery:
        for i, p in enumerate(perms):
            nursery.start_soon(check, i, p)
    if failed:
        if any(isinstance(e, KubeForbidden) and e.status == 401 for e in failed):
            raise failed[0]
        log.warning("k8s.access.unchecked", error=failed[0].message)
        return None
    return [p for i, p in enumerate(perms) if not results.get(i)]


def missing_message(identity: str, missing: list[Permission]) -> str:
    listed = "; ".join(f"{p.describe()} ({p.why})" for p in missing)
    return f"the Kubernetes API does not allow {identity} to: {listed}; {RBAC_HINT}"
