"""The agent process: lock, readiness-gated conflist, mode selection errors,
mode-change guard, live reload, debug endpoint, graceful shutdown."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

from .conftest import Agent, ns_run

pytestmark = pytest.mark.netns


def _http(agent: Agent, path: str) -> tuple[int, str]:
    addr = json.loads(agent.run_cli("info", "--socket", agent.socket).stdout)["debug"]
    return _http_at(agent, addr, path)


def _http_at(agent: Agent, addr: str, path: str) -> tuple[int, str]:
    """GET ``http://addr/path`` from inside the agent's node namespace: (status, body); status 0
    when nothing listens."""
    code = f"""
import urllib.request, urllib.error
try:
    r = urllib.request.urlopen('http://{addr}{path}', timeout=5)
    print(r.status); print(r.read().decode())
except urllib.error.HTTPError as e:
    print(e.code); print(e.read().decode())
except OSError as e:
    print(0); print(e)
"""
    out = ns_run(agent.node_ns, "python3", "-c", code).stdout
    status, _, body = out.partition("\n")
    return int(status), body


def wait_for(pred, timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def test_single_instance_lock(agent: Agent, make_agent) -> None:
    second = make_agent(socket_path=agent.socket + "2")
    second.settings["lock_path"] = agent.settings["lock_path"]
    second.start(wait=False)
    assert second.proc.wait(20) == 2
    assert f"another terway agent holds {agent.settings['lock_path']} (pid {agent.proc.pid})" in second.log()
    assert agent.accepts()


def test_conflist_is_written_only_once_serving_and_other_files_are_untouched(make_agent) -> None:
    a = make_agent(inline="slow_example", env={"TW_SLOW_START": "1.5"})
    a.conflist.parent.mkdir(parents=True)
    other = a.conflist.parent / "05-other.conflist"
    other.write_text('{"cniVersion": "1.0.0", "name": "other", "plugins": []}')
    a.start(wait=False)
    time.sleep(0.8)
    assert a.proc.poll() is None
    assert not a.conflist.exists(), "conflist written before the agent serves"
    assert not a.accepts()
    a.wait_serving()
    wait_for(a.conflist.exists, what="the conflist")
    conf = json.loads(a.conflist.read_text())
    assert conf["plugins"][0]["type"] == "terway"
    assert conf["plugins"][0]["socket_path"] == a.socket
    assert a.stop() == 0
    assert other.read_text().startswith('{"cniVersion"')
    assert a.conflist.exists()  # pods keep running across agent restarts


def test_selected_mode_not_installed_stops_with_a_clear_error(make_agent) -> None:
    a = make_agent(mode="", node_labels={"terway.alibabacloud.com/network-mode": "warp_drive"})
    a.start(wait=False)
    assert a.proc.wait(20) == 2
    log = a.log()
    assert "mode warp_drive (chosen by label terway.alibabacloud.com/network-mode=warp_drive) is not installed" in log
    assert "installed modes: datapath_v2, example, exclusive_eni, ipvlan_ebpf, shared_eni, trunk" in log
    assert not a.conflist.exists()


def test_registered_but_unimplemented_mode_refuses(make_agent) -> None:
    a = make_agent(mode="", node_labels={"terway.alibabacloud.com/network-mode": "ipvlan_ebpf"})
    a.start(wait=False)
    assert a.proc.wait(20) == 2
    assert "mode ipvlan_ebpf is not implemented yet: selected by label terway.alibabacloud.com/network-mode=ipvlan_ebpf" in a.log()


def test_invalid_eni_conf_stops_with_the_field_named(make_agent) -> None:
    a = make_agent()
    a.eni_conf.write_text('{"max_pool_size": "lots"}')
    a.start(wait=False)
    assert a.proc.wait(20) == 2
    assert "eni_conf.max_pool_size: got 'lots', expected an integer between 0 and 10000" in a.log()


def test_terway_config_label_merges_a_node_pool_configmap(make_agent, tmp_path) -> None:
    cms = tmp_path / "configmaps"
    cms.mkdir()
    (cms / "pool-a.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: pool-a}\n"
        "data:\n  eni_conf: |\n    {\"enable_eni_trunking\": true}\n"
    )
    a = make_agent(mode="", node_labels={"terway-config": "pool-a"}, configmap_dir=str(cms))
    a.start(wait=False)
    assert a.proc.wait(20) == 2
    assert "mode trunk is not implemented yet: selected by eni_conf.enable_eni_trunking=true (terway-config pool-a merged)" in a.log()


def test_node_that_ran_pods_refuses_a_change_between_shared_and_exclusive(make_agent, make_pod_ns) -> None:
    a = make_agent(inline="slow_example")
    a.start()
    ns = make_pod_ns()
    assert a.cni("ADD", "m1", netns_path=ns, pod=("default", "m")).rc == 0
    assert a.cni("DEL", "m1", netns_path=ns).rc == 0
    assert a.stop() == 0
    b = make_agent(inline="slow_example", env={"TW_EXCLUSIVITY": "exclusive"})
    b.start(wait=False)
    assert b.proc.wait(20) == 2
    assert "this node ran pods in shared ENI mode (example) and is now selected for example (exclusive)" in b.log()
    # after draining, the operator resets the history and the node may switch
    r = b.run_cli("state", "reset-mode", "--state-dir", b.settings["state_dir"])
    assert r.returncode == 0, r.stderr
    b.start()
    assert b.cni("ADD", "m2", netns_path=ns, pod=("default", "m")).rc == 0


def test_attachments_of_another_mode_block_a_mode_change(make_agent, make_pod_ns) -> None:
    a = make_agent()
    a.start()
    assert a.cni("ADD", "keep1", netns_path=make_pod_ns(), pod=("default", "k")).rc == 0
    assert a.stop() == 0
    r = a.run_cli("state", "reset-mode", "--state-dir", a.settings["state_dir"])
    assert r.returncode == 1 and "attachments still exist (1 by example)" in r.stderr
    b = make_agent(inline="slow_example", env={"TW_MODE_NAME": "example2"}, mode="example2")
    b.start(wait=False)
    assert b.proc.wait(20) == 2
    assert "attachments made by another mode still exist (1 by example); mode example2 selected by setting mode=example2" in b.log()


def test_live_reload_of_pool_sizes_and_restart_notice(agent: Agent) -> None:
    agent.eni_conf.write_text(json.dumps({"max_pool_size": 9, "min_pool_size": 3}))
    wait_for(lambda: any(e.get("event") == "config.reload.applied" for e in agent.events()), what="reload")
    applied = [e for e in agent.events() if e.get("event") == "config.reload.applied"][-1]
    assert sorted(applied["fields"]) == ["max_pool_size", "min_pool_size"]
    agent.eni_conf.write_text(json.dumps({"max_pool_size": 9, "min_pool_size": 3, "ip_stack": "dual"}))
    wait_for(lambda: any(e.get("event") == "config.reload.restart_required" for e in agent.events()), what="notice")
    notice = [e for e in agent.events() if e.get("event") == "config.reload.restart_required"][-1]
    assert notice["fields"] == ["ip_stack"]
    agent.eni_conf.write_text('{"max_pool_size": -4}')
    wait_for(lambda: any(e.get("event") == "config.reload.rejected" for e in agent.events()), what="rejection")
    rejected = [e for e in agent.events() if e.get("event") == "config.reload.rejected"][-1]
    assert "eni_conf.max_pool_size: got -4" in rejected["error"]
    assert agent.accepts()
    status, body = _http(agent, "/metrics")
    assert status == 200
    assert 'terway_config_reloads_total{result="applied"} 1.0' in body
    assert 'terway_config_reloads_total{result="rejected"} 1.0' in body


def test_debug_endpoint(agent: Agent, make_pod_ns) -> None:
    assert agent.cni("ADD", "dbg1", netns_path=make_pod_ns(), pod=("default", "d")).rc == 0
    status, body = _http(agent, "/metrics")
    assert status == 200
    assert 'terway_rpc_latency_seconds_count{error="ok",rpc_api="ADD"} 1.0' in body
    assert 'terway_mode_info{mode="example"' in body
    assert _http(agent, "/healthz")[0] == 200
    status, body = _http(agent, "/readyz")
    assert (status, body.strip()) == (200, "ready")
    assert _http(agent, "/nope")[0] == 404


def test_debug_address_that_cannot_be_bound_fails_before_serving(make_agent) -> None:
    a = make_agent(debug_listen="203.0.113.9:6061")  # an address the node does not have
    a.start(wait=False)
    assert a.proc.wait(20) == 2
    assert "cannot listen on debug address 203.0.113.9:6061" in a.log()
    assert not a.conflist.exists()


def test_graceful_shutdown_drains_in_flight_requests(make_agent, make_pod_ns) -> None:
    a = make_agent(inline="slow_example", env={"TW_SLOW_SETUP": "1.5"})
    a.start()
    ns = make_pod_ns()
    out = {}
    t = threading.Thread(target=lambda: out.setdefault("r", a.cni("ADD", "drain1", netns_path=ns, pod=("default", "d"))))
    t.start()
    time.sleep(0.5)
    a.proc.send_signal(15)
    time.sleep(0.2)
    late = a.cni("ADD", "late1", netns_path=make_pod_ns(), pod=("default", "late"))
    t.join()
    assert a.proc.wait(20) == 0
    assert out["r"].rc == 0, out["r"].stdout
    assert late.rc == 1 and late.code == 11
    # what the drained ADD made is in the store for the next agent
    a.start()
    assert [x["container_id"] for x in a.attachments()] == ["drain1"]



def test_healthz_answers_during_a_slow_start_while_readyz_says_not_ready(make_agent) -> None:
    """A liveness probe must not kill an agent that is still starting (Kubernetes,
    cloud and resync can take a while); readiness waits until it serves."""
    a = make_agent(inline="slow_example", env={"TW_SLOW_START": "3"}, debug_listen="127.0.0.1:16061")
    a.start(wait=False)
    wait_for(lambda: _http_at(a, "127.0.0.1:16061", "/healthz")[0] == 200, what="/healthz during start-up")
    assert not a.accepts(), "the CNI socket must not serve yet"
    status, body = _http_at(a, "127.0.0.1:16061", "/readyz")
    assert (status, body.strip()) == (503, "not serving yet")
    a.wait_serving()
    wait_for(lambda: _http_at(a, "127.0.0.1:16061", "/readyz")[0] == 200, what="/readyz once serving")


def test_a_foreign_conflist_of_the_same_name_is_kept_before_being_replaced(make_agent) -> None:
    a = make_agent()
    a.conflist.parent.mkdir(parents=True)
    foreign = '{"cniVersion": "0.4.0", "name": "terway", "plugins": [{"type": "terway-go"}]}'
    a.conflist.write_text(foreign)
    a.start()
    wait_for(lambda: json.loads(a.conflist.read_text())["plugins"][0]["type"] == "terway", what="our conflist")
    backup_dir = Path(a.settings["state_dir"]) / "replaced-cni-conf"
    assert [b.read_text() for b in backup_dir.iterdir()] == [foreign]
    assert "cni.conflist.foreign_replaced" in a.log()
    # what we wrote ourselves is not backed up again on the next start
    assert a.stop() == 0
    a.start()
    assert len(list(backup_dir.iterdir())) == 1
