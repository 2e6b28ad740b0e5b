"""Background workers: the timer scheduler and the serialised node-side runner."""

from __future__ import annotations

import heapq
import itertools
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from terway_agent.cloud.emulator.node_side import NodeSide
from terway_agent.log import get_logger

log = get_logger(__name__)


class Scheduler:
    """Runs callbacks after a delay on one thread, in due order."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Callable[[], None]]] = []
        self._cond = threading.Condition()
        self._counter = itertools.count()
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name="emulator-scheduler", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def call_later(self, delay: float, fn: Callable[[], None]) -> None:
        with self._cond:
            heapq.heappush(self._heap, (time.monotonic() + delay, next(self._counter), fn))
            self._cond.notify()

    def clear(self) -> None:
        with self._cond:
            self._heap.clear()

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._stopped and (not self._heap or self._heap[0][0] > time.monotonic()):
                    timeout = None if not self._heap else self._heap[0][0] - time.monotonic()
                    self._cond.wait(timeout)
                if self._stopped:
                    return
                _, _, fn = heapq.heappop(self._heap)
            try:
                fn()
            except Exception:
                log.exception("emulator.scheduler.callback_failed")


@dataclass
class _Job:
    method: str
    args: tuple[Any, ...]
    done: threading.Event = field(default_factory=threading.Event)


class NodeSideRunner:
    """Calls the node side from one thread, in submission order.

    Failures are logged and kept (``errors``); they never propagate to the API.
    """

    MAX_ERRORS = 200

    def __init__(self, node_side: NodeSide) -> None:
        self.node_side = node_side
        self._queue: queue.Queue[_Job | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="emulator-node-side", daemon=True)
        self.errors: list[dict[str, Any]] = []
        self.calls = 0
        self._lock = threading.Lock()

    def start(self) -> None:
        self._thread.start()

    def submit(self, method: str, args: tuple[Any, ...]) -> threading.Event:
        job = _Job(method, args)
        self._queue.put(job)
        return job.done

    def stop(self) -> None:
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join(timeout=60)

    def _run(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            try:
                getattr(self.node_side, job.method)(*job.args)
            except Exception as exc:
                log.exception("emulator.node_side.failed", method=job.method)
                with self._lock:
                    self.errors.append(
                        {
                            "method": job.method,
                            "args": [_describe(a) for a in job.args],
                            "error": f"{type(exc).__name__}: {exc}",
                            "time": time.time(),
                        }
                    )
                    del self.errors[: -self.MAX_ERRORS]
            finally:
                with self._lock:
                    self.calls += 1
                job.done.set()

    def status(self) -> dict[str, Any]:
        with self._lock:
            return {"kind": type(self.node_side).__name__, "calls": self.calls, "errors": list(self.errors)}


def _describe(arg: Any) -> Any:
    if isinstance(arg, str | int | float | type(None)):
        return arg
    eni_id = getattr(arg, "eni_id", None)
    if eni_id is not None:
        return {"eni_id": eni_id, "mac": getattr(arg, "mac", None)}
    return repr(arg)[:200]
