"""The node's published facts for each kind of mode (annotations and extended resources on a
real Node object), computed from the real mode plugins' descriptions and instance limits."""

from __future__ import annotations

import pytest
import trio

import terway_mode_exclusive_eni
import terway_mode_shared_eni
import terway_mode_trunk
from terway_agent.config import AgentConfig, EniConf, NetConf, Settings
from terway_agent.context import EventRecorder, ModeContext, NodeInfo
from terway_agent.k8s import (
    ANN_MAX_AVAILABLE_IP,
    ANN_MAX_MEMBER_ENI_IP,
    RES_ENI,
    RES_MEMBER_ENI,
    NodeFacts,
    Tuning,
    node_facts,
)
from terway_agent.k8s._client import Kube, load_api_client
from terway_agent.k8s._informer import Informer
from terway_agent.k8s._node import NodePublisher
from terway_agent.store import Store
from terway_agent.types import InstanceLimits

G7_XLARGE = InstanceLimits("ecs.g7.xlarge", 4, 15, 15, 20, True)
G7_4XLARGE = InstanceLimits("ecs.g7.4xlarge", 8, 30, 30, 40, True)


def test_node_facts_per_mode():
    shared = terway_mode_shared_eni.terway_mode_info()
    exclusive = terway_mode_exclusive_eni.terway_mode_info()
    trunk = terway_mode_trunk.terway_mode_info()
    # seed 003: g7.4xlarge shared (8-1) x 30 = 210, exclusive 8-1 = 7
    assert node_facts(shared, G7_4XLARGE) == NodeFacts({ANN_MAX_AVAILABLE_IP: "210"}, {})
    assert node_facts(exclusive, G7_4XLARGE) == NodeFacts({ANN_MAX_AVAILABLE_IP: "7"}, {RES_ENI: "7"})
    # trunk: shared pods plus member ENIs EniTotalQuantity - EniQuantity = 20 - 4
    facts = node_facts(trunk, G7_XLARGE)
    assert facts.annotations == {ANN_MAX_AVAILABLE_IP: "45", ANN_MAX_MEMBER_ENI_IP: "16"}
    assert facts.resources == {RES_MEMBER_ENI: "16"}
    assert node_facts(shared, None) == NodeFacts()


async def _publish(api, node: str, info, quota, tmp_path) -> None:
    tuning = Tuning(namespace="default", ipam_poll_interval=0.1, node_status_interval=0.2)
    kube = Kube(load_api_client(str(api.kubeconfig)), tuning)
    nodes = Informer(
        kube, "nodes", kube.core.list_node, list_kwargs={"field_selector": f"metadata.name={node}"}
    )
    store = Store(tmp_path / f"{info.name}.db")
    cfg = AgentConfig(Settings(), EniConf(), NetConf(), info.name, "test")
    ctx = ModeContext(
        mode=info.name,
        node=NodeInfo(name=node),
        store=store,
        state_dir=tmp_path,
        config_getter=lambda: cfg,
        events=EventRecorder(),
        quota=quota,
    )
    want = node_facts(info, quota)

    def published() -> bool:
        obj = nodes.get(node) or {}
        ann = (obj.get("metadata") or {}).get("annotations") or {}
        status = obj.get("status") or {}
        return all(
            ann.get(k) == want.annotations.get(k) for k in (ANN_MAX_AVAILABLE_IP, ANN_MAX_MEMBER_ENI_IP)
        ) and all(
            (status.get(part) or {}).get(k) == want.resources.get(k)
            for k in (RES_ENI, RES_MEMBER_ENI)
            for part in ("capacity", "allocatable")
        )

    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(nodes.run)
            nursery.start_soon(NodePublisher(kube, node, lambda: nodes.get(node)).run, ctx, info)
            with trio.fail_after(15):
                while True:  # the informer delivers the patches back: poll its cache
                    if published():
                        break
                    await trio.sleep(0.05)
            nursery.cancel_scope.cancel()
    finally:
        store.close()
        kube.close()


@pytest.mark.slow
async def test_node_facts_are_published_and_replaced_when_the_mode_changes(twk8s_api, kenv_factory, tmp_path):
    env = kenv_factory(twk8s_api, mode="")
    core = env.core()
    await _publish(twk8s_api, env.node, terway_mode_exclusive_eni.terway_mode_info(), G7_4XLARGE, tmp_path)
    n = core.read_node(env.node)
    assert n.metadata.annotations[ANN_MAX_AVAILABLE_IP] == "7"
    assert n.status.capacity[RES_ENI] == "7" and n.status.allocatable[RES_ENI] == "7"
    # the node pool becomes a trunk pool: aliyun/eni goes, member ENIs come
    await _publish(twk8s_api, env.node, terway_mode_trunk.terway_mode_info(), G7_XLARGE, tmp_path)
    n = core.read_node(env.node)
    assert n.metadata.annotations[ANN_MAX_AVAILABLE_IP] == "45"
    assert n.metadata.annotations[ANN_MAX_MEMBER_ENI_IP] == "16"
    assert RES_ENI not in (n.status.capacity or {})
    assert n.status.capacity[RES_MEMBER_ENI] == "16"
    # and a plain shared pool carries only max-available-ip
    await _publish(twk8s_api, env.node, terway_mode_shared_eni.terway_mode_info(), G7_XLARGE, tmp_path)
    n = core.read_node(env.node)
    assert n.metadata.annotations.get(ANN_MAX_MEMBER_ENI_IP) is None
    assert not {RES_ENI, RES_MEMBER_ENI} & set(n.status.capacity or {})
