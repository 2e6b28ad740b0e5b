"""The agent's configuration sources read from the API: the node's labels, the
``eni-config`` ConfigMap (keys ``eni_conf`` and ``10-terway.conf``) and the
node pool's ``terway-config`` ConfigMap, all served from watch caches.

``read()`` and ``fingerprint()`` are synchronous and cheap (no API call): the
core's reload loop polls ``fingerprint`` every ``reload_interval`` and calls
``read`` when it changed.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from terway_agent.config import Settings
from terway_agent.daemon.loader import Sources, parse_json_text
from terway_agent.errors import ConfigError
from terway_agent.k8s._informer import Informer, resource_version
from terway_agent.log import get_logger
from terway_agent.mode_select import LABEL_DYNAMIC_CONFIG

log = get_logger(__name__)

KEY_ENI_CONF = "eni_conf"
KEY_NETCONF = "10-terway.conf"


class KubeSources:
    """``read()`` / ``fingerprint(labels)`` for :class:`terway_agent.daemon.app.Agent`."""

    def __init__(
        self,
        settings: Settings,
        node_name: str,
        namespace: str,
        eni_config: str,
        nodes: Informer,
        configmaps: Informer,
    ) -> None:
        self.settings = settings
        self.node_name = node_name
        self.namespace = namespace
        self.eni_config = eni_config
        self._nodes = nodes
        self._configmaps = configmaps
        if settings.node_labels:
            log.warning(
                "config.warning",
                problem="settings.node_labels is ignored: with Kubernetes the node's labels come from the API",
            )

    # -- raw objects ----------------------------------------------------------------

    def node(self) -> Mapping[str, Any] | None:
        return self._nodes.get(self.node_name)

    def labels(self) -> dict[str, str]:
        node = self.node()
        return dict(((node or {}).get("metadata") or {}).get("labels") or {})

    def configmap(self, name: str) -> Mapping[str, Any] | None:
        return self._configmaps.get(f"{self.namespace}/{name}")

    # -- the Sources protocol ---------------------------------------------------------

    def fingerprint(self, _labels: Mapping[str, str]) -> tuple[Any, ...]:
        labels = self.labels()
        dyn = labels.get(LABEL_DYNAMIC_CONFIG, "")
        base = self.configmap(self.eni_config)
        dyn_cm = self.configmap(dyn) if dyn else None
        return (
            tuple(sorted(labels.items())),
            resource_version(base) if base else None,
            dyn,
            resource_version(dyn_cm) if dyn_cm else None,
        )

    def read(self) -> Sources:
        labels = self.labels()
        where = f"ConfigMap {self.namespace}/{self.eni_config}"
        base = self.configmap(self.eni_config)
        if base is None:
            raise ConfigError(
                where,
                None,
                f"an existing ConfigMap {self.eni_config} in namespace {self.namespace} with the key {KEY_ENI_CONF} "
                "(the chart and deploy/manifests install it)",
            )
        data = base.get("data") or {}
        if KEY_ENI_CONF not in data:
            raise ConfigError(f"{where} data.{KEY_ENI_CONF}", None, "the eni_conf key holding a JSON object")
        eni = parse_json_text(data[KEY_ENI_CONF], f"{where} data.{KEY_ENI_CONF}")
        netconf = None
        if data.get(KEY_NETCONF):
            netconf = parse_json_text(data[KEY_NETCONF], f"{where} data.{KEY_NETCONF}")
        dyn_name = labels.get(LABEL_DYNAMIC_CONFIG, "")
        patch = None
        if dyn_name:
            dyn_where = f"ConfigMap {self.namespace}/{dyn_name}"
            dyn = self.configmap(dyn_name)
            if dyn is None:
                raise ConfigError(
                    f"node label {LABEL_DYNAMIC_CONFIG}",
                    dyn_name,
                    f"the name of an existing ConfigMap in namespace {self.namespace} holding {KEY_ENI_CONF}",
                )
            dyn_data = dyn.get("data") or {}
            if KEY_ENI_CONF not in dyn_data:
                raise ConfigError(
                    f"{dyn_where} data.{KEY_ENI_CONF}", None, "the eni_conf key holding a JSON object"
                )
            patch = parse_json_text(dyn_data[KEY_ENI_CONF], f"{dyn_where} data.{KEY_ENI_CONF}")
        return Sources(labels, eni, where, dyn_name, patch, netconf)
