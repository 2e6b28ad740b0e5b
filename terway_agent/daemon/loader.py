"""Loading the agent configuration from files (standalone) and watching it for changes.

The Kubernetes integration supplies labels and ConfigMaps from the API
instead; everything after "raw documents in hand" is shared.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from terway_agent.config import (
    AgentConfig,
    EniConf,
    NetConf,
    Settings,
    apply_hot,
    diff_eni_conf,
    load_document,
    merge_patch,
    parse_eni_conf,
    parse_netconf,
)
from terway_agent.errors import ConfigError
from terway_agent.mode_select import LABEL_DYNAMIC_CONFIG, select_mode


@dataclass(frozen=True, slots=True)
class Sources:
    """The raw documents a configuration is made of."""

    labels: Mapping[str, str]
    eni_conf: Mapping[str, Any]
    eni_conf_source: str
    dynamic_name: str = ""
    dynamic_patch: Mapping[str, Any] | None = None
    netconf: Mapping[str, Any] | None = None


def configmap_eni_conf(data: Any, *, field_name: str) -> Mapping[str, Any]:
    """The eni_conf object inside a ConfigMap document, or the document itself.

    Accepts ``{"data": {"eni_conf": "<json>"}}`` (a ConfigMap as YAML/JSON), or a
    bare eni_conf object.
    """
    if isinstance(data, Mapping) and isinstance(data.get("data"), Mapping):
        raw = data["data"].get("eni_conf")
        if raw is None:
            raise ConfigError(f"{field_name}.data.eni_conf", None, "the eni_conf key holding JSON")
        parsed = parse_json_text(raw, f"{field_name}.data.eni_conf")
        return parsed
    if isinstance(data, Mapping):
        return data
    raise ConfigError(field_name, data, "a ConfigMap with data.eni_conf or an eni_conf JSON object")


def parse_json_text(raw: Any, field_name: str) -> Mapping[str, Any]:
    import json

    if isinstance(raw, Mapping):
        return raw
    if not isinstance(raw, str):
        raise ConfigError(field_name, raw, "a JSON object")
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as exc:
        # No excerpt: the document may hold credentials.
        raise ConfigError(field_name, "<document>", f"valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})") from None
    if not isinstance(value, Mapping):
        raise ConfigError(field_name, value, "a JSON object")
    return value


class FileSources:
    """Reads labels, eni_conf, the dynamic ConfigMap and the netconf from files."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def paths(self, labels: Mapping[str, str]) -> list[str]:
        out = [self.settings.eni_conf_path]
        if self.settings.netconf_path:
            out.append(self.settings.netconf_path)
        name = labels.get(LABEL_DYNAMIC_CONFIG)
        if name and self.settings.configmap_dir:
            found = self._configmap_path(name)
            out.append(str(found) if found else str(Path(self.settings.configmap_dir) / f"{name}.json"))
        return out

    def _configmap_path(self, name: str) -> Path | None:
        for ext in (".json", ".yaml", ".yml"):
            p = Path(self.settings.configmap_dir) / f"{name}{ext}"
            if p.exists():
                return p
        return None

    def read(self) -> Sources:
        labels = dict(self.settings.node_labels)
        doc = load_document(self.settings.eni_conf_path, field_name="eni_conf_path")
        eni = configmap_eni_conf(doc, field_name=self.settings.eni_conf_path)
        dyn_name = labels.get(LABEL_DYNAMIC_CONFIG, "")
        patch = None
        if dyn_name:
            if not self.settings.configmap_dir:
                raise ConfigError(
                    f"label {LABEL_DYNAMIC_CONFIG}", dyn_name,
                    "a ConfigMap the agent can read: set configmap_dir (standalone) or run with Kubernetes",
                )
            p = self._configmap_path(dyn_name)
            if p is None:
                raise ConfigError(
                    f"label {LABEL_DYNAMIC_CONFIG}", dyn_name,
                    f"an existing ConfigMap file {dyn_name}.json/.yaml in {self.settings.configmap_dir}",
                )
            patch = configmap_eni_conf(load_document(p, field_name=str(p)), field_name=str(p))
        netconf = None
        if self.settings.netconf_path:
            netconf = parse_json_text(
                load_document(self.settings.netconf_path, field_name="netconf_path"), self.settings.netconf_path
            )
        return Sources(labels, eni, self.settings.eni_conf_path, dyn_name, patch, netconf)

    def fingerprint(self, labels: Mapping[str, str]) -> tuple[Any, ...]:
        out = []
        for p in self.paths(labels):
            try:
                st = os.stat(p)
                out.append((p, st.st_ino, st.st_mtime_ns, st.st_size))
            except FileNotFoundError:
                out.append((p, None))
        return tuple(out)


