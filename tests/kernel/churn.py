"""Churn one table of a namespace while tests dump it.

Run *inside* the namespace (``ip netns exec NS python churn.py MODE SECONDS``); MODE is one of
``addr``, ``addr6``, ``route``, ``route6``, ``neigh``, ``rule``, ``veth``, or several joined
with ``+`` (one step of each in turn). Standalone on purpose: raw netlink and struct only, no
podnet and no pyroute2, so the writer does not depend on the code under test. Ends by itself
after SECONDS; tests also kill it by PID.

Each step adds one object and deletes the one added ``WINDOW`` steps earlier, so the table
always differs from what it was a moment ago (an add undone before the dump looks again would
go unseen). The key moves on every step (a counter over 256 values) so that objects land
before and after a running dump's position: in a hash bucket already walked, a list index
already passed, a subtree already dumped. That is what makes a dump without a kernel-side
consistency check miss or repeat a stable object. The keys never collide with the stable
objects the tests set up (:data:`STABLE_SETUP`; churned rules go to table 99).
"""

from __future__ import annotations

import errno
import socket
import struct
import sys
import time
from collections.abc import Callable

NLMSG = struct.Struct("=IHHII")
NLA = struct.Struct("=HH")
IFINFOMSG = struct.Struct("=BxHiII")
IFADDRMSG = struct.Struct("=BBBBi")
RTMSG = struct.Struct("=BBBBBBBBI")
NDMSG = struct.Struct("=BxxxiHBB")
FIB_RULE_HDR = struct.Struct("=BBBBBBBBI")
RTM_NEWLINK, RTM_DELLINK, RTM_NEWADDR, RTM_DELADDR = 16, 17, 20, 21
RTM_NEWROUTE, RTM_DELROUTE, RTM_NEWNEIGH, RTM_DELNEIGH, RTM_NEWRULE, RTM_DELRULE = 24, 25, 28, 29, 32, 33
F_REQUEST, F_ACK, F_REPLACE, F_EXCL, F_CREATE = 0x1, 0x4, 0x100, 0x200, 0x400
IFLA_IFNAME, IFLA_LINKINFO, IFLA_INFO_KIND, IFLA_INFO_DATA, VETH_INFO_PEER = 3, 18, 1, 2, 1
IFA_ADDRESS, IFA_LOCAL, IFA_FLAGS, IFA_F_NODAD = 1, 2, 8, 0x02
RTA_DST, RTA_OIF = 1, 4
NDA_DST, NDA_LLADDR, NUD_PERMANENT = 1, 2, 0x80
FRA_PRIORITY, FRA_TABLE, FR_ACT_TO_TBL = 6, 15, 1
RT_TABLE_MAIN, RTPROT_STATIC, RT_SCOPE_LINK, RTN_UNICAST = 254, 4, 253, 1
# The link neighbour churn uses (made by the test): neighbours need a link with ARP.
NEIGH_LINK = "nb0"
WINDOW = 16


def nla(atype: int, payload: bytes) -> bytes:
    raw = NLA.pack(4 + len(payload), atype) + payload
    return raw + b"\0" * (-len(raw) % 4)


def u32(n: int) -> bytes:
    return n.to_bytes(4, sys.byteorder)


class Writer:
    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0)
        self.sock.bind((0, 0))
        self.seq = 0
        self.step = 0

    def request(self, mtype: int, flags: int, body: bytes, tolerate: frozenset[int] = frozenset()) -> None:
        # Wait for the ACK: keeps the pace at what the kernel sustains, never floods.
        self.seq += 1
        self.sock.send(NLMSG.pack(16 + len(body), mtype, flags | F_REQUEST | F_ACK, self.seq, 0) + body)
        reply = self.sock.recv(65536)
        err = -struct.unpack_from("=i", reply, 16)[0]
        if err and err not in tolerate:
            raise SystemExit(f"churn: request {mtype} failed: errno {err}")

    def keys(self) -> tuple[int, int | None]:
        """(key to add, key to delete: the one added WINDOW steps ago, None while filling up)."""
        self.step += 1
        old = self.step - WINDOW
        return self.step % 256, old % 256 if old > 0 else None


def stable_v4(i: int) -> str:
    """The i-th stable IPv4 key the tests set up (even last octets; the churn's are odd)."""
    return f"10.50.{i // 125}.{2 * (i % 125) + 2}"


def stable_v6(i: int) -> str:
    return f"fd00:50::{2 * i + 2:x}"


N_STABLE = 1000
N_VETH_PAIRS = 150


# The stable objects of each table the tests dump under churn (``ip -batch`` commands): enough
# that a dump spans several receive buffers (a dump in one part is never resumed, so never torn),
# keys interleaved with the churn's.
STABLE_SETUP: dict[str, list[str]] = {
    "links": [f"link add va{i} type veth peer name vb{i}" for i in range(N_VETH_PAIRS)],
    "addresses": [f"addr add {stable_v4(i)}/32 dev lo" for i in range(N_STABLE)]
    + [f"addr add {stable_v6(i)}/128 dev lo nodad" for i in range(N_STABLE)],
    "routes": [f"route add {stable_v4(i)}/32 dev lo" for i in range(N_STABLE)],
    "routes6": [f"route add {stable_v6(i)}/128 dev lo" for i in range(N_STABLE)],
    "neighbours": [f"link add {NEIGH_LINK} type veth peer name {NEIGH_LINK}p", f"link set {NEIGH_LINK} up"]
    + [f"neigh add {stable_v4(i)} lladdr 02:00:00:00:{i // 256:02x}:{i % 256:02x} dev {NEIGH_LINK} "
       "nud permanent" for i in range(N_STABLE)],
    # Priorities shared with the churned rules (table 99), so their inserts shift positions.
    "rules": [f"rule add pref {1000 + i % 256} table {100 + i}" for i in range(N_STABLE)],
}


