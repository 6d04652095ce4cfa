"""Run inside a client pod: ``synflood.py SRC HOST PORT SECONDS``.

Sends TCP SYNs from SRC to HOST:PORT through a raw socket, each from the next source port (1024 to
32767, then round again: below the ephemeral ports, so no SYN lands on a real connection's
conntrack entry and its socket's answer), as fast as it can for SECONDS. Every SYN is a new conntrack flow, so
every one meets the node's NAT chains: thousands of connection attempts a second, where a socket
client makes a few hundred. The answers (SYN-ACKs, which this host's stack resets) are not read.
Prints ``ready``, then the number of SYNs sent.
"""

from __future__ import annotations

import socket
import struct
import sys
import time

FIRST_PORT, LAST_PORT = 1024, 32767


def _fold(total: int) -> int:
    total = (total & 0xFFFF) + (total >> 16)
    return (total & 0xFFFF) + (total >> 16)


def syn(sport: int, dport: int, pseudo_sum: int) -> bytes:
    """A 20-byte TCP header with SYN set and its checksum (over the IPv4 pseudo header too)."""
    header = struct.pack("!HHIIBBHHH", sport, dport, sport * 7919, 0, 5 << 4, 0x02, 64240, 0, 0)
    checksum = ~_fold(pseudo_sum + sum(struct.unpack("!10H", header))) & 0xFFFF
    return header[:16] + struct.pack("!H", checksum) + header[18:]


def main(src: str, host: str, port: int, seconds: float) -> None:
    pseudo = socket.inet_aton(src) + socket.inet_aton(host) + struct.pack("!BBH", 0, socket.IPPROTO_TCP, 20)
    pseudo_sum = sum(struct.unpack("!6H", pseudo))
    sent, sport = 0, FIRST_PORT
    with socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_TCP) as s:
        print("ready", flush=True)
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            for _ in range(200):
                s.sendto(syn(sport, port, pseudo_sum), (host, 0))
                sport = sport + 1 if sport < LAST_PORT else FIRST_PORT
            sent += 200
    print(sent, flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4]))
