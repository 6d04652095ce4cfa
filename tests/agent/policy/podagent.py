"""A test pod's one process (run inside the pod's namespace): servers on TCP and UDP 80 and 81
(both families), and a prober that reads ``id address port proto timeout`` lines on stdin and
answers ``id 1`` (reached) or ``id 0`` (blocked) on stdout, probing concurrently.

A TCP probe is reached when the connection is established; a UDP probe when the server's echo
comes back (a blocked datagram or echo is simply dropped, so the probe times out).
"""

from __future__ import annotations

import socket
import sys
import threading

PORTS = (80, 81)
lock = threading.Lock()


def listen(kind: int, port: int) -> socket.socket:
    """Bound before ``ready`` is printed, so no probe can beat its server."""
    srv = socket.socket(socket.AF_INET6, kind)
    srv.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("::", port))
    if kind == socket.SOCK_STREAM:
        srv.listen(512)
    return srv


def serve_tcp(srv: socket.socket) -> None:
    while True:
        conn, _ = srv.accept()
        conn.close()


def serve_udp(srv: socket.socket) -> None:
    while True:
        data, peer = srv.recvfrom(2048)
        srv.sendto(data, peer)


def probe(address: str, port: int, proto: str, timeout: float) -> bool:
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
    with socket.socket(family, kind) as sock:
        sock.settimeout(timeout)
        try:
            if kind == socket.SOCK_STREAM:
                sock.connect((address, port))
                return True
            sock.sendto(b"probe", (address, port))
            return sock.recvfrom(64)[0] == b"probe"
        except OSError:
            return False


def answer(line: str) -> None:
    ident, address, port, proto, timeout = line.split()
    result = probe(address, int(port), proto, float(timeout))
    with lock:
        sys.stdout.write(f"{ident} {int(result)}\n")
        sys.stdout.flush()


def main() -> None:
    for port in PORTS:
        tcp, udp = listen(socket.SOCK_STREAM, port), listen(socket.SOCK_DGRAM, port)
        threading.Thread(target=serve_tcp, args=(tcp,), daemon=True).start()
        threading.Thread(target=serve_udp, args=(udp,), daemon=True).start()
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    for line in sys.stdin:
        if line.strip():
            threading.Thread(target=answer, args=(line,), daemon=True).start()


if __name__ == "__main__":
    main()
