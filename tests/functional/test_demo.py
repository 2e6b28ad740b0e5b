"""The README's first command: ``terway-agent demo`` (cloud, two nodes) and
``--standalone`` run to the end, every step giving its expected result, and
leave nothing behind."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.netns

AGENT = str(Path(sys.executable).parent / "terway-agent")




@pytest.mark.parametrize("args", [["--standalone"], []], ids=["standalone", "cloud"])
def test_demo_runs_every_step_as_expected_and_cleans_up(args: list[str], tmp_path: Path) -> None:
    p = subprocess.run([AGENT, "demo", "--workdir", str(tmp_path), *args], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout[-4000:] + p.stderr[-4000:]
    assert "every step gave the expected result" in p.stdout
    assert "unexpected" not in p.stdout
    if args:
        assert "exit 1" in p.stdout and '"code": 4' in p.stdout  # the bad-input step answered as it should
    else:
        assert "from the VPC" in p.stdout and "no overlay, no NAT" in p.stdout
    used = set(re.findall(r"network namespace (tw[\w-]+)", p.stdout))
    assert used, "the demo names the namespaces it creates"
    assert not [n for n in used if Path("/run/netns", n).exists()], "the demo left network namespaces behind"
    assert not any(tmp_path.iterdir()), "the demo left its work directory behind"
