"""eni_conf, CNI network config and agent settings: defaults, validation, merge patch, reload."""

from __future__ import annotations

import json

import pytest

from terway_agent.config import (
    HOT_RELOADABLE,
    EniConf,
    NetConf,
    apply_hot,
    diff_eni_conf,
    load_document,
    merge_patch,
    parse_duration,
    parse_eni_conf,
    parse_netconf,
    parse_settings,
    render_conflist,
)
from terway_agent.errors import ConfigError


def test_eni_conf_defaults_are_the_originals() -> None:
    conf = parse_eni_conf({}).value
    assert conf.max_pool_size == 5
    assert conf.min_pool_size == 0
    assert conf.vswitch_selection_policy == "random"
    assert conf.eni_selection_policy == "most_ips"
    assert conf.ip_stack == "ipv4"
    assert conf.enable_eni_trunking is False
    assert conf.ip_pool_sync_period == 120.0
    assert conf.idle_ip_reclaim_after is None
    assert conf.idle_ip_reclaim_interval == 600.0
    assert conf.idle_ip_reclaim_batch_size == 5
    assert conf.idle_ip_reclaim_jitter_factor == 0.1
    assert conf.enable_patch_pod_ips is True
    assert conf.eni_cap_ratio == 1.0 and conf.eni_cap_shift == 0
    assert conf.ip_reuse_cooldown == 30.0
    assert conf.stateful_ip_hold == 300.0


def test_eni_conf_full_document_as_the_original_ships_it() -> None:
    doc = {
        "version": "1",
        "max_pool_size": 25,
        "min_pool_size": 10,
        "credential_path": "/var/addon/token-config",
        "vswitches": {"cn-hangzhou-i": ["vsw-aaa", "vsw-bbb"]},
        "eni_tags": {"ack.aliyun.com": "c123"},
        "service_cidr": "172.21.0.0/20",
        "security_group": "sg-1",
        "security_groups": ["sg-2", "sg-1"],
        "vswitch_selection_policy": "ordered",
        "ip_stack": "dual",
        "rate_limit": {"CreateNetworkInterface": 100},
        "backoff_override": {"eni_create": {"duration": "5s", "factor": 2, "steps": 3}},
        "idle_ip_reclaim_after": "30m",
        "enable_patch_pod_ips": "true",
    }
    parsed = parse_eni_conf(json.dumps(doc))
    conf: EniConf = parsed.value
    assert conf.max_pool_size == 25 and conf.min_pool_size == 10
    assert conf.vswitches == {"cn-hangzhou-i": ("vsw-aaa", "vsw-bbb")}
    assert conf.service_cidr == ("172.21.0.0/20",)
    assert conf.all_security_groups == ("sg-1", "sg-2")
    assert conf.rate_limit == {"CreateNetworkInterface": 100}
    assert conf.backoff_override == {"eni_create": {"duration": "5s", "factor": 2, "steps": 3}}
    assert conf.idle_ip_reclaim_after == 1800.0
    assert conf.enable_patch_pod_ips is True
    # "version" is not one of ours: a warning, not an error; so is a dual stack without an IPv6 Service CIDR
    assert parsed.warnings == (
        "eni_conf.version: unknown field, ignored",
        "eni_conf.service_cidr: ip_stack is dual but no IPv6 Service CIDR is given",
    )


