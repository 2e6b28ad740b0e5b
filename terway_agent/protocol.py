"""The wire protocol between the ``terway`` CNI executable and the agent.

Standard library only, and only its cheapest parts: the CNI executable imports
this module on every pod ADD/DEL, and with an isolated interpreter most of its
cost is imports (``import json`` pulls in ``re`` and ``enum``: ~9 ms here;
``import socket`` another ~9 ms).  So this module talks JSON through the C
accelerator ``_json`` and sockets through ``_socket`` directly, falling back
to the ``json`` module where ``_json`` is missing.  benchmarks/bench_cni.py
measures the effect.

One request per connection over the agent's unix socket (mode 0600, root
only).  Both directions are a single JSON object followed by a newline::

    -> {"v": 1, "verb": "ADD", "env": {"CNI_CONTAINERID": ..., ...}, "config": {...}}
    <- {"v": 1, "ok": true, "result": {...}}
    <- {"v": 1, "ok": false, "error": {"code": 11, "msg": "...", "details": "..."}}

``verb`` is a CNI command (ADD, DEL, CHECK, STATUS, GC) or an agent query
starting with ``_`` (``_info``, ``_attachments``) used by ``terway-agent``
subcommands.  A request with an unknown ``v`` is answered with code 1 naming
the version the agent speaks.  See docs/architecture.md, "CNI protocol".
"""

from __future__ import annotations

import _socket

PROTOCOL_VERSION = 1
DEFAULT_SOCKET = "/var/run/eni/eni.socket"
MAX_MESSAGE = 8 * 1024 * 1024

CNI_VERBS = ("ADD", "DEL", "CHECK", "STATUS", "GC")


class ProtocolError(Exception):
    """The peer sent something that is not a protocol message."""


# ---------------------------------------------------------------------------
# JSON through the C accelerator
# ---------------------------------------------------------------------------

try:
    import _json

    class _ScanContext:
        strict = True
        object_hook = None
        object_pairs_hook = None
        parse_float = float
        parse_int = int
        memo: dict = {}

        @staticmethod
        def parse_constant(name: str) -> float:
            raise ValueError(f"{name} is not valid JSON")

    _scan_once = _json.make_scanner(_ScanContext())
    _encode = _json.make_encoder(
        None, None, _json.encode_basestring_ascii, None, ": ", ", ", False, False, False
    )
    _WS = " \t\n\r"

    def loads(text: str | bytes) -> object:
        """Parse one JSON document (like ``json.loads``; raises ValueError)."""
        if isinstance(text, (bytes, bytearray)):
            text = bytes(text).decode("utf-8")
        idx = 0
        n = len(text)
        while idx < n and text[idx] in _WS:
            idx += 1
        try:
            value, end = _scan_once(text, idx)
        except (StopIteration, ValueError, SystemError):
            # Malformed input is rare: let the json module produce its precise
            # message (the C scanner needs json.decoder to format errors).
            return _slow_loads(text)
        finally:
            _ScanContext.memo.clear()
        while end < n and text[end] in _WS:
            end += 1
        if end != n:
            return _slow_loads(text)
        return value

    def _slow_loads(text: str) -> object:
        import json

        return json.loads(text)

    def dumps(obj: object) -> str:
        """Serialise like ``json.dumps`` (ASCII, ", " / ": " separators)."""
        return "".join(_encode(obj, 0))

except ImportError:  # pragma: no cover - CPython always has _json
    import json as _fallback

    def loads(text: str | bytes) -> object:
        return _fallback.loads(text)

    def dumps(obj: object) -> str:
        return _fallback.dumps(obj)


def encode(message: dict) -> bytes:
    return dumps(message).encode() + b"\n"


def decode(data: bytes) -> dict:
    try:
        msg = loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ProtocolError(f"not JSON: {exc}") from None
    if not isinstance(msg, dict):
        raise ProtocolError("not a JSON object")
    return msg


def request(socket_path: str, message: dict, timeout: float) -> dict:
    """Send one request and return the decoded response (blocking).

    Raises ``OSError`` when the agent cannot be reached (``FileNotFoundError``,
    ``ConnectionRefusedError``) or times out (``TimeoutError``), and
    :class:`ProtocolError` on a malformed answer.
    """
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        sock.connect(socket_path)
        sock.sendall(encode(message))
        sock.shutdown(_socket.SHUT_WR)
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
