"""Run inside a client pod.

``trafficloop.py HOST PORT``: Opens a fresh TCP connection to
HOST:PORT every few milliseconds and reads the answering server's name, until stdin closes; then
prints one JSON object: ``ok`` (connections answered), ``failed`` and the first failures (time since
start in seconds and the error), so a test sees whether traffic kept working throughout.

``trafficloop.py --udp HOST PORT``: one UDP socket on a fixed source port (one conntrack flow),
a datagram every 50 ms; prints ``SECONDS NAME`` for each answer, until killed.
"""

from __future__ import annotations

import json
import sys
import threading
import time


def main(host: str, port: int) -> None:
    import socket

    stop = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
    start = time.monotonic()
    ok, failures = 0, []
    print("ready", flush=True)
    while not stop.is_set():
        try:
            with socket.create_connection((host, port), timeout=1.0) as s:
                if not s.makefile().readline().strip():
                    raise OSError("no answer")
            ok += 1
        except OSError as exc:
            failures.append((round(time.monotonic() - start, 3), f"{type(exc).__name__}: {exc}"))
        time.sleep(0.005)
    print(json.dumps({"ok": ok, "failed": len(failures), "first": failures[:10]}), flush=True)


def udp(host: str, port: int) -> None:
    import socket

    start = time.monotonic()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("0.0.0.0", 40053))
        s.settimeout(0.05)
        while True:
            s.sendto(b"?", (host, port))
            try:
                name = s.recv(2048).decode()
                print(f"{time.monotonic() - start:.3f} {name}", flush=True)
            except OSError:
                pass
            time.sleep(0.05)


if __name__ == "__main__":
    if sys.argv[1] == "--udp":
        udp(sys.argv[2], int(sys.argv[3]))
    else:
        main(sys.argv[1], int(sys.argv[2]))
