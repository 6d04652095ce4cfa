"""Ping many addresses at once from one process: ``icmp_sweep.py TIMEOUT ADDR...``.

Run inside a pod namespace (needs root for raw sockets). Sends an ICMP echo request to every
address, resends to the silent ones every 200 ms, and prints a JSON list of the addresses that did
not answer within TIMEOUT seconds (exit 0 when all answered, 1 otherwise). One process per pod
instead of one ``ping`` per pair keeps an all-pairs check over 50 pods cheap.
"""

from __future__ import annotations

import ipaddress
import json
import os
import select
import socket
import struct
import sys
import time

ECHO_REQUEST = {4: 8, 6: 128}
ECHO_REPLY = {4: 0, 6: 129}


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    total = (total >> 16) + (total & 0xFFFF)
    total += total >> 16
    return ~total & 0xFFFF


def _packet(fam: int, ident: int, seq: int) -> bytes:
    payload = b"podnet-sweep"
    header = struct.pack("!BBHHH", ECHO_REQUEST[fam], 0, 0, ident, seq)
    if fam == 6:
        return header + payload  # the kernel fills in the ICMPv6 checksum
    csum = _checksum(header + payload)
    return struct.pack("!BBHHH", ECHO_REQUEST[fam], 0, csum, ident, seq) + payload


def sweep(targets: list[str], timeout: float) -> list[str]:
    ident = os.getpid() & 0xFFFF
    socks = {4: socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP),
             6: socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)}
    pending = {str(ipaddress.ip_address(t)): i for i, t in enumerate(targets)}
    deadline = time.monotonic() + timeout
    next_send = 0.0
    while pending and time.monotonic() < deadline:
        now = time.monotonic()
        if now >= next_send:
            for addr, seq in list(pending.items()):
                try:
                    fam = ipaddress.ip_address(addr).version
                    socks[fam].sendto(_packet(fam, ident, seq), (addr, 0))
                except OSError:
                    pass  # unreachable right now: try again on the next round
            next_send = now + 0.2
        ready, _, _ = select.select(list(socks.values()), [], [], max(0.0, min(next_send, deadline)
                                                                     - time.monotonic()))
        for sock in ready:
            data, src = sock.recvfrom(2048)
            fam = 4 if sock.family == socket.AF_INET else 6
            icmp = data[(data[0] & 0x0F) * 4:] if fam == 4 else data
            if len(icmp) < 8:
                continue
            kind, _code, _csum, rid, _seq = struct.unpack("!BBHHH", icmp[:8])
            if kind == ECHO_REPLY[fam] and rid == ident:
                pending.pop(str(ipaddress.ip_address(src[0].split("%")[0])), None)
    return sorted(pending)


def main() -> None:
    timeout = float(sys.argv[1])
    missing = sweep(sys.argv[2:], timeout)
    print(json.dumps(missing))
    sys.exit(1 if missing else 0)


if __name__ == "__main__":
    main()
