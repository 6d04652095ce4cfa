"""Run inside a test namespace (``ip netns exec NS python3 netprobe.py ...``).

``serve NAME TCP_PORT UDP_PORT``: answer every TCP connection with NAME, then echo each line back
prefixed with NAME; answer every UDP datagram with NAME (IPv4 and IPv6).

``tcp HOST PORT COUNT`` / ``udp HOST PORT COUNT``: COUNT fresh connections (datagrams from fresh
sockets); prints a JSON list, one entry each: the name that answered, or ``!ERRNAME MS`` with the
milliseconds until the failure.

``peer HOST PORT COUNT``: like ``tcp``, each entry ``NAME ADDRESS``: the client address the
server saw.

``hold HOST PORT``: one connection; prints the name; then for each line on stdin sends it and
prints the echo (``!ERR`` on a failure).
"""

from __future__ import annotations

import errno
import ipaddress
import json
import socket
import socketserver
import sys
import threading
import time


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def serve(name: str, tcp_port: int, udp_port: int) -> None:
    class Handler(socketserver.StreamRequestHandler):
        def handle(self) -> None:
            self.wfile.write(f"{name}\n".encode())
            for line in self.rfile:
                text = line.decode().strip()
                if text == "peer":  # who the connection seems to come from, after any NAT
                    text = ipaddress.ip_address(self.client_address[0]).ipv4_mapped or self.client_address[0]
                self.wfile.write(f"{name} {text}\n".encode())

    class TCP(socketserver.ThreadingTCPServer):
        address_family = socket.AF_INET6
        allow_reuse_address = True
        daemon_threads = True

        def server_bind(self) -> None:
            self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            super().server_bind()

    udp = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    udp.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    udp.bind(("::", udp_port))

    def answer_udp() -> None:
        while True:
            _, peer = udp.recvfrom(2048)
            udp.sendto(name.encode(), peer)

    threading.Thread(target=answer_udp, daemon=True).start()
    with TCP(("::", tcp_port), Handler) as server:
        print("ready", flush=True)
        server.serve_forever()


def _error(exc: OSError, start: float) -> str:
    code = errno.errorcode.get(exc.errno or 0, type(exc).__name__)
    return f"!{code} {(time.monotonic() - start) * 1000:.2f}"


def tcp(host: str, port: int) -> str:
    """Connects by address (no resolver in the timing); the time is connect's alone. The timeout
    lets one SYN retransmit (1 s) through: a fresh IPv6 neighbour can cost the first SYN."""
    with socket.socket(_family(host), socket.SOCK_STREAM) as s:
        s.settimeout(4)
        start = time.monotonic()
        try:
            s.connect((host, port))
            return s.makefile().readline().strip() or "!EMPTY 0"
        except OSError as exc:
            return _error(exc, start)


def peer(host: str, port: int) -> str:
    """``NAME ADDRESS``: the endpoint that answered and the client address it saw."""
    with socket.create_connection((host, port), timeout=4) as s:
        f = s.makefile("rw")
        f.readline()
        f.write("peer\n")
        f.flush()
        return f.readline().strip()


def udp(host: str, port: int) -> str:
    start = time.monotonic()
    with socket.socket(_family(host), socket.SOCK_DGRAM) as s:
        s.settimeout(1)
        try:
            s.sendto(b"?", (host, port))
            return s.recv(2048).decode()
        except OSError as exc:
            return _error(exc, start)


def hold(host: str, port: int) -> None:
    with socket.create_connection((host, port), timeout=5) as s:
        f = s.makefile("rw")
        print(f.readline().strip(), flush=True)
        for line in sys.stdin:
            try:
                f.write(line)
                f.flush()
                print(f.readline().strip() or "!EOF", flush=True)
            except OSError as exc:
                print(_error(exc, time.monotonic()), flush=True)


def main(argv: list[str]) -> None:
    mode = argv[0]
    if mode == "serve":
        serve(argv[1], int(argv[2]), int(argv[3]))
    elif mode == "hold":
        hold(argv[1], int(argv[2]))
    else:
        probe = {"tcp": tcp, "udp": udp, "peer": peer}[mode]
        print(json.dumps([probe(argv[1], int(argv[2])) for _ in range(int(argv[3]))]))


if __name__ == "__main__":
    main(sys.argv[1:])
