"""Wiring the IPAM into the agent: the ``ipam_service`` start-up service and its queries."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import trio

from terway_agent.errors import PermanentError
from terway_agent.log import get_logger

if TYPE_CHECKING:  # pragma: no cover
    from terway_agent.daemon.app import Agent

log = get_logger(__name__)


async def ipam_service(agent: Agent, nursery: trio.Nursery) -> None:
    """Build and start the node's pool (a :data:`terway_agent.daemon.app.Service`).

    Runs after :func:`terway_agent.daemon.cloud_service.cloud_service`; does
    nothing without a cloud (``ctx.cloud is None``).  The mode's
    ``exclusivity`` picks the pool: ``shared`` -> secondary IPs, ``exclusive``
    -> whole ENIs.  Reconciles the store, the cloud and the agent's stored
    attachments, starts the pool's tasks in ``nursery`` (ready before the agent
    serves), sets ``ctx.ipam`` and registers the ``_pool`` and ``_mapping``
    queries (``terway-agent pool`` / ``terway-agent mapping``).
    """
    ctx = agent.ctx
    assert ctx is not None
    if ctx.cloud is None:
        return
    # Imported only now: a mode without a cloud never loads the pool (nor the SDK behind it).
    from . import PoolTuning, new_ipam
    from ._mapping import mapping_report

    if ctx.quota is None:
        raise PermanentError("the IPAM needs the instance limits (ctx.quota) that the cloud service sets")
    info = agent.host.info
    tuning = PoolTuning.from_mapping(agent.settings.plugin_config.get("ipam"))
    store = ctx.store

    async def live_owners() -> set[str]:
        atts = await store.acall(store.attachments)
        return {f"{a.container_id}/{a.ifname}" for a in atts}

    ipam = new_ipam(
        info.exclusivity,
        store=store,
        cloud=ctx.cloud,
        node=ctx.node,
        quota=ctx.quota,
        eni_conf=lambda: ctx.config.eni,
        tuning=tuning,
        live_owners=live_owners,
        events=ctx.events,
    )
    report = await ipam.reconcile(await live_owners())
    log.info(
        "ipam.started",
        kind=ipam.kind,
        max_enis=ipam.max_enis(),
        enis=len(ipam.snapshot()["enis"]),
        reconcile={k: len(v) for k, v in report.to_dict().items() if v},
    )
    await nursery.start(ipam.run)
    ctx.ipam = ipam

    async def query_pool(_msg: Mapping[str, Any]) -> dict[str, Any]:
        return ipam.snapshot()

    async def query_mapping(msg: Mapping[str, Any]) -> dict[str, Any]:
        return await mapping_report(ipam, store, kernel=bool(msg.get("kernel", True)))

    for name, fn in (("_pool", query_pool), ("_mapping", query_mapping)):
        agent.queries[name] = fn
        if agent.service is not None:
            agent.service.queries[name] = fn
