"""Building the agent configuration from its documents."""

from __future__ import annotations

import pytest

from terway_agent.config import Settings
from terway_agent.daemon.loader import Sources, build_config, configmap_eni_conf, reload_config, terway_entry
from terway_agent.errors import ConfigError


def test_single_network_config_is_taken_as_is() -> None:
    entry, chain = terway_entry({"cniVersion": "1.0.0", "type": "terway", "mtu": 9000})
    assert entry == {"cniVersion": "1.0.0", "type": "terway", "mtu": 9000} and chain == []


def test_conflist_gives_the_terway_entry_and_the_chain() -> None:
    doc = {
        "cniVersion": "1.0.0",
        "name": "terway",
        "plugins": [{"type": "terway", "mtu": 1450}, {"type": "portmap", "capabilities": {"portMappings": True}}],
    }
    entry, chain = terway_entry(doc)
    assert entry == {"type": "terway", "mtu": 1450, "cniVersion": "1.0.0", "name": "terway"}
    assert chain == [{"type": "portmap", "capabilities": {"portMappings": True}}]
    cfg, _ = build_config(Settings(), Sources({}, {}, "eni_conf", netconf=doc))
    assert cfg.netconf.mtu == 1450
    assert [p["type"] for p in cfg.settings.cni_chain] == ["portmap"]


@pytest.mark.parametrize(
    "plugins",
    [[{"type": "portmap"}], [{"type": "portmap"}, {"type": "terway"}], [{"type": "terway"}, {"type": "terway"}], "x"],
)
def test_conflist_without_exactly_one_leading_terway_is_refused(plugins: object) -> None:
    with pytest.raises(ConfigError) as info:
        terway_entry({"cniVersion": "1.0.0", "plugins": plugins})
    assert info.value.field == "CNI config plugins"


def test_configmap_document_or_bare_eni_conf() -> None:
    assert configmap_eni_conf({"data": {"eni_conf": '{"max_pool_size": 3}'}}, field_name="cm") == {"max_pool_size": 3}
    assert configmap_eni_conf({"max_pool_size": 3}, field_name="cm") == {"max_pool_size": 3}
    with pytest.raises(ConfigError) as info:
        configmap_eni_conf({"data": {"other": "x"}}, field_name="cm")
    assert info.value.field == "cm.data.eni_conf"
    with pytest.raises(ConfigError) as info:
        configmap_eni_conf({"data": {"eni_conf": "{not json"}}, field_name="cm")
    assert "valid JSON" in info.value.expected


def test_dynamic_config_is_merged_and_reload_splits_hot_and_cold() -> None:
    base = {"max_pool_size": 5, "ip_stack": "ipv4"}
    src = Sources({"terway-config": "pool-a"}, base, "eni_conf", "pool-a", {"max_pool_size": 8})
    cfg, _ = build_config(Settings(), src)
    assert cfg.eni.max_pool_size == 8 and cfg.dynamic_config == "pool-a"
    new, _ = build_config(Settings(), Sources({}, {"max_pool_size": 2, "ip_stack": "dual"}, "eni_conf"))
    outcome = reload_config(cfg, new)
    assert outcome.applied == ("max_pool_size",)
    assert outcome.needs_restart == ("ip_stack",)
    assert outcome.config.eni.max_pool_size == 2 and outcome.config.eni.ip_stack == "ipv4"
