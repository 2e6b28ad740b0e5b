"""Fixtures: terway-agent against a real kube-apiserver (etcd + kube-apiserver v1.20.2 of the
e2e lane, no kubelet). Each test gets its own namespace, Node object, ServiceAccount and RBAC
(the chart's), so tests share one apiserver without seeing each other.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from k8s import kit  # noqa: F401 - puts deploy/tools and tests/e2e on sys.path
from k8s.kit import (
    KubeAgent,
    delete_docs,
    eni_config_doc,
    install_agent_identity,
    settings_for,
    sfx,
    write_kubeconfig,
)

from lane import COMPACTING_ARGS, ApiServer, Artifacts, ensure_artifacts, reap_stale  # noqa: E402  isort: skip
from lane._artifacts import artifacts  # noqa: E402  isort: skip

MODE_LABEL = "terway.alibabacloud.com/network-mode"


@pytest.fixture(scope="session")
def twk8s_art() -> Artifacts:
    if os.geteuid() != 0:
        pytest.skip("these tests run etcd and kube-apiserver from the e2e lane and need root")
    reap_stale()
    missing = artifacts().missing()
    if missing and os.environ.get("TWE2E_NO_BUILD") == "1":
        pytest.skip(f"e2e artifacts not built ({', '.join(missing)}) and TWE2E_NO_BUILD=1")
    return ensure_artifacts()


@pytest.fixture(scope="session")
def twk8s_api(twk8s_art: Artifacts) -> Iterator[ApiServer]:
    api = ApiServer.start(twk8s_art)
    try:
        yield api
    finally:
        api.stop()


@pytest.fixture(scope="session")
def twk8s_compacting_api(twk8s_art: Artifacts) -> Iterator[ApiServer]:
    """Watches served by etcd, compaction every second: old resourceVersions answer 410."""
    api = ApiServer.start(twk8s_art, extra_args=list(COMPACTING_ARGS))
    try:
        yield api
    finally:
        api.stop()


@dataclass
class KubeEnv:
    """One test's slice of an apiserver: namespace, node, identity, agents."""

    api: ApiServer
    workdir: Path
    namespace: str
    node: str
    token: str
    identity_docs: list[dict[str, Any]]
    release: str
    agents: list[KubeAgent] = field(default_factory=list)
    clients: list[Any] = field(default_factory=list)

    def client(self) -> Any:
        c = self.api.api_client()
        self.clients.append(c)
        return c

    def core(self) -> Any:
        from kubernetes import client

        return client.CoreV1Api(self.client())

    def kubeconfig(self, *, port: int | None = None, token: str | None = None, name: str = "agent") -> Path:
        return write_kubeconfig(self.api, self.workdir / f"{name}.kubeconfig", token or self.token, port=port)

    def agent(
        self, *, node_ns: str = "", kubeconfig: Path | None = None, name: str = "agent", **over: Any
    ) -> KubeAgent:
        wd = self.workdir / name
        wd.mkdir(parents=True, exist_ok=True)
        s = settings_for(
            wd, node=self.node, namespace=self.namespace, kubeconfig=kubeconfig or self.kubeconfig(), **over
        )
        a = KubeAgent(wd, node_ns, s)
        self.agents.append(a)
        return a

    def pod(
        self,
        name: str,
        *,
        annotations: dict[str, str] | None = None,
        labels: dict[str, str] | None = None,
        owner_kind: str = "",
        node: str | None = None,
    ) -> Any:
        """Create a pod bound to this env's node (no kubelet runs it: it stays Pending)."""
        md: dict[str, Any] = {"name": name, "namespace": self.namespace, "labels": labels or {"app": "twk8s"}}
        if annotations:
            md["annotations"] = annotations
        if owner_kind:
            md["ownerReferences"] = [
                {
                    "apiVersion": "apps/v1",
                    "kind": owner_kind,
                    "name": "owner",
                    "uid": f"00000000-0000-0000-0000-{sfx(6)}",
                    "controller": True,
                }
            ]
        body = {
            "metadata": md,
            "spec": {
                "nodeName": node or self.node,
                "containers": [{"name": "c", "image": "localhost/twk8s/none:1", "imagePullPolicy": "Never"}],
                "automountServiceAccountToken": False,
                "enableServiceLinks": False,
            },
        }
        return self.core().create_namespaced_pod(self.namespace, body)


@pytest.fixture
def kenv_factory(tmp_path: Path) -> Iterator[Callable[..., KubeEnv]]:
    made: list[KubeEnv] = []

    def make(
        api: ApiServer,
        *,
        mode: str = "example",
        eni_conf: dict[str, Any] | None = None,
        node_labels: dict[str, str] | None = None,
    ) -> KubeEnv:
        from kubernetes import client

        s = sfx()
        ns, node, release = f"{kit.PREFIX}-{s}", f"{kit.PREFIX}-node-{s}", f"{kit.PREFIX}-{s}"
        with api.api_client() as c:
            core = client.CoreV1Api(c)
            core.create_namespace({"metadata": {"name": ns}})
            labels = {MODE_LABEL: mode} if mode else {}
            labels.update(node_labels or {})
            core.create_node({"metadata": {"name": node, "labels": labels}})
            core.create_namespaced_config_map(ns, eni_config_doc(ns, eni_conf or {"max_pool_size": 5}))
        token, docs = install_agent_identity(api, ns, release)
        env = KubeEnv(api, tmp_path / s, ns, node, token, docs, release)
        env.workdir.mkdir(parents=True)
        made.append(env)
        return env

    yield make
    from kubernetes import client

    for env in made:
        for a in env.agents:
            if a.proc is not None and a.proc.poll() is None:
                a.proc.kill()
                a.proc.wait(10)
        with env.api.api_client() as c:
            core = client.CoreV1Api(c)
            try:
                for p in core.list_namespaced_pod(env.namespace).items:
                    core.delete_namespaced_pod(p.metadata.name, env.namespace, grace_period_seconds=0)
                core.delete_node(env.node)
                core.delete_namespace(env.namespace)
            except client.ApiException:
                pass  # the apiserver may be a per-test one that is already stopped
            delete_docs(
                c, [d for d in env.identity_docs if d["kind"] in ("ClusterRole", "ClusterRoleBinding")]
            )
        for c in env.clients:
            c.close()
