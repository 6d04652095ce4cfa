"""A stand-in for systemd-udevd's ``MACAddressPolicy=persistent``, for the seed-failure-3 tests.

``udev_standin.py LOGFILE [INTERVAL_SECONDS]`` — run it inside the node namespace with
``ip netns exec`` (which mounts that namespace's own /sys). It watches the namespace's links (woken
at once by RTM_NEWLINK notifications, and polling every INTERVAL, default 5 ms, as a fallback) and,
exactly like udevd's persistent policy, rewrites the MAC of every veth whose
``/sys/class/net/X/addr_assign_type`` is 1 (NET_ADDR_RANDOM: chosen by the kernel) to a MAC derived
from the interface name. A MAC set explicitly (type 3, NET_ADDR_SET) is left alone.

LOGFILE gets one JSON object per line: ``{"event": "ready"}`` once watching, ``{"event": "seen",
"ifname", "index", "type", "mac"}`` the first time a veth is seen, ``{"event": "rewrite", "ifname",
"index", "old", "new"}`` per rewrite, and ``{"event": "summary", "seen", "rewrites"}`` on SIGTERM.
"""

from __future__ import annotations

import hashlib
import json
import select
import signal
import socket
import sys
import time
from typing import Any, TextIO

from podnet.cni.errors import CNIError
from podnet.kernel.netlink import Netlink

RTMGRP_LINK = 1
NET_ADDR_RANDOM = 1


def persistent_mac(ifname: str) -> str:
    """udev derives the MAC from the interface name (and the machine ID): stable, locally
    administered, unicast."""
    raw = bytearray(hashlib.sha256(b"podnet-udev-standin\0" + ifname.encode()).digest()[:6])
    raw[0] = (raw[0] & 0xFC) | 0x02
    return raw.hex(":")


def assign_type(ifname: str) -> int | None:
    try:
        with open(f"/sys/class/net/{ifname}/addr_assign_type") as f:
            return int(f.read())
    except (OSError, ValueError):
        return None  # gone (or renamed) since the dump


class Watcher:
    def __init__(self, log: TextIO) -> None:
        self.log = log
        self.nl = Netlink()
        self.seen: set[int] = set()
        self.rewrites = 0

    def emit(self, **event: Any) -> None:
        self.log.write(json.dumps({**event, "t": time.time()}) + "\n")
        self.log.flush()

    def scan(self) -> None:
        try:
            links = list(self.nl.links())
        except CNIError:
            return  # an interrupted dump: the next wake-up scans again
        for link in links:
            if link.kind != "veth":
                continue
            kind = assign_type(link.name)
            if link.index not in self.seen:
                self.seen.add(link.index)
                self.emit(event="seen", ifname=link.name, index=link.index, type=kind, mac=link.mac)
            if kind != NET_ADDR_RANDOM:
                continue
            new = persistent_mac(link.name)
            try:
                self.nl.set_mac(link.index, new)
            except CNIError:
                continue  # deleted meanwhile
            self.rewrites += 1
            self.emit(event="rewrite", ifname=link.name, index=link.index, old=link.mac, new=new)

    def summary(self) -> None:
        self.emit(event="summary", seen=len(self.seen), rewrites=self.rewrites)


def main() -> None:
    log = open(sys.argv[1], "a")  # noqa: SIM115 - lives as long as the process
    interval = float(sys.argv[2]) if len(sys.argv) > 2 else 0.005
    watcher = Watcher(log)

    def stop(_signum: int, _frame: object) -> None:
        watcher.summary()
        sys.exit(0)

    signal.signal(signal.SIGTERM, stop)
    events = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
    events.bind((0, RTMGRP_LINK))
    events.setblocking(False)
    watcher.scan()
    watcher.emit(event="ready")
    while True:
        ready, _, _ = select.select([events], [], [], interval)
        if ready:
            try:
                while events.recv(65536):
                    pass
            except (BlockingIOError, OSError):
                pass  # drained (or overrun: the scan below sees the current state anyway)
        watcher.scan()


if __name__ == "__main__":
    main()
