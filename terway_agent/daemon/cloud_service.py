"""The ``cloud_service`` start-up service: the cloud client, the node's facts, its limits.

Runs first among the agent's services (before the IPAM).  For a mode whose
``ModeInfo.needs_cloud`` is true it:

1. builds :class:`~terway_agent.cloud.settings.CloudSettings` from eni_conf
   (credentials, rate limits, backoffs, ENI tags, resource group) and the
   agent settings' ``cloud`` section (endpoint, protocol, region, metadata
   endpoint, instance id);
2. reads the instance id and type, region, zone, VPC, vSwitch, primary MAC
   and IP from the metadata service into ``ctx.node``;
3. fetches the instance type's limits (DescribeInstanceTypes, cached on disk
   for 15 days under the state directory) into ``ctx.quota``;
4. refuses to start a node below the mode's minimum pod limit, naming the
   instance type, the numbers and the formula;
5. sets ``ctx.cloud`` and applies later ``rate_limit``/``backoff_override``
   reloads to the client live.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any

import trio

from terway_agent.config import CloudEndpoint
from terway_agent.errors import PermanentError
from terway_agent.log import get_logger

if TYPE_CHECKING:  # pragma: no cover
    from terway_agent.config import AgentConfig, EniConf
    from terway_agent.daemon.app import Agent
    from terway_agent.types import InstanceLimits, ModeInfo

log = get_logger(__name__)


class NodeBelowMinimum(PermanentError):
    """The instance type gives fewer pods than the selected mode needs for a node to join."""


def eni_conf_cloud_keys(eni: EniConf) -> dict[str, Any]:
    """The original's eni_conf keys that configure the cloud client."""
    return {
        "access_key": eni.access_key,
        "access_secret": eni.access_secret,
        "credential_path": eni.credential_path,
        "rate_limit": dict(eni.rate_limit),
        "backoff_override": dict(eni.backoff_override),
        "eni_tags": dict(eni.eni_tags),
        "resource_group_id": eni.resource_group_id,
    }


def check_pod_limit(info: ModeInfo, limits: InstanceLimits) -> int:
    """The node's pod limit in ``info``'s mode; :class:`NodeBelowMinimum` when not above ``min_pod_limit``."""
    if info.pod_limit is None:
        return 0
    value = int(info.pod_limit(limits))
    if value > info.min_pod_limit:
        return value
    formula = info.pod_limit_formula or "the mode's pod-limit formula"
    raise NodeBelowMinimum(
        f"instance type {limits.instance_type} supports {value} pods in mode {info.name} ({formula}, with "
        f"EniQuantity={limits.eni_quantity}, EniPrivateIpAddressQuantity={limits.eni_private_ip_quantity}, "
        f"EniTotalQuantity={limits.eni_total_quantity}, EniTrunkSupported={str(limits.trunk_supported).lower()}); "
        f"a node needs more than {info.min_pod_limit} pods to join in this mode: use a larger instance type "
        "or another mode",
        instance_type=limits.instance_type,
        mode=info.name,
        pod_limit=value,
        minimum=info.min_pod_limit,
        formula=formula,
    )


async def cloud_service(agent: Agent, nursery: trio.Nursery) -> None:
    """Connect the agent to the cloud (a :data:`terway_agent.daemon.app.Service`); see the module doc."""
    info = agent.host.info
    if not info.needs_cloud:
        return
    # Imported only now: a mode without a cloud never loads the SDK.
    from terway_agent.cloud.client import CloudClient
    from terway_agent.cloud.limits import get_instance_limits
    from terway_agent.cloud.metadata import MetadataClient
    from terway_agent.cloud.settings import CloudSettings

    ctx = agent.ctx
    assert ctx is not None
    endpoint = agent.settings.cloud or CloudEndpoint()
    eni = agent.config.eni
    metadata = MetadataClient(endpoint.metadata_endpoint)
    region = endpoint.region_id or await metadata.region_id()
    settings = CloudSettings.from_eni_conf(
        eni_conf_cloud_keys(eni),
        region_id=region,
        endpoint=endpoint.endpoint or None,
        protocol=endpoint.protocol,
        metadata_endpoint=endpoint.metadata_endpoint,
    )
    instance_id = endpoint.instance_id or await metadata.instance_id()
    client = CloudClient(settings, metadata=metadata, instance_id=instance_id)
    primary_mac = await metadata.primary_mac()
    node = replace(
        ctx.node,
        instance_id=instance_id,
        instance_type=await metadata.instance_type(),
        region_id=region,
        zone_id=await metadata.zone_id(),
        vpc_id=await metadata.vpc_id(),
        vswitch_id=await metadata.vswitch_id(),
        primary_mac=primary_mac,
        primary_ip=await metadata.primary_ip(primary_mac),
    )
    limits = await get_instance_limits(client, node.instance_type, state_dir=agent.settings.state_dir)
    pod_limit = check_pod_limit(info, limits)
    log.info(
        "cloud.node.ready",
        instance_id=node.instance_id,
        instance_type=node.instance_type,
        zone_id=node.zone_id,
        vswitch_id=node.vswitch_id,
        pod_limit=pod_limit,
        endpoint=settings.endpoint or "regional",
    )
    ctx.node = node
    ctx.quota = limits
    ctx.cloud = client

    def on_reload(old: AgentConfig, new: AgentConfig) -> None:
        if old.eni.rate_limit == new.eni.rate_limit and old.eni.backoff_override == new.eni.backoff_override:
            return
        try:
            client.reconfigure(
                rate_limit=dict(new.eni.rate_limit), backoff_override=dict(new.eni.backoff_override)
            )
        except Exception as exc:  # a rejected value keeps the old limits; the reload itself stands
            log.error("cloud.reconfigure.rejected", error=str(exc))
            return
        log.info(
            "cloud.reconfigured",
            rate_limit=dict(new.eni.rate_limit),
            backoff_override=sorted(new.eni.backoff_override),
        )

    assert agent.holder is not None
    agent.holder.subscribe(on_reload)
