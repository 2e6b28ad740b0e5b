"""Writing the agent's events (``ctx.events.record``) as real ``v1 Event`` objects.

The core's recorder calls :meth:`EventWriter.sink` synchronously; the sink only
queues (bounded; a full queue drops and counts).  :meth:`EventWriter.run`
writes them: the first occurrence creates an Event, repeats of the same
(object, reason, message, type) within ten minutes increase its ``count``, as
client-go's event correlator does.  Node events go to namespace ``default``
(where Kubernetes keeps events of cluster-scoped objects).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

import trio

from terway_agent.k8s import _metrics
from terway_agent.k8s._client import Kube, KubeError
from terway_agent.log import get_logger

log = get_logger(__name__)

COMPONENT = "terway-agent"
AGGREGATE_WINDOW = 600.0
MAX_MESSAGE = 1024


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class EventWriter:
    """Queue + writer of Events.

    :param uid_of: returns the UID of ``(kind, namespace, name)`` from a cache, or "".
    """

    def __init__(
        self, kube: Kube, node_name: str, uid_of: Callable[[str, str, str], str], queue: int = 1000
    ) -> None:
        self.kube = kube
        self.node_name = node_name
        self._uid_of = uid_of
        self._send, self._recv = trio.open_memory_channel[dict[str, Any]](queue)
        self._token = trio.lowlevel.current_trio_token()
        self._recent: OrderedDict[tuple[str, ...], tuple[str, str, int, float]] = OrderedDict()
        self.written = 0

    def sink(self, event: Mapping[str, Any]) -> None:
        """The :class:`terway_agent.context.EventRecorder` sink: queue, never block.

        Safe from the agent's trio thread and from its worker threads.
        """
        try:
            trio.lowlevel.current_task()
        except RuntimeError:  # a worker thread: hand the event to the trio thread
            try:
                trio.from_thread.run_sync(self.sink, event, trio_token=self._token)
            except trio.RunFinishedError:
                _metrics.EVENTS_DROPPED.inc()
            return
        try:
            self._send.send_nowait(dict(event))
        except trio.WouldBlock:
            _metrics.EVENTS_DROPPED.inc()
            log.warning("k8s.event.dropped", reason=event.get("reason"), object=event.get("object"))
        except trio.ClosedResourceError:
            _metrics.EVENTS_DROPPED.inc()

    async def run(self) -> None:
        """Write queued events until cancelled."""
        async for event in self._recv:
            await self._write_one(event)

    async def flush(self, deadline: float) -> None:
        """Write what is queued, for at most ``deadline`` seconds (shielded)."""
        with trio.move_on_after(deadline, shield=True):
            while True:
                try:
                    event = self._recv.receive_nowait()
                except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
                    return
                await self._write_one(event)

    async def _write_one(self, event: Mapping[str, Any]) -> None:
        try:
            await self._write(event)
        except KubeError as exc:
            _metrics.EVENTS.labels(str(event.get("reason")), "failed").inc()
            log.warning(
                "k8s.event.failed", reason=event.get("reason"), object=event.get("object"), error=exc.message
            )

    def _involved(self, obj: str) -> tuple[dict[str, Any], str] | None:
        parts = obj.split("/")
        if parts[0] == "Node" and len(parts) == 2:
            name = parts[1]
            ref = {"kind": "Node", "name": name, "apiVersion": "v1"}
            uid = self._uid_of("Node", "", name)
            if uid:
                ref["uid"] = uid
            return ref, "default"
        if parts[0] == "Pod" and len(parts) == 3 and parts[1]:
            ns, name = parts[1], parts[2]
            ref = {"kind": "Pod", "namespace": ns, "name": name, "apiVersion": "v1"}
            uid = self._uid_of("Pod", ns, name)
            if uid:
                ref["uid"] = uid
            return ref, ns
        return None

    async def _write(self, event: Mapping[str, Any]) -> None:
        reason = str(event.get("reason") or "")
        involved = self._involved(str(event.get("object") or ""))
        if involved is None:
            _metrics.EVENTS_DROPPED.inc()
            log.warning("k8s.event.unknown_object", object=event.get("object"), reason=reason)
            return
        ref, namespace = involved
        etype = "Warning" if event.get("type") == "Warning" else "Normal"
        message = str(event.get("message") or "")[:MAX_MESSAGE]
        key = (namespace, ref["kind"], ref["name"], ref.get("uid", ""), reason, message, etype)
        now = time.monotonic()
        stamp = _now()
        self._expire(now)
        seen = self._recent.get(key)
        if seen is not None:
            name, ns, count, _t = seen
            body = {"count": count + 1, "lastTimestamp": stamp}
            doc = await self.kube.call(
                "patch events",
                self.kube.core.patch_namespaced_event,
                name,
                ns,
                body,
                _content_type="application/merge-patch+json",
                not_found=None,
            )
            if doc is not None:
                self._recent[key] = (name, ns, count + 1, now)
                self._recent.move_to_end(key)
                _metrics.EVENTS.labels(reason, "aggregated").inc()
                self.written += 1
                return
        name = f"{ref['name']}.{time.time_ns():x}"
        body = {
            "metadata": {"name": name, "namespace": namespace},
            "involvedObject": ref,
            "reason": reason,
            "message": message,
            "type": etype,
            "source": {"component": COMPONENT, "host": self.node_name},
            "reportingComponent": COMPONENT,
            "reportingInstance": self.node_name,
            "firstTimestamp": stamp,
            "lastTimestamp": stamp,
            "count": 1,
        }
        await self.kube.call("create events", self.kube.core.create_namespaced_event, namespace, body)
        self._recent[key] = (name, namespace, 1, now)
        while len(self._recent) > 512:
            self._recent.popitem(last=False)
        _metrics.EVENTS.labels(reason, "created").inc()
        self.written += 1
        log.debug("k8s.event.created", reason=reason, object=event.get("object"), name=name)

    def _expire(self, now: float) -> None:
        while self._recent:
            key, (_n, _ns, _c, t) = next(iter(self._recent.items()))
            if now - t < AGGREGATE_WINDOW:
                break
            self._recent.popitem(last=False)
