"""Two simulated nodes on the emulator's VPC, each running the agent in shared_eni mode."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from agentkit import CNIRun, unique
from cloudnodes import HOST_STACK_CIDR, CloudCluster, Node, PodSandboxes, start_cluster

from terway_agent.datapath import netns

pytestmark = pytest.mark.netns


def _require_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("shared-ENI tests create network namespaces and need root")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CloudCluster]:
    _require_root()
    c = start_cluster(
        tmp_path_factory.mktemp("sharedeni"),
        netconf={"host_stack_cidrs": [HOST_STACK_CIDR]},
        settings_over={"repair_interval": 1.0},
    )
    yield c
    c.stop()


class Pods(PodSandboxes):
    """Pod namespaces created by a test; each ADDed through the real executable."""

    prefix = "twsp"

    def add(self, node: Node, name: str | None = None, *, conf_extra: dict[str, Any] | None = None,
            namespace: str = "default") -> tuple[str, CNIRun, str]:
        name = name or unique("pod-")
        ns, cid = self.sandbox(node)
        conf = node.agent.conf(**(conf_extra or {}))
        r = node.agent.cni("ADD", cid, netns_path=netns.netns_path(ns), pod=(namespace, name), conf=conf)
        return ns, r, cid


@pytest.fixture
def pods() -> Iterator[Pods]:
    p = Pods()
    yield p
    p.cleanup()


def pod_ip(result: CNIRun, family: int = 4) -> str:
    for ip in result.out["ips"]:
        addr = ip["address"].split("/")[0]
        if (":" in addr) == (family == 6):
            return addr
    raise AssertionError(f"no IPv{family} address in {result.out}")


__all__ = ["Path", "Pods", "pod_ip"]
