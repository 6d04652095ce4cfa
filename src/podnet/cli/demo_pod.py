"""The one process ``podnet demo`` runs in each pod (``python -m podnet.cli.demo_pod PORT [LABEL]``).

It serves TCP on PORT (accept, send LABEL and a newline, close: an established connection is all
a policy probe needs, and the label tells a Service probe which pod answered) and answers probe
requests from stdin, one per line, ``ID ADDRESS PORT TIMEOUT``, with ``ID 1 LABEL`` (connected;
LABEL is what the server sent, if anything) or ``ID 0`` (refused or timed out) on stdout, each
probe in its own thread so a whole matrix row takes one timeout, not one per blocked cell. It
prints ``ready`` once its server is listening, so no probe can arrive before it. It imports
nothing of podnet: it starts quickly.
"""

from __future__ import annotations

import contextlib
import socket
import sys
import threading

_lock = threading.Lock()


def _serve(server: socket.socket, label: bytes) -> None:
    while True:
        conn, _ = server.accept()
        with contextlib.suppress(OSError):  # the client may be gone already: a policy probe reads nothing
            conn.sendall(label)
        conn.close()


def probe(address: str, port: int, timeout: float) -> str | None:
    """The server's label ("" if it sent none), or None when no connection was made."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect((address, port))
        except OSError:  # refused, unreachable or dropped (a timeout is an OSError too)
            return None
        try:
            return sock.makefile().readline().strip()
        except OSError:
            return ""


def _answer(line: str) -> None:
    ident, address, port, timeout = line.split()
    label = probe(address, int(port), float(timeout))
    with _lock:
        sys.stdout.write(f"{ident} 0\n" if label is None else f"{ident} 1 {label}".rstrip() + "\n")
        sys.stdout.flush()


def main(argv: list[str]) -> None:
    server = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    server.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)  # IPv4 too
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("::", int(argv[0])))
    server.listen(128)
    label = (argv[1] if len(argv) > 1 else "") + "\n"
    threading.Thread(target=_serve, args=(server, label.encode()), daemon=True).start()
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    for line in sys.stdin:  # ends when the demo closes our stdin (or is gone)
        if line.strip():
            threading.Thread(target=_answer, args=(line,), daemon=True).start()


if __name__ == "__main__":
    main(sys.argv[1:])
