"""Which mode this node runs, decided once at start from its labels and configuration.

Precedence (docs/configuration.md, "Mode selection"):

1. the explicit label ``terway.alibabacloud.com/network-mode: <mode>`` (or the
   agent's ``mode`` setting / ``--mode`` flag, which is the same thing for nodes
   without a Kubernetes API);
2. the original's exclusive label ``k8s.aliyun.com/exclusive-mode-eni-type: eniOnly``
   -> ``exclusive_eni``;
3. the merged eni_conf (base + the node's ``terway-config`` ConfigMap) and the
   CNI config: ``enable_eni_trunking: true`` -> ``trunk``;
   ``eniip_virtual_type: ipvlan`` -> ``ipvlan_ebpf``; ``datapathv2`` -> ``datapath_v2``;
4. otherwise ``shared_eni``.

Conflicts are errors, never silently resolved: the explicit label and the
exclusive label disagreeing; the flag and the explicit label disagreeing;
trunking together with a non-veth virtual type.  An explicit label overriding
configuration fields is allowed and reported as a warning.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from terway_agent.config import EniConf, NetConf
from terway_agent.errors import ConfigError

LABEL_MODE = "terway.alibabacloud.com/network-mode"
LABEL_EXCLUSIVE = "k8s.aliyun.com/exclusive-mode-eni-type"
LABEL_DYNAMIC_CONFIG = "terway-config"
LABEL_IGNORE = "k8s.aliyun.com/ignore-by-terway"

EXCLUSIVE_VALUES = {"eniOnly": "exclusive_eni", "default": None}
VIRTUAL_TYPES = {"veth": "shared_eni", "ipvlan": "ipvlan_ebpf", "datapathv2": "datapath_v2"}
DEFAULT_MODE = "shared_eni"


@dataclass(frozen=True, slots=True)
class ModeDecision:
    mode: str
    reason: str  # "label terway.alibabacloud.com/network-mode=trunk", "default", ...
    warnings: tuple[str, ...] = ()


def _config_mode(eni: EniConf, netconf: NetConf | None) -> tuple[str | None, str]:
    vtype_src = "eni_conf.eniip_virtual_type"
    vtype = (eni.eniip_virtual_type or "").lower()
    if not vtype and netconf is not None:
        vtype = netconf.eniip_virtual_type.lower()
        vtype_src = "CNI config eniip_virtual_type"
    vmode = VIRTUAL_TYPES.get(vtype) if vtype else None
    if eni.enable_eni_trunking:
        if vmode not in (None, "shared_eni"):
            raise ConfigError(
                "eni_conf.enable_eni_trunking",
                True,
                f"false when {vtype_src} is {vtype!r} (trunk and {vmode} are two modes; "
                "this agent runs one mode per node)",
            )
        return "trunk", "eni_conf.enable_eni_trunking=true"
    if vmode and vmode != "shared_eni":
        return vmode, f"{vtype_src}={vtype}"
    return None, ""


def select_mode(
    labels: Mapping[str, str],
    eni: EniConf,
    netconf: NetConf | None = None,
    *,
    flag_mode: str = "",
    dynamic_config: str = "",
) -> ModeDecision:
    """Decide the mode.  Raises :class:`ConfigError` on conflicting or invalid selectors."""
    warnings: list[str] = []
    explicit = labels.get(LABEL_MODE, "").strip()
    if flag_mode and explicit and flag_mode != explicit:
        raise ConfigError(
            "--mode",
            flag_mode,
            f"the same mode as node label {LABEL_MODE}={explicit} (or no flag)",
        )
    explicit_src = f"label {LABEL_MODE}={explicit}" if explicit else ""
    if flag_mode and not explicit:
        explicit, explicit_src = flag_mode, f"setting mode={flag_mode}"

    excl_value = labels.get(LABEL_EXCLUSIVE)
    excl_mode = None
    if excl_value is not None:
        if excl_value not in EXCLUSIVE_VALUES:
            raise ConfigError(f"label {LABEL_EXCLUSIVE}", excl_value, "eniOnly or default")
        excl_mode = EXCLUSIVE_VALUES[excl_value]

    cfg_suffix = f" (terway-config {dynamic_config} merged)" if dynamic_config else ""
    cfg_mode, cfg_reason = _config_mode(eni, netconf)

    if explicit:
        if excl_mode and explicit != excl_mode:
            raise ConfigError(
                f"label {LABEL_MODE}",
                explicit,
                f"{excl_mode} because label {LABEL_EXCLUSIVE}={excl_value} selects it; remove one of the two labels",
            )
        if cfg_mode and cfg_mode != explicit:
            warnings.append(f"{explicit_src} overrides {cfg_reason}{cfg_suffix}, which would select {cfg_mode}")
        return ModeDecision(explicit, explicit_src, tuple(warnings))

    if excl_mode:
        if cfg_mode:
            warnings.append(
                f"label {LABEL_EXCLUSIVE}={excl_value} selects {excl_mode}; {cfg_reason}{cfg_suffix} is ignored"
            )
        return ModeDecision(excl_mode, f"label {LABEL_EXCLUSIVE}={excl_value}", tuple(warnings))

    if cfg_mode:
        return ModeDecision(cfg_mode, cfg_reason + cfg_suffix, tuple(warnings))
    return ModeDecision(DEFAULT_MODE, "default", tuple(warnings))
