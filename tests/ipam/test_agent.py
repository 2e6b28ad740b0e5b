"""The cloud and the IPAM wired into the real agent: node facts, limits, the pod-limit
minimum, live reloads, the ``_pool``/``_mapping`` queries and the ``pool``/``mapping``
commands (with the kernel view, on the emulator's netns node side)."""

from __future__ import annotations

import copy
import json
import os
import secrets
import subprocess
from pathlib import Path
from typing import Any

import pytest
import trio
import twipam_mode
from twipam_helpers import AgentProc, agent_eni_conf, agent_settings
from twipam_mode import terway_mode_info
from twipam_topology import BIG, NODE, REGION, TOPOLOGY, VSW_NODE, ZONE

from terway_agent._hosting import PluginHost
from terway_agent.cloud.emulator import Emulator, Topology
from terway_agent.cloud.limits import CACHE_FILE
from terway_agent.config import parse_settings
from terway_agent.daemon.app import Agent
from terway_agent.daemon.cloud_service import NodeBelowMinimum
from terway_agent.datapath import netns


def loopback_cloud(cloud, instance: str = NODE) -> dict[str, Any]:
    return {
        "endpoint": cloud.emulator.endpoint,
        "protocol": "http",
        "region_id": REGION,
        "metadata_endpoint": cloud.emulator.metadata_url(instance),
    }


def in_process_agent(cloud, tmp_path: Path, instance: str = NODE, **eni_over: Any) -> Agent:
    settings = agent_settings(
        tmp_path, loopback_cloud(cloud, instance), plugin_config={"ipam": {"batch_window": "20ms"}}
    )
    Path(settings["eni_conf_path"]).write_text(json.dumps(agent_eni_conf(**eni_over)))
    host = PluginHost()
    host.register_mode(twipam_mode, terway_mode_info().name)
    return Agent(parse_settings(settings).value, host=host)


async def call(agent: Agent, verb: str, **fields: Any) -> dict[str, Any]:
    from terway_agent import protocol

    msg = {"v": protocol.PROTOCOL_VERSION, "verb": verb, **fields}
    return await trio.to_thread.run_sync(
        lambda: protocol.request(agent.settings.socket_path, msg, timeout=30)
    )


def cni_msg(cid: str, netns_path: str, pod: str) -> dict[str, Any]:
    return {
        "env": {
            "CNI_CONTAINERID": cid,
            "CNI_IFNAME": "eth0",
            "CNI_NETNS": netns_path,
            "CNI_ARGS": f"K8S_POD_NAMESPACE=default;K8S_POD_NAME={pod}",
        },
        "config": {"cniVersion": "1.0.0", "name": "terway", "type": "terway"},
    }


async def test_agent_gets_node_facts_limits_and_a_pool(cloud, tmp_path: Path) -> None:
    agent = in_process_agent(cloud, tmp_path)
    async with trio.open_nursery() as n:
        await n.start(agent.run)
        ctx = agent.ctx
        node = ctx.node
        assert (node.instance_id, node.instance_type, node.zone_id, node.vswitch_id, node.region_id) == (
            NODE,
            "ecs.g7.xlarge",
            ZONE,
            VSW_NODE,
            REGION,
        )
        primary = next(
            e for e in cloud.state()["enis"] if e["instance_id"] == NODE and e["type"] == "Primary"
        )
        assert (node.primary_mac, node.primary_ip) == (primary["mac"], "10.10.0.11")
        assert node.vpc_id == TOPOLOGY["vpc"]["id"]
        assert ctx.quota.eni_quantity == 4 and ctx.quota.eni_private_ip_quantity == 15
        cache = json.loads((tmp_path / "state" / CACHE_FILE).read_text())
        assert "ecs.g7.xlarge" in cache["entries"]
        assert ctx.ipam is not None and ctx.ipam.kind == "shared"
        # a pod through the CNI protocol gets its address from the pool
        ns_file = tmp_path / "pod1.netns"
        ns_file.touch()
        answer = await call(agent, "ADD", **cni_msg("cid1", str(ns_file), "pod1"))
        assert answer["ok"], answer
        address = answer["result"]["ips"][0]["address"].split("/")[0]
        snap = (await call(agent, "_pool"))["result"]
        owners = {ip["address"]: ip["owner"] for e in snap["enis"] for ip in e["ips"]}
        assert owners[address] == "cid1/eth0"
        report = (await call(agent, "_mapping", kernel=False))["result"]
        assert report["consistent"], report["problems"]
        status = await call(agent, "STATUS", env={}, config={"cniVersion": "1.1.0", "name": "terway"})
        assert status["ok"], status
        answer = await call(agent, "DEL", **cni_msg("cid1", str(ns_file), "pod1"))
        assert answer["ok"], answer
        assert await ctx.ipam.lease_of("cid1/eth0") is None
        agent.shutdown()


