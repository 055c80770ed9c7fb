"""Measure a link between two namespaces: ICMP ping, TCP round trip, TCP bulk rate.

Why our own probe: this host has no ping or iperf. Why three numbers: ping is the link's
delay as a network tool sees it; a TCP round trip of small messages (TCP_NODELAY) is what
one round of gloo's messages waits on; the bulk rate is what a large share can use.

``python netns_probe.py serve --port P`` (in one namespace) answers ``rtt`` and ``bulk``
(run in another); ``icmp`` needs no server. Each client prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import struct
import sys
import threading
import time

ECHO, BULK = b"E", b"B"
MESSAGE = 64


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    total = (total >> 16) + (total & 0xFFFF)
    total += total >> 16
    return ~total & 0xFFFF


def icmp_rtts(host: str, count: int, interval_s: float = 0.05) -> list[float]:
    """Round trips in seconds of ``count`` ICMP echo requests (raw socket: root)."""
    ident = os.getpid() & 0xFFFF
    rtts = []
    with socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP) as sock:
        sock.settimeout(2.0)
        for seq in range(count):
            body = struct.pack("!d", time.perf_counter()) + bytes(48)
            header = struct.pack("!BBHHH", 8, 0, 0, ident, seq)
            packet = struct.pack("!BBHHH", 8, 0, _checksum(header + body), ident, seq) + body
            sent = time.perf_counter()
            sock.sendto(packet, (host, 0))
            while True:
                reply, _ = sock.recvfrom(2048)
                icmp = reply[(reply[0] & 0x0F) * 4:]
                kind, _, _, rid, rseq = struct.unpack("!BBHHH", icmp[:8])
                if kind == 0 and rid == ident and rseq == seq:
                    rtts.append(time.perf_counter() - sent)
                    break
            time.sleep(interval_s)
    return rtts


def tcp_rtts(host: str, port: int, count: int) -> list[float]:
    """Round trips of ``count`` 64-byte messages echoed over one TCP connection."""
    with socket.create_connection((host, port), timeout=10) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.sendall(ECHO)
        message, rtts = bytes(MESSAGE), []
        for _ in range(count):
            start = time.perf_counter()
            sock.sendall(message)
            _read_exactly(sock, MESSAGE)
            rtts.append(time.perf_counter() - start)
    return rtts


def bulk_bps(host: str, port: int, seconds: float) -> float:
    """Bits per second that the receiver counted while this side sent for ``seconds``."""
    chunk = bytes(1 << 20)
    with socket.create_connection((host, port), timeout=30) as sock:
        sock.sendall(BULK)
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            sock.sendall(chunk)
        sock.shutdown(socket.SHUT_WR)
        received, elapsed = struct.unpack("!Qd", _read_exactly(sock, 16))
    return received * 8 / elapsed


def _read_exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        part = sock.recv(size - len(data))
        if not part:
            raise ConnectionError("the probe's peer closed the connection")
        data += part
    return data


def _answer(conn: socket.socket) -> None:
    with conn:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        mode = conn.recv(1)
        if mode == ECHO:
            while True:
                try:
                    conn.sendall(_read_exactly(conn, MESSAGE))
                except ConnectionError:
                    return
        elif mode == BULK:
            received, first = 0, None
            while part := conn.recv(1 << 20):
                first = first or time.perf_counter()
                received += len(part)
            elapsed = time.perf_counter() - first if first else 0.0
            conn.sendall(struct.pack("!Qd", received, elapsed))


def serve(port: int) -> None:
    """Answer probes until killed."""
    with socket.create_server(("0.0.0.0", port), reuse_port=True) as server:
        print("ready", flush=True)
        while True:
            conn, _ = server.accept()
            threading.Thread(target=_answer, args=(conn,), daemon=True).start()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("serve").add_argument("--port", type=int, required=True)
    for name in ("icmp", "rtt", "bulk"):
        p = sub.add_parser(name)
        p.add_argument("host")
        p.add_argument("--port", type=int, default=0)
        p.add_argument("--count", type=int, default=20)
        p.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args(argv)
    if args.command == "serve":
        serve(args.port)
        return 0
    if args.command == "bulk":
        print(json.dumps({"bulk_bps": bulk_bps(args.host, args.port, args.seconds)}))
        return 0
    rtts = (icmp_rtts(args.host, args.count) if args.command == "icmp"
            else tcp_rtts(args.host, args.port, args.count))
    print(json.dumps({"median_s": statistics.median(rtts), "min_s": min(rtts),
                      "max_s": max(rtts), "count": len(rtts)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