def terway_entry(doc: Mapping[str, Any]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The ``type: terway`` network config of a CNI config document, and the plugins chained after it.

    Accepts a single network config (the original's ``10-terway.conf``) or a
    conflist (``{"cniVersion", "name", "plugins": [...]}``).
    """
    if "plugins" not in doc:
        return dict(doc), []
    plugins = doc["plugins"]
    if not isinstance(plugins, list) or not all(isinstance(p, Mapping) for p in plugins):
        raise ConfigError("CNI config plugins", plugins, "a list of plugin objects")
    idx = [i for i, p in enumerate(plugins) if p.get("type") == "terway"]
    if len(idx) != 1:
        raise ConfigError("CNI config plugins", [p.get("type") for p in plugins], "exactly one plugin of type terway")
    if idx[0] != 0:
        raise ConfigError("CNI config plugins", [p.get("type") for p in plugins], "terway first, chained plugins after it")
    entry = dict(plugins[0])
    for key in ("cniVersion", "name"):
        if key in doc:
            entry.setdefault(key, doc[key])
    return entry, [dict(p) for p in plugins[1:]]


def build_config(settings: Settings, src: Sources) -> tuple[AgentConfig, list[str]]:
    """Parse and merge the documents, select the mode.  Raises ConfigError."""
    merged = dict(src.eni_conf)
    if src.dynamic_patch is not None:
        merged = merge_patch(merged, src.dynamic_patch)
    parsed = parse_eni_conf(merged, source="eni_conf")
    warnings = list(parsed.warnings)
    eni: EniConf = parsed.value
    chain: list[dict[str, Any]] = []
    if src.netconf is not None:
        nc, chain = terway_entry(src.netconf)
        nc.setdefault("cniVersion", "1.0.0")
        nc.setdefault("type", "terway")
        p = parse_netconf(nc)
        warnings += list(p.warnings)
        netconf: NetConf = p.value
    else:
        netconf = NetConf()
    netconf = replace(netconf, socket_path=settings.socket_path)
    if chain and not settings.cni_chain:
        settings = replace(settings, cni_chain=tuple(chain))
    decision = select_mode(src.labels, eni, netconf, flag_mode=settings.mode, dynamic_config=src.dynamic_name)
    warnings += list(decision.warnings)
    cfg = AgentConfig(
        settings=settings,
        eni=eni,
        netconf=netconf,
        mode=decision.mode,
        mode_reason=decision.reason,
        labels=dict(src.labels),
        dynamic_config=src.dynamic_name,
    )
    return cfg, warnings


@dataclass(frozen=True, slots=True)
class ReloadOutcome:
    config: AgentConfig
    applied: tuple[str, ...]
    needs_restart: tuple[str, ...]


def reload_config(current: AgentConfig, new: AgentConfig) -> ReloadOutcome:
    """Take the hot-reloadable eni_conf fields of ``new``; report the rest."""
    hot, cold = diff_eni_conf(current.eni, new.eni)
    if new.netconf != current.netconf:
        cold.append("CNI network config")
    if new.mode != current.mode:
        cold.append(f"mode ({current.mode} -> {new.mode})")
    merged = replace(current, eni=apply_hot(current.eni, new.eni))
    return ReloadOutcome(merged, tuple(hot), tuple(cold))


class ConfigHolder:
    """The current configuration plus subscribers notified on every applied reload."""

    def __init__(self, config: AgentConfig) -> None:
        self._config = config
        self._subscribers: list[Callable[[AgentConfig, AgentConfig], None]] = []

    def get(self) -> AgentConfig:
        return self._config

    def subscribe(self, fn: Callable[[AgentConfig, AgentConfig], None]) -> None:
        """``fn(old, new)`` after each applied reload (called in the agent's main task)."""
        self._subscribers.append(fn)

    def set(self, config: AgentConfig) -> None:
        old, self._config = self._config, config
        for fn in self._subscribers:
            fn(old, config)
