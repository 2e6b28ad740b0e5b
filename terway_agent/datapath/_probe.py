"""Real-packet probes from inside a network namespace (tests and diagnostics).

Private.  Sockets are bound to the namespace of the thread that creates them,
so each probe opens its socket inside :func:`terway_agent.datapath.netns.enter`
and then uses it from the calling thread.  No ``ping`` binary is needed: ICMP
echo goes through a raw socket (root).
"""

from __future__ import annotations

import os
import select
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from terway_agent.datapath import netns as _netns


class ProbeFailed(Exception):
    """The probe got no answer (or an ICMP error) in time."""


def socket_in(netns: str | None, family: int, kind: int, proto: int = 0) -> socket.socket:
    """A socket created inside ``netns`` (None: the calling thread's namespace)."""
    if netns is None:
        return socket.socket(family, kind, proto)
    with _netns.enter(netns):
        return socket.socket(family, kind, proto)


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    total = (total >> 16) + (total & 0xFFFF)
    total += total >> 16
    return ~total & 0xFFFF


def ping(
    netns: str | None, dst: str, *, src: str | None = None, timeout: float = 2.0, count: int = 1
) -> float:
    """Send ICMP echo requests to ``dst`` from inside ``netns``; return the best RTT in seconds.

    Succeeds when any of ``count`` requests is answered; raises
    :class:`ProbeFailed` with the reason otherwise (timeout or ICMP error).
    """
    v6 = ":" in dst
    family = socket.AF_INET6 if v6 else socket.AF_INET
    proto = socket.IPPROTO_ICMPV6 if v6 else socket.IPPROTO_ICMP
    sock = socket_in(netns, family, socket.SOCK_RAW, proto)
    ident = (os.getpid() ^ threading.get_native_id() ^ int(time.monotonic_ns())) & 0xFFFF
    best: float | None = None
    last_error = "no reply"
    try:
        if src is not None:
            sock.bind((src, 0))
        for seq in range(1, count + 1):
            payload = struct.pack("!d", time.monotonic()) + b"twdp-probe" * 4
            if v6:
                packet = struct.pack("!BBHHH", 128, 0, 0, ident, seq) + payload  # kernel fills the checksum
            else:
                header = struct.pack("!BBHHH", 8, 0, 0, ident, seq)
                packet = struct.pack("!BBHHH", 8, 0, _checksum(header + payload), ident, seq) + payload
            sent = time.monotonic()
            try:
                sock.sendto(packet, (dst, 0))
            except OSError as exc:
                last_error = f"send failed: {exc.strerror}"
                continue
            deadline = sent + timeout / count
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                ready, _, _ = select.select([sock], [], [], left)
                if not ready:
                    break
                data, addr = sock.recvfrom(65535)
                if not v6:
                    data = data[(data[0] & 0x0F) * 4 :]
                if len(data) < 8:
                    continue
                icmp_type, _code, _ck, rid, rseq = struct.unpack("!BBHHH", data[:8])
                echo_reply = 129 if v6 else 0
                if icmp_type == echo_reply and rid == ident and rseq == seq:
                    rtt = time.monotonic() - sent
                    best = rtt if best is None else min(best, rtt)
                    break
                if icmp_type in ((1, 3) if v6 else (3, 11)):
                    last_error = f"ICMP error type {icmp_type} from {addr[0]}"
    finally:
        sock.close()
    if best is None:
        raise ProbeFailed(f"ping {dst} from {netns or 'the agent namespace'}: {last_error}")
    return best


