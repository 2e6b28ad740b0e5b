"""Driving a real agent process and the real ``terway`` CNI executable from tests.

Shared by the functional, shared-ENI and end-to-end suites: an :class:`Agent`
is a ``terway-agent run`` process inside a node network namespace; its
:meth:`Agent.cni` execs the installed ``terway`` launcher exactly as a
container runtime does (environment + stdin, one process per call).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from terway_agent.cli import install_cni

ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
RUNNER = ROOT / "tests" / "functional" / "_runner.py"


def unique(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:6]}"


@dataclass
class CNIRun:
    rc: int
    out: Any
    stdout: str
    stderr: str

    @property
    def code(self) -> int | None:
        return self.out.get("code") if isinstance(self.out, dict) else None


@dataclass
class Agent:
    """A terway agent process and the paths around it."""

    workdir: Path
    node_ns: str
    settings: dict[str, Any]
    inline: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen | None = None
    log_path: Path = field(init=False)
    bin_dir: Path = field(init=False)

    def __post_init__(self) -> None:
        self.log_path = self.workdir / "agent.log"
        self.bin_dir = self.workdir / "bin"
        install_cni(str(self.bin_dir))

    @property
    def socket(self) -> str:
        return self.settings["socket_path"]

    @property
    def conflist(self) -> Path:
        return Path(self.settings["cni_conf_dir"]) / "10-terway.conflist"

    @property
    def eni_conf(self) -> Path:
        return Path(self.settings["eni_conf_path"])

    def write_settings(self) -> Path:
        p = self.workdir / "settings.yaml"
        p.write_text(yaml.safe_dump(self.settings))
        return p

    def command(self, *extra: str) -> list[str]:
        settings = str(self.write_settings())
        if self.inline:
            base = [sys.executable, str(RUNNER), self.inline, "--config", settings]
        else:
            base = [str(VENV_BIN / "terway-agent"), "run", "--config", settings]
        return ["ip", "netns", "exec", self.node_ns, *base, *extra]

    def start(self, *extra: str, wait: bool = True, timeout: float = 20.0) -> None:
        assert self.proc is None or self.proc.poll() is not None, "agent already running"
        logf = open(self.log_path, "ab")  # noqa: SIM115 - owned by the process
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **self.env}
        self.proc = subprocess.Popen(self.command(*extra), stdout=logf, stderr=subprocess.STDOUT, env=env)
        logf.close()
        if wait:
            self.wait_serving(timeout)

    def wait_serving(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"agent exited with {self.proc.returncode}:\n{self.log()}")
            if self.accepts():
                return
            time.sleep(0.02)
        raise AssertionError(f"agent did not serve within {timeout}s:\n{self.log()}")

    def accepts(self) -> bool:
        s = socket.socket(socket.AF_UNIX)
        try:
            s.connect(self.socket)
            return True
        except OSError:
            return False
        finally:
            s.close()

    def log(self) -> str:
        try:
            return self.log_path.read_text()[-6000:]
        except FileNotFoundError:
            return ""

    def events(self) -> list[dict[str, Any]]:
        out = []
        for line in self.log_path.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
        return out

    def stop(self, timeout: float = 20.0) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def run_cli(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            ["ip", "netns", "exec", self.node_ns, str(VENV_BIN / "terway-agent"), *args],
            capture_output=True, text=True, timeout=60,
        )

    def attachments(self) -> list[dict[str, Any]]:
        r = subprocess.run([str(VENV_BIN / "terway-agent"), "attachments", "--json", "--socket", self.socket],
                           capture_output=True, text=True, timeout=30)
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout)

    def leases(self) -> list[dict[str, Any]]:
        """The store's lease table, read through a second SQLite connection (WAL readers never block)."""
        import sqlite3

        db = sqlite3.connect(f"file:{self.settings['state_dir']}/state.db?mode=ro", uri=True)
        db.row_factory = sqlite3.Row
        try:
            return [dict(r) for r in db.execute("SELECT * FROM leases ORDER BY pool, address")]
        finally:
            db.close()

    def conf(self, version: str = "1.0.0", **extra: Any) -> dict[str, Any]:
        c = {"cniVersion": version, "name": "terway", "type": "terway", "socket_path": self.socket}
        c.update(extra)
        return c

    def cni(
        self,
        command: str,
        container_id: str = "",
        *,
        netns_path: str = "",
        ifname: str = "eth0",
        pod: tuple[str, str] | None = None,
        conf: dict[str, Any] | None = None,
        stdin: bytes | None = None,
        env: dict[str, str] | None = None,
        drop: tuple[str, ...] = (),
        timeout: float = 120,
    ) -> CNIRun:
        """Exec the real ``terway`` executable as a container runtime does."""
        e = {"PATH": os.environ.get("PATH", ""), "CNI_COMMAND": command, "CNI_PATH": str(self.bin_dir) + ":/usr/lib/cni"}
        if container_id:
            e["CNI_CONTAINERID"] = container_id
        if command in ("ADD", "CHECK", "DEL"):
            e["CNI_IFNAME"] = ifname
            e["CNI_NETNS"] = netns_path
        if pod is not None:
            e["CNI_ARGS"] = f"IgnoreUnknown=1;K8S_POD_NAMESPACE={pod[0]};K8S_POD_NAME={pod[1]};K8S_POD_INFRA_CONTAINER_ID={container_id}"
        e.update(env or {})
        for k in drop:
            e.pop(k, None)
        data = stdin if stdin is not None else json.dumps(conf if conf is not None else self.conf()).encode()
        p = subprocess.run([str(self.bin_dir / "terway")], input=data, capture_output=True, env=e, timeout=timeout)
        text = p.stdout.decode()
        try:
            out = json.loads(text) if text.strip() else None
        except ValueError:
            out = text
        return CNIRun(p.returncode, out, text, p.stderr.decode())


def base_settings(workdir: Path, **over: Any) -> dict[str, Any]:
    eni = workdir / "eni_conf"
    if not eni.exists():
        eni.write_text(json.dumps({"max_pool_size": 5}))
    s = {
        "node_name": "functional",
        "mode": "example",
        "eni_conf_path": str(eni),
        "socket_path": str(workdir / "run" / "eni.socket"),
        "lock_path": str(workdir / "run" / "terwayd.lock"),
        "state_dir": str(workdir / "state"),
        "cni_conf_dir": str(workdir / "net.d"),
        "debug_listen": "127.0.0.1:0",
        "reload_interval": 0.2,
        "plugin_config": {"example": {"subnet": "10.250.0.0/24"}},
    }
    s.update(over)
    return s



def ns_run(ns: str, *cmd: str, check: bool = False) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", "netns", "exec", ns, *cmd], capture_output=True, text=True, check=check, timeout=30)


def links_in(ns: str) -> list[str]:
    out = ns_run(ns, "ip", "-j", "link", "show").stdout
    return [link["ifname"] for link in json.loads(out or "[]")]
