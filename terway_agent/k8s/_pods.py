"""Pods on this node: what ADD needs to know about a pod, whether a stored
attachment's pod still exists, and the ``k8s.aliyun.com/pod-ips`` write-back.

The pod cache is the informer on ``spec.nodeName=<node>``.  ADD looks the pod
up there (a pod the watch has not delivered yet is read from the API once).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import trio

from terway_agent.daemon.service import PodInfo
from terway_agent.errors import FeatureNotSupported
from terway_agent.k8s import _metrics
from terway_agent.k8s._client import Kube, KubeError
from terway_agent.k8s._informer import Informer
from terway_agent.log import get_logger
from terway_agent.mode_select import LABEL_IGNORE
from terway_agent.types import Allocation, Attachment, PodRef, PodRequest

log = get_logger(__name__)

ANN_POD_IPS = "k8s.aliyun.com/pod-ips"
ANN_POD_IP_RESERVATION = "k8s.aliyun.com/pod-ip-reservation"
ANN_POD_NETWORKING = "k8s.aliyun.com/pod-networking"
STATEFUL_KINDS = ("StatefulSet",)


def is_ignored(labels: Mapping[str, str] | None) -> bool:
    """The original's rule: the label ``k8s.aliyun.com/ignore-by-terway`` is exactly ``"true"``."""
    return (labels or {}).get(LABEL_IGNORE) == "true"


def owner_kind(pod: Mapping[str, Any], stateful_kinds: tuple[str, ...]) -> str:
    """The kind of the pod's owner.

    A stateful kind among the owner references wins (matched case-insensitively,
    as the original does, and returned in the configured spelling); otherwise the
    controller's kind; otherwise the first owner's.
    """
    refs = [r for r in ((pod.get("metadata") or {}).get("ownerReferences") or []) if isinstance(r, Mapping)]
    wanted = {k.lower(): k for k in (*STATEFUL_KINDS, *stateful_kinds)}
    for ref in refs:
        kind = str(ref.get("kind") or "")
        if kind.lower() in wanted:
            return wanted[kind.lower()]
    for ref in refs:
        if ref.get("controller"):
            return str(ref.get("kind") or "")
    return str(refs[0].get("kind") or "") if refs else ""


