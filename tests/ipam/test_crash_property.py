"""Property: whatever sequence of ADD, DEL, kill -9 of the agent and injected cloud
faults happens, after every restart (and once GC has run)

* no address is held by two pods (store, attachments, cloud);
* nothing is leaked: every ENI and address of this node in the cloud is in the
  store, every owned address belongs to a live attachment, no orphan ENI is left;
* the store matches the emulator's state, and pods that survived kept their address.

The agent is the real process (tests/functional/_runner.py: production agent,
default services, the IPAM test mode), killed with SIGKILL in the middle of requests;
the cloud is the emulator with latencies so that kills land inside cloud calls.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twipam_helpers import AgentProc, agent_eni_conf, agent_settings
from twipam_topology import NODE, REGION

from terway_agent.protocol import ProtocolError

pytestmark = pytest.mark.slow

APIS = (
    "CreateNetworkInterface",
    "AttachNetworkInterface",
    "AssignPrivateIpAddresses",
    "UnassignPrivateIpAddresses",
    "DetachNetworkInterface",
    "DeleteNetworkInterface",
    "DescribeNetworkInterfaces",
)
FAULTS = (
    {"kind": "error", "code": "InternalError", "status": 500},
    {"kind": "error", "code": "Throttling.User", "status": 400},
    {"kind": "error_after_commit"},
    {"kind": "drop_after_commit"},
    {"kind": "drop"},
)

step = st.one_of(
    st.tuples(st.just("add"), st.integers(1, 6)),
    st.tuples(st.just("del"), st.integers(1, 6)),
    st.tuples(st.just("crash_add"), st.integers(1, 5), st.floats(0.0, 1.0)),
    st.tuples(st.just("crash_add"), st.integers(3, 8), st.floats(0.0, 0.3)),
    st.tuples(st.just("crash_del"), st.integers(1, 4), st.floats(0.0, 0.3)),
    st.tuples(st.just("crash"), st.just(0)),
    st.tuples(st.just("fault"), st.sampled_from(APIS), st.sampled_from(range(len(FAULTS)))),
)


class World:
    """The test's model of the node: live pods and their addresses."""

    def __init__(self, emulator: Any, workdir: Path) -> None:
        self.emu = emulator
        self.admin = emulator.admin()
        self.workdir = workdir
        self.pods: dict[str, str] = {}  # container id -> address
        self.seq = 0
        cloud = {
            "endpoint": emulator.endpoint,
            "protocol": "http",
            "region_id": REGION,
            "metadata_endpoint": emulator.metadata_url(NODE),
        }
        tuning = {
            "batch_window": "20ms",
            "release_delay": "200ms",
            "orphan_grace": "0s",
            "alloc_timeout": "30s",
        }
        self.agent = AgentProc(
            workdir,
            agent_settings(workdir, cloud, plugin_config={"ipam": tuning}, gc_interval=1.0),
            # max_pool_size 0: idle ENIs go away, so that later ADDs create (and crash inside) new ones
            agent_eni_conf(max_pool_size=0, ip_pool_sync_period="500ms"),
        )

    def netns(self, cid: str) -> str:
        p = (
            self.workdir / f"{cid}.netns"
        )  # a file stands for the sandbox's netns: it exists while the pod does
        p.touch()
        return str(p)

    # -- CNI as a runtime drives it ------------------------------------------------------------
    def add(self, cid: str) -> dict[str, Any]:
        return self.agent.cni_request("ADD", cid, self.netns(cid), cid)

    def delete(self, cid: str) -> None:
        answer = self.agent.cni_request("DEL", cid, str(self.workdir / f"{cid}.netns"), cid)
        assert answer["ok"], (cid, answer, self.agent.log())
        self.pods.pop(cid, None)
        (self.workdir / f"{cid}.netns").unlink(missing_ok=True)

    def add_many(self, n: int) -> None:
        cids = [self.new_cid() for _ in range(n)]
        results: dict[str, dict[str, Any]] = {}
        threads = [threading.Thread(target=lambda c=c: results.__setitem__(c, self.add(c))) for c in cids]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for cid in cids:
            answer = results[cid]
            if answer["ok"]:
                self.pods[cid] = answer["result"]["ips"][0]["address"].split("/")[0]
            else:  # a failed ADD is followed by DEL
                assert answer["error"]["code"] in (11, 100, 101), answer
                self.delete(cid)

    def new_cid(self) -> str:
        self.seq += 1
        return f"pod{self.seq}"

    def crash_during(self, fn: Any, cids: list[str], delay: float) -> None:
        def run(c: str) -> None:
            try:
                fn(c)
            except (OSError, AssertionError, ProtocolError):
                pass  # the agent died under the request

        threads = [threading.Thread(target=run, args=(c,)) for c in cids]
        for t in threads:
            t.start()
        time.sleep(delay)
        self.agent.kill9()
        for t in threads:
            t.join()
        self.restart()
        for c in cids:  # the runtime follows a failed ADD (or an unanswered DEL) with DEL
            self.delete(c)

    def restart(self) -> None:
        self.agent.start(timeout=60)

    # -- invariants ----------------------------------------------------------------------------
    def store_rows(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        db = sqlite3.connect(f"file:{self.agent.settings['state_dir']}/state.db?mode=ro", uri=True)
        db.row_factory = sqlite3.Row
        try:
            enis = [dict(r) for r in db.execute("SELECT * FROM ipam_enis")]
            ips = [dict(r) for r in db.execute("SELECT * FROM ipam_ips")]
        finally:
            db.close()
        return enis, ips

    def check(self) -> None:
        deadline = time.monotonic() + 30
        while True:
            report = self.agent.query("_mapping", kernel=False)
            snap = self.agent.query("_pool")
            quiet = not snap["in_flight"] and all(
                e["state"] == "ready" and not e["busy"] and all(ip["state"] == "ready" for ip in e["ips"])
                for e in snap["enis"]
            )
            orphans = [
                e["id"]
                for e in self.admin.state()["enis"]
                if e["status"] == "Available" and e["tags"].get("instance-id") == NODE
            ]
            if report["consistent"] and quiet and not orphans:
                break
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"no agreement 30 s after the restart: {report['problems']} orphans={orphans}\n{self.agent.log()}"
                )
            time.sleep(0.2)
        atts = self.agent.query("_attachments")
        # no address is held twice, and surviving pods kept theirs
        held = [ip for a in atts for ip in a["ips"]]
        assert len(held) == len(set(held)), f"an address is held by two pods: {atts}"
        assert {a["container_id"]: a["ips"][0] for a in atts} == self.pods
        # the store matches the cloud (read independently of the agent's code)
        enis, ips = self.store_rows()
        cloud = [e for e in self.admin.state()["enis"] if e["instance_id"] == NODE and e["type"] != "Primary"]
        cloud_ips = [a for e in cloud for a in (e["primary_ip"], *e["secondary_ips"])]
        assert len(cloud_ips) == len(set(cloud_ips))
        assert {e["eni_id"] for e in enis} == {e["id"] for e in cloud}
        assert sorted(ip["address"] for ip in ips) == sorted(cloud_ips)
        owners = {ip["owner"]: ip["address"] for ip in ips if ip["owner"]}
        assert owners == {f"{cid}/eth0": ip for cid, ip in self.pods.items()}

    # -- one example ---------------------------------------------------------------------------
    def run(self, steps: list[tuple]) -> None:
        self.restart()
        try:
            for s in steps:
                kind = s[0]
                if kind == "add":
                    self.add_many(s[1])
                elif kind == "del":
                    for cid in sorted(self.pods)[: s[1]]:
                        self.delete(cid)
                elif kind == "crash_add":
                    self.crash_during(self.add, [self.new_cid() for _ in range(s[1])], s[2])
                    self.check()
                elif kind == "crash_del":
                    victims = sorted(self.pods)[: s[1]]
                    if victims:
                        self.crash_during(self.delete, victims, s[2])
                        self.check()
                elif kind == "crash":
                    self.agent.kill9()
                    self.restart()
                    self.check()
                elif kind == "fault":
                    self.admin.add_fault(s[1], times=1, **FAULTS[s[2]])
            self.admin.clear_faults()
            self.check()
            for cid in list(self.pods):
                self.delete(cid)
            self.check()
        finally:
            self.agent.stop()
            self.admin.close()


first_step = st.one_of(
    st.tuples(st.just("add"), st.integers(1, 8)),
    st.tuples(st.just("crash_add"), st.integers(1, 8), st.floats(0.0, 1.0)),
)


@settings(
    max_examples=int(os.environ.get("TWIPAM_CRASH_EXAMPLES", "8")),
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(first=first_step, steps=st.lists(step, min_size=3, max_size=7))
def test_no_double_assignment_no_leak_after_any_crash(
    twipam_emulator, tmp_path_factory, first, steps
) -> None:
    twipam_emulator.reset()
    admin = twipam_emulator.admin()
    admin.configure(attach_latency=0.2, detach_latency=0.1)
    for api, seconds in (
        ("CreateNetworkInterface", 0.1),
        ("AssignPrivateIpAddresses", 0.05),
        ("UnassignPrivateIpAddresses", 0.05),
        ("DeleteNetworkInterface", 0.05),
    ):
        admin.set_latency(api, seconds)
    admin.close()
    World(twipam_emulator, tmp_path_factory.mktemp("twipam-crash")).run([first, *steps])