@contextmanager
def tcp_server(
    netns: str | None,
    ip: str,
    port: int,
    handle: Callable[[socket.socket, tuple[str, int]], None],
    *,
    name: str | None = None,
) -> Iterator[tuple[str, int]]:
    """Serve TCP on ``ip:port`` inside ``netns`` until the block ends, one connection at a time:
    ``handle(conn, peer)`` in a thread (``name``), its ``OSError`` ending only that connection.
    Yields the bound address."""
    family = socket.AF_INET6 if ":" in ip else socket.AF_INET
    srv = socket_in(netns, family, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((ip, port))
    srv.listen(16)
    srv.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, peer = srv.accept()
            except OSError:  # TimeoutError included: look at ``stop`` again
                continue
            with conn:
                try:
                    handle(conn, peer)
                except OSError:
                    pass

    t = threading.Thread(target=serve, name=name, daemon=True)
    t.start()
    try:
        yield srv.getsockname()[:2]
    finally:
        stop.set()
        t.join(5)
        srv.close()


@contextmanager
def tcp_echo_server(netns: str | None, ip: str, port: int = 0) -> Iterator[tuple[str, int]]:
    """Serve TCP echo on ``ip:port`` inside ``netns`` until the block ends; yields the bound address."""

    def echo(conn: socket.socket, _peer: tuple[str, int]) -> None:
        conn.settimeout(2.0)
        while data := conn.recv(65536):
            conn.sendall(data)

    with tcp_server(netns, ip, port, echo, name="twdp-echo") as address:
        yield address


def tcp_echo(netns: str | None, dst: str, port: int, *, src: str | None = None, timeout: float = 3.0) -> str:
    """Connect from ``netns`` to ``dst:port``, send a line and return the echoed text and the local address."""
    family = socket.AF_INET6 if ":" in dst else socket.AF_INET
    sock = socket_in(netns, family, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        if src is not None:
            sock.bind((src, 0))
        try:
            sock.connect((dst, port))
        except OSError as exc:
            raise ProbeFailed(f"tcp connect {dst}:{port} from {netns}: {exc}") from None
        msg = f"hello from {sock.getsockname()[0]}\n".encode()
        sock.sendall(msg)
        got = b""
        while len(got) < len(msg):
            chunk = sock.recv(65536)
            if not chunk:
                break
            got += chunk
        return got.decode()
    finally:
        sock.close()


def measure_throughput(
    src_netns: str | None, dst_netns: str | None, dst_ip: str, *, seconds: float = 2.0, warmup: float = 0.3
) -> float:
    """Bytes per second a TCP stream from ``src_netns`` delivers to ``dst_ip`` in ``dst_netns``.

    Measured at the receiver over ``seconds`` after a ``warmup`` (so a
    shaper's initial burst does not count).
    """
    family = socket.AF_INET6 if ":" in dst_ip else socket.AF_INET
    srv = socket_in(dst_netns, family, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((dst_ip, 0))
    srv.listen(1)
    port = srv.getsockname()[1]
    result: dict[str, float] = {}
    stop = threading.Event()

    def receive() -> None:
        conn, _ = srv.accept()
        with conn:
            conn.settimeout(5)
            start = time.monotonic()
            counted = 0
            t0: float | None = None
            while True:
                try:
                    data = conn.recv(1 << 16)
                except OSError:
                    break
                if not data:
                    break
                now = time.monotonic()
                if now - start >= warmup:
                    if t0 is None:
                        t0 = now
                    else:
                        counted += len(data)
                    if now - t0 >= seconds:
                        result["rate"] = counted / (now - t0)
                        break
        stop.set()

    rt = threading.Thread(target=receive, name="twdp-recv", daemon=True)
    rt.start()
    sender = socket_in(src_netns, family, socket.SOCK_STREAM)
    try:
        sender.settimeout(5)
        sender.connect((dst_ip, port))
        block = b"\0" * 65536
        deadline = time.monotonic() + warmup + seconds + 10
        while not stop.is_set() and time.monotonic() < deadline:
            try:
                sender.send(block)
            except OSError:
                break
    finally:
        sender.close()
        rt.join(10)
        srv.close()
    if "rate" not in result:
        raise ProbeFailed(f"throughput to {dst_ip}: the stream ended early")
    return result["rate"]
