"""The unix-socket server (CNI protocol) and the debug HTTP endpoint.

Both are trio service functions: they take ``task_status`` and call
``task_status.started()`` only once they accept connections.

Resource handling: the listener is closed when the service is cancelled;
each connection is handled in its own task of the handler nursery the caller
passes, so in-flight requests can be drained separately from accepting.
Error handling: a broken connection is logged and dropped; it never stops the
server.  Malformed messages are answered with a protocol error.
"""

from __future__ import annotations

import errno
import os
import socket as stdsocket
from collections.abc import Awaitable, Callable
from typing import Any

import trio
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from terway_agent import protocol
from terway_agent.config import _host_port
from terway_agent.errors import PermanentError
from terway_agent.log import get_logger

log = get_logger(__name__)

Handler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]


async def open_unix_listener(path: str) -> trio.SocketListener:
    """Listen on ``path`` (mode 0600).  The caller holds the agent lock, so an
    existing socket file is stale and replaced."""
    directory = os.path.dirname(path) or "."
    os.makedirs(directory, mode=0o755, exist_ok=True)
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    sock = trio.socket.socket(stdsocket.AF_UNIX, stdsocket.SOCK_STREAM)
    old_umask = os.umask(0o177)
    try:
        await sock.bind(path)
    finally:
        os.umask(old_umask)
    os.chmod(path, 0o600)
    sock.listen(512)
    return trio.SocketListener(sock)


async def _handle_connection(stream: trio.SocketStream, handler: Handler) -> None:
    async with stream:
        buf = bytearray()
        try:
            with trio.move_on_after(30) as scope:
                while b"\n" not in buf:
                    chunk = await stream.receive_some(65536)
                    if not chunk:
                        break
                    buf += chunk
                    if len(buf) > protocol.MAX_MESSAGE:
                        break
            if scope.cancelled_caught:
                log.warning("cni.socket.read_timeout")
                return
            try:
                msg = protocol.decode(bytes(buf))
            except protocol.ProtocolError as exc:
                answer = {"v": protocol.PROTOCOL_VERSION, "ok": False,
                          "error": {"code": 6, "msg": f"malformed request: {exc}"}}
            else:
                answer = await handler(msg)
            await stream.send_all(protocol.encode(answer))
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            log.warning("cni.socket.peer_gone", error=repr(exc))


async def serve_unix(
    listener: trio.SocketListener,
    handler: Handler,
    handler_nursery: trio.Nursery,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Accept connections until cancelled; each is served in ``handler_nursery``."""
    async with listener:
        task_status.started()
        while True:
            try:
                stream = await listener.accept()
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS):
                    log.error("cni.socket.accept_failed", error=repr(exc))
                    await trio.sleep(0.1)
                    continue
                raise
            handler_nursery.start_soon(_handle_connection, stream, handler)


# ---------------------------------------------------------------------------
# debug endpoint
# ---------------------------------------------------------------------------


async def open_debug_listener(address: str) -> trio.SocketListener:
    host, port = _host_port("debug_listen", address)
    try:
        listeners = await trio.open_tcp_listeners(port, host=host or "127.0.0.1")
    except OSError as exc:
        raise PermanentError(f"cannot listen on debug address {address}: {exc.strerror}", address=address) from exc
    return listeners[0]


async def serve_debug(
    listener: trio.SocketListener,
    ready: Callable[[], Awaitable[tuple[bool, str]]],
    extra: dict[str, Callable[[], Awaitable[tuple[int, str, bytes]]]] | None = None,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """A tiny HTTP/1.0 server: ``/metrics``, ``/healthz``, ``/readyz`` and ``extra`` paths."""
    routes = dict(extra or {})

    async def handle(stream: trio.SocketStream) -> None:
        async with stream:
            try:
                with trio.move_on_after(10):
                    data = b""
                    while b"\r\n\r\n" not in data and len(data) < 16384:
                        chunk = await stream.receive_some(4096)
                        if not chunk:
                            break
                        data += chunk
                    line = data.split(b"\r\n", 1)[0].decode("latin-1")
                    parts = line.split()
                    path = parts[1].split("?", 1)[0] if len(parts) >= 2 else "/"
                    if path == "/metrics":
                        status, ctype, body = 200, CONTENT_TYPE_LATEST, generate_latest()
                    elif path == "/healthz":
                        status, ctype, body = 200, "text/plain", b"ok\n"
                    elif path == "/readyz":
                        ok, why = await ready()
                        status, ctype, body = (200 if ok else 503), "text/plain", (why + "\n").encode()
                    elif path in routes:
                        status, ctype, body = await routes[path]()
                    else:
                        status, ctype, body = 404, "text/plain", b"not found\n"
                    head = (
                        f"HTTP/1.0 {status} {'OK' if status == 200 else 'Error'}\r\n"
                        f"Content-Type: {ctype}\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
                    )
                    await stream.send_all(head.encode() + body)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass

    async with listener:
        task_status.started()
        async with trio.open_nursery() as nursery:
            while True:
                stream = await listener.accept()
                nursery.start_soon(handle, stream)


def listener_address(listener: trio.SocketListener) -> str:
    host, port = listener.socket.getsockname()[:2]
    return f"{host}:{port}"
