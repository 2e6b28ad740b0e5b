"""Publishing this node's network facts on its Node object.

* annotations (metadata, merge patch): ``k8s.aliyun.com/max-available-ip``
  (the mode's pod limit), ``k8s.aliyun.com/max-member-eni-ip`` (trunk modes:
  EniTotalQuantity - EniQuantity);
* extended resources (status capacity and allocatable): ``aliyun/eni``
  (exclusive-ENI modes: one per pod) and ``aliyun/member-eni`` (trunk modes),
  so that pods which request them are scheduled only where they fit;
* the condition ``SufficientIP`` (status): ``False`` with reason
  ``InsufficientIP`` while the IPAM cannot get addresses (``ipam.insufficient()``),
  ``True`` (reason ``SufficientIP``) otherwise; re-posted as a heartbeat; the
  transition to ``False`` also records a node ``AllocIPFailed`` event.

Values this agent no longer publishes (the node changed mode) are removed.
Nothing is published on a node labelled ``k8s.aliyun.com/ignore-by-terway=true``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import trio

from terway_agent.k8s import _metrics
from terway_agent.k8s._client import Kube, KubeError
from terway_agent.k8s._pods import is_ignored
from terway_agent.log import get_logger

if TYPE_CHECKING:  # pragma: no cover
    from terway_agent.context import ModeContext
    from terway_agent.types import InstanceLimits, ModeInfo

log = get_logger(__name__)

ANN_MAX_AVAILABLE_IP = "k8s.aliyun.com/max-available-ip"
ANN_MAX_MEMBER_ENI_IP = "k8s.aliyun.com/max-member-eni-ip"
RES_ENI = "aliyun/eni"
RES_MEMBER_ENI = "aliyun/member-eni"
CONDITION_SUFFICIENT_IP = "SufficientIP"
REASON_SUFFICIENT = "SufficientIP"
REASON_INSUFFICIENT = "InsufficientIP"

MANAGED_ANNOTATIONS = (ANN_MAX_AVAILABLE_IP, ANN_MAX_MEMBER_ENI_IP)
MANAGED_RESOURCES = (RES_ENI, RES_MEMBER_ENI)


@dataclass(frozen=True)
class NodeFacts:
    """What the node should carry; keys of :data:`MANAGED_ANNOTATIONS` / ``RESOURCES`` not
    present here are removed."""

    annotations: dict[str, str] = field(default_factory=dict)
    resources: dict[str, str] = field(default_factory=dict)


def node_facts(info: ModeInfo, quota: InstanceLimits | None) -> NodeFacts:
    """The annotations and extended resources of a node running ``info``'s mode.

    * exclusive-ENI modes: ``max-available-ip`` and ``aliyun/eni`` = the mode's pod limit
      (EniQuantity - 1);
    * trunk modes (capability ``trunk``): ``max-available-ip`` = the shared-ENI pods
      ((EniQuantity - 1) x EniPrivateIpAddressQuantity: ordinary pods still use secondary IPs),
      ``max-member-eni-ip`` and ``aliyun/member-eni`` = EniTotalQuantity - EniQuantity;
    * other modes: ``max-available-ip`` = the mode's pod limit.
    """
    if quota is None or info.pod_limit is None:
        return NodeFacts()
    if "trunk" in info.capabilities:
        members = str(quota.trunk_member_pods)
        return NodeFacts(
            {ANN_MAX_AVAILABLE_IP: str(quota.shared_pods), ANN_MAX_MEMBER_ENI_IP: members},
            {RES_MEMBER_ENI: members},
        )
    limit = str(int(info.pod_limit(quota)))
    if info.exclusivity == "exclusive":
        return NodeFacts({ANN_MAX_AVAILABLE_IP: limit}, {RES_ENI: limit})
    return NodeFacts({ANN_MAX_AVAILABLE_IP: limit}, {})


def _stamp() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class NodePublisher:
    """Keeps the node's annotations, extended resources and SufficientIP condition current.

    :param node: returns the node from the watch cache (or None).
    """

    def __init__(self, kube: Kube, node_name: str, node: Callable[[], Mapping[str, Any] | None]) -> None:
        self.kube = kube
        self.node_name = node_name
        self._node = node
        self._last_meta_try = -1e9
        self._posted: tuple[str, str, str] | None = None
        self._posted_at = -1e9
        self._ignored_logged = False

    async def run(self, ctx: ModeContext, info: ModeInfo) -> None:
        """Publish until cancelled (a failed patch is logged and retried next round)."""
        facts = node_facts(info, ctx.quota)
        tuning = self.kube.tuning
        log.info(
            "k8s.node.publishing",
            node=self.node_name,
            annotations=facts.annotations,
            resources=facts.resources,
        )
        while True:
            node = self._node()
            labels = ((node or {}).get("metadata") or {}).get("labels") or {}
            if node is None or is_ignored(labels):
                if node is not None and not self._ignored_logged:
                    log.warning(
                        "k8s.node.ignored",
                        node=self.node_name,
                        reason="ignore-by-terway label; not publishing",
                    )
                    self._ignored_logged = True
            else:
                self._ignored_logged = False
                try:
                    await self._sync_meta(node, facts, tuning.node_status_interval)
                    await self._sync_condition(ctx, node, tuning.condition_heartbeat)
                except KubeError as exc:
                    log.warning("k8s.node.publish_failed", node=self.node_name, error=exc.message)
            await trio.sleep(tuning.ipam_poll_interval)

    # -- annotations + extended resources -------------------------------------------------

    async def _sync_meta(self, node: Mapping[str, Any], facts: NodeFacts, interval: float) -> None:
        now = time.monotonic()
        md = node.get("metadata") or {}
        have_ann = md.get("annotations") or {}
        status = node.get("status") or {}
        capacity = status.get("capacity") or {}
        allocatable = status.get("allocatable") or {}
        ann_patch: dict[str, str | None] = {}
        for key in MANAGED_ANNOTATIONS:
            want = facts.annotations.get(key)
            if have_ann.get(key) != want:
                ann_patch[key] = want  # None removes
        res_patch: dict[str, str | None] = {}
        for key in MANAGED_RESOURCES:
            want = facts.resources.get(key)
            if capacity.get(key) != want or allocatable.get(key) != want:
                res_patch[key] = want
        if not ann_patch and not res_patch:
            return
        if now - self._last_meta_try < interval:
            return  # our last patch may not have come back through the watch yet
        self._last_meta_try = now
        if ann_patch:
            try:
                await self.kube.call(
                    "patch nodes",
                    self.kube.core.patch_node,
                    self.node_name,
                    {"metadata": {"annotations": ann_patch}},
                    _content_type="application/merge-patch+json",
                )
            except KubeError:
                _metrics.NODE_PATCHES.labels("annotations", "failed").inc()
                raise
            _metrics.NODE_PATCHES.labels("annotations", "ok").inc()
            log.info("k8s.node.annotated", node=self.node_name, annotations=ann_patch)
        if res_patch:
            body = {"status": {"capacity": res_patch, "allocatable": res_patch}}
            try:
                await self.kube.call(
                    "patch nodes/status",
                    self.kube.core.patch_node_status,
                    self.node_name,
                    body,
                    _content_type="application/strategic-merge-patch+json",
                )
            except KubeError:
                _metrics.NODE_PATCHES.labels("resources", "failed").inc()
                raise
            _metrics.NODE_PATCHES.labels("resources", "ok").inc()
            log.info("k8s.node.resources_published", node=self.node_name, resources=res_patch)

    # -- SufficientIP -----------------------------------------------------------------

    async def _sync_condition(self, ctx: ModeContext, node: Mapping[str, Any], heartbeat: float) -> None:
        ipam = ctx.ipam
        if ipam is None:
            return
        insufficient, why = ipam.insufficient()
        if insufficient:
            want = ("False", REASON_INSUFFICIENT, why or "the node cannot get more IP addresses")
        else:
            want = ("True", REASON_SUFFICIENT, "the node can allocate IP addresses")
        now = time.monotonic()
        if want == self._posted and now - self._posted_at < heartbeat:
            return
        existing = next(
            (
                c
                for c in ((node.get("status") or {}).get("conditions") or [])
                if c.get("type") == CONDITION_SUFFICIENT_IP
            ),
            None,
        )
        stamp = _stamp()
        transition = stamp
        if existing is not None and existing.get("status") == want[0] and existing.get("lastTransitionTime"):
            transition = existing["lastTransitionTime"]
        cond = {
            "type": CONDITION_SUFFICIENT_IP,
            "status": want[0],
            "reason": want[1],
            "message": want[2],
            "lastHeartbeatTime": stamp,
            "lastTransitionTime": transition,
        }
        try:
            await self.kube.call(
                "patch nodes/status",
                self.kube.core.patch_node_status,
                self.node_name,
                {"status": {"conditions": [cond]}},
                _content_type="application/strategic-merge-patch+json",
            )
        except KubeError:
            _metrics.NODE_PATCHES.labels("condition", "failed").inc()
            raise
        _metrics.NODE_PATCHES.labels("condition", "ok").inc()
        _metrics.SUFFICIENT_IP.set(1 if want[0] == "True" else 0)
        previous = self._posted
        self._posted, self._posted_at = want, now
        if previous is None or previous[0] != want[0]:
            log.info(
                "k8s.node.condition",
                node=self.node_name,
                sufficient_ip=want[0],
                reason=want[1],
                message=want[2],
            )
            if want[0] == "False":
                ctx.events.record(
                    f"Node/{self.node_name}",
                    "Node",
                    "AllocIPFailed",
                    f"Alloc IP failed: {want[2]}",
                    warning=True,
                )
