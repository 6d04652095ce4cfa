"""Churn a namespace's tables so that the kernel flags concurrent dumps NLM_F_DUMP_INTR.

Run *inside* the namespace (``ip netns exec NS python churn.py addr|veth SECONDS``).
Standalone on purpose: raw netlink and struct only, no podnet and no pyroute2, so the
writer does not depend on the code under test. Ends by itself after SECONDS; tests
also kill it by PID.
"""

from __future__ import annotations

import socket
import struct
import sys
import time

NLMSG = struct.Struct("=IHHII")
NLA = struct.Struct("=HH")
IFINFOMSG = struct.Struct("=BxHiII")
IFADDRMSG = struct.Struct("=BBBBi")
RTM_NEWLINK, RTM_DELLINK, RTM_NEWADDR, RTM_DELADDR = 16, 17, 20, 21
F_REQUEST, F_ACK, F_EXCL, F_CREATE = 0x1, 0x4, 0x200, 0x400
IFLA_IFNAME, IFLA_LINKINFO, IFLA_INFO_KIND, IFLA_INFO_DATA, VETH_INFO_PEER = 3, 18, 1, 2, 1
IFA_ADDRESS, IFA_LOCAL = 1, 2


def nla(atype: int, payload: bytes) -> bytes:
    raw = NLA.pack(4 + len(payload), atype) + payload
    return raw + b"\0" * (-len(raw) % 4)


class Writer:
    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0)
        self.sock.bind((0, 0))
        self.seq = 0

    def request(self, mtype: int, flags: int, body: bytes) -> None:
        # Wait for the ACK: keeps the pace at what the kernel sustains, never floods.
        self.seq += 1
        self.sock.send(NLMSG.pack(16 + len(body), mtype, flags | F_REQUEST | F_ACK, self.seq, 0) + body)
        reply = self.sock.recv(65536)
        err = -struct.unpack_from("=i", reply, 16)[0]
        if err:
            raise SystemExit(f"churn: request {mtype} failed: errno {err}")


def churn_addr(w: Writer) -> None:
    ip = socket.inet_aton("10.99.0.1")
    body = IFADDRMSG.pack(socket.AF_INET, 32, 0, 0, 1) + nla(IFA_LOCAL, ip) + nla(IFA_ADDRESS, ip)
    w.request(RTM_NEWADDR, F_CREATE | F_EXCL, body)
    w.request(RTM_DELADDR, 0, body)


def churn_veth(w: Writer) -> None:
    peer = IFINFOMSG.pack(0, 0, 0, 0, 0) + nla(IFLA_IFNAME, b"churnb\0")
    info = nla(IFLA_INFO_KIND, b"veth\0") + nla(IFLA_INFO_DATA, nla(VETH_INFO_PEER, peer))
    name = nla(IFLA_IFNAME, b"churna\0")
    w.request(RTM_NEWLINK, F_CREATE | F_EXCL, IFINFOMSG.pack(0, 0, 0, 0, 0) + name + nla(IFLA_LINKINFO, info))
    w.request(RTM_DELLINK, 0, IFINFOMSG.pack(0, 0, 0, 0, 0) + name)


def main() -> None:
    step = {"addr": churn_addr, "veth": churn_veth}[sys.argv[1]]
    deadline = time.monotonic() + float(sys.argv[2])
    w = Writer()
    print("churning", flush=True)
    while time.monotonic() < deadline:
        step(w)


if __name__ == "__main__":
    main()
