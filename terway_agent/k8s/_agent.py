"""Wiring the agent to the Kubernetes API (see the package docstring)."""

from __future__ import annotations

import base64
import json
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import trio

from terway_agent.config import AgentConfig, Settings
from terway_agent.errors import ConfigError, PermanentError, terway_error_in
from terway_agent.k8s import _access
from terway_agent.k8s._client import Kube, KubeError, Tuning, load_api_client
from terway_agent.k8s._events import EventWriter
from terway_agent.k8s._informer import Informer
from terway_agent.k8s._node import NodePublisher
from terway_agent.k8s._pods import Pods, is_ignored
from terway_agent.k8s._sources import KubeSources
from terway_agent.log import get_logger
from terway_agent.mode_select import LABEL_IGNORE

if TYPE_CHECKING:  # pragma: no cover
    from terway_agent._hosting import PluginHost
    from terway_agent.daemon.app import Agent, Service

log = get_logger(__name__)


class NodeIgnored(PermanentError):
    """The node is labelled ``k8s.aliyun.com/ignore-by-terway=true``."""


class NodeNotFound(PermanentError):
    """This node's Node object does not exist in the API."""


def _identity(api_client: Any) -> str:
    """Who the agent is to the API, for error messages: the token's subject if it is a JWT."""
    keys = getattr(api_client.configuration, "api_key", None) or {}
    auth = str(keys.get("BearerToken") or keys.get("authorization") or "")
    token = auth.split(" ", 1)[-1] if auth else ""
    parts = token.split(".")
    if len(parts) == 3:
        try:
            payload = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
            if isinstance(payload, dict) and payload.get("sub"):
                return str(payload["sub"])
        except ValueError:
            pass
    return "the agent's identity"


class Kubernetes:
    """The agent's view of the API: watch caches of its Node, its pods and the
    configuration ConfigMaps, plus writers of events, annotations and node status.

    Build it with :func:`open_kubernetes`; hand its pieces to the agent::

        async with open_kubernetes(settings) as kube:
            agent = kube.make_agent()
            await agent.run()

    :ivar node_name: this node.
    :ivar sources: the agent's configuration sources (``read()``, ``fingerprint()``).
    """

    def __init__(self, settings: Settings, kube: Kube, node_name: str) -> None:
        self.settings = settings
        self.kube = kube
        self.node_name = node_name
        t = kube.tuning
        core = kube.core
        self.nodes = Informer(
            kube, "nodes", core.list_node, list_kwargs={"field_selector": f"metadata.name={node_name}"}
        )
        self.configmaps = Informer(
            kube, "configmaps", core.list_namespaced_config_map, list_kwargs={"namespace": t.namespace}
        )
        self.pod_informer = Informer(
            kube,
            "pods",
            core.list_pod_for_all_namespaces,
            list_kwargs={"field_selector": f"spec.nodeName={node_name}"},
        )
        self.sources = KubeSources(
            settings, node_name, t.namespace, t.eni_config, self.nodes, self.configmaps
        )
        self._config: AgentConfig | None = None
        self.pods = Pods(
            kube,
            self.pod_informer,
            stateful_kinds=lambda: (
                tuple(self._config.eni.custom_stateful_workload_kinds) if self._config else ()
            ),
            patch_enabled=lambda: self._config.eni.enable_patch_pod_ips if self._config else True,
        )
        self.events = EventWriter(kube, node_name, self._uid_of, queue=t.event_queue)
        self.publisher = NodePublisher(kube, node_name, self.sources.node)

    # -- the hooks the agent takes --------------------------------------------------------

    async def pod_lookup(self, ref: Any) -> Any:
        """``Agent(pod_lookup=...)``."""
        return await self.pods.lookup(ref)

    async def attachment_alive(self, att: Any) -> bool | None:
        """``Agent(attachment_alive=...)``."""
        return await self.pods.alive(att)

    async def service(self, agent: Agent, nursery: trio.Nursery) -> None:
        """A :data:`terway_agent.daemon.app.Service`: run after the cloud and the IPAM.

        Sends the agent's events to the API, writes pod-ips after each ADD,
        publishes the node's facts, and applies ``kube_client_qps/burst`` reloads.
        """
        assert agent.ctx is not None and agent.service is not None and agent.holder is not None
        agent.ctx.events.set_sink(self.events.sink)
        agent.service.on_ready.append(self.pods.on_ready)
        self._config = agent.config
        self.kube.bucket.configure(agent.config.eni.kube_client_qps, agent.config.eni.kube_client_burst)

        def on_reload(old: AgentConfig, new: AgentConfig) -> None:
            self._config = new
            if (old.eni.kube_client_qps, old.eni.kube_client_burst) != (
                new.eni.kube_client_qps,
                new.eni.kube_client_burst,
            ):
                self.kube.bucket.configure(new.eni.kube_client_qps, new.eni.kube_client_burst)
                log.info(
                    "k8s.client.reconfigured", qps=new.eni.kube_client_qps, burst=new.eni.kube_client_burst
                )

        agent.holder.subscribe(on_reload)
        nursery.start_soon(self.publisher.run, agent.ctx, agent.host.info)

    def make_agent(self, *, host: PluginHost | None = None, services: list[Service] | None = None) -> Agent:
        """An :class:`~terway_agent.daemon.app.Agent` wired to this integration.

        ``services`` default to :func:`~terway_agent.daemon.app.default_services`; the
        Kubernetes service is appended (it needs the cloud's limits and the IPAM).
        """
        from terway_agent.daemon.app import Agent, default_services

        svcs = list(services) if services is not None else default_services()
        return Agent(
            self.settings,
            host=host,
            services=[*svcs, self.service],
            pod_lookup=self.pod_lookup,
            sources=self.sources,
            attachment_alive=self.attachment_alive,
        )

    # -- helpers ---------------------------------------------------------------------------

    def _uid_of(self, kind: str, namespace: str, name: str) -> str:
        if kind == "Node":
            obj = self.nodes.get(name)
        elif kind == "Pod":
            obj = self.pod_informer.get(f"{namespace}/{name}")
        else:
            obj = None
        return str(((obj or {}).get("metadata") or {}).get("uid") or "")

    def record_node_event(self, reason: str, message: str, *, warning: bool = True) -> None:
        """Queue an event on this node (used for start-up failures)."""
        self.events.sink(
            {
                "object": f"Node/{self.node_name}",
                "kind": "Node",
                "reason": reason,
                "message": message,
                "type": "Warning" if warning else "Normal",
            }
        )

    async def _start(self, nursery: trio.Nursery) -> None:
        tuning = self.kube.tuning
        if tuning.check_permissions:
            perms = _access.required_permissions(tuning.namespace)
            missing = await _access.missing_permissions(self.kube, perms)
            if missing:
                raise PermanentError(
                    _access.missing_message(_identity(self.kube.api_client), missing),
                    missing=[p.describe() for p in missing],
                )
            if missing is not None:
                log.info("k8s.access.ok", checked=len(perms))
        await nursery.start(self.nodes.run)
        with trio.move_on_after(tuning.start_timeout):
            while self.nodes.get(self.node_name) is None:
                log.info("k8s.node.waiting", node=self.node_name)
                await trio.sleep(1.0)
        node = self.nodes.get(self.node_name)
        if node is None:
            raise NodeNotFound(
                f"node {self.node_name} does not exist in the Kubernetes API (waited {tuning.start_timeout:.0f}s); "
                "the agent's node_name (--node-name, the DaemonSet's NODE_NAME) must be the kubelet's node name",
                node=self.node_name,
            )
        if is_ignored((node.get("metadata") or {}).get("labels")):
            raise NodeIgnored(
                f"node {self.node_name} is labelled {LABEL_IGNORE}=true: terway-agent does not manage it "
                "(the DaemonSet's node affinity keeps it off such nodes; remove the label to manage the node)",
                node=self.node_name,
            )
        await nursery.start(self.configmaps.run)
        await nursery.start(self.pod_informer.run)
        nursery.start_soon(self.events.run)
        nursery.start_soon(self.pods.run_patcher)
        log.info(
            "k8s.ready",
            node=self.node_name,
            namespace=tuning.namespace,
            pods=len(self.pod_informer.cache),
            configmaps=len(self.configmaps.cache),
        )


