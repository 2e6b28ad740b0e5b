"""Host clean-up primitives: processes by PID, mounts, network namespaces, links, sysctls, files."""

from __future__ import annotations

import ctypes
import errno
import fcntl
import glob
import json
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from ._util import pid_start_time

_libc = ctypes.CDLL(None, use_errno=True)
_MNT_DETACH = 2


def kill_exact(pid: int, start_time: int | None, timeout: float = 10.0) -> bool:
    """SIGTERM then SIGKILL ``pid`` if it is still the process that started at ``start_time``.

    Returns True when a signal was sent.
    """
    if start_time is None or pid_start_time(pid) != start_time:
        return False
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return False
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pid_start_time(pid) != start_time:
            return True
        _reap_child(pid)
        time.sleep(0.05)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    _reap_child(pid)
    return True


def _reap_child(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def pids_with_cmdline(fragment: str) -> list[tuple[int, int | None]]:
    """(pid, start time) of every process whose command line contains ``fragment``.

    Used with a fragment unique to one lane instance (its socket path), never with a program name.
    """
    found = []
    needle = fragment.encode()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmd = f.read()
        except OSError:
            continue
        if needle in cmd:
            found.append((int(entry), pid_start_time(int(entry))))
    return found


def children_of(pid: int) -> list[int]:
    """Direct children of ``pid`` (from /proc/<pid>/task/*/children)."""
    kids: list[int] = []
    for path in glob.glob(f"/proc/{pid}/task/*/children"):
        try:
            kids.extend(int(x) for x in Path(path).read_text().split())
        except OSError:
            continue
    return kids


def mounts_under(path: Path | str) -> list[str]:
    """Mount points at or below ``path``, deepest first."""
    root = str(path).rstrip("/")
    points = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            mp = line.split()[4].replace("\\040", " ")
            if mp == root or mp.startswith(root + "/"):
                points.append(mp)
    return sorted(set(points), key=lambda p: p.count("/"), reverse=True)


def umount(path: str) -> None:
    """Lazily unmount ``path`` (MNT_DETACH); ignore 'not mounted'."""
    if _libc.umount2(path.encode(), _MNT_DETACH) != 0:
        err = ctypes.get_errno()
        if err not in (errno.EINVAL, errno.ENOENT):
            raise OSError(err, f"umount2({path}): {os.strerror(err)}")


def unmount_under(path: Path | str) -> list[str]:
    """Unmount everything mounted below ``path`` (repeats for stacked mounts). Returns the points."""
    done: list[str] = []
    for _ in range(5):
        points = [p for p in mounts_under(path) if p != str(path).rstrip("/")]
        if not points:
            break
        for p in points:
            umount(p)
            done.append(p)
    return done


def remove_netns(path: str) -> bool:
    """Unmount and delete a named network namespace file (``/run/netns/...``). True if it existed."""
    if not os.path.lexists(path):
        return False
    for _ in range(3):
        if path not in mounts_under(path):
            break
        umount(path)
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    return True


def delete_link(name: str) -> bool:
    """Delete a link of the root network namespace by name; False when it does not exist."""
    proc = subprocess.run(["ip", "link", "del", "dev", name], capture_output=True, text=True)
    return proc.returncode == 0


def link_exists(name: str) -> bool:
    """True when the root network namespace has a link called ``name``."""
    return os.path.exists(f"/sys/class/net/{name}")


def remove_paths(patterns: Iterable[str]) -> list[str]:
    """Delete files/directories matching glob patterns (unmounting below them first)."""
    removed = []
    for pattern in patterns:
        for p in glob.glob(pattern):
            unmount_under(p)
            if os.path.isdir(p) and not os.path.islink(p):
                shutil.rmtree(p, ignore_errors=True)
            else:
                try:
                    os.unlink(p)
                except FileNotFoundError:
                    continue
            removed.append(p)
    return removed


def release_resources(resources: Sequence[dict[str, Any]], workdir: Path) -> list[str]:
    """Undo recorded host resources (reverse order). Used by stale reaping and normal stops."""
    done = []
    for res in reversed(resources):
        kind = res["kind"]
        if kind == "netns" and remove_netns(res["path"]):
            done.append(f"removed netns {res['path']}")
        elif kind == "link" and delete_link(res["name"]):
            done.append(f"deleted link {res['name']}")
        elif kind == "glob":
            done.extend(f"removed {p}" for p in remove_paths([res["pattern"]]))
        elif kind == "sysctl":
            done.extend(sysctl_release(str(workdir)))
        elif kind == "shim":
            for pid, start in pids_with_cmdline(res["fragment"]):
                for child in children_of(pid):
                    kill_exact(child, pid_start_time(child), timeout=3)
                if kill_exact(pid, start, timeout=3):
                    done.append(f"killed shim {pid}")
    return done


# containerd 1.6 logs "RunPodSandbox for &PodSandboxMetadata{Name:x,Uid:<uid>,Namespace:y,...".
_RUNP_LOG = re.compile(r"RunPodSandbox for &PodSandboxMetadata\{Name:[^,]*,Uid:([0-9a-zA-Z-]+),")


def pod_uids_in_containerd_log(log_path: Path) -> set[str]:
    """UIDs of every pod whose sandbox a containerd ran, from its log (also deleted ones)."""
    try:
        return set(_RUNP_LOG.findall(log_path.read_text(errors="replace")))
    except FileNotFoundError:
        return set()


def remove_pod_logs(uids: Iterable[str]) -> list[str]:
    """Delete kubelet 1.20's hard-coded ``/var/log/pods/<ns>_<pod>_<uid>`` dirs and their
    ``/var/log/containers`` symlinks for ``uids``."""
    done = []
    for uid in uids:
        done.extend(f"removed {p}" for p in remove_paths([f"/var/log/pods/*_{uid}"]))
        for link in Path("/var/log/containers").glob("*.log"):
            if link.is_symlink() and f"_{uid}/" in os.readlink(link):
                link.unlink(missing_ok=True)
                done.append(f"removed {link}")
    return done



CNI_CACHE = Path("/var/lib/cni/results")


def remove_cni_results_of_pods(uids: Iterable[str]) -> list[str]:
    """Delete libcni's cached results (``/var/lib/cni/results/<net>-<sandbox>-<if>``, written by
    containerd for every network of a sandbox, ``cni-loopback`` included) of pods ``uids``:
    a sandbox torn down without a successful CNI DEL leaves them behind."""
    wanted = set(uids)
    done = []
    if not wanted or not CNI_CACHE.is_dir():
        return done
    for f in CNI_CACHE.iterdir():
        try:
            doc = json.loads(f.read_text())
        except (OSError, ValueError):
            continue
        args = dict(a for a in doc.get("cniArgs") or [] if isinstance(a, list) and len(a) == 2)
        if args.get("K8S_POD_UID") in wanted:
            f.unlink(missing_ok=True)
            done.append(f"removed {f}")
    return done

# --- sysctls kubelet changes ----------------------------------------------------------------------

# kubelet 1.20 (cm.setupKernelTunables, protectKernelDefaults=false) sets these on start.
KUBELET_SYSCTLS = (
    "vm/overcommit_memory",
    "vm/panic_on_oom",
    "kernel/panic",
    "kernel/panic_on_oops",
    "kernel/keys/root_maxkeys",
    "kernel/keys/root_maxbytes",
)
_SYSCTL_STATE = Path("/run/twe2e-sysctl.json")
_SYSCTL_LOCK = Path("/run/twe2e-sysctl.lock")


def _read_sysctl(name: str) -> str:
    return Path("/proc/sys", name).read_text().strip()


def sysctl_acquire(owner: str) -> None:
    """Register ``owner`` as a kubelet user; the first one saves the original sysctl values.

    Several kubelets may run at once (each test session's node): the values are restored when the
    last one releases.
    """
    with open(_SYSCTL_LOCK, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        state = _load_state()
        if not state.get("owners"):
            state = {"original": {k: _read_sysctl(k) for k in KUBELET_SYSCTLS}, "owners": []}
        state["owners"] = sorted({*state["owners"], owner})
        _SYSCTL_STATE.write_text(json.dumps(state))


def sysctl_release(owner: str) -> list[str]:
    """Unregister ``owner``; when no owner is left (or only dead ones), restore the saved values."""
    with open(_SYSCTL_LOCK, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        state = _load_state()
        if not state:
            return []
        owners = [o for o in state.get("owners", []) if o != owner and os.path.isdir(o)]
        if owners:
            state["owners"] = owners
            _SYSCTL_STATE.write_text(json.dumps(state))
            return []
        done = []
        for name, value in state.get("original", {}).items():
            if _read_sysctl(name) != value:
                Path("/proc/sys", name).write_text(value)
                done.append(f"restored sysctl {name}={value}")
        _SYSCTL_STATE.unlink(missing_ok=True)
        return done


def _load_state() -> dict[str, Any]:
    try:
        return json.loads(_SYSCTL_STATE.read_text())
    except (OSError, ValueError):
        return {}


def iptables_chains() -> dict[str, set[str]]:
    """Chain names per table of the root namespace's iptables (v4), from ``iptables-save``."""
    out = subprocess.run(["iptables-save"], capture_output=True, text=True).stdout
    chains: dict[str, set[str]] = {}
    table = ""
    for line in out.splitlines():
        if line.startswith("*"):
            table = line[1:]
            chains[table] = set()
        elif line.startswith(":"):
            chains[table].add(line[1:].split()[0])
    return chains
