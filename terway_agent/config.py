"""Configuration: the eni-config ``eni_conf``, the CNI network config, and the agent's own settings.

Three documents, each validated field by field; every error names the field,
the value and what was expected (:class:`terway_agent.errors.ConfigError`);
unknown fields are collected as warnings, not errors (a newer config on an
older agent must not break the node).

* ``eni_conf`` -- the JSON of the original's eni-config ConfigMap (every field
  of terway-facts.md, with the original's defaults), optionally RFC 7396
  merge-patched by a node's ``terway-config`` ConfigMap.
* the CNI network config -- the ``type: terway`` entry of the conflist the agent
  writes and the runtime hands back on stdin.
* agent settings -- paths, node identity, labels, debug endpoint (YAML or JSON
  file plus command-line flags).

See docs/configuration.md for the reference.
"""

from __future__ import annotations

import ipaddress
import json
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import yaml

from terway_agent.errors import ConfigError

# ---------------------------------------------------------------------------
# Merge patch (RFC 7396)
# ---------------------------------------------------------------------------


def merge_patch(target: Any, patch: Any) -> Any:
    """Apply an RFC 7396 JSON merge patch; returns a new value, inputs untouched.

    ``null`` in the patch deletes the key; a non-object patch replaces the target.
    """
    if not isinstance(patch, Mapping):
        return _deepcopy(patch)
    result: dict[str, Any] = dict(target) if isinstance(target, Mapping) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def _deepcopy(v: Any) -> Any:
    if isinstance(v, Mapping):
        return {k: _deepcopy(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_deepcopy(x) for x in v]
    return v


# ---------------------------------------------------------------------------
# Field parsers
# ---------------------------------------------------------------------------

_DURATION_RE = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
_DURATION_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(field_name: str, value: Any) -> float:
    """Seconds from a Go duration string (``"1m30s"``, ``"120s"``) or a number of seconds."""
    if isinstance(value, bool):
        raise ConfigError(field_name, value, 'a duration such as "30s", "10m" or "1h30m", or seconds as a number')
    if isinstance(value, (int, float)):
        if value < 0 or math.isnan(value):
            raise ConfigError(field_name, value, "a duration >= 0")
        return float(value)
    if isinstance(value, str):
        text = value.strip()
        if text == "0":
            return 0.0
        pos = 0
        total = 0.0
        for m in _DURATION_RE.finditer(text):
            if m.start() != pos:
                break
            total += float(m.group(1)) * _DURATION_UNITS[m.group(2)]
            pos = m.end()
        if pos == len(text) and text:
            return total
    raise ConfigError(field_name, value, 'a duration such as "30s", "10m" or "1h30m", or seconds as a number')


def _int(lo: int | None = None, hi: int | None = None) -> Callable[[str, Any], int]:
    def parse(name: str, value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(name, value, _range_text("an integer", lo, hi))
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            raise ConfigError(name, value, _range_text("an integer", lo, hi))
        return value

    return parse


def _float(lo: float | None = None, hi: float | None = None) -> Callable[[str, Any], float]:
    def parse(name: str, value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
            raise ConfigError(name, value, _range_text("a number", lo, hi))
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            raise ConfigError(name, value, _range_text("a number", lo, hi))
        return float(value)

    return parse


def _range_text(kind: str, lo: Any, hi: Any) -> str:
    if lo is not None and hi is not None:
        return f"{kind} between {lo} and {hi}"
    if lo is not None:
        return f"{kind} >= {lo}"
    if hi is not None:
        return f"{kind} <= {hi}"
    return kind


def _bool(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        # The original's ConfigMaps sometimes quote booleans.
        return value.lower() == "true"
    raise ConfigError(name, value, "true or false")


def _str(name: str, value: Any) -> str:
    if not isinstance(value, str):
        raise ConfigError(name, value, "a string")
    return value


REDACTED = "<redacted>"


def _secret(name: str, value: Any) -> str:
    """A credential: never echoed in an error (errors are logged and become events)."""
    if not isinstance(value, str):
        raise ConfigError(name, REDACTED, f"a string (got a {type(value).__name__}; quote it in YAML)")
    return value


def _choice(*choices: str) -> Callable[[str, Any], str]:
    def parse(name: str, value: Any) -> str:
        if value not in choices:
            raise ConfigError(name, value, "one of " + ", ".join(repr(c) for c in choices))
        return value

    return parse


def _str_list(name: str, value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        return tuple(v.strip() for v in value.split(",") if v.strip())
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(name, value, "a list of strings")
    return tuple(value)


def _str_map(name: str, value: Any) -> dict[str, str]:
    if not isinstance(value, Mapping) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise ConfigError(name, value, "an object of string keys to string values")
    return dict(value)


def _cidr_list(name: str, value: Any) -> tuple[str, ...]:
    items = _str_list(name, value)
    out = []
    for item in items:
        try:
            out.append(str(ipaddress.ip_network(item, strict=True)))
        except ValueError:
            raise ConfigError(name, value, f"CIDRs such as 172.21.0.0/20 (bad: {item!r})") from None
    return tuple(out)


def _vswitches(name: str, value: Any) -> dict[str, tuple[str, ...]]:
    if not isinstance(value, Mapping):
        raise ConfigError(name, value, 'an object {"<zone>": ["vsw-...", ...]}')
    out = {}
    for zone, ids in value.items():
        out[zone] = _str_list(f"{name}.{zone}", ids)
        bad = [i for i in out[zone] if not i.startswith("vsw-")]
        if bad:
            raise ConfigError(f"{name}.{zone}", ids, 'vSwitch ids starting with "vsw-"')
    return out


def _rate_limit(name: str, value: Any) -> dict[str, int]:
    """``rate_limit``: checked by the cloud client's own validator (the API names
    it knows), so a misspelt name is refused here -- also on a live reload."""
    from terway_agent.cloud._ratelimit import validate_rate_limits

    if not isinstance(value, Mapping):
        raise ConfigError(name, value, 'an object {"<API name>": <calls per minute>}')
    validate_rate_limits(value, field=name)
    return {str(k): v for k, v in value.items()}


def _backoff(name: str, value: Any) -> dict[str, dict[str, Any]]:
    """``backoff_override``: validated by the cloud client's own parser (one
    definition of the keys, the aliases and the defaults); kept as given."""
    from terway_agent.cloud._backoff import resolve_backoffs

    if not isinstance(value, Mapping):
        raise ConfigError(name, value, 'an object {"<key>": {"duration": "2s", "factor": 1.5, "jitter": 0.3, "steps": 6}}')
    resolve_backoffs(value, field_prefix=name)
    return {str(k): dict(v) for k, v in value.items()}


def _duration_or_off(name: str, value: Any) -> float | None:
    if value in (None, "", "0", 0):
        return None
    return parse_duration(name, value)


def _duration(name: str, value: Any) -> float:
    return parse_duration(name, value)


# ---------------------------------------------------------------------------
# eni_conf
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class EniConf:
    """The ``eni_conf`` JSON of the eni-config ConfigMap.  Defaults are the original's."""

    access_key: str = field(default="", repr=False)
    access_secret: str = field(default="", repr=False)
    credential_path: str = ""
    service_cidr: tuple[str, ...] = ()
    vswitches: dict[str, tuple[str, ...]] = field(default_factory=dict)
    security_group: str = ""
    security_groups: tuple[str, ...] = ()
    eni_tags: dict[str, str] = field(default_factory=dict)
    eni_tag_filter: dict[str, str] = field(default_factory=dict)
    max_pool_size: int = 5
    min_pool_size: int = 0
    min_eni: int = 0
    max_eni: int = 0
    eni_cap_ratio: float = 1.0
    eni_cap_shift: int = 0
    vswitch_selection_policy: str = "random"
    eni_selection_policy: str = "most_ips"
    ip_stack: str = "ipv4"
    enable_eni_trunking: bool = False
    ipam_type: str = ""
    rate_limit: dict[str, int] = field(default_factory=dict)
    backoff_override: dict[str, dict[str, Any]] = field(default_factory=dict)
    ip_pool_sync_period: float = 120.0
    idle_ip_reclaim_after: float | None = None
    idle_ip_reclaim_interval: float = 600.0
    idle_ip_reclaim_batch_size: int = 5
    idle_ip_reclaim_jitter_factor: float = 0.1
    enable_patch_pod_ips: bool = True
    custom_stateful_workload_kinds: tuple[str, ...] = ()
    kube_client_qps: float = 20.0
    kube_client_burst: int = 30
    resource_group_id: str = ""
    enable_erdma: bool = False
    enable_ip_prefix: bool = False
    # --- this project's additions (docs/configuration.md, "Additions") ---
    #: the CNI network's virtual type, also accepted here so a node pool's
    #: ``terway-config`` can select ipvlan_ebpf / datapath_v2.
    eniip_virtual_type: str = ""
    #: a released IP is not handed out again for this long.
    ip_reuse_cooldown: float = 30.0
    #: a StatefulSet pod's IP is held for its successor this long after DEL.
    stateful_ip_hold: float = 300.0

    @property
    def all_security_groups(self) -> tuple[str, ...]:
        """security_group + security_groups, de-duplicated, order kept, at most 10."""
        seen: list[str] = []
        for sg in (self.security_group, *self.security_groups):
            if sg and sg not in seen:
                seen.append(sg)
        return tuple(seen)


_ENI_CONF_FIELDS: dict[str, Callable[[str, Any], Any]] = {
    "access_key": _secret,
    "access_secret": _secret,
    "credential_path": _str,
    "service_cidr": _cidr_list,
    "vswitches": _vswitches,
    "security_group": _str,
    "security_groups": _str_list,
    "eni_tags": _str_map,
    "eni_tag_filter": _str_map,
    "max_pool_size": _int(0, 10000),
    "min_pool_size": _int(0, 10000),
    "min_eni": _int(0, 1000),
    "max_eni": _int(0, 1000),
    "eni_cap_ratio": _float(0, 1),
    "eni_cap_shift": _int(-100, 100),
    "vswitch_selection_policy": _choice("ordered", "most", "random"),
    "eni_selection_policy": _choice("most_ips", "least_ips"),
    "ip_stack": _choice("ipv4", "dual", "ipv6"),
    "enable_eni_trunking": _bool,
    "ipam_type": _choice("", "crd", "default"),
    "rate_limit": _rate_limit,
    "backoff_override": _backoff,
    "ip_pool_sync_period": _duration,
    "idle_ip_reclaim_after": _duration_or_off,
    "idle_ip_reclaim_interval": _duration,
    "idle_ip_reclaim_batch_size": _int(1, 10),
    "idle_ip_reclaim_jitter_factor": _float(0, 1),
    "enable_patch_pod_ips": _bool,
    "custom_stateful_workload_kinds": _str_list,
    "kube_client_qps": _float(0.1, 10000),
    "kube_client_burst": _int(1, 100000),
    "resource_group_id": _str,
    "enable_erdma": _bool,
    "enable_ip_prefix": _bool,
    "eniip_virtual_type": _choice("", "veth", "ipvlan", "datapathv2", "Veth", "IPVlan", "DataPathV2"),
    "ip_reuse_cooldown": _duration,
    "stateful_ip_hold": _duration,
}

#: Fields applied to a running agent on reload; any other change needs a restart.
HOT_RELOADABLE = frozenset(
    {
        "max_pool_size",
        "min_pool_size",
        "rate_limit",
        "backoff_override",
        "ip_pool_sync_period",
        "idle_ip_reclaim_after",
        "idle_ip_reclaim_interval",
        "idle_ip_reclaim_batch_size",
        "idle_ip_reclaim_jitter_factor",
        "ip_reuse_cooldown",
        "stateful_ip_hold",
        "kube_client_qps",
        "kube_client_burst",
        "enable_patch_pod_ips",
        "custom_stateful_workload_kinds",
        "eni_tags",
    }
)


@dataclass(frozen=True, slots=True)
class Parsed:
    """A parsed document plus its non-fatal warnings (unknown fields...)."""

    value: Any
    warnings: tuple[str, ...] = ()


def parse_eni_conf(data: Any, *, source: str = "eni_conf") -> Parsed:
    """Validate the ``eni_conf`` object; returns :class:`Parsed` with an :class:`EniConf`."""
    if isinstance(data, (str, bytes)):
        try:
            data = json.loads(data)
        except json.JSONDecodeError as exc:
            # No excerpt of the document: it may hold credentials.
            raise ConfigError(source, "<document>", f"valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})") from None
    if not isinstance(data, Mapping):
        raise ConfigError(source, data, "a JSON object")
    kwargs: dict[str, Any] = {}
    warnings: list[str] = []
    for key, value in data.items():
        parser = _ENI_CONF_FIELDS.get(key)
        if parser is None:
            warnings.append(f"{source}.{key}: unknown field, ignored")
            continue
        if value is None:
            continue  # JSON null = default
        kwargs[key] = parser(f"{source}.{key}", value)
    conf = EniConf(**kwargs)
    if conf.min_pool_size > conf.max_pool_size:
        raise ConfigError(
            f"{source}.min_pool_size", conf.min_pool_size, f"<= max_pool_size ({conf.max_pool_size})"
        )
    if conf.max_eni and conf.min_eni > conf.max_eni:
        raise ConfigError(f"{source}.min_eni", conf.min_eni, f"<= max_eni ({conf.max_eni})")
    if len(conf.all_security_groups) > 10:
        raise ConfigError(f"{source}.security_groups", list(conf.all_security_groups), "at most 10 security groups")
    if conf.ip_stack == "dual" and conf.service_cidr:
        fams = {ipaddress.ip_network(c).version for c in conf.service_cidr}
        if fams != {4, 6}:
            missing = "IPv6" if 6 not in fams else "IPv4"
            warnings.append(f"{source}.service_cidr: ip_stack is dual but no {missing} Service CIDR is given")
    if conf.access_key and not conf.access_secret:
        raise ConfigError(f"{source}.access_secret", "", "set together with access_key")
    return Parsed(conf, tuple(warnings))


def diff_eni_conf(old: EniConf, new: EniConf) -> tuple[list[str], list[str]]:
    """Changed field names split into (hot-reloadable, needing a restart)."""
    hot, cold = [], []
    for f in fields(EniConf):
        if getattr(old, f.name) != getattr(new, f.name):
            (hot if f.name in HOT_RELOADABLE else cold).append(f.name)
    return hot, cold


def apply_hot(old: EniConf, new: EniConf) -> EniConf:
    """``old`` with only the hot-reloadable fields taken from ``new``."""
    return replace(old, **{name: getattr(new, name) for name in HOT_RELOADABLE})


# ---------------------------------------------------------------------------
# CNI network config (the ``type: terway`` entry)
# ---------------------------------------------------------------------------

SUPPORTED_CNI_VERSIONS = ("0.4.0", "1.0.0", "1.1.0")


@dataclass(frozen=True)
class NetConf:
    """The ``type: terway`` network configuration."""

    cni_version: str = "1.0.0"
    name: str = "terway"
    type: str = "terway"
    capabilities: dict[str, bool] = field(default_factory=lambda: {"bandwidth": True})
    eniip_virtual_type: str = "veth"
    host_stack_cidrs: tuple[str, ...] = ()
    disable_host_peer: bool = False
    vlan_strip_type: str = "filter"
    mtu: int = 1500
    auto_mtu: bool = False
    bandwidth_mode: str = "tc"
    network_policy_provider: str = "iptables"
    symmetric_routing: bool = False
    # client-side (read by the terway executable)
    socket_path: str = "/var/run/eni/eni.socket"
    log_file: str = ""
    log_level: str = "info"


_NETCONF_FIELDS: dict[str, tuple[str, Callable[[str, Any], Any]]] = {
    "cniVersion": ("cni_version", _choice(*SUPPORTED_CNI_VERSIONS)),
    "name": ("name", _str),
    "type": ("type", _choice("terway")),
    "capabilities": ("capabilities", lambda n, v: {k: _bool(f"{n}.{k}", x) for k, x in _mapping(n, v).items()}),
    "eniip_virtual_type": ("eniip_virtual_type", _choice("veth", "ipvlan", "datapathv2", "Veth", "IPVlan", "DataPathV2")),
    "host_stack_cidrs": ("host_stack_cidrs", _cidr_list),
    "disable_host_peer": ("disable_host_peer", _bool),
    "vlan_strip_type": ("vlan_strip_type", _choice("filter", "vlan")),
    "mtu": ("mtu", _int(576, 65535)),
    "auto_mtu": ("auto_mtu", _bool),
    "bandwidth_mode": ("bandwidth_mode", _choice("tc", "edt")),
    "network_policy_provider": ("network_policy_provider", _choice("iptables", "ebpf")),
    "symmetric_routing": ("symmetric_routing", _bool),
    "socket_path": ("socket_path", _str),
    "log_file": ("log_file", _str),
    "log_level": ("log_level", _choice("debug", "info", "warning", "error")),
}

#: Keys the runtime adds or that belong to the CNI protocol; never warned about.
_NETCONF_RUNTIME_KEYS = frozenset(
    {"runtimeConfig", "prevResult", "args", "cni.dev/valid-attachments", "cni.dev/attachments", "disableCheck", "disableGC"}
)


def _mapping(name: str, value: Any) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ConfigError(name, value, "a JSON object")
    return value


def parse_netconf(data: Any) -> Parsed:
    """Validate the network configuration the runtime passed on stdin."""
    if not isinstance(data, Mapping):
        raise ConfigError("network config", data, "a JSON object")
    if "cniVersion" not in data:
        raise ConfigError("cniVersion", None, "one of " + ", ".join(SUPPORTED_CNI_VERSIONS))
    kwargs: dict[str, Any] = {}
    warnings = []
    for key, value in data.items():
        spec = _NETCONF_FIELDS.get(key)
        if spec is None:
            if key not in _NETCONF_RUNTIME_KEYS:
                warnings.append(f"network config {key}: unknown field, ignored")
            continue
        attr, parser = spec
        kwargs[attr] = parser(key, value)
    return Parsed(NetConf(**kwargs), tuple(warnings))


def netconf_to_dict(conf: NetConf) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, (attr, _p) in _NETCONF_FIELDS.items():
        value = getattr(conf, attr)
        if isinstance(value, tuple):
            value = list(value)
        out[key] = value
    return out


def render_conflist(conf: NetConf, chain: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """The ``10-terway.conflist`` the agent writes: terway first, then chained plugins."""
    terway = netconf_to_dict(conf)
    terway.pop("cniVersion")
    terway.pop("name")
    return {"cniVersion": conf.cni_version, "name": conf.name, "plugins": [terway, *(chain or [])]}


# ---------------------------------------------------------------------------
# Agent settings
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class CloudEndpoint:
    """Where the cloud is (defaults: the real regional endpoints)."""

    endpoint: str = ""  # "host:port"; empty = the region's VPC endpoint
    protocol: str = "https"
    region_id: str = ""
    metadata_endpoint: str = "http://100.100.100.200"
    instance_id: str = ""  # empty = from metadata


@dataclass(frozen=True)
class Settings:
    """The agent process's own settings (file ``--config`` and flags)."""

    node_name: str = ""
    node_labels: dict[str, str] = field(default_factory=dict)
    mode: str = ""  # explicit mode override, same precedence as the explicit label
    eni_conf_path: str = "/etc/eni/eni_conf"
    netconf_path: str = ""  # the original's 10-terway.conf key; empty = built-in defaults
    configmap_dir: str = ""  # standalone: <dir>/<name>.json|yaml = eni_conf of ConfigMap <name>
    socket_path: str = "/var/run/eni/eni.socket"
    lock_path: str = "/var/run/eni/terwayd.lock"
    state_dir: str = "/var/lib/terway-agent"
    cni_conf_dir: str = "/etc/cni/net.d"
    cni_conf_name: str = "10-terway.conflist"
    cni_bin_dir: str = "/opt/cni/bin"
    cni_chain: tuple[dict[str, Any], ...] = ()
    debug_listen: str = "127.0.0.1:6061"
    log_level: str = "info"
    log_json: bool | None = None
    reload_interval: float = 2.0
    gc_interval: float = 300.0
    repair_interval: float = 60.0
    shutdown_grace: float = 20.0
    cloud: CloudEndpoint | None = None
    kubeconfig: str = ""
    #: in-cluster (``kubeconfig`` empty): the directory of the service account's ``token`` and
    #: ``ca.crt``; empty = /var/run/secrets/kubernetes.io/serviceaccount
    kube_serviceaccount_dir: str = ""
    use_kubernetes: bool = False
    #: free-form configuration per plugin name, handed to the plugin as ``ctx.plugin_config``
    plugin_config: dict[str, dict[str, Any]] = field(default_factory=dict)


def _labels(name: str, value: Any) -> dict[str, str]:
    if isinstance(value, str):
        out = {}
        for item in value.split(","):
            item = item.strip()
            if not item:
                continue
            if "=" not in item:
                raise ConfigError(name, value, "comma-separated key=value pairs")
            k, v = item.split("=", 1)
            out[k.strip()] = v.strip()
        return out
    return _str_map(name, value)


def _cloud(name: str, value: Any) -> CloudEndpoint | None:
    if value is None:
        return None
    m = _mapping(name, value)
    kw = {}
    for k, v in m.items():
        if k not in {f.name for f in fields(CloudEndpoint)}:
            raise ConfigError(f"{name}.{k}", v, "one of " + ", ".join(f.name for f in fields(CloudEndpoint)))
        kw[k] = _choice("http", "https")(f"{name}.{k}", v) if k == "protocol" else _str(f"{name}.{k}", v)
    return CloudEndpoint(**kw)


def _chain(name: str, value: Any) -> tuple[dict[str, Any], ...]:
    if not isinstance(value, list) or not all(isinstance(p, Mapping) and isinstance(p.get("type"), str) for p in value):
        raise ConfigError(name, value, 'a list of plugin objects each with a "type"')
    return tuple(dict(p) for p in value)


_SETTINGS_FIELDS: dict[str, Callable[[str, Any], Any]] = {
    "node_name": _str,
    "node_labels": _labels,
    "mode": _str,
    "eni_conf_path": _str,
    "netconf_path": _str,
    "configmap_dir": _str,
    "socket_path": _str,
    "lock_path": _str,
    "state_dir": _str,
    "cni_conf_dir": _str,
    "cni_conf_name": _str,
    "cni_bin_dir": _str,
    "cni_chain": _chain,
    "debug_listen": _str,
    "log_level": _choice("debug", "info", "warning", "error"),
    "log_json": lambda n, v: None if v is None else _bool(n, v),
    "reload_interval": _float(0.1, 3600),
    "gc_interval": _float(1, 86400),
    "repair_interval": _float(1, 86400),
    "shutdown_grace": _float(0, 600),
    "cloud": _cloud,
    "kubeconfig": _str,
    "kube_serviceaccount_dir": _str,
    "use_kubernetes": _bool,
    "plugin_config": lambda n, v: {k: dict(_mapping(f"{n}.{k}", x)) for k, x in _mapping(n, v).items()},
}


def parse_settings(data: Mapping[str, Any], *, source: str = "settings") -> Parsed:
    kwargs: dict[str, Any] = {}
    warnings = []
    for key, value in data.items():
        parser = _SETTINGS_FIELDS.get(key)
        if parser is None:
            warnings.append(f"{source}.{key}: unknown field, ignored")
            continue
        kwargs[key] = parser(f"{source}.{key}", value)
    settings = Settings(**kwargs)
    if settings.debug_listen:
        _host_port(f"{source}.debug_listen", settings.debug_listen)
    return Parsed(settings, tuple(warnings))


def _host_port(name: str, value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(name, value, "host:port such as 127.0.0.1:6061 (port 0 = any free port)")
    return host, int(port)


def load_document(path: str | Path, *, field_name: str) -> Any:
    """Read a YAML or JSON file (JSON is YAML) and return the parsed data."""
    p = Path(path)
    try:
        text = p.read_text()
    except FileNotFoundError:
        raise ConfigError(field_name, str(p), "an existing file") from None
    except OSError as exc:
        raise ConfigError(field_name, str(p), f"a readable file ({exc.strerror})") from None
    if p.suffix == ".json" or text.lstrip().startswith("{"):
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(field_name, str(p), f"valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        # Only the position and the problem: PyYAML's full text quotes the
        # document, which may hold credentials.
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1} column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or type(exc).__name__
        raise ConfigError(field_name, str(p), f"valid YAML ({problem}{where})") from None


# ---------------------------------------------------------------------------
# The whole configuration of a running agent
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class AgentConfig:
    """Everything a running agent was configured with; immutable snapshots, replaced on reload."""

    settings: Settings
    eni: EniConf
    netconf: NetConf
    mode: str
    mode_reason: str
    labels: dict[str, str] = field(default_factory=dict)
    dynamic_config: str = ""  # name of the terway-config ConfigMap merged in, if any
