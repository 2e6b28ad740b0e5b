"""In an unprivileged container /proc/sys is read-only; the agent remounts its own view of it
read-write (CAP_SYS_ADMIN) before it starts. Checked in a private mount namespace that
reproduces what container runtimes do (a read-only bind mount of /proc/sys)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

SCRIPT = """
import os, sys
from terway_agent.k8s._container import ensure_proc_sys_writable
assert os.statvfs('/proc/sys').f_flag & os.ST_RDONLY
print(ensure_proc_sys_writable())
assert not os.statvfs('/proc/sys').f_flag & os.ST_RDONLY
print(ensure_proc_sys_writable())
"""


def _in_private_mount_ns(cmd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            "mount -o bind /proc/sys /proc/sys && mount -o remount,bind,ro /proc/sys && " + cmd,
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to make a mount namespace")
def test_a_read_only_proc_sys_is_remounted_read_write_in_the_agents_mount_namespace():
    before = os.statvfs("/proc/sys").f_flag & os.ST_RDONLY
    r = _in_private_mount_ns(f'{sys.executable} -c "{SCRIPT}"')
    assert r.returncode == 0, r.stderr
    answers = [line for line in r.stdout.splitlines() if line in ("True", "False")]
    assert answers == ["True", "False"]  # remounted once, then already writable
    assert "k8s.container.proc_sys_remounted" in r.stdout
    assert os.statvfs("/proc/sys").f_flag & os.ST_RDONLY == before  # the host's view is untouched


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to make a mount namespace")
def test_without_cap_sys_admin_the_error_says_what_to_grant():
    code = (
        "from terway_agent.k8s._container import ensure_proc_sys_writable\n"
        "try:\n    ensure_proc_sys_writable()\nexcept Exception as e:\n    print(e)\n"
    )
    r = _in_private_mount_ns(f"capsh --drop=cap_sys_admin -- -c '{sys.executable} -c \"{code}\"'")
    if "capsh: not found" in r.stderr:
        pytest.skip("capsh (libcap2-bin) is not installed")
    assert r.returncode == 0, r.stderr
    assert "/proc/sys is read-only in this container and could not be remounted read-write (EPERM" in r.stdout
    assert "CAP_SYS_ADMIN" in r.stdout and "agent.privileged=true" in r.stdout
