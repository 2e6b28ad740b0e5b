"""terway-agent without a kubeconfig: the DaemonSet's way in, the pod's ServiceAccount.

The agent process gets what the kubelet gives a pod -- ``KUBERNETES_SERVICE_HOST`` /
``KUBERNETES_SERVICE_PORT`` and a directory holding ``token`` (a TokenRequest token of the
chart's ServiceAccount, with the chart's RBAC) and ``ca.crt`` (the apiserver's CA) -- found
through the ``kube_serviceaccount_dir`` setting instead of
/var/run/secrets/kubernetes.io/serviceaccount.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from k8s.conftest import KubeEnv
from k8s.kit import KubeAgent, events_for, kind_docs, settings_for, wait_for
from terway_agent.k8s._access import required_permissions

pytestmark = [pytest.mark.slow]

SYSTEM_SA_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"


def sa_dir(env: KubeEnv, token: str, name: str = "sa") -> Path:
    """A service-account directory as the kubelet mounts it: ``token`` and ``ca.crt``."""
    d = env.workdir / name
    d.mkdir(parents=True, exist_ok=True)
    write_token(d, token)
    shutil.copyfile(env.api.ca_crt, d / "ca.crt")
    return d


def write_token(d: Path, token: str) -> None:
    """Replace ``token`` atomically, as the kubelet's atomic writer does."""
    tmp = d / ".token.tmp"
    tmp.write_text(token)
    os.replace(tmp, d / "token")


def incluster_agent(
    env: KubeEnv, directory: Path | None, *, name: str = "agent", service_env: bool = True, **over: Any
) -> KubeAgent:
    """The agent with ``kubeconfig: ""``: in-cluster configuration only."""
    wd = env.workdir / name
    wd.mkdir(parents=True, exist_ok=True)
    s = settings_for(wd, node=env.node, namespace=env.namespace, kubeconfig=Path("unused"), **over)
    s["kubeconfig"] = ""
    if directory is not None:
        s["kube_serviceaccount_dir"] = str(directory)
    # nothing of the test process's own Kubernetes environment leaks into the agent
    pod_env = {"KUBERNETES_SERVICE_HOST": "", "KUBERNETES_SERVICE_PORT": ""}
    if service_env:
        pod_env = {"KUBERNETES_SERVICE_HOST": "127.0.0.1", "KUBERNETES_SERVICE_PORT": str(env.api.port)}
    a = KubeAgent(wd, "", s, env=pod_env)
    env.agents.append(a)
    return a


def sa_name(env: KubeEnv) -> str:
    return kind_docs(env.identity_docs, "ServiceAccount")[0]["metadata"]["name"]


def bound_token(env: KubeEnv, secret: str) -> str:
    """A token of the agent's ServiceAccount bound to Secret ``secret``: deleting the Secret
    invalidates the token (the only way to revoke a TokenRequest token before it expires)."""
    from kubernetes import client

    core = env.core()
    sec = core.create_namespaced_secret(env.namespace, {"metadata": {"name": secret}, "type": "Opaque"})
    req = {
        "spec": {
            "audiences": [],
            "expirationSeconds": 3600,
            "boundObjectRef": {"apiVersion": "v1", "kind": "Secret", "name": secret, "uid": sec.metadata.uid},
        }
    }
    resp = core.create_namespaced_service_account_token(sa_name(env), env.namespace, req)
    assert isinstance(resp, client.AuthenticationV1TokenRequest)
    return resp.status.token


def token_works(env: KubeEnv, token: str) -> bool:
    from kubernetes import client

    with env.api.api_client(token=token) as c:
        try:
            client.AuthorizationV1Api(c).create_self_subject_access_review(
                {"spec": {"resourceAttributes": {"verb": "list", "resource": "pods"}}}
            )
        except client.ApiException as exc:
            if exc.status == 401:
                return False
            raise
    return True


