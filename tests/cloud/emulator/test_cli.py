"""``terway-cloud-emulator`` as a process: serve, dump, check-topology."""

from __future__ import annotations

import json
import signal
import subprocess
import sys

import yaml
from alibabacloud_ecs20140526 import models as m
from alibabacloud_ecs20140526.client import Client
from alibabacloud_tea_openapi.utils_models import Config
from twemu_topology import TEST_TOPOLOGY

CLI = [sys.executable, "-m", "terway_agent.cloud.emulator.cli"]


def test_serve_dump_and_state_dump(tmp_path):
    topo = tmp_path / "twemu-topology.yaml"
    topo.write_text(yaml.safe_dump(TEST_TOPOLOGY))
    dump_path = tmp_path / "twemu-state.json"
    proc = subprocess.Popen(
        [*CLI, "serve", "--topology", str(topo), "--listen", "127.0.0.1:0", "--state-dump", str(dump_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        ready = json.loads(proc.stdout.readline())
        assert ready["event"] == "emulator.ready"
        assert ready["instances"][0] == "i-twemu-node1"
        client = Client(
            Config(
                access_key_id="LTAItwemuTestKey",
                access_key_secret="twemu-test-secret",
                endpoint=ready["endpoint"],
                protocol="http",
                region_id=ready["region_id"],
            )
        )
        eni = client.create_network_interface(
            m.CreateNetworkInterfaceRequest(
                region_id="cn-hangzhou", v_switch_id="vsw-twemu-pod-a", security_group_id="sg-twemu-1"
            )
        ).body.network_interface_id
        out = subprocess.run(
            [*CLI, "dump", "--endpoint", ready["endpoint"]],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
        state = json.loads(out.stdout)
        assert eni in [e["id"] for e in state["enis"]]
        assert state["counters"]["calls"]["CreateNetworkInterface"] == 1
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    assert proc.returncode == 0, proc.stderr.read()
    final = json.loads(dump_path.read_text())
    assert eni in [e["id"] for e in final["enis"]]


def test_check_topology(tmp_path):
    good = tmp_path / "twemu-good.yaml"
    good.write_text(yaml.safe_dump(TEST_TOPOLOGY))
    out = subprocess.run([*CLI, "check-topology", str(good)], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0 and "ok" in out.stdout
    bad = dict(TEST_TOPOLOGY, instances=[{"id": "i-x", "type": "ecs.g7.huge", "vswitch": "vsw-twemu-node"}])
    path = tmp_path / "twemu-bad.yaml"
    path.write_text(yaml.safe_dump(bad))
    out = subprocess.run([*CLI, "check-topology", str(path)], capture_output=True, text=True, timeout=30)
    assert out.returncode == 2
    assert "instances[0].type" in out.stderr and "ecs.g7.huge" in out.stderr


def test_instance_types_listing():
    out = subprocess.run([*CLI, "instance-types"], capture_output=True, text=True, timeout=30, check=True)
    line = next(x for x in out.stdout.splitlines() if x.startswith("ecs.g7.xlarge "))
    assert line.split()[1:5] == ["4", "15", "15", "20"]