class Pods:
    """Lookups on the pod cache plus the pod-ips patch queue.

    :param stateful_kinds: returns eni_conf's ``custom_stateful_workload_kinds`` (read per use).
    :param patch_enabled: returns eni_conf's ``enable_patch_pod_ips`` (read per use).
    """

    def __init__(
        self,
        kube: Kube,
        informer: Informer,
        *,
        stateful_kinds: Callable[[], tuple[str, ...]],
        patch_enabled: Callable[[], bool],
    ) -> None:
        self.kube = kube
        self.informer = informer
        self._stateful_kinds = stateful_kinds
        self._patch_enabled = patch_enabled
        self._send, self._recv = trio.open_memory_channel[tuple[PodRef, str]](1000)
        informer.handlers.append(self._on_change)

    # -- informer handler: logs what the node's pods do (one line per change) ----------

    def _on_change(self, change: str, obj: Mapping[str, Any], old: Mapping[str, Any] | None) -> None:
        md = obj.get("metadata") or {}
        key = f"{md.get('namespace')}/{md.get('name')}"
        if change == "modified":
            log.debug("k8s.pod.modified", pod=key, uid=md.get("uid"), rv=md.get("resourceVersion"))
        else:
            event = "k8s.pod.added" if change == "added" else "k8s.pod.deleted"
            log.info(event, pod=key, uid=md.get("uid"), rv=md.get("resourceVersion"))

    # -- ADD ----------------------------------------------------------------------------

    async def _find(self, ref: PodRef) -> Mapping[str, Any] | None:
        pod = self.informer.get(ref.key)
        uid = ((pod or {}).get("metadata") or {}).get("uid")
        if pod is not None and (not ref.uid or uid == ref.uid):
            return pod
        # not delivered by the watch yet (or an older pod of the same name): ask the API once
        return await self.kube.call(
            "get pods", self.kube.core.read_namespaced_pod, ref.name, ref.namespace, not_found=None
        )

    async def lookup(self, ref: PodRef) -> PodInfo | None:
        """The core's ``pod_lookup``: annotations and owner kind of ``ref``, or None if
        the API does not know the pod.  Raises :class:`FeatureNotSupported` for a pod
        labelled ``k8s.aliyun.com/ignore-by-terway=true`` (the agent does not network it)."""
        pod = await self._find(ref)
        if pod is None:
            log.warning("k8s.pod.unknown", pod=ref.key, uid=ref.uid or None)
            return None
        md = pod.get("metadata") or {}
        if is_ignored(md.get("labels")):
            raise FeatureNotSupported(
                f"pod {ref.key} is labelled {LABEL_IGNORE}=true: terway-agent does not manage its network "
                "(remove the label, or give the pod another network)",
                pod=ref.key,
            )
        return PodInfo(
            annotations=dict(md.get("annotations") or {}),
            owner_kind=owner_kind(pod, self._stateful_kinds()),
        )

    # -- GC -------------------------------------------------------------------------

    async def alive(self, att: Attachment) -> bool | None:
        """The core's ``attachment_alive``: False when the attachment's pod is gone from
        the API (or was re-created under a new UID; a static pod matches its mirror pod),
        True when it exists, None when the agent cannot tell (not a Kubernetes pod, cache
        not synced, or the watch failing so the cache may be stale)."""
        if not att.pod.namespace or not self.informer.synced.is_set() or self.informer.failing:
            return None
        pod = self.informer.get(att.pod.key)
        if pod is None:
            return False
        md = pod.get("metadata") or {}
        uid = md.get("uid")
        # A static pod's sandbox carries the kubelet's config hash as its UID; the
        # API's mirror pod has its own UID and the hash in an annotation.
        mirror = (md.get("annotations") or {}).get("kubernetes.io/config.mirror")
        if att.pod.uid and uid and att.pod.uid not in (uid, mirror):
            return False
        return True

    # -- pod-ips write-back -------------------------------------------------------------

    def on_ready(self, request: PodRequest, allocation: Allocation, _elapsed: float) -> None:
        """``CNIService.on_ready`` callback: queue the annotation write (never blocks)."""
        if not request.pod.namespace or not self._patch_enabled():
            return
        ips = ",".join(a.address for a in allocation.addresses)
        try:
            self._send.send_nowait((request.pod, ips))
        except trio.WouldBlock:
            _metrics.POD_IPS_PATCHES.labels("dropped").inc()
            log.warning("k8s.pod_ips.dropped", pod=request.pod.key)

    async def run_patcher(self) -> None:
        """Write queued ``k8s.aliyun.com/pod-ips`` annotations until cancelled."""
        async for ref, ips in self._recv:
            await self._patch_ips(ref, ips)

    async def _patch_ips(self, ref: PodRef, ips: str) -> None:
        for attempt in range(5):
            pod = self.informer.get(ref.key)
            md = (pod or {}).get("metadata") or {}
            if (
                pod is not None
                and (md.get("annotations") or {}).get(ANN_POD_IPS) == ips
                and (not ref.uid or md.get("uid") == ref.uid)
            ):
                _metrics.POD_IPS_PATCHES.labels("unchanged").inc()
                return
            body: dict[str, Any] = {"metadata": {"annotations": {ANN_POD_IPS: ips}}}
            if ref.uid:
                body["metadata"]["uid"] = ref.uid  # a precondition: never annotate a re-created pod
            try:
                doc = await self.kube.call(
                    "patch pods",
                    self.kube.core.patch_namespaced_pod,
                    ref.name,
                    ref.namespace,
                    body,
                    _content_type="application/merge-patch+json",
                    not_found=None,
                )
            except KubeError as exc:
                if exc.status == 409:  # uid precondition failed: the pod was re-created
                    _metrics.POD_IPS_PATCHES.labels("stale").inc()
                    log.info("k8s.pod_ips.stale", pod=ref.key, uid=ref.uid)
                    return
                if exc.status in (0, 429) or exc.status >= 500:
                    log.warning("k8s.pod_ips.retry", pod=ref.key, attempt=attempt + 1, error=exc.message)
                    await trio.sleep(0.5 * 2**attempt)
                    continue
                _metrics.POD_IPS_PATCHES.labels("failed").inc()
                log.error("k8s.pod_ips.failed", pod=ref.key, error=exc.message)
                return
            if doc is None:
                _metrics.POD_IPS_PATCHES.labels("gone").inc()
                log.info("k8s.pod_ips.pod_gone", pod=ref.key)
                return
            _metrics.POD_IPS_PATCHES.labels("ok").inc()
            log.info("k8s.pod_ips.patched", pod=ref.key, ips=ips)
            return
        _metrics.POD_IPS_PATCHES.labels("failed").inc()
        log.error("k8s.pod_ips.failed", pod=ref.key, error="the API stayed unavailable")