def v4(k: int) -> bytes:
    """Churned keys sit between the stable ones, so they land before and after a dump's position."""
    return socket.inet_aton(f"10.50.{k % 8}.{2 * ((k * 37) % 125) + 1}")


def v6(k: int) -> bytes:
    return socket.inet_pton(socket.AF_INET6, f"fd00:50::{2 * ((k * 37) % 1000) + 1:x}")


# Others may change the same namespace (a plugin taking lo down drops its IPv6 addresses and
# routes): an object already gone, or a link down for a moment, does not stop the churn.
GONE = frozenset({errno.ENOENT, errno.ESRCH, errno.EADDRNOTAVAIL, errno.ENETDOWN})


def churn(w: Writer, new: tuple[int, int], delete: int, body: Callable[[int], bytes]) -> None:
    add_key, del_key = w.keys()
    w.request(new[0], new[1], body(add_key), GONE | {errno.EEXIST})
    if del_key is not None:
        w.request(delete, 0, body(del_key), GONE)


def addr_body(k: int) -> bytes:
    ip = v4(k)
    return IFADDRMSG.pack(socket.AF_INET, 32, 0, 0, 1) + nla(IFA_LOCAL, ip) + nla(IFA_ADDRESS, ip)


def addr6_body(k: int) -> bytes:
    head = IFADDRMSG.pack(socket.AF_INET6, 128, IFA_F_NODAD, 0, 1)
    return head + nla(IFA_ADDRESS, v6(k)) + nla(IFA_FLAGS, u32(IFA_F_NODAD))


def route_body(family: int, k: int) -> bytes:
    bits, dst = (32, v4(k)) if family == socket.AF_INET else (128, v6(k))
    head = RTMSG.pack(family, bits, 0, 0, RT_TABLE_MAIN, RTPROT_STATIC, RT_SCOPE_LINK, RTN_UNICAST, 0)
    return head + nla(RTA_DST, dst) + nla(RTA_OIF, u32(1))


def neigh_body(k: int) -> bytes:
    index = socket.if_nametoindex(NEIGH_LINK)
    head = NDMSG.pack(socket.AF_INET, index, NUD_PERMANENT, 0, 0)
    return head + nla(NDA_DST, v4(k)) + nla(NDA_LLADDR, bytes.fromhex("020000000099"))


def rule_body(k: int) -> bytes:
    # Same priorities as the stable rules (table 99 tells them apart): a rule is inserted after
    # those of equal priority, so every insert or delete shifts the position of later rules.
    head = FIB_RULE_HDR.pack(socket.AF_INET, 0, 0, 0, 99, 0, 0, FR_ACT_TO_TBL, 0)
    return head + nla(FRA_PRIORITY, u32(1000 + k)) + nla(FRA_TABLE, u32(99))


ADD = F_CREATE | F_EXCL


def churn_addr(w: Writer) -> None:
    churn(w, (RTM_NEWADDR, ADD), RTM_DELADDR, addr_body)


def churn_addr6(w: Writer) -> None:
    churn(w, (RTM_NEWADDR, ADD), RTM_DELADDR, addr6_body)


def churn_route(w: Writer) -> None:
    churn(w, (RTM_NEWROUTE, ADD), RTM_DELROUTE, lambda k: route_body(socket.AF_INET, k))


def churn_route6(w: Writer) -> None:
    churn(w, (RTM_NEWROUTE, ADD), RTM_DELROUTE, lambda k: route_body(socket.AF_INET6, k))


def churn_neigh(w: Writer) -> None:
    churn(w, (RTM_NEWNEIGH, F_CREATE | F_REPLACE), RTM_DELNEIGH, neigh_body)


def churn_rule(w: Writer) -> None:
    churn(w, (RTM_NEWRULE, ADD), RTM_DELRULE, rule_body)


def churn_veth(w: Writer) -> None:
    peer = IFINFOMSG.pack(0, 0, 0, 0, 0) + nla(IFLA_IFNAME, b"churnb\0")
    info = nla(IFLA_INFO_KIND, b"veth\0") + nla(IFLA_INFO_DATA, nla(VETH_INFO_PEER, peer))
    name = nla(IFLA_IFNAME, b"churna\0")
    w.request(RTM_NEWLINK, F_CREATE | F_EXCL, IFINFOMSG.pack(0, 0, 0, 0, 0) + name + nla(IFLA_LINKINFO, info))
    w.request(RTM_DELLINK, 0, IFINFOMSG.pack(0, 0, 0, 0, 0) + name)


STEPS = {"addr": churn_addr, "addr6": churn_addr6, "route": churn_route, "route6": churn_route6,
         "neigh": churn_neigh, "rule": churn_rule, "veth": churn_veth}


def main() -> None:
    steps = [STEPS[mode] for mode in sys.argv[1].split("+")]
    deadline = time.monotonic() + float(sys.argv[2])
    w = Writer()
    print("churning", flush=True)
    while time.monotonic() < deadline:
        for step in steps:
            step(w)


if __name__ == "__main__":
    main()
