"""The services a plugin receives with every hook call.

Plugins use only what is on :class:`ModeContext`; they never import core
internals.  Services that a node may not have are ``None`` (``cloud`` in a
standalone demo without a cloud, ``kube`` without a Kubernetes API).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import trio

if TYPE_CHECKING:  # pragma: no cover
    from terway_agent.config import AgentConfig
    from terway_agent.store import Store
    from terway_agent.types import InstanceLimits

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class NodeInfo:
    """Facts about the node the agent runs on."""

    name: str
    labels: dict[str, str] = field(default_factory=dict)
    instance_id: str = ""
    instance_type: str = ""
    region_id: str = ""
    zone_id: str = ""
    vpc_id: str = ""
    vswitch_id: str = ""
    primary_mac: str = ""
    primary_ip: str = ""


class EventRecorder:
    """Records Kubernetes-style events; without a Kubernetes API they are logged only.

    The Kubernetes integration replaces the sink.
    """

    def __init__(self, sink: Callable[[dict[str, Any]], None] | None = None) -> None:
        from terway_agent.log import get_logger

        self._log = get_logger("terway_agent.events")
        self._sink = sink

    def set_sink(self, sink: Callable[[dict[str, Any]], None] | None) -> None:
        self._sink = sink

    def record(self, obj: str, kind: str, reason: str, message: str, *, warning: bool = False) -> None:
        """Record an event on ``obj`` (``Node/<name>`` or ``Pod/<ns>/<name>``).

        ``reason`` is a CamelCase word of the original (``AllocIPSucceed``,
        ``AllocIPFailed``, ``ConfigError``, ``VirtualModeChanged``).
        """
        event = {
            "object": obj,
            "kind": kind,
            "reason": reason,
            "message": message,
            "type": "Warning" if warning else "Normal",
        }
        (self._log.warning if warning else self._log.info)("event.recorded", **event)
        if self._sink is not None:
            self._sink(event)


@dataclass
class ModeContext:
    """Handed to every hook.

    :ivar mode: the selected mode's name.
    :ivar node: facts about this node.
    :ivar store: the agent's persistent store (attachments, leases, a per-plugin
        key-value space via ``store.kv(<plugin>)``).
    :ivar state_dir: a directory for the plugin's own files.
    :ivar cloud: the cloud client, or ``None`` without a cloud.
    :ivar ipam: the IPAM (warm pools), or ``None`` for modes that bring their own.
    :ivar quota: instance quotas, or ``None`` without a cloud.
    :ivar kube: the Kubernetes integration, or ``None``.
    :ivar events: event recorder.
    :ivar netlink_limiter: limiter for blocking netlink work in worker threads.
    """

    mode: str
    node: NodeInfo
    store: Store
    state_dir: Path
    config_getter: Callable[[], AgentConfig]
    events: EventRecorder = field(default_factory=EventRecorder)
    cloud: Any = None
    ipam: Any = None
    quota: InstanceLimits | None = None
    kube: Any = None
    netlink_limiter: trio.CapacityLimiter = field(default_factory=lambda: trio.CapacityLimiter(16))

    @property
    def plugin_config(self) -> dict[str, Any]:
        """This mode's section of the agent settings' ``plugin_config`` (empty if none)."""
        return dict(self.config_getter().settings.plugin_config.get(self.mode, {}))

    @property
    def config(self) -> AgentConfig:
        """The current configuration (it can change on reload: read it per use)."""
        return self.config_getter()

    def require_ipam(self) -> Any:
        """The IPAM, or a clear error for a mode that needs it when it did not start."""
        if self.ipam is None:
            from terway_agent.errors import PermanentError

            raise PermanentError(f"mode {self.mode} needs the IPAM, which did not start (is the cloud configured?)")
        return self.ipam

    async def run_sync(self, fn: Callable[..., T], *args: Any) -> T:
        """Run blocking netlink/sysctl work in a worker thread under the netlink limiter.

        Never abandoned on cancellation: state-changing work always completes.
        """
        return await trio.to_thread.run_sync(fn, *args, limiter=self.netlink_limiter)
