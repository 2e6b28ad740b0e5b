"""Helpers of the IPAM tests (imported by conftest.py and the tests).

:class:`Env` wraps the cloud emulator, :class:`Pool` one IPAM under test with
its store and client, :class:`AgentProc` a real agent process running the IPAM
test mode (``twipam_mode.py``): an :class:`agentkit.Agent`.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio
from agentkit import Agent
from twipam_topology import (
    ACCESS_KEY,
    FAST_BACKOFFS,
    NODE,
    REGION,
    SG,
    VSW_A,
    VSW_B,
    VSW_NODE,
    ZONE,
)

from terway_agent.cloud.client import CloudClient
from terway_agent.cloud.emulator import Emulator
from terway_agent.cloud.settings import CloudSettings
from terway_agent.config import EniConf
from terway_agent.context import NodeInfo
from terway_agent.ipam import IPAM, PoolTuning, _db
from terway_agent.sim import VENV_BIN
from terway_agent.store import Store
from terway_agent.types import InstanceLimits

FAST_TUNING = PoolTuning(
    batch_window=0.05,
    alloc_timeout=15.0,
    release_delay=0.1,
    eni_inhibit=60.0,
    ip_inhibit=600.0,
    orphan_grace=300.0,
    retry_backoff_max=0.5,
    rollback_timeout=20.0,
)


@dataclasses.dataclass
class Env:
    emulator: Emulator
    admin: Any
    tmp_path: Path

    def settings(self, instance: str = NODE, **over: Any) -> CloudSettings:
        kw: dict[str, Any] = {
            "region_id": REGION,
            "endpoint": self.emulator.endpoint,
            "protocol": "http",
            "access_key_id": ACCESS_KEY[0],
            "access_key_secret": ACCESS_KEY[1],
            "metadata_endpoint": self.emulator.metadata_url(instance),
            "backoff_override": FAST_BACKOFFS,
            "request_timeout": 5.0,
            "connect_timeout": 2.0,
            "metadata_wait_timeout": 5.0,
            "metadata_poll_interval": 0.02,
        }
        kw.update(over)
        return CloudSettings(**kw)

    def client(self, instance: str = NODE, **over: Any) -> CloudClient:
        return CloudClient(self.settings(instance, **over), instance_id=instance)

    def state(self) -> dict[str, Any]:
        return self.admin.state()

    def enis_of(self, instance: str) -> list[dict[str, Any]]:
        """The instance's non-primary ENIs as the emulator holds them."""
        return [e for e in self.state()["enis"] if e["instance_id"] == instance and e["type"] != "Primary"]

    def calls(self) -> dict[str, int]:
        return {k: v for k, v in self.admin.calls().items() if not k.startswith("metadata")}