def test_the_agent_runs_with_the_in_cluster_service_account(twk8s_api, kenv_factory):
    env = kenv_factory(twk8s_api)
    d = sa_dir(env, env.token)
    env.pod("before-start")
    agent = incluster_agent(env, d)
    agent.start(timeout=30)
    loaded = agent.wait_line("k8s.client.incluster")[0]
    assert loaded["host"] == f"https://127.0.0.1:{env.api.port}"
    assert loaded["path"] == str(d / "token")
    assert loaded["ca"] == str(d / "ca.crt")
    # the service account holds every permission of the chart's RBAC ...
    assert agent.lines("k8s.access.ok")[0]["checked"] == len(required_permissions(env.namespace))
    # ... the mode came from its Node's labels, its pods from the watch ...
    sel = agent.wait_line("mode.selected")[0]
    assert sel["reason"] == "label terway.alibabacloud.com/network-mode=example"
    assert agent.lines("k8s.pod.added", pod=f"{env.namespace}/before-start")
    env.pod("after-start")
    agent.wait_line("k8s.pod.added", pod=f"{env.namespace}/after-start")
    # ... it follows its ConfigMaps and writes Events on its Node: an invalid eni_conf is
    # refused and reported
    core = env.core()
    cm = {"data": {"eni_conf": json.dumps({"max_pool_size": "lots"})}}
    core.patch_namespaced_config_map("eni-config", env.namespace, cm)
    agent.wait_line("config.reload.rejected")
    ev = wait_for(
        "a ConfigError event on the node", lambda: events_for(core, "default", env.node, "ConfigError")
    )
    assert ev[0].involved_object.uid == core.read_node(env.node).metadata.uid
    assert ev[0].source.component == "terway-agent"
    assert "eni_conf.max_pool_size: got 'lots'" in ev[0].message
    assert agent.stop(timeout=15) == 0
    assert not [r for r in agent.events() if "Unauthorized" in json.dumps(r) or "Forbidden" in json.dumps(r)]


def test_missing_in_cluster_credentials_stop_the_agent_naming_what_is_missing(twk8s_api, kenv_factory):
    env = kenv_factory(twk8s_api)
    empty = env.workdir / "empty-sa"
    empty.mkdir()
    # no token in the directory: the path is named
    agent = incluster_agent(env, empty)
    agent.start(wait=False)
    assert agent.exit_code(30) == 2
    log = agent.log()
    assert f"the in-cluster service-account token {empty / 'token'} does not exist" in log
    assert "kube_serviceaccount_dir" in log
    assert not agent.conflist.exists()

    # a token but no CA
    write_token(empty, env.token)
    agent2 = incluster_agent(env, empty, name="agent2")
    agent2.start(wait=False)
    assert agent2.exit_code(30) == 2
    assert f"the in-cluster service-account CA certificate {empty / 'ca.crt'} does not exist" in agent2.log()

    # an empty token file
    d = sa_dir(env, "", name="empty-token")
    agent3 = incluster_agent(env, d, name="agent3")
    agent3.start(wait=False)
    assert agent3.exit_code(30) == 2
    assert f"the in-cluster service-account token {d / 'token'} is empty" in agent3.log()

    # the default directory is the kubelet's mount point (absent on this host)
    if not os.path.exists(SYSTEM_SA_DIR):
        agent4 = incluster_agent(env, None, name="agent4")
        agent4.start(wait=False)
        assert agent4.exit_code(30) == 2
        assert f"the in-cluster service-account token {SYSTEM_SA_DIR}/token does not exist" in agent4.log()

    # not in a pod at all
    agent5 = incluster_agent(env, sa_dir(env, env.token, name="ok"), name="agent5", service_env=False)
    agent5.start(wait=False)
    assert agent5.exit_code(30) == 2
    assert "KUBERNETES_SERVICE_HOST/KUBERNETES_SERVICE_PORT are not set" in agent5.log()


def test_a_rotated_token_is_picked_up_before_the_old_one_is_revoked(twk8s_api, kenv_factory):
    env = kenv_factory(twk8s_api)
    old = bound_token(env, "token-old")
    d = sa_dir(env, old)
    # watches end every second: every few seconds the agent makes new authenticated requests
    agent = incluster_agent(
        env,
        d,
        log_level="debug",
        plugin_config={"kubernetes": {"token_refresh_interval": 0.5, "watch_timeout": 1}},
    )
    agent.start(timeout=30)
    new = bound_token(env, "token-new")
    write_token(d, new)
    agent.wait_line("k8s.token.rotated", path=str(d / "token"))
    # revoke the old token (the apiserver caches a valid token for up to 10 s)
    env.core().delete_namespaced_secret("token-old", env.namespace)
    wait_for("the old token to be refused", lambda: not token_works(env, old), timeout=30, interval=0.5)
    assert token_works(env, new)
    watches = len(agent.lines("k8s.watch.started"))
    # the agent keeps working on the new token: new watches, a new pod seen, no 401
    agent.wait_line("k8s.watch.started", count=watches + 3, timeout=20)
    env.pod("after-rotation")
    agent.wait_line("k8s.pod.added", pod=f"{env.namespace}/after-rotation")
    assert agent.proc is not None and agent.proc.poll() is None
    assert not agent.lines("k8s.watch.failed")
    assert not [r for r in agent.events() if "Unauthorized" in json.dumps(r)]
