"""Small helpers shared by the lane: ports, polling, commands, timing."""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from typing import TypeVar

T = TypeVar("T")

PREFIX = "twe2e"


class LaneError(RuntimeError):
    """Something in the e2e lane did not start, stop or behave as expected."""


def suffix(n: int = 4) -> str:
    """Random lowercase hex suffix for names (``n`` bytes -> ``2n`` characters)."""
    return secrets.token_hex(n)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nobody listens on right now (the caller binds it soon after)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(
    what: str,
    probe: Callable[[], T | None],
    *,
    timeout: float,
    interval: float = 0.1,
    alive: Callable[[], str | None] | None = None,
) -> T:
    """Poll ``probe`` until it returns something other than None/False, or raise LaneError.

    ``alive`` is called on every round; when it returns a message (a process died), waiting stops at
    once with that message instead of running into the timeout.
    """
    deadline = time.monotonic() + timeout
    last_exc: BaseException | None = None
    while True:
        if alive is not None:
            dead = alive()
            if dead:
                raise LaneError(f"while waiting for {what}: {dead}")
        try:
            result = probe()
            if result is not None and result is not False:
                return result
        except Exception as exc:  # noqa: BLE001 - remembered and reported on timeout
            last_exc = exc
        if time.monotonic() >= deadline:
            detail = f" (last error: {last_exc!r})" if last_exc else ""
            raise LaneError(f"timed out after {timeout:.0f}s waiting for {what}{detail}")
        time.sleep(interval)


def run(
    argv: Sequence[str], *, check: bool = True, timeout: float = 60, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run a command, capture its output, raise LaneError with the output when it fails."""
    proc = subprocess.run(
        list(argv), capture_output=True, text=True, timeout=timeout, env=env, stdin=subprocess.DEVNULL
    )
    if check and proc.returncode != 0:
        raise LaneError(
            f"{' '.join(argv)} exited {proc.returncode}: {proc.stderr.strip() or proc.stdout.strip()}"
        )
    return proc


def pid_start_time(pid: int) -> int | None:
    """The start time (clock ticks since boot) of ``pid``, or None when it does not exist.

    Together with the PID it identifies a process even after PID reuse.
    """
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # comm may contain spaces and parentheses: split after the last ')'.
    fields = stat[stat.rindex(")") + 2 :].split()
    return int(fields[19])


def is_root() -> bool:
    """True when running as root (the full-node mode needs it)."""
    return os.geteuid() == 0


class Stopwatch:
    """Records named durations, e.g. ``sw.mark('etcd')`` after each phase."""

    def __init__(self) -> None:
        self._t0 = time.monotonic()
        self._last = self._t0
        self.phases: dict[str, float] = {}

    def mark(self, name: str) -> float:
        now = time.monotonic()
        self.phases[name] = now - self._last
        self._last = now
        return self.phases[name]

    @property
    def total(self) -> float:
        return self._last - self._t0

    def summary(self) -> str:
        parts = ", ".join(f"{k} {v:.1f}s" for k, v in self.phases.items())
        return f"{self.total:.1f}s ({parts})"