async def test_a_node_below_the_mode_minimum_refuses_to_start(cloud, tmp_path: Path) -> None:
    cloud.admin.add_instance(
        id="i-twipam-tiny",
        type="ecs.twemu-tiny.small",
        vswitch=VSW_NODE,
        primary_ip="10.10.0.30",
        netns="twipam-tiny",
    )
    agent = in_process_agent(cloud, tmp_path, instance="i-twipam-tiny")
    with pytest.raises(BaseException) as info:
        await agent.run()
    from terway_agent.cli import terway_error_in

    err = terway_error_in(info.value)
    assert isinstance(err, NodeBelowMinimum)
    assert err.message == (
        "instance type ecs.twemu-tiny.small supports 2 pods in mode twipam ((EniQuantity - 1) x "
        "EniPrivateIpAddressQuantity, with EniQuantity=2, EniPrivateIpAddressQuantity=2, EniTotalQuantity=2, "
        "EniTrunkSupported=false); a node needs more than 11 pods to join in this mode: use a larger instance "
        "type or another mode"
    )


async def test_rate_limit_and_backoff_reloads_reach_the_client(cloud, tmp_path: Path) -> None:
    agent = in_process_agent(cloud, tmp_path)
    async with trio.open_nursery() as n:
        await n.start(agent.run)
        client = agent.ctx.cloud
        assert client.rate_limiter.limits["AssignPrivateIpAddresses"] == 400
        conf = agent_eni_conf(
            rate_limit={"AssignPrivateIpAddresses": 7},
            backoff_override={"eni_ip_ops": {"duration": "3s", "steps": 2}},
            max_pool_size=9,
        )
        Path(agent.settings.eni_conf_path).write_text(json.dumps(conf))
        with trio.fail_after(10):
            while client.rate_limiter.limits["AssignPrivateIpAddresses"] != 7:  # noqa: ASYNC110
                await trio.sleep(0.05)
        assert client.backoffs["eni_ip_ops"].duration == 3.0 and client.backoffs["eni_ip_ops"].steps == 2
        assert agent.ctx.ipam.conf.max_pool_size == 9  # the pool reads eni_conf per use
        agent.shutdown()