@dataclasses.dataclass
class Pool:
    """One IPAM under test and what it runs on."""

    env: Env
    ipam: IPAM
    store: Store
    client: CloudClient
    instance: str
    conf: EniConf
    limits: InstanceLimits
    report: Any = None
    scope: trio.CancelScope | None = None

    async def start(self, nursery: trio.Nursery) -> None:
        """Run the pool's tasks in ``nursery`` until :meth:`stop`."""

        async def run(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
            with trio.CancelScope() as scope:
                self.scope = scope
                await self.ipam.run(task_status=task_status)

        await nursery.start(run)

    async def stop(self) -> None:
        """Stop the pool's tasks (as a shutdown does: in-flight creations roll back)."""
        assert self.scope is not None
        self.scope.cancel()
        await trio.sleep(0.05)

    def reload(self, **changes: Any) -> None:
        self.conf = dataclasses.replace(self.conf, **changes)

    async def cloud_enis(self) -> list[dict[str, Any]]:
        return await trio.to_thread.run_sync(self.env.enis_of, self.instance)

    async def calls(self) -> dict[str, int]:
        return await trio.to_thread.run_sync(self.env.calls)

    async def rows(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        enis, ips, _ = await self.store.acall(_db.load, self.store)
        return enis, ips

    async def assert_consistent(self, *, allow_in_flight: bool = False) -> None:
        """The store and the emulator agree; no address has two owners; memory mirrors the store."""
        enis, ips = await self.rows()
        cloud = {e["id"]: e for e in await self.cloud_enis()}
        store_ids = {e["eni_id"] for e in enis}
        assert store_ids == set(cloud), f"store ENIs {sorted(store_ids)} != cloud ENIs {sorted(cloud)}"
        stack = self.conf.ip_stack
        for e in enis:
            assert e["state"] == "ready", e
            c = cloud[e["eni_id"]]
            assert c["status"] == "InUse"
            want = {c["primary_ip"], *c["secondary_ips"]}
            if stack != "ipv4":
                want |= set(c["ipv6s"])
            have = {ip["address"] for ip in ips if ip["eni_id"] == e["eni_id"]}
            assert have == want, f"{e['eni_id']}: store {sorted(have)} != cloud {sorted(want)}"
        owned = [(ip["owner"], ip["family"]) for ip in ips if ip["owner"]]
        assert len(owned) == len(set(owned)), f"an owner holds two addresses of one family: {owned}"
        mem = {a: ip.owner for e in self.ipam._enis.values() for a, ip in e.ips.items()}
        assert mem == {ip["address"]: ip["owner"] for ip in ips}, "the in-memory pool differs from the store"

    async def wait(self, pred: Callable[[], bool], timeout: float = 10.0, what: str = "condition") -> None:
        with trio.move_on_after(timeout) as scope:
            while not pred():  # noqa: ASYNC110 - polling a state that emits no event
                await trio.sleep(0.02)
        if scope.cancelled_caught:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}: {self.ipam.snapshot()}")

    async def settle(self, timeout: float = 10.0) -> None:
        """Wait until no cloud operation is in flight, nobody waits, and nothing is half-released."""
        ipam = self.ipam

        def quiet() -> bool:
            return (
                ipam._ops == 0
                and ipam._pending == 0
                and all(
                    not e.busy and e.state == "ready" and all(ip.state == "ready" for ip in e.ips.values())
                    for e in ipam._enis.values()
                )
            )

        await self.wait(quiet, timeout, "the pool to settle")


def eni_conf(**over: Any) -> EniConf:
    kw: dict[str, Any] = {
        "vswitches": {ZONE: (VSW_A, VSW_B)},
        "security_group": SG,
        "ip_reuse_cooldown": 0.0,
        "vswitch_selection_policy": "ordered",
    }
    kw.update(over)
    return EniConf(**kw)


def node_info(instance: str, limits: InstanceLimits) -> NodeInfo:
    return NodeInfo(
        name=f"twipam-{instance}",
        instance_id=instance,
        instance_type=limits.instance_type,
        region_id=REGION,
        zone_id=ZONE,
        vswitch_id=VSW_NODE,
    )


# ---------------------------------------------------------------------------------------------
# the real agent process with the IPAM test mode
# ---------------------------------------------------------------------------------------------

#: the mode module, imported by tests/functional/_runner.py (the repository root is on its path)
MODE_MODULE = "tests.ipam.twipam_mode"


def agent_settings(workdir: Path, cloud_section: dict[str, Any], **over: Any) -> dict[str, Any]:
    s: dict[str, Any] = {
        "node_name": "twipam-node",
        "mode": "twipam",
        "eni_conf_path": str(workdir / "eni_conf.json"),
        "socket_path": str(workdir / "run" / "eni.socket"),
        "lock_path": str(workdir / "run" / "terwayd.lock"),
        "state_dir": str(workdir / "state"),
        "cni_conf_dir": str(workdir / "net.d"),
        "debug_listen": "",
        "reload_interval": 0.2,
        "gc_interval": 1.0,
        "log_level": "info",
        "cloud": cloud_section,
    }
    s.update(over)
    return s


def agent_eni_conf(**over: Any) -> dict[str, Any]:
    conf: dict[str, Any] = {
        "access_key": ACCESS_KEY[0],
        "access_secret": ACCESS_KEY[1],
        "vswitches": {ZONE: [VSW_A, VSW_B]},
        "security_group": SG,
        "ip_reuse_cooldown": "0s",
        # eni_conf's backoff_override takes duration/factor/jitter/steps only: the status wait
        # keeps its 3 s initial delay (the original's) in agent tests
        "backoff_override": {
            k: {f: v for f, v in spec.items() if f in ("duration", "factor", "jitter", "steps")}
            for k, spec in FAST_BACKOFFS.items()
        },
        "vswitch_selection_policy": "ordered",
    }
    conf.update(over)
    return conf


class AgentProc(Agent):
    """A terway agent process running the IPAM test mode (``twipam_mode.py``, inline through
    tests/functional/_runner.py), in network namespace ``netns`` or, without one, in this
    process's; ``eni`` is written to ``settings["eni_conf_path"]`` before every start."""

    def __init__(
        self,
        workdir: Path,
        settings: dict[str, Any],
        eni: dict[str, Any],
        netns: str | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        super().__init__(workdir, netns or "", settings, inline=MODE_MODULE, env=env)
        self.eni = eni

    def write_settings(self) -> Path:
        Path(self.settings["eni_conf_path"]).write_text(json.dumps(self.eni))
        return super().write_settings()

    def command(self, *extra: str) -> list[str]:
        if self.node_ns:
            return super().command(*extra)
        assert self.command_prefix is not None
        return [*self.command_prefix, "--config", str(self.write_settings()), *extra]

    def start(self, *extra: str, wait: bool = True, timeout: float = 60.0) -> None:
        super().start(*extra, wait=wait, timeout=timeout)

    def stop(self, timeout: float = 30.0) -> int:
        return super().stop(timeout)

    def kill9(self) -> None:
        super().kill9()
        # the conflist stays on a real node; remove it so wait_serving sees the new agent
        self.conflist.unlink(missing_ok=True)

    def request(self, verb: str, timeout: float = 60.0, **fields: Any) -> dict[str, Any]:
        from terway_agent import protocol

        return protocol.request(
            self.socket, {"v": protocol.PROTOCOL_VERSION, "verb": verb, **fields}, timeout=timeout
        )

    def cni_request(
        self, verb: str, cid: str, netns_path: str = "", pod: str = "", timeout: float = 60.0
    ) -> dict[str, Any]:
        """The CNI ``verb`` as the ``terway`` executable sends it to the agent's socket."""
        env = {"CNI_CONTAINERID": cid, "CNI_IFNAME": "eth0", "CNI_NETNS": netns_path}
        if pod:
            env["CNI_ARGS"] = f"K8S_POD_NAMESPACE=default;K8S_POD_NAME={pod}"
        return self.request(
            verb, timeout=timeout, env=env, config={"cniVersion": "1.0.0", "name": "terway", "type": "terway"}
        )

    def query(self, verb: str, **extra: Any) -> Any:
        answer = self.request(verb, **extra)
        assert answer["ok"], answer
        return answer["result"]

    def cli(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(VENV_BIN / "terway-agent"), *args, "--socket", self.socket],
            capture_output=True,
            text=True,
            timeout=60,
        )
