"""Network namespaces without forking: setns(2) in the calling thread.

pyroute2's ``NetNS``/``IPRoute(netns=...)`` fork a helper process per namespace
(~11 ms each).  Entering the namespace with setns(2) in a worker thread and
opening the netlink socket there binds the socket to that namespace at no
extra cost; the other threads of the process stay where they were.

Every function here changes only the *calling thread's* namespace and always
switches back, so it is safe to call from ``trio.to_thread.run_sync`` workers.
"""

from __future__ import annotations

import ctypes
import errno
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from terway_agent.errors import DatapathError, NotFound

CLONE_NEWNET = 0x40000000
NETNS_RUN_DIR = "/run/netns"

_libc = ctypes.CDLL(None, use_errno=True)
_libc.setns.argtypes = (ctypes.c_int, ctypes.c_int)
_libc.unshare.argtypes = (ctypes.c_int,)


def netns_path(name_or_path: str) -> str:
    """``/run/netns/<name>`` for a bare name, the path itself otherwise."""
    if "/" in name_or_path:
        return name_or_path
    return os.path.join(NETNS_RUN_DIR, name_or_path)


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def current_netns_inode() -> int:
    """The inode of the calling thread's network namespace."""
    return os.stat(f"/proc/self/task/{threading.get_native_id()}/ns/net").st_ino


@contextmanager
def enter(path: str) -> Iterator[None]:
    """Run the body with the calling thread inside the network namespace at ``path``.

    Raises :class:`NotFound` if the namespace does not exist (pyroute2's
    ``NetNS(name)`` would silently create it; we never do).  The thread is
    always switched back, also when the body raises.
    """
    path = netns_path(path)
    try:
        target = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise NotFound(f"network namespace {path} does not exist", netns=path) from None
    try:
        own = os.open(f"/proc/self/task/{threading.get_native_id()}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        try:
            try:
                _setns(target)
            except OSError as exc:
                raise DatapathError(
                    f"cannot enter network namespace {path}: {exc.strerror}", netns=path, errno=exc.errno
                ) from exc
            try:
                yield
            finally:
                try:
                    _setns(own)
                except OSError as exc:  # pragma: no cover - would leave the thread unusable
                    # A thread stuck in the wrong namespace would silently corrupt
                    # later work: fail loudly and take the process down.
                    os.write(2, f"fatal: cannot return to own netns: {exc}\n".encode())
                    os._exit(70)
        finally:
            os.close(own)
    finally:
        os.close(target)


def exists(name_or_path: str) -> bool:
    return os.path.exists(netns_path(name_or_path))


def is_netns(path: str) -> bool:
    """True when ``path`` is a network namespace handle (a bind mount or /proc/<pid>/ns/net)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        # NS_GET_NSTYPE ioctl would be exact; setns with CLONE_NEWNET on a
        # non-netns fd fails with EINVAL, which we can test without moving:
        # compare the st_dev of nsfs instead.
        st = os.fstat(fd)
        return st.st_dev == os.stat("/proc/self/ns/net").st_dev
    finally:
        os.close(fd)


def create(name: str) -> str:
    """Create a named network namespace like ``ip netns add`` (bind mount under /run/netns).

    Idempotent: an existing namespace is left alone.  Returns its path.
    """
    path = netns_path(name)
    if os.path.exists(path) and is_netns(path):
        return path
    os.makedirs(NETNS_RUN_DIR, exist_ok=True)
    # Make /run/netns a shared mount point as iproute2 does, so mounts propagate.
    result: list[BaseException] = []

    def worker() -> None:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CREAT | os.O_EXCL, 0o444)
            os.close(fd)
        except FileExistsError:
            pass
        try:
            if _libc.unshare(CLONE_NEWNET) != 0:
                err = ctypes.get_errno()
                raise OSError(err, os.strerror(err))
            src = f"/proc/self/task/{threading.get_native_id()}/ns/net".encode()
            if _libc.mount(src, path.encode(), b"none", 4096, None) != 0:  # MS_BIND
                err = ctypes.get_errno()
                raise OSError(err, os.strerror(err))
        except BaseException as exc:  # reported to the caller below
            result.append(exc)

    # unshare() moves the calling thread for good: do it in a throwaway thread.
    t = threading.Thread(target=worker, name=f"netns-create-{name}")
    t.start()
    t.join()
    if result:
        try:
            os.unlink(path)
        except OSError:
            pass
        exc = result[0]
        raise DatapathError(f"cannot create network namespace {name}: {exc}", netns=path) from exc
    return path


def remove(name: str) -> None:
    """Unmount and remove a named namespace; absent is success."""
    path = netns_path(name)
    if not os.path.exists(path):
        return
    if _libc.umount2(path.encode(), 2) != 0:  # MNT_DETACH
        err = ctypes.get_errno()
        if err not in (errno.EINVAL, errno.ENOENT):
            raise DatapathError(f"cannot unmount {path}: {os.strerror(err)}", netns=path, errno=err)
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
