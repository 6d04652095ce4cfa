"""ctnetlink messages, encoded and decoded by podnet: conntrack dumps, filters, deletes.

Pure functions over bytes, no sockets (the session is in ``conntrack.py``). Layouts are the
kernel's uapi (``linux/netfilter/nfnetlink.h``, ``linux/netfilter/nfnetlink_conntrack.h``):
a ``struct nfgenmsg`` after the netlink header, then CTA_* attributes. Unlike rtnetlink,
ctnetlink puts addresses, ports and 32-bit values in network byte order.
"""

from __future__ import annotations

import ipaddress
import socket
import struct
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from podnet.kernel.errors import InvalidArgument
from podnet.kernel.wire import NLA_F_NESTED, NLA_HDR, NLA_TYPE_MASK, WireError, attr

NETLINK_NETFILTER = 12
NFNL_SUBSYS_CTNETLINK = 1
IPCTNL_MSG_CT_NEW = 0
IPCTNL_MSG_CT_GET = 1
IPCTNL_MSG_CT_DELETE = 2
NFNETLINK_V0 = 0

# enum ctattr_type
CTA_TUPLE_ORIG = 1
CTA_TUPLE_REPLY = 2
CTA_STATUS = 3
CTA_MARK = 8
CTA_ID = 12
CTA_ZONE = 18
CTA_FILTER = 25
# enum ctattr_tuple, ctattr_ip, ctattr_l4proto
CTA_TUPLE_IP = 1
CTA_TUPLE_PROTO = 2
CTA_IP_V4_SRC = 1
CTA_IP_V4_DST = 2
CTA_IP_V6_SRC = 3
CTA_IP_V6_DST = 4
CTA_PROTO_NUM = 1
CTA_PROTO_SRC_PORT = 2
CTA_PROTO_DST_PORT = 3
# enum ctattr_filter
CTA_FILTER_ORIG_FLAGS = 1
CTA_FILTER_REPLY_FLAGS = 2
# Which tuple fields a CTA_FILTER compares. The kernel defines these bits in
# net/netfilter/nf_conntrack_netlink.c, not in a uapi header; they are ABI all the same
# (libnetfilter_conntrack and the conntrack tool send them).
FILTER_IP_SRC = 1 << 0
FILTER_IP_DST = 1 << 1
FILTER_PROTO_NUM = 1 << 3
FILTER_PROTO_SRC_PORT = 1 << 4
FILTER_PROTO_DST_PORT = 1 << 5

# struct nfgenmsg { u8 nfgen_family; u8 version; be16 res_id; }
NFGENMSG = struct.Struct("=BBH")
_BE16 = struct.Struct("!H")
_BE32 = struct.Struct("!I")

IPPROTO_TCP = 6
IPPROTO_UDP = 17
IPPROTO_DCCP = 33
IPPROTO_SCTP = 132
IPPROTO_UDPLITE = 136
# Protocols whose conntrack tuple carries ports (the kernel filters ports only for these).
_PORTED = frozenset({IPPROTO_TCP, IPPROTO_UDP, IPPROTO_DCCP, IPPROTO_SCTP, IPPROTO_UDPLITE})
_PROTOCOLS = {"tcp": IPPROTO_TCP, "udp": IPPROTO_UDP, "sctp": IPPROTO_SCTP, "dccp": IPPROTO_DCCP,
              "udplite": IPPROTO_UDPLITE, "icmp": 1, "icmpv6": 58}
_FAMILIES = {4: socket.AF_INET, 6: socket.AF_INET6,
             socket.AF_INET: socket.AF_INET, socket.AF_INET6: socket.AF_INET6}
_ADDR_LEN = {socket.AF_INET: 4, socket.AF_INET6: 16}


def msg_type(msg: int) -> int:
    """The netlink message type of a ctnetlink message (subsystem in the high byte)."""
    return (NFNL_SUBSYS_CTNETLINK << 8) | msg


