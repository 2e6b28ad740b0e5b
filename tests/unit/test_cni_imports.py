"""The ``terway`` executable imports only the standard library (and its own
three small modules) on every path: the container runtime execs it for every
pod, so its start-up is the interpreter's.  Checked on the standalone zip
application the DaemonSet installs, run by the host's Python as it would be."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from terway_agent.cli import install_cni

OWN = {"terway_agent", "terway_agent.cni", "terway_agent.cni.main", "terway_agent.protocol"}


@pytest.fixture(scope="module")
def standalone(tmp_path_factory: pytest.TempPathFactory) -> Path:
    bin_dir = tmp_path_factory.mktemp("cnibin")
    install_cni(str(bin_dir), standalone_python=sys.executable)
    return bin_dir / "terway"


@pytest.mark.parametrize(
    ("command", "env", "conf"),
    [
        ("VERSION", {}, {"cniVersion": "1.1.0"}),
        ("ADD", {"CNI_CONTAINERID": "imp1", "CNI_NETNS": "/run/netns/none", "CNI_IFNAME": "eth0"}, None),
        ("DEL", {"CNI_CONTAINERID": "imp1", "CNI_IFNAME": "eth0"}, None),
        ("STATUS", {}, None),
        ("ADD", {"CNI_CONTAINERID": "-bad"}, None),
    ],
    ids=["version", "add", "del", "status", "bad-env"],
)
def test_only_the_standard_library_is_imported(standalone: Path, tmp_path: Path, command: str, env: dict, conf) -> None:
    conf = conf or {"cniVersion": "1.1.0", "name": "terway", "type": "terway",
                    "socket_path": str(tmp_path / "no-agent.sock")}
    p = subprocess.run(
        [sys.executable, "-X", "importtime", "-I", "-S", str(standalone)],
        input=json.dumps(conf).encode(),
        env={"CNI_COMMAND": command, "CNI_PATH": "/opt/cni/bin", **env},
        capture_output=True, timeout=30,
    )
    assert p.stdout, p.stderr.decode()[-2000:]  # it answered (a result or a CNI error)
    json.loads(p.stdout)
    imported = {
        line.split("|")[2].strip()
        for line in p.stderr.decode().splitlines()
        if line.startswith("import time:") and "imported package" not in line
    }
    assert OWN & imported, "the import trace was not captured"
    foreign = sorted(m for m in imported if m not in OWN and m.split(".")[0] not in sys.stdlib_module_names)
    assert foreign == [], f"the terway executable imported non-stdlib modules: {foreign}"
