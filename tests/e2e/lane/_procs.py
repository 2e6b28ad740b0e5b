"""Processes the lane starts, each stopped by its PID, and the work directory that records them.

Every cluster part runs in its own work directory ``/tmp/twe2e-<kind>-<suffix>/`` holding an
``owner.json``: the PID of the test process that owns it plus every process and host resource it
created. A later run reaps directories whose owner is gone (a killed pytest), so nothing leaks even
when a finalizer never ran.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from . import _cleanup
from ._util import PREFIX, LaneError, pid_start_time

WORK_ROOT = Path(os.environ.get("TWE2E_WORK_ROOT", "/tmp"))


class ManagedProcess:
    """One long-running process with its output in a log file; stopped by PID (never by name)."""

    def __init__(self, name: str, popen: subprocess.Popen[bytes], log_path: Path) -> None:
        self.name = name
        self._popen = popen
        self.pid = popen.pid
        self.start_time = pid_start_time(popen.pid)
        self.log_path = log_path

    def exited(self) -> int | None:
        """The exit code when the process has exited, else None."""
        return self._popen.poll()

    def dead_message(self) -> str | None:
        """A message with the tail of the log when the process has exited, else None."""
        code = self.exited()
        if code is None:
            return None
        return f"{self.name} (pid {self.pid}) exited with {code}; last log lines:\n{self.tail()}"

    def tail(self, lines: int = 30) -> str:
        """The last ``lines`` lines of the process's log."""
        try:
            data = self.log_path.read_bytes()[-20000:].decode(errors="replace")
        except FileNotFoundError:
            return "<no log>"
        return "\n".join(data.splitlines()[-lines:])

    def stop(self, timeout: float = 15.0) -> int:
        """SIGTERM, wait up to ``timeout`` seconds, then SIGKILL. Returns the exit code."""
        if self._popen.poll() is None:
            self._popen.send_signal(signal.SIGTERM)
            try:
                return self._popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self._popen.kill()
        return self._popen.wait(10)


class Workdir:
    """A temp directory for one lane component plus the record of what it created on the host."""

    def __init__(self, kind: str) -> None:
        WORK_ROOT.mkdir(parents=True, exist_ok=True)
        self.path = Path(tempfile.mkdtemp(prefix=f"{PREFIX}-{kind}-", dir=WORK_ROOT))
        self.path.chmod(0o755)
        self._record: dict[str, Any] = {
            "owner_pid": os.getpid(),
            "owner_start": pid_start_time(os.getpid()),
            "processes": [],
            "resources": [],
        }
        self._save()

    def _save(self) -> None:
        tmp = self.path / "owner.json.tmp"
        tmp.write_text(json.dumps(self._record, indent=1))
        tmp.replace(self.path / "owner.json")

    def sub(self, name: str) -> Path:
        """A subdirectory (created)."""
        p = self.path / name
        p.mkdir(parents=True, exist_ok=True)
        return p

    @property
    def resources(self) -> list[dict[str, Any]]:
        """The host resources recorded so far (see :meth:`record`)."""
        return list(self._record["resources"])

    def record(self, kind: str, **data: Any) -> None:
        """Remember a host resource (``dir``, ``netns``, ``link``, ``glob``) for stale reaping."""
        self._record["resources"].append({"kind": kind, **data})
        self._save()

    def spawn(
        self,
        name: str,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> ManagedProcess:
        """Start ``argv`` in its own session with stdout+stderr in ``<workdir>/logs/<name>.log``."""
        log_path = self.sub("logs") / f"{name}.log"
        full_env = dict(os.environ)
        if env:
            full_env.update(env)
        with open(log_path, "ab") as log:
            log.write(f"# {' '.join(argv)}\n".encode())
            log.flush()
            try:
                popen = subprocess.Popen(
                    list(argv),
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=full_env,
                    cwd=cwd,
                    start_new_session=True,
                )
            except OSError as exc:
                raise LaneError(f"cannot start {name}: {argv[0]}: {exc}") from exc
        proc = ManagedProcess(name, popen, log_path)
        self._record["processes"].append({"name": name, "pid": proc.pid, "start": proc.start_time})
        self._save()
        return proc

    def remove(self) -> None:
        """Unmount anything left below the directory and delete it."""
        _cleanup.unmount_under(self.path)
        shutil.rmtree(self.path, ignore_errors=True)


def reap_stale(kinds: Sequence[str] = ("api", "node")) -> list[str]:
    """Clean up work directories of earlier runs whose owning process is gone.

    Kills their recorded processes (only when PID *and* start time match), removes recorded host
    resources, unmounts and deletes the directory. Returns what was done, for the log.
    """
    done: list[str] = []
    for kind in kinds:
        for d in sorted(WORK_ROOT.glob(f"{PREFIX}-{kind}-*")):
            try:
                rec = json.loads((d / "owner.json").read_text())
            except (OSError, ValueError):
                # Being created right now by another run, or not ours.
                if time.time() - d.stat().st_mtime < 600:
                    continue
                rec = {"owner_pid": -1, "processes": [], "resources": []}
            owner = rec.get("owner_pid", -1)
            if owner > 0 and pid_start_time(owner) == rec.get("owner_start"):
                continue  # still owned by a live process
            for p in reversed(rec.get("processes", [])):
                if _cleanup.kill_exact(p["pid"], p.get("start")):
                    done.append(f"killed stale {p['name']} pid {p['pid']}")
            done.extend(_cleanup.release_resources(rec.get("resources", []), d))
            done.extend(
                _cleanup.remove_pod_logs(_cleanup.pod_uids_in_containerd_log(d / "logs" / "containerd.log"))
            )
            _cleanup.unmount_under(d)
            shutil.rmtree(d, ignore_errors=True)
            done.append(f"removed stale {d}")
    return done