@dataclass(frozen=True, slots=True)
class Flow:
    """One conntrack entry: its original tuple (as the first packet came) and reply tuple (what
    answers look like, so after DNAT the reply source is the endpoint that was chosen).

    Ports are 0 for protocols without ports (ICMP). ``family`` is socket.AF_INET or AF_INET6.
    """

    family: int
    protocol: int
    orig_src: str
    orig_dst: str
    orig_sport: int
    orig_dport: int
    reply_src: str
    reply_dst: str
    reply_sport: int
    reply_dport: int
    status: int = 0  # IPS_* bits
    mark: int = 0
    zone: int = 0
    id: int = 0  # the kernel's id of the entry, sent with a delete (see delete_request)
    # The reply tuple exactly as the kernel sent it, sent back to delete the entry: any
    # protocol's tuple (ICMP ids and types included) round-trips without being re-encoded.
    reply_tuple: bytes = field(default=b"", compare=False, repr=False)

    def key(self) -> tuple[Any, ...]:
        """What identifies the entry in the table (two of these in one dump mean a torn dump)."""
        return (self.family, self.protocol, self.orig_src, self.orig_dst, self.orig_sport,
                self.orig_dport, self.zone)


def parse_flow(buf: bytes, start: int, end: int) -> Flow | None:
    """Decode one IPCTNL_MSG_CT_NEW message of a dump (None if it carries no tuples).

    Walks the attributes by offset instead of building a dict per nest: a dump can hold tens of
    thousands of entries, each with two tuples of two nests."""
    family = buf[start]
    if family not in _ADDR_LEN:
        return None
    orig = reply = (0, 0)
    values = {CTA_STATUS: 0, CTA_MARK: 0, CTA_ID: 0}
    zone = 0
    for atype, off, stop in _walk(buf, start + NFGENMSG.size, end):
        if atype == CTA_TUPLE_ORIG:
            orig = (off, stop)
        elif atype == CTA_TUPLE_REPLY:
            reply = (off, stop)
        elif atype in values and stop - off >= 4:
            values[atype] = _BE32.unpack_from(buf, off)[0]
        elif atype == CTA_ZONE and stop - off >= 2:
            zone = _BE16.unpack_from(buf, off)[0]
    if not orig[1] or not reply[1]:
        return None
    proto, osrc, odst, osport, odport = _tuple(buf, *orig, family)
    _, rsrc, rdst, rsport, rdport = _tuple(buf, *reply, family)
    return Flow(family, proto, osrc, odst, osport, odport, rsrc, rdst, rsport, rdport,
                status=values[CTA_STATUS], mark=values[CTA_MARK], zone=zone, id=values[CTA_ID],
                reply_tuple=buf[reply[0]:reply[1]])


def _walk(buf: bytes, off: int, end: int) -> Iterator[tuple[int, int, int]]:
    """(type without flag bits, payload start, payload end) of each attribute in [off, end)."""
    unpack = NLA_HDR.unpack_from
    while off + 4 <= end:
        alen, atype = unpack(buf, off)
        if alen < 4 or off + alen > end:
            raise WireError(f"bad attribute length {alen} at offset {off}")
        yield atype & NLA_TYPE_MASK, off + 4, off + alen
        off += (alen + 3) & ~3


def _tuple(buf: bytes, off: int, end: int, family: int) -> tuple[int, str, str, int, int]:
    src = dst = ""
    proto = sport = dport = 0
    for atype, start, stop in _walk(buf, off, end):
        if atype == CTA_TUPLE_IP:
            for iptype, a, b in _walk(buf, start, stop):
                if iptype in (CTA_IP_V4_SRC, CTA_IP_V6_SRC):
                    src = socket.inet_ntop(family, buf[a:b])
                elif iptype in (CTA_IP_V4_DST, CTA_IP_V6_DST):
                    dst = socket.inet_ntop(family, buf[a:b])
        elif atype == CTA_TUPLE_PROTO:
            for l4type, a, b in _walk(buf, start, stop):
                if l4type == CTA_PROTO_NUM and b > a:
                    proto = buf[a]
                elif l4type == CTA_PROTO_SRC_PORT and b - a >= 2:
                    sport = _BE16.unpack_from(buf, a)[0]
                elif l4type == CTA_PROTO_DST_PORT and b - a >= 2:
                    dport = _BE16.unpack_from(buf, a)[0]
    if proto not in _PORTED:
        return proto, src, dst, 0, 0  # ICMP ids and types are not ports
    return proto, src, dst, sport, dport


