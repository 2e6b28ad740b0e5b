"""Shared fixtures of the exclusive-ENI tests: pod sandboxes ADDed on an emulated node."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from agentkit import CNIRun, unique
from cloudnodes import Node, PodSandboxes

from terway_agent.datapath import netns


class Pods(PodSandboxes):
    prefix = "twxp"

    def add(self, node: Node, name: str | None = None, **kw: Any) -> tuple[str, CNIRun, str]:
        ns, cid = self.sandbox(node)
        r = node.agent.cni("ADD", cid, netns_path=netns.netns_path(ns), pod=("default", name or unique("x-")), **kw)
        return ns, r, cid


@pytest.fixture
def pods() -> Iterator[Pods]:
    p = Pods()
    yield p
    p.cleanup()
