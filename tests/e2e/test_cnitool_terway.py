"""A real CNI client drives ``terway``: libcni's ``cnitool`` (built from Debian's
source, cached with the lane's binaries) reads the conflist the agent wrote and
runs ADD, CHECK and DEL through the installed executable, as a runtime would."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from agentkit import Agent, base_settings, ns_run, unique

from terway_agent.datapath import netns

pytestmark = pytest.mark.netns


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[Agent]:
    node = unique("twct")
    netns.create(node)
    ns_run(node, "ip", "link", "set", "lo", "up", check=True)
    ns_run(node, "sysctl", "-qw", "net.ipv4.ip_forward=1", check=True)
    work = tmp_path / "agent"
    work.mkdir()
    a = Agent(work, node, base_settings(work, debug_listen=""), env={})
    try:
        a.start()
        yield a
    finally:
        if a.proc is not None and a.proc.poll() is None:
            a.proc.kill()
            a.proc.wait(10)
        netns.remove(node)


def test_cnitool_add_check_del_through_terway(twe2e_artifacts, agent: Agent, tmp_path: Path) -> None:
    conflist = json.loads(agent.conflist.read_text())
    net = conflist["name"]
    env = dict(os.environ, NETCONFPATH=str(agent.conflist.parent), CNI_PATH=f"{agent.bin_dir}:/usr/lib/cni",
               CNI_ARGS="K8S_POD_NAMESPACE=default;K8S_POD_NAME=cnitool-pod")
    pod = unique("twctp")
    netns.create(pod)
    path = netns.netns_path(pod)
    cid = ""

    def cnitool(verb: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(twe2e_artifacts.cnitool), verb, net, path], env=env, capture_output=True,
                              text=True, timeout=60)

    try:
        add = cnitool("add")
        assert add.returncode == 0, add.stderr
        result = json.loads(add.stdout)
        ip = result["ips"][0]["address"].split("/")[0]
        assert f"inet {ip}/32" in ns_run(pod, "ip", "-4", "-o", "addr", "show", "dev", "eth0").stdout
        atts = agent.attachments()
        assert [(a["pod"], a["state"], a["ips"]) for a in atts] == [("default/cnitool-pod", "ready", [ip])]
        cid = atts[0]["container_id"]
        assert cid.startswith("cnitool-")

        check = cnitool("check")
        assert check.returncode == 0, check.stderr
        ns_run(pod, "ip", "route", "del", "default", check=True)
        broken = cnitool("check")
        assert broken.returncode != 0 and "route" in broken.stderr + broken.stdout

        dele = cnitool("del")
        assert dele.returncode == 0, dele.stderr
        assert agent.attachments() == []
        assert "eth0" not in ns_run(pod, "ip", "-o", "link").stdout
        again = cnitool("del")  # the runtime's second DEL: still success
        assert again.returncode == 0, again.stderr
    finally:
        netns.remove(pod)
        if cid:  # libcni's result cache of this container
            for f in Path("/var/lib/cni/results").glob(f"{net}-{cid}-*"):
                f.unlink(missing_ok=True)
