"""Threaded HTTP/1.1 listeners with Nagle disabled and connection tracking."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from terway_agent.log import get_logger

log = get_logger(__name__)


@dataclass
class Request:
    method: str
    path: str  # without the query string
    query: str
    headers: dict[str, list[str]]  # lower-case names
    body: bytes
    client_ip: str


@dataclass
class Response:
    status: int
    body: bytes = b""
    content_type: str = "application/json;charset=utf-8"
    headers: dict[str, str] = field(default_factory=dict)


class Drop(Exception):
    """Close the connection without answering."""


Dispatch = Callable[[Request], Response]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Without this every small response waits for the peer's delayed ACK (~40 ms).
    disable_nagle_algorithm = True
    timeout = 120  # idle keep-alive connections
    server: _Server

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length > 0 else b""
        path, _, query = self.path.partition("?")
        headers: dict[str, list[str]] = {}
        for name, value in self.headers.items():
            headers.setdefault(name.lower(), []).append(value)
        req = Request(self.command, path, query, headers, body, self.client_address[0])
        try:
            resp = self.server.dispatch(req)
        except Drop:
            self.close_connection = True
            return
        except Exception:  # the server must keep serving whatever a handler does
            log.exception("emulator.http.handler_failed", method=self.command, path=path)
            resp = Response(500, b'{"Code":"InternalError","Message":"emulator bug, see its log"}')
        self.send_response(resp.status)
        self.send_header("Content-Type", resp.content_type)
        self.send_header("Content-Length", str(len(resp.body)))
        for name, value in resp.headers.items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(resp.body)

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _serve

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        return None


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 256

    def __init__(self, addr: tuple[str, int], dispatch: Dispatch, name: str):
        self.dispatch = dispatch
        self.name = name
        self._conns: set[socket.socket] = set()
        self._conns_lock = threading.Lock()
        super().__init__(addr, _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._conns_lock:
            self._conns.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._conns_lock:
            self._conns.discard(request)
        super().shutdown_request(request)

    def close_connections(self) -> None:
        with self._conns_lock:
            conns = list(self._conns)
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class Listener:
    """One listening socket served by its own thread."""

    def __init__(self, host: str, port: int, dispatch: Dispatch, name: str):
        self.server = _Server((host, port), dispatch, name)
        self.name = name
        self._thread: threading.Thread | None = None

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.server.server_address[:2]
        return str(host), int(port)

    def start(self) -> None:
        self._thread = threading.Thread(
            target=self.server.serve_forever,
            kwargs={"poll_interval": 0.2},
            name=f"emulator-{self.name}",
            daemon=True,
        )
        self._thread.start()

    def stop(self) -> None:
        if self._thread is not None:
            self.server.shutdown()
            self._thread.join(timeout=5)
            self._thread = None
        self.server.close_connections()
        self.server.server_close()