async def test_exclusive_mode_gets_the_eni_pool(cloud, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(twipam_mode, "EXCLUSIVITY", "exclusive")
    # exclusive ENI mode needs EniQuantity - 1 > 6: ecs.g7.4xlarge (8 ENIs)
    agent = in_process_agent(cloud, tmp_path, instance=BIG, max_pool_size=0)
    async with trio.open_nursery() as n:
        await n.start(agent.run)
        assert agent.ctx.ipam.kind == "exclusive"
        ns_file = tmp_path / "x.netns"
        ns_file.touch()
        answer = await call(agent, "ADD", **cni_msg("x1", str(ns_file), "x"))
        assert answer["ok"], answer
        eni = next(e for e in cloud.state()["enis"] if e["instance_id"] == BIG and e["type"] != "Primary")
        assert answer["result"]["ips"][0]["address"].split("/")[0] == eni["primary_ip"]
        agent.shutdown()


# ---------------------------------------------------------------------------------------------
# a real agent process in a node namespace of the emulator's netns node side
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def netns_cloud(tmp_path: Path):
    if os.geteuid() != 0:
        pytest.skip("the netns node side creates network namespaces and needs root")
    sfx = secrets.token_hex(3)
    topo = copy.deepcopy(TOPOLOGY)
    topo["instances"] = [dict(topo["instances"][0], netns=f"twipam-n-{sfx}")]
    topo["node_side"] = {"kind": "netns", "vpc_netns": f"twipam-v-{sfx}"}
    topo["attach_latency"] = 0.05
    emu = Emulator(Topology.from_dict(topo, "netns_cloud")).start()
    try:
        yield emu, topo["instances"][0]["netns"]
    finally:
        emu.stop()
        for name in (f"twipam-n-{sfx}", f"twipam-v-{sfx}"):
            netns.remove(name)


@pytest.mark.netns
def test_pool_and_mapping_commands_with_the_kernel_view(netns_cloud, tmp_path: Path) -> None:
    emu, node_ns = netns_cloud
    section = {
        "endpoint": "100.100.100.201:80",
        "protocol": "http",
        "region_id": REGION,
        "metadata_endpoint": "http://100.100.100.200",
    }
    agent = AgentProc(
        tmp_path / "agent",
        agent_settings(tmp_path / "agent", section, plugin_config={"ipam": {"batch_window": "20ms"}}),
        agent_eni_conf(max_pool_size=2),
        netns=node_ns,
    )
    agent.start()
    try:
        pods = []
        for i in range(3):
            f = tmp_path / f"p{i}.netns"
            f.touch()
            answer = agent.cni_request("ADD", f"k{i}", str(f), f"k{i}")
            assert answer["ok"], answer
            pods.append(answer["result"]["ips"][0]["address"].split("/")[0])
        out = agent.cli("pool")
        assert out.returncode == 0, out.stderr
        for i, address in enumerate(pods):
            assert f"{address}" in out.stdout and f"k{i}/eth0 (default/k{i})" in out.stdout
        snap = json.loads(agent.cli("pool", "--json").stdout)
        eni = snap["enis"][0]
        mapping = agent.cli("mapping")
        assert mapping.returncode == 0, mapping.stdout + mapping.stderr
        assert "consistent: the store, cloud and kernel agree" in mapping.stdout
        # the ENI's device vanishes from the node (kernel disagrees with store and cloud)
        links = json.loads(
            subprocess.run(
                ["ip", "-n", node_ns, "-j", "link", "show"], capture_output=True, text=True, check=True
            ).stdout
        )
        dev = next(link["ifname"] for link in links if link.get("address") == eni["mac"])
        subprocess.run(["ip", "-n", node_ns, "link", "del", dev], check=True)
        mapping = agent.cli("mapping")
        assert mapping.returncode == 1
        assert (
            f"ENI {eni['eni_id']} (MAC {eni['mac']}) has no device in the node's network namespace"
            in mapping.stdout
        )
        skipped = agent.cli("mapping", "--skip-kernel")
        assert skipped.returncode == 0, skipped.stdout
    finally:
        assert agent.stop() == 0, agent.log()


def test_client_reconfigure_validates_before_changing(cloud) -> None:
    from terway_agent.errors import ConfigError

    client = cloud.client()
    limiter = client.rate_limiter
    with pytest.raises(ConfigError, match=r"rate_limit\.NoSuchApi"):
        client.reconfigure(rate_limit={"NoSuchApi": 5})
    with pytest.raises(ConfigError, match=r"backoff_override\.eni_ops\.steps"):
        client.reconfigure(backoff_override={"eni_ops": {"steps": 0}})
    assert client.rate_limiter is limiter
    client.reconfigure(rate_limit={"CreateNetworkInterface": 12})
    assert client.rate_limiter.limits["CreateNetworkInterface"] == 12
    assert client.settings.rate_limit == {"CreateNetworkInterface": 12}


def test_pool_tuning_is_validated() -> None:
    from terway_agent.errors import ConfigError
    from terway_agent.ipam import PoolTuning

    t = PoolTuning.from_mapping({"batch_window": "50ms", "orphan_grace": 0, "max_ips_per_call": 5})
    assert (t.batch_window, t.orphan_grace, t.max_ips_per_call) == (0.05, 0.0, 5)
    with pytest.raises(ConfigError, match=r"plugin_config\.ipam\.batch_windw: got 1, expected one of"):
        PoolTuning.from_mapping({"batch_windw": 1})
    with pytest.raises(
        ConfigError, match=r"plugin_config\.ipam\.max_ips_per_call: got 11, expected an integer"
    ):
        PoolTuning.from_mapping({"max_ips_per_call": 11})
    with pytest.raises(ConfigError, match=r"plugin_config\.ipam\.alloc_timeout"):
        PoolTuning.from_mapping({"alloc_timeout": "soon"})
