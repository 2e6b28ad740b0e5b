"""The eni-config and terway-config ConfigMaps are read from the API and watched: changes
apply live where the core allows, others are reported, bad ones are refused with an Event."""

from __future__ import annotations

import json

import pytest

from k8s.kit import events_for, wait_for

pytestmark = [pytest.mark.slow]


def _set_eni_conf(core, env, name: str, conf: dict | str) -> None:
    text = conf if isinstance(conf, str) else json.dumps(conf)
    core.patch_namespaced_config_map(name, env.namespace, {"data": {"eni_conf": text}})


def test_configmap_changes_are_picked_up_live(twk8s_api, kenv_factory):
    env = kenv_factory(twk8s_api, eni_conf={"max_pool_size": 5, "kube_client_qps": 20})
    core = env.core()
    agent = env.agent()
    agent.start(timeout=30)

    # a live field: applied without a restart
    _set_eni_conf(core, env, "eni-config", {"max_pool_size": 7, "kube_client_qps": 20})
    applied = agent.wait_line("config.reload.applied")
    assert applied[-1]["fields"] == ["max_pool_size"]

    # the client's own rate limit is live too
    _set_eni_conf(
        core, env, "eni-config", {"max_pool_size": 7, "kube_client_qps": 50, "kube_client_burst": 60}
    )
    reconf = agent.wait_line("k8s.client.reconfigured")
    assert (reconf[-1]["qps"], reconf[-1]["burst"]) == (50.0, 60)

    # a field that needs a restart: reported, the running value stays
    _set_eni_conf(
        core,
        env,
        "eni-config",
        {"max_pool_size": 7, "kube_client_qps": 50, "kube_client_burst": 60, "service_cidr": "172.21.0.0/20"},
    )
    restart = agent.wait_line("config.reload.restart_required")
    assert restart[-1]["fields"] == ["service_cidr"]

    # an invalid document: refused, the old configuration stays, a ConfigError Event on the Node
    _set_eni_conf(core, env, "eni-config", '{"max_pool_size": "lots"}')
    rejected = agent.wait_line("config.reload.rejected")
    assert "max_pool_size: got 'lots', expected an integer" in rejected[-1]["error"]
    ev = wait_for(
        "a ConfigError event on the node", lambda: events_for(core, "default", env.node, "ConfigError")
    )
    assert ev[0].type == "Warning"
    assert ev[0].involved_object.kind == "Node"
    assert ev[0].involved_object.uid == core.read_node(env.node).metadata.uid
    assert ev[0].source.component == "terway-agent"
    assert ev[0].message == "eni_conf.max_pool_size: got 'lots', expected an integer between 0 and 10000"
    # the same error again is aggregated into the same Event (count 2), not a second object
    _set_eni_conf(core, env, "eni-config", '{"max_pool_size": "lots", "min_pool_size": 0}')
    agent.wait_line("config.reload.rejected", count=2)
    evs = wait_for(
        "the event count to rise",
        lambda: [e for e in events_for(core, "default", env.node, "ConfigError") if (e.count or 1) >= 2],
    )
    assert len(events_for(core, "default", env.node, "ConfigError")) == 1
    assert evs[0].count == 2

    # the node pool's terway-config ConfigMap: merged onto eni_conf once the node is labelled
    _set_eni_conf(
        core,
        env,
        "eni-config",
        {"max_pool_size": 7, "kube_client_qps": 50, "kube_client_burst": 60, "service_cidr": "172.21.0.0/20"},
    )
    n_applied = len(agent.lines("config.reload.applied"))
    core.create_namespaced_config_map(
        env.namespace,
        {"metadata": {"name": "pool-a"}, "data": {"eni_conf": json.dumps({"max_pool_size": 9})}},
    )
    core.patch_node(env.node, {"metadata": {"labels": {"terway-config": "pool-a"}}})
    applied = agent.wait_line("config.reload.applied", count=n_applied + 1)
    assert applied[-1]["fields"] == ["max_pool_size"]
    # ...and followed when it changes
    _set_eni_conf(core, env, "pool-a", {"max_pool_size": 11, "min_pool_size": 2})
    applied = agent.wait_line("config.reload.applied", count=n_applied + 2)
    assert sorted(applied[-1]["fields"]) == ["max_pool_size", "min_pool_size"]
    # a node label naming a ConfigMap that does not exist is refused, naming the label
    core.patch_node(env.node, {"metadata": {"labels": {"terway-config": "pool-missing"}}})
    rejected = agent.wait_line("config.reload.rejected", count=3)
    assert "node label terway-config: got 'pool-missing'" in rejected[-1]["error"]
    # a mode label change cannot apply to a running agent: reported
    n_restart = len(agent.lines("config.reload.restart_required"))
    core.patch_node(
        env.node,
        {
            "metadata": {
                "labels": {"terway-config": None, "terway.alibabacloud.com/network-mode": "shared_eni"}
            }
        },
    )
    restart = agent.wait_line("config.reload.restart_required", count=n_restart + 1)
    assert any("mode (example -> shared_eni)" in f for f in restart[-1]["fields"])
    assert agent.stop() == 0


def test_a_broken_eni_config_at_start_is_an_event_and_an_exit(twk8s_api, kenv_factory):
    env = kenv_factory(twk8s_api)
    core = env.core()
    _set_eni_conf(core, env, "eni-config", "{not json")
    agent = env.agent()
    agent.start(wait=False)
    assert agent.exit_code(30) == 2
    assert (
        f"ConfigMap {env.namespace}/eni-config data.eni_conf: got '<document>', expected valid JSON"
        in agent.log()
    )
    ev = wait_for("a ConfigError event", lambda: events_for(core, "default", env.node, "ConfigError"))
    assert "expected valid JSON" in ev[0].message
