"""The agent: start-up, serving, background passes, graceful shutdown.

Start-up order (each step can stop the agent with a clear error):

1. take the single-instance lock;
2. load the configuration and select the mode (labels, eni_conf, terway-config);
3. load the mode plugin and the extensions; validate the configuration with them;
4. open the store; refuse a mode change on a node whose pods ran in another mode;
5. start the services (cloud, IPAM, Kubernetes -- supplied by ``services``) and the plugin;
6. resync: finish attachments a crash left half-done; repair live datapaths;
7. serve the CNI socket, then write the CNI conflist (readiness gating),
   then the debug endpoint, the reload watcher, the GC and repair passes.

Shutdown (SIGTERM/SIGINT or :meth:`Agent.shutdown`): stop accepting, drain
in-flight requests for up to ``shutdown_grace`` seconds, ``terway_stop``
shielded, cancel background tasks, release the lock.  The conflist stays (pods
keep running; the next agent serves them).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import signal
import socket
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import trio

from terway_agent import metrics
from terway_agent._hosting import PluginHost
from terway_agent.config import AgentConfig, Settings, render_conflist
from terway_agent.context import EventRecorder, ModeContext, NodeInfo
from terway_agent.daemon.loader import ConfigHolder, FileSources, build_config, reload_config
from terway_agent.daemon.server import (
    listener_address,
    open_debug_listener,
    open_unix_listener,
    serve_debug,
    serve_unix,
)
from terway_agent.daemon.service import CNIService, PodLookup
from terway_agent.errors import ConfigError, ModeNotImplemented, PermanentError
from terway_agent.log import get_logger
from terway_agent.store import Store
from terway_agent.types import Attachment

log = get_logger(__name__)

META_RAN_EXCLUSIVITY = "ran_exclusivity"
META_RAN_MODE = "ran_mode"
META_CONFLIST_SHA = "conflist_sha256"

#: A service hook: ``async def svc(agent, nursery)``, run after the plugin is
#: loaded and before it starts; sets ``agent.ctx.cloud`` etc.
Service = Callable[["Agent", trio.Nursery], Awaitable[None]]


def default_services() -> list[Service]:
    """The services an agent runs when none are given: the cloud, then the IPAM
    (both do nothing for a mode that does not need the cloud)."""
    from terway_agent.daemon.cloud_service import cloud_service
    from terway_agent.ipam import ipam_service

    return [cloud_service, ipam_service]


class AgentLockHeld(PermanentError):
    pass


class ModeChangeRefused(PermanentError):
    pass


class Agent:
    """One node agent.

    :param settings: the process settings.
    :param host: a plugin host (tests register inline plugins); default loads
        the selected mode from entry points.
    :param services: start-up services (cloud, IPAM, Kubernetes); ``None`` means
        :func:`default_services`, ``[]`` none.
    :param pod_lookup: a source of pod annotations/owner/policies.
    :param sources: the configuration sources (default: files, :class:`FileSources`).
    :param attachment_alive: tells the periodic GC whether an attachment's pod
        still exists (default: whether its netns exists).
    """

    def __init__(
        self,
        settings: Settings,
        *,
        host: PluginHost | None = None,
        services: list[Service] | None = None,
        pod_lookup: PodLookup | None = None,
        sources: Any = None,
        attachment_alive: Callable[[Attachment], Awaitable[bool | None]] | None = None,
    ) -> None:
        self.settings = settings
        self._given_host = host
        self.host = host or PluginHost()
        self.services = list(services) if services is not None else default_services()
        self.pod_lookup = pod_lookup
        #: where labels, eni_conf and the node pool's ConfigMap come from:
        #: files (standalone) or the Kubernetes API; ``read()`` and ``fingerprint(labels)``.
        self.sources = sources if sources is not None else FileSources(settings)
        #: whether a stored attachment's pod still exists (Kubernetes); None
        #: answers fall back to "its netns exists".
        self.attachment_alive = attachment_alive
        self.holder: ConfigHolder | None = None
        self.store: Store | None = None
        self.ctx: ModeContext | None = None
        self.service: CNIService | None = None
        self.debug_address: str = ""
        self.serving = trio.Event()
        self._shutdown = trio.Event()
        self._lock_fd: int | None = None
        self.queries: dict[str, Callable[[dict[str, Any]], Awaitable[Any]]] = {
            "_info": self._query_info,
            "_attachments": self._query_attachments,
        }
        self._missing_netns: dict[tuple[str, str], int] = {}
        self._ran_recorded = False
        self._fingerprint: tuple[Any, ...] = ()

    # -- public --------------------------------------------------------------------

    def shutdown(self) -> None:
        """Ask the agent to stop gracefully."""
        self._shutdown.set()

    @property
    def config(self) -> AgentConfig:
        assert self.holder is not None
        return self.holder.get()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run until shutdown.  ``task_status.started()`` once the CNI socket serves."""
        self._take_lock()
        try:
            await self._run(task_status)
        finally:
            if self.serving.is_set():
                try:
                    os.unlink(self.settings.socket_path)
                except FileNotFoundError:
                    pass
            if self.store is not None:
                self.store.close()
            self._release_lock()

    # -- start-up --------------------------------------------------------------------

    def _take_lock(self) -> None:
        path = self.settings.lock_path
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip()
            os.close(fd)
            raise AgentLockHeld(
                f"another terway agent holds {path} (pid {holder or 'unknown'}); one agent per node",
                lock=path,
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._lock_fd = fd

    def _release_lock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing drops the flock
            self._lock_fd = None

    def _load(self) -> AgentConfig:
        # Fingerprint first: a change made while we read is seen by the next check.
        self._fingerprint = self.sources.fingerprint(self.settings.node_labels)
        cfg, warnings = build_config(self.settings, self.sources.read())
        for w in warnings:
            log.warning("config.warning", problem=w)
        return cfg

    async def _run(self, task_status: trio.TaskStatus[None]) -> None:
        cfg = self._load()
        log.info("mode.selected", mode=cfg.mode, reason=cfg.mode_reason, dynamic_config=cfg.dynamic_config or None)
        if self._given_host is None:
            info = self.host.load_mode(cfg.mode, chosen_by=cfg.mode_reason)
            self.host.load_extensions()
        else:
            info = self.host.info
            if info.name != cfg.mode:
                raise ConfigError("mode", cfg.mode, f"{info.name}, the mode registered in the given plugin host")
        if not info.implemented:
            raise ModeNotImplemented(cfg.mode, f"selected by {cfg.mode_reason}")
        problems = self.host.validate_config(cfg)
        if problems:
            raise ConfigError("configuration", cfg.mode, "no objection from the mode plugin: " + "; ".join(problems))
        metrics.MODE_INFO.info({"mode": cfg.mode, "version": info.version, "reason": cfg.mode_reason})
        self.holder = ConfigHolder(cfg)

        state_dir = Path(self.settings.state_dir)
        self.store = await trio.to_thread.run_sync(Store, state_dir / "state.db")
        await self.store.acall(self._guard_mode_change, cfg.mode, info.exclusivity, cfg.mode_reason)

        node = NodeInfo(name=self.settings.node_name or socket.gethostname(), labels=dict(cfg.labels))
        self.ctx = ModeContext(
            mode=cfg.mode,
            node=node,
            store=self.store,
            state_dir=state_dir / "plugins" / cfg.mode,
            config_getter=self.holder.get,
            events=EventRecorder(),
        )
        self.ctx.state_dir.mkdir(parents=True, exist_ok=True)
        self.service = CNIService(self.host, self.ctx, pod_lookup=self.pod_lookup, queries=self.queries)
        self.service.on_attached = self._record_ran

        async with trio.open_nursery() as services:
            # The debug endpoint first: /healthz answers while start-up (Kubernetes, cloud,
            # resync) runs, so a liveness probe does not kill a slow start; /readyz says 503.
            if self.settings.debug_listen:
                dl = await open_debug_listener(self.settings.debug_listen)
                self.debug_address = listener_address(dl)
                services.start_soon(serve_debug, dl, self._ready)
            for svc in self.services:
                await svc(self, services)
            await self.host.start(self.ctx, services)
            await self._resync()
            await self._repair("start")

            listener = await open_unix_listener(self.settings.socket_path)
            async with trio.open_nursery() as handlers:
                accept_scope = trio.CancelScope()

                async def accept() -> None:
                    with accept_scope:
                        await serve_unix(listener, self.service.handle, handlers)

                handlers.start_soon(accept)
                await trio.to_thread.run_sync(self._write_conflist)
                services.start_soon(self._reload_loop)
                services.start_soon(self._periodic, self.settings.gc_interval, self._gc_pass)
                services.start_soon(self._periodic, self.settings.repair_interval, lambda: self._repair("periodic"))
                services.start_soon(self._signals)
                self.serving.set()
                log.info(
                    "agent.serving",
                    socket=self.settings.socket_path,
                    mode=cfg.mode,
                    debug=self.debug_address or None,
                )
                task_status.started()
                await self._shutdown.wait()
                log.info("agent.shutdown.started", in_flight=self.service.in_flight)
                accept_scope.cancel()
                self.service.draining = True
                with trio.move_on_after(self.settings.shutdown_grace) as drain:
                    await self.service.wait_idle()
                if drain.cancelled_caught:
                    log.warning("agent.shutdown.drain_timeout", in_flight=self.service.in_flight)
                handlers.cancel_scope.cancel()
            with trio.move_on_after(10, shield=True):
                await self.host.stop(self.ctx)
            services.cancel_scope.cancel()
        log.info("agent.shutdown.done")

    def _guard_mode_change(self, mode: str, exclusivity: str, reason: str) -> None:
        assert self.store is not None
        counts = self.store.count_by_mode()
        others = {m: n for m, n in counts.items() if m != mode}
        ran = self.store.get_meta(META_RAN_EXCLUSIVITY)
        ran_mode = self.store.get_meta(META_RAN_MODE) or "?"
        if ran and ran != exclusivity:
            raise ModeChangeRefused(
                f"this node ran pods in {ran} ENI mode ({ran_mode}) and is now selected for {mode} ({exclusivity}) "
                f"by {reason}; a node cannot switch between exclusive and shared ENI modes once it ran pods. "
                "Restore the node's labels, or drain the node and run 'terway-agent state reset-mode'.",
                ran=ran, ran_mode=ran_mode, mode=mode,
            )
        if others:
            listed = ", ".join(f"{n} by {m}" for m, n in sorted(others.items()))
            raise ModeChangeRefused(
                f"attachments made by another mode still exist ({listed}); mode {mode} selected by {reason} "
                "cannot tear them down. Delete those pods (or restore the node's labels) before changing the mode.",
                mode=mode,
            )

    def _record_ran(self) -> None:
        """Remember which mode ran pods here (the mode-change guard reads it)."""
        assert self.store is not None
        if self._ran_recorded:
            return
        info = self.host.info
        if self.store.get_meta(META_RAN_EXCLUSIVITY) != info.exclusivity:
            self.store.set_meta(META_RAN_EXCLUSIVITY, info.exclusivity)
        if self.store.get_meta(META_RAN_MODE) != info.name:
            self.store.set_meta(META_RAN_MODE, info.name)
        self._ran_recorded = True

    async def _resync(self) -> None:
        """Finish what a crash left half-done: attachments being released, and
        half-made attachments whose pod netns is gone."""
        assert self.store is not None and self.service is not None
        atts = await self.store.acall(self.store.attachments)
        finished = 0
        for att in atts:
            netns_gone = not att.netns or not os.path.exists(att.netns)
            if att.state == "releasing" or (att.state != "ready" and netns_gone):
                try:
                    await self.service._remove(att)
                    finished += 1
                except Exception as exc:
                    log.warning("resync.attachment.failed", container=att.container_id, error=repr(exc))
        if atts:
            log.info("resync.done", attachments=len(atts), finished=finished)
        await self._update_gauges()

    async def _repair(self, trigger: str) -> None:
        assert self.service is not None
        try:
            reports = await self.service.repair()
        except Exception as exc:
            log.error("repair.failed", trigger=trigger, error=repr(exc))
            self.service.repair_error = f"the repair pass failed ({exc})"
            return
        failed: list[str] = []
        for r in reports:
            if r.repaired:
                metrics.REPAIRS.inc(len(r.repaired))
                log.warning("repair.repaired", trigger=trigger, objects=list(r.repaired))
            if r.failed:
                log.error("repair.incomplete", trigger=trigger, failed=list(r.failed))
                failed.extend(r.failed)
        metrics.REPAIR_FAILED.set(len(failed))
        if self.service.repair_error:
            log.info("repair.recovered", trigger=trigger)
            self.service.repair_error = ""

    async def _attachment_gone(self, att: Attachment) -> bool:
        """Its sandbox's netns is gone, or (Kubernetes) its pod is gone from the API."""
        if not att.netns or not os.path.exists(att.netns):
            return True
        if self.attachment_alive is not None:
            return await self.attachment_alive(att) is False
        return False

    async def _gc_pass(self) -> None:
        """Periodic GC: an attachment judged gone (:meth:`_attachment_gone`) on two
        consecutive passes, and again on its fresh row when removed, is removed."""
        assert self.store is not None and self.service is not None
        atts = await self.store.acall(self.store.attachments)
        seen: dict[tuple[str, str], int] = {}
        for att in atts:
            if await self._attachment_gone(att):
                seen[att.key] = self._missing_netns.get(att.key, 0) + 1
        self._missing_netns = seen
        confirmed = {key for key, count in seen.items() if count >= 2}

        async def is_dead(att: Attachment) -> bool:
            return att.key in confirmed and await self._attachment_gone(att)

        errors, removed = await self.service.gc(None, is_dead, trigger="periodic")
        if removed or errors:
            log.info("gc.pass.done", removed=removed, errors=errors)
        await self._update_gauges()

    async def _update_gauges(self) -> None:
        assert self.store is not None
        atts = await self.store.acall(self.store.attachments)
        for state in ("allocating", "allocated", "ready", "releasing"):
            metrics.ATTACHMENTS.labels(state).set(sum(1 for a in atts if a.state == state))

    async def _periodic(self, interval: float, fn: Callable[[], Awaitable[None]]) -> None:
        while True:
            await trio.sleep(interval)
            try:
                await fn()
            except Exception as exc:
                log.error("agent.periodic.failed", task=getattr(fn, "__name__", repr(fn)), error=repr(exc))

    async def _signals(self) -> None:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for signum in signals:
                log.info("agent.signal", signal=signal.Signals(signum).name)
                self.shutdown()
                return

    async def _reload_loop(self) -> None:
        while True:
            await trio.sleep(self.settings.reload_interval)
            if self.sources.fingerprint(self.settings.node_labels) != self._fingerprint:
                self.apply_reload()

    def apply_reload(self) -> None:
        """Re-read the configuration files; apply what can change live."""
        assert self.holder is not None and self.ctx is not None
        try:
            new = self._load()
            problems = self.host.validate_config(new)
            if problems:
                raise ConfigError("configuration", new.mode, "no objection from the mode plugin: " + "; ".join(problems))
        except ConfigError as exc:
            metrics.CONFIG_RELOADS.labels("rejected").inc()
            log.error("config.reload.rejected", error=exc.message)
            self.ctx.events.record(f"Node/{self.ctx.node.name}", "Node", "ConfigError", exc.message, warning=True)
            return
        outcome = reload_config(self.config, new)
        if outcome.needs_restart:
            log.warning("config.reload.restart_required", fields=list(outcome.needs_restart))
        if outcome.applied:
            self.holder.set(outcome.config)
            metrics.CONFIG_RELOADS.labels("applied").inc()
            log.info("config.reload.applied", fields=list(outcome.applied))
        else:
            metrics.CONFIG_RELOADS.labels("unchanged").inc()

    def _write_conflist(self) -> None:
        """Write our conflist atomically; never touch other files in the directory."""
        assert self.store is not None
        netconf = replace(self.config.netconf, socket_path=self.settings.socket_path)
        doc = render_conflist(netconf, list(self.config.settings.cni_chain))
        body = (json.dumps(doc, indent=2) + "\n").encode()
        directory = Path(self.settings.cni_conf_dir)
        directory.mkdir(parents=True, exist_ok=True)
        target = directory / self.settings.cni_conf_name
        try:
            existing = target.read_bytes()
        except FileNotFoundError:
            existing = None
        if existing == body:
            return
        if existing is not None and hashlib.sha256(existing).hexdigest() != self.store.get_meta(META_CONFLIST_SHA):
            # Not what we wrote last (another tool's, or an older installation's): keep a copy
            # outside the runtime's conf dir, where it would otherwise be loaded, before replacing it.
            backup_dir = Path(self.settings.state_dir) / "replaced-cni-conf"
            backup_dir.mkdir(parents=True, exist_ok=True)
            backup = backup_dir / f"{self.settings.cni_conf_name}.{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}"
            backup.write_bytes(existing)
            log.warning("cni.conflist.foreign_replaced", path=str(target), backup=str(backup))
        tmp = directory / f".{self.settings.cni_conf_name}.tmp-{os.getpid()}"
        with open(tmp, "wb") as f:
            f.write(body)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
        self.store.set_meta(META_CONFLIST_SHA, hashlib.sha256(body).hexdigest())
        log.info("cni.conflist.written", path=str(target))

    async def _ready(self) -> tuple[bool, str]:
        if not self.serving.is_set() or self.ctx is None:
            return False, "not serving yet"
        assert self.service is not None
        st = await self.service.node_status()
        return (st.ok, "ready" if st.ok else f"status {st.code}: {st.message}")

    # -- queries (terway-agent subcommands) ---------------------------------------------

    async def _query_info(self, _msg: Mapping[str, Any]) -> dict[str, Any]:
        assert self.ctx is not None and self.store is not None
        info = self.host.info
        return {
            "mode": info.name,
            "mode_version": info.version,
            "reason": self.config.mode_reason,
            "node": self.ctx.node.name,
            "pid": os.getpid(),
            "socket": self.settings.socket_path,
            "debug": self.debug_address,
            "attachments": await self.store.acall(self.store.count_by_mode),
            "time": time.time(),
        }

    async def _query_attachments(self, _msg: Mapping[str, Any]) -> list[dict[str, Any]]:
        assert self.store is not None
        out = []
        for a in await self.store.acall(self.store.attachments):
            out.append(
                {
                    "container_id": a.container_id,
                    "ifname": a.ifname,
                    "pod": a.pod.key,
                    "netns": a.netns,
                    "mode": a.mode,
                    "state": a.state,
                    "ips": [x.address for x in a.allocation.addresses] if a.allocation else [],
                    "eni": a.allocation.eni_id if a.allocation else "",
                }
            )
        return out