@dataclass(frozen=True)
class FlowFilter:
    """Which entries to list or delete: every field given must match (None matches anything).

    Build it with :meth:`of`, which checks the values and names the bad one.
    """

    family: int | None = None  # socket.AF_INET / AF_INET6
    protocol: int | None = None
    orig_src: str | None = None
    orig_dst: str | None = None
    orig_sport: int | None = None
    orig_dport: int | None = None
    reply_src: str | None = None
    reply_dst: str | None = None
    reply_sport: int | None = None
    reply_dport: int | None = None

    @classmethod
    def of(cls, *, family: int | None = None, protocol: int | str | None = None,
           orig_src: Any = None, orig_dst: Any = None, orig_sport: int | None = None,
           orig_dport: int | None = None, reply_src: Any = None, reply_dst: Any = None,
           reply_sport: int | None = None, reply_dport: int | None = None) -> FlowFilter:
        """Validate and normalise: family 4/6 or AF_INET/AF_INET6 (inferred from the addresses
        when not given), protocol a number or a name ("udp"), addresses as strings or
        ipaddress objects, ports 0-65535."""
        fam = _family(family)
        osrc, fam = _address("orig_src", orig_src, fam)
        odst, fam = _address("orig_dst", orig_dst, fam)
        rsrc, fam = _address("reply_src", reply_src, fam)
        rdst, fam = _address("reply_dst", reply_dst, fam)
        ports = (_port("orig_sport", orig_sport), _port("orig_dport", orig_dport),
                 _port("reply_sport", reply_sport), _port("reply_dport", reply_dport))
        proto = _protocol(protocol)
        if proto is not None and proto not in _PORTED and any(p is not None for p in ports):
            raise InvalidArgument("conntrack filter: ports given for a protocol without ports",
                                  f"protocol {protocol!r}")
        return cls(fam, proto, osrc, odst, ports[0], ports[1], rsrc, rdst, ports[2], ports[3])

    def matches(self, flow: Flow) -> bool:
        checks: tuple[tuple[object, object], ...] = (
            (self.family, flow.family), (self.protocol, flow.protocol),
            (self.orig_src, flow.orig_src), (self.orig_dst, flow.orig_dst),
            (self.orig_sport, flow.orig_sport), (self.orig_dport, flow.orig_dport),
            (self.reply_src, flow.reply_src), (self.reply_dst, flow.reply_dst),
            (self.reply_sport, flow.reply_sport), (self.reply_dport, flow.reply_dport),
        )
        return all(want is None or want == got for want, got in checks)


def _family(value: int | None) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or value not in _FAMILIES:
        raise InvalidArgument("conntrack filter family: expected 4, 6, AF_INET or AF_INET6", repr(value))
    return _FAMILIES[value]


def _address(name: str, value: Any, family: int | None) -> tuple[str | None, int | None]:
    """(the address as inet_ntop writes it, the family it implies)."""
    if value is None:
        return None, family
    try:
        ip = ipaddress.ip_address(value)
    except ValueError:
        raise InvalidArgument(f"conntrack filter {name}: not an IP address", repr(value)) from None
    own = socket.AF_INET if ip.version == 4 else socket.AF_INET6
    if family is not None and family != own:
        raise InvalidArgument(f"conntrack filter {name}: address family differs from the filter's",
                              f"{value} is IPv{ip.version}")
    return socket.inet_ntop(own, ip.packed), own


def _port(name: str, value: int | None) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 0xFFFF:
        raise InvalidArgument(f"conntrack filter {name}: not a port (0-65535)", repr(value))
    return value


def _protocol(value: int | str | None) -> int | None:
    if value is None:
        return None
    if isinstance(value, str):
        if value.lower() not in _PROTOCOLS:
            raise InvalidArgument("conntrack filter protocol: unknown name",
                                  f"{value!r}, expected one of {sorted(_PROTOCOLS)} or a number")
        return _PROTOCOLS[value.lower()]
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 255:
        raise InvalidArgument("conntrack filter protocol: not an IP protocol number (0-255)", repr(value))
    return value


