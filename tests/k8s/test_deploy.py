"""The deployment artifacts: the chart renders (with the project's renderer; Helm is not
available here), the plain manifests are the chart's defaults, every object passes the real
apiserver's validation (server-side dry run), and the CRDs work: status subresources, printer
columns, schema validation."""

from __future__ import annotations

import json
import ssl
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
import yaml

from k8s.kit import CHART, ROOT, apply_docs, chart, kind_docs, sfx, wait_for
from terway_agent.config import parse_eni_conf, parse_netconf, parse_settings

sys.path.insert(0, str(ROOT / "deploy" / "tools"))
import make_manifests  # noqa: E402
from render_chart import TemplateError, _parse  # noqa: E402

CRD_DIR = CHART / "crds"


def _agent_container(docs):
    ds = kind_docs(docs, "DaemonSet")[0]
    return ds, ds["spec"]["template"]["spec"]["containers"][0]


def test_plain_manifests_are_the_chart_with_default_values():
    for name, text in make_manifests.expected().items():
        assert (ROOT / "deploy" / "manifests" / name).read_text() == text, (
            f"deploy/manifests/{name} is stale: run python3 deploy/tools/make_manifests.py"
        )


def test_the_daemonset_runs_everywhere_with_minimal_privileges():
    docs = chart("kube-system", "terway-agent").documents()
    assert sorted(d["kind"] for d in docs) == [
        "ClusterRole",
        "ClusterRoleBinding",
        "ConfigMap",
        "ConfigMap",
        "DaemonSet",
        "Role",
        "RoleBinding",
        "ServiceAccount",
    ]
    ds, c = _agent_container(docs)
    spec = ds["spec"]["template"]["spec"]
    assert spec["hostNetwork"] is True
    assert spec["tolerations"] == [{"operator": "Exists"}]
    terms = spec["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][
        "nodeSelectorTerms"
    ]
    assert {"key": "k8s.aliyun.com/ignore-by-terway", "operator": "NotIn", "values": ["true"]} in terms[0][
        "matchExpressions"
    ]
    sc = c["securityContext"]
    assert "privileged" not in sc
    assert sc["capabilities"] == {"add": ["NET_ADMIN", "SYS_ADMIN"], "drop": ["ALL"]}
    assert c["command"] == [
        "terway-agent",
        "run",
        "--config",
        "/etc/terway-agent/agent.yaml",
        "--node-name",
        "$(NODE_NAME)",
    ]
    init = spec["initContainers"][0]
    assert init["command"] == ["terway-agent", "install-cni", "--standalone", "--python", "/usr/bin/python3",
                               "--bin-dir", "/opt/cni/bin"]
    assert init["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    for path in ("/var/run/eni", "/var/lib/terway-agent", "/etc/cni/net.d", "/opt/cni/bin", "/var/run/netns"):
        assert path in mounts
    assert mounts["/var/run/netns"]["mountPropagation"] == "HostToContainer"
    host_paths = {v["hostPath"]["path"] for v in spec["volumes"] if "hostPath" in v}
    assert host_paths == {
        "/var/run/eni",
        "/var/lib/terway-agent",
        "/etc/cni/net.d",
        "/opt/cni/bin",
        "/var/run/netns",
    }
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        assert c[probe]["httpGet"] == {"host": "127.0.0.1", "path": path, "port": 6061}
    assert spec["terminationGracePeriodSeconds"] > 20  # shutdown_grace drains in-flight requests


def test_values_switch_bpf_privileged_mode_and_node_pools():
    docs = chart(
        "net",
        "tw",
        agent={"bpf": True, "mode": "datapath_v2", "logLevel": "debug"},
        nodePools={"pool-trunk": {"enable_eni_trunking": True}},
    ).documents()
    ds, c = _agent_container(docs)
    assert c["securityContext"]["capabilities"]["add"] == ["NET_ADMIN", "SYS_ADMIN", "BPF", "PERFMON"]
    assert {"name": "bpffs", "mountPath": "/sys/fs/bpf", "mountPropagation": "HostToContainer"} in c[
        "volumeMounts"
    ]
    cms = {d["metadata"]["name"]: d for d in kind_docs(docs, "ConfigMap")}
    assert set(cms) == {"eni-config", "pool-trunk", "tw"}
    assert json.loads(cms["pool-trunk"]["data"]["eni_conf"]) == {"enable_eni_trunking": True}
    settings = yaml.safe_load(cms["tw"]["data"]["agent.yaml"])
    assert settings["mode"] == "datapath_v2" and settings["log_level"] == "debug"
    assert all(d["metadata"].get("namespace") in (None, "net") for d in docs)

    docs = chart("kube-system", "terway-agent", agent={"privileged": True}).documents()
    ds, c = _agent_container(docs)
    assert c["securityContext"] == {"privileged": True}
    assert (
        "container.apparmor.security.beta.kubernetes.io/terway-agent"
        not in ds["spec"]["template"]["metadata"]["annotations"]
    )


def test_the_configmaps_hold_valid_configuration():
    docs = chart(
        "kube-system",
        "terway-agent",
        agent={
            "settings": {"gc_interval": 120, "cni_chain": [{"type": "portmap"}]},
            "kubernetes": {"watch_timeout": 120},
        },
    ).documents()
    cms = {d["metadata"]["name"]: d for d in kind_docs(docs, "ConfigMap")}
    settings = parse_settings(yaml.safe_load(cms["terway-agent"]["data"]["agent.yaml"]))
    assert settings.warnings == ()
    s = settings.value
    assert s.use_kubernetes and s.kubeconfig == "" and s.socket_path == "/var/run/eni/eni.socket"
    assert s.gc_interval == 120 and s.cni_chain == ({"type": "portmap"},)
    assert s.plugin_config["kubernetes"] == {"watch_timeout": 120}
    eni = parse_eni_conf(cms["eni-config"]["data"]["eni_conf"])
    assert eni.warnings == () and eni.value.max_pool_size == 5
    nc = parse_netconf(json.loads(cms["eni-config"]["data"]["10-terway.conf"]))
    assert nc.warnings == () and nc.value.eniip_virtual_type == "veth"
    # a changed settings file changes the pod template (rolling the DaemonSet)
    other = chart("kube-system", "terway-agent", agent={"logLevel": "debug"}).documents()
    key = "checksum/settings"
    assert (
        _agent_container(docs)[0]["spec"]["template"]["metadata"]["annotations"][key]
        != _agent_container(other)[0]["spec"]["template"]["metadata"]["annotations"][key]
    )


def test_the_renderer_cli_and_its_errors(tmp_path: Path):
    values = tmp_path / "v.yaml"
    values.write_text(yaml.safe_dump({"image": {"repository": "registry.example/terway-agent", "tag": "v9"}}))
    out = subprocess.run(
        [
            sys.executable,
            str(ROOT / "deploy/tools/render_chart.py"),
            str(CHART),
            "-f",
            str(values),
            "--set",
            "agent.debugPort=7071",
            "--namespace",
            "net",
            "--include-crds",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    docs = [d for d in yaml.safe_load_all(out) if d]
    assert [d["kind"] for d in docs][:5] == ["CustomResourceDefinition"] * 5
    _ds, c = _agent_container(docs)
    assert c["image"] == "registry.example/terway-agent:v9"
    assert c["livenessProbe"]["httpGet"]["port"] == 7071
    with pytest.raises(TemplateError, match=r"t.yaml:2: function 'lookup' is not supported"):
        from render_chart import Renderer

        r = Renderer.__new__(Renderer)
        r.root, r.defines = {"Values": {}}, {}
        tree, _ = _parse('a: 1\nb: {{ lookup "v1" }}\n', "t.yaml")
        r._run(tree, r.root, {"$": r.root})


@pytest.mark.slow
def test_every_object_passes_server_side_dry_run(twk8s_api):
    from kubernetes import client

    ns = f"twk8s-{sfx()}"
    with twk8s_api.api_client() as c:
        client.CoreV1Api(c).create_namespace({"metadata": {"name": ns}})
        crds = [d for f in sorted(CRD_DIR.glob("*.yaml")) for d in yaml.safe_load_all(f.read_text()) if d]
        assert len(crds) == 5
        answers = apply_docs(c, crds, dry_run=True)
        assert [a["metadata"]["name"] for a in answers] == [d["metadata"]["name"] for d in crds]
        for values in (
            {},
            {"agent": {"bpf": True, "privileged": True}, "nodePools": {"p": {"max_pool_size": 9}}},
        ):
            docs = chart(ns, f"tw-{sfx()}", **values).documents()
            answers = apply_docs(c, docs, dry_run=True)
            assert len(answers) == len(docs)
            ds = next(a for a in answers if a["kind"] == "DaemonSet")
            # defaults the apiserver filled in prove it parsed the whole pod template
            assert (
                ds["spec"]["template"]["spec"]["containers"][0]["terminationMessagePath"]
                == "/dev/termination-log"
            )
        client.CoreV1Api(c).delete_namespace(ns)


def _table(api, path: str) -> dict:
    req = urllib.request.Request(
        api.url + path,
        headers={
            "Authorization": f"Bearer {api.admin_token}",
            "Accept": "application/json;as=Table;v=v1;g=meta.k8s.io",
        },
    )
    with urllib.request.urlopen(
        req, context=ssl.create_default_context(cafile=str(api.ca_crt)), timeout=10
    ) as r:
        return json.loads(r.read())


@pytest.mark.slow
def test_the_crds_have_status_subresources_printer_columns_and_schemas(twk8s_api):
    from kubernetes import client
    from kubernetes.dynamic import DynamicClient

    with twk8s_api.api_client() as c:
        ext = client.ApiextensionsV1Api(c)
        crds = [d for f in sorted(CRD_DIR.glob("*.yaml")) for d in yaml.safe_load_all(f.read_text()) if d]
        for crd in crds:
            try:
                ext.create_custom_resource_definition(crd)
            except client.ApiException as exc:
                assert exc.status == 409  # another test of this session made it
        for crd in crds:
            wait_for(
                f"{crd['metadata']['name']} Established",
                lambda n=crd["metadata"]["name"]: any(
                    cond.type == "Established" and cond.status == "True"
                    for cond in (ext.read_custom_resource_definition(n).status.conditions or [])
                ),
            )
        dyn = DynamicClient(c)
        core = client.CoreV1Api(c)
        ns = f"twk8s-{sfx()}"
        core.create_namespace({"metadata": {"name": ns}})
        name = f"twk8s-{sfx()}"

        # PodNetworking: the sample of seed 004
        pn_api = dyn.resources.get(api_version="network.alibabacloud.com/v1beta1", kind="PodNetworking")
        pn = pn_api.create(
            body={
                "apiVersion": "network.alibabacloud.com/v1beta1",
                "kind": "PodNetworking",
                "metadata": {"name": name},
                "spec": {
                    "allocationType": {"type": "Fixed", "releaseStrategy": "TTL", "releaseAfter": "1h"},
                    "selector": {
                        "podSelector": {"matchLabels": {"foo": "bar"}},
                        "namespaceSelector": {"matchLabels": {"foo": "bar"}},
                    },
                    "securityGroupIDs": ["sg-bpxxxx"],
                    "vSwitchOptions": ["vsw-bpxxxx"],
                    "eniOptions": {"eniType": "Trunk"},
                },
                "status": {"status": "Ready"},
            }
        )
        assert pn.status is None  # status is a subresource: ignored on create
        pn_api.status.patch(
            name=name, body={"status": {"status": "Ready"}}, content_type="application/merge-patch+json"
        )
        table = _table(twk8s_api, f"/apis/network.alibabacloud.com/v1beta1/podnetworkings/{name}")
        cols = [col["name"] for col in table["columnDefinitions"]]
        assert cols[:5] == ["Name", "Allocation", "ENI-Type", "Status", "Age"]
        assert table["rows"][0]["cells"][1:4] == ["Fixed", "Trunk", "Ready"]
        # the schema refuses what the product refuses: more than 5 security groups, unknown types
        for bad in (
            {"securityGroupIDs": [f"sg-{i}" for i in range(6)]},
            {"allocationType": {"type": "Sticky"}},
        ):
            with pytest.raises(client.ApiException) as err:
                pn_api.create(
                    body={
                        "apiVersion": "network.alibabacloud.com/v1beta1",
                        "kind": "PodNetworking",
                        "metadata": {"name": f"{name}-bad"},
                        "spec": bad,
                    }
                )
            assert err.value.status == 422
        pn_api.delete(name=name)

        # PodENI: the sample of seed 003, status through the subresource
        pe_api = dyn.resources.get(api_version="network.alibabacloud.com/v1beta1", kind="PodENI")
        pe_api.create(
            namespace=ns,
            body={
                "apiVersion": "network.alibabacloud.com/v1beta1",
                "kind": "PodENI",
                "metadata": {"name": "web-0", "namespace": ns, "finalizers": ["pod-eni"]},
                "spec": {
                    "zone": "cn-hangzhou-h",
                    "allocations": [
                        {
                            "allocationType": {"type": "Elastic"},
                            "eni": {
                                "id": "eni-bp1xxxx",
                                "mac": "00:16:3e:00:00:01",
                                "securityGroupIDs": ["sg-bp1xxxx"],
                                "vSwitchID": "vsw-bp1xxxx",
                                "zone": "cn-hangzhou-h",
                            },
                            "ipv4": "192.168.1.10",
                            "ipv4CIDR": "192.168.0.0/19",
                        }
                    ],
                },
            },
        )
        pe_api.status.patch(
            namespace=ns,
            name="web-0",
            content_type="application/merge-patch+json",
            body={
                "status": {
                    "phase": "Bind",
                    "instanceID": "i-bp1xxxx",
                    "trunkENIID": "eni-bp1trunk",
                    "podLastSeen": "2026-01-01T00:00:00Z",
                    "eniInfos": {"eni-bp1xxxx": {"id": "eni-bp1xxxx", "status": "Bind", "vid": 1001}},
                }
            },
        )
        table = _table(twk8s_api, f"/apis/network.alibabacloud.com/v1beta1/namespaces/{ns}/podenis/web-0")
        assert [col["name"] for col in table["columnDefinitions"]][:5] == [
            "Name",
            "Phase",
            "Instance",
            "Trunk",
            "IPv4",
        ]
        assert table["rows"][0]["cells"][1:5] == ["Bind", "i-bp1xxxx", "eni-bp1trunk", "192.168.1.10"]
        pe_api.patch(
            namespace=ns,
            name="web-0",
            body={"metadata": {"finalizers": None}},
            content_type="application/merge-patch+json",
        )
        pe_api.delete(namespace=ns, name="web-0")

        # Node, NodeRuntime, NetworkInterface: create, status, columns
        node_api = dyn.resources.get(api_version="network.alibabacloud.com/v1beta1", kind="Node")
        node_api.create(
            body={
                "apiVersion": "network.alibabacloud.com/v1beta1",
                "kind": "Node",
                "metadata": {"name": name},
                "spec": {
                    "nodeMetadata": {
                        "regionID": "cn-hangzhou",
                        "zoneID": "cn-hangzhou-k",
                        "instanceID": "i-1",
                        "instanceType": "ecs.g7.xlarge",
                    },
                    "nodeCap": {"adapters": 4, "totalAdapters": 20, "ipv4PerAdapter": 15},
                    "pool": {"maxPoolSize": 5, "minPoolSize": 0},
                },
            }
        )
        node_api.status.patch(
            name=name,
            content_type="application/merge-patch+json",
            body={
                "status": {
                    "networkInterfaces": {
                        "eni-1": {
                            "id": "eni-1",
                            "status": "InUse",
                            "macAddress": "00:16:3e:00:00:02",
                            "vSwitchID": "vsw-1",
                            "primaryIPAddress": "192.168.0.20",
                            "networkInterfaceType": "Secondary",
                            "ipv4": {
                                "192.168.0.21": {
                                    "ip": "192.168.0.21",
                                    "primary": False,
                                    "status": "Valid",
                                    "podID": "default/web",
                                }
                            },
                        }
                    }
                }
            },
        )
        table = _table(twk8s_api, f"/apis/network.alibabacloud.com/v1beta1/nodes/{name}")
        assert table["rows"][0]["cells"][1:5] == ["i-1", "ecs.g7.xlarge", "cn-hangzhou-k", 4]
        node_api.delete(name=name)

        nr_api = dyn.resources.get(api_version="network.alibabacloud.com/v1beta1", kind="NodeRuntime")
        nr_api.create(
            body={
                "apiVersion": "network.alibabacloud.com/v1beta1",
                "kind": "NodeRuntime",
                "metadata": {"name": name},
            }
        )
        nr = nr_api.status.patch(
            name=name,
            content_type="application/merge-patch+json",
            body={
                "status": {
                    "pods": {
                        "uid-1": {
                            "podID": "default/web",
                            "status": {"Running": {"lastUpdateTime": "2026-01-01T00:00:00Z"}},
                        }
                    }
                }
            },
        )
        assert nr.status.pods["uid-1"].podID == "default/web"
        nr_api.delete(name=name)

        ni_api = dyn.resources.get(api_version="network.alibabacloud.com/v1beta1", kind="NetworkInterface")
        ni_api.create(
            body={
                "apiVersion": "network.alibabacloud.com/v1beta1",
                "kind": "NetworkInterface",
                "metadata": {"name": f"eni-{name}"},
                "spec": {
                    "eni": {"id": f"eni-{name}", "vSwitchID": "vsw-1", "zone": "cn-hangzhou-k"},
                    "ipv4": "192.168.1.11",
                    "podENIRef": {"namespace": ns, "name": "web-0"},
                },
            }
        )
        ni_api.status.patch(
            name=f"eni-{name}",
            content_type="application/merge-patch+json",
            body={
                "status": {
                    "phase": "Bind",
                    "nodeName": "node-1",
                    "instanceID": "i-1",
                    "trunkENIID": "eni-trunk",
                    "eniInfo": {"id": f"eni-{name}", "type": "Member", "vid": 1001, "status": "Bind"},
                }
            },
        )
        table = _table(twk8s_api, f"/apis/network.alibabacloud.com/v1beta1/networkinterfaces/eni-{name}")
        assert [col["name"] for col in table["columnDefinitions"]][:8] == [
            "Name",
            "Phase",
            "Type",
            "Instance",
            "Trunk",
            "Node",
            "Pod-Namespace",
            "Pod",
        ]
        assert table["rows"][0]["cells"][1:8] == ["Bind", "Member", "i-1", "eni-trunk", "node-1", ns, "web-0"]
        ni_api.delete(name=f"eni-{name}")
        core.delete_namespace(ns)
