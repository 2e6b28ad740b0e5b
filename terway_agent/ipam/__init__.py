"""The IPAM: warm pools of cloud addresses and the ENI/IP lifecycle.

Mode plugins reach it as ``ctx.ipam`` (``None`` without a cloud) and call::

    lease = await ctx.ipam.allocate_ips(owner, request.pod, sticky=is_stateful)   # shared ENI modes
    await ctx.ipam.release_ips(owner, hold=is_stateful)
    lease = await ctx.ipam.allocate_eni(owner, request.pod)                       # exclusive ENI mode
    await ctx.ipam.release_eni(owner)
    await ctx.ipam.lease_of(owner)       # what an owner holds (after a crash, on DEL)
    ctx.ipam.status()                    # for terway_status: code 50 while inhibited and empty
    ctx.ipam.insufficient()              # the node's "insufficient IP" state
    ctx.ipam.snapshot()                  # plain JSON for tools

where ``owner = f"{request.container_id}/{request.ifname}"``.

Guarantees (docs/ipam.md):

* an address (or ENI) is never held by two owners: ownership is committed in
  the store, in the transaction that takes it, before ``allocate_*`` returns;
* a warm allocation makes no cloud call; shortages are coalesced into few calls;
* a crash at any instant leaves nothing that :meth:`IPAM.reconcile` (run at
  start) and the periodic GC do not bring back into agreement.

The agent builds the pool in :func:`ipam_service` (started by default).
"""

from __future__ import annotations

import random
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Literal

from ._types import (
    AllocationInhibited,
    EniLease,
    EniRef,
    IPLease,
    PoolCapacityReached,
    PoolTuning,
    ReconcileReport,
    VSwitchesExhausted,
)

if TYPE_CHECKING:  # pragma: no cover
    from terway_agent.config import EniConf
    from terway_agent.context import NodeInfo
    from terway_agent.store import Store
    from terway_agent.types import InstanceLimits

    from ._base import IPAM, TAG_INSTANCE, TAG_NODE
    from ._service import ipam_service

__all__ = [
    "IPAM",
    "TAG_INSTANCE",
    "TAG_NODE",
    "AllocationInhibited",
    "EniLease",
    "EniRef",
    "IPLease",
    "PoolCapacityReached",
    "PoolTuning",
    "ReconcileReport",
    "VSwitchesExhausted",
    "ipam_service",
    "new_ipam",
]


_LAZY = {"IPAM": "_base", "TAG_INSTANCE": "_base", "TAG_NODE": "_base", "ipam_service": "_service"}


def __getattr__(name: str) -> Any:
    # the pool machinery imports trio and the store: loaded on first use, so that
    # ``terway-agent`` subcommands that only talk to the agent start fast
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def new_ipam(
    kind: Literal["shared", "exclusive"],
    *,
    store: Store,
    cloud: Any,
    node: NodeInfo,
    quota: InstanceLimits,
    eni_conf: Callable[[], EniConf],
    tuning: PoolTuning | None = None,
    clock: Callable[[], float] = time.time,
    live_owners: Callable[[], Awaitable[set[str]]] | None = None,
    rng: random.Random | None = None,
    events: Any = None,
) -> IPAM:
    """Build the pool of ``kind``: ``shared`` (secondary IPs) or ``exclusive`` (whole ENIs).

    :param store: the agent's store (migration 2 holds the pool's tables).
    :param cloud: a :class:`terway_agent.cloud.client.CloudClient`.
    :param node: this node (``instance_id``, ``zone_id``, ``vswitch_id`` are used).
    :param quota: the instance type's limits.
    :param eni_conf: returns the current eni_conf (read per use: reloads apply).
    :param tuning: internal timing knobs (:class:`PoolTuning`).
    :param clock: wall clock for persisted times (cooldowns, holds).
    :param live_owners: returns the owners that still exist (the agent's attachments);
        the periodic GC frees addresses of any other owner.
    :param rng: randomness for vSwitch choice and jitter (tests pass a seeded one).
    :param events: an :class:`~terway_agent.context.EventRecorder`: alloc inhibits are
        recorded as ``AllocIPFailed`` Warning events on the node.
    """
    from ._exclusive import ExclusivePool
    from ._shared import SharedPool

    classes: dict[str, type[IPAM]] = {"shared": SharedPool, "exclusive": ExclusivePool}
    if kind not in classes:
        from terway_agent.errors import InvalidInput

        raise InvalidInput("kind", kind, "'shared' or 'exclusive'")
    return classes[kind](
        store=store,
        cloud=cloud,
        node=node,
        quota=quota,
        eni_conf=eni_conf,
        tuning=tuning,
        clock=clock,
        live_owners=live_owners,
        rng=rng,
        events=events,
    )
