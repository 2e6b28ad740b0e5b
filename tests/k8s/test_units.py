"""The Kubernetes integration's pure parts: tuning validation, error translation, owner kinds,
the ignore label, the client-side rate limit and the configuration sources' errors."""

from __future__ import annotations

import json

import pytest
import trio
from kubernetes.client.exceptions import ApiException

from terway_agent.config import Settings
from terway_agent.daemon.loader import build_config
from terway_agent.errors import ConfigError
from terway_agent.k8s import KubeForbidden, KubeGone, KubeRequestError, KubeUnavailable, Tuning, _metrics
from terway_agent.k8s._client import TokenBucket, translate
from terway_agent.k8s._informer import Informer
from terway_agent.k8s._pods import is_ignored, owner_kind
from terway_agent.k8s._sources import KubeSources


def test_tuning_validates_every_key(monkeypatch):
    monkeypatch.delenv("POD_NAMESPACE", raising=False)
    assert Tuning.from_mapping(None).namespace == "kube-system"
    monkeypatch.setenv("POD_NAMESPACE", "net-system")
    t = Tuning.from_mapping({"watch_timeout": 60, "request_timeout": 5})
    assert (t.namespace, t.watch_timeout, t.request_timeout) == ("net-system", 60, 5.0)
    assert Tuning.from_mapping({"namespace": "x"}).namespace == "x"
    with pytest.raises(ConfigError, match=r"plugin_config.kubernetes.watch_timeut: got 5, expected one of "):
        Tuning.from_mapping({"watch_timeut": 5})
    with pytest.raises(
        ConfigError, match=r"plugin_config.kubernetes.watch_timeout: got 0, expected an integer >= 1"
    ):
        Tuning.from_mapping({"watch_timeout": 0})
    with pytest.raises(ConfigError, match=r"check_permissions: got 'no', expected true or false"):
        Tuning.from_mapping({"check_permissions": "no"})
    with pytest.raises(ConfigError, match=r"request_timeout: got -1, expected a number of seconds > 0"):
        Tuning.from_mapping({"request_timeout": -1})


def _api_exc(status: int, message: str, reason: str) -> ApiException:
    exc = ApiException(status=status, reason=reason)
    exc.body = json.dumps({"kind": "Status", "message": message, "reason": reason, "code": status}).encode()
    return exc


def test_api_errors_are_translated_with_what_was_refused():
    err = translate(
        _api_exc(403, 'pods is forbidden: User "u" cannot list resource "pods"', "Forbidden"), "list pods"
    )
    assert isinstance(err, KubeForbidden) and err.status == 403
    assert err.message.startswith(
        "the Kubernetes API refused to let terway-agent list pods (403 Forbidden): pods is"
    )
    assert "rbac.yaml" in err.message
    assert isinstance(translate(_api_exc(401, "Unauthorized", "Unauthorized"), "get nodes"), KubeForbidden)
    gone = translate(_api_exc(410, "too old resource version", "Expired"), "watch pods")
    assert isinstance(gone, KubeGone) and "410 Gone" in gone.message
    for status in (429, 500, 503):
        assert isinstance(translate(_api_exc(status, "busy", "x"), "patch pods"), KubeUnavailable)
    bad = translate(_api_exc(422, "spec.x: Invalid value", "Invalid"), "patch nodes/status")
    assert isinstance(bad, KubeRequestError) and bad.cni_code == 100
    from urllib3.exceptions import MaxRetryError

    down = translate(MaxRetryError(None, "/api", "connection refused"), "list pods")
    assert isinstance(down, KubeUnavailable) and down.status == 0 and down.cni_code == 11


def test_owner_kind_prefers_stateful_owners():
    def pod(*refs):
        return {"metadata": {"ownerReferences": list(refs)}}

    sts = {"kind": "StatefulSet", "name": "db"}
    rs = {"kind": "ReplicaSet", "name": "web", "controller": True}
    clone = {"kind": "cloneset", "name": "c"}
    assert owner_kind(pod(rs), ()) == "ReplicaSet"
    assert owner_kind(pod(rs, sts), ()) == "StatefulSet"
    assert owner_kind(pod(clone), ("CloneSet",)) == "CloneSet"  # case-insensitive, configured spelling
    assert owner_kind(pod(clone), ()) == "cloneset"
    assert owner_kind(pod(), ()) == ""


def test_the_ignore_label_must_be_exactly_true():
    assert is_ignored({"k8s.aliyun.com/ignore-by-terway": "true"})
    assert not is_ignored({"k8s.aliyun.com/ignore-by-terway": "false"})
    assert not is_ignored({"k8s.aliyun.com/ignore-by-terway": "yes"})
    assert not is_ignored(None)


async def test_the_client_side_rate_limit_waits_once_the_burst_is_spent():
    bucket = TokenBucket(qps=200, burst=3)
    before = _metrics.THROTTLED._value.get()
    started = trio.current_time()
    for _ in range(5):
        await bucket.acquire()
    assert _metrics.THROTTLED._value.get() - before == 2
    assert trio.current_time() - started >= 2 / 200 * 0.9
    bucket.configure(qps=1000, burst=1)
    assert bucket.burst == 1


def _sources(nodes: dict, cms: dict) -> KubeSources:
    ni = Informer(None, "nodes", lambda **_: None)  # type: ignore[arg-type]
    ci = Informer(None, "configmaps", lambda **_: None)  # type: ignore[arg-type]
    ni.cache.update(nodes)
    ci.cache.update(cms)
    return KubeSources(Settings(), "n1", "kube-system", "eni-config", ni, ci)


def _cm(name: str, **data: str) -> dict:
    return {"metadata": {"name": name, "namespace": "kube-system", "resourceVersion": "7"}, "data": data}


def test_sources_name_the_configmap_and_key_that_is_wrong():
    node = {"n1": {"metadata": {"name": "n1", "labels": {"terway-config": "pool-a"}, "resourceVersion": "3"}}}
    with pytest.raises(
        ConfigError, match=r"ConfigMap kube-system/eni-config: got None, expected an existing"
    ):
        _sources(node, {}).read()
    with pytest.raises(ConfigError, match=r"eni-config data.eni_conf: got None, expected the eni_conf key"):
        _sources(node, {"kube-system/eni-config": _cm("eni-config")}).read()
    base = {
        "kube-system/eni-config": _cm(
            "eni-config",
            eni_conf='{"max_pool_size": 3}',
            **{"10-terway.conf": '{"cniVersion": "0.4.0", "mtu": 1450}'},
        )
    }
    with pytest.raises(
        ConfigError, match=r"node label terway-config: got 'pool-a', expected the name of an existing"
    ):
        _sources(node, base).read()
    ok = _sources(node, {**base, "kube-system/pool-a": _cm("pool-a", eni_conf='{"max_pool_size": 9}')})
    src = ok.read()
    assert src.dynamic_name == "pool-a" and src.dynamic_patch == {"max_pool_size": 9}
    cfg, _warnings = build_config(Settings(), src)
    assert cfg.eni.max_pool_size == 9 and cfg.netconf.mtu == 1450 and cfg.dynamic_config == "pool-a"
    fp = ok.fingerprint({})
    assert fp == ((("terway-config", "pool-a"),), "7", "pool-a", "7")
