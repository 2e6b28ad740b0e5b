"""Mode selection per node pool: precedence and conflicts (docs/configuration.md)."""

from __future__ import annotations

import pytest

from terway_agent.config import NetConf, merge_patch, parse_eni_conf
from terway_agent.errors import ConfigError
from terway_agent.mode_select import LABEL_EXCLUSIVE, LABEL_MODE, select_mode


def eni(**kw: object):
    return parse_eni_conf(kw).value


def test_default_is_shared_eni() -> None:
    d = select_mode({}, eni())
    assert (d.mode, d.reason) == ("shared_eni", "default")


def test_explicit_label() -> None:
    d = select_mode({LABEL_MODE: "datapath_v2"}, eni())
    assert d.mode == "datapath_v2"
    assert d.reason == f"label {LABEL_MODE}=datapath_v2"


def test_flag_equals_label_or_stands_alone() -> None:
    assert select_mode({}, eni(), flag_mode="example").mode == "example"
    assert select_mode({LABEL_MODE: "trunk"}, eni(), flag_mode="trunk").mode == "trunk"
    with pytest.raises(ConfigError) as info:
        select_mode({LABEL_MODE: "trunk"}, eni(), flag_mode="shared_eni")
    assert info.value.field == "--mode"


def test_exclusive_label() -> None:
    d = select_mode({LABEL_EXCLUSIVE: "eniOnly"}, eni())
    assert d.mode == "exclusive_eni" and d.reason == f"label {LABEL_EXCLUSIVE}=eniOnly"
    assert select_mode({LABEL_EXCLUSIVE: "default"}, eni()).mode == "shared_eni"


def test_bad_exclusive_label_value() -> None:
    with pytest.raises(ConfigError) as info:
        select_mode({LABEL_EXCLUSIVE: "true"}, eni())
    assert info.value.field == f"label {LABEL_EXCLUSIVE}" and "eniOnly" in info.value.expected


def test_explicit_and_exclusive_labels_conflict() -> None:
    with pytest.raises(ConfigError) as info:
        select_mode({LABEL_MODE: "shared_eni", LABEL_EXCLUSIVE: "eniOnly"}, eni())
    assert "remove one of the two labels" in info.value.expected
    # agreeing labels are fine
    assert select_mode({LABEL_MODE: "exclusive_eni", LABEL_EXCLUSIVE: "eniOnly"}, eni()).mode == "exclusive_eni"


@pytest.mark.parametrize(
    ("conf", "netconf", "mode"),
    [
        ({"enable_eni_trunking": True}, None, "trunk"),
        ({"eniip_virtual_type": "IPVlan"}, None, "ipvlan_ebpf"),
        ({"eniip_virtual_type": "datapathv2"}, None, "datapath_v2"),
        ({}, NetConf(eniip_virtual_type="datapathv2"), "datapath_v2"),
        ({}, NetConf(eniip_virtual_type="veth"), "shared_eni"),
        ({"enable_eni_trunking": True}, NetConf(eniip_virtual_type="veth"), "trunk"),
    ],
)
def test_configuration_fields_pick_the_mode(conf: dict, netconf: NetConf | None, mode: str) -> None:
    assert select_mode({}, eni(**conf), netconf).mode == mode


def test_trunking_with_other_virtual_type_is_a_conflict() -> None:
    with pytest.raises(ConfigError) as info:
        select_mode({}, eni(enable_eni_trunking=True, eniip_virtual_type="datapathv2"))
    assert info.value.field == "eni_conf.enable_eni_trunking"
    assert "datapath_v2" in info.value.expected


def test_explicit_label_overrides_config_with_a_warning() -> None:
    d = select_mode({LABEL_MODE: "shared_eni"}, eni(enable_eni_trunking=True))
    assert d.mode == "shared_eni"
    assert d.warnings and "would select trunk" in d.warnings[0]


def test_exclusive_label_beats_config_fields_with_a_warning() -> None:
    d = select_mode({LABEL_EXCLUSIVE: "eniOnly"}, eni(eniip_virtual_type="datapathv2"))
    assert d.mode == "exclusive_eni" and "ignored" in d.warnings[0]


def test_dynamic_config_merge_selects_trunk_for_a_node_pool() -> None:
    base = {"max_pool_size": 5, "enable_eni_trunking": False}
    pool_patch = {"enable_eni_trunking": True, "max_pool_size": None}
    merged = parse_eni_conf(merge_patch(base, pool_patch)).value
    d = select_mode({"terway-config": "pool-a"}, merged, dynamic_config="pool-a")
    assert d.mode == "trunk"
    assert d.reason == "eni_conf.enable_eni_trunking=true (terway-config pool-a merged)"
    assert merged.max_pool_size == 5  # null in the patch restores the default
