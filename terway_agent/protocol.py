"""The wire protocol between the ``terway`` CNI executable and the agent.

Standard library only: the CNI executable imports this module and nothing
heavy (its start-up time is part of every pod's ADD).

One request per connection over the agent's unix socket (mode 0600, root
only).  Both directions are a single JSON object followed by a newline::

    -> {"v": 1, "verb": "ADD", "env": {"CNI_CONTAINERID": ..., ...}, "config": {...}}
    <- {"v": 1, "ok": true, "result": {...}}
    <- {"v": 1, "ok": false, "error": {"code": 11, "msg": "...", "details": "..."}}

``verb`` is a CNI command (ADD, DEL, CHECK, STATUS, GC) or an agent query
starting with ``_`` (``_info``, ``_pool``) used by ``terway-agent`` subcommands.
A request with an unknown ``v`` is answered with code 1 naming the versions
the agent speaks.  See docs/architecture.md, "CNI protocol".
"""

from __future__ import annotations

import json
import socket
from typing import Any

PROTOCOL_VERSION = 1
DEFAULT_SOCKET = "/var/run/eni/eni.socket"
MAX_MESSAGE = 8 * 1024 * 1024

CNI_VERBS = ("ADD", "DEL", "CHECK", "STATUS", "GC")


class ProtocolError(Exception):
    """The peer sent something that is not a protocol message."""


def encode(message: dict[str, Any]) -> bytes:
    return json.dumps(message, separators=(",", ":")).encode() + b"\n"


def decode(data: bytes) -> dict[str, Any]:
    try:
        msg = json.loads(data)
    except ValueError as exc:
        raise ProtocolError(f"not JSON: {exc}") from None
    if not isinstance(msg, dict):
        raise ProtocolError("not a JSON object")
    return msg


def request(socket_path: str, message: dict[str, Any], timeout: float) -> dict[str, Any]:
    """Send one request and return the decoded response (blocking).

    Raises ``OSError`` when the agent cannot be reached (``FileNotFoundError``,
    ``ConnectionRefusedError``) or times out (``TimeoutError``), and
    :class:`ProtocolError` on a malformed answer.
    """
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        sock.connect(socket_path)
        sock.sendall(encode(message))
        sock.shutdown(socket.SHUT_WR)
        chunks = []
        size = 0
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
            if size > MAX_MESSAGE:
                raise ProtocolError("answer too large")
    finally:
        sock.close()
    data = b"".join(chunks)
    if not data:
        raise ProtocolError("the agent closed the connection without an answer")
    return decode(data)