@pytest.mark.parametrize(
    ("doc", "field", "expected"),
    [
        ({"max_pool_size": "5"}, "eni_conf.max_pool_size", "an integer between 0 and 10000"),
        ({"max_pool_size": True}, "eni_conf.max_pool_size", "an integer"),
        ({"max_pool_size": -1}, "eni_conf.max_pool_size", "between 0 and 10000"),
        ({"min_pool_size": 9, "max_pool_size": 5}, "eni_conf.min_pool_size", "<= max_pool_size (5)"),
        ({"vswitch_selection_policy": "cheapest"}, "eni_conf.vswitch_selection_policy", "'ordered', 'most', 'random'"),
        ({"ip_stack": "v4"}, "eni_conf.ip_stack", "'ipv4', 'dual', 'ipv6'"),
        ({"service_cidr": "172.21.0.1/20"}, "eni_conf.service_cidr", "CIDRs"),
        ({"vswitches": {"z": ["sw-1"]}}, "eni_conf.vswitches.z", 'starting with "vsw-"'),
        ({"vswitches": ["vsw-1"]}, "eni_conf.vswitches", "an object"),
        ({"rate_limit": {"AssignPrivateIpAddresses": 0}}, "eni_conf.rate_limit.AssignPrivateIpAddresses", "a positive integer"),
        ({"rate_limit": {"CreateNetworkInterfac": 10}}, "eni_conf.rate_limit.CreateNetworkInterfac", "an OpenAPI name"),
        ({"backoff_override": {"eni_ops": {"duration": "fast"}}}, "eni_conf.backoff_override.eni_ops.duration", "duration"),
        ({"backoff_override": {"eni_ops": {"retries": 3}}}, "eni_conf.backoff_override.eni_ops.retries", "one of duration"),
        ({"backoff_override": {"eni_nap": {"steps": 3}}}, "eni_conf.backoff_override.eni_nap", "a backoff key"),
        ({"idle_ip_reclaim_after": "ten minutes"}, "eni_conf.idle_ip_reclaim_after", "a duration"),
        ({"eni_cap_ratio": 1.5}, "eni_conf.eni_cap_ratio", "between 0 and 1"),
        ({"enable_eni_trunking": "yes"}, "eni_conf.enable_eni_trunking", "true or false"),
        ({"security_groups": [f"sg-{i}" for i in range(11)]}, "eni_conf.security_groups", "at most 10"),
        ({"access_key": "AK"}, "eni_conf.access_secret", "set together with access_key"),
    ],
)
def test_eni_conf_errors_name_field_value_and_expectation(doc: dict, field: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_eni_conf(doc)
    err = info.value
    assert err.field == field
    assert expected in err.expected
    assert field in str(err) and "expected" in str(err)


def test_eni_conf_malformed_json_says_where() -> None:
    with pytest.raises(ConfigError) as info:
        parse_eni_conf('{"max_pool_size": 5,}')
    assert info.value.field == "eni_conf"
    assert "valid JSON" in info.value.expected and "line 1" in info.value.expected


def test_secrets_never_in_repr_or_errors(tmp_path) -> None:
    conf = parse_eni_conf({"access_key": "AKID", "access_secret": "s3cr3t-value"}).value
    assert "s3cr3t" not in repr(conf)
    assert "AKID" not in repr(conf)
    # YAML makes an all-digit secret an int: the error must not echo it
    with pytest.raises(ConfigError) as info:
        parse_eni_conf({"access_key": "AKID", "access_secret": 88374619283746501})
    assert "88374619283746501" not in str(info.value) and "<redacted>" in str(info.value)
    # a malformed document is reported by position only
    with pytest.raises(ConfigError) as info:
        parse_eni_conf('{"access_secret": "s3cr3t-value", oops}')
    assert "s3cr3t" not in str(info.value) and "line 1" in str(info.value)
    bad = tmp_path / "eni_conf.yaml"
    bad.write_text("access_key: AKID\naccess_secret: s3cr3t-value\n  - broken: [\n")
    with pytest.raises(ConfigError) as info:
        load_document(bad, field_name="eni_conf_path")
    assert "s3cr3t" not in str(info.value) and "valid YAML" in str(info.value)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30s", 30), ("10m", 600), ("1h30m", 5400), ("1.5s", 1.5), ("250ms", 0.25), (45, 45), ("0", 0)],
)
def test_durations(text: object, seconds: float) -> None:
    assert parse_duration("x", text) == pytest.approx(seconds)


@pytest.mark.parametrize("bad", ["", "10", "1d", "m10", "10m garbage", -1, True])
def test_bad_durations(bad: object) -> None:
    with pytest.raises(ConfigError):
        parse_duration("x", bad)


