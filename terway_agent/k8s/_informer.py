"""List-then-watch caches of API objects (a small informer).

* list, remember the list's ``resourceVersion``, then watch from it with
  ``allowWatchBookmarks``; every event and bookmark advances the version;
* a watch the server ends (``timeoutSeconds``), a broken stream or a quiet
  connection is resumed from the last version -- nothing is listed again and
  nothing already seen is delivered again;
* ``410 Gone`` (the version was compacted) re-lists and delivers only the
  difference against the cache: objects that appeared (``added``), changed
  (``modified``, a different ``resourceVersion``) or vanished (``deleted``);
* handlers are called only for real changes: an object is never delivered
  twice at the same ``resourceVersion``.

Errors other than 410 are retried with a capped backoff; the first list at
start is not (the caller must know at once that, e.g., RBAC refuses it).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from typing import Any

import trio

from terway_agent.k8s import _metrics
from terway_agent.k8s._client import Kube, KubeError, KubeForbidden, KubeGone, KubeUnavailable
from terway_agent.log import get_logger

log = get_logger(__name__)

#: ``handler(change, new, old)``: change is "added", "modified" or "deleted";
#: ``new`` is the object (the last known one for "deleted"), ``old`` the previous one.
Handler = Callable[[str, Mapping[str, Any], Mapping[str, Any] | None], None]


def object_key(obj: Mapping[str, Any]) -> str:
    """``namespace/name`` (or ``name`` for cluster-scoped objects)."""
    md = obj.get("metadata") or {}
    ns = md.get("namespace") or ""
    return f"{ns}/{md.get('name', '')}" if ns else str(md.get("name", ""))


def resource_version(obj: Mapping[str, Any]) -> str:
    return str((obj.get("metadata") or {}).get("resourceVersion") or "")


class Informer:
    """A watch-fed cache of one kind of object.

    :param kube: the client.
    :param resource: a short name for logs and metrics (``pods``).
    :param list_fn: the client's list function (``core.list_pod_for_all_namespaces``).
    :param list_kwargs: selectors etc. for both list and watch.
    :param handlers: called for each change, in the informer's task; must not block.
    """

    def __init__(
        self,
        kube: Kube,
        resource: str,
        list_fn: Callable[..., Any],
        *,
        list_kwargs: Mapping[str, Any] | None = None,
        handlers: list[Handler] | None = None,
        backoff_max: float = 30.0,
    ) -> None:
        self.kube = kube
        self.resource = resource
        self._list_fn = list_fn
        self._kw = dict(list_kwargs or {})
        self.handlers: list[Handler] = list(handlers or [])
        self.cache: dict[str, dict[str, Any]] = {}
        self.resource_version = ""
        self.synced = trio.Event()
        #: True while the watch is failing or being re-listed: the cache may be stale
        self.failing = False
        #: bumps on every change the handlers saw (cheap change detection)
        self.generation = 0
        self._backoff_max = backoff_max
        self._rng = random.Random()

    def get(self, key: str) -> dict[str, Any] | None:
        return self.cache.get(key)

    # -- running ------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """List (errors raise), report started, then watch forever."""
        await self._list(initial=True)
        task_status.started()
        failures = 0
        while True:
            try:
                ended = await self._watch(resumed_after=failures)
                failures = 0
                _metrics.WATCH_RESTARTS.labels(self.resource, "timeout").inc()
                log.debug("k8s.watch.ended", resource=self.resource, reason=ended, rv=self.resource_version)
            except KubeGone as exc:
                self.failing = True
                _metrics.WATCH_RESTARTS.labels(self.resource, "expired").inc()
                log.info(
                    "k8s.watch.expired", resource=self.resource, rv=self.resource_version, error=exc.message
                )
                await self._relist_retrying()
            except KubeError as exc:
                self.failing = True
                failures += 1
                _metrics.WATCH_RESTARTS.labels(self.resource, "error").inc()
                delay = min(self._backoff_max, 0.5 * 2 ** min(failures, 8)) * (0.8 + 0.4 * self._rng.random())
                level = log.error if isinstance(exc, KubeForbidden) else log.warning
                level(
                    "k8s.watch.failed",
                    resource=self.resource,
                    rv=self.resource_version,
                    error=exc.message,
                    retry_in=round(delay, 2),
                )
                await trio.sleep(delay)

    async def _relist_retrying(self) -> None:
        failures = 0
        while True:
            try:
                await self._list(initial=False)
                return
            except KubeError as exc:
                failures += 1
                delay = min(self._backoff_max, 0.5 * 2 ** min(failures, 8))
                log.warning("k8s.list.failed", resource=self.resource, error=exc.message, retry_in=delay)
                await trio.sleep(delay)

    async def _list(self, *, initial: bool) -> None:
        doc = await self.kube.call(f"list {self.resource}", self._list_fn, **self._kw)
        items = {object_key(o): o for o in (doc or {}).get("items") or []}
        rv = str(((doc or {}).get("metadata") or {}).get("resourceVersion") or "")
        changes = 0
        for key, obj in items.items():
            old = self.cache.get(key)
            if old is None:
                changes += self._deliver("added", obj, None)
            elif resource_version(old) != resource_version(obj):
                changes += self._deliver("modified", obj, old)
        for key in [k for k in self.cache if k not in items]:
            changes += self._deliver("deleted", self.cache[key], self.cache[key])
        self.resource_version = rv
        self.synced.set()
        self.failing = False
        _metrics.CACHED.labels(self.resource).set(len(self.cache))
        if initial:
            log.info("k8s.list.done", resource=self.resource, objects=len(items), rv=rv)
        else:
            _metrics.RELISTS.labels(self.resource).inc()
            log.info("k8s.relist.done", resource=self.resource, objects=len(items), changes=changes, rv=rv)

    async def _watch(self, *, resumed_after: int = 0) -> str:
        stream = await self.kube.open_stream(
            f"watch {self.resource}",
            self._list_fn,
            resource_version=self.resource_version,
            allow_watch_bookmarks=True,
            timeout_seconds=self.kube.tuning.watch_timeout,
            **self._kw,
        )
        self.failing = False
        if resumed_after:
            log.info(
                "k8s.watch.resumed", resource=self.resource, rv=self.resource_version, failures=resumed_after
            )
        else:
            log.debug("k8s.watch.started", resource=self.resource, rv=self.resource_version)
        try:
            while True:
                event = await stream.next_event()
                if event is None:
                    return "end of stream"
                etype = event.get("type")
                obj = event["object"]
                if etype == "ERROR":
                    code = obj.get("code")
                    message = str(obj.get("message") or "")
                    if code == 410:
                        raise KubeGone(
                            f"watch {self.resource}: 410 Gone: {message}",
                            status=410,
                            reason=str(obj.get("reason")),
                        )
                    raise KubeUnavailable(
                        f"watch {self.resource}: error event {code}: {message}", status=int(code or 0)
                    )
                rv = resource_version(obj)
                if etype == "BOOKMARK":
                    if rv:
                        self.resource_version = rv
                    continue
                self._apply(str(etype), obj)
                if rv:
                    self.resource_version = rv
        finally:
            stream.close()

    # -- cache --------------------------------------------------------------------

    def _apply(self, etype: str, obj: dict[str, Any]) -> None:
        key = object_key(obj)
        old = self.cache.get(key)
        if etype == "DELETED":
            if old is not None:
                self._deliver("deleted", obj, old)
        elif old is None:
            self._deliver("added", obj, None)
        elif resource_version(old) != resource_version(obj):
            self._deliver("modified", obj, old)
        _metrics.CACHED.labels(self.resource).set(len(self.cache))

    def _deliver(self, change: str, obj: dict[str, Any], old: dict[str, Any] | None) -> int:
        key = object_key(obj)
        if change == "deleted":
            self.cache.pop(key, None)
        else:
            self.cache[key] = obj
        self.generation += 1
        for handler in self.handlers:
            try:
                handler(change, obj, old)
            except Exception as exc:  # a handler bug must not stop the cache; logged with its name
                log.error(
                    "k8s.handler.failed",
                    resource=self.resource,
                    handler=getattr(handler, "__qualname__", "?"),
                    key=key,
                    error=repr(exc),
                )
        return 1
