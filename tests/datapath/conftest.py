"""Fixtures for datapath tests: uniquely named namespaces (prefix ``twdp``) and a
shared-ENI topology (see twdp_topology.py).  Nothing here touches the root namespace.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable, Iterator

import pytest
from twdp_topology import SharedEni, build_shared_eni  # tests/datapath is on sys.path
from twdp_topology import snapshot as _snapshot

from terway_agent.datapath import netns

if os.geteuid() != 0:  # pragma: no cover - CI and dev machines run as root
    pytest.skip("datapath tests create network namespaces: they need root", allow_module_level=True)


@pytest.fixture
def make_netns() -> Iterator[Callable[[str], str]]:
    """``make_netns(label)`` creates ``twdp-<random>-<label>`` and returns its path; all removed afterwards."""
    created: list[str] = []

    def make(label: str) -> str:
        name = f"twdp-{secrets.token_hex(3)}-{label}"
        path = netns.create(name)
        created.append(name)
        return path

    yield make
    for name in reversed(created):
        netns.remove(name)


@pytest.fixture
def shared_eni(make_netns: Callable[[str], str]) -> SharedEni:
    """A node namespace whose ENI eth1 is a veth to a VPC namespace acting as the vSwitch gateway."""
    return build_shared_eni(make_netns)


@pytest.fixture
def snapshot() -> Callable[[str], dict[str, object]]:
    """``snapshot(netns_path)``: the namespace's links, addresses, routes, rules, neighbours, qdiscs."""
    return _snapshot
