"""The agent's outer surface: socket permissions, the wire protocol's version
check, structured logs with the pod's identity, the in-flight gauge and the
``terway-agent plugins`` command."""

from __future__ import annotations

import json
import os
import stat
import threading
import time
from typing import Any

import pytest

from terway_agent import protocol

from .conftest import Agent
from .test_agent_lifecycle import _http, wait_for

pytestmark = pytest.mark.netns


def test_socket_is_root_only(agent: Agent) -> None:
    st = os.stat(agent.socket)
    assert stat.S_ISSOCK(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o600 and st.st_uid == 0


def test_an_unknown_protocol_version_is_refused_with_code_1(agent: Agent) -> None:
    answer = protocol.request(agent.socket, {"v": 99, "verb": "STATUS", "env": {}, "config": {}}, timeout=10)
    assert answer["ok"] is False and answer["error"]["code"] == 1
    assert "protocol version 99" in answer["error"]["msg"]


def test_logs_are_json_lines_with_the_pod_identity_bound(agent: Agent, make_pod_ns) -> None:
    r = agent.cni("ADD", "logid1", netns_path=make_pod_ns(), pod=("team-a", "api-0"))
    assert r.rc == 0
    assert agent.cni("DEL", "logid1").rc == 0
    lines = [json.loads(x) for x in agent.log_path.read_text().splitlines() if x.startswith("{")]
    assert lines, "the agent (not on a terminal) logs JSON lines"
    assert all({"event", "level", "timestamp"} <= set(x) for x in lines)
    done = [x for x in lines if x["event"] in ("cni.add.done", "cni.del.done")]
    assert [(x["event"], x["pod"], x["container"], x["ifname"], x["verb"]) for x in done] == [
        ("cni.add.done", "team-a/api-0", "logid1", "eth0", "ADD"),
        ("cni.del.done", "team-a/api-0", "logid1", "eth0", "DEL"),
    ]
    assert all("." in x["event"] and " " not in x["event"] for x in lines), "events are static dotted names"


def test_in_flight_gauge_counts_requests_being_served(make_agent, make_pod_ns) -> None:
    a = make_agent(inline="slow_example", env={"TW_SLOW_SETUP": "2"})
    a.start()

    def gauge() -> float:
        body = _http(a, "/metrics")[1]
        return float(next(ln.split()[-1] for ln in body.splitlines() if ln.startswith("terway_rpc_in_flight ")))

    assert gauge() == 0
    out: dict[str, Any] = {}
    ns = make_pod_ns()
    t = threading.Thread(target=lambda: out.setdefault("r", a.cni("ADD", "infl1", netns_path=ns, pod=("d", "p"))))
    t.start()
    wait_for(lambda: gauge() == 1, what="one request in flight")
    t.join()
    assert out["r"].rc == 0
    time.sleep(0.1)
    assert gauge() == 0


def test_plugins_command_lists_every_mode_as_table_and_json(agent: Agent) -> None:
    r = agent.run_cli("plugins", "--json")
    assert r.returncode == 0, r.stderr
    modes = {m["name"]: m for m in json.loads(r.stdout)}
    assert {"shared_eni", "exclusive_eni", "trunk", "ipvlan_ebpf", "datapath_v2", "example"} <= set(modes)
    assert "terway_allocate" in modes["shared_eni"]["hooks"] and modes["shared_eni"]["implemented"] is True
    assert modes["trunk"]["implemented"] is False and modes["trunk"]["hooks"] == ["terway_mode_info"]
    assert all(m["version"] for m in modes.values())
    table = agent.run_cli("plugins")
    assert table.returncode == 0
    rows = {line.split()[0]: line for line in table.stdout.splitlines()[1:] if line.strip()}
    assert set(rows) == set(modes)
    assert "not implemented" in rows["trunk"] and "ready" in rows["shared_eni"]
    assert "allocate" in rows["shared_eni"] and modes["shared_eni"]["version"] in rows["shared_eni"]
