"""A multi-node test pod's one process (run inside the pod's namespace, ``podproc.py NAME``):

* a TCP server on port 80 (both families) that answers each connection with one line,
  ``NAME CLIENT-ADDRESS``, and closes it: a Service probe learns which pod answered, and a probe
  across nodes learns the source address the far pod saw (so masquerading would show);
* a prober: reads ``id address port timeout`` lines on stdin and answers ``id 1 NAME CLIENT`` (the
  server's line) or ``id 0`` (no connection, or no line, in time), probing concurrently.
"""

from __future__ import annotations

import contextlib
import socket
import sys
import threading

PORT = 80
lock = threading.Lock()


def serve(name: str) -> None:
    srv = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    srv.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("::", PORT))
    srv.listen(512)
    threading.Thread(target=_accept, args=(srv, name), daemon=True).start()


def _accept(srv: socket.socket, name: str) -> None:
    while True:
        conn, peer = srv.accept()
        client = peer[0].removeprefix("::ffff:")  # an IPv4 client on the dual-stack socket
        with contextlib.suppress(OSError):
            conn.sendall(f"{name} {client}\n".encode())
        conn.close()


def probe(address: str, port: int, timeout: float) -> str:
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect((address, port))
            line = sock.makefile().readline().strip()
        except OSError:
            return "0"
    return f"1 {line}" if line else "0"


def answer(line: str) -> None:
    ident, address, port, timeout = line.split()
    result = probe(address, int(port), float(timeout))
    with lock:
        sys.stdout.write(f"{ident} {result}\n")
        sys.stdout.flush()


def main() -> None:
    serve(sys.argv[1])
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    for line in sys.stdin:
        if line.strip():
            threading.Thread(target=answer, args=(line,), daemon=True).start()


if __name__ == "__main__":
    main()