def dump_request(flt: FlowFilter, kernel_filter: bool = True) -> bytes:
    """The body of an IPCTNL_MSG_CT_GET dump: the family, and a CTA_FILTER the kernel applies
    while dumping (Linux 5.10+) when the filter names a family and a protocol, which the kernel
    needs to compare addresses and ports. Callers filter the replies again in any case: a kernel
    without CTA_FILTER ignores it, and fields it cannot compare are left to the caller.
    """
    body = NFGENMSG.pack(flt.family or socket.AF_UNSPEC, NFNETLINK_V0, 0)
    if not kernel_filter or flt.family is None or flt.protocol is None:
        return body
    orig_flags, orig = _filter_tuple(flt.family, flt.protocol, flt.orig_src, flt.orig_dst,
                                     flt.orig_sport, flt.orig_dport)
    reply_flags, reply = _filter_tuple(flt.family, flt.protocol, flt.reply_src, flt.reply_dst,
                                       flt.reply_sport, flt.reply_dport)
    # The flags are host-order u32 (NLA_U32), unlike the other ctnetlink numbers.
    flags = attr(CTA_FILTER_ORIG_FLAGS, orig_flags.to_bytes(4, sys.byteorder))
    body += attr(CTA_TUPLE_ORIG | NLA_F_NESTED, orig)
    if reply_flags != FILTER_PROTO_NUM:  # a reply field was given
        flags += attr(CTA_FILTER_REPLY_FLAGS, reply_flags.to_bytes(4, sys.byteorder))
        body += attr(CTA_TUPLE_REPLY | NLA_F_NESTED, reply)
    return body + attr(CTA_FILTER | NLA_F_NESTED, flags)


def _filter_tuple(family: int, protocol: int, src: str | None, dst: str | None,
                  sport: int | None, dport: int | None) -> tuple[int, bytes]:
    """(CTA_FILTER flags, CTA_TUPLE_* body) for one direction; the protocol is always compared."""
    v4 = family == socket.AF_INET
    flags, ip = FILTER_PROTO_NUM, b""
    if not v4:
        # The kernel's IPv6 address comparison is inverted (it drops the entries whose address
        # equals the filter's: ``!ipv6_addr_cmp(...)`` in ctnetlink_filter_match_tuple, still so
        # on Linux 6.18), so IPv6 addresses are compared here only; ports still go to the kernel.
        src = dst = None
    if src is not None:
        flags |= FILTER_IP_SRC
        ip += attr(CTA_IP_V4_SRC if v4 else CTA_IP_V6_SRC, socket.inet_pton(family, src))
    if dst is not None:
        flags |= FILTER_IP_DST
        ip += attr(CTA_IP_V4_DST if v4 else CTA_IP_V6_DST, socket.inet_pton(family, dst))
    l4 = attr(CTA_PROTO_NUM, bytes([protocol]))
    if sport is not None and protocol in _PORTED:
        flags |= FILTER_PROTO_SRC_PORT
        l4 += attr(CTA_PROTO_SRC_PORT, _BE16.pack(sport))
    if dport is not None and protocol in _PORTED:
        flags |= FILTER_PROTO_DST_PORT
        l4 += attr(CTA_PROTO_DST_PORT, _BE16.pack(dport))
    body = attr(CTA_TUPLE_IP | NLA_F_NESTED, ip) if ip else b""
    return flags, body + attr(CTA_TUPLE_PROTO | NLA_F_NESTED, l4)


def delete_request(flow: Flow) -> bytes:
    """The body of an IPCTNL_MSG_CT_DELETE for exactly this entry.

    The kernel finds the entry by one tuple and, given an id, deletes it only if the id matches
    (ENOENT otherwise). The id is a hash of the entry's memory address and its *original* tuple,
    and a new entry often reuses the memory of one just freed: a client's next datagram after
    its entry went makes an entry with the same original tuple and, often, the same id, even
    when DNAT sent it to another endpoint. So the entry is named by its *reply* tuple (which says
    where DNAT sent it: a new entry to a live endpoint has another one) and its id (which covers
    the original tuple): both tuples must match.
    """
    if not flow.reply_tuple:
        raise InvalidArgument("conntrack delete: the flow has no reply tuple from the kernel", repr(flow))
    body = NFGENMSG.pack(flow.family, NFNETLINK_V0, 0)
    body += attr(CTA_TUPLE_REPLY | NLA_F_NESTED, flow.reply_tuple)
    if flow.zone:
        body += attr(CTA_ZONE, _BE16.pack(flow.zone))
    if flow.id:
        body += attr(CTA_ID, _BE32.pack(flow.id))
    return body


__all__ = [
    "Flow",
    "FlowFilter",
    "delete_request",
    "dump_request",
    "msg_type",
    "parse_flow",
]
