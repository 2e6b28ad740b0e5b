"""Two simulated nodes on the emulator's VPC, each running the agent in shared_eni mode."""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from agentkit import CNIRun, ns_run, unique
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


def jq(ns: str, *cmd: str) -> list:
    """``ip -j <cmd>`` in namespace ``ns``, parsed."""
    out = ns_run(ns, "ip", "-j", *cmd).stdout
    return json.loads(out) if out.strip() else []


def wait_for(pred: Callable[[], object], timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def host_veth(namespace: str, name: str) -> str:
    """The original's host veth name: ``cali`` + 11 hex of sha1(namespace.name)."""
    return "cali" + hashlib.sha1(f"{namespace}.{name}".encode()).hexdigest()[:11]


@dataclass(frozen=True)
class PodObjects:
    """The node namespace's per-pod-shaped objects: prio 512/2048 rules (both
    families), main-table host routes (/32, /128) and ``cali*`` veths."""

    rules: frozenset[tuple]
    routes: frozenset[tuple]
    veths: frozenset[str]

    def diff(self, other: PodObjects) -> str:
        parts = []
        for f in ("rules", "routes", "veths"):
            a, b = getattr(self, f), getattr(other, f)
            if a != b:
                parts.append(f"{f}: only before {sorted(a - b)}, only after {sorted(b - a)}")
        return "; ".join(parts)


def pod_objects(ns: str) -> PodObjects:
    rules = set()
    routes = set()
    for fam in ("-4", "-6"):
        for r in jq(ns, fam, "rule", "show"):
            if r.get("priority") in (512, 2048):
                src, dst = (f"{r[k]}/{r[f'{k}len']}" if f"{k}len" in r else r.get(k) for k in ("src", "dst"))
                rules.add((r["priority"], src, dst, r.get("table")))
        for r in jq(ns, fam, "route", "show", "table", "main"):
            if r.get("dst") != "default" and "/" not in r.get("dst", "/"):  # host routes print without a length
                routes.add((r["dst"], r.get("dev")))
    veths = frozenset(x["ifname"] for x in jq(ns, "link", "show") if x["ifname"].startswith("cali")
                      and len(x["ifname"]) == 15)
    return PodObjects(frozenset(rules), frozenset(routes), veths)


__all__ = ["Path", "PodObjects", "Pods", "host_veth", "jq", "pod_ip", "pod_objects", "wait_for"]
