"""Fixtures of the IPAM tests: the real SDK over HTTP to the cloud emulator, a real store.

``cloud`` (function scope) -- a :class:`twipam_helpers.Env` around one emulator
server per session (``twipam_topology.TOPOLOGY``), reset before every test:
``env.admin`` drives faults, latencies and rate limits and reads the call counters.

``make_pool(kind="shared", instance=NODE, tuning=None, **eni_conf)`` -- an
IPAM for that instance with its own store under ``tmp_path``, reconciled and
running in a nursery the fixture owns; returns a :class:`twipam_helpers.Pool`.
``eni_conf`` keys are :class:`~terway_agent.config.EniConf` fields (defaults:
the two pod vSwitches, the security group, no reuse cooldown);
``pool.reload(**changes)`` changes them live.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

sys.path.insert(0, str(Path(__file__).resolve().parent))

from twipam_helpers import FAST_TUNING, Env, Pool, eni_conf, node_info  # noqa: E402
from twipam_topology import NODE, TOPOLOGY  # noqa: E402

from terway_agent.cloud.emulator import Emulator, Topology  # noqa: E402
from terway_agent.ipam import PoolTuning, new_ipam  # noqa: E402
from terway_agent.store import Store  # noqa: E402


@pytest.fixture(scope="session")
def twipam_emulator() -> Iterator[Emulator]:
    emu = Emulator(Topology.from_dict(TOPOLOGY, "tests/ipam/twipam_topology.py"))
    emu.start()
    try:
        yield emu
    finally:
        emu.stop()


@pytest.fixture
def cloud(twipam_emulator: Emulator, tmp_path: Path) -> Iterator[Env]:
    twipam_emulator.reset()
    admin = twipam_emulator.admin()
    try:
        yield Env(twipam_emulator, admin, tmp_path)
    finally:
        admin.close()
        twipam_emulator.reset()


@pytest.fixture
async def make_pool(cloud: Env, tmp_path: Path) -> Any:
    stores: list[Store] = []
    counter = iter(range(1000))
    nursery: trio.Nursery

    async def make(
        kind: str = "shared",
        instance: str = NODE,
        *,
        tuning: PoolTuning | None = None,
        start: bool = True,
        store_path: Path | None = None,
        live: set[str] | None = None,
        live_owners: Any = None,
        client_over: dict[str, Any] | None = None,
        **conf: Any,
    ) -> Pool:
        client = cloud.client(instance, **(client_over or {}))
        itype = next(i["type"] for i in TOPOLOGY["instances"] if i["id"] == instance)
        limits = (await client.describe_instance_types([itype]))[0]
        store = Store(store_path or tmp_path / f"state-{next(counter)}.db")
        stores.append(store)
        pool_holder: list[Pool] = []
        ipam = new_ipam(
            kind,  # type: ignore[arg-type]
            store=store,
            cloud=client,
            node=node_info(instance, limits),
            quota=limits,
            eni_conf=lambda: pool_holder[0].conf,
            tuning=tuning or FAST_TUNING,
            live_owners=live_owners,
        )
        pool = Pool(cloud, ipam, store, client, instance, eni_conf(**conf), limits)
        pool_holder.append(pool)
        if start:
            pool.report = await ipam.reconcile(live or set())
            await pool.start(nursery)
        return pool

    async with trio.open_nursery() as nursery:
        yield make
        nursery.cancel_scope.cancel()
    for s in stores:
        s.close()
