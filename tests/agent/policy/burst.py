"""A continuous TCP probe (run inside a pod's namespace): a connect attempt to ADDRESS PORT every
~20 ms until stdin closes, then one line ``tries reached first_reached_after_seconds`` (-1: never).

Each attempt is a new socket with a short timeout: a SYN that got through is answered within the
node in well under that, so an attempt that times out was dropped (or had nobody to reach).
"""

from __future__ import annotations

import select
import socket
import sys
import time

PERIOD = 0.02


def attempt(address: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.settimeout(PERIOD)
        try:
            sock.connect((address, port))
            return True
        except OSError:
            return False


def main() -> None:
    address, port = sys.argv[1], int(sys.argv[2])
    tries = reached = 0
    first = -1.0
    start = time.monotonic()
    sys.stdout.write("started\n")
    sys.stdout.flush()
    while not select.select([sys.stdin], [], [], 0)[0]:
        began = time.monotonic()
        tries += 1
        if attempt(address, port):
            reached += 1
            first = began - start if first < 0 else first
        time.sleep(max(0.0, PERIOD - (time.monotonic() - began)))
    sys.stdout.write(f"{tries} {reached} {first:.3f}\n")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
