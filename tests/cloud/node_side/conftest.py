"""Fixtures for NetnsNodeSide tests: a node side with a uniquely named VPC (prefix ``twdp``)."""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable, Iterator

import pytest
from twdp_nodeside_env import SERVICES, VSW  # tests/cloud/node_side is on sys.path

from terway_agent.cloud.emulator.netns_node_side import NetnsNodeSide
from terway_agent.datapath import netns

if os.geteuid() != 0:  # pragma: no cover - CI and dev machines run as root
    pytest.skip("NetnsNodeSide creates network namespaces: it needs root", allow_module_level=True)


@pytest.fixture
def suffix() -> str:
    return secrets.token_hex(3)


@pytest.fixture
def node_side(suffix: str) -> Iterator[NetnsNodeSide]:
    side = NetnsNodeSide(vpc_netns=f"twdp-{suffix}-vpc")
    try:
        side.start([VSW], SERVICES)
        yield side
    finally:
        side.close()
        netns.remove(side.vpc_netns)  # in case close() itself failed
    assert not netns.exists(side.vpc_netns)


@pytest.fixture
def node_name(suffix: str) -> Callable[[str], str]:
    """Instance namespace names that the test run owns (removed by close(); also here if a test failed early)."""
    names: list[str] = []

    def make(label: str) -> str:
        name = f"twdp-{suffix}-{label}"
        names.append(name)
        return name

    yield make
    for name in names:
        netns.remove(name)
