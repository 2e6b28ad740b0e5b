"""Functional fixtures: a real agent process in a node network namespace, the
real ``terway`` CNI executable exec'd like a runtime does, real pod namespaces.

Needs root (namespaces, veths).  Nothing here patches the kernel or the agent.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from agentkit import Agent, CNIRun, base_settings, links_in, ns_run, unique

from terway_agent.datapath import netns

__all__ = ["Agent", "CNIRun", "links_in", "ns_run"]

pytestmark = pytest.mark.netns


def _require_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("functional tests create network namespaces and need root")


@pytest.fixture
def node_ns() -> Iterator[str]:
    """A fresh 'node' network namespace: lo up, IPv4 forwarding on."""
    _require_root()
    name = unique("twfn")
    netns.create(name)
    subprocess.run(["ip", "netns", "exec", name, "ip", "link", "set", "lo", "up"], check=True)
    subprocess.run(["ip", "netns", "exec", name, "sysctl", "-qw", "net.ipv4.ip_forward=1"], check=True)
    yield name
    netns.remove(name)


@pytest.fixture
def make_pod_ns() -> Iterator[Any]:
    _require_root()
    made: list[str] = []

    def make() -> str:
        name = unique("twfp")
        netns.create(name)
        made.append(name)
        return netns.netns_path(name)

    yield make
    for name in made:
        netns.remove(name)


@pytest.fixture
def make_agent(tmp_path: Path, node_ns: str) -> Iterator[Any]:
    agents: list[Agent] = []

    def make(inline: str | None = None, env: dict[str, str] | None = None, **over: Any) -> Agent:
        a = Agent(tmp_path, node_ns, base_settings(tmp_path, **over), inline=inline, env=env or {})
        agents.append(a)
        return a

    yield make
    for a in agents:
        if a.proc is not None and a.proc.poll() is None:
            a.proc.kill()
            a.proc.wait(10)


@pytest.fixture
def agent(make_agent: Any) -> Agent:
    a = make_agent()
    a.start()
    return a


