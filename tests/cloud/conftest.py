"""Fixtures for the cloud tests: the real Alibaba Cloud SDK against the local emulator.

``emulator`` (function scope) -- a fresh cloud for every test.  One emulator
server runs per test session; each test gets it reset to ``TEST_TOPOLOGY``
(``tests/cloud/twemu_topology.py``)
(instances, ENIs, IPs, faults, rate limits, latencies, counters, metadata
tokens all back to the start), which takes well under a millisecond.  The
fixture value is an :class:`EmulatorFixture`:

==========================  ==============================================================
``endpoint``                ``"127.0.0.1:PORT"`` -- pass to ``Config(endpoint=..., protocol="http")``
``access_key_id``,          the topology's access key
``access_key_secret``
``region_id``               ``"cn-hangzhou"``
``admin``                   :class:`~terway_agent.cloud.emulator.AdminClient` (faults,
                            latency, rate limits, state, call counts, settle)
``config(**overrides)``     the SDK ``Config`` below (for other SDK clients)
``ecs_client(**config)``    ``alibabacloud_ecs20140526.client.Client`` configured with
                            ``Config(access_key_id, access_key_secret, endpoint,
                            protocol='http', region_id)``; keyword arguments override
                            ``Config`` fields (e.g. ``signature_algorithm='v2'``,
                            ``read_timeout=500`` in milliseconds)
``metadata_url(iid)``       base URL of an instance's metadata service: append
                            ``/latest/meta-data/...``
``instance_ids``            all instance ids; also ``node1`` (ecs.g7.xlarge, RAM role
                            ``KubernetesWorkerRole-twemu``),
                            ``small`` (ecs.twemu-small.large: 3 ENIs x 4 IPv4 / 4 IPv6,
                            3 member ENIs), ``g6`` (ecs.g6.large, no trunking),
                            ``tiny`` (ecs.twemu-tiny.small, below node minimums),
                            ``other_zone`` (ecs.g7.xlarge in zone cn-hangzhou-j)
``vsw_node``, ``vsw_pod_a``  vSwitch ids: node /24, two dual-stack pod /20s, a /29 with
``vsw_pod_b``, ``vsw_tiny``   4 usable addresses (no IPv6), one in the other zone
``vsw_other_zone``
``sg``, ``sg2``             security group ids
``emulator``                the :class:`~terway_agent.cloud.emulator.Emulator` itself
==========================  ==============================================================

Every attach/detach completes immediately and the metadata delay is zero
unless a test changes it (``admin.configure(attach_latency=0.05, ...)``);
the reset puts it back.  ``emulator_session`` is the shared session-scoped
server if a test needs it directly.

``make_emulator(topology=None, **emulator_kwargs)`` (function scope) starts a
private emulator (e.g. with its own ``node_side=``) and returns an
:class:`EmulatorFixture` for it; it is stopped after the test.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from alibabacloud_ecs20140526.client import Client
from alibabacloud_tea_openapi.utils_models import Config
from twemu_topology import TEST_TOPOLOGY  # tests/cloud is on sys.path (conftest dir)

from terway_agent.cloud.emulator import AdminClient, Emulator, Topology


@dataclass
class EmulatorFixture:
    """What the ``emulator`` fixture yields (see the module docstring)."""

    emulator: Emulator
    admin: AdminClient
    endpoint: str
    access_key_id: str
    access_key_secret: str
    region_id: str
    instance_ids: list[str] = field(default_factory=list)
    node1: str = "i-twemu-node1"
    small: str = "i-twemu-small"
    g6: str = "i-twemu-g6"
    tiny: str = "i-twemu-tiny"
    other_zone: str = "i-twemu-zone-j"
    vsw_node: str = "vsw-twemu-node"
    vsw_pod_a: str = "vsw-twemu-pod-a"
    vsw_pod_b: str = "vsw-twemu-pod-b"
    vsw_tiny: str = "vsw-twemu-tiny"
    vsw_other_zone: str = "vsw-twemu-zone-j"
    sg: str = "sg-twemu-1"
    sg2: str = "sg-twemu-2"

    def config(self, **overrides: Any) -> Config:
        """The SDK ``Config`` for this emulator; ``overrides`` replace fields."""
        kwargs: dict[str, Any] = {
            "access_key_id": self.access_key_id,
            "access_key_secret": self.access_key_secret,
            "endpoint": self.endpoint,
            "protocol": "http",
            "region_id": self.region_id,
        }
        kwargs.update(overrides)
        return Config(**kwargs)

    def ecs_client(self, **overrides: Any) -> Client:
        """An ECS 2014-05-26 SDK client talking to the emulator."""
        return Client(self.config(**overrides))

    def metadata_url(self, instance_id: str) -> str:
        return self.emulator.metadata_url(instance_id)


@pytest.fixture(scope="session")
def emulator_session() -> Iterator[Emulator]:
    emu = Emulator(Topology.from_dict(TEST_TOPOLOGY, "tests/cloud/conftest.py"))
    emu.start()
    try:
        yield emu
    finally:
        emu.stop()


def _fixture_for(emu: Emulator) -> EmulatorFixture:
    return EmulatorFixture(
        emulator=emu,
        admin=emu.admin(),
        endpoint=emu.endpoint,
        access_key_id=emu.access_key_id,
        access_key_secret=emu.access_key_secret,
        region_id=emu.region_id,
        instance_ids=emu.instance_ids,
    )


@pytest.fixture
def emulator(emulator_session: Emulator) -> Iterator[EmulatorFixture]:
    emulator_session.reset()
    fx = _fixture_for(emulator_session)
    try:
        yield fx
    finally:
        fx.admin.close()
        emulator_session.reset()


@pytest.fixture
def make_emulator() -> Iterator[Callable[..., EmulatorFixture]]:
    started: list[EmulatorFixture] = []

    def make(topology: dict[str, Any] | None = None, **kwargs: Any) -> EmulatorFixture:
        emu = Emulator(Topology.from_dict(topology or TEST_TOPOLOGY, "make_emulator"), **kwargs)
        emu.start()
        fx = _fixture_for(emu)
        started.append(fx)
        return fx

    try:
        yield make
    finally:
        for fx in started:
            fx.admin.close()
            fx.emulator.stop()