# RFC 7396, Appendix A: every example.
@pytest.mark.parametrize(
    ("target", "patch", "result"),
    [
        ({"a": "b"}, {"a": "c"}, {"a": "c"}),
        ({"a": "b"}, {"b": "c"}, {"a": "b", "b": "c"}),
        ({"a": "b"}, {"a": None}, {}),
        ({"a": "b", "b": "c"}, {"a": None}, {"b": "c"}),
        ({"a": ["b"]}, {"a": "c"}, {"a": "c"}),
        ({"a": "c"}, {"a": ["b"]}, {"a": ["b"]}),
        ({"a": {"b": "c"}}, {"a": {"b": "d", "c": None}}, {"a": {"b": "d"}}),
        ({"a": [{"b": "c"}]}, {"a": [1]}, {"a": [1]}),
        (["a", "b"], ["c", "d"], ["c", "d"]),
        ({"a": "b"}, ["c"], ["c"]),
        ({"a": "foo"}, None, None),
        ({"a": "foo"}, "bar", "bar"),
        ({"e": None}, {"a": 1}, {"e": None, "a": 1}),
        ([1, 2], {"a": "b", "c": None}, {"a": "b"}),
        ({}, {"a": {"bb": {"ccc": None}}}, {"a": {"bb": {}}}),
    ],
)
def test_merge_patch_rfc7396_examples(target: object, patch: object, result: object) -> None:
    before = json.dumps(target)
    assert merge_patch(target, patch) == result
    assert json.dumps(target) == before  # inputs untouched


def test_hot_reload_split() -> None:
    old = parse_eni_conf({"max_pool_size": 5, "ip_stack": "ipv4"}).value
    new = parse_eni_conf({"max_pool_size": 9, "min_pool_size": 2, "ip_stack": "dual"}).value
    hot, cold = diff_eni_conf(old, new)
    assert sorted(hot) == ["max_pool_size", "min_pool_size"]
    assert cold == ["ip_stack"]
    merged = apply_hot(old, new)
    assert merged.max_pool_size == 9 and merged.min_pool_size == 2
    assert merged.ip_stack == "ipv4"  # needs a restart
    assert "rate_limit" in HOT_RELOADABLE


def test_netconf_parse_and_render_round_trip() -> None:
    doc = {
        "cniVersion": "1.0.0",
        "name": "terway",
        "type": "terway",
        "eniip_virtual_type": "Veth",
        "host_stack_cidrs": ["169.254.20.10/32"],
        "mtu": 9000,
        "runtimeConfig": {"bandwidth": {}},
        "fancy": 1,
    }
    parsed = parse_netconf(doc)
    conf: NetConf = parsed.value
    assert conf.mtu == 9000 and conf.host_stack_cidrs == ("169.254.20.10/32",)
    assert parsed.warnings == ("network config fancy: unknown field, ignored",)
    rendered = render_conflist(conf, [{"type": "portmap", "capabilities": {"portMappings": True}}])
    assert rendered["cniVersion"] == "1.0.0" and rendered["name"] == "terway"
    assert [p["type"] for p in rendered["plugins"]] == ["terway", "portmap"]
    again = parse_netconf({"cniVersion": "1.0.0", "name": "terway", **rendered["plugins"][0]}).value
    assert again == conf


@pytest.mark.parametrize(
    ("doc", "field"),
    [
        ({"cniVersion": "1.0.0", "type": "terway", "mtu": 100}, "mtu"),
        ({"cniVersion": "1.0.0", "type": "ptp"}, "type"),
        ({"cniVersion": "1.0.0", "type": "terway", "host_stack_cidrs": ["nope"]}, "host_stack_cidrs"),
        ({"type": "terway"}, "cniVersion"),
        ({"cniVersion": "9.9.9", "type": "terway"}, "cniVersion"),
    ],
)
def test_netconf_errors(doc: dict, field: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_netconf(doc)
    assert info.value.field == field


def test_settings_labels_and_errors() -> None:
    s = parse_settings({"node_labels": "a=b, c=d", "debug_listen": "127.0.0.1:0"}).value
    assert s.node_labels == {"a": "b", "c": "d"}
    with pytest.raises(ConfigError) as info:
        parse_settings({"node_labels": "a"})
    assert info.value.field == "settings.node_labels"
    with pytest.raises(ConfigError) as info:
        parse_settings({"debug_listen": "localhost"})
    assert info.value.field == "settings.debug_listen"
    with pytest.raises(ConfigError) as info:
        parse_settings({"cloud": {"endpoint": "x", "color": "red"}})
    assert info.value.field == "settings.cloud.color"
    assert parse_settings({"nope": 1}).warnings == ("settings.nope: unknown field, ignored",)
