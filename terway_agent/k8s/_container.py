"""Running inside an unprivileged container: make ``/proc/sys`` writable.

Container runtimes mount ``/proc/sys`` read-only in containers that are not
privileged, but the modes write sysctls (``net.ipv4.conf.*.rp_filter``,
``forwarding``, ``accept_ra`` in pod namespaces).  With ``CAP_SYS_ADMIN`` (which
the agent holds anyway for setns) the container may remount its own view of
``/proc/sys`` read-write; this changes nothing outside the container's mount
namespace.  On a host, or in a privileged container, it is already writable
and nothing happens.
"""

from __future__ import annotations

import ctypes
import errno
import os

from terway_agent.errors import PermanentError
from terway_agent.log import get_logger

log = get_logger(__name__)

MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_REMOUNT = 0x20
MS_BIND = 0x1000

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = (ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_void_p)


def ensure_proc_sys_writable(path: str = "/proc/sys") -> bool:
    """Remount ``path`` read-write if it is read-only; returns True when it remounted.

    Raises :class:`PermanentError` naming what to grant when the remount is refused.
    """
    st = os.statvfs(path)
    if not st.f_flag & os.ST_RDONLY:
        return False
    keep = 0
    for flag, bit in ((os.ST_NOSUID, MS_NOSUID), (os.ST_NODEV, MS_NODEV), (os.ST_NOEXEC, MS_NOEXEC)):
        if st.f_flag & flag:
            keep |= bit
    if _libc.mount(None, path.encode(), None, MS_REMOUNT | MS_BIND | keep, None) != 0:
        err = ctypes.get_errno()
        raise PermanentError(
            f"{path} is read-only in this container and could not be remounted read-write "
            f"({errno.errorcode.get(err, err)}: {os.strerror(err)}); the agent writes sysctls "
            "(net.ipv4.conf.*.rp_filter, forwarding, accept_ra). Give the container CAP_SYS_ADMIN and an "
            "AppArmor profile that allows mount (the chart's agent.apparmorUnconfined), or run it privileged "
            "(agent.privileged=true)",
            path=path,
            errno=err,
        )
    log.info("k8s.container.proc_sys_remounted", path=path)
    return True
