"""Session fixtures of the real-cluster e2e lane (see docs/e2e.md and tests/e2e/lane/).

- ``twe2e_artifacts``: the cached binaries/images/stubs; builds them with scripts/e2e/build.sh when
  missing (cold: ~5 min, progress printed). ``TWE2E_NO_BUILD=1`` skips instead of building.
- ``twe2e_apiserver``: etcd + kube-apiserver (apiserver-only mode), one per session.
- ``twe2e_compacting_apiserver``: a second apiserver without watch cache and with etcd compaction
  every second, for tests of ``410 Gone`` handling (started only when a test asks for it).
- ``twe2e_node_factory``: ``make(cni_conflist=..., cni_plugins=..., name=...) -> Node`` starts a
  containerd + kubelet node on ``twe2e_apiserver``; all nodes stop at session end.
- ``twe2e_bridge_node``: a node whose CNI is Debian's bridge + host-local + portmap + loopback.
- ``twe2e_namespace``: a fresh namespace per test (pods in it are deleted afterwards).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

# `lane` sits beside this file; make it importable under any --import-mode.
if str(Path(__file__).parent) not in sys.path:
    sys.path.insert(0, str(Path(__file__).parent))

from lane import (  # noqa: E402
    COMPACTING_ARGS,
    ApiServer,
    Artifacts,
    LaneError,
    Node,
    debian_bridge_conflist,
    ensure_artifacts,
    reap_stale,
    suffix,
    unused_subnet24,
    wait_until,
)
from lane._artifacts import artifacts  # noqa: E402


def _say(config: pytest.Config) -> Callable[[str], None]:
    """Print a line to the terminal right away, even while pytest captures output."""
    capman = config.pluginmanager.getplugin("capturemanager")

    def say(line: str) -> None:
        if capman is not None:
            with capman.global_and_fixture_disabled():
                print(line, file=sys.stderr, flush=True)
        else:
            print(line, file=sys.stderr, flush=True)

    return say


@pytest.fixture(scope="session")
def twe2e_artifacts(pytestconfig: pytest.Config) -> Artifacts:
    """Cached e2e artifacts; builds them (slow, with progress) when missing."""
    if os.geteuid() != 0:
        pytest.skip("the e2e lane needs root: it runs etcd, kube-apiserver, containerd and kubelet")
    say = _say(pytestconfig)
    for line in reap_stale():
        say(f"twe2e: {line}")
    missing = artifacts().missing()
    if missing and os.environ.get("TWE2E_NO_BUILD") == "1":
        pytest.skip(f"e2e artifacts not built ({', '.join(missing)}) and TWE2E_NO_BUILD=1")
    if missing:
        say(f"\ntwe2e: building the e2e lane (not cached: {', '.join(missing)}); this takes minutes")
    return ensure_artifacts(progress=lambda line: say(f"  {line}"))


@pytest.fixture(scope="session")
def twe2e_apiserver(twe2e_artifacts: Artifacts, pytestconfig: pytest.Config) -> Iterator[ApiServer]:
    """etcd + kube-apiserver v1.20.2 on loopback for the whole session."""
    api = ApiServer.start(twe2e_artifacts)
    _say(pytestconfig)(f"\ntwe2e: apiserver {api.url} ready in {api.timings.summary()}")
    try:
        yield api
    finally:
        api.stop()


@pytest.fixture(scope="session")
def twe2e_compacting_apiserver(
    twe2e_artifacts: Artifacts, pytestconfig: pytest.Config
) -> Iterator[ApiServer]:
    """An apiserver where a resourceVersion older than ~2 s answers 410 Gone (see COMPACTING_ARGS)."""
    api = ApiServer.start(twe2e_artifacts, extra_args=list(COMPACTING_ARGS))
    _say(pytestconfig)(f"\ntwe2e: compacting apiserver {api.url} ready in {api.timings.summary()}")
    try:
        yield api
    finally:
        api.stop()


@pytest.fixture(scope="session")
def twe2e_node_factory(
    twe2e_apiserver: ApiServer, twe2e_artifacts: Artifacts, pytestconfig: pytest.Config
) -> Iterator[Callable[..., Node]]:
    """Start full nodes (containerd + kubelet) on the session's apiserver; stopped at session end."""
    nodes: list[Node] = []
    say = _say(pytestconfig)

    def make(**kwargs: Any) -> Node:
        node = Node.start(twe2e_apiserver, twe2e_artifacts, **kwargs)
        nodes.append(node)
        say(f"\ntwe2e: node {node.name} Ready in {node.timings.summary()}")
        return node

    try:
        yield make
    finally:
        errors = []
        for node in reversed(nodes):
            try:
                node.stop()
            except Exception as exc:  # noqa: BLE001 - every node must be stopped; re-raised below
                errors.append(exc)
        if errors:
            raise LaneError(f"stopping nodes failed: {errors!r}")


@pytest.fixture(scope="session")
def twe2e_bridge_node(
    twe2e_node_factory: Callable[..., Node], tmp_path_factory: pytest.TempPathFactory
) -> Node:
    """A Ready node using Debian's bridge + host-local (+ portmap) CNI chain.

    ``node.cni_conflist`` is the conflist; ``host_local_dir(node.cni_conflist)`` the lease directory.
    """
    data_dir: Path = tmp_path_factory.mktemp("twe2e-host-local")
    conflist = debian_bridge_conflist(subnet=unused_subnet24(), data_dir=data_dir)
    node = twe2e_node_factory(cni_conflist=conflist)
    node.record_link(conflist["plugins"][0]["bridge"])
    return node


@pytest.fixture
def twe2e_namespace(twe2e_apiserver: ApiServer) -> Iterator[str]:
    """A new namespace ``twe2e-<suffix>``; its pods are deleted (and awaited) after the test.

    Without kube-controller-manager a deleted namespace stays Terminating; that is harmless in a
    throwaway apiserver, so only the pods (which a kubelet must tear down) are cleaned here.
    """
    from kubernetes import client

    name = f"twe2e-{suffix(3)}"
    with twe2e_apiserver.api_client() as api:
        core = client.CoreV1Api(api)
        core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
        try:
            yield name
        finally:
            pods = core.list_namespaced_pod(name).items
            for pod in pods:
                core.delete_namespaced_pod(pod.metadata.name, name, grace_period_seconds=0)
            if any(p.spec.node_name for p in pods):
                wait_until(
                    f"pods of {name} gone", lambda: not core.list_namespaced_pod(name).items, timeout=60
                )
            core.delete_namespace(name)