@asynccontextmanager
async def open_kubernetes(settings: Settings) -> AsyncIterator[Kubernetes]:
    """Connect to the API (``settings.kubeconfig``, else in-cluster), check the
    agent's permissions, list and start watching its Node, ConfigMaps and pods.

    Raises :class:`~terway_agent.errors.ConfigError` (no credentials, bad tuning),
    :class:`~terway_agent.errors.PermanentError` (RBAC missing, node unknown or
    ignored) or :class:`~terway_agent.k8s.KubeError` (the API refused or is down).
    Leaving the block writes queued events (at most 5 s) and stops the watches.
    """
    tuning = Tuning.from_mapping(settings.plugin_config.get("kubernetes"))
    node_name = settings.node_name or socket.gethostname()
    api_client = load_api_client(
        settings.kubeconfig,
        serviceaccount_dir=settings.kube_serviceaccount_dir,
        token_refresh_interval=tuning.token_refresh_interval,
    )
    kube = Kube(api_client, tuning)
    k = Kubernetes(settings, kube, node_name)
    try:
        async with trio.open_nursery() as nursery:
            await k._start(nursery)
            try:
                yield k
            finally:
                await k.events.flush(5.0)
                nursery.cancel_scope.cancel()
    finally:
        kube.close()


async def run_agent(
    settings: Settings,
    *,
    host: PluginHost | None = None,
    services: list[Service] | None = None,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run an agent wired to the Kubernetes API until it shuts down (what
    ``terway-agent run`` does with ``use_kubernetes: true``).

    A configuration error that stops the agent is also recorded as a
    ``ConfigError`` event on the node, so that ``kubectl describe node`` says why
    the DaemonSet pod restarts.
    """
    from terway_agent.k8s._container import ensure_proc_sys_writable

    ensure_proc_sys_writable()
    async with open_kubernetes(settings) as kube:
        agent = kube.make_agent(host=host, services=services)
        try:
            await agent.run(task_status=task_status)
        except Exception as exc:
            err = terway_error_in(exc)
            if isinstance(err, ConfigError):
                kube.record_node_event("ConfigError", err.message)
            elif err is not None and not isinstance(err, KubeError):
                kube.record_node_event("AgentFailed", err.message)
            raise
